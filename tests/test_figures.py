"""Figure builders on a recorded trace: labels are the token strings, paths and colours follow the trace."""

import pytest

from tokentiming import autoregressive
from tokentiming.views import figures


@pytest.fixture(scope="module")
def recorded(decoder):
    return decoder.generate("def mean(values):\n    total = 0\n", max_new_tokens=48).rounds


@pytest.fixture(scope="module")
def rejected_round(recorded):
    return next(r for r in recorded if r.proposed and r.accepted < r.proposed)


def test_heatmap_axes_are_the_token_strings_and_the_path_is_drawn(rejected_round):
    fig = figures.round_heatmap(rejected_round, band=8)
    k, m = rejected_round.cost_matrix.shape
    assert list(fig.layout.xaxis.ticktext) == [figures.visible(t) for t in rejected_round.proxy_tokens]
    assert list(fig.layout.yaxis.ticktext) == [figures.visible(t) for t in rejected_round.draft_tokens[:k]]
    cost, band, path = fig.data
    assert cost.z.shape == (k, m)
    assert len(path.x) == len(rejected_round.warping_path)
    expected = [figures.ACCEPTED_LINK if j < rejected_round.accepted else figures.REJECTED_LINK
                for _, j in rejected_round.warping_path]
    assert list(path.marker.color) == expected


def test_band_shading_marks_cells_outside_the_band():
    import numpy as np

    cost = np.zeros((6, 2))
    path = np.array([[0, 0], [1, 0], [2, 0], [3, 1], [4, 1], [5, 1]])
    fig = figures.alignment_heatmap(["a"] * 6, ["b"] * 2, cost, path, band=0)
    shading = fig.data[1].z
    assert np.isnan(shading).sum() > 0  # inside the (widened) band
    fig_wide = figures.alignment_heatmap(["a"] * 6, ["b"] * 2, cost, path, band=10)
    assert np.isnan(fig_wide.data[1].z).all()


def test_mapping_links_follow_the_path_and_acceptance(rejected_round):
    fig = figures.round_mapping(rejected_round)
    links = [trace for trace in fig.data if trace.mode == "lines"]
    assert len(links) == len(rejected_round.warping_path)
    colours = [link.line.color for link in links]
    assert colours.count(figures.REJECTED_LINK) == sum(1 for _, j in rejected_round.warping_path
                                                       if j >= rejected_round.accepted)
    draft_row, proxy_row = [trace for trace in fig.data if trace.mode == "markers+text"]
    assert list(proxy_row.text) == [figures.visible(t) for t in rejected_round.proxy_tokens]


def test_acceptance_chart_counts_per_round(recorded):
    fig = figures.acceptance_figure(recorded)
    proposed, accepted = fig.data[0], fig.data[1]
    assert list(proposed.y) == [r.proposed for r in recorded]
    assert list(accepted.y) == [r.accepted for r in recorded]
    total_accepted = sum(r.accepted for r in recorded)
    total_proposed = sum(r.proposed for r in recorded)
    assert fig.data[2].y[-1] == pytest.approx(total_accepted / total_proposed)


def test_text_is_coloured_by_origin(recorded):
    page = figures.text_html(recorded)
    origins = [origin for _, origin, *_ in figures.written_tokens(recorded)]
    assert page.count('class="tt-token"') == len(origins)
    assert page.count(f"border-bottom:2px solid {figures.ORIGIN_COLOURS['accepted']}") == origins.count("accepted") + 1
    assert "round 0" in page


def test_throughput_reports_the_speedup(recorded, tiny_target):
    reference = autoregressive(*tiny_target, "def mean(values):\n    total = 0\n", max_new_tokens=48).rounds
    fig = figures.throughput_figure({"TokenTiming": recorded, "target alone": reference})
    assert "speedup" in fig.layout.title.text and len(fig.data) == 2
    assert fig.data[0].y[-1] == sum(len(r.new_token_ids) for r in recorded)


def test_empty_round_gives_a_readable_figure():
    import numpy as np

    fig = figures.alignment_heatmap([], [], np.zeros((0, 0)), np.zeros((0, 2), dtype=int), 8)
    assert "nothing was proposed" in fig.layout.annotations[0].text
