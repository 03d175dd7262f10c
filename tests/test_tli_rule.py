"""Token-level intersection (TLI): the vocabulary intersection of a pair, and speculative sampling over it.

The statistical tests run the rule once over many rows and compare the written tokens with the target's
distribution by a chi-square test at ALPHA. Their power is stated, not hoped for: a distribution at total
variation distance delta from p gives the chi-square statistic a noncentrality of at least 4 n delta**2 (by
Cauchy-Schwarz, whatever p is), so the power against any 2% shift is at least that of a noncentral chi-square
with that noncentrality; ``test_a_two_percent_shift_would_be_detected`` checks it is at least 95%.
"""

import numpy as np
import pytest
import torch
from scipy.stats import chi2, chisquare, ncx2
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tokentiming.core.facts import pair_facts
from tokentiming.core.intersection import intersection_for
from tokentiming.core.surfaces import _byte_level_decoder, surfaces_for
from tokentiming.core.verification import _ratio_rule, restrict, verify_tli

ALPHA = 1e-4  # the chance that a correct rule fails a test
SHIFT = 0.02  # total variation distance each test must catch ...
POWER = 0.95  # ... with at least this probability
ROWS = 100_000
VOCAB = 8
SUPPORT = torch.tensor([True, True, True, False, True, False, True, False])  # the draft proposes only these


def worst_case_power(samples: int, categories: int) -> float:
    """Power of the chi-square test at ALPHA against the hardest distribution SHIFT away from the target."""
    return float(ncx2.sf(chi2.isf(ALPHA, categories - 1), categories - 1, 4 * samples * SHIFT ** 2))


def random_rows(rows: int, seed: int) -> torch.Tensor:
    """Uneven random distributions over VOCAB tokens."""
    return (torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 1.5).softmax(-1)


P = random_rows(3, seed=11)  # the target's rows: two proxy positions and the bonus
Q = restrict(random_rows(2, seed=12), SUPPORT)[0]  # the draft's restricted distributions at the two positions


def tli_round(verify=verify_tli, draft_probs=Q, rows=ROWS, seed=0):
    """Two proposals drawn from Q per row, verified in one call: (proxies, accepted, token)."""
    generator = torch.Generator().manual_seed(seed)
    proxies = torch.stack([torch.multinomial(q, rows, replacement=True, generator=generator) for q in Q], -1)
    accepted, token = verify(P.expand(rows, 3, VOCAB), proxies, draft_probs.expand(rows, 2, VOCAB), generator)
    return proxies, accepted, token


def written_counts(proxies, accepted, token):
    """Counts of the first written token, and of the second in rows that accepted the first."""
    first = torch.where(accepted > 0, proxies[:, 0], token)
    second = torch.where(accepted > 1, proxies[:, 1], token)[accepted > 0]
    return torch.bincount(first, minlength=VOCAB).numpy(), torch.bincount(second, minlength=VOCAB).numpy()


def follows(counts: np.ndarray, p: torch.Tensor) -> float:
    """The chi-square p-value of ``counts`` against the distribution ``p``."""
    p = p.double().numpy()
    return chisquare(counts, p / p.sum() * counts.sum()).pvalue


def test_tli_rule_reproduces_the_target_distribution():
    proxies, accepted, token = tli_round()
    first, second = written_counts(proxies, accepted, token)
    assert follows(first, P[0]) > ALPHA
    assert follows(second, P[1]) > ALPHA
    # Speculative sampling accepts a proposal with probability sum_x min(p(x), q(x)); 5 standard errors.
    assert (accepted > 0).float().mean().item() == pytest.approx(float(torch.minimum(P[0], Q[0]).sum()), abs=0.008)


def test_a_two_percent_shift_would_be_detected():
    """Both comparisons above have the stated power, analytically and by simulating the test itself."""
    first, second = written_counts(*tli_round())
    assert worst_case_power(first.sum(), VOCAB) >= POWER
    assert worst_case_power(second.sum(), VOCAB) >= POWER
    # Simulated: the hardest kind of shift moves mass in proportion to p between two halves of the vocabulary.
    p = P[1].double().numpy()
    p /= p.sum()
    half = np.cumsum(np.sort(p)) <= 0.5
    upper = np.zeros(VOCAB, bool)
    upper[np.argsort(p)[half]] = True
    shifted = np.where(upper, p * (1 + SHIFT / p[upper].sum()), p * (1 - SHIFT / p[~upper].sum()))
    assert 0.5 * np.abs(shifted - p).sum() == pytest.approx(SHIFT)
    trials = np.random.default_rng(0).multinomial(second.sum(), shifted, size=1000)
    pvalues = chisquare(trials, p * second.sum(), axis=1).pvalue
    assert (pvalues < ALPHA).mean() >= POWER


def residual_is_p(probs, proxies, draft_probs, generator):
    """A rejection resampled from p itself instead of max(0, p - q)."""
    q_proxy = draft_probs[:, :proxies.shape[-1]].gather(-1, proxies.unsqueeze(-1)).squeeze(-1)
    return _ratio_rule(probs, proxies, q_proxy, torch.zeros_like(draft_probs), generator)


@pytest.mark.parametrize("variant", ["residual_is_p", "q_not_renormalised"])
def test_biased_tli_variant_is_detected(variant):
    """The same check rejects a rule that resamples from p, or one told q before restricting renormalised it
    (the draft's own probability, too small, so the ratio accepts too often)."""
    if variant == "residual_is_p":
        proxies, accepted, token = tli_round(verify=residual_is_p)
    else:
        unrestricted = random_rows(2, seed=12)
        proxies, accepted, token = tli_round(draft_probs=unrestricted * SUPPORT)
    first, second = written_counts(proxies, accepted, token)
    worst = min(follows(first, P[0]), follows(second, P[1]))
    assert worst < ALPHA


def test_proposal_equal_to_the_target_is_always_accepted_and_the_bonus_follows_the_last_row():
    rows = 50_000
    generator = torch.Generator().manual_seed(4)
    probs = torch.stack([Q[0], Q[1], P[2]]).expand(rows, 3, VOCAB)
    proxies = torch.stack([torch.multinomial(q, rows, replacement=True, generator=generator) for q in Q], -1)
    accepted, token = verify_tli(probs, proxies, Q.expand(rows, 2, VOCAB), generator)
    assert bool((accepted == 2).all())
    assert follows(torch.bincount(token, minlength=VOCAB).numpy(), P[2]) > ALPHA


def test_no_proposal_samples_from_the_first_row():
    rows = 50_000
    accepted, token = verify_tli(P[:1].expand(rows, 1, VOCAB), torch.empty(rows, 0, dtype=torch.long),
                                 torch.empty(rows, 0, VOCAB), torch.Generator().manual_seed(5))
    assert bool((accepted == 0).all())
    assert follows(torch.bincount(token, minlength=VOCAB).numpy(), P[0]) > ALPHA


def test_restrict_renormalises_inside_and_reports_no_mass_instead_of_nan():
    draft_probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.5, 0.5]])
    restricted, kept = restrict(draft_probs, torch.tensor([True, True, False, False]))
    torch.testing.assert_close(restricted, torch.tensor([[1 / 3, 2 / 3, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(kept, torch.tensor([0.3, 0.0]))


# -- the intersection -----------------------------------------------------------------------------------
def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2 style: ids 0..255 are the bytes, then "Ġa" (" a"), "ab", "cd"; a special "<s>" and an ordinary
    added token " a" that writes the same bytes as "Ġa"."""
    alphabet = sorted(_byte_level_decoder(), key=_byte_level_decoder().get)
    vocab = {piece: i for i, piece in enumerate(alphabet + ["Ġa", "ab", "cd"])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "a"), ("a", "b"), ("c", "d")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", clean_up_tokenization_spaces=False)
    tokenizer.add_tokens([AddedToken(" a", special=False, normalized=False)])
    return tokenizer


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """Llama 2 style: <unk> <s> </s>, byte-fallback pieces <0x00>..<0xFF> (ids 3..258), then "▁" "a" "b" "c"
    "▁a" "ab" "bc"."""
    byte_fallback = [f"<0x{b:02X}>" for b in range(256)]
    pieces = ["<unk>", "<s>", "</s>"] + byte_fallback + ["▁", "a", "b", "c", "▁a", "ab", "bc"]
    tok = Tokenizer(models.BPE(vocab={piece: i for i, piece in enumerate(pieces)},
                               merges=[("▁", "a"), ("a", "b"), ("b", "c")], unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   clean_up_tokenization_spaces=False)


def spelled(tokenizer, ids) -> list[bytes]:
    return [surfaces_for(tokenizer).bytes_of(i) for i in ids.tolist()]


@pytest.fixture(scope="module")
def hand_built():
    draft, target = byte_level_tokenizer(), sentencepiece_tokenizer()
    return draft, target, intersection_for(surfaces_for(draft), surfaces_for(target), len(draft), len(target))


def test_hand_built_pair_has_exactly_the_shared_byte_strings(hand_built):
    draft, target, shared = hand_built
    assert (surfaces_for(draft).kind, surfaces_for(target).kind) == ("byte_level", "metaspace")
    assert shared.size == 256 + 2  # every single byte, " a" and "ab"; not "cd" (draft only), "bc" (target only)
    assert (shared.draft_strings, shared.target_strings) == (259, 259)
    assert spelled(draft, shared.draft_ids) == spelled(target, shared.target_ids)
    assert bool((shared.draft_ids.diff() > 0).all())  # sorted by draft id


def test_same_bytes_spelled_differently_are_matched(hand_built):
    draft, target, shared = hand_built
    assert int(shared.draft_to_target[draft.convert_tokens_to_ids("Ġa")]) == target.convert_tokens_to_ids("▁a")
    assert int(shared.draft_to_target[ord(" ")]) == target.convert_tokens_to_ids("▁")


def test_duplicate_bytes_pick_an_ordinary_piece_then_the_lowest_id(hand_built):
    draft, target, shared = hand_built
    # "a" (id 260), not the byte-fallback piece <0x61> (id 100) that the target model would hardly ever write.
    assert int(shared.draft_to_target[ord("a")]) == target.convert_tokens_to_ids("a")
    assert int(shared.draft_to_target[draft.convert_tokens_to_ids(" a")]) == -1  # added later than "Ġa"
    assert target.convert_tokens_to_ids("<0x61>") not in shared.target_ids.tolist()


def test_special_tokens_are_left_out_even_when_both_spell_them_alike(hand_built):
    draft, target, shared = hand_built
    assert surfaces_for(draft).bytes_of(draft.bos_token_id) == surfaces_for(target).bytes_of(target.bos_token_id)
    assert int(shared.draft_to_target[draft.bos_token_id]) == -1
    assert not set(shared.target_ids.tolist()) & {target.unk_token_id, target.bos_token_id, target.eos_token_id}


def test_widths_past_the_tokenizer_are_outside_and_narrower_widths_cut_the_vocabulary(hand_built):
    draft, target, _ = hand_built
    draft_surfaces, target_surfaces = surfaces_for(draft), surfaces_for(target)
    padded = intersection_for(draft_surfaces, target_surfaces, len(draft) + 64, len(target))
    assert padded.mask.shape == (len(draft) + 64,) and not padded.mask[len(draft):].any()
    assert padded.size == 258
    narrow = intersection_for(draft_surfaces, target_surfaces, len(draft), target.convert_tokens_to_ids("ab"))
    assert narrow.size == 257  # the target model cannot score "ab"


def test_in_target_space_moves_each_probability_to_its_target_id(hand_built):
    draft, target, shared = hand_built
    draft_probs = torch.rand(2, len(draft), generator=torch.Generator().manual_seed(0))
    moved = shared.in_target_space(draft_probs)
    assert moved.shape == (2, len(target))
    torch.testing.assert_close(moved[:, shared.target_ids], draft_probs[:, shared.draft_ids])
    outside = torch.ones(len(target), dtype=torch.bool)
    outside[shared.target_ids] = False
    assert not moved[:, outside].any()


def test_tiny_pair_intersection_is_every_shared_ordinary_byte_string():
    draft = AutoTokenizer.from_pretrained("assets/tiny-pair/tiny-draft")
    target = AutoTokenizer.from_pretrained("assets/tiny-pair/tiny-target")
    draft_surfaces, target_surfaces = surfaces_for(draft), surfaces_for(target)
    shared = intersection_for(draft_surfaces, target_surfaces, len(draft), len(target))

    def ordinary(surfaces):
        return {data for i, data in enumerate(surfaces.vocabulary_bytes()) if data and i not in surfaces.special_ids}

    assert shared.size == len(ordinary(draft_surfaces) & ordinary(target_surfaces))
    assert spelled(draft, shared.draft_ids) == spelled(target, shared.target_ids)
    assert not set(shared.draft_ids.tolist()) & draft_surfaces.special_ids
    assert target.convert_ids_to_tokens(int(shared.draft_to_target[draft.convert_tokens_to_ids("Ċ")])) == "\n"
    facts = pair_facts(draft, target)
    assert facts["intersection"] == facts["overlap"] == shared.size
    assert facts["overlap_of_draft"] == pytest.approx(shared.size / len(ordinary(draft_surfaces)))
    assert facts["overlap_of_target"] == pytest.approx(shared.size / len(ordinary(target_surfaces)))
    assert intersection_for(draft_surfaces, target_surfaces, len(draft), len(target)) is shared  # built once
