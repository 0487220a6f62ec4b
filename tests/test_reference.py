"""The fast kernels against their plain versions in ``minilora.nn.reference``, in float64.

``minilora.nn.functional`` and the AdamW step in ``minilora.optim`` are blocked,
threaded and in place; ``minilora.nn.reference`` says the same maths in a few lines
each (what docs/autograd.md teaches). Here each fast kernel's output and, through
the engine's ``backward``, its gradients are compared with the reference's forward
and its derivative formula, on shapes, masks and memory layouts hypothesis draws
(the strategies of op_table.py). test_ops.py compares the same kernels with PyTorch;
this file proves that the version a student reads is the one that runs.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minilora as ml
import minilora.nn.functional as F
from minilora import nn, optim
from minilora.nn import reference as R
from tolerances import unit_roundoff
from op_table import array, attention_example, layer_norm_example, relative_error, rms_norm_example, rotary_example, shapes, values

TOL = 1e-10  # float64 on both sides: only the order of the additions differs


def run_fast(fn, inputs, seed, **kwargs):
    """``fn`` on float64 tensors made from ``inputs``, then ``backward`` with a random gradient.
    Returns the output, that gradient ``g``, and the inputs' gradients."""
    ts = [ml.tensor(a, dtype=ml.float64, requires_grad=True) for a in inputs]
    out = fn(*ts, **kwargs)
    g = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(g)
    return out.numpy(), g, [t.grad for t in ts]


def assert_close(name, actual, expected):
    err = relative_error(actual, expected)
    assert err <= TOL, f"{name}: relative error {err:.3g} against minilora.nn.reference"


seeds = st.integers(0, 2**32 - 1)


@st.composite
def with_axis(draw):
    shape = draw(shapes(1, 3))
    return draw(array(shape)), draw(st.integers(-len(shape), len(shape) - 1))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@given(example=with_axis(), seed=seeds)
def test_softmax_and_log_softmax(name, example, seed):
    x, axis = example
    out, g, (dx,) = run_fast(getattr(F, name), [x], seed, dim=axis)
    assert_close(name, out, getattr(R, name)(x, axis))
    assert_close(f"{name} backward", dx, getattr(R, f"{name}_backward")(x, g, axis))


@given(data=st.data(), seed=seeds)
def test_cross_entropy(data, seed):
    n, c = data.draw(st.integers(1, 5)), data.draw(st.integers(2, 6))
    ignore_index = data.draw(st.sampled_from([-100, 1]))
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]))
    target = data.draw(hnp.arrays(np.int64, (n,), elements=st.sampled_from(list(range(c)) + [ignore_index])))
    if (target == ignore_index).all():
        target[0] = 0  # a mean over no rows is 0/0
    logits = data.draw(array((n, c), values(-4, 4)))
    kw = dict(ignore_index=ignore_index, reduction=reduction)
    out, g, (dlogits,) = run_fast(F.cross_entropy, [logits], seed, target=ml.tensor(target), **kw)
    assert_close("cross_entropy", out, R.cross_entropy(logits, target, **kw))
    assert_close("cross_entropy backward", dlogits, R.cross_entropy_backward(logits, target, g, **kw))


@given(example=layer_norm_example(affine=True))
def test_layer_norm(example):
    (x, w, b), normalized = example.inputs, example.params["normalized_shape"]
    out, g, (dx, dw, db) = run_fast(lambda x, w, b: F.layer_norm(x, normalized, w, b), [x, w, b], example.seed)
    # over the last one or two dims = over the last axis once they are flattened into one
    k = len(normalized)
    flat = lambda a: a.reshape(a.shape[: a.ndim - k] + (-1,))  # noqa: E731
    assert_close("layer_norm", flat(out), R.layer_norm(flat(x), w.reshape(-1), b.reshape(-1)))
    rdx, rdw, rdb = R.layer_norm_backward(flat(x), w.reshape(-1), flat(g))
    assert_close("layer_norm backward", [flat(dx), dw.reshape(-1), db.reshape(-1)], [rdx, rdw, rdb])


@pytest.mark.parametrize("approximate, name", [("none", "gelu"), ("tanh", "gelu_tanh")])
@given(x=shapes(0, 3).flatmap(lambda s: array(s, values(-5, 5))), seed=seeds)
def test_gelu(approximate, name, x, seed):
    out, g, (dx,) = run_fast(F.gelu, [x], seed, approximate=approximate)
    assert_close(name, out, getattr(R, name)(x))
    assert_close(f"{name} backward", dx, getattr(R, f"{name}_backward")(x, g))


@given(example=rms_norm_example(affine=True))
def test_rms_norm(example):
    (x, w), p = example.inputs, example.params
    normalized, eps = p["normalized_shape"], p["eps"] if p["eps"] is not None else float(np.finfo(np.float64).eps)
    out, g, (dx, dw) = run_fast(lambda x, w: F.rms_norm(x, normalized, w, p["eps"]), [x, w], example.seed)
    k = len(normalized)
    flat = lambda a: a.reshape(a.shape[: a.ndim - k] + (-1,))  # noqa: E731
    assert_close("rms_norm", flat(out), R.rms_norm(flat(x), w.reshape(-1), eps))
    rdx, rdw = R.rms_norm_backward(flat(x), w.reshape(-1), flat(g), eps)
    assert_close("rms_norm backward", [flat(dx), dw.reshape(-1)], [rdx, rdw])


@given(example=rotary_example())
def test_rotary_embedding(example):
    cos, sin = example.params["cos"], example.params["sin"]
    out, g, (dx,) = run_fast(lambda x: F.rotary_embedding(x, cos, sin), list(example.inputs), example.seed)
    assert_close("rotary_embedding", out, R.rotary_embedding(example.inputs[0], cos, sin))
    assert_close("rotary_embedding backward", dx, R.rotary_embedding_backward(cos, sin, g))


@given(x=shapes(0, 3).flatmap(lambda s: array(s, values(-8, 8))), seed=seeds)
def test_silu(x, seed):
    out, g, (dx,) = run_fast(F.silu, [x], seed)
    assert_close("silu", out, R.silu(x))
    assert_close("silu backward", dx, R.silu_backward(x, g))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_silu_at_the_ends_of_the_range_is_finite_and_silent(dtype, recwarn):
    # e^-x overflows to inf below about -88 (float32) and -709 (float64): sigmoid is then 0, silu -0,
    # with no warning; far above, silu(x) = x. The gradient follows: 0 far below, 1 far above.
    x = np.array([-1e4, -800.0, -100.0, -89.0, -20.0, 0.0, 20.0, 89.0, 800.0, 1e4], dtype=dtype)
    t = ml.tensor(x, requires_grad=True)
    y = F.silu(t)
    y.backward(np.ones_like(x))
    out, dx = y.numpy(), t.grad
    assert out.dtype == dtype and np.all(np.isfinite(out)) and np.all(np.isfinite(dx))
    with np.errstate(over="ignore"):
        expected = R.silu(x.astype(np.float64))
    # silu = x / (1 + e^-x): exp (within 2 ulp in NumPy), an add, a divide and the product, each rounding once
    # in ``dtype`` against a float64 reference: within 2 x 2 u + 3 u < 8 u of the value (tests/tolerances.py)
    np.testing.assert_allclose(out, expected, rtol=8 * unit_roundoff(dtype), atol=1e-30)
    assert out[0] == 0 and out[-1] == x[-1] and out[5] == 0
    assert dx[0] == 0 and dx[-1] == 1 and dx[5] == 0.5
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@given(example=attention_example())
def test_attention(example):
    p = dict(example.params)
    mask = p.pop("attn_mask")
    kw = dict(p, attn_mask=None if mask is None else ml.tensor(mask, dtype=None if mask.dtype == bool else ml.float64))
    out, g, grads = run_fast(F.scaled_dot_product_attention, list(example.inputs), example.seed, **kw)
    q, k, v = example.inputs
    assert_close("attention", out, R.attention(q, k, v, attn_mask=mask, **p))
    assert_close("attention backward", grads, R.attention_backward(q, k, v, g, attn_mask=mask, **p))


@given(
    shape=shapes(1, 3),
    lr=st.floats(1e-4, 0.3),
    betas=st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999)),
    eps=st.sampled_from([1e-8, 1e-3]),
    weight_decay=st.sampled_from([0.0, 0.01, 0.2]),
    seed=seeds,
)
def test_adamw(shape, lr, betas, eps, weight_decay, seed):
    """Ten steps of ``optim.AdamW`` (flat, in place, threaded) against ``reference.adamw_step``."""
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(shape)
    p = nn.Parameter(start.copy())
    opt = optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    ref, m, v = start, np.zeros(shape), np.zeros(shape)
    for step in range(1, 11):
        g = rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 10.0])
        p.grad = g.copy()
        opt.step()
        ref, m, v = R.adamw_step(ref, g, m, v, step, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        assert_close(f"AdamW after step {step}", p.data, ref)
