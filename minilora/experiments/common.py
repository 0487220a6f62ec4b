"""What every claim of ``minilora verify`` returns, and how its verdict is reached.

A claim's module exposes ``run(ctx) -> ClaimResult``. It measures, stores every
figure in ``figures`` (all of it goes to ``results.json``), saves its plots into
``ctx.out``, and decides its verdict with ``judge`` from figures and thresholds
written as constants next to the claim -- never a verdict typed in by hand.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from contextlib import contextmanager
from dataclasses import dataclass, field

from minilora import backend

HOLDS, PARTLY, FAILS = "holds", "partly", "does not hold"


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


def judge(value: float, holds: float, partly: float, higher_is_better: bool = True) -> str:
    """``holds`` if ``value`` reaches the ``holds`` threshold, ``partly`` if it reaches the
    ``partly`` one, else ``does not hold``. With ``higher_is_better=False`` the
    thresholds are upper bounds instead of lower bounds."""
    if value != value:  # NaN: nothing was measured
        return FAILS
    if higher_is_better:
        if holds < partly:
            raise ValueError(f"judge: the 'holds' threshold {holds} must be >= the 'partly' one {partly}")
        return HOLDS if value >= holds else PARTLY if value >= partly else FAILS
    if holds > partly:
        raise ValueError(f"judge: the 'holds' bound {holds} must be <= the 'partly' one {partly}")
    return HOLDS if value <= holds else PARTLY if value <= partly else FAILS


def combine(*verdicts: str) -> str:
    """A claim made of several parts holds if all hold, does not hold if none does, else partly."""
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    if all(v == FAILS for v in verdicts):
        return FAILS
    return PARTLY


@dataclass
class ClaimResult:
    key: str  # short id, e.g. "params"
    title: str  # e.g. "Trainable parameters"
    claim: str  # the claim, restated in our own words (never quoted; docs/claims.md lists them all)
    measured: str  # what was measured, one line
    figure: str  # the headline figure, short (goes in the table)
    verdict: str  # HOLDS / PARTLY / FAILS, from judge()
    thresholds: dict = field(default_factory=dict)  # the constants the verdict used
    figures: dict = field(default_factory=dict)  # every number measured (results.json)
    settings: dict = field(default_factory=dict)  # sizes, steps, seeds behind the figures
    plots: list = field(default_factory=list)  # file names in the report folder
    body: str = ""  # the report section's prose (markdown), after the headline

    bases: dict = field(default_factory=dict)  # {base: verdict} when the claim was measured on both base models

    def __post_init__(self):
        if self.verdict not in (HOLDS, PARTLY, FAILS):
            raise ValueError(f"verdict must be one of {HOLDS!r}, {PARTLY!r}, {FAILS!r}; got {self.verdict!r}")


# The two base models a claim can be measured on (``Context.bases``).
BASE_NAMES = {"toy": "the toy GPT (minilora's own, 0.84M parameters, byte-level)",
              "minilm": "all-MiniLM-L6-v2 (a pretrained BERT, 22.7M parameters, WordPiece)"}
BASE_SHORT = {"toy": "toy", "minilm": "MiniLM"}


@dataclass
class BaseResult:
    """One base model's part of a claim measured on both: its verdict, headline and section."""

    verdict: str
    figure: str
    body: str
    figures: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    plots: list = field(default_factory=list)


def over_bases(key: str, title: str, claim: str, measured: str, toy: ClaimResult | None, real: BaseResult | None,
               comparison: str = "") -> ClaimResult:
    """One claim from its part on the toy base (the ClaimResult the claim has always returned) and
    its part on MiniLM; either may be missing (``Context.bases``). The verdict is ``combine``d
    from both (holds only if it holds on both); each base's verdict is kept in ``bases``, the
    toy's figures stay where they were and MiniLM's go under ``figures["minilm"]``."""
    if real is None:
        return toy
    real_section = [f"### On {BASE_NAMES['minilm']}", "", f"**Verdict on MiniLM: {real.verdict}.** {real.body.strip()}"]
    if toy is None:
        return ClaimResult(key=key, title=title, claim=claim, measured=measured, figure=f"MiniLM: {real.figure}",
                           verdict=real.verdict, thresholds=real.thresholds, figures={"minilm": real.figures},
                           settings={"minilm": real.settings}, plots=list(real.plots), body="\n".join(real_section),
                           bases={"minilm": real.verdict})
    body = [f"### On {BASE_NAMES['toy']}", "", f"**Verdict on the toy base: {toy.verdict}.** {toy.body.strip()}", "",
            *real_section]
    if comparison:
        body += ["", "### The two bases", "", comparison.strip()]
    return ClaimResult(
        key=key, title=title, claim=claim, measured=measured,
        figure=f"toy: {toy.figure} · MiniLM: {real.figure}",
        verdict=combine(toy.verdict, real.verdict),
        thresholds={**toy.thresholds, **{f"MiniLM: {k}": v for k, v in real.thresholds.items()}},
        figures={**toy.figures, "minilm": real.figures},
        settings={**toy.settings, "minilm": real.settings},
        plots=list(toy.plots) + list(real.plots),
        body="\n".join(body),
        bases={"toy": toy.verdict, "minilm": real.verdict},
    )


def verdicts_differ_text(toy: str, real: str) -> str:
    """The opening of a claim's comparison: the two verdicts, and whether they differ."""
    if toy == real:
        return f"The two bases give the same verdict (**{toy}**)."
    return f"**The verdicts differ**: {toy} on the toy base, {real} on MiniLM."


@dataclass
class Context:
    """What a claim needs to run: where to write, how much to do, and results shared between claims."""

    out: str  # the report folder being written (a temporary one until the run completes)
    quick: bool = False  # the demo's sizes (minutes) instead of the full ones (about an hour)
    seed: int = 0
    progress: bool = True
    bases: tuple = ("toy",)  # the base models of the claims measured on both: "toy" (minilora's GPT), "minilm" (all-MiniLM-L6-v2)
    shared: dict = field(default_factory=dict)  # e.g. fine-tuning runs reused by several claims

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)
