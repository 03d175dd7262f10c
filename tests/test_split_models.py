"""A target loaded split across placements (accelerate's device_map: part on the CPU, part offloaded to disk)
decodes exactly as the whole model; static caches refuse it with a message."""

import json

import pytest

from tokentiming import TokenTimingDecoder, autoregressive
from tokentiming.backends.kv import StaticKV, split, static_supported
from tokentiming.backends.lean import unsupported
from tokentiming.models import LOCAL_PRESETS, load

PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def split_target(tmp_path_factory):
    layers = json.loads((LOCAL_PRESETS["tiny-target"] / "config.json").read_text())["num_hidden_layers"]
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map |= {f"model.layers.{i}": "cpu" if i < layers // 2 else "disk" for i in range(layers)}
    return load("tiny-target", device_map=device_map, offload_folder=str(tmp_path_factory.mktemp("offload")))


def test_target_split_between_cpu_and_disk_writes_the_whole_models_greedy_ids(split_target, tiny_draft):
    model, tokenizer = split_target
    assert split(model), "the model was not split: nothing tested"
    whole = autoregressive(*load("tiny-target", device="cpu", cpu_kernels=False), PROMPT, max_new_tokens=30)
    assert autoregressive(model, tokenizer, PROMPT, max_new_tokens=30).token_ids == whole.token_ids
    generation = TokenTimingDecoder(model, tokenizer, *tiny_draft).generate(PROMPT, max_new_tokens=30)
    assert generation.token_ids == whole.token_ids
    assert generation.stats["proposed"] > 0


def test_split_model_refuses_static_caches_and_the_lean_forward_with_a_reason(split_target, tiny_draft):
    model, _ = split_target
    assert not static_supported(model)
    with pytest.raises(ValueError, match="split across .*static=False"):
        StaticKV(model, capacity=64)
    assert "split" in unsupported(model)
