"""The old import path of claim 6's mathematics, kept for the course notebooks (01-06) until they move to
``minilora.experiments.claims.rank`` (the mathematics) and the toy base's ``projections`` and ``adapter_A``
(the matrices of a GPT state). The two functions below keep the old signatures (with ``n_layer``)."""

from minilora.experiments.bases import gpt
from minilora.experiments.claims import rank
from minilora.experiments.claims.rank import (LARGE_R, SMALL_R, TOP_RANKS, energy_share, random_energy_share,
                                              random_similarity, relative_change, similarity_grid, subspace_similarity)


def update_spectra(base_state: dict, tuned_state: dict, n_layer: int = 0) -> dict:
    """``rank.update_spectra`` of two GPT states (``n_layer`` is read from the states; kept for old calls)."""
    return rank.update_spectra(gpt.projections(base_state), gpt.projections(tuned_state))


def adapter_A(state: dict, n_layer: int, r: int) -> dict:
    """``gpt.adapter_A`` under its old signature (``n_layer`` is read from the state)."""
    return gpt.adapter_A(state, r)


__all__ = ["LARGE_R", "SMALL_R", "TOP_RANKS", "adapter_A", "energy_share", "random_energy_share", "random_similarity",
           "relative_change", "similarity_grid", "subspace_similarity", "update_spectra"]
