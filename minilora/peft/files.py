"""PEFT's adapter files, read and written with JSON and safetensors only (never pickle).

``adapter_config.json`` carries every field PEFT writes (those of PEFT 0.21.2),
so that ``peft.PeftModel.from_pretrained`` reads a minilora adapter as its own;
fields minilora has no counterpart for keep PEFT's defaults. When reading, a
field minilora cannot honour (set to anything but its default) is an error that
names it -- never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from minilora.io import write_atomically

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_FORMAT_VERSION = "0.21.2"  # the PEFT release whose files these are

# Fields PEFT writes for every method, with their defaults.
PEFT_COMMON = {
    "task_type": None, "peft_type": None, "auto_mapping": None, "peft_version": PEFT_FORMAT_VERSION,
    "base_model_name_or_path": None, "revision": None, "inference_mode": False,
}

# Fields of PEFT's LoraConfig (0.21.2) beyond the common ones, with PEFT's defaults.
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
}

# Fields that describe where a file came from; their values never change behaviour.
_INFORMATIONAL = {"peft_version", "auto_mapping", "revision", "base_model_name_or_path", "task_type",
                  "megatron_core", "qalora_group_size", "inference_mode"}


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
    """Build ``config_cls`` from a saved dict; refuse fields set to values minilora cannot honour."""
    peft_type = data.get("peft_type")
    if hasattr(config_cls, "from_peft_fields"):
        data = config_cls.from_peft_fields(data)
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
        raise ValueError(f"{source}: minilora cannot honour these settings: {', '.join(unsupported)}")
    kwargs = {k: v for k, v in data.items() if k in own}
    if kwargs.get("rank_pattern") is None:
        kwargs.pop("rank_pattern", None)
    if kwargs.get("alpha_pattern") is None:
        kwargs.pop("alpha_pattern", None)
    for key in ("task_type", "base_model_name_or_path", "inference_mode"):
        if key in own and key in data:
            kwargs[key] = data[key]
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from err


def write_adapter(folder, config: dict, tensors: dict) -> None:
    """Write both files atomically (``minilora.io``): an interrupted save leaves the old ones."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    write_atomically({
        folder / WEIGHTS_NAME: lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),
        folder / CONFIG_NAME: lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"),
    })


def read_adapter(folder) -> tuple:
    """``(config dict, {key: numpy array})`` from an adapter folder, with errors that name the file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"no adapter folder at {folder}")
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} is missing (an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    if not weights_path.exists():
        hint = " (minilora reads only safetensors: pickle files can run code)" if (folder / "adapter_model.bin").exists() else ""
        raise FileNotFoundError(f"{weights_path} is missing{hint}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or "peft_type" not in config:
        raise ValueError(f"{config_path} has no 'peft_type': it is not a PEFT adapter config")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_path} is corrupt or truncated: {err}") from err
    return config, tensors
