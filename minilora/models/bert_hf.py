"""Hugging Face BERT checkpoints in and out of minilora's ``BertModel`` and ``BertForSequenceClassification``.

A checkpoint is a folder with ``config.json`` (a ``transformers.BertConfig``) and
``model.safetensors``, read with ``safetensors`` -- never pickle, which can run code.
Unlike GPT-2 (``hf.py``) nothing is transposed: BERT's projections are
``torch.nn.Linear``, stored (out, in) as minilora's. The names are equal too; what
differs between files is only

1. the prefix: a bare ``BertModel`` saves ``embeddings.word_embeddings.weight``, a
   classifier saves ``bert.embeddings.word_embeddings.weight`` beside ``classifier.*``.
   Either loads into either model, as in transformers (``base_model_prefix = "bert"``);
   a classifier loaded from a bare encoder gets a new random head (and a pooler, if
   the file has none);
2. keys that are no parameters: the ``embeddings.position_ids`` (and
   ``token_type_ids``) integer buffers of older transformers, skipped by name, and the
   pre-training heads ``cls.*`` of a ``BertForPreTraining`` file, which these models do
   not have.

The file is checked from its header first -- every key, shape and dtype against
``config.json`` -- and only then are the arrays read; a problem is one ``CheckpointError``
naming the file, the key and the shapes. Saving writes to temporary files and
renames them into place (``minilora.io``).

``to_transformers`` / ``from_transformers`` convert in memory; they import torch and
transformers when called (test-time dependencies, not the package's).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy

from minilora import backend as B
from minilora.io import write_atomically
from minilora.models.bert import GELU_EXACT, GELU_TANH, BertConfig, BertForSequenceClassification, BertModel
from minilora.models.hf import CheckpointError
from minilora.tensor import float32

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
PREFIX = "bert."  # transformers' base_model_prefix for BERT
SKIPPED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")  # int buffers, not parameters
SKIPPED_HEADS = ("cls.",)  # BertForPreTraining's masked-LM and next-sentence heads
READABLE_DTYPES = {"F16": numpy.float16, "F32": numpy.float32, "F64": numpy.float64}

# config.json fields that must hold these values (or be absent): the variants minilora's BERT does not implement
_REQUIRED = {"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False,
             "chunk_size_feed_forward": 0}


# ---------------------------------------------------------------------------
# config.json <-> BertConfig
# ---------------------------------------------------------------------------


def config_from_hf(hf: dict, source: str = CONFIG_NAME) -> BertConfig:
    """A ``BertConfig`` from a ``transformers.BertConfig``'s fields (a dict); missing fields take
    BertConfig's defaults (BERT-base's, as transformers'); variants not implemented are refused."""
    if hf.get("model_type", "bert") != "bert":
        raise CheckpointError(f"{source}: model_type={hf['model_type']!r} is not supported (accepted: 'bert')")
    if hf.get("hidden_act", "gelu") not in GELU_EXACT + GELU_TANH:
        raise CheckpointError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported "
                              f"(accepted: {', '.join(map(repr, GELU_EXACT + GELU_TANH))})")
    for field, wanted in _REQUIRED.items():
        if hf.get(field, wanted) != wanted:
            raise CheckpointError(f"{source}: {field}={hf[field]!r} is not supported by minilora's BERT (accepted: {wanted!r})")
    fields = {f: hf[f] for f in BertConfig.__dataclass_fields__ if f in hf and hf[f] is not None}
    if hf.get("classifier_dropout") is not None:
        fields["classifier_dropout"] = hf["classifier_dropout"]
    try:
        return BertConfig(**fields)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None


def num_labels_from_hf(hf: dict):
    """The number of classes a saved classifier has (transformers reads it from ``id2label``), or None."""
    if "id2label" in hf:
        return len(hf["id2label"])
    return hf.get("num_labels")


def config_to_hf(config: BertConfig, dtype="float32", num_labels: int | None = None) -> dict:
    """The ``config.json`` of a ``BertModel`` (or, with ``num_labels``, a ``BertForSequenceClassification``)."""
    out = {"architectures": ["BertModel" if num_labels is None else "BertForSequenceClassification"],
           "model_type": "bert", **{f: getattr(config, f) for f in BertConfig.__dataclass_fields__},
           "position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False,
           "use_cache": True, "dtype": numpy.dtype(dtype).name}
    if num_labels is not None:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    return out


# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------


def encoder_shapes(config: BertConfig) -> dict:
    """Every key of a ``BertModel`` with this config (no prefix) and its shape."""
    V, P, S, H, I = (config.vocab_size, config.max_position_embeddings, config.type_vocab_size,
                     config.hidden_size, config.intermediate_size)
    shapes = {"embeddings.word_embeddings.weight": (V, H), "embeddings.position_embeddings.weight": (P, H),
              "embeddings.token_type_embeddings.weight": (S, H),
              "embeddings.LayerNorm.weight": (H,), "embeddings.LayerNorm.bias": (H,)}
    for i in range(config.num_hidden_layers):
        layer = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes.update({layer + name + ".weight": (H, H), layer + name + ".bias": (H,)})
        shapes.update({
            layer + "attention.output.LayerNorm.weight": (H,), layer + "attention.output.LayerNorm.bias": (H,),
            layer + "intermediate.dense.weight": (I, H), layer + "intermediate.dense.bias": (I,),
            layer + "output.dense.weight": (H, I), layer + "output.dense.bias": (H,),
            layer + "output.LayerNorm.weight": (H,), layer + "output.LayerNorm.bias": (H,),
        })
    shapes.update({"pooler.dense.weight": (H, H), "pooler.dense.bias": (H,)})
    return shapes


def model_shapes(model) -> dict:
    """``{key: shape}`` of every key ``model`` has in a Hugging Face file."""
    if isinstance(model, BertForSequenceClassification):
        shapes = {PREFIX + k: v for k, v in encoder_shapes(model.config).items()}
        H, n = model.config.hidden_size, model.num_labels
        return {**shapes, "classifier.weight": (n, H), "classifier.bias": (n,)}
    return encoder_shapes(model.config)


def _our_name(key: str, classifier: bool):
    """A file key as the model's key (prefix added or removed), or None for a key that is skipped."""
    bare = key[len(PREFIX):] if key.startswith(PREFIX) else key
    if bare in SKIPPED_BUFFERS or bare.startswith(SKIPPED_HEADS):
        return None
    if key.startswith("classifier."):
        return key if classifier else None  # a bare encoder leaves the classifier out
    return PREFIX + bare if classifier else bare


def read_checked(weights_file: Path, model, config_source: str) -> dict:
    """The file's arrays keyed as the model's state dict, after checking the header: every key,
    shape and dtype. Keys the model needs but the file lacks may only be the pooler and the
    classifier (they keep their new random values); any other problem is a CheckpointError."""
    from safetensors import SafetensorError, safe_open

    classifier = isinstance(model, BertForSequenceClassification)
    expected = model_shapes(model)
    try:
        handle = safe_open(str(weights_file), framework="np")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_file} is corrupt or truncated: not a readable safetensors file ({err})") from None
    with handle as f:
        problems, names, seen = [], {}, set()
        for key in f.keys():
            name = _our_name(key, classifier)
            if name is None:
                continue
            piece = f.get_slice(key)
            shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
            if name not in expected:
                problems.append(f"unexpected key {key!r}")
            elif name in seen:
                problems.append(f"key {key!r} appears twice (with and without the {PREFIX!r} prefix)")
            elif shape != expected[name]:
                problems.append(f"key {key!r} has shape {shape}, but {config_source} implies {expected[name]}")
            elif dtype not in READABLE_DTYPES:
                problems.append(f"key {key!r} has dtype {dtype}; minilora reads {', '.join(READABLE_DTYPES)}")
            else:
                names[key] = name
            seen.add(name)
        optional = ("pooler.", "bert.pooler.", "classifier.")
        missing = [k for k in expected if k not in seen and not k.startswith(optional)]
        if missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if problems:
            raise CheckpointError(f"{weights_file} does not fit minilora's {type(model).__name__}:\n  " + "\n  ".join(problems))
        return {name: f.get_tensor(key) for key, name in names.items()}


def from_pretrained(path, cls=BertModel, dtype=float32, num_labels: int | None = None):
    """A ``cls`` (``BertModel`` or ``BertForSequenceClassification``), in eval mode as transformers
    returns it, from a Hugging Face BERT folder. ``num_labels`` (classifier only): None takes the
    file's (2 for a bare encoder's file, transformers' default)."""
    folder = Path(path)
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"from_pretrained: {folder} is not a folder (expected one holding {CONFIG_NAME} and {WEIGHTS_NAME})")
    for file in (config_file, weights_file):
        if not file.is_file():
            raise FileNotFoundError(f"from_pretrained: {file} not found; a checkpoint folder holds {CONFIG_NAME} and "
                                    f"{WEIGHTS_NAME} (only safetensors is read, never pickle)")
    try:
        hf_config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file} is not valid JSON: {err}") from None
    config = config_from_hf(hf_config, str(config_file))
    if cls is BertForSequenceClassification:
        saved = num_labels_from_hf(hf_config) if "BertForSequenceClassification" in hf_config.get("architectures", []) else None
        if num_labels is not None and saved is not None and num_labels != saved:
            raise CheckpointError(f"{config_file}: the saved classifier has {saved} labels, but num_labels={num_labels} was asked for")
        model = cls(config, num_labels=num_labels or saved or 2, dtype=dtype)
    elif cls is BertModel:
        if num_labels is not None:
            raise ValueError("from_pretrained: num_labels is for BertForSequenceClassification; a BertModel has no classifier")
        model = cls(config, dtype=dtype)
    else:
        raise TypeError(f"from_pretrained: cls must be BertModel or BertForSequenceClassification, got {cls!r}")
    model.load_state_dict(read_checked(weights_file, model, str(config_file)), strict=False)  # casts to dtype
    return model.eval()


def state_to_hf(model) -> dict:
    """The model's weights as Hugging Face's tensors (NumPy arrays on the host), named as transformers saves them."""
    ours = model.state_dict()
    expected = model_shapes(model)
    missing = [k for k in expected if k not in ours]
    extra = [k for k in ours if k not in expected]
    if missing or extra:
        raise ValueError(f"save: the model's parameters are not plain BERT's (merge or remove wrappers such as LoRA first); "
                         f"missing: {missing[:6]}, extra: {extra[:6]}")
    return {k: numpy.ascontiguousarray(B.to_numpy(ours[k])) for k in expected}


def save_pretrained(model, path) -> None:
    """Write ``config.json`` and ``model.safetensors`` into the folder ``path``, atomically: both
    files are written in full under temporary names and only then renamed over the old ones."""
    from safetensors.numpy import save_file

    folder = Path(path)
    classifier = isinstance(model, BertForSequenceClassification)
    tensors = state_to_hf(model)  # validates before anything touches the disk
    hf_config = config_to_hf(model.config, tensors[(PREFIX if classifier else "") + "embeddings.word_embeddings.weight"].dtype,
                             model.num_labels if classifier else None)

    def write_json(tmp):
        Path(tmp).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")

    write_atomically({
        folder / WEIGHTS_NAME: lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),
        folder / CONFIG_NAME: write_json,
    })


# ---------------------------------------------------------------------------
# in memory, to and from transformers (torch and transformers imported on call)
# ---------------------------------------------------------------------------


def to_transformers(model):
    """A ``transformers.BertModel`` (or ``BertForSequenceClassification``) with the same weights,
    in the model's dtype, eval mode, eager attention."""
    import torch
    import transformers

    classifier = isinstance(model, BertForSequenceClassification)
    tensors = {k: torch.from_numpy(v) for k, v in state_to_hf(model).items()}
    dtype = next(iter(tensors.values())).dtype
    fields = config_to_hf(model.config, str(dtype).removeprefix("torch."), model.num_labels if classifier else None)
    config = transformers.BertConfig(**fields, attn_implementation="eager")
    cls = transformers.BertForSequenceClassification if classifier else transformers.BertModel
    hf_model = cls(config).to(dtype)
    hf_model.load_state_dict(tensors, strict=False)  # strict=False: the position_ids buffers are not in the file
    missing = set(hf_model.state_dict()) - set(tensors) - {k for k in hf_model.state_dict() if k.endswith(("position_ids", "token_type_ids"))}
    if missing:
        raise RuntimeError(f"to_transformers: keys not set: {sorted(missing)[:6]}")
    return hf_model.eval()


def from_transformers(hf_model):
    """A minilora ``BertModel`` (or ``BertForSequenceClassification``) with the weights of a transformers one, in its dtype."""
    import torch

    classifier = type(hf_model).__name__ == "BertForSequenceClassification"
    config = config_from_hf(hf_model.config.to_dict(), f"{type(hf_model).__name__}.config")
    tensors = {}
    for key, t in hf_model.state_dict().items():
        name = _our_name(key, classifier)
        if name is not None:
            t = t.detach().cpu()
            tensors[name] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    dtype = next(iter(tensors.values())).dtype
    model = (BertForSequenceClassification(config, hf_model.config.num_labels, dtype=dtype) if classifier
             else BertModel(config, dtype=dtype))
    model.load_state_dict(tensors)
    return model.eval()
