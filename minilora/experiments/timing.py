"""Timing on a shared machine: how many threads NumPy's BLAS may use, and which clock.

NumPy's matrix products run in OpenBLAS (or MKL, or Accelerate), which starts one
thread per core. On a machine that other processes also load, those threads wait
on each other: here, a training step of a small GPT took 3-7x longer with two
BLAS threads than with one, and full fine-tuning and LoRA came out equally slow --
the timing measured the machine's load, not the work. The speed and inference
claims therefore time with one BLAS thread (``blas_threads(1)``), which keeps the
*ratios* between variants meaningful; absolute times are those of one core.

With one thread, the process's CPU time (``time.process_time``) is the time the work
takes on a core of its own, and other processes cannot inflate it -- a wall clock
counts every moment the scheduler gave our core away. Here, a forward pass of the
base model took 52 ms by the wall clock (median; min 24) and 16.5 ms of CPU, and
two copies of one model differed by 4% on the first, 0.6% on the second.
``clock(how)`` picks the CPU clock when the limit to one thread took effect.

``no_gc`` turns Python's cyclic garbage collector off while timing, as ``timeit``
does: its pauses land in whichever call happens to cross its allocation threshold.

``blas_threads`` sets the limit with ``threadpoolctl``, which finds the BLAS NumPy loaded
(OpenBLAS, MKL or Accelerate) and calls its own thread-count function.

On a GPU (the 'cupy' backend) a call returns as soon as its kernels are queued, so a clock
read right after it times the queueing, and the work is charged to whatever the clock times
next. ``now()`` waits for the device first (``backend.synchronize``, which waits for every
stream of the device -- PyTorch's too); ``clock`` hands it out there. Every claim that times
and ``make bench`` read their clocks through this module.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager

from minilora import backend


def now() -> float:
    """Seconds on the wall clock, read once the device has finished the work queued so far
    (on the CPU there is nothing to wait for)."""
    backend.synchronize()
    return time.perf_counter()


@contextmanager
def blas_threads(n: int | None):
    """Run the block with NumPy's BLAS limited to ``n`` threads (``None``: leave it as it is).
    Yields how the limit was applied: "threadpoolctl", or None for no limit."""
    if n is None:
        yield None
        return
    import numpy  # noqa: F401  (NumPy's BLAS must be loaded for threadpoolctl to find it)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield "threadpoolctl"


def clock(how=None, threads: int | None = None):
    """The clock to time with inside ``blas_threads(threads)`` (``how`` is what it yielded), and
    its name for the report: on a GPU the wall clock after a device sync (``now``); on the CPU
    the process's CPU time when BLAS is held to one thread, else the wall clock."""
    if backend.get_backend() == "cupy":
        return now, f"wall clock after a device sync, on the {backend.device_name()}"
    if how is not None and threads == 1:
        return time.process_time, "process CPU time (BLAS on one thread), on the CPU"
    return time.perf_counter, "wall clock, on the CPU"


@contextmanager
def no_gc():
    """Python's cyclic garbage collector off inside the block (collected once before). Nothing
    is collected inside: with torch imported a collection takes a good part of a second, and
    minilora's graphs hold no reference cycles, so reference counting frees them anyway."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
