"""Benchmarks: every method on the same prompts, interleaved prompt by prompt, reported as ratios.

Methods: ``ar`` (target alone, our loop), ``hf-ar`` (transformers ``generate`` alone), ``tokentiming`` (ours)
and ``hf-uag`` (transformers' assisted generation across tokenizers: string-level matching when greedy, its
vocabulary-intersection path when sampling). ``ar-static`` and ``tokentiming-static`` run our loops on static
KV caches replayed from CUDA graphs on a GPU (:mod:`tokentiming.backends.kv`). Our loops count their own forward passes
(graph replays never call the model's ``forward``); transformers' are counted with hooks on the models.
"""

from __future__ import annotations

import contextlib
import json
import platform
import resource
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..core.decoder import (DEFAULT_ADAPTIVE, DEFAULT_DRAFT_TOKENS, TokenTimingDecoder, autoregressive,
                      render_prompt)
from ..core.verification import Sampling

METHODS = ("ar", "hf-ar", "tokentiming", "hf-uag", "ar-static", "tokentiming-static")
BUILTIN_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts.jsonl"
#: transformers' sampling path across tokenizers is not lossless (see the fidelity column).
NOT_LOSSLESS_WHEN_SAMPLING = {"hf-uag"}


@dataclass
class Prompt:
    category: str
    text: str
    chat: bool

    @property
    def message(self):
        return [{"role": "user", "content": self.text}] if self.chat else self.text


@dataclass
class Run:
    method: str
    category: str
    prompt_index: int
    repeat: int
    token_ids: list[int]
    wall_s: float
    target_forwards: int
    draft_forwards: int
    proposed: int = 0
    accepted: int = 0
    align_us: list[float] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)


def load_prompts(path: str | Path | None = None) -> list[Prompt]:
    """Our built-in set, or a JSONL file: ``{"category", "prompt", "chat"}`` lines or Spec-Bench questions
    (``{"category", "turns": [...]}``, first turn sent as a chat message)."""
    prompts = []
    for line in Path(path or BUILTIN_PROMPTS).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "turns" in record:
            prompts.append(Prompt(record.get("category", "spec-bench"), record["turns"][0], True))
        else:
            prompts.append(Prompt(record.get("category", "uncategorised"), record["prompt"], bool(record.get("chat"))))
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


class ForwardCounter:
    """Counts forward passes of a model (hooks, so it sees transformers' own loops too)."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.count += 1

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


class Bench:
    """One target/draft pair and the settings every method shares."""

    def __init__(self, target, draft, max_new_tokens=128, temperature=0.0, top_p=1.0,
                 num_draft_tokens=DEFAULT_DRAFT_TOKENS, band=8, adaptive=DEFAULT_ADAPTIVE, seed=0):
        (self.target_model, self.target_tokenizer), (self.draft_model, self.draft_tokenizer) = target, draft
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.num_draft_tokens, self.band, self.adaptive, self.seed = num_draft_tokens, band, adaptive, seed
        Sampling(temperature, 0, top_p)  # validates
        self.decoder = TokenTimingDecoder(self.target_model, self.target_tokenizer, self.draft_model,
                                          self.draft_tokenizer)
        self.target_counter = ForwardCounter(self.target_model)
        self.draft_counter = ForwardCounter(self.draft_model)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def run(self, method: str, prompt: Prompt, max_new_tokens: int | None = None, seed: int | None = None) -> Run:
        max_new_tokens = max_new_tokens or self.max_new_tokens
        seed = self.seed if seed is None else seed
        self.target_counter.take(), self.draft_counter.take()
        _synchronise()
        start = time.perf_counter()
        extra = {}
        base, static = method.removesuffix("-static"), method.endswith("-static")
        if base == "ar":
            generation = autoregressive(self.target_model, self.target_tokenizer, prompt.message, max_new_tokens,
                                        self.temperature, 0, self.top_p, seed, static=static)
        elif base == "tokentiming":
            generation = self.decoder.generate(prompt.message, max_new_tokens=max_new_tokens,
                                               temperature=self.temperature, top_p=self.top_p,
                                               num_draft_tokens=self.num_draft_tokens, band=self.band,
                                               adaptive=self.adaptive, seed=seed, static=static)
            extra = dict(proposed=generation.stats["proposed"], accepted=generation.stats["accepted"],
                         align_us=[r.timings["align_us"] for r in generation.rounds if "align_us" in r.timings])
        elif method in ("hf-ar", "hf-uag"):
            token_ids = self._transformers(method, prompt, max_new_tokens, seed)
        else:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        _synchronise()
        wall = time.perf_counter() - start
        if base in ("ar", "tokentiming"):
            # one target forward per round (the prompt's prefill is not a decoding step)
            token_ids = generation.token_ids
            forwards = len(generation.rounds), sum(r.draft_forwards for r in generation.rounds)
        else:
            forwards = self.target_counter.take(), self.draft_counter.take()
        return Run(method, prompt.category, -1, -1, token_ids, wall, *forwards, **extra)

    def _transformers(self, method: str, prompt: Prompt, max_new_tokens: int, seed: int) -> list[int]:
        ids = torch.tensor([render_prompt(self.target_tokenizer, prompt.message)], device=self.target_model.device)
        options = dict(max_new_tokens=max_new_tokens, do_sample=not self.greedy, pad_token_id=self.target_tokenizer.eos_token_id
                       if self.target_tokenizer.pad_token_id is None else self.target_tokenizer.pad_token_id)
        if not self.greedy:
            options.update(temperature=self.temperature, top_p=self.top_p, top_k=0)
            torch.manual_seed(seed)
        if method == "hf-uag":
            options.update(assistant_model=self.draft_model, tokenizer=self.target_tokenizer,
                           assistant_tokenizer=self.draft_tokenizer)
        with torch.inference_mode(), self._draft_as_transformers_leaves_it(method):
            output = self.target_model.generate(ids, attention_mask=torch.ones_like(ids), **options)
        return output[0, ids.shape[1]:].tolist()

    @contextlib.contextmanager
    def _draft_as_transformers_leaves_it(self, method: str):
        """transformers' cross-tokenizer *sampling* path replaces the draft's input embeddings and head
        with pruned, re-indexed ones, for good (its vocabulary translator is cached with them). Swap its
        versions in for its own runs and the draft's originals back for everything else."""
        if method != "hf-uag" or self.greedy:
            yield
            return
        draft = self.draft_model
        originals = draft.get_input_embeddings(), draft.get_output_embeddings()
        theirs = draft.__dict__.get("_tokentiming_transformers_modules")  # kept with the model, like their cache
        if theirs:
            draft.set_input_embeddings(theirs[0])
            draft.set_output_embeddings(theirs[1])
        try:
            yield
        finally:
            draft.__dict__["_tokentiming_transformers_modules"] = (draft.get_input_embeddings(),
                                                                   draft.get_output_embeddings())
            draft.set_input_embeddings(originals[0])
            draft.set_output_embeddings(originals[1])

    def close(self):
        self.target_counter.handle.remove()
        self.draft_counter.handle.remove()


def _synchronise():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(prompts: list[Prompt], methods: list[str], repeats: int):
    """(repeat, prompt index, method) in the order A B C A B C …, prompt by prompt."""
    for repeat in range(repeats):
        for index in range(len(prompts)):
            for method in methods:
                yield repeat, index, method


def run_benchmark(bench: Bench, prompts: list[Prompt], methods: list[str], repeats: int = 1,
                  progress=None, warmup_tokens: int = 8) -> list[Run]:
    """Warm every method up (``warmup_tokens`` on the first prompt), then run them interleaved prompt by prompt."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    for method in methods:
        bench.run(method, prompts[0], max_new_tokens=min(warmup_tokens, bench.max_new_tokens))
    runs = []
    order = list(interleaved(prompts, methods, repeats))
    for step, (repeat, index, method) in enumerate(order):
        run = bench.run(method, prompts[index], seed=bench.seed + repeat)
        run.prompt_index, run.repeat = index, repeat
        runs.append(run)
        if progress:
            progress(step + 1, len(order), method, prompts[index].category)
    return runs


def identical_to_target(runs: list[Run], methods: list[str]) -> dict[str, bool]:
    """Greedy runs: did each method write exactly the ids of the target alone (``ar``) on every prompt?"""
    reference = {(r.prompt_index, r.repeat): r.token_ids for r in runs if r.method == "ar"}
    if not reference:
        return {}
    return {m: all(r.token_ids == reference[(r.prompt_index, r.repeat)] for r in runs if r.method == m)
            for m in methods}


def summarise(runs: list[Run], methods: list[str]) -> dict:
    """Per category and overall: tokens/s, speedups (total wall-time ratios on the same prompts), acceptance,
    tau and align µs per round (median)."""
    groups = defaultdict(list)
    for run in runs:
        groups[run.category].append(run)
        groups["overall"].append(run)
    summary = {}
    for category, group in groups.items():
        rows = {}
        for method in methods:
            mine = [r for r in group if r.method == method]
            wall = sum(r.wall_s for r in mine)
            tokens = sum(r.new_tokens for r in mine)
            forwards = sum(r.target_forwards for r in mine)
            proposed = sum(r.proposed for r in mine)
            aligned = [us for r in mine for us in r.align_us]
            rows[method] = {
                "tokens_per_s": tokens / wall if wall else 0.0, "wall_s": wall, "new_tokens": tokens,
                "tau": tokens / forwards if forwards else 0.0,
                "draft_forwards_per_token": sum(r.draft_forwards for r in mine) / tokens if tokens else 0.0,
                "acceptance_rate": sum(r.accepted for r in mine) / proposed if proposed else None,
                "align_us_per_round": statistics.median(aligned) if aligned else None,
            }
        for method, row in rows.items():
            for baseline in ("ar", "hf-uag"):
                if baseline in rows and row["wall_s"] and rows[baseline]["new_tokens"] == row["new_tokens"]:
                    row[f"speedup_vs_{baseline}"] = rows[baseline]["wall_s"] / row["wall_s"]
                elif baseline in rows and row["tokens_per_s"] and rows[baseline]["tokens_per_s"]:
                    row[f"speedup_vs_{baseline}"] = row["tokens_per_s"] / rows[baseline]["tokens_per_s"]
        summary[category] = rows
    return summary


def fidelity(bench: Bench, prompt: Prompt, methods: list[str], samples: int = 200, progress=None) -> dict:
    """Sampling only: total variation distance between each method's first written token and the target's
    exact next-token distribution (a lossless method is within sampling noise)."""
    with torch.inference_mode():
        ids = torch.tensor([render_prompt(bench.target_tokenizer, prompt.message)], device=bench.target_model.device)
        exact = Sampling(bench.temperature, 0, bench.top_p).probs(bench.target_model(ids).logits[0, -1]).cpu()
    result = {}
    for method in methods:
        counts = torch.zeros_like(exact)
        for n in range(samples):
            counts[bench.run(method, prompt, max_new_tokens=2, seed=10_000 + n).token_ids[0]] += 1
            if progress:
                progress(n + 1, samples, method, "fidelity")
        empirical = counts / samples
        noise = float(((exact * (1 - exact)).sqrt().sum() / (2 * samples ** 0.5)))  # E[TV] scale under p
        result[method] = {"tv_distance": float((empirical - exact).abs().sum() / 2), "noise_level": noise,
                          "samples": samples}
    return result


def markdown_table(summary: dict, identical: dict, fidelity_rows: dict | None, settings: dict) -> str:
    methods = list(summary["overall"])
    lines = [f"Target `{settings['target']}`, draft `{settings['draft']}`, {settings['max_new_tokens']} new tokens, "
             f"temperature {settings['temperature']}, dtype {settings['dtype']}, {settings['repeats']} repeat(s), "
             f"machine: {settings['machine']}.", ""]
    header = "| category | method | tok/s | speedup vs ar | speedup vs hf-uag | acceptance | tau | align µs/round |"
    lines += [header, "|---|---|---|---|---|---|---|---|"]
    for category, rows in summary.items():
        for method in methods:
            row = rows[method]
            cell = lambda key, fmt: (fmt.format(row[key]) if row.get(key) is not None else "–")  # noqa: E731
            lines.append(f"| {category} | {method}{'¹' if method in NOT_LOSSLESS_WHEN_SAMPLING and settings['temperature'] else ''} | "
                         f"{row['tokens_per_s']:.2f} | {cell('speedup_vs_ar', '{:.2f}×')} | "
                         f"{cell('speedup_vs_hf-uag', '{:.2f}×')} | {cell('acceptance_rate', '{:.2f}')} | "
                         f"{row['tau']:.2f} | {cell('align_us_per_round', '{:.1f}')} |")
    if identical:
        lines += ["", "Greedy outputs identical to the target alone: " +
                  ", ".join(f"{m} {'yes' if ok else '**NO**'}" for m, ok in identical.items())]
    if fidelity_rows:
        lines += ["", "| method | TV distance of first token vs target | sampling noise level |", "|---|---|---|"]
        lines += [f"| {m} | {r['tv_distance']:.3f} | {r['noise_level']:.3f} |" for m, r in fidelity_rows.items()]
    if settings["temperature"]:
        lines += ["", "¹ transformers' cross-tokenizer sampling path is not lossless: compare its TV distance."]
    lines += ["", f"Peak resident memory of the benchmark process: {settings['peak_rss_mb']:.0f} MB."]
    return "\n".join(lines)


def speedup_figure(summary: dict):
    import plotly.graph_objects as go

    methods = [m for m in summary["overall"] if m != "ar"]
    categories = list(summary)
    fig = go.Figure([go.Bar(name=m, x=categories, y=[summary[c][m].get("speedup_vs_ar", 0) for c in categories])
                     for m in methods])
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="target alone")
    fig.update_layout(title="Speedup over the target alone, by category", yaxis_title="speedup (×)",
                      barmode="group", template="plotly_white")
    return fig


def write_report(out: Path, runs, summary, identical, fidelity_rows, settings) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(summary, identical, fidelity_rows, settings)
    (out / "report.md").write_text(table + "\n", encoding="utf-8")
    report = {"settings": settings, "summary": summary, "identical_to_target": identical, "fidelity": fidelity_rows,
              "runs": [asdict(r) for r in runs]}
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    try:
        fig = speedup_figure(summary)
    except ImportError:  # plotly is optional for headless benchmark machines
        return report
    fig.write_html(out / "speedup.html", include_plotlyjs="cdn")
    try:
        fig.write_image(out / "speedup.png")
    except Exception:  # kaleido (and a browser for it) is optional
        pass
    return report


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.processor() or platform.machine()} CPU"
    return f"{device}, {torch.get_num_threads()} torch threads"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
