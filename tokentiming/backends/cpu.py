"""Faster fp32 linear layers for decoding on a CPU, chosen per machine by measurement.

Decoding feeds a model 1 token (a step) or a handful (a verify pass of k proxies), so each linear layer
multiplies a few rows by a large weight matrix. That should cost one pass over the weights whatever the
row count: the weights stream from memory and each row of them is reused from cache for every input row.
The BLAS behind ``torch.nn.functional.linear`` does not manage that on every CPU. On an AMD EPYC (AVX2),
eight 8960x1536 weights took twice as long for 2 rows as for 1, and five times as long for 6; this kernel,
numba-compiled for the machine it runs on, took 1.7 times as long for 6 rows as for 1. On an Intel Xeon
with AVX-512 the picture differs: PyTorch is ~10 % faster for 1–2 rows and 2x faster for a 256-token
prompt, the kernel 1.4–1.8x faster for 4–16 rows (a verify pass).

With many rows the arithmetic of a weight block costs as much as streaming it, and a pass over a block that
is already in cache sends no requests to memory: a third variant written in explicit vectors requests the
next block while it computes (software prefetch), and made a 9-row forward pass of a 1.5B model 8 % faster.

So nothing is assumed: :func:`accelerate` measures PyTorch and three variants of the kernel (:data:`KERNELS`:
input rows taken two or four at a time, the second faster where the CPU has registers for it, and the
prefetching one) on the model's own weight shapes at the row counts decoding uses (:data:`BUCKETS`), once per
machine, thread count and library versions (the result is cached in ``<home>/kernels.json``), and routes each
call of each ``nn.Linear`` by its row count to the fastest. Training, other dtypes and other devices keep
PyTorch's own kernel.
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
from llvmlite import ir
from numba import njit, prange
from numba import types as nb_types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

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


# The two numba kernels below share these steps; each fills out[m:m + r, o:o + 4] for r input rows at a time,
# widening the weights to float32 as they arrive (so int8 weights stream a quarter of the bytes).
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


# -- the prefetching variant -------------------------------------------------------------------------
# With many input rows a weight block costs more arithmetic than streaming it from memory takes, and the
# passes over a block that is already in cache issue no memory requests at all: measured on the Xeon, a
# 9-row product took as long as a 1-row product plus the whole of the arithmetic, with no overlap. This
# variant asks for the next block (software prefetch, into L2) while computing on the current one. numba has
# no prefetch, and a loop calling LLVM's (through an intrinsic) is no longer vectorised, so each pass is
# written out directly in LLVM IR with 256-bit vectors of 8 floats (ymm registers on AVX2 and AVX-512, two
# registers on NEON) and spliced into the numba driver as an intrinsic.
#: Floats per vector in the prefetching kernel.
LANES = 8
_F32, _I64, _I32, _BYTE = ir.FloatType(), ir.IntType(64), ir.IntType(32), ir.IntType(8)
_VEC = ir.VectorType(_F32, LANES)
_PTR = ir.PointerType()


def _define_pass(module: ir.Module, rows: int) -> ir.Function:
    """``void pass(x, width, w, steps, out, out_stride, fetch, fetch_lines)``: for ``rows`` input rows (1-4) and
    4 weight rows, both ``width`` floats apart, out[r * out_stride + q] = x[r * width:][:8 * steps] .
    w[q * width:][:8 * steps], and each step (8 inputs) prefetches the next of ``fetch_lines`` cache lines
    from ``fetch``."""
    name = f"tokentiming_rows{rows}_by_4"
    if name in module.globals:
        return module.globals[name]
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), [_PTR, _I64, _PTR, _I64, _PTR, _I64, _PTR, _I64]),
                           name)
    function.linkage = "internal"
    x, width, w, steps, out, out_stride, fetch, fetch_lines = function.args
    entry, loop, done = (function.append_basic_block(label) for label in ("entry", "loop", "done"))
    fmuladd = cgutils.get_or_insert_function(module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fmuladd.v8f32")
    prefetch = cgutils.get_or_insert_function(module, ir.FunctionType(ir.VoidType(), [_PTR, _I32, _I32, _I32]),
                                              "llvm.prefetch.p0")
    reduce = cgutils.get_or_insert_function(module, ir.FunctionType(_F32, [_F32, _VEC]),
                                            "llvm.vector.reduce.fadd.v8f32")
    builder = ir.IRBuilder(entry)
    empty = builder.icmp_signed("<=", steps, _I64(0))
    builder.cbranch(empty, done, loop)

    builder = ir.IRBuilder(loop)
    step = builder.phi(_I64, "step")
    sums = [[builder.phi(_VEC) for _ in range(4)] for _ in range(rows)]
    at = builder.mul(step, _I64(LANES))

    def vector(base, row):
        address = builder.gep(base, [builder.add(builder.mul(_I64(row), width), at)], source_etype=_F32)
        return builder.load(address, typ=_VEC, align=4)

    weights = [vector(w, q) for q in range(4)]
    updated = []
    for r in range(rows):
        inputs = vector(x, r)
        updated.append([builder.call(fmuladd, [inputs, weights[q], sums[r][q]]) for q in range(4)])
    with builder.if_then(builder.icmp_signed("<", step, fetch_lines)):
        line = builder.gep(fetch, [builder.mul(step, _I64(64))], source_etype=_BYTE)
        builder.call(prefetch, [line, _I32(0), _I32(2), _I32(1)])  # read, keep in L2, data
    next_step = builder.add(step, _I64(1))
    latch = builder.block  # the prefetch's branch split the loop body
    builder.cbranch(builder.icmp_signed("<", next_step, steps), loop, done)
    step.add_incoming(_I64(0), entry)
    step.add_incoming(next_step, latch)
    zero = ir.Constant(_VEC, [0.0] * LANES)
    for r in range(rows):
        for q in range(4):
            sums[r][q].add_incoming(zero, entry)
            sums[r][q].add_incoming(updated[r][q], latch)

    builder = ir.IRBuilder(done)
    finals = [[builder.phi(_VEC) for _ in range(4)] for _ in range(rows)]
    for r in range(rows):
        for q in range(4):
            finals[r][q].add_incoming(zero, entry)
            finals[r][q].add_incoming(updated[r][q], latch)
            total = builder.call(reduce, [ir.Constant(_F32, -0.0), finals[r][q]], fastmath=("reassoc", "nsz"))
            target = builder.gep(out, [builder.add(builder.mul(_I64(r), out_stride), _I64(q))], source_etype=_F32)
            builder.store(total, target)
    builder.ret_void()
    return function


def _pass_intrinsic(rows: int):
    """``pass(x, m, w, o, out, fetch_at, fetch_lines)``: :func:`_define_pass` for rows m.. of x and weight rows
    o..o+3, whole vectors only (the caller adds the last ``width % 8`` columns), prefetching ``fetch_lines``
    cache lines of w from its element ``fetch_at`` on."""
    @intrinsic
    def block_pass(typingctx, x, m, w, o, out, fetch_at, fetch_lines):
        arrays, numbers = (x, w, out), (m, o, fetch_at, fetch_lines)
        if not all(isinstance(a, nb_types.Array) and a.dtype == nb_types.float32 and a.layout == "C" and a.ndim == 2
                   for a in arrays) or not all(isinstance(n, nb_types.Integer) for n in numbers):
            # the IR reads float32 vectors at offsets computed from the shapes
            raise TypingError("the prefetching kernel takes C-contiguous 2-D float32 arrays and integer offsets, "
                              f"not {', '.join(map(str, arrays + numbers))}")
        signature = nb_types.void(x, nb_types.intp, w, nb_types.intp, out, nb_types.intp, nb_types.intp)

        def codegen(context, builder, signature, args):
            x_type, _, w_type, _, out_type, _, _ = signature.args
            xs, m, ws, o, outs, fetch_at, fetch_lines = args
            xs = context.make_array(x_type)(context, builder, xs)
            ws = context.make_array(w_type)(context, builder, ws)
            outs = context.make_array(out_type)(context, builder, outs)
            width = builder.extract_value(xs.shape, 1)
            out_width = builder.extract_value(outs.shape, 1)

            def element(array, offset):
                return builder.gep(array.data, [offset], source_etype=_F32)

            steps = builder.udiv(width, _I64(LANES))  # as the driver computes it: its prefetch budget counts on it
            builder.call(_define_pass(builder.module, rows),
                         [element(xs, builder.mul(m, width)), width, element(ws, builder.mul(o, width)), steps,
                          element(outs, builder.add(builder.mul(m, out_width), o)), out_width,
                          element(ws, fetch_at), fetch_lines])
            return context.get_dummy_value()

        return signature, codegen

    return block_pass


_pass_1, _pass_2, _pass_3, _pass_4 = (_pass_intrinsic(rows) for rows in (1, 2, 3, 4))


@njit(parallel=True, fastmath=True, cache=True)
def rows_times_weight_prefetch(x, w, out):  # pragma: no cover - compiled
    """:func:`rows_times_weight_4` in explicit vectors, asking for the next weight block while computing.

    Each thread takes 4 weight rows at a time (a block) and the input rows four at a time (a pass over the
    block). Every step of a pass (8 inputs) also requests one cache line of the next block, until all of
    it is requested: during the first two passes when the width is a multiple of 16, or half of it when
    there is only one pass. Measured against the alternatives on the Xeon (24 weights of 8960x1536, 1.3 GB,
    so that they stream from memory): requesting a whole block at once was slower than no prefetch at all;
    spreading the requests over every pass, or starting them after the first pass, was no faster. Takes
    C-contiguous 2-D float32 arrays only (a typing error otherwise)."""
    rows, outputs, width = x.shape[0], w.shape[0], x.shape[1]
    steps = width // LANES
    vectors = steps * LANES
    lines = (4 * width + 15) // 16  # cache lines (16 floats) of one block
    for block in prange(outputs // 4):
        o = 4 * block
        next_block = (o + 4) * width  # where the next block starts
        requested = 0 if o + 8 <= outputs else lines  # lines of it requested so far
        for m in range(0, rows, 4):
            fetch = min(steps, lines - requested)
            fetch_at = next_block + 16 * requested
            requested += fetch
            left = rows - m
            if left >= 4:
                _pass_4(x, m, w, o, out, fetch_at, fetch)
            elif left == 3:
                _pass_3(x, m, w, o, out, fetch_at, fetch)
            elif left == 2:
                _pass_2(x, m, w, o, out, fetch_at, fetch)
            else:
                _pass_1(x, m, w, o, out, fetch_at, fetch)
            for r in range(m, min(rows, m + 4)):  # the last width % 8 columns
                for q in range(o, o + 4):
                    extra = np.float32(0.0)
                    for i in range(vectors, width):
                        extra += x[r, i] * w[q, i]
                    out[r, q] += extra
    if outputs % 4:
        _last_block(x, w, out, outputs - outputs % 4)


#: The candidates :func:`measure` times against PyTorch's kernel, by the name reports use.
KERNELS = {"numba-2": rows_times_weight, "numba-4": rows_times_weight_4, "prefetch-4": rows_times_weight_prefetch}


def small_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 kernel=rows_times_weight) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a CPU float32 ``x`` (no autograd), in chunks of :data:`ROWS` rows, on
    one of :data:`KERNELS`."""
    if x.shape[-1] != weight.shape[1]:  # the kernels index the weights by the input's width
        raise ValueError(f"input width {x.shape[-1]} does not match the weight's {tuple(weight.shape)}")
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
    of a big output head short. A kernel that raises on this machine (numba cannot type or lower it, say) is
    left out, its times None and ``"failed"`` saying why, instead of failing the model's load; such a
    measurement is not cached, so the next load tries again."""
    width = weights[0].shape[1]
    ms = {name: [] for name in ("torch", *KERNELS)}
    failed = {}
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
                time_ms = None
                if name not in failed:
                    try:
                        run = lambda: [small_linear(x, w, None, kernel) for w in weights]  # noqa: E731
                        time_ms = round(_best_ms(run, repeats), 3)
                    except Exception as error:  # noqa: BLE001 - any failure rules the candidate out
                        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
                        failed[name] = f"{type(error).__name__}: {lines[-1] if lines else ''}"
                ms[name].append(time_ms)
            timed = [name for name in KERNELS if ms[name][-1] is not None]
            fastest = min(timed, key=lambda name: ms[name][-1], default=None)
            choice.append(fastest if fastest and ms[fastest][-1] < MARGIN * ms["torch"][-1] else "torch")
    return {"buckets": list(BUCKETS), "ms": ms, "choice": choice, "failed": failed}


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
    from the cache or measured now (about 13 seconds for a 1.5B model) and cached (unless a kernel failed)."""
    by_shape = defaultdict(list)
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32:
            by_shape[tuple(module.weight.shape)].append(module.weight.detach())
    choices = _load_choices()
    machine = choices.setdefault(_machine_key(), {})
    measured, failed = {}, False
    for (outputs, inputs), weights in by_shape.items():
        key = f"{outputs}x{inputs}"
        if key not in machine:
            take = max(1, min(len(weights), STREAM_BYTES // (4 * outputs * inputs)))
            # contiguous, as the weights the kernels will be routed (see _forward)
            measured[key] = measure([weight.contiguous() for weight in weights[:take]])
            failed = failed or bool(measured[key].get("failed"))
    if measured and not failed:
        machine.update(measured)
        _save_choices(choices)
    return {shape: machine.get(f"{shape[0]}x{shape[1]}") or measured[f"{shape[0]}x{shape[1]}"] for shape in by_shape}


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
                 else " | ".join(f"{t:{len(name) + 3}.1f}" if t is not None else f"{'failed':>{len(name) + 3}}"
                                 for t, name in zip(times, names)))
        print(f"{rows:4d} | {cells} | {result['choice'][index]}")
    for name, why in result["failed"].items():
        print(f"{name} left out: {why}")


if __name__ == "__main__":
    _print_measurement()
    _print_measurement(8960, 1536)
