"""``cupy.random``'s Generator API: ``default_rng`` and ``Generator`` with CuPy's methods only.

The methods and their signatures are those of ``class Generator`` in
``cupy/random/_generator_api.pyx`` (CuPy's repository, v14 line): no ``normal``, no
``choice``, ``permutation`` or ``shuffle`` -- NumPy's Generator has them, CuPy's does not.
The draws are NumPy's (a PCG64 stream stands for CuPy's XORWOW), returned as device arrays.
"""

import numpy as _numpy

from cupy import _core


def _host(x, where):
    return _core.unwrap(x, f"Generator.{where}")


class Generator:
    def __init__(self, bit_generator):
        self.bit_generator = bit_generator  # here a numpy.random.Generator stands for CuPy's BitGenerator

    def _draw(self, method, *args, **kwargs):
        return _core.wrap(getattr(self.bit_generator, method)(*args, **kwargs))

    def _into(self, y, out):
        if out is not None:
            out[...] = y
            return out
        return y

    def random(self, size=None, dtype=_numpy.float64, out=None):
        return self._into(self._draw("random", size, dtype=dtype), out)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=_numpy.float64):
        return self._draw("uniform", _host(low, "uniform"), _host(high, "uniform"), size).astype(dtype, copy=False)

    def integers(self, low, high=None, size=None, dtype=_numpy.int64, endpoint=False):
        lo, hi = (0, int(low)) if high is None else (int(low), int(high))  # CuPy reads the bounds on the host
        return self._draw("integers", lo, hi, size, dtype=dtype, endpoint=endpoint)

    def standard_normal(self, size=None, dtype=_numpy.float64, out=None):
        return self._into(self._draw("standard_normal", size, dtype=dtype), out)

    def standard_exponential(self, size=None, dtype=_numpy.float64, method="inv", out=None):
        return self._into(self._draw("standard_exponential", size, dtype=dtype), out)

    def standard_gamma(self, shape, size=None, dtype=_numpy.float64, out=None):
        return self._into(self._draw("standard_gamma", _host(shape, "standard_gamma"), size, dtype=dtype), out)

    def beta(self, a, b, size=None, dtype=_numpy.float64):
        return self._draw("beta", _host(a, "beta"), _host(b, "beta"), size).astype(dtype, copy=False)

    def binomial(self, n, p, size=None):
        return self._draw("binomial", _host(n, "binomial"), _host(p, "binomial"), size)

    def chisquare(self, df, size=None):
        return self._draw("chisquare", _host(df, "chisquare"), size)

    def dirichlet(self, alpha, size=None):
        return self._draw("dirichlet", _host(alpha, "dirichlet"), size)

    def exponential(self, scale=1.0, size=None):
        return self._draw("exponential", _host(scale, "exponential"), size)

    def f(self, dfnum, dfden, size=None):
        return self._draw("f", _host(dfnum, "f"), _host(dfden, "f"), size)

    def gamma(self, shape, scale=1.0, size=None):
        return self._draw("gamma", _host(shape, "gamma"), _host(scale, "gamma"), size)

    def geometric(self, p, size=None):
        return self._draw("geometric", _host(p, "geometric"), size)

    def hypergeometric(self, ngood, nbad, nsample, size=None):
        return self._draw("hypergeometric", *(_host(x, "hypergeometric") for x in (ngood, nbad, nsample)), size)

    def logseries(self, p, size=None):
        return self._draw("logseries", _host(p, "logseries"), size)

    def poisson(self, lam=1.0, size=None):
        return self._draw("poisson", _host(lam, "poisson"), size)

    def power(self, a, size=None):
        return self._draw("power", _host(a, "power"), size)


def default_rng(seed=None):
    return Generator(_numpy.random.default_rng(seed))
