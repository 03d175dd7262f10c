"""Model specs: a built-in preset name, a Hugging Face hub id (``org/name``) or a local folder."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"

#: Presets that ship with the project (no download needed).
LOCAL_PRESETS = {
    "tiny-draft": ASSETS / "tiny-pair" / "tiny-draft",
    "tiny-target": ASSETS / "tiny-pair" / "tiny-target",
}


class ModelSpecError(ValueError):
    """A model spec that cannot be turned into a loaded model; the message says what to do."""


def presets() -> list[str]:
    return sorted(LOCAL_PRESETS)


def resolve(spec: str) -> str:
    """The folder or hub id a spec stands for."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelSpecError(f"no model given: name a preset ({', '.join(presets())}), a hub id or a folder")
    if spec in LOCAL_PRESETS:
        return str(LOCAL_PRESETS[spec])
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and all(spec.split("/")):
        return spec
    raise ModelSpecError(f"unknown model {spec!r}: not a preset ({', '.join(presets())}), "
                         "not an existing folder, and not a hub id of the form org/name")


def pick_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype, device):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def load(spec: str, device: str = "auto", dtype="auto", trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` for a spec; CUDA and bf16 when available, else CPU and fp32."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = resolve(spec)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as error:
        hint = (" Hub access is off (HF_HUB_OFFLINE=1): put the model in a local folder and pass its path."
                if offline else "")
        raise ModelSpecError(f"cannot load model {spec!r}: {error}.{hint}") from error
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not trust_remote_code:
        raise ModelSpecError(f"{spec!r} is a {config.model_type!r} model, not a causal (decoder-only) language model: "
                             "TokenTiming needs two models that generate text left to right")
    device = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=pick_dtype(dtype, device),
                                                 trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tokenizer
