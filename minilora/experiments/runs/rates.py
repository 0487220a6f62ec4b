"""The rules of the runs: learning rates chosen on the validation split, and runs that failed.

The LoRA paper tuned the learning rate per setting (Hu et al., 2021, appendix D). Here,
for both base models:

* the **tuned settings** are full fine-tuning, and LoRA at r = 8 and r = 64 on each
  tuned target set (``TUNED_RANKS``);
* each is trained with one seed at every rate of a small grid; the rate whose run
  reaches the best *validation* figure is kept (the test split is never read to choose);
  a rate that wins at an **edge** of the grid is extended past, one step of the grid's
  own log spacing at a time (or along a fixed ladder of rates, as the E2E section's half
  decades), at most ``EXTEND_STEPS`` times, until an interior rate wins
  (``choose_rate_extended``); a setting still at an edge is named ("lr at the grid's edge");
* every other setting takes the rate of the **nearest tuned one**: the same method and
  target set (else the default target set), the nearest rank on a log scale
  (r = 1, 2, 4, 16 take r = 8's rate; r = 32 takes r = 64's).

A run **fails** when its loss stops being finite (it *diverged*) or when it ends no
better than the **baseline** -- the untuned base model for the toy GPT, the linear
probe (head and pooler trained, encoder frozen) for a pretrained encoder: what such a
run measures is a training failure, not what the method can reach. The rule reads the
**validation split only** (``runs.summarize``), so which runs count is decided before
the test split is read, for every method and claim alike. A failed run is reported by
name and left out of every mean and spread, never averaged in silently; the mean of
all runs is printed beside the kept runs' mean.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

TUNED_RANKS = (8, 64)
EXTEND_STEPS = 2  # steps a winning edge of a rate grid is extended past (issue #21)
OK, DIVERGED, BELOW = "ok", "diverged", "below baseline"


def nearest_rank(r: int, tuned=TUNED_RANKS) -> int:
    """The tuned rank nearest to ``r`` on a log scale (ties go to the smaller one)."""
    if r < 1:
        raise ValueError(f"nearest_rank: r must be >= 1, got {r}")
    return min(tuned, key=lambda t: (abs(math.log2(r) - math.log2(t)), t))


def nearest_setting_rate(rates: dict, spec, tuned_targets, default_target: str) -> float:
    """The rate of ``spec``'s setting in ``rates`` (``{"full": .., "probe": .., "<target> r=<r>": ..}``), or of the
    nearest tuned one: LoRA on an untuned target takes ``default_target``'s, an untuned rank the nearest tuned rank's."""
    if spec.method != "lora":
        return rates[spec.method]
    target = spec.target if spec.target in tuned_targets else default_target
    return rates[f"{target} r={nearest_rank(spec.r)}"]


def with_rates(specs, rates, rate_for) -> list:
    """``specs`` with each missing learning rate (``lr=None``) set to ``rate_for(rates(), spec)``;
    ``rates`` is only called (it may train the selection's runs) when a rate is missing."""
    if all(spec.lr is not None for spec in specs):
        return list(specs)
    chosen = rates()
    return [spec if spec.lr is not None else dataclasses.replace(spec, lr=rate_for(chosen, spec)) for spec in specs]


def run_status(final: dict, key: str, higher_is_better: bool, baseline: float | None) -> str:
    """``OK``, ``DIVERGED`` (the figure is not finite) or ``BELOW`` (no better than ``baseline``)."""
    value = final.get(key, float("nan"))
    if not np.isfinite(value):
        return DIVERGED
    if baseline is not None and (value <= baseline if higher_is_better else value >= baseline):
        return BELOW
    return OK


def choose_rate(candidates: dict, key: str, higher_is_better: bool, baseline: float | None = None) -> tuple:
    """(rate, table) from ``{rate: validation figures}``: the best rate among the runs that did
    not fail, and ``{rate: {key: value, "status": ...}}``. If every run failed, the best finite
    one is kept all the same (the setting is then reported as failed by its own runs); if none
    is finite, the smallest rate."""
    table = {rate: {key: figures.get(key, float("nan")), "status": run_status(figures, key, higher_is_better, baseline)}
             for rate, figures in candidates.items()}
    for allowed in ((OK,), (OK, BELOW)):
        usable = [rate for rate, row in table.items() if row["status"] in allowed]
        if usable:
            sign = 1 if higher_is_better else -1
            return max(usable, key=lambda rate: (sign * table[rate][key], -rate)), table
    return min(table), table


def choose_rate_extended(grid, validate, key: str, higher_is_better: bool, baseline: float | None = None,
                         steps: int = EXTEND_STEPS, ladder=None) -> tuple:
    """(rate, table): ``choose_rate`` over ``grid``, extended past a winning edge.

    ``validate(rate)`` trains one run at ``rate`` and returns its validation figures. When the
    chosen rate is the grid's smallest or largest, one more rate is tried beyond it, a step of the
    grid's own log spacing (``(max / min) ** (1 / (len - 1))``, e.g. sqrt(10) for 1e-3, 3e-3, 1e-2)
    further out, and the rate chosen again -- at most ``steps`` times. With a ``ladder`` (sorted
    rates, e.g. the half decades 1e-3, 3e-3, 1e-2, ...), the rate beyond is instead the ladder's
    neighbour of the rate chosen; a ValueError says so if that rate is not on the ladder or the
    ladder ends there. ``table`` holds every rate tried; ``at_edge(rate, table)`` says whether the
    rate chosen is still the smallest or largest."""
    rates = sorted(float(r) for r in grid)
    if len(rates) < 2:
        raise ValueError(f"choose_rate_extended: a grid needs at least two rates to have an inside, got {list(grid)}")
    spacing = (rates[-1] / rates[0]) ** (1 / (len(rates) - 1))
    figures = {rate: validate(rate) for rate in rates}
    out = {"up": 0, "down": 0}  # steps taken past each edge; each new rate from the grid's own edge, not rounded ones
    for step in range(steps + 1):
        rate, table = choose_rate(figures, key, higher_is_better, baseline)
        if not at_edge(rate, figures) or step == steps:
            break
        side = "up" if rate == max(figures) else "down"
        out[side] += 1
        if ladder is not None:
            beyond = ladder_neighbour(ladder, rate, side)
        else:
            beyond = rates[-1] * spacing ** out["up"] if side == "up" else rates[0] / spacing ** out["down"]
            beyond = float(f"{beyond:.3g}")
        figures[beyond] = validate(beyond)
    return rate, dict(sorted(table.items()))


def ladder_neighbour(ladder, rate: float, side: str) -> float:
    """The rate next to ``rate`` on the sorted ``ladder``, above it (``side`` "up") or below it ("down")."""
    ladder = sorted(float(r) for r in ladder)
    if rate not in ladder:
        raise ValueError(f"choose_rate_extended: the rate {rate:g} at the grid's edge is not on the ladder {ladder}")
    i = ladder.index(rate) + (1 if side == "up" else -1)
    if not 0 <= i < len(ladder):
        raise ValueError(f"choose_rate_extended: the ladder {ladder} ends at {rate:g}; it has no rate {'above' if side == 'up' else 'below'} it")
    return ladder[i]


def at_edge(rate, rows) -> bool:
    """Whether ``rate`` is the smallest or largest of the rates ``rows`` is keyed by (floats, or their text)."""
    tried = [float(r) for r in rows]
    return float(rate) in (min(tried), max(tried))
