//! Sizes of the record's GPT.

use brainfloat_choice::choice;
use brainfloat_precision::ParamRole;
use burn::config::Config;

use crate::error::GptError;

/// Shape of the record's GPT. Head dimension is `d_model / n_head`.
#[derive(Config, Debug, PartialEq)]
pub struct GptConfig {
    /// Vocabulary size (50304 in the record: GPT-2's 50257 padded to a multiple of 128).
    pub vocab_size: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of attention heads.
    pub n_head: usize,
    /// Model width.
    pub d_model: usize,
    /// Longest sequence the model accepts.
    pub max_seq_len: usize,
    /// Logit soft-cap `c` in `c·tanh(logits/c)`.
    #[config(default = 30.0)]
    pub logit_softcap: f64,
    /// Rotary base.
    #[config(default = 10000.0)]
    pub rope_base: f64,
}

/// The record's GPT in a named size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModelSize {
    /// [`GptConfig::tiny`].
    Tiny,
    /// [`GptConfig::small`].
    Small,
    /// [`GptConfig::speedrun`].
    Speedrun,
}

impl ModelSize {
    /// Every size, smallest first.
    pub const ALL: [ModelSize; 3] = [ModelSize::Tiny, ModelSize::Small, ModelSize::Speedrun];

    /// The size's name, as parsed.
    pub fn name(self) -> &'static str {
        match self {
            ModelSize::Tiny => "tiny",
            ModelSize::Small => "small",
            ModelSize::Speedrun => "speedrun",
        }
    }

    /// The size's shape.
    pub fn config(self) -> GptConfig {
        match self {
            ModelSize::Tiny => GptConfig::tiny(),
            ModelSize::Small => GptConfig::small(),
            ModelSize::Speedrun => GptConfig::speedrun(),
        }
    }
}

choice!(ModelSize, "model size", own names);

impl GptConfig {
    /// 2 layers, width 64, 2 heads of 32, vocabulary 512, sequences up to 64: for tests.
    pub fn tiny() -> Self {
        Self::new(512, 2, 2, 64, 64)
    }

    /// 4 layers, width 256, 4 heads of 64, GPT-2 vocabulary, sequences up to 256: trains on a CPU.
    pub fn small() -> Self {
        Self::new(50304, 4, 4, 256, 256)
    }

    /// The record: 12 layers, width 768, 6 heads of 128, vocabulary 50304, sequences of 1024.
    pub fn speedrun() -> Self {
        Self::new(50304, 12, 6, 768, 1024)
    }

    /// The shape in words: `4 layers × 256 wide, 4 heads of 64, context 256, vocabulary 50304`.
    pub fn describe(&self) -> String {
        format!(
            "{} layers × {} wide, {} heads of {}, context {}, vocabulary {}",
            self.n_layer,
            self.d_model,
            self.n_head,
            self.head_dim(),
            self.max_seq_len,
            self.vocab_size
        )
    }

    /// What the model accepts.
    pub(crate) fn limits(&self) -> crate::batch::Limits {
        crate::batch::Limits {
            max_seq_len: self.max_seq_len,
            vocab_size: self.vocab_size,
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }

    /// Checks that the shape is buildable: non-zero sizes, width divisible into heads, an even
    /// head width for rotary, a positive soft-cap.
    pub fn validate(&self) -> Result<(), GptError> {
        let invalid = |field, reason: String| Err(GptError::InvalidConfig { field, reason });
        check_sizes(
            &[
                ("vocab_size", self.vocab_size),
                ("n_layer", self.n_layer),
                ("n_head", self.n_head),
                ("d_model", self.d_model),
                ("max_seq_len", self.max_seq_len),
            ],
            self.d_model,
            self.n_head,
        )?;
        if !self.head_dim().is_multiple_of(2) {
            return invalid(
                "n_head",
                format!(
                    "head dimension {} (d_model {} / n_head {}) must be even for rotary \
                     embeddings",
                    self.head_dim(),
                    self.d_model,
                    self.n_head
                ),
            );
        }
        for (field, value) in [
            ("logit_softcap", self.logit_softcap),
            ("rope_base", self.rope_base),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return invalid(field, format!("{field} must be positive, got {value}"));
            }
        }
        Ok(())
    }

    /// Parameters that take part in matrix products: the blocks' linears and the head (the
    /// embedding is a lookup).
    pub fn matmul_params(&self) -> usize {
        let d = self.d_model;
        self.n_layer * 12 * d * d + self.vocab_size * d
    }

    /// Training FLOPs per token at sequence length `seq_len`: forward and backward of every
    /// matmul (`6 · matmul_params`) plus attention's two products over the full `T × T` score
    /// matrix (`12 · n_layer · d_model · seq_len`; the causal half is not discounted, as in
    /// nanoGPT's and PaLM's MFU). Elementwise work is not counted.
    pub fn training_flops_per_token(&self, seq_len: usize) -> u64 {
        6 * self.matmul_params() as u64 + 12 * (self.n_layer * self.d_model * seq_len) as u64
    }

    /// Number of parameters of the model.
    pub fn num_params(&self) -> usize {
        ParamSize::total(&self.param_sizes())
    }

    /// Every parameter's role and element count, in the model's order (`Gpt`'s `param_roles`).
    pub fn param_sizes(&self) -> Vec<ParamSize> {
        let (d, v) = (self.d_model, self.vocab_size);
        let size = |role, elements| ParamSize { role, elements };
        let mut sizes = vec![size(ParamRole::Embedding, v * d)];
        for _ in 0..self.n_layer {
            // c_q, c_k, c_v, c_proj; the MLP's c_fc and c_proj; then attention's λ and the
            // block's two λs.
            let matrices = [d * d, d * d, d * d, d * d, d * 4 * d, 4 * d * d];
            sizes.extend(matrices.map(|n| size(ParamRole::HiddenMatrix, n)));
            sizes.extend([size(ParamRole::Scalar, 1), size(ParamRole::Scalar, 2)]);
        }
        sizes.push(size(ParamRole::OutputMatrix, v * d));
        sizes
    }
}

/// One parameter as a shape declares it, before any tensor exists: what a memory estimate
/// counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamSize {
    /// The part it plays (its storage dtype and optimizer follow from it).
    pub role: ParamRole,
    /// Its number of elements.
    pub elements: usize,
}

impl ParamSize {
    /// The elements of all of `sizes`.
    pub fn total(sizes: &[ParamSize]) -> usize {
        sizes.iter().map(|p| p.elements).sum()
    }
}

/// Refuses a size of 0 among `sizes` (named by their fields) and a width `d_model` that does
/// not divide into `n_head` heads: what every architecture's shape must satisfy.
pub(crate) fn check_sizes(
    sizes: &[(&'static str, usize)],
    d_model: usize,
    n_head: usize,
) -> Result<(), GptError> {
    let invalid = |field, reason: String| Err(GptError::InvalidConfig { field, reason });
    if let Some((field, _)) = sizes.iter().find(|(_, value)| *value == 0) {
        return invalid(field, format!("{field} must be at least 1"));
    }
    if !d_model.is_multiple_of(n_head) {
        return invalid(
            "d_model",
            format!("d_model {d_model} is not divisible by n_head {n_head}"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;

    #[test]
    fn parameter_count_matches_the_built_model() {
        let device = brainfloat_test_support::test_device();
        for config in [GptConfig::tiny(), GptConfig::new(96, 3, 3, 48, 16)] {
            let model = config.init(&device).unwrap();
            assert_eq!(model.num_params(), config.num_params());
        }
        // The record's model: 124M-class blocks plus an untied 50304 × 768 head.
        assert_eq!(GptConfig::speedrun().num_params(), 162_201_636);
        assert_eq!(GptConfig::speedrun().head_dim(), 128);
    }

    #[test]
    fn flops_per_token_by_hand() {
        // Golden shape: 2 layers, d 64, vocab 512, T 32.
        // Matmul params: 2·12·64² + 512·64 = 98,304 + 32,768 = 131,072.
        // 6·131,072 + 12·2·64·32 = 786,432 + 49,152 = 835,584.
        let golden = GptConfig::new(512, 2, 2, 64, 32);
        assert_eq!(golden.matmul_params(), 131_072);
        assert_eq!(golden.training_flops_per_token(32), 835_584);
        // The record: 6·(12·12·768² + 50304·768) + 12·12·768·1024.
        let record = GptConfig::speedrun();
        assert_eq!(
            record.training_flops_per_token(1024),
            6 * (84_934_656 + 38_633_472) + 113_246_208
        );
    }

    #[test]
    fn impossible_shapes_are_refused() {
        let cases = [
            (
                GptConfig::new(0, 2, 2, 64, 32),
                "vocab_size must be at least 1",
            ),
            (
                GptConfig::new(512, 2, 3, 64, 32),
                "not divisible by n_head 3",
            ),
            (
                GptConfig::new(512, 2, 64, 64, 32),
                "head dimension 1 (d_model 64 / n_head 64) must be even",
            ),
            (
                GptConfig::tiny().with_logit_softcap(0.0),
                "logit_softcap must be positive",
            ),
            (
                GptConfig::tiny().with_rope_base(f64::NAN),
                "rope_base must be positive",
            ),
        ];
        let fields = [
            "vocab_size",
            "d_model",
            "n_head",
            "logit_softcap",
            "rope_base",
        ];
        for ((config, message), field) in cases.into_iter().zip(fields) {
            let err = config.validate().unwrap_err();
            assert!(
                matches!(&err, GptError::InvalidConfig { field: f, .. } if *f == field),
                "{err:?} names {field}"
            );
            assert!(err.to_string().contains(message), "{err}");
        }
    }
}
