"""The backend seam: the one place where minilora chooses its array module.

Everything above this file -- the engine, the layers, the optimizers -- calls
``backend.xp.<function>`` (an array namespace with NumPy's API) and never
``numpy.<function>`` on data that could live on a GPU. Swapping NumPy for CuPy
is therefore one assignment here, as in DeZero and needle.

    >>> import minilora
    >>> minilora.set_backend("numpy")      # the default
    >>> minilora.set_backend("cupy")       # needs a CUDA GPU and `pip install minilora[gpu]`

The environment variable ``MINILORA_BACKEND`` picks the backend at import time.
Random numbers come from one seeded generator of the active backend
(``minilora.manual_seed``), so a run is reproducible on either backend.
"""

from __future__ import annotations

import importlib
import os
import types

import numpy

KNOWN_BACKENDS = ("numpy", "cupy")

# The active array namespace. Read it as ``backend.xp`` at call time (never
# ``from minilora.backend import xp``), so that set_backend() reaches every caller.
xp: types.ModuleType = numpy
name: str = "numpy"

# float32 is the default, as in PyTorch; float64 only when asked for.
default_float = numpy.float32

_seed = 0
_rng = numpy.random.default_rng(_seed)


def set_backend(backend: str | types.ModuleType) -> None:
    """Choose the array module: ``"numpy"`` or ``"cupy"``.

    A module object is accepted as well; the test suite uses that to run the
    engine on a stand-in namespace and prove that no code bypasses the seam.
    """
    global xp, name
    if isinstance(backend, types.ModuleType):
        xp, name = backend, getattr(backend, "__name__", "custom")
    elif backend == "numpy":
        xp, name = numpy, "numpy"
    elif backend == "cupy":
        try:
            module = importlib.import_module("cupy")
            module.cuda.runtime.getDeviceCount()
        except Exception as err:  # ImportError, or CuPy present without a usable GPU
            raise RuntimeError(
                f"the 'cupy' backend needs CuPy and a CUDA GPU, and could not start: {err}"
            ) from err
        xp, name = module, "cupy"
    else:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(KNOWN_BACKENDS)}")
    manual_seed(_seed)


def get_backend() -> str:
    """The name of the active backend: ``"numpy"`` or ``"cupy"``."""
    return name


def manual_seed(seed: int) -> None:
    """Seed the generator that every random initialisation and dropout mask draws from."""
    global _seed, _rng
    _seed = int(seed)
    _rng = xp.random.default_rng(_seed)


def rng():
    """The backend's seeded generator (``numpy.random.Generator`` or CuPy's twin)."""
    return _rng


def to_numpy(array) -> numpy.ndarray:
    """Bring an array to the host as a NumPy array (a no-op on the NumPy backend)."""
    if isinstance(array, numpy.ndarray):
        return array
    if hasattr(array, "get"):  # CuPy
        return array.get()
    return numpy.asarray(array)


def scatter_add(target, index, values) -> None:
    """``target[index] += values``, adding repeated indices (the backward of gathering)."""
    if name == "cupy":
        importlib.import_module("cupyx").scatter_add(target, index, values)
    else:
        xp.add.at(target, index, values)


# ---------------------------------------------------------------------------
# elementwise work on every core
# ---------------------------------------------------------------------------
# NumPy's matrix products run on all cores (its BLAS is threaded), but its
# elementwise functions -- tanh, exp, +, * -- run on one. PyTorch runs both on all
# cores. NumPy releases Python's lock inside a ufunc, so a fused op can split its
# arrays into contiguous chunks and run one chunk per thread: that is all
# ``parallel_for`` does. (On CuPy the GPU is parallel already: one call.)

_pool = None
MIN_CHUNK = 1 << 16  # elements; below this, starting threads costs more than it saves


def num_threads() -> int:
    """Threads for elementwise work: ``MINILORA_NUM_THREADS``, else the cores this process may use."""
    env = os.environ.get("MINILORA_NUM_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parallel_for(n: int, kernel, row_size: int = 1) -> None:
    """Call ``kernel(start, stop)`` over ``[0, n)`` in contiguous chunks, one per thread.

    The kernel must touch only its own chunk of each array (elementwise work,
    or rows of a row-wise op), so the chunks never race. ``row_size``: elements
    per unit of ``n`` (the row length for a row-wise op), to judge the work.
    """
    global _pool
    threads = min(num_threads(), n * row_size // MIN_CHUNK, n)
    if name != "numpy" or threads <= 1:
        kernel(0, n)
        return
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=num_threads() - 1, thread_name_prefix="minilora")
    bounds = [n * i // threads for i in range(threads + 1)]
    futures = [_pool.submit(kernel, bounds[i], bounds[i + 1]) for i in range(1, threads)]
    kernel(bounds[0], bounds[1])  # this thread takes the first chunk
    for f in futures:
        f.result()


_env = os.environ.get("MINILORA_BACKEND")
if _env:
    set_backend(_env)
