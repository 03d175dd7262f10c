"""Recorded runs: round traces saved as compact JSON and read back, so a page can show a real run of a
large pair without loading it (written by ``python -m tokentiming.tools.record``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..core.trace import RoundTrace

RECORDED = Path(__file__).resolve().parents[2] / "assets" / "recorded"
DEFAULT_RECORDING = RECORDED / "default-pair.json"
_FIELDS = {f.name for f in fields(RoundTrace)}


def _rounded(values, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in values]


def trace_to_dict(trace: RoundTrace) -> dict:
    """One round as JSON-friendly values: CPU lists only, probabilities to 6 digits, costs as integers."""
    row = {
        "index": trace.index,
        "draft_token_ids": list(trace.draft_token_ids),
        "draft_tokens": list(trace.draft_tokens),
        "draft_probs": _rounded(trace.draft_probs),
        "proxy_token_ids": list(trace.proxy_token_ids),
        "proxy_tokens": list(trace.proxy_tokens),
        "cost_matrix": np.asarray(trace.cost_matrix).astype(int).tolist(),
        "warping_path": np.asarray(trace.warping_path).astype(int).tolist(),
        "accepted": trace.accepted,
        "emitted_token_id": trace.emitted_token_id,
        "emitted_token": trace.emitted_token,
        "emitted_kind": trace.emitted_kind,
        "token_probs": _rounded(trace.token_probs),
        "new_text": trace.new_text,
        "draft_forwards": trace.draft_forwards,
        "timings": {name: round(float(value), 3) for name, value in trace.timings.items()},
        "elapsed_s": round(trace.elapsed_s, 4),
        "new_tokens_total": trace.new_tokens_total,
    }
    for name in ("emitted_special", "verifier"):
        if name in _FIELDS:
            row[name] = getattr(trace, name)
    return row


@dataclass
class RecordedAlignment:
    """A round's alignment as recorded: its costs, dense (a round aligns a handful of tokens), and its path."""

    cost_matrix: np.ndarray  # (k, m)
    warping_path: np.ndarray  # (L, 2) pairs (draft index, proxy index)
    band: int
    align_us: float = 0.0

    @property
    def shape(self) -> tuple[int, int]:
        return self.cost_matrix.shape

    @property
    def path_costs(self) -> np.ndarray:
        return self.cost_matrix[self.warping_path[:, 0], self.warping_path[:, 1]]

    @property
    def path_cost(self) -> float:
        return float(self.path_costs.sum())

    def cost_window(self, draft_start: int, draft_stop: int, proxy_start: int, proxy_stop: int) -> np.ndarray:
        return self.cost_matrix[draft_start:draft_stop, proxy_start:proxy_stop]


def trace_from_dict(row: dict, band: int = 8) -> RoundTrace:
    """The inverse of :func:`trace_to_dict` (fields this version of RoundTrace lacks are dropped)."""
    values = {name: value for name, value in row.items() if name in _FIELDS}
    k = len(row["cost_matrix"])
    costs = np.array(row["cost_matrix"], dtype=float).reshape(k, -1 if k else 0)
    path = np.array(row["warping_path"], dtype=np.int32).reshape(-1, 2)
    if "alignment" in _FIELDS:
        values["alignment"] = (RecordedAlignment(costs, path, band, row["timings"].get("align_us", 0.0))
                               if costs.size else None)
    else:
        values["cost_matrix"], values["warping_path"] = costs, path
    return RoundTrace(**values)


@dataclass
class Recording:
    """A TokenTiming run and the target-alone run of the same request, with where and when they ran."""

    meta: dict  # target, draft, prompt, chat, options, machine, date, note
    rounds: list[RoundTrace]
    reference_rounds: list[RoundTrace]

    def to_json(self) -> str:
        return json.dumps({"meta": self.meta, "rounds": [trace_to_dict(r) for r in self.rounds],
                           "reference_rounds": [trace_to_dict(r) for r in self.reference_rounds]},
                          ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Recording":
        data = json.loads(text)
        band = data["meta"]["options"]["band"]
        return cls(data["meta"], [trace_from_dict(r, band) for r in data["rounds"]],
                   [trace_from_dict(r, band) for r in data["reference_rounds"]])

    @property
    def label(self) -> str:
        """One line naming the pair, the machine and the date."""
        meta = self.meta
        return (f"Recorded run: {meta['draft']} → {meta['target']}, {meta['options']['max_new_tokens']} new tokens, "
                f"greedy, on {meta['machine']} ({meta['threads']} threads), {meta['date']}; {meta['note']}")


def load_recording(path: Path = DEFAULT_RECORDING) -> Recording | None:
    """The recording at ``path``, or None when none is shipped."""
    return Recording.from_json(path.read_text(encoding="utf-8")) if path.is_file() else None
