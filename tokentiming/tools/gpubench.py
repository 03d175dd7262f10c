"""Self-contained GPU benchmark: train a draft/target pair with different tokenizers, then race the methods.

    python -m tokentiming.tools.gpubench [--out DIR] [--max-new-tokens 128] [--prompts 8] [--quick] [--no-projection]

Needs no model files and no network, so it runs on a bare GPU machine. It trains the tiny pair's two
tokenizers (byte-level BPE for the draft, SentencePiece-style for the target) and two models on the same
slice of the Python standard library (tokentiming.tools.tinypair), on the GPU, for a couple of minutes: a
GPT-2-style draft of about 3 M parameters and a Llama-style target of about 180 M. Then it runs every
method of ``python -m tokentiming bench`` on prompts cut from that text, interleaved, greedy, in fp32:
target alone (ours, eager and static + CUDA graphs; transformers' ``generate``), TokenTiming (eager and
static + CUDA graphs) and transformers' assisted generation across tokenizers.

Prompts come from the models' own training text, where the two agree far more than real pairs do on
real prompts: the acceptance figures here show the machinery's ceiling, not a model pair's. The timing
differences between methods are what the script is for. Then it compares drafting step by step with drafting
chained on the device, round by round, and projects the real pairs' speedups on this GPU
(:mod:`tokentiming.tools.projection`: the real architectures' step times, the real pair's recorded acceptance).
``--quick`` shrinks everything for a CPU smoke test.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..backends.kv import StaticKV
from . import projection, tinypair
from .bench import Bench, Prompt, _synchronise, identical_to_target, machine, markdown_table, peak_rss_mb
from .bench import run_benchmark, summarise, write_report

METHODS = ["ar", "ar-static", "hf-ar", "tokentiming", "tokentiming-static", "hf-uag"]

GPU_PAIR = tinypair.BuildConfig(
    batch_size=32,
    draft=tinypair.ModelSpec(name="gpu-draft", width=256, layers=4, heads=4, vocab_size=1280, steps=600, lr=3e-3),
    target=tinypair.ModelSpec(name="gpu-target", width=1024, layers=16, heads=16, kv_heads=4, mlp=2816,
                              vocab_size=1792, steps=400, lr=1e-3),
)
QUICK_PAIR = replace(tinypair.BuildConfig(), batch_size=4, block_size=64, context=256,
                     draft=replace(tinypair.BuildConfig().draft, steps=20),
                     target=replace(tinypair.BuildConfig().target, steps=20))


def build_pair(cfg: tinypair.BuildConfig, device: torch.device):
    """Train both tokenizers, then both models on ``device``; returns ((model, tok), (model, tok))."""
    documents = tinypair.build_corpus(cfg)
    pair = []
    for spec, make_tokenizer, make_model in ((cfg.target, tinypair.train_target_tokenizer, tinypair.make_target_model),
                                             (cfg.draft, tinypair.train_draft_tokenizer, tinypair.make_draft_model)):
        tokenizer = make_tokenizer(documents, spec)
        torch.manual_seed(cfg.seed)
        model = make_model(spec, tokenizer, cfg).to(device)
        print(f"{spec.name}: {type(model).__name__}, {tinypair.count_parameters(model) / 1e6:.1f} M parameters, "
              f"vocab {len(tokenizer)}", flush=True)
        final = tinypair.train(model, tokenizer, tinypair.training_text(tokenizer, documents), spec, cfg)
        print(f"{spec.name}: final loss {final:.3f}", flush=True)
        tinypair.set_generation_config(model, tokenizer)
        pair.append((model.eval(), tokenizer))
    return pair[0], pair[1], documents


def corpus_prompts(documents: list[str], count: int, chars: int = 160, seed: int = 0) -> list[Prompt]:
    """``count`` prompts: ``chars`` characters of code starting at a line start, ending at a line end."""
    rng = random.Random(seed)
    code = [doc for doc in documents[:-2] if len(doc) > 4 * chars]  # the stdlib modules, not prose/unicode
    prompts = []
    while len(prompts) < count:
        doc = rng.choice(code)
        start = doc.index("\n", rng.randrange(len(doc) - 2 * chars)) + 1
        end = doc.rfind("\n", start, start + chars)
        if end > start + chars // 2:
            prompts.append(Prompt("code", doc[start:end + 1], chat=False))
    return prompts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-bench-out"))
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--num-draft-tokens", default="8",
                        help="comma-separated: one benchmark per value (the pair is trained once)")
    parser.add_argument("--temperatures", default="0",
                        help="comma-separated: one benchmark per value; 0 is greedy, where ids are compared")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--quick", action="store_true", help="tiny models and few tokens: a smoke test on any device")
    parser.add_argument("--no-projection", action="store_true", help="skip the real architectures' projection")
    args = parser.parse_args(argv)
    if args.quick:  # the quick pair's draft has 256 positions: a long generation would run past them
        args.max_new_tokens, args.prompts = min(args.max_new_tokens, 32), min(args.prompts, 2)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 everywhere: the methods must agree token for token
    started = time.perf_counter()
    cfg = QUICK_PAIR if args.quick else GPU_PAIR
    target, draft, documents = build_pair(cfg, device)
    print(f"pair built in {time.perf_counter() - started:.0f}s on {machine()}", flush=True)
    prompts = corpus_prompts(documents, args.prompts)
    methods = args.methods.split(",")
    names = {"target": f"{cfg.target.name} ({tinypair.count_parameters(target[0]) / 1e6:.0f} M, trained here)",
             "draft": f"{cfg.draft.name} ({tinypair.count_parameters(draft[0]) / 1e6:.1f} M, trained here)"}
    tables = []
    for temperature in map(float, args.temperatures.split(",")):
        for k in map(int, args.num_draft_tokens.split(",")):
            out = args.out / f"k{k}-t{temperature:g}"
            settings = {**names, "max_new_tokens": args.max_new_tokens, "temperature": temperature, "dtype": "float32",
                        "repeats": args.repeats, "num_draft_tokens": k, "prompts": len(prompts),
                        "command": f"python -m tokentiming.tools.gpubench --num-draft-tokens {k} "
                                   f"--temperatures {temperature:g}" + (" --quick" if args.quick else "")}
            tables.append(race(target, draft, prompts, methods, settings, args.repeats, out))
    for table in tables:
        print("\n" + table)
    del target, draft
    if not args.no_projection:
        projection.main(["--out", str(args.out)] + (["--quick"] if args.quick else []))
    print(f"\ntotal {time.perf_counter() - started:.0f}s; reports in {args.out}")


def race(target, draft, prompts, methods, settings, repeats, out: Path) -> str:
    """One benchmark of every method; writes its report to ``out`` and returns its markdown table."""
    k, temperature = settings["num_draft_tokens"], settings["temperature"]
    bench = Bench(target, draft, max_new_tokens=settings["max_new_tokens"], temperature=temperature,
                  num_draft_tokens=k)
    tic = time.perf_counter()
    runs = run_benchmark(bench, prompts, methods, repeats, warmup_tokens=settings["max_new_tokens"],
                         progress=lambda step, total, method, _: print(f"  {step}/{total} {method}", end="\r"))
    print(f"\nk={k}, temperature {temperature:g}: benchmark ran in {time.perf_counter() - tic:.0f}s")
    summary = summarise(runs, methods)
    identical = identical_to_target(runs, methods) if temperature == 0 else {}
    settings = {**settings, "machine": machine(), "peak_rss_mb": peak_rss_mb()}
    write_report(out, runs, summary, identical, None, settings)
    # Where a round's time goes, and what drafting with the k steps chained on the device (one read-back per
    # round: StaticKV.greedy_steps, off by default until measured here) saves against a read-back per step.
    # Each is run twice, in alternating order; the faster of the two is printed.
    loops = {"tokentiming": (False, False), "tokentiming-static, device loop": (True, True),
             "tokentiming-static, host loop": (True, False)}
    best = {}
    try:
        for order in (list(loops), list(reversed(loops))):
            for label in order:
                static, StaticKV.device_loop = loops[label]
                _synchronise()
                tic = time.perf_counter()
                generation = bench.decoder.generate(prompts[0].text, max_new_tokens=settings["max_new_tokens"],
                                                    static=static, num_draft_tokens=k, temperature=temperature,
                                                    seed=0)
                _synchronise()
                wall_ms = (time.perf_counter() - tic) * 1e3
                if label not in best or wall_ms < best[label][0]:
                    best[label] = wall_ms, generation
    finally:
        StaticKV.device_loop = False
    for label, (wall_ms, generation) in best.items():
        rounds = generation.rounds
        phases = {key: statistics.median(r.timings[key] for r in rounds if key in r.timings)
                  for key in ("draft_ms", "reencode_us", "align_us", "verify_ms", "resync_us")}
        timed = sum(r.timings.get("draft_ms", 0) + r.timings.get("verify_ms", 0) for r in rounds)
        host_ms = (wall_ms - timed) / len(rounds)
        print(f"{label}: {len(rounds)} rounds, {wall_ms / len(rounds):.2f} ms per round (median: "
              + ", ".join(f"{key} {value:.2f}" for key, value in phases.items())
              + f"; on average {host_ms:.2f} ms of it neither draft nor verify)")
    if temperature == 0:  # greedy: both loops must draft the same tokens, round by round, not only write the same
        chained, stepped = best["tokentiming-static, device loop"][1], best["tokentiming-static, host loop"][1]
        same = chained.token_ids == stepped.token_ids and all(
            [getattr(r, name) for r in chained.rounds] == [getattr(r, name) for r in stepped.rounds]
            for name in ("draft_token_ids", "draft_probs", "draft_forwards"))
        print("device loop drafted and wrote what the host loop did:", same)
    bench.close()
    return markdown_table(summary, identical, None, settings)


if __name__ == "__main__":
    main()
