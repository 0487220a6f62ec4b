"""What every method that wraps layers of a model shares: the tuner's bookkeeping.

LoRA (``peft/lora.py``), (IA)^3 (``peft/ia3.py``), bottleneck adapters (``peft/adapters.py``),
AdaLoRA, VeRA, LoHa and LoKr adapt a model in the same way. Each finds some of its modules
(the *targets*), puts every target inside a wrapper layer that keeps the module as
``base_layer`` and holds one small trained part per named adapter, and then keeps the
books: which adapters exist, which one is used and trained, which batch row uses which,
what is merged into the weights. Only the wrapper layer and its math differ from method
to method; ``BaseTuner`` keeps the books, once, for all of them -- the tuner protocol
that ``PeftModel`` (``minilora/peft/model.py``) delegates to.

What a tuner (a subclass of ``BaseTuner``) provides:

    method, prefix, layer_type              "LoRA", "lora_", LoRALinear: its name in messages, the prefix
                                            of its layers' parameter names, its wrapper layer class
    _prepare_config(config)                 check the config, fill in what the model decides
    _target_names(config) -> [name, ...]    the modules to wrap (``_find_targets`` finds Linears by name)
    _new_layer(name, module, config)        the wrapper for a module not wrapped yet
    _update_layer(name, layer, adapter_name, config)   add the adapter to a wrapper layer
    _mark_trainable(adapter_name)           make the adapter's own parameters trainable
    adapter_state_dict(name)                {file key: live parameter array}, what save_pretrained writes
    add_weighted_adapter(...)               or an error that says why the method has none

What its wrapper layer (a subclass of ``TunerLayer``) gets from the base class:
``base_layer``; ``active_adapter``, ``disable_adapters`` and ``row_adapters`` (set by the
tuner, read in forward); ``adapters`` (the names it holds, the keys of its ``adapter_dict``);
``merged_adapters`` and ``merged``; ``layer_name`` and ``tied_to`` (its name in the model and
the other modules that hold its base layer's parameters, set by the tuner); PEFT's
``merge(safe_merge=False, adapter_names=None)``; and ``forward``, which runs the base layer
alone when adapters are disabled or merged and otherwise the layer's ``adapted_forward`` (or
``_mixed_batch_forward``, one adapter per row). What it provides: those two, ``delete_adapter(name)``
and, where the method can merge, ``merge_steps(names)`` (the merged parameters as new
arrays, one ``MergeStep`` per adapter, computed before anything changes), ``check_merge``,
``unmerge()`` and ``check_unmerge()`` (a layer that cannot merge has no merged adapters, ever).
A layer whose adapters add a weight update, y = x W^T + b + x ΔW^T (AdaLoRA, VeRA, LoHa, LoKr,
LoRA on an Embedding), subclasses ``DeltaLayer``, which derives all of that from two methods:
the update on the graph and ΔW as an array.

What the tuner gets for free: ``peft_config`` and ``active_adapter``; ``inject_adapter``,
which undoes its own changes on an error; ``modules_to_save`` (``ModulesToSaveWrapper``);
``set_adapter``, ``disable_adapter``, ``mixed_batch``, ``delete_adapter``; the targets by name,
within ``layers_to_transform`` (``_find_targets``); the biases a ``bias`` field trains and saves
(``_mark_biases_trainable``, ``_bias_state_dict``); ``merge_adapter``,
``unmerge_adapter``, ``merge_and_unload``, ``unload``, with PEFT's ``safe_merge`` and
``adapter_names``; ``load_adapter_state_dict``. A method that cannot merge overrides the
merging ones with errors that say why.

Merging is all or nothing. Every layer is checked before any weight changes: a merge
into a weight another module shares (GPT-2's ``lm_head`` is tied to the token embedding)
is refused, since it would change that module too (docs/lora.md, "Tied weights"). With
``safe_merge=True`` every merged weight is also computed into a new array and checked
for NaN and inf before the first one is stored, so a broken adapter raises and leaves the
model bit for bit as it was (PEFT checks layer by layer, and leaves the layers before the
broken one merged).

The checks on adapter names (``check_new_name`` ...) are plain functions, so that the
prompt-learning tuner (``peft/prompt_learning.py``), which wraps no layer, gives the
same errors. (This file sits below ``peft/``: it imports only nn and the engine, none of
the methods nor the wrapper -- the layer the methods build on, as PEFT's
``tuners/tuners_utils.py``.)
"""

from __future__ import annotations

import copy
import re
from contextlib import contextmanager
from dataclasses import dataclass

import numpy

from minilora import backend as B
from minilora import nn
from minilora.tensor import Tensor, cat, no_grad

BASE = "__base__"  # in a mixed-adapter batch: the rows that use no adapter (PEFT's name)


def target_matches(target_modules, name: str) -> bool:
    """PEFT's matching rule: a string is a regex that must match the whole name;
    a list matches a name equal to an entry or ending in ``"." + entry``."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def layer_index(name: str, layers_pattern=None):
    """The index of the numbered block a module sits in (``transformer.h.3.attn.c_attn`` -> 3), by PEFT's
    rule: the first ``<pattern>.<digits>.`` in the name, ``pattern`` any segment unless ``layers_pattern``
    (a name or a list of names, e.g. "h" or "layers") says which; None when there is none."""
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = next(filter(None, (re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", name) for p in patterns)), None)
    return int(match.group("idx")) if match else None


def in_transformed_layers(config, name: str) -> bool:
    """``layers_to_transform`` (an index or a list of them, with ``layers_pattern``): whether module ``name``
    sits in one of those blocks. PEFT applies it to the names a list of ``target_modules`` matches by suffix;
    a name listed in full, or matched by a regex, is taken whatever its block."""
    layers = getattr(config, "layers_to_transform", None)
    if layers is None or layers == [] or isinstance(config.target_modules, str) or name in config.target_modules:
        return True
    index = layer_index(name, getattr(config, "layers_pattern", None))
    return index is not None and (index == layers if isinstance(layers, int) else index in layers)


def check_layers_fields(config) -> None:
    """PEFT's checks on ``layers_to_transform`` / ``layers_pattern``, with the same rules for every method."""
    name = type(config).__name__
    layers, pattern = getattr(config, "layers_to_transform", None), getattr(config, "layers_pattern", None)
    if layers is not None and not (isinstance(layers, int) and not isinstance(layers, bool) or
                                   isinstance(layers, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
        raise ValueError(f"{name}.layers_to_transform must be an int, a list of ints or None, got {layers!r}")
    if pattern is not None and not (isinstance(pattern, str) or isinstance(pattern, list) and all(isinstance(p, str) for p in pattern)):
        raise ValueError(f"{name}.layers_pattern must be a string, a list of strings or None, got {pattern!r}")
    if isinstance(config.target_modules, str) and (layers is not None or pattern is not None):
        raise ValueError(f"{name}: layers_to_transform and layers_pattern cannot be used when target_modules is a "
                         f"regex string ({config.target_modules!r}); put the layers in the regex instead")
    if pattern and layers is None:
        raise ValueError(f"{name}.layers_pattern={pattern!r} is set but layers_to_transform is not: say which layers")


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at ``name``; it takes its predecessor's place among the siblings, so
    a rolled-back injection or an ``unload()`` gives back the very tree it started from."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def set_fan_in_fan_out(model: nn.Module, config) -> None:
    """GPT-2's projections are Conv1D in Hugging Face (W stored (in, out)), so PEFT sets
    ``fan_in_fan_out=True`` for it (with a warning); minilora does the same, and the saved
    config records it."""
    if type(model).__name__ == "GPT" and not config.fan_in_fan_out:
        config.fan_in_fan_out = True


# PEFT's defaults when target_modules is None, by model class, for LoRA and the methods built like it
# (AdaLoRA, VeRA, LoHa, LoKr: PEFT keys them by model_type in peft/utils/constants.py, e.g.
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING: "gpt2" -> c_attn, "bert" -> query and value
# (the LoRA paper's Wq and Wv), "llama" -> q_proj and v_proj -- the same for all five methods)
DEFAULT_TARGET_MODULES = {
    "GPT": ["c_attn"],
    "BertModel": ["query", "value"],
    "BertForSequenceClassification": ["query", "value"],
    "LlamaForCausalLM": ["q_proj", "v_proj"],
}


def pattern_value(patterns: dict, name: str, default):
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` rule: the value of the first key that, read as a
    regex, matches the end of module ``name`` at a "." boundary; ``default`` if none does."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default


def is_hf_conv1d(model: nn.Module, name: str) -> bool:
    """Whether module ``name`` of ``model`` is a ``Conv1D`` in Hugging Face's twin of the model
    (GPT-2's four projections: ``GPT.hf_conv1d``), which some PEFT methods treat apart."""
    return name.endswith(tuple(getattr(model, "hf_conv1d", ())))


# PEFT's task types that train a head in full beside any adapter: its
# PeftModelForSequenceClassification adds both names (a model has one of them: BERT's head
# is "classifier", LLaMA's "score") to modules_to_save, and writes them into the saved config.
TASK_MODULES_TO_SAVE = {"SEQ_CLS": ["classifier", "score"]}


def add_task_modules_to_save(config) -> None:
    """PEFT's rule for ``task_type="SEQ_CLS"``: the head names join ``config.modules_to_save``."""
    heads = TASK_MODULES_TO_SAVE.get(getattr(config, "task_type", None), [])
    if heads and hasattr(config, "modules_to_save"):
        present = list(config.modules_to_save or [])
        config.modules_to_save = present + [h for h in heads if h not in present]


# --- the checks every tuner makes on adapter names -----------------------------------------


def check_new_name(tuner, adapter_name: str) -> None:
    if adapter_name in tuner.peft_config:
        raise ValueError(f"an adapter named {adapter_name!r} exists already; adapters: {sorted(tuner.peft_config)}")


def check_known(tuner, adapter_name: str) -> None:
    if adapter_name not in tuner.peft_config:
        raise ValueError(f"no adapter named {adapter_name!r}; adapters: {sorted(tuner.peft_config)}")


def check_deletable(tuner, adapter_name: str) -> None:
    check_known(tuner, adapter_name)
    if adapter_name == tuner.active_adapter:
        raise ValueError(f"adapter {adapter_name!r} is active; set_adapter() to another one before deleting it")


# --- a mixed batch: each row with its own adapter ----------------------------------------------


def group_rows(keys) -> dict:
    """``{key: [rows]}``: the batch rows of each key (an adapter name, say), keys in order of first use."""
    groups = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    return groups


def in_row_order(pieces, groups) -> Tensor:
    """The pieces, one per group of rows (``groups``: each piece's rows), stacked into one
    batch with every row back in its original place."""
    order = [row for rows in groups for row in rows]  # the row each stacked row came from
    inverse = numpy.argsort(numpy.asarray(order))  # where each original row sits in `order`
    return cat(pieces, dim=0)[B.xp.asarray(inverse)]


# ---------------------------------------------------------------------------
# modules trained in full beside the adapter
# ---------------------------------------------------------------------------


@dataclass
class MergeStep:
    """One adapter folded into one layer, computed before anything changes."""

    adapter_name: str
    params: dict  # {"weight": array, "bias": array}: the base layer's parameters after this adapter (new arrays)
    memo: object = None  # what unmerging will need and cannot recompute (DoRA's norm)


TIED_ERROR = ("cannot {action} {layer}: its {what} is the same Parameter as that of {shared} (tied weights), "
              "so the change would reach {shared} too, and the merged model would no longer compute what the "
              "unmerged one does. Nothing was changed. Keep the adapter unmerged (same outputs), or give the "
              "layer its own copy first: layer.base_layer.weight = nn.Parameter(layer.base_layer.weight.data.copy(), "
              "requires_grad=False) (docs/lora.md, 'Tied weights')")


class TunerLayer(nn.Module):
    """What every wrapper layer has (PEFT's ``BaseTunerLayer``): the wrapped ``base_layer``,
    the bookkeeping the tuner sets and forward reads, and the base layer's shape and
    weights read through it. ``adapter_dict`` names the ModuleDict keyed by adapter name."""

    adapter_dict = ""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.active_adapter = None  # the adapter used in forward (None: the base layer alone)
        self.merged_adapters = []  # adapters folded into base_layer's weights
        self.disable_adapters = False  # True inside `with model.disable_adapter():`
        self.row_adapters = None  # one adapter name per batch row, set by the tuner for mixed batches
        self.layer_name = type(base_layer).__name__  # its name in the model, for messages (set by the tuner)
        self.tied_to = ()  # (name, module) of every other module holding a parameter of base_layer (set by the tuner)

    in_features = property(lambda self: self.base_layer.in_features)
    out_features = property(lambda self: self.base_layer.out_features)
    weight = property(lambda self: self.base_layer.weight)  # so code reading layer.weight keeps working
    bias = property(lambda self: self.base_layer.bias)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    def adapters(self) -> list:
        """The names of the adapters this layer holds."""
        return list(getattr(self, self.adapter_dict))

    # --- forward -----------------------------------------------------------------------------

    def forward(self, x):
        """The base layer alone when adapters are disabled (a merged one taken out of W first, as
        PEFT does), merged, or absent here; each row with its adapter in a mixed batch; otherwise
        the active adapter's ``adapted_forward``."""
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x)
        if self.row_adapters is not None:
            return self._mixed_batch_forward(x)
        if self.merged or self.active_adapter not in self.adapters:
            return self.base_layer(x)  # a merged update is already inside W
        return self.adapted_forward(x, self.active_adapter)

    def adapted_forward(self, x, adapter_name: str):
        raise NotImplementedError

    def _mixed_batch_forward(self, x):
        raise NotImplementedError

    # --- merging (for a method whose layers can merge: LoRA, DoRA, IA3) ------------------------

    def adapters_to_merge(self, adapter_names=None) -> list:
        """The adapters a merge folds in here: the named ones (default: the active one) this layer holds."""
        names = [self.active_adapter] if adapter_names is None else list(adapter_names)
        return [name for name in names if name in self.adapters]

    @no_grad()
    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        """Fold the active adapter (or the named ones) into the base layer's weights (PEFT's
        signature). With ``safe_merge`` the merged weights are computed into new arrays and
        checked first: a NaN or inf raises and leaves the layer as it was."""
        names = self.adapters_to_merge(adapter_names)
        self.check_merge(names)  # before W changes: a refused merge leaves W as it was
        steps = self.merge_steps(names)
        if safe_merge:
            self.check_finite(steps)
        self.apply_merge(steps)

    def check_merge(self, adapter_names) -> None:
        """Refuse, before anything changes, a merge that cannot be done: into a tied weight, or twice."""
        if adapter_names:
            self.check_untied("merge into")
        for name in adapter_names:
            if name in self.merged_adapters:
                raise RuntimeError(f"adapter {name!r} is already merged into {self.layer_name}")

    def check_untied(self, action: str) -> None:
        """Refuse to change a parameter another module holds too (a tied weight)."""
        for what, p in self.base_layer._parameters.items():
            shared = [name for name, module in self.tied_to if p is not None
                      and any(q is p for q in module._parameters.values())]
            if shared:
                raise RuntimeError(TIED_ERROR.format(action=action, layer=self.layer_name, what=what,
                                                     shared=", ".join(shared)))

    def check_finite(self, steps) -> None:
        """``safe_merge``: every merged parameter finite, or a ValueError naming the adapter and the layer."""
        for step in steps:
            for what, array in step.params.items():
                finite = B.xp.isfinite(array)
                if bool(finite.all()):
                    continue
                bad = int(array.size - int(finite.sum()))
                before = getattr(self.base_layer, what).data
                cause = ("the adapter seems to be broken" if bool(B.xp.isfinite(before).all())
                         else f"the base layer's {what} was not finite before the merge")
                raise ValueError(f"safe_merge: merging adapter {step.adapter_name!r} into {self.layer_name} gives "
                                 f"{bad} of {array.size} entries of its {what} that are NaN or inf; {cause}. "
                                 f"Nothing was merged: the model is as it was")

    def apply_merge(self, steps) -> None:
        """Store what ``merge_steps`` computed: each parameter's new array, then the books."""
        for step in steps:
            for what, array in step.params.items():
                getattr(self.base_layer, what).data = array
            self.merged_adapters.append(step.adapter_name)
            self.remember_merge(step)

    def remember_merge(self, step: MergeStep) -> None:
        """Keep what unmerging ``step`` will need (nothing, unless the method says otherwise)."""

    def merge_steps(self, adapter_names) -> list:
        raise NotImplementedError(f"{type(self).__name__} cannot merge")


class DeltaLayer(TunerLayer):
    """A wrapper layer each of whose adapters adds a weight update to the base layer's output
    (AdaLoRA, VeRA, LoHa, LoKr -- LoRA too, whose layer has its own copy of this with DoRA inside):

        y = x W^T + b + x ΔW_a^T

    A method provides two things: ``delta_output(x, name)``, ``x ΔW_a^T`` on the graph, computed the
    way that method computes it (through the thin factors, or through ΔW itself), and
    ``delta_weight(name)``, ΔW_a as an (out, in) array. This class makes of them the forward pass
    (disabled, merged, active adapter, or one adapter per batch row), the merge W <- W + ΔW_a and
    the unmerge W <- W - ΔW_a. ``adapter_parts`` names the dicts holding an adapter's parameters,
    ``adapter_tables`` its plain per-adapter settings, which ``delete_adapter`` removes."""

    adapter_parts = ()
    adapter_tables = ()

    def delta_output(self, x, adapter_name: str) -> Tensor:
        raise NotImplementedError

    def delta_weight(self, adapter_name: str):
        raise NotImplementedError

    def adapted_forward(self, x, adapter_name: str) -> Tensor:
        return self.base_layer(x) + self.delta_output(x, adapter_name)  # x W^T + b + x ΔW^T, W frozen

    def _mixed_batch_forward(self, x) -> Tensor:
        """Each batch row with its own adapter (``"__base__"``: none): each adapter's update on its
        rows only, then every row put back in its place."""
        y = self.base_layer(x)  # (B, ..., out)
        groups = group_rows(self.row_adapters)
        if not any(name in self.adapters for name in groups):
            return y
        if len(groups) == 1:  # every row uses one adapter: no need to split the batch
            return y + self.delta_output(x, self.row_adapters[0])
        if len(x.shape) < 2 or x.shape[0] != len(self.row_adapters):  # e.g. GPT-2's wpe: positions (T,), not rows
            raise ValueError(f"a mixed batch needs a batched input to {self.layer_name}, got shape {x.shape} for "
                             f"{len(self.row_adapters)} rows")
        pieces = []
        for name, rows in groups.items():
            idx = B.xp.asarray(rows)
            if name in self.adapters:
                pieces.append(self.delta_output(x[idx], name))  # (rows, ..., out)
            else:
                pieces.append(Tensor(B.xp.zeros((len(rows),) + y.shape[1:], dtype=y.dtype)))
        return y + in_row_order(pieces, groups.values())

    @no_grad()
    def merge_steps(self, adapter_names) -> list:
        """W + ΔW after each adapter in turn, as new arrays."""
        W = self.base_layer.weight.data
        steps = []
        for name in adapter_names:
            W = W + self.delta_weight(name).astype(W.dtype)
            steps.append(MergeStep(name, {"weight": W}))
        return steps

    @no_grad()
    def unmerge(self) -> None:
        """W <- W - ΔW for every merged adapter, last merged first."""
        self.check_unmerge()
        while self.merged_adapters:
            W = self.base_layer.weight
            W.data = W.data - self.delta_weight(self.merged_adapters.pop()).astype(W.dtype)

    def check_unmerge(self) -> None:
        if self.merged_adapters:
            self.check_untied("unmerge from")

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise RuntimeError(f"adapter {adapter_name!r} is merged; unmerge it before deleting it")
        for part in self.adapter_parts:
            registry = getattr(self, part)
            if adapter_name in registry:
                del registry[adapter_name]
        for table in self.adapter_tables:
            getattr(self, table).pop(adapter_name, None)
        if self.active_adapter == adapter_name:
            self.active_adapter = None


class ModulesToSaveWrapper(nn.Module):
    """PEFT's wrapper for ``modules_to_save``: the original module stays frozen, and each
    adapter trains (and saves) its own full copy of it."""

    def __init__(self, module: nn.Module, adapter_name: str):
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter = None
        self.disable_adapters = False
        self.row_adapters = None  # one adapter name per batch row, set by the tuner for mixed batches
        self.update(adapter_name)

    def update(self, adapter_name: str) -> None:
        self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)
        for p in self.modules_to_save[adapter_name].parameters():
            p.requires_grad_(True)
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def forward(self, *args, **kwargs):
        if self.disable_adapters:
            return self.original_module(*args, **kwargs)
        if self.row_adapters is not None:
            return self._mixed_batch_forward(*args, **kwargs)
        return self._module_for(self.active_adapter)(*args, **kwargs)

    def _module_for(self, adapter_name) -> nn.Module:
        """The adapter's copy; the original for "__base__" or an adapter that has no copy here."""
        return self.modules_to_save[adapter_name] if adapter_name in self.modules_to_save else self.original_module

    def _mixed_batch_forward(self, x) -> Tensor:
        """Each batch row through its own adapter's copy. Rows are grouped by module, not by
        name: the rows of "__base__" and of adapters without a copy share the original."""
        modules = [self._module_for(name) for name in self.row_adapters]
        groups = group_rows(id(m) for m in modules)
        if len(groups) == 1:  # every row uses the same module: no need to split the batch
            return modules[0](x)
        if x.shape[0] != len(self.row_adapters):
            raise ValueError(
                f"a mixed batch needs a batched input to modules_to_save ({type(self.original_module).__name__}), "
                f"got shape {x.shape} for {len(self.row_adapters)} rows"
            )
        pieces = [modules[rows[0]](x[B.xp.asarray(rows)]) for rows in groups.values()]  # (rows, ...)
        return in_row_order(pieces, groups.values())


# ---------------------------------------------------------------------------
# the tuner
# ---------------------------------------------------------------------------


class BaseTuner(nn.Module):
    """The bookkeeping of a method that wraps layers of ``self.model`` (module docstring:
    what a subclass provides and what it gets). Inside a ``PeftModel`` the model is
    ``base_model.model``, so parameters get PEFT's names, e.g.
    ``base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight``."""

    # set by each subclass
    method: str  # the method's name in messages, e.g. "LoRA"
    prefix: str  # the prefix of the wrapper layers' own parameter names, e.g. "lora_"
    layer_type: type  # the wrapper layer class, e.g. LoRALinear

    def __init__(self, model: nn.Module, config, adapter_name: str = "default"):
        super().__init__()
        self.model = model
        self.peft_config = {}
        self.active_adapter = adapter_name
        self.inject_adapter(adapter_name, config)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def adapter_layers(self) -> list:
        """Every ``(name, wrapper layer)`` of the model."""
        return [(n, m) for n, m in self._outer_modules() if isinstance(m, self.layer_type)]

    def _outer_modules(self) -> list:
        """``named_modules()`` of the model, in its order, but not looking inside a wrapper layer:
        its parts -- a few modules per adapter -- are never walked, so that finding the layers (every
        forward of a mixed batch does) costs the same with one adapter loaded or a hundred."""
        found, seen, todo = [], set(), [("", self.model)]
        while todo:
            name, module = todo.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            found.append((name, module))
            if not isinstance(module, self.layer_type):
                children = [(f"{name}.{n}" if name else n, c) for n, c in module._modules.items() if c is not None]
                todo.extend(reversed(children))  # popped in order: depth first, as named_modules
        return found

    def named_layers(self) -> list:
        """``adapter_layers()``, each layer told its name and the other modules that hold its base
        layer's parameters (``tied_to``): a merge must not change a weight another module shares."""
        holders = {}  # id(parameter) -> [(name, module) of every module holding it, under every name]
        for name, module in self.model.named_modules(remove_duplicate=False):
            for p in module._parameters.values():
                if p is not None:
                    holders.setdefault(id(p), []).append((name, module))
        layers = self.adapter_layers()
        for name, layer in layers:
            own = f"{name}.base_layer"
            layer.layer_name = name
            others = {n: m for p in layer.base_layer._parameters.values() if p is not None
                      for n, m in holders[id(p)] if n != own}
            layer.tied_to = tuple(others.items())
        return layers

    def _wrappers(self) -> list:
        """The modules that read ``active_adapter``, ``disable_adapters`` and ``row_adapters``."""
        return [m for _, m in self._outer_modules() if isinstance(m, (self.layer_type, ModulesToSaveWrapper))]

    # --- adding an adapter ------------------------------------------------------------------

    def _prepare_config(self, config) -> None:
        """Check the config (it may have been edited since it was made) and fill in what the model decides."""
        config.validate()

    def inject_adapter(self, adapter_name: str, config) -> None:
        """Add adapter ``adapter_name`` to every target (wrapping the ones not wrapped yet) and
        to the config's ``modules_to_save``, then train only it. On an error the model is left
        exactly as it was."""
        check_new_name(self, adapter_name)
        add_task_modules_to_save(config)
        self._prepare_config(config)
        targets = self._target_names(config)
        undo = []  # how to put back what was changed, in reverse order
        try:
            for name in targets:
                layer = self.model.get_submodule(name)
                if not isinstance(layer, self.layer_type):
                    layer = self._replace(name, self._new_layer(name, layer, config), undo)
                self._update_layer(name, layer, adapter_name, config)
                undo.append(lambda layer=layer: layer.delete_adapter(adapter_name))
            heads = TASK_MODULES_TO_SAVE.get(getattr(config, "task_type", None), [])
            for target in getattr(config, "modules_to_save", None) or []:  # a field some methods' configs lack
                self._wrap_module_to_save(target, adapter_name, undo, optional=target in heads)
        except BaseException:
            for step in reversed(undo):
                step()
            raise
        self.peft_config[adapter_name] = config
        self.set_adapter(self.active_adapter if self.active_adapter in self.peft_config else adapter_name)
        self.named_layers()  # each layer learns its name and what it is tied to, for a merge called on it directly

    def _replace(self, name: str, module: nn.Module, undo: list) -> nn.Module:
        """Put ``module`` at ``name``, and on ``undo`` how to put back the module there now."""
        old = self.model.get_submodule(name)
        set_submodule(self.model, name, module)
        undo.append(lambda: set_submodule(self.model, name, old))
        return module

    def _is_own_submodule(self, name: str) -> bool:
        """Whether ``name`` is a part minilora put in -- a wrapper's base_layer or adapter
        weights, a modules_to_save copy -- which is never a target."""
        dotted = f".{name}"
        return (f".{self.prefix}" in dotted or ".base_layer" in dotted
                or "modules_to_save" in name or "original_module" in name)

    def _fill_default(self, config, field: str, defaults: dict, hint: str = "name the modules to adapt") -> None:
        """A ``None`` in ``config.<field>`` becomes PEFT's default for the model's class."""
        if getattr(config, field) is not None:
            return
        model_type = type(self.model).__name__
        if model_type not in defaults:
            raise ValueError(f"{type(config).__name__}.{field} is None and there is no default for {model_type}; {hint}")
        setattr(config, field, list(defaults[model_type]))

    def _find_targets(self, targets, accepted: tuple, config=None) -> list:
        """The names of the modules ``targets`` matches (``target_matches``) -- within the config's
        ``layers_to_transform``, if it has one -- each of which must be one of ``accepted``; if none
        matches, the error lists the ones there are."""
        names = []
        for name, module in self.model.named_modules():
            if not name or self._is_own_submodule(name):
                continue
            if target_matches(targets, name) and (config is None or in_transformed_layers(config, name)):
                if not isinstance(module, accepted):
                    raise ValueError(f"target {name!r} is a {type(module).__name__}; {self.method} adapts Linear "
                                     f"layers only (check target_modules={targets!r})")
                names.append(name)
        if not names:
            linears = [n for n, m in self.model.named_modules() if isinstance(m, accepted) and not self._is_own_submodule(n)]
            layers = getattr(config, "layers_to_transform", None)
            within = f" in layers_to_transform={layers!r}" if layers is not None else ""
            raise ValueError(f"target_modules={targets!r} matches no module of {type(self.model).__name__}{within}. "
                             f"Its Linear layers are: {', '.join(linears)}")
        return names

    def _wrap_module_to_save(self, target: str, adapter_name: str, undo: list, optional: bool = False) -> None:
        """Give adapter ``adapter_name`` its own trained copy of every module ``target`` matches
        (an ``optional`` target -- a task's head name the model may not use -- may match none)."""
        matches = [n for n, m in self.model.named_modules()
                   if n and target_matches([target], n) and not isinstance(m, (self.layer_type, ModulesToSaveWrapper))
                   and not self._is_own_submodule(n)]
        wrapped = [n for n, m in self._modules_to_save() if target_matches([target], n)]
        if not matches and not wrapped and optional:
            return
        if not matches and not wrapped:  # a module another adapter wrapped already matches too
            raise ValueError(f"modules_to_save entry {target!r} matches no module")
        for name in matches:
            if isinstance(self.model.get_submodule(name.rpartition(".")[0]), ModulesToSaveWrapper):
                continue
            self._replace(name, ModulesToSaveWrapper(self.model.get_submodule(name), adapter_name), undo)
        for name, module in self._modules_to_save():
            if target_matches([target], name) and adapter_name not in module.modules_to_save:
                module.update(adapter_name)
                undo.append(lambda module=module: module.modules_to_save.__delitem__(adapter_name))

    def _modules_to_save(self) -> list:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, ModulesToSaveWrapper)]

    # --- which adapter is used and trained ----------------------------------------------------

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the one used in forward and the only one trainable: the base
        model is frozen -- frozen weights get no gradient at all -- and, unless the config is
        for inference, the adapter's own parameters and modules_to_save copies are trained."""
        check_known(self, adapter_name)
        self.active_adapter = adapter_name
        for module in self._wrappers():
            module.active_adapter = adapter_name
        for p in self.model.parameters():
            p.requires_grad_(False)
        if self.peft_config[adapter_name].inference_mode:
            return
        self._mark_trainable(adapter_name)
        for _, module in self._modules_to_save():
            if adapter_name in module.modules_to_save:
                module.modules_to_save[adapter_name].requires_grad_(True)

    @contextmanager
    def disable_adapter(self):
        """Inside the ``with`` block the model is the base model (a merged adapter is taken out of W)."""
        wrappers = self._wrappers()
        for m in wrappers:
            m.disable_adapters = True
        try:
            yield
        finally:
            for m in wrappers:
                m.disable_adapters = False

    @contextmanager
    def mixed_batch(self, adapter_names):
        """Tell every wrapper layer (and modules_to_save copy) which adapter each row of the next batch uses."""
        known = set(self.peft_config) | {BASE}
        unknown = sorted(set(adapter_names) - known)
        if unknown:
            raise ValueError(f"adapter_names lists unknown adapters {unknown}; known: {sorted(known)}")
        if any(m.merged for _, m in self.adapter_layers()):
            raise RuntimeError("adapter_names cannot be used while an adapter is merged; call unmerge_adapter() first")
        wrappers = self._wrappers()
        for m in wrappers:
            m.row_adapters = list(adapter_names)
        try:
            yield
        finally:
            for m in wrappers:
                m.row_adapters = None

    def delete_adapter(self, adapter_name: str) -> None:
        check_deletable(self, adapter_name)
        if any(adapter_name in m.merged_adapters for _, m in self.adapter_layers()):
            raise RuntimeError(f"adapter {adapter_name!r} is merged; unmerge it before deleting it")
        # A layer that only this adapter used goes back to what it was before add_adapter, so
        # that deleting an adapter (also when loading one fails half-way) undoes adding it.
        for name, m in self.adapter_layers():
            if adapter_name in m.adapters:
                m.delete_adapter(adapter_name)
                if not m.adapters:
                    set_submodule(self.model, name, m.base_layer)
        for name, m in self._modules_to_save():
            if adapter_name in m.modules_to_save:
                del m.modules_to_save[adapter_name]
                if not len(m.modules_to_save):
                    set_submodule(self.model, name, m.original_module)
        del self.peft_config[adapter_name]

    # --- merging ------------------------------------------------------------------------------

    def merge_adapter(self, adapter_names=None, safe_merge: bool = False) -> None:
        """Fold the active adapter (or the named ones) into the weights of every layer (PEFT's
        signature). Nothing changes unless every layer can merge; with ``safe_merge``, unless
        every merged weight is finite as well (module docstring)."""
        names = [self.active_adapter] if adapter_names is None else list(adapter_names)
        self._check_known(names, "merge_adapter")
        self._merge({m: m.adapters_to_merge(names) for _, m in self.named_layers()}, safe_merge)

    def _check_known(self, names, caller: str) -> None:
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"{caller}: unknown adapters {unknown}; adapters: {sorted(self.peft_config)}")

    def _merge(self, plan: dict, safe_merge: bool) -> None:
        """Merge ``plan`` ({layer: adapter names}): every layer checked before any W changes, and
        with ``safe_merge`` every result computed and checked finite before the first is stored."""
        for m, names in plan.items():
            m.check_merge(names)
        if not safe_merge:
            for m, names in plan.items():
                m.apply_merge(m.merge_steps(names))
            return
        steps = {m: m.merge_steps(names) for m, names in plan.items()}  # new arrays: the model is untouched
        for m, layer_steps in steps.items():
            m.check_finite(layer_steps)
        for m, layer_steps in steps.items():
            m.apply_merge(layer_steps)

    def unmerge_adapter(self) -> None:
        """Take every merged adapter out of the weights again."""
        layers = self.named_layers()
        for _, m in layers:  # every layer checked before any W changes
            m.check_unmerge()
        for _, m in layers:
            m.unmerge()

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False, adapter_names=None) -> nn.Module:
        """Fold the active adapter (or the named ones) into the weights and return the plain
        model: each wrapper layer replaced by its base layer, each modules_to_save wrapper by
        the active copy (PEFT's signature). A layer that has an adapter merged already keeps
        just that (it is what its forward computes), unless ``adapter_names`` names more.
        If any layer cannot merge -- or, with ``safe_merge``, gives a NaN or inf -- the error
        leaves the model as it was."""
        if adapter_names is not None:
            self._check_known(adapter_names, "merge_and_unload")
        undo = []
        try:
            self._before_merge_and_unload(undo)
            layers = self.named_layers()
            plan = {}
            for _, m in layers:
                if adapter_names is None and m.merged:
                    plan[m] = []
                else:
                    plan[m] = [n for n in m.adapters_to_merge(adapter_names) if n not in m.merged_adapters]
            self._merge(plan, safe_merge)
        except BaseException:
            for step in reversed(undo):
                step()
            raise
        if progressbar:  # PEFT's argument: a progress bar over the layers
            from tqdm.auto import tqdm

            layers = tqdm(layers, desc="Unloading and merging model")
        for name, m in layers:
            set_submodule(self.model, name, m.base_layer)
        self._unwrap_modules_to_save(use_copy=True)
        return self.model

    def _before_merge_and_unload(self, undo: list) -> None:
        """What a method changes before merging everything (LoRA: a 4-bit base made dense),
        with how to undo it appended to ``undo``."""

    def unload(self) -> nn.Module:
        """Take every wrapper layer out without merging: the base model as it was."""
        self.unmerge_adapter()
        for name, m in self.adapter_layers():
            set_submodule(self.model, name, m.base_layer)
        self._unwrap_modules_to_save(use_copy=False)
        return self.model

    def _unwrap_modules_to_save(self, use_copy: bool) -> None:
        for name, m in self._modules_to_save():
            keep = m.modules_to_save[m.active_adapter] if use_copy and m.active_adapter in m.modules_to_save else m.original_module
            set_submodule(self.model, name, keep)

    # --- biases trained beside the adapter (a config's ``bias`` field) -------------------------

    def _mark_biases_trainable(self, adapter_name: str) -> None:
        """PEFT's ``bias`` rule: ``"<method>_only"`` trains the bias of every layer holding the
        adapter, ``"all"`` every bias of the model -- but a modules_to_save wrapper's, whose frozen
        original stays frozen and whose active copy BaseTuner.set_adapter trains in full."""
        bias = getattr(self.peft_config[adapter_name], "bias", "none")
        if bias.endswith("_only"):
            for _, layer in self.adapter_layers():
                if adapter_name in layer.adapters and layer.base_layer.bias is not None:
                    layer.base_layer.bias.requires_grad_(True)
        elif bias == "all":
            for name, p in self.model.named_parameters():
                if name.endswith("bias") and ".original_module." not in name and ".modules_to_save." not in name:
                    p.requires_grad_(True)

    def _bias_state_dict(self, adapter_name: str) -> dict:
        """The biases an adapter's file holds, by PEFT's rule: ``"<method>_only"``, the base-layer bias
        of every wrapper layer; ``"all"``, every key ending in ".bias" but other adapters' -- which,
        beside a modules_to_save copy, includes the frozen original's bias and the copy's bias a second
        time, as "<module>.modules_to_save.bias". The same keys are written and read, so that either
        side loads the other's file."""
        bias = getattr(self.peft_config[adapter_name], "bias", "none")
        state = self.model.state_dict()
        out = {}
        if bias.endswith("_only"):
            for name, _ in self.adapter_layers():
                if f"{name}.base_layer.bias" in state:
                    out[f"base_model.model.{name}.base_layer.bias"] = state[f"{name}.base_layer.bias"]
        elif bias == "all":
            others = [a for a in self.peft_config if a != adapter_name]
            for name, t in state.items():
                if not name.endswith(".bias") or any(f".modules_to_save.{a}." in name for a in others):
                    continue
                out["base_model.model." + name.replace(f".modules_to_save.{adapter_name}.", ".modules_to_save.")] = t
        return out

    # --- the adapter's weights ---------------------------------------------------------------

    def _modules_to_save_state_dict(self, adapter_name: str) -> dict:
        """Each modules_to_save copy of the adapter under its original module's name (PEFT drops the
        adapter's name: ``ln_f.modules_to_save.default.weight`` is saved as ``ln_f.weight``)."""
        marker = f".modules_to_save.{adapter_name}."
        return {"base_model.model." + name.replace(marker, "."): t
                for name, t in self.model.state_dict().items() if marker in name}

    @no_grad()
    def load_adapter_state_dict(self, adapter_name: str, tensors: dict) -> None:
        """Copy arrays keyed as ``adapter_state_dict`` keys them (shapes already checked) into
        the adapter: each value there is a live parameter array, written in place."""
        for key, array in self.adapter_state_dict(adapter_name).items():
            array[...] = B.xp.asarray(tensors[key])


__all__ = ["BASE", "BaseTuner", "ModulesToSaveWrapper", "target_matches", "set_submodule"]
