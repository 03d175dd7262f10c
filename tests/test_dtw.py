"""The numba DTW kernels against brute-force pure-Python references on random inputs."""

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentiming.core import dtw


def levenshtein_reference(a: str, b: str) -> int:
    """Plain recursion over the three edits (memoised)."""
    from functools import lru_cache

    @lru_cache(maxsize=None)
    def distance(i, j):
        if i == 0 or j == 0:
            return i + j
        return min(distance(i - 1, j) + 1, distance(i, j - 1) + 1,
                   distance(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return distance(len(a), len(b))


def in_band_reference(i, j, k, m, band):
    width = max(band, abs(k - m))
    return abs((i + 1) / k - (j + 1) / m) * k <= width + 1e-9


def all_paths(k, m):
    """Every monotone warping path from (0, 0) to (k-1, m-1) with unit steps."""
    def extend(path):
        i, j = path[-1]
        if (i, j) == (k - 1, m - 1):
            yield path
            return
        for di, dj in ((1, 1), (1, 0), (0, 1)):
            if i + di < k and j + dj < m:
                yield from extend(path + [(i + di, j + dj)])
    yield from extend([(0, 0)])


def random_tokens(rng, n):
    alphabet = "ab c\n中😀"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4))) for _ in range(n)]


def test_levenshtein_matches_reference():
    rng = random.Random(0)
    for _ in range(300):
        a, b = random_tokens(rng, 6), random_tokens(rng, 5)
        cost, _ = dtw.align_strings(a, b, 8)
        expected = [[levenshtein_reference(x, y) for y in b] for x in a]
        assert cost.tolist() == expected


def test_cumulative_cost_matches_python_dp():
    rng = random.Random(1)
    for _ in range(200):
        k, m, band = rng.randint(1, 9), rng.randint(1, 9), rng.randint(0, 4)
        cost = np.array([[rng.randint(0, 5) for _ in range(m)] for _ in range(k)], dtype=np.float64)
        D = dtw.cumulative_cost(cost, band)
        expected = np.full((k + 1, m + 1), np.inf)
        expected[0, 0] = 0
        for i in range(1, k + 1):
            for j in range(1, m + 1):
                if in_band_reference(i - 1, j - 1, k, m, band):
                    expected[i, j] = cost[i - 1, j - 1] + min(expected[i - 1, j - 1], expected[i - 1, j],
                                                              expected[i, j - 1])
        np.testing.assert_array_equal(D, expected)


@pytest.mark.parametrize("seed", range(6))
def test_warping_path_is_the_cheapest_path_in_the_band(seed):
    rng = random.Random(seed)
    for _ in range(40):
        k, m, band = rng.randint(1, 6), rng.randint(1, 6), rng.randint(0, 3)
        a, b = random_tokens(rng, k), random_tokens(rng, m)
        cost, path = dtw.align_strings(a, b, band)
        candidates = [p for p in all_paths(k, m) if all(in_band_reference(i, j, k, m, band) for i, j in p)]
        best = min(sum(cost[i, j] for i, j in p) for p in candidates)
        found = [tuple(map(int, step)) for step in path]
        assert found in candidates, "the path must be monotone, unit-step and inside the band"
        assert sum(cost[i, j] for i, j in found) == best


def test_band_is_widened_so_a_path_always_exists():
    for k, m in itertools.product(range(1, 12), range(1, 12)):
        cost, path = dtw.align_strings(["x"] * k, ["y"] * m, 0)
        assert path[0].tolist() == [0, 0] and path[-1].tolist() == [k - 1, m - 1]


def test_identical_sequences_align_on_the_diagonal_at_zero_cost():
    tokens = ["def", " foo", "(", "x", "):"]
    cost, path = dtw.align_strings(tokens, tokens, 8)
    assert path.tolist() == [[i, i] for i in range(5)]
    assert sum(cost[i, j] for i, j in path) == 0


def test_lone_surrogates_are_symbols_of_their_own():
    """Stray bytes reach the table as lone surrogates (surfaces.symbols_of): each its own code point, equal to
    no character and no other byte."""
    stray = ["\udce4", "\udcb8", "\udce4\udcb8"]
    cost, _ = dtw.align_strings(stray, stray + ["\ufffd", "世"], 8)
    assert cost.tolist() == [[0, 1, 1, 1, 1], [1, 0, 1, 1, 1], [1, 1, 0, 2, 2]]


def test_empty_side_gives_an_empty_path():
    cost, path = dtw.align_strings([], ["a"], 8)
    assert cost.shape == (0, 1) and path.shape == (0, 2)


def test_table_kernel_called_without_dispatch_gives_the_same_alignment():
    table, (_, b_offset, b_end) = dtw.table_of([["def", " foo", "(x"], ["de", "f foo", "(", "x"]])
    ids = np.array([0, 1, 2, 0, 1, 2, 3], dtype=np.int64)
    direct = dtw.without_dispatch(dtw.align, table, ids, 3, 7, b_offset, b_end, 8)
    assert direct is not dtw.align, "the compiled entry point should be found"
    for expected, found in zip(dtw.align(table, ids, 3, 7, b_offset, b_end, 8),
                               direct(table, ids, 3, 7, b_offset, b_end, 8)):
        np.testing.assert_array_equal(found, expected)
    cost, path = direct(table, ids, 3, 7, b_offset, b_end, 8)
    assert cost.tolist() == dtw.align_strings(["def", " foo", "(x"], ["de", "f foo", "(", "x"], 8)[0].tolist()
    assert path[0].tolist() == [0, 0] and path[-1].tolist() == [2, 3]


def test_ids_outside_the_table_give_empty_results():
    table, (_, b_offset, b_end) = dtw.table_of([["a"], ["a"]])
    cost, path = dtw.align(table, np.array([0, 1], dtype=np.int64), 1, 2, b_offset, b_end, 8)
    assert cost.shape == (0, 0) and path.shape == (0, 2)


# -- the banded kernels (a long text's alignment) ---------------------------------------------------
def dense_from_banded(first_proxy, offsets, cost, m):
    """The banded cells spread over a (k, m) matrix, NaN elsewhere."""
    dense = np.full((len(first_proxy), m), np.nan)
    for i, first in enumerate(first_proxy):
        row = cost[offsets[i]:offsets[i + 1]]
        dense[i, first:first + len(row)] = row
    return dense


def test_band_rows_hold_exactly_the_cells_in_the_band():
    for k, m, band in itertools.product(range(1, 14), range(0, 14), range(0, 4)):
        first_proxy, offsets = dtw.band_rows(k, m, band)
        for i in range(k):
            cells = list(range(first_proxy[i], first_proxy[i] + offsets[i + 1] - offsets[i]))
            assert cells == [j for j in range(m) if in_band_reference(i, j, k, m, band)], (k, m, band, i)


symbols = st.sampled_from(list("ab c\n中😀") + ["\udce4", "\udcb8"])  # lone surrogates: stray bytes
token_lists = st.lists(st.lists(symbols, max_size=4).map("".join), min_size=1, max_size=6)


@settings(deadline=None, max_examples=300)
@given(token_lists, token_lists, st.integers(0, 4))
def test_banded_alignment_is_the_cheapest_path_and_the_dense_one(a, b, band):
    """Computing only the band must not change a single cost or step (short: checked against every path)."""
    cost, path = dtw.align_strings(a, b, band)
    first_proxy, offsets, banded, banded_path = dtw.align_strings_banded(a, b, band)
    inside = np.array([[in_band_reference(i, j, len(a), len(b), band) for j in range(len(b))] for i in range(len(a))])
    np.testing.assert_array_equal(dense_from_banded(first_proxy, offsets, banded, len(b)),
                                  np.where(inside, cost, np.nan))
    assert banded_path.tolist() == path.tolist()
    candidates = [p for p in all_paths(len(a), len(b)) if all(inside[i, j] for i, j in p)]
    assert sum(cost[i, j] for i, j in banded_path) == min(sum(cost[i, j] for i, j in p) for p in candidates)


@settings(deadline=None, max_examples=100)
@given(st.lists(st.lists(symbols, max_size=3).map("".join), min_size=1, max_size=60),
       st.lists(st.lists(symbols, max_size=3).map("".join), min_size=1, max_size=60), st.integers(0, 6))
def test_banded_alignment_equals_the_dense_one_on_longer_sequences(a, b, band):
    cost, path = dtw.align_strings(a, b, band)
    first_proxy, offsets, banded, banded_path = dtw.align_strings_banded(a, b, band)
    assert banded_path.tolist() == path.tolist()
    dense = dense_from_banded(first_proxy, offsets, banded, len(b))
    assert np.array_equal(dense[~np.isnan(dense)], cost[~np.isnan(dense)])


def test_banded_kernels_equal_the_dense_ones_on_random_costs():
    """Costs of 0, 1 or 2 make many ties, so the backtrack's tie order (diagonal, up, left) is exercised."""
    rng = random.Random(2)
    for _ in range(2000):
        k, m, band = rng.randint(1, 9), rng.randint(1, 9), rng.randint(0, 4)
        cost = np.array([[rng.randint(0, 2) for _ in range(m)] for _ in range(k)], dtype=np.float64)
        D = dtw.cumulative_cost(cost, band)
        first_proxy, offsets = dtw.band_rows(k, m, band)
        banded = np.concatenate([cost[i, first:first + offsets[i + 1] - offsets[i]]
                                 for i, first in enumerate(first_proxy)]).astype(np.uint16)
        banded_D = dtw.banded_cumulative_cost(banded, first_proxy, offsets)
        np.testing.assert_array_equal(dense_from_banded(first_proxy, offsets, banded_D, m),
                                      np.where(np.isinf(D[1:, 1:]), np.nan, D[1:, 1:]))
        assert dtw.banded_warping_path(banded_D, first_proxy, offsets, m).tolist() == dtw.warping_path(D).tolist()


def test_banded_costs_hold_long_tokens_edit_distances():
    """uint16 cells: a distance past 255 (a 300-space token against a word) must not wrap."""
    _, _, cost, _ = dtw.align_strings_banded([" " * 300, "x" * 70_000], ["word"], 8)
    assert cost.tolist() == [300, dtw.MAX_TOKEN_LENGTH]  # a token is compared on its first 65,535 characters


def test_banded_alignment_of_an_empty_side_is_empty():
    for a, b in (([], ["a"]), (["a"], []), ([], [])):
        first_proxy, offsets, cost, path = dtw.align_strings_banded(a, b, 8)
        assert offsets[-1] == 0 and cost.shape == (0,) and path.shape == (0, 2)
