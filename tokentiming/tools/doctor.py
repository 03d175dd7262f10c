"""The pair doctor: which of several candidate drafts pays off for a target, and why (or why not).

A short calibration on a few prompts: for each draft, both lossless rules (``tokentiming`` and ``tli``) and the
target alone, interleaved prompt by prompt so machine noise falls on all of them alike. Per draft it reports
the vocabulary overlap, the mean alignment cost per proxy token, acceptance and tau of each rule, the measured
speedup over the target alone with its standard error across prompts, and a recommendation.

    python -m tokentiming rank-drafts --target qwen2.5-coder-1.5b-instruct --drafts smollm2-135m-instruct,...
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from ..core import trace
from ..core.facts import pair_facts
from .bench import Bench, Prompt

RULES = ("tokentiming", "tli")


@dataclass
class DraftReport:
    """What the calibration found for one candidate draft."""

    draft: str
    intersection_of_target: float  # share of the target's tokens the draft can also write
    intersection_of_draft: float
    alignment_cost: float  # mean local cost along the warping path, per proxy token (0: identical tokens)
    acceptance: dict[str, float] = field(default_factory=dict)  # per rule
    tau: dict[str, float] = field(default_factory=dict)
    speedup: dict[str, float] = field(default_factory=dict)  # target-alone wall time / rule wall time
    speedup_error: dict[str, float] = field(default_factory=dict)  # standard error across prompts

    def best_rule(self) -> str:
        return max(self.speedup, key=self.speedup.get)

    def pays_off(self) -> bool:
        """Faster than the target alone by more than twice its measurement noise."""
        rule = self.best_rule()
        return self.speedup[rule] - 2 * self.speedup_error[rule] > 1.0

    def as_dict(self) -> dict:
        return asdict(self) | {"best_rule": self.best_rule(), "pays_off": self.pays_off()}


def diagnose(target, drafts: dict[str, tuple], prompts: list[Prompt], max_new_tokens: int = 48,
             temperature: float = 0.0, num_draft_tokens: int | None = None, progress=None) -> list[DraftReport]:
    """Calibrate each draft against ``target`` ((model, tokenizer) pairs) on ``prompts``; best first.

    ``progress(done, total, method, draft)`` is called after every generation."""
    reports = []
    methods = ("ar", *RULES)
    total, done = len(drafts) * len(prompts) * len(methods), 0
    for name, draft in drafts.items():
        options = {} if num_draft_tokens is None else {"num_draft_tokens": num_draft_tokens}
        bench = Bench(target, draft, max_new_tokens=max_new_tokens, temperature=temperature, **options)
        try:
            for method in methods:  # warm-up: first calls pay for compilation and caches
                bench.run(method, prompts[0], max_new_tokens=4)
            runs = {method: [] for method in methods}
            for n, prompt in enumerate(prompts):
                for method in methods:
                    runs[method].append(bench.run(method, prompt, seed=n))
                    done += 1
                    if progress:
                        progress(done, total, method, name)
            reports.append(_report(name, bench, runs))
        finally:
            bench.close()
    return sorted(reports, key=lambda r: max(r.speedup.values()), reverse=True)


def _report(name: str, bench: Bench, runs: dict) -> DraftReport:
    facts = pair_facts(bench.draft_tokenizer, bench.target_tokenizer)
    pooled = {method: trace.metrics(trace.combine([run.totals for run in mine])) for method, mine in runs.items()}
    report = DraftReport(name, facts["intersection_of_target"], facts["intersection_of_draft"],
                         pooled["tokentiming"]["alignment_cost_per_proxy"])
    for rule in RULES:
        report.acceptance[rule] = pooled[rule]["acceptance_rate"]
        report.tau[rule] = pooled[rule]["tau"]
        # Per prompt: the rule's tokens per second over the target alone's (token counts differ when sampling).
        ratios = [(len(r.token_ids) / r.wall_s) / (len(a.token_ids) / a.wall_s)
                  for a, r in zip(runs["ar"], runs[rule])]
        report.speedup[rule] = statistics.fmean(ratios)
        report.speedup_error[rule] = statistics.stdev(ratios) / math.sqrt(len(ratios)) if len(ratios) > 1 else math.nan
    return report


def recommendation(reports: list[DraftReport]) -> str:
    """One sentence: the draft to use, or that none pays for itself here."""
    paying = [r for r in reports if r.pays_off()]
    if not paying:
        return ("No draft pays for itself on this machine (none is faster than the target alone by more than its "
                "measurement noise): decode with the target alone, or try a smaller draft or a larger target.")
    best = paying[0]
    rule = best.best_rule()
    return (f"Use {best.draft} with the {rule} rule: {best.speedup[rule]:.2f}× (± {best.speedup_error[rule]:.2f}) "
            f"the target alone on this calibration set.")


def markdown(reports: list[DraftReport], recommend: bool = True) -> str:
    """The reports as a table, best first (and the recommendation under it)."""
    lines = ["| # | draft | shared tokens (of target / of draft) | alignment cost per proxy | "
             "acceptance tokentiming / tli | tau tokentiming / tli | speedup tokentiming | speedup tli |",
             "|---|---|---|---|---|---|---|---|"]
    for n, r in enumerate(reports, 1):
        lines.append(f"| {n} | {r.draft} | {r.intersection_of_target:.0%} / {r.intersection_of_draft:.0%} | "
                     f"{r.alignment_cost:.2f} | {r.acceptance['tokentiming']:.2f} / {r.acceptance['tli']:.2f} | "
                     f"{r.tau['tokentiming']:.2f} / {r.tau['tli']:.2f} | "
                     + " | ".join(f"{r.speedup[rule]:.2f}× ± {r.speedup_error[rule]:.2f}" for rule in RULES) + " |")
    return "\n".join(lines + (["", recommendation(reports)] if recommend else []))
