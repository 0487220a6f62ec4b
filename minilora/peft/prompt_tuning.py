"""Prompt tuning: P trained embeddings in front of the input, the model frozen.

    Lester, Al-Rfou, Constant (2021). "The Power of Scale for Parameter-Efficient
    Prompt Tuning." EMNLP. arXiv:2104.08691.

The model reads a sequence of token embeddings X = [e(x_1); ...; e(x_T)] (T x C).
Prompt tuning prepends P vectors that are not the embedding of any token and
trains only them (the paper's section 2):

    X' = [θ_1; ...; θ_P; e(x_1); ...; e(x_T)]          (P + T) x C,   θ: P x C trained

    maximise  log p(Y | [θ; X])   over θ alone

so the adapter has P · C parameters -- for GPT-2 small with P = 20, 15,360, about
0.01% of the model. The virtual tokens take positions 0..P-1 and the real ones
P..P+T-1; every real token attends to them through the unchanged attention. The
paper's finding is that this closes the gap to full fine-tuning as models grow.

As Hugging Face PEFT does, the logits cover all P + T positions (the first P are
the virtual tokens' predictions) and the targets get P columns of -100 in front,
so the virtual positions are not scored. The initialisation follows PEFT's
``prompt_tuning_init``: "RANDOM" (N(0, 1), ``nn.Embedding``'s default), "TEXT"
(the embeddings of a text's tokens, repeated or cut to P), "SAMPLE_VOCAB" (the
embeddings of P random tokens). minilora's tokens are UTF-8 bytes
(``minilora.data.ByteTokenizer``), so TEXT uses the text's bytes, where PEFT
loads a Hugging Face tokenizer by name.

Why it cannot be merged, and how it compares with prefix tuning and LoRA:
``docs/prompt_tuning.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from minilora import backend as B
from minilora import nn
from minilora.peft.prompt_learning import PromptLearningConfig, PromptLearningModel, input_shape
from minilora.tensor import Tensor, cat

# What minilora writes as ``tokenizer_name_or_path`` for TEXT init: PEFT requires a name there,
# and never loads it when it reads the adapter back (the saved embeddings replace the init).
BYTE_TOKENIZER = "minilora.data.ByteTokenizer"
INITS = ("RANDOM", "TEXT", "SAMPLE_VOCAB")


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """PEFT's ``PromptTuningConfig``: its fields, names and defaults (the shared ones in ``PromptLearningConfig``)."""

    prompt_tuning_init: str = "RANDOM"  # "RANDOM" N(0, 1) | "TEXT" a text's token embeddings | "SAMPLE_VOCAB" random tokens'
    prompt_tuning_init_text: str | None = None  # the text for "TEXT"
    tokenizer_name_or_path: str | None = None  # for "TEXT": minilora's byte tokenizer (None means it)
    tokenizer_kwargs: dict | None = None  # PEFT's AutoTokenizer arguments; the byte tokenizer takes none
    peft_type: str = field(default="PROMPT_TUNING", init=False)

    def validate(self) -> None:
        super().validate()
        init = str(getattr(self.prompt_tuning_init, "value", self.prompt_tuning_init))  # PEFT's enum or a str
        if init not in INITS:
            raise ValueError(f"PromptTuningConfig.prompt_tuning_init must be one of {', '.join(INITS)}, got {self.prompt_tuning_init!r}")
        self.prompt_tuning_init = init
        if init == "TEXT":
            if not self.prompt_tuning_init_text:
                raise ValueError("PromptTuningConfig: prompt_tuning_init='TEXT' needs a non-empty prompt_tuning_init_text")
            if self.tokenizer_name_or_path is None:
                self.tokenizer_name_or_path = BYTE_TOKENIZER  # so that PEFT, which insists on a name, reads the file
        elif self.tokenizer_kwargs:
            raise ValueError(f"PromptTuningConfig.tokenizer_kwargs is for prompt_tuning_init='TEXT' only, got {self.tokenizer_kwargs!r}")


class PromptEmbedding(nn.Module):
    """The trained prompt θ (P, C), as PEFT's ``PromptEmbedding``: an ``nn.Embedding`` of P rows."""

    def __init__(self, config: PromptTuningConfig, word_embeddings: nn.Embedding):
        super().__init__()
        P, C = config.num_virtual_tokens, config.token_dim
        self.embedding = nn.Embedding(P, C, dtype=word_embeddings.weight.dtype)  # N(0, 1): "RANDOM"
        if config.inference_mode:
            return  # the saved prompt is about to replace whatever init (PEFT skips it too)
        if config.prompt_tuning_init == "TEXT":
            ids = text_ids(config.prompt_tuning_init_text, P, word_embeddings.num_embeddings)
        elif config.prompt_tuning_init == "SAMPLE_VOCAB":
            ids = B.rng().integers(0, word_embeddings.num_embeddings, size=P)
        else:
            return
        # Starting from real tokens' embeddings puts θ where the model expects its inputs to
        # lie; Lester et al. (sec. 3.2) find it beats random init for all but the largest models.
        self.embedding.weight.data = word_embeddings.weight.data[B.xp.asarray(ids)].copy()  # (P, C)

    def forward(self) -> Tensor:
        # PEFT looks up ids 0..P-1 in the table: that is the table itself
        return self.embedding.weight  # (P, C)

    def load_prompt_embeddings(self, array) -> None:
        self.embedding.weight.data = B.xp.asarray(array).astype(self.embedding.weight.dtype)


def text_ids(text: str, P: int, vocab_size: int) -> list:
    """The text's token ids, repeated and cut to exactly P (PEFT's rule), one token per UTF-8 byte.

    These are ``minilora.data.ByteTokenizer``'s ids; it is not imported because the data
    layer sits above this one (docs/architecture.md)."""
    ids = list(text.encode("utf-8"))
    too_big = sorted({i for i in ids if i >= vocab_size})
    if too_big:
        raise ValueError(
            f"prompt_tuning_init_text: byte ids {too_big} are outside the model's vocabulary of {vocab_size} tokens "
            f"(minilora's tokens are UTF-8 bytes, 0..255)"
        )
    return (ids * math.ceil(P / len(ids)))[:P]


class PromptTuningModel(PromptLearningModel):
    """The frozen GPT with a trained prompt in front of every input."""

    method = "prompt tuning"

    def make_encoder(self, config: PromptTuningConfig) -> PromptEmbedding:
        if config.prompt_tuning_init == "TEXT" and not config.inference_mode:
            if config.tokenizer_name_or_path != BYTE_TOKENIZER or config.tokenizer_kwargs:
                raise ValueError(
                    f"PromptTuningConfig: TEXT init uses minilora's byte tokenizer; got tokenizer_name_or_path="
                    f"{config.tokenizer_name_or_path!r}, tokenizer_kwargs={config.tokenizer_kwargs!r} "
                    f"(accepted: None or {BYTE_TOKENIZER!r}, and no kwargs)"
                )
        return PromptEmbedding(config, self.model.transformer.wte)

    def forward(self, idx=None, targets=None, *, inputs_embeds=None, kv_cache=None, attention_mask=None):
        """Logits (B, P+T, V) -- the first P rows the virtual positions' -- and the loss, as PEFT returns them.

        ``targets`` (B, T) are shifted as in ``GPT.forward``; the virtual positions get -100.
        A non-empty ``kv_cache`` already holds the prompt (generation after the first step):
        the input then goes to the model as it is. ``attention_mask`` covers the caller's tokens
        only; the virtual tokens are always attended.
        """
        batch, T = input_shape(idx, inputs_embeds)
        attention_mask = self.virtual_mask(attention_mask, batch)
        if self.disabled or (kv_cache is not None and len(kv_cache)):
            return self.model(idx, targets, inputs_embeds=inputs_embeds, kv_cache=kv_cache, attention_mask=attention_mask)
        P = self.check_length(T)
        if inputs_embeds is None:
            ids = B.xp.asarray(idx.data if isinstance(idx, Tensor) else idx)
            inputs_embeds = self.model.transformer.wte(ids)  # (B, T, C)
        prompt = self.prompt_encoder[self.active_adapter]()  # (P, C)
        prompt = prompt.unsqueeze(0).expand(batch, P, prompt.shape[1])  # (B, P, C): one prompt for every row
        x = cat([prompt, inputs_embeds], dim=1)  # (B, P+T, C)
        if targets is not None:
            targets = B.xp.asarray(targets.data if isinstance(targets, Tensor) else targets)
            if targets.shape != (batch, T):
                raise ValueError(f"prompt tuning: targets must have the input's shape (B, T) = {(batch, T)}, got {targets.shape}")
            ignore = B.xp.full((batch, P), -100, dtype=targets.dtype)
            targets = B.xp.concatenate([ignore, targets], axis=1)  # (B, P+T): the virtual positions predict nothing
        return self.model(inputs_embeds=x, targets=targets, kv_cache=kv_cache, attention_mask=attention_mask)


__all__ = ["PromptTuningConfig", "PromptEmbedding", "PromptTuningModel", "BYTE_TOKENIZER"]
