"""Token surfaces: the exact bytes each token id of a tokenizer contributes mid-sequence.

No torch here. Everything downstream works on these bytes, so incremental decoding is concatenation and
a half-written UTF-8 character is visible as trailing bytes instead of a U+FFFD. Two views of a token's
bytes are strings: the symbols DTW compares (:func:`symbols_of`) and a display label (:func:`label_of`);
neither turns a byte into U+FFFD, so different bytes never look alike.
"""

from __future__ import annotations

import json
import re
import weakref
from functools import lru_cache

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SPACE_MARKERS = ("Ġ", "▁")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what "surrogateescape" makes of a byte outside a whole character


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


def is_char_start(data: bytes, pos: int) -> bool:
    return pos >= len(data) or data[pos] & 0xC0 != 0x80


def normalise(text: str) -> str:
    """The string DTW compares: leading spaces stripped (the space marker), unless nothing is left."""
    return text.lstrip(" ") or text


def symbols_of(piece: bytes) -> str:
    """The string DTW compares for a token's bytes (normalised): one symbol per whole UTF-8 character, and
    one per byte outside a whole character, as the lone surrogate U+DC00 + byte.

    Decoding with "replace" would make every such byte U+FFFD, so any two byte pieces of different characters
    would match at cost 0; a lone surrogate equals no character and no other byte.
    """
    return normalise(piece.decode("utf-8", errors="surrogateescape"))


def label_of(piece: bytes) -> str:
    """Display string of a token's bytes: whole characters as themselves, other bytes as ``<0xE4>``."""
    text = piece.decode("utf-8", errors="surrogateescape")
    return _ESCAPED_BYTE.sub(lambda byte: f"<0x{ord(byte.group()) - 0xDC00:02X}>", text)


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
        self._labels: dict[int, str] = {}
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
        """Whether the pieces' bytes spell what the tokenizer encoded: the sample itself, or the sample as the
        tokenizer's normalizer rewrites it (NFKC, lowercasing: pieces spell the normalised text, byte for byte)."""
        samples = ["def f(x):\n\treturn x  # ok", " Hello, world!", "中文 😀 café"]
        normalizer = getattr(self.backend, "normalizer", None)
        for sample in samples:
            joined = self.join(self.encode(sample))
            spelled = {sample.encode()}
            if normalizer is not None:
                spelled.add(normalizer.normalize_str(sample).encode())
            if joined not in spelled and joined.removeprefix(self.dummy_prefix) not in spelled:
                return False
        return True

    def join(self, ids) -> bytes:
        return b"".join(self.bytes_of(i) for i in ids)

    def text_of(self, token_id: int) -> str:
        """Display string of one token: bytes of a partial UTF-8 character show as ``<0xE4>`` (see
        :func:`label_of`). A label, not text: the text of several tokens is their :meth:`join` decoded."""
        label = self._labels.get(token_id)
        if label is None:
            label = self._labels[token_id] = label_of(self.bytes_of(token_id))
        return label

    def normalised_of(self, token_id: int) -> str:
        """The token string DTW compares (see :func:`symbols_of`)."""
        text = self._normalised.get(token_id)
        if text is None:
            text = self._normalised[token_id] = symbols_of(self.bytes_of(token_id))
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
