"""``cupy.linalg``: the names of ``cupy/linalg/__init__.py``'s ``__all__``, NumPy's on device arrays."""

import numpy as _numpy

from cupy import _core

_NAMES = ("matrix_power cholesky qr svd eigh eigvalsh norm det matrix_rank slogdet solve tensorsolve inv pinv "
          "tensorinv").split()
LinAlgError = _numpy.linalg.LinAlgError


def _function(name):
    f = getattr(_numpy.linalg, name)

    def function(*args, **kwargs):
        where = f"cupy.linalg.{name}"
        result = f(*_core.unwrap(args, where), **_core.unwrap(kwargs, where))
        if isinstance(result, tuple):  # NumPy's named results (SVDResult, ...): CuPy returns plain tuples
            result = tuple(result)
        return _core.wrap(result)

    function.__name__ = name
    return function


for _name in _NAMES:
    globals()[_name] = _function(_name)
del _name
