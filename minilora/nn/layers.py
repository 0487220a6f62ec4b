"""The layers a GPT needs, with PyTorch's names, shapes and default initialisation."""

from __future__ import annotations

import math
from collections import OrderedDict

from minilora import backend as B
from minilora.nn import functional as F
from minilora.nn import init
from minilora.nn.module import Module, Parameter


def _empty(*shape, dtype=None):
    return B.xp.zeros(shape, dtype=dtype or B.default_float)


class Linear(Module):
    """``y = x W^T + b``, W of shape (out_features, in_features), as ``torch.nn.Linear``.

    Initialised as PyTorch does: W and b from U(-1/sqrt(in), 1/sqrt(in)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_empty(out_features, in_features, dtype=dtype))
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if bias:
            self.bias = Parameter(_empty(out_features, dtype=dtype))
            bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
            init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``embedding_dim``, initialised N(0, 1).
    The row ``padding_idx`` (if given) starts at zero and gets no gradient, as in PyTorch."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, dtype=None):
        super().__init__()
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"Embedding: padding_idx={padding_idx} must lie in [-{num_embeddings}, {num_embeddings})")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx % num_embeddings if padding_idx is not None else None
        self.weight = Parameter(_empty(num_embeddings, embedding_dim, dtype=dtype))
        init.normal_(self.weight)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    def forward(self, idx):
        return F.embedding(idx, self.weight, self.padding_idx)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}" + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


class LayerNorm(Module):
    """Layer normalisation (Ba et al., 2016) over the last dimensions; weight 1, bias 0."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True, dtype=None):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        if elementwise_affine:
            self.weight = Parameter(B.xp.ones(self.normalized_shape, dtype=dtype or B.default_float))
            if bias:
                self.bias = Parameter(B.xp.zeros(self.normalized_shape, dtype=dtype or B.default_float))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class RMSNorm(Module):
    """Root-mean-square normalisation (Zhang & Sennrich, 2019) over the last dimensions; weight 1,
    no bias, as ``torch.nn.RMSNorm`` (``eps=None``: the dtype's machine epsilon)."""

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True, dtype=None):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        if elementwise_affine:
            self.weight = Parameter(B.xp.ones(self.normalized_shape, dtype=dtype or B.default_float))
        else:
            self.register_parameter("weight", None)

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class Dropout(Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    def forward(self, x):
        return F.silu(x)


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Identity(Module):
    def forward(self, x):
        return x


class Sequential(Module):
    """Modules called one after another; named "0", "1", ... (or by an OrderedDict's keys)."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleList(Module):
    """A list of modules, registered as "0", "1", ... so their parameters are found."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> "ModuleList":
        self.add_module(str(len(self._modules)), module)
        return self

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __setitem__(self, i, module):
        # negative indices count from the end, as for a list; out of range is an error
        # (a wrap-around such as i % len would silently replace the wrong layer)
        if not -len(self) <= i < len(self):
            raise IndexError(f"ModuleList index {i} is out of range for a list of {len(self)} modules")
        self.add_module(str(i % len(self)), module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class _NamedDict(Module):
    """What ModuleDict and ParameterDict share: entries by name, kept in one of the Module's registries."""

    registry = "_modules"

    def __init__(self, entries=None):
        super().__init__()
        for name, entry in (entries or {}).items():
            self[name] = entry

    def __getitem__(self, name):
        return getattr(self, self.registry)[name]

    def __setitem__(self, name, entry):
        setattr(self, name, entry)

    def __delitem__(self, name):
        delattr(self, name)

    def __contains__(self, name):
        return name in getattr(self, self.registry)

    def __len__(self):
        return len(getattr(self, self.registry))

    def __iter__(self):
        return iter(getattr(self, self.registry))

    def keys(self):
        return getattr(self, self.registry).keys()

    def values(self):
        return getattr(self, self.registry).values()

    def items(self):
        return getattr(self, self.registry).items()


class ModuleDict(_NamedDict):
    """A dict of modules by name (``torch.nn.ModuleDict``)."""


class ParameterDict(_NamedDict):
    """A dict of parameters by name (``torch.nn.ParameterDict``): the vector of adapter "default"
    is then called ``ia3_l.default``, as in PEFT."""

    registry = "_parameters"
