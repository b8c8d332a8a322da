//! Weights as safetensors with PyTorch's state-dict names and layouts.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use brainfloat_precision::{ParamPath, named_params};
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::GptError;
use crate::model::Gpt;
use brainfloat_data::write_atomic;

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

impl Gpt {
    /// The model's weights as a safetensors file in memory: PyTorch names, `[out, in]` layouts,
    /// each tensor in its storage dtype.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, GptError> {
        let tensors = named_params(self)
            .into_iter()
            .map(|p| (pytorch_shape(&p.name, &p.shape), p))
            .map(|(shape, p)| (p.name, p.tensor.into_data(), shape))
            .collect();
        serialize_tensors(tensors).map_err(|reason| GptError::Checkpoint {
            path: "<memory>".into(),
            reason,
        })
    }

    /// Saves the weights to `path` atomically (see [`Gpt::to_safetensors`]).
    pub fn save_safetensors(&self, path: &Path) -> Result<(), GptError> {
        let bytes = self.to_safetensors()?;
        write_atomic(path, &bytes).map_err(|err| GptError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("cannot write: {err}"),
        })
    }

    /// Loads weights from a safetensors file with PyTorch names (made here or by PyTorch). Each
    /// tensor is cast to the dtype the parameter has now; every parameter must be present with
    /// its shape, and the file must hold nothing else.
    pub fn load_safetensors(self, path: &Path) -> Result<Self, GptError> {
        let bytes = std::fs::read(path).map_err(|err| GptError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("cannot read: {err}"),
        })?;
        self.load_safetensors_bytes(&bytes)
            .map_err(|reason| GptError::Checkpoint {
                path: path.to_path_buf(),
                reason,
            })
    }

    /// As [`Gpt::load_safetensors`], from bytes; the error says what is wrong.
    pub fn load_safetensors_bytes(self, bytes: &[u8]) -> Result<Self, String> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|err| format!("not a valid safetensors file ({err})"))?;
        let mut loader = Loader {
            file: &file,
            path: ParamPath::default(),
            seen: BTreeSet::new(),
            problems: Vec::new(),
        };
        let model = self.map(&mut loader);
        let unexpected: Vec<&str> = file
            .names()
            .into_iter()
            .filter(|name| !loader.seen.contains(*name))
            .collect();
        let mut problems = loader.problems;
        if !unexpected.is_empty() {
            let mut unexpected = unexpected;
            unexpected.sort();
            problems.push(format!(
                "unexpected tensors not in the model: {}",
                summarize(&unexpected)
            ));
        }
        if problems.is_empty() {
            Ok(model)
        } else {
            Err(problems.join("; "))
        }
    }
}

/// A safetensors file (PyTorch's `{"format": "pt"}` metadata) of `(name, data, shape)` triples;
/// each tensor is written in its own dtype with the given shape (same element count).
pub fn serialize_tensors(
    tensors: Vec<(String, TensorData, Vec<usize>)>,
) -> Result<Vec<u8>, String> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, data, shape) in tensors {
        let dtype = to_safetensors_dtype(data.dtype())
            .ok_or_else(|| format!("tensor {name} has dtype {:?}, not a float", data.dtype()))?;
        buffers.push((name, dtype, shape, data.into_bytes()));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|err| format!("tensor {name}: {err}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|err| err.to_string())
}

/// The float tensor `view` (named `name`, for errors) of a safetensors file as Burn data in its
/// stored dtype; `shape` has the stored element count (callers check the shape they expect).
pub fn tensor_data(
    view: &TensorView<'_>,
    name: &str,
    shape: Vec<usize>,
) -> Result<TensorData, String> {
    let dtype = from_safetensors_dtype(view.dtype()).ok_or_else(|| {
        format!(
            "tensor {name} has dtype {:?}; expected a float dtype (F32, BF16, F16, F64)",
            view.dtype()
        )
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

struct Loader<'a> {
    file: &'a SafeTensors<'a>,
    path: ParamPath,
    seen: BTreeSet<String>,
    problems: Vec<String>,
}

impl Loader<'_> {
    fn read<const D: usize>(
        &self,
        name: &str,
        param: &Param<Tensor<D>>,
    ) -> Result<Tensor<D>, String> {
        let view = self
            .file
            .tensor(name)
            .map_err(|_| format!("missing tensor {name}"))?;
        let shape = param.dims().to_vec();
        let expected = pytorch_shape(name, &shape);
        if view.shape() != expected.as_slice() {
            return Err(format!(
                "tensor {name} has shape {:?}, the model expects {:?}",
                view.shape(),
                expected
            ));
        }
        let data = tensor_data(&view, name, shape)?;
        let dtype = data.dtype();
        let device = param.lazy_device();
        let target = FloatDType::from(param.dtype());
        Ok(Tensor::<D>::from_data(data, (&device, dtype)).cast(target))
    }
}

impl ModuleMapper for Loader<'_> {
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
