"""Dynamic Time Warping between two token sequences, as numba kernels.

Tokens arrive as one flat int32 array of Unicode code points plus an offsets array (token i is
``codes[offsets[i]:offsets[i + 1]]``), so the kernels never touch Python strings. Three pure steps:
``cost_matrix`` (Levenshtein distance of every token pair), ``cumulative_cost`` (banded DP) and
``warping_path`` (backtrack). ``align`` runs all three in one compiled call.
"""

from itertools import accumulate

import numpy as np
from numba import njit

INF = np.inf


@njit(cache=True)
def _levenshtein(a, b, row):
    """Edit distance between code-point arrays ``a`` and ``b``; ``row`` is scratch of len(b) + 1."""
    n = b.shape[0]
    for j in range(n + 1):
        row[j] = j
    for i in range(1, a.shape[0] + 1):
        diagonal = row[0]
        row[0] = i
        for j in range(1, n + 1):
            above = row[j]
            substitution = diagonal + (0 if a[i - 1] == b[j - 1] else 1)
            row[j] = min(above + 1, row[j - 1] + 1, substitution)
            diagonal = above
    return row[n]


@njit(cache=True)
def cost_matrix(a_codes, a_offsets, b_codes, b_offsets):
    """Local cost c[i, j] = Levenshtein distance between token i of ``a`` and token j of ``b``."""
    k = a_offsets.shape[0] - 1
    m = b_offsets.shape[0] - 1
    longest = 0
    for j in range(m):
        longest = max(longest, b_offsets[j + 1] - b_offsets[j])
    row = np.empty(longest + 1, dtype=np.int64)
    cost = np.empty((k, m), dtype=np.float64)
    for i in range(k):
        a = a_codes[a_offsets[i]:a_offsets[i + 1]]
        for j in range(m):
            cost[i, j] = _levenshtein(a, b_codes[b_offsets[j]:b_offsets[j + 1]], row)
    return cost


@njit(cache=True)
def effective_band(k, m, band):
    """The Sakoe-Chiba half-width actually used: widened to |k - m| so a path always exists."""
    return max(band, abs(k - m))


@njit(cache=True)
def in_band(i, j, k, m, width):
    """Whether 0-based cell (i, j) lies within ``width`` of the diagonal from (0, 0) to (k-1, m-1).

    The diagonal is slope-normalised (|i - j*k/m| <= width, on 1-based indices), compared in
    integers as |i*m - j*k| <= width*m.
    """
    return abs((i + 1) * m - (j + 1) * k) <= width * m


@njit(cache=True)
def cumulative_cost(cost, band):
    """D[i, j] = cost[i, j] + min(D[i-1, j], D[i, j-1], D[i-1, j-1]) inside the band, inf outside.

    Returned with a leading row and column of padding: D[0, 0] = 0, the cell for tokens (i, j)
    is D[i + 1, j + 1].
    """
    k, m = cost.shape
    width = effective_band(k, m, band)
    D = np.full((k + 1, m + 1), INF)
    D[0, 0] = 0.0
    for i in range(1, k + 1):
        for j in range(1, m + 1):
            if in_band(i - 1, j - 1, k, m, width):
                D[i, j] = cost[i - 1, j - 1] + min(D[i - 1, j - 1], D[i - 1, j], D[i, j - 1])
    return D


@njit(cache=True)
def warping_path(D):
    """Backtrack from the last cell to the first; ties prefer the diagonal, then up, then left.

    Returns an (L, 2) int32 array of 0-based (draft index, proxy index) pairs in forward order.
    """
    i = D.shape[0] - 1
    j = D.shape[1] - 1
    path = np.empty((i + j, 2), dtype=np.int32)
    n = 0
    while i > 0 and j > 0:
        path[n, 0] = i - 1
        path[n, 1] = j - 1
        n += 1
        diagonal = D[i - 1, j - 1]
        up = D[i - 1, j]
        left = D[i, j - 1]
        if diagonal <= up and diagonal <= left:
            i -= 1
            j -= 1
        elif up <= left:
            i -= 1
        else:
            j -= 1
    return path[:n][::-1].copy()


@njit(cache=True)
def align(a_codes, a_offsets, b_codes, b_offsets, band):
    """Cost matrix and warping path in one compiled call (empty when either side is empty)."""
    cost = cost_matrix(a_codes, a_offsets, b_codes, b_offsets)
    if cost.shape[0] == 0 or cost.shape[1] == 0:
        return cost, np.empty((0, 2), dtype=np.int32)
    return cost, warping_path(cumulative_cost(cost, band))


@njit(cache=True)
def align_packed(codes, offsets, k, band):
    """:func:`align` on one buffer holding both sequences: the first ``k`` tokens are ``a``."""
    return align(codes, offsets[:k + 1], codes, offsets[k:], band)


@njit(cache=True)
def _gather(ids, codes, starts, lengths):
    """Flat code points and offsets of the tokens ``ids`` from a per-vocabulary table."""
    offsets = np.empty(ids.shape[0] + 1, dtype=np.int64)
    offsets[0] = 0
    for n in range(ids.shape[0]):
        offsets[n + 1] = offsets[n] + lengths[ids[n]]
    out = np.empty(offsets[-1], dtype=np.int32)
    for n in range(ids.shape[0]):
        start = starts[ids[n]]
        out[offsets[n]:offsets[n + 1]] = codes[start:start + lengths[ids[n]]]
    return out, offsets


@njit(cache=True)
def align_ids(a_ids, a_codes, a_starts, a_lengths, b_ids, b_codes, b_starts, b_lengths, band):
    """:func:`align` for token ids looked up in two code tables (see ``alignment.CodeTable``): the
    decoding loop's path, with no Python string handling per round."""
    a, a_offsets = _gather(a_ids, a_codes, a_starts, a_lengths)
    b, b_offsets = _gather(b_ids, b_codes, b_starts, b_lengths)
    return align(a, a_offsets, b, b_offsets, band)


def pack(tokens: list[str]):
    """Flatten token strings into (code points, offsets) for the kernels."""
    codes = np.frombuffer("".join(tokens).encode("utf-32-le"), dtype=np.int32)
    return codes, np.array([0, *accumulate(map(len, tokens))], dtype=np.int64)


def align_strings(a: list[str], b: list[str], band: int):
    """Cost matrix and warping path between two lists of (normalised) token strings."""
    codes, offsets = pack(a + b)
    return align_packed(codes, offsets, len(a), band)


def warm_up():
    """Load (or compile) the kernels now so the first round is not charged for it."""
    align_strings(["a", "bc"], ["ab", "c"], 8)
    codes, starts, lengths = np.array([97, 98], dtype=np.int32), np.array([0, 1], dtype=np.int64), np.ones(2, np.int64)
    ids = np.array([0, 1], dtype=np.int64)
    align_ids(ids, codes, starts, lengths, ids, codes, starts, lengths, 8)
