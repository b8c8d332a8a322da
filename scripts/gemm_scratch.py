"""How much memory libtorch's CPU matmul takes beyond its result, for the head's products.

On a CPU without native bf16 dot products (no AVX512-BF16, no AMX), libtorch computes a bf16
matmul through an fp32 product the size of its output and converts it: the peak is the bf16
result plus twice its size again. On such a CPU brainfloat runs its own GEMM on libtorch's
buffers instead (docs/kernels.md, "libtorch without native bf16").

    target/torch-venv/bin/python scripts/gemm_scratch.py

Prints one line per product and dtype: the result's size and the growth of the resident set's
peak (VmHWM, reset through /proc/self/clear_refs) while it is made, in MiB.
"""

import gc

import torch

# The `small` model's head on one chunk of 512 rows (32 Mi logits).
ROWS, D_MODEL, VOCAB = 512, 256, 50304


def status(field):
    with open("/proc/self/status") as f:
        return int(f.read().split(field + ":")[1].split()[0]) / 1024


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main():
    torch.manual_seed(0)
    flags = open("/proc/cpuinfo").read()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"avx512_bf16: {'avx512_bf16' in flags}, amx_bf16: {'amx_bf16' in flags}")
    for dtype in (torch.bfloat16, torch.float32):
        hidden = torch.randn(ROWS, D_MODEL).to(dtype)
        weight = torch.randn(VOCAB, D_MODEL).to(dtype)
        grad = torch.randn(ROWS, VOCAB).to(dtype)
        products = {
            "logits = hidden @ weight.T": lambda: hidden @ weight.t(),
            "grad_weight = grad.T @ hidden": lambda: grad.t() @ hidden,
        }
        for name, product in products.items():
            product()  # warm-up: libtorch's one-time allocations
            gc.collect()
            reset_peak()
            before = status("VmRSS")
            result = product()
            peak = status("VmHWM")
            size = result.numel() * result.element_size() / 2**20
            print(f"{str(dtype):15} {name:30} result {size:5.0f} MiB, "
                  f"peak growth {peak - before:5.0f} MiB")
            del result


if __name__ == "__main__":
    main()
