"""Where a figure came from: the code that measured it, the library versions, the machine and its load.

``code_sha256()`` hashes the source of the ``minilora`` package (every ``.py`` file, by path and
content): the run cache keys runs by it, so a run trained by other code is never read back.
``git_state()`` names the commit and whether the tree had changes: the committed report is made
from a clean tree at one commit (docs/claims.md says how to regenerate it).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import minilora

PACKAGE = Path(minilora.__file__).resolve().parent
LIBRARIES = ("numpy", "torch", "peft", "transformers")


@functools.lru_cache(maxsize=1)
def code_sha256() -> str:
    """sha256 over every ``.py`` file of the minilora package, each as its path and its bytes."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def versions() -> dict:
    """The installed versions of the libraries a run's figures depend on (None: not installed); read from
    the installed packages' metadata, without importing them."""
    out = {"minilora": minilora.__version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """``{"commit": ..., "clean": bool}`` of the repository the package sits in; Nones when it is not in one."""
    def git(*args):
        return subprocess.run(["git", "-C", str(PACKAGE), *args], capture_output=True, text=True, timeout=30, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        clean = not git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "clean": None}
    return {"commit": commit, "clean": clean}


def machine() -> dict:
    """The machine now: its CPUs, and its load (the 1-minute load average: other processes share the cores)."""
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "load": load}


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
