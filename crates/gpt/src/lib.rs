//! The GPT of the NanoGPT speedrun record "CastBf16", and Hugging Face's GPT-2, on Burn.
//!
//! Rotary (half-split), QK-norm, ReLU² MLP, value residual, x0 skip with learnable lambdas,
//! weightless RMSNorm, an untied head and the logit soft-cap, with the record's initialisation.
//! Every linear layer is a [`CastedLinear`](brainfloat_precision::CastedLinear) and every dtype
//! comes from the [`PrecisionPolicy`](brainfloat_precision::PrecisionPolicy) `apply_policy`
//! hands to each layer; what a forward pass reads besides the weights (rotary tables, generation's
//! keys and values) is a [`Cache`] its caller builds once. Its
//! parameters carry the PyTorch state-dict names (`transformer.h.0.attn.c_q.weight`), so
//! `brainfloat-trainer`'s checkpoint module moves weights between this model and the PyTorch
//! one.
//!
//! [`Gpt2`] is `transformers`' `GPT2LMHeadModel` built from the same machinery, with its names.
//! Both are [`LanguageModel`]s; a [`ModelShape`] read at run time picks one of them once
//! ([`ModelShape::dispatch`]), and generic code runs with it.
//!
//! ```
//! use brainfloat_gpt::{Batch, GptConfig, LanguageModel};
//! use brainfloat_precision::{PrecisionPolicy, apply_policy};
//! use burn::tensor::{DType, Device};
//!
//! let device = Device::flex().autodiff();
//! let model = GptConfig::tiny().init(&device).unwrap();
//! let model = apply_policy(model, &PrecisionPolicy::bf16(), &device).unwrap();
//! let cache = model.cache(&device); // rotary tables up to max_seq_len, in bf16
//!
//! let window: Vec<u32> = (0..2 * 16 + 1).map(|i| i % 512).collect();
//! let batch = Batch::from_window(&window, 2, 16, &device).unwrap();
//! let loss = model.forward(&batch, &cache).unwrap();
//! assert_eq!(loss.dtype(), DType::F32);
//! let grads = loss.backward();
//! let w = model.transformer.h[0].attn.c_q.weight.val();
//! assert_eq!(w.grad(&grads).unwrap().dtype(), DType::F32); // fp32 master-weight gradient
//! ```

mod batch;
mod cache;
mod config;
mod error;
mod gpt2;
mod language_model;
mod model;
pub mod trace;

pub use batch::Batch;
pub use cache::{Cache, KvCache, LayerCache};
pub use config::{GptConfig, ModelSize, ParamSize};
pub use error::GptError;
pub use gpt2::{
    Gelu, Gpt2, Gpt2Attention, Gpt2Block, Gpt2Config, Gpt2Mlp, Gpt2Transformer, LayerNorm,
};
pub use language_model::{Arch, ArchWork, LanguageModel, ModelShape};
pub use model::{
    Block, CausalSelfAttention, Gpt, Mlp, RMS_NORM_EPS, Rotary, Transformer, rms_norm,
};
