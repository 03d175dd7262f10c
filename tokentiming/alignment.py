"""Text and tokens between two tokenizers: surfaces, re-encoding, resynchronisation, DTW alignment.

No torch here. Everything works on the exact *bytes* each token id contributes in the middle of a
sequence (its surface), so incremental decoding is concatenation and a half-written UTF-8 character
is visible as trailing bytes instead of a U+FFFD.
"""

from __future__ import annotations

import json
import re
import threading
import time
import weakref
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from . import dtw

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SPACE_MARKERS = ("Ġ", "▁")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable-character alphabet for bytes, inverted (``Ġ`` -> 0x20)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


@lru_cache(maxsize=1)
def _byte_level_pieces():
    """A pattern matching pieces written wholly in that alphabet, and a table for ``str.translate``
    taking them to one character per byte (``piece.translate(table).encode("latin-1")`` is the bytes)."""
    decoder = _byte_level_decoder()
    alphabet = re.compile("[" + "".join(map(re.escape, decoder)) + "]*")
    return alphabet, str.maketrans({char: chr(byte) for char, byte in decoder.items()})


def split_incomplete(data: bytes) -> tuple[bytes, bytes]:
    """Split ``data`` into (complete UTF-8 prefix, trailing bytes of an unfinished character)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        need = 1 if byte < 0x80 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return (data[:-back], data[-back:]) if need > back else (data, b"")
    return data, b""


def _is_char_start(data: bytes, pos: int) -> bool:
    return pos >= len(data) or data[pos] & 0xC0 != 0x80


def normalise(text: str) -> str:
    """The string DTW compares: leading spaces stripped (the space marker), unless nothing is left."""
    return text.lstrip(" ") or text


class TokenSurfaces:
    """Exact bytes each token id of one tokenizer contributes mid-sequence, cached per id.

    Byte-level BPE pieces are mapped through GPT-2's byte alphabet, SentencePiece pieces by
    turning "▁" into a space and ``<0xNN>`` into the byte NN; any other tokenizer falls back to
    decoding the token behind a plain anchor token. Special and added tokens spell their content.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.special_ids = frozenset(tokenizer.all_special_ids) | frozenset(
            i for i, t in tokenizer.added_tokens_decoder.items() if t.special)
        self._added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        self.kind = self._decoder_kind()  # "byte_level", "metaspace" or "decode"
        self._bytes: dict[int, bytes] = {}
        self._normalised: dict[int, str] = {}
        self._anchor = None
        self.dummy_prefix = b""
        probe = self.encode("a")
        joined = self.join(probe)
        if joined != b"a" and joined.endswith(b"a"):
            self.dummy_prefix = joined[:-1]
        if not self._round_trips():
            self.kind = "decode"
            self._bytes.clear()

    # -- surfaces -------------------------------------------------------------------------------
    def _decoder_kind(self) -> str:
        decoder = getattr(self.backend, "decoder", None)
        if decoder is None:
            return "decode"
        state = json.dumps(json.loads(decoder.__getstate__()))
        if '"ByteLevel"' in state:
            return "byte_level"
        if '"Metaspace"' in state or '"\\u2581"' in state:
            return "metaspace"
        return "decode"

    def bytes_of(self, token_id: int) -> bytes:
        """The bytes ``token_id`` adds to a text when it follows other tokens."""
        cached = self._bytes.get(token_id)
        if cached is None:
            cached = self._bytes[token_id] = self._compute_bytes(int(token_id))
        return cached

    def _compute_bytes(self, token_id: int) -> bytes:
        return self._piece_bytes(token_id, self.tokenizer.convert_ids_to_tokens(token_id))

    def vocabulary_bytes(self, size: int | None = None) -> list[bytes]:
        """:meth:`bytes_of` every id below ``size`` (``len(tokenizer)``), computed in bulk and not cached."""
        ids = list(range(len(self.tokenizer) if size is None else size))
        return [self._piece_bytes(i, piece) for i, piece in zip(ids, self.tokenizer.convert_ids_to_tokens(ids))]

    def _piece_bytes(self, token_id: int, piece: str | None) -> bytes:
        if piece is None:
            return b""
        byte = self.kind != "byte_level" and _BYTE_PIECE.match(piece)
        if byte:
            return bytes([int(byte.group(1), 16)])
        if token_id in self._added:
            return self._added[token_id].encode()
        if self.kind == "byte_level":
            alphabet, to_bytes = _byte_level_pieces()
            if alphabet.fullmatch(piece):
                return piece.translate(to_bytes).encode("latin-1")
        elif self.kind == "metaspace":
            return piece.replace("▁", " ").encode()
        return self._decode_behind_anchor(token_id)

    def _decode_behind_anchor(self, token_id: int) -> bytes:
        if self._anchor is None:
            ids = self.tokenizer.encode("a", add_special_tokens=False)
            self._anchor = (ids[-1:], self.tokenizer.decode(ids[-1:]))
        anchor_ids, anchor_text = self._anchor
        text = self.tokenizer.decode(anchor_ids + [token_id], clean_up_tokenization_spaces=False)
        return text[len(anchor_text):].encode() if text.startswith(anchor_text) else text.encode()

    def _round_trips(self) -> bool:
        samples = ["def f(x):\n\treturn x  # ok", " Hello, world!", "中文 😀 café"]
        for sample in samples:
            joined = self.join(self.encode(sample))
            if joined.removeprefix(self.dummy_prefix) != sample.encode() and joined != sample.encode():
                return False
        return True

    def join(self, ids) -> bytes:
        return b"".join(self.bytes_of(i) for i in ids)

    def text_of(self, token_id: int) -> str:
        """Display string of one token (a partial UTF-8 character shows as U+FFFD)."""
        return self.bytes_of(token_id).decode("utf-8", errors="replace")

    def normalised_of(self, token_id: int) -> str:
        """The token string DTW compares (see :func:`normalise`)."""
        text = self._normalised.get(token_id)
        if text is None:
            text = self._normalised[token_id] = normalise(self.text_of(token_id))
        return text

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Plain-text encoding: no BOS/EOS, and special-token names in the text stay text."""
        if self.backend is None:
            return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        previous = self.backend.encode_special_tokens
        self.backend.encode_special_tokens = True
        try:
            return self.backend.encode(text, add_special_tokens=False).ids
        finally:
            self.backend.encode_special_tokens = previous


_SURFACES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def surfaces_for(tokenizer) -> TokenSurfaces:
    """The (shared, cached) surfaces of ``tokenizer``."""
    surfaces = _SURFACES.get(tokenizer)
    if surfaces is None:
        surfaces = _SURFACES[tokenizer] = TokenSurfaces(tokenizer)
    return surfaces


# -- re-encoding ------------------------------------------------------------------------------------
def look_behind(surfaces: TokenSurfaces, ids: list[int], window: int) -> list[int]:
    """The last ``window`` ids, starting on a character boundary and after any special token."""
    start = max(0, len(ids) - window)
    for position in range(len(ids) - 1, start - 1, -1):
        if ids[position] in surfaces.special_ids:
            start = position + 1
            break
    while start < len(ids) and not _is_char_start(surfaces.bytes_of(ids[start]), 0):
        start += 1
    return ids[start:]


def spelled_prefix(surfaces: TokenSurfaces, ids: list[int], goal: bytes) -> list[int]:
    """The longest prefix of ``ids`` whose bytes spell a prefix of ``goal`` (no special tokens)."""
    position = 0
    for n, token_id in enumerate(ids):
        piece = surfaces.bytes_of(token_id)
        if not piece or token_id in surfaces.special_ids or goal[position:position + len(piece)] != piece:
            return ids[:n]
        position += len(piece)
    return list(ids)


def reencode(surfaces: TokenSurfaces, context_ids: list[int], text: str, window: int = 6,
             exact: bool = True) -> list[int]:
    """Token ids this tokenizer would write for ``text`` right after ``context_ids``.

    ``text`` continues the context's text; if the context ends in the middle of a UTF-8
    character, ``text`` starts with that whole character (else nothing is returned). The text is
    encoded behind a look-behind window of the context so merges and dummy-prefix spaces at the
    boundary come out as the tokenizer makes them. With ``exact`` the result is cut before the first
    token whose bytes differ from the text (unknown characters, normalisation): its bytes are
    always a prefix of the text's.
    """
    tail = look_behind(surfaces, context_ids, window)
    tail_bytes = surfaces.join(tail)
    complete, pending = split_incomplete(tail_bytes)
    data = text.encode()
    if not data.startswith(pending) or len(data) == len(pending):
        return []
    goal = data[len(pending):]
    ids = _encode_after(surfaces, tail_bytes, complete.decode("utf-8", errors="replace") + text)
    if ids is None:
        if pending:
            return []
        ids = _encode_bare(surfaces, text)
    return spelled_prefix(surfaces, ids, goal) if exact else ids


def _encode_after(surfaces: TokenSurfaces, tail_bytes: bytes, text: str) -> list[int] | None:
    """Encode ``text`` (tail + new text) and return the tokens after the tail, if one boundary fits."""
    encoded = surfaces.encode(text)
    for lead in dict.fromkeys((0, len(surfaces.dummy_prefix))):
        position = 0
        for n, token_id in enumerate(encoded):
            if position == lead + len(tail_bytes):
                prefix = surfaces.join(encoded[:n])
                if prefix[lead:] == tail_bytes and not prefix[:lead].strip():
                    return encoded[n:]
                break
            if position > lead + len(tail_bytes):
                break
            position += len(surfaces.bytes_of(token_id))
    return None


def _encode_bare(surfaces: TokenSurfaces, text: str) -> list[int]:
    """Encode ``text`` with no context, dropping a lone dummy-prefix token if the tokenizer adds one."""
    ids = surfaces.encode(text)
    if ids and surfaces.dummy_prefix and surfaces.bytes_of(ids[0]) == surfaces.dummy_prefix \
            and not text.startswith(surfaces.dummy_prefix.decode()):
        ids = ids[1:]
    return ids


def draft_text(surfaces: TokenSurfaces, draft_ids: list[int]) -> str:
    """Text of freshly drafted tokens: it holds back an unfinished UTF-8 character at the end and stops
    before any byte that is not valid UTF-8 (never propose a U+FFFD the draft did not write)."""
    complete, _ = split_incomplete(surfaces.join(draft_ids))
    try:
        return complete.decode()
    except UnicodeDecodeError as error:
        return complete[:error.start].decode()


def tokens_covering(surfaces: TokenSurfaces, ids: list[int], length: int) -> int:
    """How many leading ``ids`` are needed to cover the first ``length`` bytes of their text."""
    position = 0
    for n, token_id in enumerate(ids):
        if position >= length:
            return n
        position += len(surfaces.bytes_of(token_id))
    return len(ids)


def kept_draft_prefix(surfaces: TokenSurfaces, drafted: list[int], committed: bytes) -> int:
    """Length of the longest prefix of ``drafted`` whose bytes are a prefix of ``committed`` and end
    on a character boundary of it (the draft tokens that survive a round)."""
    position = 0
    keep = 0
    for n, token_id in enumerate(drafted, start=1):
        piece = surfaces.bytes_of(token_id)
        if committed[position:position + len(piece)] != piece:
            break
        position += len(piece)
        if not split_incomplete(committed[:position])[1]:  # ends on a whole character
            keep = n
    return keep


def resync(surfaces: TokenSurfaces, context_ids: list[int], drafted: list[int], committed: bytes,
           window: int = 6) -> tuple[list[int], int]:
    """The draft context after a round, resynchronised by characters, not token counts.

    ``context_ids`` is the draft context before drafting, ``drafted`` the tokens drafted after it
    and ``committed`` the text the target committed this round (whole characters). Keeps the drafted
    tokens that spell the start of ``committed`` and encodes the rest behind them. Returns the new
    ids and how many leading ids are unchanged (the draft's KV cache stays valid up to there).
    """
    keep = kept_draft_prefix(surfaces, drafted, committed)
    kept = list(context_ids) + list(drafted[:keep])
    rest = committed[len(surfaces.join(drafted[:keep])):]
    extra = reencode(surfaces, kept, rest.decode("utf-8", errors="replace"), window, exact=False) if rest else []
    return kept + extra, len(kept)


def proxy_to_draft(warping_path: np.ndarray, proxies: int) -> list[list[int]]:
    """For each of ``proxies`` proxy tokens, the draft token indices the warping path maps it to."""
    mapping: list[list[int]] = [[] for _ in range(proxies)]
    for i, j in warping_path:
        mapping[j].append(int(i))
    return mapping


# -- alignment ----------------------------------------------------------------------------------------
@dataclass
class Alignment:
    """Two tokenisations of one text and their DTW alignment."""

    draft_token_ids: list[int]
    draft_tokens: list[str]
    proxy_token_ids: list[int]
    proxy_tokens: list[str]
    cost_matrix: np.ndarray  # (k, m) Levenshtein distances
    warping_path: np.ndarray  # (L, 2) pairs (draft index, proxy index)
    band: int
    align_us: float = field(default=0.0)

    @property
    def proxy_to_draft(self) -> list[list[int]]:
        """For each proxy token, the draft token indices it is aligned with."""
        return proxy_to_draft(self.warping_path, len(self.proxy_token_ids))

    @property
    def path_cost(self) -> float:
        return float(sum(self.cost_matrix[i, j] for i, j in self.warping_path))


class PairTable:
    """Both tokenizers' normalised token strings as code points in one int64 array, for
    :func:`dtw.align`.

    ``table[id]`` holds a draft token's span and ``table[b_offset + id]`` a target token's (see
    :mod:`tokentiming.dtw`), pointing at code points stored behind the entries. Every token of both
    vocabularies is stored up front (a fraction of a second, once per pair), so a round never stops to
    convert strings. The rounds' own cost is set by the CPU caches: a forward pass has just swept them,
    and every Python and numpy object touched is a trip to memory. So one compiled call does the lookups
    and the alignment, and the ids reach it through a buffer written via a memoryview instead of a new
    array per round.
    """

    def __init__(self, draft: TokenSurfaces, target: TokenSurfaces):
        self.draft, self.target = draft, target
        self.lock = threading.Lock()
        self._ids_buffer(256)
        self._build(len(draft.tokenizer), len(target.tokenizer))
        self.kernel = dtw.without_dispatch(dtw.align, self.table, self.ids, 0, 0, 0, 0, 0)

    def _build(self, draft_vocab: int, target_vocab: int) -> None:
        """Store the tokens with ids below these sizes (ids past a tokenizer's end spell nothing)."""
        self.table, (_, self.b_offset, self.b_end) = dtw.table_of(
            [[normalise(piece.decode("utf-8", errors="replace")) for piece in surfaces.vocabulary_bytes(size)]
             for surfaces, size in ((self.draft, draft_vocab), (self.target, target_vocab))])

    def _ids_buffer(self, size: int) -> None:
        self.ids = np.zeros(size, dtype=np.int64)
        self.ids_view = memoryview(self.ids).cast("B").cast("q")

    def align(self, draft_ids: list[int], proxy_ids: list[int], band: int):
        """(cost matrix, warping path) between the draft tokens and the proxy tokens."""
        with self.lock:
            k, n = len(draft_ids), len(draft_ids) + len(proxy_ids)
            if n > len(self.ids):
                self._ids_buffer(2 * n)
            view = self.ids_view
            for position, token_id in enumerate(draft_ids + proxy_ids):
                view[position] = token_id
            cost, path = self.kernel(self.table, self.ids, k, n, self.b_offset, self.b_end, int(band))
            if not path.size and k and n > k:  # an id past the table (a model's padded vocabulary): widen it
                draft_vocab, target_vocab = self.b_offset, self.b_end - self.b_offset
                self._build(max(draft_vocab, max(draft_ids) + 1), max(target_vocab, max(proxy_ids) + 1))
                cost, path = self.kernel(self.table, self.ids, k, n, self.b_offset, self.b_end, int(band))
            return cost, path


@lru_cache(maxsize=8)
def pair_table(draft: TokenSurfaces, target: TokenSurfaces) -> PairTable:
    """The (shared, cached) table of a draft/target pair."""
    return PairTable(draft, target)


def align_tokens(draft_surfaces: TokenSurfaces, draft_ids: list[int], target_surfaces: TokenSurfaces,
                 proxy_ids: list[int], band: int = 8) -> Alignment:
    """DTW between draft tokens and proxy tokens (Levenshtein local cost, Sakoe-Chiba band), through the
    pair's :class:`PairTable`: the decoding loop's path."""
    start = time.perf_counter()
    cost, path = pair_table(draft_surfaces, target_surfaces).align(draft_ids, proxy_ids, band)
    return _alignment(draft_surfaces, draft_ids, target_surfaces, proxy_ids, band, cost, path, start)


def align_text(text: str, draft_tokenizer, target_tokenizer, band: int = 8) -> Alignment:
    """Tokenise ``text`` with both tokenizers and align the two token sequences with DTW.

    A one-off: it compares the strings of just these tokens and builds no pair table."""
    if band < 0:
        raise ValueError(f"band must be >= 0, got {band}")
    draft, target = surfaces_for(draft_tokenizer), surfaces_for(target_tokenizer)
    draft_ids, proxy_ids = _encode_bare(draft, text), _encode_bare(target, text)
    start = time.perf_counter()
    cost, path = dtw.align_strings([draft.normalised_of(i) for i in draft_ids],
                                   [target.normalised_of(i) for i in proxy_ids], band)
    return _alignment(draft, draft_ids, target, proxy_ids, band, cost, path, start)


def _alignment(draft: TokenSurfaces, draft_ids: list[int], target: TokenSurfaces, proxy_ids: list[int], band: int,
               cost: np.ndarray, path: np.ndarray, start: float) -> Alignment:
    elapsed_us = (time.perf_counter() - start) * 1e6
    return Alignment(
        draft_token_ids=list(draft_ids),
        draft_tokens=[draft.text_of(i) for i in draft_ids],
        proxy_token_ids=list(proxy_ids),
        proxy_tokens=[target.text_of(i) for i in proxy_ids],
        cost_matrix=cost, warping_path=path, band=band, align_us=elapsed_us)


# -- pair facts ---------------------------------------------------------------------------------------
TOKENIZER_FAMILIES = {"byte_level": "byte-level BPE (Ġ)", "metaspace": "SentencePiece-style (▁)",
                      "decode": "other (surfaces by decoding)"}


def vocabulary_strings(surfaces: TokenSurfaces) -> set[str]:
    """Every ordinary token's string with space markers turned into spaces (special tokens left out)."""
    return {piece.decode("utf-8", errors="replace") for i, piece in enumerate(surfaces.vocabulary_bytes())
            if i not in surfaces.special_ids}


def pair_facts(draft_tokenizer, target_tokenizer) -> dict:
    """Vocabulary sizes, their exact-string overlap, tokenizer families, and whether they are one tokenizer."""
    draft, target = surfaces_for(draft_tokenizer), surfaces_for(target_tokenizer)
    draft_strings, target_strings = vocabulary_strings(draft), vocabulary_strings(target)
    overlap = len(draft_strings & target_strings)
    same = draft_tokenizer.get_vocab() == target_tokenizer.get_vocab()
    return {
        "draft_vocab": len(draft_tokenizer),
        "target_vocab": len(target_tokenizer),
        "overlap": overlap,
        "overlap_of_draft": overlap / max(1, len(draft_strings)),
        "overlap_of_target": overlap / max(1, len(target_strings)),
        "draft_family": TOKENIZER_FAMILIES[draft.kind],
        "target_family": TOKENIZER_FAMILIES[target.kind],
        "same_tokenizer": same,
    }
