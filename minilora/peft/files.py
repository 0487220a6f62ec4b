"""PEFT's adapter files, read and written with JSON and safetensors only (never pickle).

``adapter_config.json`` carries every field PEFT writes (those of PEFT 0.21.2),
so that ``peft.PeftModel.from_pretrained`` reads a minilora adapter as its own;
fields minilora has no counterpart for keep PEFT's defaults. When reading, a
field minilora cannot honour (set to anything but its default) is an error that
names it -- never silently ignored.

Reading checks before it reads (``minilora/loading.py``): the config as a regular
file of strict JSON, every field's JSON type against the config class's annotation
(a bool is not an int, ``"no"`` is not a bool), the elements of list and dict fields,
every regex compiled; then the safetensors header alone, whose shapes the caller
compares with the adapter the config implies before reading the data. Each failure
is a ``minilora.errors`` type naming the file and the field or key. Writing binds
the two files by a save id (``minilora.io.save_folder``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from minilora.errors import ConfigError
from minilora.io import SAVE_ID_KEY, save_folder
from minilora.loading import compile_regex, json_matches, json_type_name, read_folder

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_FORMAT_VERSION = "0.21.2"  # the PEFT release whose files these are

# Fields PEFT writes for every method, with their defaults.
PEFT_COMMON = {
    "task_type": None, "peft_type": None, "auto_mapping": None, "peft_version": PEFT_FORMAT_VERSION,
    "base_model_name_or_path": None, "revision": None, "inference_mode": False,
}

# Fields of each method's PEFT config (0.21.2) beyond the common ones, with PEFT's defaults.
PEFT_FIELDS = {
    "LORA": {
        "r": 8, "target_modules": None, "exclude_modules": None, "lora_alpha": 8, "lora_dropout": 0.0,
        "fan_in_fan_out": False, "bias": "none", "use_rslora": False, "modules_to_save": None,
        "init_lora_weights": True, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
        "alpha_pattern": {}, "megatron_config": None, "megatron_core": "megatron.core",
        "trainable_token_indices": None, "loftq_config": {}, "eva_config": None, "corda_config": None,
        "lora_ga_config": None, "use_dora": False, "velora_config": None, "alora_invocation_tokens": None,
        "use_qalora": False, "qalora_group_size": 16, "monteclora_config": None, "layer_replication": None,
        "lora_bias": False, "target_parameters": None, "use_bdlora": None, "arrow_config": None,
        "kasa_config": None, "ensure_weight_tying": False,
    },
    # PromptTuningConfig / PrefixTuningConfig (0.21.2): PromptLearningConfig's fields, then their own
    "PROMPT_TUNING": {"num_virtual_tokens": None, "token_dim": None, "num_transformer_submodules": None,
                      "num_attention_heads": None, "num_layers": None, "modules_to_save": None,
                      "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
                      "tokenizer_kwargs": None},
    "PREFIX_TUNING": {"num_virtual_tokens": None, "token_dim": None, "num_transformer_submodules": None,
                      "num_attention_heads": None, "num_layers": None, "modules_to_save": None,
                      "init_weights": None, "encoder_hidden_size": None, "prefix_projection": False},
    # IA3Config (0.21.2)
    "IA3": {"target_modules": None, "exclude_modules": None, "feedforward_modules": None, "fan_in_fan_out": False,
            "modules_to_save": None, "init_ia3_weights": True},
    # VeraConfig (0.21.2)
    "VERA": {"r": 256, "target_modules": None, "projection_prng_key": 0, "save_projection": True, "vera_dropout": 0.0,
             "d_initial": 0.1, "fan_in_fan_out": False, "bias": "none", "modules_to_save": None, "init_weights": True,
             "layers_to_transform": None, "layers_pattern": None},
}
# AdaLoraConfig (0.21.2) is a LoraConfig with its own fields added, and rank_pattern None by default
PEFT_FIELDS["ADALORA"] = {**PEFT_FIELDS["LORA"], "rank_pattern": None, "target_r": 8, "init_r": 12, "tinit": 0,
                          "tfinal": 0, "deltaT": 1, "beta1": 0.85, "beta2": 0.85, "orth_reg_weight": 0.5,
                          "total_step": None}
# LoHaConfig and LoKrConfig (0.21.2), both LycorisConfigs
PEFT_FIELDS["LOHA"] = {"rank_pattern": {}, "alpha_pattern": {}, "r": 8, "alpha": 8, "rank_dropout": 0.0,
                       "module_dropout": 0.0, "use_effective_conv2d": False, "target_modules": None,
                       "exclude_modules": None, "init_weights": True, "layers_to_transform": None,
                       "layers_pattern": None, "modules_to_save": None}
PEFT_FIELDS["LOKR"] = {**PEFT_FIELDS["LOHA"], "decompose_both": False, "decompose_factor": -1,
                       "rank_dropout_scale": False}

# Fields that describe where a file came from; their values never change behaviour.
_INFORMATIONAL = {"peft_version", "auto_mapping", "revision", "base_model_name_or_path", "task_type",
                  "megatron_core", "qalora_group_size", "inference_mode", SAVE_ID_KEY}

# What the entries of PEFT's list and dict fields must be (their own JSON type is checked against
# the config class's annotation). Dict fields are keyed by a regex of module names.
_ENTRIES = {"target_modules": "str", "modules_to_save": "str", "feedforward_modules": "str",
            "enable_lora": "bool | list", "rank_pattern": "int", "alpha_pattern": "float"}
_REGEX_FIELDS = ("target_modules", "feedforward_modules")  # a string here is a regex, matched in full


def check_types(config_cls, data: dict, source) -> None:
    """A ConfigError naming ``source`` and the field for every value whose JSON type the class does not accept."""
    for f in dataclasses.fields(config_cls):
        if not f.init or f.name not in data:
            continue
        value = data[f.name]
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if not json_matches(value, annotation):
            raise ConfigError(f"{source}: {f.name}={value!r} is a JSON {json_type_name(value)}, "
                              f"where {config_cls.__name__} accepts {annotation}")
        entries = getattr(config_cls, "json_entries", {}).get(f.name, _ENTRIES.get(f.name))
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, entry in items:
            if entries and not json_matches(entry, entries):
                raise ConfigError(f"{source}: {f.name}[{key!r}]={entry!r} is a JSON {json_type_name(entry)}, not {entries}")
            if isinstance(entry, list) and not all(isinstance(e, bool) for e in entry):  # enable_lora's slice lists
                raise ConfigError(f"{source}: {f.name}[{key!r}]={entry!r} must be a list of true/false")
            if isinstance(value, dict):  # keyed by a regex, used as (.*\.)?(key)$
                compile_regex(rf"(.*\.)?({key})$", source, f"{f.name} key {key!r}")
        if f.name in _REGEX_FIELDS and isinstance(value, str):
            compile_regex(value, source, f.name)


def config_to_dict(config) -> dict:
    """The config as PEFT writes it: all of PEFT's fields, minilora's values where it has them."""
    peft_type = config.peft_type
    out = {**PEFT_COMMON, **PEFT_FIELDS.get(peft_type, {})}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in out or peft_type not in PEFT_FIELDS:
            out[f.name] = list(value) if isinstance(value, (set, tuple)) else value
        elif value not in (None, False):  # a minilora extension in use (e.g. enable_lora): keep it
            out[f.name] = value
    out["peft_type"] = peft_type
    if hasattr(config, "to_peft_fields"):  # a method's own translation (e.g. LoRA's enable_lora)
        out.update(config.to_peft_fields())
        out = {k: v for k, v in out.items() if not (v is None and k not in PEFT_COMMON and k not in PEFT_FIELDS.get(peft_type, {}))}
    return out


def config_from_dict(config_cls, data: dict, source="adapter_config.json"):
    """Build ``config_cls`` from a saved dict; refuse wrong types and fields set to values minilora cannot honour."""
    peft_type = data.get("peft_type")
    if hasattr(config_cls, "from_peft_fields"):
        try:
            data = config_cls.from_peft_fields(data)
        except (TypeError, KeyError, AttributeError, ValueError) as err:
            raise ConfigError(f"{source}: a minilora record in it is malformed ({type(err).__name__}: {err})") from None
    check_types(config_cls, data, source)
    own = {f.name for f in dataclasses.fields(config_cls) if f.init}
    defaults = {**PEFT_COMMON, **PEFT_FIELDS.get(peft_type, {})}
    unsupported = []
    for key, value in data.items():
        if key in own or key in _INFORMATIONAL or key == "peft_type":
            continue
        if key in defaults and value == defaults[key]:
            continue  # PEFT's default: nothing to honour
        if value in (None, False, {}, []):
            continue  # a field of a newer PEFT, unset
        unsupported.append(f"{key}={value!r}")
    if unsupported:
        raise ConfigError(f"{source}: minilora cannot honour these settings: {', '.join(unsupported)}")
    kwargs = {k: v for k, v in data.items() if k in own}
    if kwargs.get("rank_pattern") is None:
        kwargs.pop("rank_pattern", None)
    if kwargs.get("alpha_pattern") is None:
        kwargs.pop("alpha_pattern", None)
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise ConfigError(f"{source}: {err}") from None


def write_adapter(folder, config: dict, tensors: dict) -> None:
    """Write both files atomically and bound by one save id (``minilora.io.save_folder``)."""
    save_folder(folder, CONFIG_NAME, config, WEIGHTS_NAME, tensors)


def read_adapter(folder, methods) -> tuple:
    """``(config dict, safetensors Header)`` of an adapter folder: the config read and checked as
    strict JSON with a ``peft_type`` among ``methods`` (the wrapper's, ``PeftModel``'s), the weights
    file's header checked, the two from one save. The weights themselves are read later, against
    the adapter the config implies."""
    config_path = Path(folder) / CONFIG_NAME
    config, header = read_folder(folder, CONFIG_NAME, WEIGHTS_NAME, "an adapter folder")
    peft_type = config.get("peft_type")
    if peft_type is None:
        raise ConfigError(f"{config_path} has no 'peft_type': it is not a PEFT adapter config")
    if not isinstance(peft_type, str) or peft_type not in methods:
        raise ConfigError(f"{config_path}: unknown PEFT method {peft_type!r} (peft_type); minilora knows: {', '.join(methods)}")
    return config, header
