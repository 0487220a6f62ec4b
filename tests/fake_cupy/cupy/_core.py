"""The stand-in's device array, its memory pool, and the counters of syncs and copies.

A "device" array here is a NumPy array wrapped in ``ndarray``, a class that is *not* a
``numpy.ndarray``: as with CuPy, NumPy cannot see into it (``__array__`` raises), and it
refuses to meet a NumPy array in an operation, an index or an assignment. Every way the
host can learn a value from the device -- ``.get()``, ``float()``, ``int()``, ``bool()``,
``.item()``, ``.tolist()``, printing, ``nonzero``, a boolean mask -- waits for the device
on a GPU, and is counted in ``counters.syncs``; every copy between host and device is
counted in ``counters.to_device`` / ``counters.to_host``.

Two places are stricter than CuPy, on purpose: a NumPy array used as an index, or assigned
into a device array, is refused (CuPy copies it to the device silently, once per call --
the hidden per-step copy minilora must not have).
"""

from __future__ import annotations

import collections
import threading
import weakref

import numpy

IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly.")  # CuPy's own message


class Counters:
    """What crossed between host and device since the last ``reset()``, by cause."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.syncs = collections.Counter()  # the host waited for the device
        self.to_device = collections.Counter()  # host -> device copies
        self.to_host = collections.Counter()  # device -> host copies

    @property
    def total_syncs(self) -> int:
        return sum(self.syncs.values())


counters = Counters()


def host_met_device(where: str) -> TypeError:
    return TypeError(
        f"Unsupported type <class 'numpy.ndarray'> in {where}: a host (NumPy) array met a device array. "
        "Copy it to the device with cupy.asarray, or bring the device array to the host with .get()"
    )


# ---------------------------------------------------------------------------
# the memory pool and its hooks (cupy/cuda/memory_hook.pyx)
# ---------------------------------------------------------------------------

_local = threading.local()


def get_memory_hooks() -> dict:
    """The hooks registered in this thread, by name (CuPy keeps them thread-local too)."""
    hooks = getattr(_local, "hooks", None)
    if hooks is None:
        hooks = _local.hooks = collections.OrderedDict()
    return hooks


class MemoryPool:
    """The bytes live device arrays hold, each rounded up to 512 as CuPy's pool rounds them."""

    ROUND = 512

    def __init__(self):
        self._used = 0
        self._owners = {}  # id of a NumPy array that owns its data -> its finalizer

    def used_bytes(self) -> int:
        return self._used

    def total_bytes(self) -> int:
        return self._used

    def free_all_blocks(self, stream=None) -> None:
        pass

    def n_free_blocks(self) -> int:
        return 0

    def _allocate(self, owner: numpy.ndarray) -> None:
        key = id(owner)
        if key in self._owners or owner.nbytes == 0:
            return
        size = -(-owner.nbytes // self.ROUND) * self.ROUND
        ptr = owner.__array_interface__["data"][0]
        hooks = list(get_memory_hooks().values())
        for hook in hooks:
            hook.malloc_preprocess(device_id=0, size=owner.nbytes, mem_size=size)
        self._used += size
        self._owners[key] = weakref.finalize(owner, self._free, key, size, ptr)
        for hook in hooks:
            hook.malloc_postprocess(device_id=0, size=owner.nbytes, mem_size=size, mem_ptr=ptr, pmem_id=key)

    def _free(self, key, size, ptr) -> None:
        hooks = list(get_memory_hooks().values())
        for hook in hooks:
            hook.free_preprocess(device_id=0, mem_size=size, mem_ptr=ptr, pmem_id=key)
        self._used -= size
        self._owners.pop(key, None)
        for hook in hooks:
            hook.free_postprocess(device_id=0, mem_size=size, mem_ptr=ptr, pmem_id=key)


POOL = MemoryPool()


# ---------------------------------------------------------------------------
# crossing the boundary
# ---------------------------------------------------------------------------


def wrap(obj):
    """NumPy results as device arrays; NumPy scalars become 0-d arrays, as CuPy returns them."""
    if isinstance(obj, numpy.ndarray):
        owner = obj
        while isinstance(owner.base, numpy.ndarray):
            owner = owner.base
        if owner.base is None:  # a view keeps its owner's memory; only owners are allocations
            POOL._allocate(owner)
        out = object.__new__(ndarray)
        out._a = obj
        return out
    if isinstance(obj, numpy.generic):
        return wrap(numpy.asarray(obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(wrap(x) for x in obj) if type(obj) in (tuple, list) else tuple(wrap(x) for x in obj)
    return obj


def unwrap(obj, where: str):
    """Device arrays as the NumPy arrays inside them; a NumPy array here is refused."""
    if isinstance(obj, ndarray):
        return obj._a
    if isinstance(obj, numpy.ndarray):
        raise host_met_device(where)
    if type(obj) in (tuple, list):
        return type(obj)(unwrap(x, where) for x in obj)
    if type(obj) is dict:
        return {k: unwrap(v, where) for k, v in obj.items()}
    return obj


def _has_host_data(obj) -> bool:
    if isinstance(obj, (list, tuple)):
        return any(_has_host_data(x) for x in obj)
    return not isinstance(obj, ndarray)


def to_device(obj, dtype=None, copy=False):
    """``cupy.array`` / ``cupy.asarray``: device arrays stay (copied if asked), host data is copied over."""
    if isinstance(obj, ndarray):
        if dtype is None or numpy.dtype(dtype) == obj.dtype:
            return obj.copy() if copy else obj
        return wrap(obj._a.astype(dtype))
    host = numpy.array(_unwrap_sequence(obj), dtype=dtype)
    # CuPy fills a 0-d array with a kernel (the scalar is its argument: no copy); other host data
    # goes through a pinned buffer and an asynchronous copy (cupy/_core/core.pyx, _array_default)
    if host.ndim > 0 and (not isinstance(obj, (list, tuple)) or _has_host_data(obj)):
        counters.to_device["numpy array" if isinstance(obj, numpy.ndarray) else "sequence"] += 1
    return wrap(host)


def _unwrap_sequence(obj):
    # a nested sequence mixing numbers and device arrays: CuPy gathers the device parts itself
    if isinstance(obj, (list, tuple)):
        return [_unwrap_sequence(x) for x in obj]
    if isinstance(obj, ndarray):
        return obj._a
    return obj


def sync(kind: str) -> None:
    counters.syncs[kind] += 1


def _uses_reflected(other) -> bool:
    # cupy/_core/core.pyx, _should_use_rop: an operand whose __array_ufunc__ is None (minilora's
    # Tensor) gets the reflected operator
    try:
        return type(other).__array_ufunc__ is None
    except AttributeError:
        return False


def _contains_bool_array(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, numpy.ndarray) and i.dtype == bool and i.ndim > 0 for i in items)


def _contains_list(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, list) for i in items)


class _Flags:
    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a):
        self.c_contiguous, self.f_contiguous, self.owndata = a.flags.c_contiguous, a.flags.f_contiguous, a.base is None


class ndarray:
    """A device array (``cupy.ndarray``): NumPy inside, unreachable from NumPy outside."""

    __slots__ = ("_a", "__weakref__")
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        self._a = numpy.empty(shape, dtype=dtype, order=order)  # uninitialised, as CuPy's constructor
        POOL._allocate(self._a)

    # --- no implicit way to the host -------------------------------------------------------

    def __array__(self, *args, **kwargs):
        raise TypeError(IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # NumPy's ufunc on a device array runs CuPy's ufunc of the same name (NEP 13)
        import cupy

        if not isinstance(getattr(cupy, ufunc.__name__, None), cupy.ufunc):
            return NotImplemented
        return getattr(getattr(cupy, ufunc.__name__), "__call__" if method == "__call__" else method)(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        # NumPy's function on a device array runs CuPy's function of the same name (NEP 18)
        import cupy

        module = cupy
        for part in func.__module__.split(".")[1:]:
            module = getattr(module, part, None)
        target = getattr(module, func.__name__, None)
        if target is None or not callable(target):
            return NotImplemented
        return target(*args, **kwargs)

    # --- what the host may read without a sync -------------------------------------------

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: wrap(self._a.T))
    real = property(lambda self: wrap(self._a.real))
    imag = property(lambda self: wrap(self._a.imag))

    @property
    def base(self):
        return None if self._a.base is None else wrap(self._a.base)

    @property
    def device(self):
        from cupy.cuda import Device

        return Device(0)

    def __len__(self):
        if self._a.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    # --- what makes the host wait --------------------------------------------------------

    def get(self, stream=None, order="C", out=None, blocking=True):
        sync("get")
        counters.to_host["get"] += 1
        host = numpy.array(self._a, order=order, copy=True)
        if out is not None:
            out[...] = host
            return out
        return host

    def set(self, arr, stream=None):
        if not isinstance(arr, numpy.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        counters.to_device["set"] += 1
        self._a[...] = arr

    def item(self):
        sync("item")
        return self._a.item()

    def tolist(self):
        sync("tolist")
        return self._a.tolist()

    def tobytes(self, order="C"):
        sync("tobytes")
        return self._a.tobytes(order)

    def __float__(self):
        sync("float")
        return float(self._a)

    def __int__(self):
        sync("int")
        return int(self._a)

    def __bool__(self):
        sync("bool")
        return bool(self._a)

    def __complex__(self):
        sync("complex")
        return complex(self._a)

    def __index__(self):
        if self._a.ndim != 0 or self._a.dtype.kind not in "iu":
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        sync("index")
        return int(self._a)

    def __repr__(self):
        sync("repr")
        return repr(self._a)

    def __str__(self):
        sync("str")
        return str(self._a)

    def __format__(self, spec):
        sync("format")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def nonzero(self):
        sync("nonzero")  # the number of nonzeros sizes the result
        return wrap(self._a.nonzero())

    def __reduce__(self):
        return (_from_host, (self.get(),))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    # --- indexing ------------------------------------------------------------------------

    def __getitem__(self, index):
        index = unwrap(index, "an index of a device array")
        if _contains_bool_array(index):
            sync("boolean mask")  # the mask's count sizes the result
        if _contains_list(index):
            counters.to_device["index list"] += 1
        return wrap(self._a[index])

    def __setitem__(self, index, value):
        index = unwrap(index, "an index of a device array")
        if _contains_list(index):
            counters.to_device["index list"] += 1
        if isinstance(value, (list, tuple)):
            counters.to_device["sequence"] += 1
        self._a[index] = unwrap(value, "an assignment into a device array")


ndarray.__module__ = "cupy"  # named as CuPy names its arrays in messages: cupy.ndarray


def _from_host(host):
    counters.to_device["numpy array"] += 1
    return wrap(host)


# methods that compute on the device and answer with device arrays (or nothing, in place)
_METHODS = ("all", "any", "argmax", "argmin", "argpartition", "argsort", "astype", "choose", "clip", "compress",
            "conj", "conjugate", "copy", "cumprod", "cumsum", "diagonal", "dot", "fill", "flatten", "max", "mean",
            "min", "partition", "prod", "put", "ravel", "repeat", "reshape", "round", "sort", "squeeze", "std", "sum",
            "swapaxes", "take", "trace", "transpose", "var", "view")


def _method(name):
    def method(self, *args, **kwargs):
        where = f"ndarray.{name}"
        return wrap(getattr(self._a, name)(*unwrap(args, where), **unwrap(kwargs, where)))

    method.__name__ = name
    return method


for _name in _METHODS:
    setattr(ndarray, _name, _method(_name))

# operators: (dunder, NumPy ufunc)
_BINARY = {"add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide", "floordiv": "floor_divide",
           "mod": "remainder", "pow": "power", "matmul": "matmul", "and": "bitwise_and", "or": "bitwise_or",
           "xor": "bitwise_xor", "lshift": "left_shift", "rshift": "right_shift"}
_COMPARISONS = {"lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal", "eq": "equal",
                "ne": "not_equal"}


def _binary(ufunc, reflected=False):
    f = getattr(numpy, ufunc)

    def op(self, other):
        if _uses_reflected(other):
            return NotImplemented
        other = unwrap(other, f"the operator {ufunc}")
        return wrap(f(other, self._a) if reflected else f(self._a, other))

    return op


def _inplace(ufunc):
    f = getattr(numpy, ufunc)

    def op(self, other):
        if _uses_reflected(other):
            return NotImplemented
        f(self._a, unwrap(other, f"the in-place operator {ufunc}"), out=self._a)
        return self

    return op


for _dunder, _ufunc in _BINARY.items():
    setattr(ndarray, f"__{_dunder}__", _binary(_ufunc))
    setattr(ndarray, f"__r{_dunder}__", _binary(_ufunc, reflected=True))
    if _dunder != "matmul":
        setattr(ndarray, f"__i{_dunder}__", _inplace(_ufunc))
for _dunder, _ufunc in _COMPARISONS.items():
    setattr(ndarray, f"__{_dunder}__", _binary(_ufunc))
for _dunder, _ufunc in {"neg": "negative", "pos": "positive", "abs": "absolute", "invert": "invert"}.items():
    setattr(ndarray, f"__{_dunder}__", (lambda f: lambda self: wrap(f(self._a)))(getattr(numpy, _ufunc)))
