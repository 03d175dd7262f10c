"""Verification of proxy tokens against the target's distributions: pure tensor math.

Every rule takes the target's scores for the m proxy positions plus the bonus position, shaped
``(batch, m + 1, vocab)``, and the proxies ``(batch, m)``; it returns how many proxies each row
accepts and the token the target writes next (a correction after a rejection, or the bonus).
The decoder calls them with a batch of one; tests call them with large batches to check the
output distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

VERIFIERS = ("tokentiming", "greedy", "transfer")


@dataclass(frozen=True)
class Sampling:
    """Logits processing shared by plain sampling and verification (the same order as transformers:
    temperature, then top-k, then top-p). ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution sampled from: float32 probabilities over the last dimension.

        For greedy decoding this is the plain softmax (used only to report probabilities)."""
        scores = logits.float()
        if self.greedy:
            return scores.softmax(-1)
        scores = scores / self.temperature
        if 0 < self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, -torch.inf)
        if self.top_p < 1:
            sorted_scores, order = torch.sort(scores, dim=-1)
            cumulative = sorted_scores.softmax(-1).cumsum(-1)
            remove_sorted = cumulative <= 1 - self.top_p
            remove_sorted[..., -1] = False  # always keep the most likely token
            remove = remove_sorted.scatter(-1, order, remove_sorted)
            scores = scores.masked_fill(remove, -torch.inf)
        return scores.softmax(-1)


def _prefix_length(accepts: torch.Tensor) -> torch.Tensor:
    """Length of the leading run of True in each row."""
    return accepts.int().cumprod(-1).sum(-1)


def _row(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """scores[b, index[b]] for every b: (batch, vocab)."""
    batch, _, vocab = scores.shape
    return scores.gather(1, index.view(batch, 1, 1).expand(batch, 1, vocab))[:, 0]


def _proxy_probs(probs: torch.Tensor, proxies: torch.Tensor) -> torch.Tensor:
    m = proxies.shape[-1]
    return probs[:, :m].gather(-1, proxies.unsqueeze(-1)).squeeze(-1)


def verify_greedy(logits: torch.Tensor, proxies: torch.Tensor):
    """Accept the longest prefix equal to the target's argmax; then write the argmax."""
    choice = logits.argmax(-1)
    accepted = _prefix_length(choice[:, :proxies.shape[-1]] == proxies)
    return accepted, choice.gather(-1, accepted.unsqueeze(-1)).squeeze(-1)


def _sample_after(probs, proxies, accepted, residual, generator):
    """Sample the next token: from ``residual`` where a proxy was rejected, else from the bonus row."""
    m = proxies.shape[-1]
    row = _row(probs, accepted)
    if m:
        rejected = (accepted < m).unsqueeze(-1)
        row = torch.where(rejected, residual, row)
    # A residual with no mass left (float underflow) falls back to the target row itself.
    row = torch.where(row.sum(-1, keepdim=True) > 0, row, _row(probs, accepted))
    return torch.multinomial(row, 1, generator=generator).squeeze(-1)


def verify_tokentiming(probs: torch.Tensor, proxies: torch.Tensor, generator: torch.Generator | None):
    """The lossless rule: accept proxy t with probability p(t); on rejection sample from p with t
    removed. Exact for any proposal, since P(out = y) = p(y) whatever t was."""
    m = proxies.shape[-1]
    p_proxy = _proxy_probs(probs, proxies)
    uniform = torch.rand(p_proxy.shape, generator=generator, device=probs.device)
    accepted = _prefix_length(uniform < p_proxy)
    residual = None
    if m:
        position = accepted.clamp(max=m - 1)
        residual = _row(probs, position).scatter(-1, proxies.gather(-1, position.unsqueeze(-1)), 0.0)
    return accepted, _sample_after(probs, proxies, accepted, residual, generator)


def verify_transfer(probs: torch.Tensor, proxies: torch.Tensor, transferred: torch.Tensor,
                    generator: torch.Generator | None):
    """EXPERIMENTAL and LOSSY: the paper's described probability transfer.

    Each proxy is accepted with min(1, p(t) / q~) where q~ is the draft probability carried over
    along the warping path; the residual is max(0, p - q~ at t). Because q~ is not the true
    probability of proposing t, the output does not follow the target's distribution."""
    m = proxies.shape[-1]
    p_proxy = _proxy_probs(probs, proxies)
    ratio = (p_proxy / transferred.clamp(min=1e-12)).clamp(max=1.0)
    uniform = torch.rand(p_proxy.shape, generator=generator, device=probs.device)
    accepted = _prefix_length(uniform < ratio)
    residual = None
    if m:
        position = accepted.clamp(max=m - 1)
        token = proxies.gather(-1, position.unsqueeze(-1))
        row = _row(probs, position)
        lowered = (row.gather(-1, token) - transferred.gather(-1, position.unsqueeze(-1))).clamp(min=0)
        residual = row.scatter(-1, token, lowered)
    return accepted, _sample_after(probs, proxies, accepted, residual, generator)
