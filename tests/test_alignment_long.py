"""Long texts: align_text keeps only the band (memory and payload grow with length x band), reads the same as
the dense matrix where both exist, and round alignments stay dense."""

import inspect
import json
import os
import time

import numpy as np
import pytest
from transformers import AutoTokenizer

from tokentiming import Alignment, align_text
from tokentiming.core import dtw
from tokentiming.core.alignment import FULL_MATRIX_CELLS, align_tokens
from tokentiming.core.reencode import encode_bare
from tokentiming.core.surfaces import surfaces_for
from tokentiming.models import LOCAL_PRESETS

PAIR = {name: os.environ.get(f"TOKENTIMING_TEST_{name.upper().replace('-', '_')}", str(path))
        for name, path in LOCAL_PRESETS.items()}
PARAGRAPH = "The family 👩\u200d👩\u200d👧 said مرحبا بالعالم and 日本語の文章です。 Then: def f(x): return x * 2  # naïve café\n"
SHORT = ["def f(x):\n\treturn x  # ok", "naïve café", "中文字符 and 😀", "x" * 40, " leading space",
         "日本語の文章です。", "مرحبا بالعالم", "a", "    \n\n  x = 1"]


def long_texts():
    """Two 3,000-character texts: Python source from the standard library, and a mixed-script paragraph
    that the tiny pair writes mostly in byte tokens (so about 3,500 tokens a side)."""
    import difflib

    return {"python": inspect.getsource(difflib)[:3000], "mixed-script": (PARAGRAPH * 40)[:3000]}


@pytest.fixture(scope="module")
def tiny_pair():
    draft = AutoTokenizer.from_pretrained(PAIR["tiny-draft"])
    target = AutoTokenizer.from_pretrained(PAIR["tiny-target"])
    align_text("warm up the kernels", draft, target)
    return draft, target


def array_bytes(alignment: Alignment) -> int:
    """Bytes held by every array the alignment keeps."""
    arrays = [alignment.warping_path, alignment.dense_costs]
    if alignment.banded_costs is not None:
        arrays += [alignment.banded_costs.first_proxy, alignment.banded_costs.offsets, alignment.banded_costs.costs]
    return sum(array.nbytes for array in arrays if array is not None)


@pytest.mark.parametrize("name", ["python", "mixed-script"])
def test_a_long_text_does_not_keep_a_dense_cost_matrix(tiny_pair, name):
    """Before: a 3,000-character text kept all k x m float64 costs (13 MB for the Python source, 96 MB mixed)."""
    text = long_texts()[name]
    assert len(text) == 3000
    start = time.perf_counter()
    alignment = align_text(text, *tiny_pair, band=8)
    seconds = time.perf_counter() - start
    k, m = alignment.shape
    assert k > 1000 and m > 1000, "long enough that a dense matrix would be millions of cells"
    assert seconds < 2.0, f"aligning {k} x {m} tokens took {seconds:.2f} s"
    assert array_bytes(alignment) < 2_000_000, f"{array_bytes(alignment):,} bytes of arrays"
    assert array_bytes(alignment) < k * m * 8 / 20
    path = alignment.warping_path.tolist()
    assert path[0] == [0, 0] and path[-1] == [k - 1, m - 1]
    assert len(alignment.path_costs) == len(path) and alignment.path_cost == alignment.path_costs.sum()


def test_a_long_text_refuses_a_dense_cost_matrix(tiny_pair):
    alignment = align_text(long_texts()["python"], *tiny_pair, band=8)
    k, m = alignment.shape
    assert k * m > FULL_MATRIX_CELLS
    with pytest.raises(ValueError, match="cost_window"):
        alignment.cost_matrix
    with pytest.raises(ValueError, match="full_matrix"):
        align_text(long_texts()["python"], *tiny_pair, band=8, full_matrix=True)


@pytest.mark.parametrize("band", [0, 2, 8])
@pytest.mark.parametrize("text", SHORT)
def test_banded_alignment_reads_as_the_dense_one_inside_the_band(tiny_pair, text, band):
    """cost_window, cost_matrix, path_costs and banded_cells of a banded alignment against full_matrix=True."""
    banded = align_text(text, *tiny_pair, band=band)
    dense = align_text(text, *tiny_pair, band=band, full_matrix=True)
    assert banded.dense_costs is None and dense.banded_costs is None
    k, m = banded.shape
    assert dense.cost_matrix.shape == (k, m) and not np.isnan(dense.cost_matrix).any()
    width = dtw.effective_band(k, m, band)
    inside = np.array([[dtw.in_band(i, j, k, m, width) for j in range(m)] for i in range(k)], dtype=bool)
    expected = np.where(inside, dense.cost_matrix, np.nan)
    np.testing.assert_array_equal(banded.cost_window(0, k, 0, m), expected)
    np.testing.assert_array_equal(banded.cost_matrix, expected)
    for draft_start, draft_stop, proxy_start, proxy_stop in [(0, k // 2, m // 3, m), (k // 3, k, 0, m // 2),
                                                             (k - 1, k, 0, m), (0, 0, 0, m)]:
        window = banded.cost_window(draft_start, draft_stop, proxy_start, proxy_stop)
        assert window.dtype == np.float64 and window.shape == (draft_stop - draft_start, proxy_stop - proxy_start)
        np.testing.assert_array_equal(window, expected[draft_start:draft_stop, proxy_start:proxy_stop])
        np.testing.assert_array_equal(dense.cost_window(draft_start, draft_stop, proxy_start, proxy_stop),
                                      dense.cost_matrix[draft_start:draft_stop, proxy_start:proxy_stop])
    assert banded.warping_path.tolist() == dense.warping_path.tolist()
    assert banded.proxy_to_draft == dense.proxy_to_draft
    path = dense.warping_path
    assert banded.path_costs.tolist() == dense.cost_matrix[path[:, 0], path[:, 1]].tolist() == dense.path_costs.tolist()
    assert banded.path_cost == dense.path_cost
    cells = json.loads(json.dumps(banded.banded_cells()))
    assert sum(len(costs) for _, _, costs in cells) == inside.sum()
    rebuilt = np.full((k, m), np.nan)
    for draft_index, proxy_start, costs in cells:
        rebuilt[draft_index, proxy_start:proxy_start + len(costs)] = costs
    np.testing.assert_array_equal(rebuilt, expected)


def test_dense_alignment_rows_are_whole(tiny_pair):
    dense = align_text("def f(x):", *tiny_pair, band=0, full_matrix=True)
    k, m = dense.shape
    assert dense.banded_cells() == [(i, 0, dense.cost_matrix[i].astype(int).tolist()) for i in range(k)]


def test_cost_window_refuses_a_window_outside_the_alignment(tiny_pair):
    alignment = align_text("def f(x):", *tiny_pair)
    k, m = alignment.shape
    for window in [(0, k + 1, 0, m), (0, k, -1, m), (2, 1, 0, m)]:
        with pytest.raises(ValueError):
            alignment.cost_window(*window)


def test_round_alignments_stay_dense(tiny_pair):
    """The decoder reads cost_matrix every round: align_tokens keeps the whole small matrix."""
    draft, target = map(surfaces_for, tiny_pair)
    text = "    return fibonacci(n - 1) 中文"
    draft_ids, proxy_ids = encode_bare(draft, text), encode_bare(target, text)
    alignment = align_tokens(draft, draft_ids, target, proxy_ids, 2)
    k, m = alignment.shape
    assert alignment.cost_matrix.shape == (k, m) and not np.isnan(alignment.cost_matrix).any()
    dense = align_text(text, *tiny_pair, band=2, full_matrix=True)
    assert alignment.cost_matrix.tolist() == dense.cost_matrix.tolist()
    assert alignment.warping_path.tolist() == dense.warping_path.tolist()
