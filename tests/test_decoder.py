"""The decoder on the tiny test pair: exactness, losslessness, degenerate rounds, bad input, CLI."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import LlamaConfig, LlamaForCausalLM

from tokentiming import TokenTimingDecoder, autoregressive
from tokentiming.__main__ import main
from tokentiming.core.surfaces import TokenSurfaces, split_incomplete, surfaces_for
from tokentiming.core.decoder import render_prompt
from tokentiming.core.verification import Sampling

from test_lossless_rounds import first_tokens  # noqa: E402  (a sibling test module)

PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n",
    "class Stack:\n    def __init__(self):\n",
    "for i in range(10):\n",
    "    if value is None:\n        return",
    "# Return the mean of a list of numbers\ndef mean(",
    "x = [1, 2, 3]\nprint(",
    "try:\n    import json\nexcept ImportError:\n",
    "x =     1\n\n\n    y  =  2",
    "\t\tindented with tabs\t",
    "\n\n\n",
    "Hello 😀 world 🎉 ",
    "中文字符和 Python 代码",
    "naïve café ü ß →",
    "print('héllo 世界')\n",
    "The quick brown fox",
    "To be, or not to be,",
    "    return self._data[",
    "(",
    "def parse(text: str) -> dict:\n    \"\"\"Parse key=value lines.\"\"\"\n    result = {}\n    for line in text.splitlines():\n",
    [{"role": "user", "content": "Write a function that reverses a string."}],
    [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Sort a list 🙂"}],
]


class Steered(torch.nn.Module):
    """A real model whose next token is overridden by ``choose(position)`` (None keeps the model's)."""

    def __init__(self, model, choose):
        super().__init__()
        self.model, self.choose = model, choose
        self.config, self.generation_config = model.config, model.generation_config

    def forward(self, input_ids, cache=None, logits_to_keep=1, **kwargs):
        output = self.model(input_ids, cache=cache, logits_to_keep=logits_to_keep, **kwargs)
        token = self.choose(cache.get_seq_length())
        if token is not None:
            output.logits = torch.full_like(output.logits, -1e4)
            output.logits[..., token] = 0.0
        return output


def prompt_id(prompt):
    return prompt if isinstance(prompt, str) else "chat:" + prompt[-1]["content"]


# -- greedy exactness -------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", PROMPTS, ids=[prompt_id(p)[:24] for p in PROMPTS])
def test_greedy_output_equals_target_greedy(decoder, tiny_target, prompt):
    model, tokenizer = tiny_target
    reference = autoregressive(model, tokenizer, prompt, max_new_tokens=40)
    generation = decoder.generate(prompt, max_new_tokens=40)
    assert generation.token_ids == reference.token_ids
    assert generation.text == reference.text
    assert generation.stats["target_forwards"] <= reference.stats["target_forwards"]


def test_our_autoregressive_reference_equals_transformers_generate(tiny_target):
    model, tokenizer = tiny_target
    for prompt in PROMPTS[:4]:
        ids = torch.tensor([render_prompt(tokenizer, prompt)])
        expected = model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
        assert autoregressive(model, tokenizer, prompt, max_new_tokens=24).token_ids == expected


def test_drafts_are_accepted_on_the_pairs_own_domain(decoder):
    """Prompts cut from the text both tiny models were trained on: the draft's proposals get accepted."""
    import random

    from tokentiming.tools import tinypair

    documents = tinypair.build_corpus(tinypair.BuildConfig())[:-2]  # the code (prose and unicode come last)
    rng = random.Random(0)
    stats = []
    for _ in range(8):
        document = rng.choice(documents)
        cut = rng.choice([i + 1 for i, c in enumerate(document) if c == "\n" and i > 200])
        stats.append(decoder.generate(document[cut - 200:cut], max_new_tokens=40).stats)
    assert sum(s["accepted"] for s in stats) / sum(s["proposed"] for s in stats) > 0.08
    assert sum(s["tau"] for s in stats) / len(stats) > 1.3


def test_draft_tokens_splitting_a_character_are_held_back(tiny_target, tiny_draft):
    """A draft that writes a CJK character as several byte tokens never proposes half of it."""
    draft_model, draft_tokenizer = tiny_draft
    script = surfaces_for(draft_tokenizer).encode("中文 and 😀 ")
    assert any("<0x" in surfaces_for(draft_tokenizer).text_of(i) for i in script)  # byte pieces, shown as bytes
    steered = Steered(draft_model, lambda position: script[position % len(script)])
    decoder = TokenTimingDecoder(*tiny_target, steered, draft_tokenizer)
    generation = decoder.generate("Hello", max_new_tokens=30)
    assert generation.token_ids == autoregressive(*tiny_target, "Hello", max_new_tokens=30).token_ids
    draft, target = surfaces_for(draft_tokenizer), surfaces_for(tiny_target[1])
    committed = b""
    for trace in generation.rounds:
        pending = split_incomplete(committed)[1]
        drafted_text = split_incomplete(draft.join(trace.draft_token_ids))[0]
        if trace.proxy_token_ids:
            assert drafted_text.startswith(pending + target.join(trace.proxy_token_ids))
        committed += target.join(trace.new_token_ids)


# -- losslessness -----------------------------------------------------------------------------------
LEVEL_Z, POWER_Z, SHIFT = 3.29, 1.645, 0.02  # two-sided level 1e-3, 95% power, a 2% shift of probability


def first_round(decoder, prompt, seed, **settings):
    """The first round of a sampled generation: it alone decides the first written token, so a sample of that
    token needs this round and nothing after it."""
    return next(iter(decoder.stream(prompt, seed=seed, **settings)))


def exact_next_token_probs(target, prompt, temperature):
    model, tokenizer = target
    with torch.inference_mode():
        logits = model(torch.tensor([render_prompt(tokenizer, prompt)])).logits[0, -1]
    return Sampling(temperature).probs(logits).double().numpy()


def test_sampled_first_tokens_follow_the_target_distribution(decoder, tiny_target):
    """End to end through ``stream``: the first written token against the target's exact distribution.

    Power: the sample size n = ((3.29 + 1.645) / 0.02)^2 p(1 - p) (about 14,400 rounds, for the proposal's
    probability p = 0.62) makes the binomial test of the proposal's frequency, at two-sided level 1e-3, catch a
    shift of 2% of probability onto or off the draft's proposal with 95% power; the chi-square over every token
    (level 1e-3, about 19 degrees of freedom) catches the same shift with about 45% power, and any shift spread
    over other tokens of the same size. One round per sample: later rounds cannot change the first token."""
    prompt, temperature = "class IllegalWeekdayError(ValueError):\n    def __init__(self, weekday):\n", 1.0
    exact = exact_next_token_probs(tiny_target, prompt, temperature)
    settings = dict(max_new_tokens=3, temperature=temperature, num_draft_tokens=2, adaptive=False)  # two drafted
    proposal = first_round(decoder, prompt, 0, **settings).proxy_token_ids[0]
    p = exact[proposal]
    assert 0.1 < p < 0.9, "the prompt should make the proposal uncertain"
    samples = int(np.ceil(((LEVEL_Z + POWER_Z) / SHIFT) ** 2 * p * (1 - p)))

    # One real round per seed, the models' forward passes looked up once computed (test_lossless_rounds.py).
    firsts = first_tokens(decoder, "tokentiming", samples, prompt=prompt, draft_tokens=2, temperature=temperature)
    bins = np.flatnonzero(exact * samples >= 5)
    observed = np.append(np.bincount(firsts, minlength=len(exact))[bins], np.isin(firsts, bins, invert=True).sum())
    expected = np.append(exact[bins], 1 - exact[bins].sum()) * samples
    assert chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3
    frequency = float(np.mean(firsts == proposal))
    assert abs(frequency - p) < LEVEL_Z * np.sqrt(p * (1 - p) / samples)


def test_seeds_make_sampling_reproducible(decoder):
    first = decoder.generate("def ", max_new_tokens=20, temperature=0.8, top_p=0.9, seed=42)
    second = decoder.generate("def ", max_new_tokens=20, temperature=0.8, top_p=0.9, seed=42)
    assert first.token_ids == second.token_ids


def test_transfer_verifier_is_lossy_where_the_lossless_rule_is_not(tiny_target, tiny_draft):
    """Five draft tokens ("re", "repr", "reg", "replace", "reversed"), each drafted with probability 1/5, all start
    with the target's token "re": the draft proposes "re" every time, yet the transfer rule takes q~ = 1/5 for its
    probability and accepts it with min(1, p/q~) (about 0.73 here) instead of p (about 0.15). The lossless rule's
    first token is "re" with probability p.

    Power: 60 rounds per rule; each frequency is tested against its own prediction at two-sided level 1e-3, and
    the predictions are 0.58 apart, more than 10 standard errors of either: a decoder that verified with the other
    rule would pass with probability below 1e-12."""
    prompt, samples = "x = [1, 2, 3]\nprint(", 60
    draft_model, draft_tokenizer = tiny_draft
    target = surfaces_for(tiny_target[1])
    re_id = target.vocabulary_bytes().index(b"re")  # "re" mid-sequence (encoding "re" alone adds a space)
    drafts = [surfaces_for(draft_tokenizer).encode(word) for word in ("re", "repr", "reg", "replace", "reversed")]
    assert all(len(ids) == 1 for ids in drafts)
    steered = Steered(draft_model, lambda position: [ids[0] for ids in drafts])  # uniform over the five
    decoder = TokenTimingDecoder(*tiny_target, steered, draft_tokenizer)
    p = exact_next_token_probs(tiny_target, prompt, 1.0)[re_id]
    predicted = {"transfer": min(1.0, p * len(drafts)), "tokentiming": p}
    assert predicted["transfer"] - p > 0.3, "the prompt should make the transfer rule's bias large"
    for verifier, expected in predicted.items():
        rounds = [first_round(decoder, prompt, seed, max_new_tokens=2, temperature=1.0, num_draft_tokens=1,
                              adaptive=False, verifier=verifier) for seed in range(samples)]
        assert all(r.proxy_token_ids[:1] == [re_id] for r in rounds)
        frequency = np.mean([r.new_token_ids[0] == re_id for r in rounds])
        assert abs(frequency - expected) < LEVEL_Z * np.sqrt(expected * (1 - expected) / samples), verifier


# -- degenerate rounds -------------------------------------------------------------------------------
def test_draft_that_only_proposes_eos_leaves_target_decoding_intact(tiny_target, tiny_draft):
    draft_model, draft_tokenizer = tiny_draft
    steered = Steered(draft_model, lambda position: draft_tokenizer.eos_token_id)
    decoder = TokenTimingDecoder(*tiny_target, steered, draft_tokenizer)
    generation = decoder.generate("def add(a, b):", max_new_tokens=16)
    assert generation.token_ids == autoregressive(*tiny_target, "def add(a, b):", max_new_tokens=16).token_ids
    assert generation.stats["proposed"] == 0 and all(r.emitted_kind == "target" for r in generation.rounds)


def test_draft_that_repeats_itself(tiny_target, tiny_draft):
    draft_model, draft_tokenizer = tiny_draft
    token = surfaces_for(draft_tokenizer).encode(" x")[0]
    decoder = TokenTimingDecoder(*tiny_target, Steered(draft_model, lambda position: token), draft_tokenizer)
    generation = decoder.generate("x x x x", max_new_tokens=24)
    assert generation.token_ids == autoregressive(*tiny_target, "x x x x", max_new_tokens=24).token_ids
    assert generation.stats["proposed"] > 0


def test_target_that_ends_at_once(tiny_target, tiny_draft):
    model, tokenizer = tiny_target
    prompt_length = len(render_prompt(tokenizer, "def f():"))
    steered = Steered(model, lambda position: tokenizer.eos_token_id if position >= prompt_length - 1 else None)
    generation = TokenTimingDecoder(steered, tokenizer, *tiny_draft).generate("def f():", max_new_tokens=10)
    assert generation.token_ids == [tokenizer.eos_token_id] and generation.stop_reason == "eos"
    assert generation.text == "" and generation.stats["rounds"] == 1
    assert autoregressive(steered, tokenizer, "def f():", max_new_tokens=10).token_ids == [tokenizer.eos_token_id]


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 7, 13])
def test_exactly_max_new_tokens(decoder, tiny_target, max_new_tokens):
    generation = decoder.generate("import os\n", max_new_tokens=max_new_tokens, num_draft_tokens=8)
    reference = autoregressive(*tiny_target, "import os\n", max_new_tokens=max_new_tokens)
    assert generation.token_ids == reference.token_ids
    assert len(generation.token_ids) == max_new_tokens or generation.stop_reason == "eos"


def test_adaptive_drafting_keeps_greedy_exact(decoder, tiny_target):
    generation = decoder.generate(PROMPTS[0], max_new_tokens=32, adaptive=True, num_draft_tokens=10)
    assert generation.token_ids == autoregressive(*tiny_target, PROMPTS[0], max_new_tokens=32).token_ids


# -- the trace ---------------------------------------------------------------------------------------
def test_stream_yields_the_rounds_of_generate(decoder):
    streamed = list(decoder.stream(PROMPTS[2], max_new_tokens=30))
    generation = decoder.generate(PROMPTS[2], max_new_tokens=30)
    assert [t for r in streamed for t in r.new_token_ids] == generation.token_ids
    assert len(streamed) == generation.stats["rounds"]


def test_trace_is_consistent(decoder, tiny_target):
    tokenizer = tiny_target[1]
    generation = decoder.generate(PROMPTS[5], max_new_tokens=40)
    stats = generation.stats
    for key in ("rounds", "target_forwards", "draft_forwards", "proposed", "accepted", "acceptance_rate", "tau",
                "align_us_median", "wall_s", "tokens_per_s"):
        assert key in stats
    assert stats["proposed"] == sum(r.proposed for r in generation.rounds)
    assert stats["tau"] == pytest.approx(len(generation.token_ids) / stats["target_forwards"])
    for trace in generation.rounds:
        assert len(trace.token_probs) == trace.accepted + 1 and all(0 <= p <= 1 for p in trace.token_probs)
        if trace.proposed:
            k, m = trace.cost_matrix.shape
            assert m == trace.proposed and 0 < k <= len(trace.draft_token_ids)
            assert trace.warping_path[-1].tolist() == [k - 1, m - 1]
            assert trace.timings["align_us"] > 0
            assert trace.emitted_kind == ("bonus" if trace.accepted == trace.proposed else "correction")
        assert trace.proxy_tokens == [surfaces_for(tokenizer).text_of(i) for i in trace.proxy_token_ids]
    assert "".join(r.new_text for r in generation.rounds) == \
        split_incomplete(surfaces_for(tokenizer).join(generation.token_ids))[0].decode()
    assert 0 < stats["align_us_median"] < 5000


def test_chat_prompts_use_each_models_own_template(tiny_target, tiny_draft):
    messages = [{"role": "user", "content": "hi"}]
    target_text = tiny_target[1].decode(render_prompt(tiny_target[1], messages))
    draft_text = tiny_draft[1].decode(render_prompt(tiny_draft[1], messages))
    assert "hi" in target_text and "hi" in draft_text and target_text != draft_text


# -- a tokenizer whose decoder is neither byte-level nor metaspace ---------------------------------------------
WORDS = "the quick brown fox jumps over the lazy dog while hello world prints again and again"


@pytest.fixture(scope="module")
def wordpiece():
    """A WordPiece tokenizer (BERT's "##" continuations, words joined by single spaces), trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer.train_from_iterator([WORDS], trainers.WordPieceTrainer(vocab_size=90, special_tokens=["[UNK]", "[SEP]"],
                                                                     show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="[SEP]",
                                   clean_up_tokenization_spaces=False)


def random_llama(tokenizer, dtype):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM(config).eval().to(dtype)


def test_decode_surfaces_spell_what_the_tokenizer_decodes(wordpiece):
    """The "decode" fallback: each token's bytes are what decoding it after an anchor token adds."""
    surfaces = TokenSurfaces(wordpiece)
    assert surfaces.kind == "decode" and surfaces.dummy_prefix == b" "
    pieces = []
    for text in ("the quick brown fox", "jumped over lazy dogs", "hello again worldwide"):
        ids = surfaces.encode(text)
        pieces += wordpiece.convert_ids_to_tokens(ids)
        assert surfaces.join(ids) == surfaces.dummy_prefix + text.encode()
    assert any(piece.startswith("##") for piece in pieces), "some word should be split into pieces"
    ordinary = [i for i in range(len(wordpiece)) if i not in surfaces.special_ids]
    (the,) = surfaces.encode("the")
    rng = np.random.default_rng(0)
    for _ in range(50):  # mid-sequence: after a word, any ids add exactly their joined bytes to the decoded text
        ids = rng.choice(ordinary, size=int(rng.integers(1, 8))).tolist()
        assert wordpiece.decode([the] + ids).encode() == b"the" + surfaces.join(ids), ids


def test_greedy_output_is_the_targets_with_a_wordpiece_draft(tiny_target, wordpiece):
    decoder = TokenTimingDecoder(*tiny_target, random_llama(wordpiece, torch.float32), wordpiece)
    for prompt in ("the quick brown fox", "def fibonacci(n):\n"):
        generation = decoder.generate(prompt, max_new_tokens=24)
        assert generation.token_ids == autoregressive(*tiny_target, prompt, max_new_tokens=24).token_ids
        assert generation.stats["proposed"] > 0


def test_greedy_output_is_the_targets_with_a_wordpiece_target(wordpiece):
    """A float64 target, its own float32 copy drafting: proposals re-encoded through decoded surfaces get accepted."""
    target = random_llama(wordpiece, torch.float64)
    decoder = TokenTimingDecoder(target, wordpiece, random_llama(wordpiece, torch.float32), wordpiece)
    generation = decoder.generate("the quick brown fox", max_new_tokens=32, num_draft_tokens=4, adaptive=False)
    assert generation.token_ids == autoregressive(target, wordpiece, "the quick brown fox", max_new_tokens=32).token_ids
    assert generation.stats["accepted"] > 0


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt,options,named", [
    ("", {}, "prompt"),
    ([], {}, "prompt"),
    ([{"role": "user", "content": ""}], {}, "prompt"),
    ([{"content": "no role"}], {}, "role"),
    ("x", {"max_new_tokens": 0}, "max_new_tokens"),
    ("x", {"max_new_tokens": -5}, "max_new_tokens"),
    ("x", {"max_new_tokens": 2.5}, "max_new_tokens"),
    ("x", {"num_draft_tokens": 0}, "num_draft_tokens"),
    ("x", {"num_draft_tokens": 1000}, "num_draft_tokens"),
    ("x", {"temperature": -1.0}, "temperature"),
    ("x", {"top_p": 0.0}, "top_p"),
    ("x", {"band": -1}, "band"),
    ("x", {"verifier": "magic"}, "verifier"),
    ("x", {"verifier": "greedy", "temperature": 0.7}, "temperature=0"),
])
def test_bad_input_is_a_value_error_that_names_the_argument(decoder, prompt, options, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        decoder.generate(prompt, **options)
    with pytest.raises(ValueError, match=re.escape(named)):
        decoder.stream(prompt, **options)  # raised before any round runs
    assert len(decoder.generate("def ", max_new_tokens=3).token_ids) == 3  # nothing was left half-done


# -- command line ------------------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tokentiming", "generate", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_json_matches_the_library(decoder):
    """The ``python -m tokentiming`` entry point itself, in a fresh process; the other CLI tests call ``main``."""
    result = run_cli("--target", "tiny-target", "--draft", "tiny-draft", "--prompt", "def fibonacci(n):",
                     "--max-new-tokens", "16", "--json")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["token_ids"] == decoder.generate("def fibonacci(n):", max_new_tokens=16).token_ids
    assert set(output) == {"text", "token_ids", "stats"} and output["stats"]["rounds"] > 0


def test_cli_target_alone_and_chat(tiny_target, capsys):
    code = main(["generate", "--target", "tiny-target", "--prompt", "hello", "--chat", "--method", "ar",
                 "--max-new-tokens", "8", "--json"])
    output = capsys.readouterr()
    assert code == 0, output.err
    expected = autoregressive(*tiny_target, [{"role": "user", "content": "hello"}], max_new_tokens=8)
    assert json.loads(output.out)["token_ids"] == expected.token_ids


def test_cli_reports_bad_input_as_an_error_line(capsys):
    """Bad input ends with exit status 2 and one "error:" line naming the problem (an exception would escape)."""
    def last_line(err):  # loading progress bars come first
        return err.strip().splitlines()[-1]

    assert main(["generate", "--target", "tiny-target", "--draft", "tiny-draft", "--prompt", "x",
                 "--max-new-tokens", "0"]) == 2
    assert last_line(capsys.readouterr().err).startswith("error: max_new_tokens")
    assert main(["generate", "--target", "no-such-model", "--draft", "tiny-draft", "--prompt", "x"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "tiny-target" in error  # the known models are listed
