"""Dynamic Time Warping between two token sequences, as numba kernels.

Tokens are looked up by id in a *table*: one flat int64 array whose first entries are spans (a
token's start and length packed as ``start << 16 | length``) pointing at the Unicode code points
stored behind them, so the kernels never touch Python strings. Three pure steps: ``cost_matrix``
(Levenshtein distance of every token pair), ``cumulative_cost`` (banded DP) and ``warping_path``
(backtrack). ``align`` runs all three in one compiled call.

A long text takes the banded steps instead (``band_rows``, ``banded_cost``, ``banded_cumulative_cost``,
``banded_warping_path``, all run by ``align_banded``): they compute and store only the cells inside the band,
row by row, so memory grows with the text's length times the band, not with the product of both lengths.
Both give the same warping path.
"""

import numpy as np
from numba import njit, typeof

INF = np.inf
LENGTH_BITS = 16
MAX_TOKEN_LENGTH = (1 << LENGTH_BITS) - 1


@njit(cache=True)
def _levenshtein(table, a, b, row):
    """Edit distance between the tokens with spans ``a`` and ``b``; ``row`` is scratch longer than b."""
    a_start, a_length = a >> LENGTH_BITS, a & MAX_TOKEN_LENGTH
    b_start, n = b >> LENGTH_BITS, b & MAX_TOKEN_LENGTH
    for j in range(n + 1):
        row[j] = j
    for i in range(1, a_length + 1):
        diagonal = row[0]
        row[0] = i
        code = table[a_start + i - 1]
        for j in range(1, n + 1):
            above = row[j]
            substitution = diagonal + (0 if code == table[b_start + j - 1] else 1)
            row[j] = min(above + 1, row[j - 1] + 1, substitution)
            diagonal = above
    return row[n]


@njit(cache=True)
def cost_matrix(table, ids, k, n, b_offset):
    """Local cost c[i, j] = Levenshtein distance between draft token ``ids[i]`` (i < k) and proxy token
    ``ids[k + j]`` (k + j < n), whose spans are ``table[ids[i]]`` and ``table[b_offset + ids[k + j]]``."""
    longest = 0
    for j in range(k, n):
        longest = max(longest, table[b_offset + ids[j]] & MAX_TOKEN_LENGTH)
    row = np.empty(longest + 1, dtype=np.int64)
    cost = np.empty((k, n - k), dtype=np.float64)
    for i in range(k):
        a = table[ids[i]]
        for j in range(n - k):
            cost[i, j] = _levenshtein(table, a, table[b_offset + ids[k + j]], row)
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
    n = path.shape[0]  # filled from the end, so the steps come out in forward order
    while i > 0 and j > 0:
        n -= 1
        i, j = _step_back(path, n, i, j, D[i - 1, j - 1], D[i - 1, j], D[i, j - 1])
    return path[n:]


@njit(cache=True)
def _step_back(path, n, i, j, diagonal, up, left):  # pragma: no cover - compiled
    """Write cell (i - 1, j - 1) as step n of the path and move to the cheapest predecessor; ties go to the
    diagonal, then up: one tie order for the dense and the banded backtrack, so both find the same path."""
    path[n, 0] = i - 1
    path[n, 1] = j - 1
    if diagonal <= up and diagonal <= left:
        return i - 1, j - 1
    if up <= left:
        return i - 1, j
    return i, j - 1


@njit(cache=True)
def align(table, ids, k, n, b_offset, b_end, band):
    """Cost matrix and warping path between draft tokens ``ids[:k]`` (entries ``table[:b_offset]``) and
    proxy tokens ``ids[k:n]`` (entries ``table[b_offset:b_end]``), in one compiled call.

    The path is empty when either side is. Both come back empty when an id falls outside its part of
    the table, so the caller can widen the table and call again.
    """
    for t in range(n):
        if not 0 <= ids[t] < (b_offset if t < k else b_end - b_offset):
            return np.empty((0, 0), dtype=np.float64), np.empty((0, 2), dtype=np.int32)
    cost = cost_matrix(table, ids, k, n, b_offset)
    if k == 0 or n == k:
        return cost, np.empty((0, 2), dtype=np.int32)
    return cost, warping_path(cumulative_cost(cost, band))


@njit(cache=True)
def band_rows(k, m, band):
    """The band row by row: draft token i's in-band proxy tokens are ``first_proxy[i]`` onwards, and its cells
    are ``offsets[i]:offsets[i + 1]`` of a flat array (``offsets[k]`` cells in all).

    Each row's in-band cells are contiguous and both ends move right from row to row, so two pointers
    walking along :func:`in_band`'s boundaries find every row in O(k + m).
    """
    width = effective_band(k, m, band)
    first_proxy = np.zeros(k, dtype=np.int64)
    offsets = np.zeros(k + 1, dtype=np.int64)
    lo = hi = 0
    for i in range(k):
        while lo < m and (i + 1) * m - (lo + 1) * k > width * m:  # cell (i, lo) lies left of the band
            lo += 1
        hi = max(hi, lo)
        while hi < m and (hi + 1) * k - (i + 1) * m <= width * m:  # cell (i, hi) is not right of it
            hi += 1
        first_proxy[i] = lo
        offsets[i + 1] = offsets[i] + hi - lo
    return first_proxy, offsets


@njit(cache=True)
def banded_cost(table, ids, k, n, b_offset, first_proxy, offsets):
    """:func:`cost_matrix` for the cells of :func:`band_rows` only, flat and row by row, as uint16: an edit
    distance between tokens of at most MAX_TOKEN_LENGTH code points fits exactly, in a quarter of float64's
    memory."""
    longest = 0
    for j in range(k, n):
        longest = max(longest, table[b_offset + ids[j]] & MAX_TOKEN_LENGTH)
    row = np.empty(longest + 1, dtype=np.int64)
    cost = np.empty(offsets[k], dtype=np.uint16)
    for i in range(k):
        a = table[ids[i]]
        for cell in range(offsets[i], offsets[i + 1]):
            j = first_proxy[i] + cell - offsets[i]
            cost[cell] = _levenshtein(table, a, table[b_offset + ids[k + j]], row)
    return cost


@njit(cache=True)
def _banded_at(D, first_proxy, offsets, i, j):
    """D at 0-based cell (i, j) of a banded layout, padded like :func:`cumulative_cost`'s: 0 before the
    first cell, inf outside the band."""
    if i < 0 or j < 0:
        return 0.0 if i == -1 and j == -1 else INF
    column = j - first_proxy[i]
    if column < 0 or column >= offsets[i + 1] - offsets[i]:
        return INF
    return D[offsets[i] + column]


@njit(cache=True)
def banded_cumulative_cost(cost, first_proxy, offsets):
    """:func:`cumulative_cost` on :func:`banded_cost`'s cells, in the same flat layout (no padding)."""
    k = first_proxy.shape[0]
    D = np.empty(cost.shape[0], dtype=np.float64)
    for i in range(k):
        for cell in range(offsets[i], offsets[i + 1]):
            j = first_proxy[i] + cell - offsets[i]
            D[cell] = cost[cell] + min(_banded_at(D, first_proxy, offsets, i - 1, j - 1),
                                       _banded_at(D, first_proxy, offsets, i - 1, j),
                                       _banded_at(D, first_proxy, offsets, i, j - 1))
    return D


@njit(cache=True)
def banded_warping_path(D, first_proxy, offsets, m):
    """:func:`warping_path` on a banded D: the same backtrack and tie order, so the same path."""
    i = first_proxy.shape[0]
    j = m
    path = np.empty((i + j, 2), dtype=np.int32)
    n = path.shape[0]
    while i > 0 and j > 0:  # (i, j) counts tokens, as the padded indices of warping_path do
        n -= 1
        i, j = _step_back(path, n, i, j, _banded_at(D, first_proxy, offsets, i - 2, j - 2),
                          _banded_at(D, first_proxy, offsets, i - 2, j - 1),
                          _banded_at(D, first_proxy, offsets, i - 1, j - 2))
    return path[n:]


@njit(cache=True)
def align_banded(table, ids, k, n, b_offset, band):
    """:func:`align` computing only the band: (first_proxy, offsets, banded cost, warping path)."""
    first_proxy, offsets = band_rows(k, n - k, band)
    cost = banded_cost(table, ids, k, n, b_offset, first_proxy, offsets)
    if k == 0 or n == k:
        return first_proxy, offsets, cost, np.empty((0, 2), dtype=np.int32)
    D = banded_cumulative_cost(cost, first_proxy, offsets)
    return first_proxy, offsets, cost, banded_warping_path(D, first_proxy, offsets, n - k)


def table_of(vocabularies: list[list[str]]):
    """A table holding each list of token strings, and where each list's entries start."""
    tokens = [token for vocabulary in vocabularies for token in vocabulary]
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    # No vocabulary has a token of 65k characters; one would be compared on its first 65k.
    starts = len(tokens) + np.cumsum(lengths) - lengths
    entries = starts << LENGTH_BITS | np.minimum(lengths, MAX_TOKEN_LENGTH)
    # surrogatepass: a byte outside a whole character is a lone surrogate (surfaces.symbols_of), kept as its code point
    codes = np.frombuffer("".join(tokens).encode("utf-32-le", errors="surrogatepass"), dtype=np.int32)
    offsets = np.cumsum([0] + [len(vocabulary) for vocabulary in vocabularies])
    return np.concatenate([entries, codes.astype(np.int64)]), offsets.tolist()


def align_strings(a: list[str], b: list[str], band: int):
    """Cost matrix and warping path between two lists of (normalised) token strings."""
    table, (_, b_offset, b_end) = table_of([a, b])
    ids = np.concatenate([np.arange(len(a)), np.arange(len(b))]).astype(np.int64)
    return align(table, ids, len(a), len(ids), b_offset, b_end, band)


def align_strings_banded(a: list[str], b: list[str], band: int):
    """:func:`align_strings` computing only the band: (first_proxy, offsets, banded cost, warping path)."""
    table, (_, b_offset, _) = table_of([a, b])
    ids = np.concatenate([np.arange(len(a)), np.arange(len(b))]).astype(np.int64)
    return align_banded(table, ids, len(a), len(ids), b_offset, band)


def without_dispatch(kernel, *example):
    """``kernel``'s compiled code for the argument types of ``example``, to call with exactly those types.

    numba's dispatcher works out every call's argument types; right after a forward pass has swept the
    CPU caches, that costs about as much as a small alignment itself.
    """
    kernel(*example)
    compiled = kernel.overloads.get(tuple(typeof(argument) for argument in example))
    return getattr(compiled, "entry_point", kernel)  # numba's own dispatch, should that ever move


def warm_up():
    """Load (or compile) the kernels now so the first round is not charged for it."""
    align_strings(["a", "bc"], ["ab", "c"], 8)
