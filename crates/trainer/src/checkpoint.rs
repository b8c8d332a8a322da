//! Checkpoints, the one module that turns tensors into files and back.
//!
//! - **Weights**: safetensors with PyTorch's state-dict names and layouts, each tensor in its
//!   storage dtype, so the same file moves between this model and the PyTorch one.
//! - **A checkpoint**: those weights, the optimizer state (safetensors too) and a JSON record of
//!   step, data positions, seed, config and the files' SHA-256, written last so that a
//!   checkpoint exists only once all of it is on disk. Every file is written atomically
//!   ([`write_atomic`]: temporary, fsync, rename).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use brainfloat_data::{LoaderPosition, sha256_hex, write_atomic};
use brainfloat_gpt::Gpt;
use brainfloat_precision::{ParamPath, named_params};
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{TensorFileError, TrainError};
use crate::optim::RecordOptimizer;

fn checkpoint_error(path: &Path, problem: impl ToString) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// The model's weights as a safetensors file in memory: PyTorch names, `[out, in]` layouts,
/// each tensor in its storage dtype.
pub fn weights_to_safetensors(model: &Gpt) -> Result<Vec<u8>, TensorFileError> {
    let tensors = named_params(model)
        .into_iter()
        .map(|p| (pytorch_shape(&p.name, &p.shape), p))
        .map(|(shape, p)| (p.name, p.tensor.into_data(), shape))
        .collect();
    serialize_tensors(tensors)
}

/// Saves the model's weights to `path` atomically (see [`weights_to_safetensors`]).
pub fn save_weights(model: &Gpt, path: &Path) -> Result<(), TrainError> {
    let bytes = weights_to_safetensors(model).map_err(|err| checkpoint_error(path, err))?;
    write_atomic(path, &bytes).map_err(|err| checkpoint_error(path, format!("cannot write: {err}")))
}

/// Loads weights from a safetensors file with PyTorch names (made here or by PyTorch). Each
/// tensor is cast to the dtype the parameter has now; every parameter must be present with its
/// shape, and the file must hold nothing else.
pub fn load_weights(model: Gpt, path: &Path) -> Result<Gpt, TrainError> {
    let bytes =
        std::fs::read(path).map_err(|err| checkpoint_error(path, format!("cannot read: {err}")))?;
    weights_from_safetensors(model, &bytes).map_err(|err| checkpoint_error(path, err))
}

/// As [`load_weights`], from the bytes of the file.
pub fn weights_from_safetensors(model: Gpt, bytes: &[u8]) -> Result<Gpt, TensorFileError> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|err| TensorFileError::one(format!("not a valid safetensors file ({err})")))?;
    let mut loader = WeightLoader {
        file: &file,
        path: ParamPath::default(),
        seen: BTreeSet::new(),
        problems: Vec::new(),
    };
    let model = model.map(&mut loader);
    let mut unexpected: Vec<&str> = file
        .names()
        .into_iter()
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

/// A safetensors file (PyTorch's `{"format": "pt"}` metadata) of `(name, data, shape)` triples;
/// each tensor is written in its own dtype with the given shape (same element count).
fn serialize_tensors(
    tensors: Vec<(String, TensorData, Vec<usize>)>,
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
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata))
        .map_err(|err| TensorFileError::one(err.to_string()))
}

/// The float tensor `view` (named `name`, for errors) of a safetensors file as Burn data in its
/// stored dtype; `shape` has the stored element count (callers check the shape they expect).
fn tensor_data(
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
    file: &'a SafeTensors<'a>,
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
        let data = tensor_data(&view, name, shape).map_err(|err| err.to_string())?;
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

/// Version of the checkpoint record.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// A file of a checkpoint and its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDigest {
    /// File name, in the checkpoint's folder.
    pub file: String,
    /// SHA-256, hex.
    pub sha256: String,
}

/// The JSON record of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// [`CHECKPOINT_FORMAT`].
    pub format: u32,
    /// Optimizer steps completed.
    pub step: usize,
    /// Where each rank's loader continues, by rank.
    pub loader: Vec<LoaderPosition>,
    /// The precision policy of the run.
    pub policy: String,
    /// The run's configuration.
    pub config: TrainConfig,
    /// Adam's step count per parameter.
    pub adam_steps: BTreeMap<String, i32>,
    /// The model's weights.
    pub model: FileDigest,
    /// The optimizer state.
    pub optimizer: FileDigest,
}

/// What a run resumes from.
pub struct Restored {
    /// The record.
    pub record: CheckpointRecord,
    /// The model with the checkpoint's weights.
    pub model: Gpt,
    /// The optimizer with its state.
    pub optimizer: RecordOptimizer,
}

/// The record's file name for `step`.
pub fn record_name(step: usize) -> String {
    format!("step_{step:06}.json")
}

/// Writes the checkpoint of `step` into `dir`: weights, optimizer state, then the record.
/// Returns the record's path.
pub fn save_checkpoint(
    dir: &Path,
    model: &Gpt,
    optimizer: &RecordOptimizer,
    step: usize,
    loader: Vec<LoaderPosition>,
    config: &TrainConfig,
) -> Result<PathBuf, TrainError> {
    let write = |name: String, bytes: &[u8]| -> Result<FileDigest, TrainError> {
        let path = dir.join(&name);
        write_atomic(&path, bytes).map_err(|err| checkpoint_error(&path, err))?;
        Ok(FileDigest {
            file: name,
            sha256: sha256_hex(bytes),
        })
    };
    let model_bytes = weights_to_safetensors(model).map_err(|err| checkpoint_error(dir, err))?;
    let model_file = write(format!("step_{step:06}.model.safetensors"), &model_bytes)?;

    let (state, adam_steps) = optimizer.state();
    let state = state
        .into_iter()
        .map(|(name, tensor)| {
            let shape = tensor.dims().to_vec();
            (name, tensor.into_data(), shape)
        })
        .collect();
    let optim_bytes = serialize_tensors(state).map_err(|err| checkpoint_error(dir, err))?;
    let optim_file = write(format!("step_{step:06}.optim.safetensors"), &optim_bytes)?;

    let record = CheckpointRecord {
        format: CHECKPOINT_FORMAT,
        step,
        loader,
        policy: model.policy().to_string(),
        config: config.clone(),
        adam_steps,
        model: model_file,
        optimizer: optim_file,
    };
    let json = serde_json::to_vec_pretty(&record).expect("the record serializes");
    let path = dir.join(record_name(step));
    write_atomic(&path, &json).map_err(|err| checkpoint_error(&path, err))?;
    Ok(path)
}

/// The newest complete checkpoint record in `dir`, if any.
pub fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    let mut records: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("step_") && name.ends_with(".json")
        })
        .collect();
    records.sort();
    records.pop()
}

fn read_verified(dir: &Path, file: &FileDigest) -> Result<Vec<u8>, TrainError> {
    let path = dir.join(&file.file);
    let bytes = std::fs::read(&path)
        .map_err(|err| checkpoint_error(&path, format!("cannot read: {err}")))?;
    if sha256_hex(&bytes) != file.sha256 {
        return Err(checkpoint_error(
            &path,
            "SHA-256 does not match the checkpoint record: the file is corrupt or was replaced",
        ));
    }
    Ok(bytes)
}

/// The checkpoint record `path`, checked to be one of this version.
pub fn read_record(path: &Path) -> Result<CheckpointRecord, TrainError> {
    let text =
        std::fs::read(path).map_err(|err| checkpoint_error(path, format!("cannot read: {err}")))?;
    let record: CheckpointRecord = serde_json::from_slice(&text)
        .map_err(|err| checkpoint_error(path, format!("not a checkpoint record: {err}")))?;
    if record.format != CHECKPOINT_FORMAT {
        return Err(checkpoint_error(
            path,
            format!(
                "checkpoint format {} (expected {CHECKPOINT_FORMAT})",
                record.format
            ),
        ));
    }
    Ok(record)
}

/// The weights of the checkpoint whose record `record` was read from `path`, read into `model`
/// (built with the record's shape: `record.config.gpt()`) after their SHA-256 is verified; the
/// optimizer state is not read. For evaluation and generation.
pub fn load_checkpoint_weights(
    path: &Path,
    record: &CheckpointRecord,
    model: Gpt,
) -> Result<Gpt, TrainError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let model_bytes = read_verified(dir, &record.model)?;
    weights_from_safetensors(model, &model_bytes)
        .map_err(|err| checkpoint_error(&dir.join(&record.model.file), err))
}

/// Reads the checkpoint whose record is `path` into `model` (already built with the run's
/// shape and policy) and a fresh `optimizer`, verifying every file's SHA-256. Weights and
/// optimizer state take the run's dtypes: each state tensor its parameter's, so a checkpoint
/// of another precision policy is converted (see the `resume` module).
pub fn load_checkpoint(
    path: &Path,
    model: Gpt,
    mut optimizer: RecordOptimizer,
    device: &Device,
) -> Result<Restored, TrainError> {
    let record = read_record(path)?;
    let model = load_checkpoint_weights(path, &record, model)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let optim_path = dir.join(&record.optimizer.file);
    let optim_bytes = read_verified(dir, &record.optimizer)?;
    let file = SafeTensors::deserialize(&optim_bytes)
        .map_err(|err| checkpoint_error(&optim_path, format!("not safetensors: {err}")))?;
    let names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    let param_dtypes: BTreeMap<String, DType> = named_params(&model)
        .into_iter()
        .map(|p| (p.name, p.tensor.dtype()))
        .collect();
    optimizer
        .load_state(
            &names,
            |name| {
                let view = file
                    .tensor(name)
                    .map_err(|_| TensorFileError::one(format!("missing {name}")))?;
                let data = tensor_data(&view, name, view.shape().to_vec())?;
                // `param.exp_avg` → `param`: the state takes its parameter's dtype.
                let param = name.rsplit_once('.').map_or(name, |(param, _)| param);
                let dtype = param_dtypes.get(param).copied().unwrap_or(data.dtype());
                Ok(Tensor::<1>::from_data(data, (device, dtype)))
            },
            &record.adam_steps,
        )
        .map_err(|problem| checkpoint_error(&optim_path, problem))?;
    Ok(Restored {
        record,
        model,
        optimizer,
    })
}
