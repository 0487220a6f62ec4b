"""Batched greedy decoding: prompts of different lengths decoded together, each row as if alone.

``generate`` (``GenerationMixin`` in gpt.py) continues a (B, T) block of prompts of one
length. Real prompts differ in length -- the E2E test set's meaning representations run from
about 50 to 170 bytes -- and decoding them one by one spends every step on 1-row matrix
products. ``greedy_decode`` decodes them in batches:

1. **left padding**: each prompt is right-aligned in a (B, T_max) block, so every row's next
   token is read from the last column and one forward step serves all rows;
2. **the attention mask** (Hugging Face's ``attention_mask``: 1 for a real token, 0 for padding)
   keeps real tokens from attending to padding and gives each token the position it has alone --
   GPT's learned position, LLaMA's RoPE angle (``padding_mask`` in gpt.py);
3. **greedy steps through a KVCache**: the next token is the argmax; a row stops at
   ``stop_token`` (not returned) or after ``max_new_tokens``, and leaves the batch
   (``KVCache.select``), so one long row does not keep the finished ones computing.

Prompts are grouped by length (shortest first) so that a batch pads little. Any model with the
forward ``model(idx, kv_cache=..., attention_mask=...) -> (logits, loss)`` works: GPT,
LlamaForCausalLM, and a ``PeftModel`` of any method (prefix and prompt tuning put their virtual
tokens in front of the mask). Each row's tokens equal those of decoding it alone, up to float
rounding in the logits (a padded row's attention sums include exact zeros, which BLAS may add
in another order): ``tests/test_decoding.py`` checks it on GPT and LLaMA, with and without LoRA.

This is greedy decoding only. The LoRA paper decoded E2E with beam search (width 10, length
penalty 0.9, no repeated 4-gram), which finds likelier sequences than the argmax path.
"""

from __future__ import annotations

import numpy

from minilora import backend
from minilora.models.gpt import KVCache, sample_next
from minilora.tensor import no_grad

PAD_TOKEN = 0  # what fills the left padding: any valid id, since the mask hides it


@no_grad()
def greedy_decode(model, prompts, max_new_tokens: int, stop_token: int | None = None, batch_size: int = 32,
                  row_kwargs: dict | None = None) -> list:
    """The greedy continuation of each prompt, as a list of token-id lists, in the prompts' order.

    ``prompts``: sequences of token ids (``bytes`` work: a byte is its id), each non-empty.
    ``max_new_tokens``: the length cap; the longest prompt of a batch plus it must fit the
    model's context. ``stop_token``: a row ends when it produces this id, which is not returned.
    ``batch_size``: rows decoded together. ``row_kwargs``: forward arguments with one entry per
    prompt, kept in step with the rows (e.g. ``{"adapter_names": [...]}`` for a ``PeftModel``'s
    mixed batch). Runs in eval mode and restores the mode afterwards.
    """
    rows = [numpy.frombuffer(bytes(p), dtype=numpy.uint8).astype(numpy.int64) if isinstance(p, (bytes, bytearray))
            else numpy.asarray(p) for p in prompts]
    for i, row in enumerate(rows):
        if row.ndim != 1 or row.size == 0 or row.dtype.kind not in "iu":
            raise ValueError(f"greedy_decode: prompt {i} must be a non-empty 1-D sequence of token ids, "
                             f"got dtype {row.dtype} and shape {row.shape}")
    for name, value, low in (("max_new_tokens", max_new_tokens, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"greedy_decode: {name} must be an int >= {low}, got {value!r}")
    row_kwargs = dict(row_kwargs or {})
    for name, values in row_kwargs.items():
        if len(values) != len(rows):
            raise ValueError(f"greedy_decode: row_kwargs[{name!r}] has {len(values)} entries for {len(rows)} prompts")
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: little padding
    out = [None] * len(rows)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            kwargs = {name: [values[i] for i in chunk] for name, values in row_kwargs.items()}
            for i, tokens in zip(chunk, _decode_batch(model, [rows[i] for i in chunk], max_new_tokens, stop_token, kwargs)):
                out[i] = tokens
    finally:
        model.train(was_training)
    return out


def _decode_batch(model, prompts: list, max_new_tokens: int, stop_token, kwargs: dict) -> list:
    """Greedy continuations of one batch of prompts (see ``greedy_decode``)."""
    T = max(len(p) for p in prompts)
    ids = numpy.full((len(prompts), T), PAD_TOKEN, dtype=numpy.int64)  # (B, T), left-padded
    mask = numpy.zeros((len(prompts), T), dtype=numpy.int64)  # (B, T): 1 = a real token
    for b, p in enumerate(prompts):
        ids[b, T - len(p):], mask[b, T - len(p):] = p, 1
    generated = [[] for _ in prompts]
    live = numpy.arange(len(prompts))  # the rows still decoding (indices into ``prompts``)
    cache = KVCache()
    if max_new_tokens == 0:
        return generated
    logits, _ = model(ids, kv_cache=cache, attention_mask=mask, **kwargs)  # prefill: (B, [virtual +] T, V)
    for step in range(max_new_tokens):
        next_ids = backend.to_numpy(sample_next(logits.data[:, -1, :], 0.0, None, None))[:, 0]  # (live,): the argmax
        going = next_ids != stop_token if stop_token is not None else numpy.ones(len(live), dtype=bool)
        for row, token in zip(live[going], next_ids[going]):
            generated[row].append(int(token))
        if step + 1 == max_new_tokens or not going.any():
            break
        if not going.all():  # finished rows leave the batch, their cache rows with them
            keep = numpy.flatnonzero(going)
            live, mask, next_ids = live[keep], mask[keep], next_ids[keep]
            cache.select(backend.xp.asarray(keep))
            kwargs = {name: [values[j] for j in keep] for name, values in kwargs.items()}
        mask = numpy.concatenate([mask, numpy.ones((len(live), 1), dtype=mask.dtype)], axis=1)  # (live, S + 1)
        logits, _ = model(next_ids[:, None], kv_cache=cache, attention_mask=mask, **kwargs)  # (live, 1, V)
    return generated
