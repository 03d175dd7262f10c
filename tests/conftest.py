"""Shared fixtures: the offline environment, one torch thread, and the tiny test pair."""

import os

# One thread for numba's parallel kernels too (set before numba loads): on a 2-core machine shared with the
# test's own subprocesses, parallel regions cost many times their work in waiting threads.
for _name, _value in {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                      "TOKENIZERS_PARALLELISM": "false", "NUMBA_NUM_THREADS": "1"}.items():
    os.environ.setdefault(_name, _value)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_target():
    from tokentiming.models import load

    return load("tiny-target", device="cpu")


@pytest.fixture(scope="session")
def tiny_draft():
    from tokentiming.models import load

    return load("tiny-draft", device="cpu")


@pytest.fixture(scope="session")
def decoder(tiny_target, tiny_draft):
    from tokentiming import TokenTimingDecoder

    return TokenTimingDecoder(*tiny_target, *tiny_draft)
