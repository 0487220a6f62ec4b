"""``PeftModel``: one wrapper for every parameter-efficient method, as Hugging Face PEFT's.

It holds the method's "tuner" (``base_model``: e.g. ``LoraModel``, which holds the
original model as ``base_model.model``), counts parameters the way PEFT does,
and reads and writes PEFT's adapter files:

    adapter_config.json          the config, with PEFT's field names
    adapter_model.safetensors    the adapter's weights, keyed as PEFT keys them,
                                 e.g. base_model.model.transformer.h.0.attn.c_attn.lora_A.weight

Files are read through JSON and safetensors only -- never pickle -- so a
malicious adapter file cannot run code.

A method plugs in with a config dataclass (with a ``peft_type`` field, PEFT's
name for the method) and a tuner ``nn.Module`` registered in ``METHODS``. The
tuner is built as ``Tuner(model, config, adapter_name)``, keeps the model as
``self.model``, and provides what ``PeftModel`` delegates to:

    forward(*args, **kwargs)                 the adapted model's forward
    peft_config: {name: config}, active_adapter
    inject_adapter(name, config)             add an adapter (undo its own changes on error)
    set_adapter(name), delete_adapter(name), disable_adapter() (a context manager)
    merge_adapter(), unmerge_adapter(), merge_and_unload(), unload()
    adapter_state_dict(name) -> {PEFT key: array}     what save_pretrained writes
    load_adapter_state_dict(name, {PEFT key: array})  the inverse (keys and shapes already checked)

A method that cannot do something (e.g. merge bottleneck adapters) raises an
error that says why. A method that wraps layers of the model (LoRA, IA3,
bottleneck adapters) subclasses ``BaseTuner`` (``minilora/tuner.py``), which
provides all of this but the method's own parts: its layer, its targets, what
it trains and its file keys.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from pathlib import Path

import numpy

from minilora import backend as B
from minilora import nn
from minilora.errors import ConfigError, LoadError, MismatchError, SaveError
from minilora.loading import load_checked
from minilora.peft import files
from minilora.peft.files import CONFIG_NAME, WEIGHTS_NAME

# peft_type -> (module, config class, tuner class): imported on first use, so that
# each method stays in its own file and this one imports none of them.
METHODS = {
    "LORA": ("minilora.peft.lora", "LoraConfig", "LoraModel"),  # with use_dora=True: DoRA (minilora/peft/dora.py)
    "IA3": ("minilora.peft.ia3", "IA3Config", "IA3Model"),
    "PROMPT_TUNING": ("minilora.peft.prompt_tuning", "PromptTuningConfig", "PromptTuningModel"),
    "PREFIX_TUNING": ("minilora.peft.prefix_tuning", "PrefixTuningConfig", "PrefixTuningModel"),
    "BOTTLENECK": ("minilora.peft.adapters", "BottleneckConfig", "BottleneckModel"),  # ours: PEFT has none
    "ADALORA": ("minilora.peft.adalora", "AdaLoraConfig", "AdaLoraModel"),
    "VERA": ("minilora.peft.vera", "VeraConfig", "VeraModel"),
    "LOHA": ("minilora.peft.lycoris", "LoHaConfig", "LoHaModel"),  # LoHa and LoKr share lycoris.py
    "LOKR": ("minilora.peft.lycoris", "LoKrConfig", "LoKrModel"),
}


def _method(peft_type: str):
    if peft_type not in METHODS:
        raise ConfigError(f"unknown PEFT method {peft_type!r}; minilora knows: {', '.join(METHODS)}")
    module_name, config_name, tuner_name = METHODS[peft_type]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, tuner_name)


def get_peft_model(model: nn.Module, peft_config, adapter_name: str = "default") -> "PeftModel":
    """Wrap ``model`` for parameter-efficient training with ``peft_config`` (any method's config).

    As in PEFT, the model is changed in place (layers are wrapped, the base is frozen);
    on an error it is left exactly as it was.
    """
    return PeftModel(model, peft_config, adapter_name)


@contextmanager
def _restored_on_error(model: nn.Module):
    """If the block raises, put back every parameter's array and trainable flag.

    Methods change the model by swapping modules (undone by the tuner itself) and by
    assigning new arrays (PiSSA's residual, merging), never by writing into the
    old ones, so keeping references to the old arrays is enough to restore them.
    """
    snapshot = [(p, p.data, p.requires_grad) for p in model.parameters()]
    try:
        yield
    except BaseException:
        for p, data, flag in snapshot:
            p.data = data
            p.requires_grad = flag
        raise


class PeftModel(nn.Module):
    def __init__(self, model: nn.Module, peft_config, adapter_name: str = "default"):
        super().__init__()
        if isinstance(model, PeftModel):
            raise TypeError("the model is a PeftModel already; use add_adapter() to add another adapter")
        _, tuner = _method(getattr(peft_config, "peft_type", None))
        with _restored_on_error(model):
            self.base_model = tuner(model, peft_config, adapter_name)

    # --- what PEFT's PeftModel exposes ------------------------------------------------

    @property
    def peft_config(self) -> dict:
        return self.base_model.peft_config

    @property
    def active_adapter(self) -> str:
        return self.base_model.active_adapter

    @property
    def active_peft_config(self):
        return self.peft_config[self.active_adapter]

    def get_base_model(self) -> nn.Module:
        return self.base_model.model

    def forward(self, *args, adapter_names=None, **kwargs):
        """The wrapped model's forward. ``adapter_names``: one adapter name (or ``"__base__"``)
        per batch row, each row then computed with its own adapter."""
        if adapter_names is None:
            return self.base_model(*args, **kwargs)
        batch = _batch_size(args, kwargs)
        if batch is not None and len(adapter_names) != batch:
            raise ValueError(f"adapter_names has {len(adapter_names)} entries for a batch of {batch} rows")
        with self.base_model.mixed_batch(adapter_names):
            return self.base_model(*args, **kwargs)

    def generate(self, *args, adapter_names=None, **kwargs):
        """The wrapped model's ``generate``. ``adapter_names``: one adapter name (or ``"__base__"``)
        per row of the prompts, as in ``forward``; every step of the generation -- the prompt's
        pass and each new token's, through the KV cache, whose keys and values each row computed
        with its own adapter -- is a mixed batch (PEFT's ``generate(adapter_names=...)``)."""
        # a method that changes the input rather than the layers (prompt and prefix tuning)
        # generates through its tuner, which puts the virtual tokens in front
        if hasattr(self.base_model, "generate"):
            if adapter_names is not None:
                raise ValueError(f"generate: adapter_names is not supported by {self.active_peft_config.peft_type}, "
                                 "whose adapters change the input rather than the layers")
            return self.base_model.generate(*args, **kwargs)
        if adapter_names is None:
            return self.get_base_model().generate(*args, **kwargs)
        batch = _batch_size(args, kwargs)
        if batch is not None and len(adapter_names) != batch:
            raise ValueError(f"adapter_names has {len(adapter_names)} entries for a batch of {batch} prompts")
        with self.base_model.mixed_batch(adapter_names):
            return self.get_base_model().generate(*args, **kwargs)

    def get_nb_trainable_parameters(self) -> tuple:
        """(trainable, all) parameter counts, each parameter once, as PEFT counts them."""
        trainable = total = 0
        for p in self.parameters():
            total += p.numel()
            if p.requires_grad:
                trainable += p.numel()
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    # --- several adapters (the tuner does the work) -------------------------------------------

    def add_adapter(self, adapter_name: str, peft_config) -> None:
        if peft_config.peft_type != self.active_peft_config.peft_type:
            raise ValueError(f"cannot add a {peft_config.peft_type} adapter to a {self.active_peft_config.peft_type} model")
        with _restored_on_error(self):
            self.base_model.inject_adapter(adapter_name, peft_config)

    def set_adapter(self, adapter_name: str) -> None:
        self.base_model.set_adapter(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        self.base_model.delete_adapter(adapter_name)

    @contextmanager
    def disable_adapter(self):
        with self.base_model.disable_adapter():
            yield

    def merge_adapter(self, adapter_names=None, safe_merge: bool = False) -> None:
        """Fold adapters into the weights (PEFT's signature; ``safe_merge``: docs/lora.md, "Merging safely")."""
        self.base_model.merge_adapter(adapter_names, safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        self.base_model.unmerge_adapter()

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False, adapter_names=None) -> nn.Module:
        """Merge and return the plain model (PEFT's signature; ``safe_merge``: docs/lora.md, "Merging safely")."""
        return self.base_model.merge_and_unload(progressbar=progressbar, safe_merge=safe_merge,
                                                adapter_names=adapter_names)

    def unload(self) -> nn.Module:
        return self.base_model.unload()

    def add_weighted_adapter(self, adapters, weights, adapter_name, combination_type="svd", svd_rank=None) -> None:
        self.base_model.add_weighted_adapter(adapters, weights, adapter_name, combination_type, svd_rank)

    # --- PEFT's files -----------------------------------------------------------------------

    def save_pretrained(self, save_directory, selected_adapters=None,
                        path_initial_model_for_weight_conversion=None) -> None:
        """Write each adapter as PEFT does: the default one in ``save_directory``, any other
        in ``save_directory/<name>``. Every adapter is checked before anything is written;
        each folder's two files are written to temporary names, then renamed, bound by one
        save id (``minilora.io.save_folder``).

        ``path_initial_model_for_weight_conversion`` (PEFT's argument): the folder where a PiSSA
        or OLoRA adapter was saved before training. The adapter is then written as a plain LoRA
        adapter of rank 2r for the original base model (``LoraModel.converted_state_dict``),
        which can be used, mixed and unloaded like any other. The initial folder is read, not
        changed (PEFT rewrites its config)."""
        names = list(selected_adapters or self.peft_config)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"save_pretrained: unknown adapters {unknown}; adapters: {sorted(self.peft_config)}")
        if not names:
            raise SaveError("save_pretrained: this model holds no adapter to save (merge_and_unload() or unload() "
                            "removed it); save the returned base model instead")
        if path_initial_model_for_weight_conversion is not None and len(names) != 1:
            raise ValueError(f"save_pretrained: path_initial_model_for_weight_conversion converts one adapter at a "
                             f"time; name it with selected_adapters (adapters: {sorted(self.peft_config)})")
        writes = []
        for name in names:
            config = files.config_to_dict(self.peft_config[name])
            tensors = self.base_model.adapter_state_dict(name)
            if path_initial_model_for_weight_conversion is not None:
                fields, tensors = self._converted(name, path_initial_model_for_weight_conversion)
                config.update(fields)
            tensors = {k: numpy.ascontiguousarray(B.to_numpy(v)) for k, v in tensors.items()}
            if not tensors:
                raise SaveError(f"save_pretrained: adapter {name!r} has no weights left in the model (merge_and_unload() "
                                "folded it into the base weights, or unload() removed it); nothing was written -- "
                                "save the merged base model (GPT.save_pretrained) instead")
            folder = Path(save_directory) if name == "default" else Path(save_directory) / name
            writes.append((folder, config, tensors))
        for folder, config, tensors in writes:
            files.write_adapter(folder, config, tensors)

    def _converted(self, adapter_name: str, initial_folder) -> tuple:
        """``(config fields, tensors)`` of a PiSSA/OLoRA adapter as plain LoRA, from the adapter saved
        in ``initial_folder`` before training (its keys and shapes checked against this one's)."""
        if not hasattr(self.base_model, "converted_state_dict"):
            raise ValueError(f"save_pretrained: path_initial_model_for_weight_conversion converts LoRA adapters "
                             f"(PiSSA, OLoRA); adapter {adapter_name!r} is {self.peft_config[adapter_name].peft_type}")
        config, header = files.read_adapter(initial_folder, METHODS)
        if config["peft_type"] != "LORA":
            raise ConfigError(f"{Path(initial_folder) / CONFIG_NAME}: the initial adapter must be a LoRA adapter, "
                              f"got peft_type {config['peft_type']!r}")
        expected = {k: tuple(v.shape) for k, v in self.base_model.adapter_state_dict(adapter_name).items()}
        initial = load_checked(Path(initial_folder) / WEIGHTS_NAME, expected, header=header,
                               implied=f"adapter {adapter_name!r}", what=f"adapter {adapter_name!r}")
        return self.base_model.converted_state_dict(adapter_name, initial)

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id, adapter_name: str = "default", is_trainable: bool = False,
                        allow_nonfinite: bool = False) -> "PeftModel":
        """Load an adapter saved by PEFT (or by minilora) onto ``model``.

        The config is checked, then the weights file's header against the adapter the
        config implies, then the weights are read (NaN or inf refused unless
        ``allow_nonfinite=True``). On any error -- one of ``minilora.errors``, naming the
        file and the key or field -- ``model`` is left exactly as it was."""
        config, header = _read(model_id, is_trainable)
        with _restored_on_error(model):
            with _config_must_fit(model_id):
                peft_model = cls(model, config, adapter_name)
            try:
                peft_model._load_adapter_weights(adapter_name, model_id, header, allow_nonfinite)
            except BaseException:
                peft_model.unload()  # the wrapped layers out again; the arrays are restored on the way out
                raise
        return peft_model

    def load_adapter(self, model_id, adapter_name: str, is_trainable: bool = False, allow_nonfinite: bool = False) -> None:
        """Load another adapter onto this model, next to the ones it has. On an error the model
        is left exactly as it was, so a retry under the same name works."""
        config, header = _read(model_id, is_trainable)
        with _restored_on_error(self):
            with _config_must_fit(model_id):
                self.add_adapter(adapter_name, config)
            try:
                self._load_adapter_weights(adapter_name, model_id, header, allow_nonfinite)
            except BaseException:
                self.delete_adapter(adapter_name)
                raise

    def _load_adapter_weights(self, adapter_name: str, model_id, header, allow_nonfinite: bool) -> None:
        """Read the saved arrays into the adapter: every key and shape checked against the
        adapter as built (``load_checked``) before any data is read."""
        expected = {k: tuple(v.shape) for k, v in self.base_model.adapter_state_dict(adapter_name).items()}
        tensors = load_checked(Path(model_id) / WEIGHTS_NAME, expected, header=header, allow_nonfinite=allow_nonfinite,
                               implied="the model", what="this model")
        self.base_model.load_adapter_state_dict(adapter_name, tensors)


# The config fields that set how much an adapter allocates. Each is the width or the row count
# of some tensor the adapter's file stores, so none can exceed the largest dimension the file
# declares; checked before the adapter is built, so that `r: 1000000000` is refused before
# anything is allocated for it. A config class may name its own (``size_fields``): AdaLoRA's
# is init_r; LoKr's r sizes no tensor when its factors are kept whole.
SIZE_FIELDS = ("r", "rank_pattern", "num_virtual_tokens", "token_dim", "encoder_hidden_size", "bottleneck_size")


@contextmanager
def _config_must_fit(model_id):
    """A loaded config the model cannot take (a width, a target it lacks) is a MismatchError naming the file."""
    try:
        yield
    except (ValueError, TypeError) as err:
        if isinstance(err, LoadError):
            raise
        raise MismatchError(f"{Path(model_id) / CONFIG_NAME} does not fit this model: {err}") from err


def _read(model_id, is_trainable: bool) -> tuple:
    """``(config, safetensors header)`` of an adapter folder, both checked (``minilora/peft/files.py``)."""
    config_dict, header = files.read_adapter(model_id, METHODS)
    config_cls, _ = _method(config_dict["peft_type"])
    source = Path(model_id) / CONFIG_NAME
    config = files.config_from_dict(config_cls, config_dict, source=source)
    largest = max((d for t in header.tensors.values() for d in t.shape), default=0)
    for field in getattr(config, "size_fields", SIZE_FIELDS):
        value = getattr(config, field, None)
        for size in (value.values() if isinstance(value, dict) else [value]):
            if isinstance(size, int) and size > largest:
                raise MismatchError(f"{source}: {field}={size} exceeds every dimension of the tensors in "
                                    f"{header.path} (the largest is {largest}): the file cannot hold such an adapter")
    config.inference_mode = not is_trainable
    return config, header


def _batch_size(args, kwargs):
    first = args[0] if args else kwargs.get("idx", kwargs.get("input_ids"))
    shape = getattr(first, "shape", None)
    return shape[0] if shape else None
