"""Hugging Face LLaMA checkpoints in and out of minilora's ``LlamaForCausalLM``.

A checkpoint is a folder with ``config.json`` (a ``transformers.LlamaConfig``) and
``model.safetensors`` (or a sharded checkpoint's index and files), read through
``minilora/loading.py`` (never pickle). The names and
layouts agree one to one -- every LLaMA projection is a ``torch.nn.Linear``, stored
(out, in) as minilora's -- so, unlike GPT-2 (``hf.py``), nothing is transposed.
What needs care is the config:

1. the RoPE base is ``rope_parameters["rope_theta"]`` in transformers 5 and a
   top-level ``rope_theta`` before it; either is read, and if both are there they
   must agree. Scaled RoPE (``rope_type`` "linear", "dynamic", "yarn", "llama3" ...,
   or the older ``rope_scaling``) computes other angles: refused, never ignored;
2. what minilora's LLaMA does not implement -- biases, another activation, a
   ``head_dim`` other than hidden_size / num_attention_heads, attention dropout --
   is refused with the field's name;
3. ``lm_head.weight`` is absent from the file when ``tie_word_embeddings`` is true
   (and must then equal the embedding if present), and required when false.

Files are read through ``minilora/loading.py``, as GPT's are: the config as strict JSON
with every field's type checked, then the weights' header against the names and shapes
the config implies (``layout``), and only then the data, cast to the dtype asked for and
then checked finite (``loading.load_model``, the loader GPT-2 and BERT share). Every problem is one of the errors of
``minilora/errors.py`` (a ``CheckpointError`` or an ``OSError``) naming the file, the field
or key, and both shapes. Saving is atomic, both files bound by one save id (``minilora.io.save_folder``).
"""

from __future__ import annotations

from pathlib import Path

import numpy

from minilora import backend as B
from minilora.errors import CheckpointError, ConfigError, MismatchError
from minilora.io import save_folder
from minilora.loading import Layout, check_layer_count, check_model_state, json_matches, load_model, read_folder
from minilora.models.hf import CONFIG_NAME, WEIGHTS_NAME
from minilora.models.llama import LlamaConfig, LlamaForCausalLM
from minilora.tensor import float32

_LAYER = r"layers\.(\d+)\."
_BUFFER = r"(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"  # old checkpoints' RoPE buffer (after the prefix)

# The JSON type of each field config_from_hf reads (a bool is not an int; NaN is refused when parsing)
_INT, _NUM, _BOOL, _DICT = ("int", "an integer"), ("float", "a number"), ("bool", "true or false"), ("dict | None", "an object or null")
HF_FIELD_TYPES = {
    "vocab_size": _INT, "hidden_size": _INT, "intermediate_size": _INT, "num_hidden_layers": _INT,
    "num_attention_heads": _INT, "num_key_value_heads": ("int | None", "an integer or null"),
    "max_position_embeddings": _INT, "head_dim": ("int | None", "an integer or null"), "rms_norm_eps": _NUM,
    "rope_theta": ("float | None", "a number or null"), "rope_parameters": _DICT, "rope_scaling": _DICT,
    "tie_word_embeddings": _BOOL, "initializer_range": _NUM, "attention_bias": _BOOL, "mlp_bias": _BOOL,
    "attention_dropout": _NUM, "hidden_act": ("str", "a string"), "model_type": ("str", "a string"),
}


# ---------------------------------------------------------------------------
# config.json <-> LlamaConfig
# ---------------------------------------------------------------------------


def rope_theta_from_hf(hf: dict, source: str = CONFIG_NAME) -> float:
    """The RoPE base from ``rope_parameters`` (transformers 5) or ``rope_theta`` (before), refusing scaled RoPE."""
    params = hf.get("rope_parameters") or {}
    for field, value in (("rope_parameters", params), ("rope_scaling", hf.get("rope_scaling") or {})):
        kind = value.get("rope_type", value.get("type", "default")) if isinstance(value, dict) else value
        if kind != "default":
            raise ConfigError(f"{source}: {field} has rope_type={kind!r}, which minilora's LLaMA does not implement "
                                  f"(accepted: 'default', plain RoPE); scaled RoPE would compute other angles")
    new, old = params.get("rope_theta"), hf.get("rope_theta")
    if new is not None and old is not None and float(new) != float(old):
        raise ConfigError(f"{source}: rope_parameters['rope_theta']={new!r} and rope_theta={old!r} disagree")
    theta = new if new is not None else old if old is not None else 10000.0
    if not json_matches(theta, "float"):
        raise ConfigError(f"{source}: rope_theta={theta!r} is not a number")
    return float(theta)


def config_from_hf(hf: dict, source: str = CONFIG_NAME) -> LlamaConfig:
    """A ``LlamaConfig`` from the fields of a ``transformers.LlamaConfig`` (a dict); missing fields
    take its defaults. What minilora's LLaMA does not implement raises a CheckpointError naming the field."""
    def bad(field, value, accepted):
        return ConfigError(f"{source}: {field}={value!r} is not supported by minilora's LLaMA (accepted: {accepted})")

    for field, (annotation, accepted) in HF_FIELD_TYPES.items():
        if field in hf and not json_matches(hf[field], annotation):
            raise ConfigError(f"{source}: {field}={hf[field]!r} (a JSON {type(hf[field]).__name__}) is not {accepted}")

    if hf.get("model_type", "llama") != "llama":
        raise bad("model_type", hf["model_type"], "'llama'")
    if hf.get("hidden_act", "silu") != "silu":
        raise bad("hidden_act", hf["hidden_act"], "'silu'")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field, False):
            raise bad(field, hf[field], "false (LLaMA's Linears have no bias)")
    if hf.get("attention_dropout", 0.0):
        raise bad("attention_dropout", hf["attention_dropout"], "0.0")
    hidden, heads = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    if hf.get("head_dim") is not None and (heads < 1 or hf["head_dim"] * heads != hidden):
        raise bad("head_dim", hf["head_dim"], f"null or hidden_size / num_attention_heads = {hidden}/{heads}")
    try:
        return LlamaConfig(
            vocab_size=hf.get("vocab_size", 32000),
            hidden_size=hidden,
            intermediate_size=hf.get("intermediate_size", 11008),
            num_hidden_layers=hf.get("num_hidden_layers", 32),
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads"),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta_from_hf(hf, source),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            initializer_range=float(hf.get("initializer_range", 0.02)),
        )
    except ValueError as err:  # LlamaConfig's checks name the field
        if isinstance(err, CheckpointError):
            raise
        raise ConfigError(f"{source}: {err}") from None


def config_to_hf(config: LlamaConfig, dtype="float32") -> dict:
    """The ``config.json`` of a ``LlamaForCausalLM`` with this architecture (transformers 5's fields)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_word_embeddings,
        "initializer_range": config.initializer_range,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "dtype": numpy.dtype(dtype).name,
    }


# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------


def hf_shapes(config: LlamaConfig) -> dict:
    """Every key of a LlamaForCausalLM with this config and its shape (``lm_head.weight`` only if untied)."""
    V, C, I = config.vocab_size, config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * config.head_dim
    shapes = {"model.embed_tokens.weight": (V, C)}
    for i in range(config.num_hidden_layers):
        h = f"model.layers.{i}."
        shapes.update({
            h + "input_layernorm.weight": (C,),
            h + "self_attn.q_proj.weight": (C, C), h + "self_attn.k_proj.weight": (kv, C),
            h + "self_attn.v_proj.weight": (kv, C), h + "self_attn.o_proj.weight": (C, C),
            h + "post_attention_layernorm.weight": (C,),
            h + "mlp.gate_proj.weight": (I, C), h + "mlp.up_proj.weight": (I, C), h + "mlp.down_proj.weight": (C, I),
        })
    shapes["model.norm.weight"] = (C,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def layout(config: LlamaConfig, config_source: str = CONFIG_NAME) -> Layout:
    """How a LlamaForCausalLM with this config names its parameters (``minilora.loading.Layout``): every
    key and shape, ``lm_head.weight`` (optional when tied), old checkpoints' rotary buffers, and the
    ``model.`` prefix that a bare LlamaModel's keys lack."""
    shapes = {**hf_shapes(config), "lm_head.weight": (config.vocab_size, config.hidden_size)}
    return Layout(shapes, "model.", config_source, _implied(config, config_source), "minilora's LLaMA",
                  optional=frozenset({"lm_head.weight"} if config.tie_word_embeddings else ()), buffers=_BUFFER,
                  layer=_LAYER, layers=("num_hidden_layers", config.num_hidden_layers))


def state_from_hf(tensors: dict, config: LlamaConfig, config_source: str = CONFIG_NAME, source: str | None = None) -> dict:
    """HF tensors as minilora's state dict (the head tied to the embedding if the config says so).

    ``tensors`` is keyed as ``layout`` keys them: read by ``loading.load_model``, or checked here
    (``source``: where they came from) by the same rules."""
    if source is not None:
        tensors = check_model_state(tensors, layout(config, config_source), source)
    if config.tie_word_embeddings:
        head, embed = tensors.pop("lm_head.weight", None), tensors["model.embed_tokens.weight"]
        if head is not None and not numpy.array_equal(head, embed):
            raise MismatchError(f"{source or config_source}: key 'lm_head.weight' differs from 'model.embed_tokens.weight', "
                                f"but {config_source} says tie_word_embeddings=true")
        tensors["lm_head.weight"] = embed  # the same Parameter on our side
    return tensors


def state_to_hf(model: LlamaForCausalLM) -> dict:
    """The model's weights as HF's tensors (NumPy arrays on the host; ``lm_head`` only if untied)."""
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    if tied != model.config.tie_word_embeddings:
        raise ValueError(f"save: lm_head.weight is {'' if tied else 'not '}tied to model.embed_tokens.weight, "
                         f"but config.tie_word_embeddings={model.config.tie_word_embeddings}")
    ours = model.state_dict()
    expected = hf_shapes(model.config)
    missing = [name for name in expected if name not in ours]
    extra = [name for name in ours if name not in expected and name != "lm_head.weight"]
    if missing or extra:
        raise ValueError(f"save: the model's parameters are not plain LLaMA's (merge or remove wrappers such as LoRA "
                         f"first); missing: {missing[:6]}, extra: {extra[:6]}")
    return {name: numpy.ascontiguousarray(B.to_numpy(ours[name])) for name in expected}


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def from_pretrained(path, dtype=float32, allow_nonfinite: bool = False) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` (in eval mode) from a Hugging Face LLaMA checkpoint folder (one file or
    shards): the config checked field by field, the weights' header against the shapes it implies,
    then the data, cast to ``dtype`` and checked finite (NaN or inf refused unless
    ``allow_nonfinite``). Errors: ``minilora.errors``."""
    config_file = Path(path) / CONFIG_NAME
    hf_config, header = read_folder(path, CONFIG_NAME, WEIGHTS_NAME, "a LLaMA checkpoint folder")
    config = config_from_hf(hf_config, str(config_file))
    check_layer_count(header, config.num_hidden_layers, "num_hidden_layers", 9, "minilora's LLaMA", str(config_file))
    tensors = load_model(header, layout(config, str(config_file)), dtype=numpy.dtype(dtype), allow_nonfinite=allow_nonfinite)
    return _build(config, state_from_hf(tensors, config, str(config_file)), dtype)


def _implied(config: LlamaConfig, config_source: str) -> str:
    return (f"{config_source} (vocab_size={config.vocab_size}, hidden_size={config.hidden_size}, "
            f"intermediate_size={config.intermediate_size}, num_hidden_layers={config.num_hidden_layers}, "
            f"num_attention_heads={config.num_attention_heads}, num_key_value_heads={config.num_key_value_heads}, "
            f"tie_word_embeddings={str(config.tie_word_embeddings).lower()})")


def _build(config: LlamaConfig, state: dict, dtype) -> LlamaForCausalLM:
    model = LlamaForCausalLM(config, dtype=dtype)
    model.load_state_dict(state)  # copies, casting to the model's dtype and backend
    return model.eval()


def save_pretrained(model: LlamaForCausalLM, path) -> None:
    """Write ``config.json`` and ``model.safetensors`` into the folder ``path``, atomically (see ``hf.save_pretrained``)."""
    hf_config = config_to_hf(model.config, model.model.embed_tokens.weight.dtype)
    save_folder(path, CONFIG_NAME, hf_config, WEIGHTS_NAME, state_to_hf(model))


# ---------------------------------------------------------------------------
# in memory, to and from transformers (imported on call)
# ---------------------------------------------------------------------------


def to_transformers(model: LlamaForCausalLM, attn_implementation: str = "sdpa"):
    """A ``transformers.LlamaForCausalLM`` with the same weights, in the model's dtype, eval mode.

    Attention through torch's ``scaled_dot_product_attention`` by default: transformers'
    "eager" LLaMA attention takes its softmax in float32 even in a float64 model."""
    import torch
    import transformers

    dtype = numpy.dtype(model.model.embed_tokens.weight.dtype)
    fields = {k: v for k, v in config_to_hf(model.config, dtype).items() if k not in ("architectures", "model_type", "dtype")}
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields, attn_implementation=attn_implementation))
    hf_model = hf_model.to(getattr(torch, dtype.name))
    tensors = {k: torch.from_numpy(v) for k, v in state_to_hf(model).items()}
    if model.config.tie_word_embeddings:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    hf_model.load_state_dict(tensors, strict=True)
    return hf_model.eval()


def from_transformers(hf_model) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` with the weights of a ``transformers.LlamaForCausalLM``, in its dtype."""
    import torch

    name = type(hf_model).__name__
    config = config_from_hf(hf_model.config.to_dict(), f"{name}.config")
    tensors = {}
    for key, t in hf_model.state_dict().items():
        t = t.detach().cpu()
        tensors[key] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    dtype = next(iter(tensors.values())).dtype
    return _build(config, state_from_hf(tensors, config, f"{name}.config", f"{name}.state_dict()"), dtype)
