"""Hotswapping: replace a loaded LoRA adapter's weights in place, as PEFT's ``peft/utils/hotswap.py``.

A server that changes adapters often would rather not delete one and build another:
``hotswap_adapter(model, folder, "default")`` writes the new adapter's A and B into the
arrays of the adapter already there, keeping its name, its parameters (and every
reference to them, an optimizer's say) and, where the ranks allow, its shapes.
PEFT's rules, one by one:

* **configs**: only LoRA; the new config must agree with the old on what the weights
  cannot carry -- ``use_rslora``, ``lora_dropout``, ``alpha_pattern``, ``use_dora``
  (``check_hotswap_configs_compatible``, a ValueError naming the field). minilora swaps plain
  LoRA only: zeroing DoRA's magnitude in a layer the new adapter lacks (PEFT's rule) would
  remove the base layer's output there, not the update, so DoRA is refused by name;
* **scalings**: each layer's scaling becomes the new adapter's, ``alpha / r`` (or
  ``/ sqrt(r)``) with its own ``rank_pattern`` and ``alpha_pattern``; a scaling that is an
  array (``prepare_model_for_compiled_hotswap``) is written in place;
* **ranks**: a new A (r', in) and B (out, r') of a smaller rank than the arrays there are
  written into their leading rows and columns, the rest set to zero -- the zero padding of
  the gathered stack (``peft/gathered.py``): ``[B', 0] [A'; 0] = B' A'``; a larger rank
  replaces the arrays (new shapes);
* **targets**: a layer the old adapter has and the new one lacks gets A = B = 0 (no
  update); a layer the new adapter has and the old one lacks is refused -- adding layers
  is not swapping -- with PEFT's RuntimeError listing the unexpected keys;
* **merged**: an adapter merged into the weights is refused (a ValueError, PEFT's), since
  unmerging after the swap would subtract the new update from weights holding the old.

Everything is checked before anything is written: a refused swap leaves the model as it was.
The outputs after a swap equal those of the new adapter loaded afresh (tests/test_hotswap.py
checks it against a fresh load and against PEFT's ``hotswap_adapter``). As in PEFT,
``model.peft_config[adapter_name]`` keeps the first adapter's config: to save the new
adapter, copy its folder rather than saving the swapped model.

PEFT's ``prepare_model_for_compiled_hotswap`` pads every adapter to a target rank and turns
the scalings into tensors, so that a compiled graph never sees a shape or a Python float
change. minilora compiles nothing; the function keeps PEFT's name and does the same --
padded arrays, scalings as 0-d arrays written in place -- so that a swap of any adapter up
to the target rank changes no array's shape or identity.
"""

from __future__ import annotations

import math
from pathlib import Path

from minilora import backend as B
from minilora.loading import load_checked
from minilora.peft.lora import LoRALinear, LoraConfig
from minilora.peft.model import PeftModel, _read
from minilora.peft.files import WEIGHTS_NAME
from minilora.tensor import no_grad

CONFIG_KEYS_TO_CHECK = ("use_rslora", "lora_dropout", "alpha_pattern", "use_dora")  # PEFT's, for LoRA


def check_hotswap_configs_compatible(config0, config1) -> None:
    """PEFT's check: the same method (LoRA), and equal ``CONFIG_KEYS_TO_CHECK``."""
    if config0.peft_type != config1.peft_type:
        raise ValueError(f"Incompatible PEFT types found: {config0.peft_type} and {config1.peft_type}")
    if config0.peft_type != "LORA":
        raise ValueError(f"Hotswapping only supports LORA but {config0.peft_type} was passed.")
    for key in CONFIG_KEYS_TO_CHECK:
        val0, val1 = getattr(config0, key), getattr(config1, key)
        if val0 != val1:
            raise ValueError(f"Configs are incompatible: for {key}, {val0} != {val1}")
    for config in (config0, config1):
        if config.use_dora:
            raise ValueError("hotswap swaps plain LoRA adapters, not DoRA (use_dora=True): a layer the new adapter "
                             "lacks would get a zero magnitude; load the new adapter under its own name instead")
        if config.enable_lora is not None:  # minilora's own layout, which PEFT's files cannot hold
            raise ValueError("hotswap does not swap enable_lora adapters (their B is stored in blocks); "
                             "load the new adapter under its own name instead")


def _lora_layers(model: PeftModel) -> list:
    return [(n, m) for n, m in model.base_model.adapter_layers() if isinstance(m, LoRALinear)]


@no_grad()
def prepare_model_for_compiled_hotswap(model: PeftModel, *, target_rank: int | None = None, config=None) -> None:
    """Pad every LoRA adapter of ``model`` to ``target_rank`` (zeros: the same outputs) and make
    every scaling a 0-d array of the layer's dtype, written in place by later swaps. ``config``
    (a LoraConfig or ``{name: LoraConfig}``) gets ``r`` and its ``rank_pattern`` set to the
    target, as PEFT does. Call it after loading the first adapter, before swapping."""
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("No adapter layers found on the model, make sure call `prepare_model_for_compiled_hotswap` "
                         "after loading the first adapter and before loading the second adapter.")
    if target_rank is not None:
        for name, layer in layers:
            for adapter in layer.lora_A:
                rank = layer.lora_A[adapter].weight.shape[0]
                if rank > target_rank:
                    raise ValueError(f"Trying to pad the adapter to the target rank {target_rank}, but the original "
                                     f"rank is larger ({rank}) ({name}, adapter {adapter!r}). This is not possible.")
        for _, layer in layers:
            for adapter in layer.lora_A:
                A, Bw = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
                A.data = _padded(A.data, (target_rank, A.shape[1]))
                Bw.data = _padded(Bw.data, (Bw.shape[0], target_rank))
                layer.r[adapter] = target_rank
    for _, layer in layers:
        dtype = layer.base_layer.weight.dtype
        for adapter, s in layer.scaling.items():
            layer.scaling[adapter] = B.xp.asarray(s, dtype=dtype)  # 0-d: a swap writes into it
    if target_rank is None or config is None:
        return
    for c in (config.values() if isinstance(config, dict) else [config]):
        c.r = target_rank
        c.rank_pattern = {key: target_rank for key in c.rank_pattern}


def _padded(array, shape):
    """``array`` in the leading corner of zeros of ``shape``."""
    out = B.xp.zeros(shape, dtype=array.dtype)
    out[: array.shape[0], : array.shape[1]] = array
    return out


def hotswap_adapter(model: PeftModel, model_name_or_path, adapter_name: str) -> None:
    """Replace adapter ``adapter_name``'s weights and scalings by those of the adapter saved in
    the folder ``model_name_or_path`` (PEFT's files), in place (module docstring)."""
    config, header = _read(model_name_or_path, is_trainable=False)
    if adapter_name not in model.peft_config:
        raise ValueError(f"no adapter named {adapter_name!r} to swap; adapters: {sorted(model.peft_config)}")
    check_hotswap_configs_compatible(model.peft_config[adapter_name], config)
    _check_swappable(model, adapter_name, set(header.tensors), _lora_weights(model, adapter_name))  # before reading data
    path = Path(model_name_or_path) / WEIGHTS_NAME
    tensors = load_checked(path, {k: info.shape for k, info in header.tensors.items()}, header=header,
                           implied="its own header", what="the new adapter")
    hotswap_adapter_from_state_dict(model, tensors, adapter_name, config)


def _lora_weights(model: PeftModel, adapter_name: str) -> dict:
    """``{PEFT file key: live array}`` of the adapter's A and B (not its biases or modules_to_save copies)."""
    return {k: v for k, v in model.base_model.adapter_state_dict(adapter_name).items() if _split_key(k)[1]}


def _check_swappable(model: PeftModel, adapter_name: str, keys: set, live: dict) -> None:
    """Refuse, before anything changes, a merged adapter and keys the adapter there lacks."""
    if any(adapter_name in m.merged_adapters for _, m in _lora_layers(model)):
        raise ValueError(f"Cannot hot-swap adapter '{adapter_name}' because it is currently merged into the base "
                         "weights. Please unmerge the adapter first by calling `peft_model.unmerge_adapter()`; "
                         "unmerging after a swap of merged weights would otherwise corrupt them.")
    unexpected = sorted(keys - set(live))
    if unexpected:
        raise RuntimeError(f"Hot swapping the adapter did not succeed, unexpected keys found: {', '.join(unexpected)}.")


@no_grad()
def hotswap_adapter_from_state_dict(model: PeftModel, state_dict: dict, adapter_name: str, config: LoraConfig) -> None:
    """Write ``state_dict`` -- ``{PEFT file key: array}``, as an adapter file holds it -- into
    adapter ``adapter_name``, with ``config``'s scalings (module docstring's rules)."""
    live = _lora_weights(model, adapter_name)
    _check_swappable(model, adapter_name, set(state_dict), live)
    layers = dict(_lora_layers(model))
    plan = []  # (layer name, layer, which, new array): checked in full before the first write
    for key, new in state_dict.items():
        module_name, which = _split_key(key)
        layer = layers[module_name]
        old, new = live[key], B.xp.asarray(new)
        fixed = 0 if which == "lora_B" else 1  # the dimension that is not the rank: out for B, in for A
        if new.ndim != 2 or new.shape[fixed] != old.shape[fixed]:
            raise ValueError(f"Incompatible shapes found for LoRA weights {key}: {tuple(old.shape)} vs {tuple(new.shape)}")
        plan.append((module_name, layer, which, new))
    for key in set(live) - set(state_dict):  # layers the new adapter leaves alone: no update there
        live[key][...] = 0
    for module_name, layer, which, new in plan:
        _set_scaling(layer, adapter_name, config, module_name)
        _write(layer, adapter_name, which, new)


def _split_key(key: str) -> tuple:
    """``base_model.model.<module>.lora_A.weight`` -> (``<module>``, ``"lora_A"``); (None, None) otherwise."""
    name = key.removeprefix("base_model.model.")
    for which, suffix in (("lora_A", ".lora_A.weight"), ("lora_B", ".lora_B.weight")):
        if name.endswith(suffix):
            return name[: -len(suffix)], which
    return None, None


def _set_scaling(layer: LoRALinear, adapter_name: str, config: LoraConfig, module_name: str) -> None:
    r, alpha = config.rank_and_alpha(module_name)
    scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
    layer.lora_alpha[adapter_name] = alpha
    current = layer.scaling[adapter_name]
    if hasattr(current, "shape"):  # an array (prepare_model_for_compiled_hotswap): written in place
        current[...] = scaling
    else:
        layer.scaling[adapter_name] = scaling


def _write(layer: LoRALinear, adapter_name: str, which: str, new) -> None:
    """Copy ``new`` into the parameter: in place when it fits (zero-padded), else as a new array."""
    p = getattr(layer, which)[adapter_name].weight
    new = new.astype(p.dtype)
    if all(n <= o for n, o in zip(new.shape, p.shape)):
        p.data[...] = 0
        p.data[tuple(slice(0, n) for n in new.shape)] = new
    else:  # a larger rank: the arrays grow (PEFT swaps the tensors)
        p.data = new.copy()
    if which == "lora_A":
        layer.r[adapter_name] = p.shape[0]


__all__ = ["hotswap_adapter", "hotswap_adapter_from_state_dict", "prepare_model_for_compiled_hotswap",
           "check_hotswap_configs_compatible"]
