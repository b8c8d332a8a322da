//! Text from a trained brainfloat GPT.
//!
//! [`generate`] runs the decoding loop: the prompt's forward pass fills the model's
//! [`KvCache`](brainfloat_gpt::KvCache), then each new token costs one position. Tokens are
//! picked by a [`Sampler`] (greedy, or temperature / top-k / top-p from a seed) that never
//! picks an id past the tokenizer's, and their text is streamed once it forms whole UTF-8
//! characters ([`TextStream`]), with GPT-2's tokenizer or any other
//! [`Tokenizer`](brainfloat_data::Tokenizer). Logits are the model's soft-capped fp32 logits, computed under
//! its precision policy (bf16 under the bf16 presets), as in training.
//!
//! ```
//! use brainfloat_data::{Gpt2Tokenizer, Tokenizer};
//! use brainfloat_generate::{GenerateOptions, Sampling, generate};
//! use brainfloat_gpt::GptConfig;
//! use burn::tensor::Device;
//!
//! let device = Device::flex();
//! let model = GptConfig::tiny().init(&device).unwrap();
//! let tokenizer = Gpt2Tokenizer::new();
//! let options = GenerateOptions {
//!     max_tokens: 8,
//!     sampling: Sampling::GREEDY,
//!     stop_at_end_of_text: true,
//!     kv_cache: true,
//! };
//! let prompt = tokenizer.encode("The"); // [464]: inside the tiny model's 512 ids
//! let out = generate(&model, &tokenizer, &prompt, &options, &device, |text| print!("{text}"))
//!     .unwrap();
//! assert_eq!(out.tokens.len(), 8);
//! ```

mod error;
mod generator;
mod sampler;
mod text_stream;

pub use error::GenerateError;
pub use generator::{GenerateOptions, Generation, first_context, generate, inference_model};
pub use sampler::{Sampler, Sampling};
pub use text_stream::TextStream;
