"""Every op of the op table (``op_table.py``) checked three ways, and dropout's randomness.

1. against PyTorch in float64: outputs and the gradients of every input, after
   ``out.backward(g)`` with a random ``g``, to a relative error of 1e-10;
2. against central finite differences in float64, which need no autograd at all;
   and with one input frozen (``requires_grad=False``), which must get no gradient;
3. in float32: outputs and gradients stay float32 (no silent upcast), and
   roughly agree with float64.

Hypothesis draws the shapes, the broadcasting and the memory layouts; the
"ci" profile (tests/conftest.py) keeps the number of examples modest.
"""

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minilora as ml
import minilora.nn.functional as F
from op_table import (
    OPS,
    finite_difference_gradients,
    minilora_params,
    minilora_run,
    relative_error,
    torch_run,
)
from tolerances import unit_roundoff

TORCH_TOL = 1e-10  # float64 against float64: only rounding separates the two libraries
FD_TOL = 1e-6  # central differences with h = 1e-6 are good to about 1e-10; leave room
# float32 against float64, relative to the largest value compared: loose on purpose (see the test). An op's
# float32 result carries its inputs' rounding (u = 6e-8 each) times the op's condition number, which in the
# tails is large: sigmoid(8)'s complement, 1 + erf(-4/sqrt 2) keep ~3e-3 of their value, as in PyTorch's float32.
FLOAT32_TOL = 1e-2

ops = pytest.mark.parametrize("op", OPS, ids=str)


def _numpy(a):
    return None if a is None else numpy.asarray(a.numpy() if hasattr(a, "numpy") else a)


def _worst(actual, expected):
    """Which input's gradient is furthest off, for the failure message."""
    errors = [relative_error(a, e) for a, e in zip(actual, expected)]
    if not errors:
        return ""
    worst = max(range(len(errors)), key=errors.__getitem__)
    return f"(worst: input {worst}, {errors[worst]:.3g} on its own)"


@ops
@given(data=st.data())
def test_matches_torch(op, data):
    example = data.draw(op.inputs, label="example")
    before = [a.copy() for a in example.inputs]
    xs, outs, gs = minilora_run(op, example)
    txs, touts = torch_run(op, example, gs)

    assert len(outs) == len(touts), f"{op}: {len(outs)} outputs, torch gives {len(touts)}"
    values, expected = [], []
    for k, (out, tout) in enumerate(zip(outs, touts)):
        # data is an array, never a NumPy scalar (which ops on 0-d arrays give unless wrapped)
        assert isinstance(out.data, numpy.ndarray), f"{op}: output {k} holds a {type(out.data).__name__}"
        a, b = _numpy(out), tout.detach().numpy()
        assert a.shape == b.shape, f"{op}: output {k} has shape {a.shape}, torch {b.shape}"
        if b.dtype.kind == "f":
            assert a.dtype == numpy.float64, f"{op}: output {k} is {a.dtype}"
            values.append(a)
            expected.append(b)
        else:  # indices
            numpy.testing.assert_array_equal(a, b, err_msg=f"{op}: output {k} differs from torch")
    err = relative_error(values, expected)
    assert err <= TORCH_TOL, f"{op}: output differs from torch, relative error {err:.3g}"

    grads, expected = [], []
    for i, (x, tx) in enumerate(zip(xs, txs)):
        if tx.grad is None:
            assert x.grad is None, f"{op}: input {i} got a gradient, torch gives none"
            continue
        assert x.grad is not None, f"{op}: input {i} got no gradient"
        a, b = _numpy(x.grad), tx.grad.numpy()
        assert a.shape == b.shape, f"{op}: grad of input {i} has shape {a.shape}, torch {b.shape}"
        assert a.dtype == numpy.float64, f"{op}: grad of input {i} is {a.dtype}"
        grads.append(a)
        expected.append(b)
    err = relative_error(grads, expected)
    assert err <= TORCH_TOL, f"{op}: gradient differs from torch, relative error {err:.3g} " + _worst(grads, expected)

    for i, (a, b) in enumerate(zip(example.inputs, before)):
        numpy.testing.assert_array_equal(a, b, err_msg=f"{op} wrote into its input {i}")
    # each leaf owns its .grad: writable, shared with no other leaf, input or upstream gradient
    grads = [x.grad for x in xs if x.grad is not None]
    upstream = [g for g in gs if g is not None]
    for i, grad in enumerate(grads):
        assert grad.flags.writeable, f"{op}: grad of input {i} is read-only"
        others = grads[:i] + grads[i + 1 :] + list(example.inputs) + upstream
        assert not any(numpy.shares_memory(grad, o) for o in others), f"{op}: grad of input {i} shares memory"


def _loss_scale(op, example, upstream) -> float:
    """|L| = |sum <out, g>|-sized scale of the loss the finite differences perturb."""
    params = minilora_params(example.params, numpy.float64)
    with ml.no_grad():
        results = op.minilora(*[ml.Tensor(numpy.array(a, dtype=numpy.float64)) for a in example.inputs], **params)
    results = results if isinstance(results, (tuple, list)) else (results,)
    return sum(float(numpy.abs(numpy.asarray(r.numpy()) * g).sum()) for r, g in zip(results, upstream) if g is not None)


@ops
@given(data=st.data())
def test_gradient_matches_finite_differences(op, data):
    example = data.draw(op.inputs, label="example")
    xs, _, gs = minilora_run(op, example)
    assert all(x.grad is not None for x in xs), f"{op}: an input got no gradient"
    numeric = finite_difference_gradients(op, example, gs)
    grads = [_numpy(x.grad) for x in xs]
    err = relative_error(grads, numeric)
    # Central differences carry a rounding error of about eps |L| / h ~ 1e-10 |L| whatever the
    # gradient's size; where every entry of the gradient is small (GELU deep in its negative
    # tail), that floor, not the op, would set the relative error -- so it is allowed for.
    floor = 1e-9 * max(1.0, _loss_scale(op, example, gs))
    abs_err = max((numpy.abs(a - b).max() for a, b in zip(grads, numeric) if a.size), default=0.0)
    assert err <= FD_TOL or abs_err <= floor, (
        f"{op}: gradient differs from finite differences, relative error {err:.3g} " + _worst(grads, numeric)
    )


@ops
@given(data=st.data())
def test_a_frozen_input_gets_no_gradient(op, data):
    """Freeze one input (``requires_grad=False``, as LoRA freezes the base weights): it gets
    no ``.grad``, the others get the gradients they got before, and an op on frozen inputs
    alone builds no graph."""
    example = data.draw(op.inputs, label="example")
    frozen = data.draw(st.integers(0, len(example.inputs) - 1), label="frozen input")
    reference, _, _ = minilora_run(op, example)
    xs, outs, _ = minilora_run(op, example, frozen={frozen})
    assert xs[frozen].grad is None, f"{op}: the frozen input {frozen} got a gradient"
    if len(xs) == 1:
        assert not any(out.requires_grad for out in outs), f"{op}: a frozen input gives an output that needs grad"
    for i, (x, ref) in enumerate(zip(xs, reference)):
        if i != frozen:
            assert x.grad is not None, f"{op}: input {i} got no gradient when input {frozen} was frozen"
            err = relative_error(_numpy(x.grad), _numpy(ref.grad))
            assert err <= 1e-14, f"{op}: freezing input {frozen} changed the gradient of input {i} by {err:.3g}"


@ops
@given(data=st.data())
def test_float32_stays_float32(op, data):
    """float32 in, float32 out and float32 gradients: no silent upcast to float64.

    The values are checked against the float64 run only loosely (FLOAT32_TOL):
    some ops lose most of float32's digits in their tails -- ``1 - sigmoid(8)``,
    ``1 + erf(-4/sqrt 2)`` -- PyTorch's float32 GELU as much as ours (errors up
    to ~3e-3 there), so this catches overflow and wrong results, not last digits.
    """
    example = data.draw(op.inputs, label="example")
    xs, outs, _ = minilora_run(op, example, dtype=numpy.float32)
    xs64, outs64, _ = minilora_run(op, example, dtype=numpy.float64)
    floats = [k for k, out in enumerate(outs64) if out.dtype.kind == "f"]
    for k in floats:
        assert outs[k].dtype == numpy.float32, f"{op}: float32 inputs give a {outs[k].dtype} output {k}"
    err = relative_error([_numpy(outs[k]) for k in floats], [_numpy(outs64[k]) for k in floats])
    assert err <= FLOAT32_TOL, f"{op}: float32 output is off by {err:.3g}"
    for i, x in enumerate(xs):
        assert x.grad is not None, f"{op}: input {i} got no gradient"
        assert x.grad.dtype == numpy.float32, f"{op}: float32 input {i} gets a {x.grad.dtype} gradient"
    err = relative_error([_numpy(x.grad) for x in xs], [_numpy(x.grad) for x in xs64])
    assert err <= FLOAT32_TOL, f"{op}: float32 gradient is off by {err:.3g}"


# ---------------------------------------------------------------------------
# dropout: random, so not in the table's torch comparison
# ---------------------------------------------------------------------------


def test_dropout_is_identity_without_p_or_in_eval():
    x = ml.randn(4, 5, requires_grad=True)
    assert F.dropout(x, p=0.0) is x
    assert F.dropout(x, p=0.7, training=False) is x


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_statistics(p):
    ml.manual_seed(0)
    n = 100_000
    y = F.dropout(ml.ones(n), p=p).numpy()
    dropped = (y == 0).mean()
    # the dropped fraction is binomial: within 5 standard deviations of p
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5, f"dropped {dropped:.4f}, expected {p}"
    # survivors are scaled by 1/(1-p), so that the expectation is unchanged; in float32 that scale is rounded,
    # and the product with 1 rounded once more: within 2 u of the exact 1/(1-p) (tests/tolerances.py)
    numpy.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=2 * unit_roundoff(y.dtype))


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_dropout_backward_uses_the_forward_mask(dtype):
    ml.manual_seed(1)
    x = ml.tensor(numpy.random.default_rng(0).uniform(1, 2, (30, 40)).astype(dtype), requires_grad=True)
    y = F.dropout(x, p=0.3)
    g = numpy.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    y.backward(ml.tensor(g))
    mask = y.numpy() / x.numpy()  # 0 or 1/(1-p), read off the forward output
    assert y.dtype == dtype and x.grad.dtype == dtype
    # g times the rounded scale, against g times the scale read back as fl(fl(x s) / x): at most 4 roundings in all
    numpy.testing.assert_allclose(x.grad, g * mask, rtol=4 * unit_roundoff(dtype))
    assert 0 < (mask == 0).sum() < mask.size


def test_dropout_is_reproducible_under_manual_seed():
    x = ml.ones(50)
    ml.manual_seed(7)
    a = F.dropout(x, 0.5).numpy()
    ml.manual_seed(7)
    b = F.dropout(x, 0.5).numpy()
    c = F.dropout(x, 0.5).numpy()
    numpy.testing.assert_array_equal(a, b)
    assert not numpy.array_equal(b, c)


def test_dropout_p_one_and_invalid_p():
    x = ml.randn(3, 4, requires_grad=True)
    y = F.dropout(x, p=1.0)
    assert (y.numpy() == 0).all()
    y.sum().backward()
    assert (x.grad == 0).all()
    with pytest.raises(ValueError, match="1.5"):
        F.dropout(x, p=1.5)


@pytest.mark.parametrize(
    "name, fn",
    [
        ("dropout", lambda x: F.dropout(x, p=0.4)),
        ("attention dropout", lambda x: F.scaled_dot_product_attention(x, x * 0.5, x.exp(), dropout_p=0.4)),
    ],
)
def test_dropout_gradient_by_finite_differences_with_a_fixed_seed(name, fn):
    """Re-seeding before each call makes the random op a fixed function, whose gradient
    finite differences can check: the backward must apply the very mask the forward drew."""
    from op_table import Example, Op

    def seeded(x):
        ml.manual_seed(3)
        return fn(x)

    op = Op(name, seeded, None, None)
    example = Example((numpy.random.default_rng(2).uniform(-1, 1, (2, 3, 4)),), {}, seed=5)
    xs, outs, gs = minilora_run(op, example)
    assert 0 < (outs[0].numpy() == 0).sum() or name != "dropout"
    fd = finite_difference_gradients(op, example, gs)[0]
    assert relative_error(xs[0].grad, fd) <= FD_TOL

