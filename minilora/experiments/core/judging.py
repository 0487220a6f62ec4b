"""Verdicts: how a figure measured against thresholds stated in advance becomes "holds", "partly"
or "does not hold" -- or, read off an interval that straddles a threshold, "inconclusive" between two
of them -- and how the parts of a claim combine.

A claim's ``verdict(figures)`` returns a plain dict -- ``{"verdict": ..., "parts": {part: verdict},
...}`` plus any figure it judged on -- so that results.json keeps the verdict apart from what was
measured, and a re-rendered report reads both back.
"""

from __future__ import annotations

HOLDS, PARTLY, FAILS = "holds", "partly", "does not hold"


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


ORDER = (FAILS, PARTLY, HOLDS)  # worst first
INCONCLUSIVE = "inconclusive"
ONE_RUN = "inconclusive (one run)"  # one seed, or one run that did not fail: no spread, so no interval
QUICK = "inconclusive (quick)"  # quick mode's runs are too short and too few to resolve the figure


def inconclusive(worse: str, better: str) -> str:
    """The verdict of a figure whose interval lies between two verdicts: "partly or holds — inconclusive"."""
    return f"{worse} or {better} — {INCONCLUSIVE}"


def verdict_range(verdict: str) -> tuple:
    """(worst, best) verdict a verdict allows: (v, v) for a decided one, the two it names for an inconclusive
    one, (does not hold, holds) for one that names none ("inconclusive (one run)")."""
    if verdict in ORDER:
        return verdict, verdict
    for worse in ORDER:
        for better in ORDER:
            if verdict == inconclusive(worse, better):
                return worse, better
    if verdict.startswith(INCONCLUSIVE):
        return FAILS, HOLDS
    raise ValueError(f"verdict_range: {verdict!r} is not a verdict (one of {ORDER}, or an inconclusive one)")


def from_range(worse: str, better: str) -> str:
    return worse if worse == better else inconclusive(worse, better)


def judge_interval(interval, holds: float, partly: float, higher_is_better: bool = True) -> str:
    """The verdict read off a 95% interval ``[low, high]`` of a figure: ``judge``'s verdict when the whole
    interval lies on one side of every threshold, else "inconclusive" naming the two verdicts it lies
    between; ``None`` (one run, no interval) is "inconclusive (one run)"."""
    if interval is None:
        return ONE_RUN
    low, high = (judge(v, holds, partly, higher_is_better) for v in interval)  # NaN: "does not hold", as judge
    return from_range(*sorted((low, high), key=ORDER.index))


def non_inferiority(difference_interval, margin_holds: float, margin_partly: float) -> str:
    """An "on a par" claim: the 95% interval of (the method - the reference), in points, judged on how far
    below the reference it may lie -- holds when its lower bound is above ``-margin_holds``, partly above
    ``-margin_partly``. Being better than the reference never counts against the method: there is no upper
    margin (a non-inferiority test, not an equivalence one)."""
    if margin_holds > margin_partly:
        raise ValueError(f"non_inferiority: margin_holds {margin_holds} must be <= margin_partly {margin_partly}")
    return judge_interval(difference_interval, -margin_holds, -margin_partly, higher_is_better=True)


def judge_gap(new_runs: list, reference_runs: list, margin_holds: float, margin_partly: float, claim, what: str) -> tuple:
    """An "on a par" comparison from the runs' per-row test accuracies (one list per run that did not fail):
    (the 95% interval of reference - new in points of accuracy, ``None`` when an arm rests on one run; the
    ``non_inferiority`` verdict; "does not hold" when every run of an arm failed). ``claim`` and ``what`` name
    the figure in the error a missing row raises."""
    from minilora.experiments.core.intervals import mean_difference_interval, per_seed_rows

    if not new_runs or not reference_runs:  # every run of an arm failed: nothing to compare
        return None, FAILS
    d = mean_difference_interval(per_seed_rows(new_runs, claim, what), per_seed_rows(reference_runs, claim, what))
    return (None if d is None else [-d[1], -d[0]]), non_inferiority(d, margin_holds, margin_partly)


def combine(*verdicts: str) -> str:
    """A claim made of several parts holds if all hold, does not hold if none does, else partly. Inconclusive
    parts make the claim inconclusive between the best and the worst the parts allow."""
    def one(decided):
        if all(v == HOLDS for v in decided):
            return HOLDS
        if all(v == FAILS for v in decided):
            return FAILS
        return PARTLY

    ranges = [verdict_range(v) for v in verdicts]
    worse, better = one([w for w, _ in ranges]), one([b for _, b in ranges])
    reasons = [v for v in verdicts if v.startswith(INCONCLUSIVE)]  # "inconclusive (one run)": it says why
    if (worse, better) == (FAILS, HOLDS) and reasons:
        return reasons[0]
    return from_range(worse, better)


def worst(*verdicts: str) -> str:
    """The worst of several verdicts of one figure (the worst setting): between the worst each allows at its
    worse end and the worst each allows at its better end; "inconclusive (one run)" when that is all it knows."""
    ranges = [verdict_range(v) for v in verdicts]
    worse, better = (min(ends, key=ORDER.index) for ends in zip(*ranges))
    reasons = [v for v in verdicts if v.startswith(INCONCLUSIVE)]  # "inconclusive (one run)": it says why
    if (worse, better) == (FAILS, HOLDS) and reasons:
        return reasons[0]
    return from_range(worse, better)


def verdicts_differ_text(verdicts: dict) -> str:
    """The opening of a comparison between bases: ``{base's name in a sentence: verdict}``, and whether they differ."""
    if len(set(verdicts.values())) == 1:
        return f"The {'two' if len(verdicts) == 2 else 'several'} bases give the same verdict (**{next(iter(verdicts.values()))}**)."
    return "**The verdicts differ**: " + ", ".join(f"{v} on {name}" for name, v in verdicts.items()) + "."


def compare_verdicts(claim: dict) -> str:
    """``verdicts_differ_text`` of a claim's bases (its results.json entry): the opening of its comparison."""
    return verdicts_differ_text({slot["in_text"]: slot["verdict"]["verdict"] for slot in claim["bases"].values()})
