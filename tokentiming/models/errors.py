"""What the model layer's modules share, kept in a leaf so none of them imports another in a circle."""

from __future__ import annotations

import os


class ModelSpecError(ValueError):
    """A model spec that cannot be turned into a loaded model; the message says what to do."""


def hub_offline() -> bool:
    """Whether hub access is switched off (``HF_HUB_OFFLINE``), read now rather than at import."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
