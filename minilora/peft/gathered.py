"""Many adapters in one batch: the gathered LoRA products of Punica (BGMV and SGMV).

    Chen, Ye, Wu, Zheng, Ceze, Krishnamurthy (2023). "Punica: Multi-Tenant LoRA Serving."
    arXiv:2310.18547. (BGMV and SGMV: sec. 4)
    Sheng et al. (2023). "S-LoRA: Serving Thousands of Concurrent LoRA Adapters." arXiv:2311.03285.

A server keeps one frozen base and N adapters; each row i of a batch names its adapter k_i.
The base product is shared by all rows, the update is each row's own (Hu et al., eq. 3, row by row):

    y_i = x_i W^T + b + s_k · (x_i A_k^T) B_k^T,        k = k_i,  A_k: (r_k, in),  B_k: (out, r_k)

(vLLM's reference ops call the two halves "shrink", x -> x A^T, down to r, and "expand",
back up through B^T.) Four ways to compute the updates of a batch, from plain to gathered:

* ``lora_rows_reference``: the equation above, one row at a time -- the reference the docs
  teach from and the tests compare against;
* the loop over adapters (``LoRALinear``'s ``"loop"`` kernel, PEFT's ``_mixed_batch_forward``):
  the rows of each adapter picked out, one pair of products per adapter, put back in row
  order -- its cost grows with the number of distinct adapters in the batch;
* ``bgmv``, "batched gather matrix-vector": every row's A and B gathered from a stack of the
  adapters, ``A[k_i]`` and ``B[k_i]``, then two batched products for the whole batch -- one
  call each whatever the adapters are, so the cost is the batch's, not the number of adapters';
* ``sgmv``, "segmented gather": the rows sorted so that each adapter's rows form one contiguous
  segment, then one pair of products per segment, on slices -- no rows copied.

**Ranks.** Adapters of different ranks share one stack: each is zero-padded to the largest
rank r_max, ``A' = [A; 0]`` (r_max, in) and ``B' = [B, 0]`` (out, r_max). Then

    B' A' = B A + 0 · 0 = B A,

and in the products the padded positions of ``x A'^T`` are exact zeros that multiply zero
columns of B': the padding adds zeros to each sum, so the result differs from the unpadded
product only by the order BLAS sums in (docs/serving.md derives it and the cost).

A row that uses no adapter (``"__base__"``, or an adapter a layer does not hold) takes a zero
slot: A = 0, B = 0, s = 0, an update of exactly zero.

Everything here is built of the engine's Tensor ops (a gather is ``Tensor.__getitem__``, a
batched product ``matmul``), so gradients reach each adapter's A and B through the gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy

from minilora import backend as B
from minilora.tensor import Tensor, cat, matmul


@dataclass
class AdapterStack:
    """The adapters of one layer, stacked: A (N, r_max, in), B (N, out, r_max), scaling (N,),
    each adapter zero-padded to the largest rank r_max (module docstring)."""

    A: Tensor
    B: Tensor
    scaling: object  # a backend array (N,), in the adapters' dtype

    def __len__(self) -> int:
        return self.A.shape[0]


def stack_padded(tensors, r_max: int, dim: int) -> Tensor:
    """The 2-D tensors -- A's (r_k, in) with ``dim=0``, B's (out, r_k) with ``dim=1`` -- each zero-padded
    to ``r_max`` along ``dim`` and stacked, (N, ...): one op, one copy, whose backward hands each
    tensor its own block of the gradient (the padding's gradient is dropped)."""
    arrays = [t.data for t in tensors]
    shape = list(arrays[0].shape)
    shape[dim] = r_max
    padded = any(a.shape[dim] < r_max for a in arrays)
    out = (B.xp.zeros if padded else B.xp.empty)((len(arrays), *shape), dtype=arrays[0].dtype)
    for k, a in enumerate(arrays):  # (a loop of copies: xp.stack costs several times more per array)
        out[k, : a.shape[0], : a.shape[1]] = a
    return Tensor._make(out, tuple(tensors), lambda g: tuple(g[k, : a.shape[0], : a.shape[1]] for k, a in enumerate(arrays)))


def stack_adapters(As, Bs, scalings) -> AdapterStack:
    """One ``AdapterStack`` from lists of A (r_k, in), B (out, r_k) Tensors and their scalings."""
    if not (len(As) == len(Bs) == len(scalings)) or not As:
        raise ValueError(f"stack_adapters needs as many A, B and scalings, at least one each; got "
                         f"{len(As)}, {len(Bs)} and {len(scalings)}")
    for k, (a, b) in enumerate(zip(As, Bs)):
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"stack_adapters: adapter {k} has A of shape {a.shape} and B of shape {b.shape}; "
                             f"A's rows and B's columns are its rank and must be equal")
    r_max = max(a.shape[0] for a in As)
    A, Bm = stack_padded(As, r_max, 0), stack_padded(Bs, r_max, 1)  # (N, r_max, in), (N, out, r_max)
    return AdapterStack(A, Bm, B.xp.asarray([float(s) for s in scalings], dtype=A.dtype))


def check_indices(idx, n_adapters: int, rows: int):
    """``idx`` as a host int array (rows,), after checking that it names one adapter of the
    stack per row: a ValueError names the first index out of range, and its row."""
    idx = numpy.asarray(B.to_numpy(idx.data if isinstance(idx, Tensor) else idx))
    if idx.ndim != 1 or idx.shape[0] != rows or (idx.size and idx.dtype.kind not in "iu"):
        raise ValueError(f"adapter indices must be integers of shape (rows,) = ({rows},), "
                         f"got dtype {idx.dtype} and shape {idx.shape}")
    bad = numpy.flatnonzero((idx < 0) | (idx >= n_adapters))
    if bad.size:
        row = int(bad[0])
        raise ValueError(f"adapter index {int(idx[row])} (row {row}) is out of range: the stack holds "
                         f"{n_adapters} adapters, indices 0..{n_adapters - 1}")
    return idx.astype(numpy.int64)


def bgmv(x, adapters: AdapterStack, idx) -> Tensor:
    """BGMV: ``s_i · (x_i A[k_i]^T) B[k_i]^T`` for every row i at once.

    x (rows, ..., in) -- each row any number of positions; idx (rows,) ints, k_i -> (rows, ..., out).
    The gathers copy rows x (r_max in + out r_max) numbers, whatever the number of adapters."""
    rows, n_in = x.shape[0], x.shape[-1]
    k = B.xp.asarray(check_indices(idx, len(adapters), rows))
    x3 = x.reshape(rows, -1, n_in)  # (rows, M, in): the M positions of each row
    A = adapters.A[k]  # (rows, r_max, in): each row's A, gathered
    Bk = adapters.B[k]  # (rows, out, r_max): each row's B
    s = adapters.scaling[k][:, None, None]  # (rows, 1, 1)
    h = matmul(x3, A.transpose(1, 2)) * s  # (rows, M, r_max): shrink, then scale the thin activation
    y = matmul(h, Bk.transpose(1, 2))  # (rows, M, out): expand
    return y.reshape(*x.shape[:-1], y.shape[-1])


def segments(idx) -> list:
    """``[(start, stop, k), ...]``: the runs of equal adapter index in ``idx`` (host ints, in order)."""
    idx = numpy.asarray(idx)
    starts = numpy.flatnonzero(numpy.r_[True, idx[1:] != idx[:-1]]) if idx.size else numpy.zeros(0, dtype=int)
    stops = numpy.r_[starts[1:], idx.size]
    return [(int(a), int(b), int(idx[a])) for a, b in zip(starts, stops)]


def sgmv(x, adapters: AdapterStack, idx) -> Tensor:
    """SGMV: rows whose adapters form contiguous segments, one pair of products per segment
    (on slices of x: nothing gathered); ``idx`` (rows,) gives each row's adapter, sorted or not
    -- a batch that is not sorted by adapter is sorted first and put back in order after."""
    rows = x.shape[0]
    k = check_indices(idx, len(adapters), rows)
    order = numpy.argsort(k, kind="stable")  # the rows of each adapter together, in their order
    is_sorted = bool((order == numpy.arange(rows)).all())
    xs = x if is_sorted else x[B.xp.asarray(order)]
    pieces = []
    for start, stop, a in segments(k[order]):
        s = float(adapters.scaling[a])
        h = matmul(xs[start:stop], adapters.A[a].transpose(0, 1)) * s  # (stop - start, ..., r_max): shrink
        pieces.append(matmul(h, adapters.B[a].transpose(0, 1)))  # (stop - start, ..., out): expand
    y = cat(pieces, dim=0)
    return y if is_sorted else y[B.xp.asarray(numpy.argsort(order))]


def lora_rows_reference(x, As, Bs, scalings, idx) -> Tensor:
    """The plain reference: ``s_k (x_i A_k^T) B_k^T`` row by row, each adapter at its own rank
    (no stack, no padding); idx[i] indexes As, Bs and scalings."""
    k = check_indices(idx, len(As), x.shape[0])
    return cat([matmul(matmul(x[i:i + 1], As[a].transpose(0, 1)) * float(scalings[a]), Bs[a].transpose(0, 1))
                for i, a in enumerate(k)], dim=0)


KERNELS = {"bgmv": bgmv, "sgmv": sgmv}  # LoRALinear's gathered kernels, by name (its "loop" is the third)

__all__ = ["AdapterStack", "stack_adapters", "stack_padded", "bgmv", "sgmv", "segments", "lora_rows_reference",
           "check_indices", "KERNELS"]
