"""The app's handlers called directly on the tiny pair (no server, no browser): what each returns to which
component when things go right and when they go wrong."""

import json
import os
import time

import pytest

os.environ["TOKENTIMING_PAIR"] = "tiny"  # before app builds its page
import app  # noqa: E402
from tokentiming import TokenTimingDecoder  # noqa: E402
from tokentiming.views import figures  # noqa: E402

tab, play = app.generate_tab, app.playground_tab


def values(**changes) -> dict:
    """The Generate inputs, keyed by component, as the page would send them."""
    base = {tab.state: app.Session(), tab.draft_box: "tiny-draft", tab.target_box: "tiny-target",
            tab.prompt: "def add(a, b):", tab.chat: False, tab.max_new_tokens: 24, tab.temperature: 0.0,
            tab.top_p: 1.0, tab.num_draft_tokens: 5, tab.adaptive: False, tab.band: 8, tab.verifier: "tokentiming",
            tab.seed: -1, tab.compare: False}
    return base | {getattr(tab, name): value for name, value in changes.items()}


def final(events) -> dict:
    """Every update a streaming handler sent, merged in order (what the page ends up showing)."""
    shown = {}
    for update in events:
        shown |= update
    return shown


@pytest.fixture(scope="module")
def previous():
    """A finished run: the session and what the page shows after it."""
    inputs = values()
    shown = final(tab.generate(inputs))
    return shown[tab.state], shown


def test_empty_prompt_keeps_previous_results_and_says_type_a_prompt(previous):
    session, _ = previous
    shown = final(tab.generate(values(prompt="  ", state=session)))
    assert "Type a prompt" in shown[tab.status]
    for component in (tab.text, tab.stats, tab.heatmap, tab.mapping, tab.acceptance, tab.throughput, tab.state):
        assert component not in shown, "an error replaced earlier results"


def test_failed_load_keeps_the_loaded_model_and_reports_only_the_failing_role(previous):
    loaded_target = app.MODELS.slots["target"]
    shown = tab.load_pair("tiny-draft", "not a model!")
    assert app.MODELS.slots["target"] is loaded_target
    assert "unknown model" in shown[tab.status]
    assert "tiny-target" in shown[tab.target_status] and "M parameters" in shown[tab.target_status]
    assert "tiny-draft" in shown[tab.draft_status] and "M parameters" in shown[tab.draft_status]


def test_missing_folder_is_explained_and_the_old_model_stays(previous, tmp_path):
    loaded_draft = app.MODELS.slots["draft"]
    shown = tab.load_pair(str(tmp_path / "no-such-folder"), "tiny-target")
    assert app.MODELS.slots["draft"] is loaded_draft
    assert "no-such-folder" in shown[tab.status]


def test_generate_updates_the_model_status_lines(previous):
    _, shown = previous
    assert "tiny-draft" in shown[tab.draft_status] and "tiny-target" in shown[tab.target_status]
    assert "shared token strings" in shown[tab.facts]


def test_over_context_request_is_refused_before_generation_naming_both_numbers(previous):
    session, _ = previous
    context = app.context_length(app.MODELS.slots["target"].model)
    shown = final(tab.generate(values(max_new_tokens=context + 100, state=session)))
    assert str(context + 100) in shown[tab.status] and str(context) in shown[tab.status]
    assert tab.text not in shown and tab.state not in shown

    long_prompt = "word " * 4000
    shown = final(tab.generate(values(prompt=long_prompt, state=session)))
    assert str(context) in shown[tab.status], shown[tab.status]
    assert tab.text not in shown


def test_load_sets_max_new_tokens_to_the_target_context(previous):
    shown = tab.load_pair("tiny-draft", "tiny-target")
    context = app.context_length(app.MODELS.slots["target"].model)
    assert shown[tab.max_new_tokens].maximum == context - 1
    assert "value" not in shown[tab.max_new_tokens].constructor_args, "the update must not reset the value"


def test_api_generate_equals_the_library(previous):
    result = app.api_generate("tiny-target", "tiny-draft", "def add(a, b):", False, 24, 0.0, 1.0, 5, 8,
                              "tokentiming", -1, False, 0)
    target, draft = app.MODELS.slots["target"], app.MODELS.slots["draft"]
    expected = TokenTimingDecoder(target.model, target.tokenizer, draft.model, draft.tokenizer).generate(
        "def add(a, b):", max_new_tokens=24, num_draft_tokens=5, adaptive=False)
    assert result["token_ids"] == expected.token_ids and result["text"] == expected.text
    assert [r["accepted"] for r in result["rounds"]] == [r.accepted for r in expected.rounds]


def test_stop_says_how_far_it_got_and_computes_no_speedup_from_a_cut_off_baseline(previous):
    session, _ = previous
    cut = app.Session(session.rounds, session.reference_rounds[:3] or session.rounds[:3], compare=False)
    shown = tab.stop(cut)
    tokens = sum(len(r.new_token_ids) for r in session.rounds)
    assert f"Stopped after {tokens} tokens" in shown[tab.status]
    assert "×" not in shown[tab.stats] and "speedup" not in shown[tab.throughput].layout.title.text
    assert "no speedup" in shown[tab.stats]
    assert shown[tab.stop_button].interactive is False


def test_picking_a_round_stops_follow_live_and_streaming_no_longer_moves_the_slider(previous):
    session, _ = previous
    shown = tab.pick_round(session, 0)
    assert shown[tab.follow] is False and session.follow is False
    assert shown[tab.round_detail].startswith("Round 0")
    update = tab.run_view(session, plots=True)  # the next streaming update
    assert update[tab.round_slider].value == 0, "streaming pulled the slider back to the newest round"
    assert update[tab.heatmap].layout.title.text.startswith("Round 0:")
    settled = tab.settle(session)  # after the run: still the person's round
    assert settled[tab.round_slider].value == 0 and settled[tab.heatmap].layout.title.text.startswith("Round 0:")
    tab.set_follow(session, True)


def test_inspector_opens_on_the_last_round_that_proposed_something(previous):
    session, _ = previous
    session.follow = True
    update = tab.run_view(session, plots=True)
    expected = app.opening_round(session.rounds)
    assert session.rounds[expected].proposed > 0
    assert update[tab.round_slider].value == expected


def test_clicking_a_token_selects_its_round_with_its_probability(previous):
    session, _ = previous
    tokens = list(figures.written_tokens(session.rounds))
    position = next(n for n, t in enumerate(tokens) if t[1] == "accepted")
    shown = tab.pick_token(session, position)
    token, origin, index, prob, *_ = tokens[position]
    assert shown[tab.round_slider].value == index
    assert f"round {index}" in shown[tab.round_detail] and f"{prob:.3f}" in shown[tab.round_detail]


def test_playground_text_of_3000_characters_renders_quickly_with_a_capped_payload():
    text = ("def f(x):\n    return x * 2  # héllo 世界 👋 مرحبا\n" * 80)[:3000]
    start = time.perf_counter()
    shown = play.align(text, "tiny-draft", "tiny-target", 8)
    payload = sum(len(json.dumps(shown[c].to_plotly_json(), default=str)) for c in (play.overview, play.heatmap,
                                                                                     play.mapping))
    assert time.perf_counter() - start < 10
    assert payload < 2_000_000, f"{payload / 1e6:.1f} MB of figures"
    assert len(shown[play.table]) <= figures.WINDOW
    assert shown[play.window].visible is True
    moved = play.move(shown[play.state], 200)
    assert moved[play.table][0][0] > shown[play.table][0][0]


def test_playground_text_over_the_limit_gets_a_plain_message():
    shown = play.align("x" * (app.MAX_PLAYGROUND_CHARS + 1), "tiny-draft", "tiny-target", 8)
    assert list(shown) == [play.status] and f"{app.MAX_PLAYGROUND_CHARS:,}" in shown[play.status]


def test_api_align_returns_banded_cells_not_a_dense_matrix_unless_asked():
    result = app.api_align("print('héllo 世界')", "tiny-draft", "tiny-target", 8)
    assert "cost_matrix" not in result and result["banded_cells"]
    k, m = result["shape"]
    assert result["warping_path"][0] == [0, 0] and result["warping_path"][-1] == [k - 1, m - 1]
    dense = app.api_align("print('héllo 世界')", "tiny-draft", "tiny-target", 8, True)
    assert len(dense["cost_matrix"]) == k and len(dense["cost_matrix"][0]) == m


def test_pair_doctor_ranks_drafts_and_recommends_none_when_nothing_beats_the_noise():
    """The doctor tab and /doctor API: one report per candidate with both lossless rules measured; the tiny
    draft is slower than the tiny target alone, so it must not be recommended."""
    result = app.api_doctor("tiny-target", ["tiny-draft"], prompts=2, max_new_tokens=16)
    (report,) = result["drafts"]
    assert report["draft"] == "tiny-draft"
    assert 0 < report["intersection_of_target"] < 1 and report["alignment_cost"] > 0
    assert set(report["acceptance"]) == {"tokentiming", "tli"} and report["tau"]["tokentiming"] >= 1
    assert not report["pays_off"] and result["recommendation"].startswith("No draft pays")


def test_pair_doctor_without_candidates_says_what_to_pick():
    out = app.DoctorTab.diagnose(type("Tab", (), {"status": "status"})(), "tiny-target", [], 2, 16)
    assert "Pick at least one candidate draft" in out["status"]
