"""Byte-true alignment: DTW compares token bytes, so pieces of different multi-byte characters never match,
and every token label is legible (no U+FFFD)."""

import os

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tokentiming import align_text
from tokentiming.core.alignment import align_tokens
from tokentiming.core.reencode import encode_bare
from tokentiming.core.surfaces import _byte_level_decoder, label_of, surfaces_for
from tokentiming.models import LOCAL_PRESETS

PAIR = {name: os.environ.get(f"TOKENTIMING_TEST_{name.upper().replace('-', '_')}", str(path))
        for name, path in LOCAL_PRESETS.items()}
# Japanese, a ZWJ emoji sequence (woman, ZWJ, woman, ZWJ, girl) and Arabic: each written in byte pieces.
SCRIPTS = ["日本語の文章です。", "👩\u200d👩\u200d👧", "مرحبا بالعالم", "家族: 👩\u200d👩\u200d👧 and مرحبا 日本"]


@pytest.fixture(scope="module")
def tiny_pair():
    """(draft tokenizer, target tokenizer): byte-level BPE and SentencePiece-style with byte fallback."""
    return AutoTokenizer.from_pretrained(PAIR["tiny-draft"]), AutoTokenizer.from_pretrained(PAIR["tiny-target"])


def byte_level_tokenizer():
    """GPT-2-style byte-level BPE knowing every byte, with three merges: 'é' whole (C3 A9), the first two
    bytes of '世' (E4 B8) and 'a' with the lead byte of 'é' (61 C3)."""
    char = {byte: c for c, byte in _byte_level_decoder().items()}  # GPT-2's printable stand-in for each byte
    vocab = {char[byte]: byte for byte in range(256)}
    merges = [(char[0x61], char[0xC3]), (char[0xC3], char[0xA9]), (char[0xE4], char[0xB8])]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def byte_fallback_tokenizer():
    """SentencePiece-style (Metaspace, '▁' for spaces) with byte fallback; it knows 'é' but not '世'."""
    vocab = {"<unk>": 0, **{f"<0x{byte:02X}>": 1 + byte for byte in range(256)}, "▁": 257, "é": 258, "a": 259}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")


def stripped(piece: bytes) -> bytes:
    """Bytes with the leading-space normalisation DTW applies (a space marker is not a difference)."""
    return piece.lstrip(b" ") or piece


def is_whole(piece: bytes) -> bool:
    try:
        piece.decode()
        return True
    except UnicodeDecodeError:
        return False


def check_cost_is_byte_true(cost, draft_pieces, proxy_pieces):
    """Cost 0 exactly where the (normalised) bytes are equal, and the text really has byte pieces to confuse."""
    equal = np.array([[stripped(a) == stripped(b) for b in proxy_pieces] for a in draft_pieces])
    assert cost.shape == equal.shape
    pieces = [(i, j) for i, a in enumerate(draft_pieces) for j, b in enumerate(proxy_pieces)
              if not is_whole(a) and not is_whole(b)]
    assert any(not equal[i, j] for i, j in pieces), "the text should put different byte pieces side by side"
    assert any(equal[i, j] for i, j in pieces), "and identical byte pieces too"
    different = [(i, j, draft_pieces[i], proxy_pieces[j]) for i, j in zip(*np.nonzero(~equal)) if cost[i, j] == 0]
    assert not different, f"different bytes aligned at cost 0: {different[:5]}"
    assert (cost[equal] == 0).all(), "identical bytes must cost 0"


@pytest.mark.parametrize("text", SCRIPTS)
def test_align_text_does_not_match_different_byte_pieces_at_zero_cost(tiny_pair, text):
    """Before: every byte piece decoded to U+FFFD, so a Japanese sentence aligned as a wall of zero-cost cells."""
    draft_tokenizer, target_tokenizer = tiny_pair
    alignment = align_text(text, draft_tokenizer, target_tokenizer, band=8, full_matrix=True)  # every cell
    draft, target = surfaces_for(draft_tokenizer), surfaces_for(target_tokenizer)
    check_cost_is_byte_true(alignment.cost_matrix, [draft.bytes_of(i) for i in alignment.draft_token_ids],
                            [target.bytes_of(i) for i in alignment.proxy_token_ids])


@pytest.mark.parametrize("text", SCRIPTS)
def test_pair_table_does_not_match_different_byte_pieces_at_zero_cost(tiny_pair, text):
    """The decoder's path (one table of both vocabularies) compares bytes the same way."""
    draft, target = map(surfaces_for, tiny_pair)
    draft_ids, proxy_ids = encode_bare(draft, text), encode_bare(target, text)
    alignment = align_tokens(draft, draft_ids, target, proxy_ids, 8)
    check_cost_is_byte_true(alignment.cost_matrix, [draft.bytes_of(i) for i in draft_ids],
                            [target.bytes_of(i) for i in proxy_ids])


@pytest.mark.parametrize("text", SCRIPTS)
def test_alignment_labels_show_bytes_instead_of_replacement_characters(tiny_pair, text):
    alignment = align_text(text, *tiny_pair, band=8)
    draft, target = map(surfaces_for, tiny_pair)
    for surfaces, ids, labels in ((draft, alignment.draft_token_ids, alignment.draft_tokens),
                                  (target, alignment.proxy_token_ids, alignment.proxy_tokens)):
        assert not any("\ufffd" in label for label in labels)
        for token_id, label in zip(ids, labels):
            piece = surfaces.bytes_of(token_id)
            expected = piece.decode() if is_whole(piece) else None
            assert label == expected or (expected is None and "<0x" in label), (piece, label)


@pytest.mark.parametrize("side", [0, 1])
def test_no_token_label_of_either_tiny_vocabulary_is_a_replacement_character(tiny_pair, side):
    surfaces = surfaces_for(tiny_pair[side])
    for token_id in range(len(surfaces.tokenizer)):
        piece = surfaces.bytes_of(token_id)
        assert "\ufffd" not in surfaces.text_of(token_id) or "\ufffd".encode() in piece, (token_id, piece)


def test_labels_spell_stray_bytes_in_hex():
    assert label_of(b"\xe4") == "<0xE4>"
    assert label_of(b"a\xe4\xb8") == "a<0xE4><0xB8>"  # a whole character, then the start of an unfinished one
    assert label_of(b"\xb8\x96ok") == "<0xB8><0x96>ok"  # the end of a character begun by an earlier token
    assert label_of("é世 ok".encode()) == "é世 ok"


def test_a_token_of_a_whole_character_and_a_partial_one_is_labelled_both_ways():
    surfaces = surfaces_for(byte_level_tokenizer())
    ids = surfaces.encode("aé")
    assert [surfaces.bytes_of(i) for i in ids] == [b"a\xc3", b"\xa9"]
    assert [surfaces.text_of(i) for i in ids] == ["a<0xC3>", "<0xA9>"]
    assert surfaces.join(ids).decode() == "aé"  # the text itself stays exact


# "é世" is C3 A9 | E4 B8 96. The byte-level tokenizer writes é | E4 B8 | 96, the byte-fallback one
# é | E4 | B8 | 96 (after its dummy-prefix space, which encode_bare drops). Local costs by hand (edit distance
# in symbols, a stray byte being one symbol):
#                  é   E4  B8  96
EXPECTED_COST = [[0, 1, 1, 1],   # é
                 [2, 1, 1, 2],   # E4 B8: two symbols
                 [1, 1, 1, 0]]   # 96
# Cumulative costs D: [0 1 2 3], [2 1 2 4], [3 2 2 2]. Backtracking from (2, 3): diagonal D[1, 2] = 2 ties
# left D[2, 2] = 2, the diagonal wins; from (1, 2): diagonal D[0, 1] = 1 ties left D[1, 1] = 1, diagonal
# again; from (0, 1) only left is finite.
EXPECTED_PATH = [[0, 0], [0, 1], [1, 2], [2, 3]]


def test_hand_computed_alignment_of_e_acute_and_a_cjk_character():
    draft_tokenizer, target_tokenizer = byte_level_tokenizer(), byte_fallback_tokenizer()
    draft, target = surfaces_for(draft_tokenizer), surfaces_for(target_tokenizer)
    assert (draft.kind, target.kind) == ("byte_level", "metaspace")
    alignment = align_text("é世", draft_tokenizer, target_tokenizer, band=8)
    assert [draft.bytes_of(i) for i in alignment.draft_token_ids] == [b"\xc3\xa9", b"\xe4\xb8", b"\x96"]
    assert [target.bytes_of(i) for i in alignment.proxy_token_ids] == [b"\xc3\xa9", b"\xe4", b"\xb8", b"\x96"]
    assert alignment.cost_matrix.tolist() == EXPECTED_COST
    assert alignment.warping_path.tolist() == EXPECTED_PATH
    assert alignment.path_cost == 2
    assert alignment.draft_tokens == ["é", "<0xE4><0xB8>", "<0x96>"]
    assert alignment.proxy_tokens == ["é", "<0xE4>", "<0xB8>", "<0x96>"]
    by_table = align_tokens(draft, alignment.draft_token_ids, target, alignment.proxy_token_ids, 8)
    assert by_table.cost_matrix.tolist() == EXPECTED_COST
    assert by_table.warping_path.tolist() == EXPECTED_PATH
