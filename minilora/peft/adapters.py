"""Bottleneck adapters: small trainable networks inserted inside each transformer block.

    Houlsby, Giurgiu, Jastrzebski, Morrone, de Laroussilhe, Gesmundo, Attariyan, Gelly (2019).
    "Parameter-Efficient Transfer Learning for NLP." ICML. arXiv:1902.00751.
    Pfeiffer, Kamath, Rücklé, Cho, Gurevych (2021). "AdapterFusion: Non-Destructive Task
    Composition for Transfer Learning." EACL. arXiv:2005.00247 (2020).

The LoRA paper's baselines "Adapter^H" and "Adapter^P". An adapter takes the output h (B, T, C)
of a sublayer and adds a bottleneck network to it, before the block's residual add:

    adapter(h) = h + W_up · act(W_down · h + b_down) + b_up,     W_down: (m x C),  W_up: (C x m),  m << C

    Houlsby:   x = x + adapter(attn(ln_1(x)));   x = x + adapter'(mlp(ln_2(x)))     2 adapters per block
    Pfeiffer:  x = x + attn(ln_1(x));            x = x + adapter(mlp(ln_2(x)))      1 adapter per block

Each adapter has 2·C·m + m + C parameters (two matrices and two biases). W_up starts near
zero (a truncated normal of std ``init_scale``), so adapter(h) ≈ h and the adapted model
starts near the pretrained one; with ``init_scale=0`` exactly at it. (Houlsby et al. draw
both projections from a small truncated normal; here W_down keeps nn.Linear's default, as
LoRA's A does, so that W_up's first gradients are not tiny -- the adapter starts near zero
either way.) Pfeiffer's configuration also moves the adapter's residual before a LayerNorm
of the post-LN transformer; GPT-2 is pre-LN, so only the placement is kept.

**They cannot be merged.** LoRA's update B A is linear, so it folds into W and inference
costs what the base model costs. Here ``act`` sits between W_down and W_up: the adapter
is not a linear map, no weight of the base model can absorb it, and every forward pays
for the extra layers -- sequentially, since each block must wait for its adapters. That is
the LoRA paper's latency claim (its table 1); ``merge_adapter`` and ``merge_and_unload``
raise an error that says so.

Implementation: the block's ``attn`` and ``mlp`` modules are wrapped in an ``AdapterLayer``
(the original kept as ``base_layer``, called with the same arguments, ``kv_cache``
included), the rest of GPT's module tree is untouched. Saved keys (our own format: PEFT
has no bottleneck adapters and cannot load these files) drop the adapter name, as PEFT's do:

    base_model.model.transformer.h.0.attn.adapter_down.weight   (m, C)
    base_model.model.transformer.h.0.attn.adapter_down.bias     (m,)
    base_model.model.transformer.h.0.attn.adapter_up.weight     (C, m)
    base_model.model.transformer.h.0.attn.adapter_up.bias       (C,)
    base_model.model.transformer.h.0.mlp.adapter_down.weight    ... the same four for the MLP

The tuner (``BottleneckModel``) follows the protocol in ``minilora/peft/model.py``.
Equations and counts in docs/adapters.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from minilora import backend as B
from minilora import nn
from minilora.nn import functional as F
from minilora.tensor import Tensor
from minilora.tuner import BaseTuner, TunerLayer, group_rows, in_row_order

# Each satisfies |act(z)| <= |z|, which the near-identity bound in the tests relies on.
ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda z: F.gelu(z, approximate="tanh"),  # GPT-2's
    "tanh": F.tanh,
    "silu": lambda z: z * F.sigmoid(z),
    "swish": lambda z: z * F.sigmoid(z),
}

PLACEMENTS = {"houlsby": ("attn", "mlp"), "pfeiffer": ("mlp",)}  # the sublayers that get an adapter

NOTE = ("a minilora bottleneck adapter (Houlsby 2019 / Pfeiffer 2020); Hugging Face PEFT has no such "
        "method and cannot load this file -- load it with minilora.peft.PeftModel.from_pretrained")

MERGE_ERROR = ("bottleneck adapters cannot be merged: adapter(h) = h + W_up act(W_down h + b_down) + b_up "
               "has a nonlinearity between its two projections, so it is not a linear map and no weight of "
               "the base model can absorb it -- every forward pays for the extra layers (docs/adapters.md). "
               "Use unload() to get the base model back, or keep the PeftModel for inference")


@dataclass
class BottleneckConfig:
    """Bottleneck adapters in every block of a GPT (minilora's config: PEFT has none)."""

    bottleneck_size: int = 64  # m: each adapter maps C -> m -> C
    non_linearity: str = "relu"  # between the projections: relu | gelu | gelu_new | tanh | silu | swish
    placement: str = "houlsby"  # "houlsby": after attention and after the MLP; "pfeiffer": after the MLP only
    init_scale: float = 1e-3  # std of W_up's truncated-normal init (Houlsby's code uses 1e-3); 0: W_up = 0
    adapter_dropout: float = 0.0  # dropout on the adapter's input h (not on the sublayer's own output)
    inference_mode: bool = False  # True: nothing is trainable (set when loading for inference)
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    peft_type: str = field(default="BOTTLENECK", init=False)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field; also called when the config is used, in case it was edited."""
        m = self.bottleneck_size
        if isinstance(m, bool) or not isinstance(m, int) or m <= 0:
            raise ValueError(f"BottleneckConfig.bottleneck_size must be a positive int, got {m!r}")
        if self.non_linearity not in ACTIVATIONS:
            raise ValueError(f"BottleneckConfig.non_linearity must be one of {', '.join(ACTIVATIONS)}, got {self.non_linearity!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"BottleneckConfig.placement must be 'houlsby' or 'pfeiffer', got {self.placement!r}")
        if not (isinstance(self.init_scale, (int, float)) and math.isfinite(self.init_scale) and self.init_scale >= 0):
            raise ValueError(f"BottleneckConfig.init_scale must be a finite number >= 0, got {self.init_scale!r}")
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError(f"BottleneckConfig.adapter_dropout must lie in [0, 1), got {self.adapter_dropout!r}")

    def num_parameters(self, n_layer: int, n_embd: int) -> int:
        """The closed form: (2 C m + m + C) per adapter, 2 adapters a block (Houlsby) or 1 (Pfeiffer)."""
        m, C = self.bottleneck_size, n_embd
        return (2 * C * m + m + C) * len(PLACEMENTS[self.placement]) * n_layer

    # adapter_config.json carries a note that says what the file is (minilora/peft/files.py calls these)
    def to_peft_fields(self) -> dict:
        return {"minilora_note": NOTE}

    @staticmethod
    def from_peft_fields(data: dict) -> dict:
        return {k: v for k, v in data.items() if k != "minilora_note"}


def _trunc_normal(shape, std: float, dtype):
    """N(0, std^2) truncated to [-2 std, 2 std]: out-of-range draws are redrawn (a few rounds)."""
    z = B.rng().standard_normal(shape)
    outside = B.xp.abs(z) > 2
    while bool(outside.any()):
        z[outside] = B.rng().standard_normal(int(outside.sum()))
        outside = B.xp.abs(z) > 2
    return (z * std).astype(dtype)


# ---------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------


class AdapterLayer(TunerLayer):
    """A sublayer (``attn`` or ``mlp``) followed by bottleneck adapters, one per adapter name.

        h = base_layer(*args);   y = h + W_up · act(W_down · dropout(h) + b_down) + b_up

    ``adapter_down[name]`` is a Linear(C -> m), ``adapter_up[name]`` a Linear(m -> C).
    One adapter is active at a time, or each batch row picks its own (``row_adapters``).
    """

    adapter_dict = "adapter_down"

    def __init__(self, base_layer: nn.Module, n_embd: int):
        super().__init__(base_layer)  # base_layer, active_adapter, row_adapters, ... (tuner.TunerLayer)
        self.merged_adapters = ()  # nothing is ever merged into the sublayer (see MERGE_ERROR)
        self.n_embd = n_embd
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.adapter_dropout = nn.ModuleDict()
        self.non_linearity = {}

    def update_layer(self, adapter_name: str, config: BottleneckConfig) -> None:
        if adapter_name in self.adapter_down:
            raise ValueError(f"this layer already has an adapter named {adapter_name!r}")
        C, m = self.n_embd, config.bottleneck_size
        dtype = next(iter(self.base_layer.parameters()), None)
        dtype = dtype.dtype if dtype is not None else B.default_float
        down, up = nn.Linear(C, m, dtype=dtype), nn.Linear(m, C, dtype=dtype)
        nn.init.zeros_(down.bias)  # W_down keeps nn.Linear's Kaiming-uniform init
        up.weight.data = _trunc_normal((C, m), config.init_scale, dtype)  # |W_up| <= 2 init_scale
        nn.init.zeros_(up.bias)
        self.adapter_down[adapter_name], self.adapter_up[adapter_name] = down, up
        self.adapter_dropout[adapter_name] = nn.Dropout(config.adapter_dropout) if config.adapter_dropout > 0 else nn.Identity()
        self.non_linearity[adapter_name] = config.non_linearity
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def adapter_output(self, h, adapter_name: str) -> Tensor:
        """``W_up · act(W_down · dropout(h) + b_down) + b_up``: what the adapter adds to h, (..., C)."""
        act = ACTIVATIONS[self.non_linearity[adapter_name]]
        z = self.adapter_down[adapter_name](self.adapter_dropout[adapter_name](h))  # (..., m): the bottleneck
        return self.adapter_up[adapter_name](act(z))  # (..., C)

    def forward(self, *args, **kwargs):
        h = self.base_layer(*args, **kwargs)  # (B, T, C): attention (x, kv_cache) or MLP (x)
        if self.disable_adapters:
            return h
        if self.row_adapters is not None:
            return self._mixed_batch_forward(h, self.row_adapters)
        if self.active_adapter not in self.adapter_down:
            return h
        return h + self.adapter_output(h, self.active_adapter)  # the adapter's own residual

    def _mixed_batch_forward(self, h, names) -> Tensor:
        """Each batch row through its own adapter (or none, for ``"__base__"``)."""
        groups = group_rows(names)
        pieces = []
        for name, rows in groups.items():
            idx = B.xp.asarray(rows)
            if name in self.adapter_down:
                pieces.append(self.adapter_output(h[idx], name))  # (rows, T, C)
            else:
                pieces.append(Tensor(B.xp.zeros((len(rows),) + h.shape[1:], dtype=h.dtype)))
        return h + in_row_order(pieces, groups.values())

    def delete_adapter(self, adapter_name: str) -> None:
        for registry in (self.adapter_down, self.adapter_up, self.adapter_dropout):
            del registry[adapter_name]
        self.non_linearity.pop(adapter_name, None)
        if self.active_adapter == adapter_name:
            self.active_adapter = None

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: m={self.adapter_down[n].out_features}, {self.non_linearity[n]}" for n in self.adapter_down)


# ---------------------------------------------------------------------------
# injection into a GPT
# ---------------------------------------------------------------------------


class BottleneckModel(BaseTuner):
    """Wraps the ``attn``/``mlp`` of every GPT block in an ``AdapterLayer`` and manages the adapters.

    The model is ``self.model``, so inside a ``PeftModel`` a parameter is named
    ``base_model.model.transformer.h.0.mlp.adapter_down.default.weight``. The adapters'
    bookkeeping is ``BaseTuner``'s (minilora/tuner.py); what is the adapters' own is below:
    the sublayers to wrap, what is trained, the key names, and that nothing can be merged.
    """

    method = "bottleneck adapters"
    prefix = "adapter_"
    layer_type = AdapterLayer

    def _target_names(self, config: BottleneckConfig) -> list:
        from minilora.models.gpt import Block

        n_embd = getattr(getattr(self.model, "config", None), "n_embd", None)
        blocks = [n for n, m in self.model.named_modules() if isinstance(m, Block)]
        if n_embd is None or not blocks:
            raise ValueError(f"bottleneck adapters go inside GPT blocks; {type(self.model).__name__} has none")
        return [f"{b}.{sub}" for b in blocks for sub in PLACEMENTS[config.placement]]

    def _new_layer(self, name: str, module, config: BottleneckConfig) -> AdapterLayer:
        return AdapterLayer(module, self.model.config.n_embd)

    def _update_layer(self, name: str, layer: AdapterLayer, adapter_name: str, config: BottleneckConfig) -> None:
        layer.update_layer(adapter_name, config)

    def _mark_trainable(self, adapter_name: str) -> None:
        for _, layer in self.adapter_layers():
            if adapter_name in layer.adapter_down:
                layer.adapter_down[adapter_name].requires_grad_(True)
                layer.adapter_up[adapter_name].requires_grad_(True)

    # --- merging: impossible -------------------------------------------------------------

    def merge_adapter(self, adapter_names=None, safe_merge: bool = False) -> None:
        raise RuntimeError(MERGE_ERROR)

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False, adapter_names=None) -> nn.Module:
        raise RuntimeError(MERGE_ERROR)

    def unmerge_adapter(self) -> None:
        """Nothing is ever merged: nothing to do."""

    def add_weighted_adapter(self, *args, **kwargs) -> None:
        raise RuntimeError("bottleneck adapters cannot be combined by weighting their parameters: "
                           "the adapter is not linear in them (act sits between W_down and W_up)")

    # --- the adapter's weights, under our own key names --------------------------------------

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """``{key: live array}`` for one adapter, keys as in the module docstring (name dropped)."""
        out = {}
        for name, m in self.adapter_layers():
            if adapter_name not in m.adapter_down:
                continue
            for part, linear in (("adapter_down", m.adapter_down[adapter_name]), ("adapter_up", m.adapter_up[adapter_name])):
                out[f"base_model.model.{name}.{part}.weight"] = linear.weight.data
                out[f"base_model.model.{name}.{part}.bias"] = linear.bias.data
        return out


__all__ = ["BottleneckConfig", "BottleneckModel", "AdapterLayer", "ACTIVATIONS", "PLACEMENTS"]
