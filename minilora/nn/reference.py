"""Plain versions of the fast kernels in ``minilora.nn.functional``, a few Tensor ops each.

A fast kernel (blocked across threads, computed in place, or fused on halves of
an array) is hard to read; its plain twin here computes the same function with
ordinary Tensor ops, and autograd derives its backward. The docs teach from
these; the tests check each fast kernel against its twin (STYLE principle 13).
"""

from __future__ import annotations

import math

import numpy

from minilora.tensor import Tensor, cat


def rms_norm(x: Tensor, normalized_shape, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimensions (Zhang & Sennrich, 2019)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    eps = float(numpy.finfo(x.dtype).eps) if eps is None else eps
    dims = tuple(range(x.ndim - len(shape), x.ndim))
    n = math.prod(shape)
    ms = (x * x).sum(dim=dims, keepdim=True) / n  # (..., 1, ..., 1): the mean square of each group
    y = x / (ms + eps).sqrt()
    return y * weight if weight is not None else y


def rotate_half(x: Tensor) -> Tensor:
    """``cat(-x2, x1)`` for the halves x1, x2 of the last dim: each pair (x1_i, x2_i) turned by 90 degrees."""
    h = x.shape[-1] // 2
    return cat([-x[..., h:], x[..., :h]], dim=-1)


def rotary_embedding(x: Tensor, cos, sin) -> Tensor:
    """Hugging Face's ``q * cos + rotate_half(q) * sin`` (Su et al., 2021): pair i rotated by its angle."""
    return x * cos + rotate_half(x) * sin
