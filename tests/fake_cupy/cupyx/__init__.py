"""``cupyx.scatter_add``, the one piece of cupyx minilora uses (the backward of gathering rows)."""

import numpy as _numpy

from cupy import _core


def scatter_add(a, slices, value):
    """``a[slices] += value``, adding repeated indices, as ``numpy.add.at``."""
    if not isinstance(a, _core.ndarray):
        raise TypeError(f"cupyx.scatter_add: a must be a cupy.ndarray, got {type(a).__name__}")
    _numpy.add.at(a._a, _core.unwrap(slices, "cupyx.scatter_add"), _core.unwrap(value, "cupyx.scatter_add"))
