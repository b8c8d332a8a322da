// libtorch operators that tch does not bind (its generator leaves out `_foreach*`,
// `_fused_adam*`, `_fused_rms_norm_backward` and `add`'s `alpha`), as C functions over
// torch-sys's tensor handles.
// torch-sys's `C_tensor` is an `at::Tensor`, so a `*mut C_tensor` from tch is an `at::Tensor*`.
// Every function returns 0, or 1 with libtorch's message in `error` (at most `error_len` bytes,
// NUL-terminated): a C++ exception never crosses into Rust.

#include <ATen/ATen.h>

#include <cstddef>
#include <cstring>
#include <exception>
#include <vector>

namespace {

void write_error(const char* message, char* error, size_t error_len) {
    if (error_len == 0) return;
    std::strncpy(error, message, error_len - 1);
    error[error_len - 1] = '\0';
}

std::vector<at::Tensor> tensor_list(at::Tensor** tensors, int count) {
    std::vector<at::Tensor> list;
    list.reserve(count);
    for (int i = 0; i < count; i++) list.push_back(*tensors[i]);
    return list;
}

}  // namespace

#define BF_PROTECT(body)                                  \
    try {                                                 \
        body;                                             \
        return 0;                                         \
    } catch (const std::exception& e) {                   \
        write_error(e.what(), error, error_len);          \
        return 1;                                         \
    }

extern "C" {

// One multi-tensor Adam step (`torch.optim.Adam(fused=True)`'s operator, no weight decay) over
// `count` parameters, updated in place with their moments; `steps` holds each parameter's step
// count (counted from 1, already incremented), as fp32 scalars on the parameters' device.
int bf_fused_adam(at::Tensor** params, at::Tensor** grads, at::Tensor** moments_1,
                  at::Tensor** moments_2, at::Tensor** steps, int count, double lr,
                  double beta_1, double beta_2, double eps, char* error, size_t error_len) {
    BF_PROTECT({
        std::vector<at::Tensor> no_max;
        at::_fused_adam_(tensor_list(params, count), tensor_list(grads, count),
                         tensor_list(moments_1, count), tensor_list(moments_2, count), no_max,
                         tensor_list(steps, count), lr, beta_1, beta_2, /*weight_decay=*/0.0, eps,
                         /*amsgrad=*/false, /*maximize=*/false);
    })
}

// `Σ x²` of each of `count` tensors, squares in fp32, into the fp32 scalars `sums[i]` (new
// tensors): one multi-tensor norm, squared.
int bf_foreach_square_sum(at::Tensor** tensors, int count, at::Tensor** sums, char* error,
                          size_t error_len) {
    BF_PROTECT({
        auto norms = at::_foreach_norm(tensor_list(tensors, count), 2, at::kFloat);
        at::_foreach_mul_(norms, norms);
        for (int i = 0; i < count; i++) sums[i] = new at::Tensor(std::move(norms[i]));
    })
}

// `y ← a·y + b·x` in place, one `add` with its `alpha` where a factor is 1 (`y += b·x`, or
// `y = x + a·y` written over `y`), a scale and an `add` otherwise; `x` of any float dtype.
int bf_axpby_(at::Tensor* y, at::Tensor* x, double a, double b, char* error, size_t error_len) {
    BF_PROTECT({
        if (a == 1.0) {
            y->add_(*x, b);
        } else if (b == 1.0) {
            at::add_out(*y, *x, *y, a);
        } else {
            y->mul_(a).add_(*x, b);
        }
    })
}

// `out[i] = a·ys[i] + b·xs[i]` over `count` pairs of one dtype by multi-tensor operators: over
// `ys` in place where `a` is 1 (one `_foreach_add_`) or neither factor is (`_foreach_mul_`, then
// `_foreach_add_`); into new tensors where only `b` is 1 (`_foreach_add(xs, ys, a)`, one
// rounding, as `bf_axpby_`). `out[i]` are new handles (sharing `ys[i]`'s buffer when in place).
int bf_foreach_axpby(at::Tensor** ys, at::Tensor** xs, int count, double a, double b,
                     at::Tensor** out, char* error, size_t error_len) {
    BF_PROTECT({
        auto y = tensor_list(ys, count);
        auto x = tensor_list(xs, count);
        std::vector<at::Tensor> result;
        if (a != 1.0 && b == 1.0) {
            result = at::_foreach_add(x, y, a);
        } else {
            if (a != 1.0) at::_foreach_mul_(y, a);
            at::_foreach_add_(y, x, b);
            result = y;
        }
        for (int i = 0; i < count; i++) out[i] = new at::Tensor(std::move(result[i]));
    })
}

// The input's gradient of weightless RMSNorm over the last dimension from the output's
// gradient, the input and the fp32 statistic `rstd` the forward returned, into `*grad_input`
// (a new tensor).
int bf_fused_rms_norm_backward(at::Tensor* grad, at::Tensor* input, at::Tensor* rstd,
                               at::Tensor** grad_input, char* error, size_t error_len) {
    BF_PROTECT({
        int64_t last = input->size(-1);
        auto grads = at::_fused_rms_norm_backward(*grad, *input, {last}, *rstd, std::nullopt,
                                                  {true, false});
        *grad_input = new at::Tensor(std::move(std::get<0>(grads)));
    })
}

}  // extern "C"
