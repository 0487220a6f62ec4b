"""Plain NumPy versions of the fast kernels: read these first.

The kernels that training runs -- ``minilora.nn.functional`` (softmax, log_softmax,
cross_entropy, layer_norm, gelu, scaled_dot_product_attention) and the AdamW step in
``minilora.optim`` -- are blocked, threaded and in place, because a training step spends
its time there. Each is the same few lines of maths as the function of the same name
here, written as it is written in docs/autograd.md: whole arrays, no scratch buffers,
no threads. The backward functions are the derivative formulas themselves, not the
graph: ``*_backward(..., g)`` maps the gradient ``g`` of the output to the gradients
of the inputs.

tests/test_reference.py checks every fast kernel against its plain version here, in
float64, forward and backward, over shapes hypothesis draws. These functions work on
NumPy arrays (not Tensors) and build no graph.
"""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------------
# softmax, log_softmax, cross-entropy
# ---------------------------------------------------------------------------


def softmax(x, axis=-1):
    """``s_i = e^{x_i} / sum_j e^{x_j}``; subtracting the max first changes nothing but overflow."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(x, g, axis=-1):
    """``dx_i = s_i (g_i - sum_j g_j s_j)``: the Jacobian ``diag(s) - s s^T`` applied to ``g``."""
    s = softmax(x, axis)
    return s * (g - (g * s).sum(axis=axis, keepdims=True))


def log_softmax(x, axis=-1):
    """``log s_i = x_i - log sum_j e^{x_j}`` (the log-sum-exp taken around the max)."""
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def log_softmax_backward(x, g, axis=-1):
    """``dx_i = g_i - s_i sum_j g_j``."""
    return g - softmax(x, axis) * g.sum(axis=axis, keepdims=True)


def cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
    """``loss_n = -log softmax(logits_n)[target_n]`` for logits (N, C) and target (N,);
    rows whose target is ``ignore_index`` count for nothing, and the mean is over the rest."""
    n = np.arange(len(target))
    valid = target != ignore_index
    losses = -log_softmax(logits)[n, np.where(valid, target, 0)] * valid  # (N,)
    if reduction == "none":
        return losses
    return losses.sum() / valid.sum() if reduction == "mean" else losses.sum()


def cross_entropy_backward(logits, target, g, ignore_index=-100, reduction="mean"):
    """``dlogits_n = g (softmax(logits_n) - onehot(target_n))``, divided by the number of
    counted rows for the mean; zero for ignored rows. ``g`` is a scalar, or (N,) for 'none'."""
    n = np.arange(len(target))
    valid = target != ignore_index
    grad = softmax(logits)
    grad[n, np.where(valid, target, 0)] -= 1
    grad *= valid[:, None]
    if reduction == "none":
        return grad * g[:, None]
    return grad * g / valid.sum() if reduction == "mean" else grad * g


# ---------------------------------------------------------------------------
# layer norm
# ---------------------------------------------------------------------------


def layer_norm(x, weight, bias, eps=1e-5):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias``, over the last axis (Ba et al., 2016).
    The variance is the biased one (divided by n), as in PyTorch."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def layer_norm_backward(x, weight, g, eps=1e-5):
    """With ``xhat = (x - mean) / sqrt(var + eps)`` and ``gh = g * weight``:

        dx      = (gh - mean(gh) - xhat * mean(gh * xhat)) / sqrt(var + eps)
        dweight = sum over rows of g * xhat
        dbias   = sum over rows of g
    """
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    gh = g * weight
    dx = (gh - gh.mean(axis=-1, keepdims=True) - xhat * (gh * xhat).mean(axis=-1, keepdims=True)) / np.sqrt(var + eps)
    rows = tuple(range(x.ndim - 1))
    return dx, (g * xhat).sum(axis=rows), g.sum(axis=rows)


# ---------------------------------------------------------------------------
# GELU
# ---------------------------------------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])  # NumPy has no erf; Python's math module does


def gelu(x):
    """``GELU(x) = x Phi(x)`` with ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``, the standard normal's
    distribution function (Hendrycks & Gimpel, 2016)."""
    return x * 0.5 * (1 + _erf(x / math.sqrt(2)))


def gelu_backward(x, g):
    """``d/dx x Phi(x) = Phi(x) + x phi(x)``, with ``phi(x) = e^{-x^2/2} / sqrt(2 pi)``."""
    phi = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    return g * (0.5 * (1 + _erf(x / math.sqrt(2))) + x * phi)


def gelu_tanh(x):
    """GPT-2's approximation: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_tanh_backward(x, g):
    """With ``t = tanh(u)``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``:
    ``d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)``."""
    t = np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))
    return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x**2))


# ---------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------


def attention_probs(q, k, scale=None, is_causal=False, attn_mask=None):
    """``P = softmax(q k^T * scale + mask)``, (..., L, S): row i says how much query i reads
    from each key. ``scale`` defaults to ``1/sqrt(E)``; a causal mask hides keys j > i; a
    boolean ``attn_mask`` hides the pairs marked False, a float one is added to the scores."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ np.swapaxes(k, -1, -2) * scale  # (..., L, S)
    L, S = scores.shape[-2:]
    if is_causal:
        scores = np.where(np.tril(np.ones((L, S), dtype=bool)), scores, -np.inf)
    if attn_mask is not None and attn_mask.dtype == bool:
        scores = np.where(attn_mask, scores, -np.inf)
    elif attn_mask is not None:
        scores = scores + attn_mask
    return softmax(scores, axis=-1)


def attention(q, k, v, scale=None, is_causal=False, attn_mask=None):
    """``softmax(q k^T * scale + mask) v`` (Vaswani et al., 2017, eq. 1):
    q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev)."""
    return attention_probs(q, k, scale, is_causal, attn_mask) @ v


def attention_backward(q, k, v, g, scale=None, is_causal=False, attn_mask=None):
    """With ``P`` the probabilities and ``g`` the gradient of the output (..., L, Ev):

        dv = P^T g
        dP = g v^T
        dS = P * (dP - sum_j dP_j P_j)        (softmax's backward, row by row)
        dq = dS k * scale,  dk = dS^T q * scale
    """
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    P = attention_probs(q, k, scale, is_causal, attn_mask)
    dv = np.swapaxes(P, -1, -2) @ g
    dP = g @ np.swapaxes(v, -1, -2)
    dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))
    return dS @ k * scale, np.swapaxes(dS, -1, -2) @ q * scale, dv


# ---------------------------------------------------------------------------
# AdamW
# ---------------------------------------------------------------------------


def adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    """One AdamW step (Loshchilov & Hutter, 2019, Algorithm 2, as PyTorch computes it);
    ``step`` counts from 1. Returns the new ``(param, exp_avg, exp_avg_sq)``:

        param      <- param (1 - lr weight_decay)             decoupled weight decay
        exp_avg    <- b1 exp_avg    + (1 - b1) grad           first moment, m
        exp_avg_sq <- b2 exp_avg_sq + (1 - b2) grad^2         second moment, v
        param      <- param - lr m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)

    With ``weight_decay=0`` this is Adam (Kingma & Ba, 2015, Algorithm 1).
    """
    b1, b2 = betas
    param = param * (1 - lr * weight_decay)
    exp_avg = b1 * exp_avg + (1 - b1) * grad
    exp_avg_sq = b2 * exp_avg_sq + (1 - b2) * grad**2
    m_hat = exp_avg / (1 - b1**step)
    v_hat = exp_avg_sq / (1 - b2**step)
    return param - lr * m_hat / (np.sqrt(v_hat) + eps), exp_avg, exp_avg_sq
