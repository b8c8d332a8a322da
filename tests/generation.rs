//! Generation: the KV cache gives the tokens recomputing the prefix gives (fp32 exactly by
//! token, bf16 wherever the logits are not near a tie), seeds reproduce, top-k 1 is greedy,
//! `<|endoftext|>` stops, padding ids are never drawn, and a prompt past the model's maximum is
//! refused. On the golden weights (random, non-zero: every path matters), on the backend that
//! `BRAINFLOAT_BACKEND` names.

use brainfloat_data::{END_OF_TEXT, Gpt2Tokenizer};
use brainfloat_generate::{
    GenerateError, GenerateOptions, Generation, Sampling, generate, inference_model,
};
use brainfloat_gpt::{Gpt, GptConfig, LanguageModel};
use brainfloat_precision::{PrecisionPolicy, apply_policy};
use brainfloat_tests::{golden_config, golden_dir, golden_tokens};
use brainfloat_trainer::load_weights;
use burn::module::Param;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// The golden weights under `policy`, outside autodiff.
fn golden(policy: &PrecisionPolicy) -> (Gpt, Device) {
    let device = brainfloat_test_support::test_device();
    let model = golden_config().init(&device).unwrap();
    let model = load_weights(model, &golden_dir().join("init.safetensors")).unwrap();
    (apply_policy(model, policy, &device).unwrap(), device)
}

fn prompt() -> Vec<u32> {
    golden_tokens()[..5].to_vec()
}

fn options(sampling: Sampling, max_tokens: usize, kv_cache: bool) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling,
        stop_at_end_of_text: true,
        kv_cache,
    }
}

fn run(model: &Gpt, device: &Device, prompt: &[u32], options: GenerateOptions) -> Generation {
    generate(
        model,
        &Gpt2Tokenizer::new(),
        prompt,
        &options,
        device,
        |_| {},
    )
    .unwrap()
}

fn tokens(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let len = ids.len();
    let ids: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    Tensor::from_data(TensorData::new(ids, [1, len]), device)
}

fn host(logits: Tensor<2>) -> Vec<f32> {
    assert_eq!(logits.dtype(), DType::F32, "logits are fp32 for sampling");
    logits.into_data().try_into_vec::<f32>().unwrap()
}

/// Teacher-forced along `context`: the logits after each prefix of it from one cached pass per
/// position, and from recomputing the prefix; the largest difference, and per position the
/// recomputed logits' margin between the two likeliest ids and whether both pick the same.
fn cached_vs_recomputed(model: &Gpt, device: &Device, context: &[u32]) -> (f32, Vec<(f32, bool)>) {
    let mut cache = model.cache(device);
    let mut worst = 0f32;
    let mut steps = Vec::new();
    for end in 1..=context.len() {
        let cached = host(
            model
                .next_token_logits(tokens(&context[end - 1..end], device), &mut cache)
                .unwrap(),
        );
        let full = host(
            model
                .next_token_logits(tokens(&context[..end], device), &mut model.cache(device))
                .unwrap(),
        );
        let diff = cached
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff);
        let argmax = |l: &[f32]| {
            (0..l.len())
                .max_by(|a, b| l[*a].total_cmp(&l[*b]).then(b.cmp(a)))
                .unwrap()
        };
        let mut sorted = full.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        steps.push((sorted[0] - sorted[1], argmax(&cached) == argmax(&full)));
    }
    assert_eq!(cache.len(), context.len());
    // The cache holds what attention reads: the policy's matmul dtype.
    assert_eq!(
        cache.kv().dtype(),
        Some(DType::from(model.policy().matmul()))
    );
    (worst, steps)
}

#[test]
fn kv_cache_equals_recomputing_the_prefix_in_fp32() {
    let (model, device) = golden(&PrecisionPolicy::fp32());
    // 60 tokens after a prompt of 5 on a model of 32 positions: the context slides twice.
    let with_cache = run(
        &model,
        &device,
        &prompt(),
        options(Sampling::GREEDY, 60, true),
    );
    let without = run(
        &model,
        &device,
        &prompt(),
        options(Sampling::GREEDY, 60, false),
    );
    assert_eq!(with_cache.tokens, without.tokens);
    assert_eq!(with_cache.tokens.len(), 60);
    // Full after 27 tokens, then every 16 (the later half kept): slides at 27, 43 and 59.
    assert_eq!(with_cache.slides, 3);
    assert_eq!(with_cache.text, without.text);
    // The logits themselves, position by position over a full context (different summation
    // orders only: the cached step attends with an explicit mask and a shorter query;
    // measured 2.2e-6 on flex, 2.1e-6 on libtorch).
    let context: Vec<u32> = golden_tokens()[..32].to_vec();
    let (worst, steps) = cached_vs_recomputed(&model, &device, &context);
    assert_eq!(model.policy().matmul(), burn::tensor::FloatDType::F32);
    println!("fp32 cached vs recomputed: {worst}");
    assert!(worst < 1e-5, "fp32 cached logits differ by {worst}");
    assert!(steps.iter().all(|(_, same)| *same));
}

/// How far the bf16 cached and recomputed logits may be apart.
const BF16_BOUND: f32 = 0.1;

#[test]
fn kv_cache_agrees_in_bf16_where_logits_are_not_tied() {
    let (model, device) = golden(&PrecisionPolicy::bf16());
    let context: Vec<u32> = golden_tokens()[..32].to_vec();
    let (worst, steps) = cached_vs_recomputed(&model, &device, &context);
    assert_eq!(model.policy().matmul(), burn::tensor::FloatDType::BF16);
    // Measured: 0 on flex (its kernels compute each row alike whatever the rows around it),
    // 0.039 on libtorch (about half a bf16 ulp of logits near 8).
    assert!(worst < BF16_BOUND, "bf16 cached logits differ by {worst}");
    let clear: Vec<bool> = steps
        .iter()
        .filter(|(margin, _)| *margin > 2.0 * worst)
        .map(|(_, same)| *same)
        .collect();
    assert!(
        clear.len() >= steps.len() / 2,
        "most positions have a clear winner"
    );
    assert!(clear.iter().all(|same| *same), "{steps:?}");
    println!("bf16 cached vs recomputed: {worst}");
}

/// The model converted for generation stores its linear weights in the matmul dtype and gives
/// the same logits, bit for bit: the cast at every use was that same rounding.
#[test]
fn the_inference_model_gives_the_same_logits() {
    let context: Vec<u32> = golden_tokens()[..20].to_vec();
    for policy in [PrecisionPolicy::bf16(), PrecisionPolicy::autocast()] {
        let (model, device) = golden(&policy);
        let ids = tokens(&context, &device);
        let trained = host(
            model
                .next_token_logits(ids.clone(), &mut model.cache(&device))
                .unwrap(),
        );
        let inference = inference_model(model, &device).unwrap();
        let weight = inference.transformer.h[0].attn.c_q.weight.val();
        assert_eq!(weight.dtype(), DType::BF16, "{policy}");
        assert_eq!(inference.lm_head.weight.val().dtype(), DType::BF16);
        assert_eq!(
            host(
                inference
                    .next_token_logits(ids, &mut inference.cache(&device))
                    .unwrap()
            ),
            trained
        );
    }
}

#[test]
fn a_seed_gives_the_same_text_and_top_k_one_is_greedy() {
    let (model, device) = golden(&PrecisionPolicy::fp32());
    let sampled = |seed, top_k| {
        let sampling = Sampling {
            temperature: 1.0,
            top_k,
            top_p: Some(0.95),
            seed,
        };
        run(&model, &device, &prompt(), options(sampling, 20, true)).tokens
    };
    assert_eq!(sampled(11, None), sampled(11, None));
    assert_ne!(sampled(11, None), sampled(12, None));
    let greedy = run(
        &model,
        &device,
        &prompt(),
        options(Sampling::GREEDY, 20, true),
    )
    .tokens;
    assert_eq!(sampled(11, Some(1)), greedy);
    assert_eq!(sampled(12, Some(1)), greedy);
}

/// A one-layer model with GPT-2's padded vocabulary whose every hidden state is the all-ones
/// vector (blocks zero-initialised add nothing, the embedding is ones), so the head's rows set
/// the logits: `<|endoftext|>` the likeliest text token, a padding id likelier still.
fn end_of_text_model(device: &Device) -> Gpt {
    let (vocab, width) = (50304, 16);
    let mut model = GptConfig::new(vocab, 1, 2, width, 16).init(device).unwrap();
    model.transformer.wte.weight = Param::from_tensor(Tensor::ones([vocab, width], device));
    let mut head = vec![0f32; vocab * width];
    let end = END_OF_TEXT as usize;
    head[end * width..(end + 1) * width].fill(0.5);
    head[50300 * width..50301 * width].fill(1.0);
    model.lm_head.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(head, [vocab, width]),
        (device, DType::F32),
    ));
    model
}

#[test]
fn end_of_text_stops_and_padding_is_never_drawn() {
    let device = brainfloat_test_support::test_device();
    let model = end_of_text_model(&device);
    let prompt = [464u32, 1812];
    let logits = host(
        model
            .next_token_logits(tokens(&prompt, &device), &mut model.cache(&device))
            .unwrap(),
    );
    assert!(
        logits[50300] > logits[END_OF_TEXT as usize],
        "the padding id leads"
    );
    let stopped = run(
        &model,
        &device,
        &prompt,
        options(Sampling::GREEDY, 10, true),
    );
    assert_eq!(stopped.tokens, vec![END_OF_TEXT]);
    assert!(stopped.stopped_at_end_of_text);
    assert_eq!(stopped.text, "");
    let go_on = GenerateOptions {
        stop_at_end_of_text: false,
        ..options(Sampling::GREEDY, 3, true)
    };
    let went_on = run(&model, &device, &prompt, go_on);
    assert_eq!(went_on.tokens, vec![END_OF_TEXT; 3]);
    assert_eq!(went_on.text, "<|endoftext|>".repeat(3));
    // Sampled at a high temperature, still never a padding id.
    let hot = Sampling {
        temperature: 5.0,
        top_k: None,
        top_p: None,
        seed: 3,
    };
    let drawn = run(
        &model,
        &device,
        &prompt,
        GenerateOptions {
            stop_at_end_of_text: false,
            ..options(hot, 200, true)
        },
    );
    assert!(drawn.tokens.iter().all(|&t| (t as usize) < 50257));
}

#[test]
fn a_prompt_longer_than_the_model_is_refused() {
    let (model, device) = golden(&PrecisionPolicy::fp32());
    let long: Vec<u32> = golden_tokens()[..33].to_vec();
    let err = generate(
        &model,
        &Gpt2Tokenizer::new(),
        &long,
        &options(Sampling::GREEDY, 4, true),
        &device,
        |_| {},
    )
    .unwrap_err();
    assert!(matches!(
        err,
        GenerateError::PromptTooLong {
            tokens: 33,
            max_seq_len: 32
        }
    ));
    assert_eq!(
        err.to_string(),
        "the prompt is 33 tokens, longer than the model's maximum sequence length of 32; \
         shorten it"
    );
    // An empty prompt has no <|endoftext|> to start from in a 512-token vocabulary.
    let err = generate(
        &model,
        &Gpt2Tokenizer::new(),
        &[],
        &options(Sampling::GREEDY, 4, true),
        &device,
        |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("give a prompt"), "{err}");
    // An id the model has no embedding for.
    let err = generate(
        &model,
        &Gpt2Tokenizer::new(),
        &[464, 600],
        &options(Sampling::GREEDY, 4, true),
        &device,
        |_| {},
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the prompt has the token 600, outside the model's vocabulary of 512"
    );
    // The model itself refuses a cache that would pass its maximum.
    let mut cache = model.cache(&device);
    model
        .next_token_logits(tokens(&long[..32], &device), &mut cache)
        .unwrap();
    let err = model
        .next_token_logits(tokens(&long[32..], &device), &mut cache)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "33 positions exceed the model's maximum sequence length of 32"
    );
}
