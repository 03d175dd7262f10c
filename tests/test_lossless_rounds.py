"""End to end losslessness of tli on the tiny pair: the first token a real round writes follows the target's
exact distribution; a round wired to the wrong draft distribution is caught. (The same check for the default
rule lives with the decoder's tests; both rules' arithmetic is tested in batches in test_verification.py and
test_tli_rule.py.)

Each sample is one real round of the decoder (draft, re-encode or map, align, verify, commit) on the real
models. Forward passes are memoised by their token sequence: a round's randomness is in its sampling, not in
the models, and the same few sequences recur across samples, so 20,000 rounds cost seconds.

Power: the written tokens fall in five bins (the four likeliest tokens, and the rest). With N samples, a
distribution a total variation distance d away from the target's over those bins gives the chi-square
statistic a noncentrality of at least 4·N·d² (Cauchy-Schwarz). With N = 20,000 and d = 0.02 that is 32; at
the test's level p < 1e-3 on 4 degrees of freedom that is a power of 0.95.
``test_the_check_has_its_stated_power`` computes it.
"""

import numpy as np
import pytest
import torch
from scipy.stats import chi2, chisquare, ncx2

from tokentiming.core.decoder import ModelContext, _Speculation, render_prompt
from tokentiming.core.verification import Sampling

PROMPT = "class IllegalWeekdayError(ValueError):\n    def __init__(self, weekday):\n"
TEMPERATURE, SAMPLES, SHIFT, LEVEL, MAX_BINS = 1.0, 20_000, 0.02, 1e-3, 5
#: tli samples its draft, and the first written token depends only on the first proposal: one draft token
#: keeps the distinct rounds (and so the forward passes) few.
DRAFT_TOKENS = 1


class MemoContext(ModelContext):
    """A model context whose forward passes are looked up by token sequence once computed."""

    def __init__(self, model, tokenizer, prompt_ids, memo: dict):
        super().__init__(model, tokenizer, prompt_ids)
        self.memo = memo

    def prefill(self) -> None:  # the first lookup feeds the whole prompt
        pass

    def logits(self, extra=(), keep: int = 1) -> torch.Tensor:
        key = (tuple(self.ids), tuple(extra), keep)
        if key not in self.memo:
            self.memo[key] = super().logits(extra, keep)
        return self.memo[key]


def first_tokens(decoder, verifier: str, samples: int = SAMPLES, run_class=_Speculation, prompt: str = PROMPT,
                 draft_tokens: int = DRAFT_TOKENS, temperature: float = TEMPERATURE) -> np.ndarray:
    """The first token written by ``samples`` first rounds, one seed each (the round's own code, real models)."""
    memo_target, memo_draft = {}, {}
    target_ids = render_prompt(decoder.target_tokenizer, prompt)
    draft_ids = render_prompt(decoder.draft_tokenizer, prompt)
    intersection = decoder.intersection if verifier == "tli" else None
    firsts = np.empty(samples, dtype=np.int64)
    for seed in range(samples):
        run = run_class(MemoContext(decoder.target_model, decoder.target_tokenizer, target_ids, memo_target),
                        MemoContext(decoder.draft_model, decoder.draft_tokenizer, draft_ids, memo_draft),
                        stop_ids=decoder.stop_ids, sampling=Sampling(temperature), max_new_tokens=3,
                        num_draft_tokens=draft_tokens, band=8, verifier=verifier, adaptive=False, seed=seed,
                        intersection=intersection)
        firsts[seed] = next(run.rounds()).new_token_ids[0]
    return firsts


@pytest.fixture(scope="module")
def exact(tiny_target):
    model, tokenizer = tiny_target
    with torch.inference_mode():
        logits = model(torch.tensor([render_prompt(tokenizer, PROMPT)])).logits[0, -1]
    return Sampling(TEMPERATURE).probs(logits).double().numpy()


def _bins(exact: np.ndarray, samples: int) -> np.ndarray:
    """The most likely tokens (each expected at least 5 times); everything else is one more bin."""
    order = np.argsort(exact)[::-1][:MAX_BINS - 1]
    return order[exact[order] * samples >= 5]


def follows(firsts: np.ndarray, exact: np.ndarray) -> float:
    """p-value of the chi-square test of the written tokens against the exact distribution."""
    bins = _bins(exact, len(firsts))
    observed = np.append(np.bincount(firsts, minlength=len(exact))[bins], np.isin(firsts, bins, invert=True).sum())
    expected = np.append(exact[bins], 1 - exact[bins].sum()) * len(firsts)
    return chisquare(observed, expected).pvalue


def test_the_check_has_its_stated_power(exact):
    degrees = len(_bins(exact, SAMPLES))  # bins - 1
    critical = chi2.ppf(1 - LEVEL, degrees)
    assert ncx2.sf(critical, degrees, 4 * SAMPLES * SHIFT ** 2) > 0.95


def test_first_written_token_of_a_tli_round_follows_the_target_distribution(decoder, exact):
    firsts = first_tokens(decoder, "tli")
    proposals = {int(t) for t in firsts}
    assert len(proposals) > 1
    assert follows(firsts, exact) > LEVEL


def test_a_tli_round_that_verifies_against_the_wrong_draft_distribution_is_caught(decoder, exact):
    """The wiring this guards: tli must verify against the distribution the draft sampled from (restricted to
    the intersection, renormalised, in target ids). A round that verifies against a uniform q over the
    intersection instead writes the draft's choices too often and must fail the same check."""

    class UniformQ(_Speculation):
        def draft_step(self, k):
            draft = super().draft_step(k)
            uniform = self.intersection.in_target_space(self.intersection.mask.float() / self.intersection.size)
            draft.distributions = [uniform for _ in draft.distributions]
            return draft

    firsts = first_tokens(decoder, "tli", samples=SAMPLES // 10, run_class=UniformQ)
    assert follows(firsts, exact) < LEVEL
