"""Writing files so that a crash never leaves a half-written one.

Every file minilora writes -- checkpoints, adapters, corpus caches -- goes through
``write_atomically``: each new file is written in full to a temporary name in
its target folder and flushed to disk, and only then renamed over the old one
(a rename within a folder is atomic). An error at any point removes the
temporaries and leaves what was on disk untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
