"""The engine: a Tensor that remembers how it was made, and reverse-mode autograd.

Read this file first. It is micrograd over arrays:

* a ``Tensor`` wraps a backend array (``.data``) and, if it was made by an op on
  tensors that need gradients, the op's inputs (``_parents``) and a closure
  ``_backward(g)`` that maps the gradient of the output to one gradient per input;
* ``Tensor.backward()`` sorts the graph topologically (iteratively, so a graph of
  100,000 nodes is fine), walks it in reverse, and hands each input its share,
  undoing broadcasting in exactly one place (``unbroadcast``) and accumulating
  with ``+`` when a tensor is used several times.

Names and argument conventions are PyTorch's, so ``x.sum(dim=1, keepdim=True)``
means what it means there. Ops that are cheaper or more stable with a fused
backward (softmax, cross-entropy, layer norm, attention, ...) live in
``minilora.nn.functional``; they build nodes with the same ``Tensor._make``.

An invariant the engine relies on: a ``_backward`` closure never returns one
array object for two different inputs, except the incoming gradient ``g`` itself
(as ``+`` does). ``backward`` copies that one before storing it in a leaf's
``.grad``, so two leaves never share a gradient array.
"""

from __future__ import annotations

import functools
import math
from collections import namedtuple

import numpy

from minilora import backend as B

float32 = numpy.float32
float64 = numpy.float64
float16 = numpy.float16
int64 = numpy.int64
int32 = numpy.int32
bool_ = numpy.bool_

# ---------------------------------------------------------------------------
# grad mode
# ---------------------------------------------------------------------------

_grad_enabled = True


class no_grad:
    """Context manager (and decorator) that builds no graph, as ``torch.no_grad``."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev

    def __call__(self, fn):
        @functools.wraps(fn)  # keeps the name, docstring and signature (inspect.signature reads it)
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        return wrapper


def is_grad_enabled() -> bool:
    return _grad_enabled


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the backward of NumPy broadcasting.

    Broadcasting prepends dimensions and stretches size-1 ones; the gradient of
    a stretched input is the sum over the stretched axes.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1
    )
    grad = grad.sum(axis=axes, keepdims=True) if axes else grad
    return grad.reshape(shape)


def _dims(dim, ndim):
    """PyTorch's ``dim`` argument (None, int or tuple, negatives allowed) as a tuple of axes."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    out = []
    for d in dims:
        if not -max(ndim, 1) <= d < max(ndim, 1):
            raise IndexError(f"dim {d} is out of range for a tensor of {ndim} dimensions")
        out.append(d % max(ndim, 1))
    return tuple(out)


def _expand_reduced(g, shape, axes, keepdim):
    """Reshape the gradient of a reduction so that it broadcasts against the input."""
    if not keepdim and shape:
        g = g.reshape([1 if i in axes else n for i, n in enumerate(shape)])
    return g


def _is_float(dtype) -> bool:
    return numpy.dtype(dtype).kind == "f"


# ---------------------------------------------------------------------------
# dtypes: PyTorch's promotion rules (docs/autograd.md, "dtypes and promotion")
# ---------------------------------------------------------------------------
# An elementwise op on two tensors of different dtypes computes in the dtype
# ``result_type`` gives, which is PyTorch's, not NumPy's: the two differ when an
# integer meets a float (torch: int64 + float32 -> float32; NumPy: float64) and when
# one operand is 0-d (torch: float32 (3,) + float64 () -> float32; NumPy: float64).
# Products (matmul, linear, attention) do not promote at all: mixing dtypes there
# is an error, as in torch.

_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}  # bool < integer < floating < complex


def _category(dtype) -> int:
    return _CATEGORY[numpy.dtype(dtype).kind]


def promote_types(type1, type2) -> numpy.dtype:
    """``torch.promote_types``: the dtype two dtypes meet in. Across categories the higher
    category's dtype wins whatever its size (int64 and float16 give float16); within one,
    the smallest dtype that holds both (int8 and uint8 give int16, float32 and float64 float64)."""
    t1, t2 = numpy.dtype(type1), numpy.dtype(type2)
    c1, c2 = _category(t1), _category(t2)
    if c1 != c2:
        return t1 if c1 > c2 else t2
    return numpy.promote_types(t1, t2)


def result_type(a: "Tensor", b: "Tensor") -> numpy.dtype:
    """``torch.result_type`` of two tensors. A tensor with dimensions outranks a 0-d one: the
    0-d tensor decides only if its category is higher (float32 (3,) + float64 () is float32,
    int64 (3,) + float64 () is float64). Python numbers are weaker still (``_lift``)."""
    if a.data.dtype == b.data.dtype:
        return a.data.dtype
    if (a.ndim == 0) == (b.ndim == 0):
        return promote_types(a.data.dtype, b.data.dtype)
    dimensioned, zero_dim = (a, b) if a.ndim else (b, a)
    if _category(zero_dim.dtype) > _category(dimensioned.dtype):
        return zero_dim.data.dtype
    return dimensioned.data.dtype


def _promoted(a: "Tensor", b: "Tensor", dtype=None) -> tuple:
    """The arrays of ``a`` and ``b`` cast to ``dtype`` (default: their ``result_type``)."""
    x, y = a.data, b.data
    if dtype is None:
        if x.dtype == y.dtype:  # the common case, first: nothing to decide
            return x, y
        dtype = result_type(a, b)
    return (x if x.dtype == dtype else x.astype(dtype)), (y if y.dtype == dtype else y.astype(dtype))


def check_same_dtype(op: str, **tensors) -> None:
    """Products do not promote (as in torch): refuse operands of different dtypes, naming them."""
    dtypes = {name: t.dtype for name, t in tensors.items() if t is not None}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} is {dtype}" for name, dtype in dtypes.items())
        raise RuntimeError(f"{op}: expected operands of the same dtype, but {listed}; "
                           f"convert one with .to(dtype) (products never promote, as in PyTorch)")


def _as_array(value, dtype=None):
    """Anything array-like as a backend array; Python floats become float32 by default."""
    if isinstance(value, Tensor):
        value = value.data
    if isinstance(value, (bool, int, float, list, tuple)) and not isinstance(value, numpy.generic) and dtype is None:
        arr = B.xp.asarray(value)
        if arr.dtype == numpy.float64:  # a Python float means the default float, as in torch
            arr = arr.astype(B.default_float)
        return arr
    return B.xp.asarray(value, dtype=dtype)


MaxResult = namedtuple("max", ["values", "indices"])

# ---------------------------------------------------------------------------
# the Tensor
# ---------------------------------------------------------------------------


class Tensor:
    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_retain", "__weakref__")
    __array_ufunc__ = None  # so that ndarray + Tensor calls Tensor.__radd__ rather than looping

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = _as_array(data, dtype)
        if requires_grad and not _is_float(self.data.dtype):
            raise RuntimeError(f"only floating-point tensors can require gradients, got {self.data.dtype}")
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._retain = False

    @classmethod
    def _make(cls, data, parents, backward):
        """The output of an op: ``data``, linked to ``parents`` if any of them needs a gradient.

        ``backward(g)`` returns one gradient (or None) per parent, each shaped like
        the output's broadcast of that parent; ``Tensor.backward`` does the rest.
        """
        out = Tensor.__new__(Tensor)
        # asarray: NumPy answers an op on 0-d arrays with a scalar (np.float64), which is
        # immutable and lacks array methods; .data is always an array, as on CuPy
        out.data = B.xp.asarray(data)
        out.grad = None
        out._retain = False
        if _grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = parents
            out._backward = backward
        else:
            out.requires_grad = False
            out._parents = ()
            out._backward = None
        return out

    # --- properties ----------------------------------------------------------

    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    is_leaf = property(lambda self: self._backward is None)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.data.ndim

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self):
        return self.data.shape[0]

    def item(self):
        return self.data.item()

    def __float__(self):
        return float(self.data)

    def __int__(self):
        return int(self.data)

    def __bool__(self):
        return bool(self.data)

    def numpy(self):
        """The data as a NumPy array (on the host); shares memory on the NumPy backend."""
        return B.to_numpy(self.data)

    def tolist(self):
        return self.numpy().tolist()

    def detach(self) -> "Tensor":
        """The same data, cut off from the graph."""
        return Tensor._make(self.data, (), None)

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        if requires_grad and not _is_float(self.data.dtype):
            raise RuntimeError(f"only floating-point tensors can require gradients, got {self.data.dtype}")
        self.requires_grad = requires_grad
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward (as in PyTorch)."""
        self._retain = True

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        dt = "" if self.dtype == B.default_float else f", dtype={self.dtype}"
        body = numpy.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({body}{dt}{extra})"

    __hash__ = object.__hash__

    # --- dtype ---------------------------------------------------------------

    def to(self, dtype) -> "Tensor":
        if numpy.dtype(dtype) == self.dtype:
            return self
        src = self.dtype
        if not _is_float(dtype):
            return Tensor._make(self.data.astype(dtype), (), None)
        return Tensor._make(self.data.astype(dtype), (self,), lambda g: (g.astype(src),))

    def float(self):
        return self.to(float32)

    def double(self):
        return self.to(float64)

    def long(self):
        return self.to(int64)

    # --- backward ------------------------------------------------------------

    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into ``.grad`` of every leaf that requires grad.

        The core of the engine: sort the graph, then walk it from the output back,
        handing each node's gradient to its ``_backward`` and each result to the
        parent it belongs to. What the walk does besides -- undoing broadcasting,
        keeping leaf gradients unshared, adding slices in place -- is ``_accumulate``.
        Like PyTorch, the graph is freed as it is walked: each node drops its
        inputs and closure (and with them the activations they hold) once its
        gradient has been passed on.
        """
        grad = self._seed_gradient(grad)
        order = _topological_order(self)  # inputs before outputs
        if self._backward is None:  # backward on a leaf
            self.grad = grad.copy() if self.grad is None else self.grad + grad
            return
        self.grad = grad
        owned = set()  # nodes whose .grad this pass allocated and nobody else holds (see _add_slice)
        while order:
            node = order.pop()  # pop, not iterate: a processed node's arrays are freed as soon as possible
            if node._backward is None:  # a leaf: its .grad is the result
                continue
            g = node.grad
            owned.discard(id(node))
            if not node._retain:
                node.grad = None
            if g is None:  # not reached by this backward pass
                continue
            for parent, pg in zip(node._parents, node._backward(g)):  # the chain rule, one link
                if pg is not None and parent.requires_grad:
                    _accumulate(parent, pg, g, owned)
            node._parents, node._backward = (), _freed  # free the graph as we go
            del node, g  # (and drop this frame's references before the next node)

    def _seed_gradient(self, grad):
        """The gradient ``backward`` starts from: 1 for a scalar, else ``grad`` (checked)."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (and has no grad_fn)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar output, but this tensor has "
                    f"shape {self.shape}; pass grad= of that shape"
                )
            return B.xp.ones_like(self.data)
        grad = _as_array(grad, self.data.dtype)
        if grad.shape != self.data.shape:
            raise RuntimeError(f"grad has shape {tuple(grad.shape)}, but the tensor has shape {self.shape}")
        return grad

    # --- elementwise arithmetic -------------------------------------------------

    def __add__(self, other):
        a, b = _operands(self, other)
        x, y = _promoted(a, b)
        return Tensor._make(x + y, (a, b), lambda g: (g, g))

    __radd__ = __add__

    def __sub__(self, other):
        a, b = _operands(self, other)
        _check_no_bool("subtraction, the `-` operator,", a, other)
        x, y = _promoted(a, b)
        return Tensor._make(x - y, (a, b), lambda g: (g, -g))

    def __rsub__(self, other):
        a, b = _operands(self, other)
        _check_no_bool("subtraction, the `-` operator,", a, other)
        return b - a

    def __mul__(self, other):
        a, b = _operands(self, other)
        x, y = _promoted(a, b)
        return Tensor._make(
            x * y,
            (a, b),
            lambda g: (g * y if a.requires_grad else None, g * x if b.requires_grad else None),
        )

    __rmul__ = __mul__

    def __truediv__(self, other):
        a, b = _operands(self, other)
        dtype = result_type(a, b)
        x, y = _promoted(a, b, dtype if _is_float(dtype) else B.default_float)  # ids / 2 is float, as in torch
        out = x / y

        def backward(g):
            ga = g / y if a.requires_grad else None
            gb = -g * out / y if b.requires_grad else None
            return ga, gb

        return Tensor._make(out, (a, b), backward)

    def __rtruediv__(self, other):
        a, b = _operands(self, other)
        return b / a

    def __pow__(self, exponent):
        a, e = _operands(self, exponent)
        x, y = _promoted(a, e)
        if x.dtype == bool_:  # as torch: mask ** True is mask, mask ** False all True; bool ** bool tensor refused
            if isinstance(exponent, Tensor):
                raise RuntimeError("pow is not implemented for two bool tensors, as in PyTorch")
            return Tensor._make(x if exponent else B.xp.ones_like(x), (), None)
        if isinstance(exponent, (int, float)):
            # x ** c, the common case: d/dx = c x^(c-1)
            out = x**exponent
            return Tensor._make(out, (a,), lambda g: (g * exponent * x ** (exponent - 1),))
        out = x**y

        def backward(g):
            ga = g * y * x ** (y - 1) if a.requires_grad else None
            gb = g * out * B.xp.log(x) if e.requires_grad else None
            return ga, gb

        return Tensor._make(out, (a, e), backward)

    def __rpow__(self, base):
        a, b = _operands(self, base)
        return b**a

    def __neg__(self):
        _check_no_bool("negation, the `-` operator,", self)
        return Tensor._make(-self.data, (self,), lambda g: (-g,))

    def neg(self):
        return -self

    def __invert__(self):
        """``~mask``: logical not of a bool tensor, bitwise not of an integer one (no gradient)."""
        if _is_float(self.dtype):
            raise TypeError(f"~ (bitwise not) needs a bool or integer tensor, got {self.dtype}")
        return Tensor._make(~self.data, (), None)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(_lift(other, self), self)

    # comparisons give boolean tensors without gradient, as in PyTorch
    def __eq__(self, other):
        x, y = _promoted(self, _lift(other, self))
        return Tensor._make(x == y, (), None)

    def __ne__(self, other):
        x, y = _promoted(self, _lift(other, self))
        return Tensor._make(x != y, (), None)

    def __lt__(self, other):
        x, y = _promoted(self, _lift(other, self))
        return Tensor._make(x < y, (), None)

    def __le__(self, other):
        x, y = _promoted(self, _lift(other, self))
        return Tensor._make(x <= y, (), None)

    def __gt__(self, other):
        x, y = _promoted(self, _lift(other, self))
        return Tensor._make(x > y, (), None)

    def __ge__(self, other):
        x, y = _promoted(self, _lift(other, self))
        return Tensor._make(x >= y, (), None)

    # --- elementwise functions -------------------------------------------------

    def exp(self):
        out = B.xp.exp(self.data)
        return Tensor._make(out, (self,), lambda g: (g * out,))

    def log(self):
        a = self
        return Tensor._make(B.xp.log(a.data), (a,), lambda g: (g / a.data,))

    def sqrt(self):
        out = B.xp.sqrt(self.data)
        return Tensor._make(out, (self,), lambda g: (g / (2 * out),))

    def tanh(self):
        out = B.xp.tanh(self.data)
        return Tensor._make(out, (self,), lambda g: (g * (1 - out * out),))

    def sigmoid(self):
        # 1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) for x < 0: neither overflows,
        # and small results keep their relative precision
        e = B.xp.exp(-B.xp.abs(self.data))
        out = B.xp.where(self.data >= 0, 1 / (1 + e), e / (1 + e))
        return Tensor._make(out, (self,), lambda g: (g * out * (1 - out),))

    def relu(self):
        a = self
        return Tensor._make(B.xp.maximum(a.data, 0), (a,), lambda g: (g * (a.data > 0),))

    def abs(self):
        a = self
        return Tensor._make(B.xp.abs(a.data), (a,), lambda g: (g * B.xp.sign(a.data),))

    def clamp(self, min=None, max=None):
        if min is None and max is None:
            raise ValueError("clamp needs at least one of min and max")
        a = self
        out = B.xp.clip(a.data, min, max)
        # the gradient flows where the input was inside [min, max] (PyTorch's convention)
        inside = B.xp.ones(a.data.shape, dtype=bool)
        if min is not None:
            inside &= a.data >= min
        if max is not None:
            inside &= a.data <= max
        return Tensor._make(out, (a,), lambda g: (g * inside,))

    clip = clamp

    # --- reductions --------------------------------------------------------------

    def sum(self, dim=None, keepdim=False):
        a, axes = self, _dims(dim, self.ndim)
        out = B.xp.asarray(a.data.sum(axis=axes, keepdims=keepdim))  # asarray: a full sum gives a scalar
        return Tensor._make(
            out, (a,), lambda g: (B.xp.broadcast_to(_expand_reduced(g, a.shape, axes, keepdim), a.shape),)
        )

    def mean(self, dim=None, keepdim=False):
        a, axes = self, _dims(dim, self.ndim)
        n = math.prod(a.shape[i] for i in axes)
        out = B.xp.asarray(a.data.mean(axis=axes, keepdims=keepdim))
        return Tensor._make(
            out, (a,), lambda g: (B.xp.broadcast_to(_expand_reduced(g, a.shape, axes, keepdim) / n, a.shape),)
        )

    def var(self, dim=None, unbiased=True, keepdim=False, *, correction=None):
        """Variance with Bessel's correction by default, as ``torch.var``."""
        correction = (1 if unbiased else 0) if correction is None else correction
        axes = _dims(dim, self.ndim)
        n = math.prod(self.shape[i] for i in axes)
        centred = self - self.mean(dim=axes, keepdim=True)
        return (centred * centred).sum(dim=axes, keepdim=keepdim) / max(n - correction, 0)

    def max(self, dim=None, keepdim=False):
        """``x.max()`` is the largest element; ``x.max(dim)`` is ``(values, indices)``, as in PyTorch."""
        a = self
        if dim is None:
            out = B.xp.asarray(a.data.max())
            # ties share the gradient equally, as PyTorch does for a full reduction
            def backward(g):
                hit = a.data == out
                return (hit * (g / hit.sum()),)

            return Tensor._make(out, (a,), backward)
        (axis,) = _dims(dim, a.ndim)
        idx = a.data.argmax(axis=axis)
        idx_k = B.xp.expand_dims(idx, axis)
        out = B.xp.take_along_axis(a.data, idx_k, axis=axis)

        def backward(g):
            ga = B.xp.zeros_like(a.data)
            B.xp.put_along_axis(ga, idx_k, g if keepdim else B.xp.expand_dims(g, axis), axis=axis)
            return (ga,)

        values = Tensor._make(out if keepdim else out.squeeze(axis), (a,), backward)
        return MaxResult(values, Tensor(idx_k if keepdim else idx))

    def argmax(self, dim=None, keepdim=False):
        if dim is None:
            return Tensor(B.xp.asarray(self.data.argmax()))
        return Tensor(self.data.argmax(axis=dim, keepdims=keepdim))

    # --- shapes ------------------------------------------------------------------

    def reshape(self, *shape):
        a = self
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            out = a.data.reshape(shape)
        except ValueError:
            raise RuntimeError(f"shape {tuple(shape)} is invalid for a tensor of shape {a.shape} ({a.numel()} elements)") from None
        return Tensor._make(out, (a,), lambda g: (g.reshape(a.data.shape),))

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        shape = self.shape
        start, end = _dims((start_dim, end_dim), self.ndim) if shape else (0, 0)
        return self.reshape(shape[:start] + (math.prod(shape[start : end + 1]),) + shape[end + 1 :])

    def contiguous(self):
        return self

    def permute(self, *dims):
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        dims = _dims(dims, self.ndim)
        inverse = tuple(numpy.argsort(dims))
        return Tensor._make(self.data.transpose(dims), (self,), lambda g: (g.transpose(inverse),))

    def transpose(self, dim0, dim1):
        d0, d1 = _dims((dim0, dim1), self.ndim)
        return Tensor._make(B.xp.swapaxes(self.data, d0, d1), (self,), lambda g: (B.xp.swapaxes(g, d0, d1),))

    @property
    def T(self):
        return self.permute(tuple(reversed(range(self.ndim))))

    @property
    def mT(self):
        return self.transpose(-2, -1)

    def unsqueeze(self, dim):
        (d,) = _dims(dim, self.ndim + 1)
        a = self
        return Tensor._make(B.xp.expand_dims(a.data, d), (a,), lambda g: (g.reshape(a.data.shape),))

    def squeeze(self, dim=None):
        if dim is None:
            axes = tuple(i for i, n in enumerate(self.shape) if n == 1)
        else:
            axes = tuple(d for d in _dims(dim, self.ndim) if self.shape[d] == 1)  # torch ignores size != 1
        a = self
        return Tensor._make(a.data.squeeze(axis=axes), (a,), lambda g: (g.reshape(a.data.shape),))

    def expand(self, *sizes):
        sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
        lead = len(sizes) - self.ndim
        if lead < 0:
            raise RuntimeError(f"expand: {len(sizes)} sizes given for a tensor of {self.ndim} dimensions")
        shape = tuple(self.shape[i - lead] if (s == -1 and i >= lead) else s for i, s in enumerate(sizes))
        try:
            out = B.xp.broadcast_to(self.data, shape)
        except ValueError:
            raise RuntimeError(f"cannot expand a tensor of shape {self.shape} to {tuple(sizes)}") from None
        return Tensor._make(out, (self,), lambda g: (g,))  # unbroadcast sums the stretched axes

    def split(self, split_size_or_sections, dim=0):
        return split(self, split_size_or_sections, dim)

    def chunk(self, chunks, dim=0):
        n = self.shape[dim]
        return split(self, -(-n // chunks), dim)

    # --- indexing ----------------------------------------------------------------

    def __getitem__(self, index):
        """Basic (ints, slices, None, ...) and integer-array indexing.

        The backward scatters the gradient back; with integer arrays the same
        element can be picked twice, so the scatter adds (``scatter_add``).
        """
        a = self
        index = _unwrap_index(index)
        out = a.data[index]
        advanced = _is_advanced(index)

        def backward(g):
            if not advanced:  # a slice: its gradient goes into that slice of the input's (SliceGrad)
                return (SliceGrad(index, g),)
            ga = B.xp.zeros_like(a.data)
            B.scatter_add(ga, index, g)
            return (ga,)

        return Tensor._make(out, (a,), backward)

    def masked_fill(self, mask, value):
        """Where ``mask`` is True, ``value``; elsewhere self. No gradient flows through filled places."""
        a = self
        m = _lift(mask, self).data.astype(bool)
        out = B.xp.where(m, B.xp.asarray(value, dtype=a.dtype), a.data)
        return Tensor._make(out, (a,), lambda g: (B.xp.where(m, B.xp.zeros((), dtype=g.dtype), g),))

    # --- PyTorch names that are methods there too ----------------------------------

    def matmul(self, other):
        return matmul(self, other)

    def add(self, other):
        return self + other

    def sub(self, other):
        return self - other

    def mul(self, other):
        return self * other

    def div(self, other):
        return self / other

    def pow(self, exponent):
        return self**exponent

    def softmax(self, dim):
        """``e^{x - max} / sum e^{x - max}`` along ``dim``, built from the engine's own ops, so that
        autograd derives its backward and the engine imports nothing above it. ``F.softmax``
        computes the same values with a fused backward, faster: the layers call that one."""
        shifted = self - self.max(dim, keepdim=True).values.detach()  # a shift leaves softmax as it is
        e = shifted.exp()
        return e / e.sum(dim, keepdim=True)

    def log_softmax(self, dim):
        """``x - max - log sum e^{x - max}`` along ``dim``, from the engine's ops as ``softmax`` is
        (fused: ``F.log_softmax``)."""
        shifted = self - self.max(dim, keepdim=True).values.detach()
        return shifted - shifted.exp().sum(dim, keepdim=True).log()


# ---------------------------------------------------------------------------
# functions on several tensors
# ---------------------------------------------------------------------------


def _lift(value, like: Tensor) -> Tensor:
    """An operand as a Tensor. A Python number is the weakest operand (PyTorch's rule): it takes
    the tensor's dtype unless it is of a higher category (bool < int < float), and then that
    category's default dtype: ``x * 0.5`` stays float32, ``ids + 1`` stays int32 for int32 ids,
    ``ids * 0.5`` is float32 and ``mask + 1`` int64."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (bool, int, float)):
        category = 0 if isinstance(value, bool) else 1 if isinstance(value, int) else 2
        dtype = like.dtype if category <= _category(like.dtype) else (bool_, int64, B.default_float)[category]
        return Tensor._make(B.xp.asarray(value, dtype=dtype), (), None)
    return Tensor._make(B.xp.asarray(value), (), None)


def _operands(a: Tensor, other) -> tuple:
    """The two operands of an arithmetic op as Tensors, ``a`` first (``other`` lifted by ``_lift``)."""
    return a, _lift(other, a)


def _check_no_bool(op: str, *operands) -> None:
    """torch refuses ``-`` on booleans: ``~mask`` is what is usually meant."""
    if any(isinstance(v, bool) or (isinstance(v, Tensor) and v.dtype == bool_) for v in operands):
        raise RuntimeError(f"{op} with a bool tensor or a Python bool is not supported, as in PyTorch; "
                           "to invert a mask, use ~mask")


def _unwrap_index(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    if isinstance(index, list):
        return B.xp.asarray(index)
    return index


def _is_advanced(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(not (i is None or i is Ellipsis or isinstance(i, (int, slice))) for i in items)


class SliceGrad:
    """The gradient of a basic slice ``x[index]``: ``value`` at ``index``, zero elsewhere.

    Returned by ``__getitem__``'s backward instead of a zero array the size of x with
    the slice filled in: ``split`` of GPT's fused q, k, v would otherwise allocate three
    of those and add them up. ``backward`` adds the slice in place (``_add_slice``).
    """

    __slots__ = ("index", "value")

    def __init__(self, index, value):
        self.index, self.value = index, value


def _add_slice(node: Tensor, pg: SliceGrad, owned: set) -> None:
    """``node.grad[index] += value``. In place only into an array this backward pass allocated
    (``owned``) or a leaf's own ``.grad``: any other ``.grad`` may be an array some other
    node still holds (``+`` hands one ``g`` to both inputs), so it is copied first."""
    is_leaf = node._backward is None
    if node.grad is None:
        node.grad = B.xp.zeros(node.data.shape, dtype=node.data.dtype)
        owned.add(id(node))
    elif not (is_leaf or id(node) in owned):
        node.grad = node.grad.copy()
        owned.add(id(node))
    node.grad[pg.index] += pg.value


def _accumulate(parent: Tensor, pg, g, owned: set) -> None:
    """``parent.grad += pg``: one input's share of the gradient ``g`` of a node's output.

    The bookkeeping ``backward`` leaves out of its loop: ``pg`` is summed down to the
    parent's shape (``unbroadcast``) and cast to its dtype; a leaf gets an array of its
    own (``g`` itself, which ``+`` hands to both inputs, or a view, is copied); a
    ``SliceGrad`` is added into its slice in place (``_add_slice``).
    """
    if isinstance(pg, SliceGrad):
        _add_slice(parent, pg, owned)
        return
    pg = unbroadcast(B.xp.asarray(pg), parent.data.shape)  # asarray: see _make
    if pg.dtype != parent.data.dtype:
        pg = pg.astype(parent.data.dtype)
    if parent.grad is None:
        # A leaf keeps its .grad; make sure it owns it (see the invariant above).
        is_leaf = parent._backward is None
        parent.grad = pg.copy() if is_leaf and (pg is g or pg.base is not None) else pg
        owned.discard(id(parent))
    else:
        parent.grad = parent.grad + pg
        owned.add(id(parent))  # a fresh array: later slices may be added into it


def _freed(g):
    raise RuntimeError(
        "trying to backward through the graph a second time: backward() frees the graph "
        "(and the activations it holds) as it goes; run the forward pass again"
    )


def _topological_order(root: Tensor) -> list:
    """Every node that leads to ``root`` and needs a gradient, inputs before outputs.

    Iterative depth-first search with an explicit stack: no recursion limit, and
    each node is visited once, so the sort is linear in the size of the graph.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order


def matmul(a, b) -> Tensor:
    """``a @ b`` with PyTorch's rules: 1-D operands are vectors, leading dimensions broadcast,
    and both operands must have one dtype (a product never promotes)."""
    a = a if isinstance(a, Tensor) else Tensor(a)
    b = _lift(b, a)
    check_same_dtype("matmul", input=a, other=b)
    if a.ndim == 0 or b.ndim == 0:
        raise RuntimeError(f"matmul needs tensors of at least one dimension, got shapes {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise RuntimeError(
            f"matmul: shapes {a.shape} and {b.shape} cannot be multiplied "
            f"({a.shape[-1]} != {b.shape[-2 if b.ndim > 1 else 0]})"
        )
    if a.ndim == 1 or b.ndim == 1:
        # a vector is a matrix with one row (on the left) or one column (on the right)
        a2 = a.unsqueeze(0) if a.ndim == 1 else a
        b2 = b.unsqueeze(-1) if b.ndim == 1 else b
        out = matmul(a2, b2)  # (..., n, m) with n = 1 for a vector a, m = 1 for a vector b
        out = out.squeeze(-2) if a.ndim == 1 else out  # drop n first: for two vectors,
        return out.squeeze(-1) if b.ndim == 1 else out  # (1, 1) -> (1,) -> (), a dot product
    ad, bd = a.data, b.data
    if bd.ndim == 2 and ad.ndim > 2:
        # (..., K) @ (K, N): one large GEMM over all rows, rather than a batched loop
        lead = ad.shape[:-1]
        a2 = ad.reshape(-1, ad.shape[-1])
        out = (a2 @ bd).reshape(*lead, bd.shape[1])

        def backward(g):
            g2 = g.reshape(-1, g.shape[-1])
            ga = (g2 @ bd.T).reshape(ad.shape) if a.requires_grad else None
            gb = a2.T @ g2 if b.requires_grad else None
            return ga, gb

        return Tensor._make(out, (a, b), backward)

    def backward(g):
        ga = g @ B.xp.swapaxes(bd, -1, -2) if a.requires_grad else None
        gb = B.xp.swapaxes(ad, -1, -2) @ g if b.requires_grad else None
        return ga, gb

    return Tensor._make(ad @ bd, (a, b), backward)


def cat(tensors, dim=0) -> Tensor:
    """Join tensors along an existing dimension."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    (axis,) = _dims(dim, tensors[0].ndim)
    dtype = functools.reduce(promote_types, [t.dtype for t in tensors])  # torch.cat promotes
    try:
        out = B.xp.concatenate([t.data if t.dtype == dtype else t.data.astype(dtype) for t in tensors], axis=axis)
    except ValueError:
        raise RuntimeError(f"cat along dim {dim}: shapes {[t.shape for t in tensors]} do not fit") from None
    bounds = numpy.cumsum([t.shape[axis] for t in tensors])[:-1].tolist()
    return Tensor._make(out, tuple(tensors), lambda g: tuple(B.xp.split(g, bounds, axis=axis)))


def stack(tensors, dim=0) -> Tensor:
    """Join tensors of one shape along a new dimension."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if len({t.shape for t in tensors}) > 1:
        raise RuntimeError(f"stack needs tensors of one shape, got {[t.shape for t in tensors]}")
    return cat([t.unsqueeze(dim) for t in tensors], dim)


def split(tensor: Tensor, split_size_or_sections, dim=0) -> tuple:
    """Split into pieces of one size (the last may be smaller) or of the listed sizes."""
    (axis,) = _dims(dim, tensor.ndim)
    n = tensor.shape[axis]
    if isinstance(split_size_or_sections, int):
        sizes = [split_size_or_sections] * (n // split_size_or_sections)
        if n % split_size_or_sections:
            sizes.append(n % split_size_or_sections)
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise RuntimeError(f"split sizes {sizes} do not add up to {n}, the size of dim {dim}")
    pieces, start = [], 0
    for size in sizes:
        index = (slice(None),) * axis + (slice(start, start + size),)
        pieces.append(tensor[index])
        start += size
    return tuple(pieces)


def where(condition, input, other) -> Tensor:
    """``input`` where ``condition`` holds, ``other`` elsewhere (broadcasting)."""
    like = input if isinstance(input, Tensor) else other if isinstance(other, Tensor) else None
    if like is None:
        like = Tensor(input)
    cond = condition.data if isinstance(condition, Tensor) else B.xp.asarray(condition)
    a, b = _lift(input, like), _lift(other, like)
    x, y = _promoted(a, b)
    out = B.xp.where(cond, x, y)

    def backward(g):
        zero = B.xp.zeros((), dtype=g.dtype)
        ga = B.xp.where(cond, g, zero) if a.requires_grad else None
        gb = B.xp.where(cond, zero, g) if b.requires_grad else None
        return ga, gb

    return Tensor._make(out, (a, b), backward)


# ---------------------------------------------------------------------------
# creation
# ---------------------------------------------------------------------------


def tensor(data, dtype=None, requires_grad=False) -> Tensor:
    """A new tensor holding a copy of ``data``: Python floats become float32, as in PyTorch."""
    if isinstance(data, Tensor):
        data = data.data
    t = Tensor(B.xp.array(_as_array(data, dtype), copy=True), requires_grad=requires_grad)
    return t


def _shape(size):
    return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else tuple(size)


def zeros(*size, dtype=None, requires_grad=False) -> Tensor:
    return Tensor(B.xp.zeros(_shape(size), dtype=dtype or B.default_float), requires_grad=requires_grad)


def ones(*size, dtype=None, requires_grad=False) -> Tensor:
    return Tensor(B.xp.ones(_shape(size), dtype=dtype or B.default_float), requires_grad=requires_grad)


def full(size, fill_value, dtype=None, requires_grad=False) -> Tensor:
    return Tensor(B.xp.full(tuple(size), fill_value, dtype=dtype or B.default_float), requires_grad=requires_grad)


def randn(*size, dtype=None, requires_grad=False) -> Tensor:
    data = B.rng().standard_normal(_shape(size), dtype=numpy.float64).astype(dtype or B.default_float)
    return Tensor(data, requires_grad=requires_grad)


def rand(*size, dtype=None, requires_grad=False) -> Tensor:
    data = B.rng().random(_shape(size), dtype=numpy.float64).astype(dtype or B.default_float)
    return Tensor(data, requires_grad=requires_grad)


def arange(*args, dtype=None) -> Tensor:
    return Tensor(B.xp.arange(*args, dtype=dtype or int64))


def zeros_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return zeros(*t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)


def ones_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return ones(*t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)


def randn_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return randn(*t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)
