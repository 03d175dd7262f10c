"""Projected speedups of real pairs on a GPU: step times measured there, acceptance measured on a CPU.

    python -m tokentiming.tools.projection [--report assets/benchmarks/cpu-xeon-fp32-greedy.json] [--out DIR]
                                           [--dtype bfloat16] [--quick]

A GPU machine without a network cannot load the real weights, but a forward pass takes the same time whatever
its weights are, and how much of a draft's proposal the target accepts does not depend on the device. So this
script builds the real architectures (SmolLM2-135M, Qwen2.5-Coder-1.5B and -7B) from their configurations with
random weights, on static caches (CUDA graphs on a GPU), times the steps a round is made of, and combines them
with a recorded benchmark's per-round statistics of the real pair:

    round = draft steps per round x one draft step + one verify pass over (proxies per round + 1) rows
            + the round's host work (re-encode, align, resync, bookkeeping: the recorded run's, per round)
    target alone, per token = one target step + its host work (the recorded run's, per token)
    speedup for decoding = new tokens per round x target alone per token / round

Each step is timed as the decoding loop runs it: greedy tokens and their probabilities read back, on a cache of
the size the decoder takes for a 128-token generation; the draft step also chained on the device
(:meth:`tokentiming.backends.kv.StaticKV.greedy_steps`: k steps, one read-back). Prefill is left out, so the
figure compares with the recorded run's speedup for decoding alone. It is a projection and says so: it assumes
the GPU round has the recorded round's shape (its mean, not its spread) and acceptance (recorded with an fp32
target and the int8 lean draft; here both run in bf16), and for the 7B target the 1.5B's acceptance (a bigger
target usually accepts a little less from the same draft).
``--quick`` shrinks every architecture to a toy of its family: a smoke test on any device.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ..backends.kv import StaticKV
from ..core.verification import Sampling
from .bench import _synchronise, machine

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "assets" / "benchmarks" / "cpu-xeon-fp32-greedy.json"

#: The published configurations of the architectures (random weights: only their shapes matter here).
ARCHITECTURES = {
    "SmolLM2-135M": (LlamaForCausalLM, LlamaConfig, dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        head_dim=64, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192, rms_norm_eps=1e-5)),
    "Qwen2.5-Coder-1.5B": (Qwen2ForCausalLM, Qwen2Config, dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        vocab_size=151936, tie_word_embeddings=False, max_position_embeddings=32768, rms_norm_eps=1e-6)),
    "Qwen2.5-Coder-7B": (Qwen2ForCausalLM, Qwen2Config, dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        vocab_size=152064, tie_word_embeddings=False, max_position_embeddings=32768, rms_norm_eps=1e-6)),
}
#: (draft, target, where the acceptance comes from): the recorded pair, and the same draft for a 7B target.
PAIRS = [("SmolLM2-135M", "Qwen2.5-Coder-1.5B", "recorded with the real weights on the CPU"),
         ("SmolLM2-135M", "Qwen2.5-Coder-7B", "assumed: the 1.5B target's")]
#: Cache positions, as the decoder reserves them for a short prompt and 128 new tokens (attention on a static
#: cache spans all of them).
CAPACITY = 1024


@dataclass
class RoundShape:
    """A recorded run's mean round, from its ``report.json`` (our rule, all prompts)."""

    new_tokens: float  # tokens written per round (tau)
    draft_steps: float  # draft forward passes per round
    verify_rows: int  # proxies per round + 1, rounded
    host_ms: float  # re-encode, align, resync and the rest, per round
    baseline_host_ms: float  # the target alone's work besides its forward passes, per token
    decode_speedup: float  # what the recorded run measured for decoding alone
    source: str

    @classmethod
    def from_report(cls, path: Path, method: str = "tokentiming") -> RoundShape:
        report = json.loads(Path(path).read_text())
        greedy = [result for result in report["results"] if result["temperature"] == 0]
        if not greedy:
            raise ValueError(f"{path} has no greedy (temperature 0) run to take a round's shape from")
        rows = greedy[0]["summary"]["overall"]
        row, baseline = rows[method], rows["ar"]
        rounds, shares = row["rounds"], row["time_shares"]
        host = sum(shares.get(key, 0.0) for key in ("reencode", "align", "resync", "other"))
        baseline_host = 1.0 - baseline["time_shares"]["verify"] - baseline["time_shares"]["prefill"]
        return cls(new_tokens=row["new_tokens"] / rounds, draft_steps=row["draft_forwards"] / rounds,
                   verify_rows=round(row["proposed"] / rounds) + 1, host_ms=host * row["wall_s"] * 1e3 / rounds,
                   baseline_host_ms=baseline_host * baseline["wall_s"] * 1e3 / baseline["new_tokens"],
                   decode_speedup=row["decode_speedup_vs_ar"],
                   source=f"{Path(path).name} ({report['settings']['machine']})")


#: ``--quick``: every architecture shrunk to a toy of its family, to check the script's path in seconds.
QUICK = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=32, vocab_size=2048)


def build(name: str, device: torch.device, dtype: torch.dtype, quick: bool = False):
    """``name``'s architecture with random weights (a toy of its family with ``quick``)."""
    model_class, config_class, fields = ARCHITECTURES[name]
    fields = dict(fields, **QUICK) if quick else fields
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    try:  # initialised where it runs, in its dtype: a 7B model's random init takes minutes on a CPU, 30 GB in fp32
        torch.set_default_dtype(dtype)
        with torch.device(device):
            return model_class(config_class(**fields)).eval()
    finally:
        torch.set_default_dtype(default)


def _median(times: list[float]) -> float:
    return 1e3 * sorted(times)[len(times) // 2]


@torch.inference_mode()
def step_ms(model, rows: int, repeats: int, context: int = 256) -> tuple[float, bool]:
    """Median ms of one forward pass of ``rows`` tokens after ``context`` cached ones on a static cache, the
    greedy tokens and their probabilities read back as the decoding loop does (then the cache is rewound);
    and whether it ran on captured CUDA graphs (a failed capture falls back to eager, with a warning)."""
    kv = StaticKV(model, capacity=CAPACITY)
    vocab = model.config.vocab_size
    kv.forward(torch.randint(0, vocab, (context,)).tolist())
    proposal = torch.randint(0, vocab, (rows,)).tolist()
    greedy, times = Sampling(), []
    for _ in range(repeats + 2):  # the first two capture the graphs and warm up
        _synchronise()
        tic = time.perf_counter()
        probs = greedy.probs(kv.forward(proposal, keep=rows))
        tokens = probs.argmax(dim=-1)
        tokens.tolist(), probs.gather(-1, tokens[:, None]).tolist()
        times.append(time.perf_counter() - tic)
        kv.truncate(context)
    return _median(times[2:]), kv.graphs


@torch.inference_mode()
def chained_step_ms(model, steps: int, repeats: int, context: int = 256) -> float:
    """Median ms per draft step when ``steps`` greedy steps are chained on the device (one read-back)."""
    kv = StaticKV(model, capacity=CAPACITY)
    kv.forward(torch.randint(0, model.config.vocab_size, (context,)).tolist())
    times = []
    for _ in range(repeats + 2):
        _synchronise()
        tic = time.perf_counter()
        kv.greedy_steps([7], steps, Sampling().probs)
        times.append((time.perf_counter() - tic) / steps)
        kv.truncate(context)
    return _median(times[2:])


def project(shape: RoundShape, draft_ms: float, target_ms: float, verify_ms: float) -> float:
    """Projected speedup for decoding over the target alone, for one round shape and measured step times."""
    round_ms = shape.draft_steps * draft_ms + verify_ms + shape.host_ms
    return shape.new_tokens * (target_ms + shape.baseline_host_ms) / round_ms


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=RECORDED, help="a recorded greedy benchmark of the real pair")
    parser.add_argument("--out", type=Path, default=Path("gpu-bench-out"))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="toy models, few repeats: a smoke test")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    repeats = 3 if args.quick else args.repeats
    shape = RoundShape.from_report(args.report)
    k = json.loads(args.report.read_text())["settings"]["num_draft_tokens"]  # the chained loop runs all k steps
    times, graphs = {}, {}
    for name in ARCHITECTURES:
        model = build(name, device, dtype, args.quick)
        times[name] = {}
        for rows in sorted({1, shape.verify_rows}):
            times[name][rows], graphs[(name, rows)] = step_ms(model, rows, repeats)
        times[name]["chained"] = chained_step_ms(model, k, repeats)
        print(f"{name}: " + ", ".join(f"{r} row(s) {times[name][r]:.2f} ms" for r in sorted({1, shape.verify_rows}))
              + f", chained draft step {times[name]['chained']:.2f} ms", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    eager = sorted({name for (name, _), captured in graphs.items() if not captured})
    caches = ("static caches on CUDA graphs" if device.type == "cuda" and not eager else
              f"static caches; CUDA graph capture failed for {', '.join(eager)}, which ran eagerly"
              if device.type == "cuda" else "static caches, no graphs (no GPU)")
    lines = [f"**Projection, not a measurement.** Step times measured on {machine()} ({args.dtype}, random weights, "
             f"{caches}{'; --quick: toy models, not the real shapes' if args.quick else ''}). Round shape from "
             f"{shape.source}: {shape.new_tokens:.2f} tokens, {shape.draft_steps:.2f} draft steps, a "
             f"{shape.verify_rows}-row verify pass and {shape.host_ms:.2f} ms of host work per round; "
             f"{shape.baseline_host_ms:.2f} ms of host work per token for the target alone. Speedups are for "
             f"decoding (prefill left out): the recorded run measured {shape.decode_speedup:.2f}× for decoding "
             "alone on its CPU.", "",
             "| draft → target | acceptance | draft step, ms | target step, ms | verify pass, ms "
             "| projected speedup | with the draft chained on the device |", "|---|---|---|---|---|---|---|"]
    for draft, target, acceptance in PAIRS:
        d, t = times[draft], times[target]
        host_loop = project(shape, d[1], t[1], t[shape.verify_rows])
        chained = project(replace(shape, draft_steps=k), d["chained"], t[1], t[shape.verify_rows])
        lines.append(f"| {draft} → {target} | {acceptance} | {d[1]:.2f} | {t[1]:.2f} | {t[shape.verify_rows]:.2f} "
                     f"| **{host_loop:.2f}×** | {chained:.2f}× ({k} steps a round) |")
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "projection.md").write_text(table + "\n", encoding="utf-8")
    (args.out / "projection.json").write_text(json.dumps({"machine": machine(), "dtype": args.dtype,
                                                          "quick": args.quick, "round": asdict(shape),
                                                          "chained_steps": k, "step_ms": times,
                                                          "graphs_failed": eager}, indent=1), encoding="utf-8")
    print("\n" + table)
    return table


if __name__ == "__main__":
    main()
