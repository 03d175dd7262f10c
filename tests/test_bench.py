"""The benchmark harness on the tiny pair: methods run, ids compared, reports written, order interleaved.
No timing assertions: these machines are shared and noisy."""

import json
import re

import pytest
import torch

from tokentiming.__main__ import main
from tokentiming.core.decoder import render_prompt
from tokentiming.core.verification import Sampling
from tokentiming.tools import bench


@pytest.fixture(scope="module")
def harness(tiny_target, tiny_draft):
    h = bench.Bench(tiny_target, tiny_draft, max_new_tokens=12)
    yield h
    h.close()


@pytest.fixture(scope="module")
def prompts():
    chosen = {}
    for prompt in bench.load_prompts():
        chosen.setdefault(prompt.category, prompt)
    return [chosen["code"], chosen["chat"]]


def test_builtin_prompts_cover_the_categories():
    categories = {p.category for p in bench.load_prompts()}
    assert {"code", "chat", "prose", "multilingual"} <= categories
    assert any(p.chat for p in bench.load_prompts())


def test_spec_bench_questions_are_accepted(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "writing", "turns": ["Write a haiku.", "Again."]}) + "\n")
    (prompt,) = bench.load_prompts(path)
    assert prompt.category == "writing" and prompt.chat and prompt.text == "Write a haiku."


def test_runs_are_interleaved_prompt_by_prompt():
    order = list(bench.interleaved([0, 1], ["ar", "tokentiming", "hf-uag"], repeats=2))
    assert [method for _, _, method in order[:6]] == ["ar", "tokentiming", "hf-uag"] * 2
    assert [index for _, index, _ in order] == [0, 0, 0, 1, 1, 1] * 2
    assert [repeat for repeat, _, _ in order] == [0] * 6 + [1] * 6


@pytest.fixture(scope="module")
def every_method_runs(harness, prompts):
    """One greedy benchmark of every method, shared by the tests that read it."""
    return bench.run_benchmark(harness, prompts, list(bench.METHODS))


def test_every_method_runs_and_greedy_ids_are_compared(harness, every_method_runs):
    methods = list(bench.METHODS)
    greedy = [m for m in methods if bench.runnable(m, 0.0, methods)]  # hf-usd is transformers' sampling path
    assert "hf-usd" not in greedy and "tokentiming" in greedy
    runs = every_method_runs
    assert [(r.prompt_index, r.method) for r in runs] == [(i, m) for i in range(2) for m in greedy]
    assert all(r.new_tokens == 12 or r.token_ids[-1] == harness.target_tokenizer.eos_token_id for r in runs)
    identical = bench.identical_to_target(runs, methods)
    assert identical == {m: True for m in greedy}
    tt = [r for r in runs if r.method == "tokentiming"]
    assert all(r.target_forwards <= r.new_tokens for r in tt) and sum(r.proposed for r in tt) > 0
    assert all(r.target_forwards == r.new_tokens for r in runs if r.method in ("ar", "hf-ar"))


def test_summary_and_report_files(every_method_runs, tmp_path):
    methods = ["ar", "tokentiming", "hf-uag"]
    runs = [r for r in every_method_runs if r.method in methods]
    summary = bench.summarise(runs, methods)
    assert set(summary) == {"code", "chat", "overall"}
    row = summary["overall"]["tokentiming"]
    assert {"tokens_per_s", "speedup_vs_ar", "speedup_vs_hf-uag", "acceptance_rate", "tau", "align_us_median"} <= set(row)
    assert summary["overall"]["ar"]["speedup_vs_ar"] == pytest.approx(1.0)
    settings = dict(target="tiny-target", draft="tiny-draft", max_new_tokens=12, temperature=0.0, repeats=1,
                    dtype="float32", machine=bench.machine(), peak_rss_mb=bench.peak_rss_mb())
    report = bench.write_report(tmp_path, runs, summary, bench.identical_to_target(runs, methods), None, settings)
    assert (tmp_path / "report.md").read_text().count("| overall |") == 3
    assert json.loads((tmp_path / "report.json").read_text())["identical_to_target"] == report["identical_to_target"]
    assert (tmp_path / "speedup.html").stat().st_size > 1000


def test_fidelity_puts_a_lossless_method_within_sampling_noise(tiny_target, tiny_draft):
    """The first written token's total variation distance from the target's exact distribution (temperature 0.7,
    top-p 0.95: 18 tokens possible) for TokenTiming, which is lossless.

    Power: a lossless method's expected distance is at most the noise level (by Jensen), 0.10 at 200 samples; the
    bound of 3x the noise level (0.31) fails a method whose first-token distribution is more than about 4x the
    noise level (0.41) away in total variation. A check against the wrong exact distribution (the untempered one,
    0.32 away) fails deterministically: its noise level is not the one computed here."""
    samples, temperature, top_p = 200, 0.7, 0.95
    prompt = bench.Prompt("code", "x = [1, 2, 3]\nprint(", chat=False)
    sampler = bench.Bench(tiny_target, tiny_draft, max_new_tokens=4, temperature=temperature, top_p=top_p)
    try:
        rows = bench.fidelity(sampler, prompt, ["tokentiming"], samples=samples)
    finally:
        sampler.close()
    model, tokenizer = tiny_target
    with torch.inference_mode():
        logits = model(torch.tensor([render_prompt(tokenizer, prompt.message)])).logits[0, -1]
    exact = Sampling(temperature, 0, top_p).probs(logits)
    noise = float((exact * (1 - exact)).sqrt().sum() / (2 * samples ** 0.5))
    assert set(rows) == {"tokentiming"}
    for method, row in rows.items():
        assert row["samples"] == samples and row["noise_level"] == pytest.approx(noise, rel=1e-4)
        assert 0 < row["tv_distance"] < 3 * noise, method


def test_unknown_method_is_rejected(harness, prompts):
    with pytest.raises(ValueError, match="unknown method"):
        bench.run_benchmark(harness, prompts, ["ar", "vllm"])


def test_bench_command_writes_a_report(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"category": "code", "prompt": "def add(a, b):", "chat": False}) + "\n")
    code = main(["bench", "--target", "tiny-target", "--draft", "tiny-draft", "--prompts", str(prompts),
                 "--max-new-tokens", "8", "--methods", "ar,tokentiming,hf-uag", "--out", str(tmp_path / "out")])
    output = capsys.readouterr()
    assert code == 0, output.err
    assert "Greedy outputs identical to the target alone: ar yes, tokentiming yes, hf-uag yes" in output.out
    assert (tmp_path / "out" / "report.json").is_file()


def test_rank_drafts_recommends_what_its_table_measured(capsys):
    """The recommendation follows the printed speedup: "Use tiny-draft" exactly when the faster rule beats the
    target alone by more than twice its standard error across the calibration prompts."""
    code = main(["rank-drafts", "--target", "tiny-target", "--drafts", "tiny-draft", "--limit", "2",
                 "--max-new-tokens", "8"])
    output = capsys.readouterr()
    assert code == 0, output.err
    (row,) = [line for line in output.out.splitlines() if line.startswith("| 1 | tiny-draft |")]
    speedups = [(float(mean), float(error)) for mean, error in re.findall(r"([0-9.]+)× ± ([0-9.]+|nan)", row)]
    assert len(speedups) == 2  # one per lossless rule
    best, error = max(speedups)
    pays = best - 2 * error > 1.0
    assert ("Use tiny-draft" in output.out) == pays and ("No draft pays" in output.out) == (not pays)


def test_transformers_sampling_path_leaves_the_draft_usable(tiny_target, tiny_draft, prompts):
    """transformers' cross-tokenizer sampling swaps pruned embeddings and head into the draft for good; the
    harness gives them to transformers' runs only, so our runs (and later benchmarks) see the real draft."""
    draft = tiny_draft[0]
    embeddings, head = draft.get_input_embeddings(), draft.get_output_embeddings()
    for k in (3, 5):  # a second harness finds transformers' cached translator, as a second benchmark would
        sampler = bench.Bench(tiny_target, tiny_draft, max_new_tokens=6, temperature=0.8, num_draft_tokens=k)
        try:
            runs = bench.run_benchmark(sampler, prompts[:1], ["hf-uag", "tokentiming", "ar"])
        finally:
            sampler.close()
        assert all(r.new_tokens > 0 for r in runs)
        assert draft.get_input_embeddings() is embeddings and draft.get_output_embeddings() is head


def test_gpu_script_runs_end_to_end_in_quick_mode_without_generating_past_the_quick_drafts_positions(tmp_path,
                                                                                                     capsys):
    """The script a GPU session runs once: its CPU smoke test trains the quick pair, races every method,
    compares the device and host draft loops and projects the real pairs. It once crashed there
    (transformers' assisted generation ran the 256-position quick draft past its positions)."""
    from tokentiming.tools import gpubench

    gpubench.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "device loop drafted and wrote what the host loop did: True" in printed
    assert "Greedy outputs identical to the target alone: ar yes" in printed and " no" not in printed.split(
        "Greedy outputs identical")[-1].splitlines()[0]
    assert (tmp_path / "k8-t0" / "report.md").exists()
    projected = (tmp_path / "projection.md").read_text()
    assert projected.startswith("**Projection, not a measurement.**") and "toy models" in projected
    assert "SmolLM2-135M → Qwen2.5-Coder-7B | assumed" in projected


def test_projection_reads_the_recorded_round_and_prices_it_with_the_measured_steps():
    from tokentiming.tools.projection import RECORDED, RoundShape, project

    shape = RoundShape.from_report(RECORDED)  # the default pair, fp32 greedy: tau 3.02 in its table
    assert shape.new_tokens == pytest.approx(3.02, abs=0.01) and 1 < shape.draft_steps <= 8
    assert shape.verify_rows >= 2 and 0 < shape.host_ms < 50 and 0 < shape.baseline_host_ms < 5
    assert shape.decode_speedup == pytest.approx(2.18, abs=0.01)  # its decoding-alone column
    # 3 tokens a round for 4 draft steps of 1 ms, a 5 ms verify pass and 1 ms of host work, against 4.5 ms a token
    assert project(RoundShape(3, 4, 5, 1.0, 0.5, 2.0, "made up"), draft_ms=1.0, target_ms=4.0, verify_ms=5.0) == \
        pytest.approx(3 * 4.5 / 10)
