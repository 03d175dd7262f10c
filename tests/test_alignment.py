"""Re-encoding and resynchronisation invariants (hypothesis), surfaces, and align_text."""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tokentiming import align_text
from tokentiming.core import dtw
from tokentiming.core.alignment import align_tokens
from tokentiming.core.reencode import draft_text, reencode, resync
from tokentiming.core.surfaces import TokenSurfaces, _byte_level_decoder, split_incomplete, surfaces_for
from tokentiming.models import LOCAL_PRESETS

PAIR = {name: os.environ.get(f"TOKENTIMING_TEST_{name.upper().replace('-', '_')}", str(path))
        for name, path in LOCAL_PRESETS.items()}

TRICKY = ["def f(x):\n\treturn x  # ok", "    \n\n  x = 1", "naïve café", "中文字符", "emoji 😀🎉 ok",
          "a\u200bb", "tab\tand\r\nCRLF", "x" * 40, " leading space", "<s> and </s> are text here"]
alphabet = st.sampled_from(list("abcxyz ABC 0123 _-+=():,.'\"\n\t\\#") + ["  ", "    ", "中", "文", "😀", "é", "ß", "→"])
texts = st.lists(alphabet, min_size=0, max_size=30).map("".join)
nonempty = st.lists(alphabet, min_size=1, max_size=30).map("".join)
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")


@pytest.fixture(scope="module")
def target():
    return surfaces_for(AutoTokenizer.from_pretrained(PAIR["tiny-target"]))


@pytest.fixture(scope="module")
def draft():
    return surfaces_for(AutoTokenizer.from_pretrained(PAIR["tiny-draft"]))


def ascii_only_tokenizer(normalizer=None):
    """A BPE tokenizer with no byte fallback: it cannot spell characters it never saw."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.train_from_iterator(["the quick brown fox jumps over the lazy dog fi"] * 10,
                                  trainers.BpeTrainer(vocab_size=100, special_tokens=["[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


# -- surfaces ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["target", "draft"])
@pytest.mark.parametrize("text", TRICKY)
def test_surfaces_spell_the_encoded_text(side, text, request):
    surfaces = request.getfixturevalue(side)
    joined = surfaces.join(surfaces.encode(text))
    assert joined.removeprefix(surfaces.dummy_prefix) == text.encode() or joined == text.encode()


def test_the_two_test_tokenizers_really_differ(target, draft):
    assert target.dummy_prefix == b" " and draft.dummy_prefix == b""
    assert any("▁" in piece for piece in target.tokenizer.convert_ids_to_tokens(target.encode("def foo(x)")))
    assert any("Ġ" in piece for piece in draft.tokenizer.convert_ids_to_tokens(draft.encode("def foo(x)")))
    assert any(p.startswith("<0x") for p in target.tokenizer.convert_ids_to_tokens(target.encode("😀")))


def test_special_token_names_in_text_stay_text(target):
    ids = target.encode("</s>")
    assert target.tokenizer.eos_token_id not in ids and target.join(ids).removeprefix(target.dummy_prefix) == b"</s>"


def test_split_incomplete():
    data = "a中".encode()
    assert split_incomplete(data) == (data, b"")
    assert split_incomplete(data[:-1]) == (b"a", data[1:-1])
    assert split_incomplete("😀".encode()[:3]) == (b"", "😀".encode()[:3])


# -- re-encoding ----------------------------------------------------------------------------------
@given(context=nonempty, text=texts)
def test_proxies_spell_a_prefix_of_the_draft_text(target, context, text):
    proxies = reencode(target, target.encode(context), text)
    assert text.encode().startswith(target.join(proxies))


@given(context=nonempty, text=nonempty)
def test_byte_level_reencoding_covers_the_whole_text(draft, context, text):
    proxies = reencode(draft, draft.encode(context), text)
    assert draft.join(proxies) == text.encode()


@given(context=nonempty, text=nonempty)
def test_reencoding_after_a_context_continues_it(target, context, text):
    """Context + proxies spell context + (a prefix of) text, and usually all of it."""
    context_ids = target.encode(context)
    proxies = reencode(target, context_ids, text)
    joined = target.join(context_ids + proxies)
    assert (context + text).encode().startswith(joined.removeprefix(target.dummy_prefix)) or \
        (context + text).encode().startswith(joined)


def test_reencoding_mostly_reproduces_the_tokenizers_own_split(target):
    """Proxies behind a look-behind window match how the target tokenizes the whole text."""
    same = eligible = 0
    for text in TRICKY:
        for cut in range(1, len(text)):
            context_ids = target.encode(text[:cut])
            whole = target.encode(text)
            if whole[:len(context_ids)] != context_ids:
                continue  # the cut falls inside a token: no canonical continuation exists
            eligible += 1
            same += reencode(target, context_ids, text[cut:]) == whole[len(context_ids):]
    assert eligible > 50 and same / eligible > 0.9


def test_partial_character_in_the_context_is_completed(target):
    """If the target stopped half-way through a character, the proxies continue it byte by byte."""
    ids = target.encode("x 😀")
    context = ids[:-2]  # ends two bytes into the emoji's four byte tokens
    assert split_incomplete(target.join(context))[1]
    proxies = reencode(target, context, "😀 ok")
    assert target.join(context + proxies).endswith("😀 ok".encode())
    assert target.join(context + reencode(target, context, "🎉")).endswith("🎉".encode())  # same first two bytes
    assert reencode(target, context, "中") == []  # a character with other leading bytes cannot continue it


@pytest.mark.parametrize("text,expected", [("the fox 😀 jumps", b"the fox"), ("the  lazy\u4e2d dog", b"the  lazy")])
def test_proposal_stops_where_the_target_cannot_spell_the_text(text, expected):
    surfaces = surfaces_for(ascii_only_tokenizer())
    proxies = reencode(surfaces, surfaces.encode("over"), " " + text)
    assert surfaces.join(proxies).strip() == expected


def test_proposal_stops_before_normalised_characters():
    surfaces = surfaces_for(ascii_only_tokenizer(normalizers.NFKC()))
    proxies = reencode(surfaces, surfaces.encode("the"), " fox \ufb01 dog")  # U+FB01 is NFKC-normalised to "fi"
    assert surfaces.join(proxies).strip() == b"fox"


def test_draft_text_stops_before_invalid_bytes(draft):
    ids = draft.encode("中 ok")
    stray = [i for i in ids if draft.bytes_of(i)[0] & 0xC0 == 0x80]  # tokens that start mid-character
    assert stray and draft_text(draft, stray + draft.encode(" ok")) == ""
    assert draft_text(draft, draft.encode("ok ") + stray) == "ok "


def test_held_back_draft_text_never_ends_in_half_a_character(draft):
    ids = draft.encode("ok 中文")
    for n in range(len(ids) + 1):
        text = draft_text(draft, ids[:n])
        assert "\ufffd" not in text and "ok 中文".startswith(text)


# -- resynchronisation ------------------------------------------------------------------------------
@given(prompt=nonempty, rounds=st.lists(st.tuples(texts, st.integers(0, 12), st.integers(0, 40), st.integers(0, 2000)),
                                        min_size=1, max_size=6))
def test_draft_context_always_spells_the_committed_text(target, draft, prompt, rounds):
    """Simulated rounds with arbitrary drafts, acceptances and target tokens (partial characters
    included): after every resync the draft's generated tokens spell exactly the committed text."""
    target_ids, draft_ids = target.encode(prompt), draft.encode(prompt)
    target_prompt, draft_prompt = len(target_ids), len(draft_ids)
    committed, synced = b"", 0
    vocabulary = [i for i in range(len(target.tokenizer)) if i not in target.special_ids]
    for drafted_text, cut, accept, emitted in rounds:
        drafted = reencode(draft, draft_ids, drafted_text, exact=False)[:cut]  # may end mid-character
        proxies = reencode(target, target_ids, draft_text(draft, drafted))
        assert draft_text(draft, drafted).encode().startswith(target.join(proxies)[len(split_incomplete(committed)[1]):]) \
            or not proxies
        new_ids = proxies[:min(accept, len(proxies))] + [vocabulary[emitted % len(vocabulary)]]
        target_ids = target_ids + new_ids
        committed += target.join(new_ids)
        complete = split_incomplete(committed)[0]
        before = draft_ids + drafted
        draft_ids, valid = resync(draft, draft_ids, drafted, complete[synced:])
        synced = len(complete)
        assert draft_ids[:valid] == before[:valid]
        # The draft spells the committed text exactly; bytes that are not valid UTF-8 (a target may write half a
        # character and move on) reach it as U+FFFD.
        assert draft.join(draft_ids[draft_prompt:]).decode("utf-8", errors="replace") == complete.decode("utf-8", errors="replace")
        assert target.join(target_ids[target_prompt:]) == committed


# -- align_text -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", TRICKY)
def test_align_text_on_tricky_text(text):
    alignment = align_text(text, AutoTokenizer.from_pretrained(PAIR["tiny-draft"]),
                           AutoTokenizer.from_pretrained(PAIR["tiny-target"]), band=8)
    k, m = len(alignment.draft_tokens), len(alignment.proxy_tokens)
    assert alignment.cost_matrix.shape == (k, m)
    path = alignment.warping_path.tolist()
    assert path[0] == [0, 0] and path[-1] == [k - 1, m - 1]
    assert all(0 <= b[0] - a[0] <= 1 and 0 <= b[1] - a[1] <= 1 and a != b for a, b in zip(path, path[1:]))
    assert all(alignment.proxy_to_draft)
    labels = "".join(alignment.proxy_tokens)
    assert labels.lstrip() == text.lstrip() or "<0x" in labels  # a byte outside a whole character shows as <0xNN>


def test_align_text_rejects_a_negative_band():
    tokenizer = AutoTokenizer.from_pretrained(PAIR["tiny-draft"])
    with pytest.raises(ValueError):
        align_text("x", tokenizer, tokenizer, band=-1)


# -- the pair table behind align_tokens -------------------------------------------------------------
@pytest.mark.parametrize("side", ["target", "draft"])
def test_vocabulary_bytes_are_each_tokens_surface(side, request):
    surfaces = request.getfixturevalue(side)
    fresh = TokenSurfaces(surfaces.tokenizer)
    in_bulk = surfaces.vocabulary_bytes()
    assert len(in_bulk) == len(surfaces.tokenizer)
    assert in_bulk == [fresh.bytes_of(i) for i in range(len(surfaces.tokenizer))]
    if surfaces.kind == "byte_level":  # and, independently, GPT-2's alphabet read character by character
        alphabet = _byte_level_decoder()
        pieces = surfaces.tokenizer.convert_ids_to_tokens(list(range(len(surfaces.tokenizer))))
        plain = [(n, piece) for n, piece in enumerate(pieces) if n not in surfaces.special_ids and set(piece) <= set(alphabet)]
        assert len(plain) > 0.9 * len(pieces)
        assert all(in_bulk[n] == bytes(alphabet[c] for c in piece) for n, piece in plain)


@given(texts, texts, st.integers(0, 4))
def test_align_tokens_equals_dtw_on_the_normalised_strings(target, draft, draft_source, proxy_source, band):
    draft_ids, proxy_ids = draft.encode(draft_source), target.encode(proxy_source)
    alignment = align_tokens(draft, draft_ids, target, proxy_ids, band)
    cost, path = dtw.align_strings([draft.normalised_of(i) for i in draft_ids],
                                   [target.normalised_of(i) for i in proxy_ids], band)
    assert alignment.cost_matrix.tolist() == cost.tolist()
    assert alignment.warping_path.tolist() == path.tolist()


def test_ids_past_the_tokenizer_align_as_empty_tokens(target, draft):
    """A model's vocabulary can be padded past its tokenizer's; such an id spells nothing."""
    proxies = target.encode("def foo")
    past = len(draft.tokenizer) + 7
    alignment = align_tokens(draft, draft.encode("def") + [past], target, proxies, 8)
    lengths = [len(target.normalised_of(i)) for i in proxies]
    assert alignment.cost_matrix[-1].tolist() == lengths  # edits from "" to each proxy
    assert alignment.warping_path[-1].tolist() == [len(draft.encode("def")), len(proxies) - 1]
    again = align_tokens(draft, draft.encode("def foo"), target, proxies, 8)  # and the rest still aligns
    assert again.warping_path[-1].tolist() == [len(draft.encode("def foo")) - 1, len(proxies) - 1]


def test_concurrent_alignments_do_not_mix(target, draft):
    """The app may align (playground, API) while a generation runs: one shared table, no crossed ids."""
    previous = sys.getswitchinterval()
    sources = ["def foo(x):\n    return x", "中文 😀 ok", "    for i in range(10):", "naïve café, déjà vu"]
    pairs = [(draft.encode(text), target.encode(text)) for text in sources]
    expected = [align_tokens(draft, d, target, t, 8).warping_path.tolist() for d, t in pairs]
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        with ThreadPoolExecutor(4) as pool:
            found = list(pool.map(lambda pair: align_tokens(draft, pair[0], target, pair[1], 8).warping_path.tolist(),
                                  pairs * 50))
    finally:
        sys.setswitchinterval(previous)
    assert found == expected * 50
