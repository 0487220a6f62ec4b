"""The backend seam holds: all engine code reaches arrays through ``backend.xp``.

The proof is a stand-in array module. Its arrays (``StandInArray``) are NumPy
arrays that refuse to meet a plain ``numpy.ndarray``: any ufunc, NumPy function,
index or assignment that mixes the two raises. With the stand-in as the
backend, every op of the op table runs forward and backward; had some engine
code made an array with ``numpy.`` instead of ``backend.xp.``, it would either
mix it in (and raise) or hand it out (and fail the type checks below). That is
what would break on CuPy, without needing a GPU to find out.

At the end, the real thing: the op table on CuPy, when CuPy and a GPU are there.
"""

import contextlib
import subprocess
import sys
import types
from pathlib import Path

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minilora as ml
import minilora.nn.functional as F
from minilora import backend
from op_table import OPS, minilora_run, relative_error, torch_run

# ---------------------------------------------------------------------------
# the stand-in array module
# ---------------------------------------------------------------------------


class StandInArray(numpy.ndarray):
    """A NumPy array that raises when it meets a plain ``numpy.ndarray`` (scalars are fine)."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _refuse_plain_arrays((inputs, kwargs), f"numpy.{ufunc.__name__}.{method}")
        out = kwargs.get("out")
        if out:
            kwargs["out"] = _unwrap(out)
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        if out:  # an in-place op: hand back the caller's own arrays
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        _refuse_plain_arrays((args, kwargs), f"numpy.{func.__name__}")
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getitem__(self, index):
        _refuse_plain_arrays(index, "indexing")
        return _wrap(super().__getitem__(index))  # x[0] of a 1-D array: a 0-d array, as on CuPy

    # NumPy's own methods that answer with a scalar where CuPy gives a 0-d array
    def argmax(self, *args, **kwargs):
        return _wrap(super().argmax(*args, **kwargs))

    def argmin(self, *args, **kwargs):
        return _wrap(super().argmin(*args, **kwargs))

    def __setitem__(self, index, value):
        _refuse_plain_arrays((index, value), "item assignment")
        super().__setitem__(index, value)


def _refuse_plain_arrays(obj, where):
    if isinstance(obj, numpy.ndarray) and not isinstance(obj, StandInArray):
        raise TypeError(
            f"a plain numpy.ndarray {obj.shape} met the stand-in backend in {where}: "
            "engine code must make its arrays with backend.xp, not numpy"
        )
    if isinstance(obj, (tuple, list)):
        for item in obj:
            _refuse_plain_arrays(item, where)
    elif isinstance(obj, dict):
        for item in obj.values():
            _refuse_plain_arrays(item, where)


def _unwrap(obj):
    if isinstance(obj, StandInArray):
        return obj.view(numpy.ndarray)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_unwrap(item) for item in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _wrap(obj):
    """Results as StandInArrays -- 0-d ones too, as on CuPy, where NumPy would give a scalar."""
    if type(obj) is numpy.ndarray or isinstance(obj, numpy.generic):
        return numpy.asarray(obj).view(StandInArray)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_wrap(item) for item in obj)
    return obj


class _StandInGenerator:
    """``numpy.random.Generator`` whose draws are StandInArrays."""

    def __init__(self, seed):
        self._rng = numpy.random.default_rng(seed)

    def __getattr__(self, name):
        method = getattr(self._rng, name)
        return lambda *args, **kwargs: _wrap(method(*args, **kwargs))


def _make_standin_module() -> types.ModuleType:
    """NumPy's namespace, with the functions that make arrays from scratch returning StandInArrays.

    Everything else is NumPy's own: functions of arrays dispatch on their
    StandInArray arguments (``__array_function__``, ``__array_ufunc__``), so a
    plain array that sneaks in is caught there.
    """
    module = types.ModuleType("standin_numpy")  # not "numpy": caches keyed on the backend name stay apart

    def creating(fn):
        return lambda *args, **kwargs: _wrap(fn(*_unwrap(args), **kwargs))

    makers = ["array", "asarray", "ascontiguousarray", "zeros", "ones", "empty", "full", "arange", "eye", "linspace"]
    for name in makers:
        setattr(module, name, creating(getattr(numpy, name)))
    module.random = types.SimpleNamespace(default_rng=_StandInGenerator)
    module.ndarray = StandInArray
    module.__getattr__ = lambda name: getattr(numpy, name)  # the rest of NumPy's namespace (PEP 562)
    return module


standin = _make_standin_module()


@contextlib.contextmanager
def using_backend(module):
    """Run the block with ``module`` as the backend, and restore the previous one (and the seed)."""
    previous, seed = backend.xp, backend._seed
    backend.set_backend(module)
    try:
        yield
    finally:
        backend.set_backend(previous)
        backend.manual_seed(seed)


# ---------------------------------------------------------------------------
# the stand-in is strict (a test of the test double)
# ---------------------------------------------------------------------------


def test_the_standin_refuses_plain_numpy_arrays():
    a = standin.ones(3)
    assert type(a) is StandInArray
    for mix in [lambda: a + numpy.ones(3), lambda: numpy.concatenate([a, numpy.ones(3)]),
                lambda: a[numpy.array([0, 1])], lambda: a.__setitem__(0, numpy.ones(()))]:
        with pytest.raises(TypeError, match="plain numpy.ndarray"):
            mix()
    # scalars, NumPy's included, and its own arrays are fine; results stay stand-ins
    results = [
        a * 2.0, a * numpy.float32(2), numpy.exp(a), a.sum(), a.sum(axis=0, keepdims=True), a.argmax(), a[0],
        standin.where(a > 0, a, 0.0), a.reshape(3, 1) @ a.reshape(1, 3), standin.random.default_rng(0).standard_normal(3),
    ]
    for result in results:
        assert type(result) is StandInArray
    b = standin.zeros(3)
    numpy.exp(a, out=b)
    assert type(b) is StandInArray and b[0] == numpy.e


# ---------------------------------------------------------------------------
# every op of the table through the stand-in
# ---------------------------------------------------------------------------


def _assert_standin(tensor, what):
    assert isinstance(tensor.data, StandInArray), f"{what} is a {type(tensor.data).__name__}, not from backend.xp"


@pytest.mark.parametrize("op", OPS, ids=str)
@given(data=st.data())
def test_every_op_goes_through_the_backend_seam(op, data):
    example = data.draw(op.inputs, label="example")
    with using_backend(standin):
        xs, outs, _ = minilora_run(op, example)
        for k, out in enumerate(outs):
            _assert_standin(out, f"{op}: output {k}")
        for i, x in enumerate(xs):
            assert isinstance(x.grad, StandInArray), f"{op}: grad of input {i} is a {type(x.grad).__name__}"


@pytest.mark.parametrize(
    "name, make",
    [
        ("randn", lambda: ml.randn(2, 3)),
        ("rand", lambda: ml.rand(2, 3)),
        ("zeros", lambda: ml.zeros(2, 3)),
        ("ones", lambda: ml.ones(2)),
        ("full", lambda: ml.full((2,), 1.5)),
        ("arange", lambda: ml.arange(4)),
        ("tensor", lambda: ml.tensor([1.0, 2.0])),
        ("zeros_like", lambda: ml.zeros_like(ml.ones(2))),
        ("randn_like", lambda: ml.randn_like(ml.ones(2))),
        ("comparison", lambda: ml.ones(2) > 0),
        ("argmax", lambda: ml.randn(3).argmax()),
        ("dropout", lambda: F.dropout(ml.randn(4, 5, requires_grad=True), 0.5)),
        ("attention dropout", lambda: F.scaled_dot_product_attention(
            *(ml.randn(2, 3, 4, requires_grad=True) for _ in range(3)), dropout_p=0.5, is_causal=True)),
    ],
)
def test_creation_and_random_ops_go_through_the_backend_seam(name, make):
    with using_backend(standin):
        t = make()
        _assert_standin(t, name)
        if t.requires_grad:
            t.sum().backward()


# ---------------------------------------------------------------------------
# choosing a backend
# ---------------------------------------------------------------------------


def test_an_unknown_backend_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="'jax'.*numpy.*cupy"):
        backend.set_backend("jax")
    assert backend.get_backend() == "numpy"


def test_cupy_without_cupy_or_a_gpu_raises_a_clear_error():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("CuPy and a GPU are present: the error cannot happen here")
    except Exception:
        pass
    previous = backend.xp
    with pytest.raises(RuntimeError, match="CuPy and a CUDA GPU"):
        backend.set_backend("cupy")
    assert backend.xp is previous and backend.get_backend() == "numpy"  # nothing half-switched


def test_manual_seed_makes_randn_reproducible():
    ml.manual_seed(42)
    a, b = ml.randn(5).numpy(), ml.randn(5).numpy()
    ml.manual_seed(42)
    numpy.testing.assert_array_equal(ml.randn(5).numpy(), a)
    numpy.testing.assert_array_equal(ml.randn(5).numpy(), b)
    ml.manual_seed(43)
    assert not numpy.array_equal(ml.randn(5).numpy(), a)


def test_the_environment_variable_picks_the_backend_at_import():
    code = "import minilora; print(minilora.get_backend())"
    root = Path(__file__).resolve().parents[1]

    def import_with(name):
        env = {"MINILORA_BACKEND": name}
        return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)

    assert import_with("numpy").stdout.strip() == "numpy"
    bogus = import_with("bogus")
    assert bogus.returncode != 0 and "unknown backend 'bogus'" in bogus.stderr


# ---------------------------------------------------------------------------
# the CPU: blocked loops on every core, the allocator
# ---------------------------------------------------------------------------


def test_parallel_for_covers_every_index_once(monkeypatch):
    monkeypatch.setattr(backend, "BLOCK", 7)
    seen = numpy.zeros(100, dtype=int)

    def kernel(a, b):
        seen[a:b] += 1

    backend.parallel_for(100, kernel)
    assert (seen == 1).all()
    seen[:] = 0
    backend.parallel_for(100, kernel, row_size=3)  # blocks of 2 rows
    assert (seen == 1).all()


def test_keep_freed_memory_is_asked_of_glibc():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert backend.keep_freed_memory() is True


# ---------------------------------------------------------------------------
# the real thing: CuPy on a GPU
# ---------------------------------------------------------------------------


@pytest.fixture(scope="class")
def cupy_backend():
    cupy = pytest.importorskip("cupy", reason="needs CuPy and a CUDA GPU: CuPy is not installed")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CuPy without a driver or a device
        pytest.skip(f"needs CuPy and a CUDA GPU: {err}")
    if count == 0:
        pytest.skip("needs CuPy and a CUDA GPU: no CUDA device found")
    with using_backend("cupy"):
        yield cupy


@pytest.mark.gpu
@pytest.mark.usefixtures("cupy_backend")
class TestCuPy:
    @pytest.mark.parametrize("op", OPS, ids=str)
    @given(data=st.data())
    def test_op_matches_torch_on_the_gpu(self, op, data):
        import cupy

        example = data.draw(op.inputs, label="example")
        xs, outs, gs = minilora_run(op, example)
        txs, touts = torch_run(op, example, gs)
        for k, out in enumerate(outs):
            assert isinstance(out.data, cupy.ndarray), f"{op}: output {k} is a {type(out.data).__name__}"
        floats = [k for k, t in enumerate(touts) if t.dtype.is_floating_point]
        err = relative_error([outs[k].numpy() for k in floats], [touts[k].detach().numpy() for k in floats])
        assert err <= 1e-10, f"{op}: output differs from torch on the GPU, relative error {err:.3g}"
        for i, x in enumerate(xs):
            assert isinstance(x.grad, cupy.ndarray), f"{op}: grad of input {i} is a {type(x.grad).__name__}"
        err = relative_error([backend.to_numpy(x.grad) for x in xs], [tx.grad.numpy() for tx in txs])
        assert err <= 1e-10, f"{op}: gradient differs from torch on the GPU, relative error {err:.3g}"
