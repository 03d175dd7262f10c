"""How acceptance depends on vocabulary overlap: ``tli`` against ``tokentiming``.

TLI can only propose tokens that both vocabularies spell with the same bytes, so its acceptance should fall
with the overlap; re-encoding (``tokentiming``) proposes whatever text the draft wrote and should not care.
Two measurements, written to ``--out`` as JSON, a markdown table and a figure:

- **controlled**: one pair, its intersection randomly thinned to a share of its size (the same draft, target
  and prompts; only the overlap changes);
- **natural pairs**: every pair given, each at its own overlap (the drafts differ in quality too, so these
  points mix both effects).

    python -m tokentiming.tools.overlap --out assets/benchmarks/overlap
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core import trace
from ..core.facts import pair_facts
from .bench import Bench, load_prompts, machine

RULES = ("tokentiming", "tli")


def measure(bench: Bench, prompts, rules, temperature: float, seed: int = 0) -> dict:
    """Pooled acceptance and tau of each rule over the prompts."""
    pooled = {}
    for rule in rules:
        runs = [bench.run(rule, prompt, seed=seed + n, temperature=temperature) for n, prompt in enumerate(prompts)]
        stats = trace.metrics(trace.combine([run.totals for run in runs]))
        pooled[rule] = {"acceptance_rate": stats["acceptance_rate"], "tau": stats["tau"],
                        "proposed": stats["proposed"], "new_tokens": stats["new_tokens"]}
    return pooled


def controlled(bench: Bench, prompts, keeps: list[float], temperatures: list[float]) -> list[dict]:
    """TLI on thinned intersections of one pair; tokentiming once per temperature as the reference."""
    full = bench.decoder.intersection
    rows = []
    try:
        for temperature in temperatures:
            reference = measure(bench, prompts, ["tokentiming"], temperature)["tokentiming"]
            for keep in keeps:
                bench.decoder.intersection = full.thinned(keep)
                shared = bench.decoder.intersection
                rows.append({"temperature": temperature, "keep": keep, "intersection": shared.size,
                             "share_of_draft": shared.share_of_draft, "share_of_target": shared.share_of_target,
                             "tli": measure(bench, prompts, ["tli"], temperature)["tli"], "tokentiming": reference})
                print(f"T={temperature} keep={keep:.2f}: tli acceptance {rows[-1]['tli']['acceptance_rate']:.2f}, "
                      f"tokentiming {reference['acceptance_rate']:.2f}", file=sys.stderr)
    finally:
        bench.decoder.intersection = full
    return rows


def natural(pairs: list[tuple[str, str]], prompts, temperatures, max_new_tokens: int) -> list[dict]:
    from ..models import load

    rows = []
    for draft_spec, target_spec in pairs:
        target, draft = load(target_spec), load(draft_spec)
        bench = Bench(target, draft, max_new_tokens=max_new_tokens)
        facts = pair_facts(draft[1], target[1])
        for temperature in temperatures:
            rows.append({"draft": draft_spec, "target": target_spec, "temperature": temperature,
                         "share_of_draft": facts["intersection_of_draft"],
                         "share_of_target": facts["intersection_of_target"],
                         **measure(bench, prompts, RULES, temperature)})
            print(f"{draft_spec} -> {target_spec} T={temperature}: " + ", ".join(
                f"{rule} {rows[-1][rule]['acceptance_rate']:.2f}" for rule in RULES), file=sys.stderr)
        bench.close()
        del target, draft, bench
    return rows


def figure(result: dict):
    """Acceptance against the share of the draft's vocabulary both sides share."""
    import plotly.graph_objects as go

    fig = go.Figure()
    symbols = {"tli": "circle", "tokentiming": "diamond"}
    colours = {"tli": "#E69F00", "tokentiming": "#0072B2"}  # Okabe-Ito: safe for colour-blind readers
    dashes = ["solid", "dash", "dot"]
    for n, temperature in enumerate(result["settings"]["temperatures"]):
        rows = [r for r in result["controlled"] if r["temperature"] == temperature]
        for rule in RULES:
            fig.add_trace(go.Scatter(
                x=[r["share_of_draft"] for r in rows], y=[r[rule]["acceptance_rate"] for r in rows],
                mode="lines+markers", marker=dict(symbol=symbols[rule], color=colours[rule]),
                line=dict(color=colours[rule], dash=dashes[n % 3]),
                name=f"{rule}, thinned intersection, T={temperature}"))
        points = [r for r in result["natural"] if r["temperature"] == temperature]
        for rule in RULES:
            fig.add_trace(go.Scatter(
                x=[r["share_of_draft"] for r in points], y=[r[rule]["acceptance_rate"] for r in points],
                mode="markers+text", marker=dict(symbol=symbols[rule] + "-open", size=11, color=colours[rule]),
                text=[f"{r['draft']}→{r['target']}" for r in points] if rule == "tli" and n == 0 else None,
                textposition="top center", textfont=dict(size=9), name=f"{rule}, real pairs, T={temperature}"))
    fig.update_layout(title="Acceptance against vocabulary overlap", template="plotly_white", height=520,
                      xaxis=dict(title="share of the draft's tokens also in the target vocabulary (bytes)",
                                 tickformat=".0%"),
                      yaxis=dict(title="acceptance rate", range=[0, 1.02]), legend=dict(font=dict(size=10)))
    return fig


def write_png(fig, path: Path, width: int = 900, height: int = 520) -> None:
    """The figure as a PNG, drawn by headless Chromium (plotly's own image export needs extra packages)."""
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        page_file = Path(folder) / "figure.html"
        fig.write_html(page_file, include_plotlyjs=True, full_html=True, default_width=width, default_height=height)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": width + 20, "height": height + 20})
            page.goto(page_file.as_uri())
            page.wait_for_selector(".main-svg")
            page.locator(".plotly-graph-div").screenshot(path=str(path))
            browser.close()


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"Controlled: draft `{s['draft']}`, target `{s['target']}`, intersection thinned at random; "
             f"{s['prompts']} prompts, {s['max_new_tokens']} new tokens; machine: {s['machine']}.", "",
             "| temperature | intersection kept | share of draft vocabulary | tli acceptance | tli tau | "
             "tokentiming acceptance | tokentiming tau |", "|---|---|---|---|---|---|---|"]
    for r in result["controlled"]:
        lines.append(f"| {r['temperature']} | {r['keep']:.0%} | {r['share_of_draft']:.1%} | "
                     f"{r['tli']['acceptance_rate']:.2f} | {r['tli']['tau']:.2f} | "
                     f"{r['tokentiming']['acceptance_rate']:.2f} | {r['tokentiming']['tau']:.2f} |")
    lines += ["", "Real pairs:", "", "| draft → target | temperature | shared (of draft / of target) | "
              "tli acceptance | tli tau | tokentiming acceptance | tokentiming tau |", "|---|---|---|---|---|---|---|"]
    for r in result["natural"]:
        lines.append(f"| {r['draft']} → {r['target']} | {r['temperature']} | {r['share_of_draft']:.1%} / "
                     f"{r['share_of_target']:.1%} | {r['tli']['acceptance_rate']:.2f} | {r['tli']['tau']:.2f} | "
                     f"{r['tokentiming']['acceptance_rate']:.2f} | {r['tokentiming']['tau']:.2f} |")
    lines += ["", f"Command: `{s['command']}`"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokentiming.tools.overlap", description=__doc__.split("\n")[0])
    parser.add_argument("--draft", default="smollm2-135m-instruct", help="the controlled pair's draft")
    parser.add_argument("--target", default="qwen2.5-coder-0.5b-instruct", help="the controlled pair's target")
    parser.add_argument("--keep", default="1,0.9,0.8,0.7,0.5,0.3", help="shares of the intersection to keep")
    parser.add_argument("--pairs", default="tiny-draft:tiny-target,tiny-draft:qwen2.5-coder-0.5b-instruct",
                        help="real pairs draft:target, comma-separated (the controlled pair is added)")
    parser.add_argument("--temperatures", default="0,0.7")
    parser.add_argument("--categories", default="code,chat")
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", default="bench-out/overlap")
    args = parser.parse_args(argv)

    from ..models import load

    temperatures = [float(t) for t in args.temperatures.split(",")]
    wanted = args.categories.split(",")
    prompts = [p for p in load_prompts() if p.category in wanted]
    prompts = [p for p in prompts if [q for q in prompts if q.category == p.category].index(p) < args.per_category]
    bench = Bench(load(args.target), load(args.draft), max_new_tokens=args.max_new_tokens)
    result = {"settings": {"draft": args.draft, "target": args.target, "temperatures": temperatures,
                           "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "machine": machine(),
                           "command": " ".join(["python -m tokentiming.tools.overlap", *sys.argv[1:]])}}
    result["controlled"] = controlled(bench, prompts, [float(k) for k in args.keep.split(",")], temperatures)
    facts = pair_facts(bench.draft_tokenizer, bench.target_tokenizer)
    result["natural"] = [{"draft": args.draft, "target": args.target, "temperature": r["temperature"],
                          "share_of_draft": facts["intersection_of_draft"],
                          "share_of_target": facts["intersection_of_target"], "tli": r["tli"],
                          "tokentiming": r["tokentiming"]}
                         for r in result["controlled"] if r["keep"] == 1.0]
    bench.close()
    del bench
    pairs = [tuple(pair.split(":")) for pair in args.pairs.split(",") if pair]
    result["natural"] += natural(pairs, prompts, temperatures, args.max_new_tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overlap.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    (out / "overlap.md").write_text(markdown(result) + "\n", encoding="utf-8")
    fig = figure(result)
    fig.write_html(out / "overlap.html", include_plotlyjs="cdn")
    write_png(fig, out / "overlap.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
