"""A lean CPU forward pass for Llama-family draft models: every layer in one compiled call.

A draft model is small, so on a CPU its eager transformers forward is mostly framework overhead: for
SmolLM2-135M (30 layers), about 75 ms per token on the 2-core benchmark machine, of which streaming the
540 MB of weights takes under 30. :class:`LeanKV` runs the same arithmetic (RMSNorm, rotary positions,
grouped-query attention over a preallocated KV cache, SiLU MLP, tied or untied head) as one numba
function over the model's own weights, stacked per layer. A prompt of :data:`PREFILL_ROWS` tokens or more
is the exception: a BLAS beats a streaming kernel at many rows, so it goes through transformers' batched
forward and its keys and values are copied into the cache.

It is for drafts only. Its logits equal transformers' up to float rounding (summation order), not bit
for bit; with ``int8=True`` the weights of every matrix product (not the embedding lookup or the norms)
are stored as int8 with one float scale per output row, a quarter of the bytes to stream per token, and
the logits move by the quantisation error (bounded on random models in ``tests/test_cpu_kernels.py``
and on SmolLM2 in ``tests/test_real_models.py``). A draft can afford both: every token it proposes is
verified by the target, so what the draft computes changes only how many proposals are accepted, never
the output. The target keeps
transformers' forward (or :mod:`tokentiming.backends.kv`'s static cache), so its output stays exact.

Supported: Llama, Qwen2 and Mistral checkpoints with SiLU MLPs, full attention, optional q/k/v biases and
a rotary embedding of fixed frequencies; anything else runs on transformers as usual
(:func:`unsupported` says why).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from .cpu import match_torch_threads, rows_times_weight
from .kv import DynamicKV, reusable, split

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
#: A prompt at least this long is prefilled by transformers' forward (a batched matrix product, where a BLAS
#: beats the streaming kernel) and its keys and values copied into the lean cache.
PREFILL_ROWS = 32


def unsupported(model) -> str | None:
    """Why :class:`LeanKV` cannot run ``model`` (None when it can)."""
    name = type(model).__name__
    if name not in ARCHITECTURES:
        return f"{name} is not one of {', '.join(ARCHITECTURES)}"
    config = model.config
    if split(model):
        return "the model is split across devices"
    if next(model.parameters()).device.type != "cpu" or model.dtype not in (torch.float32, torch.bfloat16):
        return "the model is not on the CPU in float32 or bfloat16"
    if config.hidden_act != "silu":
        return f"hidden_act is {config.hidden_act!r}, not 'silu'"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "the model uses sliding-window attention"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return "some layers are not full attention"
    rope = model.model.rotary_emb
    if rope.rope_type not in ("default", "linear", "llama3", "yarn"):
        return f"rope type {rope.rope_type!r} changes its frequencies with the length"
    layer = model.model.layers[0]
    if layer.mlp.gate_proj.bias is not None or layer.self_attn.o_proj.bias is not None:
        return "the MLP or output projection has biases"
    if hasattr(layer.self_attn, "q_norm"):
        return "the attention normalises queries and keys"
    return None


def _stack(tensors) -> np.ndarray:
    return np.ascontiguousarray(np.stack([t.detach().float().numpy() for t in tensors]))


def quantise(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output row: ``weights ≈ q * scale[..., None]``, ``|q| <= 127``."""
    scale = np.abs(weights).max(axis=-1) / np.float32(127.0)
    scale[scale == 0] = 1.0
    q = np.rint(weights / scale[..., None]).astype(np.int8)
    return np.ascontiguousarray(q), scale.astype(np.float32)


def _weights(matrix: np.ndarray, int8: bool) -> tuple[np.ndarray, np.ndarray]:
    """(weights, per-row scales) as the compiled forward takes them: int8 and its scales, or fp32 and ones."""
    return quantise(matrix) if int8 else (matrix, np.ones(matrix.shape[:-1], np.float32))


class LeanKV:
    """The :mod:`tokentiming.backends.kv` contract (``forward``, ``truncate``, ``length``) for a supported draft."""

    def __init__(self, model, capacity: int = 1024, int8: bool = False):
        reason = unsupported(model)
        if reason:
            raise ValueError(f"the lean CPU forward cannot run this model: {reason}")
        self.model = model
        self.device = torch.device("cpu")
        config, body = model.config, model.model
        layers = body.layers
        attention = layers[0].self_attn
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = attention.head_dim
        self.eps = float(config.rms_norm_eps)
        self.scale = float(attention.scaling)
        self.int8 = int8

        def qkv_bias(layer):
            a = layer.self_attn
            if a.q_proj.bias is None:
                return torch.zeros(a.q_proj.out_features + a.k_proj.out_features + a.v_proj.out_features)
            return torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])

        with torch.no_grad():
            self.w_qkv = _weights(_stack(torch.cat([l.self_attn.q_proj.weight, l.self_attn.k_proj.weight,
                                                    l.self_attn.v_proj.weight]) for l in layers), int8)
            self.b_qkv = _stack(qkv_bias(l) for l in layers)
            self.w_o = _weights(_stack(l.self_attn.o_proj.weight for l in layers), int8)
            self.w_gate_up = _weights(_stack(torch.cat([l.mlp.gate_proj.weight, l.mlp.up_proj.weight])
                                             for l in layers), int8)
            self.w_down = _weights(_stack(l.mlp.down_proj.weight for l in layers), int8)
            self.norm_in = _stack(l.input_layernorm.weight for l in layers)
            self.norm_post = _stack(l.post_attention_layernorm.weight for l in layers)
            self.norm_final = body.norm.weight.detach().float().numpy()
            self.embed = body.embed_tokens.weight.detach().float().numpy()
            self.head = _weights(model.lm_head.weight.detach().float().numpy(), int8)
            self.inv_freq = body.rotary_emb.inv_freq.detach().float().cpu()
            self.rope_scale = float(body.rotary_emb.attention_scaling)
        self.length = 0
        self.capacity = 0
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        shape = (len(self.b_qkv), self.kv_heads, capacity, self.head_dim)
        keys, values = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        if self.capacity:
            keys[:, :, :self.capacity] = self.keys
            values[:, :, :self.capacity] = self.values
        self.keys, self.values, self.capacity = keys, values, capacity
        # cos/sin per position as transformers computes them: fp32 position x inverse frequency
        freqs = torch.arange(capacity, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        self.cos = (freqs.cos() * self.rope_scale).numpy()
        self.sin = (freqs.sin() * self.rope_scale).numpy()

    def reset(self) -> None:
        self.length = 0

    def reserve(self, capacity: int) -> None:
        """Room for at least ``capacity`` tokens."""
        if capacity > self.capacity:
            self._grow(capacity)

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)  # later writes overwrite the rest

    def forward(self, ids: list[int], keep: int = 1) -> torch.Tensor:
        if self.length == 0 and len(ids) >= PREFILL_ROWS:
            return self._prefill(ids, keep)
        if self.length + len(ids) > self.capacity:
            self._grow(max(2 * self.capacity, self.length + len(ids) + 256))
        match_torch_threads()
        logits = np.empty((keep, self.head[0].shape[0]), np.float32)
        _forward(np.asarray(ids, np.int64), self.length, self.embed, *self.w_qkv, self.b_qkv, *self.w_o,
                 *self.w_gate_up, *self.w_down, self.norm_in, self.norm_post, self.norm_final, *self.head,
                 self.keys, self.values, self.cos, self.sin, self.heads, self.kv_heads, self.eps, self.scale,
                 logits)
        self.length += len(ids)
        return torch.from_numpy(logits)


    def _prefill(self, ids: list[int], keep: int) -> torch.Tensor:
        """The prompt through transformers' forward; its keys and values (rotated, as ours) into the cache."""
        if len(ids) > self.capacity:
            self._grow(len(ids) + 256)
        eager = DynamicKV(self.model)
        logits = eager.forward(ids, keep).float()
        for layer, cached in enumerate(eager.cache.layers):
            self.keys[layer, :, :len(ids)] = cached.keys[0].float().numpy()
            self.values[layer, :, :len(ids)] = cached.values[0].float().numpy()
        self.length = len(ids)
        return logits


def lean_kv(model, capacity: int, int8: bool = False) -> LeanKV:
    """The model's reusable :class:`LeanKV` (weights stacked, and quantised if ``int8``, once)."""
    return reusable(model, "lean-int8" if int8 else "lean", lambda m, c: LeanKV(m, c, int8=int8), capacity)


# -- the compiled forward pass ------------------------------------------------------------------------
@njit(fastmath=True, cache=True)
def _rms_norm(x, weight, eps, out):  # pragma: no cover - compiled
    rows, width = x.shape
    for t in range(rows):
        total = np.float32(0.0)
        for i in range(width):
            total += x[t, i] * x[t, i]
        scale = np.float32(1.0) / np.sqrt(total / np.float32(width) + np.float32(eps))
        for i in range(width):
            out[t, i] = weight[i] * (x[t, i] * scale)


@njit(fastmath=True, cache=True)
def _rotate(vector, cos, sin):  # pragma: no cover - compiled
    """Rotary position embedding in place, transformers' rotate-half convention."""
    half = vector.shape[0] // 2
    for i in range(half):
        a, b = vector[i], vector[i + half]
        vector[i] = a * cos[i] - b * sin[i]
        vector[i + half] = b * cos[i] + a * sin[i]


@njit(parallel=True, fastmath=True, cache=True)
def _attend(qkv, keys, values, start, heads, kv_heads, scale, out):  # pragma: no cover - compiled
    """Causal grouped-query attention of the new rows over the cache (which already holds them)."""
    rows = qkv.shape[0]
    head_dim = keys.shape[2]
    group = heads // kv_heads
    for job in prange(rows * heads):
        t, h = job // heads, job % heads
        g = h // group
        seen = start + t + 1
        q = qkv[t, h * head_dim:(h + 1) * head_dim]
        scores = np.empty(seen, np.float32)
        best = -np.inf
        for j in range(seen):
            s = np.float32(0.0)
            for d in range(head_dim):
                s += q[d] * keys[g, j, d]
            s *= scale
            scores[j] = s
            best = max(best, s)
        total = np.float32(0.0)
        for j in range(seen):
            scores[j] = np.exp(scores[j] - best)
            total += scores[j]
        target = out[t, h * head_dim:(h + 1) * head_dim]
        target[:] = 0.0
        for j in range(seen):
            weight = scores[j] / total
            for d in range(head_dim):
                target[d] += weight * values[g, j, d]


@njit(fastmath=True, cache=True)
def _product(x, weights, scales, out):  # pragma: no cover - compiled
    """out = x @ (weights * scales[:, None]).T, the scales applied to the few output rows."""
    rows_times_weight(x, weights, out)
    for t in range(out.shape[0]):
        out[t] *= scales


@njit(fastmath=True, cache=True)
def _forward(tokens, start, embed, w_qkv, s_qkv, b_qkv, w_o, s_o, w_gate_up, s_gate_up, w_down, s_down, norm_in,
             norm_post, norm_final, head, s_head, keys, values, cos, sin, heads, kv_heads, eps, scale,
             logits):  # pragma: no cover - compiled
    rows = tokens.shape[0]
    width = embed.shape[1]
    head_dim = keys.shape[3]
    inner = w_down.shape[2]
    x = np.empty((rows, width), np.float32)
    for t in range(rows):
        x[t] = embed[tokens[t]]
    h = np.empty_like(x)
    qkv = np.empty((rows, w_qkv.shape[1]), np.float32)
    attended = np.empty((rows, heads * head_dim), np.float32)
    projected = np.empty_like(x)
    gate_up = np.empty((rows, 2 * inner), np.float32)
    act = np.empty((rows, inner), np.float32)
    k_offset, v_offset = heads * head_dim, (heads + kv_heads) * head_dim
    for layer in range(w_qkv.shape[0]):
        _rms_norm(x, norm_in[layer], eps, h)
        _product(h, w_qkv[layer], s_qkv[layer], qkv)
        qkv += b_qkv[layer]
        for t in range(rows):
            position = start + t
            for hh in range(heads):
                _rotate(qkv[t, hh * head_dim:(hh + 1) * head_dim], cos[position], sin[position])
            for g in range(kv_heads):
                k = qkv[t, k_offset + g * head_dim:k_offset + (g + 1) * head_dim]
                _rotate(k, cos[position], sin[position])
                keys[layer, g, position] = k
                values[layer, g, position] = qkv[t, v_offset + g * head_dim:v_offset + (g + 1) * head_dim]
        _attend(qkv, keys[layer], values[layer], start, heads, kv_heads, scale, attended)
        _product(attended, w_o[layer], s_o[layer], projected)
        x += projected
        _rms_norm(x, norm_post[layer], eps, h)
        _product(h, w_gate_up[layer], s_gate_up[layer], gate_up)
        for t in range(rows):
            for i in range(inner):
                g = gate_up[t, i]
                act[t, i] = g / (np.float32(1.0) + np.exp(-g)) * gate_up[t, inner + i]
        _product(act, w_down[layer], s_down[layer], projected)
        x += projected
    keep = logits.shape[0]
    last = np.empty((keep, width), np.float32)
    _rms_norm(x[rows - keep:], norm_final, eps, last)
    _product(last, head, s_head, logits)

