"""The core of the experiments: what every claim and every base uses.

``session``     the Session: sizes, bases, and what is computed once per verify
``judging``     verdicts from figures and thresholds: ``judge``, ``judge_interval``, ``non_inferiority``, ``combine``
``intervals``   95% bootstrap intervals: seeds and test rows (accuracies, losses), interleaved repeats (timings)
``tracing``     memory measured where the arrays live; one training step's bytes
``timing``      one BLAS thread, the right clock, variants timed side by side
``provenance``  the code's hash, the commit, the versions, the machine and its load
"""

from minilora.experiments.core import provenance
from minilora.experiments.core.judging import (FAILS, HOLDS, INCONCLUSIVE, ONE_RUN, ORDER, PARTLY, QUICK, combine, compare_verdicts,
                                               inconclusive, judge, judge_gap, judge_interval, non_inferiority, verdict_range,
                                               verdicts_differ_text, worst)
from minilora.experiments.core.session import Session
from minilora.experiments.core.timing import blas_threads, clock, no_gc, now, time_rounds, time_steps
from minilora.experiments.core.tracing import traced, traced_step

__all__ = ["FAILS", "HOLDS", "INCONCLUSIVE", "ONE_RUN", "ORDER", "PARTLY", "QUICK", "Session", "blas_threads", "clock", "combine",
           "compare_verdicts", "inconclusive", "judge", "judge_gap", "judge_interval", "no_gc", "non_inferiority", "verdict_range",
           "now", "provenance", "time_rounds", "time_steps", "traced", "traced_step", "verdicts_differ_text", "worst"]
