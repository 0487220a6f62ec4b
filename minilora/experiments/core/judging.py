"""Verdicts: how a figure measured against thresholds stated in advance becomes "holds", "partly"
or "does not hold", and how the parts of a claim combine.

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


def combine(*verdicts: str) -> str:
    """A claim made of several parts holds if all hold, does not hold if none does, else partly."""
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    if all(v == FAILS for v in verdicts):
        return FAILS
    return PARTLY


def verdicts_differ_text(verdicts: dict) -> str:
    """The opening of a comparison between bases: ``{base's name in a sentence: verdict}``, and whether they differ."""
    if len(set(verdicts.values())) == 1:
        return f"The {'two' if len(verdicts) == 2 else 'several'} bases give the same verdict (**{next(iter(verdicts.values()))}**)."
    return "**The verdicts differ**: " + ", ".join(f"{v} on {name}" for name, v in verdicts.items()) + "."


def compare_verdicts(claim: dict) -> str:
    """``verdicts_differ_text`` of a claim's bases (its results.json entry): the opening of its comparison."""
    return verdicts_differ_text({slot["in_text"]: slot["verdict"]["verdict"] for slot in claim["bases"].values()})
