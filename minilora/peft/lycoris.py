"""LoHa and LoKr: weight updates built from Hadamard and Kronecker products (the LyCORIS family).

    LoHa: Hyeon-Woo, Ye-Bin, Oh (2022). "FedPara: Low-Rank Hadamard Product for
          Communication-Efficient Federated Learning." ICLR 2022, arXiv:2108.06098.
    LoKr: Yeh, Hsieh, Gao, Yang, Oh, Gong (2024). "Navigating Text-To-Image Customization:
          From LyCORIS Fine-Tuning to Model Evaluation." ICLR 2024, arXiv:2309.14859
          (the Kronecker form follows Edalati et al. (2022), "KronA", arXiv:2212.10650).

LoRA's update B A has rank at most r. Both methods reach a higher rank with as few numbers:

    LoHa:  ΔW = (W1a W1b) ⊙ (W2a W2b) · α / r        W1a, W2a: (out, r),  W1b, W2b: (r, in)

The element-wise product of two rank-r matrices has rank up to r², for 2 r (in + out) numbers.

    LoKr:  ΔW = kron(W1, W2) · α / r                  W1: (a, c),  W2: (b, d),  out = a b,  in = c d

``kron`` places W1[i, j] · W2 in block (i, j); its rank is rank(W1) · rank(W2), for a c + b d
numbers -- with out = in = 768 split as 24 × 32, 1,600 numbers for a full-rank 768 × 768 update.
(a, b) and (c, d) come from ``factorization`` (PEFT's, from LyCORIS): the divisor pair nearest
the square root, or one factor near ``decompose_factor``. W2 (and, with ``decompose_both``, W1)
is itself a product of rank-r factors when r is less than half its larger side.

Both form ΔW in full at every forward pass (it is small next to the activations of a batch)
and add x ΔW^T -- so merging is exact, and gradients flow to the factors through the products.
During training, ``rank_dropout`` zeroes whole rows of ΔW (rescaled to keep its mean) and
``module_dropout`` skips the adapter for a whole step, as in PEFT.

Names, defaults and files are PEFT 0.21's (``LoHaConfig``, ``hada_w1_a`` ...; ``LoKrConfig``,
``lokr_w1`` ...). PEFT adapts ``nn.Linear`` (and convolutions) only: Hugging Face's GPT-2
projections are ``Conv1D``, which it refuses, and so does minilora, naming the layer. The
derivation and the parameter counts are in ``docs/loha_lokr.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from minilora import backend as B
from minilora import nn
from minilora.nn import functional as F
from minilora.tensor import Tensor, no_grad
from minilora.tuner import (
    DEFAULT_TARGET_MODULES,
    BaseTuner,
    DeltaLayer,
    check_layers_fields,
    is_hf_conv1d,
    pattern_value,
)

# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


@dataclass
class LycorisConfig:
    """The fields LoHa and LoKr share, with PEFT's names and defaults (``peft.tuners.lycoris_utils``)."""

    r: int = 8
    alpha: float = 8  # ΔW is scaled by alpha / r
    rank_dropout: float = 0.0  # in training: the probability of zeroing each row of ΔW
    module_dropout: float = 0.0  # in training: the probability of skipping the adapter for a step
    target_modules: list | str | None = None  # as LoraConfig's; None: PEFT's default for the model
    init_weights: bool | str = True  # True: ΔW = 0 at the start; False: every factor random (for tests)
    rank_pattern: dict = field(default_factory=dict)  # {regex of module name: r}, as LoraConfig's
    alpha_pattern: dict = field(default_factory=dict)  # {regex of module name: alpha}
    modules_to_save: list | None = None
    layers_to_transform: list | int | None = None
    layers_pattern: list | str | None = None
    inference_mode: bool = False
    task_type: str | None = None
    base_model_name_or_path: str | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        name = type(self).__name__
        for r in [self.r, *self.rank_pattern.values()]:
            if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
                raise ValueError(f"{name}.r and the rank_pattern values must be positive ints, got {r!r}")
        for p in ("rank_dropout", "module_dropout"):
            if not 0.0 <= getattr(self, p) < 1.0:
                raise ValueError(f"{name}.{p} must lie in [0, 1), got {getattr(self, p)!r}")
        if self.init_weights not in self.accepted_inits:
            raise ValueError(f"{name}.init_weights must be one of {self.accepted_inits}, got {self.init_weights!r}")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        check_layers_fields(self)

    accepted_inits = (True, False)

    def rank_and_alpha(self, module_name: str) -> tuple:
        return (pattern_value(self.rank_pattern, module_name, self.r),
                pattern_value(self.alpha_pattern, module_name, self.alpha))


@dataclass
class LoHaConfig(LycorisConfig):
    """LoHa's settings (``peft.LoHaConfig``)."""

    peft_type: str = field(default="LOHA", init=False)


@dataclass
class LoKrConfig(LycorisConfig):
    """LoKr's settings (``peft.LoKrConfig``)."""

    decompose_both: bool = False  # W1 too as a product of rank-r factors (when r is small enough)
    decompose_factor: int = -1  # -1: split each dimension nearest its square root; else near this factor
    rank_dropout_scale: bool = False  # rescale the kept rows by 1 / their share (LoHa always does)
    peft_type: str = field(default="LOKR", init=False)
    accepted_inits = (True, False, "lycoris")  # "lycoris": W2 (not W1) starts at zero, as LyCORIS does
    size_fields = ()  # r sizes no tensor when W1 and W2 are kept whole, so it may exceed every dimension

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.decompose_factor, int) or self.decompose_factor == 0 or self.decompose_factor < -1:
            raise ValueError(f"LoKrConfig.decompose_factor must be -1 or a positive int, got {self.decompose_factor!r}")


# ---------------------------------------------------------------------------
# the layers
# ---------------------------------------------------------------------------


def kaiming_parameter(shape, dtype) -> nn.Parameter:
    """PyTorch's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = shape[1] (PEFT's)."""
    p = nn.Parameter(B.xp.zeros(shape, dtype=dtype))
    nn.init.kaiming_uniform_(p, a=math.sqrt(5))
    return p


class LycorisLayer(DeltaLayer):
    """What LoHa's and LoKr's layers share: ΔW is formed in full (``delta_weight_tensor``, on the
    graph) and the update is x ΔW^T; rank and module dropout in training; scaling alpha / r."""

    adapter_tables = ("r", "alpha", "scaling", "rank_dropout", "module_dropout", "rank_dropout_scale")

    def __init__(self, base_layer: nn.Linear):
        super().__init__(base_layer)
        self.r, self.alpha, self.scaling = {}, {}, {}
        self.rank_dropout, self.module_dropout, self.rank_dropout_scale = {}, {}, {}

    def set_scaling(self, adapter_name: str, r: int, alpha: float, config) -> None:
        if adapter_name in self.adapters:
            raise ValueError(f"this layer already has an adapter named {adapter_name!r}")
        self.r[adapter_name], self.alpha[adapter_name], self.scaling[adapter_name] = r, alpha, alpha / r
        self.rank_dropout[adapter_name], self.module_dropout[adapter_name] = config.rank_dropout, config.module_dropout
        self.rank_dropout_scale[adapter_name] = getattr(config, "rank_dropout_scale", True)  # LoHa always rescales

    def delta_weight_tensor(self, adapter_name: str) -> Tensor:
        raise NotImplementedError

    def delta_output(self, x, adapter_name: str) -> Tensor:
        """x ΔW^T; in training, ΔW's rows dropped with probability rank_dropout (the kept ones
        scaled by 1 / their share, for LoHa always, for LoKr with rank_dropout_scale), and the
        whole update skipped with probability module_dropout -- PEFT's (and LyCORIS's) rules."""
        if self.training and B.rng().random() < self.module_dropout[adapter_name]:
            return Tensor(B.xp.zeros(x.shape[:-1] + (self.out_features,), dtype=x.dtype))
        delta = self.delta_weight_tensor(adapter_name)  # (out, in)
        p = self.rank_dropout[adapter_name]
        if self.training and p:
            keep = (B.rng().random(self.out_features) > p).astype(delta.dtype)  # (out,)
            if self.rank_dropout_scale[adapter_name]:
                keep = keep / keep.mean()
            delta = delta * Tensor(B.xp.asarray(keep)[:, None])
        return F.linear(x, delta)

    @no_grad()
    def delta_weight(self, adapter_name: str):
        return self.delta_weight_tensor(adapter_name).data


class LoHaLinear(LycorisLayer):
    """y = x W^T + b + x ΔW^T, ΔW = (W1a W1b) ⊙ (W2a W2b) · α / r (``hada_w1_a`` ... ``hada_w2_b``)."""

    adapter_dict = "hada_w1_a"
    adapter_parts = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")

    def __init__(self, base_layer: nn.Linear):
        super().__init__(base_layer)
        for part in self.adapter_parts:
            setattr(self, part, nn.ParameterDict())

    def update_layer(self, adapter_name: str, r: int, alpha: float, config: LoHaConfig) -> None:
        self.set_scaling(adapter_name, r, alpha, config)
        out, n_in, dtype = self.out_features, self.in_features, self.base_layer.weight.dtype
        for part, shape in (("hada_w1_a", (out, r)), ("hada_w1_b", (r, n_in)), ("hada_w2_a", (out, r)),
                            ("hada_w2_b", (r, n_in))):
            getattr(self, part)[adapter_name] = kaiming_parameter(shape, dtype)
        if config.init_weights:  # one zero factor makes ΔW = 0: the pretrained model exactly (FedPara's init)
            self.hada_w2_b[adapter_name].data[...] = 0
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def delta_weight_tensor(self, adapter_name: str) -> Tensor:
        """ΔW = (W1a W1b) ⊙ (W2a W2b) · α / r, (out, in). (PEFT holds α / r in a float32 tensor
        here, so in float64 its ΔW is off by up to 2^-24 relative; docs/loha_lokr.md.)"""
        w1 = self.hada_w1_a[adapter_name] @ self.hada_w1_b[adapter_name]  # (out, in), rank <= r
        w2 = self.hada_w2_a[adapter_name] @ self.hada_w2_b[adapter_name]  # (out, in), rank <= r
        return w1 * w2 * self.scaling[adapter_name]


def factorization(dimension: int, factor: int = -1) -> tuple:
    """``(m, n)``, m <= n, m n = dimension (PEFT's, from LyCORIS): ``factor`` and dimension / factor if
    factor divides it; otherwise the divisor pair nearest the square root, searched upward from 1
    and stopping where m + n would grow or m would pass ``factor`` (-1: no limit)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def kron(a: Tensor, b: Tensor) -> Tensor:
    """The Kronecker product, on the graph: block (i, j) of the (p r, q s) result is a[i, j] · b."""
    (p, q), (r, s) = a.shape, b.shape
    return (a.reshape(p, 1, q, 1) * b.reshape(1, r, 1, s)).reshape(p * r, q * s)


class LoKrLinear(LycorisLayer):
    """y = x W^T + b + x ΔW^T, ΔW = kron(W1, W2) · α / r; W1 (``lokr_w1``, or ``lokr_w1_a @ lokr_w1_b``)
    is (a, c) and W2 (``lokr_w2``, or ``lokr_w2_a @ lokr_w2_b``) is (b, d), out = a b, in = c d."""

    adapter_dict = None  # an adapter's W1 is in lokr_w1 or in lokr_w1_a: see ``adapters``
    adapter_parts = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")

    def __init__(self, base_layer: nn.Linear):
        super().__init__(base_layer)
        for part in self.adapter_parts:
            setattr(self, part, nn.ParameterDict())

    @property
    def adapters(self) -> list:
        """The names of the adapters this layer holds (each has lokr_w1 or lokr_w1_a)."""
        return [*self.lokr_w1, *self.lokr_w1_a]

    def update_layer(self, adapter_name: str, r: int, alpha: float, config: LoKrConfig) -> None:
        self.set_scaling(adapter_name, r, alpha, config)
        out_l, out_k = factorization(self.out_features, config.decompose_factor)  # out = a b
        in_m, in_n = factorization(self.in_features, config.decompose_factor)  # in = c d
        # a factor is trained whole unless r is below half its larger side (PEFT's rule; W1 only with decompose_both)
        whole_w1 = not (config.decompose_both and r < max(out_l, in_m) / 2)
        whole_w2 = not (r < max(out_k, in_n) / 2)
        dtype = self.base_layer.weight.dtype
        for whole, side, (rows, cols) in ((whole_w1, "w1", (out_l, in_m)), (whole_w2, "w2", (out_k, in_n))):
            if whole:
                getattr(self, f"lokr_{side}")[adapter_name] = kaiming_parameter((rows, cols), dtype)
            else:
                getattr(self, f"lokr_{side}_a")[adapter_name] = kaiming_parameter((rows, r), dtype)
                getattr(self, f"lokr_{side}_b")[adapter_name] = kaiming_parameter((r, cols), dtype)
        # ΔW = 0 at the start: W1 (or W1a) zero (PEFT's default), or W2 (or W2b) zero ("lycoris")
        if config.init_weights == "lycoris":
            zero = self.lokr_w2 if whole_w2 else self.lokr_w2_b
        elif config.init_weights:
            zero = self.lokr_w1 if whole_w1 else self.lokr_w1_a
        else:
            zero = None
        if zero is not None:
            zero[adapter_name].data[...] = 0
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def factor(self, side: str, adapter_name: str) -> Tensor:
        whole = getattr(self, f"lokr_{side}")
        if adapter_name in whole:
            return whole[adapter_name]
        return getattr(self, f"lokr_{side}_a")[adapter_name] @ getattr(self, f"lokr_{side}_b")[adapter_name]

    def delta_weight_tensor(self, adapter_name: str) -> Tensor:
        """ΔW = kron(W1, W2) · α / r, (out, in)."""
        return kron(self.factor("w1", adapter_name), self.factor("w2", adapter_name)) * self.scaling[adapter_name]


# ---------------------------------------------------------------------------
# injection into a model
# ---------------------------------------------------------------------------


class LycorisModel(BaseTuner):
    """What LoHaModel and LoKrModel share (PEFT's ``LycorisTuner``): the targets -- nn.Linear only,
    never a layer Hugging Face stores as Conv1D -- ranks and alphas by pattern, what is trained."""

    def _prepare_config(self, config) -> None:
        config.validate()
        self._fill_default(config, "target_modules", DEFAULT_TARGET_MODULES)

    def _target_names(self, config) -> list:
        names = self._find_targets(config.target_modules, (nn.Linear, self.layer_type), config)
        conv1d = [n for n in names if is_hf_conv1d(self.model, n)]
        if conv1d:
            raise TypeError(f"{self.method} cannot adapt {conv1d[0]}: in Hugging Face's GPT-2 it is a Conv1D layer "
                            f"(W stored (in, out)), which PEFT's {self.method} refuses ('Target module ... Conv1D not "
                            f"supported'), so no PEFT model could load the adapter. Conv1D targets here: "
                            f"{', '.join(conv1d)}. Use LoRA, AdaLoRA, VeRA or IA3 on them, or target lm_head")
        return names

    def _new_layer(self, name: str, module, config):
        return self.layer_type(module)

    def _update_layer(self, name: str, layer, adapter_name: str, config) -> None:
        r, alpha = config.rank_and_alpha(name)
        layer.update_layer(adapter_name, r, alpha, config)

    def _mark_trainable(self, adapter_name: str) -> None:
        for _, layer in self.adapter_layers():
            for part in layer.adapter_parts:
                if adapter_name in getattr(layer, part):
                    getattr(layer, part)[adapter_name].requires_grad_(True)

    def add_weighted_adapter(self, *args, **kwargs) -> None:
        raise NotImplementedError(f"add_weighted_adapter is not implemented for {self.method} in minilora")

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """``{PEFT key: array}``: every factor as ``<module>.<part>`` (the adapter's name dropped), and
        the modules_to_save copies. The arrays are the live ones."""
        out = {}
        for name, layer in self.adapter_layers():
            for part in layer.adapter_parts:
                if adapter_name in getattr(layer, part):
                    out[f"base_model.model.{name}.{part}"] = getattr(layer, part)[adapter_name].data
        out.update(self._modules_to_save_state_dict(adapter_name))
        return out


class LoHaModel(LycorisModel):
    method, prefix, layer_type = "LoHa", "hada_", LoHaLinear


class LoKrModel(LycorisModel):
    method, prefix, layer_type = "LoKr", "lokr_", LoKrLinear


__all__ = ["LoHaConfig", "LoKrConfig", "LoHaModel", "LoKrModel", "LoHaLinear", "LoKrLinear", "factorization"]
