//! The record's optimizer groups and their hyper-parameters.

use brainfloat_choice::choice;
use brainfloat_precision::{ParamRole, UpdateRounding};
use burn::tensor::FloatDType;

/// The optimizer group of a parameter. Its discriminant is its place in [`ParamGroup::ALL`]:
/// per-group arrays (weight decay, the probe's counts) are indexed by `group as usize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamGroup {
    /// Token embedding: Adam.
    Embedding,
    /// Output head: Adam.
    Head,
    /// 2-D matrices inside the blocks: Muon.
    Matrices,
    /// Every other parameter (lambdas): Adam.
    Scalars,
}

impl ParamGroup {
    /// Every group, in report order.
    pub const ALL: [ParamGroup; 4] = [
        ParamGroup::Embedding,
        ParamGroup::Head,
        ParamGroup::Matrices,
        ParamGroup::Scalars,
    ];

    /// Lower-case name, as in metrics.
    pub fn name(self) -> &'static str {
        match self {
            ParamGroup::Embedding => "embedding",
            ParamGroup::Head => "head",
            ParamGroup::Matrices => "matrices",
            ParamGroup::Scalars => "scalars",
        }
    }
}

// Each group's discriminant is its index in `ALL`, checked when the crate compiles.
const _: () = {
    let mut index = 0;
    while index < ParamGroup::ALL.len() {
        assert!(ParamGroup::ALL[index] as usize == index);
        index += 1;
    }
};

impl ParamGroup {
    /// The record's group of a parameter playing `role`: Muon for the hidden matrices, Adam
    /// (with the embedding's, the head's or the scalars' rate) for the rest.
    pub fn of(role: ParamRole) -> Self {
        match role {
            ParamRole::Embedding => ParamGroup::Embedding,
            ParamRole::HiddenMatrix => ParamGroup::Matrices,
            ParamRole::OutputMatrix | ParamRole::LinearBias => ParamGroup::Head,
            ParamRole::Scalar => ParamGroup::Scalars,
        }
    }
}

/// Learning rates and hyper-parameters of the record's optimizers (its values by default).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordOptimizerConfig {
    /// Adam learning rate of the embedding.
    pub embedding_lr: f64,
    /// Adam learning rate of the head.
    pub head_lr: f64,
    /// Adam learning rate of the scalars.
    pub scalar_lr: f64,
    /// Muon learning rate of the block matrices.
    pub matrix_lr: f64,
    /// Adam betas.
    pub adam_betas: (f64, f64),
    /// Adam epsilon (PyTorch's 1e-8).
    pub adam_eps: f64,
    /// Muon momentum after warmup.
    pub muon_momentum: f64,
    /// Muon momentum at step 0.
    pub muon_momentum_start: f64,
    /// Steps over which Muon's momentum rises linearly to `muon_momentum`.
    pub muon_momentum_warmup: usize,
    /// Newton–Schulz iterations.
    pub ns_steps: usize,
    /// Dtype of the Newton–Schulz iteration (bf16 in the record).
    pub ns_dtype: FloatDType,
    /// How new values are written into bf16 weights and state (the policy's).
    pub rounding: UpdateRounding,
    /// Seed of stochastic rounding's random bits (the run's seed).
    pub seed: u64,
    /// Decoupled weight decay per group, by [`ParamGroup`] in [`ParamGroup::ALL`]'s order
    /// (all 0 in the record).
    pub weight_decay: [f64; 4],
    /// Roles whose parameters are not updated (and get no state).
    pub frozen: Vec<ParamRole>,
    /// What steps the matrices group: the record's Muon, or Adam (AdamW with the group's
    /// decay) at `matrix_lr`, as a fine-tuning of GPT-2 usually runs.
    pub matrix_optimizer: MatrixOptimizer,
}

/// The optimizer of the hidden matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MatrixOptimizer {
    /// Momentum, Nesterov, Newton–Schulz orthogonalisation (the record's).
    #[default]
    Muon,
    /// Adam with bias correction, as the other groups.
    Adam,
}

choice!(MatrixOptimizer, "matrix optimizer", { Muon => "muon", Adam => "adam" });

impl Default for RecordOptimizerConfig {
    fn default() -> Self {
        Self {
            embedding_lr: 0.3,
            head_lr: 0.002,
            scalar_lr: 0.02,
            matrix_lr: 0.02,
            adam_betas: (0.9, 0.95),
            adam_eps: 1e-8,
            muon_momentum: 0.95,
            muon_momentum_start: 0.85,
            muon_momentum_warmup: 500,
            ns_steps: 5,
            ns_dtype: FloatDType::BF16,
            rounding: UpdateRounding::Nearest,
            seed: 0,
            weight_decay: [0.0; 4],
            frozen: Vec::new(),
            matrix_optimizer: MatrixOptimizer::Muon,
        }
    }
}
