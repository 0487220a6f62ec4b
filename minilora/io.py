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

A command's output folder (``--out`` of ``verify``, ``pretrain`` ...) is held to a stricter
rule, since the user names it: minilora writes only into a folder that is new, empty, or
marked as an earlier output of the same command (``OUTPUT_MARKER``), and refuses anything
else -- naming the folder, touching nothing. ``replacing_output_folder`` writes a whole new
output beside the old one and swaps it in at the end (a report); ``claim_output_folder``
marks a folder that a command then fills as it goes (a resumable run).
See docs/files.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from minilora.errors import LoadError, OutputFolderError
from minilora.loading import SAVE_ID_KEY, read_config  # reading is below writing: the save id is checked there


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it an ordinary file's mode
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


# ---------------------------------------------------------------------------
# output folders: where a command's --out may write
# ---------------------------------------------------------------------------

OUTPUT_MARKER = ".minilora-output.json"  # in each folder a command wrote: {"kind": "verify report", ...}
_LEFTOVERS = (".partial-", ".old-")  # .<name>.partial-<pid>-<random>: a run's staging; .old-: the output it replaces


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_kind(folder) -> str | None:
    """The kind of output the marker in ``folder`` records ("verify report", ...), or None if it has
    none (or one that is not a readable marker: then the folder is not provably ours)."""
    marker = Path(folder) / OUTPUT_MARKER
    if not os.path.lexists(marker):
        return None
    try:
        kind = read_config(marker, "an output marker", max_bytes=4096).get("kind")
    except LoadError:
        return None
    return kind if isinstance(kind, str) else None


def check_output_folder(out, kind: str) -> Path:
    """``out`` as an absolute path, if a command writing a ``kind`` may write there: a folder that
    does not exist yet, an empty folder, or one whose marker says it holds an earlier ``kind``.
    Anything else is an ``OutputFolderError`` naming the folder; nothing is created or changed."""
    out = Path(out).expanduser().absolute()
    out = out.parent.resolve() / out.name if out.name not in ("", ".", "..") else out.resolve()
    if not os.path.lexists(out):
        return out
    if not out.is_dir():
        raise OutputFolderError(f"{out} is a file, not a folder; the {kind} goes into a folder: name a new or empty one")
    if not any(os.scandir(out)):
        return out
    found = output_kind(out)
    if found == kind:
        return out
    why = (f"it holds minilora's {found}, not a {kind}" if found else
           f"it is not empty, and holds no earlier {kind} of minilora's (no {OUTPUT_MARKER} in it)")
    raise OutputFolderError(f"refusing to write a {kind} into {out}: {why}. Nothing was changed; "
                            f"name a new or empty folder")


def _write_marker(folder: Path, kind: str) -> None:
    from minilora import __version__

    text = json.dumps({"kind": kind, "minilora": __version__}) + "\n"
    atomic_write(folder / OUTPUT_MARKER, lambda tmp: Path(tmp).write_text(text))


def claim_output_folder(out, kind: str) -> Path:
    """Check ``out`` (``check_output_folder``), create it (and its parents; modes from the umask) and
    mark it as a ``kind``; return its absolute path. For a command that fills the folder as it goes
    and may be resumed from what it left there (``minilora pretrain``): each file it writes is
    written atomically (``atomic_write``)."""
    out = check_output_folder(out, kind)
    out.mkdir(parents=True, exist_ok=True)
    if output_kind(out) != kind:
        _write_marker(out, kind)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_output_leftovers(out: Path, kind: str) -> list:
    """Delete what killed runs left beside ``out``: ``.<name>.partial-<pid>-*`` (a run's unfinished
    output) and ``.<name>.old-<pid>-*`` (the output it was replacing), each only if it is marked as a
    ``kind`` (or empty) and its process is gone. Returns the paths removed."""
    removed = []
    try:
        entries = list(os.scandir(out.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        for tag in _LEFTOVERS:
            head = f".{out.name}{tag}"
            if not entry.name.startswith(head):
                continue
            pid = entry.name[len(head):].partition("-")[0]
            if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
                continue  # not one of ours, or a run still going
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False) and (not any(os.scandir(path)) or output_kind(path) == kind):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


@contextmanager
def replacing_output_folder(out, kind: str):
    """Write a ``kind`` (a report, an export) into ``out`` as one piece::

        with replacing_output_folder("verify-report", "verify report") as tmp:
            (tmp / "README.md").write_text(...)       # everything goes into tmp

    ``out`` is checked first (``check_output_folder``: new, empty, or an earlier ``kind``; else
    refused with nothing touched), and the leftovers of killed runs beside it are removed. The
    block writes into a new folder beside ``out`` (``.<name>.partial-<pid>-<random>``, marked at
    once, modes from the umask); when it ends without an error, that folder takes ``out``'s place
    (an earlier output is removed only then), and on an error it is deleted. A run killed
    outright (SIGKILL) leaves its partial folder, which the next run removes."""
    out = check_output_folder(out, kind)
    if os.path.lexists(out) and Path.cwd().resolve().is_relative_to(out.resolve()):
        raise OutputFolderError(f"refusing to replace {out}: it is the current folder (or holds it); "
                                f"run from elsewhere or name another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_output_leftovers(out, kind)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = out.with_name(f".{out.name}.partial-{tag}")
    os.mkdir(staging)  # 0o777 less the umask, as any folder the user makes
    try:
        _write_marker(staging, kind)
        yield staging
        check_output_folder(out, kind)  # again: something may have been put there while the block ran
        if os.path.lexists(out) and any(os.scandir(out)):
            old = out.with_name(f".{out.name}.old-{tag}")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)  # a rename over an empty folder is atomic
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
