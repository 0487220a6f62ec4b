"""CuPy for the tests of minilora's CuPy branch: the real one where it is installed, else the stand-in.

The stand-in (``tests/fake_cupy``: NumPy inside, CuPy's interface and strictness outside,
syncs and copies counted) goes first on ``sys.path`` only when no real CuPy can be imported
-- it must never shadow one. With it, ``set_backend("cupy")`` and ``MINILORA_BACKEND=cupy``
run the project's real CuPy branch on a CPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_CUPY = Path(__file__).resolve().parent / "fake_cupy"

# checked once, before the stand-in could be on the path
REAL_CUPY = importlib.util.find_spec("cupy") is not None


def import_cupy():
    """The CuPy module the tests use, and whether it is the stand-in. With a real CuPy and no
    usable GPU, raises RuntimeError saying why (the tests skip with it)."""
    if REAL_CUPY:
        import cupy

        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as err:  # CuPy without a driver or a device
            raise RuntimeError(f"CuPy is installed but cannot reach a GPU: {err}") from err
        if count == 0:
            raise RuntimeError("CuPy is installed but finds no CUDA device")
        return cupy, False
    if str(FAKE_CUPY) not in sys.path:
        sys.path.insert(0, str(FAKE_CUPY))
    return importlib.import_module("cupy"), True


def remove_standin() -> None:
    """Take the stand-in off the path and out of ``sys.modules`` (the end of the test session)."""
    if str(FAKE_CUPY) in sys.path:
        sys.path.remove(str(FAKE_CUPY))
    for name in [m for m in sys.modules if m.split(".")[0] in ("cupy", "cupyx")]:
        if str(FAKE_CUPY) in (getattr(sys.modules[name], "__file__", None) or ""):
            del sys.modules[name]


def subprocess_env(**extra) -> dict:
    """The environment of a child process that runs minilora on CuPy: the stand-in first on
    PYTHONPATH unless a real CuPy is installed, the repository next, MINILORA_BACKEND=cupy."""
    paths = ([] if REAL_CUPY else [str(FAKE_CUPY)]) + [str(ROOT)]
    inherited = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([inherited] if inherited else [])),
            "MINILORA_BACKEND": "cupy", **extra}
