"""Forward passes over a KV cache: a growing eager cache, or a static one replayed from CUDA graphs.

Both keep the same contract: ``forward(ids, keep)`` appends ``ids`` to the cache and returns the
logits of its last ``keep`` positions; ``truncate(length)`` forgets everything after ``length``
tokens (a rejected draft); ``length`` is the number of cached tokens, a Python int, so reading it
never waits for the device.

:class:`StaticKV` exists for GPUs. An eager decoding step of a small model is a few hundred kernel
launches whose Python and launch overhead dwarf the arithmetic (docs/models.md: about 20 ms per step
whatever the size). A static cache keeps every tensor at a fixed address, so one step per input
length can be captured as a CUDA graph once and replayed as a single launch.
"""

from __future__ import annotations

import threading
import warnings

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import StaticLayer

#: Input lengths a static cache pads to; each is one captured graph. Longer inputs (prompts) run eagerly.
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def placements(model) -> set[str]:
    """Where a model's parts live when it was loaded split (``device_map``): {"cuda:0", "cpu", "disk"}, say."""
    return {str(place) for place in (getattr(model, "hf_device_map", None) or {}).values()}


def split(model) -> bool:
    """Whether the model is spread over more than one device (or offloaded in part)."""
    return len(placements(model)) > 1 or any(p.device.type == "meta" for p in model.parameters())


class DynamicKV:
    """Eager forward passes over a DynamicCache that grows as needed (any device, any causal LM)."""

    def __init__(self, model):
        self.model = model
        self.device = _device(model)
        self.reset()

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self.length = 0

    def forward(self, ids: list[int], keep: int = 1) -> torch.Tensor:
        output = self.model(torch.tensor([ids], device=self.device), cache=self.cache, logits_to_keep=keep)
        self.length += len(ids)
        return output.logits[0]

    def truncate(self, length: int) -> None:
        if self.length > length:
            self.cache.crop(length - self.length)  # transformers crops by a negative count
            self.length = length


class StaticKV:
    """Forward passes over a preallocated StaticCache; on CUDA, replayed from captured graphs.

    Inputs are padded up to the next length in :data:`BUCKETS`. Padding is harmless: the padded
    positions come after the real ones, so the causal mask hides them from every real query, and
    the cache's write position is moved back over them at once, so the next write overwrites them.
    The cache grows (by copying, and recapturing) when a generation outruns it.

    :meth:`greedy_steps` drafts several greedy tokens with one host synchronisation: each token is chosen
    on the device and fed back from there, for GPUs, where reading each token back costs more than a small
    draft's step. It always runs all k steps (the caller cuts the draft afterwards), so on a CPU, where
    there is nothing to save, it only costs. The decoder uses it where :attr:`device_loop` is set.
    """

    #: Whether the decoder drafts greedily through :meth:`greedy_steps` (all static caches; set the class
    #: attribute). Off by default: tested for exactness on the CPU, not yet timed on a GPU, where
    #: ``python -m tokentiming.tools.gpubench`` compares it with the step-by-step loop.
    device_loop: bool = False

    def __init__(self, model, capacity: int = 1024, graphs: bool | None = None, pad: bool | None = None):
        self.model = model
        self.device = _device(model)
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        if self.graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.pad = self.graphs if pad is None else pad
        self.length = 0
        self.capacity = 0
        self.cache = None
        self._captured: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._allocate(capacity)

    # -- the cache and its write positions -----------------------------------------------------------
    @torch.inference_mode()
    def _allocate(self, capacity: int) -> None:
        """A new cache of ``capacity`` tokens holding the old one's contents."""
        if split(self.model):
            raise ValueError(f"{type(self.model).__name__} is split across {', '.join(sorted(placements(self.model)))}"
                             "; a static cache lives on one device: use static=False (the eager cache follows "
                             "every part of the model)")
        if not static_supported(self.model):
            raise ValueError(f"{type(self.model).__name__} has sliding-window or other non-full-attention layers; "
                             "static caches support full-attention models only: use static=False")
        cache = StaticCache(config=self.model.config, max_cache_len=capacity)
        # One throwaway token initialises every layer's buffers (shape, dtype, device) the model's own way.
        self.model(torch.zeros((1, 1), dtype=torch.long, device=self.device), cache=cache, logits_to_keep=1)
        old, self.cache, self.capacity = self.cache, cache, capacity
        self._positions = [layer.cumulative_length for layer in cache.layers]
        torch._foreach_sub_(self._positions, 1)
        if old is not None:
            for new_layer, old_layer in zip(cache.layers, old.layers):
                new_layer.keys[:, :, :old_layer.keys.shape[2]].copy_(old_layer.keys)
                new_layer.values[:, :, :old_layer.values.shape[2]].copy_(old_layer.values)
                new_layer.cumulative_length.copy_(old_layer.cumulative_length)
        self._captured.clear()  # graphs hold the old buffers' addresses

    def reserve(self, capacity: int) -> None:
        """Room for at least ``capacity`` tokens."""
        if capacity > self.capacity:
            self._allocate(_round_up(capacity))

    def _reserve(self, count: int) -> None:
        if self.length + count > self.capacity:
            self._allocate(max(2 * self.capacity, self.length + count + 256))

    @torch.inference_mode()
    def _rewind(self, count: int) -> None:
        """Move every layer's write position back by ``count`` tokens (one launch for all layers)."""
        if count:
            torch._foreach_sub_(self._positions, count)

    def reset(self) -> None:
        self.truncate(0)

    def truncate(self, length: int) -> None:
        if self.length > length:
            self._rewind(self.length - length)
            self.length = length

    # -- forward passes -------------------------------------------------------------------------------
    @torch.inference_mode()
    def greedy_steps(self, ids: list[int], steps: int, probs_of) -> tuple[list[int], list[float]]:
        """``steps`` greedy tokens after ``ids`` and their probabilities (``probs_of(logits)``, the caller's
        distribution, whose first maximum is taken), with one host synchronisation at the end.

        Afterwards the cache holds ``ids`` and every token but the last, as after :meth:`forward` with the
        tokens appended one at a time; the caller truncates it where its own rules stop the draft earlier."""
        tokens, probs = [], []
        logits = self.forward(ids, keep=1)[-1]
        for step in range(steps):
            distribution = probs_of(logits)
            token = distribution.argmax(-1, keepdim=True)
            tokens.append(token)
            probs.append(distribution.gather(-1, token))  # indexing by a tensor would read it back (.item())
            if step + 1 < steps:
                logits = self._step_on_device(token)
        return torch.cat(tokens).tolist(), torch.cat(probs).float().tolist()

    @torch.inference_mode()
    def _step_on_device(self, token: torch.Tensor) -> torch.Tensor:
        """The forward pass of one token held on the device: its logits, without reading it back."""
        return self._run(token.view(1, 1), 1, 1)[0]

    @torch.inference_mode()
    def forward(self, ids: list[int], keep: int = 1) -> torch.Tensor:
        n = len(ids)
        size = next((b for b in BUCKETS if b >= n), n) if self.pad else n
        padded = list(ids) + [ids[-1]] * (size - n)
        return self._run(torch.tensor([padded], dtype=torch.long), n, keep)

    def _run(self, padded: torch.Tensor, n: int, keep: int) -> torch.Tensor:
        """The forward pass of ``padded`` (1 x size ids, the first ``n`` real, on the host or the device): the
        logits of the last ``keep`` real positions; the cache keeps the real ones."""
        size = padded.shape[1]
        self._reserve(size)
        if self.graphs and size in BUCKETS:
            logits = self._replay_or_eager(padded)
        else:
            logits = self.model(padded.to(self.device), cache=self.cache, logits_to_keep=size).logits[0]
        self._rewind(size - n)
        self.length += n
        return logits[n - keep:n].clone()  # a graph's output buffer is overwritten by its next replay

    def _replay(self, padded: torch.Tensor) -> torch.Tensor:
        """The captured graph for ``padded`` (1 x size ids, on the host or the device) replayed over it."""
        size = padded.shape[1]
        if size not in self._captured:
            self._capture(size)
        graph, inputs, logits = self._captured[size]
        inputs.copy_(padded)
        graph.replay()
        return logits

    def _capture(self, size: int) -> None:
        inputs = torch.zeros((1, size), dtype=torch.long, device=self.device)
        # Warm up on a side stream, as capture requires; each warm-up's writes land past the cached
        # tokens and are rewound, like padding.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.model(inputs, cache=self.cache, logits_to_keep=size)
                self._rewind(size)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records, runs nothing: the write positions are left as they were
            logits = self.model(inputs, cache=self.cache, logits_to_keep=size).logits[0]
        self._captured[size] = (graph, inputs, logits)

    def _replay_or_eager(self, padded: torch.Tensor) -> torch.Tensor:
        try:
            return self._replay(padded)
        except RuntimeError as error:  # a model whose forward cannot be captured (a host sync, say)
            warnings.warn(f"CUDA graph capture failed for {type(self.model).__name__}, running it eagerly on the "
                          f"static cache: {error}", RuntimeWarning, stacklevel=3)
            self.graphs = False
            self._captured.clear()
            inputs = padded.to(self.device)
            return self.model(inputs, cache=self.cache, logits_to_keep=inputs.shape[1]).logits[0]


def static_supported(model) -> bool:
    """Whether :class:`StaticKV` can run ``model`` (on one device, every layer full attention)."""
    if split(model):
        return False
    cache = StaticCache(config=model.config, max_cache_len=1)  # buffers are allocated lazily: nothing yet
    return all(type(layer) is StaticLayer for layer in cache.layers)


_POOL_LOCK = threading.Lock()


def reusable(model, key: str, make, capacity: int):
    """A cache backend ``make(model, capacity)`` from ``model``'s pool under ``key``, emptied and with room
    for ``capacity`` tokens. Backends are worth reusing (a static cache keeps its captured graphs, the lean
    draft its stacked weights), but never shared: the caller owns this one until :func:`give_back`, and
    a second generation on the same model meanwhile gets a backend of its own."""
    pool = model.__dict__.setdefault("_tokentiming_kv", {}).setdefault(key, [])
    with _POOL_LOCK:
        kv = pool.pop() if pool else None
    if kv is None:
        kv = make(model, capacity)
        kv.pool = pool
    kv.reset()
    kv.reserve(capacity)
    return kv


def give_back(kv) -> None:
    """Return a backend taken with :func:`reusable` to its pool (other backends are simply dropped)."""
    pool = getattr(kv, "pool", None)
    if pool is not None:
        with _POOL_LOCK:
            if not any(other is kv for other in pool):
                pool.append(kv)


def static_kv(model, role: str, capacity: int) -> StaticKV:
    """The model's reusable static cache for ``role`` ("target" or "draft")."""
    return reusable(model, f"static-{role}", lambda m, c: StaticKV(m, capacity=_round_up(c)), capacity)


def _round_up(count: int, step: int = 256) -> int:
    return -(-count // step) * step
