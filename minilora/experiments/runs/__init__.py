"""Fine-tuning runs, on any base: one run specification, the grid, learning rates chosen on the
validation split, summaries over seeds, and the run cache.

``spec``     RunSpec (one run), RunResult (what it measured), Grid (a base's runs for claim 4)
``rates``    the rules: rates chosen on validation, the nearest tuned setting's rate, failed runs
``summary``  means and spreads over seeds, failed runs named and left out; the tables of them
``cache``    the run cache: JSON + safetensors, keyed by the spec, the data, the base and the code
``runner``   train(session, base, specs): each run once per session, rates chosen once
"""

from minilora.experiments.runs.cache import RunCache, RunCacheWarning
from minilora.experiments.runs.rates import BELOW, DIVERGED, OK, TUNED_RANKS, choose_rate, nearest_rank, run_status
from minilora.experiments.runs.runner import rates_for, resolved, train, trained, tuned_specs
from minilora.experiments.runs.spec import ALPHA_PER_RANK, Grid, RunResult, RunSpec, TaskGrid, setting_name, trained_state
from minilora.experiments.runs.summary import (describe_failures, edge_note, fmt, metric, rates_at_edge, rates_text,
                                               selection_table, summarize)

__all__ = ["ALPHA_PER_RANK", "BELOW", "DIVERGED", "Grid", "OK", "RunCache", "RunCacheWarning", "RunResult",
           "RunSpec", "TUNED_RANKS", "TaskGrid", "choose_rate", "describe_failures", "edge_note", "fmt", "metric",
           "nearest_rank", "rates_at_edge", "rates_for", "rates_text", "resolved", "run_status", "selection_table",
           "setting_name", "summarize", "train", "trained", "trained_state", "tuned_specs"]
