"""minilora: LoRA from first principles, in NumPy, for teaching.

Start with ``minilora/tensor.py`` (the autograd engine), then ``minilora/nn``,
``minilora/models/gpt.py`` and ``minilora/peft/lora.py``.

``import minilora`` gives PyTorch's surface: the engine's names (``minilora.tensor``,
``minilora.float32``, ``minilora.no_grad`` ...) at once, and the packages below
(``minilora.nn``, ``minilora.optim``, ``minilora.peft`` ...) on first use. They are
imported lazily (PEP 562's module ``__getattr__``): importing all of them costs about
0.1 s more than the engine alone (``python -X importtime``), and a script that only
builds tensors should not pay for the GPT, PEFT and data code.

``minilora.tensor`` is the function, as ``torch.tensor`` is; the engine's module
keeps the file name ``minilora/tensor.py`` and is reached with ``from minilora.tensor
import Tensor, unbroadcast`` (``import minilora.tensor`` then gives the function).
"""

import importlib

from minilora.backend import get_backend, manual_seed, set_backend
from minilora.tensor import (
    Tensor,
    arange,
    bool_,
    cat,
    float16,
    float32,
    float64,
    full,
    int32,
    int64,
    is_grad_enabled,
    matmul,
    no_grad,
    ones,
    ones_like,
    promote_types,
    rand,
    randn,
    randn_like,
    result_type,
    split,
    stack,
    tensor,
    where,
    zeros,
    zeros_like,
)

__version__ = "0.1.0"

# The packages ``minilora.<name>`` reaches without an import of its own, as ``torch.nn`` does.
SUBMODULES = ("nn", "optim", "models", "peft", "quant", "data", "tasks", "nlg_metrics", "train", "pretrain",
              "experiments", "exercises", "export")


def __getattr__(name):
    """Import ``minilora.<name>`` on first use (PEP 562); Python caches it as an attribute after that."""
    if name in SUBMODULES:
        return importlib.import_module(f"minilora.{name}")
    raise AttributeError(f"module 'minilora' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
