"""4-bit NormalFloat (NF4) weights with double quantization: the base of QLoRA.

    Dettmers, Pagnoni, Holtzman, Zettlemoyer (2023). "QLoRA: Efficient Finetuning
    of Quantized LLMs." arXiv:2305.14314. (Block-wise absmax quantization: sec. 2,
    eqs. 1-2; NF4: sec. 3, eq. 4; double quantization: sec. 3; the forward of QLoRA:
    eqs. 5-6; the NF4 table: appendix E and bitsandbytes' ``functional.py``.)

QLoRA keeps the frozen base weights in 4 bits and trains LoRA's A and B, in
higher precision, on top. The forward pass dequantizes each weight on the fly,

    y = x · dequant(W)^T + b + (α / r) · x A^T B^T,

and the gradient never reaches W (it is not a parameter at all), only A and B.

**NF4.** Pretrained weights are roughly normal, so the 16 levels are placed at
quantiles of N(0, 1) -- each level then holds about the same share of the
weights -- and rescaled to [-1, 1] (``NF4_VALUES``). The table is asymmetric,
8 positive and 7 negative levels, so that 0 is a level exactly (zero weights,
padding, and a block of zeros stay exactly zero).

**Blocks.** The weight is flattened and cut into blocks of 64; a block is divided
by its absolute maximum ``absmax`` (so it lies in [-1, 1]), and each element is
stored as the 4-bit index of the nearest level (QLoRA eqs. 1-2, NF4 levels in place of
the integer grid):

    q_i = argmin_k | W_i / absmax - NF4[k] |,        dequant(W)_i = NF4[q_i] · absmax.

Two indices share a byte (the first in the high nibble, as bitsandbytes packs).

**Double quantization.** A float32 ``absmax`` per 64 weights costs 32/64 = 0.5 bit
per parameter. QLoRA quantizes these constants again, to 8 bits in blocks of 256,
after subtracting their mean (they are all positive: centring them uses the
8-bit range for both signs). minilora's 8-bit scheme, exactly:

    c      = absmax - mean(absmax)                       (one float32 mean)
    s_j    = max_{i in block j} |c_i| / 127              (one float32 scale per 256 constants)
    c8_i   = round(c_i / s_j) in [-127, 127]             (int8)
    absmax ≈ c8_i · s_j + mean                           (error <= s_j / 2)

This is linear, symmetric absmax quantization. bitsandbytes uses its "dynamic"
8-bit map instead (``create_dynamic_map``: a float-like code with a sign, an
exponent of variable length and a mantissa, so small values get finer steps);
its error is smaller for constants spread over orders of magnitude, ours is
simpler to state and bound. Either way the stored size is

    4 + 8/64 + 32/(64 · 256) bits per parameter = 4.127 (+ 32 bits for the mean),

against 4 + 32/64 = 4.5 without double quantization (``bits_per_parameter``
measures it from the stored arrays).

**Padding.** A matrix whose size is not a multiple of the block size is padded
with zeros to the next multiple (a zero changes no block's absmax), and
``dequantize_nf4`` drops the padding: any shape quantizes. The absmax constants
are padded the same way to a multiple of 256 while computing the 8-bit scales.

``NF4Linear`` is a frozen linear layer holding an ``NF4Tensor``;
``quantize_model`` swaps a GPT's projections for it. Then
``get_peft_model(quantized, LoraConfig(...))`` is QLoRA, and ``merge_and_unload``
returns a dense model (docs/qlora.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from statistics import NormalDist

import numpy

from minilora import backend as B
from minilora import nn
from minilora.nn import functional as F
from minilora.tensor import Tensor

# ---------------------------------------------------------------------------
# the 16 levels
# ---------------------------------------------------------------------------


def _linspace_float32(start: float, stop: float, steps: int) -> numpy.ndarray:
    """``torch.linspace(start, stop, steps)`` in float32, rounding as PyTorch does (the first
    half counted up from ``start``, the second down from ``stop``), so the table below
    reproduces bitsandbytes' bit for bit; ``numpy.linspace`` rounds differently in the last bits."""
    start, stop = numpy.float32(start), numpy.float32(stop)
    step = (stop - start) / numpy.float32(steps - 1)
    i = numpy.arange(steps)
    up = start + i.astype(numpy.float32) * step
    down = stop - (steps - 1 - i).astype(numpy.float32) * step
    return numpy.where(i < steps // 2, up, down).astype(numpy.float32)


def create_normal_map(offset: float = 0.9677083) -> numpy.ndarray:
    """The NF4 levels, as bitsandbytes' ``create_normal_map(offset, use_extra_value=True)``.

    8 positive levels at the N(0, 1) quantiles of ``linspace(offset, 0.5, 9)[:-1]``, 7 negative
    ones at minus those of ``linspace(offset, 0.5, 8)[:-1]``, and an exact 0; sorted and divided
    by the largest, so the table spans [-1, 1]. ``offset`` stands in for 1, whose quantile is
    infinite; 0.9677083 = 1 - (1/30 + 1/32) / 2 numerically, and is bitsandbytes' value.
    """
    inv_cdf = numpy.vectorize(NormalDist().inv_cdf)  # 15 scalar calls: no scipy needed
    positive = inv_cdf(_linspace_float32(offset, 0.5, 9)[:-1].astype(numpy.float64))  # 8 levels
    negative = -inv_cdf(_linspace_float32(offset, 0.5, 8)[:-1].astype(numpy.float64))  # 7 levels
    levels = numpy.sort(numpy.concatenate([negative, [0.0], positive])).astype(numpy.float32)
    return levels / levels.max()  # (16,) float32, from -1 to 1


# A host (NumPy) constant, computed once; moved to the backend where it is used.
NF4_VALUES = create_normal_map()  # (16,) float32; NF4_VALUES[7] == 0

# ---------------------------------------------------------------------------
# quantize / dequantize
# ---------------------------------------------------------------------------


@dataclass
class NF4Tensor:
    """A weight in NF4, as stored. Arrays are backend arrays; nothing else is kept."""

    packed: object  # uint8 (n_padded / 2,): two 4-bit level indices per byte, high nibble first
    shape: tuple  # the original shape
    dtype: object  # the original dtype (dequantize_nf4 returns it)
    block_size: int  # weights per absmax block (64)
    absmax: object = None  # float32 (n_blocks,): without double quantization
    absmax_q: object = None  # int8 (n_blocks,): with double quantization, c8 above
    absmax_scale: object = None  # float32 (ceil(n_blocks / 256),): s_j
    absmax_mean: object = None  # float32 (): the mean subtracted before quantizing
    dq_block_size: int = 256  # absmax constants per 8-bit scale

    @property
    def double_quant(self) -> bool:
        return self.absmax_q is not None

    @property
    def numel(self) -> int:
        return int(numpy.prod(self.shape, dtype=numpy.int64))

    def arrays(self) -> dict:
        """Every stored array by name (what a file would hold)."""
        names = ("packed", "absmax", "absmax_q", "absmax_scale", "absmax_mean")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays().values())


def _check_block_size(block_size, name="block_size") -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0 or block_size % 2:
        raise ValueError(f"{name} must be a positive even int (two 4-bit codes share a byte), got {block_size!r}")


def _nearest_level(x):
    """Index of the nearest NF4 level for each entry of ``x`` (float64), ties to the lower level.

    A value nearer level k than level k+1 lies below their midpoint, so the index is
    the number of midpoints below it: a binary search over 15 numbers, not 16 distances.
    """
    levels = B.xp.asarray(NF4_VALUES, dtype=B.xp.float64)
    midpoints = (levels[:-1] + levels[1:]) / 2  # (15,), exact in float64
    return B.xp.searchsorted(midpoints, x, side="left").astype(B.xp.uint8)


def quantize_nf4(W, block_size: int = 64, double_quant: bool = True, dq_block_size: int = 256) -> NF4Tensor:
    """W (any shape, floating point) in NF4 with absmax blocks of ``block_size``.

        absmax_b = max_{i in b} |W_i|,     q_i = argmin_k |W_i / absmax_b - NF4[k]|    (QLoRA eqs. 1-2)

    With ``double_quant`` the float32 absmax constants are stored in 8 bits (module docstring).
    The size is padded with zeros to a multiple of ``block_size`` (undone by ``dequantize_nf4``).
    """
    W = W.data if isinstance(W, Tensor) else B.xp.asarray(W)
    _check_block_size(block_size)
    if isinstance(dq_block_size, bool) or not isinstance(dq_block_size, int) or dq_block_size <= 0:
        raise ValueError(f"dq_block_size must be a positive int, got {dq_block_size!r}")
    if W.dtype.kind != "f":
        raise TypeError(f"quantize_nf4 quantizes floating-point weights, got dtype {W.dtype}")
    if W.size == 0:
        raise ValueError(f"quantize_nf4: W of shape {W.shape} is empty")
    if not bool(B.xp.isfinite(W).all()):
        raise ValueError("quantize_nf4: W contains NaN or inf; a block's absmax would be meaningless")
    n = W.size
    n_blocks = -(-n // block_size)  # ceil
    flat = B.xp.zeros(n_blocks * block_size, dtype=B.xp.float64)
    flat[:n] = W.reshape(-1)  # zero padding: it changes no absmax, and 0 is a level
    blocks = flat.reshape(n_blocks, block_size)  # (n_blocks, block_size)
    absmax = B.xp.abs(blocks).max(axis=1).astype(B.xp.float32)  # (n_blocks,), stored in float32
    # Normalise by the stored absmax, so that NF4[q] · absmax is the nearest multiple a
    # dequantization can give; an all-zero block divides by 1 and maps to the level 0.
    safe = B.xp.where(absmax == 0, 1, absmax).astype(B.xp.float64)
    idx = _nearest_level(blocks / safe[:, None]).reshape(-1)  # (n_padded,) uint8 in 0..15
    packed = (idx[0::2] << 4) | idx[1::2]  # (n_padded / 2,) uint8
    q = NF4Tensor(packed=packed, shape=tuple(W.shape), dtype=W.dtype, block_size=block_size, dq_block_size=dq_block_size)
    if not double_quant:
        q.absmax = absmax
        return q
    q.absmax_mean, q.absmax_q, q.absmax_scale = _quantize_absmax(absmax, dq_block_size)
    return q


def _quantize_absmax(absmax, dq_block_size: int) -> tuple:
    """(mean, int8 codes, float32 scales): symmetric 8-bit absmax quantization of absmax - mean."""
    mean = B.xp.asarray(absmax.mean(dtype=B.xp.float64), dtype=B.xp.float32)  # () float32, a 0-d array
    n = absmax.shape[0]
    n_groups = -(-n // dq_block_size)
    c = B.xp.zeros(n_groups * dq_block_size, dtype=B.xp.float64)
    c[:n] = absmax.astype(B.xp.float64) - mean  # centred: both signs of the 8-bit range are used
    c = c.reshape(n_groups, dq_block_size)  # (n_groups, 256)
    scale = (B.xp.abs(c).max(axis=1) / 127).astype(B.xp.float32)  # (n_groups,): one step of the 8-bit grid
    safe = B.xp.where(scale == 0, 1, scale).astype(B.xp.float64)
    c8 = B.xp.clip(B.xp.rint(c / safe[:, None]), -127, 127).astype(B.xp.int8).reshape(-1)[:n]  # (n,)
    return mean, c8, scale


def dequantize_absmax(q: NF4Tensor):
    """The absmax constants the dequantization uses, float32 (n_blocks,): stored, or c8 · s + mean."""
    if not q.double_quant:
        return q.absmax
    scale = B.xp.repeat(q.absmax_scale, q.dq_block_size)[: q.absmax_q.shape[0]]  # each constant's s_j
    return (q.absmax_q.astype(B.xp.float32) * scale + q.absmax_mean).astype(B.xp.float32)


def unpack_indices(q: NF4Tensor):
    """The 4-bit level indices, uint8 (n_padded,), in the order of the flattened (padded) weight."""
    high, low = q.packed >> 4, q.packed & 0x0F
    return B.xp.stack([high, low], axis=1).reshape(-1)


def dequantize_nf4(q: NF4Tensor):
    """``NF4[q_i] · absmax_b`` for every element, in the original shape and dtype (padding dropped)."""
    levels = B.xp.asarray(NF4_VALUES)[unpack_indices(q)]  # (n_padded,) float32
    blocks = levels.reshape(-1, q.block_size) * dequantize_absmax(q)[:, None]  # (n_blocks, block_size) float32
    return blocks.reshape(-1)[: q.numel].reshape(q.shape).astype(q.dtype)


# ---------------------------------------------------------------------------
# what it costs and what it loses
# ---------------------------------------------------------------------------


def bits_per_parameter(q: NF4Tensor) -> float:
    """Bits stored per weight, from the stored arrays' byte sizes: 4.127 with double quantization
    (64-blocks, 256-blocks), 4.5 without, a little more when padding is needed."""
    return 8 * q.nbytes / q.numel


def nominal_bits_per_parameter(block_size: int = 64, double_quant: bool = True, dq_block_size: int = 256) -> float:
    """The closed form, for a large matrix: ``4 + 8/b + 32/(b · b2)`` with double quantization, ``4 + 32/b`` without."""
    if double_quant:
        return 4 + 8 / block_size + 32 / (block_size * dq_block_size)
    return 4 + 32 / block_size


def quantization_error(W, q: NF4Tensor | None = None, **quantize_kwargs) -> dict:
    """How far ``dequant(quant(W))`` is from W: max and mean |error|, and ``||W - Ŵ||_F / ||W||_F``.

    ``q``: W's quantized form (default: ``quantize_nf4(W, **quantize_kwargs)``)."""
    W = W.data if isinstance(W, Tensor) else B.xp.asarray(W)
    q = quantize_nf4(W, **quantize_kwargs) if q is None else q
    W64 = W.astype(B.xp.float64)
    err = B.xp.abs(dequantize_nf4(q).astype(B.xp.float64) - W64)
    norm = float(B.xp.sqrt((W64 ** 2).sum()))
    return {
        "max_abs": float(err.max()),
        "mean_abs": float(err.mean()),
        "rel_frobenius": float(B.xp.sqrt((err ** 2).sum())) / norm if norm > 0 else 0.0,
    }


# ---------------------------------------------------------------------------
# the layer, and a quantized model
# ---------------------------------------------------------------------------


class NF4Linear(nn.Module):
    """A frozen linear layer with an NF4 weight: ``y = x · dequant(W)^T + b``.

    The weight is an ``NF4Tensor`` (``qweight``), not a Parameter: it is not trained, gets
    no gradient, and is dequantized afresh in every forward (so only the 4-bit copy stays in
    memory). ``weight`` gives the dequantized matrix as a constant Tensor, for code that
    reads a layer's weight (LoRA reads its dtype); it cannot be assigned. The bias stays a
    float Parameter.
    """

    def __init__(self, qweight: NF4Tensor, bias: nn.Parameter | None = None):
        super().__init__()
        if len(qweight.shape) != 2:
            raise ValueError(f"NF4Linear needs a 2-D (out, in) weight, got shape {qweight.shape}")
        self.out_features, self.in_features = qweight.shape
        self.qweight = qweight
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = 64, double_quant: bool = True) -> "NF4Linear":
        """``linear``'s weight quantized; its bias Parameter reused as it is."""
        return cls(quantize_nf4(linear.weight.data, block_size, double_quant), linear.bias)

    def dequantize(self):
        """The dequantized weight, a backend array (out, in) in the original dtype."""
        return dequantize_nf4(self.qweight)

    weight = property(lambda self: Tensor(self.dequantize()))  # a constant: requires_grad is False

    def forward(self, x):
        return F.linear(x, Tensor(self.dequantize()), self.bias)  # (..., out); no dW is ever computed

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` holding the dequantized weight (and this layer's bias Parameter)."""
        dense = nn.Linear(self.in_features, self.out_features, bias=False, dtype=self.qweight.dtype)
        dense.weight.data = self.dequantize()
        if self.bias is not None:
            dense.bias = self.bias
        dense.weight.requires_grad_(False)  # it was frozen as a 4-bit weight; stays so until asked
        return dense

    def extra_repr(self) -> str:
        q = self.qweight
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"block_size={q.block_size}, double_quant={q.double_quant}")


QUANTIZED_MODULES = ["c_attn", "c_proj", "c_fc"]  # GPT-2's four projections (attn.c_proj and mlp.c_proj)


def _matches(target_modules, name: str) -> bool:
    """PEFT's rule, as in LoRA: a string is a regex matching the whole name; a list entry matches
    a name equal to it or ending in ``"." + entry``."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def quantize_model(model: nn.Module, target_modules=None, block_size: int = 64, double_quant: bool = True) -> nn.Module:
    """Replace the matching ``nn.Linear`` layers of ``model`` by ``NF4Linear`` (in place; returned).

    ``target_modules``: names or suffixes (list) or one regex (str); default GPT-2's four
    projections. A Linear whose weight is shared with another module -- GPT-2's ``lm_head``,
    tied to the token embedding -- is refused: quantizing it would quantize the embedding too.
    Everything is checked and quantized before the first layer is swapped, so on an error the
    model is unchanged.
    """
    targets = QUANTIZED_MODULES if target_modules is None else target_modules
    _check_block_size(block_size)
    owners = {}  # id(parameter) -> the modules holding it
    for name, module in model.named_modules():
        for p in module._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(name)
    names = [n for n, m in model.named_modules() if n and _matches(targets, n)]
    if not names:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"target_modules={targets!r} matches no module; the Linear layers are: {', '.join(linears)}")
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"target {name!r} is a {type(module).__name__}; quantize_model replaces nn.Linear layers only")
        tied = [o for o in owners[id(module.weight)] if o != name]
        if tied:
            raise ValueError(f"{name}.weight is tied to {', '.join(tied)}; quantizing it would quantize those too")
    replacements = {name: NF4Linear.from_linear(model.get_submodule(name), block_size, double_quant) for name in names}
    for name, layer in replacements.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        order = list(parent._modules)
        setattr(parent, child, layer)
        for key in order:  # keep the children in their order, so the module tree reads as before
            parent._modules.move_to_end(key)
    return model


__all__ = ["NF4_VALUES", "NF4Tensor", "NF4Linear", "quantize_nf4", "dequantize_nf4", "dequantize_absmax",
           "bits_per_parameter", "nominal_bits_per_parameter", "quantization_error", "quantize_model",
           "create_normal_map"]
