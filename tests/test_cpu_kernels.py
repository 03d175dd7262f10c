"""The CPU fast paths: the small-row linear kernel and the lean draft forward.

Both must compute what transformers computes (to float rounding), and the decoder's greedy output
must stay the target's own whatever the draft runs on.
"""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tokentiming import TokenTimingDecoder, autoregressive
from tokentiming.backends.cpu import KERNELS, ROWS, accelerate, small_linear
from tokentiming.backends.kv import DynamicKV
from tokentiming.backends.lean import LeanKV, lean_kv, unsupported


@pytest.mark.parametrize("kernel", ["numba-2", "numba-4", "prefetch-4"])
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 9, 16, ROWS + 3])
@pytest.mark.parametrize("outputs", [1, 5, 8, 131])
@pytest.mark.parametrize("width", [67, 64, 5], ids=["width-with-a-partial-vector", "width-of-whole-vectors",
                                                   "width-under-one-vector"])
def test_small_linear_matches_torch(rows, outputs, width, kernel):
    generator = torch.Generator().manual_seed(rows * 1000 + outputs)
    x = torch.randn(rows, width, generator=generator)
    weight, bias = torch.randn(outputs, width, generator=generator), torch.randn(outputs, generator=generator)
    with torch.inference_mode():
        torch.testing.assert_close(small_linear(x, weight, bias, KERNELS[kernel]),
                                   torch.nn.functional.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
        batched = x[: rows // 2 * 2].view(2, -1, width).transpose(0, 1)  # non-contiguous, 3-D
        torch.testing.assert_close(small_linear(batched, weight, None, KERNELS[kernel]),
                                   torch.nn.functional.linear(batched, weight), rtol=1e-5, atol=1e-5)


def test_prefetching_kernel_refuses_int8_weights_instead_of_reading_their_bytes_as_floats():
    from numba.core.errors import TypingError

    from tokentiming.backends.cpu import rows_times_weight_prefetch

    x, out = np.ones((2, 16), np.float32), np.zeros((2, 8), np.float32)
    with pytest.raises(TypingError):
        rows_times_weight_prefetch(x, np.ones((8, 16), np.int8), out)


def test_accelerated_linears_keep_training_and_other_dtypes_on_torch():
    layer = accelerate(torch.nn.Sequential(torch.nn.Linear(8, 4)))[0]
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()  # autograd still works: the kernel is inference-only
    assert x.grad is not None
    double = accelerate(torch.nn.Sequential(torch.nn.Linear(8, 4).double()))
    with torch.inference_mode():
        torch.testing.assert_close(layer(x.detach()), torch.nn.functional.linear(x.detach(), layer.weight, layer.bias))
        assert double(torch.randn(2, 8, dtype=torch.float64)).dtype == torch.float64


def _llama(**extra):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, **extra)).eval()


def _qwen2():
    torch.manual_seed(1)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1)).eval()


@pytest.mark.parametrize("make", [_llama, lambda: _llama(tie_word_embeddings=False), _qwen2],
                         ids=["llama-tied", "llama-untied", "qwen2-bias"])
def test_lean_forward_matches_transformers(make):
    model = make()
    ids = torch.randint(0, 300, (80,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.inference_mode():
        eager, lean = DynamicKV(model), LeanKV(model, capacity=16)  # grows on the way
        for chunk, keep in ((ids[:20], 3), (ids[20:21], 1), (ids[21:27], 6), (ids[27:30], 1)):
            torch.testing.assert_close(lean.forward(chunk, keep), eager.forward(chunk, keep), rtol=1e-4, atol=1e-4)
        eager.truncate(23)
        lean.truncate(23)
        torch.testing.assert_close(lean.forward(ids[40:45], 5), eager.forward(ids[40:45], 5), rtol=1e-4, atol=1e-4)
        assert lean.length == 28 and lean.capacity >= 30


def test_int8_weights_round_trip_within_half_a_step_per_row():
    from tokentiming.backends.lean import quantise

    weights = np.random.default_rng(0).standard_normal((3, 40, 64)).astype(np.float32)
    weights[1, 5] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantise(weights)
    assert q.dtype == np.int8 and scale.shape == (3, 40) and np.abs(q).max() == 127
    assert np.all(np.abs(q * scale[..., None] - weights) <= scale[..., None] / 2 + 1e-7)
    assert not np.isnan(scale).any() and np.all(q[1, 5] == 0)


@pytest.mark.parametrize("make", [_llama, _qwen2], ids=["llama", "qwen2-bias"])
def test_int8_lean_forward_applies_each_rows_scale(make):
    """A forgotten or misplaced scale leaves logits off by orders of magnitude, not by a few per cent."""
    model = make()
    ids = torch.randint(0, 300, (30,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.inference_mode():
        exact = LeanKV(model, capacity=64).forward(ids, 30)
        int8 = LeanKV(model, capacity=64, int8=True).forward(ids, 30)
    relative_rms = float(((int8 - exact).pow(2).mean() / exact.var()).sqrt())
    assert relative_rms < 0.05, relative_rms


def test_long_prompt_prefilled_by_transformers_leaves_the_lean_cache_as_its_own_prefill_would():
    """A prompt of PREFILL_ROWS tokens or more goes through transformers' forward and its keys and values are
    copied in: wrong positions, a missed layer or unrotated keys would show in every step after it. On int8
    weights the steps after it stay within the int8 tolerance of the fp32 ones."""
    from tokentiming.backends.lean import PREFILL_ROWS

    model = _llama()
    ids = torch.randint(0, 300, (PREFILL_ROWS + 12,), generator=torch.Generator().manual_seed(4)).tolist()
    prompt, steps = ids[:PREFILL_ROWS + 5], ids[PREFILL_ROWS + 5:]
    with torch.inference_mode():
        copied, own, int8 = LeanKV(model, capacity=16), LeanKV(model, capacity=16), LeanKV(model, 16, int8=True)
        torch.testing.assert_close(copied.forward(prompt, 2), DynamicKV(model).forward(prompt, 2), rtol=1e-4, atol=1e-4)
        int8.forward(prompt, 1)
        own.forward(prompt[:5], 1)
        own.forward(prompt[5:PREFILL_ROWS - 1], 1)  # below the threshold: the compiled forward, in two parts
        own.forward(prompt[PREFILL_ROWS - 1:], 1)
        assert copied.length == own.length == int8.length == len(prompt)
        for token in steps:
            exact = own.forward([token])
            torch.testing.assert_close(copied.forward([token]), exact, rtol=2e-4, atol=2e-4)
            assert float(((int8.forward([token]) - exact).pow(2).mean() / exact.var()).sqrt()) < 0.05


def test_unsupported_models_say_why():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2))
    assert "GPT2LMHeadModel" in unsupported(gpt2)
    assert "silu" in unsupported(_llama(hidden_act="gelu"))
    assert unsupported(_llama().to(torch.float64)) == "the model is not on the CPU in float32 or bfloat16"
    with pytest.raises(ValueError, match="lean CPU forward cannot run"):
        LeanKV(gpt2)


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_lean_draft_keeps_the_target_output(tiny_target, tiny_draft, monkeypatch, int8):
    """Reversed tiny pair: the Llama model drafts (on the lean forward, fp32 or int8 weights) for the GPT-2
    target. The draft's own transformers forward is counted to show which path each decoder took."""
    target, draft = tiny_draft, tiny_target
    lean_calls = []
    original = LeanKV.forward
    monkeypatch.setattr(LeanKV, "forward",
                        lambda kv, ids, keep=1: lean_calls.append(kv.int8) or original(kv, ids, keep))
    transformers_calls = []
    hook = draft[0].register_forward_hook(lambda *_: transformers_calls.append(1))
    try:
        for prompt in ("import os\n", "def mean(values):\n", "class Point:\n    def __init__(self"):
            reference = autoregressive(*target, prompt, max_new_tokens=40).token_ids
            lean = TokenTimingDecoder(*target, *draft, draft_int8=int8).generate(prompt, max_new_tokens=40,
                                                                                 num_draft_tokens=6)
            assert lean_calls and not transformers_calls, "the lean decoder's draft ran on transformers"
            assert set(lean_calls) == {int8}, "the draft ran on other weights than asked for"
            lean_calls.clear()
            eager = TokenTimingDecoder(*target, *draft, lean_draft=False).generate(prompt, max_new_tokens=40,
                                                                                   num_draft_tokens=6)
            assert transformers_calls and not lean_calls, "lean_draft=False still ran the lean forward"
            transformers_calls.clear()
            assert lean.token_ids == eager.token_ids == reference
            assert lean.stats["proposed"] > 0
    finally:
        hook.remove()


# -- choosing the kernel per machine, by measurement --------------------------------------------------------
def _fake_measurement(choice_by_bucket):
    """A measurement whose choice is ``choice_by_bucket[bucket]`` ("torch" where not given)."""
    from tokentiming.backends.cpu import BUCKETS

    return lambda weights: {"buckets": list(BUCKETS), "ms": {},
                            "choice": [choice_by_bucket.get(b, "torch") for b in BUCKETS]}


def test_each_row_count_runs_on_the_kernel_measured_faster_for_it_not_on_one_kernel_for_all(tmp_path, monkeypatch):
    from tokentiming.backends import cpu

    monkeypatch.setenv("TOKENTIMING_HOME", str(tmp_path))
    # numba-2 wins for 3-4 rows, numba-4 for 5-8, PyTorch elsewhere
    monkeypatch.setattr(cpu, "measure", _fake_measurement({4: "numba-2", 8: "numba-4"}))
    model = accelerate(torch.nn.Sequential(torch.nn.Linear(16, 8)))
    calls = []
    original = cpu.small_linear
    monkeypatch.setattr(cpu, "small_linear", lambda x, w, b, kernel: calls.append(
        (x.numel() // 16, kernel)) or original(x, w, b, kernel))
    with torch.inference_mode():
        for rows in (1, 2, 3, 6, 8, 9, 300):
            x = torch.randn(rows, 16)
            torch.testing.assert_close(model(x), torch.nn.functional.linear(x, model[0].weight, model[0].bias))
    assert calls == [(3, cpu.rows_times_weight), (6, cpu.rows_times_weight_4), (8, cpu.rows_times_weight_4)]
    assert cpu.describe(model) == "PyTorch 1-2 rows, numba-2 3-4 rows, numba-4 5-8 rows, PyTorch 9+ rows"


def test_measurement_is_cached_per_machine_and_thread_count_instead_of_repeated_at_every_load(tmp_path, monkeypatch):
    from tokentiming.backends import cpu

    monkeypatch.setenv("TOKENTIMING_HOME", str(tmp_path))
    measured = []
    fake = _fake_measurement({1: "numba-2"})
    monkeypatch.setattr(cpu, "measure", lambda weights: measured.append(tuple(weights[0].shape)) or fake(weights))
    make = lambda: torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 16), torch.nn.Linear(16, 8))
    accelerate(make())
    assert sorted(measured) == [(8, 16), (16, 8)]  # once per weight shape
    accelerate(make())
    assert len(measured) == 2, "a second load measured again instead of reading the cache"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        accelerate(make())
    finally:
        torch.set_num_threads(threads)
    assert len(measured) == 4, "another thread count reused a measurement made for a different one"


def test_real_measurement_times_every_kernel_and_picks_the_fastest():
    from tokentiming.backends.cpu import BUCKETS, KERNELS, MARGIN, measure

    result = measure([torch.randn(64, 32) for _ in range(2)])
    assert result["failed"] == {}, "a kernel failed to run on this machine"
    assert set(result["ms"]) == {"torch", *KERNELS}
    for index, choice in enumerate(result["choice"]):
        times = {name: result["ms"][name][index] for name in result["ms"]}
        if times["torch"] is None:
            assert choice == "torch"
            continue
        fastest = min(KERNELS, key=times.get)
        assert choice == (fastest if times[fastest] < MARGIN * times["torch"] else "torch"), (times, choice)
    assert len(result["choice"]) == len(BUCKETS)


def test_a_kernel_that_cannot_run_on_this_machine_is_left_out_instead_of_failing_the_load(tmp_path, monkeypatch):
    from numba.core.errors import TypingError

    from tokentiming.backends import cpu

    def broken(x, w, out):  # as numba reports a kernel it cannot type: the reason comes last
        raise TypingError("Failed in nopython mode pipeline (step: nopython frontend)\n\nno vector registers here")

    monkeypatch.setenv("TOKENTIMING_HOME", str(tmp_path))
    monkeypatch.setitem(cpu.KERNELS, "broken", broken)
    result = cpu.measure([torch.randn(64, 32) for _ in range(2)])
    assert result["failed"] == {"broken": "TypingError: no vector registers here"}
    assert all(t is None for t in result["ms"]["broken"]) and "broken" not in result["choice"]
    model = accelerate(torch.nn.Sequential(torch.nn.Linear(32, 64)))  # loads, routed among the others
    with torch.inference_mode():
        x = torch.randn(5, 32)
        torch.testing.assert_close(model(x), torch.nn.functional.linear(x, model[0].weight, model[0].bias))
    assert not (tmp_path / "kernels.json").exists(), "a measurement with a failed kernel was cached for good"


def test_small_linear_refuses_an_input_of_the_wrong_width_instead_of_reading_past_the_weights():
    with pytest.raises(ValueError, match="input width 12"):
        small_linear(torch.randn(3, 12), torch.randn(8, 16))
