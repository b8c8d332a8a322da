//! A model's weights as a safetensors file: PyTorch's state-dict names and layouts (GPT-2's are
//! Hugging Face's), each tensor in its storage dtype, the model's shape in the metadata; and
//! back into a model, every tensor checked against the parameter it fills.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use brainfloat_files::write_atomic;
use brainfloat_gpt::{LanguageModel, ModelShape};
use brainfloat_precision::{ParamPath, named_params};
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::{checkpoint_error, read_safetensors, safetensors_header};
use crate::error::{TensorFileError, TrainError};

/// The key of a weights file's metadata that holds the model's architecture and shape
/// ([`ModelShape::to_json`]), so that the file alone builds its model.
pub const SHAPE_METADATA: &str = "brainfloat.shape";

/// The model's weights as a safetensors file in memory: PyTorch names and layouts (GPT-2's are
/// Hugging Face's), each tensor in its storage dtype, and the model's shape in the metadata.
pub fn weights_to_safetensors(model: &impl LanguageModel) -> Result<Vec<u8>, TensorFileError> {
    let tensors = named_params(model)
        .into_iter()
        .map(|p| (pytorch_shape(&p.name, &p.shape), p))
        .map(|(shape, p)| (p.name, p.tensor.into_data(), shape))
        .collect();
    serialize_tensors(tensors, &[(SHAPE_METADATA, model.shape().to_json())])
}

/// Saves the model's weights to `path` atomically (see [`weights_to_safetensors`]).
pub fn save_weights(model: &impl LanguageModel, path: &Path) -> Result<(), TrainError> {
    let bytes = weights_to_safetensors(model).map_err(|err| checkpoint_error(path, err))?;
    write_atomic(path, &bytes).map_err(|err| checkpoint_error(path, format!("cannot write: {err}")))
}

/// Loads weights from a safetensors file with PyTorch names (made here or by PyTorch). Each
/// tensor is cast to the dtype the parameter has now; every parameter must be present with its
/// shape, and the file must hold nothing else.
pub fn load_weights<M: Module>(model: M, path: &Path) -> Result<M, TrainError> {
    let bytes = read_safetensors(path)?;
    weights_from_safetensors(model, &bytes).map_err(|err| checkpoint_error(path, err))
}

/// The architecture and shape a weights file written here carries in its metadata
/// ([`SHAPE_METADATA`]); `None` for a file without it (written by PyTorch or by an older build).
/// Reads only the file's header.
pub fn weights_shape(path: &Path) -> Result<Option<ModelShape>, TrainError> {
    let (_, header) = safetensors_header(path).map_err(|err| checkpoint_error(path, err))?;
    let Some(text) = header
        .get("__metadata__")
        .and_then(|metadata| metadata.get(SHAPE_METADATA))
        .and_then(serde_json::Value::as_str)
    else {
        return Ok(None);
    };
    ModelShape::from_json(text)
        .map(Some)
        .map_err(|err| checkpoint_error(path, err))
}

/// As [`load_weights`], from the bytes of the file.
pub fn weights_from_safetensors<M: Module>(model: M, bytes: &[u8]) -> Result<M, TensorFileError> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|err| TensorFileError::one(format!("not a valid safetensors file ({err})")))?;
    let tensors = file.tensors().into_iter().collect();
    weights_from_tensors(model, tensors)
}

/// Replaces every parameter of `model` with the tensor of its name in `tensors`, each cast to
/// the dtype the parameter has now; every parameter must be present with its shape, and
/// `tensors` must hold nothing else.
pub(crate) fn weights_from_tensors<M: Module>(
    model: M,
    tensors: HashMap<String, TensorView<'_>>,
) -> Result<M, TensorFileError> {
    let mut loader = WeightLoader {
        file: &tensors,
        path: ParamPath::default(),
        seen: BTreeSet::new(),
        problems: Vec::new(),
    };
    let model = model.map(&mut loader);
    let mut unexpected: Vec<&str> = tensors
        .keys()
        .map(String::as_str)
        .filter(|name| !loader.seen.contains(*name))
        .collect();
    let mut problems = loader.problems;
    if !unexpected.is_empty() {
        unexpected.sort();
        problems.push(format!(
            "unexpected tensors not in the model: {}",
            summarize(&unexpected)
        ));
    }
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(TensorFileError { problems })
    }
}

/// Shape of a parameter in the PyTorch state dict: the value-residual `lamb` is a 0-d tensor
/// there, `[1]` here; everything else is the same (Linear weights are `[out, in]` in both).
fn pytorch_shape(name: &str, shape: &[usize]) -> Vec<usize> {
    if name.ends_with(".lamb") && shape == [1] {
        Vec::new()
    } else {
        shape.to_vec()
    }
}

fn to_safetensors_dtype(dtype: DType) -> Option<Dtype> {
    Some(match dtype {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::F64 => Dtype::F64,
        _ => return None,
    })
}

fn from_safetensors_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::F64 => DType::F64,
        _ => return None,
    })
}

/// A safetensors file (PyTorch's `{"format": "pt"}` metadata and `metadata`) of
/// `(name, data, shape)` triples; each tensor is written in its own dtype with the given shape
/// (same element count).
pub(crate) fn serialize_tensors(
    tensors: Vec<(String, TensorData, Vec<usize>)>,
    metadata: &[(&str, String)],
) -> Result<Vec<u8>, TensorFileError> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, data, shape) in tensors {
        let dtype = to_safetensors_dtype(data.dtype()).ok_or_else(|| {
            TensorFileError::one(format!(
                "tensor {name} has dtype {:?}, not a float",
                data.dtype()
            ))
        })?;
        buffers.push((name, dtype, shape, data.into_bytes()));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|err| TensorFileError::one(format!("tensor {name}: {err}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(key, value)| (key.to_string(), value.clone()))
        .collect();
    metadata.insert("format".to_string(), "pt".to_string());
    let mut bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|err| TensorFileError::one(err.to_string()))?;
    sort_header(&mut bytes);
    Ok(bytes)
}

/// Rewrites the header of the safetensors file `bytes` with its keys sorted. safetensors writes
/// the metadata map in `HashMap` order, which differs from process to process; sorted, one
/// model gives one file, byte for byte. The same keys and values take the same bytes in any
/// order, so the header keeps its length (and the data its offsets).
fn sort_header(bytes: &mut [u8]) {
    let Some(len) = bytes
        .get(..8)
        .map(|n| u64::from_le_bytes(n.try_into().expect("8 bytes")))
    else {
        return;
    };
    let Some(header) = bytes.get(8..8 + len as usize) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(header) else {
        return;
    };
    let text = text.trim_end_matches(' ');
    // serde_json's map is ordered by key (no `preserve_order` in this build).
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    let sorted = serde_json::to_vec(&value).expect("JSON values serialize");
    if sorted.len() == text.len() {
        bytes[8..8 + sorted.len()].copy_from_slice(&sorted);
    }
}

/// The float tensor `view` (named `name`, for errors) of a safetensors file as Burn data in its
/// stored dtype; `shape` has the stored element count (callers check the shape they expect).
pub(super) fn tensor_data(
    view: &TensorView<'_>,
    name: &str,
    shape: Vec<usize>,
) -> Result<TensorData, TensorFileError> {
    let dtype = from_safetensors_dtype(view.dtype()).ok_or_else(|| {
        TensorFileError::one(format!(
            "tensor {name} has dtype {:?}; expected a float dtype (F32, BF16, F16, F64)",
            view.dtype()
        ))
    })?;
    Ok(TensorData::from_bytes_vec(
        view.data().to_vec(),
        shape,
        dtype,
    ))
}

fn summarize(names: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// Replaces each parameter with the file's tensor of its PyTorch name, collecting problems.
struct WeightLoader<'a> {
    file: &'a HashMap<String, TensorView<'a>>,
    path: ParamPath,
    seen: BTreeSet<String>,
    problems: Vec<String>,
}

impl WeightLoader<'_> {
    fn read<const D: usize>(
        &self,
        name: &str,
        param: &Param<Tensor<D>>,
    ) -> Result<Tensor<D>, String> {
        let view = self
            .file
            .get(name)
            .ok_or_else(|| format!("missing tensor {name}"))?;
        let shape = param.dims().to_vec();
        let expected = pytorch_shape(name, &shape);
        if view.shape() != expected.as_slice() {
            return Err(format!(
                "tensor {name} has shape {:?}, the model expects {:?}",
                view.shape(),
                expected
            ));
        }
        let data = tensor_data(view, name, shape).map_err(|err| err.to_string())?;
        if let Some((index, value)) = data
            .iter::<f32>()
            .enumerate()
            .find(|(_, value)| !value.is_finite())
        {
            return Err(format!(
                "tensor {name} holds {value} at element {index}: weights must be finite (a run \
                 from them would only produce NaN)"
            ));
        }
        let dtype = data.dtype();
        let device = param.lazy_device();
        let target = FloatDType::from(param.dtype());
        Ok(Tensor::<D>::from_data(data, (&device, dtype)).cast(target))
    }
}

impl ModuleMapper for WeightLoader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.name();
        let loaded = self.read(&name, &param);
        self.seen.insert(name);
        match loaded {
            Ok(tensor) => {
                let id = param.id;
                param.transform_for_load(tensor, id)
            }
            Err(problem) => {
                self.problems.push(problem);
                param
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each write builds a new metadata map, whose order is its own: the files must not differ.
    #[test]
    fn one_model_gives_one_file_byte_for_byte() {
        let file = || {
            let data = TensorData::new(vec![1.0f32, 2.0, 3.0], [3]);
            let metadata: Vec<(&str, String)> = ["a", "b", "c", "d", "e"]
                .iter()
                .map(|key| (*key, format!("value of {key}")))
                .collect();
            serialize_tensors(vec![("t".into(), data, vec![3])], &metadata).unwrap()
        };
        let first = file();
        for _ in 0..20 {
            assert_eq!(file(), first);
        }
        let (_, read) = SafeTensors::read_metadata(&first).unwrap();
        let metadata = read.metadata().as_ref().unwrap();
        assert_eq!(metadata["c"], "value of c");
        assert_eq!(metadata["format"], "pt");
        let tensors = SafeTensors::deserialize(&first).unwrap();
        assert_eq!(tensors.tensor("t").unwrap().shape(), [3]);
    }
}
