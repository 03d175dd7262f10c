"""The TokenTiming round loop, and target-only decoding on the same caches and sampling code.

One round (docs/algorithm.md, "One round"): draft up to k tokens, re-encode their text with the target
tokenizer into proxy tokens, align draft and proxy tokens with DTW, verify the proxies in one target
forward, commit the accepted prefix plus one target token, resynchronise the draft by characters.

Which rules read what: ``tokentiming`` and ``greedy`` read only the proxies; ``transfer`` reads the
alignment (it carries draft probabilities along the warping path); ``tli`` drafts inside the vocabulary
intersection, so its proposals need no re-encoding and no alignment, and it reads the draft's own
distribution instead. The alignment is computed for every rule that re-encodes, because the trace (and
so the Studio) shows it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..backends.kv import BUCKETS, DynamicKV, StaticKV, give_back, static_kv
from ..backends.lean import LeanKV, lean_kv, unsupported
from . import dtw
from .alignment import Alignment, align_tokens
from .pairtable import pair_table
from .reencode import draft_text, reencode, resync, tokens_covering
from .surfaces import TokenSurfaces, split_incomplete, surfaces_for
from .trace import Generation, RoundTrace, run_stats
from .intersection import Intersection, intersection_for
from .verification import (VERIFIERS, Sampling, restrict, verify_greedy, verify_tli, verify_tokentiming,
                           verify_transfer)

MAX_DRAFT_TOKENS = 64
MAX_NEW_TOKENS = 65536
#: Defaults tuned on the default pair (SmolLM2-135M -> Qwen2.5-Coder-1.5B, 2-core CPU, code and chat):
#: up to 8 draft tokens, stopping early once the draft is less sure than 0.5 of its own token. Against
#: 4-10 tokens with or without stopping and thresholds 0.25-0.55, this was fastest on average.
DEFAULT_DRAFT_TOKENS = 8
DEFAULT_ADAPTIVE = True
ADAPTIVE_CONFIDENCE = 0.5
#: Rules whose draft samples when the target samples (the others draft greedily whatever the temperature).
SAMPLED_DRAFT = ("transfer", "tli")


# -- prompts and limits -------------------------------------------------------------------------------
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


def context_length(model) -> int | None:
    """How many positions ``model`` holds (prompt and generated tokens together), if its config says."""
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _model_name(model) -> str:
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return name.rstrip("/").rsplit("/", 1)[-1] if "/" in name and name.startswith(("/", ".", "~")) else name


def check_context(model, role: str, prompt_tokens: int, new_tokens: int) -> None:
    """Raise ValueError, before anything runs, when a prompt and the new tokens do not fit ``model``."""
    limit = context_length(model)
    if limit is not None and prompt_tokens + new_tokens > limit:
        room = limit - prompt_tokens
        advice = (f"ask for at most {room} new tokens" if room > 0
                  else "shorten the prompt")
        raise ValueError(f"the {role} model {_model_name(model)!r} holds {limit} tokens, but the prompt is "
                         f"{prompt_tokens} tokens and {new_tokens} more were asked for "
                         f"({prompt_tokens + new_tokens} in all): {advice}")


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
    ``kv`` is a :mod:`tokentiming.backends.kv` backend, owned by this context until :meth:`release`.
    """

    def __init__(self, model, tokenizer, prompt_ids: list[int], kv: DynamicKV | StaticKV | LeanKV | None = None):
        self.model = model
        self.surfaces: TokenSurfaces = surfaces_for(tokenizer)
        self.kv = kv if kv is not None else DynamicKV(model)
        self.device = self.kv.device
        self.ids = list(prompt_ids)
        self.prompt_length = len(prompt_ids)
        self.limit = context_length(model)

    @property
    def cached(self) -> int:
        return self.kv.length

    def room(self) -> int:
        """How many more tokens fit in the model's positions."""
        return (self.limit - len(self.ids)) if self.limit is not None else MAX_NEW_TOKENS

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

    def release(self) -> None:
        """Hand a reusable cache back to its model's pool (this context must not run again)."""
        give_back(self.kv)


def _context(model, tokenizer, prompt, role: str, static: bool, max_new_tokens: int,
             lean: bool = False, int8: bool = False) -> ModelContext:
    """A context for one generation: on a fresh eager cache, on a static cache from the model's pool
    (``static``), or for a supported CPU draft on the lean compiled forward (``lean``, on int8 weights if
    ``int8``)."""
    prompt_ids = render_prompt(tokenizer, prompt)
    # Room for the prompt, the new tokens in a draft tokenizer up to 4x finer, and one padded draft.
    capacity = len(prompt_ids) + 4 * max_new_tokens + 2 * BUCKETS[-1]
    if lean and unsupported(model) is None:
        return ModelContext(model, tokenizer, prompt_ids, lean_kv(model, capacity, int8))
    if static:
        return ModelContext(model, tokenizer, prompt_ids, static_kv(model, role, capacity))
    return ModelContext(model, tokenizer, prompt_ids)


# -- the pure bookkeeping between rounds -----------------------------------------------------------
@dataclass
class Committed:
    """The bytes the target has written so far, and how much of them the draft context stands for.

    A token may end in the middle of a UTF-8 character; only whole characters count as text, and the
    draft is resynchronised up to the last whole character (its tokenizer may split that character
    differently). Special tokens write no text.
    """

    data: bytes = b""
    draft_synced: int = 0  # how many bytes of ``text`` the draft context already holds

    @property
    def text(self) -> bytes:
        """The whole characters written so far."""
        return split_incomplete(self.data)[0]

    @property
    def pending(self) -> bytes:
        """Trailing bytes of a character not finished yet."""
        return split_incomplete(self.data)[1]

    def append(self, piece: bytes) -> str:
        """Add a token's bytes; returns the text of the characters this completed."""
        before = len(self.text)
        self.data += piece
        return self.text[before:].decode("utf-8", errors="replace")

    def unsynced(self) -> bytes:
        """The whole characters the draft context does not hold yet; marks them as held."""
        text = self.text
        rest, self.draft_synced = text[self.draft_synced:], len(text)
        return rest


@dataclass
class Draft:
    """What the draft proposed in one round, in its own vocabulary."""

    token_ids: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)  # the draft's probability of each token it drafted
    forwards: int = 0
    start: int = 0  # where the drafted tokens begin in the draft context
    distributions: list[torch.Tensor] = field(default_factory=list)  # tli: q per position, target vocabulary


class _Timer:
    """Wall time of each named step of a round, in the unit its name ends with (_ms or _us)."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        scale = 1e3 if name.endswith("_ms") else 1e6
        self.timings[name] = (time.perf_counter() - start) * scale


# -- the rounds -------------------------------------------------------------------------------------
class _Decoding:
    """One generation's target side: prompt, sampling, the committed text and the end conditions."""

    def __init__(self, target: ModelContext, *, stop_ids, sampling: Sampling, max_new_tokens: int, seed):
        self.target = target
        self.stop_ids = stop_ids
        self.sampling = sampling
        self.max_new_tokens = max_new_tokens
        self.generator = _generator(target.device, seed)
        self.committed = Committed()
        self.new_tokens = 0
        self.finished = False

    def rounds(self) -> Iterator[RoundTrace]:
        """Prefill, then one trace per round; caches go back to their pools however the stream ends."""
        # The clock runs only while generating: time the consumer spends between rounds (drawing a page,
        # say) would otherwise count against the decoder and skew every speed comparison.
        try:
            start = time.perf_counter()
            self.prefill()
            busy = prefill = time.perf_counter() - start
            index = 0
            while not self.finished:
                start = time.perf_counter()
                trace = self.round(index)
                busy += time.perf_counter() - start
                trace.elapsed_s = busy
                if index == 0:
                    trace.timings["prefill_ms"] = prefill * 1e3
                index += 1
                yield trace
        finally:
            self.release()

    @torch.inference_mode()
    def prefill(self) -> None:
        self.target.prefill()

    def release(self) -> None:
        self.target.release()

    @torch.inference_mode()
    def round(self, index: int) -> RoundTrace:
        timer = _Timer()
        with timer("verify_ms"):
            probs = self.sampling.probs(self.target.logits())
            token = int(probs.argmax()) if self.sampling.greedy else int(
                torch.multinomial(probs[0], 1, generator=self.generator))
        new_text = self.commit([token])
        return RoundTrace.build(index, self.target.surfaces, emitted_token_id=token, token_probs=[float(probs[0, token])],
                                new_text=new_text, special=token in self.target.surfaces.special_ids,
                                timings=timer.timings, new_tokens_total=self.new_tokens)

    def commit(self, new_ids: list[int]) -> str:
        """Append to the target context and crop its cache; returns the newly completed text."""
        target = self.target
        target.rewrite(target.ids + new_ids, valid=len(target.ids) + len(new_ids) - 1)
        self.new_tokens += len(new_ids)
        if new_ids[-1] in self.stop_ids or self.new_tokens >= self.max_new_tokens:
            self.finished = True
        special = target.surfaces.special_ids
        text = self.committed.append(target.surfaces.join(t for t in new_ids if t not in special))
        if self.finished and self.committed.pending:  # the end: an unfinished character shows as U+FFFD, as in
            text += self.committed.pending.decode("utf-8", errors="replace")  # Generation.text
        return text


class _Speculation(_Decoding):
    """A generation with a draft: each round drafts, re-encodes, aligns, verifies, commits and resyncs."""

    def __init__(self, target: ModelContext, draft: ModelContext, *, num_draft_tokens: int, band: int,
                 verifier: str, adaptive: bool, seed, intersection: Intersection | None, **common):
        super().__init__(target, seed=seed, **common)
        self.draft = draft
        self.num_draft_tokens, self.band, self.verifier, self.adaptive = num_draft_tokens, band, verifier, adaptive
        self.intersection = intersection
        self.draft_generator = _generator(draft.device, None if seed is None else seed + 1)

    @torch.inference_mode()
    def prefill(self) -> None:
        self.target.prefill()
        self.draft.prefill()

    def release(self) -> None:
        self.target.release()
        self.draft.release()

    @torch.inference_mode()
    def round(self, index: int) -> RoundTrace:
        timer = _Timer()
        with timer("draft_ms"):
            draft = self.draft_step(self.lookahead())
        with timer("reencode_us"):
            proxies = self.proxy_tokens(draft)
        with timer("align_us"):
            alignment = self.align(draft, proxies)
        with timer("verify_ms"):
            accepted, token, token_probs = self.verify(proxies, alignment, draft)
        new_text = self.commit(proxies[:accepted] + [token])
        with timer("resync_us"):
            self.resync(draft)
        return RoundTrace.build(index, self.target.surfaces, draft_surfaces=self.draft.surfaces,
                                draft_token_ids=draft.token_ids, draft_probs=draft.probs, proxy_token_ids=proxies,
                                alignment=alignment, accepted=accepted, emitted_token_id=token,
                                token_probs=token_probs, new_text=new_text,
                                special=token in self.target.surfaces.special_ids, draft_forwards=draft.forwards,
                                timings=timer.timings, new_tokens_total=self.new_tokens, verifier=self.verifier)

    def lookahead(self) -> int:
        """How many tokens to draft: the budget left (one is the target's own), the draft's positions, and
        for tli nothing while the target's text ends inside a character (draft tokens cannot continue it)."""
        budget = self.max_new_tokens - self.new_tokens - 1
        if self.verifier == "tli" and self.committed.pending:
            return 0
        return max(0, min(self.num_draft_tokens, budget, self.draft.room() - 1, self.target.room() - 1))

    # 1. draft
    def draft_step(self, k: int) -> Draft:
        """Up to k draft tokens from the draft context; stops at the draft's special tokens."""
        draft, context = Draft(start=len(self.draft.ids)), self.draft
        sampled = self.verifier in SAMPLED_DRAFT and not self.sampling.greedy
        if k and not sampled and self.verifier != "tli" and getattr(context.kv, "device_loop", False):
            return self._draft_on_device(k)
        for draft.forwards in range(1, k + 1):
            logits = context.logits()[-1]
            distribution = (self.sampling if sampled else Sampling()).probs(logits)
            if self.verifier == "tli":
                distribution, kept = restrict(distribution, self.intersection.mask)
                if not kept:  # no probability left inside the intersection
                    break
            if sampled:
                token = int(torch.multinomial(distribution, 1, generator=self.draft_generator))
            else:
                token = int(distribution.argmax())
            if token in context.surfaces.special_ids:
                break
            context.ids.append(token)
            draft.token_ids.append(token)
            draft.probs.append(float(distribution[token]))
            if self.verifier == "tli":
                draft.distributions.append(self.intersection.in_target_space(distribution))
            if self.adaptive and draft.probs[-1] < ADAPTIVE_CONFIDENCE:
                break
        return draft

    def _draft_on_device(self, k: int) -> Draft:
        """:meth:`draft_step`'s greedy draft with the k steps chained on the device and read back once
        (:meth:`StaticKV.greedy_steps`), then cut where the step-by-step loop would have stopped: before a
        special token, or after the first token the draft is unsure of. The same tokens, the same cache;
        the steps past the cut are the price of not synchronising after each one."""
        draft, context = Draft(start=len(self.draft.ids)), self.draft
        tokens, probs = context.kv.greedy_steps(context.ids[context.cached:], k, Sampling().probs)
        special = False
        for token, prob in zip(tokens, probs):
            draft.forwards += 1
            if token in context.surfaces.special_ids:
                special = True
                break
            draft.token_ids.append(token)
            draft.probs.append(prob)
            if self.adaptive and prob < ADAPTIVE_CONFIDENCE:
                break
        context.ids.extend(draft.token_ids)
        # As if fed one at a time: the last drafted token waits for the next call, unless a special token
        # stopped the draft, whose step fed it already.
        context.kv.truncate(len(context.ids) if special else len(context.ids) - 1)
        return draft

    # 2-3. draft text, re-encoded into proxy tokens (tli maps each drafted token instead)
    def proxy_tokens(self, draft: Draft) -> list[int]:
        if self.verifier == "tli":
            return self.intersection.draft_to_target[draft.token_ids].tolist()
        text = draft_text(self.draft.surfaces, draft.token_ids)
        proxies = reencode(self.target.surfaces, self.target.ids, text) if text else []
        return proxies[:self.max_new_tokens - self.new_tokens - 1]

    # 4. align
    def align(self, draft: Draft, proxies: list[int]) -> Alignment | None:
        if not draft.token_ids or not proxies:
            return None
        if self.verifier == "tli":  # one proxy per draft token, spelling the same bytes: the path is diagonal
            return align_tokens(self.draft.surfaces, draft.token_ids, self.target.surfaces, proxies, self.band)
        covered = len(self.committed.pending) + len(self.target.surfaces.join(proxies))
        aligned = draft.token_ids[:tokens_covering(self.draft.surfaces, draft.token_ids, covered)]
        return align_tokens(self.draft.surfaces, aligned, self.target.surfaces, proxies, self.band)

    # 5. verify
    def verify(self, proxies: list[int], alignment: Alignment | None, draft: Draft):
        target = self.target
        m = len(proxies)
        logits = target.logits(proxies, keep=m + 1).unsqueeze(0)
        proxy_tensor = torch.tensor([proxies], dtype=torch.long, device=target.device)
        probs = self.sampling.probs(logits)
        if self.sampling.greedy:
            accepted, token = verify_greedy(logits, proxy_tensor)
        elif self.verifier == "tli":
            q = torch.stack(draft.distributions[:m]).unsqueeze(0) if m else probs[:, :0]
            accepted, token = verify_tli(probs, proxy_tensor, q.to(probs.device), self.generator)
        elif self.verifier == "transfer" and m:
            transferred = torch.tensor([_transferred(alignment, draft.probs, m)], device=target.device)
            accepted, token = verify_transfer(probs, proxy_tensor, transferred, self.generator)
        else:
            accepted, token = verify_tokentiming(probs, proxy_tensor, self.generator)
        accepted, token = int(accepted), int(token)
        written = torch.tensor(proxies[:accepted] + [token], device=target.device)
        token_probs = probs[0, :accepted + 1].gather(-1, written.unsqueeze(-1)).squeeze(-1).tolist()
        return accepted, token, token_probs

    # 7. resynchronise the draft by characters
    def resync(self, draft: Draft) -> None:
        ids, valid = resync(self.draft.surfaces, self.draft.ids[:draft.start], draft.token_ids,
                            self.committed.unsynced())
        self.draft.rewrite(ids, valid)


def _transferred(alignment: Alignment, draft_probs: list[float], m: int) -> list[float]:
    """q~ per proxy: the draft probability of the last draft token aligned with it (the paper's
    terminal-token rule for many-to-one, reused for one-to-many)."""
    last = [0] * m
    for i, j in alignment.warping_path:
        last[j] = max(last[j], int(i))
    return [draft_probs[i] for i in last]


# -- public interface ---------------------------------------------------------------------------------
class TokenTimingDecoder:
    """Speculative decoding of ``target_model`` with ``draft_model`` across different tokenizers.

    Any number of streams may run on one decoder, interleaved or on several threads: each owns its caches
    for its lifetime (reusable caches come from a per-model pool and go back when the stream ends).
    """

    def __init__(self, target_model, target_tokenizer, draft_model, draft_tokenizer, lean_draft: bool = True,
                 draft_int8: bool = True):
        """``lean_draft``: run a Llama-family draft on a CPU through :mod:`tokentiming.backends.lean` (one
        compiled call per forward instead of transformers' per-layer modules); ``draft_int8``: on int8
        weights there (a quarter of the bytes per drafted token; the draft's logits move by the quantisation
        error, which changes how many proposals are accepted, never the output). The target is never
        affected."""
        self.lean_draft, self.draft_int8 = lean_draft, draft_int8
        self.target_model, self.target_tokenizer = target_model.eval(), target_tokenizer
        self.draft_model, self.draft_tokenizer = draft_model.eval(), draft_tokenizer
        self.stop_ids = eos_ids(target_model, target_tokenizer)
        draft, target = surfaces_for(draft_tokenizer), surfaces_for(target_tokenizer)
        pair_table(draft, target)  # built now, not in round 1
        self._intersection_lock = threading.Lock()
        self._intersection = None
        dtw.warm_up()

    @property
    def intersection(self) -> Intersection:
        """The tokens both vocabularies spell with the same bytes (built on first use: tli needs it)."""
        with self._intersection_lock:
            if self._intersection is None:
                self._intersection = intersection_for(
                    surfaces_for(self.draft_tokenizer), surfaces_for(self.target_tokenizer),
                    self.draft_model.get_output_embeddings().weight.shape[0],
                    self.target_model.get_output_embeddings().weight.shape[0]).to(
                        next(self.draft_model.parameters()).device)
            return self._intersection

    @intersection.setter
    def intersection(self, intersection: Intersection) -> None:
        """Draft tli proposals from another intersection (a thinned one, say, to study smaller overlaps)."""
        with self._intersection_lock:
            self._intersection = intersection.to(next(self.draft_model.parameters()).device)

    @property
    def context_length(self) -> int:
        """How many tokens (prompt and new) the target holds; the draft is checked separately."""
        return context_length(self.target_model) or MAX_NEW_TOKENS

    def max_new_tokens_for(self, prompt) -> int:
        """How many new tokens fit after ``prompt`` (ValueError, naming the numbers, when none do)."""
        prompt_ids = render_prompt(self.target_tokenizer, prompt)
        check_context(self.target_model, "target", len(prompt_ids), 1)
        check_context(self.draft_model, "draft", len(render_prompt(self.draft_tokenizer, prompt)), 1)
        return min(MAX_NEW_TOKENS, self.context_length - len(prompt_ids))

    def stream(self, prompt, max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, num_draft_tokens: int = DEFAULT_DRAFT_TOKENS, band: int = 8,
               verifier: str = "tokentiming", seed: int | None = None, adaptive: bool = DEFAULT_ADAPTIVE,
               static: bool = False) -> Iterator[RoundTrace]:
        """Yield one :class:`RoundTrace` per round as it completes.

        ``verifier``: "tokentiming" (lossless, default), "greedy" (needs temperature 0), "tli" (lossless:
        the draft samples inside the vocabulary intersection) or "transfer" (experimental, lossy).
        ``adaptive`` stops drafting early when the draft is unsure. ``static`` runs both models on static
        KV caches, replayed from CUDA graphs on a GPU (:mod:`tokentiming.backends.kv`); full-attention
        models only. Arguments and context lengths are checked before anything runs.
        """
        sampling = Sampling(temperature, top_k, top_p)
        _check(max_new_tokens, num_draft_tokens, band, verifier, sampling)
        target_ids = render_prompt(self.target_tokenizer, prompt)
        check_context(self.target_model, "target", len(target_ids), max_new_tokens)
        # The draft's text tokens are unknown until written: it must hold the prompt and one draft, and it
        # stops drafting (the target goes on alone) once it is full.
        check_context(self.draft_model, "draft", len(render_prompt(self.draft_tokenizer, prompt)), 1)
        intersection = self.intersection if verifier == "tli" else None
        target = _context(self.target_model, self.target_tokenizer, prompt, "target", static, max_new_tokens)
        draft = _context(self.draft_model, self.draft_tokenizer, prompt, "draft", static, max_new_tokens,
                         lean=self.lean_draft, int8=self.draft_int8)
        run = _Speculation(target, draft, stop_ids=self.stop_ids, sampling=sampling, max_new_tokens=max_new_tokens,
                           num_draft_tokens=num_draft_tokens, band=band, verifier=verifier, adaptive=adaptive,
                           seed=seed, intersection=intersection)
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
    check_context(target_model, "target", len(render_prompt(target_tokenizer, prompt)), max_new_tokens)
    target = _context(target_model.eval(), target_tokenizer, prompt, "target", static, max_new_tokens)
    run = _Decoding(target, stop_ids=eos_ids(target_model, target_tokenizer), sampling=sampling,
                    max_new_tokens=max_new_tokens, seed=seed)
    return run.rounds()


def finish(rounds: Iterator[RoundTrace], tokenizer, stop_ids) -> Generation:
    """Collect a stream of rounds into a :class:`Generation`."""
    traces = list(rounds)
    token_ids = [t for trace in traces for t in trace.new_token_ids]
    stop_reason = "eos" if token_ids and token_ids[-1] in stop_ids else "max_new_tokens"
    # The exact continuation of the prompt: the tokens' bytes (a tokenizer's decode would drop a leading
    # space that the tokens do write), special tokens writing nothing, as in each round's new_text.
    surfaces = surfaces_for(tokenizer)
    text = surfaces.join(t for t in token_ids if t not in surfaces.special_ids).decode("utf-8", errors="replace")
    return Generation(token_ids=token_ids, text=text, rounds=traces,
                      stats=run_stats(traces, traces[-1].elapsed_s if traces else 0.0), stop_reason=stop_reason)
