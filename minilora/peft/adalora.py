"""AdaLoRA: LoRA whose rank is allocated while it trains, from first principles.

    Zhang, Chen, Bukharin, Karampatziakis, He, Cheng, Chen, Zhao (2023). "AdaLoRA: Adaptive
    Budget Allocation for Parameter-Efficient Fine-Tuning." ICLR 2023, arXiv:2303.10512.

LoRA gives every adapted matrix the same rank r. AdaLoRA starts each at ``init_r`` and takes
rank away where it matters least, until the average is ``target_r``. To make "a unit of rank"
something that can be removed, the update is written like an SVD (the paper's eq. 3):

    ΔW = P Λ Q · s,      P: (out, r) "left vectors",  Λ = diag(λ): (r,),  Q: (r, in) "right vectors"

with PEFT's names ``lora_B`` = P, ``lora_E`` = λ (stored (r, 1)), ``lora_A`` = Q, and PEFT's
scaling s = lora_alpha / (ranknum + 1e-5), ranknum = init_r. Triplet i is (P[:, i], λ_i, Q[i]);
setting λ_i = 0 removes it, and the rank is the number of λ_i left. P and Q are not forced to
be orthogonal; a regulariser pulls them there (eq. 4), so that the triplets stay independent:

    R(P, Q) = mean over matrices of ||Q Q^T - I||_F and ||P^T P - I||_F,     loss += orth_reg_weight · R

Which triplets go? Each parameter entry w gets a sensitivity I = |w · ∂L/∂w| (the first-order
change of the loss if w were zeroed), smoothed over steps and paired with its uncertainty (eqs. 8-9):

    Ī_t = β1 Ī_{t-1} + (1 - β1) I_t,      U_t = β2 U_{t-1} + (1 - β2) |I_t - Ī_t|,      s = Ī_t · U_t

and a triplet scores s(λ_i) + mean_j s(Q[i, j]) + mean_j s(P[j, i]) (eq. 10, as PEFT averages).
The budget -- the number of triplets kept over all matrices -- falls from init_r per matrix to
target_r per matrix along a cubic schedule between steps ``tinit`` and ``total_step - tfinal``
(eq. 12); every ``deltaT`` steps the lowest-scoring triplets beyond the budget have their λ set
to 0 (they keep training, and may come back). After ``total_step - tfinal`` the last mask, the
``rank_pattern``, stays. The derivation, and how PEFT differs from the paper here and there, is
in ``docs/adalora.md``.

Names, shapes and the saved file are PEFT 0.21's (``AdaLoraConfig``, ``AdaLoraModel``,
``update_and_allocate``): the saved ``rank_pattern`` shrinks every matrix to the triplets it
keeps, and loading applies it, so adapters cross both ways. ``minilora.train.train`` calls
``update_and_allocate`` after each optimizer step itself.
"""

from __future__ import annotations

import math
import warnings
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
    set_fan_in_fan_out,
)

# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


@dataclass
class AdaLoraConfig:
    """AdaLoRA's settings, with PEFT's names and defaults (``peft.AdaLoraConfig``, a LoraConfig)."""

    target_r: int = 8  # the average rank per matrix at the end
    init_r: int = 12  # the rank every matrix starts with
    tinit: int = 0  # steps before any rank is taken away
    tfinal: int = 0  # steps at the end with the final rank pattern fixed
    deltaT: int = 1  # mask every deltaT steps while the budget falls
    beta1: float = 0.85  # EMA of the sensitivity |w grad|
    beta2: float = 0.85  # EMA of its uncertainty
    orth_reg_weight: float = 0.5  # weight of the orthogonality regulariser added to the loss
    total_step: int | None = None  # the number of training steps (required)
    rank_pattern: dict | None = None  # {"<module>.lora_E": [bool] * init_r}: the triplets kept, set by training
    lora_alpha: float = 8  # s = lora_alpha / (init_r + 1e-5) (PEFT: lora_alpha if > 0, else r)
    lora_dropout: float = 0.0
    target_modules: list | str | None = None  # as LoraConfig's; None: PEFT's default for the model
    bias: str = "none"  # "none" | "all" | "lora_only", as LoraConfig's
    modules_to_save: list | None = None
    init_lora_weights: bool = True  # True: λ = 0, P and Q ~ N(0, 0.02^2); False: all ~ N(0, 1) (for tests)
    fan_in_fan_out: bool = False  # True for GPT-2 (HF Conv1D); set automatically
    layers_to_transform: list | int | None = None  # only the targets in these blocks (LoraConfig's rule)
    layers_pattern: list | str | None = None
    r: int = 8  # LoraConfig's field, unused by AdaLoRA (PEFT warns when it is set): init_r is the rank
    inference_mode: bool = False
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    peft_type: str = field(default="ADALORA", init=False)
    size_fields = ("init_r",)  # the field that sets the size of the tensors (minilora.peft.model checks it on load)
    json_entries = {"rank_pattern": "list"}  # a rank_pattern entry is a list of true/false, one per triplet

    def __post_init__(self):
        if self.r != 8:
            warnings.warn("AdaLoraConfig.r is not used by AdaLoRA and is ignored; the initial rank is init_r")
        self.validate()

    def validate(self) -> None:
        """PEFT's checks (its ValueErrors, in our words), and the types of the fields."""
        for name in ("target_r", "init_r", "tinit", "tfinal", "deltaT"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"AdaLoraConfig.{name} must be an int >= 0, got {value!r}")
        if self.init_r < 1 or self.deltaT < 1:
            raise ValueError(f"AdaLoraConfig.init_r and deltaT must be >= 1, got init_r={self.init_r}, deltaT={self.deltaT}")
        if self.total_step is None or isinstance(self.total_step, bool) or not isinstance(self.total_step, int) \
                or self.total_step <= 0:
            raise ValueError(f"AdaLoRA needs total_step, the number of training steps, as an int > 0; got "
                             f"{self.total_step!r}")
        if self.orth_reg_weight < 0:
            raise ValueError(f"AdaLoraConfig.orth_reg_weight must be >= 0, got {self.orth_reg_weight}")
        if self.tinit >= self.total_step - self.tfinal:
            raise ValueError(f"AdaLoraConfig: tinit={self.tinit} >= total_step - tfinal = {self.total_step} - "
                             f"{self.tfinal}, so there is no step at which to allocate the budget; lower tinit or "
                             "tfinal, or raise total_step")
        for name in ("beta1", "beta2"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"AdaLoraConfig.{name} must lie in (0, 1), got {getattr(self, name)!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"AdaLoraConfig.lora_dropout must lie in [0, 1), got {self.lora_dropout!r}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"AdaLoraConfig.bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")
        if self.init_lora_weights not in (True, False):
            raise ValueError(f"AdaLoraConfig.init_lora_weights must be True or False, got {self.init_lora_weights!r}")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        check_layers_fields(self)
        for key, mask in (self.rank_pattern or {}).items():
            if not isinstance(mask, list) or not all(isinstance(m, bool) for m in mask):
                raise ValueError(f"AdaLoraConfig.rank_pattern[{key!r}] must be a list of True/False, got {mask!r}")


# ---------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------


class SVDLinear(DeltaLayer):
    """A frozen ``nn.Linear`` plus AdaLoRA's update, one per named adapter:

        y = x W^T + b + s · dropout(x) (Q ⊙ λ)^T P^T,      s = lora_alpha / (ranknum + 1e-5)

    ``lora_A`` = Q (r, in), ``lora_E`` = λ (r, 1), ``lora_B`` = P (out, r): parameters, not
    Linears, so their names end in the adapter's (``lora_A.default``), as in PEFT.
    """

    adapter_dict = "lora_A"
    adapter_parts = ("lora_A", "lora_E", "lora_B", "lora_dropout")
    adapter_tables = ("r", "lora_alpha", "scaling", "ranknum")

    def __init__(self, base_layer: nn.Linear):
        super().__init__(base_layer)
        self.lora_A = nn.ParameterDict()  # Q, the right vectors
        self.lora_E = nn.ParameterDict()  # λ, the singular values (r, 1)
        self.lora_B = nn.ParameterDict()  # P, the left vectors
        self.lora_dropout = nn.ModuleDict()
        # ranknum: init_r, the denominator of the scaling; PEFT keeps it as a (1,) Parameter and
        # does not save it. (PEFT 0.21.2 leaves that Parameter trainable by mistake: see docs/adalora.md.)
        self.r, self.lora_alpha, self.scaling, self.ranknum = {}, {}, {}, {}

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                     init_lora_weights: bool = True) -> None:
        if adapter_name in self.lora_A:
            raise ValueError(f"this layer already has an adapter named {adapter_name!r}")
        dtype = self.base_layer.weight.dtype
        self.r[adapter_name], self.lora_alpha[adapter_name], self.ranknum[adapter_name] = r, lora_alpha, r
        self.scaling[adapter_name] = lora_alpha if lora_alpha > 0 else float(r)  # PEFT's rule
        std = 0.02 if init_lora_weights else 1.0
        rng = B.rng()
        self.lora_A[adapter_name] = nn.Parameter((std * rng.standard_normal((r, self.in_features))).astype(dtype))
        self.lora_E[adapter_name] = nn.Parameter(
            B.xp.zeros((r, 1), dtype=dtype) if init_lora_weights else rng.standard_normal((r, 1)).astype(dtype))
        self.lora_B[adapter_name] = nn.Parameter((std * rng.standard_normal((self.out_features, r))).astype(dtype))
        self.lora_dropout[adapter_name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def effective_scaling(self, adapter_name: str) -> float:
        """s = scaling / (ranknum + 1e-5), the denominator formed in the weights' dtype as PEFT does."""
        dtype = self.base_layer.weight.dtype.type
        return self.scaling[adapter_name] / float(dtype(self.ranknum[adapter_name]) + dtype(1e-5))

    def delta_output(self, x, adapter_name: str) -> Tensor:
        """``s · dropout(x) (Q ⊙ λ)^T P^T``, (..., out): down to r numbers, scaled by λ, back up."""
        QE = self.lora_A[adapter_name] * self.lora_E[adapter_name]  # (r, in): row i scaled by λ_i
        h = F.linear(self.lora_dropout[adapter_name](x), QE)  # (..., r)
        return F.linear(h, self.lora_B[adapter_name]) * self.effective_scaling(adapter_name)  # (..., out)

    @no_grad()
    def delta_weight(self, adapter_name: str):
        """ΔW = s · P (Q ⊙ λ), (out, in)."""
        QE = self.lora_A[adapter_name].data * self.lora_E[adapter_name].data
        return (self.lora_B[adapter_name].data @ QE) * self.effective_scaling(adapter_name)

    def resize(self, adapter_name: str, keep) -> None:
        """Keep only the triplets ``keep`` (a boolean mask of the current rank): how a saved
        rank_pattern is applied on loading. ranknum, hence the scaling, stays as it was."""
        keep = B.xp.asarray(np.asarray(keep, dtype=bool))
        for part, rows in (("lora_A", True), ("lora_E", True), ("lora_B", False)):
            p = getattr(self, part)[adapter_name]
            data = p.data[keep] if rows else p.data[:, keep]
            getattr(self, part)[adapter_name] = nn.Parameter(B.xp.ascontiguousarray(data), requires_grad=p.requires_grad)
        self.r[adapter_name] = int(keep.sum())

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={self.r[n]}, init_r={self.ranknum[n]}" for n in self.lora_A)


# ---------------------------------------------------------------------------
# the rank allocator
# ---------------------------------------------------------------------------


class RankAllocator:
    """PEFT's ``RankAllocator``: the sensitivity EMAs, the budget schedule, and the masking.

    State is keyed by parameter name as in PEFT (``transformer.h.0.attn.c_attn.lora_A.default``)."""

    def __init__(self, tuner: "AdaLoraModel", config: AdaLoraConfig, adapter_name: str):
        self.config, self.adapter_name = config, adapter_name
        self.reset_ipt()
        layers = tuner.svd_layers(adapter_name)
        self.init_bgt = sum(layer.lora_A[adapter_name].shape[0] for _, layer in layers)  # triplets at the start
        self.target_bgt = config.target_r * len(layers)  # the triplets kept in the end

    def reset_ipt(self) -> None:
        self.ipt, self.exp_avg_ipt, self.exp_avg_unc = {}, {}, {}

    def budget_schedule(self, step: int) -> tuple:
        """``(budget, mask now?)`` at ``step``: init_bgt until tinit, then the cubic fall (eq. 12)
        to target_bgt at total_step - tfinal, masking every deltaT steps; then target_bgt, masked."""
        c = self.config
        if step <= c.tinit:
            return self.init_bgt, False
        if step > c.total_step - c.tfinal:
            return self.target_bgt, True
        remaining = 1 - (step - c.tinit) / (c.total_step - c.tfinal - c.tinit)  # 1 -> 0
        return int((self.init_bgt - self.target_bgt) * remaining**3 + self.target_bgt), step % c.deltaT == 0

    def update_ipt(self, named) -> None:
        """One step of eqs. 8-9 for every entry of every A, E, B: I = |w g|, Ī and U as EMAs."""
        b1, b2 = self.config.beta1, self.config.beta2
        for n, p in named:
            grad = p.grad if p.grad is not None else B.xp.zeros_like(p.data)  # a part that got no gradient
            if n not in self.ipt:
                self.exp_avg_ipt[n] = B.xp.zeros_like(p.data)
                self.exp_avg_unc[n] = B.xp.zeros_like(p.data)
            self.ipt[n] = B.xp.abs(p.data * grad)
            self.exp_avg_ipt[n] = b1 * self.exp_avg_ipt[n] + (1 - b1) * self.ipt[n]
            self.exp_avg_unc[n] = b2 * self.exp_avg_unc[n] + (1 - b2) * B.xp.abs(self.ipt[n] - self.exp_avg_ipt[n])

    def triplet_scores(self, layers) -> dict:
        """``{layer name: (r,) scores}``: s(λ_i) + (mean_j s(Q[i, j]) + mean_j s(P[j, i])), s = Ī U (eq. 10)."""
        a = self.adapter_name
        scores = {}
        for name, _ in layers:
            s = {part: self.exp_avg_ipt[f"{name}.{part}.{a}"] * self.exp_avg_unc[f"{name}.{part}.{a}"]
                 for part in ("lora_A", "lora_E", "lora_B")}
            scores[name] = s["lora_E"].reshape(-1) + (s["lora_A"].mean(axis=1) + s["lora_B"].mean(axis=0))
        return scores

    @no_grad()
    def mask_to_budget(self, layers, budget: int) -> dict:
        """Zero the λ of every triplet scoring at or below the (init_bgt - budget)-th smallest score;
        returns the rank pattern, ``{"<layer>.lora_E": [kept?] * r}``. A budget at or above init_bgt
        masks nothing (PEFT raises there: torch.kthvalue has no 0th value)."""
        scores = self.triplet_scores(layers)
        k = self.init_bgt - budget
        threshold = -math.inf
        if k > 0:
            everything = B.xp.concatenate(list(scores.values()))
            threshold = float(B.xp.partition(everything, k - 1)[k - 1])  # the k-th smallest, torch.kthvalue's
        pattern = {}
        for name, layer in layers:
            keep = scores[name] > threshold  # (r,)
            E = layer.lora_E[self.adapter_name]
            E.data = B.xp.where(keep[:, None], E.data, B.xp.zeros_like(E.data))
            pattern[f"{name}.lora_E"] = [bool(v) for v in B.to_numpy(keep)]
        return pattern

    @no_grad()
    def mask_using_rank_pattern(self, layers, rank_pattern: dict) -> None:
        """Set λ = 0 wherever the rank pattern drops a triplet (the final phase's masking)."""
        for name, layer in layers:
            E = layer.lora_E[self.adapter_name]
            keep = B.xp.asarray(np.asarray(rank_pattern[f"{name}.lora_E"], dtype=bool))
            E.data = B.xp.where(keep[:, None], E.data, B.xp.zeros_like(E.data))


# ---------------------------------------------------------------------------
# injection into a model
# ---------------------------------------------------------------------------


class AdaLoraModel(BaseTuner):
    """Wraps the target Linears in ``SVDLinear``, allocates the rank while training, and adds the
    orthogonality regulariser to the loss (PEFT's ``AdaLoraModel``). One adapter at most is
    trained (the others are loaded for inference), as in PEFT."""

    method = "AdaLoRA"
    prefix = "lora_"
    layer_type = SVDLinear

    trainable_adapter_name = None  # the adapter being trained, if any
    rankallocator = None  # its RankAllocator

    # --- finding and wrapping the targets -------------------------------------------

    def _prepare_config(self, config: AdaLoraConfig) -> None:
        config.validate()
        trained = [n for n, c in self.peft_config.items() if not c.inference_mode]
        if trained and not config.inference_mode:
            raise ValueError(f"AdaLoRA trains one adapter at a time and {trained[0]!r} is trainable; add this one "
                             "with inference_mode=True (PEFT's rule)")
        set_fan_in_fan_out(self.model, config)
        self._fill_default(config, "target_modules", DEFAULT_TARGET_MODULES)

    def _target_names(self, config: AdaLoraConfig) -> list:
        return self._find_targets(config.target_modules, (nn.Linear, SVDLinear), config)

    def _new_layer(self, name: str, module, config: AdaLoraConfig) -> SVDLinear:
        return SVDLinear(module)

    def _update_layer(self, name: str, layer: SVDLinear, adapter_name: str, config: AdaLoraConfig) -> None:
        layer.update_layer(adapter_name, config.init_r, config.lora_alpha, config.lora_dropout, config.init_lora_weights)

    def inject_adapter(self, adapter_name: str, config: AdaLoraConfig) -> None:
        super().inject_adapter(adapter_name, config)
        if not config.inference_mode:
            self.trainable_adapter_name = adapter_name
            self.rankallocator = RankAllocator(self, config, adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        if self.trainable_adapter_name == adapter_name:
            self.trainable_adapter_name, self.rankallocator = None, None

    def svd_layers(self, adapter_name: str) -> list:
        """``(name, SVDLinear)`` of every layer holding ``adapter_name``."""
        return [(n, m) for n, m in self.adapter_layers() if adapter_name in m.lora_A]

    def _mark_trainable(self, adapter_name: str) -> None:
        for _, layer in self.svd_layers(adapter_name):
            for part in (layer.lora_A, layer.lora_E, layer.lora_B):
                part[adapter_name].requires_grad_(True)
        self._mark_biases_trainable(adapter_name)

    def add_weighted_adapter(self, *args, **kwargs) -> None:
        raise TypeError("AdaLoRA has no add_weighted_adapter (nor has PEFT's AdaLoraModel): its adapters' ranks "
                        "differ matrix by matrix; combine LoRA adapters instead")

    # --- the loss: the orthogonality regulariser (eq. 4) -------------------------------------

    def forward(self, *args, **kwargs):
        """The model's output; when it has a loss, orth_reg_weight · R(P, Q) is added to it, as in PEFT."""
        logits, loss = self.model(*args, **kwargs)
        name = self.trainable_adapter_name
        if loss is not None and name is not None:
            loss = loss + self.peft_config[name].orth_reg_weight * self.orthogonal_regularizer(name)
        return logits, loss

    def orthogonal_regularizer(self, adapter_name: str) -> Tensor:
        """R = mean over every Q and P of ||Q Q^T - I||_F and ||P^T P - I||_F: zero exactly when the
        right vectors (rows of Q) and the left vectors (columns of P) are orthonormal."""
        terms = []
        for _, layer in self.svd_layers(adapter_name):
            Q, P = layer.lora_A[adapter_name], layer.lora_B[adapter_name]  # (r, in), (out, r)
            for gram in (Q @ Q.T, P.T @ P):  # (r, r) each
                if gram.shape[0] == 0:  # a matrix whose every triplet a rank pattern removed
                    continue
                I = Tensor(B.xp.eye(gram.shape[0], dtype=gram.dtype))  # noqa: E741
                terms.append((((gram - I) ** 2).sum()).sqrt())
        if not terms:
            return Tensor(B.xp.zeros((), dtype=B.default_float))
        return sum(terms[1:], terms[0]) / len(terms)

    # --- allocating the rank, step by step ---------------------------------------------------

    def _named_parts(self, adapter_name: str) -> list:
        """``(PEFT's parameter name, parameter)`` of every A, E and B of the adapter, in model order."""
        return [(f"{n}.{part}.{adapter_name}", getattr(layer, part)[adapter_name])
                for n, layer in self.svd_layers(adapter_name) for part in ("lora_A", "lora_B", "lora_E")]

    @no_grad()
    def update_and_allocate(self, global_step: int) -> None:
        """Call after each optimizer step, before the gradients are zeroed (``minilora.train.train``
        does): update the sensitivities, and at this step's budget mask the lowest-scoring triplets.
        At ``total_step - tfinal`` the mask becomes the adapter's final ``rank_pattern``; after it,
        that pattern is re-applied at every step. PEFT's method, step for step."""
        name = self.trainable_adapter_name
        if name is None:
            raise RuntimeError("update_and_allocate: this AdaLoRA model has no trainable adapter (all were loaded "
                               "with inference_mode=True)")
        config, allocator = self.peft_config[name], self.rankallocator
        layers = self.svd_layers(name)
        end = config.total_step - config.tfinal
        if global_step < end:
            allocator.update_ipt(self._named_parts(name))
            budget, mask_now = allocator.budget_schedule(global_step)
            if mask_now:
                config.rank_pattern = allocator.mask_to_budget(layers, budget)
        elif global_step == end:
            budget, _ = allocator.budget_schedule(global_step)
            config.rank_pattern = allocator.mask_to_budget(layers, budget)
            allocator.reset_ipt()
        else:
            allocator.mask_using_rank_pattern(layers, config.rank_pattern)

    def budget(self, global_step: int) -> int:
        """The number of triplets kept at ``global_step`` (the schedule alone)."""
        return self.rankallocator.budget_schedule(global_step)[0]

    # --- the adapter's weights, named as in PEFT's files -----------------------------------

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """``{PEFT key: array}``: each layer's ``lora_A``, ``lora_E``, ``lora_B`` (the adapter's name
        dropped), cut down to the triplets the config's ``rank_pattern`` keeps -- what PEFT saves --
        plus the trained biases and modules_to_save copies. Without a rank pattern (or on layers
        already cut to it) the arrays are the live parameter arrays."""
        pattern = self.peft_config[adapter_name].rank_pattern or {}
        out = {}
        for name, layer in self.svd_layers(adapter_name):
            keep = pattern.get(f"{name}.lora_E")
            for part in ("lora_A", "lora_B", "lora_E"):
                array = getattr(layer, part)[adapter_name].data
                if keep is not None and sum(keep) != layer.r[adapter_name]:
                    mask = B.xp.asarray(np.asarray(keep, dtype=bool))
                    array = array[:, mask] if part == "lora_B" else array[mask]
                out[f"base_model.model.{name}.{part}"] = array
        out.update(self._modules_to_save_state_dict(adapter_name))
        out.update(self._bias_state_dict(adapter_name))
        return out

    @no_grad()
    def load_adapter_state_dict(self, adapter_name: str, tensors: dict) -> None:
        """Cut every layer to the saved rank pattern first (PEFT's ``resize_modules_by_rank_pattern``),
        then copy the arrays in."""
        pattern = self.peft_config[adapter_name].rank_pattern or {}
        for name, layer in self.svd_layers(adapter_name):
            keep = pattern.get(f"{name}.lora_E")
            if keep is not None and sum(keep) != layer.r[adapter_name]:
                layer.resize(adapter_name, keep)
        super().load_adapter_state_dict(adapter_name, tensors)


__all__ = ["AdaLoraConfig", "AdaLoraModel", "SVDLinear", "RankAllocator"]
