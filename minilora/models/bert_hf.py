"""Hugging Face BERT checkpoints in and out of minilora's ``BertModel`` and ``BertForSequenceClassification``.

A checkpoint is a folder with ``config.json`` (a ``transformers.BertConfig``) and
``model.safetensors``, read through ``minilora.loading`` -- never pickle, which can run code.
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

The file (or each shard of a sharded checkpoint) is checked from its header first -- every
key, shape and dtype against ``config.json`` (``layout``) -- and only then are the arrays
read, cast and checked finite (``minilora.loading.load_model``, the loader GPT-2 and LLaMA
share); a problem is one error of ``minilora.errors`` naming the
file, the key and the shapes. Saving writes both files under temporary names bound by one
save id and renames them into place (``minilora.io.save_folder``).

``to_transformers`` / ``from_transformers`` convert in memory; they import torch and
transformers when called (test-time dependencies, not the package's).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy

from minilora import backend as B
from minilora.errors import ConfigError
from minilora.io import save_folder
from minilora.loading import Layout, check_layer_count, check_model_state, json_matches, load_model, read_folder
from minilora.models.bert import GELU_EXACT, GELU_TANH, BertConfig, BertForSequenceClassification, BertModel
from minilora.tensor import float32

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
PREFIX = "bert."  # transformers' base_model_prefix for BERT
SKIPPED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")  # int buffers, not parameters
SKIPPED_HEADS = ("cls.",)  # BertForPreTraining's masked-LM and next-sentence heads

# config.json fields that must hold these values (or be absent): the variants minilora's BERT does not implement
_REQUIRED = {"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False,
             "chunk_size_feed_forward": 0}


# ---------------------------------------------------------------------------
# config.json <-> BertConfig
# ---------------------------------------------------------------------------


def config_from_hf(hf: dict, source: str = CONFIG_NAME) -> BertConfig:
    """A ``BertConfig`` from a ``transformers.BertConfig``'s fields (a dict); missing fields take
    BertConfig's defaults (BERT-base's, as transformers'); a field of the wrong JSON type, or a
    variant not implemented, is a ConfigError naming it."""
    if hf.get("model_type", "bert") != "bert":
        raise ConfigError(f"{source}: model_type={hf['model_type']!r} is not supported (accepted: 'bert')")
    if hf.get("hidden_act", "gelu") not in GELU_EXACT + GELU_TANH:
        raise ConfigError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported "
                          f"(accepted: {', '.join(map(repr, GELU_EXACT + GELU_TANH))})")
    for field, wanted in _REQUIRED.items():
        if hf.get(field, wanted) != wanted:
            raise ConfigError(f"{source}: {field}={hf[field]!r} is not supported by minilora's BERT (accepted: {wanted!r})")
    fields = {}
    for name, f in BertConfig.__dataclass_fields__.items():
        if name not in hf or (hf[name] is None and name != "classifier_dropout"):
            continue
        if not json_matches(hf[name], f.type):
            raise ConfigError(f"{source}: {name}={hf[name]!r} must be a JSON {f.type}")
        fields[name] = hf[name]
    try:
        return BertConfig(**fields)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None


def num_labels_from_hf(hf: dict, source: str = CONFIG_NAME):
    """The number of classes a saved classifier has (transformers reads it from ``id2label``), or None."""
    if "id2label" in hf:
        if not isinstance(hf["id2label"], dict) or not hf["id2label"]:
            raise ConfigError(f"{source}: id2label must be a non-empty JSON object {{index: label}}, got {hf['id2label']!r}")
        return len(hf["id2label"])
    n = hf.get("num_labels")
    if n is not None and not (json_matches(n, "int") and n >= 1):
        raise ConfigError(f"{source}: num_labels must be a positive int, got {n!r}")
    return n


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


def file_shapes(config: BertConfig, num_labels: int | None = None) -> dict:
    """``{key: shape}`` of every key a ``BertModel`` (``num_labels`` None) or a
    ``BertForSequenceClassification`` with ``num_labels`` classes has in a Hugging Face file."""
    if num_labels is None:
        return encoder_shapes(config)
    H = config.hidden_size
    return {**{PREFIX + k: v for k, v in encoder_shapes(config).items()},
            "classifier.weight": (num_labels, H), "classifier.bias": (num_labels,)}


def _num_labels(model):
    """None for an encoder, the number of classes for a classifier."""
    return model.num_labels if isinstance(model, BertForSequenceClassification) else None


def layout(config: BertConfig, num_labels: int | None, config_source: str = CONFIG_NAME, what: str = "minilora's BERT") -> Layout:
    """How a model of ``config`` (with a classifier of ``num_labels`` classes, or none) names its
    parameters in a file (``minilora.loading.Layout``), keyed as a classifier keys them: the ``bert.``
    prefix, which a bare encoder's file lacks; what may be absent (the pooler, and the classifier a
    bare encoder's file has none of) and present besides (the integer buffers, pre-training heads,
    and a classifier the model does not have)."""
    shapes = file_shapes(config, num_labels) if num_labels is not None else {
        PREFIX + k: v for k, v in encoder_shapes(config).items()}
    skipped = [re.escape(b) for b in SKIPPED_BUFFERS] + [re.escape(h) + ".*" for h in SKIPPED_HEADS]
    if num_labels is None:  # an encoder loading a classifier's file: its head is left out
        skipped.append(r"classifier\..*")
    implied = (f"{config_source} (vocab_size={config.vocab_size}, hidden_size={config.hidden_size}, "
               f"num_hidden_layers={config.num_hidden_layers}, intermediate_size={config.intermediate_size})")
    optional = {k for k in shapes if ".pooler." in k or k.startswith("classifier.")}
    return Layout(shapes, PREFIX, config_source, implied, what, optional=frozenset(optional), buffers="|".join(skipped),
                  layer=r"encoder\.layer\.(\d+)\.", layers=("num_hidden_layers", config.num_hidden_layers))


def _ours(tensors: dict, classifier: bool) -> dict:
    """Arrays keyed as ``layout`` keys them, keyed as the model does (an encoder has no ``bert.``)."""
    return tensors if classifier else {k.removeprefix(PREFIX): v for k, v in tensors.items()}


def from_pretrained(path, cls=BertModel, dtype=float32, num_labels: int | None = None, allow_nonfinite: bool = False):
    """A ``cls`` (``BertModel`` or ``BertForSequenceClassification``), in eval mode as transformers
    returns it, from a Hugging Face BERT folder (one file or shards). ``num_labels`` (classifier
    only): None takes the file's (2 for a bare encoder's file, transformers' default).

    Read through ``minilora.loading``: ``config.json`` checked field by field, then the header
    of the weights against the shapes the config implies, then the weights, cast to ``dtype`` and
    checked finite (NaN or inf refused unless ``allow_nonfinite``). Errors: ``minilora.errors``."""
    config_file = Path(path) / CONFIG_NAME
    if cls not in (BertModel, BertForSequenceClassification):
        raise TypeError(f"from_pretrained: cls must be BertModel or BertForSequenceClassification, got {cls!r}")
    if cls is BertModel and num_labels is not None:
        raise ValueError("from_pretrained: num_labels is for BertForSequenceClassification; a BertModel has no classifier")
    hf_config, header = read_folder(path, CONFIG_NAME, WEIGHTS_NAME, "a BERT checkpoint folder")
    config = config_from_hf(hf_config, str(config_file))
    classifier = cls is BertForSequenceClassification
    if classifier:
        architectures = hf_config.get("architectures") or []
        saved = num_labels_from_hf(hf_config, str(config_file)) if "BertForSequenceClassification" in architectures else None
        if num_labels is not None and saved is not None and num_labels != saved:
            raise ConfigError(f"{config_file}: the saved classifier has {saved} labels, but num_labels={num_labels} was asked for")
        num_labels = num_labels or saved or 2
    check_layer_count(header, config.num_hidden_layers, "num_hidden_layers", 16, f"minilora's {cls.__name__}", str(config_file))
    tensors = load_model(header, layout(config, num_labels if classifier else None, str(config_file), f"minilora's {cls.__name__}"),
                         dtype=numpy.dtype(dtype), allow_nonfinite=allow_nonfinite)
    model = cls(config, num_labels=num_labels, dtype=dtype) if classifier else cls(config, dtype=dtype)
    model.load_state_dict(_ours(tensors, classifier), strict=False)  # the pooler and classifier may be new; the rest was checked
    return model.eval()


def state_to_hf(model) -> dict:
    """The model's weights as Hugging Face's tensors (NumPy arrays on the host), named as transformers saves them."""
    ours = model.state_dict()
    expected = file_shapes(model.config, _num_labels(model))
    missing = [k for k in expected if k not in ours]
    extra = [k for k in ours if k not in expected]
    if missing or extra:
        raise ValueError(f"save: the model's parameters are not plain BERT's (merge or remove wrappers such as LoRA first); "
                         f"missing: {missing[:6]}, extra: {extra[:6]}")
    return {k: numpy.ascontiguousarray(B.to_numpy(ours[k])) for k in expected}


def save_pretrained(model, path) -> None:
    """Write ``config.json`` and ``model.safetensors`` into the folder ``path``, atomically: both
    files are written in full under temporary names, bound by one save id, and only then renamed
    over the old ones (``minilora.io.save_folder``)."""
    folder = Path(path)
    tensors = state_to_hf(model)  # validates before anything touches the disk
    dtype = next(iter(tensors.values())).dtype
    hf_config = config_to_hf(model.config, dtype, _num_labels(model))

    save_folder(folder, CONFIG_NAME, hf_config, WEIGHTS_NAME, tensors)


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
    fields = config_to_hf(model.config, str(dtype).removeprefix("torch."), _num_labels(model))
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

    name = type(hf_model).__name__
    classifier = name == "BertForSequenceClassification"
    config = config_from_hf(hf_model.config.to_dict(), f"{name}.config")
    tensors = {}
    for key, t in hf_model.state_dict().items():
        t = t.detach().cpu()
        tensors[key] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    num_labels = hf_model.config.num_labels if classifier else None
    tensors = check_model_state(tensors, layout(config, num_labels, f"{name}.config", f"minilora's {name}"), f"{name}.state_dict()")
    dtype = next(iter(tensors.values())).dtype
    model = BertForSequenceClassification(config, num_labels, dtype=dtype) if classifier else BertModel(config, dtype=dtype)
    model.load_state_dict(_ours(tensors, classifier))
    return model.eval()
