"""Benchmarks: every method on the same prompts, interleaved prompt by prompt, reported as ratios.

Methods: ``ar`` (target alone, our loop), ``hf-ar`` (transformers ``generate`` alone), our rules ``tokentiming``,
``tli`` and ``transfer``, and transformers' assisted generation across tokenizers: ``hf-uag`` (string-level
matching when greedy) and ``hf-usd`` (the same call when sampling, where transformers drafts from the vocabulary
intersection). ``ar-static``, ``tokentiming-static`` and ``tli-static`` run our loops on static KV caches replayed
from CUDA graphs on a GPU (:mod:`tokentiming.backends.kv`). Our loops count their own forward passes (graph
replays never call the model's ``forward``); transformers' are counted with hooks on the models.

Every figure is computed by :mod:`tokentiming.core.trace` (``totals``, ``combine``, ``metrics``): the bench only
pools runs and divides one method's wall time by another's.
"""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..core.decoder import (DEFAULT_ADAPTIVE, DEFAULT_DRAFT_TOKENS, TokenTimingDecoder, autoregressive,
                      render_prompt)
from ..core import trace
from ..machine import cpu_name
from ..core.verification import Sampling

OUR_RULES = ("tokentiming", "tli", "transfer")
METHODS = ("ar", "hf-ar", *OUR_RULES, "hf-uag", "hf-usd", "ar-static", "tokentiming-static", "tli-static")
TRANSFORMERS = ("hf-ar", "hf-uag", "hf-usd")
BUILTIN_PROMPTS = Path(__file__).resolve().parents[2] / "assets" / "prompts.jsonl"
#: Not lossless when sampling (see the fidelity column): transformers' cross-tokenizer path and our paper rule.
NOT_LOSSLESS_WHEN_SAMPLING = {"hf-uag", "hf-usd", "transfer"}


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
    temperature: float
    totals: dict  # tokentiming.core.trace.totals of this run

    @property
    def target_forwards(self) -> int:
        return self.totals["target_forwards"]

    @property
    def proposed(self) -> int:
        return self.totals["proposed"]

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
                 num_draft_tokens=DEFAULT_DRAFT_TOKENS, band=8, adaptive=DEFAULT_ADAPTIVE, seed=0, draft_int8=True):
        (self.target_model, self.target_tokenizer), (self.draft_model, self.draft_tokenizer) = target, draft
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.num_draft_tokens, self.band, self.adaptive, self.seed = num_draft_tokens, band, adaptive, seed
        Sampling(temperature, 0, top_p)  # validates
        self.decoder = TokenTimingDecoder(self.target_model, self.target_tokenizer, self.draft_model,
                                          self.draft_tokenizer, draft_int8=draft_int8)
        self.target_counter = ForwardCounter(self.target_model)
        self.draft_counter = ForwardCounter(self.draft_model)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def run(self, method: str, prompt: Prompt, max_new_tokens: int | None = None, seed: int | None = None,
            temperature: float | None = None) -> Run:
        max_new_tokens = max_new_tokens or self.max_new_tokens
        seed = self.seed if seed is None else seed
        temperature = self.temperature if temperature is None else temperature
        self.target_counter.take(), self.draft_counter.take()
        _synchronise()
        start = time.perf_counter()
        base, static = method.removesuffix("-static"), method.endswith("-static")
        if base == "ar":
            generation = autoregressive(self.target_model, self.target_tokenizer, prompt.message, max_new_tokens,
                                        temperature, 0, self.top_p, seed, static=static)
        elif base in OUR_RULES:
            generation = self.decoder.generate(prompt.message, max_new_tokens=max_new_tokens, temperature=temperature,
                                               top_p=self.top_p, num_draft_tokens=self.num_draft_tokens,
                                               band=self.band, adaptive=self.adaptive, seed=seed, static=static,
                                               verifier=base)
        elif method in TRANSFORMERS:
            token_ids, first_token_s = self._transformers(method, prompt, max_new_tokens, seed, temperature)
        else:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        _synchronise()
        wall = time.perf_counter() - start
        if method in TRANSFORMERS:
            forwards = self.target_counter.take()
            totals = dict(trace.totals([], wall), rounds=forwards, target_forwards=forwards,
                          draft_forwards=self.draft_counter.take(), new_tokens=len(token_ids),
                          first_tokens=1 if token_ids else 0, first_token_s=first_token_s)
        else:
            token_ids = generation.token_ids
            totals = trace.totals(generation.rounds, wall)  # wall: the whole call, setup included
        return Run(method, prompt.category, -1, -1, token_ids, wall, temperature, totals)

    def _transformers(self, method: str, prompt: Prompt, max_new_tokens: int, seed: int,
                      temperature: float) -> tuple[list[int], float]:
        """transformers' own ``generate``; returns the new ids and the time to the first of them."""
        greedy = temperature == 0
        if method == "hf-usd" and greedy:
            raise ValueError("hf-usd is transformers' sampling path across tokenizers: use a temperature > 0 "
                             "(hf-uag is its greedy path)")
        ids = torch.tensor([render_prompt(self.target_tokenizer, prompt.message)], device=self.target_model.device)
        clock = _FirstTokenClock()
        options = dict(max_new_tokens=max_new_tokens, do_sample=not greedy, streamer=clock,
                       pad_token_id=self.target_tokenizer.eos_token_id if self.target_tokenizer.pad_token_id is None
                       else self.target_tokenizer.pad_token_id)
        if not greedy:
            options.update(temperature=temperature, top_p=self.top_p, top_k=0)
            torch.manual_seed(seed)
        if method in ("hf-uag", "hf-usd"):
            options.update(assistant_model=self.draft_model, tokenizer=self.target_tokenizer,
                           assistant_tokenizer=self.draft_tokenizer)
        with torch.inference_mode(), self._draft_as_transformers_leaves_it(method, greedy):
            output = self.target_model.generate(ids, attention_mask=torch.ones_like(ids), **options)
        return output[0, ids.shape[1]:].tolist(), clock.first_token_s

    @contextlib.contextmanager
    def _draft_as_transformers_leaves_it(self, method: str, greedy: bool):
        """transformers' cross-tokenizer *sampling* path replaces the draft's input embeddings and head
        with pruned, re-indexed ones, for good (its vocabulary translator is cached with them). Swap its
        versions in for its own runs and the draft's originals back for everything else."""
        if method not in ("hf-uag", "hf-usd") or greedy:
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


class _FirstTokenClock:
    """A streamer for transformers' ``generate`` that notes when the first new token arrives."""

    def __init__(self):
        self.start, self.first_token_s, self.calls = time.perf_counter(), 0.0, 0

    def put(self, _ids):
        self.calls += 1
        if self.calls == 2:  # the first call hands over the prompt
            _synchronise()
            self.first_token_s = time.perf_counter() - self.start

    def end(self):
        pass


def _synchronise():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(prompts: list[Prompt], methods: list[str], repeats: int, temperatures=(None,)):
    """(repeat, prompt index, method[, temperature]) in the order A B C A B C …, prompt by prompt (and
    temperature by temperature within a prompt)."""
    for repeat in range(repeats):
        for index in range(len(prompts)):
            for temperature in temperatures:
                for method in methods:
                    yield (repeat, index, method) if temperature is None else (repeat, index, method, temperature)


def runnable(method: str, temperature: float, methods: list[str]) -> bool:
    """hf-usd names transformers' sampling path, so it runs only when sampling; hf-uag, the same call, then
    stands in for it only when hf-usd is not asked for. Every other method runs at any temperature."""
    if method == "hf-usd":
        return temperature > 0
    return not (method == "hf-uag" and temperature > 0 and "hf-usd" in methods)


def run_benchmark(bench: Bench, prompts: list[Prompt], methods: list[str], repeats: int = 1,
                  progress=None, warmup_tokens: int = 8, temperatures: list[float] | None = None) -> list[Run]:
    """Warm every method up (``warmup_tokens`` on the first prompt), then run them interleaved prompt by prompt,
    at each of ``temperatures`` (default: the bench's own)."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    temperatures = list(temperatures or [bench.temperature])
    order = [(r, i, m, t) for r, i, m, t in interleaved(prompts, methods, repeats, temperatures) if runnable(m, t, methods)]
    for method, temperature in dict.fromkeys((m, t) for _, _, m, t in order):
        bench.run(method, prompts[0], max_new_tokens=min(warmup_tokens, bench.max_new_tokens), temperature=temperature)
    runs = []
    for step, (repeat, index, method, temperature) in enumerate(order):
        run = bench.run(method, prompts[index], seed=bench.seed + repeat, temperature=temperature)
        run.prompt_index, run.repeat = index, repeat
        runs.append(run)
        if progress:
            progress(step + 1, len(order), method, prompts[index].category)
    return runs


def identical_to_target(runs: list[Run], methods: list[str]) -> dict[str, bool]:
    """Greedy runs: did each method write exactly the ids of the target alone (``ar``) on every prompt?"""
    greedy = [r for r in runs if r.temperature == 0]
    reference = {(r.prompt_index, r.repeat): r.token_ids for r in greedy if r.method == "ar"}
    if not reference:
        return {}
    return {m: all(r.token_ids == reference[(r.prompt_index, r.repeat)] for r in greedy if r.method == m)
            for m in methods if any(r.method == m for r in greedy)}


def summarise(runs: list[Run], methods: list[str]) -> dict:
    """Per category and overall, for runs at one temperature: each method's pooled metrics
    (:func:`tokentiming.core.trace.metrics`) and its speedups: end to end and for decoding alone (after the
    first token), as wall-time ratios on the same prompts."""
    groups = defaultdict(list)
    for run in runs:
        groups[run.category].append(run)
        groups["overall"].append(run)
    summary = {}
    for category, group in groups.items():
        rows = {}
        for method in methods:
            mine = [r.totals for r in group if r.method == method]
            if mine:
                rows[method] = trace.metrics(trace.combine(mine))
        for row in rows.values():
            for baseline in ("ar", "hf-uag", "hf-usd"):
                if baseline in rows:
                    row[f"speedup_vs_{baseline}"] = _ratio(rows[baseline], row, "wall_s", "tokens_per_s")
            if "ar" in rows:
                row["decode_speedup_vs_ar"] = _ratio(rows["ar"], row, None, "decode_tokens_per_s")
        summary[category] = rows
    return summary


def _ratio(baseline: dict, row: dict, time_key: str | None, rate_key: str) -> float | None:
    """baseline time / method time on the same tokens (greedy); rate ratio when token counts differ."""
    if time_key and row[time_key] and baseline["new_tokens"] == row["new_tokens"]:
        return baseline[time_key] / row[time_key]
    return row[rate_key] / baseline[rate_key] if baseline[rate_key] else None


def fidelity(bench: Bench, prompt: Prompt, methods: list[str], samples: int = 200, progress=None,
             temperature: float | None = None) -> dict:
    """Sampling only: total variation distance between each method's first written token and the target's
    exact next-token distribution (a lossless method is within sampling noise)."""
    temperature = bench.temperature if temperature is None else temperature
    with torch.inference_mode():
        ids = torch.tensor([render_prompt(bench.target_tokenizer, prompt.message)], device=bench.target_model.device)
        exact = Sampling(temperature, 0, bench.top_p).probs(bench.target_model(ids).logits[0, -1]).cpu()
    result = {}
    for method in methods:
        counts = torch.zeros_like(exact)
        for n in range(samples):
            run = bench.run(method, prompt, max_new_tokens=2, seed=10_000 + n, temperature=temperature)
            counts[run.token_ids[0]] += 1
            if progress:
                progress(n + 1, samples, method, "fidelity")
        empirical = counts / samples
        noise = float(((exact * (1 - exact)).sqrt().sum() / (2 * samples ** 0.5)))  # E[TV] scale under p
        result[method] = {"tv_distance": float((empirical - exact).abs().sum() / 2), "noise_level": noise,
                          "samples": samples}
    return result


def _cell(row: dict, key: str, fmt: str) -> str:
    return fmt.format(row[key]) if row.get(key) is not None else "–"


def markdown_table(summary: dict, identical: dict, fidelity_rows: dict | None, settings: dict) -> str:
    """One temperature's results: speed, acceptance, fidelity, and where each method's time went."""
    temperature = settings["temperature"]
    methods = list(summary["overall"])
    lossy = {m for m in methods if m in NOT_LOSSLESS_WHEN_SAMPLING} if temperature else set()
    lines = [f"**Temperature {temperature}.** Target `{settings['target']}`, draft `{settings['draft']}`, "
             f"{settings['max_new_tokens']} new tokens, dtype {settings['dtype']}, {settings['repeats']} repeat(s), "
             f"machine: {settings['machine']}"
             + (f"; target's linear layers: {settings['linear_kernels']}" if settings.get("linear_kernels") else "")
             + ".", ""]
    lines += ["| category | method | tok/s | speedup vs ar | vs transformers | decoding alone vs ar | "
              "first token s | acceptance | tau | align µs (median) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for category, rows in summary.items():
        for method, row in rows.items():
            baseline = "speedup_vs_hf-usd" if "speedup_vs_hf-usd" in row else "speedup_vs_hf-uag"
            lines.append(f"| {category} | {method}{'¹' if method in lossy else ''} | {row['tokens_per_s']:.2f} | "
                         f"{_cell(row, 'speedup_vs_ar', '{:.2f}×')} | {_cell(row, baseline, '{:.2f}×')} | "
                         f"{_cell(row, 'decode_speedup_vs_ar', '{:.2f}×')} | "
                         f"{row['time_to_first_token_s']:.2f} | "
                         f"{_cell(row, 'acceptance_rate', '{:.2f}') if row['proposed'] else '–'} | "
                         f"{row['tau']:.2f} | {_cell(row, 'align_us_median', '{:.1f}') if row['proposed'] else '–'} |")
    overall = summary["overall"]
    ours = [m for m in methods if overall[m].get("time_shares") and overall[m]["time_shares"].get("verify")]
    if ours:
        steps = list(overall[ours[0]]["time_shares"])
        lines += ["", "Where the time went (share of wall time, all prompts):", "",
                  "| method | " + " | ".join(steps) + " |", "|---|" + "---|" * len(steps)]
        lines += [f"| {m} | " + " | ".join(f"{overall[m]['time_shares'][step]:.0%}" for step in steps) + " |"
                  for m in ours]
    if identical:
        lines += ["", "Greedy outputs identical to the target alone: " +
                  ", ".join(f"{m} {'yes' if ok else '**NO**'}" for m, ok in identical.items())]
    if fidelity_rows:
        lines += ["", "| method | TV distance of first token vs target | sampling noise level |", "|---|---|---|"]
        lines += [f"| {m} | {r['tv_distance']:.3f} | {r['noise_level']:.3f} |" for m, r in fidelity_rows.items()]
    if lossy:
        lines += ["", "¹ not lossless when sampling (transformers' cross-tokenizer path; our experimental "
                      "`transfer`): compare its TV distance with the noise level."]
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
    """report.md, report.json and a speedup figure for runs at one temperature."""
    return write_reports(out, runs, [(settings["temperature"], summary, identical, fidelity_rows)], settings)


def write_reports(out: Path, runs, sections: list[tuple], settings) -> dict:
    """The same for several temperatures: ``sections`` holds (temperature, summary, identical, fidelity)."""
    out.mkdir(parents=True, exist_ok=True)
    tables = [markdown_table(summary, identical, fidelity_rows, dict(settings, temperature=temperature))
              for temperature, summary, identical, fidelity_rows in sections]
    tables.append(f"Peak resident memory of the benchmark process: {settings['peak_rss_mb']:.0f} MB. "
                  f"Command: `{settings.get('command', '')}`")
    (out / "report.md").write_text("\n\n".join(tables) + "\n", encoding="utf-8")
    report = {"settings": settings,
              "results": [{"temperature": t, "summary": s, "identical_to_target": i, "fidelity": f}
                          for t, s, i, f in sections],
              "runs": [asdict(r) for r in runs]}
    if len(sections) == 1:  # one temperature: the summary at the top level too
        report.update(summary=sections[0][1], identical_to_target=sections[0][2], fidelity=sections[0][3])
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    try:
        fig = speedup_figure(sections[0][1])
    except ImportError:  # plotly is optional for headless benchmark machines
        return report
    fig.write_html(out / "speedup.html", include_plotlyjs="cdn")
    return report


def machine() -> str:
    """The accelerator, or the CPU's model name, and the torch threads the run used."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu_name()} CPU"
    return f"{device}, {torch.get_num_threads()} torch threads"


def kernels(model) -> str:
    """Which linear kernel the target's layers ran on, by row count (:func:`tokentiming.backends.cpu.describe`)."""
    if next(model.parameters()).device.type != "cpu":
        return "PyTorch (CUDA)" if torch.cuda.is_available() else "PyTorch"
    from ..backends.cpu import describe

    return describe(model)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
