"""DTW alignment of two tokenisations of one text: the :class:`Alignment` record and the two ways to
make one (a decoding round's draft and proxy tokens, or any text through both tokenizers).

A round's alignment is small and keeps its whole cost matrix. A text's alignment keeps only the cells inside
the Sakoe-Chiba band (:class:`BandedCosts`): a long text's memory and payload grow with its length times the
band, not with the product of both token counts. ``align_text(..., full_matrix=True)`` computes every cell of a
short text instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import dtw
from .pairtable import pair_table
from .reencode import encode_bare
from .surfaces import TokenSurfaces, surfaces_for

#: The most cells (draft tokens x proxy tokens) ever held as a dense (k, m) matrix: 2 MB of float64.
FULL_MATRIX_CELLS = 250_000


def proxy_to_draft(warping_path: np.ndarray, proxies: int) -> list[list[int]]:
    """For each of ``proxies`` proxy tokens, the draft token indices the warping path maps it to."""
    mapping: list[list[int]] = [[] for _ in range(proxies)]
    for i, j in warping_path:
        mapping[j].append(int(i))
    return mapping


@dataclass(frozen=True)
class BandedCosts:
    """The local costs inside the band, row by row (see :func:`dtw.band_rows`): draft token i's cells are proxy
    tokens ``first_proxy[i]`` onwards, with costs ``costs[offsets[i]:offsets[i + 1]]``."""

    first_proxy: np.ndarray  # (k,) int64
    offsets: np.ndarray  # (k + 1,) int64
    costs: np.ndarray  # (cells,) uint16 edit distances

    def row(self, i: int) -> tuple[int, np.ndarray]:
        """(first proxy index, costs) of draft token i's in-band cells."""
        return int(self.first_proxy[i]), self.costs[self.offsets[i]:self.offsets[i + 1]]


@dataclass
class Alignment:
    """Two tokenisations of one text and their DTW alignment.

    The local costs are held dense (``dense_costs``: a round's alignment, or ``align_text(full_matrix=True)``)
    or banded (``banded_costs``: ``align_text``'s default, the cells inside the band). :meth:`cost_window`,
    :attr:`path_costs` and :meth:`banded_cells` read either; :attr:`cost_matrix` is the dense (k, m) view,
    refused for a banded alignment past ``FULL_MATRIX_CELLS`` cells.
    """

    draft_token_ids: list[int]
    draft_tokens: list[str]
    proxy_token_ids: list[int]
    proxy_tokens: list[str]
    warping_path: np.ndarray  # (L, 2) pairs (draft index, proxy index)
    band: int
    align_us: float = field(default=0.0)
    dense_costs: np.ndarray | None = None  # (k, m) Levenshtein distances, every cell
    banded_costs: BandedCosts | None = None  # the same distances, inside the band only

    @property
    def shape(self) -> tuple[int, int]:
        """(k, m): draft tokens by proxy tokens."""
        return len(self.draft_token_ids), len(self.proxy_token_ids)

    @cached_property
    def cost_matrix(self) -> np.ndarray:
        """(k, m) local costs: every cell of a dense alignment; for a banded one, NaN outside the band, and
        only up to ``FULL_MATRIX_CELLS`` cells (past that a ValueError: read :meth:`cost_window` instead)."""
        if self.dense_costs is not None:
            return self.dense_costs
        k, m = self.shape
        if k * m > FULL_MATRIX_CELLS:
            raise ValueError(f"this alignment keeps only the cells in its band; a dense {k} x {m} cost matrix would "
                             f"have {k * m:,} cells (limit {FULL_MATRIX_CELLS:,}). Read a part with "
                             f"cost_window(draft_start, draft_stop, proxy_start, proxy_stop), or call "
                             f"align_text(..., full_matrix=True) on a shorter text.")
        return self.cost_window(0, k, 0, m)

    def cost_window(self, draft_start: int, draft_stop: int, proxy_start: int, proxy_stop: int) -> np.ndarray:
        """Local costs of draft tokens ``draft_start:draft_stop`` against proxy tokens ``proxy_start:proxy_stop``:
        float64 of shape (draft_stop - draft_start, proxy_stop - proxy_start), NaN where no cost was computed
        (outside the band of a banded alignment)."""
        k, m = self.shape
        if not (0 <= draft_start <= draft_stop <= k and 0 <= proxy_start <= proxy_stop <= m):
            raise ValueError(f"window [{draft_start}:{draft_stop}, {proxy_start}:{proxy_stop}] does not fit the "
                             f"{k} x {m} alignment")
        if self.dense_costs is not None:
            return self.dense_costs[draft_start:draft_stop, proxy_start:proxy_stop].astype(np.float64)
        window = np.full((draft_stop - draft_start, proxy_stop - proxy_start), np.nan)
        for i in range(draft_start, draft_stop):
            first, costs = self.banded_costs.row(i)
            lo, hi = max(first, proxy_start), min(first + len(costs), proxy_stop)
            if lo < hi:
                window[i - draft_start, lo - proxy_start:hi - proxy_start] = costs[lo - first:hi - first]
        return window

    @property
    def path_costs(self) -> np.ndarray:
        """(L,) float64: the local cost of each step of the warping path."""
        draft, proxy = self.warping_path[:, 0], self.warping_path[:, 1]
        if self.dense_costs is not None:
            return self.dense_costs[draft, proxy].astype(np.float64)
        banded = self.banded_costs
        return banded.costs[banded.offsets[draft] + proxy - banded.first_proxy[draft]].astype(np.float64)

    @property
    def path_cost(self) -> float:
        return float(self.path_costs.sum())

    def banded_cells(self) -> list[tuple[int, int, list[int]]]:
        """The computed cells as JSON-friendly rows ``(draft_index, proxy_start, costs)``: draft token
        ``draft_index`` against proxy tokens ``proxy_start, proxy_start + 1, ...``. A banded alignment gives its
        in-band cells, a dense one whole rows; costs are edit distances, so whole numbers."""
        k, m = self.shape
        if self.dense_costs is not None:
            return [(i, 0, self.dense_costs[i].astype(np.int64).tolist()) for i in range(k)]
        rows = (self.banded_costs.row(i) for i in range(k))
        return [(i, first, costs.astype(np.int64).tolist()) for i, (first, costs) in enumerate(rows)]

    @property
    def proxy_to_draft(self) -> list[list[int]]:
        """For each proxy token, the draft token indices it is aligned with."""
        return proxy_to_draft(self.warping_path, len(self.proxy_token_ids))


def align_tokens(draft_surfaces: TokenSurfaces, draft_ids: list[int], target_surfaces: TokenSurfaces,
                 proxy_ids: list[int], band: int = 8) -> Alignment:
    """DTW between draft tokens and proxy tokens (Levenshtein local cost, Sakoe-Chiba band), through the
    pair's :class:`PairTable`: the decoding loop's path, with a dense cost matrix (rounds are small)."""
    start = time.perf_counter()
    cost, path = pair_table(draft_surfaces, target_surfaces).align(draft_ids, proxy_ids, band)
    return _alignment(draft_surfaces, draft_ids, target_surfaces, proxy_ids, band, path, start, dense_costs=cost)


def align_text(text: str, draft_tokenizer, target_tokenizer, band: int = 8, full_matrix: bool = False) -> Alignment:
    """Tokenise ``text`` with both tokenizers and align the two token sequences with DTW.

    A one-off: it compares the strings of just these tokens and builds no pair table. Only the cells inside the
    band are computed and kept; ``full_matrix=True`` computes every cell instead (for a short text: at most
    ``FULL_MATRIX_CELLS`` cells, else a ValueError). Both give the same warping path.
    """
    if band < 0:
        raise ValueError(f"band must be >= 0, got {band}")
    draft, target = surfaces_for(draft_tokenizer), surfaces_for(target_tokenizer)
    draft_ids, proxy_ids = encode_bare(draft, text), encode_bare(target, text)
    if full_matrix and len(draft_ids) * len(proxy_ids) > FULL_MATRIX_CELLS:
        raise ValueError(f"full_matrix=True would compute {len(draft_ids)} x {len(proxy_ids)} = "
                         f"{len(draft_ids) * len(proxy_ids):,} cells, over the limit of {FULL_MATRIX_CELLS:,}: "
                         f"align a shorter text, or leave full_matrix off and read the band with cost_window")
    start = time.perf_counter()
    draft_symbols = [draft.normalised_of(i) for i in draft_ids]
    proxy_symbols = [target.normalised_of(i) for i in proxy_ids]
    if full_matrix:
        cost, path = dtw.align_strings(draft_symbols, proxy_symbols, band)
        return _alignment(draft, draft_ids, target, proxy_ids, band, path, start, dense_costs=cost)
    first_proxy, offsets, cost, path = dtw.align_strings_banded(draft_symbols, proxy_symbols, band)
    return _alignment(draft, draft_ids, target, proxy_ids, band, path, start,
                      banded_costs=BandedCosts(first_proxy, offsets, cost))


def _alignment(draft: TokenSurfaces, draft_ids: list[int], target: TokenSurfaces, proxy_ids: list[int], band: int,
               path: np.ndarray, start: float, **costs) -> Alignment:
    elapsed_us = (time.perf_counter() - start) * 1e6
    return Alignment(
        draft_token_ids=list(draft_ids),
        draft_tokens=[draft.text_of(i) for i in draft_ids],
        proxy_token_ids=list(proxy_ids),
        proxy_tokens=[target.text_of(i) for i in proxy_ids],
        warping_path=path, band=band, align_us=elapsed_us, **costs)
