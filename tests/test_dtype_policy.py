"""The dtype policy is PyTorch's (docs/autograd.md, section 6), checked against torch itself.

* Elementwise ops promote as torch does -- a table over every pair of the dtypes
  minilora knows, operands with dimensions or 0-d, and Python numbers: the result's
  dtype and values must equal torch's, and where torch refuses (bool - bool), so
  does minilora.
* Products (matmul, linear, layer norm, attention) never promote: mixed dtypes raise
  a RuntimeError naming both, where torch raises too.
* Creation: a NumPy array keeps its dtype, Python floats become float32.
"""

import itertools

import numpy
import pytest
import torch
import torch.nn.functional as TF

import minilora as ml
import minilora.nn.functional as F
from tolerances import assert_close, unit_roundoff

DTYPES = [numpy.bool_, numpy.uint8, numpy.int8, numpy.int16, numpy.int32, numpy.int64,
          numpy.float16, numpy.float32, numpy.float64]
TORCH = {numpy.dtype(d): getattr(torch, name) for d, name in
         zip(DTYPES, ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"])}

ELEMENTWISE = {  # name: (minilora, torch); the same expression in both
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
    "eq": lambda a, b: a == b,
    "lt": lambda a, b: a < b,
}


def values(dtype, shape):
    """Small positive values every dtype holds exactly (bool: alternating), so results agree to rounding."""
    n = max(1, int(numpy.prod(shape)))
    base = numpy.arange(n) % 2 == 0 if dtype == numpy.bool_ else 1 + numpy.arange(n) % 3
    return numpy.asarray(base, dtype=dtype).reshape(shape)


def run_both(fn, *arrays):
    """``fn`` on minilora tensors and on torch tensors: (result or exception, result or exception)."""
    results = []
    for make in (ml.tensor, lambda a: torch.tensor(a, dtype=TORCH[a.dtype])):
        try:
            with numpy.errstate(divide="ignore", invalid="ignore"):  # x / False: inf in both
                results.append(fn(*[make(a) if isinstance(a, numpy.ndarray) else a for a in arrays]))
        except Exception as err:  # noqa: BLE001 -- which exception is compared below
            results.append(err)
    return results


def assert_same(ours, theirs, what):
    if isinstance(theirs, Exception):
        assert isinstance(ours, Exception), f"{what}: torch raises ({theirs}), minilora gives {ours.dtype}"
        return
    assert not isinstance(ours, Exception), f"{what}: minilora raises {ours!r}, torch gives {theirs.dtype}"
    assert TORCH[numpy.dtype(ours.dtype)] == theirs.dtype, f"{what}: minilora {ours.dtype}, torch {theirs.dtype}"
    expected = theirs.numpy().astype(numpy.float64)
    # The operands are small integers every dtype holds exactly, and each op rounds its result once: the two
    # libraries differ by at most that rounding on each side, 2 u of the result's dtype (0 for integers and bools).
    rtol = 2 * unit_roundoff(ours.dtype) if numpy.dtype(ours.dtype).kind == "f" else 0.0
    numpy.testing.assert_allclose(ours.numpy().astype(numpy.float64), expected, rtol=rtol, atol=0, err_msg=what)


@pytest.mark.parametrize("shapes", [((3,), (3,)), ((3,), ()), ((), (3,)), ((), ())], ids=["nd-nd", "nd-0d", "0d-nd", "0d-0d"])
def test_elementwise_ops_promote_as_torch_over_every_pair_of_dtypes(shapes):
    """9 x 9 dtype pairs x 7 ops, for one layout of the operands: 567 comparisons with torch."""
    checked = 0
    for (name, fn), da, db in itertools.product(ELEMENTWISE.items(), DTYPES, DTYPES):
        ours, theirs = run_both(fn, values(da, shapes[0]), values(db, shapes[1]))
        assert_same(ours, theirs, f"{numpy.dtype(da)} {name} {numpy.dtype(db)}, shapes {shapes}")
        checked += 1
    assert checked == len(ELEMENTWISE) * len(DTYPES) ** 2


@pytest.mark.parametrize("scalar", [True, 2, 2.5], ids=["bool", "int", "float"])
def test_python_numbers_are_the_weakest_operand_as_in_torch(scalar):
    for (name, fn), dtype in itertools.product(ELEMENTWISE.items(), DTYPES):
        for operands in ((values(dtype, (3,)), scalar), (scalar, values(dtype, (3,)))):
            if not isinstance(operands[0], numpy.ndarray) and name in ("eq", "lt"):
                continue  # a Python number on the left of == is Python's business, not the tensor's
            ours, theirs = run_both(fn, *operands)
            assert_same(ours, theirs, f"{name} of {numpy.dtype(dtype)} and {scalar!r}, operands {type(operands[0]).__name__} first")


def test_where_and_cat_promote_as_torch():
    cond = numpy.array([True, False, True])
    for da, db in itertools.product(DTYPES, DTYPES):
        a, b = values(da, (3,)), values(db, (3,))
        ours, theirs = run_both(lambda x, y: ml.where(ml.tensor(cond), x, y) if isinstance(x, ml.Tensor)
                                else torch.where(torch.tensor(cond), x, y), a, b)
        assert_same(ours, theirs, f"where({numpy.dtype(da)}, {numpy.dtype(db)})")
        ours, theirs = run_both(lambda x, y: ml.cat([x, y]) if isinstance(x, ml.Tensor) else torch.cat([x, y]), a, b)
        assert_same(ours, theirs, f"cat([{numpy.dtype(da)}, {numpy.dtype(db)}])")


def test_gradients_come_back_in_each_leafs_own_dtype():
    x16 = ml.tensor(values(numpy.float16, (3,)).astype(numpy.float16), requires_grad=True)
    x32 = ml.tensor(values(numpy.float32, (3,)), requires_grad=True)
    s64 = ml.tensor(numpy.float64(2.0), requires_grad=True)  # 0-d: float32 wins, as in torch
    out = x32 * s64 + x16
    assert out.dtype == numpy.float32
    out.sum().backward()
    assert (x16.grad.dtype, x32.grad.dtype, s64.grad.dtype) == (numpy.float16, numpy.float32, numpy.float64)
    numpy.testing.assert_array_equal(x32.grad, [2.0, 2.0, 2.0])
    assert float(s64.grad) == float(values(numpy.float32, (3,)).sum())


# ---------------------------------------------------------------------------
# products never promote
# ---------------------------------------------------------------------------

rng = numpy.random.default_rng(0)
PRODUCTS = {  # name: (minilora, torch, shapes of the operands)
    "matmul": (lambda a, b: a @ b, lambda a, b: a @ b, [(2, 3), (3, 4)]),
    "matmul, batched": (lambda a, b: a @ b, lambda a, b: a @ b, [(5, 2, 3), (5, 3, 4)]),
    "matmul, (..., K) @ (K, N)": (lambda a, b: a @ b, lambda a, b: a @ b, [(5, 2, 3), (3, 4)]),
    "matmul, vectors": (lambda a, b: a @ b, lambda a, b: a @ b, [(3,), (3,)]),
    "linear": (F.linear, TF.linear, [(5, 2, 3), (4, 3)]),
    "linear, bias": (lambda x, w, b: F.linear(x, w, b), lambda x, w, b: TF.linear(x, w, b), [(2, 3), (4, 3), (4,)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, 3, w, b), lambda x, w, b: TF.layer_norm(x, (3,), w, b),
                   [(2, 3), (3,), (3,)]),
    "scaled_dot_product_attention": (F.scaled_dot_product_attention, TF.scaled_dot_product_attention,
                                     [(1, 2, 3), (1, 2, 3), (1, 2, 3)]),
}


def product_rounding(name: str, arrays) -> tuple:
    """``(n, depth, scale)`` of tolerances.py's bound for one product of PRODUCTS on ``arrays``: n is the inner
    dimension, the scale the size of what is summed -- for a product |a| @ |b| (+ |bias|), where the result may
    cancel; for layer norm the centred inputs over their standard deviation, times the gain, plus the bias
    (normalising divides every absolute error by the deviation); for attention the largest score, whose
    rounding exp turns into a relative error of the weights, plus one, times the largest value."""
    a = [numpy.abs(x.astype(numpy.float64)) for x in arrays]
    if name == "layer_norm":
        x = arrays[0].astype(numpy.float64)
        centred = numpy.abs(x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
        return x.shape[-1], 3, float(centred.max() * a[1].max() + a[2].max())  # mean, variance, normalisation
    if name == "scaled_dot_product_attention":
        scores = a[0] @ numpy.swapaxes(a[1], -1, -2) / numpy.sqrt(a[0].shape[-1])
        return a[0].shape[-1], 3, float((1 + scores.max()) * a[2].max())  # scores, softmax, weighted sum
    if name.startswith("linear"):
        total = a[0] @ a[1].T + (a[2] if len(a) > 2 else 0)
    else:
        total = a[0] @ a[1]
    return a[0].shape[-1], 1, float(numpy.max(total))


@pytest.mark.parametrize("name", PRODUCTS)
def test_products_refuse_mixed_dtypes_naming_both_as_torch(name):
    ours_fn, torch_fn, shapes = PRODUCTS[name]
    arrays = [rng.standard_normal(s) for s in shapes]
    same = [a.astype(numpy.float32) for a in arrays]
    n, depth, scale = product_rounding(name, same)
    assert_close(ours_fn(*map(ml.tensor, same)).numpy(), torch_fn(*map(torch.tensor, same)).numpy(),
                 n=n, depth=depth, scale=scale, what=name)
    for odd in range(len(arrays)):  # one operand in float64, the others in float32
        mixed = [a.astype(numpy.float64 if i == odd else numpy.float32) for i, a in enumerate(arrays)]
        with pytest.raises(RuntimeError):
            torch_fn(*map(torch.tensor, mixed))
        with pytest.raises(RuntimeError, match=f"^{name.split(',')[0]}: .*float64.*float32|^{name.split(',')[0]}: .*float32.*float64"):
            ours_fn(*map(ml.tensor, mixed))


def test_a_float32_layer_refuses_a_float64_input_as_torch():
    layer, ref = ml.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    with pytest.raises(RuntimeError):
        ref(torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="linear: .*input is float64, weight is float32"):
        layer(ml.tensor(numpy.ones((2, 3))))
    assert layer(ml.tensor(numpy.ones((2, 3))).float()).dtype == numpy.float32
    assert ml.nn.Linear(3, 4, dtype=ml.float64)(ml.tensor(numpy.ones((2, 3)))).dtype == numpy.float64


def test_attention_masks_follow_torch():
    q = ml.tensor(rng.standard_normal((1, 2, 3)))  # float64
    tq = torch.tensor(q.numpy())
    for mask in (numpy.zeros((2, 2), dtype=numpy.float32), numpy.zeros((2, 2)), numpy.tril(numpy.ones((2, 2), dtype=bool))):
        expected = TF.scaled_dot_product_attention(tq, tq, tq, attn_mask=torch.tensor(mask))
        ours = F.scaled_dot_product_attention(q, q, q, attn_mask=ml.tensor(mask))
        assert ours.dtype == numpy.float64 and expected.dtype == torch.float64
        numpy.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-12)
    for mask in (numpy.zeros((2, 2), dtype=numpy.float16), numpy.zeros((2, 2), dtype=numpy.int64)):
        with pytest.raises(RuntimeError):
            TF.scaled_dot_product_attention(tq, tq, tq, attn_mask=torch.tensor(mask))
        with pytest.raises(RuntimeError, match=f"attn_mask must be bool, float32 or the query's dtype.*got {mask.dtype}"):
            F.scaled_dot_product_attention(q, q, q, attn_mask=ml.tensor(mask))


# ---------------------------------------------------------------------------
# creation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", [numpy.ones(3), numpy.ones(3, dtype=numpy.float32), numpy.arange(3), [1.0, 2.0], [1, 2],
                                  [True], 2.5, 3, numpy.float64(2.5)],
                         ids=["ndarray float64", "ndarray float32", "ndarray int64", "floats", "ints", "bools",
                              "float", "int", "numpy float64"])
def test_tensor_takes_its_dtype_from_the_data_as_torch(data):
    assert TORCH[ml.tensor(data).dtype] == torch.tensor(data).dtype


def test_promote_types_and_result_type_are_torchs():
    for da, db in itertools.product(DTYPES, DTYPES):
        assert TORCH[ml.promote_types(da, db)] == torch.promote_types(TORCH[numpy.dtype(da)], TORCH[numpy.dtype(db)])
    a, b = ml.tensor(numpy.ones(3, dtype=numpy.float32)), ml.tensor(numpy.float64(1.0))
    assert ml.result_type(a, b) == numpy.float32
    assert torch.result_type(torch.ones(3), torch.tensor(1.0, dtype=torch.float64)) == torch.float32
