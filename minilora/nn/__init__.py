"""Layers and the Module bookkeeping, with PyTorch's names (``minilora.nn`` ~ ``torch.nn``)."""

from minilora.nn import functional, init, reference
from minilora.nn.layers import (
    GELU,
    Dropout,
    Embedding,
    Identity,
    LayerNorm,
    Linear,
    ModuleDict,
    ModuleList,
    ParameterDict,
    ReLU,
    RMSNorm,
    Sequential,
    SiLU,
    Tanh,
)
from minilora.nn.module import Module, Parameter

__all__ = [
    "functional", "init", "reference", "Module", "Parameter", "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout",
    "GELU", "SiLU", "ReLU", "Tanh", "Identity", "Sequential", "ModuleList", "ModuleDict", "ParameterDict",
]
