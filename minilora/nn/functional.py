"""Functions with a fused forward and backward, as ``torch.nn.functional`` (import as ``F``).

Each function here could be written by composing Tensor ops, and the gradient
would come out right. Writing the backward by hand instead saves memory (one
node in the graph, not ten, and fewer saved intermediates) and time, and for
softmax-like functions it is also the numerically stable way. Every derivation
is in ``docs/autograd.md``; the tests check each one against PyTorch in float64
and by finite differences.

Where speed made a kernel hard to read (blocked, threaded, in place), its plain
version of a few lines is in ``minilora.nn.reference`` under the same name: read
that one first; ``tests/test_reference.py`` checks that both compute the same.
"""

from __future__ import annotations

import math

import numpy

from minilora import backend as B
from minilora.tensor import Tensor, _dims, check_same_dtype


def _t(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


# Sums along the last or the first axis, as products with a vector of ones. NumPy's
# ``sum`` along a short last axis (rows of 128 floats) does not vectorise, and along
# the first axis it makes a pass per row; BLAS does either as one matrix-vector
# product, 3-5x faster on a layer's activations.


def _row_sums(x):
    """``x.sum(axis=-1, keepdims=True)``: shape (..., 1)."""
    return x @ B.xp.ones((x.shape[-1], 1), dtype=x.dtype)


def _column_sums(x2):
    """``x2.sum(axis=0)`` of a (rows, n) array: shape (n,)."""
    return B.xp.ones(x2.shape[0], dtype=x2.dtype) @ x2


# ---------------------------------------------------------------------------
# layers' maths
# ---------------------------------------------------------------------------


def linear(input, weight, bias=None) -> Tensor:
    """``y = x W^T + b`` with ``W`` of shape (out, in), as ``torch.nn.functional.linear``.

    The leading dimensions of ``x`` are flattened so that the product is one
    large GEMM. The backward computes only what is asked for: a frozen ``W``
    (``requires_grad=False``) gets no ``dW = g^T x`` -- the saving LoRA rests on.
    """
    x, w = _t(input), weight
    check_same_dtype("linear", input=x, weight=w, bias=bias)
    if x.shape[-1] != w.shape[-1]:
        raise RuntimeError(
            f"linear: input of shape {x.shape} has {x.shape[-1]} features, "
            f"but the weight of shape {w.shape} expects {w.shape[-1]}"
        )
    x2 = x.data.reshape(-1, x.shape[-1])  # (N, in)
    y2 = x2 @ w.data.T  # (N, out)
    if bias is not None:
        y2 += bias.data
    out_shape = x.shape[:-1] + (w.shape[0],)

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])  # (N, out)
        gx = (g2 @ w.data).reshape(x.data.shape) if x.requires_grad else None
        gw = g2.T @ x2 if w.requires_grad else None
        gb = _column_sums(g2) if bias is not None and bias.requires_grad else None
        return gx, gw, gb

    parents = (x, w) if bias is None else (x, w, bias)
    return Tensor._make(y2.reshape(out_shape), parents, backward)


def _ids(ids, what: str, high: int, allowed=()):
    """Integer ids checked to lie in [0, high) (or to equal one of ``allowed``), as a backend array.

    Ids from the host (NumPy arrays, lists) are checked there, before the one copy to the
    device, which costs no sync; ids already on a GPU are checked there, and reading the
    answer makes the host wait (one sync). A training step's ids come from the host.
    """
    ids = ids.data if isinstance(ids, Tensor) else ids
    on_device = B.is_device_array(ids)
    check = ids if on_device else numpy.asarray(ids)
    if check.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got dtype {check.dtype}")
    bad = (check < 0) | (check >= high)
    for value in allowed:
        bad &= check != value
    if check.size and bool(bad.any()):
        found = B.to_numpy(check[bad])
        raise IndexError(f"{what} must lie in [0, {high}){''.join(f' or equal {v}' for v in allowed)}, "
                         f"got {found.min()} .. {found.max()} (the ones out of range)")
    return check if on_device else B.xp.asarray(check)


def embedding(input, weight, padding_idx=None) -> Tensor:
    """Rows of ``weight`` picked by integer ids; the backward adds rows back (ids repeat).
    The row ``padding_idx`` gets no gradient, as in PyTorch: padding never trains its vector."""
    idx = _ids(input, "embedding: ids", weight.shape[0])
    out = weight.data[idx]

    def backward(g):
        gw = B.xp.zeros_like(weight.data)
        B.scatter_add(gw, idx.reshape(-1), g.reshape(-1, g.shape[-1]))
        if padding_idx is not None:
            gw[padding_idx] = 0
        return (gw,)

    return Tensor._make(out, (weight,), backward)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the last dimensions.

    Backward, with ``xhat`` the normalised input and ``gh = g * weight``:
    ``dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))``.

    Computed on a (rows, n) view, rows being independent: in cache-sized blocks on
    all cores (``backend.parallel_for``), with the per-row dot products by
    ``einsum`` (no temporary the size of x) and the row means by ``_row_sums``.
    Plain version: ``minilora.nn.reference.layer_norm`` and ``layer_norm_backward``.
    """
    x = _t(input)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[-len(shape) :] != shape:
        raise RuntimeError(f"layer_norm: normalized_shape {shape} does not match the input's last dims {x.shape}")
    check_same_dtype("layer_norm", input=x, weight=weight, bias=bias)
    xp = B.xp
    n = math.prod(shape)
    x2 = x.data.reshape(-1, n)  # (rows, n)
    w = weight.data.reshape(n) if weight is not None else None
    b = bias.data.reshape(n) if bias is not None else None
    xhat, y = xp.empty_like(x2), xp.empty_like(x2)
    rstd = xp.empty((x2.shape[0], 1), dtype=x2.dtype)

    def forward(a, c):
        xh = xhat[a:c]
        xp.subtract(x2[a:c], _row_sums(x2[a:c]) * (1 / n), out=xh)  # centred, then normalised in place
        var = xp.einsum("ij,ij->i", xh, xh) / n
        rstd[a:c, 0] = 1.0 / xp.sqrt(var + eps)
        xh *= rstd[a:c]
        if w is not None:
            xp.multiply(xh, w, out=y[a:c])
        else:
            y[a:c] = xh
        if b is not None:
            y[a:c] += b

    B.parallel_for(x2.shape[0], forward, row_size=n)

    def backward(g):
        g2 = xp.ascontiguousarray(g).reshape(-1, n)
        gw = xp.einsum("ij,ij->j", g2, xhat).reshape(shape) if weight is not None and weight.requires_grad else None
        gb = _column_sums(g2).reshape(shape) if bias is not None and bias.requires_grad else None
        gx = _normalized_input_grad(g2, xhat, rstd, w, centred=True).reshape(x.data.shape) if x.requires_grad else None
        return gx, gw, gb

    parents = (x, weight if weight is not None else _none(), bias if bias is not None else _none())
    return Tensor._make(y.reshape(x.data.shape), parents, backward)


def rms_norm(input, normalized_shape, weight=None, eps=None) -> Tensor:
    """``y = x / sqrt(mean(x^2) + eps) * weight`` over the last dimensions, as ``torch.nn.functional.rms_norm``
    (Zhang & Sennrich, 2019, eq. 4): LayerNorm without the centring and without a bias.

    ``eps=None`` is PyTorch's default, the dtype's machine epsilon (LLaMA passes its ``rms_norm_eps``).
    Backward, with ``r = 1 / sqrt(mean(x^2) + eps)``, ``xhat = x r`` and ``gh = g * weight``:
    ``dx = r * (gh - xhat * mean(gh * xhat))``, ``dweight = sum over rows of g * xhat``
    (the derivation is ``layer_norm``'s with the mean term gone; docs/llama.md).

    Computed like ``layer_norm``: a (rows, n) view in cache-sized blocks on all cores,
    the per-row dot products by ``einsum``. The plain version, a few Tensor ops whose
    backward autograd derives, is ``minilora.nn.reference.rms_norm``.
    """
    x = _t(input)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[-len(shape) :] != shape:
        raise RuntimeError(f"rms_norm: normalized_shape {shape} does not match the input's last dims {x.shape}")
    xp = B.xp
    eps = float(xp.finfo(x.dtype).eps) if eps is None else eps
    n = math.prod(shape)
    x2 = x.data.reshape(-1, n)  # (rows, n)
    w = weight.data.reshape(n) if weight is not None else None
    xhat, y = xp.empty_like(x2), xp.empty_like(x2)
    rstd = xp.empty((x2.shape[0], 1), dtype=x2.dtype)

    def forward(a, c):
        ms = xp.einsum("ij,ij->i", x2[a:c], x2[a:c]) / n  # mean of squares, (block,)
        rstd[a:c, 0] = 1.0 / xp.sqrt(ms + eps)
        xp.multiply(x2[a:c], rstd[a:c], out=xhat[a:c])
        if w is not None:
            xp.multiply(xhat[a:c], w, out=y[a:c])
        else:
            y[a:c] = xhat[a:c]

    B.parallel_for(x2.shape[0], forward, row_size=n)

    def backward(g):
        g2 = xp.ascontiguousarray(g).reshape(-1, n)
        gw = xp.einsum("ij,ij->j", g2, xhat).reshape(shape) if weight is not None and weight.requires_grad else None
        gx = _normalized_input_grad(g2, xhat, rstd, w, centred=False).reshape(x.data.shape) if x.requires_grad else None
        return gx, gw

    parents = (x, weight if weight is not None else _none())
    return Tensor._make(y.reshape(x.data.shape), parents, backward)


def _normalized_input_grad(g2, xhat, rstd, w, centred: bool):
    """dx of ``y = xhat * w`` (rows of n), ``xhat = (x - mean) * rstd`` (layer norm, ``centred``) or ``x * rstd``
    (RMS norm): ``dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))`` with ``gh = g * w``, the ``mean(gh)``
    term only when centred. Row blocks on all cores, in place in the result."""
    xp, n = B.xp, g2.shape[1]
    gx = xp.empty_like(g2)

    def rows(a, c):
        gh = gx[a:c]
        if w is not None:
            xp.multiply(g2[a:c], w, out=gh)
        else:
            gh[...] = g2[a:c]
        mean_gh_xhat = (xp.einsum("ij,ij->i", gh, xhat[a:c]) / n)[:, None]  # (block, 1)
        if centred:
            gh -= _row_sums(gh) * (1 / n)
        gh -= xhat[a:c] * mean_gh_xhat
        gh *= rstd[a:c]

    B.parallel_for(g2.shape[0], rows, row_size=n)
    return gx


def _none() -> Tensor:
    """A placeholder parent for an absent weight or bias: it never needs a gradient."""
    return Tensor._make(B.xp.zeros(()), (), None)


def dropout(input, p=0.5, training=True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)``."""
    x = _t(input)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must lie in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = B.rng().random(x.shape, dtype=B.xp.float32) >= p
    scale = B.xp.asarray(1.0 / (1.0 - p), dtype=x.dtype)
    mask = keep * scale  # (0 or 1/(1-p)), in x's dtype
    return Tensor._make(x.data * mask, (x,), lambda g: (g * mask,))


# ---------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------


def relu(input) -> Tensor:
    return _t(input).relu()


def tanh(input) -> Tensor:
    return _t(input).tanh()


def sigmoid(input) -> Tensor:
    return _t(input).sigmoid()


def _blockwise(x: Tensor, forward, backward) -> Tensor:
    """An elementwise op from two in-place kernels (GELU's tanh form, SiLU), run block by block on
    all cores (``backend.parallel_for``): ``forward(d, saved, out)`` writes the output and one array
    the gradient needs, ``backward(d, saved, g, grad)`` writes the gradient."""
    d = x.data
    d_flat = B.xp.ascontiguousarray(d).reshape(-1)
    saved, out = B.xp.empty_like(d_flat), B.xp.empty_like(d_flat)
    B.parallel_for(d_flat.size, lambda a, b: forward(d_flat[a:b], saved[a:b], out[a:b]))

    def grad_fn(g):
        g_flat = B.xp.ascontiguousarray(g).reshape(-1)
        grad = B.xp.empty_like(d_flat)
        B.parallel_for(d_flat.size, lambda a, b: backward(d_flat[a:b], saved[a:b], g_flat[a:b], grad[a:b]))
        return (grad.reshape(d.shape),)

    return Tensor._make(out.reshape(d.shape), (x,), grad_fn)


def _silu_forward(d, s, out):
    """s = sigmoid(d) = 1 / (1 + e^-d), out = d s; in place in s and out. Where e^-d overflows to inf
    (d below about -88 in float32, -709 in float64), 1 / (1 + inf) = 0 is sigmoid to the dtype's range."""
    B.xp.negative(d, out=s)
    with numpy.errstate(over="ignore"):
        B.xp.exp(s, out=s)
    s += 1
    B.xp.reciprocal(s, out=s)
    B.xp.multiply(d, s, out=out)


def _silu_backward(d, s, g, out):
    """out = g s (1 + d (1 - s))."""
    B.xp.subtract(1, s, out=out)
    out *= d
    out += 1
    out *= s
    out *= g


def silu(input) -> Tensor:
    """``silu(x) = x sigmoid(x)`` (Elfwing et al., 2018; "swish"), LLaMA's activation, fused:
    with ``s = sigmoid(x)``, ``d silu / dx = s + x s (1 - s) = s (1 + x (1 - s))``.

    Memory-bound like GELU, so the same kind of kernels: in place, block by block, on all cores
    (about 3.5x faster than ``x.data * where(...)`` on a SwiGLU activation). Plain version:
    ``minilora.nn.reference.silu`` (and ``silu_backward``)."""
    return _blockwise(_t(input), _silu_forward, _silu_backward)


def erf(x):
    """The error function on a backend array (NumPy has none), to the precision of its dtype.

    float64 (what the reference tests use): below 3 the everywhere-positive series
    ``erf(x) = 2/sqrt(pi) e^{-x^2} sum_n 2^n x^{2n+1} / (2n+1)!!`` (no cancellation),
    above it ``1 - erfc(x)`` from erfc's continued fraction
    ``erfc(x) = e^{-x^2}/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))``;
    60 terms each, about 1e-15 relative.

    float32 (training): Abramowitz & Stegun 7.1.26, ``1 - (a1 t + ... + a5 t^5) e^{-x^2}``
    with ``t = 1/(1 + p x)``, absolute error below 1.5e-7 -- float32's own resolution,
    at a dozen array operations instead of 120.
    """
    xp = B.xp
    ax = xp.abs(x)
    if x.dtype != xp.float64:
        t = 1 / (1 + 0.3275911 * ax)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        return xp.sign(x) * (1 - poly * xp.exp(-ax * ax))
    xs = xp.minimum(ax, 3.0)
    term, total, two_x2 = xs.copy(), xs.copy(), 2 * xs * xs
    for n in range(1, 60):
        term = term * two_x2 / (2 * n + 1)
        total += term
    series = (2 / math.sqrt(math.pi)) * xp.exp(-xs * xs) * total
    xl = xp.maximum(ax, 3.0)
    frac = xp.zeros_like(xl)
    for k in range(60, 0, -1):
        frac = (k / 2) / (xl + frac)
    tail = 1 - xp.exp(-xl * xl) / (math.sqrt(math.pi) * (xl + frac))
    return xp.sign(x) * xp.where(ax < 3.0, series, tail)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_tanh_forward(d, t, out):
    """t = tanh(sqrt(2/pi) (d + 0.044715 d^3)), out = 0.5 d (1 + t); in place in t and out."""
    B.xp.multiply(d, d, out=t)
    t *= 0.044715
    t += 1
    t *= d
    t *= _SQRT_2_OVER_PI
    B.xp.tanh(t, out=t)
    B.xp.add(t, 1, out=out)
    out *= d
    out *= 0.5


def _gelu_tanh_backward(d, t, g, out):
    """out = g * (0.5 (1 + t) + 0.5 d (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 d^2))."""
    B.xp.multiply(d, d, out=out)
    out *= 3 * 0.044715
    out += 1
    out *= _SQRT_2_OVER_PI
    out *= d
    one_minus_t2 = t * t
    B.xp.subtract(1, one_minus_t2, out=one_minus_t2)
    out *= one_minus_t2
    out += t
    out += 1
    out *= 0.5
    out *= g


def gelu(input, approximate="none") -> Tensor:
    """GELU(x) = x Phi(x) (Hendrycks & Gimpel); ``approximate="tanh"`` is GPT-2's form
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.

    Plain versions: ``minilora.nn.reference.gelu`` and ``gelu_tanh`` (with their ``_backward``).
    """
    x = _t(input)
    d = x.data
    if approximate == "tanh":
        # GELU is memory-bound: the kernels work in place on as few (B, T, 4C) arrays as
        # possible, and on all cores (backend.parallel_for), one contiguous chunk each.
        return _blockwise(x, _gelu_tanh_forward, _gelu_tanh_backward)
    if approximate != "none":
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    cdf = 0.5 * (1 + erf(d * (1 / math.sqrt(2.0))))
    out = d * cdf

    def backward(g):
        pdf = B.xp.exp(-0.5 * d * d) * (1 / math.sqrt(2 * math.pi))
        return (g * (cdf + d * pdf),)

    return Tensor._make(out, (x,), backward)


# ---------------------------------------------------------------------------
# softmax and friends
# ---------------------------------------------------------------------------


def _softmax_array(x, axis):
    """Softmax of a backend array along one axis, shifted by the max so exp never overflows."""
    e = x - x.max(axis=axis, keepdims=True)
    B.xp.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def softmax(input, dim) -> Tensor:
    """``softmax(x)_i = e^{x_i} / sum_j e^{x_j}``; backward ``dx = s * (g - sum(g * s))``.

    Plain version: ``minilora.nn.reference.softmax`` and ``softmax_backward``."""
    x = _t(input)
    (axis,) = _dims(dim, x.ndim)
    s = _softmax_array(x.data, axis)

    def backward(g):
        gs = g * s
        gs -= s * gs.sum(axis=axis, keepdims=True)
        return (gs,)

    return Tensor._make(s, (x,), backward)


def log_softmax(input, dim) -> Tensor:
    """``log_softmax(x) = x - logsumexp(x)``; backward ``dx = g - softmax(x) * sum(g)``.

    Plain version: ``minilora.nn.reference.log_softmax`` and ``log_softmax_backward``."""
    x = _t(input)
    (axis,) = _dims(dim, x.ndim)
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = shifted - B.xp.log(B.xp.exp(shifted).sum(axis=axis, keepdims=True))
    return Tensor._make(out, (x,), lambda g: (g - B.xp.exp(out) * g.sum(axis=axis, keepdims=True),))


def cross_entropy(input, target, ignore_index=-100, reduction="mean") -> Tensor:
    """Softmax cross-entropy from logits, as ``torch.nn.functional.cross_entropy``.

    ``input`` is (N, C) or (N, C, d1, ...) with the class dimension second, as
    in PyTorch; ``target`` holds class ids, and ids equal to ``ignore_index``
    count for nothing (the mean is over the rest). Fused: the gradient is
    ``(softmax(x) - onehot(target)) / n`` -- no log-softmax node is kept.
    Plain version, for (N, C) logits: ``minilora.nn.reference.cross_entropy`` and
    ``cross_entropy_backward``.
    """
    x = _t(input)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if x.ndim == 0:
        raise RuntimeError("cross_entropy: the input needs a class dimension, got a 0-d tensor")
    n_classes = x.shape[1] if x.ndim > 1 else x.shape[0]
    t = _ids(target, "cross_entropy: targets", n_classes, allowed=(ignore_index,))
    if x.ndim == 1:
        x2, t2 = x.data[None, :], t.reshape(1)
    else:
        if t.shape != x.shape[:1] + x.shape[2:]:
            raise RuntimeError(f"cross_entropy: input of shape {x.shape} does not fit target of shape {tuple(t.shape)}")
        # put the class dimension last and flatten the rest: (N * d1 * ..., C)
        x2 = B.xp.moveaxis(x.data, 1, -1).reshape(-1, x.shape[1])
        t2 = t.reshape(-1)
    valid = t2 != ignore_index
    safe_t = B.xp.where(valid, t2, 0)
    rows = B.xp.arange(x2.shape[0])
    shifted = x2 - x2.max(axis=1, keepdims=True)
    logsumexp = B.xp.log(B.xp.exp(shifted).sum(axis=1))
    losses = (logsumexp - shifted[rows, safe_t]) * valid  # (M,)
    count = valid.sum().astype(x2.dtype)
    if reduction == "mean":
        out = losses.sum() / count
    elif reduction == "sum":
        out = losses.sum()
    else:
        out = losses.reshape(t.shape)

    def backward(g):
        grad = B.xp.exp(shifted - logsumexp[:, None])  # softmax, (M, C)
        grad[rows, safe_t] -= 1
        if reduction == "mean":
            grad *= (g / count) * valid[:, None]
        elif reduction == "sum":
            grad *= g * valid[:, None]
        else:
            grad *= (g.reshape(-1) * valid)[:, None]
        if x.ndim == 1:
            return (grad[0],)
        moved = grad.reshape(x.shape[:1] + x.shape[2:] + (n_classes,))
        return (B.xp.moveaxis(moved, -1, 1),)

    return Tensor._make(B.xp.asarray(out, dtype=x.dtype), (x,), backward)


# ---------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------

_causal_cache: dict = {}


def _causal_bias(L, S, dtype):
    """0 where query i may see key j (j <= i), -inf above the diagonal; cached per shape."""
    key = (L, S, B.xp.dtype(dtype).str, B.name)
    if key not in _causal_cache:
        above = B.xp.triu(B.xp.ones((L, S), dtype=bool), k=1)
        _causal_cache[key] = B.xp.where(above, B.xp.asarray(-B.xp.inf, dtype=dtype), B.xp.zeros((), dtype=dtype))
    return _causal_cache[key]


def scaled_dot_product_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
) -> Tensor:
    """``softmax(q k^T * scale + mask) v`` (Vaswani et al., eq. 1), fused.

    Shapes as in PyTorch: q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev).
    ``is_causal`` lets query i see keys 0..i; a boolean ``attn_mask`` marks with
    True the pairs that may attend, a float one is added to the scores.

    Backward, with ``P`` the attention probabilities and ``P'`` them after dropout:
    ``dv = P'^T g``, ``dP = (g v^T) * dropmask``, ``dS = P * (dP - sum(dP * P))``,
    ``dq = dS k * scale``, ``dk = dS^T q * scale``.

    Batch entries are independent, so both passes run a few at a time
    (``backend.parallel_for`` over the first batch dimension): a block's (L, S)
    scores stay in cache through scaling, masking, softmax and the product with v,
    blocks run on all cores, and the backward never holds more than a block's dP.
    q, k and v are used as they come -- GPT's are strided views into c_attn's output,
    which BLAS reads directly -- so nothing but P is kept for the backward. The
    softmax's row sums are products with a vector of ones (``_row_sums``).
    Plain version: ``minilora.nn.reference.attention`` and ``attention_backward``.

    ``enable_gqa`` (grouped-query attention, PyTorch's argument): q has Hq heads and k, v
    fewer, Hkv, in dim -3; query head h reads key/value head ``h // (Hq / Hkv)``. See
    ``_grouped_query_attention``: k and v are never repeated.
    """
    q, k, v = _t(query), _t(key), _t(value)
    if enable_gqa and q.ndim >= 3 and k.ndim >= 3 and q.shape[-3] != k.shape[-3]:
        return _grouped_query_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2] or q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise RuntimeError(f"attention: shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit")
    check_same_dtype("scaled_dot_product_attention", query=q, key=k, value=v)
    xp = B.xp
    batch, (L, E), (S, Ev) = q.shape[:-2], q.shape[-2:], v.shape[-2:]
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    c = xp.asarray(scale, dtype=q.dtype)
    # views with one leading batch dimension to split blocks along (a 2-D input gets one of size 1)
    q3, k3, v3 = (t.data if batch else t.data[None] for t in (q, k, v))
    lead = q3.shape[:-2]  # (n, ...): blocks are ranges of the first entry
    bias = _causal_bias(L, S, q.dtype) if is_causal else None  # (L, S), added to the scores
    mask = None
    if attn_mask is not None:
        mask = attn_mask.data if isinstance(attn_mask, Tensor) else xp.asarray(attn_mask)
        if mask.dtype != bool and mask.dtype != q.dtype:
            if mask.dtype != xp.float32:  # torch takes a bool mask, a float32 one, or one of q's dtype
                raise RuntimeError(f"scaled_dot_product_attention: attn_mask must be bool, float32 or the "
                                   f"query's dtype ({q.dtype}), got {mask.dtype}")
            mask = mask.astype(q.dtype)
        if mask.ndim > 2:  # a mask per batch entry: a view lined up with the batch, sliced per block
            mask = xp.broadcast_to(mask, lead + mask.shape[-2:])
    drop = None
    if dropout_p > 0.0:  # drawn up front, so the mask does not depend on how blocks are scheduled
        keep = B.rng().random(lead + (L, S), dtype=xp.float32) >= dropout_p
        drop = keep * xp.asarray(1.0 / (1.0 - dropout_p), dtype=q.dtype)
    P = xp.empty(lead + (L, S), dtype=q.dtype)  # softmax probabilities, kept for the backward
    out = xp.empty(lead + (L, Ev), dtype=q.dtype)
    n, per_entry = lead[0], math.prod(lead[1:]) * L * S  # blocks of the first dim; scores per entry

    def heads_mask(a, b):
        return mask if mask is None or mask.ndim <= 2 else mask[a:b]

    def forward(a, b):  # heads a..b
        scores = P[a:b]
        xp.matmul(q3[a:b] * c, xp.swapaxes(k3[a:b], -1, -2), out=scores)  # scale q (L, E), not the scores (L, S)
        if bias is not None:
            scores += bias
        m = heads_mask(a, b)
        if m is not None and m.dtype == bool:
            scores[...] = xp.where(m, scores, xp.asarray(-xp.inf, dtype=scores.dtype))
        elif m is not None:
            scores += m
        scores -= scores.max(axis=-1, keepdims=True)  # softmax, in place
        xp.exp(scores, out=scores)
        scores *= 1 / _row_sums(scores)
        xp.matmul(scores * drop[a:b] if drop is not None else scores, v3[a:b], out=out[a:b])

    with B.blas_single_threaded():
        B.parallel_for(n, forward, row_size=per_entry)

    def backward(g):
        g3 = g if batch else g[None]
        gq = xp.empty(q3.shape, dtype=q3.dtype) if q.requires_grad else None
        gk = xp.empty(k3.shape, dtype=k3.dtype) if k.requires_grad else None
        gv = xp.empty(v3.shape, dtype=v3.dtype) if v.requires_grad else None

        def heads(a, b):
            Pb = P[a:b]
            Pd = Pb * drop[a:b] if drop is not None else Pb
            if gv is not None:
                xp.matmul(xp.swapaxes(Pd, -1, -2), g3[a:b], out=gv[a:b])
            if gq is None and gk is None:
                return
            dS = g3[a:b] @ xp.swapaxes(v3[a:b], -1, -2)  # dP, (block, L, S)
            if drop is not None:
                dS *= drop[a:b]
            # dS = P * (dP - sum_j dP_j P_j), in place; the row sums without an (L, S) temporary
            dS -= xp.einsum("...ij,...ij->...i", dS, Pb)[..., None]
            dS *= Pb
            dS *= c  # the scale of q k^T, once for both gradients
            if gq is not None:
                xp.matmul(dS, k3[a:b], out=gq[a:b])
            if gk is not None:
                xp.matmul(xp.swapaxes(dS, -1, -2), q3[a:b], out=gk[a:b])

        with B.blas_single_threaded():
            B.parallel_for(n, heads, row_size=per_entry)
        return tuple(None if t is None else t.reshape(x.shape) for t, x in ((gq, q), (gk, k), (gv, v)))

    return Tensor._make(out.reshape(batch + (L, Ev)), (q, k, v), backward)


def _grouped_query_attention(q, k, v, attn_mask, dropout_p, is_causal, scale) -> Tensor:
    """Attention where n_rep = Hq / Hkv query heads share each key/value head (Ainslie et al., 2023).

    Hugging Face repeats k and v n_rep times (``repeat_kv``); instead, the n_rep query heads
    of a group are stacked along the query axis, q (..., Hq, L, E) -> (..., Hkv, n_rep L, E),
    which is a plain reshape because heads h = j n_rep + r of group j are neighbours. Each
    group then is one ordinary attention of n_rep L queries over its own S keys -- larger
    products, k and v read once -- and the mask, which depends on a query's position only,
    is tiled n_rep times along the query axis. The output goes back to (..., Hq, L, Ev).
    """
    Hq, L, E = q.shape[-3:]
    Hkv, S = k.shape[-3], k.shape[-2]
    if Hq % Hkv or v.shape[-3] != Hkv:
        raise RuntimeError(f"attention with enable_gqa: the query's {Hq} heads must be a multiple of the "
                           f"key's {Hkv} and the value's {v.shape[-3]} heads (dim -3), and those two equal")
    if is_causal and attn_mask is not None:
        raise RuntimeError("attention: pass either is_causal or attn_mask, not both")
    n_rep, batch = Hq // Hkv, q.shape[:-3]
    xp = B.xp
    if is_causal:
        attn_mask = _causal_bias(L, S, q.dtype)  # (L, S), 0 or -inf
    if attn_mask is not None:
        m = attn_mask.data if isinstance(attn_mask, Tensor) else xp.asarray(attn_mask)
        if m.ndim <= 2:  # one (L, S) mask for every head
            m = xp.tile(xp.broadcast_to(m, (L, S)), (n_rep, 1))  # (n_rep L, S)
        else:  # a mask per head: each group's n_rep masks stacked like the queries
            m = xp.broadcast_to(m, batch + (Hq, L, S)).reshape(batch + (Hkv, n_rep * L, S))
        attn_mask = m
    q_grouped = q.reshape(batch + (Hkv, n_rep * L, E))  # (..., Hkv, n_rep L, E)
    y = scaled_dot_product_attention(q_grouped, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    return y.reshape(batch + (Hq, L, v.shape[-1]))  # (..., Hq, L, Ev)


# ---------------------------------------------------------------------------
# rotary position embedding
# ---------------------------------------------------------------------------


def rotary_embedding(input, cos, sin) -> Tensor:
    """Rotary position embedding (Su et al., 2021, "RoFormer", eq. 34) in Hugging Face's
    ``rotate_half`` layout: ``y = x * cos + rotate_half(x) * sin``.

    ``x`` is (..., D) with D even, split in halves ``x1 = x[..., :D/2]``, ``x2 = x[..., D/2:]``;
    ``rotate_half(x) = cat(-x2, x1)``. ``cos`` and ``sin`` (constants, no gradient) broadcast
    to x's shape; LLaMA's are ``cos(p theta_i)`` and ``sin(p theta_i)`` for position p, each
    frequency theta_i written in both halves, so pair (x1_i, x2_i) is turned by the angle
    p theta_i -- a 2-D rotation (derivation in docs/llama.md).

    Fused, on the halves, without the concatenation that ``rotate_half`` builds:

        y1 = x1 c1 - x2 s1,         y2 = x2 c2 + x1 s2
        dx1 = g1 c1 + g2 s2,        dx2 = g2 c2 - g1 s1

    i.e. ``dx = g * cos - rotate_half(g * sin)``: the backward of a rotation by +angle is
    the rotation by -angle. The plain version is ``minilora.nn.reference.rotary_embedding``.
    """
    x = _t(input)
    xp = B.xp
    c = cos.data if isinstance(cos, Tensor) else xp.asarray(cos)
    s = sin.data if isinstance(sin, Tensor) else xp.asarray(sin)
    D = x.shape[-1] if x.ndim else 0
    if x.ndim == 0 or D % 2:
        raise RuntimeError(f"rotary_embedding: the last dim of the input must be even (pairs of features), got shape {x.shape}")
    for name, t in (("cos", c), ("sin", s)):
        try:
            fits = xp.broadcast_shapes(x.shape, t.shape) == x.shape
        except ValueError:
            fits = False
        if not fits:
            raise RuntimeError(f"rotary_embedding: {name} of shape {tuple(t.shape)} does not broadcast to the input's {x.shape}")
    h = D // 2
    x1, x2 = x.data[..., :h], x.data[..., h:]
    c1, c2, s1, s2 = c[..., :h], c[..., h:], s[..., :h], s[..., h:]
    y = xp.empty(x.shape, dtype=x.dtype)
    xp.multiply(x1, c1, out=y[..., :h])
    y[..., :h] -= x2 * s1
    xp.multiply(x2, c2, out=y[..., h:])
    y[..., h:] += x1 * s2

    def backward(g):
        g1, g2 = g[..., :h], g[..., h:]
        gx = xp.empty(x.shape, dtype=g.dtype)
        xp.multiply(g1, c1, out=gx[..., :h])
        gx[..., :h] += g2 * s2
        xp.multiply(g2, c2, out=gx[..., h:])
        gx[..., h:] -= g1 * s1
        return (gx,)

    return Tensor._make(y, (x,), backward)
