"""``minilora.train.train``'s loop written again in PyTorch: what the reference runs of claim 5
train with, on every base (each base builds its transformers + PEFT model: ``reference_finetune``).

The same loop means: AdamW with the same betas and eps, weight decay on matrices only
(ndim >= 2), the warm-up + cosine schedule (``minilora.optim.warmup_cosine_lr`` through
``LambdaLR``), gradient clipping, and the batches of the same seed in the same order.
"""

from __future__ import annotations

import numpy as np

from minilora.optim import warmup_cosine_lr


def torch_train(model, config, batches, loss_of) -> list:
    """``minilora.train.train``'s loop in torch, on ``model``'s trainable parameters: AdamW with weight decay
    on matrices only, warm-up + cosine (``LambdaLR``), clipping, the batches of ``batches(rng)`` in the order
    of the same seed; ``loss_of(x, y)`` is the batch's loss tensor. Returns the training losses."""
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas, eps=1e-8)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine_lr(
        step, 1.0, config.warmup_steps, config.max_steps, config.min_lr_ratio))
    rng = np.random.default_rng(config.seed)  # the batch order of minilora.train.train
    losses = []
    for _ in range(config.max_steps):
        loss = loss_of(*batches(rng))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses
