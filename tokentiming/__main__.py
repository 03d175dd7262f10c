"""Command line: ``python -m tokentiming generate --target SPEC --draft SPEC --prompt TEXT``."""

from __future__ import annotations

import argparse
import json
import sys

from .verification import VERIFIERS


def _generate(args) -> int:
    from .decoder import TokenTimingDecoder, autoregressive, finish, stream_autoregressive, eos_ids
    from .models import load

    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    target_model, target_tokenizer = load(args.target, device=args.device, dtype=args.dtype,
                                          trust_remote_code=args.trust_remote_code)
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=args.seed)
    if args.method == "ar":
        rounds = stream_autoregressive(target_model, target_tokenizer, prompt, **sampling)
    else:
        if not args.draft:
            raise SystemExit("error: --draft is required with --method tokentiming")
        draft_model, draft_tokenizer = load(args.draft, device=args.device, dtype=args.dtype,
                                            trust_remote_code=args.trust_remote_code)
        decoder = TokenTimingDecoder(target_model, target_tokenizer, draft_model, draft_tokenizer)
        rounds = decoder.stream(prompt, num_draft_tokens=args.num_draft_tokens, band=args.band,
                                verifier=args.verifier, adaptive=args.adaptive, **sampling)
    if not args.json:
        rounds = _echo(rounds)
    generation = finish(rounds, target_tokenizer, eos_ids(target_model, target_tokenizer))
    if args.json:
        print(json.dumps({"text": generation.text, "token_ids": generation.token_ids, "stats": generation.stats},
                         ensure_ascii=False))
    else:
        stats = generation.stats
        print(f"\n\n[{stats['new_tokens']} tokens in {stats['wall_s']:.2f}s = {stats['tokens_per_s']:.1f} tok/s; "
              f"acceptance {stats['acceptance_rate']:.2f}, tau {stats['tau']:.2f}, "
              f"align {stats['align_us_per_round']:.1f} us/round]", file=sys.stderr)
    return 0


def _echo(rounds):
    for trace in rounds:
        print(trace.new_text, end="", flush=True)
        yield trace


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokentiming",
                                     description="Speculative decoding across different tokenizers (TokenTiming).")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate text with TokenTiming (or the target alone)")
    gen.add_argument("--target", required=True, help="preset, hub id or local folder of the target model")
    gen.add_argument("--draft", help="preset, hub id or local folder of the draft model")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--chat", action="store_true", help="send the prompt as one user message (chat templates)")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--num-draft-tokens", type=int, default=5)
    gen.add_argument("--band", type=int, default=8, help="DTW Sakoe-Chiba band half-width")
    gen.add_argument("--verifier", choices=VERIFIERS, default="tokentiming")
    gen.add_argument("--adaptive", action="store_true", help="stop drafting early when the draft is unsure")
    gen.add_argument("--method", choices=("tokentiming", "ar"), default="tokentiming")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--device", default="auto")
    gen.add_argument("--dtype", default="auto")
    gen.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a model (off by default)")
    gen.add_argument("--json", action="store_true", help="print one JSON object {text, token_ids, stats}")
    args = parser.parse_args(argv)
    try:
        return _generate(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
