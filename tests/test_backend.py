"""The backend seam holds: minilora runs on CuPy through ``backend.xp``, and nothing bypasses it.

Without a GPU the proof is the CuPy stand-in (``tests/fake_cupy``, put in CuPy's place by
``tests/cupy_standin.py``): its arrays are not NumPy arrays, NumPy cannot read them, and a
NumPy array that meets one raises -- so engine code that made an array with ``numpy.``
instead of ``backend.xp.``, or read a device value without saying so, fails here as it
would on a GPU. With CuPy and a GPU installed, the same tests run on the real thing.
Every op of the op table runs forward and backward on the 'cupy' backend and is compared
with PyTorch.
"""

import subprocess
import sys
from pathlib import Path

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minilora as ml
import minilora.nn.functional as F
from minilora import backend
import cupy_standin
from op_table import OPS, minilora_run, relative_error, torch_run

# ---------------------------------------------------------------------------
# choosing a backend
# ---------------------------------------------------------------------------


def test_an_unknown_backend_name_lists_the_known_ones():
    previous = backend.get_backend()
    with pytest.raises(ValueError, match="'jax'.*numpy.*cupy"):
        backend.set_backend("jax")
    assert backend.get_backend() == previous


def test_cupy_without_cupy_raises_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # what `import cupy` meets where CuPy is not installed
    previous = backend.xp, backend.get_backend()
    with pytest.raises(RuntimeError, match="CuPy and a CUDA GPU"):
        backend.set_backend("cupy")
    assert (backend.xp, backend.get_backend()) == previous  # nothing half-switched


@pytest.mark.parametrize("version", ["13.6.0", "12.3.0", "14.0.0rc1", "14.2.0", "15.0.0"])
def test_cupy_older_than_14_is_refused_by_name(cupy_module, monkeypatch, version):
    monkeypatch.setattr(cupy_module, "__version__", version)
    previous = backend.xp
    try:
        if version.startswith(("12", "13")):
            with pytest.raises(RuntimeError, match=rf"needs CuPy >= 14\.0 .*put_along_axis.*found CuPy {version}.*gpu-cuda12"):
                backend.set_backend("numpy")
                backend.set_backend("cupy")
            assert backend.get_backend() == "numpy"  # nothing half-switched
        else:
            backend.set_backend("cupy")
            assert backend.get_backend() == "cupy"
    finally:
        backend.set_backend(previous)


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
    on_cupy = subprocess.run([sys.executable, "-c", code], cwd=root, env=cupy_standin.subprocess_env(),
                             capture_output=True, text=True)
    assert on_cupy.stdout.strip() == "cupy" or "CUDA" in on_cupy.stderr, on_cupy.stderr  # (a real CuPy without a GPU)
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
# the CuPy branch: the stand-in on a CPU, or the real CuPy on a GPU
# ---------------------------------------------------------------------------


def test_the_standin_is_as_strict_as_cupy(cupy_module, counters):
    """A test of the test double: what CuPy refuses, the stand-in refuses; what makes a GPU wait, it counts."""
    cupy = cupy_module
    a = cupy.ones(3, dtype=numpy.float32)
    assert not isinstance(a, numpy.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        numpy.asarray(a)
    for mix in [lambda: a + numpy.ones(3), lambda: numpy.ones(3) * a, lambda: cupy.concatenate([a, numpy.ones(3)]),
                lambda: a.__setitem__(slice(None), numpy.zeros(3)), lambda: a[numpy.array([0, 1])]]:
        with pytest.raises(TypeError, match="host \\(NumPy\\) array met a device array"):
            mix()
    # NumPy's functions on device arrays run on the device (NEP 13, 18); results stay there, 0-d ones too
    for result in [numpy.exp(a), numpy.concatenate([a, a]), a.sum(), a[0], a.argmax(), cupy.linalg.norm(a)]:
        assert isinstance(result, cupy.ndarray)
    assert counters.total_syncs == 0
    assert float(a.sum()) == 3.0 and bool(a.any()) and a.max().item() == 1.0 and cupy.asnumpy(a).shape == (3,)
    assert counters.syncs == {"float": 1, "bool": 1, "item": 1, "get": 1} and counters.to_host["get"] == 1
    cupy.asarray(numpy.zeros(4))
    assert counters.to_device["numpy array"] == 1
    # CuPy's Generator has no normal(), choice() or permutation(): NumPy's does
    rng = cupy.random.default_rng(0)
    assert not any(hasattr(rng, name) for name in ("normal", "choice", "permutation", "shuffle"))
    assert isinstance(rng.standard_normal((2, 3), dtype=numpy.float32), cupy.ndarray)
    # only CuPy's names: NumPy's lib, ma, char, and functions CuPy lacks are absent
    assert not any(hasattr(cupy, name) for name in ("lib", "ma", "char", "nditer", "recarray", "asmatrix"))


def test_the_standin_memory_hook_sees_allocations_and_frees(cupy_module):
    cupy = cupy_module

    class Peak(cupy.cuda.MemoryHook):
        name = "test-peak"

        def __init__(self):
            self.live = self.peak = 0

        def malloc_postprocess(self, **kw):
            self.live += kw["mem_size"]
            self.peak = max(self.peak, self.live)

        def free_postprocess(self, **kw):
            self.live -= kw["mem_size"]

    with Peak() as hook:
        a = cupy.zeros((1000,), dtype=numpy.float32)  # 4000 bytes -> 4096 in the pool's 512-byte units
        b = a[::2]  # a view: no allocation
        del a, b
        c = cupy.ones((10,))
    assert hook.peak >= 4096 and hook.live == c.nbytes + (-c.nbytes % 512)


def _assert_device(tensor, what):
    assert backend.is_device_array(tensor.data), f"{what} is a {type(tensor.data).__name__}, not a device array"


@pytest.mark.usefixtures("cupy_backend")
class TestCuPy:
    @pytest.mark.parametrize("op", OPS, ids=str)
    @given(data=st.data())
    def test_op_matches_torch_on_cupy(self, op, data):
        example = data.draw(op.inputs, label="example")
        xs, outs, gs = minilora_run(op, example)
        txs, touts = torch_run(op, example, gs)
        for k, out in enumerate(outs):
            _assert_device(out, f"{op}: output {k}")
        floats = [k for k, t in enumerate(touts) if t.dtype.is_floating_point]
        err = relative_error([outs[k].numpy() for k in floats], [touts[k].detach().numpy() for k in floats])
        assert err <= 1e-10, f"{op}: output differs from torch on CuPy, relative error {err:.3g}"
        for i, x in enumerate(xs):
            assert backend.is_device_array(x.grad), f"{op}: grad of input {i} is a {type(x.grad).__name__}"
        err = relative_error([backend.to_numpy(x.grad) for x in xs], [tx.grad.numpy() for tx in txs])
        assert err <= 1e-10, f"{op}: gradient differs from torch on CuPy, relative error {err:.3g}"

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
    def test_creation_and_random_ops_make_device_arrays(self, name, make):
        t = make()
        _assert_device(t, name)
        if t.requires_grad:
            t.sum().backward()

    @pytest.mark.parametrize("where", ["host", "device"])
    def test_ids_out_of_range_are_refused_where_they_are(self, where, request):
        ids = numpy.array([[0, 5, 9]])
        weight = ml.randn(5, 3, requires_grad=True)
        if where == "device":
            ids = backend.xp.asarray(ids)
        with pytest.raises(IndexError, match=r"embedding: ids must lie in \[0, 5\), got 5 \.\. 9"):
            F.embedding(ids, weight)
        with pytest.raises(IndexError, match=r"targets must lie in \[0, 3\) or equal -100, got 5 \.\. 9"):
            F.cross_entropy(ml.randn(3, 3), ids[0])
