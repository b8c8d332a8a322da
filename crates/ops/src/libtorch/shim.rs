//! The libtorch operators tch does not bind, through `csrc/fused.cpp` (compiled by this crate's
//! build script against the headers of the libtorch torch-sys links), and the traffic ledger of
//! `csrc/ledger.cpp`. torch-sys's `C_tensor` is an `at::Tensor`, so tch's handles pass through.

use std::ffi::{CStr, c_char, c_int};

use tch::Tensor;
use torch_sys::C_tensor;

/// The longest error message libtorch's exceptions hand back.
const ERROR_LEN: usize = 1024;

unsafe extern "C" {
    fn bf_fused_adam(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        moments_1: *const *mut C_tensor,
        moments_2: *const *mut C_tensor,
        steps: *const *mut C_tensor,
        count: c_int,
        lr: f64,
        beta_1: f64,
        beta_2: f64,
        eps: f64,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn bf_foreach_square_sum(
        tensors: *const *mut C_tensor,
        count: c_int,
        sums: *mut *mut C_tensor,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn bf_axpby_(
        y: *mut C_tensor,
        x: *mut C_tensor,
        a: f64,
        b: f64,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn bf_foreach_axpby(
        ys: *const *mut C_tensor,
        xs: *const *mut C_tensor,
        count: c_int,
        a: f64,
        b: f64,
        out: *mut *mut C_tensor,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn bf_fused_rms_norm_backward(
        grad: *mut C_tensor,
        input: *mut C_tensor,
        rstd: *mut C_tensor,
        grad_input: *mut *mut C_tensor,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn bf_ledger_start();
    fn bf_ledger_stop(launches: *mut i64, bytes_read: *mut i64, bytes_written: *mut i64);
    fn bf_ledger_record(name: *const c_char, bytes_read: i64, bytes_written: i64);
    fn bf_ledger_operators(out: *mut c_char, len: usize) -> usize;
    fn bf_ledger_sees_cuda_kernels() -> c_int;
}

/// `call(error buffer)`'s status as a `Result` with libtorch's message.
fn checked(call: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    let mut error = [0 as c_char; ERROR_LEN];
    if call(error.as_mut_ptr(), ERROR_LEN) == 0 {
        return Ok(());
    }
    // SAFETY: the shim NUL-terminates what it writes within the buffer.
    let message = unsafe { CStr::from_ptr(error.as_ptr()) };
    Err(message.to_string_lossy().into_owned())
}

/// tch's handles of `tensors`, for the shim (which only borrows them).
fn handles(tensors: &[&Tensor]) -> Vec<*mut C_tensor> {
    tensors
        .iter()
        .map(|t| t.as_ptr() as *mut C_tensor)
        .collect()
}

/// Adam's hyper-parameters for [`fused_adam`], as `torch.optim.Adam(fused=True)` takes them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FusedAdam {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
}

/// libtorch's multi-tensor Adam (`_fused_adam_`, no weight decay) over parameters with their
/// gradients, moments and step counts (fp32 scalars on their device, already counting this
/// step): parameters and moments updated in place, in fp32 arithmetic, stored rounded to their
/// dtype.
pub(crate) fn fused_adam(
    params: &[&Tensor],
    grads: &[&Tensor],
    moments_1: &[&Tensor],
    moments_2: &[&Tensor],
    steps: &[&Tensor],
    adam: FusedAdam,
) -> Result<(), String> {
    let count = params.len();
    let lists = [grads, moments_1, moments_2, steps];
    assert!(
        lists.iter().all(|l| l.len() == count),
        "fused_adam: one of each per parameter"
    );
    let [p, g, m1, m2, s] = [params, grads, moments_1, moments_2, steps].map(handles);
    checked(|error, error_len| {
        // SAFETY: every pointer is a live `at::Tensor` held by the caller's tch tensors for the
        // call's duration, `count` of each; the shim updates them through libtorch.
        unsafe {
            bf_fused_adam(
                p.as_ptr(),
                g.as_ptr(),
                m1.as_ptr(),
                m2.as_ptr(),
                s.as_ptr(),
                count as c_int,
                adam.lr,
                adam.betas.0,
                adam.betas.1,
                adam.eps,
                error,
                error_len,
            )
        }
    })
}

/// `Σ x²` of each tensor, squares in fp32, as fp32 scalars: one multi-tensor norm
/// (`_foreach_norm`), squared.
pub(crate) fn square_sums(tensors: &[&Tensor]) -> Result<Vec<Tensor>, String> {
    let inputs = handles(tensors);
    let mut sums = vec![std::ptr::null_mut::<C_tensor>(); tensors.len()];
    checked(|error, error_len| {
        // SAFETY: the inputs are live tensors; `sums` has room for one new handle each.
        unsafe {
            bf_foreach_square_sum(
                inputs.as_ptr(),
                inputs.len() as c_int,
                sums.as_mut_ptr(),
                error,
                error_len,
            )
        }
    })?;
    // SAFETY: on success each entry is a new `at::Tensor` the shim allocated for us to own.
    Ok(sums
        .into_iter()
        .map(|t| unsafe { Tensor::from_ptr(t) })
        .collect())
}

/// `y ← a·y + b·x` in place by libtorch's `add` with its `alpha` (tch binds `add` without it):
/// one operator where a factor is 1, computed in fp32 and rounded once to `y`'s dtype.
pub(crate) fn axpby_(y: &Tensor, x: &Tensor, a: f64, b: f64) -> Result<(), String> {
    let [y, x] = [y, x].map(|t| t.as_ptr() as *mut C_tensor);
    // SAFETY: both are live tensors; the shim writes `y` through libtorch.
    checked(|error, error_len| unsafe { bf_axpby_(y, x, a, b, error, error_len) })
}

/// `a·ys[i] + b·xs[i]` for pairs of one dtype by libtorch's multi-tensor operators: written over
/// `ys` where `a` is 1 or neither factor is (the caller hands over tensors it may write), new
/// tensors where only `b` is 1; rounded once where a factor is 1, after the scaling and the sum
/// otherwise (as the composed op).
pub(crate) fn foreach_axpby(
    ys: &[&Tensor],
    xs: &[&Tensor],
    a: f64,
    b: f64,
) -> Result<Vec<Tensor>, String> {
    assert_eq!(ys.len(), xs.len(), "foreach_axpby: one x per y");
    let [y, x] = [ys, xs].map(handles);
    let mut out = vec![std::ptr::null_mut::<C_tensor>(); ys.len()];
    checked(|error, error_len| {
        // SAFETY: the inputs are live tensors, as many `x` as `y`; `out` has room for one new
        // handle each.
        unsafe {
            bf_foreach_axpby(
                y.as_ptr(),
                x.as_ptr(),
                y.len() as c_int,
                a,
                b,
                out.as_mut_ptr(),
                error,
                error_len,
            )
        }
    })?;
    // SAFETY: on success each entry is a new `at::Tensor` the shim allocated for us to own.
    Ok(out
        .into_iter()
        .map(|t| unsafe { Tensor::from_ptr(t) })
        .collect())
}

/// libtorch's `_fused_rms_norm_backward` (a CUDA kernel; libtorch has no CPU one): the input's
/// gradient from the output's, the input and the forward's fp32 statistic.
pub(crate) fn fused_rms_norm_backward(
    grad: &Tensor,
    input: &Tensor,
    rstd: &Tensor,
) -> Result<Tensor, String> {
    let [g, x, r] = [grad, input, rstd].map(|t| t.as_ptr() as *mut C_tensor);
    let mut out = std::ptr::null_mut::<C_tensor>();
    // SAFETY: the inputs are live tensors; `out` receives one new handle.
    checked(|error, error_len| unsafe {
        bf_fused_rms_norm_backward(g, x, r, &mut out, error, error_len)
    })?;
    // SAFETY: on success `out` is a new `at::Tensor` the shim allocated for us to own.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// What the libtorch operators between [`ledger_start`] and [`ledger_stop`] did
/// (`csrc/ledger.cpp` says how they are counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Operators that move data (leaves of libtorch's operator calls, views and allocations
    /// left out): on a GPU, kernel launches.
    pub launches: u64,
    /// Bytes of their input tensors.
    pub bytes_read: u64,
    /// Bytes of their output tensors.
    pub bytes_written: u64,
}

/// Whether the linked libtorch registers CUDA kernels (a CUDA build, such as PyPI's wheel, with
/// or without a GPU): only then does the ledger count operators as a GPU would launch them (one
/// for each operator with a CUDA kernel, whatever its CPU twin calls inside it).
pub fn ledger_counts_gpu_launches() -> bool {
    // SAFETY: a look-up in libtorch's operator registry; no arguments.
    unsafe { bf_ledger_sees_cuda_kernels() != 0 }
}

/// Starts counting libtorch's operators, in every thread, from zero.
pub fn ledger_start() {
    // SAFETY: installs or re-enables a global RecordFunction callback; no arguments.
    unsafe { bf_ledger_start() }
}

/// Stops counting and returns the traffic since [`ledger_start`].
pub fn ledger_stop() -> Traffic {
    let (mut launches, mut read, mut written) = (0i64, 0i64, 0i64);
    // SAFETY: three valid out-pointers.
    unsafe { bf_ledger_stop(&mut launches, &mut read, &mut written) };
    Traffic {
        launches: launches as u64,
        bytes_read: read as u64,
        bytes_written: written as u64,
    }
}

/// The traffic since [`ledger_start`] by operator (`aten::addmm`, and brainfloat's own
/// kernels by their names), in name order.
pub fn ledger_by_operator() -> Vec<(String, Traffic)> {
    let mut text = vec![0 as c_char; 1 << 16];
    loop {
        // SAFETY: `text` has `text.len()` writable bytes.
        let needed = unsafe { bf_ledger_operators(text.as_mut_ptr(), text.len()) };
        if needed <= text.len() {
            break;
        }
        text = vec![0 as c_char; needed];
    }
    // SAFETY: the shim NUL-terminates what it writes within the buffer.
    let text = unsafe { CStr::from_ptr(text.as_ptr()) }.to_string_lossy();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let name = fields.next()?.to_string();
            let mut number = || fields.next()?.parse::<u64>().ok();
            let (launches, bytes_read, bytes_written) = (number()?, number()?, number()?);
            Some((
                name,
                Traffic {
                    launches,
                    bytes_read,
                    bytes_written,
                },
            ))
        })
        .collect()
}

/// Counts one launch of the kernel `name` of our own (which libtorch does not see) reading
/// `read` and writing `written`, while the ledger counts.
pub(crate) fn ledger_record(name: &CStr, read: &[&Tensor], written: &[&Tensor]) {
    let bytes = |tensors: &[&Tensor]| -> i64 {
        tensors
            .iter()
            .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as i64)
            .sum()
    };
    // SAFETY: plain integers; the shim adds them only while counting.
    unsafe { bf_ledger_record(name.as_ptr(), bytes(read), bytes(written)) }
}
