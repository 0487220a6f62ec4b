"""Prefix tuning: P trained keys and values in front of every layer's attention, the model frozen.

    Li, Liang (2021). "Prefix-Tuning: Optimizing Continuous Prompts for
    Generation." ACL. arXiv:2101.00190.

Prompt tuning trains P input vectors; prefix tuning goes one step further and
trains the *activations* of P virtual tokens in every layer (the paper's sec. 4.2
sets h_i = P_θ[i, :] for i in the prefix). In a transformer the only way the
real tokens see earlier positions is through attention's keys and values, so the
prefix is P keys and P values per layer and head. In layer l, head h:

    K' = [P_k^(l,h); K],   V' = [P_v^(l,h); V]           P_k, P_v: (P, hs) trained
    head = softmax(Q K'^T / sqrt(hs)) V'                   Q, K, V: (T, hs) from the frozen weights

and the real tokens take positions P..P+T-1 -- exactly what a ``KVCache`` holding
P earlier positions does, so the prefix is passed to ``GPT.forward`` as one
(it is Hugging Face's ``past_key_values``). The parameters, in PEFT's layout, are
one table of P rows, each row holding every layer's key and value for that
virtual token:

    prefix: (P, 2 L C) = (P, [layer 0 key | layer 0 value | layer 1 key | ... ]),   C = n_head · hs

that is P · 2 · L · C parameters. Training that table directly is unstable (the
paper's sec. 4.3), so Li & Liang reparameterise it through an MLP,
P_θ = MLP(P'_θ) with a smaller P'_θ; PEFT's ``prefix_projection=True`` is

    prefix = Linear(H -> 2 L C)(tanh(Linear(C -> H)(E))),   E: (P, C) trained with the MLP

(H = ``encoder_hidden_size``, default C), with P C + C H + H + H 2LC + 2LC parameters.
After training only the prefix is needed: PEFT saves the MLP's *output* (P, 2LC)
as ``prompt_embeddings``, and loads it for inference into a plain (P, 2LC) table
-- the MLP is gone, so such a file cannot be trained further.

Derivation, counts and a comparison with prompt tuning: ``docs/prefix_tuning.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minilora import backend as B
from minilora import nn
from minilora.models.gpt import KVCache
from minilora.peft.prompt_learning import PromptLearningConfig, PromptLearningModel, input_shape


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """PEFT's ``PrefixTuningConfig``: its fields, names and defaults (the shared ones in ``PromptLearningConfig``)."""

    encoder_hidden_size: int | None = None  # H, the MLP's hidden width with prefix_projection; None: token_dim
    prefix_projection: bool = False  # True: the prefix is an MLP of a (P, C) table (Li & Liang's reparameterisation)
    init_weights: str | None = None  # None: random (N(0, 1) table, nn.Linear's init); "zero": a prefix of zeros
    peft_type: str = field(default="PREFIX_TUNING", init=False)

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.prefix_projection, bool):
            raise ValueError(f"PrefixTuningConfig.prefix_projection must be True or False, got {self.prefix_projection!r}")
        H = self.encoder_hidden_size
        if H is not None and (not isinstance(H, int) or isinstance(H, bool) or H < 1):
            raise ValueError(f"PrefixTuningConfig.encoder_hidden_size must be a positive int or None (= token_dim), got {H!r}")
        if self.init_weights not in (None, "zero"):
            raise ValueError(f"PrefixTuningConfig.init_weights must be None (random) or 'zero', got {self.init_weights!r}")


class PrefixEncoder(nn.Module):
    """Every layer's keys and values for the P virtual tokens, (P, 2 L C), as PEFT's ``PrefixEncoder``.

    Without projection (or when loaded for inference) it is one table; with it, a
    (P, C) table sent through ``transform`` = Linear(C, H) -> Tanh -> Linear(H, 2 L C).
    """

    def __init__(self, config: PrefixTuningConfig, dtype):
        super().__init__()
        P, C, L = config.num_virtual_tokens, config.token_dim, config.num_layers
        H = config.encoder_hidden_size
        self.prefix_projection = config.prefix_projection and not config.inference_mode
        if self.prefix_projection:
            self.embedding = nn.Embedding(P, C, dtype=dtype)  # E (P, C)
            self.transform = nn.Sequential(nn.Linear(C, H, dtype=dtype), nn.Tanh(), nn.Linear(H, L * 2 * C, dtype=dtype))
            if config.init_weights == "zero":
                nn.init.zeros_(self.transform[2].weight)
                nn.init.zeros_(self.transform[2].bias)
        else:
            self.embedding = nn.Embedding(P, L * 2 * C, dtype=dtype)  # the prefix itself (P, 2 L C)
            if config.init_weights == "zero":
                nn.init.zeros_(self.embedding.weight)

    def forward(self):
        # PEFT looks up ids 0..P-1 in the table: that is the table itself
        if self.prefix_projection:
            return self.transform(self.embedding.weight)  # (P, C) -> (P, H) -> (P, 2 L C)
        return self.embedding.weight  # (P, 2 L C)

    def load_prompt_embeddings(self, array) -> None:
        if self.prefix_projection:
            raise ValueError(
                "this prefix-tuning adapter was saved with prefix_projection=True: the file holds the MLP's output, "
                "the (P, 2 L C) prefix, not the (P, C) table and MLP that produced it, so it cannot be trained further. "
                "Load it with is_trainable=False, or train a new adapter from it with prefix_projection=False."
            )
        self.embedding.weight.data = B.xp.asarray(array).astype(self.embedding.weight.dtype)


class PrefixTuningModel(PromptLearningModel):
    """The frozen GPT with a trained key/value prefix in every layer."""

    method = "prefix tuning"

    def model_sizes(self, config: PrefixTuningConfig) -> dict:
        sizes = super().model_sizes(config)
        if config.encoder_hidden_size is None:
            sizes["encoder_hidden_size"] = sizes["token_dim"]  # PEFT's default, written in the saved config
        return sizes

    def make_encoder(self, config: PrefixTuningConfig) -> PrefixEncoder:
        return PrefixEncoder(config, dtype=self.model.transformer.wte.weight.dtype)

    def get_prompt(self, batch_size: int) -> list:
        """The active prefix as L pairs (keys, values), each (B, n_head, P, hs): PEFT's ``get_prompt``.

        PEFT views the (B, P, 2 L C) output as (B, P, 2L, nh, hs), permutes it to
        (2L, B, nh, P, hs) and splits it into layers of (key, value). The same here, the
        batch added last (every row shares one prefix, so the gradients of the rows add up).
        """
        config = self.active_peft_config
        P, L, nh = config.num_virtual_tokens, config.num_layers, config.num_attention_heads
        hs = config.token_dim // nh
        prefix = self.prompt_encoder[self.active_adapter]()  # (P, 2 L C)
        kv = prefix.view(P, 2 * L, nh, hs).permute(1, 2, 0, 3)  # (2L, nh, P, hs): layer l's key at 2l, value at 2l+1
        shape = (batch_size, nh, P, hs)
        return [(kv[2 * layer].unsqueeze(0).expand(shape), kv[2 * layer + 1].unsqueeze(0).expand(shape))  # (B, nh, P, hs)
                for layer in range(L)]

    def forward(self, idx=None, targets=None, *, inputs_embeds=None, kv_cache=None, attention_mask=None):
        """Logits (B, T, V) of the real tokens and the loss against ``targets`` (as ``GPT.forward``).

        The prefix goes in as the model's KVCache, so the tokens take positions P..P+T-1.
        A ``kv_cache`` passed in is filled with the prefix if empty (then kept for the next
        generation step), and used as it is if not: it holds the prefix already.
        ``attention_mask`` covers the caller's tokens only; the prefix is always attended.
        """
        batch, T = input_shape(idx, inputs_embeds)
        attention_mask = self.virtual_mask(attention_mask, batch)
        if self.disabled or (kv_cache is not None and len(kv_cache)):
            return self.model(idx, targets, inputs_embeds=inputs_embeds, kv_cache=kv_cache, attention_mask=attention_mask)
        self.check_length(T)
        cache = kv_cache if kv_cache is not None else KVCache()  # a fresh one each call: forward extends it
        for layer, (k, v) in enumerate(self.get_prompt(batch)):
            cache.update(layer, k, v)  # the empty cache takes the prefix as its first P positions
        return self.model(idx, targets, inputs_embeds=inputs_embeds, kv_cache=cache, attention_mask=attention_mask)


__all__ = ["PrefixTuningConfig", "PrefixEncoder", "PrefixTuningModel"]
