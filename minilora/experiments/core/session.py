"""What the claims of one ``minilora verify`` share: how much to do, on which base models, and
what is computed once for all of them.

A claim's ``measure(base, session)`` reads ``session.quick`` (the demo's sizes), ``session.seed``,
``session.progress``; whatever is expensive and shared -- a base's environment, a fine-tuning
run, the learning rates chosen for a base -- is computed once through ``session.once(key,
make)``, keyed by what it is, so that the runs claim 4 trains are the ones claims 5, 6 and 9
read. ``session.claim`` names the claim being measured, so that each run it uses is counted
in that claim's provenance (``used``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Session:
    quick: bool = False  # the demo's sizes (minutes) instead of the full ones (about an hour)
    seed: int = 0
    progress: bool = True  # progress bars while training
    bases: tuple = ("toy",)  # the base models chosen for the claims measured on several (``--bases``)
    claim: str | None = None  # the claim being measured (set by verify)
    command: str = ""  # the command line measuring, for provenance
    memo: dict = field(default_factory=dict)  # key -> value computed once
    used: dict = field(default_factory=dict)  # claim -> {run key: the run's provenance}, the runs it read

    def once(self, key, make):
        """``make()``, computed the first time ``key`` is asked for and kept for the session."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]
