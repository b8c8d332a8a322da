//! What a run will hold in memory, estimated from its config before anything is allocated, so
//! that a run the machine cannot hold is refused with figures instead of killed midway.
//!
//! Parameters, gradients and optimizer state are counted exactly from the shape's parameters
//! ([`ModelShape::param_sizes`]), the dtypes the precision policy stores them in and the
//! record's optimizers. Activations follow a model of what the autodiff graph keeps for the
//! backward pass, whose coefficients were measured on flex (`docs/reliability.md` compares the
//! estimate with measured peaks). The peak of a step is all of it at once: at the end of the
//! forward pass the graph holds every activation and the loss's chunk of logits, and the
//! gradients come before the activations are all released.

use brainfloat_backend::Backend;
use brainfloat_gpt::{ModelShape, ParamSize};
use brainfloat_precision::{
    Component, LOGITS_PER_CHUNK, ParamRole, PrecisionPolicy, UpdateRounding, rows_per_chunk,
};
use burn::tensor::{DType, FloatDType};

use crate::config::TrainConfig;
use crate::optim::MatrixOptimizer;

/// Bytes per token per layer that the backward pass keeps, per unit of `d_model`, in a 2-byte
/// activation dtype: about 20 saved tensors of width `d_model` (the block's input and mixed
/// input, both norms' inputs and outputs, q, k, v before and after their norm and rotary,
/// attention's output, the MLP's 4-wide hidden layer before and after its activation). Measured
/// on flex: 40.9 bytes (2 to 4 layers, width 64 to 128).
const SAVED_BYTES_PER_LAYER_WIDTH: f64 = 40.9;

/// Bytes per token outside the blocks per unit of `d_model`, in a 2-byte activation dtype: the
/// embedding's output (the record's `x0`) and the final norm's input and output. Measured: 5.7.
const SAVED_BYTES_OUTSIDE_WIDTH: f64 = 5.7;

/// Bytes per query, key and head that attention keeps for its backward pass on flex: the
/// softmax's probabilities in fp32. Libtorch's fused attention on a GPU keeps one statistic per
/// row instead, so a GPU estimate leaves this out.
const SCORE_BYTES: u64 = 4;

/// Where attention's backward state lives: what the estimate counts for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionState {
    /// The `T × T` fp32 probabilities of every head (the composed op: flex in fp32, Burn's
    /// CUDA backend).
    Probabilities,
    /// A few statistics per row, or none (flex's bf16 kernel, libtorch's fused attention).
    RowStatistics,
}

impl AttentionState {
    /// What attention keeps on `backend` for activations of dtype `activation`: flex's bf16
    /// kernel keeps its output only, libtorch's fused attention its output and row
    /// statistics; the composed op keeps the probabilities.
    pub fn of(backend: Backend, activation: FloatDType) -> Self {
        match backend {
            Backend::Flex if activation == FloatDType::BF16 => Self::RowStatistics,
            Backend::Flex | Backend::Cuda(_) => Self::Probabilities,
            Backend::Tch | Backend::TchCuda(_) => Self::RowStatistics,
        }
    }
}

/// A run's memory, by what holds it, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The parameters as the precision policy stores them.
    pub weights: u64,
    /// One gradient per parameter, in its parameter's dtype (two under gradient accumulation:
    /// the sum so far and the new micro-batch's).
    pub gradients: u64,
    /// Adam's two moments, Muon's momentum, and Kahan's compensation buffers.
    pub optimizer_state: u64,
    /// What the backward pass keeps from one micro-batch's forward pass, the matmul-dtype
    /// copies of master weights among it.
    pub activations: u64,
    /// One chunk of logits, made and dropped inside the loss.
    pub logits: u64,
}

/// Bytes of one element of `dtype`.
fn bytes_of(dtype: FloatDType) -> u64 {
    DType::from(dtype).size() as u64
}

/// Bytes of a parameter as `policy` stores it.
fn stored_bytes(param: &ParamSize, policy: &PrecisionPolicy) -> u64 {
    param.elements as u64 * bytes_of(policy.dtype(param.role.component()))
}

impl MemoryEstimate {
    /// A training run of `config`: its model stored, trained and stepped under its policy, one
    /// micro-batch's activations at a time.
    pub fn training(config: &TrainConfig, attention: AttentionState) -> Self {
        let shape = config.shape();
        let policy = config.train.precision;
        let sizes = shape.param_sizes();
        let stored = |p: &ParamSize| stored_bytes(p, &policy);
        let weights: u64 = sizes.iter().map(stored).sum();
        let optimizer_state = sizes
            .iter()
            .map(|p| {
                let muon = p.role == ParamRole::HiddenMatrix
                    && config.optim.matrix_optimizer == MatrixOptimizer::Muon;
                let moments = if muon { 1 } else { 2 };
                let dtype = policy.dtype(p.role.component());
                let kahan = u64::from(
                    policy.update_rounding() == UpdateRounding::Kahan && dtype == FloatDType::BF16,
                );
                (moments + kahan) * stored(p)
            })
            .sum();
        let tokens = config.micro_batch_size() * config.train.seq_len;
        // Accumulating, the sum so far and the new micro-batch's gradients meet.
        let gradient_copies = if config.train.grad_accum_steps > 1 {
            2
        } else {
            1
        };
        Self {
            weights,
            gradients: gradient_copies * weights,
            optimizer_state,
            activations: activations(shape, &policy, tokens, config.train.seq_len, attention),
            logits: logits(shape, &policy, tokens),
        }
    }

    /// A model loaded to evaluate, generate from or export: its weights as read (fp32, the
    /// form every weights file here holds) and as the policy stores them, and one chunk of
    /// logits of `tokens` positions.
    pub fn loading(shape: &ModelShape, policy: &PrecisionPolicy, tokens: usize) -> Self {
        let stored: u64 = (shape.param_sizes().iter())
            .map(|p| stored_bytes(p, policy))
            .sum();
        let read = 4 * shape.num_params() as u64;
        Self {
            weights: read + stored,
            logits: logits(shape, policy, tokens),
            ..Self::default()
        }
    }

    /// Several runs in one process, as the benchmark keeps its presets: each one's weights and
    /// optimizer state, kept between steps, and the largest step on top (one steps at a time).
    pub fn side_by_side(runs: &[MemoryEstimate]) -> Self {
        let step = |run: &&MemoryEstimate| run.gradients + run.activations + run.logits;
        let largest = runs.iter().max_by_key(step).copied().unwrap_or_default();
        Self {
            weights: runs.iter().map(|run| run.weights).sum(),
            optimizer_state: runs.iter().map(|run| run.optimizer_state).sum(),
            ..largest
        }
    }

    /// Everything at once: the peak.
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer_state + self.activations + self.logits
    }

    /// The parts in words: `weights 1.2 GiB, gradients …`; parts of 0 bytes left out.
    pub fn describe(&self) -> String {
        [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimizer state", self.optimizer_state),
            ("activations", self.activations),
            ("logits", self.logits),
        ]
        .iter()
        .filter(|(_, bytes)| *bytes > 0)
        .map(|(name, bytes)| format!("{name} {}", brainfloat_memory::bytes_text(*bytes)))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// What the backward pass keeps from a forward pass over `tokens` positions in sequences of
/// `seq_len`.
fn activations(
    shape: &ModelShape,
    policy: &PrecisionPolicy,
    tokens: usize,
    seq_len: usize,
    attention: AttentionState,
) -> u64 {
    let (d, layers, heads) = match shape {
        ModelShape::Record(c) => (c.d_model, c.n_layer, c.n_head),
        ModelShape::Gpt2(c) => (c.d_model, c.n_layer, c.n_head),
    };
    let scale = bytes_of(policy.activation()) as f64 / 2.0;
    let per_token = (layers as f64 * SAVED_BYTES_PER_LAYER_WIDTH + SAVED_BYTES_OUTSIDE_WIDTH)
        * d as f64
        * scale;
    let scores = match attention {
        AttentionState::Probabilities => (layers * heads * seq_len) as u64 * SCORE_BYTES,
        AttentionState::RowStatistics => 0,
    };
    // Master weights stored wider than the products use are cast at each use, and the graph
    // keeps each cast for the backward pass.
    let matmul = policy.dtype(Component::Matmul);
    let copies: u64 = if policy.dtype(Component::Linear) == matmul {
        0
    } else {
        shape
            .param_sizes()
            .iter()
            .filter(|p| matches!(p.role, ParamRole::HiddenMatrix | ParamRole::OutputMatrix))
            .map(|p| p.elements as u64 * bytes_of(matmul))
            .sum()
    };
    (tokens as f64 * per_token) as u64 + tokens as u64 * scores + copies
}

/// One chunk of the loss's logits over `tokens` positions, in the matmul dtype.
fn logits(shape: &ModelShape, policy: &PrecisionPolicy, tokens: usize) -> u64 {
    let vocab = shape.vocab_size();
    let rows = rows_per_chunk(tokens, vocab, LOGITS_PER_CHUNK).min(tokens);
    (rows * vocab) as u64 * bytes_of(policy.matmul())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    fn config(sets: &[&str]) -> TrainConfig {
        let toml = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/tiny.toml"
        ))
        .unwrap();
        let source = ConfigSource::Text {
            name: "tiny".into(),
            toml,
        };
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        TrainConfig::load(&source, &sets).unwrap()
    }

    const MIB: f64 = (1 << 20) as f64;

    /// The parameter parts are exact: `tiny` has 6,439,744 parameters, 2 × 3,219,456 of them
    /// in the embedding and the head, 98,304 in hidden matrices, 6 scalars.
    #[test]
    fn parameters_gradients_and_state_are_counted_from_the_policy_and_the_optimizers() {
        let (table, hidden, scalars) = (3_219_456u64, 98_304u64, 6u64);
        let fp32 = MemoryEstimate::training(
            &config(&["train.precision=fp32"]),
            AttentionState::Probabilities,
        );
        assert_eq!(fp32.weights, 4 * (2 * table + hidden + scalars));
        assert_eq!(fp32.gradients, fp32.weights);
        let accumulating = MemoryEstimate::training(
            &config(&["train.precision=fp32", "train.grad_accum_steps=2"]),
            AttentionState::Probabilities,
        );
        assert_eq!(accumulating.gradients, 2 * fp32.weights);
        let half = fp32.activations as i64 / 2;
        assert!(
            (accumulating.activations as i64 - half).abs() <= 1,
            "half the micro-batch"
        );
        // Adam: two moments for the embedding, head and scalars; Muon: one for the matrices.
        assert_eq!(
            fp32.optimizer_state,
            4 * (2 * (2 * table + scalars) + hidden)
        );
        // bf16: embedding and scalars in bf16, the head and hidden matrices fp32 masters.
        let bf16 = MemoryEstimate::training(&config(&[]), AttentionState::Probabilities);
        assert_eq!(bf16.weights, 2 * (table + scalars) + 4 * (table + hidden));
        // Kahan adds a bf16 compensation buffer per bf16 parameter, so one more copy of each.
        let pure = MemoryEstimate::training(
            &config(&["train.precision=bf16-pure"]),
            AttentionState::Probabilities,
        );
        let kahan = MemoryEstimate::training(
            &config(&["train.precision=bf16-kahan"]),
            AttentionState::Probabilities,
        );
        assert_eq!(kahan.optimizer_state, pure.optimizer_state + pure.weights);
        // Adam in place of Muon: two moments for the matrices too.
        let adam = MemoryEstimate::training(
            &config(&["train.precision=fp32", "optim.matrix_optimizer=adam"]),
            AttentionState::Probabilities,
        );
        assert_eq!(adam.optimizer_state, 2 * fp32.weights);
    }

    /// `tiny` under bf16 peaked at 143.3 MiB in the benchmark on flex (docs/reliability.md).
    #[test]
    fn activations_grow_with_tokens_layers_width_and_attentions_span() {
        let at =
            |sets: &[&str]| MemoryEstimate::training(&config(sets), AttentionState::Probabilities);
        let base = at(&[]);
        assert!(
            (base.total() as f64 / MIB - 143.3).abs() < 0.25 * 143.3,
            "{base:?}"
        );
        // The logits: 1024 positions × 50304 in 2 chunks of 512 rows, bf16.
        assert_eq!(base.logits, 512 * 50304 * 2);
        let doubled = at(&["train.batch_size=32"]);
        let copies = 2 * (2 * 12 * 64 * 64 + 50304 * 64);
        assert_eq!(
            doubled.activations - copies,
            2 * (base.activations - copies),
            "the token part doubles"
        );
        assert!(at(&["model.n_layer=4"]).activations > base.activations);
        let shorter = at(&["train.seq_len=32", "train.batch_size=32"]);
        assert!(
            shorter.activations < base.activations,
            "shorter rows keep fewer scores"
        );
        let statistics = MemoryEstimate::training(&config(&[]), AttentionState::RowStatistics);
        assert_eq!(
            base.activations - statistics.activations,
            1024 * 2 * 2 * 64 * SCORE_BYTES
        );
        // Pure bf16 keeps no cast copies of master weights.
        let pure = at(&["train.precision=bf16-sr"]);
        assert!(pure.activations + copies <= base.activations + 1024);
    }

    #[test]
    fn loading_counts_the_weights_as_read_and_as_stored() {
        let config = config(&[]);
        let shape = config.shape();
        let estimate = MemoryEstimate::loading(shape, &config.train.precision, 64);
        let params = shape.num_params() as u64;
        assert!(estimate.weights > 4 * params && estimate.weights < 8 * params);
        assert_eq!(estimate.gradients + estimate.optimizer_state, 0);
        assert_eq!(estimate.logits, 64 * 50304 * 2);
        assert!(
            estimate.describe().starts_with("weights "),
            "{}",
            estimate.describe()
        );
    }

    #[test]
    fn runs_side_by_side_keep_every_state_and_step_one_at_a_time() {
        let a = MemoryEstimate {
            weights: 1,
            gradients: 10,
            optimizer_state: 100,
            activations: 1000,
            logits: 10_000,
        };
        let b = MemoryEstimate {
            weights: 2,
            gradients: 20,
            optimizer_state: 200,
            activations: 2000,
            logits: 1,
        };
        let both = MemoryEstimate::side_by_side(&[a, b]);
        assert_eq!(both.total(), 3 + 300 + 10 + 1000 + 10_000);
        assert_eq!(MemoryEstimate::side_by_side(&[b]), b);
    }
}
