"""One table of both vocabularies' token strings per draft/target pair, for the DTW kernel."""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from . import dtw
from .surfaces import TokenSurfaces, symbols_of


class PairTable:
    """Both tokenizers' token symbols (:func:`symbols_of`) as code points in one int64 array, for
    :func:`dtw.align`.

    ``table[id]`` holds a draft token's span and ``table[b_offset + id]`` a target token's (see
    :mod:`tokentiming.core.dtw`), pointing at code points stored behind the entries. Every token of both
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
            [[symbols_of(piece) for piece in surfaces.vocabulary_bytes(size)]
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
