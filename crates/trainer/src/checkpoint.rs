//! Checkpoints: the model (PyTorch names) and the optimizer state as safetensors, and a JSON
//! record of step, data position, seed, config and the files' SHA-256, written last so that a
//! checkpoint exists only once all of it is on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use brainfloat_data::{LoaderPosition, sha256_hex, write_atomic};
use brainfloat_gpt::{Gpt, serialize_tensors, tensor_data};
use brainfloat_precision::named_params;
use burn::tensor::{DType, Device, Tensor};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::optim::RecordOptimizer;

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

fn checkpoint_error(path: &Path, problem: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
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
        write_atomic(&path, bytes).map_err(|err| checkpoint_error(&path, err.to_string()))?;
        Ok(FileDigest {
            file: name,
            sha256: sha256_hex(bytes),
        })
    };
    let model_bytes = model
        .to_safetensors()
        .map_err(|err| checkpoint_error(dir, err.to_string()))?;
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
    write_atomic(&path, &json).map_err(|err| checkpoint_error(&path, err.to_string()))?;
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

/// Reads the checkpoint whose record is `path` into `model` (already built with the run's
/// shape and policy) and a fresh `optimizer`, verifying every file's SHA-256. Weights and
/// optimizer state take the run's dtypes: each state tensor its parameter's, so a checkpoint
/// of another precision policy is converted (see [`crate::resume`]).
pub fn load_checkpoint(
    path: &Path,
    model: Gpt,
    mut optimizer: RecordOptimizer,
    device: &Device,
) -> Result<Restored, TrainError> {
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
    let dir = path.parent().unwrap_or(Path::new("."));
    let model_bytes = read_verified(dir, &record.model)?;
    let model = model
        .load_safetensors_bytes(&model_bytes)
        .map_err(|problem| checkpoint_error(&dir.join(&record.model.file), problem))?;

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
                let view = file.tensor(name).map_err(|_| format!("missing {name}"))?;
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
