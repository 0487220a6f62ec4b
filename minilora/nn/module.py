"""``Module`` and ``Parameter``: the bookkeeping every layer shares, as ``torch.nn.Module``.

A module keeps its parameters, buffers and sub-modules in ordered registries
(filled by ``__setattr__``), so that ``named_parameters()`` yields names such as
``transformer.h.0.attn.c_attn.weight`` -- the same names Hugging Face uses,
which is what lets checkpoints and LoRA adapters map one to one.
"""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy

from minilora import backend as B
from minilora.tensor import Tensor, _is_float


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable (``requires_grad=True`` by default)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of every layer and model. Subclasses set attributes in ``__init__``
    and define ``forward``; calling the module calls ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # --- registration ----------------------------------------------------------

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"call super().__init__() in {type(self).__name__}.__init__ before assigning {name!r}")
        # an attribute lives in at most one registry; the plain __dict__ entry is
        # kept too, so that reading self.weight costs nothing extra
        if name in self._parameters and value is not None and not isinstance(value, (Parameter, Module)):
            raise TypeError(
                f"cannot assign {type(value).__name__} to {name!r}, a parameter of {type(self).__name__} "
                f"(a Parameter or None is expected; to change its values, assign to {name}.data)"
            )
        if isinstance(value, Parameter):
            target = self._parameters
        elif isinstance(value, Module):
            target = self._modules
        elif name in self._buffers and isinstance(value, Tensor):
            target = self._buffers
        else:
            target = None
        for registry in (self._parameters, self._buffers, self._modules):
            if registry is not target:
                registry.pop(name, None)
        if target is not None:
            target[name] = value  # replacing an entry keeps its place, as in PyTorch (a swapped layer stays put)
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (or None, for an optional parameter such as an absent bias)."""
        if param is None:
            self._parameters.pop(name, None)
            object.__setattr__(self, name, None)
        else:
            setattr(self, name, param)

    def register_buffer(self, name: str, tensor: Tensor | None) -> None:
        """State that is saved with the module but not trained (e.g. a fixed mask).

        ``None`` removes the buffer from the state dict (as in PyTorch).
        """
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)  # a name lives in one registry, and None leaves none stale
        object.__setattr__(self, name, tensor)
        if tensor is not None:
            self._buffers[name] = tensor

    def add_module(self, name: str, module: "Module") -> None:
        setattr(self, name, module)

    # --- calling ---------------------------------------------------------------

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # --- walking the tree -------------------------------------------------------

    def named_modules(self, prefix: str = "", memo=None, remove_duplicate: bool = True):
        """Every module in the tree, this one first, with its dotted name.

        A module reachable under two names (shared) comes once, under its first
        name -- unless ``remove_duplicate=False``, which yields every name (what
        ``state_dict`` needs, as in PyTorch).
        """
        memo = set() if memo is None else memo
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo, remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        """The direct sub-modules; one held under two names comes once (as in PyTorch)."""
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self):
        for _, child in self.named_children():
            yield child

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """``(name, Parameter)`` pairs; a parameter shared by two modules (tied weights) comes once."""
        seen = set()
        modules = self.named_modules(prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for mod_prefix, module in modules:
            for name, p in module._parameters.items():
                if p is None or (remove_duplicate and id(p) in seen):
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", remove_duplicate: bool = True):
        seen = set()
        for mod_prefix, module in self.named_modules(prefix, remove_duplicate=remove_duplicate):
            for name, b in module._buffers.items():
                if b is None or (remove_duplicate and id(b) in seen):
                    continue
                seen.add(id(b))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), b

    def get_submodule(self, target: str) -> "Module":
        module = self
        for part in target.split(".") if target else []:
            if part not in module._modules:
                raise AttributeError(f"{type(module).__name__} has no submodule {part!r} (looking up {target!r})")
            module = module._modules[part]
        return module

    # --- modes -------------------------------------------------------------------

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = B.xp.zeros_like(p.data)

    def apply(self, fn) -> "Module":
        """Call ``fn`` on every sub-module, children first, then on this one (as PyTorch)."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def to(self, dtype) -> "Module":
        """Cast every floating-point parameter and buffer to ``dtype`` (in place, keeping ties)."""
        if not _is_float(dtype):
            raise TypeError(f"Module.to only casts to floating-point dtypes, got {numpy.dtype(dtype)}")
        for t in list(self.parameters()) + [b for _, b in self.named_buffers()]:
            if _is_float(t.data.dtype):
                t.data = t.data.astype(dtype)
                if t.grad is not None:
                    t.grad = t.grad.astype(dtype)
        return self

    def float(self):
        return self.to(numpy.float32)

    def double(self):
        return self.to(numpy.float64)

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    # --- state -------------------------------------------------------------------

    def state_dict(self, prefix: str = "") -> "OrderedDict[str, object]":
        """Every parameter and buffer by its dotted name, as backend arrays (sharing memory).

        Unlike ``named_parameters``, a tied weight -- or a whole module held under
        two names -- appears under each of its names, as in PyTorch, so that the
        keys match a checkpoint that PyTorch wrote for the same model.
        """
        out = OrderedDict()
        for mod_prefix, module in self.named_modules(prefix, remove_duplicate=False):
            for name, t in list(module._parameters.items()) + list(module._buffers.items()):
                if t is not None:
                    out[f"{mod_prefix}.{name}" if mod_prefix else name] = t.data
        return out

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays (or Tensors) into the parameters and buffers with the same names.

        Everything is checked before anything is written: on an error the module
        is left exactly as it was. With ``strict``, missing and unexpected keys are
        errors; shape mismatches are errors always. All problems are listed at once.
        """
        own = {}
        for mod_prefix, module in self.named_modules(remove_duplicate=False):  # the keys of state_dict()
            for name, t in list(module._parameters.items()) + list(module._buffers.items()):
                if t is not None:
                    own[f"{mod_prefix}.{name}" if mod_prefix else name] = t
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = []
        for k, t in own.items():
            if k in state_dict:
                value = state_dict[k]
                shape = tuple(value.shape)
                if shape != t.shape:
                    mismatched.append(f"{k}: checkpoint has shape {shape}, the model has {t.shape}")
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if mismatched:
            problems.append("shape mismatches: " + "; ".join(mismatched))
        if problems:
            raise RuntimeError(f"error loading state_dict into {type(self).__name__}:\n  " + "\n  ".join(problems))
        for k, t in own.items():
            if k in state_dict:
                value = state_dict[k]
                value = value.data if isinstance(value, Tensor) else value
                # copy into the existing array, as PyTorch does: it keeps its dtype and
                # row-major layout, and arrays taken from state_dict() keep sharing memory
                t.data[...] = B.xp.asarray(value)
        return IncompatibleKeys(missing, unexpected)

    # --- printing ------------------------------------------------------------------

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = []
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"
