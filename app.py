"""TokenTiming Studio: pick two causal LMs, generate with TokenTiming, watch the alignment live.

    python app.py [--host 127.0.0.1] [--port 7860]      or      gradio app.py   (reloads on edits)

``TOKENTIMING_PAIR=tiny`` makes the tiny test pair the default (fast, no download); ``test`` picks
SmolLM2 -> Qwen2.5-Coder-0.5B; otherwise the default pair is SmolLM2 -> Qwen2.5-Coder-1.5B. The page opens on
a recorded run of the default pair (``assets/recorded/``, written by ``python -m tokentiming.tools.record``).
On a Hugging Face ZeroGPU Space (the ``spaces`` package importable) generation runs in ``spaces.GPU`` calls.
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from tokentiming import VERIFIERS, TokenTimingDecoder, align_text, run_stats, stream_autoregressive  # noqa: E402
from tokentiming.backends.kv import static_supported  # noqa: E402
from tokentiming.core.decoder import (DEFAULT_ADAPTIVE, DEFAULT_DRAFT_TOKENS, MAX_DRAFT_TOKENS, context_length,  # noqa: E402
                                      finish)
from tokentiming.core.facts import pair_facts  # noqa: E402
from tokentiming.models import ModelSpecError, limits, load, load_tokenizer, model_choices, pair_from_env  # noqa: E402
from tokentiming.tools import bench, doctor  # noqa: E402
from tokentiming.views import figures  # noqa: E402
from tokentiming.views.recorded import load_recording  # noqa: E402

try:  # Hugging Face ZeroGPU: GPU time is granted per call to a function decorated with spaces.GPU
    import spaces
except ImportError:
    spaces = None


ROOT = Path(__file__).resolve().parent
PAPER = "https://arxiv.org/abs/2510.15545"
README = ROOT / "README.md"
UPDATE_EVERY_S = 0.5  # how often the text and statistics are redrawn while rounds stream in
PLOTS_EVERY_S = 2.0  # the plots cost the browser far more to redraw
MAX_NEW_TOKENS = 1024  # the slider's top when the models allow more
MAX_PLAYGROUND_CHARS = 5000  # banded alignment of this much text takes well under a second
MAPPING_TOKENS = 32  # draft tokens in the playground's mapping figure (its labels stay readable)
TINY_SPECS = {"tiny-draft", "tiny-target"}
TINY_NOTE = ("**tiny-draft / tiny-target is a plumbing test pair**: tiny random-ish models, expect no speedup and "
             "nonsense text. It shows every part of the method working; the recorded run the page opens on shows real models.")
EXAMPLES = [
    ["def quicksort(items):", False],
    ["Write a Python function that checks whether a string is a palindrome.", True],
    ["import json\n\n\ndef load_config(path):", False],
]
EXAMPLE_LABELS = ["def quicksort(items):", "Chat: palindrome function", "import json … load_config"]
VERIFIER_INFO = {
    "tokentiming": "lossless (default): greedy draft re-encoded into proxies; each is accepted with the target's "
                   "probability of it, else the target writes its own token",
    "greedy": "exact match with the target's argmax; temperature 0 only",
    "tli": "lossless: the draft samples only tokens both vocabularies share (no re-encoding); the target verifies "
           "with min(1, p/q)",
    "transfer": "the paper's probability transfer through the alignment: lossy, experimental",
}


class UserError(Exception):
    """A problem the person can fix; the message is in their words."""


def plain(error: Exception) -> str:
    """An exception as a message for the page."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return "Out of memory: pick smaller models, fewer new tokens, or load one model at a time."
    if isinstance(error, (UserError, ModelSpecError, ValueError)):
        return str(error)
    return f"Something went wrong ({type(error).__name__}): {error}"


def banner(message: str, kind: str = "error") -> str:
    """The status line: an error (⚠), a note (ℹ) or nothing."""
    if not message:
        return ""
    icon = {"error": "⚠️", "note": "ℹ️", "ok": "✅"}[kind]
    return f'<div class="tt-status tt-{kind}" role="status">{icon} {message}</div>'


# -- loaded models ----------------------------------------------------------------------------------
@dataclass
class Loaded:
    spec: str
    model: object
    tokenizer: object
    seconds: float

    def describe(self, role: str) -> str:
        parameters = sum(p.numel() for p in self.model.parameters())
        p = next(self.model.parameters())
        return (f"{role}: **{self.spec}** · {p.device.type} · {str(p.dtype).removeprefix('torch.')} · "
                f"{parameters / 1e6:,.1f} M parameters · vocab {len(self.tokenizer):,} · "
                f"{context_length(self.model) or '?'} positions · loaded in {self.seconds:.1f} s")


def _bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class LoadedModels:
    """The draft and the target in memory, and the decoder of the pair. The same spec again is free; a new
    spec replaces the old model only once it has loaded, so a failed load keeps what was there. When the
    memory left could not hold both (on a CPU), the old model is released first and reloaded on failure."""

    def __init__(self):
        self.slots: dict[str, Loaded] = {}
        self.decoders: dict[tuple[str, str], TokenTimingDecoder] = {}
        self.lock = threading.Lock()

    def get(self, role: str, spec: str) -> Loaded:
        spec = (spec or "").strip()
        if not spec:
            raise UserError(f"Pick a {role} model.")
        with self.lock:
            current = self.slots.get(role)
            if current is not None and current.spec == spec:
                return current
            if current is not None and not self._room_for_another(current):
                self._release(role)
                try:
                    return self._load(role, spec)
                except Exception:
                    self._load(role, current.spec)  # from the local cache: it loaded before
                    raise
            return self._load(role, spec)

    def _room_for_another(self, current: Loaded) -> bool:
        if next(current.model.parameters()).device.type != "cpu":
            return True  # GPU memory: the loader fails cleanly and the old model stays
        available = _available_bytes()
        return available is None or available > 2 * _bytes(current.model)

    def _load(self, role: str, spec: str) -> Loaded:
        start = time.perf_counter()
        model, tokenizer = load(spec)
        loaded = Loaded(spec, model, tokenizer, time.perf_counter() - start)
        self.slots[role] = loaded  # the old model, if any, goes with its decoders
        self.decoders.clear()
        gc.collect()
        return loaded

    def _release(self, role: str) -> None:
        self.slots.pop(role, None)
        self.decoders.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def decoder(self, draft: Loaded, target: Loaded) -> TokenTimingDecoder:
        """The pair's decoder, built once (it fills the pair's token table)."""
        key = (draft.spec, target.spec)
        if key not in self.decoders:
            self.decoders[key] = TokenTimingDecoder(target.model, target.tokenizer, draft.model, draft.tokenizer)
        return self.decoders[key]

    def describe(self, role: str) -> str:
        loaded = self.slots.get(role)
        return loaded.describe(role.capitalize()) if loaded else f"{role.capitalize()}: not loaded yet"


MODELS = LoadedModels()


def facts_markdown(facts: dict) -> str:
    lines = ["| | draft | target |", "|---|---|---|",
             f"| vocabulary | {facts['draft_vocab']:,} | {facts['target_vocab']:,} |",
             f"| tokenizer | {facts['draft_family']} | {facts['target_family']} |",
             f"| shared token strings | {facts['overlap_of_draft']:.0%} of the draft's | "
             f"{facts['overlap_of_target']:.0%} of the target's |"]
    if facts["same_tokenizer"]:
        lines.append("\n**Both models use the same tokenizer**: plain speculative decoding applies; TokenTiming "
                     "still works and its proxies are the draft's own tokens.")
    return "\n".join(lines)


def tiny_note(draft_spec: str, target_spec: str):
    """The tiny pair's note, shown while either picker names a tiny model."""
    return gr.Markdown(visible=bool({draft_spec, target_spec} & TINY_SPECS))


# -- one generation request: shared by the streaming handler and the API ----------------------------
@dataclass
class Request:
    target: str
    draft: str
    prompt: str
    chat: bool = False
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    num_draft_tokens: int = DEFAULT_DRAFT_TOKENS
    band: int = 8
    verifier: str = "tokentiming"
    seed: int = -1
    adaptive: bool = DEFAULT_ADAPTIVE
    top_k: int = 0

    @property
    def message(self):
        return [{"role": "user", "content": self.prompt}] if self.chat else self.prompt

    def sampling(self, static: bool) -> dict:
        return dict(max_new_tokens=int(self.max_new_tokens), temperature=float(self.temperature),
                    top_k=int(self.top_k), top_p=float(self.top_p), static=static,
                    seed=None if self.seed is None or self.seed < 0 else int(self.seed))

    def check(self) -> None:
        """Refuse what cannot run, before loading anything."""
        if not (self.prompt or "").strip():
            raise UserError("Type a prompt first.")
        if self.verifier == "greedy" and self.temperature > 0:
            raise UserError("The greedy verifier decodes at temperature 0: set Temperature to 0, or pick "
                            "tokentiming to sample.")
        limits.current().check_request(max_new_tokens=int(self.max_new_tokens), text=self.prompt,
                                       num_draft_tokens=int(self.num_draft_tokens))


def _static(*loaded: Loaded) -> bool:
    """On a GPU, decode on static KV caches replayed from CUDA graphs when both models allow it."""
    return all(item.model.device.type == "cuda" and static_supported(item.model) for item in loaded)


def _gpu_seconds(request: Request, compare: bool = False) -> int:
    """ZeroGPU time to ask for: loading plus the tokens asked for, twice with the comparison run."""
    return int(min(300, 30 + 0.05 * request.max_new_tokens * (2 if compare else 1)))


def _on_gpu(function):
    return spaces.GPU(duration=_gpu_seconds)(function) if spaces is not None else function


@_on_gpu
def run_generation(request: Request, compare: bool = False):
    """Load (or reuse) the pair, check the request against the target's context, then yield
    ("loaded", (draft line, target line, facts)), ("round", trace)... and, with ``compare``,
    ("reference", trace)... for the target alone. Traces hold CPU data only."""
    request.check()
    draft = MODELS.get("draft", request.draft)
    target = MODELS.get("target", request.target)
    decoder = MODELS.decoder(draft, target)
    room = decoder.max_new_tokens_for(request.message)  # ValueError when the prompt alone is too long
    if request.max_new_tokens > room:
        raise UserError(f"{request.max_new_tokens} new tokens do not fit: {target.spec} holds "
                        f"{decoder.context_length} tokens and this prompt takes {decoder.context_length - room}, "
                        f"leaving room for {room}. Lower Max new tokens to {room} or shorten the prompt.")
    yield "loaded", (draft.describe("Draft"), target.describe("Target"),
                     facts_markdown(pair_facts(draft.tokenizer, target.tokenizer)))
    options = request.sampling(_static(target, draft))
    for trace in decoder.stream(request.message, num_draft_tokens=int(request.num_draft_tokens),
                                band=int(request.band), verifier=request.verifier, adaptive=bool(request.adaptive),
                                **options):
        yield "round", trace
    if compare:
        for trace in stream_autoregressive(target.model, target.tokenizer, request.message, **options):
            yield "reference", trace


# -- what a run looks like --------------------------------------------------------------------------
@dataclass
class Session:
    """One visitor's runs: the rounds on screen, and whether the inspector follows the newest round."""

    rounds: list = field(default_factory=list)
    reference_rounds: list = field(default_factory=list)
    band: int = 8
    follow: bool = True
    picked: int = 0  # the round the person chose (shown while not following)
    compare: bool = False  # the target-alone run went to the end: a speedup can be computed
    stopped: bool = False
    recorded: str = ""  # the label of a recorded run, when that is what is shown


def recorded_session() -> Session:
    recording = load_recording()
    if recording is None:
        return Session()
    return Session(recording.rounds, recording.reference_rounds, recording.meta["options"]["band"], compare=True,
                   recorded=recording.label)


def opening_round(rounds: list) -> int:
    """The last round that proposed something (the last round is often a draftless one)."""
    return next((r.index for r in reversed(rounds) if r.proposed), len(rounds) - 1)


def stats_markdown(session: Session) -> str:
    rounds, reference = session.rounds, session.reference_rounds
    if not rounds:
        return ""
    stats = run_stats(rounds, rounds[-1].elapsed_s)
    text = (f"**{stats['new_tokens']} tokens** in {stats['wall_s']:.2f} s · **{stats['tokens_per_s']:.1f} tok/s** · "
            f"rounds {stats['rounds']} · acceptance **{stats['acceptance_rate']:.2f}** "
            f"({stats['accepted']}/{stats['proposed']}) · tau **{stats['tau']:.2f}** · "
            f"draft forwards {stats['draft_forwards']} · align {stats['align_us_median']:.1f} µs/round (median)")
    if session.stopped:
        text = f"**Stopped after {stats['new_tokens']} tokens.** " + text
    if reference and session.compare:
        alone = run_stats(reference, reference[-1].elapsed_s)
        text += (f"\n\nTarget alone: {alone['tokens_per_s']:.1f} tok/s → **speedup "
                 f"{stats['tokens_per_s'] / alone['tokens_per_s']:.2f}×**")
    elif reference:
        text += f"\n\nTarget alone was cut off after {len(reference)} tokens: no speedup to report."
    if session.recorded:
        text = f"*{session.recorded}.*\n\n" + text
    return text


def round_detail(trace) -> str:
    if not trace.proposed:
        return (f"Round {trace.index}: nothing proposed (no draft this round) · the target wrote "
                f"`{figures.visible(trace.emitted_token)}` ({trace.emitted_kind})")
    return (f"Round {trace.index}: drafted {len(trace.draft_token_ids)} · proposed {trace.proposed} · "
            f"accepted {trace.accepted} · wrote `{figures.visible(trace.emitted_token)}` ({trace.emitted_kind})")


class GenerateTab:
    """Models, prompt and settings, the streamed output, and the round inspector."""

    def __init__(self, draft_default: str, target_default: str, choices: list[str]):
        session = recorded_session()
        self.state = gr.State(session)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=320):
                self.prompt = gr.Textbox(EXAMPLES[0][0], label="Prompt", lines=3, max_lines=12, elem_id="prompt")
                self.chat = gr.Checkbox(False, label="Chat: send the prompt as a user message (each model's template)")
                gr.Examples(EXAMPLES, [self.prompt, self.chat], example_labels=EXAMPLE_LABELS, label="Examples")
                with gr.Row():
                    self.run_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    self.stop_button = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop")
                self.status = gr.HTML(banner(
                    "Showing a recorded run of the default pair. Load models and press Generate to run live."
                    if session.recorded else "", "note"), elem_id="status")
                self.text = gr.HTML(figures.text_html(session.rounds), elem_id="output-text", js_on_load=PICK_JS)
                self.stats = gr.Markdown(stats_markdown(session), elem_id="stats")
            with gr.Column(scale=2, min_width=300):
                self.model_controls(draft_default, target_default, choices)
                self.decoding_controls()
        self.inspector(session)
        self.wire()

    def model_controls(self, draft_default, target_default, choices):
        with gr.Accordion("Models", open=True):
            self.draft_box = gr.Dropdown(choices, value=draft_default, label="Draft model", allow_custom_value=True,
                                         info="the small, fast model that writes the draft", elem_id="draft-spec")
            self.target_box = gr.Dropdown(choices, value=target_default, label="Target model", allow_custom_value=True,
                                          info="the model whose output you get; a preset, org/name hub id or folder",
                                          elem_id="target-spec")
            self.tiny_note = gr.Markdown(TINY_NOTE, visible=bool({draft_default, target_default} & TINY_SPECS),
                                         elem_id="tiny-note", elem_classes="tt-status tt-note")
            self.load_button = gr.Button("Load models", variant="secondary", elem_id="load")
            self.draft_status = gr.Markdown(MODELS.describe("draft"), elem_id="draft-status")
            self.target_status = gr.Markdown(MODELS.describe("target"), elem_id="target-status")
            self.facts = gr.Markdown(elem_id="pair-facts")

    def decoding_controls(self):
        with gr.Accordion("Decoding settings", open=True):
            self.max_new_tokens = gr.Slider(1, 512, 64, step=1, label="Max new tokens", elem_id="max-new-tokens",
                                            info="its top follows the target's context length once loaded")
            self.temperature = gr.Slider(0, 2, 0, step=0.05, label="Temperature",
                                         info="0 = greedy: output equals the target's own, token for token")
            self.top_p = gr.Slider(0.05, 1, 1, step=0.05, label="Top-p")
            self.num_draft_tokens = gr.Slider(1, MAX_DRAFT_TOKENS, DEFAULT_DRAFT_TOKENS, step=1,
                                              label="Draft tokens per round", elem_id="num-draft-tokens")
            self.adaptive = gr.Checkbox(DEFAULT_ADAPTIVE, label="Adaptive drafting", elem_id="adaptive",
                                        info="stop drafting early once the draft is less than 50% sure of its token")
            self.band = gr.Slider(0, 32, 8, step=1, label="DTW band", elem_id="band",
                                  info="how far the alignment may stray from the diagonal. Only the transfer "
                                       "verifier reads the alignment: with the lossless rules the text is the same "
                                       "for every band")
            self.verifier = gr.Radio(list(VERIFIERS), value="tokentiming", label="Verifier", elem_id="verifier",
                                     info=" · ".join(f"{name}: {VERIFIER_INFO.get(name, 'no description')}"
                                                     for name in VERIFIERS))
            self.seed = gr.Number(-1, precision=0, label="Seed (-1 = random)")
            self.compare = gr.Checkbox(True, label="Also run the target alone (for the speedup)")

    def inspector(self, session: Session):
        gr.Markdown("### Round inspector")
        index = opening_round(session.rounds) if session.rounds else 0
        with gr.Row(equal_height=True):
            self.round_slider = gr.Slider(0, max(1, len(session.rounds) - 1), max(0, index), step=1, scale=4,
                                          label="Round to inspect", elem_id="round-slider")
            self.follow = gr.Checkbox(True, label="Follow live", scale=1, min_width=120, elem_id="follow-live",
                                      info="off as soon as you pick a round")
        views = self.round_views(session, index)
        self.round_detail = gr.Markdown(views["detail"], elem_id="round-detail")
        with gr.Row():
            self.heatmap = gr.Plot(views["heatmap"], show_label=False, label="DTW cost matrix", elem_id="heatmap", min_width=320)
            self.mapping = gr.Plot(views["mapping"], show_label=False, label="Token mapping", elem_id="mapping", min_width=320)
        with gr.Row():
            self.acceptance = gr.Plot(figures.acceptance_figure(session.rounds), show_label=False, label="Acceptance",
                                      elem_id="acceptance", min_width=320)
            self.throughput = gr.Plot(figures.throughput_figure(self.runs(session), session.compare),
                                      show_label=False, label="Throughput", elem_id="throughput", min_width=320)
        self.picked = gr.Number(-1, visible=False)

    # -- views --------------------------------------------------------------------------------------
    @staticmethod
    def runs(session: Session) -> dict:
        runs = {"TokenTiming": session.rounds}
        if session.reference_rounds:
            runs["target alone"] = session.reference_rounds
        return runs

    @staticmethod
    def round_views(session: Session, index: int) -> dict:
        if not session.rounds:
            return {"heatmap": figures.round_heatmap(None, session.band), "mapping": figures.round_mapping(None),
                    "detail": "No run yet."}
        trace = session.rounds[max(0, min(int(index), len(session.rounds) - 1))]
        return {"heatmap": figures.round_heatmap(trace, session.band), "mapping": figures.round_mapping(trace),
                "detail": round_detail(trace)}

    def show_round(self, session: Session, index: int) -> dict:
        views = self.round_views(session, index)
        return {self.heatmap: views["heatmap"], self.mapping: views["mapping"], self.round_detail: views["detail"]}

    def run_view(self, session: Session, plots: bool) -> dict:
        """Text and statistics; with ``plots`` also the charts and, when following, the newest round."""
        out = {self.text: figures.text_html(session.rounds), self.stats: stats_markdown(session),
               self.state: session}
        if not plots:
            return out
        out[self.acceptance] = figures.acceptance_figure(session.rounds)
        out[self.throughput] = figures.throughput_figure(self.runs(session), session.compare)
        last = max(0, len(session.rounds) - 1)
        if session.follow:
            index = opening_round(session.rounds) if session.rounds else 0
            out[self.round_slider] = gr.Slider(maximum=max(1, last), value=index)
            out |= self.show_round(session, index)
        else:  # the person's round again: an update sent before they picked may have moved it
            out[self.round_slider] = gr.Slider(maximum=max(1, last), value=session.picked)
            out |= self.show_round(session, session.picked)
        return out

    def settle(self, session: Session) -> dict:
        """After a run: buttons back, and the inspector on the person's round (updates still in flight when
        they picked it cannot have the last word)."""
        out = {self.run_button: gr.Button(interactive=True), self.stop_button: gr.Button(interactive=False)}
        if not session.follow and session.rounds:
            out |= self.show_round(session, session.picked) | {self.round_slider: gr.Slider(value=session.picked)}
        return out

    # -- handlers -----------------------------------------------------------------------------------
    def load_pair(self, draft_spec: str, target_spec: str, progress=gr.Progress()):
        """Load (or reuse) both models; each status line reports its own model, the banner any error."""
        errors = []
        for role, spec in (("draft", draft_spec), ("target", target_spec)):
            progress(0.0 if role == "draft" else 0.5, desc=f"loading the {role}: {spec}")
            try:
                MODELS.get(role, spec)
            except Exception as error:  # the page stays usable and the other model is kept
                errors.append(f"{role} {spec!r}: {plain(error)}")
        out = {self.draft_status: MODELS.describe("draft"), self.target_status: MODELS.describe("target"),
               self.status: banner("Could not load the " + "; the ".join(errors)) if errors else
               banner("Models loaded.", "ok")}
        out |= self.context_limits()
        if "draft" in MODELS.slots and "target" in MODELS.slots:
            out[self.facts] = facts_markdown(pair_facts(MODELS.slots["draft"].tokenizer,
                                                        MODELS.slots["target"].tokenizer))
        return out

    def context_limits(self) -> dict:
        """The Max new tokens slider reaches no further than the loaded target's context."""
        target = MODELS.slots.get("target")
        limit = context_length(target.model) if target else None
        if not limit:
            return {}
        top = min(MAX_NEW_TOKENS, limit - 1)
        return {self.max_new_tokens: gr.Slider(maximum=top, info=f"up to {top}: {target.spec} holds {limit} "
                                                                 "positions, prompt included"),
                self.prompt: gr.Textbox(info=f"{target.spec} holds {limit} tokens: the prompt and the new tokens "
                                             "together; a longer request is refused before it starts")}

    def request(self, values: dict) -> Request:
        return Request(target=values[self.target_box], draft=values[self.draft_box], prompt=values[self.prompt],
                       chat=values[self.chat], max_new_tokens=int(values[self.max_new_tokens]),
                       temperature=float(values[self.temperature]), top_p=float(values[self.top_p]),
                       num_draft_tokens=int(values[self.num_draft_tokens]), band=int(values[self.band]),
                       verifier=values[self.verifier], seed=int(values[self.seed] if values[self.seed] is not None
                                                                else -1),
                       adaptive=bool(values[self.adaptive]))

    def generate(self, values: dict):
        """Stream a TokenTiming generation round by round (then, if asked, the target alone). On an error the
        banner says what happened and everything else on the page stays as it was."""
        request = self.request(values)
        compare = bool(values[self.compare])
        session = Session(band=request.band)
        last_text = last_plots = 0.0
        try:
            for kind, item in run_generation(request, compare):
                if kind == "loaded":  # checked and loaded: this run replaces the previous one
                    draft_line, target_line, facts = item
                    yield {self.draft_status: draft_line, self.target_status: target_line, self.facts: facts,
                           self.status: banner(f"Generating with {request.draft} → {request.target}…", "note"),
                           self.state: session, **self.context_limits()}
                    continue
                (session.rounds if kind == "round" else session.reference_rounds).append(item)
                now = time.perf_counter()
                if now - last_text > UPDATE_EVERY_S:
                    plots = now - last_plots > PLOTS_EVERY_S
                    last_text, last_plots = now, now if plots else last_plots
                    yield self.run_view(session, plots)
        except Exception as error:
            yield {self.status: banner(plain(error)), self.draft_status: MODELS.describe("draft"),
                   self.target_status: MODELS.describe("target")}
            return
        session.compare = compare
        yield self.run_view(session, plots=True) | {self.status: banner("", "ok")}

    def stop(self, session: Session) -> dict:
        """After Stop: say how far the run got; no speedup from a cut-off baseline."""
        session.stopped = True
        session.compare = False
        n = sum(len(r.new_token_ids) for r in session.rounds)
        return self.run_view(session, plots=True) | {
            self.status: banner(f"Stopped after {n} tokens.", "note"),
            self.stop_button: gr.Button(interactive=False), self.run_button: gr.Button(interactive=True)}

    def pick_round(self, session: Session, index: int) -> dict:
        """A person moved the slider: stop following and show that round."""
        if not session.rounds:  # a new run has not written its first round yet: nothing to pick
            return {}
        session.follow, session.picked = False, int(index)
        return self.show_round(session, index) | {self.follow: False}

    def set_follow(self, session: Session, follow: bool) -> dict:
        session.follow = bool(follow)
        if not follow or not session.rounds:
            return {}
        index = opening_round(session.rounds)
        return self.show_round(session, index) | {self.round_slider: gr.Slider(value=index)}

    def pick_token(self, session: Session, position: float) -> dict:
        """A click (or tap, or Enter) on an output token: its details, and its round in the inspector."""
        tokens = list(figures.written_tokens(session.rounds))
        if not 0 <= int(position) < len(tokens):
            return {}
        token, origin, index, prob, sources, special = tokens[int(position)]
        session.follow, session.picked = False, index
        shown = "end of text" if special else f"`{figures.visible(token)}`"
        detail = (f"**Token {shown}** · round {index} · {figures.ORIGIN_LABELS[origin]} · target probability "
                  f"{prob:.3f}" + (f" · from draft tokens {sources}" if sources else ""))
        views = self.round_views(session, index)
        return {self.heatmap: views["heatmap"], self.mapping: views["mapping"], self.follow: False,
                self.round_detail: detail + "\n\n" + views["detail"], self.round_slider: gr.Slider(value=index)}

    def wire(self):
        models = [self.draft_box, self.target_box]
        for box in models:
            box.change(tiny_note, models, self.tiny_note, api_visibility="private", queue=False)
        # Loading shares the generation's queue: a Load never swaps a model under a running generation.
        self.load_button.click(self.load_pair, models,
                               [self.draft_status, self.target_status, self.facts, self.status, self.max_new_tokens,
                                self.prompt],
                               api_visibility="private", show_progress_on=self.status, concurrency_limit=1,
                               concurrency_id="models")
        inputs = {self.state, self.draft_box, self.target_box, self.prompt, self.chat, self.max_new_tokens,
                  self.temperature, self.top_p, self.num_draft_tokens, self.adaptive, self.band, self.verifier,
                  self.seed, self.compare}
        outputs = [self.status, self.text, self.stats, self.round_slider, self.heatmap, self.mapping,
                   self.round_detail, self.acceptance, self.throughput, self.state, self.draft_status,
                   self.target_status, self.facts, self.max_new_tokens, self.prompt]
        buttons = [self.run_button, self.stop_button]
        started = self.run_button.click(lambda: {self.run_button: gr.Button(interactive=False),
                                                 self.stop_button: gr.Button(interactive=True)},
                                        None, buttons, queue=False, api_visibility="private",
                                        js=SCROLL_TO_OUTPUT_JS)
        run = started.then(self.generate, inputs, outputs, api_name="generate_live", api_visibility="private",
                           concurrency_limit=1,
                           concurrency_id="models", show_progress_on=self.status)
        run.then(self.settle, self.state, buttons + [self.heatmap, self.mapping, self.round_detail, self.round_slider],
                 queue=False, api_visibility="private")
        self.stop_button.click(self.stop, self.state, outputs + buttons, cancels=[run], api_visibility="private",
                               queue=False)
        # .input: only a person moving the slider, not the updates that follow the stream
        self.round_slider.input(self.pick_round, [self.state, self.round_slider],
                                [self.heatmap, self.mapping, self.round_detail, self.follow],
                                api_visibility="private", trigger_mode="always_last", concurrency_id="inspector",
                                show_progress="hidden")
        self.follow.input(self.set_follow, [self.state, self.follow],
                          [self.heatmap, self.mapping, self.round_detail, self.round_slider],
                          api_visibility="private", show_progress="hidden")
        self.text.click(self.pick_token, [self.state, self.picked],
                        [self.heatmap, self.mapping, self.round_detail, self.follow, self.round_slider],
                        js="(state, picked) => [state, window.ttPicked ?? -1]", api_visibility="private",
                        trigger_mode="always_last", concurrency_id="inspector", show_progress="hidden")


#: Click, tap or Enter on an output token: remember which one and fire the HTML component's click event.
PICK_JS = """
const pick = (event) => {
  const token = event.target.closest('.tt-token');
  if (!token) return;
  element.querySelectorAll('.tt-picked').forEach((t) => t.classList.remove('tt-picked'));
  token.classList.add('tt-picked');
  window.ttPicked = [...element.querySelectorAll('.tt-token')].indexOf(token);
  trigger('click');
};
element.addEventListener('click', pick);
element.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); pick(event); }
});
"""
#: After Generate, bring the output into view (on a narrow screen it sits below the prompt).
SCROLL_TO_OUTPUT_JS = """() => {
  const output = document.querySelector('#status');
  const box = output && output.getBoundingClientRect();
  if (box && (box.top < 0 || box.bottom > window.innerHeight)) output.scrollIntoView({block: 'start'});
}"""


# -- alignment playground ---------------------------------------------------------------------------
class PlaygroundTab:
    """Any text through two tokenizers (no weights), aligned with DTW; long texts are shown through a window."""

    def __init__(self, draft_default: str, target_default: str, choices: list[str]):
        gr.Markdown("Tokenise any text with two tokenizers (no model weights) and see how DTW maps one onto the "
                    "other: spaces, newlines, emoji, CJK, right-to-left scripts and code all tokenise differently. "
                    f"Up to {MAX_PLAYGROUND_CHARS:,} characters; long texts show the whole path as a line and the "
                    f"costs of a window of at most {figures.WINDOW} tokens per side that you can move.")
        with gr.Row():
            self.text = gr.Textbox("def greet(name):\n    print(f'héllo {name} 👋 世界 مرحبا')", lines=4,
                                   max_lines=10, label="Text", elem_id="play-text", scale=3,
                                   max_length=MAX_PLAYGROUND_CHARS)
            with gr.Column(scale=2, min_width=280):
                self.draft = gr.Dropdown(choices, value=draft_default, label="Draft tokenizer",
                                         allow_custom_value=True, elem_id="play-draft")
                self.target = gr.Dropdown(choices, value=target_default, label="Target tokenizer",
                                          allow_custom_value=True, elem_id="play-target")
                self.band = gr.Slider(0, 32, 8, step=1, label="DTW band",
                                      info="cells farther than this from the diagonal are not computed (grey)")
                self.button = gr.Button("Align", variant="primary", elem_id="align")
        self.status = gr.HTML(elem_id="play-status")
        self.summary = gr.Markdown(elem_id="play-summary")
        self.state = gr.State(None)
        self.window = gr.Slider(0, 1, 0, step=1, label="Window: first draft token shown", elem_id="play-window",
                                visible=False,
                                info="move along a long alignment; the outline on the whole path shows where")
        with gr.Row():
            self.overview = gr.Plot(show_label=False, label="Whole warping path", elem_id="play-overview", min_width=300, scale=1)
            self.heatmap = gr.Plot(show_label=False, label="Cost matrix", elem_id="play-heatmap", min_width=320, scale=2)
        self.mapping = gr.Plot(show_label=False, label="Mapping", elem_id="play-mapping")
        self.table = gr.Dataframe(headers=["proxy #", "target token", "draft token(s)", "cost"],
                                  label="Per-token mapping (the window's proxy tokens)", elem_id="play-table",
                                  max_height=420, wrap=True)
        self.wire()

    def align(self, text: str, draft_spec: str, target_spec: str, band: int):
        """Align and show the first window; on an error only the status line changes."""
        try:
            alignment = align_for_people(text, draft_spec, target_spec, band)
        except Exception as error:
            return {self.status: banner(plain(error))}
        k, m = alignment.shape
        summary = (f"{k} draft tokens · {m} target tokens · path length {len(alignment.warping_path)} · path cost "
                   f"{alignment.path_cost:.0f} · {alignment.align_us:,.0f} µs")
        slider = gr.Slider(maximum=max(1, k - figures.WINDOW), value=0, visible=k > figures.WINDOW)
        return {self.status: "", self.summary: summary, self.state: alignment, self.window: slider,
                **self.window_views(alignment, 0)}

    def move(self, alignment, start: int) -> dict:
        return self.window_views(alignment, start) if alignment is not None else {}

    def window_views(self, alignment, start: int) -> dict:
        window = figures.alignment_window(alignment, start)
        d0, d1, p0, p1 = window
        m1 = min(d1, d0 + MAPPING_TOKENS)  # a readable stretch of the window
        mapping = alignment.proxy_to_draft
        costs = alignment.path_costs
        step_cost = {}
        for (i, j), cost in zip(alignment.warping_path.tolist(), costs.tolist()):
            step_cost[j] = step_cost.get(j, 0) + cost
        rows = [[j, figures.visible(alignment.proxy_tokens[j]),
                 " ".join(figures.visible(alignment.draft_tokens[i]) for i in mapping[j]), int(step_cost.get(j, 0))]
                for j in range(p0, p1)]
        return {self.overview: figures.path_overview(alignment.warping_path, alignment.shape, window),
                self.heatmap: figures.window_heatmap(alignment, window),
                self.mapping: figures.mapping_figure(alignment.draft_tokens[d0:m1], alignment.proxy_tokens[p0:p1],
                                                     alignment.warping_path, draft_offset=d0, proxy_offset=p0,
                                                     title=f"Token mapping: draft {d0}–{m1 - 1}"),
                self.table: rows}

    def wire(self):
        outputs = [self.status, self.summary, self.state, self.window, self.overview, self.heatmap, self.mapping,
                   self.table]
        self.button.click(self.align, [self.text, self.draft, self.target, self.band], outputs,
                          api_name="align_window", api_visibility="private", show_progress_on=self.status)
        self.window.input(self.move, [self.state, self.window], [self.overview, self.heatmap, self.mapping, self.table],
                            api_visibility="private", trigger_mode="always_last", show_progress="hidden")


def align_for_people(text: str, draft_spec: str, target_spec: str, band, full_matrix: bool = False):
    """The two tokenisations of ``text`` aligned (tokenizers only); UserError for what a person can fix."""
    if not text:
        raise UserError("Type some text to align.")
    if len(text) > MAX_PLAYGROUND_CHARS:
        raise UserError(f"That text has {len(text):,} characters; the playground aligns up to "
                        f"{MAX_PLAYGROUND_CHARS:,}. Paste a shorter piece.")
    limits.current().check_request(text=text)
    return align_text(text, load_tokenizer(draft_spec), load_tokenizer(target_spec), band=int(band),
                      full_matrix=full_matrix)


# -- pair doctor --------------------------------------------------------------------------------------
class DoctorTab:
    """Which of several candidate drafts pays off for a target, and why: a short calibration of both lossless
    rules against the target alone (tokentiming.tools.doctor)."""

    def __init__(self, draft_default: str, target_default: str, choices: list[str]):
        gr.Markdown("Pick a target and the candidate drafts you have. A short calibration (a few built-in prompts, "
                    "greedy) runs each draft with both lossless rules and the target alone, interleaved, and reports "
                    "what decides the speed: how many tokens the vocabularies share, how far apart their "
                    "tokenisations are (alignment cost), how much the target accepts, tau, and the measured speedup "
                    "with its noise. A draft is recommended only when it beats the target by more than that noise.")
        with gr.Row():
            self.target = gr.Dropdown(choices, value=target_default, label="Target model", allow_custom_value=True,
                                      elem_id="doctor-target")
            self.drafts = gr.Dropdown(choices, value=[draft_default], multiselect=True, allow_custom_value=True,
                                      label="Candidate drafts", elem_id="doctor-drafts",
                                      info="presets, hub ids or folders; each is loaded for the calibration")
        with gr.Row():
            self.prompts = gr.Slider(1, 4, 2, step=1, label="Calibration prompts",
                                     info="the first code and chat prompts of the built-in set")
            self.max_new_tokens = gr.Slider(8, 64, 32, step=8, label="New tokens per prompt")
            self.button = gr.Button("Diagnose", variant="primary", elem_id="diagnose")
        self.status = gr.HTML(elem_id="doctor-status")
        self.table = gr.Markdown(elem_id="doctor-table")
        self.figure = gr.Plot(label="Speedup over the target alone", show_label=False, elem_id="doctor-figure")
        self.wire()

    def diagnose(self, target_spec: str, draft_specs: list[str], prompts: int, max_new_tokens: int,
                 progress=gr.Progress()):
        try:
            reports = run_doctor(target_spec, draft_specs, int(prompts), int(max_new_tokens),
                                 lambda done, total, method, draft: progress(done / total, desc=f"{draft}: {method}"))
        except Exception as error:
            return {self.status: banner(plain(error))}
        return {self.status: banner(doctor.recommendation(reports), "ok" if any(r.pays_off() for r in reports)
                                    else "note"),
                self.table: doctor.markdown(reports, recommend=False), self.figure: figures.doctor_figure(reports)}

    def wire(self):
        self.button.click(self.diagnose, [self.target, self.drafts, self.prompts, self.max_new_tokens],
                          [self.status, self.table, self.figure], api_visibility="private",
                          show_progress_on=self.status, concurrency_limit=1, concurrency_id="models")


def run_doctor(target_spec: str, draft_specs: list[str], prompts: int = 2, max_new_tokens: int = 32, progress=None):
    """The calibration behind the doctor tab and its API: the loaded target, each draft loaded for it."""
    draft_specs = [spec.strip() for spec in draft_specs or [] if spec and spec.strip()]
    if not draft_specs:
        raise UserError("Pick at least one candidate draft.")
    limits.current().check_request(max_new_tokens=max_new_tokens)
    target = MODELS.get("target", target_spec)
    chosen = {}
    for prompt in bench.load_prompts():
        if prompt.category in ("code", "chat"):
            chosen.setdefault(prompt.category, []).append(prompt)
    calibration = [p for pair in zip(chosen["code"], chosen["chat"]) for p in pair][:prompts]
    drafts = {spec: (MODELS.slots["draft"].model, MODELS.slots["draft"].tokenizer)
              if spec == getattr(MODELS.slots.get("draft"), "spec", None) else load(spec) for spec in draft_specs}
    return doctor.diagnose((target.model, target.tokenizer), drafts, calibration, max_new_tokens=max_new_tokens,
                           progress=progress)


def api_doctor(target: str, drafts: list[str], prompts: int = 2, max_new_tokens: int = 32) -> dict:
    """Rank candidate drafts for a target; returns one report per draft (best first) and the recommendation."""
    try:
        reports = run_doctor(target, drafts, int(prompts), int(max_new_tokens))
    except Exception as error:
        raise gr.Error(plain(error)) from error
    return {"drafts": [r.as_dict() for r in reports], "recommendation": doctor.recommendation(reports)}


# -- API (for gradio_client) ------------------------------------------------------------------------
def api_generate(target: str, draft: str, prompt: str, chat: bool = False, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, num_draft_tokens: int = DEFAULT_DRAFT_TOKENS,
                 band: int = 8, verifier: str = "tokentiming", seed: int = -1, adaptive: bool = DEFAULT_ADAPTIVE,
                 top_k: int = 0) -> dict:
    """Generate with TokenTiming; returns text, new token ids, run statistics and a per-round summary."""
    request = Request(target, draft, prompt, chat, int(max_new_tokens), float(temperature), float(top_p),
                      int(num_draft_tokens), int(band), verifier, int(seed), bool(adaptive), int(top_k))
    try:
        events = run_generation(request)
        next(events)  # the models are loaded
        decoder = MODELS.decoder(MODELS.slots["draft"], MODELS.slots["target"])
        generation = finish((trace for _, trace in events), decoder.target_tokenizer, decoder.stop_ids)
    except Exception as error:
        raise gr.Error(plain(error)) from error
    return {"text": generation.text, "token_ids": generation.token_ids, "stats": generation.stats,
            "stop_reason": generation.stop_reason,
            "rounds": [{"draft_tokens": r.draft_tokens, "proxy_tokens": r.proxy_tokens, "accepted": r.accepted,
                        "emitted_token": r.emitted_token, "emitted_kind": r.emitted_kind,
                        "warping_path": r.warping_path.tolist()} for r in generation.rounds]}


FULL_MATRIX_CELLS = 250_000  # a dense matrix only for short texts (about 500 x 500 tokens)


def api_align(text: str, draft: str, target: str, band: int = 8, full_matrix: bool = False) -> dict:
    """Align the two tokenisations of a text; returns tokens, the banded costs, the warping path with its step
    costs and the mapping; with ``full_matrix`` (short texts only) also the dense cost matrix."""
    try:
        alignment = align_for_people(text, draft, target, band, full_matrix=bool(full_matrix))
        k, m = alignment.shape
        if full_matrix and k * m > FULL_MATRIX_CELLS:
            raise UserError(f"full_matrix is for short texts: this one gives {k} x {m} cells (limit "
                            f"{FULL_MATRIX_CELLS:,}); use banded_cells instead.")
    except Exception as error:
        raise gr.Error(plain(error)) from error
    result = {"draft_tokens": alignment.draft_tokens, "proxy_tokens": alignment.proxy_tokens, "shape": [k, m],
              "band": alignment.band, "banded_cells": alignment.banded_cells(),
              "warping_path": alignment.warping_path.tolist(), "path_costs": alignment.path_costs.tolist(),
              "path_cost": alignment.path_cost, "proxy_to_draft": alignment.proxy_to_draft,
              "align_us": alignment.align_us}
    if full_matrix:
        dense = alignment.cost_window(0, k, 0, m)
        result["cost_matrix"] = [[None if c != c else float(c) for c in row] for row in dense.tolist()]
    return result


# -- the page ---------------------------------------------------------------------------------------
HOW_TO_READ = f"""
**The method.** The **draft** (small model) writes a few tokens; the **target** tokenizer re-encodes that text into
**proxy** tokens; **DTW** (dynamic time warping) aligns draft tokens with proxies; the target checks every proxy in one
forward pass and keeps the longest prefix it agrees with, then writes one token of its own: a **correction** where it
disagreed, a **bonus** when it accepted everything. **tau** is the number of tokens written per target forward pass
(1 for the target alone); the speedup comes from tau above 1 at a small drafting cost.

**The output.** Each token is marked by where it came from (legend above the text): solid underline = accepted
proxy, wavy = target correction, double = bonus, dotted = target alone; thin lines separate tokens. Click or tap a
token for its round, its target probability and the draft tokens it came from; the inspector jumps to that round.
An end pill marks the end-of-text token. Byte pieces of a character split across tokens read `<0xE4>`.

**The cost matrix.** Rows are draft tokens, columns proxy tokens, colour the edit distance between the two strings
(darker = closer; fixed scale 0–{figures.COST_SCALE_MAX}). Grey cells lie outside the **band** and are never computed.
The orange line is the **warping path**; its dots are proxies the target accepted, crosses those it rejected.

**Settings.** *Adaptive* drafting stops a round early when the draft is unsure. The *lossless* verifiers give
exactly the target's distribution and never read the alignment: tokentiming and greedy test the proxies, and tli
drafts only tokens both vocabularies share, so it does not re-encode at all. With them the band changes the picture
and the timing, not the text (band 0 and band 8 write the same tokens). Only *transfer*, the paper's probability
transfer along the warping path, reads the alignment; it is lossy and experimental. Paper: [TokenTiming, arXiv 2510.15545]({PAPER}) · [README](/gradio_api/file={README})
"""

CSS = """
#tt-header h1 { margin-bottom: 0; }
.tt-text { white-space: pre-wrap; word-break: break-word; font-size: 15px; line-height: 1.9; margin: 0;
           min-height: 80px; font-family: ui-monospace, monospace; }
.tt-token { box-shadow: inset -1px 0 0 rgba(0, 0, 0, .25); padding: 0 1px; cursor: pointer; }
.tt-token:focus, .tt-token.tt-picked { outline: 2px solid #0072B2; outline-offset: 1px; }
.tt-pill { display: inline-block; font: 600 10px/1.5 sans-serif; padding: 0 6px; border-radius: 8px;
           background: #444; color: #fff; vertical-align: middle; }
.tt-legend { display: flex; flex-wrap: wrap; gap: 6px 10px; font-size: 12px; margin-bottom: 6px; }
.tt-status { padding: 6px 10px; border-radius: 6px; font-size: 14px; }
.tt-error { background: #fde8dc; border-left: 4px solid #D55E00; }
.tt-note { background: #e3f0f9; border-left: 4px solid #0072B2; }
.tt-ok { background: #e0f3ec; border-left: 4px solid #009E73; }
#stop button:disabled, #stop:disabled { opacity: .45; }
#doctor-table table { display: block; overflow-x: auto; white-space: nowrap; font-size: 13px; }
"""


def build_app() -> tuple[gr.Blocks, GenerateTab, PlaygroundTab]:
    target_default, draft_default = pair_from_env()
    choices = model_choices()
    with gr.Blocks(title="TokenTiming Studio") as app:
        gr.Markdown("# TokenTiming Studio\nSpeculative decoding across **different tokenizers**: a small draft "
                    "writes, the target's tokenizer re-encodes, DTW aligns, the target verifies in one forward pass. "
                    f"[Paper]({PAPER})", elem_id="tt-header")
        with gr.Accordion("How to read this page", open=False, elem_id="how-to-read"):
            gr.Markdown(HOW_TO_READ)
        with gr.Tab("Generate"):
            generate = GenerateTab(draft_default, target_default, choices)
        with gr.Tab("Alignment"):
            playground = PlaygroundTab(draft_default, target_default, choices)
        with gr.Tab("Pair doctor", elem_id="doctor-tab"):
            DoctorTab(draft_default, target_default, choices)
        gr.api(api_generate, api_name="generate", concurrency_limit=1, concurrency_id="models")
        gr.api(api_align, api_name="align")
        gr.api(api_doctor, api_name="doctor", concurrency_limit=1, concurrency_id="models")
    return app, generate, playground


gr.set_static_paths([README])
demo, generate_tab, playground_tab = build_app()


def main() -> None:
    parser = argparse.ArgumentParser(description="TokenTiming Studio")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to bind (0.0.0.0 to serve other machines)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = parser.parse_args()
    demo.queue(default_concurrency_limit=1, max_size=32).launch(
        server_name=args.host, server_port=args.port, css=CSS, footer_links=["api"])


if __name__ == "__main__":
    main()
