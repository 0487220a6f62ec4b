"""A strict stand-in for CuPy 14.2 on the CPU: NumPy inside, CuPy's interface outside.

minilora's test suite puts this folder first on ``sys.path`` (never where a real CuPy is
installed: the tests check first) and runs with ``MINILORA_BACKEND=cupy``, so that the
project's real CuPy branch runs without a GPU. What makes it strict (see ``_core.py``):

* arrays are ``cupy.ndarray`` objects that are not NumPy arrays: ``numpy.asarray`` of one
  raises TypeError (CuPy's ``__array__`` does), and a NumPy array met in an operation, a
  function, an index or an assignment raises -- the mixing that breaks on a GPU;
* only CuPy's public names exist. The list below is that of ``cupy/__init__.py`` in CuPy's
  repository (github.com/cupy/cupy) at the v14 line -- the version whose "Functional
  routines" import ``put_along_axis`` from ``cupy.lib._shape_base`` -- less the names NumPy 2
  no longer has (``alltrue``, ``product``, ``trapz``, ...) and the CUDA-only ones (kernels,
  DLPack, fft, sparse, testing, polynomial), which minilora does not use;
  ``cupy.linalg`` follows ``cupy/linalg/__init__.py``'s ``__all__``, and the Generator
  ``cupy/random/_generator_api.pyx`` (``random.py`` here);
* every sync (``.get()``, ``float()``, ``int()``, ``bool()``, ``.item()``, ...) and every
  host<->device copy is counted: ``cupy._core.counters``.

Results are NumPy's (CuPy's own kernels differ in the last bits, and its random streams
differ entirely): the stand-in proves where data lives and when the host waits, not values.
"""

from __future__ import annotations

import numpy as _numpy

from cupy import _core, cuda, linalg, random
from cupy._core import ndarray

__version__ = "14.2.0"


class ufunc:
    """A CuPy ufunc: NumPy's of the same name, on device arrays only."""

    def __init__(self, f):
        self._f = f
        self.__name__ = self.name = f.__name__
        self.nin, self.nout, self.nargs = f.nin, f.nout, f.nargs

    def __call__(self, *args, out=None, **kwargs):
        where = f"cupy.{self.name}"
        if out is not None:
            outs = out if isinstance(out, tuple) else (out,)
            for o in outs:
                if not isinstance(o, ndarray):
                    raise TypeError(f"{where}: out must be a cupy.ndarray, got {type(o).__name__}")
            self._f(*_core.unwrap(args, where), out=tuple(o._a for o in outs), **_core.unwrap(kwargs, where))
            return out
        return _core.wrap(self._f(*_core.unwrap(args, where), **_core.unwrap(kwargs, where)))

    def _method(self, method, *args, **kwargs):
        where = f"cupy.{self.name}.{method}"
        return _core.wrap(getattr(self._f, method)(*_core.unwrap(args, where), **_core.unwrap(kwargs, where)))

    def at(self, *args, **kwargs):
        return self._method("at", *args, **kwargs)

    def reduce(self, *args, **kwargs):
        return self._method("reduce", *args, **kwargs)

    def accumulate(self, *args, **kwargs):
        return self._method("accumulate", *args, **kwargs)

    def outer(self, *args, **kwargs):
        return self._method("outer", *args, **kwargs)

    def __repr__(self):
        return f"<ufunc '{self.name}'>"


def _function(name, f):
    def function(*args, **kwargs):
        where = f"cupy.{name}"
        return _core.wrap(f(*_core.unwrap(args, where), **_core.unwrap(kwargs, where)))

    function.__name__ = function.__qualname__ = name
    return function


def _syncing(name, f):
    """A function whose output's size depends on the data: the host reads a count first."""
    inner = _function(name, f)

    def function(*args, **kwargs):
        _core.sync(name)
        return inner(*args, **kwargs)

    function.__name__ = function.__qualname__ = name
    return function


# cupy/__init__.py (v14 line), section by section; aliases CuPy defines itself are below
_CONSTANTS = "e euler_gamma inf nan newaxis pi"
_TYPES = """complexfloating floating generic inexact integer number signedinteger unsignedinteger bool_ byte short
    intc int_ longlong intp int8 int16 int32 int64 ubyte ushort uintc uint ulonglong uintp uint8 uint16 uint32 uint64
    half single double float16 float32 float64 csingle cdouble complex64 complex128 dtype finfo iinfo"""
_ROUTINES = """
    empty empty_like eye full full_like identity ones ones_like zeros zeros_like copy fromfile fromfunction fromiter
    frombuffer fromstring loadtxt genfromtxt arange linspace logspace meshgrid diag diagflat tri tril triu vander
    piecewise apply_along_axis put_along_axis
    copyto shape ravel reshape moveaxis rollaxis swapaxes transpose atleast_1d atleast_2d atleast_3d broadcast_arrays
    broadcast_to expand_dims squeeze column_stack concatenate dstack hstack stack vstack asarray_chkfinite
    asfortranarray require array_split dsplit hsplit split vsplit repeat tile delete append resize trim_zeros flip
    fliplr flipud roll rot90 broadcast_shapes
    bitwise_and bitwise_or bitwise_xor bitwise_not invert left_shift right_shift packbits unpackbits binary_repr
    can_cast common_type result_type min_scalar_type promote_types issubdtype mintypecode typename
    indices ix_ mask_indices tril_indices tril_indices_from triu_indices triu_indices_from ravel_multi_index
    unravel_index choose compress diagonal extract select take take_along_axis place put putmask fill_diagonal
    diag_indices diag_indices_from
    load save savez savez_compressed array_repr array_str array2string format_float_positional
    format_float_scientific savetxt base_repr get_printoptions set_printoptions printoptions
    einsum cross dot inner kron matmul outer tensordot vdot trace
    allclose array_equal array_equiv isclose isfinite isinf isnan isneginf isposinf iscomplex iscomplexobj isfortran
    isreal isrealobj intersect1d isin setdiff1d setxor1d union1d isscalar logical_and logical_not logical_or
    logical_xor equal greater greater_equal less less_equal not_equal all any
    poly polyadd polysub polymul polyfit polyval roots
    arccos arcsin arctan arctan2 cos deg2rad degrees hypot rad2deg radians sin tan unwrap arccosh arcsinh arctanh
    cosh sinh tanh around ceil fix floor rint round trunc prod sum cumprod cumsum ediff1d nancumprod nancumsum nansum
    nanprod diff gradient bartlett blackman hamming hanning kaiser exp exp2 expm1 log log10 log1p log2 logaddexp
    logaddexp2 i0 sinc copysign frexp ldexp nextafter signbit gcd lcm add divide divmod floor_divide float_power
    fmod modf multiply negative positive power reciprocal remainder mod subtract true_divide angle conj conjugate
    imag real abs absolute cbrt clip fabs fmax fmin interp maximum minimum nan_to_num real_if_close sign heaviside
    sqrt square convolve
    may_share_memory shares_memory iterable pad
    count_nonzero argmax argmin nanargmax nanargmin searchsorted where argpartition argsort lexsort
    sort_complex partition sort
    corrcoef cov correlate amax max amin min nanmax nanmin percentile ptp quantile median average mean std var
    nanmedian nanmean nanstd nanvar bincount digitize histogram histogram2d histogramdd
    size ndim"""
_SYNCING = "nonzero argwhere flatnonzero unique"  # their output's size is data: the count comes to the host first

for _name in _CONSTANTS.split() + _TYPES.split():
    globals()[_name] = getattr(_numpy, _name)
for _name in _ROUTINES.split():
    _f = getattr(_numpy, _name, None)
    if _f is None:
        continue
    globals()[_name] = ufunc(_f) if isinstance(_f, _numpy.ufunc) else _function(_name, _f)
for _name in _SYNCING.split():
    globals()[_name] = _syncing(_name, getattr(_numpy, _name))
del _name, _f

# CuPy's own aliases (NumPy 2 removed these)
float_, complex_, cfloat, singlecomplex = _numpy.float64, _numpy.complex128, _numpy.complex128, _numpy.complex64
PINF = Inf = Infinity = infty = inf  # noqa: F821  (set by the loop above)
NINF, NAN, NaN, PZERO, NZERO = -_numpy.inf, _numpy.nan, _numpy.nan, 0.0, -0.0
AxisError = _numpy.exceptions.AxisError


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    """A device array from host data (a host-to-device copy) or from a device array."""
    return _core.to_device(obj, dtype, copy=copy)


def asarray(a, dtype=None, order=None, *, blocking=False):
    """``a`` itself if it is a device array of ``dtype``; host data is copied to the device."""
    return _core.to_device(a, dtype)


asanyarray = asarray


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):  # CuPy's takes device arrays only
        raise TypeError(f"Argument 'a' has incorrect type (expected cupy.ndarray, got {type(a).__name__})")
    return _core.wrap(_numpy.ascontiguousarray(a._a, dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    """The array on the host: a device-to-host copy (a sync) for a device array."""
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    return _numpy.asarray(a, order=order)


def get_array_module(*args):
    import builtins
    import sys

    return sys.modules[__name__] if builtins.any(isinstance(a, ndarray) for a in args) else _numpy


def is_available() -> bool:
    return True


def get_default_memory_pool():
    return _core.POOL
