"""Verifier rules on toy distributions: the lossless rule follows the target exactly, transfer does not."""

import numpy as np
import pytest
import torch
from scipy.stats import chi2, chisquare, ncx2

from tokentiming.core.verification import Sampling, verify_greedy, verify_tokentiming, verify_transfer

P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])  # the target's distribution
Q = torch.tensor([0.1, 0.6, 0.1, 0.1, 0.1])  # how proposals are drawn (unknown to the verifier)
Q_TRANSFERRED = torch.tensor([0.3, 0.9, 0.5, 0.2, 0.4])  # a "transferred" draft probability per token
SAMPLES = 400_000


def expected(p, total):
    p = p.double().numpy()
    return p / p.sum() * total


def first_tokens(verify, samples=SAMPLES, seed=0, **extra):
    """The first token written in a round with one proposal drawn from Q, for many rounds at once."""
    generator = torch.Generator().manual_seed(seed)
    proxies = torch.multinomial(Q, samples, replacement=True, generator=generator).unsqueeze(-1)
    probs = torch.stack([P, torch.full((5,), 0.2)]).expand(samples, 2, 5)
    if verify is verify_transfer:
        accepted, token = verify(probs, proxies, Q_TRANSFERRED[proxies], generator)
    else:
        accepted, token = verify(probs, proxies, generator)
    first = torch.where(accepted > 0, proxies[:, 0], token)
    return torch.bincount(first, minlength=5).numpy(), accepted.float().mean().item()


def test_lossless_rule_reproduces_the_target_distribution():
    counts, acceptance = first_tokens(verify_tokentiming)
    assert chisquare(counts, expected(P, SAMPLES)).pvalue > 1e-4
    assert np.abs(counts / SAMPLES - P.numpy()).max() < 0.004
    assert acceptance == pytest.approx(float((Q * P).sum()), abs=0.005)  # P(accept) = sum_x Q(x) p(x)


def test_a_two_percent_shift_would_be_detected():
    """The sample size is large enough that the test above would catch a 2% shift.

    Any distribution at total variation distance d from P gives the chi-square statistic a noncentrality of
    at least 4 n d**2, so the test's power at its level 1e-4 against every 2% shift is at least this bound."""
    df = len(P) - 1
    assert ncx2.sf(chi2.isf(1e-4, df), df, 4 * SAMPLES * 0.02 ** 2) > 0.95
    counts, _ = first_tokens(verify_tokentiming)
    shifted = P.double() + torch.tensor([-0.02, 0.02, 0, 0, 0], dtype=torch.float64)
    assert chisquare(counts, expected(shifted, SAMPLES)).pvalue < 1e-10


def test_transfer_rule_is_biased():
    counts, acceptance = first_tokens(verify_transfer)
    assert chisquare(counts, expected(P, SAMPLES)).pvalue < 1e-20
    assert np.abs(counts / SAMPLES - P.numpy()).max() > 0.015
    lossless_acceptance = first_tokens(verify_tokentiming)[1]
    assert acceptance > lossless_acceptance + 0.05  # it accepts more, which is why it is tempting


def test_lossless_rule_second_position_follows_its_own_row():
    """Given the first proxy was accepted, the second written token follows the second row exactly."""
    samples = 200_000
    generator = torch.Generator().manual_seed(7)
    p2 = torch.tensor([0.05, 0.05, 0.3, 0.4, 0.2])
    proxies = torch.multinomial(Q, 2 * samples, replacement=True, generator=generator).view(samples, 2)
    probs = torch.stack([P, p2, torch.full((5,), 0.2)]).expand(samples, 3, 5)
    accepted, token = verify_tokentiming(probs, proxies, generator)
    past_first = accepted >= 1
    second = torch.where(accepted >= 2, proxies[:, 1], token)[past_first]
    counts = torch.bincount(second, minlength=5).numpy()
    assert chisquare(counts, expected(p2, counts.sum())).pvalue > 1e-4


def test_bonus_token_follows_the_last_row_when_everything_is_accepted():
    samples = 100_000
    generator = torch.Generator().manual_seed(3)
    certain = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])
    probs = torch.stack([certain, P]).expand(samples, 2, 5)
    accepted, token = verify_tokentiming(probs, torch.ones(samples, 1, dtype=torch.long), generator)
    assert bool((accepted == 1).all())
    assert chisquare(torch.bincount(token, minlength=5).numpy(), expected(P, samples)).pvalue > 1e-4


def test_zero_probability_proxy_is_always_rejected():
    samples = 10_000
    probs = torch.stack([torch.tensor([0.7, 0.3, 0.0, 0.0, 0.0]), P]).expand(samples, 2, 5)
    accepted, token = verify_tokentiming(probs, torch.full((samples, 1), 2), torch.Generator().manual_seed(0))
    assert bool((accepted == 0).all())
    assert set(token.tolist()) == {0, 1}


def test_rejected_proxy_is_never_resampled():
    """After rejecting t the rule samples p with t removed; sampling p itself would write t again half the time."""
    samples = 10_000
    probs = torch.stack([torch.tensor([0.5, 0.3, 0.2, 0.0, 0.0]), P]).expand(samples, 2, 5)
    accepted, token = verify_tokentiming(probs, torch.zeros(samples, 1, dtype=torch.long),
                                         torch.Generator().manual_seed(0))
    rejected = token[accepted == 0]
    assert len(rejected) == pytest.approx(samples / 2, rel=0.05)
    assert 0 not in set(rejected.tolist())
    assert chisquare(torch.bincount(rejected, minlength=3)[1:].numpy(), expected(torch.tensor([0.3, 0.2]),
                                                                                len(rejected))).pvalue > 1e-4


def test_no_proposal_samples_from_the_first_row():
    samples = 100_000
    probs = P.expand(samples, 1, 5)
    accepted, token = verify_tokentiming(probs, torch.empty(samples, 0, dtype=torch.long),
                                         torch.Generator().manual_seed(5))
    assert bool((accepted == 0).all())
    assert chisquare(torch.bincount(token, minlength=5).numpy(), expected(P, samples)).pvalue > 1e-4


def test_greedy_accepts_the_matching_prefix_then_writes_the_argmax():
    logits = torch.tensor([[[0.0, 5.0, 1.0], [4.0, 0.0, 1.0], [0.0, 0.0, 3.0], [9.0, 0.0, 0.0]]])
    assert [int(x) for x in verify_greedy(logits, torch.tensor([[1, 0, 2]]))] == [3, 0]  # all + bonus
    assert [int(x) for x in verify_greedy(logits, torch.tensor([[1, 2, 2]]))] == [1, 0]  # correction
    assert [int(x) for x in verify_greedy(logits, torch.tensor([[0, 0, 2]]))] == [0, 1]
    assert [int(x) for x in verify_greedy(logits[:, :1], torch.empty(1, 0, dtype=torch.long))] == [0, 1]


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.3, 5, 1.0), (0.9, 0, 0.8), (0.5, 20, 0.9)])
def test_sampling_matches_transformers_logits_warpers(temperature, top_k, top_p):
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(0)) * 3
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    expected = warpers(torch.zeros(4, 1, dtype=torch.long), logits.clone()).softmax(-1)
    torch.testing.assert_close(Sampling(temperature, top_k, top_p).probs(logits), expected)


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
                                    dict(temperature=float("nan"))])
def test_bad_sampling_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        Sampling(**kwargs)
