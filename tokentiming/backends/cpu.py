"""Faster fp32 linear layers for decoding on a CPU, chosen per machine by measurement.

Decoding feeds a model 1 token (a step) or a handful (a verify pass of k proxies), so each linear layer
multiplies a few rows by a large weight matrix. That should cost one pass over the weights whatever the
row count: the weights stream from memory and each row of them is reused from cache for every input row.
The BLAS behind ``torch.nn.functional.linear`` does not manage that on every CPU. On an AMD EPYC (AVX2),
eight 8960x1536 weights took twice as long for 2 rows as for 1, and five times as long for 6; this kernel,
numba-compiled for the machine it runs on, took 1.7 times as long for 6 rows as for 1. On an Intel Xeon
with AVX-512 the picture differs: PyTorch is ~10 % faster for 1–2 rows and 2x faster for a 256-token
prompt, the kernel 1.4–1.8x faster for 4–16 rows (a verify pass).

So nothing is assumed: :func:`accelerate` measures PyTorch and two variants of the kernel (:data:`KERNELS`:
input rows taken two or four at a time; the second needs the registers of AVX-512) on the model's own weight
shapes at the row counts decoding uses (:data:`BUCKETS`), once per machine, thread count and library
versions (the result is cached in ``<home>/kernels.json``), and routes each call of each ``nn.Linear`` by
its row count to the fastest. Training, other dtypes and other devices keep PyTorch's own kernel.
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


# The kernels below share these steps; each fills out[m:m + r, o:o + 4] for r input rows at a time, widening
# the weights to float32 as they arrive (so int8 weights stream a quarter of the bytes).
@njit(fastmath=True, cache=True, inline="always")
def _last_block(x, w, out, o):  # pragma: no cover - compiled
    """The last, partial block of fewer than 4 weight rows: one weight row at a time."""
    for oo in range(o, w.shape[0]):
        for m in range(x.shape[0]):
            acc = np.float32(0.0)
            for i in range(x.shape[1]):
                acc += x[m, i] * np.float32(w[oo, i])
            out[m, oo] = acc


@njit(fastmath=True, cache=True, inline="always")
def _one_row(x, w, out, m, o):  # pragma: no cover - compiled
    x0, w0, w1, w2, w3 = x[m], w[o], w[o + 1], w[o + 2], w[o + 3]
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for i in range(x.shape[1]):
        u = x0[i]
        a0 += u * np.float32(w0[i])
        a1 += u * np.float32(w1[i])
        a2 += u * np.float32(w2[i])
        a3 += u * np.float32(w3[i])
    out[m, o], out[m, o + 1], out[m, o + 2], out[m, o + 3] = a0, a1, a2, a3


@njit(fastmath=True, cache=True, inline="always")
def _two_rows(x, w, out, m, o):  # pragma: no cover - compiled
    x0, x1, w0, w1, w2, w3 = x[m], x[m + 1], w[o], w[o + 1], w[o + 2], w[o + 3]
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
    for i in range(x.shape[1]):
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


@njit(fastmath=True, cache=True, inline="always")
def _four_rows(x, w, out, m, o):  # pragma: no cover - compiled
    x0, x1, x2, x3 = x[m], x[m + 1], x[m + 2], x[m + 3]
    w0, w1, w2, w3 = w[o], w[o + 1], w[o + 2], w[o + 3]
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
    c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = np.float32(0.0)
    for i in range(x.shape[1]):
        p0, p1, p2, p3 = np.float32(w0[i]), np.float32(w1[i]), np.float32(w2[i]), np.float32(w3[i])
        u, v, s, t = x0[i], x1[i], x2[i], x3[i]
        a0 += u * p0
        a1 += u * p1
        a2 += u * p2
        a3 += u * p3
        b0 += v * p0
        b1 += v * p1
        b2 += v * p2
        b3 += v * p3
        c0 += s * p0
        c1 += s * p1
        c2 += s * p2
        c3 += s * p3
        d0 += t * p0
        d1 += t * p1
        d2 += t * p2
        d3 += t * p3
    out[m, o], out[m, o + 1], out[m, o + 2], out[m, o + 3] = a0, a1, a2, a3
    out[m + 1, o], out[m + 1, o + 1], out[m + 1, o + 2], out[m + 1, o + 3] = b0, b1, b2, b3
    out[m + 2, o], out[m + 2, o + 1], out[m + 2, o + 2], out[m + 2, o + 3] = c0, c1, c2, c3
    out[m + 3, o], out[m + 3, o + 1], out[m + 3, o + 2], out[m + 3, o + 3] = d0, d1, d2, d3


@njit(parallel=True, fastmath=True, cache=True)
def _blocks(x, w, out, fours):  # pragma: no cover - compiled
    """Each thread takes 4 weight rows at a time and the input rows four (``fours``) or two at a time."""
    rows, outputs = x.shape[0], w.shape[0]
    for block in prange((outputs + 3) // 4):
        o = 4 * block
        if o + 4 > outputs:
            _last_block(x, w, out, o)
            continue
        m = 0
        while fours and m + 3 < rows:
            _four_rows(x, w, out, m, o)
            m += 4
        while m + 1 < rows:
            _two_rows(x, w, out, m, o)
            m += 2
        if m < rows:
            _one_row(x, w, out, m, o)


@njit(fastmath=True, cache=True)
def rows_times_weight(x, w, out):  # pragma: no cover - compiled
    """out[m, o] = x[m] . w[o], for every row m of x (M x I) and row o of w (O x I).

    Each thread takes 4 weight rows at a time and pairs input rows, so each weight value loaded serves
    two input rows and each input value four weight rows. ``w`` may be float32 or int8 (compiled once for
    each): int8 weights are widened to float32 as they arrive, a quarter of the bytes to stream (their
    per-row scales are the caller's to apply).
    """
    _blocks(x, w, out, False)


@njit(fastmath=True, cache=True)
def rows_times_weight_4(x, w, out):  # pragma: no cover - compiled
    """:func:`rows_times_weight` taking input rows four at a time (16 accumulators): each weight value
    loaded serves four rows. Faster where the CPU has registers for it (AVX-512 has 32), slower where it
    spills (AVX2 has 16); :func:`measure` decides."""
    _blocks(x, w, out, True)


#: The candidates :func:`measure` times against PyTorch's kernel, by the name reports use.
KERNELS = {"numba-2": rows_times_weight, "numba-4": rows_times_weight_4}


def small_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 kernel=rows_times_weight) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a CPU float32 ``x`` (no autograd), in chunks of :data:`ROWS` rows, on
    one of :data:`KERNELS`."""
    flat = x.reshape(-1, x.shape[-1])
    if not flat.is_contiguous():
        flat = flat.contiguous()
    out = torch.empty((flat.shape[0], weight.shape[0]), dtype=torch.float32)
    match_torch_threads()
    w, xs, outs = weight.detach().numpy(), flat.numpy(), out.numpy()
    for start in range(0, flat.shape[0], ROWS):
        kernel(xs[start:start + ROWS], w, outs[start:start + ROWS])
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
        kernel = self.kernel_for[_BUCKET_OF[rows] if rows < len(_BUCKET_OF) else -1]
        if kernel is not None:
            return small_linear(x, self.weight, self.bias, kernel)
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
    """Time PyTorch and each of :data:`KERNELS` on ``weights`` (same shape; several, so they stream from memory
    as in a forward pass) at each of :data:`BUCKETS` rows, and choose per bucket: the fastest kernel if it
    beats PyTorch by :data:`MARGIN`, else PyTorch. Past 32 rows, once PyTorch wins a bucket it is taken to win
    the larger ones too (a BLAS only gains on a streaming kernel as rows grow), which keeps the measurement
    of a big output head short."""
    width = weights[0].shape[1]
    ms = {name: [] for name in ("torch", *KERNELS)}
    choice = []
    with torch.inference_mode():
        for rows in BUCKETS:
            if rows > 32 and choice[-1] == "torch":
                for times in ms.values():
                    times.append(None)
                choice.append("torch")
                continue
            x = torch.randn(rows, width)
            repeats = 3 if rows <= 16 else 2
            ms["torch"].append(round(_best_ms(lambda: [torch.nn.functional.linear(x, w) for w in weights], repeats), 3))
            for name, kernel in KERNELS.items():
                ms[name].append(round(_best_ms(lambda: [small_linear(x, w, None, kernel) for w in weights], repeats), 3))
            fastest = min(KERNELS, key=lambda name: ms[name][-1])
            choice.append(fastest if ms[fastest][-1] < MARGIN * ms["torch"][-1] else "torch")
    return {"buckets": list(BUCKETS), "ms": ms, "choice": choice}


def _machine_key() -> str:
    return (f"{cpu_name()}|threads={torch.get_num_threads()}|torch={torch.__version__}|"
            f"numba={numba.__version__}|kernels={','.join(KERNELS)}")


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
    """Route the model's ``nn.Linear`` layers, in CPU float32 inference, to the fastest of PyTorch's kernel and
    :data:`KERNELS` for each row count (``route="measured"``, see :func:`choose`), or always to
    :func:`rows_times_weight` (``route="kernel"``).

    Returns the model (changed in place). Outputs differ from PyTorch's kernel only by float rounding
    (summation order), as between any two BLAS libraries.
    """
    if route not in ("measured", "kernel"):
        raise ValueError(f"route must be 'measured' or 'kernel', not {route!r}")
    choices = choose(model) if route == "measured" else {}
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            choice = choices.get(tuple(module.weight.shape))
            names = choice["choice"] if choice else ["numba-2"] * len(BUCKETS)
            module.kernel_for = tuple(KERNELS.get(name) for name in names)
            module.forward = types.MethodType(_forward, module)
    return model


def describe(model: torch.nn.Module) -> str:
    """Which kernel the model's linear layers use at each row count, for reports: the routing of the
    shape holding most of the weights, e.g. ``"PyTorch 1-2 rows, numba-4 3-16 rows, PyTorch 17+ rows"``."""
    sizes = defaultdict(int)
    routes = {}
    names = {kernel: name for name, kernel in KERNELS.items()}
    for module in model.modules():
        if type(module) is torch.nn.Linear and hasattr(module, "kernel_for"):
            shape = tuple(module.weight.shape)
            sizes[shape] += module.weight.numel()
            routes[shape] = [names.get(kernel, "PyTorch") for kernel in module.kernel_for]
    if not sizes:
        return "PyTorch"
    route = routes[max(sizes, key=sizes.get)]
    parts, start = [], 0
    for index in range(1, len(BUCKETS) + 1):
        if index == len(BUCKETS) or route[index] != route[start]:
            low = BUCKETS[start - 1] + 1 if start else 1
            span = f"{low}+" if index == len(BUCKETS) else (f"{low}" if low == BUCKETS[index - 1]
                                                               else f"{low}-{BUCKETS[index - 1]}")
            parts.append(f"{route[start]} {span} rows")
            start = index
    return ", ".join(parts)


def _print_measurement(in_features: int = 1536, out_features: int = 8960, layers: int = 8) -> None:
    """Print every kernel's times for ``layers`` weights of one shape (more than the caches hold)."""
    weights = [torch.randn(out_features, in_features) * 0.02 for _ in range(layers)]
    result = measure(weights)
    names = list(result["ms"])
    print(f"{layers} weights of {out_features}x{in_features}, {torch.get_num_threads()} threads, {cpu_name()}")
    print("rows | " + " | ".join(f"{name} ms" for name in names) + " | chosen")
    for index, rows in enumerate(BUCKETS):
        times = [result["ms"][name][index] for name in names]
        cells = ("(not timed: PyTorch won below)" if times[0] is None
                 else " | ".join(f"{t:{len(name) + 3}.1f}" for t, name in zip(times, names)))
        print(f"{rows:4d} | {cells} | {result['choice'][index]}")


if __name__ == "__main__":
    _print_measurement()
    _print_measurement(8960, 1536)
