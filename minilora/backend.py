"""The backend seam: the one place where minilora chooses its array module.

Everything above this file -- the engine, the layers, the optimizers -- calls
``backend.xp.<function>`` (an array namespace with NumPy's API) and never
``numpy.<function>`` on data that could live on a GPU. Swapping NumPy for CuPy
is therefore one assignment here, as in DeZero and needle.

    >>> import minilora
    >>> minilora.set_backend("numpy")      # the default
    >>> minilora.set_backend("cupy")       # needs a CUDA GPU and `pip install minilora[gpu-cuda12]` (or -cuda13)

The environment variable ``MINILORA_BACKEND`` picks the backend at import time.
Random numbers come from one seeded generator of the active backend
(``minilora.manual_seed``), so a run is reproducible on either backend.

On a GPU, work is queued and the host runs ahead; it waits (a *sync*) only when it reads
a value: ``float(x)``, ``bool(x)``, ``x.item()``, ``to_numpy(x)``. So results cross to the
host in one place each -- ``to_numpy`` -- and clocks read the time after ``synchronize()``.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import types
from contextlib import contextmanager

import numpy

KNOWN_BACKENDS = ("numpy", "cupy")
# CuPy 14 is the first with put_along_axis, which the backward of max/min uses (tensor.py)
MIN_CUPY = (14, 0)

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
        _check_cupy_version(module.__version__)
        xp, name = module, "cupy"
    else:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(KNOWN_BACKENDS)}")
    manual_seed(_seed)


def _check_cupy_version(version: str) -> None:
    """Refuse a CuPy older than ``MIN_CUPY``, naming the version found and the wheels to install."""
    found = tuple(int(re.match(r"\d*", piece).group() or 0) for piece in version.split(".")[:2])  # "14.0.0rc1" -> (14, 0)
    if found < MIN_CUPY:
        need = ".".join(map(str, MIN_CUPY))
        raise RuntimeError(
            f"the 'cupy' backend needs CuPy >= {need} (minilora uses cupy.put_along_axis, new in CuPy 14), "
            f"found CuPy {version}; install the wheel for your CUDA: pip install 'minilora[gpu-cuda12]' "
            "or 'minilora[gpu-cuda13]'"
        )


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
    """Bring an array to the host as a NumPy array (a no-op on the NumPy backend; on a GPU a
    device-to-host copy, and the host waits for the device to get there)."""
    if isinstance(array, numpy.ndarray):
        return array
    if hasattr(array, "get"):  # CuPy
        return array.get()
    return numpy.asarray(array)


def read_scalars(*arrays) -> list:
    """0-d arrays as Python floats, brought to the host together: one sync on a GPU, not one each."""
    return [float(v) for v in to_numpy(xp.stack([xp.asarray(a, dtype=numpy.float64) for a in arrays]))]


def is_device_array(value) -> bool:
    """True for an array that lives on a GPU (CuPy's), which the host cannot read without ``to_numpy``."""
    return name == "cupy" and isinstance(value, xp.ndarray)


def synchronize() -> None:
    """Wait until the device has finished the work queued so far (nothing to wait for on NumPy).
    A clock read after this counts the work; read without it, only the time to queue it."""
    if name == "cupy":
        xp.cuda.Device().synchronize()


def device_name() -> str:
    """What arrays live on: "CPU (NumPy)", or the GPU's name and CuPy's version."""
    if name == "numpy":
        return "CPU (NumPy)"
    if name == "cupy":
        gpu = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)["name"]
        gpu = gpu.decode() if isinstance(gpu, bytes) else str(gpu)
        return f"GPU {gpu} (CuPy {xp.__version__})"
    return f"{name} (a custom array module)"


def scatter_add(target, index, values) -> None:
    """``target[index] += values``, adding repeated indices (the backward of gathering)."""
    if name == "cupy":
        importlib.import_module("cupyx").scatter_add(target, index, values)
    else:
        xp.add.at(target, index, values)


# ---------------------------------------------------------------------------
# elementwise work: in cache-sized blocks, on every core
# ---------------------------------------------------------------------------
# A fused op such as GELU is ten NumPy passes over arrays of millions of floats.
# Two things make that slow, and ``parallel_for`` addresses both:
#
# * memory traffic: each pass streams the whole array from RAM and back. Run all
#   ten passes on a block of ~64K elements instead, and the block stays in the
#   CPU's cache between passes (here: 24 ms -> 14.5 ms for GELU on 3M floats);
# * one core: NumPy's elementwise functions run on one core, while its BLAS (and
#   PyTorch) use all of them. NumPy releases Python's lock inside a ufunc, so
#   threads working on different blocks really run in parallel.
#
# On CuPy the GPU is parallel already, and there is no CPU cache to block for: one call.

_pool = None
BLOCK = 1 << 16  # elements per kernel call: 3-4 such float32 arrays fit in a core's L2 cache


@functools.cache
def num_threads() -> int:
    """Threads for elementwise work: ``MINILORA_NUM_THREADS``, else the
    cores this process may use. Read once, at first use (the thread pool is sized by it)."""
    env = os.environ.get("MINILORA_NUM_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parallel_for(n: int, kernel, row_size: int = 1) -> None:
    """Call ``kernel(start, stop)`` on blocks of ``[0, n)`` that together cover it once.

    The kernel must touch only its own block of each array (elementwise work, or
    rows of a row-wise op: then ``row_size`` is the row length, so that a block
    holds about ``BLOCK`` elements), so blocks never race. Threads take
    contiguous runs of blocks.
    """
    global _pool
    if name != "numpy":
        kernel(0, n)
        return
    step = max(1, BLOCK // max(1, row_size))
    blocks = [(a, min(a + step, n)) for a in range(0, n, step)]
    threads = min(num_threads(), len(blocks))

    def run(first, last):
        for a, b in blocks[first:last]:
            kernel(a, b)

    if threads <= 1:
        run(0, len(blocks))
        return
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=num_threads() - 1, thread_name_prefix="minilora")
    bounds = [len(blocks) * i // threads for i in range(threads + 1)]
    futures = [_pool.submit(run, bounds[i], bounds[i + 1]) for i in range(1, threads)]
    run(bounds[0], bounds[1])  # this thread takes the first run of blocks
    for f in futures:
        f.result()


_blas = None


@contextmanager
def blas_single_threaded():
    """NumPy's BLAS on one thread inside the block, for many small matrix products run from
    ``parallel_for``'s threads: a thread per product beats BLAS splitting each tiny one
    across cores (and keeps working when another process loads the machine)."""
    global _blas
    if name != "numpy":
        yield
        return
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    with _blas.limit(limits=1, user_api="blas"):
        yield


# ---------------------------------------------------------------------------
# the allocator: keep freed memory for the next step
# ---------------------------------------------------------------------------
# A training step allocates its activations and gradients afresh (tens of MB) and
# frees them at the end. glibc's malloc hands large blocks back to the kernel when
# they are freed (munmap, or trimming the heap), so the next step gets new pages:
# a page fault and the kernel zeroing 4 KiB for every page it touches. On the
# base model that was 17,000 faults and about 18% of a step's time. Telling malloc
# to serve blocks up to 32 MiB from its heap, and to shrink the heap only when a
# GiB lies free at its top, keeps the memory for reuse -- what PyTorch's caching
# allocator does on a GPU. The cost: the process keeps (up to a GiB more than)
# what it needs at its peak. MINILORA_KEEP_FREED_MEMORY=0 turns it off.

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks (up to 32 MiB each) for reuse; True if it took.
    Does nothing elsewhere (macOS, Windows, musl)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1  # 32 MiB: glibc's largest
    ok &= mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1  # trim only when 1 GiB lies free at the top
    ok &= mallopt(_M_TOP_PAD, 64 << 20) == 1  # grow the heap 64 MiB at a time
    return bool(ok)


if os.environ.get("MINILORA_KEEP_FREED_MEMORY", "1") != "0" and os.name == "posix":
    keep_freed_memory()

_env = os.environ.get("MINILORA_BACKEND")
if _env:
    set_backend(_env)
