"""Faster fp32 linear layers for decoding on a CPU: few rows, every weight read from memory once.

Decoding feeds a model 1 token (a step) or a handful (a verify pass of k proxies), so each linear layer
multiplies a few rows by a large weight matrix. That should cost one pass over the weights whatever the
row count: the weights stream from memory and each row of them is reused from cache for every input row.
The BLAS behind ``torch.nn.functional.linear`` does not manage that on every CPU. On the AMD EPYC
(AVX2) machine the benchmarks ran on, eight 8960x1536 weights took twice as long for 2 rows as for 1,
and five times as long for 6. This kernel, numba-compiled for the machine it runs on, took 1.7 times
as long for 6 rows as for 1, and beat the BLAS for 1 row and for prompts of up to 256 tokens too
(``python -m tokentiming.backends.cpu`` measures it on yours).

:func:`accelerate` routes the ``nn.Linear`` layers of a model through it in inference; training, other
dtypes and other devices keep PyTorch's own kernel.
"""

from __future__ import annotations

import threading
import time
import types

import numba
import numpy as np
import torch
from numba import njit, prange

#: Rows per kernel call: a chunk of inputs stays in cache while the weights stream past it once.
ROWS = 256


@njit(parallel=True, fastmath=True, cache=True)
def rows_times_weight(x, w, out):  # pragma: no cover - compiled
    """out[m, o] = x[m] . w[o], for every row m of x (M x I) and row o of w (O x I).

    Each thread takes 4 weight rows at a time and pairs input rows, so each weight value loaded serves
    two input rows and each input value four weight rows.
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
                        acc += x[m, i] * w[oo, i]
                    out[m, oo] = acc
            continue
        w0, w1, w2, w3 = w[o], w[o + 1], w[o + 2], w[o + 3]
        m = 0
        while m + 1 < rows:
            x0, x1 = x[m], x[m + 1]
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
            for i in range(width):
                u, v = x0[i], x1[i]
                a0 += u * w0[i]
                a1 += u * w1[i]
                a2 += u * w2[i]
                a3 += u * w3[i]
                b0 += v * w0[i]
                b1 += v * w1[i]
                b2 += v * w2[i]
                b3 += v * w3[i]
            out[m, o], out[m, o + 1], out[m, o + 2], out[m, o + 3] = a0, a1, a2, a3
            out[m + 1, o], out[m + 1, o + 1], out[m + 1, o + 2], out[m + 1, o + 3] = b0, b1, b2, b3
            m += 2
        if m < rows:
            x0 = x[m]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for i in range(width):
                u = x0[i]
                a0 += u * w0[i]
                a1 += u * w1[i]
                a2 += u * w2[i]
                a3 += u * w3[i]
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
        return small_linear(x, self.weight, self.bias)
    return torch.nn.functional.linear(x, self.weight, self.bias)


def accelerate(model: torch.nn.Module) -> torch.nn.Module:
    """Route the model's ``nn.Linear`` layers through :func:`small_linear` for CPU float32 inference.

    Returns the model (changed in place). Outputs differ from PyTorch's kernel only by float rounding
    (summation order), as between any two BLAS libraries.
    """
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = types.MethodType(_forward, module)
    return model


def _measure(in_features: int = 1536, out_features: int = 8960, layers: int = 8) -> None:
    """Print PyTorch's and this kernel's time for 1 to 16 rows (weights bigger than the caches)."""
    weights = [torch.randn(out_features, in_features) * 0.02 for _ in range(layers)]

    def best(fn, repeats=5):
        fn()
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            fn()
            times.append(time.perf_counter() - tic)
        return min(times) * 1e3

    print(f"{layers} weights of {out_features}x{in_features}, {torch.get_num_threads()} threads")
    print("rows | torch ms | kernel ms")
    with torch.inference_mode():
        for rows in (1, 2, 4, 6, 8, 16, 64, 256):
            x = torch.randn(rows, in_features)
            ours = best(lambda: [small_linear(x, w) for w in weights])
            theirs = best(lambda: [torch.nn.functional.linear(x, w) for w in weights])
            print(f"{rows:4d} | {theirs:8.1f} | {ours:9.1f}")


if __name__ == "__main__":
    _measure()
