"""Float tolerances from an error model, not from one machine's rounding (shared by the tests).

Two evaluations of the same mathematics in float32 -- minilora and PyTorch, a fused kernel and
its plain twin, one CPU's BLAS kernels and another's (``OPENBLAS_CORETYPE=Haswell``,
``SkylakeX`` ...) -- differ by rounding alone, and rounding is bounded. Each operation's
result lies within a relative ``u`` of the exact one (the unit roundoff: 2^-24 in float32,
2^-11 in float16, 2^-53 in float64), and a sum of ``n`` terms, computed in *any* order --
blocked, pairwise, with FMA -- lies within ``gamma_n = n u / (1 - n u)`` of the exact sum
*relative to the sum of the terms' magnitudes* (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., eq. 3.5 and section 4.2). A test's bound is therefore written

    |actual - expected|  <=  2 * depth * gamma_n * scale                      (``bound``)

``n``      the longest reduction on the way: a dot product over n inputs (a layer's width, an
           MLP's inner width), a softmax over n keys, a mean over n positions;
``depth``  how many such reductions are chained: the layers of a network (plus one for the
           embedding and head), the steps of a training run. To first order their errors add:
           a normalised block (LayerNorm, RMSNorm, softmax) passes its input's relative error on
           with a gain near one, and the worst-case ``n`` (where a typical error grows as sqrt n)
           leaves room for gains above one;
``scale``  the magnitude of the terms combined: for a network's activations and logits,
           max |expected| (normalisation keeps every term near the size of the result);
           where a result may cancel, the sum of the terms' magnitudes;
``2``      both sides round.

A worst-case bound holds for every summation order, so for every CPU's kernels, and it stays
orders of magnitude below what a real mistake changes (a missing bias, a transposed weight, a
wrong scaling move results by 1e-2 of their size or more): a test held to it can still fail.
Float64 comparisons keep their fixed 1e-10-ish bounds: there the same model gives ~1e-13, and
no order of summation comes near them.
"""

from __future__ import annotations

import numpy as np


def unit_roundoff(dtype=np.float32) -> float:
    """u: half the machine epsilon (2^-24 for float32, 2^-11 for float16, 2^-53 for float64)."""
    return float(np.finfo(dtype).eps) / 2


def gamma(n: int, dtype=np.float32) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of a sum of n rounded terms."""
    nu = n * unit_roundoff(dtype)
    return nu / (1 - nu)


def bound(n: int, depth: int = 1, scale: float = 1.0, dtype=np.float32) -> float:
    """``2 * depth * gamma_n * scale`` (module docstring): how far two evaluations may lie apart."""
    return 2 * depth * gamma(n, dtype) * scale


def max_abs(a) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64)), initial=0.0))


def assert_close(actual, expected, *, n: int, depth: int = 1, scale: float | None = None, dtype=np.float32,
                 what: str = "") -> float:
    """``max |actual - expected| <= bound(n, depth, scale, dtype)``, ``scale`` defaulting to
    max |expected|; returns the difference found. The message gives the bound's parts."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shapes {actual.shape} and {expected.shape}"
    scale = max_abs(expected) if scale is None else scale
    tol = bound(n, depth, scale, dtype)
    err = max_abs(actual - expected)
    assert err <= tol, (f"{what}: max |difference| {err:.3g} exceeds 2 x depth {depth} x gamma_{n} "
                        f"({np.dtype(dtype).name}) x scale {scale:.3g} = {tol:.3g}")
    return err
