"""LoRA: Low-Rank Adaptation of large language models, from first principles.

    Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang, Chen (2021).
    "LoRA: Low-Rank Adaptation of Large Language Models." arXiv:2106.09685.

The whole idea is one line (the paper's eq. 3, h = W0 x + B A x, with the update scaled
by α / r as its §4.1 says). A pretrained weight W (out x in) stays frozen; its update is
constrained to a product of two thin matrices,

    h = W x + ΔW x = W x + (α / r) · B A x,      B: (out x r),  A: (r x in),  r << min(in, out)

and only A and B are trained. ``LoRALinear.forward`` below is that equation.
B starts at zero, so the adapted model starts exactly at the pretrained one;
``merge()`` folds ``(α / r) B A`` into W so inference costs nothing extra.
The derivation -- the gradients with respect to A and B, the scaling, rsLoRA,
the fused ``c_attn`` case -- is in ``docs/lora.md``.

The names follow Hugging Face PEFT (``LoraConfig``, ``get_peft_model``,
``lora_A``/``lora_B``, ``merge_and_unload`` ...), and adapters are saved in PEFT's
file format, so what a student learns here carries over unchanged.

This file holds the layer (``LoRALinear``), its configuration (``LoraConfig``) and
the injection into a model (``LoraModel``). The bookkeeping LoRA shares with the other
methods that wrap layers -- adapters by name, modules_to_save, mixed batches, merging
and unloading every layer -- is ``BaseTuner``, in ``minilora/tuner.py``; the user-facing
wrapper with saving, loading and parameter counts is ``minilora.peft.PeftModel`` (also
importable from here).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field

from minilora import backend as B
from minilora import nn
from minilora.nn import functional as F
from minilora.quant import NF4Linear  # a 4-bit base layer (QLoRA): docs/qlora.md
from minilora.tensor import Tensor, cat, no_grad
from minilora.tuner import (  # BASE, ModulesToSaveWrapper and target_matches: importable from here too
    BASE,
    BaseTuner,
    MergeStep,
    ModulesToSaveWrapper,
    TunerLayer,
    check_new_name,
    group_rows,
    in_row_order,
    set_fan_in_fan_out,
    set_submodule,
    target_matches,
)

NF4_MERGE_ERROR = ("cannot merge into a 4-bit NF4 weight: W + ΔW would have to be re-quantized, which rounds most "
                   "of ΔW away and makes unmerging inexact; merge_and_unload() returns a dense model instead")

# ---------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------


class LoRALinear(TunerLayer):
    """A frozen ``nn.Linear`` plus trainable low-rank updates, one per named adapter.

        y = x W^T + b + (α / r) · dropout(x) A^T B^T          (Hu et al., eq. 3; α / r from §4.1)

    ``lora_A[name]`` is a Linear(in -> r) (weight A, (r, in)), ``lora_B[name]`` a
    Linear(r -> out) (weight B, (out, r)), exactly PEFT's layout. Several adapters
    can live side by side; one is active at a time (``set_adapter``), or each row
    of a batch picks its own (``adapter_names``, see ``LoraModel``).

    With ``enable_lora`` (e.g. ``[True, False, True]`` on GPT-2's fused ``c_attn``)
    the output is split into equal slices and only the enabled ones are adapted,
    each by its own rank-r pair: A is (k r, in) and B is (k out/slices, r) for k
    enabled slices, as loralib's ``MergedLinear`` stores them.

    An adapter made with ``use_dora`` also has a trained magnitude m, (out,)
    (``lora_magnitude_vector[name].weight``), and adds DoRA's update instead
    (``adapter_output``; the math is in ``minilora/peft/dora.py``).
    """

    adapter_dict = "lora_A"

    def __init__(self, base_layer: nn.Linear | NF4Linear):
        super().__init__(base_layer)  # base_layer, active_adapter, merged_adapters, ... (tuner.TunerLayer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ModuleDict()  # DoRA's m, for the adapters made with use_dora (peft/dora.py)
        self._dora_norms = {}  # a merged DoRA adapter's ||W + ΔW||_c, which unmerging needs
        self.r, self.lora_alpha, self.scaling, self.enable_lora = {}, {}, {}, {}

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                     use_rslora: bool = False, init_lora_weights=True, enable_lora=None, use_dora: bool = False) -> None:
        """Add adapter ``adapter_name``: create A and B, and initialise them (and DoRA's m, with ``use_dora``)."""
        if adapter_name in self.lora_A:
            raise ValueError(f"this layer already has an adapter named {adapter_name!r}")
        slices = 1
        if enable_lora is not None:
            slices = len(enable_lora)
            if self.out_features % slices:
                raise ValueError(f"enable_lora={enable_lora}: out_features={self.out_features} does not split into {slices} equal slices")
        k = sum(enable_lora) if enable_lora is not None else 1  # how many slices get an update
        dtype = self.base_layer.weight.dtype
        self.lora_A[adapter_name] = nn.Linear(self.in_features, k * r, bias=False, dtype=dtype)
        self.lora_B[adapter_name] = nn.Linear(r, k * self.out_features // slices, bias=False, dtype=dtype)
        self.lora_dropout[adapter_name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.r[adapter_name], self.lora_alpha[adapter_name] = r, lora_alpha
        # The scaling alpha / r keeps the update's size steady as r changes, so alpha need not be
        # re-tuned with the rank (Hu et al., sec. 4.1); rsLoRA divides by sqrt(r) instead, which keeps
        # learning from stalling at large r (docs/lora.md).
        self.scaling[adapter_name] = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r
        self.enable_lora[adapter_name] = list(enable_lora) if enable_lora is not None else None
        self.reset_lora_parameters(adapter_name, init_lora_weights)
        if use_dora:  # m = ||W + ΔW||_c, after A and B (and PiSSA's W) are set: W' = W + ΔW at the start
            norm = dora.weight_norm(self.base_layer.weight.data, self._delta_weight_data(adapter_name))
            self.lora_magnitude_vector[adapter_name] = dora.DoraMagnitude(norm.astype(dtype))
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights) -> None:
        A, Bw = self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight
        if init_lora_weights is False:  # keep nn.Linear's random init for both: a non-zero update (for tests)
            return
        if init_lora_weights == "pissa":
            if isinstance(self.base_layer, NF4Linear):  # the residual W - B A would need re-quantizing
                raise ValueError("init_lora_weights='pissa' needs a dense base layer, not a 4-bit NF4Linear")
            self._pissa_init(adapter_name)
            return
        if init_lora_weights == "gaussian":
            nn.init.normal_(A, std=1 / self.r[adapter_name])
        else:  # True: A as nn.Linear's default init, as loralib and PEFT do
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        # B = 0 makes B A = 0: training starts exactly from the pretrained model,
        # while A is random so that B's gradient (g^T (A x)) is not zero (docs/lora.md).
        nn.init.zeros_(Bw)

    def _pissa_init(self, adapter_name: str) -> None:
        """PiSSA (Meng et al., 2024): B A = the top-r singular part of W (divided by the scaling),
        and W is replaced by the residual, so the adapted layer starts at the same output."""
        W = self.base_layer.weight
        r, s = self.r[adapter_name], self.scaling[adapter_name]
        U, S, Vh = B.xp.linalg.svd(W.data, full_matrices=False)  # W = U diag(S) Vh
        root = B.xp.sqrt(S[:r] / s)  # split each singular value evenly between B and A
        self.lora_A[adapter_name].weight.data = (root[:, None] * Vh[:r]).astype(W.dtype)  # (r, in)
        self.lora_B[adapter_name].weight.data = (U[:, :r] * root[None, :]).astype(W.dtype)  # (out, r)
        W.data = (W.data - self._delta_weight_data(adapter_name)).astype(W.dtype)  # the residual

    # --- the update ---------------------------------------------------------------

    def lora_output(self, x, adapter_name: str) -> Tensor:
        """``(α / r) · dropout(x) A^T B^T``: what the adapter adds to the base output, (..., out)."""
        A = self.lora_A[adapter_name].weight  # (k r, in)
        s = self.scaling[adapter_name]
        h = F.linear(self.lora_dropout[adapter_name](x), A)  # (..., k r): down to the low-rank space
        # Scale the thin (..., r) activation rather than the wide output: same result, fewer multiplies.
        h = h * s
        return F.linear(h, self.lora_B_full(adapter_name))  # (..., out): back up

    def lora_B_full(self, adapter_name: str) -> Tensor:
        """B as it acts on the whole output, (out, k r): ``lora_B`` itself for a plain adapter.

        With ``enable_lora``, slice ``slot`` of the output takes its own block B_j (out/slices, r)
        in columns j r..(j+1) r, and a frozen slice's rows are zero, so ``B_full A`` is the
        block update [B_q A_q; 0; B_v A_v] (docs/lora.md, section 6). Built from weight-sized
        pieces, it costs nothing next to the activations, and the gradient flows back into B."""
        Bw = self.lora_B[adapter_name].weight  # (k out_slice, r)
        enable = self.enable_lora[adapter_name]
        if enable is None:
            return Bw
        r, k = self.r[adapter_name], sum(enable)
        out_slice = self.out_features // len(enable)

        def zeros(rows, cols):
            return Tensor(B.xp.zeros((rows, cols), dtype=Bw.dtype))

        rows, j = [], 0
        for on in enable:
            if on:
                block = Bw[j * out_slice:(j + 1) * out_slice]  # (out_slice, r)
                rows.append(cat([zeros(out_slice, j * r), block, zeros(out_slice, (k - j - 1) * r)], dim=1))
                j += 1
            else:
                rows.append(zeros(out_slice, k * r))  # this slice is not adapted
        return cat(rows, dim=0)  # (out, k r)

    @no_grad()
    def _delta_weight_data(self, adapter_name: str):
        """ΔW = (α / r) B A as a backend array (out, in); with enable_lora, zero rows for frozen slices."""
        A = self.lora_A[adapter_name].weight.data
        return self.scaling[adapter_name] * (self.lora_B_full(adapter_name).data @ A)

    def _slices(self, adapter_name: str):
        """(slot, j) for each enabled slice: its position among all slices, and among the enabled ones."""
        enabled = [slot for slot, on in enumerate(self.enable_lora[adapter_name]) if on]
        return list(zip(enabled, range(len(enabled))))

    def full_lora_B(self, adapter_name: str):
        """An enable_lora B in PEFT's layout, (out, k r), as a backend array (what save_pretrained writes)."""
        return self.lora_B_full(adapter_name).data

    def set_full_lora_B(self, adapter_name: str, full) -> None:
        """Inverse of ``full_lora_B``; refuses a B with non-zero entries outside the blocks."""
        r, out_slice = self.r[adapter_name], self.out_features // len(self.enable_lora[adapter_name])
        full = B.xp.asarray(full)
        mask = B.xp.zeros(full.shape, dtype=bool)
        Bw = self.lora_B[adapter_name].weight
        for slot, j in self._slices(adapter_name):
            mask[slot * out_slice:(slot + 1) * out_slice, j * r:(j + 1) * r] = True
            Bw.data[j * out_slice:(j + 1) * out_slice] = full[slot * out_slice:(slot + 1) * out_slice, j * r:(j + 1) * r]
        if bool((full[~mask] != 0).any()):
            raise ValueError("an enable_lora lora_B has non-zero entries outside its blocks: it is not an enable_lora adapter")

    def get_delta_weight(self, adapter_name: str) -> Tensor:
        """ΔW = (α / r) B A, (out, in), as PEFT's method of that name (but always (out, in))."""
        return Tensor(self._delta_weight_data(adapter_name))

    # --- forward ------------------------------------------------------------------

    def forward(self, x):
        if self.disable_adapters:
            if self.merged:  # PEFT's behaviour: disabling a merged adapter takes it out of W first
                self.unmerge()
            return self.base_layer(x)
        if self.row_adapters is not None:
            return self._mixed_batch_forward(x, self.row_adapters)
        y = self.base_layer(x)  # x W^T + b, W frozen
        if self.merged or self.active_adapter not in self.lora_A:
            return y  # a merged update is already inside W
        return y + self.adapter_output(x, self.active_adapter, y)

    def adapter_output(self, x, adapter_name: str, y) -> Tensor:
        """What the adapter adds to the base output ``y``: LoRA's update, or DoRA's (minilora/peft/dora.py)."""
        if adapter_name in self.lora_magnitude_vector:
            return dora.dora_output(self, x, adapter_name, y)
        return self.lora_output(x, adapter_name)

    def _mixed_batch_forward(self, x, names) -> Tensor:
        """Each batch row with its own adapter (or ``"__base__"`` for none): run the update of
        each adapter on its rows only, then put the rows back in their original order."""
        y = self.base_layer(x)  # (B, ..., out)
        groups = group_rows(names)
        if not any(name in self.lora_A for name in groups):
            return y
        pieces = []
        for name, rows in groups.items():
            idx = B.xp.asarray(rows)
            if name in self.lora_A:
                pieces.append(self.adapter_output(x[idx], name, y[idx]))  # (rows, ..., out)
            else:  # "__base__", or an adapter this layer does not have: no update
                pieces.append(Tensor(B.xp.zeros((len(rows),) + y.shape[1:], dtype=y.dtype)))
        return y + in_row_order(pieces, groups.values())

    # --- merging ------------------------------------------------------------------

    # ``merge(safe_merge=False, adapter_names=None)`` is TunerLayer's: it checks, then stores
    # what merge_steps computes -- W <- W + (α / r) B A for each adapter, after which inference
    # costs exactly what the base layer costs (docs/lora.md, "merging").

    @no_grad()
    def merge_steps(self, adapter_names) -> list:
        """W after each adapter in turn, as new arrays: W + ΔW, or DoRA's m ⊙ (W + ΔW) / ||W + ΔW||_c."""
        W = self.base_layer.weight.data
        W_base = None  # for DoRA: W without any merged update, whose norm the forward pass takes
        steps = []
        for name in adapter_names:
            delta = self._delta_weight_data(name).astype(W.dtype)
            if name in self.lora_magnitude_vector:
                W_base = self._unmerged_weight_data() if W_base is None else W_base
                m = self.lora_magnitude_vector[name].weight.data
                W, norm = dora.merged_weight(W, W_base, delta, m)
                steps.append(MergeStep(name, {"weight": W}, memo=norm))
            else:
                W = W + delta
                steps.append(MergeStep(name, {"weight": W}))
        return steps

    def remember_merge(self, step: MergeStep) -> None:
        if step.memo is not None:
            self._dora_norms[step.adapter_name] = step.memo

    def check_merge(self, adapter_names) -> None:
        """Refuse, before anything changes, a merge that cannot be done: into a 4-bit weight, into
        a tied one, or twice."""
        names = [name for name in adapter_names if name in self.lora_A]
        if names and isinstance(self.base_layer, NF4Linear):
            raise RuntimeError(NF4_MERGE_ERROR)
        super().check_merge(names)

    @no_grad()
    def unmerge(self) -> None:
        """W <- W - (α / r) B A for every merged adapter, last merged first."""
        self.check_unmerge()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            W = self.base_layer.weight
            W.data = self._without_update(W.data, name)
            self._dora_norms.pop(name, None)

    def check_unmerge(self) -> None:
        """Refuse, before anything changes, an unmerge that cannot be done: a DoRA magnitude with
        zeros, or a weight tied to another module since the merge."""
        if self.merged_adapters:
            self.check_untied("unmerge from")
        for name in self.merged_adapters:
            if name in self.lora_magnitude_vector:
                dora.check_unmerge(self.lora_magnitude_vector[name].weight.data, name)

    def _without_update(self, W, adapter_name: str):
        """The array W with the merged update of ``adapter_name`` taken out."""
        delta = self._delta_weight_data(adapter_name).astype(W.dtype)
        if adapter_name in self.lora_magnitude_vector:
            m = self.lora_magnitude_vector[adapter_name].weight.data
            return dora.unmerged_weight(W, delta, m, self._dora_norms[adapter_name])
        return W - delta

    def _unmerged_weight_data(self):
        """W as it was before any merge (a new array): DoRA's norm is taken of it, as in forward."""
        W = self.base_layer.weight.data
        for name in reversed(self.merged_adapters):
            W = self._without_update(W, name)
        return W

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise RuntimeError(f"adapter {adapter_name!r} is merged; unmerge it before deleting it")
        for registry in (self.lora_A, self.lora_B, self.lora_dropout):
            del registry[adapter_name]
        if adapter_name in self.lora_magnitude_vector:
            del self.lora_magnitude_vector[adapter_name]
        for table in (self.r, self.lora_alpha, self.scaling, self.enable_lora):
            table.pop(adapter_name, None)
        if self.active_adapter == adapter_name:
            self.active_adapter = None

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={self.r[n]}, alpha={self.lora_alpha[n]}" for n in self.lora_A) + (
            f", active={self.active_adapter!r}" if self.active_adapter else "")


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


@dataclass
class LoraConfig:
    """What to adapt and how, with PEFT's field names and defaults."""

    r: int = 8  # the rank of the update B A
    lora_alpha: float = 8  # the update is scaled by lora_alpha / r (or / sqrt(r) with use_rslora)
    lora_dropout: float = 0.0  # dropout on the adapter's input x (not on the frozen path)
    target_modules: list | str | None = None  # names, name suffixes (list) or one regex (str); None: PEFT's default
                                              # for the model (GPT-2: c_attn; BERT: query, value; LLaMA: q_proj, v_proj)
    bias: str = "none"  # "none" | "all" (train every bias) | "lora_only" (train the biases of adapted layers)
    use_rslora: bool = False  # rank-stabilised LoRA (Kalajdzievski, 2023): scale by alpha / sqrt(r)
    init_lora_weights: bool | str = True  # True: A Kaiming-uniform, B = 0; "gaussian": A ~ N(0, 1/r); "pissa"; False: both random
    rank_pattern: dict = field(default_factory=dict)  # {regex of module name: r} overriding r for some layers
    alpha_pattern: dict = field(default_factory=dict)  # {regex of module name: alpha}
    modules_to_save: list | None = None  # modules trained in full beside the adapter (e.g. a classifier head)
    # "SEQ_CLS" adds the classification head ("classifier" or "score") to modules_to_save, as PEFT does
    fan_in_fan_out: bool = False  # True for GPT-2, whose HF layers (Conv1D) store W as (in, out); set automatically
    use_dora: bool = False  # DoRA (weight-decomposed LoRA); see minilora/peft/dora.py
    # minilora's addition, after loralib's MergedLinear: adapt only some of the equal
    # slices of a fused projection, e.g. [True, False, True] = Wq and Wv inside GPT-2's
    # c_attn, each with its own rank-r pair -- the setting of the LoRA paper's tables.
    # A list applies to every target; a dict {module-name regex: list} to the modules
    # it matches (e.g. {"c_attn": [True, True, True]} beside a plain attn.c_proj).
    enable_lora: list | dict | None = None
    inference_mode: bool = False  # True: nothing is trainable (set when loading for inference)
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    peft_type: str = field(default="LORA", init=False)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field. Also called when the config is used (``inject_adapter``): a config
        is a plain dataclass and may have been edited since it was made."""
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive int, got {self.r!r}")
        if self.lora_alpha < 0:
            raise ValueError(f"LoraConfig.lora_alpha must be >= 0, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig.lora_dropout must lie in [0, 1), got {self.lora_dropout!r}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"LoraConfig.bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")
        if self.init_lora_weights not in (True, False, "gaussian", "pissa"):
            raise ValueError(
                f"LoraConfig.init_lora_weights must be True, False, 'gaussian' or 'pissa', got {self.init_lora_weights!r}"
            )
        for pattern, value in {**self.rank_pattern}.items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LoraConfig.rank_pattern[{pattern!r}] must be a positive int, got {value!r}")
        for pattern, value in self.alpha_pattern.items():
            if value < 0:
                raise ValueError(f"LoraConfig.alpha_pattern[{pattern!r}] must be >= 0, got {value!r}")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if self.enable_lora is not None:
            lists = self.enable_lora.values() if isinstance(self.enable_lora, dict) else [self.enable_lora]
            if not all(isinstance(lst, (list, tuple)) and any(lst) for lst in lists):
                raise ValueError(f"LoraConfig.enable_lora must enable at least one slice of each list, got {self.enable_lora}")
            if self.init_lora_weights == "pissa" or self.use_dora:
                raise ValueError("LoraConfig.enable_lora works with plain LoRA only (not with pissa or use_dora)")

    # --- PEFT's file has no enable_lora: save its equivalent ------------------------------

    def to_peft_fields(self) -> dict:
        """Fields to write in adapter_config.json. An ``enable_lora`` adapter is saved as PEFT's
        equivalent -- one rank-(k r) pair per layer with zero blocks (see ``LoraModel.adapter_state_dict``),
        with alpha scaled so that alpha / r is unchanged -- plus a ``minilora_enable_lora`` record
        (PEFT ignores it, with a warning) from which minilora restores the original layout."""
        if self.enable_lora is None:
            return {}
        if self.rank_pattern or self.alpha_pattern:
            raise ValueError("saving enable_lora adapters with rank_pattern/alpha_pattern is not supported")
        record = {"enable_lora": self.enable_lora, "r": self.r, "lora_alpha": self.lora_alpha}

        def equivalent(k):  # PEFT's (r, alpha) for k slices of rank r each, keeping alpha / r (or / sqrt r)
            return k * self.r, self.lora_alpha * (math.sqrt(k) if self.use_rslora else k)

        if isinstance(self.enable_lora, dict):
            patterns = {p: equivalent(sum(lst)) for p, lst in self.enable_lora.items()}
            return {"rank_pattern": {p: v[0] for p, v in patterns.items()},
                    "alpha_pattern": {p: v[1] for p, v in patterns.items()},
                    "enable_lora": None, "minilora_enable_lora": record}
        r, alpha = equivalent(sum(self.enable_lora))
        return {"r": r, "lora_alpha": alpha, "enable_lora": None, "minilora_enable_lora": record}

    @staticmethod
    def from_peft_fields(data: dict) -> dict:
        """Undo ``to_peft_fields`` on a loaded dict."""
        data = dict(data)
        record = data.pop("minilora_enable_lora", None)
        if record:
            data.update(record)
            if isinstance(record["enable_lora"], dict):  # the patterns were written for PEFT only
                data["rank_pattern"], data["alpha_pattern"] = {}, {}
        return data

    def enable_lora_for(self, module_name: str):
        """The slice list for one module (None: a plain, unsliced adapter)."""
        if isinstance(self.enable_lora, dict):
            return _pattern_value(self.enable_lora, module_name, None)
        return self.enable_lora

    def rank_and_alpha(self, module_name: str) -> tuple:
        """r and alpha for one module: a matching ``rank_pattern``/``alpha_pattern`` entry wins (PEFT's rule)."""
        return (_pattern_value(self.rank_pattern, module_name, self.r),
                _pattern_value(self.alpha_pattern, module_name, self.lora_alpha))


def _pattern_value(patterns: dict, name: str, default):
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default


# ---------------------------------------------------------------------------
# injection into a model
# ---------------------------------------------------------------------------

# PEFT's defaults when target_modules is None, by model class (PEFT keys them by model_type in
# peft/utils/constants.py, TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING: "gpt2" -> c_attn,
# "bert" -> query and value (the LoRA paper's Wq and Wv), "llama" -> q_proj and v_proj)
DEFAULT_TARGET_MODULES = {
    "GPT": ["c_attn"],
    "BertModel": ["query", "value"],
    "BertForSequenceClassification": ["query", "value"],
    "LlamaForCausalLM": ["q_proj", "v_proj"],
}


class LoraModel(BaseTuner):
    """Injects ``LoRALinear`` into a model and manages its adapters (PEFT's ``LoraModel``).

    The wrapped model is ``self.model``, so that inside a ``PeftModel`` a parameter is
    named ``base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight`` --
    PEFT's name, which is what makes the saved files interchangeable. Adding, choosing,
    disabling, mixing, merging and deleting adapters is ``BaseTuner``'s (minilora/tuner.py);
    what is LoRA's own is below: which layers to wrap and how, what is trained, a 4-bit
    base, combining adapters, and PEFT's file keys.
    """

    method = "LoRA"
    prefix = "lora_"
    layer_type = LoRALinear

    # --- finding and wrapping the targets -------------------------------------------

    def _prepare_config(self, config: LoraConfig) -> None:
        config.validate()
        set_fan_in_fan_out(self.model, config)
        self._fill_default(config, "target_modules", DEFAULT_TARGET_MODULES)

    def _target_names(self, config: LoraConfig) -> list:
        return self._find_targets(config.target_modules, (nn.Linear, NF4Linear, LoRALinear))

    def _new_layer(self, name: str, module, config: LoraConfig) -> LoRALinear:
        return LoRALinear(module)

    def _update_layer(self, name: str, layer: LoRALinear, adapter_name: str, config: LoraConfig) -> None:
        r, alpha = config.rank_and_alpha(name)
        layer.update_layer(adapter_name, r, alpha, config.lora_dropout, config.use_rslora,
                           config.init_lora_weights, config.enable_lora_for(name), config.use_dora)

    def lora_layers(self) -> list:
        """Every ``(name, LoRALinear)`` of the model."""
        return self.adapter_layers()

    def _mark_trainable(self, adapter_name: str) -> None:
        """Train the adapter's A and B (and DoRA's m), and the biases its config asks for."""
        config = self.peft_config[adapter_name]
        for _, module in self.lora_layers():
            if adapter_name in module.lora_A:
                module.lora_A[adapter_name].weight.requires_grad_(True)
                module.lora_B[adapter_name].weight.requires_grad_(True)
                if adapter_name in module.lora_magnitude_vector:
                    module.lora_magnitude_vector[adapter_name].weight.requires_grad_(True)
                if config.bias == "lora_only" and module.base_layer.bias is not None:
                    module.base_layer.bias.requires_grad_(True)
        if config.bias == "all":
            for name, p in self.model.named_parameters():
                # a modules_to_save wrapper keeps its original frozen and trains only the active
                # copy (in full, by BaseTuner.set_adapter), as PEFT's wrapper does
                if name.endswith("bias") and ".original_module." not in name and ".modules_to_save." not in name:
                    p.requires_grad_(True)

    # --- merging into a 4-bit base --------------------------------------------------------

    def _before_merge_and_unload(self, undo: list) -> None:
        """``merge_and_unload`` on a 4-bit base (QLoRA) dequantizes it first, every NF4Linear
        becoming an nn.Linear: the result is a dense model (undone if the merge fails)."""
        for name, q in [(n, m) for n, m in self.model.named_modules() if isinstance(m, NF4Linear)]:
            self._replace(name, q.to_dense(), undo)

    # --- combining adapters ---------------------------------------------------------------

    @no_grad()
    def add_weighted_adapter(self, adapters, weights, adapter_name: str, combination_type: str = "svd",
                             svd_rank: int | None = None) -> None:
        """A new adapter combining existing ones, with PEFT's semantics:

        * ``"cat"``: A = [w_i s_i A_i] stacked, B = [B_i] side by side, r = Σ r_i, scaling 1,
          so ΔW = Σ w_i ΔW_i exactly;
        * ``"svd"``: ΔW = Σ w_i ΔW_i, truncated to rank ``svd_rank`` (default max r_i) by SVD --
          the best such approximation (Eckart-Young);
        * ``"linear"``: A = Σ sign · sqrt(|w_i s_i|) A_i and B = Σ sqrt(|w_i s_i|) B_i (all r_i equal).
          This is *not* Σ w_i ΔW_i: B A has cross terms B_i A_j (docs/lora.md shows the difference).
        """
        check_new_name(self, adapter_name)
        missing = [a for a in adapters if a not in self.peft_config]
        if missing:
            raise ValueError(f"add_weighted_adapter: unknown adapters {missing}; adapters: {sorted(self.peft_config)}")
        if len(adapters) != len(weights):
            raise ValueError(f"add_weighted_adapter: {len(adapters)} adapters but {len(weights)} weights")
        if len(adapters) == 1:
            combination_type = "linear"  # PEFT's rule
        configs = [self.peft_config[a] for a in adapters]
        if any(c.enable_lora is not None for c in configs):
            raise ValueError("add_weighted_adapter does not combine enable_lora adapters")
        if any(c.use_dora for c in configs):  # a DoRA update depends on W through its norm: not a sum of ΔW_i
            raise ValueError("add_weighted_adapter does not combine DoRA adapters (use_dora=True)")
        ranks = [max([c.r, *c.rank_pattern.values()]) for c in configs]
        if combination_type == "linear":
            if len(set(ranks)) != 1:
                raise ValueError(f"combination_type='linear' needs adapters of one rank, got ranks {ranks}")
            new_rank = ranks[0]
        elif combination_type == "cat":
            new_rank = sum(ranks)
        elif combination_type == "svd":
            new_rank = svd_rank or max(ranks)
        else:
            raise ValueError(f"combination_type must be 'linear', 'cat' or 'svd', got {combination_type!r}")
        targets = sorted(set().union(*[set(n for n, m in self.lora_layers() if a in m.lora_A) for a in adapters]))
        new = copy.copy(configs[0])
        new.r, new.lora_alpha, new.rank_pattern, new.alpha_pattern = new_rank, new_rank, {}, {}
        # The combinations above fold each adapter's scaling into A and B, so the new adapter's own
        # scaling must be 1: alpha = r, and no rsLoRA (whose alpha / sqrt(r) would be sqrt(r)).
        # PEFT up to 0.21.2 keeps use_rslora here and so scales the result by sqrt(r) (fixed upstream, PR #3449).
        new.use_rslora = False
        new.target_modules = [name for name in targets]
        new.init_lora_weights = True
        new.modules_to_save = None
        self.inject_adapter(adapter_name, new)
        for _, m in self.lora_layers():
            if adapter_name not in m.lora_A:
                continue
            A_new, B_new = m.lora_A[adapter_name].weight, m.lora_B[adapter_name].weight
            present = [(a, w) for a, w in zip(adapters, weights) if a in m.lora_A]
            if combination_type == "cat":
                As = [w * m.scaling[a] * m.lora_A[a].weight.data for a, w in present]
                Bs = [m.lora_B[a].weight.data for a, _ in present]
                A_new.data = B.xp.zeros_like(A_new.data)
                B_new.data = B.xp.zeros_like(B_new.data)
                stacked_A = B.xp.concatenate(As, axis=0)
                A_new.data[: stacked_A.shape[0]] = stacked_A
                stacked_B = B.xp.concatenate(Bs, axis=1)
                B_new.data[:, : stacked_B.shape[1]] = stacked_B
            elif combination_type == "svd":
                delta = sum(w * m._delta_weight_data(a) for a, w in present)  # (out, in)
                U, S, Vh = B.xp.linalg.svd(delta, full_matrices=False)
                k = min(new_rank, S.shape[0])
                A_new.data = B.xp.zeros_like(A_new.data)
                B_new.data = B.xp.zeros_like(B_new.data)
                A_new.data[:k] = Vh[:k]
                B_new.data[:, :k] = U[:, :k] * S[:k]
            else:  # linear
                wa = [math.copysign(math.sqrt(abs(w * m.scaling[a])), w * m.scaling[a]) for a, w in present]
                wb = [math.sqrt(abs(w * m.scaling[a])) for a, w in present]
                A_new.data = sum(c * m.lora_A[a].weight.data for c, (a, _) in zip(wa, present)).astype(A_new.dtype)
                B_new.data = sum(c * m.lora_B[a].weight.data for c, (a, _) in zip(wb, present)).astype(B_new.dtype)

    # --- the adapter's weights, named as in PEFT's files -----------------------------------

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """``{PEFT key: array}`` for one adapter: lora_A/lora_B (adapter name removed), the
        trained biases, and the modules_to_save copies. Keys start ``base_model.model.``.

        Arrays are the live parameter arrays, except an ``enable_lora`` layer's B, which is
        exported in PEFT's layout: (out, k r) with zero blocks (docs/lora.md, section 6)."""
        config = self.peft_config[adapter_name]
        out = {}
        for name, t in self.model.state_dict().items():
            key = _peft_key(name, adapter_name)
            if key is None:
                continue
            out["base_model.model." + key] = t
        for name, m in self.lora_layers():
            if m.enable_lora.get(adapter_name) is not None:
                out[f"base_model.model.{name}.lora_B.weight"] = m.full_lora_B(adapter_name)
        if config.bias == "lora_only":
            lora_layer_names = {n for n, m in self.lora_layers()}
            for name, t in self.model.state_dict().items():
                if name.endswith(".base_layer.bias") and name.rpartition(".base_layer")[0] in lora_layer_names:
                    out["base_model.model." + name] = t
        elif config.bias == "all":
            # PEFT's rule: every key ending in ".bias" but other adapters' -- which, beside a
            # modules_to_save copy, includes the frozen original's bias and the copy's bias a
            # second time, as "<module>.modules_to_save.bias". The same keys are written and read
            # here, so that either side loads the other's file.
            others = [a for a in self.peft_config if a != adapter_name]
            for name, t in self.model.state_dict().items():
                if not name.endswith(".bias") or any(f".modules_to_save.{a}." in name for a in others):
                    continue
                out["base_model.model." + name.replace(f".modules_to_save.{adapter_name}.", ".modules_to_save.")] = t
        return out

    @no_grad()
    def load_adapter_state_dict(self, adapter_name: str, tensors: dict) -> None:
        """Copy arrays keyed as ``adapter_state_dict`` keys them (shapes already checked) into the adapter."""
        live = self.adapter_state_dict(adapter_name)
        for name, m in self.lora_layers():
            if m.enable_lora.get(adapter_name) is not None:
                key = f"base_model.model.{name}.lora_B.weight"
                m.set_full_lora_B(adapter_name, tensors[key])
                live.pop(key)
        for key, array in live.items():  # each is the live array of a parameter: write into it
            array[...] = B.xp.asarray(tensors[key])


def _peft_key(name: str, adapter_name: str):
    """The saved key for a model key, or None if it is not this adapter's: PEFT drops the
    adapter's name (``lora_A.default.weight`` -> ``lora_A.weight``,
    ``modules_to_save.default.x`` -> ``x``)."""
    for part in (".lora_A.", ".lora_B."):
        marker = f"{part}{adapter_name}."
        if marker in name:
            return name.replace(marker, part)
    marker = f".modules_to_save.{adapter_name}."
    if marker in name:
        return name.replace(marker, ".")
    marker = f".lora_magnitude_vector.{adapter_name}.weight"
    if name.endswith(marker):  # DoRA's m: PEFT saves it without the ".weight"
        return name[: -len(marker)] + ".lora_magnitude_vector"
    return None


# The user-facing wrapper lives in minilora/peft/model.py (shared by every method);
# it is re-exported here so that `from minilora.lora import PeftModel, get_peft_model` works.
from minilora.peft.model import PeftModel, get_peft_model  # noqa: E402
# DoRA's math (use_dora), called by LoRALinear; imported last because importing minilora.peft
# imports this module.
from minilora.peft import dora  # noqa: E402

__all__ = ["LoRALinear", "LoraConfig", "LoraModel", "PeftModel", "get_peft_model", "ModulesToSaveWrapper", "target_matches",
           "BASE"]
