"""DoRA: LoRA with the weight split into a magnitude and a direction.

    Liu, Wang, Yin, Molchanov, Wang, Cheng, Chen (2024).
    "DoRA: Weight-Decomposed Low-Rank Adaptation." ICML 2024, arXiv:2402.09353.

A weight is a magnitude times a direction, row by row (one row per output feature):
W = m ⊙ W / ||W||_c, with m = ||W||_c the norm of each row (the paper's "column-wise"
norm is over the rows of our (out, in) layout: PyTorch's Linear stores W^T of the
paper's W). DoRA trains m directly and lets LoRA move the direction (the paper's eq. 5):

    W' = m ⊙ (W + s B A) / ||W + s B A||_c          m: (out,),  s B A: LoRA's update ΔW

m starts at ||W||_c and B at zero, so W' = W at the start. Forming W' in every step
would cost a full (out, in) matrix per layer; PEFT rewrites the output instead, with
f = m / ||W + ΔW||_c (one factor per output feature):

    y' = f ⊙ (W x + ΔW x) + b = y + (f - 1) ⊙ (W x) + f ⊙ s B A x,     y = W x + b

which is ``dora_output`` below. The norm is treated as a constant in the backward pass
(paper sec. 4.3, as PEFT): gradients reach m through f and A, B through the LoRA
term only, so no (out, in) gradient is ever formed. ``LoRALinear`` (minilora/peft/lora.py)
calls into this module for each adapter made with ``LoraConfig(use_dora=True)``;
the derivation and the parameter count are in ``docs/dora.md``.
"""

from __future__ import annotations

from minilora import backend as B
from minilora import nn
from minilora.nn import functional as F
from minilora.tensor import Tensor


class DoraMagnitude(nn.Module):
    """The trained magnitude m, (out,). A module holding ``weight``, so that its name is PEFT's
    ``lora_magnitude_vector.<adapter>.weight`` (saved as ``...lora_magnitude_vector``)."""

    def __init__(self, norm):
        super().__init__()
        self.weight = nn.Parameter(norm)  # (out,): m = ||W + ΔW||_c, so that W' = W + ΔW at the start


def weight_norm(W, delta):
    """||W + ΔW||_c: the norm of each row of the (out, in) arrays, (out,). Plain arrays, no graph:
    the norm is a constant for the backward pass (paper sec. 4.3)."""
    return B.xp.linalg.norm(W + delta, axis=1)


def dora_output(layer, x: Tensor, adapter_name: str, y: Tensor) -> Tensor:
    """What DoRA adds to the base output y = x W^T + b, (..., out):

        (f - 1) ⊙ (x W^T) + f ⊙ s · x A^T B^T,        f = m / ||W + s B A||_c

    As in PEFT, dropout (when training with ``lora_dropout > 0``) is applied to x once, and
    that dropped-out x feeds both terms -- the W term is recomputed from it, so the update
    is f ⊙ (W + ΔW) dropout(x) - W dropout(x). Otherwise x W^T is y without the bias.
    """
    W = layer.base_layer.weight  # (out, in), frozen
    A = layer.lora_A[adapter_name].weight  # (r, in)
    Bw = layer.lora_B[adapter_name].weight  # (out, r)
    s = layer.scaling[adapter_name]
    m = layer.lora_magnitude_vector[adapter_name].weight  # (out,)
    norm = weight_norm(W.data, layer._delta_weight_data(adapter_name))  # (out,), constant
    f = m / Tensor(norm)  # (out,): gradient to m only
    dropout = layer.lora_dropout[adapter_name]
    if layer.training and not isinstance(dropout, nn.Identity):
        x = dropout(x)
        base = F.linear(x, W)  # (..., out): the frozen path on the dropped-out x, no bias
    else:
        bias = layer.base_layer.bias
        base = y - bias if bias is not None else y  # (..., out): x W^T, without recomputing it
    lora = F.linear(F.linear(x, A), Bw) * s  # (..., out): s x A^T B^T
    return (f - 1) * base + f * lora


def merged_weight(W, W_base, delta, m):
    """``(W', norm)``: W' = f ⊙ (W + ΔW) row by row, f = m / ||W_base + ΔW||_c.

    W is the weight as it is now; W_base the weight without any merged adapter (equal to
    W unless other adapters are merged already): the norm is always that of the adapter's
    own W + ΔW, as in the forward pass (PEFT's rule). The norm is returned because
    unmerging needs it and cannot recompute it from W'."""
    norm = weight_norm(W_base, delta)  # (out,)
    return (m / norm)[:, None] * (W + delta), norm


def unmerged_weight(W_merged, delta, m, norm):
    """The inverse of ``merged_weight``: W = W' / f - ΔW, f = m / norm (the norm kept at merge time)."""
    return W_merged / (m / norm)[:, None] - delta


def check_unmerge(m, adapter_name: str) -> None:
    """A zero in m made whole rows of the merged W zero: they cannot be divided back out."""
    if bool((m == 0).any()):
        rows = [int(i) for i in B.to_numpy(B.xp.nonzero(m == 0)[0])]
        raise ValueError(f"cannot unmerge DoRA adapter {adapter_name!r}: its magnitude is 0 in rows {rows}, "
                         "so the merge set those rows of W to zero and lost them")
