//! The record's optimizers, one per parameter group: Muon (`muon.rs`) for the 2-D matrices of
//! the blocks, Adam (`adam.rs`) for the embedding, the head and the scalars; both write through
//! one writer of updates by the policy's rounding (`write.rs`), which the lost-update probe
//! observes (`probe.rs`). The groups and their rates are in `groups.rs`. State is kept by
//! parameter id; names appear at the checkpoint's edge (`state.rs`).

use std::collections::HashMap;

use brainfloat_precision::{ParamPath, ParamRole, ParamRoles, RoleMap, WeightLayout};
use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor};

mod adam;
mod groups;
mod muon;
mod probe;
mod state;
mod write;

use adam::AdamState;
use brainfloat_ops::AdamGroup;
pub use groups::{MatrixOptimizer, ParamGroup, RecordOptimizerConfig};
use muon::{Muon, MuonState};
pub use probe::LostUpdates;
use write::Writer;

/// What the optimizer knows of a parameter, read from the model once: its name (what a
/// checkpoint calls it), its group, and its word in the keys of its rounding streams.
#[derive(Debug, Clone)]
struct ParamEntry {
    name: String,
    role: ParamRole,
    group: ParamGroup,
    stream_word: u64,
    layout: WeightLayout,
}

/// The record's optimizers over a whole model, with state per parameter.
#[derive(Debug)]
pub struct RecordOptimizer {
    config: RecordOptimizerConfig,
    /// The model's parameters by id; read from the model at the first step or state load.
    params: HashMap<ParamId, ParamEntry>,
    /// Adam's state of the parameters it steps.
    adam: HashMap<ParamId, AdamState>,
    /// Muon's state of the matrices.
    muon: HashMap<ParamId, MuonState>,
    /// Kahan compensation per bf16 parameter, under [`UpdateRounding::Kahan`].
    compensation: HashMap<ParamId, Tensor<1>>,
    probe: Option<LostUpdates>,
}

impl RecordOptimizer {
    /// A fresh optimizer.
    pub fn new(config: RecordOptimizerConfig) -> Self {
        Self {
            config,
            params: HashMap::new(),
            adam: HashMap::new(),
            muon: HashMap::new(),
            compensation: HashMap::new(),
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

    /// One optimizer step at 0-based `step`: every gradient is first multiplied by `grad_scale`
    /// (`1/grad_accum_steps`, in the gradient's dtype), every group's rate by `lr_multiplier`.
    /// Each parameter and its state are updated in place where the model and this optimizer
    /// hold the only handles to them. Check [`grad_norm`](Self::grad_norm) first: a step is applied, never
    /// undone.
    ///
    /// # Panics
    /// When a parameter has no role in `model`'s [`ParamRoles`] (a model `apply_policy`
    /// accepted has one for each), or is not a parameter of the model this optimizer stepped
    /// or loaded state for before.
    pub fn step<M: ParamRoles>(
        &mut self,
        model: M,
        grads: GradientsParams,
        grad_scale: f64,
        lr_multiplier: f64,
        step: usize,
    ) -> M {
        if self.params.is_empty() {
            self.params = param_table(&model);
        }
        // The parameters are taken out of the model while their groups step, so that each
        // update holds the only handle to its buffers and runs in place.
        let mut taken = TakeTrained {
            optimizer: self,
            grads,
            grad_scale,
            taken: Vec::new(),
        };
        let model = model.map(&mut taken);
        let taken = taken.taken;
        let mut shapes: HashMap<ParamId, (Vec<usize>, bool)> = (taken.iter())
            .map(|t| (t.id, (t.dims.clone(), t.require_grad)))
            .collect();
        let mut updated = HashMap::new();
        for (key, members) in self.groups(taken) {
            updated.extend(self.update_group(key, members, lr_multiplier, step));
        }
        model.map(&mut PutBack {
            updated: &mut updated,
            shapes: &mut shapes,
        })
    }

    /// The global L2 norm of the gradients in `grads` of `model`'s trained parameters (frozen
    /// ones are not updated, so neither counted nor clipped, as only the trained parameters go
    /// to `clip_grad_norm_` in PyTorch), each multiplied by `scale`, squares summed in fp32:
    /// known before any update, so that a non-finite step is dropped before it is applied.
    pub fn grad_norm<M: ParamRoles>(
        &mut self,
        model: &M,
        grads: &GradientsParams,
        scale: f64,
    ) -> f64 {
        struct Gradients<'a> {
            optimizer: &'a RecordOptimizer,
            grads: &'a GradientsParams,
            flat: Vec<Tensor<1>>,
        }
        impl ModuleVisitor for Gradients<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if self.optimizer.is_frozen(param.id) {
                    return;
                }
                if let Some(grad) = self.grads.get::<D>(param.id) {
                    let numel = grad.shape().num_elements();
                    self.flat.push(grad.reshape([numel]));
                }
            }
        }
        if self.params.is_empty() {
            self.params = param_table(model);
        }
        let mut gradients = Gradients {
            optimizer: self,
            grads,
            flat: Vec::new(),
        };
        model.visit(&mut gradients);
        if gradients.flat.is_empty() {
            return 0.0;
        }
        let sums = brainfloat_ops::square_sums(gradients.flat);
        let sum = Tensor::cat(sums, 0).sum().into_scalar::<f32>();
        (sum as f64).sqrt() * scale.abs()
    }

    /// Whether the parameter `id` has a frozen role.
    fn is_frozen(&self, id: ParamId) -> bool {
        let frozen = &self.config.frozen;
        !frozen.is_empty()
            && self
                .params
                .get(&id)
                .is_some_and(|p| frozen.contains(&p.role))
    }

    /// Whether Muon steps the parameter (else Adam).
    fn steps_with_muon(&self, entry: &ParamEntry) -> bool {
        entry.group == ParamGroup::Matrices && self.config.matrix_optimizer == MatrixOptimizer::Muon
    }

    /// The taken parameters by the group that steps them together, in the model's order: Adam's
    /// by optimizer group and dtype, Muon's by dtype, shape and layout too.
    fn groups(&self, taken: Vec<Taken>) -> Vec<(GroupKey, Vec<Taken>)> {
        let mut groups: Vec<(GroupKey, Vec<Taken>)> = Vec::new();
        for member in taken {
            let entry = self.params.get(&member.id).unwrap_or_else(|| {
                panic!(
                    "parameter {} is not one of the model this optimizer was made for",
                    member.id
                )
            });
            let muon = self.steps_with_muon(entry);
            let key = GroupKey {
                group: entry.group,
                dtype: member.value.dtype(),
                muon: muon.then(|| ([member.dims[0], member.dims[1]], entry.layout)),
            };
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(member),
                None => groups.push((key, vec![member])),
            }
        }
        groups
    }

    /// One group's update: each member's new value (flattened), by id.
    fn update_group(
        &mut self,
        key: GroupKey,
        members: Vec<Taken>,
        lr_multiplier: f64,
        step: usize,
    ) -> Vec<(ParamId, Tensor<1>)> {
        let c = &self.config;
        let group = key.group;
        let weight_decay = c.weight_decay[group as usize];
        let lr = lr_multiplier
            * match group {
                ParamGroup::Embedding => c.embedding_lr,
                ParamGroup::Head => c.head_lr,
                ParamGroup::Scalars => c.scalar_lr,
                ParamGroup::Matrices => c.matrix_lr,
            };
        let ids: Vec<ParamId> = members.iter().map(|m| m.id).collect();
        let mut writers: Vec<Writer> = (ids.iter())
            .map(|id| {
                let word = self.params[id].stream_word;
                let compensation = self.compensation.remove(id);
                Writer::new(
                    key.dtype,
                    c.rounding,
                    [c.seed, step as u64, word],
                    compensation,
                )
            })
            .collect();
        let mut observer = self.probe.as_mut().map(|probe| (probe, group));
        let (params, grads): (Vec<_>, Vec<_>) =
            members.into_iter().map(|m| (m.value, m.grad)).unzip();
        let values = if let Some((dims, layout)) = key.muon {
            let muon = Muon::at_step(c, step, weight_decay, layout);
            let states = ids.iter().map(|id| self.muon.remove(id)).collect();
            let stepped =
                muon.update_group(states, params, grads, dims, lr, &mut writers, &mut observer);
            (ids.iter().zip(stepped))
                .map(|(id, (value, state))| {
                    self.muon.insert(*id, state);
                    value
                })
                .collect::<Vec<_>>()
        } else {
            let adam = AdamGroup {
                lr,
                betas: c.adam_betas,
                eps: c.adam_eps,
                weight_decay,
            };
            let states = ids.iter().map(|id| self.adam.remove(id)).collect();
            let stepped =
                adam::update_group(&adam, states, params, grads, &mut writers, &mut observer);
            (ids.iter().zip(stepped))
                .map(|(id, (value, state))| {
                    self.adam.insert(*id, state);
                    value
                })
                .collect()
        };
        for (id, writer) in ids.iter().zip(&mut writers) {
            if let Some(compensation) = writer.compensation.take() {
                self.compensation.insert(*id, compensation);
            }
        }
        ids.into_iter().zip(values).collect()
    }
}

/// What puts parameters into one step group: their optimizer group and storage dtype, and for
/// Muon the matrices' shape and layout.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GroupKey {
    group: ParamGroup,
    dtype: DType,
    muon: Option<([usize; 2], WeightLayout)>,
}

/// A parameter taken out of the model for its step: its value and scaled gradient, flattened,
/// and what puts it back.
struct Taken {
    id: ParamId,
    value: Tensor<1>,
    grad: Tensor<1>,
    dims: Vec<usize>,
    require_grad: bool,
}

/// What gradients of global norm `norm` are multiplied by to clip them to `max_norm`:
/// `min(1, max_norm / (norm + 1e-6))`, as `torch.nn.utils.clip_grad_norm_`; 1 when `max_norm`
/// is 0 (no clipping).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 {
        (max_norm / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    }
}

/// Every float parameter of `model`: its name, role, group and stream word, by id.
///
/// # Panics
/// When a parameter has no role in `model`'s [`ParamRoles`].
fn param_table<M: ParamRoles>(model: &M) -> HashMap<ParamId, ParamEntry> {
    struct Table {
        roles: RoleMap,
        path: ParamPath,
        params: HashMap<ParamId, ParamEntry>,
    }
    impl ModuleVisitor for Table {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }

        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }

        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let name = self.path.name();
            let role = self.roles.role(&param.id).unwrap_or_else(|| {
                panic!("{name} has no role: the model's ParamRoles must list every parameter")
            });
            let entry = ParamEntry {
                role,
                group: ParamGroup::of(role),
                stream_word: name_hash(&name),
                layout: self.roles.layout(&param.id),
                name,
            };
            self.params.insert(param.id, entry);
        }
    }
    let mut table = Table {
        roles: model.param_roles(),
        path: ParamPath::default(),
        params: HashMap::new(),
    };
    model.visit(&mut table);
    table.params
}

/// FNV-1a of a parameter's name: the parameter's word in its rounding streams' keys (names are
/// what a checkpoint keeps, so a resumed run draws the same bits).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01B3)
    })
}

/// Takes each trained parameter with a gradient out of the model (an empty tensor stands in
/// for it until [`PutBack`]), with its gradient times the scale.
struct TakeTrained<'a> {
    optimizer: &'a RecordOptimizer,
    grads: GradientsParams,
    grad_scale: f64,
    taken: Vec<Taken>,
}

impl ModuleMapper for TakeTrained<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        if self.optimizer.is_frozen(id) {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let dims = tensor.dims();
        let numel = dims.iter().product::<usize>();
        // Without accumulation the scale is 1: skip a pass over every gradient.
        let grad = if self.grad_scale == 1.0 {
            grad
        } else {
            brainfloat_ops::scale(grad, self.grad_scale)
        };
        let stand_in = Tensor::<D>::empty([0; D], (&tensor.device(), tensor.dtype()));
        self.taken.push(Taken {
            id,
            require_grad: tensor.is_require_grad(),
            value: tensor.inner().reshape([numel]),
            grad: grad.reshape([numel]),
            dims: dims.to_vec(),
        });
        Param::from_mapped_value(id, stand_in, mapper)
    }
}

/// Puts the updated parameters back into the model, in their shapes.
struct PutBack<'a> {
    updated: &'a mut HashMap<ParamId, Tensor<1>>,
    shapes: &'a mut HashMap<ParamId, (Vec<usize>, bool)>,
}

impl ModuleMapper for PutBack<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let (Some(updated), Some((dims, require_grad))) =
            (self.updated.remove(&id), self.shapes.remove(&id))
        else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let dims: [usize; D] = dims.try_into().expect("the parameter's own rank");
        let mut tensor = Tensor::from_inner(updated.reshape(dims));
        if require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::state::{EXP_AVG, EXP_AVG_SQ, MOMENTUM_BUFFER};
    use super::*;
    use brainfloat_precision::UpdateRounding;
    use brainfloat_precision::{CastedLinear, CastedLinearConfig};
    use burn::module::Module;
    use burn::tensor::FloatDType;
    use std::collections::BTreeMap;

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
            let layer = optimizer.step(layer, grads, 1.0, 1.0, 0);
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

    /// A hidden matrix (Muon) and a head (Adam), stored in bf16 so that the policy's rounding
    /// writes them.
    #[derive(Module, Debug)]
    struct TwoGroups {
        hidden: CastedLinear,
        head: CastedLinear,
    }

    impl ParamRoles for TwoGroups {
        fn param_roles(&self) -> RoleMap {
            let mut roles = RoleMap::default();
            self.hidden.add_roles(&mut roles, ParamRole::HiddenMatrix);
            self.head.add_roles(&mut roles, ParamRole::OutputMatrix);
            roles
        }
    }

    /// Muon's momentum and Adam's moments are kept in their parameter's dtype, as the record
    /// keeps them: an fp32 master's in fp32, a bf16 parameter's in bf16, whatever dtype
    /// Newton–Schulz iterates in.
    #[test]
    fn state_is_kept_in_each_parameters_dtype() {
        let device = brainfloat_test_support::test_device().autodiff();
        let stored = |mut linear: CastedLinear, dtype: FloatDType| {
            linear.weight = Param::from_tensor(linear.weight.val().cast(dtype).detach());
            linear
        };
        let x = Tensor::<2>::from_floats([[1.0, -2.0, 0.5, 3.0], [0.25, 1.0, -1.5, 2.0]], &device);
        for (hidden, head) in [
            (FloatDType::F32, FloatDType::BF16),
            (FloatDType::BF16, FloatDType::F32),
        ] {
            for ns_dtype in [FloatDType::F32, FloatDType::BF16] {
                let mut model = TwoGroups {
                    hidden: stored(CastedLinearConfig::new(4, 6).init(&device), hidden),
                    head: stored(CastedLinearConfig::new(6, 3).init(&device), head),
                };
                let mut optimizer = RecordOptimizer::new(RecordOptimizerConfig {
                    ns_dtype,
                    ..Default::default()
                });
                for step in 0..2 {
                    let out = model.head.forward(model.hidden.forward(x.clone()));
                    let loss = out.cast(FloatDType::F32).powf_scalar(2.0).sum();
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    model = optimizer.step(model, grads, 1.0, 1.0, step);
                }
                assert_eq!(model.hidden.weight.val().dtype(), DType::from(hidden));
                assert_eq!(model.head.weight.val().dtype(), DType::from(head));
                let (state, _) = optimizer.state();
                assert_eq!(
                    state.len(),
                    3,
                    "{:?}",
                    state.iter().map(|s| &s.0).collect::<Vec<_>>()
                );
                for (name, tensor) in state {
                    let expected = if name.starts_with("hidden.") {
                        assert!(name.ends_with(MOMENTUM_BUFFER), "{name}");
                        hidden
                    } else {
                        assert!(
                            name.ends_with(EXP_AVG) || name.ends_with(EXP_AVG_SQ),
                            "{name}"
                        );
                        head
                    };
                    let what = format!("{name} (Newton–Schulz in {ns_dtype:?})");
                    assert_eq!(tensor.dtype(), DType::from(expected), "{what}");
                }
            }
        }
    }

    /// Observing a step never changes it: three steps with the lost-update probe on every step
    /// leave the weights and every state tensor bit for bit where three unobserved steps leave
    /// them, under each rounding, with and without weight decay.
    #[test]
    fn a_probed_step_is_the_step_it_probes() {
        let device = brainfloat_test_support::test_device().autodiff();
        let bf16 = |mut linear: CastedLinear| {
            linear.weight = Param::from_tensor(linear.weight.val().cast(FloatDType::BF16).detach());
            linear
        };
        let model = TwoGroups {
            hidden: bf16(CastedLinearConfig::new(4, 6).init(&device)),
            head: bf16(CastedLinearConfig::new(6, 3).init(&device)),
        };
        let x = Tensor::<2>::from_floats([[1.0, -2.0, 0.5, 3.0], [0.25, 1.0, -1.5, 2.0]], &device);
        let bits = |t: Tensor<1>| -> Vec<u32> {
            let values: Vec<f32> = t.cast(FloatDType::F32).into_data().try_to_vec().unwrap();
            values.iter().map(|v| v.to_bits()).collect()
        };
        let run = |rounding, decay: f64, probed: bool| {
            let mut model = model.clone();
            let mut optimizer = RecordOptimizer::new(RecordOptimizerConfig {
                rounding,
                head_lr: 0.01,
                weight_decay: [0.0, decay, decay, 0.0],
                ..Default::default()
            });
            for step in 0..3 {
                let hidden = model.hidden.forward(x.clone());
                let loss = model.head.forward(hidden).powf_scalar(2.0).sum();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                if probed {
                    optimizer.probe_next_step();
                }
                model = optimizer.step(model, grads, 1.0, 1.0, step);
                assert_eq!(optimizer.take_probe().is_some(), probed);
            }
            let weights = [model.hidden.weight.val(), model.head.weight.val()];
            assert!(weights.iter().all(|w| w.dtype() == DType::BF16));
            let (state, steps) = optimizer.state();
            let state: Vec<(String, Vec<u32>)> = (state.into_iter())
                .map(|(name, tensor)| (name, bits(tensor)))
                .collect();
            (weights.map(|w| bits(w.reshape([-1]))), state, steps)
        };
        let roundings = [
            UpdateRounding::Nearest,
            UpdateRounding::Stochastic,
            UpdateRounding::Kahan,
        ];
        for rounding in roundings {
            for decay in [0.0, 0.1] {
                let plain = run(rounding, decay, false);
                assert_eq!(
                    plain.1.len(),
                    3 + usize::from(rounding == UpdateRounding::Kahan) * 2
                );
                assert!(
                    plain == run(rounding, decay, true),
                    "{rounding:?}, decay {decay}"
                );
            }
        }
    }

    /// Muon's step is the same map whichever way a matrix is stored: a 4 → 6 layer kept
    /// `[in, out]` (GPT-2's `Conv1D`) moves to the transpose of where its `[out, in]` twin
    /// moves, aspect factor `√(6/4)` included.
    #[test]
    fn muon_steps_a_matrix_alike_in_either_layout() {
        let device = brainfloat_test_support::test_device().autodiff();
        let x = Tensor::<2>::from_floats([[1.0, -2.0, 0.5, 3.0], [0.25, 1.0, -1.5, 2.0]], &device);
        let out_in = CastedLinearConfig::new(4, 6).init(&device);
        let mut in_out = CastedLinearConfig::new(4, 6)
            .with_layout(WeightLayout::InOut)
            .init(&device);
        in_out.weight = Param::from_tensor(out_in.weight.val().transpose().detach());
        // A layer on its own is a hidden matrix (Muon's group).
        let step = |linear: CastedLinear| {
            let loss = linear.forward(x.clone()).powf_scalar(2.0).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &linear);
            let mut optimizer = RecordOptimizer::new(RecordOptimizerConfig::default());
            optimizer.step(linear, grads, 1.0, 1.0, 0).weight.val()
        };
        let (before, a) = (out_in.weight.val(), step(out_in));
        let b = step(in_out).transpose();
        let values = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
        let moved = values(a.clone() - before);
        assert!(
            moved.iter().any(|d| d.abs() > 1e-3),
            "the step moves the weights"
        );
        for (a, b) in values(a).into_iter().zip(values(b)) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }

    /// With `matrix_optimizer = adam` the matrices take Adam's step (its first moves every
    /// weight by exactly the rate) and keep Adam's state, not Muon's.
    #[test]
    fn matrices_can_take_adams_step() {
        let device = brainfloat_test_support::test_device().autodiff();
        let layer = CastedLinearConfig::new(4, 6).init(&device);
        let before: Vec<f32> = layer.weight.val().into_data().try_to_vec().unwrap();
        let x = Tensor::<2>::from_floats([[1.0, -2.0, 0.5, 3.0]], &device);
        let loss = layer.forward(x).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        let mut optimizer = RecordOptimizer::new(RecordOptimizerConfig {
            matrix_lr: 0.01,
            matrix_optimizer: MatrixOptimizer::Adam,
            ..Default::default()
        });
        let layer = optimizer.step(layer, grads, 1.0, 1.0, 0);
        let after: Vec<f32> = layer.weight.val().into_data().try_to_vec().unwrap();
        for (b, a) in before.iter().zip(&after) {
            assert!(((b - a).abs() - 0.01).abs() < 1e-6, "{b} → {a}");
        }
        let (state, steps) = optimizer.state();
        let names: Vec<&str> = state.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["weight.exp_avg", "weight.exp_avg_sq"]);
        assert_eq!(steps["weight"], 1);
        // Resumed under Muon, the state is refused: it is the other optimizer's.
        let mut muon = RecordOptimizer::new(RecordOptimizerConfig::default());
        let names: Vec<String> = state.iter().map(|(name, _)| name.clone()).collect();
        let lookup = |name: &str| Ok(state.iter().find(|(n, _)| n == name).unwrap().1.clone());
        muon.load_state(&layer, &names, lookup, &steps).unwrap();
        let numel = BTreeMap::from([("weight".to_string(), 24)]);
        let err = muon.check_state(&numel, 1).unwrap_err().to_string();
        assert!(
            err.contains("weight has Adam's state, and optim.matrix_optimizer = \"muon\""),
            "{err}"
        );
    }

    /// The head (Adam's head group) with fp32 weights before and after `steps` steps of the
    /// gradient of `sum(linear(x))`, the gradient (the same every step: `Σ_b x[b, i]` for every
    /// row), and the names of the optimizer's state tensors after them.
    fn trained_head(
        config: RecordOptimizerConfig,
        steps: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f64>, Vec<String>) {
        let device = brainfloat_test_support::test_device().autodiff();
        let linear = CastedLinearConfig::new(4, 3).init(&device);
        let before: Vec<f32> = linear.weight.val().into_data().try_to_vec().unwrap();
        let mut layer = Head { linear };
        let x = Tensor::<2>::from_floats([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.25, 2.0]], &device);
        let mut optimizer = RecordOptimizer::new(config);
        for step in 0..steps {
            let loss = layer.linear.forward(x.clone()).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optimizer.step(layer, grads, 1.0, 1.0, step);
        }
        let after: Vec<f32> = layer.linear.weight.val().into_data().try_to_vec().unwrap();
        let grad = [1.5, 1.0, 3.25, 6.0].repeat(3);
        let state = optimizer
            .state()
            .0
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        (before, after, grad, state)
    }

    /// AdamW as PyTorch computes it (`torch.optim.AdamW`: decay first, then the Adam step with
    /// bias correction), in float64, against ours in fp32: within fp32 rounding.
    #[test]
    fn adamw_follows_pytorchs_formula() {
        let (lr, wd, (b1, b2), eps) = (0.01, 0.1, (0.9, 0.95), 1e-8);
        let config = RecordOptimizerConfig {
            head_lr: lr,
            weight_decay: [0.0, wd, 0.0, 0.0],
            ..Default::default()
        };
        let steps = 3;
        let (before, after, grad, _) = trained_head(config, steps);
        for ((w0, got), g) in before.iter().zip(&after).zip(&grad) {
            let (mut w, mut m, mut v) = (*w0 as f64, 0.0, 0.0);
            for t in 1..=steps as i32 {
                w *= 1.0 - lr * wd;
                m = b1 * m + (1.0 - b1) * g;
                v = b2 * v + (1.0 - b2) * g * g;
                let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
                w -= lr / c1 * m / ((v / c2).sqrt() + eps);
            }
            assert!((*got as f64 - w).abs() <= 2e-6, "{got} vs {w}");
            // The decay is visible: without it the weight would end elsewhere by ~lr·wd·|w|·3.
        }
        let (_, undecayed, _, _) = trained_head(
            RecordOptimizerConfig {
                head_lr: lr,
                ..Default::default()
            },
            steps,
        );
        assert!(
            after
                .iter()
                .zip(&undecayed)
                .any(|(a, b)| (a - b).abs() > 1e-5)
        );
    }

    /// A frozen role's parameters keep their weights and get no optimizer state.
    #[test]
    fn frozen_roles_are_not_updated() {
        let config = RecordOptimizerConfig {
            frozen: vec![ParamRole::OutputMatrix],
            ..Default::default()
        };
        let (before, after, _, state) = trained_head(config, 2);
        assert_eq!(before, after);
        assert!(state.is_empty(), "{state:?}");
        // Unfrozen, the same steps move the weight and keep Adam's two moments.
        let (before, after, _, state) = trained_head(RecordOptimizerConfig::default(), 2);
        assert_ne!(before, after);
        assert_eq!(state.len(), 2, "{state:?}");
    }

    /// The norm counts the trained parameters' gradients, a frozen role's not.
    #[test]
    fn the_gradient_norm_leaves_frozen_parameters_out() {
        let device = brainfloat_test_support::test_device().autodiff();
        let layer = Head {
            linear: CastedLinearConfig::new(4, 3).init(&device),
        };
        let x = Tensor::<2>::from_floats([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.25, 2.0]], &device);
        let grads = GradientsParams::from_grads(layer.linear.forward(x).sum().backward(), &layer);
        let want = (3.0f64 * (1.5 * 1.5 + 1.0 + 3.25 * 3.25 + 6.0 * 6.0)).sqrt();
        let norm =
            RecordOptimizer::new(RecordOptimizerConfig::default()).grad_norm(&layer, &grads, 0.5);
        assert!(
            (norm - 0.5 * want).abs() < 1e-5 * want,
            "{norm} vs {}",
            0.5 * want
        );
        let mut frozen = RecordOptimizer::new(RecordOptimizerConfig {
            frozen: vec![ParamRole::OutputMatrix],
            ..Default::default()
        });
        assert_eq!(frozen.grad_norm(&layer, &grads, 0.5), 0.0);
    }

    #[test]
    fn clipping_scales_to_the_max_norm_as_pytorch_does() {
        assert_eq!(clip_factor(10.0, 0.0), 1.0);
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        let factor = clip_factor(4.0, 1.0);
        assert_eq!(factor, 1.0 / (4.0 + 1e-6));
        assert!((4.0 * factor - 1.0).abs() < 1e-6);
    }
}
