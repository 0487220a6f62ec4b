"""LoRA+: a larger learning rate for B than for A.

    Hayou, Ghosh, Yu (2024). "LoRA+: Efficient Low Rank Adaptation of Large Models."
    ICML 2024, arXiv:2402.12354.

In h = W x + s B A x, A maps the input (width n) down to r numbers and B maps them back
up. As the width n grows, the paper shows (its sec. 3, in the infinite-width limit) that
one learning rate for both cannot be right: a rate that keeps A's update stable leaves B's
update vanishing, so feature learning is inefficient. The fix costs nothing: give B the
rate λ η, with λ = ``loraplus_lr_ratio`` >> 1 (the paper suggests 2^4 for most tasks).

``create_loraplus_optimizer`` is PEFT's factory (``peft.optimizers.create_loraplus_optimizer``),
group for group: the optimizer gets four parameter groups, in this order --

    A            every trainable matrix that is not a B (lora_A, and 2-D modules_to_save copies)   lr,          loraplus_weight_decay
    embedding    the A and B of a LoRA adapter on an Embedding layer                                loraplus_lr_embedding (1e-6), loraplus_weight_decay
    B            lora_B, and every trainable 1-D parameter (DoRA's magnitude, biases ...)          lr · ratio,  loraplus_weight_decay
    B, no decay  those of them that are biases or sit in a LayerNorm                                lr · ratio,  weight decay 0

-- so a weight_decay passed in for the optimizer is overridden by every group (PEFT's rule:
set ``loraplus_weight_decay``). Each trainable parameter is in exactly one group.
``docs/loraplus.md`` derives the ratio.
"""

from __future__ import annotations

from minilora import nn


def decay_parameter_names(model: nn.Module) -> set:
    """The names of the parameters weight decay applies to by transformers' rule (``get_parameter_names``
    with its LayerNorm list): every parameter outside a LayerNorm whose name does not contain "bias"."""
    in_layer_norm = {f"{m_name}.{p_name}" if m_name else p_name
                     for m_name, m in model.named_modules() if isinstance(m, nn.LayerNorm)
                     for p_name, _ in m.named_parameters()}
    return {name for name, _ in model.named_parameters() if name not in in_layer_norm and "bias" not in name}


def create_loraplus_optimizer(model: nn.Module, optimizer_cls, *, lr: float, loraplus_lr_ratio: float, **kwargs):
    """``optimizer_cls`` (e.g. ``minilora.optim.AdamW``) over ``model``'s trainable parameters in
    LoRA+'s four groups (module docstring). ``kwargs``: ``loraplus_weight_decay`` (0.0),
    ``loraplus_lr_embedding`` (1e-6), and the optimizer's own arguments (betas, eps ...)."""
    if not loraplus_lr_ratio > 0 or not lr >= 0:
        raise ValueError(f"create_loraplus_optimizer: lr must be >= 0 and loraplus_lr_ratio > 0, got lr={lr!r}, "
                         f"loraplus_lr_ratio={loraplus_lr_ratio!r} (the paper takes ratios >= 1)")
    decay = decay_parameter_names(model)
    groups = {"A": [], "embedding": [], "B": [], "B_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if ".lora_embedding_A." in name or ".lora_embedding_B." in name:  # a LoRA Embedding layer's pair
            groups["embedding"].append(p)
        elif "lora_B" in name or p.ndim == 1:
            groups["B" if name in decay else "B_no_decay"].append(p)
        else:
            groups["A"].append(p)
    if not any(groups.values()):
        raise ValueError("create_loraplus_optimizer: the model has no trainable parameter")
    weight_decay = kwargs.pop("loraplus_weight_decay", 0.0)
    lr_embedding = kwargs.pop("loraplus_lr_embedding", 1e-6)
    return optimizer_cls([
        {"params": groups["A"], "weight_decay": weight_decay, "lr": lr},
        {"params": groups["embedding"], "weight_decay": weight_decay, "lr": lr_embedding},
        {"params": groups["B"], "weight_decay": weight_decay, "lr": lr * loraplus_lr_ratio},
        {"params": groups["B_no_decay"], "weight_decay": 0.0, "lr": lr * loraplus_lr_ratio},
    ], lr=lr, **kwargs)


__all__ = ["create_loraplus_optimizer"]
