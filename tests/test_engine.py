"""The engine itself: how gradients accumulate and flow, what grad mode does, dtypes, and errors.

The ops one by one are in test_ops.py; here are the properties of
``Tensor.backward`` that hold whatever the ops.
"""

import numpy
import pytest
import torch

import minilora as ml
import minilora.nn.functional as F
from minilora.tensor import _topological_order, unbroadcast


def leaf(*shape, dtype=numpy.float64, seed=0):
    """A leaf tensor of random normal values that requires grad."""
    return ml.tensor(numpy.random.default_rng(seed).standard_normal(shape).astype(dtype), requires_grad=True)


# ---------------------------------------------------------------------------
# accumulation
# ---------------------------------------------------------------------------


def test_a_tensor_used_several_times_gets_the_sum_of_its_gradients():
    x = leaf(5)
    (x * x + x).sum().backward()  # d/dx (x^2 + x) = 2x + 1
    numpy.testing.assert_allclose(x.grad, 2 * x.numpy() + 1, rtol=1e-15)


def test_gradients_accumulate_across_backward_calls_on_leaves_as_in_torch():
    x = leaf(4)
    (x * 2).sum().backward()
    (x * 3).sum().backward()
    numpy.testing.assert_array_equal(x.grad, numpy.full(4, 5.0))
    x.backward(ml.ones(4, dtype=ml.float64))  # backward on the leaf itself adds too
    numpy.testing.assert_array_equal(x.grad, numpy.full(4, 6.0))


def test_intermediate_gradients_are_not_kept_unless_retained():
    x = leaf(3)
    y, z = x * 2, x * 3
    z.retain_grad()
    (y + z).sum().backward()
    assert y.grad is None
    numpy.testing.assert_array_equal(z.grad, numpy.ones(3))


def test_broadcasting_is_undone_in_backward():
    a, b, c = leaf(3, 1), leaf(4, seed=1), leaf(seed=2)  # (3, 1), (4,) and () broadcast to (3, 4)
    g = numpy.random.default_rng(3).standard_normal((3, 4))
    (a * b + c).backward(ml.tensor(g))
    ta, tb, tc = (torch.tensor(t.numpy(), requires_grad=True) for t in (a, b, c))
    (ta * tb + tc).backward(torch.from_numpy(g))
    for t, tt in [(a, ta), (b, tb), (c, tc)]:
        assert t.grad.shape == t.shape
        numpy.testing.assert_allclose(t.grad, tt.grad.numpy(), rtol=1e-13)


def test_unbroadcast_sums_the_stretched_axes():
    g = numpy.arange(24.0).reshape(2, 3, 4)
    numpy.testing.assert_array_equal(unbroadcast(g, (3, 1)), g.sum(axis=(0, 2))[:, None])
    numpy.testing.assert_array_equal(unbroadcast(g, ()), g.sum())
    assert unbroadcast(g, (2, 3, 4)) is g


@pytest.mark.parametrize(
    "name, fn",
    [
        ("relu at 0", lambda x: x.relu()),
        ("abs at 0", lambda x: x.abs()),
        ("clamp at its bounds", lambda x: x.clamp(0.0, 1.0)),
        ("max with ties", lambda x: x.max()),  # the gradient is split among the tied elements
        ("max(dim) with ties", lambda x: x.reshape(2, 3).max(1)[0]),  # all to the returned index
    ],
)
def test_gradients_at_kinks_follow_torch(name, fn):
    """Where no derivative exists, PyTorch picks one; minilora picks the same.
    (The op table keeps its inputs off kinks, so that finite differences apply.)"""
    data = numpy.array([1.0, 0.0, 1.0, -1.0, 1.0, 0.0])
    x, tx = ml.tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    fn(x).sum().backward()
    fn(tx).sum().backward()
    numpy.testing.assert_array_equal(x.grad, tx.grad.numpy(), err_msg=name)


# ---------------------------------------------------------------------------
# big graphs
# ---------------------------------------------------------------------------


def test_a_graph_of_100000_nodes_backpropagates_without_recursion():
    x = leaf(3)
    y = x
    for _ in range(100_000):
        y = y + x  # y = (n + 1) x, and x is used 100,000 times
    assert len(_topological_order(y)) == 100_001  # each node once: the sort is linear
    y.sum().backward()
    numpy.testing.assert_array_equal(x.grad, numpy.full(3, 100_001.0))


def test_shared_subgraphs_are_visited_once():
    # y = y + y, sixty times: 2^60 paths from y to x, but only 61 nodes. A walk
    # that followed paths rather than nodes would never end.
    x = leaf(2)
    y = x
    for _ in range(60):
        y = y + y
    assert len(_topological_order(y)) == 61
    y.sum().backward()
    numpy.testing.assert_array_equal(x.grad, numpy.full(2, 2.0**60))


# ---------------------------------------------------------------------------
# grad mode, detach, frozen inputs
# ---------------------------------------------------------------------------


def test_no_grad_builds_no_graph_and_restores_the_mode():
    x = leaf(3)
    with ml.no_grad():
        assert not ml.is_grad_enabled()
        y = (x * 2).exp().sum()
        with ml.no_grad():
            pass
        assert not ml.is_grad_enabled()  # a nested block does not switch it back on
    assert ml.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf and y._parents == ()
    with pytest.raises(ZeroDivisionError):
        with ml.no_grad():
            1 / 0
    assert ml.is_grad_enabled()  # restored after an exception too


def test_no_grad_works_as_a_decorator():
    @ml.no_grad()
    def double(t):
        """Twice t."""
        return t * 2

    x = leaf(3)
    y = double(x)
    assert not y.requires_grad and y._parents == ()
    assert ml.is_grad_enabled()
    assert double.__name__ == "double" and double.__doc__ == "Twice t."


def test_detach_shares_data_and_stops_the_gradient():
    x = leaf(3)
    d = x.detach()
    assert d.data is x.data and not d.requires_grad and d.is_leaf
    (x * 2 + d * 5).sum().backward()
    numpy.testing.assert_array_equal(x.grad, numpy.full(3, 2.0))
    assert d.grad is None


@pytest.mark.parametrize(
    "name, make",
    [
        ("matmul", lambda x, w: x @ w.T),
        ("batched matmul, (..., K) @ (K, N)", lambda x, w: x.reshape(2, 2, 4) @ w.T),
        ("linear", lambda x, w: F.linear(x, w)),
        ("mul", lambda x, w: x * w[0]),
    ],
)
def test_a_frozen_input_gets_no_gradient_and_none_is_computed(name, make):
    x, w = leaf(4, 4), leaf(3, 4, seed=1).requires_grad_(False)  # w frozen, as a base weight under LoRA
    out = make(x, w)
    g = numpy.ones(out.shape)
    # the backward closure itself must not compute dW (the product LoRA saves):
    # it returns None for every parent that does not require grad
    grads = out._backward(g)
    for parent, pg in zip(out._parents, grads):
        if not parent.requires_grad:
            assert pg is None, f"{name}: a gradient was computed for a frozen input"
    out.backward(ml.tensor(g))
    assert w.grad is None and x.grad is not None


def test_frozen_layer_norm_weight_and_attention_inputs():
    x, w, b = leaf(2, 4), leaf(4, seed=1).requires_grad_(False), leaf(4, seed=2)
    y = F.layer_norm(x, 4, w, b)
    assert y._backward(numpy.ones(y.shape))[1] is None
    q, k, v = leaf(2, 3, 4), leaf(2, 3, 4, seed=1).requires_grad_(False), leaf(2, 3, 4, seed=2)
    att = F.scaled_dot_product_attention(q, k, v)
    gq, gk, gv = att._backward(numpy.ones(att.shape))
    assert gk is None and gq is not None and gv is not None
    att.sum().backward()
    assert k.grad is None


def test_two_leaves_never_share_one_gradient_array():
    a, b = leaf(3), leaf(3, seed=1)
    (a + b).sum().backward()  # add hands the same g to both
    before = b.grad.copy()
    a.grad += 1
    numpy.testing.assert_array_equal(b.grad, before)
    x = leaf(3)
    x.sum().backward()  # sum's gradient is a read-only broadcast view; the leaf gets its own copy
    x.grad += 1
    numpy.testing.assert_array_equal(x.grad, numpy.full(3, 2.0))


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, op, torch_op",
    [
        ("mul", lambda a, b: a * b, lambda a, b: a * b),
        ("add", lambda a, b: a + b, lambda a, b: a + b),
        ("where", lambda a, b: ml.where(a > 0, a, b), lambda a, b: torch.where(a > 0, a, b)),
    ],
)
def test_float64_in_a_float32_graph_promotes_as_torch(name, op, torch_op):
    """Elementwise ops promote; products refuse to (tests/test_dtype_policy.py has the whole table)."""
    x32, y64 = leaf(3, 3, dtype=numpy.float32), leaf(3, 3, seed=1)
    out = op(x32, y64)
    assert out.dtype == numpy.float64, name
    assert torch_op(torch.tensor(x32.numpy()), torch.tensor(y64.numpy())).dtype == torch.float64
    out.sum().backward()
    assert x32.grad.dtype == numpy.float32 and y64.grad.dtype == numpy.float64, name


@pytest.mark.parametrize(
    "expr",
    [
        "x * 0.5", "0.5 * x", "x + 1", "1 + x", "x - 2.5", "2.5 - x", "x / 3", "3.0 / x",
        "x ** 2", "x ** 0.5", "2.0 ** x", "x.clamp(-0.5, 0.5)", "x.masked_fill(x > 0, 0.5)",
        "ml.where(x > 0, x, 0.5)", "x.var() / 7", "F.gelu(x)", "F.gelu(x, approximate='tanh')",
        "F.layer_norm(x, 4)", "F.dropout(x, 0.5)", "F.softmax(x * 3.0, -1)",
    ],
)
def test_python_scalars_never_upcast_float32(expr):
    x = ml.tensor(numpy.random.default_rng(0).uniform(0.5, 2, (3, 4)).astype(numpy.float32), requires_grad=True)
    y = eval(expr)
    assert y.dtype == numpy.float32, f"{expr} gives {y.dtype}"
    y.sum().backward()
    assert x.grad.dtype == numpy.float32, f"{expr}: grad is {x.grad.dtype}"


def test_python_scalars_with_integer_tensors_follow_torch():
    ids = ml.arange(4)
    assert (ids + 1).dtype == numpy.int64  # an int keeps the integer dtype
    assert (ids * 0.5).dtype == numpy.float32  # a float gives the default float, not float64


def test_dtype_casts_carry_the_gradient_back_in_the_source_dtype():
    x = leaf(3)
    y = x.float()
    assert y.dtype == numpy.float32
    (y * 2).sum().backward()
    assert x.grad.dtype == numpy.float64
    numpy.testing.assert_array_equal(x.grad, numpy.full(3, 2.0))


def test_creation_functions_default_to_float32_as_torch():
    assert ml.tensor([1.0, 2.0]).dtype == numpy.float32
    assert ml.tensor([1, 2]).dtype == numpy.int64
    assert ml.zeros(2, 3).dtype == ml.ones((2, 3)).dtype == ml.randn(2).dtype == ml.rand(2).dtype == numpy.float32
    assert ml.zeros(2, 3).shape == ml.ones((2, 3)).shape == (2, 3)
    assert ml.full((2,), 3.0).tolist() == [3.0, 3.0]
    assert ml.randn(2, dtype=ml.float64).dtype == numpy.float64
    assert ml.arange(3).dtype == numpy.int64
    assert ml.zeros_like(ml.randn(2, dtype=ml.float64)).dtype == numpy.float64
    r = ml.rand(1000).numpy()
    assert (0 <= r).all() and (r < 1).all()
    source = numpy.ones(3)
    t = ml.tensor(source)
    source[0] = 5
    assert t.tolist() == [1.0, 1.0, 1.0]  # tensor() copies


# ---------------------------------------------------------------------------
# errors say what went wrong
# ---------------------------------------------------------------------------


def test_backward_on_a_non_scalar_needs_a_gradient():
    y = leaf(2, 3) * 2
    with pytest.raises(RuntimeError, match=r"scalar.*\(2, 3\)"):
        y.backward()


def test_backward_gradient_of_the_wrong_shape():
    y = leaf(2, 3) * 2
    with pytest.raises(RuntimeError, match=r"\(3, 2\).*\(2, 3\)"):
        y.backward(ml.ones(3, 2))


def test_backward_on_a_tensor_without_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        ml.ones(3).sum().backward()


def test_backward_twice_through_a_freed_graph():
    x = leaf(3)
    y = (x * 2).exp().sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()
    z = (x * 2).exp()
    w = z.sum()
    w.backward()
    with pytest.raises(RuntimeError, match="second time"):
        (z * 3).sum().backward()  # a new root, but through z's freed node


def test_matmul_of_mismatched_shapes_names_both():
    with pytest.raises(RuntimeError, match=r"\(2, 3\).*\(4, 5\)"):
        ml.randn(2, 3) @ ml.randn(4, 5)
    with pytest.raises(RuntimeError, match=r"\(2, 3\).*\(4,\)"):
        ml.randn(2, 3) @ ml.randn(4)
    with pytest.raises(RuntimeError, match=r"\(2, 3\).*\(5, 4\)"):
        F.linear(ml.randn(2, 3), ml.randn(5, 4))


def test_only_floating_point_tensors_can_require_grad():
    with pytest.raises(RuntimeError, match="int64"):
        ml.tensor([1, 2], requires_grad=True)
    with pytest.raises(RuntimeError, match="int64"):
        ml.arange(3).requires_grad_()
    with pytest.raises(RuntimeError, match="bool"):
        ml.Tensor(numpy.array([True]), requires_grad=True)


def test_shape_errors_name_the_shapes():
    with pytest.raises(RuntimeError, match=r"\(2, 3\)"):
        ml.randn(2, 3).reshape(4, 2)
    with pytest.raises(RuntimeError, match=r"\(2, 3\).*\(4, 3\)"):
        ml.randn(2, 3).expand(4, 3)
    with pytest.raises(RuntimeError, match=r"\(2, 3\).*\(2, 4\)"):
        ml.cat([ml.randn(2, 3), ml.randn(2, 4)], dim=0)
    with pytest.raises(IndexError, match="dim 3"):
        ml.randn(2, 3).sum(dim=3)
