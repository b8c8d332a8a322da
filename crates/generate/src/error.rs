//! Errors of generation.

use brainfloat_gpt::GptError;

/// Why text could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The prompt does not fit the model's context.
    #[error(
        "the prompt is {tokens} tokens, longer than the model's maximum sequence length of \
         {max_seq_len}; shorten it"
    )]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// The model's `max_seq_len`.
        max_seq_len: usize,
    },
    /// An empty prompt without a document separator (`<|endoftext|>`) the model knows.
    #[error(
        "the prompt is empty and the model's vocabulary of {vocab_size} has no document \
         separator (<|endoftext|>) of the tokenizer to start from; give a prompt"
    )]
    EmptyPrompt {
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// A prompt token the model has no embedding for.
    #[error("the prompt has the token {token}, outside the model's vocabulary of {vocab_size}")]
    OutsideVocabulary {
        /// The token id.
        token: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// A sampling setting out of its range.
    #[error("{setting}: {problem}")]
    Sampling {
        /// The setting (`--temperature`, `--top-k`, `--top-p`).
        setting: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The model refused its input.
    #[error(transparent)]
    Model(#[from] GptError),
}
