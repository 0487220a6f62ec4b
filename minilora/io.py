"""Writing files so that a crash never leaves a half-written one, nor a folder mixing two saves.

Every file minilora writes -- checkpoints, adapters, corpus caches -- goes through
``write_atomically``: each new file is written in full to a temporary name in
its target folder (``.<name>.<random>.tmp``) and flushed to disk, and only then
renamed over the old one (a rename within a folder is atomic). An error at any
point removes the temporaries and leaves what was on disk untouched; temporaries
left by a save that was killed are removed by the next save of the same file.

A folder save (a config and its weights: ``save_folder``) is two renames, and Linux
cannot swap a non-empty folder atomically, so a kill between them would leave a new
file beside an old one. Both files therefore carry one random *save id* -- in the
JSON under ``minilora_save_id``, in the safetensors metadata under the same key --
and the weights are renamed into place first, the config second. The loaders compare
the ids (``minilora.loading.check_same_save``): the same id is one save; weights whose
id the config does not carry are an interrupted save, reported as
``InterruptedSaveError`` naming the folder; weights without an id were written by
another tool (PEFT, transformers, safetensors by hand), accepted. Files the save does
not write are never touched.
See docs/files.md.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

SAVE_ID_KEY = "minilora_save_id"


def remove_leftovers(target: Path) -> None:
    """Delete the temporaries of earlier, killed saves of ``target`` (``.<name>.*.tmp`` beside it)."""
    prefix = f".{target.name}."
    try:
        names = os.listdir(target.parent)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp"):
            try:
                os.unlink(target.parent / name)
            except FileNotFoundError:
                pass


def _stage(target: Path, write) -> str:
    """Write ``target``'s new content to a temporary file beside it, flushed to disk; return its path."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it an ordinary file's mode
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_atomically(files: dict) -> None:
    """``{path: write}``: call each ``write(tmp_path)``, then rename every finished file into place.

    Renames happen only after all files are written, so a set of files (a config
    and its weights) is replaced together or not at all.
    """
    staged = []
    try:
        for path, write in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_leftovers(path)
            staged.append((_stage(path, write), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def atomic_write(path, write) -> None:
    """One file: ``write(tmp_path)``, then rename it over ``path``."""
    write_atomically({path: write})


def save_folder(folder, config_name: str, config: dict, weights_name: str, tensors: dict, metadata: dict | None = None) -> str:
    """Write ``config`` (JSON) and ``tensors`` (safetensors) into ``folder``, bound by a fresh save id; return it.

    The weights are renamed into place first, then the config; the module docstring
    says what a load sees if the save is killed in between."""
    from safetensors.numpy import save_file

    save_id = uuid.uuid4().hex
    text = json.dumps({**config, SAVE_ID_KEY: save_id}, indent=2, sort_keys=True, allow_nan=False) + "\n"
    meta = {"format": "pt", **(metadata or {}), SAVE_ID_KEY: save_id}
    folder = Path(folder)
    write_atomically({
        folder / weights_name: lambda tmp: save_file(tensors, tmp, metadata=meta),
        folder / config_name: lambda tmp: Path(tmp).write_text(text),
    })
    return save_id
