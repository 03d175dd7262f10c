"""Cache backends: the static cache (padding, rewinding, growing) must give the eager cache's results.

CUDA graph capture itself needs a GPU (``python -m tokentiming.tools.gpubench`` checks it there: every method's
greedy ids against the target alone's); here the static cache runs eagerly, with and without padding.
"""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tokentiming import TokenTimingDecoder, autoregressive
from tokentiming.backends.kv import BUCKETS, DynamicKV, StaticKV, give_back, static_kv

PROMPTS = ["def mean(values):\n", "class Point:\n    def __init__(self", "Hello 世界 🙂 naïve", "import os\n"]


def _pad_pooled_caches(tiny_target, tiny_draft, pad: bool) -> None:
    for model, role in ((tiny_target[0], "target"), (tiny_draft[0], "draft")):
        kv = static_kv(model, role, 64)  # taken from the model's pool: set, then given back for the next stream
        kv.pad = pad
        give_back(kv)


@pytest.fixture(params=[False, True], ids=["unpadded", "padded"])
def padded(request, tiny_target, tiny_draft):
    """The tiny pair's reusable static caches, padded to the graph lengths or not."""
    _pad_pooled_caches(tiny_target, tiny_draft, request.param)
    yield request.param
    _pad_pooled_caches(tiny_target, tiny_draft, False)


@pytest.fixture(scope="module")
def eager_greedy(tiny_target):
    """The target alone's greedy ids on the eager cache, per prompt, computed once for both paddings."""
    return {prompt: autoregressive(*tiny_target, prompt, max_new_tokens=48).token_ids for prompt in PROMPTS}


@pytest.mark.parametrize("prompt", PROMPTS)
def test_static_caches_give_the_target_greedy_ids(padded, eager_greedy, tiny_target, tiny_draft, prompt, monkeypatch):
    """On a CPU the static cache runs without graphs: eagerly, padded to the graph lengths or not."""
    used = []
    original = StaticKV.forward
    monkeypatch.setattr(StaticKV, "forward", lambda kv, ids, keep=1: used.append((kv.pad, kv.graphs))
                        or original(kv, ids, keep))
    reference = eager_greedy[prompt]
    assert autoregressive(*tiny_target, prompt, max_new_tokens=48, static=True).token_ids == reference
    decoder = TokenTimingDecoder(*tiny_target, *tiny_draft)
    for k in (3, 12):
        generation = decoder.generate(prompt, max_new_tokens=48, num_draft_tokens=k, static=True)
        assert generation.token_ids == reference
    assert used and set(used) == {(padded, False)}, "the static caches were not the ones asked for"


@pytest.mark.parametrize("special", [False, True], ids=["its-own-special-tokens", "a-common-token-made-special"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_draft_steps_chained_on_the_device_stop_where_the_step_by_step_loop_stops(eager_greedy, tiny_target,
                                                                                   tiny_draft, prompt, special,
                                                                                   monkeypatch):
    """The device loop (StaticKV.device_loop) drafts k tokens with one read-back, then cuts them where the
    step-by-step loop stops: the same drafts, probabilities and forward counts in every round, and the same
    draft cache after every draft and resync. The tiny draft never writes its own special tokens here, so one
    variant makes its most common drafted token special: a stop on it once left the cache one token short."""
    from collections import Counter

    from tokentiming.core.decoder import _Speculation
    from tokentiming.core.surfaces import surfaces_for

    decoder = TokenTimingDecoder(*tiny_target, *tiny_draft)
    options = dict(max_new_tokens=48, num_draft_tokens=6, static=True)
    common = None
    if special:
        drafted = Counter(t for r in decoder.generate(prompt, **options).rounds for t in r.draft_token_ids)
        common = drafted.most_common(1)[0][0]
        surfaces = surfaces_for(tiny_draft[1])
        monkeypatch.setattr(surfaces, "special_ids", surfaces.special_ids | {common})
    chained, states = [], []
    original = StaticKV.greedy_steps
    monkeypatch.setattr(StaticKV, "greedy_steps", lambda kv, *args: chained.append(args[1]) or original(kv, *args))
    for name in ("draft_step", "resync"):
        def after(self, *args, _original=getattr(_Speculation, name), _name=name):
            result = _original(self, *args)
            states.append((_name, len(self.draft.ids), self.draft.kv.length))
            return result
        monkeypatch.setattr(_Speculation, name, after)
    runs = {}
    for on_device in (False, True):
        monkeypatch.setattr(StaticKV, "device_loop", on_device)
        states.clear()
        runs[on_device] = decoder.generate(prompt, **options), list(states)
        assert bool(chained) == on_device, "the device loop ran when off, or not when on"
    (step_by_step, host_states), (on_device, device_states) = runs[False], runs[True]
    assert on_device.token_ids == step_by_step.token_ids == eager_greedy[prompt]
    for name in ("draft_token_ids", "draft_probs", "draft_forwards", "proxy_token_ids", "accepted"):
        assert [getattr(r, name) for r in on_device.rounds] == [getattr(r, name) for r in step_by_step.rounds], name
    assert device_states == host_states, "the draft cache differs after a draft or a resync"
    assert any(r.draft_forwards < 6 for r in step_by_step.rounds), "no round stopped early: the cut went untested"
    if special:
        assert all(common not in r.draft_token_ids for r in on_device.rounds)


def test_chained_draft_steps_read_nothing_back_until_the_end(tiny_draft):
    """One read-back per round is the point of the device loop: a tensor index (``probs[token]``) reads the
    token back at every step (an ``.item()``, a synchronisation on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from tokentiming.core.verification import Sampling

    class ReadBacks(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.startswith(("item", "_local_scalar_dense")):
                ReadBacks.count += 1
            return func(*args, **(kwargs or {}))

    with torch.inference_mode():
        kv = StaticKV(tiny_draft[0], capacity=64)
        kv.forward([5, 6, 7])
        with ReadBacks():
            tokens, probs = kv.greedy_steps([8], 6, Sampling().probs)
    assert len(tokens) == len(probs) == 6 and kv.length == 3 + 6
    assert ReadBacks.count == 0, f"{ReadBacks.count} read-backs while chaining 6 steps"


def test_static_sampling_matches_dynamic_sampling_for_a_seed(tiny_target, tiny_draft):
    decoder = TokenTimingDecoder(*tiny_target, *tiny_draft)
    options = dict(max_new_tokens=32, temperature=0.8, top_p=0.95, seed=7)
    assert decoder.generate("import os\n", static=True, **options).token_ids == \
        decoder.generate("import os\n", **options).token_ids


def _logits(kv, chunks):
    return [kv.forward(chunk, keep=len(chunk)) for chunk in chunks]


def test_padding_rewinding_and_growing_keep_logits_exact(tiny_target):
    model = tiny_target[0]
    ids = torch.randint(10, 1000, (90,), generator=torch.Generator().manual_seed(0)).tolist()
    chunks = [ids[:20], ids[20:21], ids[21:26], ids[26:29], ids[29:60], ids[60:90]]
    with torch.inference_mode():
        expected = _logits(DynamicKV(model), chunks)
        kv = StaticKV(model, capacity=24, pad=True)  # too small: grows twice on the way
        got = _logits(kv, chunks)
        assert kv.capacity >= 90 and kv.length == 90
        for want, have in zip(expected, got):
            torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-4)
        # reject the last 12 tokens, write others: only the kept prefix may be seen
        kv.truncate(78)
        other = [5, 6, 7]
        dynamic = DynamicKV(model)
        dynamic.forward(ids[:78])
        torch.testing.assert_close(kv.forward(other, keep=3), dynamic.forward(other, keep=3), rtol=1e-4, atol=1e-4)


def test_padding_sizes_are_the_graph_lengths(tiny_target):
    kv = StaticKV(tiny_target[0], capacity=1024, pad=True)
    seen = []
    original = kv.model.forward

    def spy(input_ids, **kwargs):
        seen.append(input_ids.shape[1])
        return original(input_ids=input_ids, **kwargs)

    kv.model.forward = spy
    try:
        for n in (1, 3, 5, 17, 100, 150):
            kv.forward(list(range(10, 10 + n)))
    finally:
        del kv.model.forward
    assert seen == [1, 4, 8, 32, 128, 150]  # beyond the largest bucket: run as is
    assert kv.length == 1 + 3 + 5 + 17 + 100 + 150 and max(BUCKETS) == 128


def test_a_reused_static_cache_starts_empty_and_is_never_shared(tiny_target):
    model = tiny_target[0]
    first = static_kv(model, "target", 64)
    first.forward([11, 12, 13])
    meanwhile = static_kv(model, "target", 64)  # a second stream while the first holds its cache
    assert meanwhile is not first
    give_back(meanwhile)
    give_back(first)
    again = static_kv(model, "target", 2000)
    assert again is first and again.length == 0 and again.capacity >= 2000
    give_back(again)


def test_graphs_need_a_gpu(tiny_target):
    with pytest.raises(ValueError, match="CUDA"):
        StaticKV(tiny_target[0], graphs=True)


def test_other_architectures_match_on_a_static_cache():
    """A Qwen2-style model (the presets' family), randomly initialised: static == eager, prompt and decode."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = Qwen2ForCausalLM(config).eval()
    ids = torch.randint(0, 300, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.inference_mode():
        for a, b in zip(_logits(DynamicKV(model), [ids[:30], ids[30:31], ids[31:40]]),
                        _logits(StaticKV(model, capacity=64, pad=True), [ids[:30], ids[30:31], ids[31:40]])):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_sliding_window_models_are_refused_with_a_clear_message():
    config = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=8,
                         max_window_layers=0)
    model = Qwen2ForCausalLM(config).eval()
    with pytest.raises(ValueError, match="static=False"):
        StaticKV(model)
