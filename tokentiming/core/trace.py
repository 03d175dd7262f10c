"""What happened in each round, and the run statistics derived from it (ALGORITHM.md section 5).

Plain dataclasses: the app, the notebooks and the benchmarks all read these, and every metric is
computed here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean

import numpy as np

from .alignment import proxy_to_draft

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
    cost_matrix: np.ndarray  # (k, m) local costs over the draft tokens that cover the proxies
    warping_path: np.ndarray  # (L, 2) pairs (draft index, proxy index)
    accepted: int
    emitted_token_id: int
    emitted_token: str
    emitted_kind: str
    token_probs: list[float]  # target probability of each accepted proxy, then of the emitted token
    new_text: str  # the text this round committed (whole characters only)
    draft_forwards: int
    timings: dict[str, float] = field(default_factory=dict)  # draft_ms, reencode_us, align_us, verify_ms, resync_us
    elapsed_s: float = 0.0  # generating time so far (prefill included), at the end of this round
    new_tokens_total: int = 0  # target tokens written so far, this round included

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


@dataclass
class Generation:
    """The result of one generation: the target's new tokens, their text, rounds and statistics."""

    token_ids: list[int]
    text: str
    rounds: list[RoundTrace]
    stats: dict
    stop_reason: str  # "eos" or "max_new_tokens"


def run_stats(rounds: list[RoundTrace], wall_s: float) -> dict:
    """The metrics of ALGORITHM.md section 5 for a list of rounds."""
    new_tokens = sum(len(r.new_token_ids) for r in rounds)
    proposed = sum(r.proposed for r in rounds)
    accepted = sum(r.accepted for r in rounds)
    aligned = [r.timings["align_us"] for r in rounds if "align_us" in r.timings]
    target_forwards = len(rounds)
    return {
        "rounds": len(rounds),
        "target_forwards": target_forwards,
        "draft_forwards": sum(r.draft_forwards for r in rounds),
        "proposed": proposed,
        "accepted": accepted,
        "acceptance_rate": accepted / proposed if proposed else 0.0,
        "tau": new_tokens / target_forwards if target_forwards else 0.0,
        "align_us_per_round": fmean(aligned) if aligned else 0.0,
        "new_tokens": new_tokens,
        "wall_s": wall_s,
        "tokens_per_s": new_tokens / wall_s if wall_s > 0 else 0.0,
    }
