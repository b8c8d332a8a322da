//! The reference's distributed loader: rank `r` of `W` reads windows of `B·T + 1` tokens starting
//! at `r·B·T`, advancing by `W·B·T`, and moves to the next shard when the next window would run
//! past the end.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::shard::Shard;

/// Where a loader is: the shard index and the token offset of its next window. Saved with
/// checkpoints so a resumed run reads the same batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderPosition {
    /// Index into the loader's list of shards.
    pub shard: usize,
    /// Token offset of the next window in that shard.
    pub offset: usize,
}

/// Reads batches for one data-parallel rank from a list of shards, as the reference does.
#[derive(Debug)]
pub struct DistributedLoader {
    paths: Vec<PathBuf>,
    shard: Shard,
    position: LoaderPosition,
    batch_size: usize,
    seq_len: usize,
    rank: usize,
    world_size: usize,
    /// Token ids must be below this; each shard is checked when the loader first opens it.
    vocab_size: Option<usize>,
}

impl DistributedLoader {
    /// A loader over `paths` (read in the given order) for rank `rank` of `world_size`, batches
    /// of `batch_size` sequences of `seq_len` tokens. Every shard's header is validated now,
    /// and must hold at least `world_size·B·T + 1` tokens, as the reference requires.
    pub fn new(
        paths: Vec<PathBuf>,
        batch_size: usize,
        seq_len: usize,
        rank: usize,
        world_size: usize,
    ) -> Result<Self, DataError> {
        let Some(first) = paths.first() else {
            return Err(DataError::new(
                "",
                "no shards given: the shard set is empty",
            ));
        };
        if batch_size == 0 || seq_len == 0 || rank >= world_size {
            return Err(DataError::new(
                first,
                format!(
                    "impossible loader shape: batch size {batch_size}, sequence length {seq_len}, \
                     rank {rank} of {world_size}"
                ),
            ));
        }
        let needed = world_size * batch_size * seq_len + 1;
        for path in &paths {
            let shard = Shard::open(path)?;
            if shard.len() < needed {
                return Err(DataError::new(
                    path,
                    format!(
                        "holds {} tokens, fewer than the {needed} that one step of {world_size} \
                         rank(s) × {batch_size} × {seq_len} (+1) needs",
                        shard.len()
                    ),
                ));
            }
        }
        let mut loader = Self {
            shard: Shard::open(first)?,
            paths,
            position: LoaderPosition {
                shard: 0,
                offset: 0,
            },
            batch_size,
            seq_len,
            rank,
            world_size,
            vocab_size: None,
        };
        loader.seek(LoaderPosition {
            shard: 0,
            offset: loader.first_offset(),
        })?;
        Ok(loader)
    }

    /// Checks token ids against `vocab_size`: the current shard now, every other one when the
    /// loader first opens it (not all at start, which would read the whole dataset before the
    /// first step). A bad id is an error naming the shard and its position.
    pub fn with_vocab(mut self, vocab_size: usize) -> Result<Self, DataError> {
        self.shard.check_vocab_once(vocab_size)?;
        self.vocab_size = Some(vocab_size);
        Ok(self)
    }

    fn first_offset(&self) -> usize {
        self.rank * self.batch_size * self.seq_len
    }

    fn stride(&self) -> usize {
        self.world_size * self.batch_size * self.seq_len
    }

    /// The shards, in reading order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Where the next window starts.
    pub fn position(&self) -> LoaderPosition {
        self.position
    }

    /// Continues from `position` (taken from [`position`](Self::position) earlier).
    pub fn seek(&mut self, position: LoaderPosition) -> Result<(), DataError> {
        let path = self.paths.get(position.shard).ok_or_else(|| {
            DataError::new(
                self.paths[0].as_path(),
                format!(
                    "loader position names shard {} but the set has {}",
                    position.shard,
                    self.paths.len()
                ),
            )
        })?;
        if position.shard != self.position.shard || self.shard.path() != path.as_path() {
            let shard = Shard::open(path)?;
            if let Some(vocab_size) = self.vocab_size {
                shard.check_vocab_once(vocab_size)?;
            }
            self.shard = shard;
        }
        if position.offset + self.batch_size * self.seq_len + 1 > self.shard.len() {
            return Err(DataError::new(
                path,
                format!(
                    "loader position {} is past the last full window of this shard",
                    position.offset
                ),
            ));
        }
        self.position = position;
        Ok(())
    }

    /// Continues from `position` of rank 0 (what a checkpoint records): rank r reads
    /// `r·B·T` tokens further on, as from the start.
    pub fn seek_from_rank0(&mut self, position: LoaderPosition) -> Result<(), DataError> {
        self.seek(LoaderPosition {
            shard: position.shard,
            offset: position.offset + self.first_offset(),
        })
    }

    /// The next window of `B·T + 1` tokens (inputs are the first `B·T`, targets the last).
    pub fn next_window(&mut self) -> Result<Vec<u16>, DataError> {
        let window = self
            .shard
            .window(self.position.offset, self.batch_size * self.seq_len + 1);
        let offset = self.position.offset + self.stride();
        let next = if offset + self.stride() + 1 > self.shard.len() {
            LoaderPosition {
                shard: (self.position.shard + 1) % self.paths.len(),
                offset: self.first_offset(),
            }
        } else {
            LoaderPosition {
                shard: self.position.shard,
                offset,
            }
        };
        self.seek(next)?;
        Ok(window)
    }
}

/// Shards matching a file-name pattern with one `*` (for example
/// `data/fineweb_train_*.bin`), sorted by name. An empty match is an error naming the pattern.
pub fn shard_paths(pattern: &Path) -> Result<Vec<PathBuf>, DataError> {
    let dir = match pattern.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (prefix, suffix) = name.split_once('*').unwrap_or((name.as_str(), ""));
    let exact = !name.contains('*');
    let entries = std::fs::read_dir(dir)
        .map_err(|err| DataError::new(pattern, format!("cannot list {}: {err}", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|file| {
            if exact {
                *file == name
            } else {
                file.len() >= prefix.len() + suffix.len()
                    && file.starts_with(prefix)
                    && file.ends_with(suffix)
            }
        })
        .map(|file| dir.join(file))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(DataError::new(pattern, "no shard matches this pattern"));
    }
    Ok(paths)
}
