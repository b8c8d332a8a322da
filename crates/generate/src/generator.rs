//! The decoding loop: prompt in, tokens out one at a time, each through the model's KV cache.

use std::time::{Duration, Instant};

use brainfloat_data::Tokenizer;
use brainfloat_gpt::{GptError, LanguageModel, ModelShape};
use brainfloat_precision::apply_policy;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::GenerateError;
use crate::sampler::{Sampler, Sampling};
use crate::text_stream::TextStream;

/// What to generate and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// How each token is picked.
    pub sampling: Sampling,
    /// End at `<|endoftext|>` (not printed); otherwise it is printed and generation goes on.
    pub stop_at_end_of_text: bool,
    /// Run each new token through the [`KvCache`](brainfloat_gpt::KvCache) (one position per
    /// token); without it every token recomputes the whole context (for comparison: the same
    /// tokens, slower).
    pub kv_cache: bool,
}

/// What a generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Tokens of the prompt (with the `<|endoftext|>` an empty prompt starts from).
    pub prompt_tokens: usize,
    /// The generated tokens (the final `<|endoftext|>` included when it stopped there).
    pub tokens: Vec<u32>,
    /// Their text, as streamed.
    pub text: String,
    /// Whether it ended at `<|endoftext|>`.
    pub stopped_at_end_of_text: bool,
    /// Times the context reached the model's maximum and was cut to its later half.
    pub slides: usize,
    /// Time of the prompt's forward pass (the first token's logits).
    pub prefill: Duration,
    /// Time of the whole generation.
    pub elapsed: Duration,
}

impl Generation {
    /// Generated tokens per second of the whole generation (prompt included).
    pub fn tokens_per_sec(&self) -> f64 {
        self.tokens.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Generates text after `prompt` (token ids) with `model` on `device`, calling `on_text` with
/// each piece of text as soon as it forms whole UTF-8 characters.
///
/// The context is the prompt and the tokens so far. When it reaches the model's
/// `max_seq_len`, it slides: its later half is kept and run again (the cache restarts from
/// it), so generation can go on past the model's maximum with the same tokens with and
/// without the cache. A prompt longer than the maximum is refused.
pub fn generate(
    model: &impl LanguageModel,
    tokenizer: &dyn Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    device: &Device,
    mut on_text: impl FnMut(&str),
) -> Result<Generation, GenerateError> {
    let shape = model.shape();
    let (vocab_size, max_seq_len) = (shape.vocab_size(), shape.max_seq_len());
    let end_of_text = tokenizer.document_separator();
    let mut context = first_context(prompt, &shape, end_of_text)?;
    let mut sampler = Sampler::new(options.sampling, vocab_size.min(tokenizer.vocab_size()))?;
    let started = Instant::now();
    let mut generation = Generation {
        prompt_tokens: context.len(),
        tokens: Vec::new(),
        text: String::new(),
        stopped_at_end_of_text: false,
        slides: 0,
        prefill: Duration::ZERO,
        elapsed: Duration::ZERO,
    };
    let mut stream = TextStream::new(tokenizer);
    let mut emit = |piece: String, generation: &mut Generation| {
        if !piece.is_empty() {
            on_text(&piece);
            generation.text.push_str(&piece);
        }
    };
    let mut cache = model.cache(device);
    // Positions the model has not seen yet: the whole context first, then one token a step.
    let mut pending = context.clone();
    while generation.tokens.len() < options.max_tokens {
        if context.len() == max_seq_len {
            context.drain(..max_seq_len - (max_seq_len / 2).max(1));
            cache.clear();
            pending = context.clone();
            generation.slides += 1;
        }
        let inputs = if options.kv_cache {
            &pending
        } else {
            // Without the cache's keys and values, every step runs the whole context.
            cache.clear();
            &context
        };
        let logits = model.next_token_logits(token_tensor(inputs, device), &mut cache)?;
        let logits = logits
            .into_data()
            .try_into_vec::<f32>()
            .expect("next_token_logits is fp32");
        if generation.tokens.is_empty() {
            generation.prefill = started.elapsed();
        }
        let token = sampler.pick(&logits);
        generation.tokens.push(token);
        if Some(token) == end_of_text && options.stop_at_end_of_text {
            generation.stopped_at_end_of_text = true;
            break;
        }
        emit(stream.push(token), &mut generation);
        context.push(token);
        pending = vec![token];
    }
    emit(stream.finish(), &mut generation);
    generation.elapsed = started.elapsed();
    Ok(generation)
}

/// The context generation starts from: the prompt, or the tokenizer's document separator
/// (`<|endoftext|>`, `end_of_text`) for an empty one. Refused: a prompt longer than the model's
/// `max_seq_len`, with an id outside its vocabulary, or empty without a separator the model
/// knows. What [`generate`] checks first; a trainer checks its sample prompt with it before
/// training starts.
pub fn first_context(
    prompt: &[u32],
    shape: &ModelShape,
    end_of_text: Option<u32>,
) -> Result<Vec<u32>, GenerateError> {
    let (vocab_size, max_seq_len) = (shape.vocab_size(), shape.max_seq_len());
    if prompt.len() > max_seq_len {
        return Err(GenerateError::PromptTooLong {
            tokens: prompt.len(),
            max_seq_len,
        });
    }
    if let Some(&token) = prompt.iter().find(|id| **id as usize >= vocab_size) {
        return Err(GenerateError::OutsideVocabulary { token, vocab_size });
    }
    if !prompt.is_empty() {
        return Ok(prompt.to_vec());
    }
    match end_of_text {
        Some(token) if (token as usize) < vocab_size => Ok(vec![token]),
        _ => Err(GenerateError::EmptyPrompt { vocab_size }),
    }
}

/// `model` converted for generation on `device`: its linear weights stored in the dtype its
/// forward pass uses them in ([`brainfloat_precision::PrecisionPolicy::for_inference`]): the
/// same logits, without casting every weight again for every token.
pub fn inference_model<M: LanguageModel>(model: M, device: &Device) -> Result<M, GenerateError> {
    let policy = model.policy().for_inference();
    Ok(apply_policy(model, &policy, device).map_err(GptError::from)?)
}

/// Token ids as a `[1, T]` tensor.
fn token_tensor(tokens: &[u32], device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    Tensor::from_data(TensorData::new(ids, [1, tokens.len()]), device)
}
