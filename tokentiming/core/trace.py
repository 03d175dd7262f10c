"""What happened in each round, and the run statistics derived from it (docs/algorithm.md, "Metrics").

Plain dataclasses: the app, the notebooks and the benchmarks all read these, and every metric is
computed here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

import numpy as np

from .alignment import Alignment, proxy_to_draft

#: How the emitted token of a round came about.
CORRECTION = "correction"  # the target rejected a proxy and wrote its own token instead
BONUS = "bonus"  # every proxy was accepted; the target adds one more token
TARGET = "target"  # no proposal (target-only decoding, or nothing to propose this round)


@dataclass
class RoundTrace:
    """One round: draft, re-encode, align, verify, commit, resynchronise."""

    index: int
    draft_token_ids: list[int]
    draft_tokens: list[str]
    draft_probs: list[float]  # the draft's probability of each token it drafted
    proxy_token_ids: list[int]
    proxy_tokens: list[str]
    alignment: Alignment | None  # DTW between the draft tokens that cover the proxies and the proxies
    accepted: int
    emitted_token_id: int
    emitted_token: str
    emitted_kind: str
    token_probs: list[float]  # target probability of each accepted proxy, then of the emitted token
    new_text: str  # the text this round committed (whole characters only; special tokens write none)
    draft_forwards: int
    timings: dict[str, float] = field(default_factory=dict)  # draft_ms, reencode_us, align_us, verify_ms, resync_us
    #                                                           (and prefill_ms, on the first round)
    elapsed_s: float = 0.0  # generating time so far (prefill included), at the end of this round
    new_tokens_total: int = 0  # target tokens written so far, this round included
    emitted_special: bool = False  # the emitted token is a special token (end of text, say): it writes no text
    verifier: str = ""  # the rule that verified this round ("" for target-only decoding)

    @classmethod
    def build(cls, index: int, target_surfaces, *, emitted_token_id: int, token_probs: list[float], new_text: str,
              special: bool, timings: dict, new_tokens_total: int, draft_surfaces=None,
              draft_token_ids: list[int] = (), draft_probs: list[float] = (), proxy_token_ids: list[int] = (),
              alignment: Alignment | None = None, accepted: int = 0, draft_forwards: int = 0,
              verifier: str = "") -> "RoundTrace":
        """A round's trace from its ids: token strings are looked up here, once."""
        proposed = len(proxy_token_ids)
        kind = TARGET if not proposed else BONUS if accepted == proposed else CORRECTION
        return cls(index=index, draft_token_ids=list(draft_token_ids),
                   draft_tokens=[draft_surfaces.text_of(i) for i in draft_token_ids],
                   draft_probs=list(draft_probs), proxy_token_ids=list(proxy_token_ids),
                   proxy_tokens=[target_surfaces.text_of(i) for i in proxy_token_ids], alignment=alignment,
                   accepted=accepted, emitted_token_id=emitted_token_id,
                   emitted_token=target_surfaces.text_of(emitted_token_id), emitted_kind=kind,
                   token_probs=list(token_probs), new_text=new_text, draft_forwards=draft_forwards, timings=timings,
                   new_tokens_total=new_tokens_total, emitted_special=special, verifier=verifier)

    @property
    def cost_matrix(self) -> np.ndarray:
        """(k, m) local costs over the draft tokens that cover the proxies (empty without an alignment)."""
        return self.alignment.cost_matrix if self.alignment is not None else _EMPTY_COST

    @property
    def warping_path(self) -> np.ndarray:
        """(L, 2) pairs (draft index, proxy index)."""
        return self.alignment.warping_path if self.alignment is not None else _EMPTY_PATH

    @property
    def proposed(self) -> int:
        return len(self.proxy_token_ids)

    @property
    def new_token_ids(self) -> list[int]:
        return self.proxy_token_ids[:self.accepted] + [self.emitted_token_id]

    @property
    def aligned_draft(self) -> int:
        """How many draft tokens took part in the alignment (those that cover the proxies)."""
        return self.cost_matrix.shape[0]

    @property
    def proxy_to_draft(self) -> list[list[int]]:
        """For each proxy token, the draft token indices the warping path maps it to."""
        return proxy_to_draft(self.warping_path, len(self.proxy_token_ids))


_EMPTY_COST = np.zeros((0, 0))
_EMPTY_PATH = np.zeros((0, 2), dtype=np.int32)


@dataclass
class Generation:
    """The result of one generation: the target's new tokens, their text, rounds and statistics."""

    token_ids: list[int]
    text: str
    rounds: list[RoundTrace]
    stats: dict
    stop_reason: str  # "eos" or "max_new_tokens"


#: Where a round's time goes: each step's timing key and its unit in seconds.
STEPS = {"prefill": ("prefill_ms", 1e-3), "draft": ("draft_ms", 1e-3), "reencode": ("reencode_us", 1e-6),
         "align": ("align_us", 1e-6), "verify": ("verify_ms", 1e-3), "resync": ("resync_us", 1e-6)}


def totals(rounds: list[RoundTrace], wall_s: float) -> dict:
    """What one generation adds up to: counts, seconds per step, and the samples a median needs."""
    first = rounds[0] if rounds else None
    return {
        "generations": 1,
        "rounds": len(rounds),
        "target_forwards": len(rounds),  # one per round; the prompt's prefill is not a decoding step
        "draft_forwards": sum(r.draft_forwards for r in rounds),
        "proposed": sum(r.proposed for r in rounds),
        "accepted": sum(r.accepted for r in rounds),
        "new_tokens": sum(len(r.new_token_ids) for r in rounds),
        "first_tokens": len(first.new_token_ids) if first else 0,
        "wall_s": wall_s,
        "first_token_s": first.elapsed_s if first else 0.0,
        "step_s": {step: sum(r.timings.get(key, 0.0) for r in rounds) * unit for step, (key, unit) in STEPS.items()},
        "align_us": [r.timings["align_us"] for r in rounds if "align_us" in r.timings],
        "path_cost": sum(float(r.alignment.path_cost) for r in rounds if r.alignment is not None),
        "aligned_proxies": sum(r.proposed for r in rounds if r.alignment is not None),
    }


def combine(many: list[dict]) -> dict:
    """Several generations' :func:`totals` added up (the benchmark pools its runs this way)."""
    combined = {key: sum(t[key] for t in many) for key in many[0] if key not in ("step_s", "align_us")}
    combined["step_s"] = {step: sum(t["step_s"][step] for t in many) for step in STEPS}
    combined["align_us"] = [us for t in many for us in t["align_us"]]
    return combined


def metrics(total: dict) -> dict:
    """The metrics of docs/algorithm.md ("Metrics"), each defined here once, from :func:`totals`."""
    wall, first = total["wall_s"], total["first_token_s"]
    decode_s = wall - first
    other = wall - sum(total["step_s"].values())
    return {
        "rounds": total["rounds"],
        "target_forwards": total["target_forwards"],
        "draft_forwards": total["draft_forwards"],
        "proposed": total["proposed"],
        "accepted": total["accepted"],
        "acceptance_rate": total["accepted"] / total["proposed"] if total["proposed"] else 0.0,
        "tau": total["new_tokens"] / total["target_forwards"] if total["target_forwards"] else 0.0,
        "align_us_median": median(total["align_us"]) if total["align_us"] else 0.0,
        # How far apart the two tokenisations are: 0 when every proxy spells its draft token exactly.
        "alignment_cost_per_proxy": total["path_cost"] / total["aligned_proxies"] if total["aligned_proxies"] else 0.0,
        "new_tokens": total["new_tokens"],
        "wall_s": wall,
        "tokens_per_s": total["new_tokens"] / wall if wall > 0 else 0.0,
        # The first token waits for the prompt's prefill; what follows is decoding proper.
        "time_to_first_token_s": first / total["generations"] if total["generations"] else 0.0,
        "decode_tokens_per_s": (total["new_tokens"] - total["first_tokens"]) / decode_s if decode_s > 0 else 0.0,
        "time_shares": {**{step: seconds / wall for step, seconds in total["step_s"].items()},
                        "other": max(0.0, other) / wall} if wall > 0 else {},
    }


def run_stats(rounds: list[RoundTrace], wall_s: float) -> dict:
    """The metrics of one generation (see :func:`metrics`)."""
    return metrics(totals(rounds, wall_s))
