"""The old import path of claim 8's helpers, kept for the course notebooks (01-06) until they move to
``minilora.experiments.claims.modularity``. Nothing here but names from there."""

from minilora.experiments.claims.modularity import _fresh_base, combination, mixed_batch, retained, save_adapter

__all__ = ["_fresh_base", "combination", "mixed_batch", "retained", "save_adapter"]
