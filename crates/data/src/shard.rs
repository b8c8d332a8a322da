//! One token shard: 256 little-endian int32 header words (magic 20240520, version 1, token
//! count), then that many little-endian uint16 GPT-2 token ids.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use memmap2::Mmap;

use crate::atomic::write_atomic;
use crate::error::DataError;

/// `header[0]` of every shard.
pub const SHARD_MAGIC: i32 = 20240520;
/// `header[1]`: the only version this format has.
pub const SHARD_VERSION: i32 = 1;
/// Header length in int32 words.
pub const HEADER_WORDS: usize = 256;
/// Header length in bytes.
pub const HEADER_BYTES: usize = HEADER_WORDS * 4;

/// A validated shard, memory-mapped.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    len: usize,
    modified: Option<SystemTime>,
}

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
        // SAFETY: the map is read-only; a shard modified by another process while we read it
        // gives wrong tokens, not memory unsafety for the u8 reads done here.
        let map = unsafe { Mmap::map(&file) }.map_err(|err| error(format!("cannot map: {err}")))?;
        let modified = file.metadata().and_then(|m| m.modified()).ok();
        if map.len() < HEADER_BYTES {
            return Err(error(format!(
                "truncated header: {} bytes, a shard starts with a {HEADER_BYTES}-byte header",
                map.len()
            )));
        }
        let word = |i: usize| i32::from_le_bytes(map[4 * i..4 * i + 4].try_into().unwrap());
        if word(0) != SHARD_MAGIC {
            return Err(error(format!(
                "wrong magic number {} (expected {SHARD_MAGIC}): not an llm.c / modded-nanogpt \
                 token shard",
                word(0)
            )));
        }
        if word(1) != SHARD_VERSION {
            return Err(error(format!(
                "unsupported version {} (expected {SHARD_VERSION})",
                word(1)
            )));
        }
        let count = word(2);
        let payload = map.len() - HEADER_BYTES;
        if !payload.is_multiple_of(2) {
            return Err(error(format!(
                "odd token payload of {payload} bytes: tokens are 2-byte uint16"
            )));
        }
        if count < 0 || count as usize * 2 != payload {
            return Err(error(format!(
                "header says {count} tokens ({} bytes) but the file holds {} tokens ({payload} bytes)",
                count.max(0) as i64 * 2,
                payload / 2
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            len: count as usize,
            modified,
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
    pub fn token(&self, index: usize) -> u16 {
        let at = HEADER_BYTES + 2 * index;
        u16::from_le_bytes([self.map[at], self.map[at + 1]])
    }

    /// Tokens `start .. start + len`, copied out.
    pub fn window(&self, start: usize, len: usize) -> Vec<u16> {
        let bytes = &self.map[HEADER_BYTES + 2 * start..HEADER_BYTES + 2 * (start + len)];
        bytes
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect()
    }

    /// Checks that every token id is below `vocab_size`; the error gives the first bad id and
    /// its position.
    pub fn check_vocab(&self, vocab_size: usize) -> Result<(), DataError> {
        let payload = &self.map[HEADER_BYTES..HEADER_BYTES + 2 * self.len];
        let bad = payload
            .chunks_exact(2)
            .position(|pair| u16::from_le_bytes([pair[0], pair[1]]) as usize >= vocab_size);
        match bad {
            Some(i) => Err(DataError::new(
                &self.path,
                format!(
                    "token id {} at position {i} is outside the vocabulary of {vocab_size}",
                    self.token(i)
                ),
            )),
            None => Ok(()),
        }
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

/// The bytes of a shard holding `tokens`.
pub fn shard_bytes(tokens: &[u16]) -> Vec<u8> {
    let mut header = [0i32; HEADER_WORDS];
    header[0] = SHARD_MAGIC;
    header[1] = SHARD_VERSION;
    header[2] = i32::try_from(tokens.len()).expect("a shard holds fewer than 2³¹ tokens");
    let mut bytes = Vec::with_capacity(HEADER_BYTES + 2 * tokens.len());
    header
        .iter()
        .for_each(|w| bytes.extend_from_slice(&w.to_le_bytes()));
    tokens
        .iter()
        .for_each(|t| bytes.extend_from_slice(&t.to_le_bytes()));
    bytes
}

/// Writes `tokens` as a shard at `path`, atomically ([`write_atomic`]).
pub fn write_shard(path: &Path, tokens: &[u16]) -> Result<(), DataError> {
    write_atomic(path, &shard_bytes(tokens))
        .map_err(|err| DataError::new(path, format!("cannot write: {err}")))
}
