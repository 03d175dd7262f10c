"""DTW alignment of two tokenisations of one text: the :class:`Alignment` record and the two ways to
make one (a decoding round's draft and proxy tokens, or any text through both tokenizers)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import dtw
from .pairtable import pair_table
from .reencode import encode_bare
from .surfaces import TokenSurfaces, surfaces_for


def proxy_to_draft(warping_path: np.ndarray, proxies: int) -> list[list[int]]:
    """For each of ``proxies`` proxy tokens, the draft token indices the warping path maps it to."""
    mapping: list[list[int]] = [[] for _ in range(proxies)]
    for i, j in warping_path:
        mapping[j].append(int(i))
    return mapping


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
    draft_ids, proxy_ids = encode_bare(draft, text), encode_bare(target, text)
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
