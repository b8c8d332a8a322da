"""The record's GPT and optimizers in PyTorch, timed the way `brainfloat bench` times them.

A side-by-side baseline for docs/results/: the same model (the `small` config: 4 layers, width
256, 4 heads of 64, vocabulary 50304, 8 sequences of 256), the same three presets and the same
step (forward, fp32 loss, backward, Adam + Muon), so that brainfloat's step times can be read
against PyTorch's on the same machine in the same hour. Needs only torch (scripts/setup-torch).

    target/torch-venv/bin/python scripts/pytorch_reference.py --steps 10 --json out.json
    target/torch-venv/bin/python scripts/pytorch_reference.py --compile --json compiled.json
    python3 scripts/pytorch_reference.py --device cuda --compile --layers 12 --heads 6 \
        --dim 768 --batch 64 --seq 1024 --accum 8      # the speedrun config on one GPU

`--ledger FILE` counts the operators of one training step (after one warm-up step) and the bytes
they read and write, by the rules brainfloat's `ledger` command counts its own with: the same
C++ file (crates/ops/csrc/ledger.cpp), compiled here against this torch into target/ledger/ and
loaded into this process. One preset; the shape flags must match the brainfloat config's.

    target/torch-venv/bin/python scripts/pytorch_reference.py --presets bf16 --layers 12 \
        --heads 6 --dim 768 --batch 2 --seq 64 --ledger target/ledger_pytorch.json

`--dump-layers FILE` writes, for the golden weights and first batch (`--init`, `--tokens`: a
weights file and a token shard, e.g. ../shared/reference/golden/), every preset's tensors layer by
layer into one safetensors file, in the dtypes PyTorch computes them in: `{preset}/blocks.{i}.input`
and `.output`, `.attn.q`, `.attn.k`, `.attn.v` (as attention receives them: normed, rotated,
`[B, H, T, d]`), `.attn.output` (attention's output before the projection), `.mlp.hidden` (the
squared ReLU), `final_norm`, `logits` (soft-capped, as the loss takes them), `loss`, and
`grad.{parameter}` for every parameter. The shape flags must match the weights'.
`--batch-losses FILE` writes, for the same weights, every preset's loss on every whole batch of
the shard read in order from token 0, as JSON (tests/fixtures/golden/batch_losses.json).

    target/torch-venv/bin/python scripts/pytorch_reference.py --vocab 512 --layers 2 \
        --heads 2 --dim 64 --batch 2 --seq 32 --init ../shared/reference/golden/init.safetensors \
        --tokens ../shared/reference/golden/tokens.bin --dump-layers target/layers.safetensors

`--curve FILE` trains each preset `--steps` optimizer steps from the weights `--init` on the
shard `--tokens` as brainfloat's trainer does — batches of `--batch` × `--seq` read in order from
token 0, `--accum` micro-steps each, the record's recipe (Muon with its momentum warm-up and
Newton–Schulz in the matmul dtype, fused Adam, the LR warmdown over the last `--warmdown`
steps) — and writes every step's loss (the last micro-batch's, before the update) as JSON.
`--save-init FILE` writes the model's initialisation (seed 1337, fp32, PyTorch's names) for
both sides to start from.

    target/torch-venv/bin/python scripts/pytorch_reference.py --vocab 50304 --layers 2 \
        --heads 2 --dim 64 --batch 16 --seq 64 --save-init target/curve/init.safetensors
    target/torch-venv/bin/python scripts/pytorch_reference.py --vocab 50304 --layers 2 \
        --heads 2 --dim 64 --batch 16 --seq 64 --init target/curve/init.safetensors \
        --tokens data/sotu/sotu_train_000000.bin --steps 40 --warmdown 12 \
        --presets fp32,bf16 --curve target/curve/pytorch.json

`--compile` runs the model's forward through torch.compile (inductor), as the record does; the
backward is then compiled too (AOTAutograd). Compilation happens in the warm-up steps, which
are not timed.

Presets, as in the record:
  fp32      everything fp32.
  autocast  fp32 model under torch.autocast(bfloat16), the record's baseline.
  bf16      CastBf16: model cast to bf16, CastedLinear weights fp32 and cast at use, logits
            soft-capped in bf16 then cast to fp32 for the loss.
"""

import argparse
import contextlib
import ctypes
import json
import os
import pathlib
import statistics
import subprocess
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# Where `--dump-layers` collects tensors by name while a forward pass runs; None otherwise.
TRACE = None


def trace(name, tensor):
    if TRACE is not None and name is not None:
        TRACE[name] = tensor.detach().clone()


def rms_norm(x):
    return F.rms_norm(x.float(), (x.size(-1),), eps=torch.finfo(torch.float32).eps).type_as(x)


class CastedLinear(nn.Linear):
    def __init__(self, fan_in, fan_out, zero=False):
        super().__init__(fan_in, fan_out, bias=False)
        if zero:
            nn.init.zeros_(self.weight)

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype))


class Rotary(nn.Module):
    def __init__(self, dim, base=10000):
        super().__init__()
        self.inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))

    def forward(self, x):
        t = torch.arange(x.shape[1], dtype=torch.float32, device=x.device)
        angles = torch.outer(t, self.inv_freq.to(x.device))
        cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, -x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.c_q, self.c_k, self.c_v = (CastedLinear(dim, dim) for _ in range(3))
        self.c_proj = CastedLinear(dim, dim, zero=True)
        self.lamb = nn.Parameter(torch.tensor(0.5))
        self.rotary = Rotary(dim // heads)

    def forward(self, x, v1):
        b, t, c = x.shape
        q = self.c_q(x).view(b, t, self.heads, -1)
        k = self.c_k(x).view(b, t, self.heads, -1)
        v = self.c_v(x).view(b, t, self.heads, -1)
        v1 = v if v1 is None else v1
        v = (1 - self.lamb) * v + self.lamb * v1
        q, k = self.rotary(rms_norm(q)), self.rotary(rms_norm(k))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        name = getattr(self, "trace_name", None)
        for part, tensor in (("q", q), ("k", k), ("v", v), ("output", y)):
            trace(name and f"{name}.{part}", tensor)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c)), v1


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.c_fc, self.c_proj = CastedLinear(dim, 4 * dim), CastedLinear(4 * dim, dim, zero=True)

    def forward(self, x):
        hidden = F.relu(self.c_fc(x)).square()
        trace(getattr(self, "trace_name", None), hidden)
        return self.c_proj(hidden)


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attn = Attention(dim, heads)
        self.mlp = MLP(dim)
        self.lambdas = nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, x, x0, v1):
        name = getattr(self, "trace_name", None)
        trace(name and f"{name}.input", x)
        x = self.lambdas[0] * x + self.lambdas[1] * x0
        y, v1 = self.attn(rms_norm(x), v1)
        x = x + y
        x = x + self.mlp(rms_norm(x))
        trace(name and f"{name}.output", x)
        return x, v1


class GPT(nn.Module):
    def __init__(self, vocab, layers, heads, dim):
        super().__init__()
        # The record's module names, so that state dicts (and brainfloat's weights files) match.
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, dim),
                h=nn.ModuleList(Block(dim, heads) for _ in range(layers)),
            )
        )
        self.lm_head = CastedLinear(dim, vocab, zero=True)

    def forward(self, idx, targets):
        x = x0 = rms_norm(self.transformer.wte(idx))
        v1 = None
        for block in self.transformer.h:
            x, v1 = block(x, x0, v1)
        x = rms_norm(x)
        trace("final_norm", x)
        logits = self.lm_head(x)
        logits = 30 * torch.tanh(logits / 30)
        trace("logits", logits)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def build(preset, args, weights=None):
    """The model of `preset` (from `weights`, a state dict, when given) and the record's
    optimizers: fused Adam for the embedding, the head and the scalars, Muon for the block
    matrices with Newton–Schulz in the preset's matmul dtype."""
    torch.manual_seed(1337)
    model = GPT(args.vocab, args.layers, args.heads, args.dim).to(args.device)
    if preset == "bf16":
        model = model.bfloat16()
        for m in model.modules():
            if isinstance(m, CastedLinear):
                m.float()
    if weights is not None:
        model.load_state_dict(weights, strict=True)
    matrices = [p for n, p in model.transformer.h.named_parameters() if p.ndim == 2]
    scalars = [p for n, p in model.transformer.h.named_parameters() if p.ndim < 2]
    adam = dict(betas=(0.9, 0.95), eps=1e-8, fused=True)
    ns_dtype = torch.float32 if preset == "fp32" else torch.bfloat16
    optimizers = [
        torch.optim.Adam([model.transformer.wte.weight], lr=0.3, **adam),
        torch.optim.Adam([model.lm_head.weight], lr=0.002, **adam),
        torch.optim.Adam(scalars, lr=0.02, **adam),
        Muon(matrices, lr=0.02, ns_dtype=ns_dtype),
    ]
    return model, optimizers


def precision(preset, device):
    """The context a preset's forward pass runs in: autocast's, or none."""
    if preset == "autocast":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step(model, optimizers, preset, batch, accum, forward=None):
    inputs, targets = batch
    context = precision(preset, inputs.device)
    start = time.perf_counter()
    # `accum` micro-steps on the same batch, each loss scaled by 1/accum, as brainfloat's
    # gradient accumulation does (the timing does not depend on which tokens they are).
    for _ in range(accum):
        with context:
            loss = (model if forward is None else forward)(inputs, targets)
        (loss / accum).backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    loss = loss.item()
    return (time.perf_counter() - start) * 1e3, loss


def newton_schulz(g, dtype, steps=5):
    """The record's Newton–Schulz iteration in `dtype`: `X = G/(‖G‖ + 1e-7)` (transposed when
    rows > cols), then `A = X·Xᵀ; B = A·X; X = a·X + b·B + c·A·B`."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    x = x / (x.norm() + 1e-7)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        m = x @ x.T
        y = m @ x
        x = a * x + b * y + c * m @ y
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon as the record steps it: Nesterov momentum `buf = μ·buf + g`, `g + μ·buf`, the
    Newton–Schulz orthogonalisation in `ns_dtype`, the update scaled by max(1, rows/cols)^0.5."""

    def __init__(self, params, lr, ns_dtype):
        super().__init__(params, dict(lr=lr, momentum=0.95))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                buf = self.state[p].setdefault("buf", torch.zeros_like(p.grad))
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"])
                scale = max(1, p.size(0) / p.size(1)) ** 0.5
                update = newton_schulz(g, self.ns_dtype)
                p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)


def train_curve(args, presets):
    """`--curve`: each preset trained `--steps` steps from `--init` on `--tokens`; the losses."""
    from safetensors.torch import load_file

    weights = load_file(args.init)
    tokens = read_shard(args.tokens)
    window = args.batch * args.seq
    curves = {}
    for preset in presets:
        model, groups = build(preset, args, weights)
        base = [[g["lr"] for g in opt.param_groups] for opt in groups]
        context = precision(preset, args.device)
        losses, start = [], 0
        for s in range(args.steps):
            multiplier = 1.0 if s < args.steps - args.warmdown else (args.steps - s) / args.warmdown
            fraction = min(s / 500, 1.0)
            for opt, rates in zip(groups, base):
                for group, rate in zip(opt.param_groups, rates):
                    group["lr"] = rate * multiplier
                    if isinstance(opt, Muon):
                        group["momentum"] = (1 - fraction) * 0.85 + fraction * 0.95
            for _ in range(args.accum):
                inputs, targets = batch_at(tokens, start, args)
                start += window
                with context:
                    loss = model(inputs, targets)
                (loss / args.accum).backward()
            for opt in groups:
                opt.step()
            model.zero_grad(set_to_none=True)
            losses.append(loss.item())
        curves[preset] = losses
        print(f"{preset:9} " + " ".join(f"{v:.6f}" for v in losses))
    with open(args.curve, "w") as f:
        json.dump({"torch": torch.__version__, "steps": args.steps, "warmdown": args.warmdown,
                   "batch": args.batch, "seq": args.seq, "accum": args.accum,
                   "curves": curves}, f, indent=1)


def read_shard(path):
    """The tokens of a `.bin` shard: a 256-int32 header (magic 20240520, version, count)."""
    import numpy as np

    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[0] == 20240520, f"{path}: not a token shard"
    tokens = np.fromfile(path, dtype=np.uint16, offset=256 * 4, count=int(header[2]))
    return torch.from_numpy(tokens.astype(np.int64))


def batch_at(tokens, start, args):
    """The batch of `--batch` × `--seq` inputs read from token `start`, and its next-token
    targets, as brainfloat's loader reads a window of B·T + 1 tokens."""
    window = tokens[start : start + args.batch * args.seq + 1]
    shape = (args.batch, args.seq)
    return window[:-1].view(shape).to(args.device), window[1:].view(shape).to(args.device)


def batch_losses(args, presets):
    """`--batch-losses`: every preset's loss at `--init` on every whole batch of `--tokens`."""
    from safetensors.torch import load_file

    weights = load_file(args.init)
    tokens = read_shard(args.tokens)
    window = args.batch * args.seq
    losses = {}
    for preset in presets:
        model, _ = build(preset, args, weights)
        context = precision(preset, args.device)
        losses[preset] = []
        with torch.no_grad(), context:
            for start in range(0, len(tokens) - window, window):
                inputs, targets = batch_at(tokens, start, args)
                losses[preset].append(model(inputs, targets).float().item())
        print(f"{preset:9} " + " ".join(f"{v:.7f}" for v in losses[preset]))
    with open(args.batch_losses, "w") as f:
        json.dump({"torch": torch.__version__, "batch": args.batch, "seq": args.seq,
                   "note": "the loss at the weights of each whole batch, read in order from "
                           "token 0 (scripts/pytorch_reference.py --batch-losses)",
                   "losses": losses}, f, indent=1)
        f.write("\n")


def dump_layers(args, presets):
    """`--dump-layers`: every preset's forward and backward on the first batch of `--tokens`
    from the weights `--init`, layer by layer, into one safetensors file."""
    global TRACE
    from safetensors.torch import load_file, save_file

    weights = load_file(args.init)
    inputs, targets = batch_at(read_shard(args.tokens), 0, args)
    out = {}
    for preset in presets:
        model, _ = build(preset, args, weights)
        for i, block in enumerate(model.transformer.h):
            block.trace_name = f"blocks.{i}"
            block.attn.trace_name = f"blocks.{i}.attn"
            block.mlp.trace_name = f"blocks.{i}.mlp.hidden"
        context = precision(preset, args.device)
        TRACE = {}
        with context:
            loss = model(inputs, targets)
        loss.backward()
        TRACE["loss"] = loss.detach().reshape(1)
        for name, param in model.named_parameters():
            TRACE[f"grad.{name}"] = param.grad.detach().clone()
        out.update({f"{preset}/{k}": v.contiguous().cpu() for k, v in TRACE.items()})
        TRACE = None
        print(f"{preset:9} loss {loss.item():.9f}")
    save_file(out, args.dump_layers, metadata={"torch": torch.__version__})
    print(f"wrote {len(out)} tensors to {args.dump_layers}")


def ledger_library():
    """crates/ops/csrc/ledger.cpp as a shared library built against this torch (once)."""
    from torch.utils.cpp_extension import include_paths

    root = pathlib.Path(__file__).resolve().parent.parent
    source = root / "crates" / "ops" / "csrc" / "ledger.cpp"
    library = root / "target" / "ledger" / f"libledger-torch-{torch.__version__}.so"
    if not library.exists() or library.stat().st_mtime < source.stat().st_mtime:
        library.parent.mkdir(parents=True, exist_ok=True)
        torch_lib = pathlib.Path(torch.__file__).parent / "lib"
        partial = library.with_suffix(".so.partial")
        subprocess.run(
            ["c++", "-O2", "-std=c++17", "-shared", "-fPIC", "-DNDEBUG",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
             *[f"-I{p}" for p in include_paths()], str(source), "-o", str(partial),
             f"-L{torch_lib}", "-ltorch_cpu", "-lc10"],
            check=True,
        )
        os.replace(partial, library)
    lib = ctypes.CDLL(str(library))
    lib.bf_ledger_stop.argtypes = [ctypes.POINTER(ctypes.c_int64)] * 3
    lib.bf_ledger_operators.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.bf_ledger_operators.restype = ctypes.c_size_t
    return lib


def count_step(lib, run, preset, batch, accum):
    """The traffic of one step of `run` (after a warm-up step that makes the optimizers' state)."""
    step(*run, preset, batch, accum)
    counts = [ctypes.c_int64() for _ in range(3)]
    lib.bf_ledger_start()
    step(*run, preset, batch, accum)
    lib.bf_ledger_stop(*[ctypes.byref(c) for c in counts])
    launches, read, written = (c.value for c in counts)
    needed = lib.bf_ledger_operators(None, 0)
    text = ctypes.create_string_buffer(needed)
    lib.bf_ledger_operators(text, needed)
    operators = []
    for line in text.value.decode().splitlines():
        name, ops, op_read, op_written = line.split("\t")
        operators.append({"name": name, "launches": int(ops),
                          "bytes": int(op_read) + int(op_written)})
    return {"launches_per_step": launches, "bytes_read": read, "bytes_written": written,
            "bytes_per_step": read + written, "operators": operators}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="fp32,autocast,bf16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--accum", type=int, default=1, help="micro-steps per optimizer step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--json")
    parser.add_argument("--ledger", help="count one step's operators and bytes into this JSON file")
    parser.add_argument("--dump-layers", help="write every preset's tensors layer by layer here")
    parser.add_argument("--init", help="weights for --dump-layers (PyTorch's state-dict names)")
    parser.add_argument("--tokens", help="a token shard for --dump-layers and --curve")
    parser.add_argument("--curve", help="train --steps steps from --init on --tokens; losses here")
    parser.add_argument("--batch-losses", help="the loss at --init of every batch of --tokens")
    parser.add_argument("--warmdown", type=int, default=0, help="--curve's LR warmdown steps")
    parser.add_argument("--save-init", help="write the model's seeded initialisation here")
    args = parser.parse_args()
    if args.save_init:
        from safetensors.torch import save_file

        model, _ = build("fp32", args)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.save_init)
        print(f"wrote {args.save_init}")
        return
    if args.batch_losses:
        if not (args.init and args.tokens):
            parser.error("--batch-losses needs --init and --tokens")
        batch_losses(args, args.presets.split(","))
        return
    if args.curve:
        if not (args.init and args.tokens):
            parser.error("--curve needs --init and --tokens")
        train_curve(args, args.presets.split(","))
        return
    if args.dump_layers:
        if not (args.init and args.tokens):
            parser.error("--dump-layers needs --init and --tokens")
        dump_layers(args, args.presets.split(","))
        return

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=generator)
    batch = tuple(t.contiguous().to(args.device) for t in (tokens[:, :-1], tokens[:, 1:]))
    presets = args.presets.split(",")
    runs = {p: build(p, args) for p in presets}
    # One compiled forward per preset: autocast and the bf16 cast change the traced graph.
    forwards = {p: torch.compile(runs[p][0]) if args.compile else None for p in presets}
    if args.ledger:
        if len(presets) != 1 or args.compile:
            parser.error("--ledger counts one preset, eager")
        ledger = {
            "system": "pytorch-eager",
            "torch": torch.__version__,
            "step": {
                "model": {"n_layer": args.layers, "n_head": args.heads, "d_model": args.dim,
                          "vocab_size": args.vocab},
                "batch_size": args.batch * args.accum,
                "seq_len": args.seq,
                "grad_accum_steps": args.accum,
                "precision": presets[0],
            },
            **count_step(ledger_library(), runs[presets[0]], presets[0], batch, args.accum),
        }
        with open(args.ledger, "w") as f:
            json.dump(ledger, f, indent=1)
        print(json.dumps(ledger, indent=1))
        return
    times = {p: [] for p in presets}
    for preset in presets:
        for _ in range(args.warmup):
            step(*runs[preset], preset, batch, args.accum, forwards[preset])
    # Interleaved like brainfloat's bench: round r starts with preset r mod len(presets).
    for r in range(args.steps):
        for i in range(len(presets)):
            preset = presets[(r + i) % len(presets)]
            times[preset].append(
                step(*runs[preset], preset, batch, args.accum, forwards[preset])[0]
            )
    tokens_per_step = args.batch * args.seq * args.accum
    result = {
        "torch": torch.__version__,
        "compiled": args.compile,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        # The process's peak (all its presets): run one preset per process for a preset's own.
        "cuda_peak_allocated_mib": (
            torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
        ),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "tokens_per_step": tokens_per_step,
        "presets": {
            p: {
                "step_time_ms_median": statistics.median(t),
                "tokens_per_sec": tokens_per_step / (statistics.median(t) / 1e3),
                "step_times_ms": t,
            }
            for p, t in times.items()
        },
    }
    mode = "torch.compile" if args.compile else "eager"
    print(f"PyTorch {torch.__version__} ({mode}) on {result['device']}, {torch.get_num_threads()} threads")
    if result["cuda_peak_allocated_mib"] is not None:
        print(f"peak CUDA memory allocated: {result['cuda_peak_allocated_mib']:.0f} MiB")
    for p, r in result["presets"].items():
        print(f"{p:9} {r['step_time_ms_median']:8.1f} ms/step  {r['tokens_per_sec']:7.1f} tokens/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
