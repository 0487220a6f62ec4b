"""Initialisers, as ``torch.nn.init``: each fills a Parameter in place from the seeded generator."""

from __future__ import annotations

import math

from minilora import backend as B


def _fill(tensor, values):
    tensor.data = B.xp.asarray(values, dtype=tensor.data.dtype).reshape(tensor.shape)
    return tensor


def uniform_(tensor, a: float = 0.0, b: float = 1.0):
    return _fill(tensor, B.rng().uniform(a, b, size=tensor.shape))


def normal_(tensor, mean: float = 0.0, std: float = 1.0):
    return _fill(tensor, B.rng().standard_normal(tensor.shape) * std + mean)


def zeros_(tensor):
    return _fill(tensor, B.xp.zeros(tensor.shape))


def ones_(tensor):
    return _fill(tensor, B.xp.ones(tensor.shape))


def _fan_in(tensor) -> int:
    # weights are (out, in, ...): fan_in is everything but the first dimension
    return math.prod(tensor.shape[1:]) if tensor.ndim > 1 else tensor.shape[0]


def kaiming_uniform_(tensor, a: float = 0.0):
    """U(-bound, bound) with ``bound = gain * sqrt(3 / fan_in)``, ``gain = sqrt(2 / (1 + a^2))``
    (He et al., 2015, leaky-ReLU gain). ``a = sqrt(5)`` gives PyTorch's default for Linear:
    ``bound = 1 / sqrt(fan_in)``."""
    gain = math.sqrt(2.0 / (1 + a * a))
    bound = gain * math.sqrt(3.0 / _fan_in(tensor))
    return uniform_(tensor, -bound, bound)
