"""Hugging Face LLaMA checkpoints in and out of minilora's ``LlamaForCausalLM``.

A checkpoint is a folder with ``config.json`` (a ``transformers.LlamaConfig``) and
``model.safetensors``, read with ``safetensors.numpy`` (never pickle). The names and
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

Every key and shape is checked before anything is loaded; the problems come as one
``CheckpointError`` naming the file, the key and both shapes. Saving is atomic, as GPT's.
"""

from __future__ import annotations

import re

import numpy

from minilora import backend as B
from minilora.models.hf import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    checkpoint_files,
    read_json,
    read_safetensors,
    write_checkpoint,
)
from minilora.models.llama import LlamaConfig, LlamaForCausalLM
from minilora.tensor import float32

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_BUFFER = re.compile(r"^model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq$")  # old checkpoints' RoPE buffer


# ---------------------------------------------------------------------------
# config.json <-> LlamaConfig
# ---------------------------------------------------------------------------


def rope_theta_from_hf(hf: dict, source: str = CONFIG_NAME) -> float:
    """The RoPE base from ``rope_parameters`` (transformers 5) or ``rope_theta`` (before), refusing scaled RoPE."""
    params = hf.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise CheckpointError(f"{source}: rope_parameters={params!r} must be a dict such as "
                              f"{{'rope_type': 'default', 'rope_theta': 10000.0}}")
    for field, value in (("rope_parameters", params), ("rope_scaling", hf.get("rope_scaling") or {})):
        kind = value.get("rope_type", value.get("type", "default")) if isinstance(value, dict) else value
        if kind != "default":
            raise CheckpointError(f"{source}: {field} has rope_type={kind!r}, which minilora's LLaMA does not implement "
                                  f"(accepted: 'default', plain RoPE); scaled RoPE would compute other angles")
    new, old = params.get("rope_theta"), hf.get("rope_theta")
    if new is not None and old is not None and float(new) != float(old):
        raise CheckpointError(f"{source}: rope_parameters['rope_theta']={new!r} and rope_theta={old!r} disagree")
    return float(new if new is not None else old if old is not None else 10000.0)


def config_from_hf(hf: dict, source: str = CONFIG_NAME) -> LlamaConfig:
    """A ``LlamaConfig`` from the fields of a ``transformers.LlamaConfig`` (a dict); missing fields
    take its defaults. What minilora's LLaMA does not implement raises a CheckpointError naming the field."""
    def bad(field, value, accepted):
        return CheckpointError(f"{source}: {field}={value!r} is not supported by minilora's LLaMA (accepted: {accepted})")

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
        raise CheckpointError(f"{source}: {err}") from None


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


def state_from_hf(tensors: dict, config: LlamaConfig, source: str = WEIGHTS_NAME, config_source: str = CONFIG_NAME) -> dict:
    """HF tensors (name -> NumPy array) as minilora's state dict, after checking every key and shape
    against ``config``; one CheckpointError lists all the problems."""
    expected = hf_shapes(config)
    implied = (f"{config_source} (vocab_size={config.vocab_size}, hidden_size={config.hidden_size}, "
               f"intermediate_size={config.intermediate_size}, num_hidden_layers={config.num_hidden_layers}, "
               f"num_attention_heads={config.num_attention_heads}, num_key_value_heads={config.num_key_value_heads}, "
               f"tie_word_embeddings={str(config.tie_word_embeddings).lower()})")
    found, present, problems, tied_head = {}, set(), [], None
    for key, array in tensors.items():
        name = key if key.startswith("model.") or key == "lm_head.weight" else "model." + key  # a bare LlamaModel
        if _BUFFER.match(name):
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            tied_head = array
            continue
        if name not in expected:
            layer = _LAYER.match(name)
            hint = (f": {config_source} says num_hidden_layers={config.num_hidden_layers}"
                    if layer and int(layer[1]) >= config.num_hidden_layers else "")
            problems.append(f"unexpected key {key!r}{hint}")
        elif name in present:
            problems.append(f"key {key!r} appears twice (with and without the 'model.' prefix)")
        elif tuple(array.shape) != expected[name]:
            problems.append(f"key {key!r} has shape {tuple(array.shape)}, but {implied} implies {expected[name]}")
        else:
            found[name] = array
        present.add(name)
    missing = [name for name in expected if name not in present]
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} ({implied})")
    embed = found.get("model.embed_tokens.weight")
    if tied_head is not None and embed is not None and not (tied_head.shape == embed.shape and numpy.array_equal(tied_head, embed)):
        problems.append("key 'lm_head.weight' differs from 'model.embed_tokens.weight', but "
                        f"{config_source} says tie_word_embeddings=true")
    if problems:
        raise CheckpointError(f"{source} does not fit minilora's LLaMA:\n  " + "\n  ".join(problems))
    if config.tie_word_embeddings:
        found["lm_head.weight"] = found["model.embed_tokens.weight"]  # the same Parameter on our side
    return found


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


def from_pretrained(path, dtype=float32) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` (in eval mode) from a Hugging Face LLaMA checkpoint folder."""
    config_file, weights_file = checkpoint_files(path)
    config = config_from_hf(read_json(config_file), str(config_file))
    state = state_from_hf(read_safetensors(weights_file), config, str(weights_file), str(config_file))
    return _build(config, state, dtype)


def _build(config: LlamaConfig, state: dict, dtype) -> LlamaForCausalLM:
    model = LlamaForCausalLM(config, dtype=dtype)
    model.load_state_dict(state)  # copies, casting to the model's dtype and backend
    return model.eval()


def save_pretrained(model: LlamaForCausalLM, path) -> None:
    """Write ``config.json`` and ``model.safetensors`` into the folder ``path``, atomically (see ``hf.save_pretrained``)."""
    hf_config = config_to_hf(model.config, model.model.embed_tokens.weight.dtype)
    write_checkpoint(path, hf_config, state_to_hf(model))


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
    return _build(config, state_from_hf(tensors, config, f"{name}.state_dict()", f"{name}.config"), dtype)
