//! Text to GPT-2 token shards, offline (`tiktoken-rs` ships the r50k_base ranks).

use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::loader::write_shard;
use brainfloat_files::remove_stale_temporaries;

/// GPT-2's `<|endoftext|>`, written before every document as llm.c's data scripts do.
pub const END_OF_TEXT: u16 = 50256;

/// Ids the GPT-2 tokenizer knows: `0..50257` (`<|endoftext|>` the last). Models pad their
/// vocabulary beyond it (the record's 50304); those ids are never text.
pub const GPT2_VOCAB: usize = 50257;

/// A GPT-2 (r50k_base) tokenizer.
pub struct Gpt2Tokenizer {
    bpe: tiktoken_rs::CoreBPE,
}

impl Gpt2Tokenizer {
    /// Loads the ranks embedded in `tiktoken-rs`.
    pub fn new() -> Self {
        Self {
            bpe: tiktoken_rs::r50k_base().expect("tiktoken-rs ships r50k_base"),
        }
    }

    /// `<|endoftext|>` followed by the document's tokens (special-token text is encoded as
    /// ordinary text).
    pub fn encode_document(&self, text: &str) -> Vec<u16> {
        let tokens = self.bpe.encode_ordinary(text);
        std::iter::once(END_OF_TEXT)
            .chain(tokens.into_iter().map(|t| t as u16))
            .collect()
    }

    /// The tokens of `text`, with no `<|endoftext|>` before them (special-token text is
    /// encoded as ordinary text).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// The bytes of one token (a token may hold part of a UTF-8 character); `None` for an id
    /// outside the tokenizer's [`GPT2_VOCAB`].
    pub fn token_bytes(&self, token: u32) -> Option<Vec<u8>> {
        self.bpe.decode_bytes(&[token]).ok()
    }

    /// Text of `tokens` (lossy for partial UTF-8).
    pub fn decode(&self, tokens: &[u16]) -> String {
        let ranks: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
        self.bpe
            .decode(&ranks)
            .unwrap_or_else(|_| String::from("<undecodable>"))
    }
}

impl Default for Gpt2Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

/// Token counts of a tokenized corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorpusStats {
    /// Documents read.
    pub documents: usize,
    /// Tokens in the train shard.
    pub train_tokens: usize,
    /// Tokens in the val shard.
    pub val_tokens: usize,
}

/// Tokenizes `documents` (in order) and writes `{name}_train_000.bin` and `{name}_val_000.bin`
/// into `out_dir`: every `val_every`-th document (the last of each run of `val_every`) goes to
/// validation, so both splits span the whole corpus.
pub fn tokenize_to_shards(
    documents: &[PathBuf],
    out_dir: &Path,
    name: &str,
    val_every: usize,
) -> Result<CorpusStats, DataError> {
    if documents.is_empty() {
        return Err(DataError::new(out_dir, "no text documents to tokenize"));
    }
    let tokenizer = Gpt2Tokenizer::new();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (index, path) in documents.iter().enumerate() {
        let text = std::fs::read_to_string(path)
            .map_err(|err| DataError::new(path, format!("cannot read as UTF-8 text: {err}")))?;
        let tokens = tokenizer.encode_document(&text);
        if val_every > 0 && index % val_every == val_every - 1 {
            val.extend(tokens);
        } else {
            train.extend(tokens);
        }
    }
    std::fs::create_dir_all(out_dir)
        .map_err(|err| DataError::new(out_dir, format!("cannot create: {err}")))?;
    // Shards of an earlier, killed run of this (their writer is gone) go first.
    remove_stale_temporaries(out_dir)
        .map_err(|err| DataError::new(out_dir, format!("cannot clear stale temporaries: {err}")))?;
    write_shard(&out_dir.join(format!("{name}_train_000.bin")), &train)?;
    write_shard(&out_dir.join(format!("{name}_val_000.bin")), &val)?;
    Ok(CorpusStats {
        documents: documents.len(),
        train_tokens: train.len(),
        val_tokens: val.len(),
    })
}

/// Every `.txt` file under `path` (or `path` itself), sorted by path.
pub fn text_files(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|err| DataError::new(path, format!("cannot list: {err}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(DataError::new(path, "no .txt files here"));
    }
    Ok(files)
}
