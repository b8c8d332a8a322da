//! The one writer of new values into a parameter and its optimizer state, by the policy's
//! rounding: to nearest, stochastically, or with Kahan compensation. A group's members, which
//! share a storage dtype and so a rounding, are written together ([`states_axpy`],
//! [`weights`]): by one multi-tensor op unless each member needs a kernel of its own (its own
//! random stream, its own compensation, the probe's view of its update).

use brainfloat_ops::axpbys;
use brainfloat_precision::UpdateRounding;
use burn::tensor::{DType, FloatDType, Tensor};

use super::ParamGroup;
use super::probe::{LostUpdates, WrittenUpdate};

/// Which stream of stochastic rounding's random bits a written tensor draws from.
#[derive(Clone, Copy)]
pub(super) enum Stream {
    Weight = 0,
    Moment1 = 1,
    Moment2 = 2,
    MomentumBuffer = 3,
}

/// The lost-update probe, when a step is observed, and the group it observes.
pub(super) type Observer<'a> = Option<(&'a mut LostUpdates, ParamGroup)>;

/// Writes one parameter's step: its new state values and its new weights.
pub(super) struct Writer {
    /// The parameter's storage dtype (its state's too).
    storage: FloatDType,
    /// The rounding of this parameter: the policy's for bf16 storage; fp32 is written exactly.
    rounding: UpdateRounding,
    /// Seed, step and parameter: the first three words of each stream's key.
    key: [u64; 3],
    /// Kahan's compensation of this parameter, under [`UpdateRounding::Kahan`].
    pub compensation: Option<Tensor<1>>,
}

impl Writer {
    pub fn new(
        storage: DType,
        policy: UpdateRounding,
        key: [u64; 3],
        compensation: Option<Tensor<1>>,
    ) -> Self {
        let rounding = if storage == DType::BF16 {
            policy
        } else {
            UpdateRounding::Nearest
        };
        Self {
            storage: FloatDType::from(storage),
            rounding,
            key,
            compensation,
        }
    }

    /// The dtype updates are computed in: the storage's when they round to nearest; fp32 when
    /// stochastic rounding or Kahan carries what bf16 would drop.
    pub fn compute(&self) -> FloatDType {
        match self.rounding {
            UpdateRounding::Nearest => self.storage,
            UpdateRounding::Stochastic | UpdateRounding::Kahan => FloatDType::F32,
        }
    }

    /// The compensation a fused step carries for the parameter `like`, under Kahan (zeros at
    /// first); `None` otherwise. The step hands the updated one back into
    /// [`compensation`](Self::compensation).
    pub fn take_compensation(&mut self, like: &Tensor<1>) -> Option<Tensor<1>> {
        (self.rounding == UpdateRounding::Kahan).then(|| {
            self.compensation
                .take()
                .unwrap_or_else(|| like.zeros_like())
        })
    }

    /// The keys of `streams` under stochastic rounding, for a fused kernel; `None` otherwise.
    pub fn stochastic_keys<const N: usize>(&self, streams: [Stream; N]) -> Option<[u64; N]> {
        (self.rounding == UpdateRounding::Stochastic).then(|| streams.map(|s| self.key(s)))
    }

    fn key(&self, stream: Stream) -> u64 {
        let [seed, step, parameter] = self.key;
        brainfloat_ops::rounding_key(&[seed, step, parameter, stream as u64])
    }

    /// A new state value (computed in [`compute`](Self::compute)) stored: stochastically
    /// rounded under stochastic rounding, to nearest otherwise.
    pub fn state(&self, values: Tensor<1>, stream: Stream) -> Tensor<1> {
        match self.rounding {
            UpdateRounding::Stochastic => {
                brainfloat_ops::round_stochastic(values, self.key(stream))
            }
            UpdateRounding::Nearest | UpdateRounding::Kahan => in_dtype(values, self.storage),
        }
    }

    /// `a·y + x` stored as a state value; one pass under stochastic rounding.
    pub fn state_axpy(&self, y: Tensor<1>, x: Tensor<1>, a: f64, stream: Stream) -> Tensor<1> {
        match self.rounding {
            UpdateRounding::Stochastic => {
                brainfloat_ops::stochastic_axpby(y, x, a as f32, 1.0, self.key(stream))
            }
            _ => self.state(
                brainfloat_ops::axpby(in_dtype(y, self.compute()), x, a, 1.0),
                stream,
            ),
        }
    }

    /// The weights `value − scale·direction`, written by the rounding (and shown to the
    /// observer, if any).
    pub fn weights(
        &mut self,
        value: Tensor<1>,
        direction: Tensor<1>,
        scale: f64,
        observer: &mut Observer<'_>,
    ) -> Tensor<1> {
        let compute = self.compute();
        // `direction` is moved into the one delta made, so that its multiply reuses its buffer.
        let delta = |direction: Tensor<1>, scale: f64| {
            brainfloat_ops::scale(in_dtype(direction, compute), scale)
        };
        let seen = observer
            .is_some()
            .then(|| (host_f32(&value), host_f32(&delta(direction.clone(), scale))));
        let updated = match self.rounding {
            UpdateRounding::Nearest => brainfloat_ops::axpby(value, direction, 1.0, -scale),
            // One pass: SR(value − scale · direction).
            UpdateRounding::Stochastic => brainfloat_ops::stochastic_axpby(
                value,
                direction,
                1.0,
                -scale as f32,
                self.key(Stream::Weight),
            ),
            UpdateRounding::Kahan => {
                let compensation = self
                    .compensation
                    .take()
                    .unwrap_or_else(|| value.zeros_like());
                let (updated, compensation) =
                    brainfloat_ops::kahan_add(value, compensation, delta(direction, -scale));
                self.compensation = Some(compensation);
                updated
            }
        };
        if let Some((before, delta)) = seen {
            self.show(observer, &before, &delta, &updated);
        }
        updated
    }

    /// Shows the observer, if any, the weights `before` an update, what was subtracted from
    /// them (`delta`, before rounding) and the weights written (`after`).
    pub fn show(
        &self,
        observer: &mut Observer<'_>,
        before: &[f32],
        delta: &[f32],
        after: &Tensor<1>,
    ) {
        if let Some((probe, group)) = observer {
            let compensation = self.compensation.as_ref().map(host_f32);
            probe.observe(
                *group,
                &WrittenUpdate {
                    rounding: self.rounding,
                    before,
                    delta,
                    after: &host_f32(after),
                    compensation: compensation.as_deref(),
                },
            );
        }
    }
}

/// New state values of a group's members: `a·ys[i] + xs[i]` stored by each member's writer, or
/// `xs[i]` stored where a member has no `ys[i]` yet (its first step); one multi-tensor op for the
/// group where no member rounds stochastically (each draws its own stream) and all have `ys`.
pub(super) fn states_axpy(
    writers: &[Writer],
    ys: Vec<Option<Tensor<1>>>,
    xs: Vec<Tensor<1>>,
    a: f64,
    stream: Stream,
) -> Vec<Tensor<1>> {
    let stochastic = writers
        .iter()
        .any(|w| w.rounding == UpdateRounding::Stochastic);
    if !stochastic && ys.iter().all(Option::is_some) {
        let ys = (ys.into_iter().flatten().zip(writers))
            .map(|(y, writer)| in_dtype(y, writer.compute()))
            .collect();
        let sums = axpbys(ys, xs, a, 1.0);
        return (writers.iter().zip(sums))
            .map(|(writer, sum)| writer.state(sum, stream))
            .collect();
    }
    (writers.iter().zip(ys).zip(xs))
        .map(|((writer, y), x)| match y {
            Some(y) => writer.state_axpy(y, x, a, stream),
            None => writer.state(x, stream),
        })
        .collect()
}

/// The weights `values[i] − scale·directions[i]` of a group's members, each written by its
/// writer; one multi-tensor op for the group where all round to nearest and none is observed.
pub(super) fn weights(
    writers: &mut [Writer],
    values: Vec<Tensor<1>>,
    directions: Vec<Tensor<1>>,
    scale: f64,
    observer: &mut Observer<'_>,
) -> Vec<Tensor<1>> {
    let nearest = writers
        .iter()
        .all(|w| w.rounding == UpdateRounding::Nearest);
    if nearest && observer.is_none() {
        return axpbys(values, directions, 1.0, -scale);
    }
    (writers.iter_mut().zip(values).zip(directions))
        .map(|((writer, value), direction)| writer.weights(value, direction, scale, observer))
        .collect()
}

/// `tensor` in `dtype`: itself when it has it already (no pass over it), cast otherwise.
pub(super) fn in_dtype<const D: usize>(tensor: Tensor<D>, dtype: FloatDType) -> Tensor<D> {
    if tensor.dtype() == DType::from(dtype) {
        tensor
    } else {
        tensor.cast(dtype)
    }
}

/// The values of `tensor` as fp32 on the host (exact for bf16 and fp32).
pub(super) fn host_f32(tensor: &Tensor<1>) -> Vec<f32> {
    tensor
        .clone()
        .cast(FloatDType::F32)
        .into_data()
        .try_into_vec::<f32>()
        .expect("an fp32 tensor reads back as f32")
}
