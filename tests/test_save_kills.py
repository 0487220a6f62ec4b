"""Killing a save at any moment: the folder loads as the old save, the new one, or says it was interrupted.

A child process (``kill_child.py``) saves a model, a LoRA adapter or a training checkpoint
over and over into a folder that holds a complete save and files the save does not own
(a README, a training checkpoint beside the model); the test SIGKILLs it at a random
moment (seeded). Then the folder must load as one complete save -- every weight and the
config from the same save number -- or raise ``InterruptedSaveError`` naming the folder;
the other files must be untouched; and the next save must remove the temporaries the
killed one left. A second test kills a save deterministically between its two renames.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minilora import errors
from minilora.models import GPT
from minilora.peft import PeftModel
from minilora.train import load_checkpoint

import kill_child
from kill_child import TINY
from minilora.models import GPTConfig

CHILD = Path(__file__).with_name("kill_child.py")
ROOT = Path(__file__).resolve().parents[1]
KILLS = 24  # 8 of each kind
OWNED = {"model": ("config.json", "model.safetensors"), "adapter": ("adapter_config.json", "adapter_model.safetensors"),
         "checkpoint": ("training-checkpoint.safetensors",)}


def child(kind: str, folder: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(CHILD.parent)]), "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(CHILD), kind, str(folder), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def prepare(kind: str, folder: Path) -> dict:
    """A folder with save number 0 of ``kind`` and two files the save does not own; their bytes."""
    folder.mkdir(parents=True)
    kill_child.save(kind, str(folder), 0, kill_child.version(kind, 0))
    (folder / "README.md").write_text("the user's notes\n")
    if kind != "checkpoint":
        (folder / "training-checkpoint.safetensors").write_bytes(b"a checkpoint this save does not own")
    return {name: (folder / name).read_bytes() for name in ("README.md", "training-checkpoint.safetensors")
            if kind != "checkpoint" or name == "README.md"}


def load(kind: str, folder: Path) -> int:
    """The save number the folder holds, after checking that every file comes from that save."""
    if kind == "model":
        model = GPT.from_pretrained(folder)
        values = {float(v) for p in model.parameters() for v in np.unique(p.data)}
        k = round(values.pop() * 1000)
        assert not values, "weights from different saves in one file"
        assert model.config.dropout == (k % 500) / 1000, "config.json and model.safetensors from different saves"
        return k
    if kind == "adapter":
        model = PeftModel.from_pretrained(GPT(GPTConfig(**TINY), dtype=np.float32), folder)
        values = {float(v) for n, p in model.named_parameters() if "lora_" in n for v in np.unique(p.data)}
        k = round(values.pop() * 1000)
        assert not values, "weights from different saves in one file"
        assert model.peft_config["default"].lora_alpha == k, "adapter_config.json and its weights from different saves"
        return k
    model = GPT(GPTConfig(**TINY), dtype=np.float32)
    meta = load_checkpoint(model, folder / "training-checkpoint.safetensors")
    assert {float(v) for p in model.parameters() for v in np.unique(p.data)} == {float(np.float32(meta["version"] / 1000))}
    return meta["version"]


def leftovers(folder: Path, kind: str) -> list:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp") and any(n.startswith(f".{o}.") for o in OWNED[kind]))


def save_again(kind: str, folder: Path) -> None:
    kill_child.save(kind, str(folder), 7, kill_child.version(kind, 7))


def test_a_save_killed_at_random_moments_never_leaves_a_silent_mix(tmp_path):
    rng = random.Random(14)
    outcomes = []
    for i in range(KILLS):
        kind = ("model", "adapter", "checkpoint")[i % 3]
        folder = tmp_path / f"{i:02d}-{kind}"
        others = prepare(kind, folder)
        proc = child(kind, folder, "loop")
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        try:
            outcome = load(kind, folder)
        except errors.InterruptedSaveError as err:
            assert str(folder) in str(err)
            outcome = "interrupted"
        outcomes.append((kind, outcome, len(leftovers(folder, kind))))
        assert {name: (folder / name).read_bytes() for name in others} == others, "a file the save does not own changed"
        save_again(kind, folder)
        assert leftovers(folder, kind) == [], "the next save left the killed save's temporaries"
        assert load(kind, folder) == 7
        assert {name: (folder / name).read_bytes() for name in others} == others
    print("kills (kind, save loaded or 'interrupted', temporaries left):", outcomes)
    assert any(k not in (0, "interrupted") for _, k, _ in outcomes), "no kill landed after a save finished"


@pytest.mark.parametrize("kind", ["model", "adapter"])
def test_a_save_killed_between_its_two_renames_is_reported_as_interrupted(kind, tmp_path):
    folder = tmp_path / kind
    others = prepare(kind, folder)
    proc = child(kind, folder, "between")
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    with pytest.raises(errors.InterruptedSaveError, match=rf"{folder} holds files from two different saves.*interrupted"):
        load(kind, folder)
    assert leftovers(folder, kind)  # the config's temporary, never renamed
    save_again(kind, folder)
    assert leftovers(folder, kind) == [] and load(kind, folder) == 7
    assert {name: (folder / name).read_bytes() for name in others} == others
