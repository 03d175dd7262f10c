"""TokenTiming Studio: pick two causal LMs, generate with TokenTiming, watch the alignment live.

    python app.py [--host 127.0.0.1] [--port 7860]

``TOKENTIMING_PAIR=tiny`` makes the tiny test pair the default (fast, no download); ``test`` picks
SmolLM2 -> Qwen2.5-Coder-0.5B; otherwise the default pair is SmolLM2 -> Qwen2.5-Coder-1.5B.
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time
from dataclasses import dataclass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from tokentiming import Alignment, TokenTimingDecoder, align_text, stream_autoregressive  # noqa: E402
from tokentiming.core.facts import pair_facts  # noqa: E402
from tokentiming.core.decoder import DEFAULT_ADAPTIVE, DEFAULT_DRAFT_TOKENS, MAX_DRAFT_TOKENS  # noqa: E402
from tokentiming.backends.kv import static_supported  # noqa: E402
from tokentiming.views import figures  # noqa: E402
from tokentiming.models import load, load_tokenizer, model_choices, pair_from_env  # noqa: E402
from tokentiming.core.trace import run_stats  # noqa: E402
from tokentiming.core.verification import VERIFIERS  # noqa: E402

UPDATE_EVERY_S = 0.5  # how often the text and statistics are redrawn while rounds stream in
PLOTS_EVERY_S = 2.0  # the plots cost the browser far more to redraw
EXAMPLES = [
    ["def quicksort(items):", False],
    ["Write a Python function that checks whether a string is a palindrome.", True],
    ["import json\n\n\ndef load_config(path):", False],
]


# -- loaded models ----------------------------------------------------------------------------------
@dataclass
class Loaded:
    spec: str
    model: object
    tokenizer: object
    seconds: float

    def describe(self) -> str:
        parameters = sum(p.numel() for p in self.model.parameters())
        p = next(self.model.parameters())
        return (f"**{self.spec}** · {p.device.type} · {str(p.dtype).removeprefix('torch.')} · "
                f"{parameters / 1e6:,.1f} M parameters · vocab {len(self.tokenizer):,} · loaded in {self.seconds:.1f} s")


class LoadedModels:
    """The target and the draft in memory. The same spec again is free; a new spec replaces the old
    model, which is released first so two large models never sit in memory for one role."""

    def __init__(self):
        self.slots: dict[str, Loaded] = {}
        self.lock = threading.Lock()

    def get(self, role: str, spec: str) -> Loaded:
        spec = (spec or "").strip()
        with self.lock:
            current = self.slots.get(role)
            if current is not None and current.spec == spec:
                return current
            if current is not None:
                del self.slots[role], current
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            start = time.perf_counter()
            model, tokenizer = load(spec)
            self.slots[role] = Loaded(spec, model, tokenizer, time.perf_counter() - start)
            return self.slots[role]


MODELS = LoadedModels()


def _static(*loaded: Loaded) -> bool:
    """On a GPU, decode on static KV caches replayed from CUDA graphs when both models allow it."""
    return all(item.model.device.type == "cuda" and static_supported(item.model) for item in loaded)


def _user_error(error: Exception) -> gr.Error:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return gr.Error("Out of memory: pick smaller models, fewer new tokens, or free the other model first.")
    return gr.Error(str(error))


# -- handlers ---------------------------------------------------------------------------------------
def load_pair(target_spec: str, draft_spec: str, progress=gr.Progress(track_tqdm=True)):
    """Load (or reuse) both models; report each one and the facts of the pair."""
    try:
        progress(0.0, desc=f"loading target {target_spec}")
        target = MODELS.get("target", target_spec)
        progress(0.5, desc=f"loading draft {draft_spec}")
        draft = MODELS.get("draft", draft_spec)
    except Exception as error:  # shown in the page; the app stays usable
        raise _user_error(error) from error
    return target.describe(), draft.describe(), facts_markdown(pair_facts(draft.tokenizer, target.tokenizer))


def facts_markdown(facts: dict) -> str:
    lines = [f"| | draft | target |", "|---|---|---|",
             f"| vocabulary | {facts['draft_vocab']:,} | {facts['target_vocab']:,} |",
             f"| tokenizer | {facts['draft_family']} | {facts['target_family']} |",
             f"| shared token strings | {facts['overlap_of_draft']:.0%} of the draft's | "
             f"{facts['overlap_of_target']:.0%} of the target's |"]
    if facts["same_tokenizer"]:
        lines.append("\n**Both models use the same tokenizer**: plain speculative decoding applies; TokenTiming "
                     "still works and its proxies are the draft's own tokens.")
    return "\n".join(lines)


def stats_markdown(stats: dict, reference: dict | None = None) -> str:
    text = (f"**{stats['new_tokens']} tokens** in {stats['wall_s']:.2f} s · **{stats['tokens_per_s']:.1f} tok/s** · "
            f"rounds {stats['rounds']} · acceptance **{stats['acceptance_rate']:.2f}** "
            f"({stats['accepted']}/{stats['proposed']}) · tau **{stats['tau']:.2f}** · "
            f"draft forwards {stats['draft_forwards']} · align {stats['align_us_per_round']:.1f} µs/round")
    if reference and reference["tokens_per_s"]:
        text += (f"\n\nTarget alone: {reference['tokens_per_s']:.1f} tok/s → **speedup "
                 f"{stats['tokens_per_s'] / reference['tokens_per_s']:.2f}×**")
    return text


def round_view(rounds: list, band: int, index: int):
    if not rounds:
        return figures.alignment_heatmap([], [], torch.zeros(0, 0).numpy(), torch.zeros(0, 2).numpy(), band), \
            figures.mapping_figure([], [], torch.zeros(0, 2).numpy()), ""
    trace = rounds[max(0, min(int(index), len(rounds) - 1))]
    detail = (f"Round {trace.index}: drafted {len(trace.draft_token_ids)} · proposed {trace.proposed} · "
              f"accepted {trace.accepted} · wrote `{figures.visible(trace.emitted_token)}` ({trace.emitted_kind})")
    return figures.round_heatmap(trace, band), figures.round_mapping(trace), detail


def generate_live(target_spec, draft_spec, prompt, chat, max_new_tokens, temperature, top_p, num_draft_tokens, adaptive,
             band, verifier, seed, compare, progress=gr.Progress(track_tqdm=True)):
    """Stream a TokenTiming generation round by round (then, if asked, the target alone)."""
    try:
        target = MODELS.get("target", target_spec)
        draft = MODELS.get("draft", draft_spec)
        decoder = TokenTimingDecoder(target.model, target.tokenizer, draft.model, draft.tokenizer)
        message = [{"role": "user", "content": prompt}] if chat else prompt
        options = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
                       seed=None if seed is None or seed < 0 else int(seed), static=_static(target, draft))
        stream = decoder.stream(message, num_draft_tokens=int(num_draft_tokens), band=int(band), verifier=verifier,
                                adaptive=bool(adaptive), **options)
    except Exception as error:
        raise _user_error(error) from error

    rounds, reference_rounds = [], []
    band = int(band)
    last_text = last_plots = 0.0

    def view(done: bool):
        nonlocal last_text, last_plots
        last_text = time.perf_counter()
        stats = run_stats(rounds, rounds[-1].elapsed_s if rounds else 0.0)
        reference = run_stats(reference_rounds, reference_rounds[-1].elapsed_s) if reference_rounds and done else None
        text = (figures.text_html(rounds), stats_markdown(stats, reference))
        if not done and last_text - last_plots < PLOTS_EVERY_S:
            return text + (gr.skip(),) * 7
        last_plots = last_text
        runs = {"TokenTiming": rounds}
        if reference_rounds:
            runs["target alone"] = reference_rounds
        heatmap, mapping, detail = round_view(rounds, band, len(rounds) - 1)
        slider = gr.Slider(minimum=0, maximum=max(1, len(rounds) - 1), value=max(0, len(rounds) - 1), step=1)
        return text + (slider, heatmap, mapping, detail, figures.acceptance_figure(rounds),
                       figures.throughput_figure(runs), {"rounds": rounds, "band": band})

    def due() -> bool:
        return time.perf_counter() - last_text > UPDATE_EVERY_S

    try:
        for trace in stream:
            rounds.append(trace)
            if due():
                yield view(False)
        if compare:
            for trace in stream_autoregressive(target.model, target.tokenizer, message, **options):
                reference_rounds.append(trace)
                if due():
                    yield view(False)
    except Exception as error:
        raise _user_error(error) from error
    yield view(True)


def show_round(state, index):
    state = state or {"rounds": [], "band": 8}
    return round_view(state["rounds"], state["band"], index)


def _align(text: str, draft_spec: str, target_spec: str, band) -> Alignment:
    """The two tokenisations of ``text`` aligned (tokenizers only, no model weights); errors for users."""
    if not text:
        raise gr.Error("Type some text to align.")
    try:
        return align_text(text, load_tokenizer(draft_spec), load_tokenizer(target_spec), band=int(band))
    except Exception as error:
        raise _user_error(error) from error


def playground(text: str, draft_spec: str, target_spec: str, band: int):
    """Tokenise a text with two tokenizers and show the DTW alignment."""
    alignment = _align(text, draft_spec, target_spec, band)
    rows = [[j, figures.visible(token), " ".join(figures.visible(alignment.draft_tokens[i]) for i in sources),
             int(sum(alignment.cost_matrix[i, j] for i in sources))]
            for j, (token, sources) in enumerate(zip(alignment.proxy_tokens, alignment.proxy_to_draft))]
    summary = (f"{len(alignment.draft_tokens)} draft tokens · {len(alignment.proxy_tokens)} target tokens · "
               f"path length {len(alignment.warping_path)} · path cost {alignment.path_cost:.0f} · "
               f"{alignment.align_us:.1f} µs")
    heatmap = figures.alignment_heatmap(alignment.draft_tokens, alignment.proxy_tokens, alignment.cost_matrix,
                                        alignment.warping_path, int(band), title="DTW cost matrix and warping path")
    mapping = figures.mapping_figure(alignment.draft_tokens, alignment.proxy_tokens, alignment.warping_path,
                                     title="Token mapping")
    return summary, heatmap, mapping, rows


# -- API (for gradio_client) ------------------------------------------------------------------------
def api_generate(target: str, draft: str, prompt: str, chat: bool = False, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, num_draft_tokens: int = DEFAULT_DRAFT_TOKENS,
                 band: int = 8, verifier: str = "tokentiming", seed: int = -1) -> dict:
    """Generate with TokenTiming; returns text, new token ids, run statistics and a per-round summary."""
    try:
        target_loaded, draft_loaded = MODELS.get("target", target), MODELS.get("draft", draft)
        decoder = TokenTimingDecoder(target_loaded.model, target_loaded.tokenizer, draft_loaded.model,
                                     draft_loaded.tokenizer)
        generation = decoder.generate([{"role": "user", "content": prompt}] if chat else prompt,
                                      max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                      top_p=float(top_p), num_draft_tokens=int(num_draft_tokens), band=int(band),
                                      verifier=verifier, seed=None if seed is None or seed < 0 else int(seed),
                                      static=_static(target_loaded, draft_loaded))
    except Exception as error:
        raise _user_error(error) from error
    return {"text": generation.text, "token_ids": generation.token_ids, "stats": generation.stats,
            "stop_reason": generation.stop_reason,
            "rounds": [{"draft_tokens": r.draft_tokens, "proxy_tokens": r.proxy_tokens, "accepted": r.accepted,
                        "emitted_token": r.emitted_token, "emitted_kind": r.emitted_kind,
                        "warping_path": r.warping_path.tolist()} for r in generation.rounds]}


def api_align(text: str, draft: str, target: str, band: int = 8) -> dict:
    """Align the two tokenisations of a text; returns tokens, cost matrix, warping path and mapping."""
    alignment = _align(text, draft, target, band)
    return {"draft_tokens": alignment.draft_tokens, "proxy_tokens": alignment.proxy_tokens,
            "cost_matrix": alignment.cost_matrix.tolist(), "warping_path": alignment.warping_path.tolist(),
            "proxy_to_draft": alignment.proxy_to_draft, "align_us": alignment.align_us}


# -- the page ---------------------------------------------------------------------------------------
CSS = """
.tt-text { min-height: 120px; }
#tt-header h1 { margin-bottom: 0; }
"""


def build_app() -> gr.Blocks:
    target_default, draft_default = pair_from_env()
    choices = model_choices()
    with gr.Blocks(title="TokenTiming Studio") as app:
        gr.Markdown("# TokenTiming Studio\nSpeculative decoding across **different tokenizers**: the draft writes, "
                    "the target tokenizer re-encodes, DTW aligns, the target verifies in one forward pass.",
                    elem_id="tt-header")
        with gr.Tab("Generate"):
            with gr.Row(equal_height=True):
                target_box = gr.Dropdown(choices, value=target_default, label="Target model", allow_custom_value=True,
                                         info="preset, Hugging Face hub id (org/name) or local folder",
                                         elem_id="target-spec")
                draft_box = gr.Dropdown(choices, value=draft_default, label="Draft model", allow_custom_value=True,
                                        info="preset, Hugging Face hub id (org/name) or local folder",
                                        elem_id="draft-spec")
                load_button = gr.Button("Load models", variant="secondary", scale=0, elem_id="load")
            with gr.Row():
                target_status = gr.Markdown("Target: not loaded yet", elem_id="target-status")
                draft_status = gr.Markdown("Draft: not loaded yet", elem_id="draft-status")
            facts = gr.Markdown(elem_id="pair-facts")
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(EXAMPLES[0][0], label="Prompt", lines=4, elem_id="prompt")
                    chat = gr.Checkbox(False, label="Chat: send the prompt as a user message (each model's template)")
                    gr.Examples(EXAMPLES, [prompt, chat])
                    with gr.Row():
                        run_button = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                with gr.Column(scale=1):
                    max_new_tokens = gr.Slider(1, 512, 64, step=1, label="Max new tokens", elem_id="max-new-tokens")
                    temperature = gr.Slider(0, 2, 0, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1, 1, step=0.05, label="Top-p")
                    num_draft_tokens = gr.Slider(1, MAX_DRAFT_TOKENS, DEFAULT_DRAFT_TOKENS, step=1,
                                                 label="Draft tokens per round")
                    adaptive = gr.Checkbox(DEFAULT_ADAPTIVE, label="Adaptive drafting (stop when the draft is unsure)")
                    band = gr.Slider(0, 32, 8, step=1, label="DTW band")
                    verifier = gr.Radio(list(VERIFIERS), value="tokentiming", label="Verifier",
                                        info="tokentiming: lossless · greedy: exact match · transfer: experimental, lossy")
                    seed = gr.Number(-1, precision=0, label="Seed (-1 = random)")
                    compare = gr.Checkbox(True, label="Also run the target alone (live speedup)")
            stats = gr.Markdown(elem_id="stats")
            text = gr.HTML(label="Output", elem_id="output-text")
            state = gr.State({"rounds": [], "band": 8})
            round_slider = gr.Slider(0, 1, 0, step=1, label="Round to inspect", elem_id="round-slider")
            round_detail = gr.Markdown(elem_id="round-detail")
            with gr.Row():
                heatmap = gr.Plot(label="DTW cost matrix", elem_id="heatmap")
                mapping = gr.Plot(label="Token mapping", elem_id="mapping")
            with gr.Row():
                acceptance = gr.Plot(label="Acceptance", elem_id="acceptance")
                throughput = gr.Plot(label="Throughput", elem_id="throughput")

            load_button.click(load_pair, [target_box, draft_box], [target_status, draft_status, facts],
                              api_visibility="private")
            run_event = run_button.click(
                generate_live, [target_box, draft_box, prompt, chat, max_new_tokens, temperature, top_p, num_draft_tokens,
                           adaptive, band, verifier, seed, compare],
                [text, stats, round_slider, heatmap, mapping, round_detail, acceptance, throughput, state],
                api_visibility="private", concurrency_limit=1, concurrency_id="models")
            stop_button.click(None, cancels=[run_event], api_visibility="private")
            # .input: only a person moving the slider, not the updates that follow the stream
            round_slider.input(show_round, [state, round_slider], [heatmap, mapping, round_detail],
                               api_visibility="private", queue=False)

        with gr.Tab("Alignment playground"):
            gr.Markdown("Tokenise any text with two tokenizers (no model weights) and see how DTW maps one onto the "
                        "other: spaces, newlines, emoji, CJK and code all tokenise differently.")
            with gr.Row():
                play_text = gr.Textbox("def greet(name):\n    print(f'héllo {name} 👋 世界')", lines=4, label="Text",
                                       elem_id="play-text")
                with gr.Column():
                    play_draft = gr.Dropdown(choices, value=draft_default, label="Draft tokenizer",
                                             allow_custom_value=True, elem_id="play-draft")
                    play_target = gr.Dropdown(choices, value=target_default, label="Target tokenizer",
                                              allow_custom_value=True, elem_id="play-target")
                    play_band = gr.Slider(0, 32, 8, step=1, label="DTW band")
                    play_button = gr.Button("Align", variant="primary", elem_id="align")
            play_summary = gr.Markdown(elem_id="play-summary")
            play_heatmap = gr.Plot(label="Cost matrix", elem_id="play-heatmap")
            play_mapping = gr.Plot(label="Mapping", elem_id="play-mapping")
            play_table = gr.Dataframe(headers=["proxy #", "target token", "draft token(s)", "cost"],
                                      label="Per-token mapping", elem_id="play-table")
            play_button.click(playground, [play_text, play_draft, play_target, play_band],
                              [play_summary, play_heatmap, play_mapping, play_table], api_visibility="private")

        gr.api(api_generate, api_name="generate", concurrency_limit=1, concurrency_id="models")
        gr.api(api_align, api_name="align")
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="TokenTiming Studio")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to bind (0.0.0.0 to serve other machines)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = parser.parse_args()
    build_app().queue(default_concurrency_limit=1, max_size=32).launch(
        server_name=args.host, server_port=args.port, css=CSS, footer_links=["api"])


if __name__ == "__main__":
    main()
