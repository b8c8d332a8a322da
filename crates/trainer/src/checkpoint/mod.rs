//! Checkpoints, the one module that turns tensors into files and back.
//!
//! - **Weights** (`weights.rs`): safetensors with PyTorch's state-dict names and layouts, each
//!   tensor in its storage dtype, so the same file moves between this model and the PyTorch one.
//! - **A checkpoint**: those weights, the optimizer state (safetensors too) and a JSON record of
//!   step, data positions, seed, config and the files' SHA-256, written last so that a
//!   checkpoint exists only once all of it is on disk. Every file is written atomically
//!   ([`write_atomic`]: temporary, fsync, rename).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use brainfloat_data::{LoaderPosition, ShardIdentity};
use brainfloat_files::{sha256_hex, write_atomic};
use brainfloat_gpt::{Gpt, LanguageModel};
use brainfloat_precision::{PrecisionPolicy, named_params};
use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{TensorFileError, TrainError};
use crate::faults::FaultPoint;
use crate::optim::RecordOptimizer;

mod weights;

use weights::tensor_data;
pub use weights::{
    SHAPE_METADATA, load_weights, save_weights, weights_from_safetensors, weights_shape,
    weights_to_safetensors,
};
pub(crate) use weights::{serialize_tensors, weights_from_tensors};

pub(crate) fn checkpoint_error(path: &Path, problem: impl ToString) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// Version of the checkpoint record: 2 adds the run's identity, the shards and file names
/// unique to each write; records of version 1 still load.
pub const CHECKPOINT_FORMAT: u32 = 2;

/// The oldest record version that loads.
const OLDEST_FORMAT: u32 = 1;

/// A record is a few KiB of JSON; anything this large is not one.
const MAX_RECORD_BYTES: u64 = 16 << 20;

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
    /// The format it is written in (this build writes 2, reads 1 and 2).
    pub format: u32,
    /// The run that wrote it: made at a fresh start, kept on resume. `None` in version 1.
    #[serde(default)]
    pub run: Option<String>,
    /// Optimizer steps completed.
    pub step: usize,
    /// Where each rank's loader continues, by rank.
    pub loader: Vec<LoaderPosition>,
    /// The training shards the positions point into. Empty in version 1.
    #[serde(default)]
    pub shards: Vec<ShardIdentity>,
    /// The precision policy of the run.
    pub policy: PrecisionPolicy,
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
pub struct Restored<M = Gpt> {
    /// The record.
    pub record: CheckpointRecord,
    /// The model with the checkpoint's weights.
    pub model: M,
    /// The optimizer with its state.
    pub optimizer: RecordOptimizer,
}

/// A new random identity, for a run or one checkpoint write: 16 hex digits from the standard
/// library's OS-seeded hasher keys, the time and the process.
pub fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// The record's file name for `step`.
pub fn record_name(step: usize) -> String {
    format!("step_{step:06}.json")
}

/// The step a checkpoint file's name starts with (`step_<digits>.<rest>`), and the rest.
pub(crate) fn file_step(name: &str) -> Option<(usize, &str)> {
    let (digits, rest) = name.strip_prefix("step_")?.split_once('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, rest))
}

/// The step of a record's file name (`step_<digits>.json`), `None` for any other name.
pub fn record_step(name: &str) -> Option<usize> {
    file_step(name).and_then(|(step, rest)| (rest == "json").then_some(step))
}

/// The checkpoint records in `dir` (regular files named `step_<N>.json`), newest step first;
/// steps compare as numbers, so step 1,000,000 is newer than step 999,999.
pub fn checkpoint_records(dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut records: Vec<(usize, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .filter_map(|entry| {
            let step = record_step(&entry.file_name().to_string_lossy())?;
            Some((step, entry.path()))
        })
        .collect();
    records.sort_by(|a, b| b.cmp(a));
    records
}

/// Writes the checkpoint of `step` into `dir`: weights, optimizer state, then the record, each
/// file atomically and fsynced with its folder. The data files' names are unique to this write
/// (`step_N.<write>.model.safetensors`), so a record always names the files written with it,
/// even when a step is written again; a write that fails removes what it wrote. Returns the
/// record's path.
pub fn save_checkpoint(
    dir: &Path,
    model: &impl LanguageModel,
    optimizer: &RecordOptimizer,
    step: usize,
    run: &RunState,
) -> Result<PathBuf, TrainError> {
    let write_id = random_id();
    let mut written: Vec<PathBuf> = Vec::new();
    let mut write = |name: String, bytes: &[u8]| -> Result<FileDigest, TrainError> {
        let path = dir.join(&name);
        write_atomic(&path, bytes).map_err(|err| checkpoint_error(&path, err))?;
        written.push(path);
        Ok(FileDigest {
            file: name,
            sha256: sha256_hex(bytes),
        })
    };
    let result = (|| {
        let model_bytes =
            weights_to_safetensors(model).map_err(|err| checkpoint_error(dir, err))?;
        let model_file = write(
            format!("step_{step:06}.{write_id}.model.safetensors"),
            &model_bytes,
        )?;
        drop(model_bytes);
        crate::faults::point(FaultPoint::AfterModel, step);
        let (state, adam_steps) = optimizer.state();
        let state = state
            .into_iter()
            .map(|(name, tensor)| {
                let shape = tensor.dims().to_vec();
                (name, tensor.into_data(), shape)
            })
            .collect();
        let optim_bytes =
            serialize_tensors(state, &[]).map_err(|err| checkpoint_error(dir, err))?;
        let optim_file = write(
            format!("step_{step:06}.{write_id}.optim.safetensors"),
            &optim_bytes,
        )?;
        let record = CheckpointRecord {
            format: CHECKPOINT_FORMAT,
            run: Some(run.id.clone()),
            step,
            loader: run.loader.clone(),
            shards: run.shards.clone(),
            policy: *model.policy(),
            config: run.config.clone(),
            adam_steps,
            model: model_file,
            optimizer: optim_file,
        };
        let json = serde_json::to_vec_pretty(&record).expect("the record serializes");
        let path = dir.join(record_name(step));
        crate::faults::point(FaultPoint::BeforeRecord, step);
        write_atomic(&path, &json).map_err(|err| checkpoint_error(&path, err))?;
        crate::faults::point(FaultPoint::AfterRecord, step);
        Ok(path)
    })();
    if result.is_err() {
        for path in &written {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

/// What a checkpoint records of the run besides the model and optimizer.
#[derive(Debug, Clone)]
pub struct RunState {
    /// The run's identity.
    pub id: String,
    /// Where each rank's loader continues, by rank.
    pub loader: Vec<LoaderPosition>,
    /// The training shards.
    pub shards: Vec<ShardIdentity>,
    /// The run's configuration.
    pub config: TrainConfig,
}

/// `file` of a record in `dir`, confined there: a plain file name (no folder, no `..`, not
/// absolute) of a regular file (not a link, a device or a folder).
fn confined(dir: &Path, file: &str) -> Result<PathBuf, TrainError> {
    let mut parts = Path::new(file).components();
    if !matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    ) {
        return Err(checkpoint_error(
            &dir.join(file),
            format!(
                "the record names `{file}`, not a file beside it: a record's files are plain \
                 names in its own folder"
            ),
        ));
    }
    let path = dir.join(file);
    let metadata = std::fs::symlink_metadata(&path)
        .map_err(|err| checkpoint_error(&path, format!("cannot read: {err}")))?;
    if !metadata.is_file() {
        return Err(checkpoint_error(&path, "not a regular file"));
    }
    Ok(path)
}

/// The length a safetensors file at `path` must have: its 8-byte header length, the header,
/// and the end of the furthest tensor the header declares. Read from the header alone, so a
/// file of the wrong size is refused before it is read.
fn declared_safetensors_len(path: &Path) -> Result<u64, String> {
    let (header_len, header) = safetensors_header(path)?;
    let end = header
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .map(|(_, tensor)| tensor["data_offsets"][1].as_u64())
        .try_fold(0u64, |end, tensor_end| tensor_end.map(|e| end.max(e)))
        .ok_or("not a safetensors file: a tensor without data offsets")?;
    Ok(8 + header_len + end)
}

/// The header of the safetensors file `path` and its length in bytes, read (and refused) as
/// it is, before any tensor: the file must be a regular file whose header is JSON within
/// safetensors' own limit.
fn safetensors_header(path: &Path) -> Result<(u64, HashMap<String, serde_json::Value>), String> {
    use std::io::Read;
    /// safetensors' own limit on a header.
    const MAX_HEADER: u64 = 100_000_000;
    let metadata = std::fs::metadata(path).map_err(|err| format!("cannot read: {err}"))?;
    if !metadata.is_file() {
        return Err("not a regular file".into());
    }
    let mut file = std::fs::File::open(path).map_err(|err| format!("cannot read: {err}"))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "not a safetensors file: shorter than its 8-byte header length".to_string())?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER {
        return Err(format!(
            "not a safetensors file: header of {header_len} bytes declared"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|_| "truncated inside its safetensors header".to_string())?;
    let header = serde_json::from_slice(&header)
        .map_err(|err| format!("not a safetensors file: its header is not JSON ({err})"))?;
    Ok((header_len, header))
}

/// The bytes of the safetensors file `path`, read only once it is known to be a regular file
/// of exactly the length its header declares (not a device, not cut short, not padded).
pub(crate) fn read_safetensors(path: &Path) -> Result<Vec<u8>, TrainError> {
    // Refuses what is not a regular file first (the header is read from it).
    let declared = declared_safetensors_len(path).map_err(|err| checkpoint_error(path, err))?;
    let metadata = std::fs::metadata(path)
        .map_err(|err| checkpoint_error(path, format!("cannot read: {err}")))?;
    if metadata.len() != declared {
        return Err(checkpoint_error(
            path,
            format!(
                "{} bytes, its header declares {declared}: the file is truncated or was \
                 replaced",
                metadata.len()
            ),
        ));
    }
    let mut bytes = usize::try_from(declared)
        .ok()
        .and_then(brainfloat_memory::try_buffer)
        .ok_or_else(|| {
            checkpoint_error(
                path,
                format!(
                    "{} does not fit in the memory left to this process",
                    brainfloat_memory::bytes_text(declared)
                ),
            )
        })?;
    std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_to_end(&mut file, &mut bytes))
        .map_err(|err| checkpoint_error(path, format!("cannot read: {err}")))?;
    Ok(bytes)
}

fn read_verified(dir: &Path, file: &FileDigest) -> Result<Vec<u8>, TrainError> {
    let path = confined(dir, &file.file)?;
    let bytes = read_safetensors(&path)?;
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
    let metadata = std::fs::metadata(path)
        .map_err(|err| checkpoint_error(path, format!("cannot read: {err}")))?;
    if !metadata.is_file() {
        return Err(checkpoint_error(path, "not a regular file"));
    }
    if metadata.len() > MAX_RECORD_BYTES {
        return Err(checkpoint_error(
            path,
            format!(
                "{} bytes: not a checkpoint record (a record is a few KiB of JSON)",
                metadata.len()
            ),
        ));
    }
    let text =
        std::fs::read(path).map_err(|err| checkpoint_error(path, format!("cannot read: {err}")))?;
    let record: CheckpointRecord = serde_json::from_slice(&text)
        .map_err(|err| checkpoint_error(path, format!("not a checkpoint record: {err}")))?;
    if !(OLDEST_FORMAT..=CHECKPOINT_FORMAT).contains(&record.format) {
        return Err(checkpoint_error(
            path,
            format!(
                "checkpoint format {} (this build reads {OLDEST_FORMAT} to {CHECKPOINT_FORMAT})",
                record.format
            ),
        ));
    }
    Ok(record)
}

/// The weights of the checkpoint whose record `record` was read from `path`, read into `model`
/// (built with the record's shape: `record.config.shape()`) after their SHA-256 is verified;
/// the optimizer state is not read. For evaluation and generation.
pub fn load_checkpoint_weights<M: Module>(
    path: &Path,
    record: &CheckpointRecord,
    model: M,
) -> Result<M, TrainError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let model_bytes = read_verified(dir, &record.model)?;
    let file = dir.join(&record.model.file);
    if let Some(carried) = weights_shape(&file)? {
        let recorded = record.config.shape();
        if carried != *recorded {
            let (recorded, carried) = if recorded.describe() == carried.describe() {
                (recorded.to_json(), carried.to_json())
            } else {
                (recorded.describe(), carried.describe())
            };
            return Err(checkpoint_error(
                path,
                format!(
                    "its config's model ({recorded}) is not the model its weights file {} \
                     carries ({carried}): the record and the file are not one checkpoint",
                    record.model.file
                ),
            ));
        }
    }
    weights_from_safetensors(model, &model_bytes).map_err(|err| checkpoint_error(&file, err))
}

/// Reads the checkpoint whose record is `path` into `model` (already built with the run's
/// shape and policy) and a fresh `optimizer`, verifying every file's SHA-256. Weights and
/// optimizer state take the run's dtypes: each state tensor its parameter's, so a checkpoint
/// of another precision policy is converted (see the `resume` module).
pub fn load_checkpoint<M: LanguageModel>(
    path: &Path,
    model: M,
    mut optimizer: RecordOptimizer,
    device: &Device,
) -> Result<Restored<M>, TrainError> {
    let record = read_record(path)?;
    let model = load_checkpoint_weights(path, &record, model)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let optim_path = dir.join(&record.optimizer.file);
    let optim_bytes = read_verified(dir, &record.optimizer)?;
    let file = SafeTensors::deserialize(&optim_bytes)
        .map_err(|err| checkpoint_error(&optim_path, format!("not safetensors: {err}")))?;
    let names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    let params = named_params(&model);
    let param_dtypes: BTreeMap<String, DType> = params
        .iter()
        .map(|p| (p.name.clone(), p.tensor.dtype()))
        .collect();
    let param_numel: BTreeMap<String, usize> = params
        .iter()
        .map(|p| (p.name.clone(), p.shape.iter().product()))
        .collect();
    drop(params);
    optimizer
        .load_state(
            &model,
            &names,
            |name| {
                let view = file
                    .tensor(name)
                    .map_err(|_| TensorFileError::one(format!("missing {name}")))?;
                if view.shape().len() != 1 {
                    return Err(TensorFileError::one(format!(
                        "state {name} has shape {:?}; optimizer state tensors are flat (rank 1)",
                        view.shape()
                    )));
                }
                let data = tensor_data(&view, name, view.shape().to_vec())?;
                // `param.exp_avg` → `param`: the state takes its parameter's dtype.
                let param = name.rsplit_once('.').map_or(name, |(param, _)| param);
                let dtype = param_dtypes.get(param).copied().unwrap_or(data.dtype());
                Ok(Tensor::<1>::from_data(data, (device, dtype)))
            },
            &record.adam_steps,
        )
        .and_then(|()| optimizer.check_state(&param_numel, record.step))
        .map_err(|problem| checkpoint_error(&optim_path, problem))?;
    Ok(Restored {
        record,
        model,
        optimizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn record_names_give_their_steps_as_numbers() {
        assert_eq!(record_step("step_000150.json"), Some(150));
        assert_eq!(record_step("step_1000000.json"), Some(1_000_000));
        assert_eq!(record_step("step_.json"), None);
        assert_eq!(record_step("step_12a.json"), None);
        assert_eq!(record_step("step_000150.w.model.safetensors"), None);
        let dir = tempfile::tempdir().unwrap();
        for step in [999_999, 1_000_000, 2] {
            std::fs::write(dir.path().join(record_name(step)), b"{}").unwrap();
        }
        std::fs::create_dir(dir.path().join(record_name(5_000_000))).unwrap();
        let steps: Vec<usize> = checkpoint_records(dir.path())
            .into_iter()
            .map(|(step, _)| step)
            .collect();
        assert_eq!(
            steps,
            [1_000_000, 999_999, 2],
            "numbers, newest first, files only"
        );
    }

    #[test]
    fn a_records_files_are_plain_names_of_regular_files_in_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.safetensors"), b"x").unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero")).unwrap();
        assert!(confined(dir.path(), "a.safetensors").is_ok());
        for (file, problem) in [
            ("/dev/zero", "not a file beside it"),
            ("../a.safetensors", "not a file beside it"),
            ("sub/a.safetensors", "not a file beside it"),
            ("", "not a file beside it"),
            ("zero", "not a regular file"),
            ("absent", "cannot read"),
        ] {
            let err = confined(dir.path(), file).unwrap_err().to_string();
            assert!(err.contains(problem), "{file}: {err}");
        }
    }

    #[test]
    fn a_safetensors_length_comes_from_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let data = TensorData::new(vec![1.0f32, 2.0, 3.0], [3]);
        let bytes = serialize_tensors(vec![("t".into(), data, vec![3])], &[]).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(declared_safetensors_len(&path), Ok(bytes.len() as u64));
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(
            read_safetensors(&path)
                .unwrap_err()
                .to_string()
                .contains("header declares")
        );
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(
            declared_safetensors_len(&path)
                .unwrap_err()
                .contains("header of")
        );
    }
}
