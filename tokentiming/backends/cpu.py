"""Faster fp32 linear layers for decoding on a CPU, chosen per machine by measurement.

Decoding feeds a model 1 token (a step) or a handful (a verify pass of k proxies), so each linear layer
multiplies a few rows by a large weight matrix. That should cost one pass over the weights whatever the
row count: the weights stream from memory and each row of them is reused from cache for every input row.
The BLAS behind ``torch.nn.functional.linear`` does not manage that on every CPU. On an AMD EPYC (AVX2),
eight 8960x1536 weights took twice as long for 2 rows as for 1, and five times as long for 6; this kernel,
numba-compiled for the machine it runs on, took 1.7 times as long for 6 rows as for 1. On an Intel Xeon
with AVX-512 the picture differs: PyTorch is ~10 % faster for 1–2 rows and 2x faster for a 256-token
prompt, the kernel 1.4–1.8x faster for 4–16 rows (a verify pass).

So nothing is assumed: :func:`accelerate` measures both kernels on the model's own weight shapes at the
row counts decoding uses (:data:`BUCKETS`), once per machine, thread count and library versions (the
result is cached in ``<home>/kernels.json``), and routes each call of each ``nn.Linear`` by its row count
to the faster one. Training, other dtypes and other devices keep PyTorch's own kernel.
``python -m tokentiming.backends.cpu`` prints the measurement for typical shapes.
"""

from __future__ import annotations

import json
import threading
import time
import types
from bisect import bisect_left
from collections import defaultdict

import numba
import numpy as np
import torch
from numba import njit, prange

from ..machine import cpu_name, home

#: Rows per kernel call: a chunk of inputs stays in cache while the weights stream past it once.
ROWS = 256
#: Row counts both kernels are timed at; a call with r rows follows the first bucket >= r (the last above it).
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 256)
#: The kernel must beat PyTorch by this factor to be chosen (a tie goes to PyTorch, the reference).
MARGIN = 0.95
#: Weights of one shape timed together: enough to stream from memory, as in a forward pass, not from cache.
STREAM_BYTES = 256 << 20
_BUCKET_OF = [bisect_left(BUCKETS, rows) for rows in range(BUCKETS[-1] + 1)]


@njit(parallel=True, fastmath=True, cache=True)
def rows_times_weight(x, w, out):  # pragma: no cover - compiled
    """out[m, o] = x[m] . w[o], for every row m of x (M x I) and row o of w (O x I).

    Each thread takes 4 weight rows at a time and pairs input rows, so each weight value loaded serves
    two input rows and each input value four weight rows. ``w`` may be float32 or int8 (compiled once for
    each): int8 weights are widened to float32 as they arrive, a quarter of the bytes to stream (their
    per-row scales are the caller's to apply).
    """
    rows, width = x.shape
    outputs = w.shape[0]
    for block in prange((outputs + 3) // 4):
        o = 4 * block
        if o + 4 > outputs:  # the last, partial block: one weight row at a time
            for oo in range(o, outputs):
                for m in range(rows):
                    acc = np.float32(0.0)
                    for i in range(width):
                        acc += x[m, i] * np.float32(w[oo, i])
                    out[m, oo] = acc
            continue
        w0, w1, w2, w3 = w[o], w[o + 1], w[o + 2], w[o + 3]
        m = 0
        while m + 1 < rows:
            x0, x1 = x[m], x[m + 1]
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
            for i in range(width):
                u, v = x0[i], x1[i]
                c0, c1, c2, c3 = np.float32(w0[i]), np.float32(w1[i]), np.float32(w2[i]), np.float32(w3[i])
                a0 += u * c0
                a1 += u * c1
                a2 += u * c2
                a3 += u * c3
                b0 += v * c0
                b1 += v * c1
                b2 += v * c2
                b3 += v * c3
            out[m, o], out[m, o + 1], out[m, o + 2], out[m, o + 3] = a0, a1, a2, a3
            out[m + 1, o], out[m + 1, o + 1], out[m + 1, o + 2], out[m + 1, o + 3] = b0, b1, b2, b3
            m += 2
        if m < rows:
            x0 = x[m]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for i in range(width):
                u = x0[i]
                a0 += u * np.float32(w0[i])
                a1 += u * np.float32(w1[i])
                a2 += u * np.float32(w2[i])
                a3 += u * np.float32(w3[i])
            out[m, o], out[m, o + 1], out[m, o + 2], out[m, o + 3] = a0, a1, a2, a3


def small_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a CPU float32 ``x`` (no autograd), in chunks of :data:`ROWS` rows."""
    flat = x.reshape(-1, x.shape[-1])
    if not flat.is_contiguous():
        flat = flat.contiguous()
    out = torch.empty((flat.shape[0], weight.shape[0]), dtype=torch.float32)
    match_torch_threads()
    w, xs, outs = weight.detach().numpy(), flat.numpy(), out.numpy()
    for start in range(0, flat.shape[0], ROWS):
        rows_times_weight(xs[start:start + ROWS], w, outs[start:start + ROWS])
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], weight.shape[0])


_local = threading.local()


def match_torch_threads() -> None:
    """numba's thread count follows torch's (a per-thread setting in both, so checked per calling thread)."""
    threads = torch.get_num_threads()
    if getattr(_local, "threads", None) != threads:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        _local.threads = threads


def _forward(self, x: torch.Tensor) -> torch.Tensor:
    if (x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_grad_enabled() and x.numel()
            and self.weight.dtype == torch.float32 and self.weight.is_contiguous()):
        rows = x.numel() // x.shape[-1]
        if self.kernel_rows[_BUCKET_OF[rows] if rows < len(_BUCKET_OF) else -1]:
            return small_linear(x, self.weight, self.bias)
    return torch.nn.functional.linear(x, self.weight, self.bias)


def _best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times) * 1e3


def measure(weights: list[torch.Tensor]) -> dict:
    """Time PyTorch and the kernel on ``weights`` (same shape; several, so they stream from memory as in a
    forward pass) at each of :data:`BUCKETS` rows. Past 32 rows, once PyTorch wins a bucket it is taken to
    win the larger ones too (a BLAS only gains on a streaming kernel as rows grow), which keeps the
    measurement of a big output head short."""
    width = weights[0].shape[1]
    torch_ms, kernel_ms, kernel_rows = [], [], []
    with torch.inference_mode():
        for rows in BUCKETS:
            if rows > 32 and not kernel_rows[-1]:
                torch_ms.append(None), kernel_ms.append(None), kernel_rows.append(False)
                continue
            x = torch.randn(rows, width)
            repeats = 3 if rows <= 16 else 2
            theirs = _best_ms(lambda: [torch.nn.functional.linear(x, w) for w in weights], repeats)
            ours = _best_ms(lambda: [small_linear(x, w) for w in weights], repeats)
            torch_ms.append(round(theirs, 3)), kernel_ms.append(round(ours, 3))
            kernel_rows.append(ours < MARGIN * theirs)
    return {"buckets": list(BUCKETS), "torch_ms": torch_ms, "kernel_ms": kernel_ms, "kernel": kernel_rows}


def _machine_key() -> str:
    return (f"{cpu_name()}|threads={torch.get_num_threads()}|torch={torch.__version__}|"
            f"numba={numba.__version__}")


def _choices_path():
    return home() / "kernels.json"


def _load_choices() -> dict:
    try:
        return json.loads(_choices_path().read_text())
    except (OSError, ValueError):
        return {}


def _save_choices(choices: dict) -> None:
    path = _choices_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{threading.get_ident()}.partial")
        partial.write_text(json.dumps(choices, indent=1))
        partial.replace(path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError:
        pass  # a read-only home: measured again next time


def choose(model: torch.nn.Module) -> dict[tuple[int, int], dict]:
    """This machine's measurement for every fp32 ``nn.Linear`` weight shape of ``model``, by (out, in) shape,
    from the cache or measured now (a few seconds for a 1.5B model) and cached."""
    by_shape = defaultdict(list)
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32:
            by_shape[tuple(module.weight.shape)].append(module.weight.detach())
    choices = _load_choices()
    machine = choices.setdefault(_machine_key(), {})
    measured = False
    for (outputs, inputs), weights in by_shape.items():
        if f"{outputs}x{inputs}" not in machine:
            take = max(1, min(len(weights), STREAM_BYTES // (4 * outputs * inputs)))
            machine[f"{outputs}x{inputs}"] = measure(weights[:take])
            measured = True
    if measured:
        _save_choices(choices)
    return {shape: machine[f"{shape[0]}x{shape[1]}"] for shape in by_shape}


def accelerate(model: torch.nn.Module, route: str = "measured") -> torch.nn.Module:
    """Route the model's ``nn.Linear`` layers, in CPU float32 inference, to the faster of :func:`small_linear`
    and PyTorch's kernel for each row count (``route="measured"``, see :func:`choose`), or always to the
    kernel (``route="kernel"``).

    Returns the model (changed in place). Outputs differ from PyTorch's kernel only by float rounding
    (summation order), as between any two BLAS libraries.
    """
    if route not in ("measured", "kernel"):
        raise ValueError(f"route must be 'measured' or 'kernel', not {route!r}")
    choices = choose(model) if route == "measured" else {}
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            choice = choices.get(tuple(module.weight.shape))
            module.kernel_rows = tuple(choice["kernel"]) if choice else (True,) * len(BUCKETS)
            module.forward = types.MethodType(_forward, module)
    return model


def describe(model: torch.nn.Module) -> str:
    """Which kernel the model's linear layers use at each row count, for reports: the routing of the
    shape holding most of the weights, e.g. ``"PyTorch 1-2 rows, kernel 4-16, PyTorch 32+"``."""
    sizes = defaultdict(int)
    routes = {}
    for module in model.modules():
        if type(module) is torch.nn.Linear and hasattr(module, "kernel_rows"):
            shape = tuple(module.weight.shape)
            sizes[shape] += module.weight.numel()
            routes[shape] = module.kernel_rows
    if not sizes:
        return "PyTorch"
    kernel_rows = routes[max(sizes, key=sizes.get)]
    parts, start = [], 0
    for index in range(1, len(BUCKETS) + 1):
        if index == len(BUCKETS) or kernel_rows[index] != kernel_rows[start]:
            low = BUCKETS[start - 1] + 1 if start else 1
            span = f"{low}+" if index == len(BUCKETS) else (f"{low}" if low == BUCKETS[index - 1]
                                                               else f"{low}-{BUCKETS[index - 1]}")
            parts.append(f"{'kernel' if kernel_rows[start] else 'PyTorch'} {span} rows")
            start = index
    return ", ".join(parts)


def _print_measurement(in_features: int = 1536, out_features: int = 8960, layers: int = 8) -> None:
    """Print both kernels' times for ``layers`` weights of one shape (more than the caches hold)."""
    weights = [torch.randn(out_features, in_features) * 0.02 for _ in range(layers)]
    result = measure(weights)
    print(f"{layers} weights of {out_features}x{in_features}, {torch.get_num_threads()} threads, {cpu_name()}")
    print("rows | torch ms | kernel ms | chosen")
    for rows, theirs, ours, kernel in zip(BUCKETS, result["torch_ms"], result["kernel_ms"], result["kernel"]):
        cells = "    (not timed: PyTorch won below)" if theirs is None else f"{theirs:8.1f} | {ours:9.1f}"
        print(f"{rows:4d} | {cells} | {'kernel' if kernel else 'PyTorch'}")


if __name__ == "__main__":
    _print_measurement()
    _print_measurement(8960, 1536)
