//! Token data for brainfloat: shards in the llm.c / modded-nanogpt `.bin` format (so FineWeb
//! shards made by those projects train here unchanged), the reference's distributed loader,
//! GPT-2 tokenizing of text into shards.
//!
//! ```
//! use brainfloat_data::{DistributedLoader, write_shard};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("train_000.bin");
//! let tokens: Vec<u16> = (0..100).collect();
//! write_shard(&path, &tokens).unwrap();
//!
//! // Rank 1 of 2, batches of 2 sequences of 8 tokens: windows of 17 tokens from 1·2·8 = 16.
//! let mut loader = DistributedLoader::new(vec![path], 2, 8, 1, 2).unwrap().with_vocab(512).unwrap();
//! assert_eq!(loader.next_window().unwrap(), (16..33).collect::<Vec<u32>>());
//! assert_eq!(loader.next_window().unwrap()[0], 16 + 2 * 2 * 8);
//! ```

mod documents;
mod error;
mod loader;
mod tokenize;

pub use documents::{DocumentSource, Documents};
pub use error::DataError;
pub use loader::{DistributedLoader, LoaderPosition, ShardIdentity, shard_paths};
pub use loader::{
    HEADER_BYTES, HEADER_WORDS, SHARD_MAGIC, SHARD_VERSION, SHARD_VERSION_U32, Shard, shard_bytes,
    write_shard,
};
pub use tokenize::{
    CorpusStats, END_OF_TEXT, GPT2_VOCAB, Gpt2Tokenizer, HfTokenizer, ShardOptions, Tokenizer,
    text_files, tokenize_to_shards, tokenizer_at,
};
