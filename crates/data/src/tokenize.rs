//! Text to token shards: the [`Tokenizer`] trait, GPT-2's BPE offline (`tiktoken-rs` ships the
//! r50k_base ranks) and any Hugging Face `tokenizer.json` (the `tokenizers` crate).

use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::loader::write_shard;
use brainfloat_files::remove_stale_temporaries;

/// GPT-2's `<|endoftext|>`, written before every document as llm.c's data scripts do.
pub const END_OF_TEXT: u32 = 50256;

/// Text to token ids and back, for shards.
pub trait Tokenizer {
    /// The ids of `text`, special-token names encoded as ordinary text.
    fn encode(&self, text: &str) -> Vec<u32>;

    /// The text of `tokens` (lossy where they end inside a UTF-8 character).
    fn decode(&self, tokens: &[u32]) -> String;

    /// How many ids it can produce: a model's vocabulary must hold at least these.
    fn vocab_size(&self) -> usize;

    /// The id written before every document in a shard (GPT-2's `<|endoftext|>`), if any.
    fn document_separator(&self) -> Option<u32>;

    /// A document as it goes into a shard: the separator, then its tokens.
    fn encode_document(&self, text: &str) -> Vec<u32> {
        self.document_separator()
            .into_iter()
            .chain(self.encode(text))
            .collect()
    }
}

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

    /// The bytes of one token (a token may hold part of a UTF-8 character); `None` for an id
    /// outside the tokenizer's [`GPT2_VOCAB`].
    pub fn token_bytes(&self, token: u32) -> Option<Vec<u8>> {
        self.bpe.decode_bytes(&[token]).ok()
    }
}

impl Tokenizer for Gpt2Tokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    fn decode(&self, tokens: &[u32]) -> String {
        self.bpe
            .decode(tokens)
            .unwrap_or_else(|_| String::from("<undecodable>"))
    }

    fn vocab_size(&self) -> usize {
        GPT2_VOCAB
    }

    fn document_separator(&self) -> Option<u32> {
        Some(END_OF_TEXT)
    }
}

/// A Hugging Face tokenizer (`tokenizer.json`, as `tokenizers` saves it and the hub serves it),
/// encoding without added special tokens, as `encode(text, add_special_tokens=False)` does.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    separator: Option<u32>,
}

impl HfTokenizer {
    /// Reads `path`; documents in shards are separated by the first of `<|endoftext|>`,
    /// `</s>`, `<|end_of_text|>`, `<eos>` the vocabulary has (none if it has none).
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|err| DataError::new(path, format!("not a tokenizer.json: {err}")))?;
        let separator = ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"]
            .iter()
            .find_map(|name| inner.token_to_id(name));
        Ok(Self { inner, separator })
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.inner
            .encode(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .unwrap_or_default()
    }

    fn decode(&self, tokens: &[u32]) -> String {
        self.inner
            .decode(tokens, false)
            .unwrap_or_else(|_| String::from("<undecodable>"))
    }

    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn document_separator(&self) -> Option<u32> {
        self.separator
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
///
/// Ids that fit in 16 bits go into version-1 shards (what llm.c and modded-nanogpt read), larger
/// ones into version-2 shards of 32-bit ids.
pub fn tokenize_to_shards(
    tokenizer: &dyn Tokenizer,
    documents: &[PathBuf],
    out_dir: &Path,
    name: &str,
    val_every: usize,
) -> Result<CorpusStats, DataError> {
    if documents.is_empty() {
        return Err(DataError::new(out_dir, "no text documents to tokenize"));
    }
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
