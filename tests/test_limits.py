"""Deployment limits: the size of a hub model's weights read from its file list, the settings read from the
environment at call time, request bounds, and local folders turned off. (That resolve and load consult the size
before any download is tested against a local stand-in hub in test_models.py.)"""

import pytest
from huggingface_hub.hf_api import ModelInfo

from tokentiming.models import ModelSpecError, limits, load, load_tokenizer, resolve
from tokentiming.models.loading import LOCAL_PRESETS, hub_weight_bytes

GB = 1_000_000_000


def some_limits(**fields):
    return limits.Limits(**{"max_model_gb": 16.0, "allow_local_folders": True, "max_new_tokens": 4096,
                            "max_text_chars": 20_000, "max_draft_tokens": 64, **fields})


# --- the size of a hub model ------------------------------------------------------------------------------------

def test_sharded_safetensors_are_summed_and_other_files_left_out():
    files = [("config.json", 700), ("model.safetensors.index.json", 30_000), ("README.md", 5_000),
             ("model-00001-of-00002.safetensors", 5 * GB), ("model-00002-of-00002.safetensors", 3 * GB),
             ("original/consolidated.00.pth", 16 * GB), ("onnx/model.onnx", 16 * GB)]
    assert limits.weight_bytes(files) == 8 * GB


def test_a_second_copy_of_the_weights_in_another_format_is_not_counted():
    """Repositories that also ship consolidated.safetensors would look twice their size and be refused wrongly."""
    files = [("consolidated.safetensors", 14 * GB), ("model-00001-of-00002.safetensors", 10 * GB),
             ("model-00002-of-00002.safetensors", 4 * GB), ("pytorch_model.bin", 28 * GB)]
    assert limits.weight_bytes(files) == 14 * GB


def test_pytorch_pickles_count_when_there_are_no_safetensors():
    files = [("pytorch_model-00001-of-00002.bin", 9 * GB), ("pytorch_model-00002-of-00002.bin", 4 * GB),
             ("training_args.bin", 4_000)]
    assert limits.weight_bytes(files) == 13 * GB
    assert limits.weight_bytes([("weights.safetensors", 2 * GB), ("pytorch_model.bin", 4 * GB)]) == 2 * GB


def test_unknown_sizes_are_unknown_not_zero():
    """A missing size read as 0 would let any model through the limit."""
    assert limits.weight_bytes([("model.safetensors", None)]) is None
    assert limits.weight_bytes([("model-00001-of-00002.safetensors", 5 * GB),
                                ("model-00002-of-00002.safetensors", None)]) is None
    assert limits.weight_bytes([("config.json", 700), ("model.gguf", 5 * GB)]) is None


def test_parameter_counts_become_bytes_by_dtype():
    assert limits.parameter_bytes({"BF16": 7_000_000_000}) == 14 * GB
    assert limits.parameter_bytes({"F32": 1000, "I8": 10, "F8_E4M3": 5, "bf16": 3}) == 4000 + 10 + 5 + 6


def test_hub_size_falls_back_to_parameter_counts_when_files_have_no_size():
    info = ModelInfo(id="org/model", siblings=[{"rfilename": "model.safetensors"}],
                     safetensors={"parameters": {"BF16": 35 * GB}, "total": 35 * GB})
    assert hub_weight_bytes(info) == 70 * GB
    sized = ModelInfo(id="org/model", siblings=[{"rfilename": "model.safetensors", "size": 3 * GB}],
                      safetensors={"parameters": {"BF16": 35 * GB}, "total": 35 * GB})
    assert hub_weight_bytes(sized) == 3 * GB  # the files' own sizes win


def test_model_over_the_limit_is_refused_with_size_limit_and_setting():
    allowed = some_limits(max_model_gb=16.0)
    allowed.check_model_size("org/small", 16 * GB)  # at the limit: allowed
    allowed.check_model_size("org/unknown", None)
    with pytest.raises(ModelSpecError) as error:
        allowed.check_model_size("org/big", 140_600_000_000)
    message = str(error.value)
    assert "'org/big' has 140.6 GB of weights" in message and "limit of 16 GB" in message
    assert "TOKENTIMING_MAX_MODEL_GB" in message


# --- settings from the environment ------------------------------------------------------------------------------

def test_settings_are_read_at_call_time(monkeypatch):
    """Read once at import, a deployment's settings would be ignored by a process that imported us first."""
    for name in ("TOKENTIMING_MAX_MODEL_GB", "TOKENTIMING_ALLOW_LOCAL_FOLDERS", "TOKENTIMING_MAX_NEW_TOKENS",
                 "TOKENTIMING_MAX_TEXT_CHARS", "TOKENTIMING_MAX_DRAFT_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    assert limits.current() == some_limits(max_model_gb=limits.default_max_model_gb())
    monkeypatch.setenv("TOKENTIMING_MAX_MODEL_GB", "2.5")
    monkeypatch.setenv("TOKENTIMING_ALLOW_LOCAL_FOLDERS", "off")
    monkeypatch.setenv("TOKENTIMING_MAX_NEW_TOKENS", "256")
    monkeypatch.setenv("TOKENTIMING_MAX_TEXT_CHARS", "1000")
    monkeypatch.setenv("TOKENTIMING_MAX_DRAFT_TOKENS", "16")
    assert limits.current() == limits.Limits(2.5, False, 256, 1000, 16)
    monkeypatch.setenv("TOKENTIMING_MAX_MODEL_GB", "inf")
    assert limits.current().max_model_gb == float("inf")


def test_default_model_limit_fits_the_hardware():
    assert 0 < limits.default_max_model_gb() <= limits.MODEL_GB_CAP
    assert limits.default_max_model_gb() <= limits.ram_bytes() / GB  # without a GPU here: a share of the RAM


@pytest.mark.parametrize("name, raw", [("TOKENTIMING_MAX_NEW_TOKENS", "lots"), ("TOKENTIMING_MAX_NEW_TOKENS", "0"),
                                       ("TOKENTIMING_MAX_DRAFT_TOKENS", "2.5"), ("TOKENTIMING_MAX_MODEL_GB", "-1"),
                                       ("TOKENTIMING_MAX_MODEL_GB", "nan"),
                                       ("TOKENTIMING_ALLOW_LOCAL_FOLDERS", "maybe")])
def test_a_bad_setting_is_an_error_naming_it_not_a_silent_default(monkeypatch, name, raw):
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=name):
        limits.current()


# --- request bounds ---------------------------------------------------------------------------------------------

def test_request_within_bounds_passes():
    some_limits().check_request(max_new_tokens=4096, text="x" * 20_000, num_draft_tokens=64)
    some_limits().check_request()  # nothing to check


@pytest.mark.parametrize("request_, expected", [
    ({"max_new_tokens": 4097}, r"max_new_tokens=4,097 is over this deployment's limit of 4,096 "
                               r"\(TOKENTIMING_MAX_NEW_TOKENS\)"),
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1, got 0"),
    ({"text": "x" * 20_001}, r"the text has 20,001 characters, over this deployment's limit of 20,000 "
                             r"\(TOKENTIMING_MAX_TEXT_CHARS\)"),
    ({"num_draft_tokens": 65}, r"num_draft_tokens=65 is over this deployment's limit of 64 "
                               r"\(TOKENTIMING_MAX_DRAFT_TOKENS\)"),
    ({"num_draft_tokens": -3}, "num_draft_tokens must be at least 1, got -3"),
])
def test_request_out_of_bounds_is_refused_in_plain_words(request_, expected):
    with pytest.raises(ValueError, match=expected):
        some_limits().check_request(**request_)


# --- local folders ----------------------------------------------------------------------------------------------

@pytest.fixture
def folders_off(monkeypatch):
    monkeypatch.setenv("TOKENTIMING_ALLOW_LOCAL_FOLDERS", "0")


def test_local_folder_is_refused_when_folders_are_off(folders_off, tmp_path):
    """A public deployment would load (and show facts about) any folder a visitor names on its disk."""
    folder = tmp_path / "model"
    folder.mkdir()
    for call in (resolve, load, load_tokenizer):
        with pytest.raises(ModelSpecError, match="TOKENTIMING_ALLOW_LOCAL_FOLDERS=0"):
            call(str(folder))


@pytest.mark.parametrize("spec", ["/etc", "/no/such/folder", "./model", "~/models/x", "a/b/c", "..\\models"])
def test_folders_off_refuses_every_path_alike(folders_off, spec):
    """Refusing only folders that exist would tell a visitor which paths exist on the machine."""
    with pytest.raises(ModelSpecError) as error:
        resolve(spec)
    assert str(error.value) == (f"{spec!r} looks like a folder path, but this deployment does not load models from "
                                "local folders (TOKENTIMING_ALLOW_LOCAL_FOLDERS=0): use a preset or a hub id "
                                "(org/name).")


def test_folders_off_still_serves_presets_and_hub_ids(folders_off, monkeypatch):
    assert resolve("tiny-draft") == str(LOCAL_PRESETS["tiny-draft"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSpecError) as error:
        resolve("some-org/some-model")
    assert "not in the local hub cache" in str(error.value)
    assert "local folder" not in str(error.value)  # not offered where it is refused
