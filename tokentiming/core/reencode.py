"""Re-encoding draft text into target tokens, and resynchronising the draft context by characters.

No torch here: both work on token surfaces (:mod:`tokentiming.core.surfaces`).
"""

from __future__ import annotations

from .surfaces import TokenSurfaces, is_char_start, split_incomplete

def look_behind(surfaces: TokenSurfaces, ids: list[int], window: int) -> list[int]:
    """The last ``window`` ids, starting on a character boundary and after any special token."""
    start = max(0, len(ids) - window)
    for position in range(len(ids) - 1, start - 1, -1):
        if ids[position] in surfaces.special_ids:
            start = position + 1
            break
    while start < len(ids) and not is_char_start(surfaces.bytes_of(ids[start]), 0):
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
        ids = encode_bare(surfaces, text)
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


def encode_bare(surfaces: TokenSurfaces, text: str) -> list[int]:
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
