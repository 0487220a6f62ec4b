"""(IA)^3: Infused Adapter by Inhibiting and Amplifying Inner Activations.

    Liu, Tam, Muqeeth, Mohta, Huang, Bansal, Raffel (2022). "Few-Shot Parameter-Efficient
    Fine-Tuning is Better and Cheaper than In-Context Learning." NeurIPS 2022, arXiv:2205.05638.

The smallest update of all: a learned vector l rescales a layer's activations,
element by element, and nothing else is trained. For a projection y = W x + b,

    y = l ⊙ (W x + b)          l: (out,)   an ordinary target: its output is scaled
    y = W (l ⊙ x) + b          l: (in,)    a "feedforward" target: its input is scaled

The paper (sec. 3.3) scales the keys and values, l_k ⊙ K and l_v ⊙ V, and the
feed-forward network's inner activation, (l_ff ⊙ γ(W_1 x)) W_2 -- which is the
*input* of the second FFN projection; hence PEFT's "feedforward_modules", whose
vector multiplies the input. l starts at ones, so the adapted model starts at
the pretrained one exactly.

PEFT's GPT-2 defaults are target_modules ["c_attn", "mlp.c_proj"] with feedforward
["mlp.c_proj"]: GPT-2 computes q, k and v in one fused ``c_attn``, so its output
vector scales the queries as well (3C numbers a layer, where the paper has 2C);
with the FFN's 4C that is L (3C + 4C) trained numbers. ``docs/ia3.md`` has the
gradients, the merge and the count.

Because l ⊙ (W x + b) = (diag(l) W) x + l ⊙ b and W (l ⊙ x) = (W diag(l)) x, the
vector folds into W (and, for an output scaling, into b): ``merge`` costs nothing at
inference, ``unmerge`` divides it back out.

Names follow PEFT: ``IA3Config``, the vector ``ia3_l.<adapter>`` (saved as
``base_model.model.<module>.ia3_l``), of shape (out, 1) or, for a feedforward
target, (1, in) -- PEFT's shapes, so a file maps one to one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from minilora import backend as B
from minilora import nn
from minilora.tensor import Tensor, cat, no_grad
from minilora.tuner import BaseTuner, MergeStep, TunerLayer, set_fan_in_fan_out

# PEFT's defaults when target_modules / feedforward_modules are None, by model class (PEFT's
# TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING / ..._FEEDFORWARD_MODULES_MAPPING). For BERT,
# "output.dense" ends both the attention's output projection and the FFN's second one, so
# PEFT scales the input of both.
_BERT_IA3, _BERT_IA3_FF = ["key", "value", "output.dense"], ["output.dense"]
DEFAULT_TARGET_MODULES = {"GPT": ["c_attn", "mlp.c_proj"], "BertModel": _BERT_IA3, "BertForSequenceClassification": _BERT_IA3,
                          "LlamaForCausalLM": ["k_proj", "v_proj", "down_proj"]}
DEFAULT_FEEDFORWARD_MODULES = {"GPT": ["mlp.c_proj"], "BertModel": _BERT_IA3_FF, "BertForSequenceClassification": _BERT_IA3_FF,
                               "LlamaForCausalLM": ["down_proj"]}


@dataclass
class IA3Config:
    """What to rescale, with PEFT's field names and defaults."""

    target_modules: list | str | None = None  # names or suffixes (list), or one regex (str); None: PEFT's (GPT-2: c_attn, mlp.c_proj; LLaMA: k_proj, v_proj, down_proj)
    feedforward_modules: list | str | None = None  # targets whose *input* is scaled (a subset); None: mlp.c_proj (GPT-2), down_proj (LLaMA)
    fan_in_fan_out: bool = False  # True for GPT-2, whose HF layers (Conv1D) store W as (in, out); set automatically
    modules_to_save: list | None = None  # modules trained in full beside the vectors (e.g. a classifier head)
    init_ia3_weights: bool = True  # True: l = 1 (the base model); False: l ~ N(0, 1) (for tests only)
    inference_mode: bool = False  # True: nothing is trainable (set when loading for inference)
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    peft_type: str = field(default="IA3", init=False)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """PEFT's check: listed feedforward modules must be listed targets too (a feedforward
        module that is no target would silently get no vector)."""
        for name in ("target_modules", "feedforward_modules"):
            value = getattr(self, name)
            if isinstance(value, (set, tuple)):
                setattr(self, name, sorted(value))
            elif value is not None and not isinstance(value, (list, str)):
                raise ValueError(f"IA3Config.{name} must be a list of names, a regex string or None, got {value!r}")
        if isinstance(self.target_modules, list) and isinstance(self.feedforward_modules, list):
            stray = [f for f in self.feedforward_modules if f not in self.target_modules]
            if stray:
                raise ValueError(
                    f"IA3Config.feedforward_modules must be a subset of target_modules: {stray} "
                    f"not in target_modules={self.target_modules}"
                )
        if self.init_ia3_weights not in (True, False):
            raise ValueError(f"IA3Config.init_ia3_weights must be True or False, got {self.init_ia3_weights!r}")


def is_feedforward(feedforward_modules, name: str) -> bool:
    """PEFT's rule, which differs from target_modules': a string is a regex matching the whole
    name; a list entry matches any name that *ends with* it (no "." boundary is required)."""
    if isinstance(feedforward_modules, str):
        return re.fullmatch(feedforward_modules, name) is not None
    return any(name.endswith(f) for f in feedforward_modules)


# ---------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------


class IA3Linear(TunerLayer):
    """A frozen ``nn.Linear`` whose output (or, if ``is_feedforward``, input) is rescaled
    by a trained vector, one per named adapter:

        y = l ⊙ (x W^T + b)       or, feedforward,      y = (l ⊙ x) W^T + b
    """

    adapter_dict = "ia3_l"

    def __init__(self, base_layer: nn.Linear, is_feedforward: bool):
        super().__init__(base_layer)  # base_layer, active_adapter, merged_adapters, ... (tuner.TunerLayer)
        self.is_feedforward = is_feedforward  # one choice per layer, shared by its adapters (as in PEFT)
        self.ia3_l = nn.ParameterDict()  # the vector of adapter "default" is ia3_l.default, as in PEFT

    def update_layer(self, adapter_name: str, init_ia3_weights: bool = True) -> None:
        if adapter_name in self.ia3_l:
            raise ValueError(f"this layer already has an adapter named {adapter_name!r}")
        # PEFT's shapes: (1, in) multiplies a row vector x, (out, 1) a column of outputs
        shape = (1, self.in_features) if self.is_feedforward else (self.out_features, 1)
        dtype = self.base_layer.weight.dtype
        if init_ia3_weights:
            values = B.xp.ones(shape, dtype=dtype)  # l = 1: exactly the pretrained layer
        else:
            values = B.rng().standard_normal(shape).astype(dtype)  # PEFT's torch.randn: for tests
        self.ia3_l[adapter_name] = nn.Parameter(values)
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    # ``forward`` is TunerLayer's: the base layer when disabled or merged, mixed batches, or this
    def adapted_forward(self, x, adapter_name: str):
        l = self.ia3_l[adapter_name].flatten()  # (in,) or (out,)
        if self.is_feedforward:
            return self.base_layer(x * l)  # W (l ⊙ x) + b
        return self.base_layer(x) * l  # l ⊙ (W x + b): the bias is scaled too

    def _mixed_batch_forward(self, x) -> Tensor:
        """Each batch row with its own adapter's vector (ones for "__base__" or an adapter this
        layer does not have): one (B, 1, ..., 1, n) stack of vectors, broadcast over the rest."""
        n = self.in_features if self.is_feedforward else self.out_features
        ones = Tensor(B.xp.ones(n, dtype=self.base_layer.weight.dtype))
        rows = [self.ia3_l[name].flatten() if name in self.ia3_l else ones for name in self.row_adapters]
        scale = cat([v.reshape(1, n) for v in rows], dim=0).reshape(len(rows), *[1] * (x.ndim - 2), n)
        if self.is_feedforward:
            return self.base_layer(x * scale)
        return self.base_layer(x) * scale

    # --- merging ------------------------------------------------------------------

    # ``merge(safe_merge=False, adapter_names=None)`` and ``check_merge`` are TunerLayer's.

    @no_grad()
    def merge_steps(self, adapter_names) -> list:
        """l folded into the layer, as new arrays: W <- diag(l) W and b <- l ⊙ b for an output
        scaling, W <- W diag(l) for a feedforward one (the bias is applied after W: unchanged)."""
        W = self.base_layer.weight.data
        b = self.base_layer.bias.data if self.base_layer.bias is not None else None
        steps = []
        for name in adapter_names:
            l = self.ia3_l[name].data.reshape(-1)
            if self.is_feedforward:
                W = W * l[None, :]  # scale column j of W (input feature j)
                steps.append(MergeStep(name, {"weight": W}))
            else:
                W = W * l[:, None]  # scale row i of W (output feature i)
                b = b * l if b is not None else None
                steps.append(MergeStep(name, {"weight": W} if b is None else {"weight": W, "bias": b}))
        return steps

    @no_grad()
    def unmerge(self) -> None:
        """Divide every merged vector back out, last merged first. PEFT divides by l + 1e-8
        (to avoid a division by zero, at the price of an error of about 1e-8 / l); minilora
        divides by l itself, so W comes back to rounding, and refuses an l with zeros, whose
        merge wiped those rows (or columns) of W for good."""
        self.check_unmerge()
        W, b = self.base_layer.weight, self.base_layer.bias
        while self.merged_adapters:
            l = self.ia3_l[self.merged_adapters.pop()].data.reshape(-1)
            if self.is_feedforward:
                W.data = W.data / l[None, :]
            else:
                W.data = W.data / l[:, None]
                if b is not None:
                    b.data = b.data / l

    def check_unmerge(self) -> None:
        if self.merged_adapters:
            self.check_untied("unmerge from")
        for name in self.merged_adapters:
            if bool((self.ia3_l[name].data == 0).any()):
                raise ValueError(f"cannot unmerge IA3 adapter {name!r}: its vector ia3_l has zeros, so the merge "
                                 "set those parts of W to zero and lost them")

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise RuntimeError(f"adapter {adapter_name!r} is merged; unmerge it before deleting it")
        del self.ia3_l[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = None

    def extra_repr(self) -> str:
        return f"{'input' if self.is_feedforward else 'output'} scaled, adapters: {list(self.ia3_l)}"


# ---------------------------------------------------------------------------
# injection into a model
# ---------------------------------------------------------------------------


class IA3Model(BaseTuner):
    """Wraps the target Linears of a model in ``IA3Linear`` and manages the adapters (PEFT's
    ``IA3Model``). The model is ``self.model``, so that inside a ``PeftModel`` a vector is named
    ``base_model.model.transformer.h.0.attn.c_attn.ia3_l.default``, as in PEFT. The adapters'
    bookkeeping -- modules_to_save, choosing, mixing, merging, deleting -- is ``BaseTuner``'s
    (minilora/tuner.py), as for LoRA; what is IA3's own is below."""

    method = "IA3"
    prefix = "ia3_"
    layer_type = IA3Linear

    def _prepare_config(self, config: IA3Config) -> None:
        set_fan_in_fan_out(self.model, config)
        self._fill_default(config, "target_modules", DEFAULT_TARGET_MODULES)
        self._fill_default(config, "feedforward_modules", DEFAULT_FEEDFORWARD_MODULES, hint="name them ([] for none)")
        config.validate()  # the defaults filled in, and any edit since the config was made, checked too

    def _target_names(self, config: IA3Config) -> list:
        return self._find_targets(config.target_modules, (nn.Linear, IA3Linear))

    def _new_layer(self, name: str, module, config: IA3Config) -> IA3Linear:
        return IA3Linear(module, is_feedforward(config.feedforward_modules, name))

    def _update_layer(self, name: str, layer: IA3Linear, adapter_name: str, config: IA3Config) -> None:
        feedforward = is_feedforward(config.feedforward_modules, name)
        if layer.is_feedforward != feedforward:  # PEFT silently keeps the first adapter's choice
            raise ValueError(f"{name!r} scales its {'input' if layer.is_feedforward else 'output'} for the "
                             f"adapters it has; adapter {adapter_name!r} would scale its "
                             f"{'input' if feedforward else 'output'} (check feedforward_modules)")
        layer.update_layer(adapter_name, config.init_ia3_weights)

    def ia3_layers(self) -> list:
        """Every ``(name, IA3Linear)`` of the model."""
        return self.adapter_layers()

    def _mark_trainable(self, adapter_name: str) -> None:
        for _, layer in self.ia3_layers():
            if adapter_name in layer.ia3_l:
                layer.ia3_l[adapter_name].requires_grad_(True)

    def add_weighted_adapter(self, adapters, weights, adapter_name, *args, **kwargs) -> None:
        raise NotImplementedError("add_weighted_adapter is not implemented for IA3 in minilora "
                                  "(PEFT's IA3 version sums the vectors, Σ w_i l_i)")

    # --- the adapter's weights, named as in PEFT's files -----------------------------------

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """``{PEFT key: array}``: each vector as ``<module>.ia3_l`` and each modules_to_save copy
        under its original name (the adapter's name dropped, as PEFT saves them). Keys start
        ``base_model.model.``; the arrays are the live parameter arrays."""
        out = {}
        for name, t in self.model.state_dict().items():
            if name.endswith(f".ia3_l.{adapter_name}"):
                out["base_model.model." + name.removesuffix(f".{adapter_name}")] = t
            elif f".modules_to_save.{adapter_name}." in name:
                out["base_model.model." + name.replace(f".modules_to_save.{adapter_name}.", ".")] = t
        return out

