"""The TokenTiming round loop, and target-only decoding on the same machinery.

A round (ALGORITHM.md section 2): draft up to k tokens, re-encode their text with the target
tokenizer into proxy tokens, align draft and proxy tokens with DTW, verify the proxies in one target
forward, commit the accepted prefix plus one target token, resynchronise the draft by characters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import torch

from . import dtw
from ..backends.kv import BUCKETS, DynamicKV, StaticKV, static_kv
from ..backends.lean import LeanKV, lean_kv, unsupported
from .alignment import align_tokens
from .pairtable import pair_table
from .reencode import draft_text, reencode, resync, tokens_covering
from .surfaces import TokenSurfaces, split_incomplete, surfaces_for
from .trace import BONUS, CORRECTION, TARGET, Generation, RoundTrace, run_stats
from .verification import VERIFIERS, Sampling, verify_greedy, verify_tokentiming, verify_transfer

MAX_DRAFT_TOKENS = 64
MAX_NEW_TOKENS = 65536
#: Defaults tuned on the default pair (SmolLM2-135M -> Qwen2.5-Coder-1.5B, 2-core CPU, code and chat):
#: up to 8 draft tokens, stopping early once the draft is less sure than 0.5 of its own token. Against
#: 4-10 tokens with or without stopping and thresholds 0.25-0.55, this was fastest on average.
DEFAULT_DRAFT_TOKENS = 8
DEFAULT_ADAPTIVE = True
ADAPTIVE_CONFIDENCE = 0.5


# -- prompts ------------------------------------------------------------------------------------------
def render_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of ``prompt`` for one model: a string as is, chat messages with its own template."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt is empty: give some text to continue, or chat messages")
        return list(tokenizer(prompt)["input_ids"])
    messages = list(prompt) if isinstance(prompt, (list, tuple)) else None
    if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise ValueError("prompt must be a non-empty string or a non-empty list of "
                         "{'role': ..., 'content': ...} chat messages")
    if not any(str(m["content"]).strip() for m in messages):
        raise ValueError("prompt is empty: every chat message has empty content")
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer("\n\n".join(str(m["content"]) for m in messages))["input_ids"])


def eos_ids(model, tokenizer) -> frozenset[int]:
    """Every id that ends generation for this model (generation config and tokenizer)."""
    ids = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _check(max_new_tokens, num_draft_tokens, band, verifier, sampling: Sampling):
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS}], got {max_new_tokens!r}")
    if not isinstance(num_draft_tokens, int) or not 1 <= num_draft_tokens <= MAX_DRAFT_TOKENS:
        raise ValueError(f"num_draft_tokens must be an integer in [1, {MAX_DRAFT_TOKENS}], got {num_draft_tokens!r}")
    if not isinstance(band, int) or band < 0:
        raise ValueError(f"band must be an integer >= 0, got {band!r}")
    if verifier not in VERIFIERS:
        raise ValueError(f"verifier must be one of {', '.join(VERIFIERS)}; got {verifier!r}")
    if verifier == "greedy" and not sampling.greedy:
        raise ValueError("the greedy verifier decodes greedily: use temperature=0, or verifier='tokentiming' to sample")
    if not math.isfinite(sampling.temperature):
        raise ValueError(f"temperature must be finite, got {sampling.temperature}")


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


# -- one model and its cache --------------------------------------------------------------------------
class ModelContext:
    """One model, its token ids (prompt + generated) and a KV cache over a prefix of them.

    The cache always holds fewer tokens than ``ids``: the tokens it lacks are fed on the next call.
    ``kv`` is a :mod:`tokentiming.backends.kv` backend; by default a fresh eager cache.
    """

    def __init__(self, model, tokenizer, prompt_ids: list[int], kv: DynamicKV | StaticKV | LeanKV | None = None):
        self.model = model
        self.surfaces: TokenSurfaces = surfaces_for(tokenizer)
        self.kv = kv if kv is not None else DynamicKV(model)
        self.device = self.kv.device
        self.ids = list(prompt_ids)
        self.prompt_length = len(prompt_ids)

    @property
    def cached(self) -> int:
        return self.kv.length

    @property
    def generated(self) -> list[int]:
        return self.ids[self.prompt_length:]

    def prefill(self) -> None:
        """Put every prompt token but the last into the cache."""
        if len(self.ids) > 1:
            self.kv.forward(self.ids[:-1], keep=1)

    def logits(self, extra: list[int] = (), keep: int = 1) -> torch.Tensor:
        """Run the model over the uncached ids followed by ``extra``; logits of the last ``keep`` positions."""
        return self.kv.forward(self.ids[self.cached:] + list(extra), keep=keep)

    def rewrite(self, ids: list[int], valid: int) -> None:
        """Replace the ids; the cache keeps at most the first ``valid`` tokens (those unchanged)."""
        self.ids = ids
        self.kv.truncate(min(self.cached, valid, len(ids) - 1))


def _context(model, tokenizer, prompt, role: str, static: bool, max_new_tokens: int,
             lean: bool = False) -> ModelContext:
    """A context for one generation: on a fresh eager cache, on the model's reusable static cache
    (``static``), or for a supported CPU draft on the lean compiled forward (``lean``)."""
    prompt_ids = render_prompt(tokenizer, prompt)
    # Room for the prompt, the new tokens in a draft tokenizer up to 4x finer, and one padded draft.
    capacity = len(prompt_ids) + 4 * max_new_tokens + 2 * BUCKETS[-1]
    if lean and unsupported(model) is None:
        return ModelContext(model, tokenizer, prompt_ids, lean_kv(model, capacity))
    if static:
        return ModelContext(model, tokenizer, prompt_ids, static_kv(model, role, capacity))
    return ModelContext(model, tokenizer, prompt_ids)


# -- the round ----------------------------------------------------------------------------------------
class _Run:
    """State of one generation. ``draft`` is None for target-only decoding."""

    def __init__(self, target: ModelContext, draft: ModelContext | None, *, stop_ids, sampling: Sampling,
                 max_new_tokens, num_draft_tokens, band, verifier, adaptive, seed):
        self.target, self.draft = target, draft
        self.stop_ids = stop_ids
        self.sampling = sampling
        self.max_new_tokens = max_new_tokens
        self.num_draft_tokens = num_draft_tokens
        self.band = band
        self.verifier = verifier
        self.adaptive = adaptive
        self.generator = _generator(target.device, seed)
        self.draft_generator = _generator(draft.device, None if seed is None else seed + 1) if draft else None
        self.committed = b""  # bytes of the target's new tokens
        self.draft_synced = 0  # how many committed bytes the draft context stands for
        self.new_tokens = 0
        self.finished = False

    def rounds(self) -> Iterator[RoundTrace]:
        # The clock runs only while generating: time the consumer spends between rounds (drawing a page,
        # say) would otherwise count against the decoder and skew every speed comparison.
        start = time.perf_counter()
        self.prefill()
        busy = time.perf_counter() - start
        index = 0
        while not self.finished:
            start = time.perf_counter()
            trace = self.round(index)
            busy += time.perf_counter() - start
            trace.elapsed_s = busy
            index += 1
            yield trace

    @torch.inference_mode()
    def prefill(self) -> None:
        self.target.prefill()
        if self.draft is not None:
            self.draft.prefill()

    @torch.inference_mode()
    def round(self, index: int) -> RoundTrace:
        timings = {}
        budget = self.max_new_tokens - self.new_tokens
        drafted, draft_probs, draft_forwards = [], [], 0
        proxies: list[int] = []
        draft_start = len(self.draft.ids) if self.draft is not None else 0
        if self.draft is not None and budget > 1:
            tic = time.perf_counter()
            drafted, draft_probs, draft_forwards = self.draft_tokens(min(self.num_draft_tokens, budget - 1))
            timings["draft_ms"] = (time.perf_counter() - tic) * 1e3
            tic = time.perf_counter()
            proxies = self.proxy_tokens(drafted)[:budget - 1]
            timings["reencode_us"] = (time.perf_counter() - tic) * 1e6
        alignment = self.align(drafted, proxies)
        if alignment is not None:
            timings["align_us"] = alignment.align_us
        tic = time.perf_counter()
        accepted, token, token_probs = self.verify(proxies, alignment, draft_probs)
        timings["verify_ms"] = (time.perf_counter() - tic) * 1e3
        new_text = self.commit(proxies[:accepted] + [token])
        if self.draft is not None:
            tic = time.perf_counter()
            self.resync_draft(draft_start, drafted)
            timings["resync_us"] = (time.perf_counter() - tic) * 1e6
        kind = TARGET if not proxies else BONUS if accepted == len(proxies) else CORRECTION
        target = self.target.surfaces
        return RoundTrace(
            index=index,
            draft_token_ids=drafted,
            draft_tokens=[self.draft.surfaces.text_of(i) for i in drafted] if self.draft else [],
            draft_probs=draft_probs,
            proxy_token_ids=proxies,
            proxy_tokens=[target.text_of(i) for i in proxies],
            cost_matrix=alignment.cost_matrix if alignment else _EMPTY_COST,
            warping_path=alignment.warping_path if alignment else _EMPTY_PATH,
            accepted=accepted,
            emitted_token_id=token,
            emitted_token=target.text_of(token),
            emitted_kind=kind,
            token_probs=token_probs,
            new_text=new_text,
            draft_forwards=draft_forwards,
            timings=timings,
            new_tokens_total=self.new_tokens,
        )

    # 1. draft
    def draft_tokens(self, k: int) -> tuple[list[int], list[float], int]:
        """Up to k draft tokens from the draft context; stops at the draft's special tokens."""
        draft = self.draft
        sampled = self.verifier == "transfer" and not self.sampling.greedy
        drafted, probs = [], []
        for forwards in range(1, k + 1):
            logits = draft.logits()[-1]
            distribution = (self.sampling if sampled else Sampling()).probs(logits)
            if sampled:
                token = int(torch.multinomial(distribution, 1, generator=self.draft_generator))
            else:
                token = int(distribution.argmax())
            if token in draft.surfaces.special_ids:
                return drafted, probs, forwards
            prob = float(distribution[token])
            draft.ids.append(token)
            drafted.append(token)
            probs.append(prob)
            if self.adaptive and prob < ADAPTIVE_CONFIDENCE:
                break
        return drafted, probs, forwards

    # 2-3. draft text, re-encoded into proxy tokens
    def proxy_tokens(self, drafted: list[int]) -> list[int]:
        text = draft_text(self.draft.surfaces, drafted)
        return reencode(self.target.surfaces, self.target.ids, text) if text else []

    # 4. align
    def align(self, drafted: list[int], proxies: list[int]):
        if not drafted or not proxies:
            return None
        pending = len(split_incomplete(self.committed)[1])
        covered = pending + len(self.target.surfaces.join(proxies))
        aligned = drafted[:tokens_covering(self.draft.surfaces, drafted, covered)]
        return align_tokens(self.draft.surfaces, aligned, self.target.surfaces, proxies, self.band)

    # 5. verify
    def verify(self, proxies: list[int], alignment, draft_probs: list[float]):
        target = self.target
        m = len(proxies)
        logits = target.logits(proxies, keep=m + 1).unsqueeze(0)
        proxy_tensor = torch.tensor([proxies], dtype=torch.long, device=target.device)
        probs = self.sampling.probs(logits)
        if self.sampling.greedy:
            accepted, token = verify_greedy(logits, proxy_tensor)
        elif self.verifier == "transfer" and m:
            transferred = torch.tensor([_transferred(alignment, draft_probs, m)], device=target.device)
            accepted, token = verify_transfer(probs, proxy_tensor, transferred, self.generator)
        else:
            accepted, token = verify_tokentiming(probs, proxy_tensor, self.generator)
        accepted, token = int(accepted), int(token)
        written = torch.tensor(proxies[:accepted] + [token], device=target.device)
        token_probs = probs[0, :accepted + 1].gather(-1, written.unsqueeze(-1)).squeeze(-1).tolist()
        return accepted, token, token_probs

    # 6. commit
    def commit(self, new_ids: list[int]) -> str:
        """Append to the target context, crop its cache; returns the newly completed text."""
        target = self.target
        target.rewrite(target.ids + new_ids, valid=len(target.ids) + len(new_ids) - 1)
        self.new_tokens += len(new_ids)
        before = len(split_incomplete(self.committed)[0])
        if new_ids[-1] in self.stop_ids:
            self.finished = True
            new_ids = new_ids[:-1]
        self.committed += target.surfaces.join(new_ids)
        if self.new_tokens >= self.max_new_tokens:
            self.finished = True
        return split_incomplete(self.committed)[0][before:].decode("utf-8", errors="replace")

    # 7. resynchronise the draft by characters
    def resync_draft(self, draft_start: int, drafted: list[int]) -> None:
        complete, _ = split_incomplete(self.committed)
        ids, valid = resync(self.draft.surfaces, self.draft.ids[:draft_start], drafted, complete[self.draft_synced:])
        self.draft.rewrite(ids, valid)
        self.draft_synced = len(complete)


_EMPTY_COST = np.zeros((0, 0))
_EMPTY_PATH = np.zeros((0, 2), dtype=np.int32)


def _transferred(alignment, draft_probs: list[float], m: int) -> list[float]:
    """q~ per proxy: the draft probability of the last draft token aligned with it (the paper's
    terminal-token rule for many-to-one, reused for one-to-many)."""
    last = [0] * m
    for i, j in alignment.warping_path:
        last[j] = max(last[j], int(i))
    return [draft_probs[i] for i in last]


# -- public interface ---------------------------------------------------------------------------------
class TokenTimingDecoder:
    """Speculative decoding of ``target_model`` with ``draft_model`` across different tokenizers."""

    def __init__(self, target_model, target_tokenizer, draft_model, draft_tokenizer, lean_draft: bool = True):
        """``lean_draft``: run a Llama-family draft on a CPU through :mod:`tokentiming.backends.lean` (one compiled
        call per forward instead of transformers' per-layer modules); the target is never affected."""
        self.lean_draft = lean_draft
        self.target_model, self.target_tokenizer = target_model.eval(), target_tokenizer
        self.draft_model, self.draft_tokenizer = draft_model.eval(), draft_tokenizer
        self.stop_ids = eos_ids(target_model, target_tokenizer)
        pair_table(surfaces_for(draft_tokenizer), surfaces_for(target_tokenizer))  # built now, not in round 1
        dtw.warm_up()

    def stream(self, prompt, max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, num_draft_tokens: int = DEFAULT_DRAFT_TOKENS, band: int = 8,
               verifier: str = "tokentiming", seed: int | None = None, adaptive: bool = DEFAULT_ADAPTIVE,
               static: bool = False) -> Iterator[RoundTrace]:
        """Yield one :class:`RoundTrace` per round as it completes.

        ``verifier``: "tokentiming" (lossless, default), "greedy" (needs temperature 0) or
        "transfer" (experimental, lossy). ``adaptive`` stops drafting early when the draft is unsure.
        ``static`` runs both models on static KV caches, replayed from CUDA graphs on a GPU
        (:mod:`tokentiming.backends.kv`); full-attention models only. Arguments are checked before anything runs.
        """
        sampling = Sampling(temperature, top_k, top_p)
        _check(max_new_tokens, num_draft_tokens, band, verifier, sampling)
        run = _Run(_context(self.target_model, self.target_tokenizer, prompt, "target", static, max_new_tokens),
                   _context(self.draft_model, self.draft_tokenizer, prompt, "draft", static, max_new_tokens,
                            lean=self.lean_draft),
                   stop_ids=self.stop_ids, sampling=sampling, max_new_tokens=max_new_tokens,
                   num_draft_tokens=num_draft_tokens, band=band, verifier=verifier, adaptive=adaptive, seed=seed)
        return run.rounds()

    def generate(self, prompt, **options) -> Generation:
        """Run :meth:`stream` to the end; same arguments."""
        return finish(self.stream(prompt, **options), self.target_tokenizer, self.stop_ids)


def autoregressive(target_model, target_tokenizer, prompt, max_new_tokens: int = 128, temperature: float = 0.0,
                   top_k: int = 0, top_p: float = 1.0, seed: int | None = None, static: bool = False) -> Generation:
    """Target-only decoding, one token per forward, on the same caches and sampling code."""
    return finish(stream_autoregressive(target_model, target_tokenizer, prompt, max_new_tokens, temperature,
                                        top_k, top_p, seed, static),
                  target_tokenizer, eos_ids(target_model, target_tokenizer))


def stream_autoregressive(target_model, target_tokenizer, prompt, max_new_tokens: int = 128,
                          temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                          seed: int | None = None, static: bool = False) -> Iterator[RoundTrace]:
    """Target-only decoding, one :class:`RoundTrace` per token."""
    sampling = Sampling(temperature, top_k, top_p)
    _check(max_new_tokens, 1, 0, "tokentiming", sampling)
    run = _Run(_context(target_model.eval(), target_tokenizer, prompt, "target", static, max_new_tokens), None,
               stop_ids=eos_ids(target_model, target_tokenizer), sampling=sampling, max_new_tokens=max_new_tokens,
               num_draft_tokens=1, band=0, verifier="tokentiming", adaptive=False, seed=seed)
    return run.rounds()


def finish(rounds: Iterator[RoundTrace], tokenizer, stop_ids) -> Generation:
    """Collect a stream of rounds into a :class:`Generation`."""
    traces = list(rounds)
    token_ids = [t for trace in traces for t in trace.new_token_ids]
    stop_reason = "eos" if token_ids and token_ids[-1] in stop_ids else "max_new_tokens"
    text = tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return Generation(token_ids=token_ids, text=text, rounds=traces,
                      stats=run_stats(traces, traces[-1].elapsed_s if traces else 0.0), stop_reason=stop_reason)
