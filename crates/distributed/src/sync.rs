//! The `Collectives` trait, its single-process implementation, and gradients averaged over the
//! ranks in fp32 buckets.

use brainfloat_precision::ACCUMULATION_DTYPE;
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};

/// A collective that failed: a rank died, hung, or the transport broke.
#[derive(Debug, thiserror::Error)]
#[error("gradient sync (rank {rank} of {world_size}): {problem}")]
pub struct SyncError {
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// What went wrong.
    pub problem: String,
}

/// What a data-parallel trainer needs from its ranks, typed by what travels: who it is,
/// element-wise means of fp32 buffers (gradients), means of floats (losses), every rank's
/// integer gathered, whether any rank set a flag, barriers, and a way to stop everyone.
pub trait Collectives {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// Replaces `buffer` on every rank by the element-wise mean over all ranks, computed in
    /// fp32 (sum, then divide by the number of ranks).
    fn all_reduce_mean(&mut self, buffer: &mut [f32]) -> Result<(), SyncError>;

    /// The mean of `value` over all ranks, in fp64.
    fn mean(&mut self, value: f64) -> Result<f64, SyncError>;

    /// Every rank's `value`, by rank, on every rank.
    fn all_gather(&mut self, value: u64) -> Result<Vec<u64>, SyncError>;

    /// Waits until every rank gets here (watched: a rank that never comes is an error).
    fn barrier(&mut self) -> Result<(), SyncError>;

    /// Waits until every rank gets here, however long rank 0's own work before it takes (the
    /// corpus fetch, a checkpoint write): a watchdog on collectives does not count this wait.
    fn wait_for_leader(&mut self) -> Result<(), SyncError> {
        self.barrier()
    }

    /// Whether `flag` is set on any rank.
    fn any(&mut self, flag: bool) -> Result<bool, SyncError> {
        Ok(self.all_gather(u64::from(flag))?.contains(&1))
    }

    /// Ends every rank's process after a local error, so that none waits forever in a
    /// collective for this one. Returns on a single rank, where there is nobody to stop.
    fn abort(&mut self, code: i32);

    /// [`abort`](Self::abort) as a function that needs no access to these collectives: for a
    /// failure while they are held elsewhere (a trainer that did not finish starting). `None`
    /// on a single rank.
    fn aborter(&self) -> Option<fn(i32)> {
        None
    }

    /// Whether this rank writes logs, metrics and checkpoints (rank 0).
    fn is_leader(&self) -> bool {
        self.rank() == 0
    }
}

/// One process alone: every collective returns this rank's own value.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalSync;

impl Collectives for LocalSync {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_mean(&mut self, _buffer: &mut [f32]) -> Result<(), SyncError> {
        Ok(())
    }

    fn mean(&mut self, value: f64) -> Result<f64, SyncError> {
        Ok(value)
    }

    fn all_gather(&mut self, value: u64) -> Result<Vec<u64>, SyncError> {
        Ok(vec![value])
    }

    fn barrier(&mut self) -> Result<(), SyncError> {
        Ok(())
    }

    fn abort(&mut self, _code: i32) {}
}

// ----------------------------------------------------------------------------------------------
// Gradients averaged over the ranks in fp32 buckets

// Gradients packed into flat fp32 buckets, reduced across ranks, and unpacked.

// Gradients are reduced in the policy's accumulation dtype, which `Collectives` carries as `f32`.
const _: () = assert!(matches!(ACCUMULATION_DTYPE, FloatDType::F32));

/// Most fp32 elements in one all-reduce call (64 MiB): large enough that a 124M-parameter model
/// needs eight calls, small enough that no rank holds a second copy of all gradients at once.
pub const BUCKET_ELEMENTS: usize = 16 << 20;

/// One parameter's gradient while it is synchronised.
struct Entry {
    id: ParamId,
    dims: Vec<usize>,
    dtype: DType,
    flat: Option<Tensor<1>>,
}

/// Averages `grads` (one step's accumulated gradients of `model`) over the ranks of `sync`, in
/// fp32, in place of the originals; each gradient keeps its dtype. Parameters are visited in the
/// model's order, which is the same on every rank. Nothing is copied on a single rank.
pub fn all_reduce_gradients<M: Module>(
    model: &M,
    grads: GradientsParams,
    sync: &mut dyn Collectives,
) -> Result<GradientsParams, SyncError> {
    all_reduce_gradients_in_buckets(model, grads, sync, BUCKET_ELEMENTS)
}

/// [`all_reduce_gradients`] with buckets of at most `bucket_elements` (a larger gradient goes
/// alone).
pub fn all_reduce_gradients_in_buckets<M: Module>(
    model: &M,
    grads: GradientsParams,
    sync: &mut dyn Collectives,
    bucket_elements: usize,
) -> Result<GradientsParams, SyncError> {
    if sync.world_size() == 1 {
        return Ok(grads);
    }
    let mut take = Take {
        grads,
        entries: Vec::new(),
    };
    model.visit(&mut take);
    let Take {
        mut grads,
        mut entries,
    } = take;

    let mut start = 0;
    while start < entries.len() {
        // A bucket: consecutive gradients up to `bucket_elements` (or one larger one alone).
        let mut end = start;
        let mut elements = 0;
        while end < entries.len() {
            let n: usize = entries[end].dims.iter().product();
            if end > start && elements + n > bucket_elements {
                break;
            }
            elements += n;
            end += 1;
        }
        reduce_bucket(&mut entries[start..end], sync)?;
        start = end;
    }
    model.visit(&mut Put {
        grads: &mut grads,
        entries: entries.into_iter().peekable(),
    });
    Ok(grads)
}

/// Concatenates the bucket's gradients as fp32 on the device, reads them to the host once,
/// all-reduces, and writes the means back into the entries.
fn reduce_bucket(bucket: &mut [Entry], sync: &mut dyn Collectives) -> Result<(), SyncError> {
    let flats: Vec<Tensor<1>> = bucket
        .iter_mut()
        .map(|e| e.flat.take().expect("each entry is reduced once"))
        .collect();
    let device = flats[0].device();
    let packed = Tensor::cat(flats, 0);
    let mut host: Vec<f32> = packed.into_data().try_into_vec().map_err(|err| SyncError {
        rank: sync.rank(),
        world_size: sync.world_size(),
        problem: format!("cannot read gradients back from the device: {err:?}"),
    })?;
    sync.all_reduce_mean(&mut host)?;
    let total = host.len();
    let mean = Tensor::<1>::from_data(
        TensorData::new(host, [total]),
        (&device, ACCUMULATION_DTYPE.into()),
    );
    let mut offset = 0;
    for entry in bucket {
        let n: usize = entry.dims.iter().product();
        entry.flat = Some(mean.clone().slice(offset..offset + n));
        offset += n;
    }
    Ok(())
}

/// Takes every gradient out of `grads`, flattened and upcast to fp32.
struct Take {
    grads: GradientsParams,
    entries: Vec<Entry>,
}

impl ModuleVisitor for Take {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let dims = grad.dims().to_vec();
        let dtype = grad.dtype();
        let n: usize = dims.iter().product();
        self.entries.push(Entry {
            id: param.id,
            dims,
            dtype,
            flat: Some(grad.reshape([n]).cast(ACCUMULATION_DTYPE)),
        });
    }
}

/// Puts the averaged gradients back, in their shapes and dtypes.
struct Put<'a> {
    grads: &'a mut GradientsParams,
    entries: std::iter::Peekable<std::vec::IntoIter<Entry>>,
}

impl ModuleVisitor for Put<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // Entries were taken in this same visiting order, only for parameters with a gradient.
        let Some(entry) = self.entries.next_if(|e| e.id == param.id) else {
            return;
        };
        let dims: [usize; D] = entry.dims.try_into().expect("the gradient's own rank");
        let flat = entry.flat.expect("every entry was reduced");
        let grad = flat.reshape(dims).cast(FloatDType::from(entry.dtype));
        self.grads.register::<D>(entry.id, grad);
    }
}

#[cfg(test)]
mod flat_tests {
    use super::*;
    use brainfloat_precision::{CastedLinearConfig, PrecisionPolicy, cast_params};
    use burn::module::Module;

    /// Rank 0 of two, whose peer contributed `3 ×` this rank's buffer: every mean is `2 ×`.
    #[derive(Default)]
    struct TripledPeer {
        calls: Vec<usize>,
    }

    impl Collectives for TripledPeer {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_mean(&mut self, buffer: &mut [f32]) -> Result<(), SyncError> {
            self.calls.push(buffer.len());
            buffer.iter_mut().for_each(|v| *v = (*v + 3.0 * *v) / 2.0);
            Ok(())
        }
        fn mean(&mut self, value: f64) -> Result<f64, SyncError> {
            Ok(2.0 * value)
        }
        fn all_gather(&mut self, value: u64) -> Result<Vec<u64>, SyncError> {
            Ok(vec![value, 3 * value])
        }
        fn barrier(&mut self) -> Result<(), SyncError> {
            Ok(())
        }
        fn abort(&mut self, _code: i32) {}
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.cast(FloatDType::F32).into_data().try_into_vec().unwrap()
    }

    #[test]
    fn gradients_are_averaged_in_fp32_buckets_and_keep_their_dtypes() {
        let device = brainfloat_test_support::test_device().autodiff();
        for policy in ["fp32", "bf16,linear=bf16"] {
            let policy: PrecisionPolicy = policy.parse().unwrap();
            // 3×4 weight (12) and bias (3): two buckets when a bucket holds 12 elements.
            let layer = cast_params(
                CastedLinearConfig::new(4, 3).with_bias(true).init(&device),
                &policy,
            )
            .unwrap();
            let x = Tensor::<2>::ones([2, 4], &device).cast(layer.weight.dtype());
            let grads = GradientsParams::from_grads(layer.forward(x).sum().backward(), &layer);
            let weight_grad = grads.get::<2>(layer.weight.id).unwrap();
            let bias = layer.bias.as_ref().unwrap();
            let bias_grad = grads.get::<1>(bias.id).unwrap();

            let mut sync = TripledPeer::default();
            let synced = all_reduce_gradients_in_buckets(&layer, grads, &mut sync, 12).unwrap();
            assert_eq!(sync.calls, [12, 3], "{policy}: one call per bucket");
            let new_weight = synced.get::<2>(layer.weight.id).unwrap();
            let new_bias = synced.get::<1>(bias.id).unwrap();
            assert_eq!(new_weight.dtype(), weight_grad.dtype(), "{policy}");
            assert_eq!(new_bias.dtype(), bias_grad.dtype(), "{policy}");
            assert_eq!(new_weight.dims(), [3, 4]);
            let doubled = |v: Vec<f32>| v.iter().map(|v| 2.0 * v).collect::<Vec<f32>>();
            assert_eq!(values(new_weight), doubled(values(weight_grad)), "{policy}");
            assert_eq!(values(new_bias), doubled(values(bias_grad)), "{policy}");
            assert_eq!(layer.num_params(), 15);
        }
    }

    #[test]
    fn a_single_rank_passes_gradients_through_untouched() {
        let device = brainfloat_test_support::test_device().autodiff();
        let layer = CastedLinearConfig::new(2, 2).init(&device);
        let x = Tensor::<2>::ones([1, 2], &device);
        let grads = GradientsParams::from_grads(layer.forward(x).sum().backward(), &layer);
        let before = values(grads.get::<2>(layer.weight.id).unwrap());
        let synced = all_reduce_gradients(&layer, grads, &mut crate::LocalSync).unwrap();
        assert_eq!(values(synced.get::<2>(layer.weight.id).unwrap()), before);
    }

    #[test]
    fn one_rank_gets_its_own_values_back_from_every_collective() {
        let mut sync = crate::LocalSync;
        assert_eq!(sync.all_gather(9).unwrap(), [9]);
        assert!(sync.any(true).unwrap() && !sync.any(false).unwrap());
        sync.barrier().unwrap();
        sync.wait_for_leader().unwrap();
        assert_eq!(sync.mean(2.5).unwrap(), 2.5);
    }
}
