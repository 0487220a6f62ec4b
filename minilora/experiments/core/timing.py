"""Timing on a shared machine: how many threads NumPy's BLAS may use, which clock, and how
variants are timed side by side.

NumPy's matrix products run in OpenBLAS (or MKL, or Accelerate), which starts one
thread per core. On a machine that other processes also load, those threads wait
on each other: here, a training step of a small GPT took 3-7x longer with two
BLAS threads than with one, and full fine-tuning and LoRA came out equally slow --
the timing measured the machine's load, not the work. The claims that time therefore
time with one BLAS thread (``blas_threads(1)``), which keeps the *ratios* between
variants meaningful; absolute times are those of one core.

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

Every time a claim reports is measured in the process that writes it, variants interleaved
so that they share the machine's noise: ``time_steps`` for training steps, ``time_rounds``
for any calls (forward passes, generation). A run read back from the run cache brings no
time with it (``minilora.experiments.runs.cache``).
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager

import numpy as np

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


def time_steps(runs: dict, repeats: int = 5, warmup: int = 1, threads: int | None = 1) -> dict:
    """Seconds of one AdamW training step of each of ``runs`` (``{name: (model, trained parameters,
    loss_fn)}``), alternated so that they share the machine's noise.

    After ``warmup`` steps of each, ``repeats`` rounds each time one step of every run, the order
    reversed every other round (full then LoRA, then LoRA then full). Returns ``repeats``,
    ``blas_threads``, ``clock``, per name the medians of ``step``, ``forward``, ``backward``,
    ``optimizer`` (and every ``steps``), and ``ratio``: the second name's median step over the
    first's (LoRA's over full fine-tuning's). BLAS runs on ``threads`` threads, and with one
    thread the clock is the process's CPU time."""
    from minilora.optim import AdamW

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    runs = {name: (model, AdamW(params, lr=1e-4), loss_fn) for name, (model, params, loss_fn) in runs.items()}
    names = list(runs)
    times = {name: [] for name in runs}

    def one_step(name):
        model, optimizer, loss_fn = runs[name]
        t0 = now()
        optimizer.zero_grad()
        loss = loss_fn()
        t1 = now()
        loss.backward()
        t2 = now()
        optimizer.step()
        t3 = now()
        return t1 - t0, t2 - t1, t3 - t2

    with blas_threads(threads) as how, no_gc():
        now, clock_name = clock(how, threads)
        for _ in range(warmup):
            for name in names:
                one_step(name)
        for i in range(repeats):
            for name in (names if i % 2 == 0 else names[::-1]):
                times[name].append(one_step(name))
    out = {"repeats": repeats, "blas_threads": threads if how else "not controlled", "clock": clock_name}
    for name, rows in times.items():
        rows = np.asarray(rows)  # (repeats, 3)
        out[name] = {"step": float(np.median(rows.sum(axis=1))), "forward": float(np.median(rows[:, 0])),
                     "backward": float(np.median(rows[:, 1])), "optimizer": float(np.median(rows[:, 2])),
                     "steps": rows.sum(axis=1).tolist()}
    out["ratio"] = out[names[1]]["step"] / out[names[0]]["step"]
    return out


def time_rounds(variants: dict, tasks: dict, repeats: int, threads: int | None = 1) -> dict:
    """Median seconds of each task (``{setting: task(model)}``) on each of ``variants`` (``{name: model}``,
    the first the reference, "base"), interleaved.

    One untimed warm-up of every variant first (caches, first-touch allocations); then ``repeats``
    rounds, each running every variant once in an order rotated by one each round. Returns
    ``{setting: {variant: median seconds, "<variant>/<first>": the median over rounds of that round's
    ratio, "repeats", "clock", "rounds": {variant: seconds in each round}}}`` -- a round's variants ran
    moments apart, so a slow spell of the machine slows them all and cancels out of the ratio; the rounds
    are kept for the ratios' intervals (``core.intervals.round_ratio_replicates``: whole rounds resampled)."""
    from minilora.tensor import no_grad

    names = list(variants)
    out = {}
    with no_grad(), blas_threads(threads) as how, no_gc():
        now, clock_name = clock(how, threads)
        for setting, task in tasks.items():
            for name in names:
                task(variants[name])
            times = {name: [] for name in names}
            for i in range(repeats):
                for name in names[i % len(names):] + names[: i % len(names)]:
                    t0 = now()
                    task(variants[name])
                    times[name].append(now() - t0)
            medians = {name: float(np.median(t)) for name, t in times.items()}
            paired = {f"{name}/{names[0]}": float(np.median(np.divide(times[name], times[names[0]]))) for name in names[1:]}
            out[setting] = {**medians, **paired, "repeats": repeats, "clock": clock_name, "rounds": times}
    return out
