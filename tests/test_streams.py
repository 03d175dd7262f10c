"""Streams on one decoder never share a cache; context limits are checked before anything runs; special
tokens never become text; the commit/resync bookkeeping on its own."""

import threading

import pytest

from tokentiming import TokenTimingDecoder, autoregressive
from tokentiming.backends.lean import LeanKV
from tokentiming.core.decoder import Committed, context_length

PROMPTS = ["def add(a, b):", "import os\n\n\ndef main():"]
NEW = 40


def _ids(rounds) -> list[int]:
    return [t for r in rounds for t in r.new_token_ids]


def _interleave(first, second):
    """Advance two streams one round each in turn, then finish whichever is left."""
    a, b = [], []
    for x, y in zip(first, second):
        a.append(x)
        b.append(y)
    return a + list(first), b + list(second)


@pytest.fixture(scope="module")
def reversed_decoder(tiny_target, tiny_draft):
    """The tiny pair the other way round: its Llama model drafts, so the lean CPU backend runs."""
    return TokenTimingDecoder(*tiny_draft, *tiny_target)


@pytest.mark.parametrize("static", [False, True], ids=["eager", "static"])
def test_interleaved_streams_on_one_decoder_do_not_share_a_cache(decoder, tiny_target, static):
    solo = [autoregressive(*tiny_target, p, max_new_tokens=NEW).token_ids for p in PROMPTS]
    first, second = (decoder.stream(p, max_new_tokens=NEW, static=static) for p in PROMPTS)
    a, b = _interleave(first, second)
    assert _ids(a) == solo[0]
    assert _ids(b) == solo[1]


def test_interleaved_streams_with_the_lean_draft_keep_their_acceptance(reversed_decoder, tiny_draft):
    """A shared lean draft cache makes the second stream draft from the first stream's context: output stays
    exact (the target decides) but acceptance drops. Each stream must see exactly its solo rounds."""
    decoder = reversed_decoder
    solo = [list(decoder.stream(p, max_new_tokens=NEW)) for p in PROMPTS]
    first, second = (decoder.stream(p, max_new_tokens=NEW) for p in PROMPTS)
    assert isinstance(first.gi_frame.f_locals["self"].draft.kv, LeanKV), "the lean backend did not run"
    a, b = _interleave(first, second)
    for together, alone in ((a, solo[0]), (b, solo[1])):
        assert _ids(together) == _ids(alone)
        assert [r.draft_token_ids for r in together] == [r.draft_token_ids for r in alone]


def test_streams_on_threads_match_their_solo_runs(reversed_decoder, tiny_draft):
    decoder = reversed_decoder
    solo = {p: autoregressive(*tiny_draft, p, max_new_tokens=NEW).token_ids for p in PROMPTS}
    results, errors = {}, []

    def run(prompt):
        try:
            for _ in range(2):
                results[prompt] = decoder.generate(prompt, max_new_tokens=NEW, static=True).token_ids
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == solo


def test_a_finished_stream_gives_its_cache_back_for_reuse(reversed_decoder):
    first = reversed_decoder.stream(PROMPTS[0], max_new_tokens=8)
    kv = first.gi_frame.f_locals["self"].draft.kv
    list(first)
    second = reversed_decoder.stream(PROMPTS[1], max_new_tokens=8)
    assert second.gi_frame.f_locals["self"].draft.kv is kv
    list(second)


# -- context limits ---------------------------------------------------------------------------------
def test_prompt_longer_than_the_target_holds_is_refused_before_any_forward(decoder, tiny_target):
    limit = context_length(tiny_target[0])
    with pytest.raises(ValueError) as error:
        decoder.stream("x " * limit, max_new_tokens=10)
    message = str(error.value)
    assert "target" in message and str(limit) in message and "shorten the prompt" in message


def test_new_tokens_past_the_target_limit_are_refused_naming_both_numbers(decoder, tiny_target):
    limit = context_length(tiny_target[0])
    room = decoder.max_new_tokens_for(PROMPTS[0])
    assert room < limit
    with pytest.raises(ValueError) as error:
        decoder.stream(PROMPTS[0], max_new_tokens=room + 1)
    assert str(limit) in str(error.value) and f"at most {room} new tokens" in str(error.value)
    with pytest.raises(ValueError):
        autoregressive(*tiny_target, PROMPTS[0], max_new_tokens=room + 1)


def _shorter_draft(model, positions: int):
    """A copy of a GPT-2 draft that holds only ``positions`` tokens (learned position embeddings cut)."""
    import copy

    import torch

    short = copy.deepcopy(model)
    short.config.n_positions = positions
    short.transformer.wpe.weight = torch.nn.Parameter(model.transformer.wpe.weight[:positions].clone())
    short.transformer.wpe.num_embeddings = positions
    return short


def test_draft_that_fills_its_positions_stops_drafting_instead_of_crashing(tiny_target, tiny_draft):
    """A GPT-2 draft has learned positions; once its context is full, a forward pass is an IndexError. When
    the text outgrows the draft, the target must finish alone, greedy output unchanged."""
    draft = _shorter_draft(tiny_draft[0], 96)
    decoder = TokenTimingDecoder(*tiny_target, draft, tiny_draft[1])
    prompt = PROMPTS[1]
    generation = decoder.generate(prompt, max_new_tokens=120, adaptive=False)
    assert generation.token_ids == autoregressive(*tiny_target, prompt, max_new_tokens=120).token_ids
    drafted = [r for r in generation.rounds if r.draft_token_ids]
    assert drafted and drafted[-1] is not generation.rounds[-1], "the draft never ran out of room"


# -- special tokens never become text ---------------------------------------------------------------
def test_end_token_writes_no_text_in_rounds_or_generation(tiny_target, tiny_draft):
    """The Studio printed a literal "</s>" where the API returned '': the end token must write no text."""
    import copy

    model, tokenizer = copy.deepcopy(tiny_target[0]), tiny_target[1]
    eos, forwards = tokenizer.eos_token_id, [0]

    def end_after_a_few_forwards(module, inputs, output):  # the target decides to stop after 4 forwards
        forwards[0] += 1
        if forwards[0] > 4:
            output[..., eos] += 1e4
        return output

    model.lm_head.register_forward_hook(end_after_a_few_forwards)
    generation = TokenTimingDecoder(model, tokenizer, *tiny_draft).generate(PROMPTS[0], max_new_tokens=60)
    last = generation.rounds[-1]
    assert generation.stop_reason == "eos" and last.emitted_token_id == eos
    assert last.emitted_special
    assert tokenizer.eos_token not in last.new_text and tokenizer.eos_token not in generation.text
    assert "".join(r.new_text for r in generation.rounds) == generation.text


# -- the bookkeeping between rounds -----------------------------------------------------------------
def test_committed_text_holds_back_a_split_character_until_it_completes():
    committed = Committed()
    assert committed.append("a".encode()) == "a"
    assert committed.append("é".encode()[:1]) == ""  # half of é
    assert committed.pending == "é".encode()[:1]
    assert committed.unsynced() == b"a"  # the draft gets whole characters only
    assert committed.append("é".encode()[1:] + b"b") == "éb"
    assert committed.unsynced() == "éb".encode()
    assert committed.unsynced() == b""
    assert committed.text == "aéb".encode() and committed.pending == b""
