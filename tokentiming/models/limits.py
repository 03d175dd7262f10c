"""What a deployment lets its visitors ask for: model size, local folders and request bounds.

A public Space lets anyone type any hub id, so a 70B request would start a download of hundreds of GB. Each
setting comes from an environment variable, read when :func:`current` is called (not at import):

    TOKENTIMING_MAX_MODEL_GB          largest hub model, in GB of weight files (default: sized for the hardware)
    TOKENTIMING_ALLOW_LOCAL_FOLDERS   1/0: whether a spec may name a folder on this machine (default 1)
    TOKENTIMING_MAX_NEW_TOKENS        largest max_new_tokens of a request (default 4096)
    TOKENTIMING_MAX_TEXT_CHARS        longest prompt or alignment text, in characters (default 20000)
    TOKENTIMING_MAX_DRAFT_TOKENS      largest num_draft_tokens of a request (default 64)
"""

from __future__ import annotations

import fnmatch
import functools
import math
import os
from dataclasses import dataclass
from typing import Iterable

from .errors import ModelSpecError

GB = 1e9  # decimal, as the hub shows file sizes
MODEL_GB_CAP = 16.0  # largest default, whatever the hardware: a download that still fits a Space's disk
CPU_MEMORY_SHARE = 0.25  # a bf16 checkpoint doubles in RAM as fp32, and the draft and KV caches need room too
GPU_MEMORY_SHARE = 0.4  # loaded in bf16: about the size of the download, beside the draft, KV caches and graphs

#: Bytes per value of the dtypes the hub's safetensors metadata counts parameters in.
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "BF16": 2, "F16": 2, "I16": 2,
               "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}

#: Weight files transformers downloads, most specific first: sharded or single safetensors named ``model*``, any
#: other top-level safetensors, then PyTorch pickles (only when a repository has no safetensors at all).
WEIGHT_PATTERNS = ("model*.safetensors", "*.safetensors", "pytorch_model*.bin")

FALSE = ("0", "false", "no", "off")
TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Limits:
    max_model_gb: float  # inf: no limit
    allow_local_folders: bool
    max_new_tokens: int
    max_text_chars: int
    max_draft_tokens: int

    def check_request(self, max_new_tokens: int | None = None, text: str | None = None,
                      num_draft_tokens: int | None = None) -> None:
        """Raise ValueError with a plain message if a request is out of bounds; arguments left None are not checked."""
        if max_new_tokens is not None:
            _check_count("max_new_tokens", max_new_tokens, self.max_new_tokens, "TOKENTIMING_MAX_NEW_TOKENS")
        if text is not None and len(text) > self.max_text_chars:
            raise ValueError(f"the text has {len(text):,} characters, over this deployment's limit of "
                             f"{self.max_text_chars:,} (TOKENTIMING_MAX_TEXT_CHARS): send a shorter text")
        if num_draft_tokens is not None:
            _check_count("num_draft_tokens", num_draft_tokens, self.max_draft_tokens, "TOKENTIMING_MAX_DRAFT_TOKENS")

    def check_model_size(self, spec: str, weight_bytes: int | None) -> None:
        """Raise ModelSpecError if a model's weights (``None``: size unknown, let through) are over the limit."""
        if weight_bytes is None or weight_bytes <= self.max_model_gb * GB:
            return
        raise ModelSpecError(f"{spec!r} has {weight_bytes / GB:,.1f} GB of weights, over this deployment's limit of "
                             f"{self.max_model_gb:g} GB: pick a smaller model, or, if this machine can hold it, raise "
                             "the limit with TOKENTIMING_MAX_MODEL_GB (inf for none).")

    def check_local_folder(self, spec: str) -> None:
        """Raise ModelSpecError if specs may not name folders on this machine."""
        if not self.allow_local_folders:
            raise ModelSpecError(f"{spec!r} looks like a folder path, but this deployment does not load models from "
                                 "local folders (TOKENTIMING_ALLOW_LOCAL_FOLDERS=0): use a preset or a hub id "
                                 "(org/name).")


def _check_count(name: str, value: int, limit: int, setting: str) -> None:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    if value > limit:
        raise ValueError(f"{name}={value:,} is over this deployment's limit of {limit:,} ({setting}): ask for fewer")


def current() -> Limits:
    """The limits the environment sets now (unset variables take their defaults)."""
    return Limits(
        max_model_gb=_env_number("TOKENTIMING_MAX_MODEL_GB", float, default_max_model_gb()),
        allow_local_folders=_env_bool("TOKENTIMING_ALLOW_LOCAL_FOLDERS", True),
        max_new_tokens=_env_number("TOKENTIMING_MAX_NEW_TOKENS", int, 4096),
        max_text_chars=_env_number("TOKENTIMING_MAX_TEXT_CHARS", int, 20_000),
        max_draft_tokens=_env_number("TOKENTIMING_MAX_DRAFT_TOKENS", int, 64),
    )


def _env_number(name: str, kind: type, default):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or math.isnan(value) or value <= 0:
        raise ValueError(f"{name}={raw!r}: expected a {'whole ' if kind is int else ''}number above 0")
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in TRUE + FALSE:
        raise ValueError(f"{name}={raw!r}: expected one of {', '.join(TRUE + FALSE)}")
    return raw in TRUE


@functools.lru_cache(maxsize=1)
def default_max_model_gb() -> float:
    """A share of the memory models load into (GPU if there is one, else RAM), at most MODEL_GB_CAP."""
    import torch

    if torch.cuda.is_available():
        share = GPU_MEMORY_SHARE * torch.cuda.get_device_properties(0).total_memory
    else:
        share = CPU_MEMORY_SHARE * ram_bytes()
    return round(min(MODEL_GB_CAP, share / GB), 1)


def ram_bytes() -> int:
    """The RAM this process may use: the machine's, or its container's limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as file:
                raw = file.read().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw))
    return total


def weight_bytes(files: Iterable[tuple[str, int | None]]) -> int | None:
    """Bytes of the weight files transformers would download, from a repository's ``(path, size)`` list.

    Only top-level files count (transformers loads no subfolder); ``None`` when there are none or a size is missing.
    """
    top_level = [(path, size) for path, size in files if "/" not in path]
    for pattern in WEIGHT_PATTERNS:
        sizes = [size for path, size in top_level if fnmatch.fnmatchcase(path, pattern)]
        if sizes:
            return None if None in sizes else sum(sizes)
    return None


def parameter_bytes(parameters: dict[str, int]) -> int:
    """Bytes of the parameters the hub counts per dtype in a repository's safetensors files (unknown dtypes: 4)."""
    return sum(count * DTYPE_BYTES.get(dtype.upper(), 4) for dtype, count in parameters.items())
