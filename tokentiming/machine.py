"""Facts about the machine that every layer may read: where per-machine files live and what the CPU is."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def home() -> Path:
    """Where converted presets and per-machine measurements live: ``$TOKENTIMING_HOME``, else the user cache
    dir + ``tokentiming``."""
    if os.environ.get("TOKENTIMING_HOME"):
        return Path(os.environ["TOKENTIMING_HOME"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir()) / "tokentiming"


def _cpuinfo(field: str) -> str | None:
    """The first ``field : value`` of ``/proc/cpuinfo`` (None where the file or the field is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` is missing)."""
    return set((_cpuinfo("flags") or "").split())


def native_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively (AMX tiles or AVX-512 bf16), where bf16 weights pay off."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})
