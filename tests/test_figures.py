"""Figure builders on a recorded trace: labels are the token strings, paths and colours follow the trace,
scales are fixed, long alignments are windowed, and recordings read back into the same figures."""

import json

import numpy as np
import pytest

from tokentiming import align_text, autoregressive
from tokentiming.core.trace import BONUS, CORRECTION, TARGET
from tokentiming.views import figures
from tokentiming.views.recorded import DEFAULT_RECORDING, Recording, load_recording


@pytest.fixture(scope="module")
def recorded(decoder):
    return decoder.generate("def mean(values):\n    total = 0\n", max_new_tokens=48).rounds


@pytest.fixture(scope="module")
def rejected_round(recorded):
    return next(r for r in recorded if r.proposed and r.accepted < r.proposed)


def test_heatmap_axes_are_the_token_strings_and_the_path_marks_rejections_by_shape(rejected_round):
    fig = figures.round_heatmap(rejected_round, band=8)
    k, m = rejected_round.cost_matrix.shape
    cost, band, path = fig.data[:3]
    assert list(cost.x) == [f"{j} {figures.visible(t)}" for j, t in enumerate(rejected_round.proxy_tokens)]
    assert list(cost.y) == [f"{i} {figures.visible(t)}" for i, t in enumerate(rejected_round.draft_tokens[:k])]
    assert np.asarray(cost.z).shape == (k, m)
    assert len(path.x) == len(rejected_round.warping_path)
    accepted = [j < rejected_round.accepted for _, j in rejected_round.warping_path]
    assert list(path.marker.color) == [figures.ACCEPTED_LINK if a else figures.REJECTED_LINK for a in accepted]
    assert list(path.marker.symbol) == [figures.ACCEPTED_SYMBOL if a else figures.REJECTED_SYMBOL for a in accepted]


def test_heatmap_colour_scale_is_fixed_even_for_a_single_cell_round(recorded):
    """A one-cell round used to get an autoscaled colour bar of -0.4..0.4."""
    single = figures.alignment_heatmap(["a"], ["a"], np.zeros((1, 1)), np.array([[0, 0]]), band=8, accepted=1)
    wide = figures.round_heatmap(next(r for r in recorded if r.proposed > 1), band=8)
    for fig in (single, wide):
        assert (fig.data[0].zmin, fig.data[0].zmax) == (0, figures.COST_SCALE_MAX)


def test_heatmap_legend_names_the_path_its_dots_and_the_band(rejected_round):
    names = [trace.name for trace in figures.round_heatmap(rejected_round, band=8).data if trace.showlegend is not False]
    assert {"warping path", "accepted proxy", "rejected / untested", "outside the band (not computed)"} <= set(names)


def test_band_shading_marks_cells_outside_the_band():
    cost = np.zeros((6, 2))
    path = np.array([[0, 0], [1, 0], [2, 0], [3, 1], [4, 1], [5, 1]])
    fig = figures.alignment_heatmap(["a"] * 6, ["b"] * 2, cost, path, band=0)
    shading = np.asarray(fig.data[1].z, dtype=float)
    assert np.isnan(shading).sum() > 0  # inside the (widened) band
    fig_wide = figures.alignment_heatmap(["a"] * 6, ["b"] * 2, cost, path, band=10)
    assert np.isnan(np.asarray(fig_wide.data[1].z, dtype=float)).all()


def test_mapping_links_follow_the_path_and_rejections_are_dashed(rejected_round):
    fig = figures.round_mapping(rejected_round)
    links = [trace for trace in fig.data if trace.mode == "lines"]
    assert len(links) == len(rejected_round.warping_path)
    rejected = sum(1 for _, j in rejected_round.warping_path if j >= rejected_round.accepted)
    assert [link.line.color for link in links].count(figures.REJECTED_LINK) == rejected
    assert [link.line.dash for link in links].count("dash") == rejected
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


def test_text_marks_every_token_by_origin_with_a_clickable_round(recorded):
    page = figures.text_html(recorded)
    written = list(figures.written_tokens(recorded))
    assert page.count('class="tt-token') == len(written)
    assert page.count(f'style="{figures._mark("accepted")}"') == sum(1 for t in written if t[1] == "accepted")
    assert 'data-round="0"' in page and "round 0" in page


def test_legend_has_every_origin_colour_including_target_alone():
    legend = figures.origin_legend()
    for origin in ("accepted", CORRECTION, BONUS, TARGET):
        assert figures.ORIGIN_COLOURS[origin] in legend and figures.ORIGIN_LABELS[origin] in legend
    assert len(set(figures.ORIGIN_STYLES.values())) == 4, "styles must tell origins apart without colour"


def test_special_token_is_a_pill_and_byte_pieces_are_shown_verbatim(recorded):
    last = recorded[-1]
    ending = type(last)(**{**{f: getattr(last, f) for f in last.__dataclass_fields__}, "emitted_token": "</s>",
                           "emitted_special": True})
    byte_piece = type(last)(**{**{f: getattr(last, f) for f in last.__dataclass_fields__}, "emitted_token": "<0xE4>"})
    page = figures.text_html([ending, byte_piece])
    assert "&lt;/s&gt;" not in page and "</s>" not in page.replace("</span>", "")
    assert 'class="tt-token tt-special"' in page and '<span class="tt-pill">end</span>' in page
    assert "&lt;0xE4&gt;" in page and "\ufffd" not in page


def test_throughput_reports_the_speedup_only_when_both_runs_finished(recorded, tiny_target):
    reference = autoregressive(*tiny_target, "def mean(values):\n    total = 0\n", max_new_tokens=48).rounds
    fig = figures.throughput_figure({"TokenTiming": recorded, "target alone": reference})
    assert "speedup" in fig.layout.title.text and len(fig.data) == 2
    assert fig.data[0].y[-1] == sum(len(r.new_token_ids) for r in recorded)
    cut = figures.throughput_figure({"TokenTiming": recorded, "target alone": reference[:5]}, compare=False)
    assert "speedup" not in cut.layout.title.text


def test_empty_round_gives_a_readable_figure():
    fig = figures.alignment_heatmap([], [], np.zeros((0, 0)), np.zeros((0, 2), dtype=int), 8)
    assert "nothing was proposed" in fig.layout.annotations[0].text


def test_long_text_heatmap_is_a_window_with_no_per_cell_text(tiny_draft, tiny_target):
    """A 3,000-character text once gave a 138 MB heatmap with a hover string per cell."""
    text = ("for i in range(10):\n    print('héllo 世界', i)\n" * 70)[:3000]
    alignment = align_text(text, tiny_draft[1], tiny_target[1], band=8)
    k, m = alignment.shape
    window = figures.alignment_window(alignment, k // 2)
    d0, d1, p0, p1 = window
    assert d1 - d0 <= figures.WINDOW and p1 - p0 <= figures.WINDOW
    fig = figures.window_heatmap(alignment, window)
    assert fig.data[0].text is None
    assert np.asarray(fig.data[0].z).shape == (d1 - d0, p1 - p0)
    overview = figures.path_overview(alignment.warping_path, alignment.shape, window)
    payload = len(json.dumps(fig.to_plotly_json(), default=str)) + len(json.dumps(overview.to_plotly_json(),
                                                                                  default=str))
    assert payload < 1_000_000
    assert len(overview.data[0].x) == len(alignment.warping_path)


def test_recording_reads_back_into_the_same_figures(recorded):
    recording = Recording({"options": {"band": 8}}, recorded, recorded[:3])
    back = Recording.from_json(recording.to_json())
    assert [r.new_token_ids for r in back.rounds] == [r.new_token_ids for r in recorded]
    for original, copy in zip(recorded, back.rounds):
        assert np.array_equal(copy.cost_matrix, original.cost_matrix)
        assert np.array_equal(copy.warping_path, original.warping_path)
    assert figures.text_html(back.rounds) == figures.text_html(recorded)


def test_shipped_recording_is_compact_and_says_where_and_when():
    recording = load_recording()
    assert recording is not None, f"{DEFAULT_RECORDING} is missing"
    assert DEFAULT_RECORDING.stat().st_size < 400_000
    assert recording.meta["machine"] and recording.meta["date"] and recording.reference_rounds
    assert recording.meta["machine"] in recording.label and recording.meta["date"] in recording.label


def test_tli_rounds_say_their_proposals_came_from_the_intersection_not_from_re_encoding(decoder):
    """A tli round's views were labelled as DTW proxies, as if its proposals had been re-encoded."""
    rounds = {rule: [t for t in decoder.stream("def add(a, b):\n", max_new_tokens=24, verifier=rule, seed=0)
                     if t.proposed]
              for rule in ("tli", "tokentiming")}
    tli, tokentiming = rounds["tli"][0], rounds["tokentiming"][0]
    mapping = figures.round_mapping(tli)
    assert "accepted (tli)" in mapping.layout.title.text
    assert list(mapping.layout.yaxis.ticktext) == ["intersection", "draft"]
    assert "intersection" in figures.round_heatmap(tli, 8).layout.xaxis.title.text
    assert list(figures.round_mapping(tokentiming).layout.yaxis.ticktext) == ["proxy", "draft"]
    assert "proxy tokens" in figures.round_heatmap(tokentiming, 8).layout.xaxis.title.text
