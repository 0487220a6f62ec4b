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

HOLDS, PARTLY, FAILS = "holds", "partly", "does not hold"


@contextmanager
def traced():
    """Trace NumPy's (and Python's) allocations inside the block, starting ``tracemalloc`` if it
    is not running (and stopping it after); yields the bytes traced at the start, after a
    garbage collection, to subtract from ``tracemalloc.get_traced_memory()`` readings."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        gc.collect()
        yield tracemalloc.get_traced_memory()[0]
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

    def __post_init__(self):
        if self.verdict not in (HOLDS, PARTLY, FAILS):
            raise ValueError(f"verdict must be one of {HOLDS!r}, {PARTLY!r}, {FAILS!r}; got {self.verdict!r}")


@dataclass
class Context:
    """What a claim needs to run: where to write, how much to do, and results shared between claims."""

    out: str  # the report folder being written (a temporary one until the run completes)
    quick: bool = False  # the demo's sizes (minutes) instead of the full ones (about an hour)
    seed: int = 0
    progress: bool = True
    shared: dict = field(default_factory=dict)  # e.g. fine-tuning runs reused by several claims

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)
