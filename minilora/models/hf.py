"""Hugging Face GPT-2 checkpoints in and out of minilora's ``GPT``.

A checkpoint is a folder with ``config.json`` (a ``transformers.GPT2Config``)
and ``model.safetensors``, read with ``safetensors.numpy`` -- never pickle, which
can run code. The names already agree (``transformer.h.0.attn.c_attn.weight`` is
the same parameter on both sides); what differs, as nanoGPT's ``from_pretrained``
also handles:

1. HF's four projections are ``Conv1D`` modules that store W as (in, out) and
   compute ``x @ W + b``; minilora's ``Linear`` stores (out, in), as
   ``torch.nn.Linear``. Those four weights are transposed on the way in and out.
2. ``lm_head.weight`` is tied to ``transformer.wte.weight``: HF usually leaves it
   out of the file; when present it must equal the embedding.
3. A bare ``GPT2Model`` saves its keys without the ``transformer.`` prefix, and
   old checkpoints carry the non-parameter buffers ``attn.bias`` (the causal
   mask) and ``attn.masked_bias``; both are accepted, the buffers ignored.

Everything is checked before anything is loaded or written (``minilora/loading.py``:
the config's JSON types, then the weights' header against the shapes the config
implies, then the data); a problem is one of the errors of ``minilora/errors.py``
(all of them ``CheckpointError``s or ``OSError``s) naming the file, the key and both
shapes. Saving writes to temporary files in the target folder and renames them into
place, both files bound by one save id (``minilora/io.py``), so a failed or killed save
never leaves a half-written file, and never a silent mix of two saves.

``to_transformers`` / ``from_transformers`` convert in memory; they import torch
and transformers when called (test-time dependencies, not the package's).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy

from minilora import backend as B
from minilora.errors import CheckpointError, ConfigError, MismatchError  # noqa: F401  (CheckpointError: its old home)
from minilora.io import save_folder
from minilora.loading import json_matches, load_checked, read_folder
from minilora.models.gpt import GPT, GPTConfig
from minilora.tensor import float32

CONV1D_WEIGHTS = tuple(f"{name}.weight" for name in GPT.hf_conv1d)
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # GPT-2's tanh approximation, under its two HF names
_BUFFER = re.compile(r"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$")
_LAYER = re.compile(r"^transformer\.h\.(\d+)\.")
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"

# The JSON type of each field config_from_hf reads (a bool is not an int, NaN is refused when parsing)
_INT, _NUM, _BOOL = ("int", "an integer"), ("float", "a number"), ("bool", "true or false")
HF_FIELD_TYPES = {
    "vocab_size": _INT, "n_positions": _INT, "n_embd": _INT, "n_layer": _INT, "n_head": _INT,
    "n_inner": ("int | None", "an integer or null"), "model_type": ("str", "a string"),
    "activation_function": ("str", "a string"), "layer_norm_epsilon": _NUM,
    "resid_pdrop": _NUM, "embd_pdrop": _NUM, "attn_pdrop": _NUM,
    "scale_attn_weights": _BOOL, "scale_attn_by_inverse_layer_idx": _BOOL, "add_cross_attention": _BOOL,
    "tie_word_embeddings": _BOOL,
}


# ---------------------------------------------------------------------------
# config.json <-> GPTConfig
# ---------------------------------------------------------------------------


def config_from_hf(hf: dict, source: str = CONFIG_NAME, dropout: float | None = None) -> GPTConfig:
    """A ``GPTConfig`` from the fields of a ``GPT2Config`` (a dict), refusing the variants GPT does not implement.

    Missing fields take GPT2Config's defaults (which are GPT-2 small's), as transformers does.
    ``dropout`` overrides the checkpoint's rates; without it, ``resid_pdrop``,
    ``embd_pdrop`` and ``attn_pdrop`` must agree, since GPTConfig has one rate.
    """
    def bad(field, value, accepted):
        return ConfigError(f"{source}: {field}={value!r} is not supported by minilora's GPT (accepted: {accepted})")

    for field, (annotation, accepted) in HF_FIELD_TYPES.items():
        if field in hf and not json_matches(hf[field], annotation):
            raise ConfigError(f"{source}: {field}={hf[field]!r} (a JSON {type(hf[field]).__name__}) is not {accepted}")
    for field in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        if field in hf and hf[field] <= 0:
            raise ConfigError(f"{source}: {field}={hf[field]!r} is not a positive integer")
    for field in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if field in hf and not 0 <= hf[field] < 1:
            raise ConfigError(f"{source}: {field}={hf[field]!r} is not a dropout rate in [0, 1)")
    if hf.get("n_embd", 768) % hf.get("n_head", 12):
        raise ConfigError(f"{source}: n_embd={hf.get('n_embd', 768)} is not divisible by n_head={hf.get('n_head', 12)}")

    if hf.get("model_type", "gpt2") != "gpt2":
        raise bad("model_type", hf["model_type"], "'gpt2'")
    if hf.get("activation_function", "gelu_new") not in GELU_TANH:
        raise bad("activation_function", hf["activation_function"], " or ".join(map(repr, GELU_TANH)))
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise bad("n_inner", hf["n_inner"], f"null or 4 * n_embd = {4 * n_embd}")
    if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise bad("layer_norm_epsilon", hf["layer_norm_epsilon"], "1e-05")
    for field, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                          ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if hf.get(field, wanted) != wanted:
            raise bad(field, hf[field], repr(wanted))
    if dropout is None:
        rates = {k: hf.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
        if len(set(rates.values())) > 1:
            raise ConfigError(f"{source}: dropout rates {rates} differ, and GPTConfig has one; pass dropout= to choose it")
        dropout = rates["resid_pdrop"]
    return GPTConfig(
        vocab_size=hf.get("vocab_size", 50257),
        block_size=hf.get("n_positions", 1024),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        dropout=float(dropout),
        bias=True,
    )


def config_to_hf(config: GPTConfig, dtype="float32") -> dict:
    """The ``config.json`` of a ``GPT2LMHeadModel`` with this architecture."""
    if not config.bias:
        raise ValueError("a GPT with bias=False has no Hugging Face GPT-2 equivalent (GPT-2 has biases everywhere)")
    # GPT-2's <|endoftext|> is its last id, 50256; another vocabulary has no known end token
    eos = 50256 if config.vocab_size == 50257 else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-05,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": numpy.dtype(dtype).name,
    }


# ---------------------------------------------------------------------------
# weights: HF layout <-> minilora layout
# ---------------------------------------------------------------------------


def hf_shapes(config: GPTConfig) -> dict:
    """Every HF key of a GPT2LMHeadModel with this config (``lm_head.weight`` aside), and its shape in HF's layout."""
    V, T, C = config.vocab_size, config.block_size, config.n_embd
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (T, C)}
    for i in range(config.n_layer):
        h = f"transformer.h.{i}."
        shapes.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),  # Conv1D: (in, out)
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    return shapes


def state_from_hf(tensors: dict, config: GPTConfig, source: str = WEIGHTS_NAME, config_source: str = CONFIG_NAME) -> dict:
    """HF tensors (name -> NumPy array) as minilora's state dict: prefixes added, Conv1D weights transposed.

    Checks every key and shape against ``config`` first and raises one MismatchError listing the problems.
    """
    expected = hf_shapes(config)
    implied = (f"{config_source} (vocab_size={config.vocab_size}, n_positions={config.block_size}, "
               f"n_embd={config.n_embd}, n_layer={config.n_layer})")
    found, present, problems, lm_head = {}, set(), [], None  # present: expected names seen, whatever their shape
    for key, array in tensors.items():
        name = key if key.startswith("transformer.") or key == "lm_head.weight" else "transformer." + key
        if name == "lm_head.weight":
            lm_head = array
            continue
        if _BUFFER.match(name):
            continue  # the old causal-mask buffers: not parameters
        if name not in expected:
            layer = _LAYER.match(name)
            hint = f": {config_source} says n_layer={config.n_layer}" if layer and int(layer[1]) >= config.n_layer else ""
            problems.append(f"unexpected key {key!r}{hint}")
        elif name in present:
            problems.append(f"key {key!r} appears twice (with and without the 'transformer.' prefix)")
        elif tuple(array.shape) != expected[name]:
            problems.append(f"key {key!r} has shape {tuple(array.shape)}, but {implied} implies {expected[name]}")
        else:
            found[name] = array
        present.add(name)
    missing = [name for name in expected if name not in present]
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
                        f" ({implied})")
    wte = found.get("transformer.wte.weight")
    if lm_head is not None and wte is not None:
        if tuple(lm_head.shape) != wte.shape:
            problems.append(f"key 'lm_head.weight' has shape {tuple(lm_head.shape)}, but the tied embedding has {wte.shape}")
        elif not numpy.array_equal(lm_head, wte):
            problems.append("key 'lm_head.weight' differs from 'transformer.wte.weight'; minilora's GPT ties them")
    if problems:
        raise MismatchError(f"{source} does not fit minilora's GPT:\n  " + "\n  ".join(problems))
    # (in, out) -> (out, in), made contiguous: a transposed view would be copied in Fortran order
    state = {name: (numpy.ascontiguousarray(array.T) if name.endswith(CONV1D_WEIGHTS) else array) for name, array in found.items()}
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied: the same Parameter on our side
    return state


def state_to_hf(model: GPT) -> dict:
    """The model's weights as HF's tensors: NumPy arrays on the host, Conv1D weights (in, out), no ``lm_head``."""
    if model.lm_head.weight is not model.transformer.wte.weight:
        raise ValueError("save: lm_head.weight is no longer tied to transformer.wte.weight; HF's GPT-2 ties them")
    ours = model.state_dict()
    expected = hf_shapes(model.config)
    missing = [name for name in expected if name not in ours]
    extra = [name for name in ours if name not in expected and name != "lm_head.weight"]
    if missing or extra:
        raise ValueError(
            f"save: the model's parameters are not plain GPT-2's (merge or remove wrappers such as LoRA first); "
            f"missing: {missing[:6]}, extra: {extra[:6]}"
        )
    out = {}
    for name in expected:
        array = B.to_numpy(ours[name])
        out[name] = numpy.ascontiguousarray(array.T if name.endswith(CONV1D_WEIGHTS) else array)
    return out


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def from_pretrained(path, dtype=float32, dropout: float | None = None, allow_nonfinite: bool = False) -> GPT:
    """A ``GPT`` (in eval mode, as transformers returns it) from a Hugging Face GPT-2 checkpoint folder.

    Reads ``config.json`` (checked field by field), then the header of ``model.safetensors``
    (checked against the shapes the config implies), then the weights; NaN or inf in a
    weight is refused unless ``allow_nonfinite=True``. Errors: ``minilora.errors``."""
    folder = Path(path)
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    hf_config, header = read_folder(folder, CONFIG_NAME, WEIGHTS_NAME, "a GPT-2 checkpoint folder")
    config = config_from_hf(hf_config, str(config_file), dropout)
    tensors = load_checked(weights_file, **_expected_in_file(config, header, str(config_file)),
                           header=header, allow_nonfinite=allow_nonfinite)
    state = state_from_hf(tensors, config, str(weights_file), str(config_file))
    return _build(config, state, dtype)


def _expected_in_file(config: GPTConfig, header, config_source: str) -> dict:
    """``load_checked``'s arguments for this config: every key in the file's own naming (with the
    ``transformer.`` prefix or, for a bare GPT2Model, without), its HF shape, the old causal-mask
    buffers and an optional tied ``lm_head.weight``.

    A config whose ``n_layer`` exceeds the number of tensors in the file (a billion,
    say) is refused before its key list is even built; the shapes themselves are
    compared by ``load_checked``, before the model is allocated."""
    C, L = config.n_embd, config.n_layer
    implied = (f"{config_source} (vocab_size={config.vocab_size}, n_positions={config.block_size}, "
               f"n_embd={C}, n_layer={L})")
    if L > len(header.tensors):
        raise MismatchError(f"{header.path} does not fit minilora's GPT: {config_source} says n_layer={L}, "
                            f"but the file holds {len(header.tensors)} tensors (12 a layer)")
    bare = not any(name.startswith("transformer.") for name in header.tensors)
    rename = (lambda name: name.removeprefix("transformer.")) if bare else (lambda name: name)
    expected = {rename(name): shape for name, shape in hf_shapes(config).items()}
    expected["lm_head.weight"] = (config.vocab_size, C)

    def hint(key):
        layer = _LAYER.match(key if key.startswith("transformer.") else "transformer." + key)
        return f": {config_source} says n_layer={L}" if layer and int(layer[1]) >= L else ""

    buffer = re.compile(_BUFFER.pattern.replace("^transformer\\.", "^" if bare else "^transformer\\."))
    return dict(expected=expected, optional={"lm_head.weight"}, buffers=[buffer], implied=implied,
                what="minilora's GPT", hint=hint)


def _build(config: GPTConfig, state: dict, dtype) -> GPT:
    model = GPT(config, dtype=dtype)
    model.load_state_dict(state)  # copies, casting to the model's dtype and backend
    return model.eval()


def save_pretrained(model: GPT, path) -> None:
    """Write ``config.json`` and ``model.safetensors`` (HF layout) into the folder ``path``, atomically.

    Both files are written in full to temporary files in that folder first and
    only then renamed over the old ones, bound by one save id (``minilora.io.save_folder``):
    an error leaves what was there untouched, and a kill between the two renames is
    reported by the next load instead of loading a mix.
    """
    dtype = model.transformer.wte.weight.dtype
    hf_config = config_to_hf(model.config, dtype)  # validates before anything touches the disk
    save_folder(path, CONFIG_NAME, hf_config, WEIGHTS_NAME, state_to_hf(model))


# ---------------------------------------------------------------------------
# in memory, to and from transformers (torch and transformers imported on call)
# ---------------------------------------------------------------------------


def to_transformers(model: GPT):
    """A ``transformers.GPT2LMHeadModel`` with the same weights, in the model's dtype, eval mode, eager attention."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    dtype = numpy.dtype(model.transformer.wte.weight.dtype)
    config = GPT2Config(**config_to_hf(model.config, dtype), attn_implementation="eager")
    hf_model = GPT2LMHeadModel(config).to(getattr(torch, dtype.name))
    tensors = {k: torch.from_numpy(v) for k, v in state_to_hf(model).items()}
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"]
    hf_model.load_state_dict(tensors, strict=True)
    return hf_model.eval()


def from_transformers(hf_model, dropout: float | None = None) -> GPT:
    """A ``GPT`` with the weights of a ``transformers.GPT2LMHeadModel`` (or ``GPT2Model``), in its dtype."""
    import torch

    config = config_from_hf(hf_model.config.to_dict(), f"{type(hf_model).__name__}.config", dropout)
    tensors = {}
    for name, t in hf_model.state_dict().items():
        t = t.detach().cpu()
        tensors[name] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    dtype = tensors["transformer.wte.weight" if "transformer.wte.weight" in tensors else "wte.weight"].dtype
    state = state_from_hf(tensors, config, f"{type(hf_model).__name__}.state_dict()", f"{type(hf_model).__name__}.config")
    return _build(config, state, dtype)
