//! The record's optimizers, one per parameter group: Muon (momentum, then Newton–Schulz
//! orthogonalisation) for the 2-D matrices of the blocks, Adam for the embedding, the head and
//! the scalars; and the learning-rate schedule over the run.

use std::collections::{BTreeMap, HashMap};

use brainfloat_ops::matmul;
use brainfloat_precision::{
    ACCUMULATION_DTYPE, ParamPath, ParamRole, ParamRoles, RoleMap, UpdateRounding,
    compensation_in_half_ulps, lost_updates, stochastic_rounded_away,
};
use burn::module::{ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, FloatDType, Tensor};

use crate::error::TensorFileError;

/// The optimizer group of a parameter.
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

    fn index(self) -> usize {
        self as usize
    }
}

/// The lost-update probe of one optimizer step: per group, how many element updates were
/// non-zero and how many of those were below half a bf16 ulp of their weight (lost to bf16
/// storage; see [`lost_updates`]). Under stochastic rounding the count is of updates rounded
/// away, with the number expected beside it; under Kahan, the compensation's size.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LostUpdates {
    counts: [(usize, usize); 4],
    expected: [Option<f64>; 4],
    compensation: [(f64, usize); 4],
}

impl LostUpdates {
    /// Adds `lost` of `updated` element updates to `group`.
    pub fn add(&mut self, group: ParamGroup, lost: usize, updated: usize) {
        let count = &mut self.counts[group.index()];
        count.0 += lost;
        count.1 += updated;
    }

    /// `(lost, updated)` of `group`.
    pub fn counts(&self, group: ParamGroup) -> (usize, usize) {
        self.counts[group.index()]
    }

    /// Fraction of `group`'s non-zero updates that were lost; `None` if none was non-zero.
    pub fn fraction(&self, group: ParamGroup) -> Option<f64> {
        let (lost, updated) = self.counts(group);
        (updated > 0).then(|| lost as f64 / updated as f64)
    }

    /// Adds `expected` updates that stochastic rounding was expected to round away to `group`
    /// (their count went to [`add`](Self::add)).
    pub fn add_expected(&mut self, group: ParamGroup, expected: f64) {
        let slot = &mut self.expected[group.index()];
        *slot = Some(slot.unwrap_or(0.0) + expected);
    }

    /// Under stochastic rounding: the fraction of `group`'s non-zero updates expected to be
    /// rounded away (compare [`fraction`](Self::fraction)); `None` otherwise.
    pub fn expected_fraction(&self, group: ParamGroup) -> Option<f64> {
        let (_, updated) = self.counts(group);
        Some(self.expected[group.index()]? / updated.max(1) as f64)
    }

    /// Adds Kahan compensation of `count` elements, `sum` half-ulps in all, to `group`.
    pub fn add_compensation(&mut self, group: ParamGroup, sum: f64, count: usize) {
        let slot = &mut self.compensation[group.index()];
        slot.0 += sum;
        slot.1 += count;
    }

    /// Under Kahan: `group`'s mean |compensation| in half ulps of its weight; `None` otherwise.
    pub fn compensation_half_ulps(&self, group: ParamGroup) -> Option<f64> {
        let (sum, count) = self.compensation[group.index()];
        (count > 0).then(|| sum / count as f64)
    }
}

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
}

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
        }
    }
}

impl RecordOptimizerConfig {
    /// Muon's momentum at optimizer step `step`: `(1−f)·start + f·end`, `f = min(step/warmup, 1)`.
    pub fn muon_momentum_at(&self, step: usize) -> f64 {
        let f = (step as f64 / self.muon_momentum_warmup.max(1) as f64).min(1.0);
        (1.0 - f) * self.muon_momentum_start + f * self.muon_momentum
    }
}

/// Optimizer state of one parameter, flattened; moments have the parameter's dtype.
#[derive(Debug, Clone)]
// One entry per parameter: boxing the larger variant would save nothing that matters.
#[allow(clippy::large_enum_variant)]
enum ParamState {
    Adam {
        steps: i32,
        moment_1: Tensor<1>,
        moment_2: Tensor<1>,
    },
    Muon {
        momentum_buffer: Tensor<1>,
    },
}

/// The record's optimizers over a whole model, with state per parameter name.
#[derive(Debug, Clone)]
pub struct RecordOptimizer {
    config: RecordOptimizerConfig,
    states: HashMap<String, ParamState>,
    /// Kahan compensation per bf16 parameter, under [`UpdateRounding::Kahan`].
    compensation: HashMap<String, Tensor<1>>,
    grad_squares: Vec<Tensor<1>>,
    probe: Option<LostUpdates>,
}

/// Suffixes of the state tensors in a saved optimizer, after the parameter's name (PyTorch's
/// state names).
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const MOMENTUM_BUFFER: &str = "momentum_buffer";
const KAHAN_COMPENSATION: &str = "kahan_compensation";

/// Which stream of stochastic rounding's random bits a written tensor draws from.
#[derive(Clone, Copy)]
enum Stream {
    Weight = 0,
    Moment1 = 1,
    Moment2 = 2,
    MomentumBuffer = 3,
}

impl RecordOptimizer {
    /// A fresh optimizer.
    pub fn new(config: RecordOptimizerConfig) -> Self {
        Self {
            config,
            states: HashMap::new(),
            compensation: HashMap::new(),
            grad_squares: Vec::new(),
            probe: None,
        }
    }

    /// Makes the next [`step`](Self::step) run the lost-update probe (it reads every weight and
    /// update back to the host, so it costs a pass over the model).
    pub fn probe_next_step(&mut self) {
        self.probe = Some(LostUpdates::default());
    }

    /// The probe of the last step, if [`probe_next_step`](Self::probe_next_step) asked for it;
    /// taking it ends probing.
    pub fn take_probe(&mut self) -> Option<LostUpdates> {
        self.probe.take()
    }

    /// Every state tensor, flattened, named `<parameter>.exp_avg`, `.exp_avg_sq` (Adam),
    /// `.momentum_buffer` (Muon) or `.kahan_compensation` (Kahan), and the Adam step count of
    /// each parameter.
    pub fn state(&self) -> (Vec<(String, Tensor<1>)>, BTreeMap<String, i32>) {
        let mut tensors = Vec::new();
        let mut steps = BTreeMap::new();
        for (name, state) in &self.states {
            match state {
                ParamState::Adam {
                    steps: count,
                    moment_1,
                    moment_2,
                } => {
                    tensors.push((format!("{name}.{EXP_AVG}"), moment_1.clone()));
                    tensors.push((format!("{name}.{EXP_AVG_SQ}"), moment_2.clone()));
                    steps.insert(name.clone(), *count);
                }
                ParamState::Muon { momentum_buffer } => {
                    tensors.push((format!("{name}.{MOMENTUM_BUFFER}"), momentum_buffer.clone()));
                }
            }
        }
        for (name, compensation) in &self.compensation {
            tensors.push((format!("{name}.{KAHAN_COMPENSATION}"), compensation.clone()));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        (tensors, steps)
    }

    /// Restores what [`state`](Self::state) returned; `tensor` looks a state tensor up by name.
    pub fn load_state(
        &mut self,
        names: &[String],
        mut tensor: impl FnMut(&str) -> Result<Tensor<1>, TensorFileError>,
        steps: &BTreeMap<String, i32>,
    ) -> Result<(), TensorFileError> {
        self.states.clear();
        self.compensation.clear();
        for name in names {
            if let Some(param) = name.strip_suffix(&format!(".{KAHAN_COMPENSATION}")) {
                self.compensation.insert(param.to_string(), tensor(name)?);
            } else if let Some(param) = name.strip_suffix(&format!(".{MOMENTUM_BUFFER}")) {
                let momentum_buffer = tensor(name)?;
                self.states
                    .insert(param.to_string(), ParamState::Muon { momentum_buffer });
            } else if let Some(param) = name.strip_suffix(&format!(".{EXP_AVG}")) {
                let count = *steps.get(param).ok_or_else(|| {
                    TensorFileError::one(format!("no Adam step count for {param}"))
                })?;
                let state = ParamState::Adam {
                    steps: count,
                    moment_1: tensor(name)?,
                    moment_2: tensor(&format!("{param}.{EXP_AVG_SQ}"))?,
                };
                self.states.insert(param.to_string(), state);
            } else if !name.ends_with(&format!(".{EXP_AVG_SQ}")) {
                return Err(TensorFileError::one(format!(
                    "unknown optimizer state tensor {name}"
                )));
            }
        }
        Ok(())
    }

    /// Checks state just loaded against the model's parameters (`numel` by name) after `step`
    /// optimizer steps: no state of a parameter the model lacks, each tensor the length of its
    /// parameter, Adam's step counts between 1 and `step`, and state for every parameter or for
    /// none (a run whose every step was skipped). Every problem is named, so that one attempt lists them all.
    pub fn check_state(
        &self,
        numel: &BTreeMap<String, usize>,
        step: usize,
    ) -> Result<(), TensorFileError> {
        let mut problems = Vec::new();
        let (tensors, steps) = self.state();
        for (name, tensor) in &tensors {
            let param = name
                .rsplit_once('.')
                .map_or(name.as_str(), |(param, _)| param);
            match numel.get(param) {
                None => problems.push(format!("state {name} belongs to no parameter of the model")),
                Some(&expected) if tensor.dims()[0] != expected => problems.push(format!(
                    "state {name} holds {} values, its parameter {expected}",
                    tensor.dims()[0]
                )),
                Some(_) => {}
            }
        }
        for (param, &count) in &steps {
            if count < 1 || count as usize > step.max(1) {
                problems.push(format!(
                    "Adam step count {count} for {param} after {step} optimizer steps (1 to \
                     {step} expected)"
                ));
            }
        }
        // None at all is a run whose every step was skipped; some but not all is damage.
        if step > 0 && !self.states.is_empty() {
            let missing: Vec<&str> = numel
                .keys()
                .filter(|param| !self.states.contains_key(*param))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "no optimizer state for {} parameter(s) after {step} steps: {}",
                    missing.len(),
                    missing.join(", ")
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TensorFileError { problems })
        }
    }

    /// One optimizer step at 0-based `step`: every gradient is first multiplied by `grad_scale`
    /// (`1/grad_accum_steps`, in the gradient's dtype), every group's rate by `lr_multiplier`.
    /// Returns the updated model and the global L2 norm of the scaled gradients.
    ///
    /// # Panics
    /// When a parameter has no role in `model`'s [`ParamRoles`] (a model `apply_policy`
    /// accepted has one for each).
    pub fn step<M: ParamRoles>(
        &mut self,
        model: M,
        grads: GradientsParams,
        grad_scale: f64,
        lr_multiplier: f64,
        step: usize,
    ) -> (M, f64) {
        let momentum = self.config.muon_momentum_at(step);
        let roles = model.param_roles();
        let model = model.map(&mut StepMapper {
            optimizer: self,
            roles: &roles,
            grads,
            grad_scale,
            lr_multiplier,
            momentum,
            step,
            path: ParamPath::default(),
        });
        let squares = std::mem::take(&mut self.grad_squares);
        let grad_norm = match squares.into_iter().reduce(|a, b| a + b) {
            Some(total) => total.into_scalar::<f32>().sqrt() as f64,
            None => 0.0,
        };
        (model, grad_norm)
    }

    #[allow(clippy::too_many_arguments)]
    fn update<const D: usize>(
        &mut self,
        name: String,
        group: ParamGroup,
        value: Tensor<D>,
        grad: Tensor<D>,
        lr_multiplier: f64,
        momentum: f64,
        step: usize,
    ) -> Tensor<D> {
        let dims = value.dims();
        let numel = dims.iter().product::<usize>();
        let grad = grad.reshape([numel]);
        let c = &self.config;
        let lr = lr_multiplier
            * match group {
                ParamGroup::Embedding => c.embedding_lr,
                ParamGroup::Head => c.head_lr,
                ParamGroup::Scalars => c.scalar_lr,
                ParamGroup::Matrices => c.matrix_lr,
            };
        // Stochastic rounding and Kahan apply to bf16 storage: the update is computed in fp32
        // and written by the policy's rounding. fp32 storage is written exactly either way.
        let state_dtype = FloatDType::from(value.dtype());
        let rounding = if value.dtype() == DType::BF16 {
            c.rounding
        } else {
            UpdateRounding::Nearest
        };
        let compute = match rounding {
            UpdateRounding::Nearest => state_dtype,
            UpdateRounding::Stochastic | UpdateRounding::Kahan => FloatDType::F32,
        };
        let stream = {
            let (seed, parameter) = (c.seed, name_hash(&name));
            move |stream: Stream| {
                brainfloat_ops::rounding_key(&[seed, step as u64, parameter, stream as u64])
            }
        };
        let fusable = group != ParamGroup::Matrices
            && self.probe.is_none()
            && rounding != UpdateRounding::Kahan;
        if fusable {
            // One op (a fused pass where the backend has the kernel); the lost-update probe
            // needs the update itself, so probed steps take the op-by-op path below. Parameter
            // and moments are moved in, not cloned: as their only owner a kernel updates them in
            // place.
            let (steps, moment_1, moment_2) = match self.states.remove(&name) {
                Some(ParamState::Adam {
                    steps,
                    moment_1,
                    moment_2,
                }) => (steps, moment_1, moment_2),
                _ => (0, grad.zeros_like(), grad.zeros_like()),
            };
            let update = brainfloat_ops::adam_step(
                value.reshape([numel]),
                grad,
                moment_1,
                moment_2,
                lr,
                c.adam_betas,
                c.adam_eps,
                steps + 1,
                (rounding == UpdateRounding::Stochastic)
                    .then(|| [Stream::Weight, Stream::Moment1, Stream::Moment2].map(stream)),
            );
            self.grad_squares.push(update.grad_square_sum);
            let state = ParamState::Adam {
                steps: steps + 1,
                moment_1: update.moment_1,
                moment_2: update.moment_2,
            };
            self.states.insert(name, state);
            return update.param.reshape(dims);
        }
        self.grad_squares
            .push(grad.clone().cast(ACCUMULATION_DTYPE).square().sum());
        let grad = in_dtype(grad, compute);
        // The update is `scale · direction`, applied below by the preset's rounding.
        let (direction, scale) = if group == ParamGroup::Matrices {
            let buffer = match (self.states.remove(&name), rounding) {
                // One pass: SR(momentum · buffer + grad).
                (Some(ParamState::Muon { momentum_buffer }), UpdateRounding::Stochastic) => {
                    brainfloat_ops::stochastic_axpby(
                        momentum_buffer,
                        grad.clone(),
                        momentum as f32,
                        1.0,
                        stream(Stream::MomentumBuffer),
                    )
                }
                (Some(ParamState::Muon { momentum_buffer }), _) => store(
                    in_dtype(momentum_buffer, compute).mul_scalar(momentum) + grad.clone(),
                    state_dtype,
                    rounding,
                    || stream(Stream::MomentumBuffer),
                ),
                _ => store(grad.clone(), state_dtype, rounding, || {
                    stream(Stream::MomentumBuffer)
                }),
            };
            let nesterov = grad + in_dtype(buffer.clone(), compute).mul_scalar(momentum);
            let (rows, cols) = (dims[0], dims[1]);
            let ortho = newton_schulz(nesterov.reshape([rows, cols]), c.ns_steps, c.ns_dtype);
            let shape_factor = (rows as f64 / cols as f64).max(1.0).sqrt();
            self.states.insert(
                name.clone(),
                ParamState::Muon {
                    momentum_buffer: buffer,
                },
            );
            (ortho.reshape([numel]), lr * shape_factor)
        } else {
            let (beta_1, beta_2) = c.adam_betas;
            let (steps, moment_1, moment_2) = match self.states.remove(&name) {
                Some(ParamState::Adam {
                    steps,
                    moment_1,
                    moment_2,
                }) => (steps, moment_1, moment_2),
                // Fresh moments, made only here (not on every step): zeros of the state's dtype.
                _ => {
                    let zeros =
                        Tensor::<1>::zeros([numel], (&grad.device(), DType::from(state_dtype)));
                    (0, zeros.clone(), zeros)
                }
            };
            let steps = steps + 1;
            let moment_1 = in_dtype(moment_1, compute).mul_scalar(beta_1)
                + grad.clone().mul_scalar(1.0 - beta_1);
            let moment_2 = in_dtype(moment_2, compute).mul_scalar(beta_2)
                + grad.square().mul_scalar(1.0 - beta_2);
            // The update uses the moments as stored, as the fused kernel does.
            let moment_1 = store(moment_1, state_dtype, rounding, || stream(Stream::Moment1));
            let moment_2 = store(moment_2, state_dtype, rounding, || stream(Stream::Moment2));
            let correction_1 = 1.0 - beta_1.powi(steps);
            let correction_2 = 1.0 - beta_2.powi(steps);
            let denom = in_dtype(moment_2.clone(), compute)
                .sqrt()
                .div_scalar(correction_2.sqrt())
                .add_scalar(c.adam_eps);
            let direction = in_dtype(moment_1.clone(), compute) / denom;
            self.states.insert(
                name.clone(),
                ParamState::Adam {
                    steps,
                    moment_1,
                    moment_2,
                },
            );
            (direction, lr / correction_1)
        };
        let value = value.reshape([numel]);
        let delta =
            |direction: Tensor<1>, scale: f64| in_dtype(direction, compute).mul_scalar(scale);
        // Under stochastic rounding the probe compares what happened with what was expected,
        // so it needs the weights before and after.
        let probed = self
            .probe
            .is_some()
            .then(|| (host_f32(&value), host_f32(&delta(direction.clone(), scale))));
        let updated = match rounding {
            UpdateRounding::Nearest => value - delta(direction, scale),
            // One pass: SR(value − scale · direction).
            UpdateRounding::Stochastic => brainfloat_ops::stochastic_axpby(
                value,
                direction,
                1.0,
                -scale as f32,
                stream(Stream::Weight),
            ),
            UpdateRounding::Kahan => {
                let compensation = match self.compensation.remove(&name) {
                    Some(compensation) => compensation,
                    None => value.zeros_like(),
                };
                let (updated, compensation) =
                    brainfloat_ops::kahan_add(value, compensation, delta(direction, -scale));
                self.compensation.insert(name.clone(), compensation);
                updated
            }
        };
        if let (Some(probe), Some((weights, deltas))) = (&mut self.probe, probed) {
            if rounding == UpdateRounding::Stochastic {
                let (away, expected, count) =
                    stochastic_rounded_away(&weights, &deltas, &host_f32(&updated));
                probe.add(group, away, count);
                probe.add_expected(group, expected);
            } else {
                let (lost, count) = lost_updates(&weights, &deltas);
                probe.add(group, lost, count);
            }
            if let Some(compensation) = self.compensation.get(&name) {
                let (sum, count) =
                    compensation_in_half_ulps(&host_f32(&updated), &host_f32(compensation));
                probe.add_compensation(group, sum, count);
            }
        }
        updated.reshape(dims)
    }
}

/// `tensor` in `dtype`: itself when it has it already (no pass over it), cast otherwise.
fn in_dtype<const D: usize>(tensor: Tensor<D>, dtype: FloatDType) -> Tensor<D> {
    if tensor.dtype() == DType::from(dtype) {
        tensor
    } else {
        tensor.cast(dtype)
    }
}

/// A new optimizer-state value written into its storage `dtype`: stochastically rounded under
/// [`UpdateRounding::Stochastic`] (the random bits of `key()`), to nearest otherwise.
fn store(
    values: Tensor<1>,
    dtype: FloatDType,
    rounding: UpdateRounding,
    key: impl FnOnce() -> u64,
) -> Tensor<1> {
    match rounding {
        UpdateRounding::Stochastic => brainfloat_ops::round_stochastic(values, key()),
        UpdateRounding::Nearest | UpdateRounding::Kahan => in_dtype(values, dtype),
    }
}

/// FNV-1a of a parameter's name: the parameter's word in its rounding streams' keys (names are
/// what a checkpoint keeps, so a resumed run draws the same bits).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01B3)
    })
}

/// The values of `tensor` as fp32 on the host (exact for bf16 and fp32).
fn host_f32(tensor: &Tensor<1>) -> Vec<f32> {
    tensor
        .clone()
        .cast(FloatDType::F32)
        .into_data()
        .try_into_vec::<f32>()
        .expect("an fp32 tensor reads back as f32")
}

struct StepMapper<'a> {
    optimizer: &'a mut RecordOptimizer,
    roles: &'a RoleMap,
    grads: GradientsParams,
    grad_scale: f64,
    lr_multiplier: f64,
    momentum: f64,
    step: usize,
    path: ParamPath,
}

impl ModuleMapper for StepMapper<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let name = self.path.name();
        let role = self.roles.role(&id).unwrap_or_else(|| {
            panic!("{name} has no role: the model's ParamRoles must list every parameter")
        });
        let group = ParamGroup::of(role);
        let require_grad = tensor.is_require_grad();
        // Without accumulation the scale is 1: skip a pass over every gradient.
        let grad = if self.grad_scale == 1.0 {
            grad
        } else {
            grad.mul_scalar(self.grad_scale)
        };
        let updated = self.optimizer.update(
            name,
            group,
            tensor.inner(),
            grad,
            self.lr_multiplier,
            self.momentum,
            self.step,
        );
        let mut tensor = Tensor::from_inner(updated);
        if require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}

// ----------------------------------------------------------------------------------------------
// Muon's orthogonalisation: Newton–Schulz

// Newton–Schulz orthogonalisation, as the record's Muon computes it.

/// The quintic Newton–Schulz coefficients of the record.
pub const NS_COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// `X = G/(‖G‖_F + 1e-7)` in `dtype` (transposed when rows > cols), then `steps` times
/// `A = X·Xᵀ; X = a·X + (b·A + c·A·A)·X`, transposed back. Returns `dtype`.
pub fn newton_schulz(grad: Tensor<2>, steps: usize, dtype: FloatDType) -> Tensor<2> {
    let (a, b, c) = NS_COEFFICIENTS;
    let [rows, cols] = grad.dims();
    // The Frobenius norm accumulates in fp32 (as PyTorch's bf16 `norm` does), then rounds.
    let norm = grad.clone().cast(ACCUMULATION_DTYPE).square().sum().sqrt();
    let norm = norm.cast(dtype).add_scalar(1e-7);
    let mut x = grad.cast(dtype) / norm.unsqueeze();
    let tall = rows > cols;
    if tall {
        x = x.transpose();
    }
    for _ in 0..steps {
        // The record's order: the polynomial in A (rows × rows, the small side) first, then one
        // product with X — a quarter fewer FLOPs than b·A·X + c·A·(A·X) for a wide X.
        let gram = matmul(x.clone(), x.clone().transpose());
        let polynomial = gram.clone().mul_scalar(b) + matmul(gram.clone(), gram).mul_scalar(c);
        x = x.clone().mul_scalar(a) + matmul(polynomial, x);
    }
    if tall { x.transpose() } else { x }
}

// ----------------------------------------------------------------------------------------------
// The learning-rate schedule

// The record's learning-rate schedule: warmup, flat, linear warmdown to 0.

/// Trapezoidal learning-rate multiplier over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrapezoidalSchedule {
    /// Number of optimizer steps.
    pub total_steps: usize,
    /// Linear warmup length (0 in the record).
    pub warmup_steps: usize,
    /// Linear warmdown length at the end.
    pub warmdown_steps: usize,
}

impl TrapezoidalSchedule {
    /// `total_steps` optimizer steps, the first `warmup_steps` rising, the last `warmdown_steps`
    /// falling to 0.
    pub const fn new(total_steps: usize, warmup_steps: usize, warmdown_steps: usize) -> Self {
        Self {
            total_steps,
            warmup_steps,
            warmdown_steps,
        }
    }

    /// The multiplier at optimizer step `step` (0-based): `(step+1)/warmup` during warmup, 1 on
    /// the flat part, `(N − step)/W` during the warmdown, as the reference computes it.
    pub fn multiplier(&self, step: usize) -> f64 {
        let (n, warmup, warmdown) = (self.total_steps, self.warmup_steps, self.warmdown_steps);
        if step < warmup {
            (step + 1) as f64 / warmup as f64
        } else if step < n - warmdown {
            1.0
        } else {
            (n - step) as f64 / warmdown as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brainfloat_precision::{CastedLinear, CastedLinearConfig};
    use burn::module::Module;

    /// A layer that is a model's output head (Adam with the head's rate).
    #[derive(Module, Debug)]
    struct Head {
        linear: CastedLinear,
    }

    impl ParamRoles for Head {
        fn param_roles(&self) -> RoleMap {
            let mut roles = RoleMap::default();
            self.linear.add_roles(&mut roles, ParamRole::OutputMatrix);
            roles
        }
    }

    /// Adam's first step moves every weight with a non-zero gradient by exactly its rate
    /// (`m̂/√v̂ = g/|g|`): with weights of 1 (half a bf16 ulp is 2⁻⁸ ≈ 0.0039), a rate of
    /// 0.001 is lost to bf16 storage everywhere and a rate of 0.01 nowhere.
    #[test]
    fn the_probe_counts_updates_below_half_an_ulp_per_group() {
        let device = brainfloat_test_support::test_device().autodiff();
        for (head_lr, lost) in [(0.001, true), (0.01, false)] {
            let mut linear = CastedLinearConfig::new(4, 3).init(&device);
            linear.weight = Param::from_tensor(Tensor::<2>::ones([3, 4], &device));
            let layer = Head { linear };
            let x = Tensor::<2>::ones([2, 4], &device);
            let loss = layer.linear.forward(x).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            let mut optimizer = RecordOptimizer::new(RecordOptimizerConfig {
                head_lr,
                ..Default::default()
            });
            optimizer.probe_next_step();
            let (layer, _) = optimizer.step(layer, grads, 1.0, 1.0, 0);
            let probe = optimizer.take_probe().expect("asked for");
            assert_eq!(
                probe.counts(ParamGroup::Head),
                (if lost { 12 } else { 0 }, 12)
            );
            assert_eq!(
                probe.fraction(ParamGroup::Head),
                Some(if lost { 1.0 } else { 0.0 })
            );
            assert_eq!(
                probe.fraction(ParamGroup::Matrices),
                None,
                "no such parameters"
            );
            // The fp32 master weight kept the update either way.
            let w: Vec<f32> = layer.linear.weight.val().into_data().try_to_vec().unwrap();
            assert!(
                w.iter().all(|&v| (v - (1.0 - head_lr as f32)).abs() < 1e-6),
                "{w:?}"
            );
            // Probing is per step.
            assert_eq!(optimizer.take_probe(), None);
        }
    }
}

#[cfg(test)]
mod muon_tests {
    use super::*;
    use burn::tensor::{DType, TensorData};

    /// Newton–Schulz in float64, on row-major `rows × cols` values, written out.
    fn reference(g: &[f64], rows: usize, cols: usize, steps: usize) -> Vec<f64> {
        let (a, b, c) = NS_COEFFICIENTS;
        let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt() + 1e-7;
        // Work on the wide orientation: X is r × k with r ≤ k.
        let tall = rows > cols;
        let (r, k) = if tall { (cols, rows) } else { (rows, cols) };
        let at = |i: usize, j: usize| {
            if tall {
                g[j * cols + i]
            } else {
                g[i * cols + j]
            }
        };
        let mut x: Vec<f64> = (0..r * k).map(|n| at(n / k, n % k) / norm).collect();
        let matmul = |p: &[f64], q: &[f64], n: usize, m: usize, l: usize| {
            let mut out = vec![0.0; n * l];
            for i in 0..n {
                for j in 0..l {
                    out[i * l + j] = (0..m).map(|s| p[i * m + s] * q[s * l + j]).sum();
                }
            }
            out
        };
        for _ in 0..steps {
            let xt: Vec<f64> = (0..k * r).map(|n| x[(n % r) * k + n / r]).collect();
            let gram = matmul(&x, &xt, r, k, r);
            let cubic = matmul(&gram, &x, r, r, k);
            let quintic = matmul(&gram, &cubic, r, r, k);
            x = (0..r * k)
                .map(|n| a * x[n] + b * cubic[n] + c * quintic[n])
                .collect();
        }
        if tall {
            (0..rows * cols)
                .map(|n| x[(n % cols) * k + n / cols])
                .collect()
        } else {
            x
        }
    }

    #[test]
    fn matches_a_float64_reference_in_both_orientations() {
        let device = brainfloat_test_support::test_device();
        for (rows, cols) in [(4, 6), (6, 4), (5, 5)] {
            let g: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3 + (i as f32).sin())
                .collect();
            let want = reference(
                &g.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                rows,
                cols,
                5,
            );
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (dtype, tolerance) in [(FloatDType::F32, 1e-5), (FloatDType::BF16, 0.1)] {
                let grad = Tensor::<2>::from_data(
                    TensorData::new(g.clone(), [rows, cols]),
                    (&device, DType::F32),
                );
                let x = newton_schulz(grad, 5, dtype);
                assert_eq!(x.dtype(), DType::from(dtype));
                assert_eq!(x.dims(), [rows, cols]);
                let got = x
                    .cast(FloatDType::F32)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (*a as f64 - b).abs() / scale)
                    .fold(0.0, f64::max);
                let l2 = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
                let frobenius = l2(&mut got.iter().zip(&want).map(|(a, b)| *a as f64 - b))
                    / l2(&mut want.iter().copied());
                println!("{rows}×{cols} {dtype:?}: worst {worst:.2e}, frobenius {frobenius:.2e}");
                // fp32 agrees element by element (measured ≤ 1.3e-6). In bf16 each of the five
                // quintic iterations re-rounds and amplifies the previous rounding, so the result
                // drifts 5–8 % (Frobenius) from the exact map, as PyTorch's bf16 Muon does; the
                // bf16 training curve against PyTorch (tests/golden_curve.rs) checks its effect.
                let error = if dtype == FloatDType::F32 {
                    worst
                } else {
                    frobenius
                };
                assert!(error <= tolerance, "{rows}×{cols} {dtype:?}: {error}");
            }
        }
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn boundaries_match_the_reference() {
        let s = TrapezoidalSchedule::new(6, 0, 3);
        let values: Vec<f64> = (0..6).map(|i| s.multiplier(i)).collect();
        assert_eq!(values, [1.0, 1.0, 1.0, 1.0, 2.0 / 3.0, 1.0 / 3.0]);
        let record = TrapezoidalSchedule::new(3242, 0, 926);
        assert_eq!(record.multiplier(2315), 1.0);
        assert_eq!(record.multiplier(2316), 1.0);
        assert_eq!(record.multiplier(2317), 925.0 / 926.0);
        assert_eq!(record.multiplier(3241), 1.0 / 926.0);
        let warm = TrapezoidalSchedule::new(10, 4, 2);
        assert_eq!(warm.multiplier(0), 0.25);
        assert_eq!(warm.multiplier(3), 1.0);
        assert_eq!(warm.multiplier(8), 1.0);
        assert_eq!(warm.multiplier(9), 0.5);
    }
}
