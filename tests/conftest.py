"""Shared test settings: hypothesis profiles, and the fixtures of the CuPy branch.

    pytest                                   # the "ci" profile: few examples, fast
    HYPOTHESIS_PROFILE=dev pytest            # more examples while working on an op
    pytest --hypothesis-profile=thorough     # many examples, before a release

Deadlines are off everywhere: a first call can be slow (imports, caches), and a
shared two-core machine makes timings meaningless.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

import cupy_standin

settings.register_profile("ci", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ---------------------------------------------------------------------------
# the CuPy branch: the real CuPy on a GPU, else the stand-in (tests/cupy_standin.py)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cupy_module():
    """CuPy: the real one where it is installed (the tests skip, saying why, without a GPU),
    else the stand-in, on the path for the rest of the session."""
    try:
        cupy, is_standin = cupy_standin.import_cupy()
    except RuntimeError as err:
        pytest.skip(f"needs a CUDA GPU: {err}")
    yield cupy
    if is_standin:
        cupy_standin.remove_standin()


@pytest.fixture(scope="class")
def cupy_backend(cupy_module):
    """minilora on the 'cupy' backend for a class of tests; the previous backend (and seed) after."""
    from minilora import backend

    previous, seed = backend.xp, backend._seed
    backend.set_backend("cupy")
    try:
        yield cupy_module
    finally:
        backend.set_backend(previous)
        backend.manual_seed(seed)


@pytest.fixture
def counters(cupy_module):
    """The stand-in's counters of syncs and copies, reset (the real CuPy has none: skip)."""
    if not hasattr(cupy_module, "_core") or not hasattr(cupy_module._core, "counters"):
        pytest.skip("syncs are counted by the CuPy stand-in only; a real CuPy is installed")
    cupy_module._core.counters.reset()
    return cupy_module._core.counters
