"""The op table: every op of the engine once, with its PyTorch twin and the inputs to try.

Each row of ``OPS`` is an :class:`Op`, for example

    Op("log", lambda x: x.log(), lambda x: x.log(), unary(values(1 / 4, 4)))

* the two functions compute the same thing, one on minilora tensors and one on
  torch tensors (here they read alike; often they don't);
* the strategy draws an :class:`Example`: the float arrays the op
  differentiates (``inputs``, passed by position, each becoming a tensor that
  requires grad) and its other arguments (``params``, passed by keyword: NumPy
  arrays among them -- index arrays, masks, targets -- become tensors of the
  library at hand, anything else is passed as it is).

``test_ops.py`` (PyTorch, finite differences, float32) and ``test_backend.py``
(the backend seam, CuPy) all read this one table: an op added here is tested
everywhere (STYLE principle 6). The helpers at the bottom run a row -- forward,
then backward with a random upstream gradient -- in minilora and in PyTorch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy
import torch
import torch.nn.functional as TF
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minilora as ml
import minilora.nn.functional as F

# ---------------------------------------------------------------------------
# values, shapes and memory layouts
# ---------------------------------------------------------------------------

GRID = 1 / 64


def values(lo=-3.0, hi=3.0, avoid=()):
    """Floats in [lo, hi] on a grid of step 1/64, each at least 1/16 away from the points in ``avoid``.

    Grid values are exact in float32 and float64 and have few significant bits,
    so sums and products of a few of them are exact whatever the order: PyTorch
    and NumPy, which add in different orders, then agree to the last bit on the
    linear ops, and a reduction cancels exactly, never to rounding noise (which
    no relative error could judge). ``avoid`` keeps inputs off kinks (0 for relu
    and abs, the bounds of clamp), where no derivative or finite difference exists.
    """
    ks = st.integers(math.ceil(lo / GRID), math.floor(hi / GRID))
    return ks.map(lambda k: k * GRID).filter(lambda v: all(abs(v - p) >= 1 / 16 for p in avoid))


def shapes(min_dims=0, max_dims=3, min_side=1, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


@st.composite
def array(draw, shape, elements=values(), unique=False):
    """A float64 array of ``shape`` in one of three memory layouts.

    ``contiguous``; ``permuted``, the view a ``permute`` leaves (like ``x.T``);
    ``strided``, every other element of a larger array. Ops must not assume
    C-contiguous inputs, and the last two layouts catch those that do.
    """
    layout = draw(st.sampled_from(["contiguous", "permuted", "strided"])) if shape else "contiguous"
    if layout == "permuted":
        perm = draw(st.permutations(range(len(shape))))
        base = draw(hnp.arrays(numpy.float64, [shape[p] for p in perm], elements=elements, unique=unique))
        return base.transpose(numpy.argsort(perm))  # shape again, strides permuted
    if layout == "strided":
        base = draw(hnp.arrays(numpy.float64, shape[:-1] + (2 * shape[-1],), elements=elements, unique=unique))
        return base[..., ::2]
    return draw(hnp.arrays(numpy.float64, shape, elements=elements, unique=unique))


def axis(shape):
    """A valid dim of ``shape``, negative ones included."""
    return st.integers(-len(shape), len(shape) - 1)


def int_array(n, max_dims=2):
    """Indices into a dim of size ``n``: negatives allowed, repeats likely (their gradients must add)."""
    return hnp.arrays(numpy.int64, shapes(1, max_dims, max_side=5), elements=st.integers(-n, n - 1))


seeds = st.integers(0, 2**32 - 1)


@dataclasses.dataclass
class Example:
    """One draw for an op: differentiable ``inputs``, other ``params``, and the upstream gradient's ``seed``."""

    inputs: tuple
    params: dict
    seed: int

    def _repr_pretty_(self, p, cycle):  # hypothesis prints failing examples with this
        p.text(repr(self))

    def __repr__(self):
        def show(a):
            layout = "" if a.flags.c_contiguous else ", non-contiguous"
            return f"array({a.tolist()}, shape={a.shape}{layout})"

        inputs = ", ".join(show(a) for a in self.inputs)
        params = ", ".join(
            f"{k}={show(v) if isinstance(v, numpy.ndarray) else repr(v)}" for k, v in self.params.items()
        )
        return f"Example(inputs=[{inputs}], params=dict({params}), seed={self.seed})"


def _params(draw, make, shape):
    return {k: draw(s) for k, s in (make(shape) if make else {}).items()}


@st.composite
def unary(draw, elements=values(), unique=False, min_dims=0, max_dims=3, min_side=1, max_side=4, params=None):
    """One input; ``params(shape)`` gives a strategy for each keyword argument, given the input's shape."""
    shape = draw(shapes(min_dims, max_dims, min_side, max_side))
    return Example((draw(array(shape, elements, unique)),), _params(draw, params, shape), draw(seeds))


@st.composite
def pair(draw, a=values(), b=values()):
    """Two inputs of mutually broadcastable shapes (``(3, 1)`` and ``(4,)``, or ``()`` and ``(2, 3)``, ...)."""
    sa, sb = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4)).input_shapes
    return Example((draw(array(sa, a)), draw(array(sb, b))), {}, draw(seeds))


# ---------------------------------------------------------------------------
# strategies for ops with structured arguments
# ---------------------------------------------------------------------------


@st.composite
def reduction(draw, unique=False, min_side=1, several=True, **params):
    """An input and ``dim`` (None, one dim, or -- if ``several`` -- a tuple of dims) and ``keepdim``."""
    shape = draw(shapes(1, 3, min_side=min_side))
    kinds = ["all", "one", "several"] if several else ["one"]
    kind = draw(st.sampled_from(kinds))
    if kind == "all":
        dim = None
    elif kind == "one":
        dim = draw(axis(shape))
    else:
        dim = tuple(draw(st.lists(axis(shape), min_size=1, unique_by=lambda d: d % len(shape))))
    p = dict(dim=dim, keepdim=draw(st.booleans()), **{k: draw(s) for k, s in params.items()})
    return Example((draw(array(shape, unique=unique)),), p, draw(seeds))


@st.composite
def matmul_operands(draw):
    """``a @ b`` in all of PyTorch's cases: matrices, batches that broadcast, and 1-D vectors on either side."""
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch_a, batch_b = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3)).input_shapes
    sa = (k,) if draw(st.booleans()) else batch_a + (n, k)
    sb = (k,) if draw(st.booleans()) else batch_b + (k, m)
    return Example((draw(array(sa)), draw(array(sb))), {}, draw(seeds))


@st.composite
def rmatmul_operands(draw):
    """``c @ x`` with ``c`` a constant array on the left."""
    n, k = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sx = draw(st.sampled_from([(k,), (k, draw(st.integers(1, 4)))]))
    c = draw(array((n, k)))
    return Example((draw(array(sx)),), dict(c=c), draw(seeds))


@st.composite
def reshaped(draw, shape):
    """A shape with as many elements as ``shape``: its sides shuffled, some neighbours merged, maybe a -1."""
    merged = []
    for side in draw(st.permutations(shape)):
        if merged and draw(st.booleans()):
            merged[-1] *= side
        else:
            merged.append(side)
    if merged and draw(st.booleans()):
        merged[draw(st.integers(0, len(merged) - 1))] = -1
    return tuple(merged)


@st.composite
def expanded(draw, shape):
    """Sizes for ``expand``: new leading dims, size-1 dims stretched, kept dims sometimes written -1."""
    lead = draw(st.lists(st.integers(1, 3), max_size=2))
    kept = [draw(st.integers(1, 3)) if n == 1 else draw(st.sampled_from([n, -1])) for n in shape]
    return tuple(lead + kept)


@st.composite
def basic_index(draw, shape):
    """Ints, slices (positive steps only, as in torch), ``None`` and maybe ``...``, as one tuple."""
    k = draw(st.integers(0, len(shape)))
    ellipsis_first = draw(st.booleans())
    sides = shape[len(shape) - k :] if ellipsis_first else shape[:k]
    items = [Ellipsis] if ellipsis_first else []
    for n in sides:
        kind = draw(st.sampled_from(["int", "slice", "all"]))
        if kind == "int":
            items.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            bound = st.none() | st.integers(-n, n)
            items.append(slice(draw(bound), draw(bound), draw(st.none() | st.integers(1, 3))))
        else:
            items.append(slice(None))
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), None)
    return tuple(items)


@st.composite
def joinable(draw, same_shape):
    """2-3 inputs for ``stack`` (one shape) or ``cat`` (sizes differ along ``dim``), and ``dim``."""
    shape = draw(shapes(0 if same_shape else 1, 3))
    count = draw(st.integers(1, 3))
    if same_shape:
        dim = draw(st.integers(-len(shape) - 1, len(shape)))
        inputs = [draw(array(shape)) for _ in range(count)]
    else:
        dim = draw(axis(shape))
        inputs = []
        for _ in range(count):
            s = list(shape)
            s[dim] = draw(st.integers(1, 3))
            inputs.append(draw(array(tuple(s))))
    return Example(tuple(inputs), dict(dim=dim), draw(seeds))


@st.composite
def split_example(draw):
    """An input, a ``dim``, and either one piece size or a list of sizes that add up to the dim's size."""
    shape = draw(shapes(1, 3))
    dim = draw(axis(shape))
    n = shape[dim]
    if draw(st.booleans()):
        size = draw(st.integers(1, n))
    else:
        cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
        size = [b - a for a, b in zip([0] + cuts, cuts + [n])]
    return Example((draw(array(shape)),), dict(size=size, dim=dim), draw(seeds))


@st.composite
def where_example(draw):
    """``condition``, ``input`` and ``other`` of three mutually broadcastable shapes."""
    sc, sa, sb = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3)).input_shapes
    cond = draw(hnp.arrays(numpy.bool_, sc))
    return Example((draw(array(sa)), draw(array(sb))), dict(cond=cond), draw(seeds))


@st.composite
def masked_fill_example(draw):
    """An input, a boolean mask that broadcasts to its shape, and the fill value."""
    shape = draw(shapes(0, 3))
    k = draw(st.integers(0, len(shape)))
    mask_shape = tuple(draw(st.sampled_from([1, n])) for n in shape[len(shape) - k :])
    mask = draw(hnp.arrays(numpy.bool_, mask_shape))
    return Example((draw(array(shape)),), dict(mask=mask, value=draw(values())), draw(seeds))


@st.composite
def linear_example(draw, bias):
    """``x`` of shape (*, in), ``weight`` (out, in) and, if ``bias``, ``bias`` (out,)."""
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    lead = draw(shapes(0, 2, max_side=3))
    inputs = [draw(array(lead + (n_in,))), draw(array((n_out, n_in)))]
    if bias:
        inputs.append(draw(array((n_out,))))
    return Example(tuple(inputs), {}, draw(seeds))


@st.composite
def embedding_example(draw):
    """A (num_embeddings, dim) table and ids of one or two dims, with repeats."""
    n, d = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    ids = draw(hnp.arrays(numpy.int64, shapes(1, 2, max_side=5), elements=st.integers(0, n - 1)))
    return Example((draw(array((n, d))),), dict(ids=ids), draw(seeds))


@st.composite
def cross_entropy_example(draw):
    """Logits (C,), (N, C) or (N, C, d), targets with some ``ignore_index`` entries, and a reduction."""
    c = draw(st.integers(2, 5))
    logits_shape = draw(st.sampled_from([(c,), (draw(st.integers(1, 4)), c), (draw(st.integers(1, 3)), c, 2)]))
    target_shape = logits_shape[:1] + logits_shape[2:] if len(logits_shape) > 1 else ()
    ignore_index = draw(st.sampled_from([-100, 1]))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    targets = st.sampled_from(list(range(c)) + [ignore_index])
    target = draw(hnp.arrays(numpy.int64, target_shape, elements=targets))
    if reduction == "mean" and (target == ignore_index).all():
        target.flat[0] = 0  # a mean over no targets is 0/0 = nan in both libraries
    p = dict(target=target, ignore_index=ignore_index, reduction=reduction)
    return Example((draw(array(logits_shape, values(-4, 4))),), p, draw(seeds))


@st.composite
def layer_norm_example(draw, affine):
    """An input normalised over its last one or two dims (each of size >= 2; values distinct, so
    no group is constant), with ``weight`` and ``bias`` if ``affine``."""
    # at least 3 elements: over 2, the output is +-1 whatever x (but for eps), and its
    # gradient, ~eps/var, is all cancellation
    normalized = draw(shapes(1, 2, min_side=2, max_side=4).filter(lambda s: math.prod(s) >= 3))
    shape = draw(shapes(0, 2, max_side=3)) + normalized
    inputs = [draw(array(shape, unique=True))]
    if affine:
        inputs += [draw(array(normalized)), draw(array(normalized))]
    return Example(tuple(inputs), dict(normalized_shape=normalized), draw(seeds))


@st.composite
def attention_example(draw):
    """q (*, L, E), k (*, S, E), v (*, S, Ev), and either ``is_causal`` or a boolean or float mask, and a scale."""
    batch = draw(shapes(0, 2, max_side=2))
    L, S, E, Ev = (draw(st.integers(1, 4)) for _ in range(4))
    q, k, v = draw(array(batch + (L, E))), draw(array(batch + (S, E))), draw(array(batch + (S, Ev)))
    p = dict(is_causal=False, attn_mask=None, scale=draw(st.none() | st.sampled_from([0.5, 2.0])))
    kind = draw(st.sampled_from(["none", "causal", "bool mask", "float mask"]))
    # a mask per (query, key), one per key for all queries (padding), or one per batch entry
    mask_shape = draw(st.sampled_from([(L, S), (1, S), batch + (1, S)]))
    if kind == "causal":
        p["is_causal"] = True
    elif kind == "bool mask":
        mask = draw(hnp.arrays(numpy.bool_, mask_shape))
        mask[~mask.any(axis=-1), 0] = True  # a query that sees no key has no softmax (nan)
        p["attn_mask"] = mask
    elif kind == "float mask":
        p["attn_mask"] = draw(array(mask_shape, values(-2, 2)))
    return Example((q, k, v), p, draw(seeds))


@st.composite
def rms_norm_example(draw, affine):
    """An input normalised over its last one or two dims (values distinct, so no group is all
    zeros), with ``weight`` if ``affine``, and ``eps`` None (the dtype's epsilon) or LLaMA's 1e-5."""
    normalized = draw(shapes(1, 2, min_side=1, max_side=4).filter(lambda s: math.prod(s) >= 2))
    shape = draw(shapes(0, 2, max_side=3)) + normalized
    inputs = [draw(array(shape, unique=True))]
    if affine:
        inputs.append(draw(array(normalized)))
    return Example(tuple(inputs), dict(normalized_shape=normalized, eps=draw(st.sampled_from([None, 1e-5]))), draw(seeds))


@st.composite
def rotary_example(draw):
    """x (..., D), D even, and ``cos``, ``sin`` of a shape that broadcasts to x's (their last dim D):
    any values, since the op is linear in x for whatever cos and sin."""
    shape = draw(shapes(0, 3, max_side=3)) + (2 * draw(st.integers(1, 3)),)
    k = draw(st.integers(1, len(shape)))
    table = tuple(draw(st.sampled_from([1, n])) for n in shape[len(shape) - k : -1]) + shape[-1:]
    p = dict(cos=draw(array(table, values(-1, 1))), sin=draw(array(table, values(-1, 1))))
    return Example((draw(array(shape)),), p, draw(seeds))


def torch_rotary(x, cos, sin):
    """Hugging Face's formula, ``x * cos + rotate_half(x) * sin``, in torch."""
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


@st.composite
def gqa_example(draw):
    """Grouped-query attention: q (*, Hq, L, E), k and v (*, Hkv, S, E) with Hq a multiple of Hkv,
    causal or with a boolean (L, S) mask or none, and ``enable_gqa=True``."""
    batch = draw(shapes(0, 1, max_side=2))
    Hkv, n_rep = draw(st.integers(1, 2)), draw(st.integers(2, 3))
    L, S, E = (draw(st.integers(1, 3)) for _ in range(3))
    q = draw(array(batch + (Hkv * n_rep, L, E)))
    k, v = draw(array(batch + (Hkv, S, E))), draw(array(batch + (Hkv, S, E)))
    p = dict(is_causal=False, attn_mask=None, enable_gqa=True)
    kind = draw(st.sampled_from(["none", "causal", "bool mask"]))
    if kind == "causal":
        p["is_causal"] = True
    elif kind == "bool mask":
        mask = draw(hnp.arrays(numpy.bool_, (L, S)))
        mask[~mask.any(axis=-1), 0] = True
        p["attn_mask"] = mask
    return Example((q, k, v), p, draw(seeds))


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Op:
    name: str
    minilora: Callable
    torch: Callable
    inputs: st.SearchStrategy

    def __str__(self):
        return self.name


scalars = values() | st.integers(-3, 3)  # a Python float or int on the left: 2.5 - x
nonzero = values(avoid=(0,))
positive = values(1 / 4, 4)

OPS = [
    # --- arithmetic, broadcasting -------------------------------------------------
    Op("add", lambda a, b: a + b, lambda a, b: a + b, pair()),
    Op("sub", lambda a, b: a - b, lambda a, b: a - b, pair()),
    Op("mul", lambda a, b: a * b, lambda a, b: a * b, pair()),
    Op("div", lambda a, b: a / b, lambda a, b: a / b, pair(b=nonzero)),
    Op("pow", lambda a, b: a**b, lambda a, b: a**b, pair(a=positive, b=values(-2, 2))),
    Op("pow_scalar", lambda x, c: x**c, lambda x, c: x**c,
       unary(positive, params=lambda s: dict(c=st.sampled_from([0.5, -1.5, 2.5])))),
    Op("pow_int", lambda x, c: x**c, lambda x, c: x**c,  # negative bases too
       unary(nonzero, params=lambda s: dict(c=st.sampled_from([0, 1, 2, 3, -1, -2])))),
    Op("neg", lambda x: -x, lambda x: -x, unary()),
    # --- reflected: a Python scalar (or an array) on the left -----------------------
    Op("radd", lambda x, c: c + x, lambda x, c: c + x, unary(params=lambda s: dict(c=scalars))),
    Op("rsub", lambda x, c: c - x, lambda x, c: c - x, unary(params=lambda s: dict(c=scalars))),
    Op("rmul", lambda x, c: c * x, lambda x, c: c * x, unary(params=lambda s: dict(c=scalars))),
    Op("rdiv", lambda x, c: c / x, lambda x, c: c / x, unary(nonzero, params=lambda s: dict(c=scalars))),
    Op("rpow", lambda x, c: c**x, lambda x, c: c**x,
       unary(values(-2, 2), params=lambda s: dict(c=positive | st.integers(1, 3)))),
    # c.numpy() is a NumPy array (a CuPy one on the GPU): ndarray @ Tensor must reach Tensor.__rmatmul__
    Op("rmatmul", lambda x, c: c.numpy() @ x, lambda x, c: c @ x, rmatmul_operands()),
    # --- matmul: batches broadcast, 1-D operands are vectors ------------------------
    Op("matmul", lambda a, b: a @ b, lambda a, b: a @ b, matmul_operands()),
    # --- elementwise functions: inputs where each is smooth ---------------------------
    Op("exp", lambda x: x.exp(), lambda x: x.exp(), unary()),
    Op("log", lambda x: x.log(), lambda x: x.log(), unary(positive)),
    Op("sqrt", lambda x: x.sqrt(), lambda x: x.sqrt(), unary(positive)),
    Op("tanh", lambda x: x.tanh(), lambda x: x.tanh(), unary()),
    Op("sigmoid", lambda x: x.sigmoid(), lambda x: x.sigmoid(), unary(values(-8, 8))),
    Op("relu", lambda x: x.relu(), lambda x: x.relu(), unary(nonzero)),
    Op("abs", lambda x: x.abs(), lambda x: x.abs(), unary(nonzero)),
    Op("clamp", lambda x, bounds: x.clamp(*bounds), lambda x, bounds: x.clamp(*bounds),
       unary(values(avoid=(-0.5, 1)),
             params=lambda s: dict(bounds=st.sampled_from([(-0.5, 1), (-0.5, None), (None, 1)])))),
    # --- reductions: dim None, int or tuple; keepdim ----------------------------------
    Op("sum", lambda x, dim, keepdim: x.sum(dim, keepdim), lambda x, dim, keepdim: x.sum(dim, keepdim),
       reduction()),
    Op("mean", lambda x, dim, keepdim: x.mean(dim, keepdim), lambda x, dim, keepdim: x.mean(dim, keepdim),
       reduction()),
    Op("var", lambda x, dim, keepdim, correction: x.var(dim, keepdim=keepdim, correction=correction),
       lambda x, dim, keepdim, correction: x.var(dim, keepdim=keepdim, correction=correction),
       reduction(unique=True, min_side=2, correction=st.sampled_from([0, 1]))),
    # distinct values: with ties, max() splits the gradient and max(dim) picks an index
    Op("max", lambda x: x.max(), lambda x: x.max(), unary(unique=True)),
    Op("max_dim", lambda x, dim, keepdim: x.max(dim, keepdim), lambda x, dim, keepdim: x.max(dim, keepdim),
       reduction(unique=True, several=False)),  # (values, indices)
    # --- shapes ---------------------------------------------------------------------
    Op("reshape", lambda x, shape: x.reshape(shape), lambda x, shape: x.reshape(shape),
       unary(params=lambda s: dict(shape=reshaped(s)))),
    # torch's view needs memory laid out to fit; minilora's view is reshape
    Op("view", lambda x, shape: x.view(*shape), lambda x, shape: x.contiguous().view(shape),
       unary(params=lambda s: dict(shape=reshaped(s)))),
    Op("flatten", lambda x, dims: x.flatten(*dims), lambda x, dims: x.flatten(*dims),
       unary(min_dims=1, params=lambda s: dict(
           dims=st.tuples(axis(s), axis(s)).filter(lambda d: d[0] % len(s) <= d[1] % len(s))))),
    Op("transpose", lambda x, d0, d1: x.transpose(d0, d1), lambda x, d0, d1: x.transpose(d0, d1),
       unary(min_dims=1, params=lambda s: dict(d0=axis(s), d1=axis(s)))),
    Op("permute", lambda x, dims: x.permute(dims), lambda x, dims: x.permute(dims),
       unary(params=lambda s: dict(dims=st.permutations(range(len(s))).map(tuple)))),
    # x.T reverses all dims; torch deprecates .T except on 2-D, so its twin says so in full
    Op("T", lambda x: x.T, lambda x: x.permute(tuple(reversed(range(x.ndim)))), unary()),
    Op("mT", lambda x: x.mT, lambda x: x.mT, unary(min_dims=2)),
    Op("unsqueeze", lambda x, dim: x.unsqueeze(dim), lambda x, dim: x.unsqueeze(dim),
       unary(params=lambda s: dict(dim=st.integers(-len(s) - 1, len(s))))),
    Op("squeeze", lambda x, dim: x.squeeze() if dim is None else x.squeeze(dim),
       lambda x, dim: x.squeeze() if dim is None else x.squeeze(dim),
       unary(min_dims=1, max_side=2, params=lambda s: dict(
           dim=st.none() | axis(s) | st.lists(axis(s), min_size=1, unique_by=lambda d: d % len(s)).map(tuple)))),
    Op("expand", lambda x, sizes: x.expand(*sizes), lambda x, sizes: x.expand(sizes),
       unary(max_side=2, params=lambda s: dict(sizes=expanded(s)))),
    # --- indexing: the backward scatters, and adds where an index repeats --------------
    Op("index_basic", lambda x, index: x[index], lambda x, index: x[index],
       unary(params=lambda s: dict(index=basic_index(s)))),
    Op("index_int_array", lambda x, i: x[i], lambda x, i: x[i],
       unary(min_dims=1, params=lambda s: dict(i=int_array(s[0])))),
    Op("index_int_array_dim1", lambda x, i: x[:, i], lambda x, i: x[:, i],
       unary(min_dims=2, params=lambda s: dict(i=int_array(s[1], max_dims=1)))),
    Op("index_two_int_arrays", lambda x, i, j: x[i, j], lambda x, i, j: x[i, j],  # i (m,) and j (k, 1) broadcast
       unary(min_dims=2, params=lambda s: dict(
           i=int_array(s[0], max_dims=1), j=int_array(s[1], max_dims=1).map(lambda j: j[:, None])))),
    Op("index_bool_mask", lambda x, m: x[m], lambda x, m: x[m],
       unary(min_dims=1, params=lambda s: dict(m=hnp.arrays(numpy.bool_, s)))),
    Op("masked_fill", lambda x, mask, value: x.masked_fill(mask, value),
       lambda x, mask, value: x.masked_fill(mask, value), masked_fill_example()),
    # --- joining and splitting ------------------------------------------------------------
    Op("cat", lambda *xs, dim: ml.cat(xs, dim), lambda *xs, dim: torch.cat(xs, dim), joinable(same_shape=False)),
    Op("stack", lambda *xs, dim: ml.stack(xs, dim), lambda *xs, dim: torch.stack(xs, dim), joinable(same_shape=True)),
    Op("split", lambda x, size, dim: ml.split(x, size, dim), lambda x, size, dim: torch.split(x, size, dim),
       split_example()),
    Op("where", lambda a, b, cond: ml.where(cond, a, b), lambda a, b, cond: torch.where(cond, a, b),
       where_example()),
    # --- minilora.nn.functional -------------------------------------------------------------
    Op("linear", lambda x, w, b: F.linear(x, w, b), lambda x, w, b: TF.linear(x, w, b), linear_example(bias=True)),
    Op("linear_no_bias", lambda x, w: F.linear(x, w), lambda x, w: TF.linear(x, w), linear_example(bias=False)),
    Op("embedding", lambda w, ids: F.embedding(ids, w), lambda w, ids: TF.embedding(ids, w), embedding_example()),
    Op("softmax", lambda x, dim: F.softmax(x, dim), lambda x, dim: TF.softmax(x, dim),
       unary(values(-4, 4), min_dims=1, params=lambda s: dict(dim=axis(s)))),
    Op("log_softmax", lambda x, dim: F.log_softmax(x, dim), lambda x, dim: TF.log_softmax(x, dim),
       unary(values(-4, 4), min_dims=1, params=lambda s: dict(dim=axis(s)))),
    # the Tensor methods of those names, composed of the engine's ops (tensor.py)
    Op("Tensor.softmax", lambda x, dim: x.softmax(dim), lambda x, dim: x.softmax(dim),
       unary(values(-4, 4), min_dims=1, params=lambda s: dict(dim=axis(s)))),
    Op("Tensor.log_softmax", lambda x, dim: x.log_softmax(dim), lambda x, dim: x.log_softmax(dim),
       unary(values(-4, 4), min_dims=1, params=lambda s: dict(dim=axis(s)))),
    Op("cross_entropy", lambda x, **kw: F.cross_entropy(x, **kw), lambda x, **kw: TF.cross_entropy(x, **kw),
       cross_entropy_example()),
    Op("gelu", lambda x: F.gelu(x), lambda x: TF.gelu(x), unary(values(-4, 4))),
    Op("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh"),
       unary(values(-4, 4))),
    Op("layer_norm", lambda x, w, b, normalized_shape: F.layer_norm(x, normalized_shape, w, b),
       lambda x, w, b, normalized_shape: TF.layer_norm(x, normalized_shape, w, b), layer_norm_example(affine=True)),
    Op("layer_norm_no_affine", lambda x, normalized_shape: F.layer_norm(x, normalized_shape),
       lambda x, normalized_shape: TF.layer_norm(x, normalized_shape), layer_norm_example(affine=False)),
    # the deterministic cases of dropout; the random ones are tested in test_ops.py
    Op("dropout_identity", lambda x, mode: F.dropout(x, *mode), lambda x, mode: TF.dropout(x, *mode),
       unary(params=lambda s: dict(mode=st.sampled_from([(0.0, True), (0.5, False)])))),  # (p, training)
    Op("scaled_dot_product_attention", lambda q, k, v, **kw: F.scaled_dot_product_attention(q, k, v, **kw),
       lambda q, k, v, **kw: TF.scaled_dot_product_attention(q, k, v, **kw), attention_example()),
    # --- the LLaMA block's ops (docs/llama.md) ---------------------------------------------------
    Op("silu", lambda x: F.silu(x), lambda x: TF.silu(x), unary(values(-8, 8))),
    Op("rms_norm", lambda x, w, normalized_shape, eps: F.rms_norm(x, normalized_shape, w, eps),
       lambda x, w, normalized_shape, eps: TF.rms_norm(x, normalized_shape, w, eps), rms_norm_example(affine=True)),
    Op("rms_norm_no_affine", lambda x, normalized_shape, eps: F.rms_norm(x, normalized_shape, eps=eps),
       lambda x, normalized_shape, eps: TF.rms_norm(x, normalized_shape, eps=eps), rms_norm_example(affine=False)),
    Op("rotary_embedding", lambda x, cos, sin: F.rotary_embedding(x, cos, sin), torch_rotary, rotary_example()),
    Op("scaled_dot_product_attention_gqa", lambda q, k, v, **kw: F.scaled_dot_product_attention(q, k, v, **kw),
       lambda q, k, v, **kw: TF.scaled_dot_product_attention(q, k, v, **kw), gqa_example()),
]


# ---------------------------------------------------------------------------
# running a row
# ---------------------------------------------------------------------------


def relative_error(actual, expected) -> float:
    """Norm-wise relative error in the max-norm: ``max|actual - expected| / max|expected|``.

    ``actual`` and ``expected`` are arrays or lists of arrays (the gradients of
    all inputs), taken as one long vector: a gradient whose every entry is
    exactly zero in exact arithmetic (that of q when each query sees one key)
    is judged against the whole gradient's size, not against its own rounding
    noise. The denominator is floored at 1e-300 so that two exact zeros give 0;
    a nan gives inf. The caller checks shapes.
    """

    def flat(arrays):
        arrays = arrays if isinstance(arrays, (list, tuple)) else [arrays]
        return numpy.concatenate([numpy.asarray(a, dtype=numpy.float64).ravel() for a in arrays] + [numpy.zeros(0)])

    actual, expected = flat(actual), flat(expected)
    if expected.size == 0:
        return 0.0
    err = float(numpy.max(numpy.abs(actual - expected)) / max(float(numpy.max(numpy.abs(expected))), 1e-300))
    return err if math.isfinite(err) else math.inf


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def upstream_gradients(outputs, seed, dtype):
    """A random normal upstream gradient for each floating output (None for integer ones, like indices)."""
    rng = numpy.random.default_rng(seed)
    return [rng.standard_normal(o.shape).astype(dtype) if numpy.dtype(o.dtype).kind == "f" else None for o in outputs]


def minilora_params(params, dtype):
    """NumPy arrays among the params become minilora tensors (float ones in ``dtype``)."""
    return {
        k: ml.tensor(v.astype(dtype) if v.dtype.kind == "f" else v) if isinstance(v, numpy.ndarray) else v
        for k, v in params.items()
    }


def minilora_run(op, example, dtype=numpy.float64, frozen=()):
    """Forward, then ``out.backward(g)`` for each floating output with a random ``g``.

    The inputs are wrapped without a copy, so they keep their memory layout
    (and an op that wrote into its input would show); those listed in
    ``frozen`` do not require grad. Returns the input tensors (``.grad``
    filled in), the output tensors, and the upstream gradients (NumPy arrays).
    """
    xs = [ml.Tensor(a.astype(dtype, copy=False), requires_grad=i not in frozen) for i, a in enumerate(example.inputs)]
    outs = _as_tuple(op.minilora(*xs, **minilora_params(example.params, dtype)))
    gs = upstream_gradients(outs, example.seed, dtype)
    for out, g in zip(outs, gs):
        if g is not None and out.requires_grad:  # (a missing gradient shows in the tests)
            out.backward(g)  # several outputs of one op must not share interior nodes: each backward frees its graph
    return xs, outs, gs


def torch_run(op, example, upstream):
    """The same in PyTorch, float64, with the same upstream gradients; returns (inputs, outputs)."""
    xs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in example.inputs]
    params = {k: torch.from_numpy(v.copy()) if isinstance(v, numpy.ndarray) else v for k, v in example.params.items()}
    outs = _as_tuple(op.torch(*xs, **params))
    pairs = [(o, torch.from_numpy(g)) for o, g in zip(outs, upstream) if g is not None]
    if pairs:
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    return xs, outs


def finite_difference_gradients(op, example, upstream, h=1e-6):
    """Central differences ``(L(x + h e_i) - L(x - h e_i)) / 2h`` of ``L(x) = sum_k <out_k(x), g_k>``.

    ``L``'s gradient is what backward computes from the upstream gradients
    ``g_k``; this one needs no autograd at all (minilora runs under no_grad).
    Error ~ h^2 f''' + eps |L| / h: about 1e-10 here, in float64.
    """
    params = minilora_params(example.params, numpy.float64)

    def loss(arrays):
        with ml.no_grad():
            outs = _as_tuple(op.minilora(*[ml.Tensor(a) for a in arrays], **params))
        return sum(float((numpy.asarray(o.numpy()) * g).sum()) for o, g in zip(outs, upstream) if g is not None)

    arrays = [numpy.array(a, dtype=numpy.float64) for a in example.inputs]  # copies we may perturb
    grads = []
    for a in arrays:
        grad = numpy.zeros_like(a)
        for i in numpy.ndindex(a.shape):
            old = a[i]
            a[i] = old + h
            up = loss(arrays)
            a[i] = old - h
            down = loss(arrays)
            a[i] = old
            grad[i] = (up - down) / (2 * h)
        grads.append(grad)
    return grads
