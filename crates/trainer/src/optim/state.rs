//! The optimizer's state as a checkpoint holds it: PyTorch's state names after each
//! parameter's, loaded into a fresh optimizer and checked against the model it resumes.

use std::collections::{BTreeMap, HashMap, HashSet};

use brainfloat_precision::ParamRoles;
use burn::module::ParamId;
use burn::tensor::Tensor;

use super::adam::AdamState;
use super::muon::MuonState;
use super::{RecordOptimizer, param_table};
use crate::error::TensorFileError;

/// Suffixes of the state tensors in a saved optimizer, after the parameter's name (PyTorch's
/// state names).
pub(super) const EXP_AVG: &str = "exp_avg";
pub(super) const EXP_AVG_SQ: &str = "exp_avg_sq";
pub(super) const MOMENTUM_BUFFER: &str = "momentum_buffer";
const KAHAN_COMPENSATION: &str = "kahan_compensation";

impl RecordOptimizer {
    /// Every state tensor, flattened, named `<parameter>.exp_avg`, `.exp_avg_sq` (Adam),
    /// `.momentum_buffer` (Muon) or `.kahan_compensation` (Kahan), and the Adam step count of
    /// each parameter.
    pub fn state(&self) -> (Vec<(String, Tensor<1>)>, BTreeMap<String, i32>) {
        let mut tensors = Vec::new();
        let mut steps = BTreeMap::new();
        let name = |id: &ParamId| self.params[id].name.clone();
        for (id, adam) in &self.adam {
            let name = name(id);
            tensors.push((format!("{name}.{EXP_AVG}"), adam.moment_1.clone()));
            tensors.push((format!("{name}.{EXP_AVG_SQ}"), adam.moment_2.clone()));
            steps.insert(name, adam.steps);
        }
        for (id, muon) in &self.muon {
            let buffer = muon.momentum_buffer.clone();
            tensors.push((format!("{}.{MOMENTUM_BUFFER}", name(id)), buffer));
        }
        for (id, compensation) in &self.compensation {
            let entry = format!("{}.{KAHAN_COMPENSATION}", name(id));
            tensors.push((entry, compensation.clone()));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        (tensors, steps)
    }

    /// Restores what [`state`](Self::state) returned for `model`'s parameters; `tensor` looks
    /// a state tensor up by name.
    pub fn load_state<M: ParamRoles>(
        &mut self,
        model: &M,
        names: &[String],
        mut tensor: impl FnMut(&str) -> Result<Tensor<1>, TensorFileError>,
        steps: &BTreeMap<String, i32>,
    ) -> Result<(), TensorFileError> {
        self.params = param_table(model);
        let ids: HashMap<&str, ParamId> = self
            .params
            .iter()
            .map(|(id, entry)| (entry.name.as_str(), *id))
            .collect();
        // State of parameters the model lacks, all named at once.
        let strangers: Vec<String> = names
            .iter()
            .filter(|name| {
                let param = name
                    .rsplit_once('.')
                    .map_or(name.as_str(), |(param, _)| param);
                !ids.contains_key(param)
            })
            .map(|name| format!("state {name} belongs to no parameter of the model"))
            .collect();
        if !strangers.is_empty() {
            return Err(TensorFileError {
                problems: strangers,
            });
        }
        let id_of = |param: &str| ids[param];
        self.adam.clear();
        self.muon.clear();
        self.compensation.clear();
        for name in names {
            if let Some(param) = name.strip_suffix(&format!(".{KAHAN_COMPENSATION}")) {
                self.compensation.insert(id_of(param), tensor(name)?);
            } else if let Some(param) = name.strip_suffix(&format!(".{MOMENTUM_BUFFER}")) {
                let momentum_buffer = tensor(name)?;
                let state = MuonState { momentum_buffer };
                self.muon.insert(id_of(param), state);
            } else if let Some(param) = name.strip_suffix(&format!(".{EXP_AVG}")) {
                let count = *steps.get(param).ok_or_else(|| {
                    TensorFileError::one(format!("no Adam step count for {param}"))
                })?;
                let state = AdamState {
                    steps: count,
                    moment_1: tensor(name)?,
                    moment_2: tensor(&format!("{param}.{EXP_AVG_SQ}"))?,
                };
                self.adam.insert(id_of(param), state);
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
        // State of the other optimizer: a checkpoint written under the other matrix_optimizer.
        let states =
            (self.muon.keys().map(|id| (id, true))).chain(self.adam.keys().map(|id| (id, false)));
        for (id, muon) in
            states.filter(|(id, muon)| self.steps_with_muon(&self.params[id]) != *muon)
        {
            let (kind, configured) = if muon {
                ("Muon", "adam")
            } else {
                ("Adam", "muon")
            };
            problems.push(format!(
                "{} has {kind}'s state, and optim.matrix_optimizer = \"{configured}\" steps it \
                 with the other optimizer",
                self.params[id].name,
            ));
        }
        // None at all is a run whose every step was skipped; some but not all is damage.
        if step > 0 && !(self.adam.is_empty() && self.muon.is_empty()) {
            // Frozen parameters have none, on purpose.
            let frozen = self
                .params
                .iter()
                .filter(|(id, _)| self.is_frozen(**id))
                .map(|(_, p)| p.name.as_str());
            let stated: HashSet<&str> = (self.adam.keys().chain(self.muon.keys()))
                .map(|id| self.params[id].name.as_str())
                .chain(frozen)
                .collect();
            let missing: Vec<&str> = numel
                .keys()
                .map(String::as_str)
                .filter(|param| !stated.contains(param))
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
}
