"""Reading and writing files: loaders that check before they read, folder saves that cannot be mixed.

Each promise of ``minilora/loading.py``, ``minilora/io.py`` and ``minilora/errors.py`` is
tested once here on a hand-made case (the fuzz suite, ``test_fuzz_files.py``, throws
hundreds of random damages at the same loaders); docs/files.md describes the design.
"""

import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from safetensors.numpy import load_file, save_file

from minilora import errors
from minilora.io import SAVE_ID_KEY, save_folder
from minilora.loading import load_checked, read_config, read_header
from minilora.models import GPT
from minilora.peft import IA3Config, LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from minilora.peft.adapters import BottleneckConfig
from minilora.train import load_checkpoint, save_checkpoint

pytest.importorskip("torch")  # peft_helpers imports it
from peft_helpers import assert_unchanged, snapshot, tiny_gpt  # noqa: E402


def tensors_file(path, tensors, metadata=None) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return Path(path)


# ---------------------------------------------------------------------------
# the hierarchy
# ---------------------------------------------------------------------------


def test_every_error_is_a_value_error_or_an_os_error_under_one_base():
    for cls in (errors.ConfigError, errors.WeightsError, errors.MismatchError, errors.InterruptedSaveError):
        assert issubclass(cls, errors.CheckpointError) and issubclass(cls, ValueError) and issubclass(cls, errors.LoadError)
    for cls in (errors.MissingFileError, errors.NotRegularFileError):
        assert issubclass(cls, OSError) and issubclass(cls, errors.LoadError)
    assert issubclass(errors.MissingFileError, FileNotFoundError)
    from minilora.models import CheckpointError
    assert CheckpointError is errors.CheckpointError  # the name minilora.models always had


# ---------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    (b'{"r": NaN}', r"NaN is not a number JSON allows"),
    (b'{"r": -Infinity}', r"-Infinity is not a number JSON allows"),
    (b'{"r": 1, "r": 2}', r"the key 'r' appears twice"),
    (b'[1, 2]', r"holds a JSON list, where a JSON config is an object"),
    (b'"text"', r"holds a JSON string"),
    (b'{"r": 4', r"is not valid JSON"),
    (b'{"r": "\xff\xfe"}', r"is not UTF-8 text \(byte 7"),
    (b"[" * 100000 + b"]" * 100000, r"nested too deeply"),
])
def test_a_config_that_is_not_strict_json_is_a_config_error_naming_the_file(tmp_path, raw, message):
    path = tmp_path / "config.json"
    path.write_bytes(raw)
    with pytest.raises(errors.ConfigError, match=message) as err:
        read_config(path)
    assert str(path) in str(err.value)


def test_non_regular_files_are_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "adapter_config.json"
    os.mkfifo(fifo)  # opening it for reading would block until someone writes
    with pytest.raises(errors.NotRegularFileError, match=r"adapter_config\.json is not a regular file \(a named pipe\)"):
        read_config(fifo)
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")  # endless: read whole, it would fill the memory
    with pytest.raises(errors.NotRegularFileError, match="a character device"):
        read_config(zero)
    with pytest.raises(errors.NotRegularFileError, match="a folder"):
        read_header(tmp_path)
    with pytest.raises(errors.MissingFileError):
        read_config(tmp_path / "nowhere.json")
    big = tmp_path / "big.json"
    big.write_text('{"pad": "' + "x" * (2 << 20) + '"}')
    with pytest.raises(errors.ConfigError, match=r"big\.json is \d+ bytes; a JSON config is at most 1048576 bytes"):
        read_config(big)


# ---------------------------------------------------------------------------
# safetensors: header first
# ---------------------------------------------------------------------------


def retag(path, name, dtype):
    """Rewrite one tensor's dtype in the header, same byte count (F32 -> I32, say)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header[name]["dtype"] = dtype
    text = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(text) == n
    path.write_bytes(raw[:8] + text + raw[8 + n:])


def test_a_parameter_stored_as_another_kind_of_number_is_refused_not_cast(tmp_path):
    for dtype in (np.int32, np.bool_, np.complex64, np.uint8):
        path = tensors_file(tmp_path / "w.safetensors", {"w": np.ones((2, 3), dtype)})
        with pytest.raises(errors.WeightsError, match=r"tensor 'w' is stored as (I32|BOOL|C64|U8); a parameter must be a float"):
            load_checked(path, {"w": (2, 3)})
    path = tensors_file(tmp_path / "w.safetensors", {"w": np.ones((2, 3), np.float32)})
    retag(path, "w", "I32")  # the same bytes, read as integers they would be 1065353216
    with pytest.raises(errors.WeightsError, match="stored as I32"):
        load_checked(path, {"w": (2, 3)})


def test_float_widths_are_cast_on_request_and_buffers_read_as_stored(tmp_path):
    w = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float16)
    path = tensors_file(tmp_path / "w.safetensors", {"w": w, "embeddings.position_ids": np.arange(5)[None],
                                                     "h.0.attn.bias": np.ones((1, 1, 2, 2), np.float32)})
    out = load_checked(path, {"w": (3, 4)}, dtype=np.float64,
                       buffers={"embeddings.position_ids": (1, 5), re.compile(r"h\.\d+\.attn\.bias"): None})
    assert out["w"].dtype == np.float64 and np.array_equal(out["w"], w.astype(np.float64))
    assert out["embeddings.position_ids"].dtype == np.int64 and out["embeddings.position_ids"].tolist() == [[0, 1, 2, 3, 4]]
    assert load_checked(path, {"w": (3, 4)}, buffers=["embeddings.position_ids", re.compile(r".*attn\.bias")])["w"].dtype == np.float16
    with pytest.raises(errors.MismatchError, match=r"unexpected key 'embeddings\.position_ids'"):
        load_checked(path, {"w": (3, 4)}, buffers=[re.compile(r".*attn\.bias")])
    with pytest.raises(errors.MismatchError, match=r"key 'embeddings\.position_ids' has shape \(1, 5\), but the config implies \(1, 512\)"):
        load_checked(path, {"w": (3, 4)}, buffers={"embeddings.position_ids": (1, 512), re.compile(".*bias"): None})


def test_non_finite_weights_are_refused_unless_allowed(tmp_path):
    w = np.ones((2, 3), np.float32)
    w[0, 1], w[1, 2] = np.nan, -np.inf
    path = tensors_file(tmp_path / "w.safetensors", {"w": w})
    with pytest.raises(errors.WeightsError, match=r"tensor 'w' holds 2 non-finite values .* allow_nonfinite=True"):
        load_checked(path, {"w": (2, 3)})
    assert np.isnan(load_checked(path, {"w": (2, 3)}, allow_nonfinite=True)["w"][0, 1])


def test_a_huge_declared_shape_is_refused_from_the_header_alone(tmp_path, monkeypatch):
    path = tensors_file(tmp_path / "w.safetensors", {"w": np.ones((2, 3), np.float32)})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["w"]["shape"] = [1 << 20, 1 << 20]  # 4 TiB declared in 24 bytes
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    monkeypatch.setattr(np, "frombuffer", lambda *a, **k: pytest.fail("data read before the header was checked"))
    with pytest.raises(errors.WeightsError, match=r"'w' declares shape \(1048576, 1048576\) of F32 \(4398046511104 bytes\) in 24 bytes"):
        load_checked(path, {"w": (2, 3)})
    path.write_bytes(struct.pack("<Q", 1 << 60) + raw[8:])
    with pytest.raises(errors.WeightsError, match="declares a 1152921504606846976-byte header"):
        read_header(path)


def test_a_header_that_does_not_tile_the_data_is_refused(tmp_path):
    path = tensors_file(tmp_path / "w.safetensors", {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})
    path.write_bytes(path.read_bytes() + b"\0" * 8)  # bytes the header does not describe
    with pytest.raises(errors.WeightsError, match="describes 16 bytes of tensor data, the file holds 24"):
        read_header(path)


# ---------------------------------------------------------------------------
# GPT checkpoints
# ---------------------------------------------------------------------------


@pytest.fixture
def saved_gpt(tmp_path):
    model = tiny_gpt(np.float32)
    model.save_pretrained(tmp_path / "gpt")
    return model, tmp_path / "gpt"


@pytest.mark.parametrize("field, value, message", [
    ("n_layer", True, r"n_layer=True \(a JSON bool\) is not an integer"),
    ("n_embd", 16.0, r"n_embd=16\.0 \(a JSON float\) is not an integer"),
    ("scale_attn_weights", "yes", r"scale_attn_weights='yes' \(a JSON str\) is not true or false"),
    ("resid_pdrop", 1.5, r"resid_pdrop=1\.5 is not a dropout rate"),
    ("n_head", 0, r"n_head=0 is not a positive integer"),
    ("n_layer", 10 ** 9, r"says n_layer=1000000000, but the file holds \d+ tensors"),
])
def test_gpt_config_fields_are_checked_by_type_and_value(saved_gpt, field, value, message):
    _, path = saved_gpt
    config = json.loads((path / "config.json").read_text())
    config[field] = value
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(errors.CheckpointError, match=message) as err:
        GPT.from_pretrained(path)
    assert str(path / ("model.safetensors" if field == "n_layer" and value == 10 ** 9 else "config.json")) in str(err.value)


def test_gpt_nan_weights_are_refused_by_default(saved_gpt):
    model, path = saved_gpt
    tensors = load_file(path / "model.safetensors")
    tensors["transformer.h.0.ln_1.weight"][3] = np.nan
    save_file(tensors, path / "model.safetensors")  # no save id: as if written by another tool
    with pytest.raises(errors.WeightsError, match=r"'transformer\.h\.0\.ln_1\.weight' holds 1 non-finite value"):
        GPT.from_pretrained(path)
    loaded = GPT.from_pretrained(path, allow_nonfinite=True)
    assert np.isnan(loaded.transformer.h[0].ln_1.weight.data[3])


def test_a_training_checkpoint_round_trips_and_is_checked(tmp_path):
    model = tiny_gpt(np.float32)
    save_checkpoint(model, tmp_path / "ckpt.safetensors", metadata={"step": 7, "val_loss": 1.5})
    other = tiny_gpt(np.float32, seed=3)
    assert load_checkpoint(other, tmp_path / "ckpt.safetensors") == {"step": 7, "val_loss": 1.5}
    for (name, p), q in zip(model.named_parameters(), other.parameters()):
        assert np.array_equal(p.data, q.data), name
    wider = tiny_gpt(np.float32, n_embd=24)
    with pytest.raises(errors.MismatchError, match=r"key 'transformer\.wte\.weight' has shape \(61, 16\), but the GPT being loaded implies \(61, 24\)"):
        load_checkpoint(wider, tmp_path / "ckpt.safetensors")


# ---------------------------------------------------------------------------
# adapters: config types, sizes, a failed load leaves the model as it was
# ---------------------------------------------------------------------------


METHODS = {
    "lora": lambda: LoraConfig(r=2, target_modules=["c_attn", "c_fc"], init_lora_weights=False),
    "lora-modules-to-save": lambda: LoraConfig(r=2, target_modules=["c_attn"], modules_to_save=["ln_f"], bias="all"),
    "dora": lambda: LoraConfig(r=2, target_modules=["c_attn"], use_dora=True),
    "ia3": lambda: IA3Config(init_ia3_weights=False),
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=3),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=5),
    "bottleneck": lambda: BottleneckConfig(bottleneck_size=4),
}


def saved_adapter(path, method, **gpt):
    get_peft_model(tiny_gpt(**gpt), METHODS[method]()).save_pretrained(path)
    return Path(path)


def edit_json(path, **fields):
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(fields)
    (path / "adapter_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("method", METHODS)
def test_a_failed_load_adapter_leaves_the_model_as_it_was_and_a_retry_works(method, tmp_path):
    model = get_peft_model(tiny_gpt(), METHODS[method]())
    good = saved_adapter(tmp_path / "good", method)
    wide = saved_adapter(tmp_path / "wide", method, n_embd=24)  # every shape wrong
    nan = saved_adapter(tmp_path / "nan", method)
    tensors = load_file(nan / "adapter_model.safetensors")
    first = sorted(tensors)[-1]
    tensors[first].flat[0] = np.nan
    save_file(tensors, nan / "adapter_model.safetensors")
    bad_type = saved_adapter(tmp_path / "type", method)
    edit_json(bad_type, inference_mode="no")
    before = snapshot(model)
    for path, error in ((wide, errors.MismatchError), (nan, errors.WeightsError), (bad_type, errors.ConfigError)):
        with pytest.raises(error, match=re.escape(str(path))):
            model.load_adapter(path, "second")
        assert_unchanged(model, before)
        assert "second" not in model.peft_config
        assert not any(".second." in name or name.endswith(".second") for name, _ in model.named_modules())
    model.load_adapter(good, "second")  # the same name again
    assert "second" in model.peft_config
    fresh = tiny_gpt()
    before = snapshot(fresh)
    with pytest.raises(errors.MismatchError):
        PeftModel.from_pretrained(fresh, wide)
    assert_unchanged(fresh, before)


@pytest.mark.parametrize("field, value, message", [
    ("use_rslora", "no", r"use_rslora='no' is a JSON string, where LoraConfig accepts bool"),
    ("lora_alpha", True, r"lora_alpha=True is a JSON boolean, where LoraConfig accepts float"),
    ("r", 2.5, r"r=2\.5 is a JSON number, where LoraConfig accepts int"),
    ("target_modules", "c_attn(", r"target_modules='c_attn\(' is not a valid regular expression"),
    ("target_modules", ["c_attn", 3], r"target_modules\[1\]=3 is a JSON number, not str"),
    ("rank_pattern", {"c_fc": True}, r"rank_pattern\['c_fc'\]=True is a JSON boolean, not int"),
    ("rank_pattern", {"c_fc[": 2}, r"rank_pattern key 'c_fc\['=.* is not a valid regular expression"),
    ("peft_type", "NOPE", r"unknown PEFT method 'NOPE'"),
    ("peft_type", ["LORA"], r"unknown PEFT method \['LORA'\]"),
    ("r", 1000000000, r"r=1000000000 exceeds every dimension of the tensors in .*adapter_model\.safetensors \(the largest is 64\)"),
])
def test_adapter_config_fields_are_checked_before_anything_is_built(tmp_path, field, value, message):
    path = saved_adapter(tmp_path / "a", "lora")
    edit_json(path, **{field: value})
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(errors.CheckpointError, match=message) as err:
        PeftModel.from_pretrained(model, path)
    assert str(path) in str(err.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_save_pretrained_refuses_an_adapter_that_was_merged_away(method, tmp_path):
    model = get_peft_model(tiny_gpt(), METHODS[method]())
    model.merge_and_unload()
    with pytest.raises(errors.SaveError, match="no weights left"):
        model.save_pretrained(tmp_path / "a")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


# ---------------------------------------------------------------------------
# folder saves
# ---------------------------------------------------------------------------


def test_both_files_carry_one_save_id_and_a_mix_is_refused_naming_the_folder(saved_gpt, tmp_path):
    model, path = saved_gpt
    config_id = json.loads((path / "config.json").read_text())[SAVE_ID_KEY]
    assert read_header(path / "model.safetensors").metadata[SAVE_ID_KEY] == config_id
    old_config = (path / "config.json").read_bytes()
    model.save_pretrained(path)  # a second save: new id in both files
    (path / "config.json").write_bytes(old_config)  # as if killed between its two renames
    with pytest.raises(errors.InterruptedSaveError, match=rf"{re.escape(str(path))} holds files from two different saves"):
        GPT.from_pretrained(path)
    # weights without an id (PEFT, transformers, safetensors by hand) are not bound: accepted
    save_file(load_file(path / "model.safetensors"), path / "model.safetensors", metadata={"format": "pt"})
    GPT.from_pretrained(path)


def test_a_save_leaves_other_files_alone_and_removes_its_own_leftovers(saved_gpt):
    model, path = saved_gpt
    (path / "README.md").write_text("mine")
    (path / "training-checkpoint.safetensors").write_bytes(b"not ours")
    leftovers = [path / ".model.safetensors.abc123.tmp", path / ".config.json.xyz.tmp"]
    for f in leftovers:
        f.write_bytes(b"half a save")
    (path / ".other.tmp").write_bytes(b"not a leftover of this save")
    model.save_pretrained(path)
    assert sorted(p.name for p in path.iterdir()) == [".other.tmp", "README.md", "config.json", "model.safetensors",
                                                     "training-checkpoint.safetensors"]
    assert (path / "README.md").read_text() == "mine"


def test_save_folder_refuses_nan_in_the_config_before_writing(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        save_folder(tmp_path / "f", "c.json", {"x": float("nan")}, "w.safetensors", {"w": np.ones(2, np.float32)})
    assert not (tmp_path / "f").exists()


# ---------------------------------------------------------------------------
# corpus caches
# ---------------------------------------------------------------------------


def test_a_damaged_corpus_cache_is_refused_before_numpy_allocates(tmp_path):
    import zipfile

    from minilora import data

    train, val = np.frombuffer(b"hello world", np.uint8).copy(), np.frombuffer(b"bye", np.uint8).copy()
    corpus = data.Corpus("code", train, val, data.corpus_sha256(train, val), {"n": 1})
    data.save_corpus(corpus, tmp_path / "c.npz")
    assert data.load_corpus(tmp_path / "c.npz").sha256 == corpus.sha256
    raw = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(errors.WeightsError, match=r"cut\.npz is corrupt"):
        data.load_corpus(tmp_path / "cut.npz")
    os.mkfifo(tmp_path / "pipe.npz")
    with pytest.raises(errors.NotRegularFileError, match=r"pipe\.npz is not a regular file"):
        data.load_corpus(tmp_path / "pipe.npz")
    with zipfile.ZipFile(tmp_path / "c.npz") as z, zipfile.ZipFile(tmp_path / "huge.npz", "w") as out:
        for name in z.namelist():
            out.writestr(name, z.read(name) if name != "train.npy" else _npy_with_shape((2**40,)))
    with pytest.raises(errors.WeightsError, match=r"member 'train.npy' declares shape \(1099511627776,\)"):
        data.load_corpus(tmp_path / "huge.npz")


def _npy_with_shape(shape) -> bytes:
    """A .npy file whose header declares ``shape`` of uint8 but holds 4 bytes of data."""
    import io

    from numpy.lib import format as npy

    buffer = io.BytesIO()
    npy.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})  # magic included
    return buffer.getvalue() + b"abcd"


def test_read_folder_says_which_file_is_missing_and_why(saved_gpt, tmp_path):
    from minilora.loading import read_folder

    _, path = saved_gpt
    (path / "config.json").unlink()  # as a first save killed between its renames leaves it
    with pytest.raises(errors.MissingFileError, match=r"config\.json not found .* from a minilora save that was interrupted"):
        read_folder(path, "config.json", "model.safetensors")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    (path / "config.json").write_text("{}")
    with pytest.raises(errors.MissingFileError, match=r"model\.safetensors not found \(found pytorch_model\.bin: .*pickle"):
        read_folder(path, "config.json", "model.safetensors")
    with pytest.raises(errors.MissingFileError, match="is not a folder"):
        read_folder(tmp_path / "nowhere", "config.json", "model.safetensors")


def test_a_cast_that_overflows_is_refused_as_non_finite(tmp_path):
    path = tensors_file(tmp_path / "w.safetensors", {"w": np.array([1.0, 1e6], np.float32)})
    assert load_checked(path, {"w": (2,)}, dtype=np.float64)["w"].tolist() == [1.0, 1e6]
    with pytest.raises(errors.WeightsError, match=r"'w' holds 1 non-finite values .*after the cast to float16"):
        load_checked(path, {"w": (2,)}, dtype=np.float16)
