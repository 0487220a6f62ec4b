"""VeRA: Vector-based Random Matrix Adaptation, from first principles.

    Kopiczko, Blankevoort, Asano (2024). "VeRA: Vector-based Random Matrix Adaptation."
    ICLR 2024, arXiv:2310.11454.

LoRA trains A and B for every layer. VeRA draws one random pair once -- A (r, in_max) and
B (out_max, r), frozen, shared by every adapted layer -- and trains only two vectors per
layer that scale them (the paper's eq. 2):

    ΔW = Λ_b B Λ_d A,      Λ_b = diag(λ_b): (out,),  Λ_d = diag(λ_d): (r,)
    y  = x W^T + b + λ_b ⊙ (B (λ_d ⊙ (A x)))

A layer narrower than the largest uses the top-left corner of the shared pair: A[:, :in]
and B[:out, :]. λ_b starts at zero (so the model starts at the pretrained one) and λ_d at
``d_initial`` (0.1; the paper's Table 6c). Per layer that is out + r trained numbers
against LoRA's r (in + out): at r = 256 on a 768-wide layer, 1,024 against 393,216.

The projections are drawn with Kaiming-uniform bounds, U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))
(fan_in = in_max for A, r for B), A first, from a NumPy generator seeded with
``projection_prng_key`` (``numpy.random.default_rng``). PEFT draws them from a torch generator
with the same key; the two streams differ, so a file's projections -- which PEFT saves by
default, ``save_projection=True``, as ``base_model.vera_A`` / ``base_model.vera_B`` -- are what
makes an adapter portable. A file without them (``save_projection=False``) cannot be
reproduced here, and loading one is refused. ``docs/vera.md`` has the derivation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from minilora import backend as B
from minilora import nn
from minilora.nn import functional as F
from minilora.tensor import Tensor, no_grad
from minilora.tuner import (
    DEFAULT_TARGET_MODULES,
    BaseTuner,
    DeltaLayer,
    check_layers_fields,
    check_new_name,
    set_fan_in_fan_out,
)

NO_PROJECTION_ERROR = (
    "VeRA with save_projection=False: its file holds no vera_A / vera_B, which PEFT re-draws from "
    "projection_prng_key with torch's generator -- a stream minilora (NumPy) cannot reproduce -- so the vectors "
    "would scale other matrices than they were trained with. minilora neither writes nor reads such a file; "
    "use save_projection=True (PEFT's default), which stores the projections in the file")


@dataclass
class VeraConfig:
    """VeRA's settings, with PEFT's names and defaults (``peft.VeraConfig``)."""

    r: int = 256  # rows of the shared A (columns of B); cheap, so larger than a LoRA rank
    target_modules: list | str | None = None  # as LoraConfig's; None: PEFT's default for the model
    projection_prng_key: int = 0  # seeds the draw of the shared A and B
    save_projection: bool = True  # write A and B into the adapter's file (loading needs them)
    vera_dropout: float = 0.0
    d_initial: float = 0.1  # λ_d's initial value
    fan_in_fan_out: bool = False  # True for GPT-2 (HF Conv1D); set automatically
    bias: str = "none"  # "none" | "all" | "vera_only"
    modules_to_save: list | None = None
    init_weights: bool = True  # True: λ_b = 0, λ_d = d_initial; False: λ_b = 1, λ_d ~ N(0, 1) (for tests)
    layers_to_transform: list | int | None = None
    layers_pattern: list | str | None = None
    inference_mode: bool = False
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    peft_type: str = field(default="VERA", init=False)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise ValueError(f"VeraConfig.r must be a positive int, got {self.r!r}")
        if not isinstance(self.projection_prng_key, int) or isinstance(self.projection_prng_key, bool) \
                or self.projection_prng_key < 0:
            raise ValueError(f"VeraConfig.projection_prng_key must be an int >= 0, got {self.projection_prng_key!r}")
        if not 0.0 <= self.vera_dropout < 1.0:
            raise ValueError(f"VeraConfig.vera_dropout must lie in [0, 1), got {self.vera_dropout!r}")
        if self.bias not in ("none", "all", "vera_only"):
            raise ValueError(f"VeraConfig.bias must be 'none', 'all' or 'vera_only', got {self.bias!r}")
        if self.init_weights not in (True, False):
            raise ValueError(f"VeraConfig.init_weights must be True or False, got {self.init_weights!r}")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        check_layers_fields(self)


def draw_projections(key: int, r: int, in_max: int, out_max: int, dtype) -> tuple:
    """The shared (A, B): A (r, in_max) and B (out_max, r), Kaiming-uniform -- U(-sqrt(6 / fan_in),
    sqrt(6 / fan_in)), fan_in the number of columns -- A first, from ``numpy.random.default_rng(key)``."""
    rng = np.random.default_rng(key)
    A = rng.uniform(-math.sqrt(6 / in_max), math.sqrt(6 / in_max), (r, in_max))
    Bm = rng.uniform(-math.sqrt(6 / r), math.sqrt(6 / r), (out_max, r))
    return B.xp.asarray(A.astype(dtype)), B.xp.asarray(Bm.astype(dtype))


class BufferDict(nn.Module):
    """Frozen arrays by adapter name (PEFT's ``BufferDict``): the shared projections, saved in the
    model's state as ``vera_A.<adapter>``."""

    def __getitem__(self, name):
        return self._buffers[name]

    def __setitem__(self, name, tensor):
        self.register_buffer(name, tensor)

    def __delitem__(self, name):
        delattr(self, name)

    def __contains__(self, name):
        return name in self._buffers


# ---------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------


class VeraLinear(DeltaLayer):
    """A frozen ``nn.Linear`` plus VeRA's update, one per named adapter:

        y = x W^T + b + λ_b ⊙ (B[:out] (λ_d ⊙ (A[:, :in] dropout(x))))

    The layer holds its two vectors (``vera_lambda_b.<adapter>`` (out,), ``vera_lambda_d.<adapter>``
    (r,)) and a reference to the tuner's shared projections, which are not its own parameters."""

    adapter_dict = "vera_lambda_d"
    adapter_parts = ("vera_lambda_b", "vera_lambda_d", "vera_dropout")
    adapter_tables = ("r",)

    def __init__(self, base_layer: nn.Linear, projections: dict):
        super().__init__(base_layer)
        self.vera_lambda_b = nn.ParameterDict()
        self.vera_lambda_d = nn.ParameterDict()
        self.vera_dropout = nn.ModuleDict()
        self.r = {}
        # {adapter: (A, B)} shared with the tuner and every other VeRA layer: a plain dict, so that
        # the projections are not registered (and saved) once per layer
        self.projections = projections

    def update_layer(self, adapter_name: str, r: int, vera_dropout: float = 0.0, d_initial: float = 0.1,
                     init_weights: bool = True) -> None:
        if adapter_name in self.vera_lambda_d:
            raise ValueError(f"this layer already has an adapter named {adapter_name!r}")
        A, Bm = self.projections[adapter_name]
        if A.shape[1] < self.in_features or Bm.shape[0] < self.out_features or A.shape[0] < r:
            raise ValueError(f"VeRA's shared projections A {tuple(A.shape)} and B {tuple(Bm.shape)} are too small for "
                             f"{self.layer_name} (in {self.in_features}, out {self.out_features}, r {r})")
        dtype = self.base_layer.weight.dtype
        self.r[adapter_name] = r
        if init_weights:  # λ_b = 0: ΔW = 0, the pretrained model exactly
            b, d = B.xp.zeros(self.out_features, dtype=dtype), B.xp.full(r, d_initial, dtype=dtype)
        else:  # PEFT's non-default init: λ_b = 1, λ_d ~ N(0, 1)
            b, d = B.xp.ones(self.out_features, dtype=dtype), B.rng().standard_normal(r).astype(dtype)
        self.vera_lambda_b[adapter_name] = nn.Parameter(b)
        self.vera_lambda_d[adapter_name] = nn.Parameter(d)
        self.vera_dropout[adapter_name] = nn.Dropout(vera_dropout) if vera_dropout > 0 else nn.Identity()
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def sliced(self, adapter_name: str) -> tuple:
        """A[:, :in] (r, in) and B[:out] (out, r), as Tensors of the frozen shared arrays."""
        A, Bm = self.projections[adapter_name]
        return Tensor(A[:, : self.in_features]), Tensor(Bm[: self.out_features])

    def delta_output(self, x, adapter_name: str) -> Tensor:
        A, Bm = self.sliced(adapter_name)
        h = F.linear(self.vera_dropout[adapter_name](x), A) * self.vera_lambda_d[adapter_name]  # (..., r)
        return F.linear(h, Bm) * self.vera_lambda_b[adapter_name]  # (..., out)

    @no_grad()
    def delta_weight(self, adapter_name: str):
        """ΔW = (λ_b ⊙ B) (λ_d ⊙ A), rows scaled, (out, in)."""
        A, Bm = self.sliced(adapter_name)
        b, d = self.vera_lambda_b[adapter_name].data, self.vera_lambda_d[adapter_name].data
        return (b[:, None] * Bm.data) @ (d[:, None] * A.data)


# ---------------------------------------------------------------------------
# injection into a model
# ---------------------------------------------------------------------------


class VeraModel(BaseTuner):
    """Draws the shared projections, wraps the target Linears in ``VeraLinear`` (PEFT's
    ``VeraModel``). The projections are buffers of this module, ``vera_A.<adapter>`` and
    ``vera_B.<adapter>`` -- inside a ``PeftModel``, ``base_model.vera_A.default``, PEFT's name."""

    method = "VeRA"
    prefix = "vera_lambda_"
    layer_type = VeraLinear

    def _prepare_config(self, config: VeraConfig) -> None:
        config.validate()
        for name, other in self.peft_config.items():
            if other.projection_prng_key != config.projection_prng_key:
                raise ValueError(f"VeRA's projections are drawn from projection_prng_key, which must be the same for "
                                 f"every adapter: adapter {name!r} has {other.projection_prng_key}, the new one "
                                 f"{config.projection_prng_key} (PEFT's rule)")
            if other.save_projection != config.save_projection:
                raise ValueError(f"save_projection must be the same for every VeRA adapter: adapter {name!r} has "
                                 f"{other.save_projection}, the new one {config.save_projection} (PEFT's rule)")
        set_fan_in_fan_out(self.model, config)
        self._fill_default(config, "target_modules", DEFAULT_TARGET_MODULES)

    def _target_names(self, config: VeraConfig) -> list:
        return self._find_targets(config.target_modules, (nn.Linear, VeraLinear), config)

    def inject_adapter(self, adapter_name: str, config: VeraConfig) -> None:
        """Draw the adapter's projections at the largest in and out of its targets, then add it."""
        if "vera_A" not in self._modules:  # the first adapter
            self.vera_A, self.vera_B = BufferDict(), BufferDict()
            self.projections = {}  # {adapter: (A array, B array)}, read by every VeraLinear
        check_new_name(self, adapter_name)
        self._prepare_config(config)
        targets = [self.model.get_submodule(n) for n in self._target_names(config)]
        in_max, out_max = max(t.in_features for t in targets), max(t.out_features for t in targets)
        dtype = targets[0].weight.dtype
        A, Bm = draw_projections(config.projection_prng_key, config.r, in_max, out_max, dtype)
        self.projections[adapter_name] = (A, Bm)
        try:
            super().inject_adapter(adapter_name, config)
        except BaseException:
            del self.projections[adapter_name]
            raise
        self.vera_A[adapter_name], self.vera_B[adapter_name] = Tensor(A), Tensor(Bm)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        del self.projections[adapter_name], self.vera_A[adapter_name], self.vera_B[adapter_name]

    def _new_layer(self, name: str, module, config: VeraConfig) -> VeraLinear:
        return VeraLinear(module, self.projections)

    def _update_layer(self, name: str, layer: VeraLinear, adapter_name: str, config: VeraConfig) -> None:
        layer.update_layer(adapter_name, config.r, config.vera_dropout, config.d_initial, config.init_weights)

    def _mark_trainable(self, adapter_name: str) -> None:
        for _, layer in self.adapter_layers():
            if adapter_name in layer.vera_lambda_d:
                layer.vera_lambda_b[adapter_name].requires_grad_(True)
                layer.vera_lambda_d[adapter_name].requires_grad_(True)
        self._mark_biases_trainable(adapter_name)

    def add_weighted_adapter(self, *args, **kwargs) -> None:
        raise NotImplementedError("VeRA has no add_weighted_adapter (nor has PEFT's VeraModel)")

    # --- the adapter's weights, named as in PEFT's files -----------------------------------

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """``{PEFT key: array}``: each layer's ``vera_lambda_b`` and ``vera_lambda_d``, the shared
        ``base_model.vera_A`` / ``base_model.vera_B`` (with save_projection), the trained biases
        and the modules_to_save copies. The arrays are the live ones. An adapter without its
        projections in the file (save_projection=False) is refused, for saving and loading alike."""
        if not self.peft_config[adapter_name].save_projection:
            raise ValueError(NO_PROJECTION_ERROR)
        out = {}
        for name, layer in self.adapter_layers():
            if adapter_name in layer.vera_lambda_d:
                out[f"base_model.model.{name}.vera_lambda_b"] = layer.vera_lambda_b[adapter_name].data
                out[f"base_model.model.{name}.vera_lambda_d"] = layer.vera_lambda_d[adapter_name].data
        if self.peft_config[adapter_name].save_projection:
            A, Bm = self.projections[adapter_name]
            out["base_model.vera_A"], out["base_model.vera_B"] = A, Bm
        out.update(self._modules_to_save_state_dict(adapter_name))
        out.update(self._bias_state_dict(adapter_name))
        return out


__all__ = ["VeraConfig", "VeraModel", "VeraLinear", "draw_projections"]
