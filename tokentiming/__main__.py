"""Command line: ``python -m tokentiming generate --target SPEC --draft SPEC --prompt TEXT``."""

from __future__ import annotations

import argparse
import json
import sys

from .core.decoder import DEFAULT_ADAPTIVE, DEFAULT_DRAFT_TOKENS
from .core.verification import VERIFIERS


def _generate(args) -> int:
    from .core.decoder import TokenTimingDecoder, autoregressive, finish, stream_autoregressive, eos_ids
    from .models import load

    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    target_model, target_tokenizer = load(args.target, device=args.device, dtype=args.dtype,
                                          trust_remote_code=args.trust_remote_code, device_map=args.device_map,
                                          offload_folder=args.offload_folder)
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=args.seed, static=args.static)
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
              f"align {stats['align_us_median']:.1f} us/round (median)]", file=sys.stderr)
    return 0


def _progress_bar(total_hint: str):
    from tqdm import tqdm

    bar = None

    def update(done, total, method, category):
        nonlocal bar
        if bar is None or bar.total != total:
            bar = tqdm(total=total, desc=total_hint, unit="run", file=sys.stderr)
        bar.n = done
        bar.set_postfix_str(f"{method} · {category}")
        bar.refresh()
    return update


def _bench(args) -> int:
    from pathlib import Path

    from .models import load
    from .tools import bench

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.verifiers:
        rules = [v.strip() for v in args.verifiers.split(",") if v.strip()]
        kept = [m for m in methods if m.removesuffix("-static") not in bench.OUR_RULES]
        methods = kept[:1] + rules + kept[1:]
    temperatures = [float(t) for t in args.temperatures.split(",")] if args.temperatures else [args.temperature]
    prompts = bench.load_prompts(args.prompts)
    if args.categories:
        wanted = {c.strip() for c in args.categories.split(",")}
        prompts = [p for p in prompts if p.category in wanted]
        if not prompts:
            raise ValueError(f"no prompt in categories {sorted(wanted)}")
    if args.per_category:
        prompts = [p for p in prompts if [q for q in prompts if q.category == p.category].index(p) < args.per_category]
    target = load(args.target, device=args.device, dtype=args.dtype)
    draft = load(args.draft, device=args.device, dtype=args.dtype)
    harness = bench.Bench(target, draft, max_new_tokens=args.max_new_tokens, temperature=temperatures[0],
                          top_p=args.top_p, num_draft_tokens=args.num_draft_tokens, band=args.band,
                          adaptive=args.adaptive, draft_int8=args.draft_int8)
    runs = bench.run_benchmark(harness, prompts, methods, args.repeats, progress=_progress_bar("bench"),
                               temperatures=temperatures)
    sections = []
    for temperature in temperatures:
        mine = [r for r in runs if r.temperature == temperature]
        present = [m for m in methods if any(r.method == m for r in mine)]
        fidelity = None
        if temperature > 0 and args.fidelity_samples:
            checked = [m for m in present if m.removesuffix("-static") in ("ar", *bench.OUR_RULES, "hf-uag", "hf-usd")]
            fidelity = bench.fidelity(harness, prompts[0], checked, args.fidelity_samples,
                                      progress=_progress_bar(f"fidelity T={temperature}"), temperature=temperature)
        sections.append((temperature, bench.summarise(mine, present),
                         bench.identical_to_target(mine, present) if temperature == 0 else {}, fidelity))
    settings = dict(target=args.target, draft=args.draft, max_new_tokens=args.max_new_tokens,
                    temperature=temperatures[0], temperatures=temperatures, top_p=args.top_p, repeats=args.repeats,
                    num_draft_tokens=args.num_draft_tokens, adaptive=args.adaptive, prompts=args.prompts or "built-in",
                    draft_int8=args.draft_int8,
                    dtype=str(next(target[0].parameters()).dtype).removeprefix("torch."), machine=bench.machine(),
                    linear_kernels=bench.kernels(target[0]),
                    peak_rss_mb=bench.peak_rss_mb(), command=" ".join(["python -m tokentiming", *sys.argv[1:]]))
    bench.write_reports(Path(args.out), runs, sections, settings)
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    print(f"\nreport: {Path(args.out) / 'report.md'}, {Path(args.out) / 'report.json'}", file=sys.stderr)
    return 0 if all(all(identical.values()) for _, _, identical, _ in sections) else 1


def _rank_drafts(args) -> int:
    from .models import load
    from .tools import bench, doctor

    prompts = bench.load_prompts(args.prompts)[:args.limit]
    target = load(args.target, device=args.device, dtype=args.dtype)
    drafts = {spec: load(spec, device=args.device, dtype=args.dtype)
              for spec in [d.strip() for d in args.drafts.split(",") if d.strip()]}
    reports = doctor.diagnose(target, drafts, prompts, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, num_draft_tokens=args.num_draft_tokens,
                              progress=_progress_bar("calibration"))
    print(doctor.markdown(reports))
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
    gen.add_argument("--num-draft-tokens", type=int, default=DEFAULT_DRAFT_TOKENS)
    gen.add_argument("--band", type=int, default=8, help="DTW Sakoe-Chiba band half-width")
    gen.add_argument("--verifier", choices=VERIFIERS, default="tokentiming")
    gen.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=DEFAULT_ADAPTIVE,
                     help="stop drafting early when the draft is unsure")
    gen.add_argument("--method", choices=("tokentiming", "ar"), default="tokentiming")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--static", action="store_true",
                     help="static KV caches, replayed from CUDA graphs on a GPU (full-attention models)")
    gen.add_argument("--device", default="auto")
    gen.add_argument("--dtype", default="auto")
    gen.add_argument("--device-map", help="'auto': split a target too big for one device across the GPUs, the CPU "
                                          "and disk (accelerate); decoding then uses eager caches")
    gen.add_argument("--offload-folder", help="where --device-map may offload weights to disk")
    gen.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a model (off by default)")
    gen.add_argument("--json", action="store_true", help="print one JSON object {text, token_ids, stats}")
    bench = commands.add_parser("bench", help="benchmark methods side by side on the same prompts")
    bench.add_argument("--target", required=True)
    bench.add_argument("--draft", required=True)
    bench.add_argument("--prompts", help="JSONL: {category, prompt, chat} lines or Spec-Bench questions")
    bench.add_argument("--categories", help="comma-separated categories to keep")
    bench.add_argument("--methods", default="ar,hf-ar,tokentiming,hf-uag",
                       help="comma-separated, from: ar, hf-ar, tokentiming, tli, transfer, hf-uag, hf-usd, "
                            "ar-static, tokentiming-static, tli-static (the -static methods use static KV caches "
                            "and CUDA graphs on a GPU; hf-usd is transformers' sampling path, temperature > 0)")
    bench.add_argument("--verifiers", help="our rules to run, e.g. tokentiming,tli,transfer (replace those in "
                                           "--methods)")
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--temperature", type=float, default=0.0)
    bench.add_argument("--temperatures", help="comma-separated, e.g. 0,0.7,1.0: every method at each, in one run")
    bench.add_argument("--per-category", type=int, help="use only the first N prompts of each category")
    bench.add_argument("--top-p", type=float, default=1.0)
    bench.add_argument("--num-draft-tokens", type=int, default=DEFAULT_DRAFT_TOKENS)
    bench.add_argument("--band", type=int, default=8)
    bench.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=DEFAULT_ADAPTIVE)
    bench.add_argument("--draft-int8", action=argparse.BooleanOptionalAction, default=True,
                       help="our methods' lean CPU draft on int8 weights (the output is unchanged; acceptance may "
                            "move); --no-draft-int8 keeps fp32")
    bench.add_argument("--repeats", type=int, default=1)
    bench.add_argument("--fidelity-samples", type=int, default=200, help="sampling only; 0 skips the check")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--dtype", default="auto")
    bench.add_argument("--out", default="bench-out")

    rank = commands.add_parser("rank-drafts", help="rank candidate drafts for a target by measured speedup")
    rank.add_argument("--target", required=True)
    rank.add_argument("--drafts", required=True, help="comma-separated specs")
    rank.add_argument("--prompts")
    rank.add_argument("--limit", type=int, default=4, help="calibration prompts")
    rank.add_argument("--max-new-tokens", type=int, default=48)
    rank.add_argument("--temperature", type=float, default=0.0)
    rank.add_argument("--num-draft-tokens", type=int, default=DEFAULT_DRAFT_TOKENS)
    rank.add_argument("--device", default="auto")
    rank.add_argument("--dtype", default="auto")

    from .models.fetch import add_fetch_command, run_fetch_command

    add_fetch_command(commands)

    args = parser.parse_args(argv)
    handlers = {"generate": _generate, "bench": _bench, "rank-drafts": _rank_drafts, "fetch": run_fetch_command}
    try:
        return handlers[args.command](args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
