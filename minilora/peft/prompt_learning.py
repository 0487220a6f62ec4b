"""What prompt tuning and prefix tuning share: virtual tokens in front of the input.

Both methods leave every weight of the model frozen and untouched. They train a
few vectors that the model treats as if they were ``P = num_virtual_tokens``
tokens standing before the real ones:

    prompt tuning  (Lester et al., 2021)   P trained input embeddings          (P, C)
    prefix tuning  (Li & Liang, 2021)      P trained keys and values per layer (P, 2 L C)

so the real tokens take positions P, P+1, ... and attend to the virtual ones.
Hugging Face PEFT calls these "prompt learning" methods and gives them one base
config (``PromptLearningConfig``) and one code path; this module is that common
part: the config fields, and a tuner (``PromptLearningModel``) that keeps one
"prompt encoder" per adapter and provides the tuner protocol of
``minilora/peft/model.py``. The method itself -- where the vectors enter the
forward pass -- is in ``prompt_tuning.py`` and ``prefix_tuning.py``.

Neither can be merged into the weights: the virtual tokens are extra rows of the
attention (keys and values the real tokens attend to), and no change of W_q, W_k,
W_v reproduces attention to positions that are not in the input.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

import numpy

from minilora import backend as B
from minilora import nn
from minilora.models.gpt import KVCache, sample_next
from minilora.tensor import Tensor, no_grad
from minilora.tuner import check_deletable, check_known, check_new_name


@dataclass
class PromptLearningConfig:
    """The fields PEFT's ``PromptLearningConfig`` has, with PEFT's names and defaults.

    The four sizes describe the model and are filled in from it when the adapter is
    created (as PEFT does); given explicitly, they must equal the model's.
    """

    num_virtual_tokens: int | None = None  # P, the number of virtual tokens (required: PEFT has no default either)
    token_dim: int | None = None  # C, the model's width (GPT's n_embd); None: taken from the model
    num_transformer_submodules: int | None = None  # 1 for a decoder-only model (2: encoder-decoder, not in minilora)
    num_attention_heads: int | None = None  # the model's n_head; None: taken from the model
    num_layers: int | None = None  # L, the model's n_layer; None: taken from the model
    modules_to_save: list | None = None  # PEFT's field; not supported here with prompt learning (must stay None)
    inference_mode: bool = False  # True: nothing is trainable (set when loading for inference)
    task_type: str | None = "CAUSAL_LM"  # PEFT applies the virtual tokens only for a task_type such as CAUSAL_LM
    base_model_name_or_path: str | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        name = type(self).__name__
        P = self.num_virtual_tokens
        if not isinstance(P, int) or isinstance(P, bool) or P < 1:
            raise ValueError(f"{name}.num_virtual_tokens must be a positive int (the number of virtual tokens), got {P!r}")
        for f in ("token_dim", "num_attention_heads", "num_layers", "num_transformer_submodules"):
            value = getattr(self, f)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name}.{f} must be a positive int or None (taken from the model), got {value!r}")
        if self.num_transformer_submodules not in (None, 1):
            raise ValueError(
                f"{name}.num_transformer_submodules={self.num_transformer_submodules!r}: 2 is for encoder-decoder "
                f"models; minilora's GPT is a decoder, so it must be 1 (or None)"
            )
        if self.modules_to_save:
            raise ValueError(f"{name}.modules_to_save={self.modules_to_save!r}: minilora supports modules_to_save with LoRA only")
        if self.task_type not in (None, "CAUSAL_LM"):
            raise ValueError(f"{name}.task_type must be 'CAUSAL_LM' (minilora's GPT is a causal LM), got {self.task_type!r}")


class PromptLearningModel(nn.Module):
    """The tuner for a prompt-learning method: the frozen model plus one prompt encoder per adapter.

    ``prompt_encoder[name]()`` returns the adapter's virtual-token vectors; subclasses
    say how they enter the forward pass (``forward``) and build the encoder
    (``make_encoder``). Everything else -- adapters, freezing, saving, generation --
    is here.
    """

    method = "prompt learning"  # the method's name, for messages

    def __init__(self, model: nn.Module, config: PromptLearningConfig, adapter_name: str = "default"):
        super().__init__()
        self.model = model
        self.prompt_encoder = nn.ModuleDict()  # adapter name -> encoder (PEFT's name)
        self.peft_config = {}
        self.active_adapter = adapter_name
        self.disabled = False  # True inside `with model.disable_adapter():`
        self.inject_adapter(adapter_name, config)

    @property
    def active_peft_config(self) -> PromptLearningConfig:
        return self.peft_config[self.active_adapter]

    def make_encoder(self, config: PromptLearningConfig) -> nn.Module:
        raise NotImplementedError

    # --- adding an adapter -------------------------------------------------------------

    def inject_adapter(self, adapter_name: str, config: PromptLearningConfig) -> None:
        """Check ``config`` against the model, fill in the model's sizes (as PEFT does), build the
        encoder, and freeze everything but it. Nothing is changed if a check fails."""
        check_new_name(self, adapter_name)
        config.validate()
        sizes = self.model_sizes(config)
        filled = dataclasses.replace(config, **sizes)  # the encoder is built from a filled-in copy ...
        encoder = self.make_encoder(filled)
        for key, value in sizes.items():  # ... and only once it exists is the caller's config filled in
            setattr(config, key, value)
        self.prompt_encoder[adapter_name] = encoder
        self.peft_config[adapter_name] = config
        self.set_adapter(self.active_adapter if self.active_adapter in self.peft_config else adapter_name)

    def model_sizes(self, config: PromptLearningConfig) -> dict:
        """The config's size fields as the model has them; an error names every field that disagrees."""
        gpt_config = getattr(self.model, "config", None)
        is_gpt = hasattr(self.model, "transformer") and all(
            hasattr(gpt_config, f) for f in ("n_embd", "n_layer", "n_head", "block_size"))
        if not is_gpt:
            raise TypeError(f"{self.method} needs a minilora GPT (with .config and .transformer), got {type(self.model).__name__}")
        sizes = {"token_dim": gpt_config.n_embd, "num_layers": gpt_config.n_layer,
                 "num_attention_heads": gpt_config.n_head, "num_transformer_submodules": 1}
        model_names = {"token_dim": "n_embd", "num_layers": "n_layer", "num_attention_heads": "n_head",
                       "num_transformer_submodules": "transformer submodules"}
        wrong = [f"{type(config).__name__}.{f}={getattr(config, f)} but the model's {model_names[f]} is {v}"
                 for f, v in sizes.items() if getattr(config, f) not in (None, v)]
        if wrong:
            raise ValueError(f"the {self.method} config does not fit this model: " + "; ".join(wrong))
        if config.num_virtual_tokens >= gpt_config.block_size:
            raise ValueError(
                f"num_virtual_tokens={config.num_virtual_tokens} leaves no room for a real token: the virtual tokens take "
                f"positions 0..{config.num_virtual_tokens - 1} of the model's block_size={gpt_config.block_size}"
            )
        return sizes

    # --- which adapter is used and trained -----------------------------------------------

    def set_adapter(self, adapter_name: str) -> None:
        """Use ``adapter_name``'s virtual tokens; train its encoder only (the model stays frozen)."""
        check_known(self, adapter_name)
        self.active_adapter = adapter_name
        for p in self.model.parameters():
            p.requires_grad_(False)
        for name, encoder in self.prompt_encoder.items():
            encoder.requires_grad_(name == adapter_name and not self.peft_config[name].inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        check_deletable(self, adapter_name)
        del self.prompt_encoder[adapter_name]
        del self.peft_config[adapter_name]

    @contextmanager
    def disable_adapter(self):
        """Inside the ``with`` block the model runs without virtual tokens: the base model."""
        self.disabled = True
        try:
            yield
        finally:
            self.disabled = False

    def mixed_batch(self, adapter_names):
        raise ValueError(f"adapter_names (one adapter per batch row) is not supported with {self.method}; "
                         f"use set_adapter() to pick the adapter for the whole batch")

    def check_length(self, T: int, what: str = "input tokens") -> int:
        """P, after checking that P virtual + T real tokens fit in the model's positions."""
        P, block_size = self.active_peft_config.num_virtual_tokens, self.model.config.block_size
        if P + T > block_size:
            raise ValueError(
                f"{self.method}: num_virtual_tokens={P} + {T} {what} = {P + T} exceed block_size={block_size} "
                f"(the real tokens take positions {P}..{P + T - 1}); use at most {block_size - P} in all"
            )
        return P

    def virtual_mask(self, attention_mask, batch: int):
        """The model's ``attention_mask`` for the caller's one: the caller's (B, T) covers its own
        tokens, and the P virtual tokens stand before them, attended by every row (PEFT prepends the
        same ones). None stays None."""
        if attention_mask is None or self.disabled:
            return attention_mask
        mask = B.to_numpy(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
        P = self.active_peft_config.num_virtual_tokens
        return numpy.concatenate([numpy.ones((batch, P), dtype=mask.dtype), mask], axis=1)  # (B, P+T)

    # --- merging is impossible ----------------------------------------------------------

    def _cannot_merge(self, *_, **__):
        raise NotImplementedError(
            f"{self.method} cannot be merged into the model's weights: its virtual tokens are extra positions "
            f"that every real token attends to, and no change of the weights reproduces attention to positions "
            f"that are not in the input. Keep the adapter, or use LoRA or IA3 if you need a merged model."
        )

    merge_adapter = merge_and_unload = _cannot_merge

    def add_weighted_adapter(self, *_, **__):
        raise NotImplementedError(f"add_weighted_adapter combines LoRA updates; {self.method} adapters are not "
                                  f"weight updates (train a new adapter, or use LoRA)")

    def unmerge_adapter(self) -> None:
        pass  # nothing is ever merged

    def unload(self) -> nn.Module:
        """The base model, as it was: prompt learning adds no layers and changes no weight."""
        return self.model

    # --- the adapter's weights, as PEFT saves them ------------------------------------------

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """``{"prompt_embeddings": (P, D) array}``: what the encoder produces, PEFT's one key.

        For prompt tuning and unprojected prefix tuning that is the trained table itself;
        for prefix tuning with ``prefix_projection`` it is the MLP's output -- the MLP is a
        training aid and is not saved (see ``prefix_tuning.py``)."""
        with no_grad():
            return {"prompt_embeddings": self.prompt_encoder[adapter_name]().data}

    @no_grad()
    def load_adapter_state_dict(self, adapter_name: str, tensors: dict) -> None:
        self.prompt_encoder[adapter_name].load_prompt_embeddings(tensors["prompt_embeddings"])

    # --- generation -------------------------------------------------------------------

    @no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> Tensor:
        """``GPT.generate`` with the virtual tokens in front: ids (B, T + max_new_tokens).

        The first forward fills a ``KVCache`` with the virtual tokens and the prompt; each
        later step passes one token and the cache, which already holds the virtual tokens
        (``forward`` adds them only to an empty cache)."""
        idx = B.xp.asarray(idx.data if isinstance(idx, Tensor) else idx)
        if idx.ndim != 2 or idx.dtype.kind not in "iu":
            raise ValueError(f"generate: idx must be integer token ids of shape (B, T), got {idx.dtype} {idx.shape}")
        if max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"generate: temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"generate: top_k must be a positive int or None, got {top_k}")
        if not self.disabled:
            self.check_length(idx.shape[1] + max_new_tokens, f"tokens ({idx.shape[1]} in the prompt + max_new_tokens={max_new_tokens})")
        rng = B.xp.random.default_rng(seed) if seed is not None else B.rng()
        was_training = self.training
        self.eval()
        try:
            cache, tokens = KVCache(), [idx]
            logits, _ = self(idx, kv_cache=cache)  # prefill: (B, [P +] T, V)
            for step in range(max_new_tokens):
                next_id = sample_next(logits.data[:, -1, :], temperature, top_k, rng)  # (B, 1)
                tokens.append(next_id)
                if step + 1 < max_new_tokens:
                    logits, _ = self(next_id, kv_cache=cache)  # (B, 1, V): positions continue after the prefix
        finally:
            self.train(was_training)
        return Tensor(B.xp.concatenate(tokens, axis=1))


def input_shape(idx, inputs_embeds) -> tuple:
    """(B, T) of the input: token ids (B, T) or embeddings (B, T, C), exactly one of them."""
    if (idx is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of idx (token ids) and inputs_embeds")
    x = idx if idx is not None else inputs_embeds
    shape = tuple(x.shape) if hasattr(x, "shape") else B.xp.asarray(x).shape
    if len(shape) != (2 if idx is not None else 3):
        raise ValueError(f"the input must be idx (B, T) or inputs_embeds (B, T, C), got shape {shape}")
    return shape[0], shape[1]
