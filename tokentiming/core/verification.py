"""Verification of proxy tokens against the target's distributions: pure tensor math.

Every rule takes the target's scores for the m proxy positions plus the bonus position, shaped
``(batch, m + 1, vocab)``, and the proxies ``(batch, m)``; it returns how many proxies each row
accepts ``(batch,)`` and the token the target writes next ``(batch,)`` (a correction after a
rejection, or the bonus). The decoder calls them with a batch of one; tests call them with large
batches to check the output distribution.

The sampled rules are one rule, speculative sampling's ratio test, told different things about the
proposal: accept proxy t with probability min(1, p(t) / q(t)), and after a rejection sample from
max(0, p - q) renormalised. ``verify_tli`` is told the true proposal distribution q (exact);
``verify_tokentiming`` is told q = 1 at the proxy (exact for any proposal); ``verify_transfer`` is
told a carried-over draft probability at the proxy (biased).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

VERIFIERS = ("tokentiming", "greedy", "tli", "transfer")


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


def _ratio_rule(probs, proxies, q_proxy, q_rows, generator):
    """Speculative sampling's ratio test, the core of every sampled rule.

    ``q_proxy`` (batch, m) is the proposal probability the verifier is told for each proxy. ``q_rows``
    (batch, m, vocab) is the whole proposal distribution at each position, or None to say all of it sits
    on the proxy (then q = q_proxy there and 0 elsewhere)."""
    m = proxies.shape[-1]
    p_proxy = _proxy_probs(probs, proxies)
    uniform = torch.rand(p_proxy.shape, generator=generator, device=probs.device)
    accepted = _prefix_length(uniform * q_proxy < p_proxy)  # u < min(1, p / q), without dividing by q
    residual = None
    if m:
        position = accepted.clamp(max=m - 1)
        row = _row(probs, position)
        if q_rows is None:
            token = proxies.gather(-1, position.unsqueeze(-1))
            lowered = (row.gather(-1, token) - q_proxy.gather(-1, position.unsqueeze(-1))).clamp(min=0)
            residual = row.scatter(-1, token, lowered)
        else:
            residual = (row - _row(q_rows, position)).clamp(min=0)
    return accepted, _sample_after(probs, proxies, accepted, residual, generator)


def verify_tli(probs: torch.Tensor, proxies: torch.Tensor, draft_probs: torch.Tensor,
               generator: torch.Generator | None):
    """Token-level intersection: standard speculative sampling, exact because the proposal is known.

    ``draft_probs`` (batch, m, vocab) is the distribution each proxy was drawn from, in the target's
    vocabulary: the draft's processed distribution restricted to the intersection (:func:`restrict`),
    moved onto target ids (``Intersection.in_target_space``), zero outside the intersection. Proxy j is
    accepted with min(1, p_j(t_j) / q_j(t_j)); the first rejection samples from max(0, p_j - q_j)
    renormalised; if all are accepted the bonus comes from p_{m+1}. Then P(out = y) = p(y) exactly
    (Leviathan et al. 2023; Chen et al. 2023)."""
    return _ratio_rule(probs, proxies, _proxy_probs(draft_probs, proxies), draft_probs, generator)


def restrict(draft_probs: torch.Tensor, mask: torch.Tensor):
    """The draft's distribution restricted to the intersection and renormalised, and the mass it kept.

    ``draft_probs`` (..., draft_width) and ``mask`` (draft_width,) give ``(restricted, kept)`` shaped
    (..., draft_width) and (...). Where no mass is left inside the intersection ``kept`` is 0 and the row
    is all zeros: there is nothing to draft, so drafting stops."""
    inside = draft_probs * mask
    kept = inside.sum(-1)
    return inside / kept.unsqueeze(-1).clamp(min=torch.finfo(inside.dtype).tiny), kept


def verify_transfer(probs: torch.Tensor, proxies: torch.Tensor, transferred: torch.Tensor,
                    generator: torch.Generator | None):
    """EXPERIMENTAL and LOSSY: the paper's described probability transfer.

    Each proxy is accepted with min(1, p(t) / q~) where q~ (batch, m) is the draft probability carried
    over along the warping path; the residual is max(0, p - q~ at t). The ratio rule is exact only when
    it is told the true probability of proposing t, or told 1 (:func:`verify_tokentiming`); q~ is
    neither, so the output does not follow the target's distribution."""
    return _ratio_rule(probs, proxies, transferred, None, generator)


def verify_tokentiming(probs: torch.Tensor, proxies: torch.Tensor, generator: torch.Generator | None):
    """The lossless rule: :func:`verify_transfer` with q~ = 1, a proposal believed certain.

    Accepting with min(1, p(t) / 1) = p(t) and sampling a rejection from max(0, p - 1 * [y = t]), which
    is p with t removed, gives P(out = y) = sum_t Q(t) (p(t) [y = t] + p(y) [y != t]) = p(y) whatever
    distribution Q the proxies came from, so nothing about Q needs to be known. Transfer plugs in a q~
    that is not the true proposal probability, which is why it is biased; TLI (:func:`verify_tli`)
    plugs in the true one."""
    return verify_transfer(probs, proxies, torch.ones(proxies.shape, dtype=probs.dtype, device=probs.device),
                           generator)
