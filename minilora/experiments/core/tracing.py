"""Memory, measured where the arrays live: ``tracemalloc`` on the host, a CuPy memory hook on a GPU.

``traced()`` yields a trace with ``current()``, ``peak()``, ``reset_peak()``, ``start`` and
``device``; ``traced_step(make)`` measures one AdamW training step of any model with it (the
memory claim, on every base: what a base provides is ``make``).
"""

from __future__ import annotations

import gc
import tracemalloc
from contextlib import contextmanager

from minilora import backend
from minilora.optim import AdamW


class _HostTrace:
    """What ``tracemalloc`` sees: every NumPy (and Python) allocation on the host."""

    device = "the CPU (tracemalloc: every NumPy allocation)"

    def current(self) -> int:
        return tracemalloc.get_traced_memory()[0]

    def peak(self) -> int:
        return tracemalloc.get_traced_memory()[1]

    def reset_peak(self) -> None:
        tracemalloc.reset_peak()


def _device_trace():
    """A CuPy memory hook that keeps what the pool does not: the bytes of the arrays allocated
    while it is registered (as CuPy's pool rounds them, to 512) and their peak. Like
    tracemalloc, it counts only what was allocated inside, and frees of those alone."""
    import cupy

    class DeviceTrace(cupy.cuda.MemoryHook):
        name = "minilora.traced"
        device = f"the {backend.device_name()} (CuPy's memory pool, through a memory hook)"

        def __init__(self):
            self._live, self._bytes, self._peak = {}, 0, 0  # pointer -> bytes; their sum; its peak

        def malloc_postprocess(self, **kw):
            if kw.get("mem_ptr"):
                self._live[kw["mem_ptr"]] = kw["mem_size"]
                self._bytes += kw["mem_size"]
                self._peak = max(self._peak, self._bytes)

        def free_postprocess(self, **kw):
            self._bytes -= self._live.pop(kw.get("mem_ptr"), 0)

        def current(self) -> int:
            return self._bytes

        def peak(self) -> int:
            return self._peak

        def reset_peak(self) -> None:
            self._peak = self._bytes

    return DeviceTrace()


@contextmanager
def traced():
    """Trace the memory allocated inside the block where the arrays live -- the host's with
    ``tracemalloc`` (started if it is not running, stopped after), a GPU's with a CuPy memory
    hook -- and yield the trace: ``current()`` and ``peak()`` bytes, ``reset_peak()``, ``start``
    (the bytes traced at the start, after a garbage collection, to subtract from readings)
    and ``device`` (what was measured, for the report). Allocations are counted when they
    are made, so no reading waits for a GPU."""
    if backend.get_backend() == "cupy":
        trace = _device_trace()
        gc.collect()
        with trace:
            trace.start = 0
            yield trace
        return
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        gc.collect()
        trace = _HostTrace()
        trace.start = trace.current()
        yield trace
    finally:
        if not was_tracing:
            tracemalloc.stop()


def traced_step(make) -> dict:
    """The bytes of one AdamW step of any model: ``make()`` returns ``(model, trained parameters,
    loss_fn)``, built under tracing (so the weights count), and ``loss_fn()`` runs the forward.

    Two steps run -- the first creates AdamW's moments -- and the second is measured: ``peak``
    (the most memory held at any moment of it: forward, backward, update), ``weights``,
    ``optimizer`` (AdamW's state), ``gradients`` (after the backward), ``activations`` (held
    after the forward, before the backward) and ``other`` (everything else held between steps:
    Python objects, caches -- small); ``device``, where it was measured."""
    with backend.blas_single_threaded():  # attention's BLAS controller is built (and threadpoolctl imported)
        pass  # on first use: do it before tracing, so the module's objects are not counted as the step's
    with traced() as trace:
        model, params, loss_fn = make()
        optimizer = AdamW(params, lr=1e-4)
        for _ in range(2):  # the first step creates AdamW's moments; the second is measured
            optimizer.zero_grad()
            gc.collect()
            before = trace.current()
            trace.reset_peak()
            loss = loss_fn()
            after_forward = trace.current()
            loss.backward()
            gradients = sum(p.grad.nbytes for p in params if p.grad is not None)
            optimizer.step()
            peak = trace.peak()
            del loss
    weights = sum(p.data.nbytes for p in model.parameters())
    state = optimizer.state_bytes()
    return {"peak": peak - trace.start, "weights": weights, "optimizer": state, "gradients": gradients,
            "activations": after_forward - before, "other": before - trace.start - weights - state, "device": trace.device}
