"""Record a TokenTiming run and the target-alone run of the same prompt, for the app's opening page.

    python -m tokentiming.tools.record [--target qwen2.5-coder-1.5b-instruct] [--draft smollm2-135m-instruct]
        [--prompt "def quicksort(items):"] [--max-new-tokens 128] [--out assets/recorded/default-pair.json]

Greedy decoding, the app's drafting defaults. Both runs go back to back after a warm-up run, so they see the
same machine load; on a shared machine the throughput is still noisy, and the file says where and when it ran.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

import torch

from ..core.decoder import DEFAULT_ADAPTIVE, DEFAULT_DRAFT_TOKENS, TokenTimingDecoder, stream_autoregressive
from ..core.trace import run_stats
from ..models import load
from ..models.presets import DEFAULT_PAIR
from ..views.recorded import DEFAULT_RECORDING, Recording
from ..machine import cpu_name


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_name()


def record(target: str, draft: str, prompt: str, chat: bool, max_new_tokens: int, band: int) -> Recording:
    target_model, target_tokenizer = load(target)
    draft_model, draft_tokenizer = load(draft)
    decoder = TokenTimingDecoder(target_model, target_tokenizer, draft_model, draft_tokenizer)
    message = [{"role": "user", "content": prompt}] if chat else prompt
    options = dict(max_new_tokens=max_new_tokens, temperature=0.0, num_draft_tokens=DEFAULT_DRAFT_TOKENS,
                   adaptive=DEFAULT_ADAPTIVE, band=band, verifier="tokentiming")
    decoder.generate(message, **{**options, "max_new_tokens": 8})  # warm-up: compiled kernels, first allocations
    reference_rounds = list(stream_autoregressive(target_model, target_tokenizer, message,
                                                  max_new_tokens=max_new_tokens))
    rounds = list(decoder.stream(message, **options))
    meta = {
        "target": target, "draft": draft, "prompt": prompt, "chat": chat, "options": options,
        "machine": machine(), "threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
        "note": "target alone, then TokenTiming, back to back on a shared machine: throughput is noisy",
        "text": decoder.target_tokenizer.decode([t for r in rounds for t in r.new_token_ids], skip_special_tokens=True),
        "stats": run_stats(rounds, rounds[-1].elapsed_s),
        "reference_stats": run_stats(reference_rounds, reference_rounds[-1].elapsed_s),
    }
    return Recording(meta, rounds, reference_rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=DEFAULT_PAIR[1])
    parser.add_argument("--draft", default=DEFAULT_PAIR[0])
    parser.add_argument("--prompt", default="def quicksort(items):")
    parser.add_argument("--chat", action="store_true", help="send the prompt as a user message")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--band", type=int, default=8)
    parser.add_argument("--out", type=Path, default=DEFAULT_RECORDING)
    args = parser.parse_args()
    recording = record(args.target, args.draft, args.prompt, args.chat, args.max_new_tokens, args.band)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(recording.to_json(), encoding="utf-8")
    stats, reference = recording.meta["stats"], recording.meta["reference_stats"]
    print(f"{args.out}: {os.path.getsize(args.out) / 1e3:.0f} kB · TokenTiming {stats['tokens_per_s']:.2f} tok/s, "
          f"target alone {reference['tokens_per_s']:.2f} tok/s on {recording.meta['machine']}")


if __name__ == "__main__":
    main()
