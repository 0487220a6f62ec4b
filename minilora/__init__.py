"""minilora: LoRA from first principles, in NumPy, for teaching.

Start with ``minilora/tensor.py`` (the autograd engine), then ``minilora/nn``,
``minilora/models/gpt.py`` and ``minilora/lora.py``.
"""

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
    rand,
    randn,
    randn_like,
    split,
    stack,
    tensor,
    where,
    zeros,
    zeros_like,
)

__version__ = "0.1.0"
