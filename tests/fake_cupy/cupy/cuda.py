"""The pieces of ``cupy.cuda`` minilora uses: the device, streams, the runtime, memory hooks."""

from __future__ import annotations

import types

from cupy import _core
from cupy._core import MemoryPool, get_memory_hooks  # noqa: F401  (cupy.cuda.MemoryPool)

_PROPERTIES = {"name": b"NumPy stand-in for CuPy (tests/fake_cupy)", "totalGlobalMem": 1 << 34, "major": 9, "minor": 0}


def _synchronize() -> None:
    _core.sync("synchronize")


runtime = types.SimpleNamespace(
    getDeviceCount=lambda: 1,
    getDeviceProperties=lambda device: dict(_PROPERTIES),
    deviceSynchronize=_synchronize,
    runtimeGetVersion=lambda: 13000,
    driverGetVersion=lambda: 13000,
    memGetInfo=lambda: (_PROPERTIES["totalGlobalMem"] - _core.POOL.used_bytes(), _PROPERTIES["totalGlobalMem"]),
)


def is_available() -> bool:
    return True


class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id}")

    compute_capability = property(lambda self: "90")
    mem_info = property(lambda self: runtime.memGetInfo())

    def synchronize(self) -> None:
        _synchronize()

    def use(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class Stream:
    null: "Stream"

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0

    def synchronize(self) -> None:
        _synchronize()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


Stream.null = Stream(null=True)


def get_current_stream(device_id=None) -> Stream:
    return Stream.null


class MemoryHook:
    """Callbacks around the pool's allocations (cupy/cuda/memory_hook.pyx): registered by name in a
    ``with`` block; the six methods do nothing unless a subclass overrides them."""

    name = "MemoryHook"

    def __enter__(self):
        hooks = get_memory_hooks()
        if self.name in hooks:
            raise KeyError(f"memory hook {self.name} already exists")
        hooks[self.name] = self
        return self

    def __exit__(self, *exc):
        del get_memory_hooks()[self.name]

    def alloc_preprocess(self, **kwargs):
        pass

    def alloc_postprocess(self, **kwargs):
        pass

    def malloc_preprocess(self, **kwargs):
        pass

    def malloc_postprocess(self, **kwargs):
        pass

    def free_preprocess(self, **kwargs):
        pass

    def free_postprocess(self, **kwargs):
        pass


memory_hook = types.SimpleNamespace(MemoryHook=MemoryHook, get_memory_hooks=get_memory_hooks)
