//! The reference's distributed loader: rank `r` of `W` reads windows of `B·T + 1` tokens starting
//! at `r·B·T`, advancing by `W·B·T`, and moves to the next shard when the next window would run
//! past the end.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use brainfloat_files::{sha256_hex, write_atomic};

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

    /// Every shard's [`ShardIdentity`], in reading order.
    pub fn identities(&self) -> Result<Vec<ShardIdentity>, DataError> {
        self.paths
            .iter()
            .map(|path| Shard::open(path)?.identity())
            .collect()
    }

    /// Where the next window starts.
    pub fn position(&self) -> LoaderPosition {
        self.position
    }

    /// The batch each window holds: `(B, T)`, a window being `B·T + 1` tokens.
    pub fn batch_shape(&self) -> (usize, usize) {
        (self.batch_size, self.seq_len)
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

    /// The next window of `B·T + 1` tokens (inputs are the first `B·T`, targets the last). A
    /// shard that shrank since it was opened is an error naming it.
    pub fn next_window(&mut self) -> Result<Vec<u32>, DataError> {
        let window = self
            .shard
            .window(self.position.offset, self.batch_size * self.seq_len + 1)?;
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

// ----------------------------------------------------------------------------------------------
// The shard format

// One token shard: 256 little-endian int32 header words (magic 20240520, version, token
// count), then that many little-endian token ids: uint16 in version 1 (llm.c's and
// modded-nanogpt's, for vocabularies up to 65,536), uint32 in version 2 (larger vocabularies).

/// `header[0]` of every shard.
pub const SHARD_MAGIC: i32 = 20240520;
/// `header[1]` of a shard of 16-bit token ids (llm.c's and modded-nanogpt's).
pub const SHARD_VERSION: i32 = 1;
/// `header[1]` of a shard of 32-bit token ids, for vocabularies over 65,536.
pub const SHARD_VERSION_U32: i32 = 2;
/// Header length in int32 words.
pub const HEADER_WORDS: usize = 256;
/// Header length in bytes.
pub const HEADER_BYTES: usize = HEADER_WORDS * 4;

/// A validated shard, read with positional reads: not memory-mapped, because a mapped file
/// truncated by another process kills the reader with SIGBUS, where a read returns an error.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    file: File,
    len: usize,
    /// Bytes per token id: 2 (version 1) or 4 (version 2).
    token_bytes: usize,
    modified: Option<SystemTime>,
}

/// What a checkpoint remembers of a training shard, to tell on resume whether the data position
/// it recorded still points into the same tokens: the file's name, its token count and the
/// SHA-256 of its header (cheap to compute on a set of large shards).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIdentity {
    /// The file name (without its folder: a moved data set is the same set).
    pub file: String,
    /// Tokens it holds.
    pub tokens: usize,
    /// SHA-256 of its header, hex.
    pub header_sha256: String,
}

/// Tokens read per `read_exact_at` when scanning a whole shard.
const SCAN_TOKENS: usize = 1 << 20;

/// A shard whose every token was found below a vocabulary size: the file (by path, length and
/// modification time, so a rewritten file is checked again) and that size.
type CheckedVocab = (PathBuf, usize, Option<SystemTime>, usize);

/// The shards this process has checked, so that a shard opened again (the validation shards at
/// every evaluation) is not scanned again.
static CHECKED_VOCAB: Mutex<Option<HashSet<CheckedVocab>>> = Mutex::new(None);

impl Shard {
    /// Opens and validates `path`: header length, magic, version, and a token count that agrees
    /// exactly with the file's length.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let error = |problem: String| DataError::new(path, problem);
        let file = File::open(path).map_err(|err| error(format!("cannot open: {err}")))?;
        let metadata = file
            .metadata()
            .map_err(|err| error(format!("cannot read its size: {err}")))?;
        if !metadata.is_file() {
            return Err(error("not a regular file".to_string()));
        }
        let modified = metadata.modified().ok();
        let file_len = usize::try_from(metadata.len()).unwrap_or(usize::MAX);
        if file_len < HEADER_BYTES {
            return Err(error(format!(
                "truncated header: {file_len} bytes, a shard starts with a {HEADER_BYTES}-byte header"
            )));
        }
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut header, 0)
            .map_err(|err| error(format!("cannot read the header: {err}")))?;
        let word = |i: usize| i32::from_le_bytes(header[4 * i..4 * i + 4].try_into().unwrap());
        if word(0) != SHARD_MAGIC {
            return Err(error(format!(
                "wrong magic number {} (expected {SHARD_MAGIC}): not an llm.c / modded-nanogpt \
                 token shard",
                word(0)
            )));
        }
        let (token_bytes, width) = match word(1) {
            SHARD_VERSION => (2, "2-byte uint16"),
            SHARD_VERSION_U32 => (4, "4-byte uint32"),
            version => {
                return Err(error(format!(
                    "unsupported version {version} (expected {SHARD_VERSION}: 16-bit token ids, \
                     or {SHARD_VERSION_U32}: 32-bit)"
                )));
            }
        };
        let count = word(2);
        let payload = file_len - HEADER_BYTES;
        if !payload.is_multiple_of(token_bytes) {
            let what = if token_bytes == 2 { "odd" } else { "ragged" };
            return Err(error(format!(
                "{what} token payload of {payload} bytes: tokens are {width}"
            )));
        }
        if count < 0 || count as usize * token_bytes != payload {
            return Err(error(format!(
                "header says {count} tokens ({} bytes) but the file holds {} tokens ({payload} bytes)",
                count.max(0) as i64 * token_bytes as i64,
                payload / token_bytes
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len: count as usize,
            token_bytes,
            modified,
        })
    }

    /// The shard's [`ShardIdentity`].
    pub fn identity(&self) -> Result<ShardIdentity, DataError> {
        let mut header = [0u8; HEADER_BYTES];
        self.file
            .read_exact_at(&mut header, 0)
            .map_err(|err| DataError::new(&self.path, format!("cannot read the header: {err}")))?;
        Ok(ShardIdentity {
            file: self
                .path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            tokens: self.len,
            header_sha256: sha256_hex(&header),
        })
    }

    /// The shard's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the shard holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The token at `index`.
    pub fn token(&self, index: usize) -> Result<u32, DataError> {
        Ok(self.window(index, 1)?[0])
    }

    /// Tokens `start .. start + len`, read from the file. A range past the tokens the header
    /// declared, or a read cut short because the file shrank since it was opened, is an error
    /// naming the shard.
    pub fn window(&self, start: usize, len: usize) -> Result<Vec<u32>, DataError> {
        if start.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(DataError::new(
                &self.path,
                format!(
                    "tokens {start}..{} asked of a shard of {} tokens",
                    start.saturating_add(len),
                    self.len
                ),
            ));
        }
        let width = self.token_bytes;
        let mut bytes = vec![0u8; width * len];
        self.file
            .read_exact_at(&mut bytes, (HEADER_BYTES + width * start) as u64)
            .map_err(|err| {
                let now = self.file.metadata().map(|m| m.len()).ok();
                let problem = match now {
                    Some(now) if now < (HEADER_BYTES + width * self.len) as u64 => format!(
                        "the file changed while training read it: {now} bytes now, {} when \
                         opened; a shard must not be rewritten or truncated during a run",
                        HEADER_BYTES + width * self.len
                    ),
                    _ => format!("cannot read tokens {start}..{}: {err}", start + len),
                };
                DataError::new(&self.path, problem)
            })?;
        Ok(match width {
            2 => bytes
                .chunks_exact(2)
                .map(|pair| u32::from(u16::from_le_bytes([pair[0], pair[1]])))
                .collect(),
            _ => bytes
                .chunks_exact(4)
                .map(|word| u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
                .collect(),
        })
    }

    /// Checks that every token id is below `vocab_size`; the error gives the first bad id and
    /// its position.
    pub fn check_vocab(&self, vocab_size: usize) -> Result<(), DataError> {
        for start in (0..self.len).step_by(SCAN_TOKENS) {
            let tokens = self.window(start, SCAN_TOKENS.min(self.len - start))?;
            if let Some(i) = tokens.iter().position(|&t| t as usize >= vocab_size) {
                return Err(DataError::new(
                    &self.path,
                    format!(
                        "token id {} at position {} is outside the vocabulary of {vocab_size}",
                        tokens[i],
                        start + i
                    ),
                ));
            }
        }
        Ok(())
    }

    /// [`check_vocab`](Self::check_vocab), once per file and size in this process: a shard
    /// already checked (same path, length and modification time) is not scanned again.
    pub fn check_vocab_once(&self, vocab_size: usize) -> Result<(), DataError> {
        let key = (self.path.clone(), self.len, self.modified, vocab_size);
        let checked =
            |set: &Option<HashSet<CheckedVocab>>| set.as_ref().is_some_and(|s| s.contains(&key));
        if checked(&CHECKED_VOCAB.lock().unwrap_or_else(PoisonError::into_inner)) {
            return Ok(());
        }
        self.check_vocab(vocab_size)?;
        CHECKED_VOCAB
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashSet::new)
            .insert(key);
        Ok(())
    }
}

/// The bytes of a shard holding `tokens`: version 1 (16-bit ids, what llm.c and
/// modded-nanogpt read) when every id fits in 16 bits, version 2 (32-bit ids) otherwise.
pub fn shard_bytes<T: Copy + Into<u32>>(tokens: &[T]) -> Vec<u8> {
    let wide = tokens.iter().any(|&t| t.into() > u32::from(u16::MAX));
    let mut header = [0i32; HEADER_WORDS];
    header[0] = SHARD_MAGIC;
    header[1] = if wide {
        SHARD_VERSION_U32
    } else {
        SHARD_VERSION
    };
    header[2] = i32::try_from(tokens.len()).expect("a shard holds fewer than 2³¹ tokens");
    let width = if wide { 4 } else { 2 };
    let mut bytes = Vec::with_capacity(HEADER_BYTES + width * tokens.len());
    header
        .iter()
        .for_each(|w| bytes.extend_from_slice(&w.to_le_bytes()));
    for &token in tokens {
        let id: u32 = token.into();
        if wide {
            bytes.extend_from_slice(&id.to_le_bytes());
        } else {
            bytes.extend_from_slice(&(id as u16).to_le_bytes());
        }
    }
    bytes
}

/// Writes `tokens` as a shard at `path`, atomically ([`write_atomic`]).
pub fn write_shard<T: Copy + Into<u32>>(path: &Path, tokens: &[T]) -> Result<(), DataError> {
    write_atomic(path, &shard_bytes(tokens))
        .map_err(|err| DataError::new(path, format!("cannot write: {err}")))
}
