"""What the BERT tests share: a tiny random transformers BERT and padded batches.

``test_bert.py``, ``test_bert_peft.py`` and ``test_bert_real.py`` import it (a plain module, as
``peft_helpers.py`` is); each imports torch with ``pytest.importorskip`` first.
"""

import numpy as np
import torch
import transformers

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=20, type_vocab_size=2)


def tiny_hf(cls_name="BertModel", seed=0, dtype=torch.float64, num_labels=3):
    """A transformers BERT with every parameter moved off its init (eval mode, eager attention)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(**TINY, num_labels=num_labels, attn_implementation="eager")
    model = getattr(transformers, cls_name)(config).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def padded_batch(lengths, T=None, seed=0):
    """ids, token types and mask (B, T) for rows of the given lengths, padded with [PAD] = 0."""
    rng = np.random.default_rng(seed)
    T = T or max(lengths)
    ids = rng.integers(1, TINY["vocab_size"], size=(len(lengths), T))
    types = rng.integers(0, 2, size=(len(lengths), T))
    mask = (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    return ids * mask, types * mask, mask


def torch_inputs(ids, types, mask):
    return dict(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types), attention_mask=torch.tensor(mask))
