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
    /// The ids of `text`: GPT-2's BPE encodes special-token names as ordinary text (as llm.c's
    /// scripts do); a `tokenizer.json` matches its added tokens as its library does.
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

/// The tokenizer of `path` (a Hugging Face `tokenizer.json`), or GPT-2's BPE without one.
pub fn tokenizer_at(path: Option<&Path>) -> Result<Box<dyn Tokenizer + Send + Sync>, DataError> {
    Ok(match path {
        Some(path) => Box::new(HfTokenizer::from_file(path)?),
        None => Box::new(Gpt2Tokenizer::new()),
    })
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
        // Byte by byte, then lossy: a sequence may end inside a character (an id past the
        // vocabulary, which no GPT-2 text has, reads as U+FFFD).
        let bytes: Vec<u8> = tokens
            .iter()
            .flat_map(|&token| {
                self.token_bytes(token)
                    .unwrap_or_else(|| char::REPLACEMENT_CHARACTER.to_string().into_bytes())
            })
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
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
    /// Tokens in the train shards.
    pub train_tokens: usize,
    /// Tokens in the val shards.
    pub val_tokens: usize,
    /// Train shards written.
    pub train_shards: usize,
    /// Val shards written.
    pub val_shards: usize,
}

/// How a corpus is cut into shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOptions {
    /// File-name prefix: `{name}_train_000.bin`, `{name}_val_000.bin`, ….
    pub name: String,
    /// Every `val_every`-th document (the last of each run of `val_every`) goes to validation;
    /// 0 = none.
    pub val_every: usize,
    /// A shard is closed once it holds this many tokens; documents are never split, so a
    /// shard ends with a whole document and may pass the size by up to one document.
    pub shard_tokens: usize,
}

/// Tokenizes `documents` (in order, as a stream: at most a shard's tokens are held) into shards
/// in `out_dir`; `progress` hears the documents and tokens done so far after each document.
/// Both splits span the whole corpus (every `val_every`-th document is validation's).
///
/// Ids that fit in 16 bits go into version-1 shards (what llm.c and modded-nanogpt read), larger
/// ones into version-2 shards of 32-bit ids. A split with no document still gets one (empty)
/// shard, which the loader then refuses by name.
pub fn tokenize_to_shards(
    tokenizer: &dyn Tokenizer,
    documents: impl Iterator<Item = Result<String, DataError>>,
    out_dir: &Path,
    options: &ShardOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<CorpusStats, DataError> {
    std::fs::create_dir_all(out_dir)
        .map_err(|err| DataError::new(out_dir, format!("cannot create: {err}")))?;
    // Shards of an earlier, killed run of this (their writer is gone) go first.
    remove_stale_temporaries(out_dir)
        .map_err(|err| DataError::new(out_dir, format!("cannot clear stale temporaries: {err}")))?;
    let split = |split: &str| SplitWriter {
        prefix: out_dir.join(format!("{}_{split}", options.name)),
        shard_tokens: options.shard_tokens.max(1),
        buffer: Vec::new(),
        shards: 0,
        tokens: 0,
    };
    let (mut train, mut val) = (split("train"), split("val"));
    let mut count = 0;
    for (index, text) in documents.enumerate() {
        let tokens = tokenizer.encode_document(&text?);
        let every = options.val_every;
        if every > 0 && index % every == every - 1 {
            val.push(tokens)?;
        } else {
            train.push(tokens)?;
        }
        count = index + 1;
        progress(count, train.tokens + val.tokens);
    }
    if count == 0 {
        return Err(DataError::new(out_dir, "no documents to tokenize"));
    }
    train.finish()?;
    val.finish()?;
    Ok(CorpusStats {
        documents: count,
        train_tokens: train.tokens,
        val_tokens: val.tokens,
        train_shards: train.shards,
        val_shards: val.shards,
    })
}

/// One split's shards as they fill.
struct SplitWriter {
    /// `out_dir/{name}_{split}`: a shard is this and `_{index:03}.bin`.
    prefix: PathBuf,
    shard_tokens: usize,
    buffer: Vec<u32>,
    shards: usize,
    tokens: usize,
}

impl SplitWriter {
    /// Appends a whole document, closing the shard if it is full.
    fn push(&mut self, document: Vec<u32>) -> Result<(), DataError> {
        self.tokens += document.len();
        self.buffer.extend(document);
        if self.buffer.len() >= self.shard_tokens {
            self.write()?;
        }
        Ok(())
    }

    fn write(&mut self) -> Result<(), DataError> {
        let mut path = self.prefix.clone().into_os_string();
        path.push(format!("_{:03}.bin", self.shards));
        write_shard(Path::new(&path), &self.buffer)?;
        self.buffer.clear();
        self.shards += 1;
        Ok(())
    }

    /// Writes what is left (or an empty shard for a split with none).
    fn finish(&mut self) -> Result<(), DataError> {
        if !self.buffer.is_empty() || self.shards == 0 {
            self.write()?;
        }
        Ok(())
    }
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
