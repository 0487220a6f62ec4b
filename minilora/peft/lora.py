"""LoRA: Low-Rank Adaptation of large language models, from first principles.

    Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang, Chen (2021).
    "LoRA: Low-Rank Adaptation of Large Language Models." arXiv:2106.09685.

The whole idea is one line (the paper's eq. 3). A pretrained weight W (out x in)
stays frozen; its update is constrained to a product of two thin matrices,

    h = W x + ΔW x = W x + (α / r) · B A x,      B: (out x r),  A: (r x in),  r << min(in, out)

and only A and B are trained. ``LoRALinear.forward`` below is that equation.
B starts at zero, so the adapted model starts exactly at the pretrained one;
``merge()`` folds ``(α / r) B A`` into W so inference costs nothing extra.
The derivation -- the gradients with respect to A and B, the scaling, rsLoRA,
the fused ``c_attn`` case -- is in ``docs/lora.md``.

The names follow Hugging Face PEFT (``LoraConfig``, ``get_peft_model``,
``lora_A``/``lora_B``, ``merge_and_unload`` ...), and adapters are saved in PEFT's
file format, so what a student learns here carries over unchanged.

This file holds the layers (``LoRALinear``, and ``LoRAEmbedding`` for an embedding
table), their configuration (``LoraConfig``, every field of PEFT's implemented or refused)
and the injection into a model (``LoraModel``, with the PiSSA / OLoRA starts and their
conversion into a plain adapter); DoRA's variant of the update is ``dora.py`` beside it,
and LoRA+'s optimizer ``loraplus.py``. LoRA is one method among the methods of ``minilora/peft/``, as in PEFT. The
bookkeeping it shares with the other methods that wrap layers -- adapters by name,
modules_to_save, mixed batches, merging and unloading every layer -- is ``BaseTuner``,
in ``minilora/tuner.py``. The user-facing wrapper with saving, loading and parameter
counts, ``PeftModel`` and ``get_peft_model`` (``peft/model.py``), builds on this file,
never the reverse; a user imports all of it from ``minilora.peft``, as from ``peft``:

    from minilora.peft import LoraConfig, get_peft_model
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from minilora import backend as B
from minilora import nn
from minilora.nn import functional as F
from minilora.peft import dora  # DoRA's math, for the adapters made with use_dora
from minilora.peft import gathered  # many adapters in one batch: BGMV and SGMV
from minilora.quant import NF4Linear  # a 4-bit base layer (QLoRA): docs/qlora.md
from minilora.tensor import Tensor, cat, no_grad
from minilora.tuner import (  # BASE, ModulesToSaveWrapper and target_matches: importable from here too
    BASE,
    DEFAULT_TARGET_MODULES,
    BaseTuner,
    MergeStep,
    ModulesToSaveWrapper,
    DeltaLayer,
    TunerLayer,
    check_layers_fields,
    check_new_name,
    group_rows,
    in_row_order,
    pattern_value,
    set_fan_in_fan_out,
    set_submodule,
    target_matches,
)

NF4_MERGE_ERROR = ("cannot merge into a 4-bit NF4 weight: W + ΔW would have to be re-quantized, which rounds most "
                   "of ΔW away and makes unmerging inexact; merge_and_unload() returns a dense model instead")



def pissa_niter(init_lora_weights) -> int | None:
    """K of "pissa_niter_K" (None for "pissa": the full SVD)."""
    return None if init_lora_weights == "pissa" else int(init_lora_weights.removeprefix("pissa_niter_"))


def randomized_svd(W, r: int, niter: int) -> tuple:
    """The top-r singular triplets of W (m, n), approximately: ``(U (m, r), S (r,), Vh (r, n))``.

    Halko, Martinsson, Tropp (2011), Algorithm 4.4 -- torch.svd_lowrank's, with q = r as PEFT
    calls it: a Gaussian (n, r) test matrix G gives Y = W G, whose span nears W's top-r left
    singular space with every power iteration Y <- W (W^T Y) (each step re-orthonormalized by a
    QR, so small singular values are not lost to rounding); with Q an orthonormal basis of it,
    the SVD of the small r x n matrix Q^T W = Ũ S Vh gives U = Q Ũ. The subspace error shrinks
    like (σ_{r+1} / σ_r)^(2 niter + 1). (torch transposes a wide W first; the span it finds is
    the same in exact arithmetic.) G comes from minilora's seeded generator: the elements differ
    from PEFT's, the invariants do not (tests/test_lora_config_fields.py)."""
    m, n = W.shape
    wide = m < n
    A = W.T if wide else W  # (m', n'), m' >= n'
    Q, _ = B.xp.linalg.qr(A @ B.xp.asarray(B.rng().standard_normal((A.shape[1], r)).astype(A.dtype)))
    for _ in range(niter):
        Q, _ = B.xp.linalg.qr(A.T @ Q)
        Q, _ = B.xp.linalg.qr(A @ Q)
    U, S, Vh = B.xp.linalg.svd(Q.T @ A, full_matrices=False)  # (r, r), (r,), (r, n')
    U = Q @ U  # (m', r)
    return (Vh.T, S, U.T) if wide else (U, S, Vh)


# ---------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------


class LoRALinear(TunerLayer):
    """A frozen ``nn.Linear`` plus trainable low-rank updates, one per named adapter.

        y = x W^T + b + (α / r) · dropout(x) A^T B^T          (Hu et al., eq. 3)

    ``lora_A[name]`` is a Linear(in -> r) (weight A, (r, in)), ``lora_B[name]`` a
    Linear(r -> out) (weight B, (out, r)), exactly PEFT's layout. Several adapters
    can live side by side; one is active at a time (``set_adapter``), or each row
    of a batch picks its own (``adapter_names``, see ``LoraModel``).

    With ``enable_lora`` (e.g. ``[True, False, True]`` on GPT-2's fused ``c_attn``)
    the output is split into equal slices and only the enabled ones are adapted,
    each by its own rank-r pair: A is (k r, in) and B is (k out/slices, r) for k
    enabled slices, as loralib's ``MergedLinear`` stores them.

    An adapter made with ``use_dora`` also has a trained magnitude m, (out,)
    (``lora_magnitude_vector[name].weight``), and adds DoRA's update instead
    (``adapter_output``; the math is in ``minilora/peft/dora.py``). One made with
    ``lora_bias`` has a trained bias b_B in ``lora_B`` too: the update is s (B A x + b_B).
    """

    adapter_dict = "lora_A"

    def __init__(self, base_layer: nn.Linear | NF4Linear):
        super().__init__(base_layer)  # base_layer, active_adapter, merged_adapters, ... (tuner.TunerLayer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ModuleDict()  # DoRA's m, for the adapters made with use_dora (peft/dora.py)
        self.lora_arrow = nn.ModuleDict()  # a router adapter's per-token routing among others (peft/arrow.py)
        self._dora_norms = {}  # a merged DoRA adapter's ||W + ΔW||_c, which unmerging needs
        self.r, self.lora_alpha, self.scaling, self.enable_lora, self.lora_bias = {}, {}, {}, {}, {}

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                     use_rslora: bool = False, init_lora_weights=True, enable_lora=None, use_dora: bool = False,
                     lora_bias: bool = False) -> None:
        """Add adapter ``adapter_name``: create A and B, and initialise them (and DoRA's m, with ``use_dora``)."""
        if adapter_name in self.lora_A:
            raise ValueError(f"this layer already has an adapter named {adapter_name!r}")
        slices = 1
        if enable_lora is not None:
            slices = len(enable_lora)
            if self.out_features % slices:
                raise ValueError(f"enable_lora={enable_lora}: out_features={self.out_features} does not split into {slices} equal slices")
        k = sum(enable_lora) if enable_lora is not None else 1  # how many slices get an update
        dtype = self.base_layer.weight.dtype
        self.lora_A[adapter_name] = nn.Linear(self.in_features, k * r, bias=False, dtype=dtype)
        self.lora_B[adapter_name] = nn.Linear(r, k * self.out_features // slices, bias=lora_bias, dtype=dtype)
        self.lora_bias[adapter_name] = lora_bias
        self.lora_dropout[adapter_name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.r[adapter_name], self.lora_alpha[adapter_name] = r, lora_alpha
        # The scaling alpha / r keeps the update's size steady as r changes, so alpha need not be
        # re-tuned with the rank (Hu et al., sec. 4.1); rsLoRA divides by sqrt(r) instead, which keeps
        # learning from stalling at large r (docs/lora.md).
        self.scaling[adapter_name] = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r
        self.enable_lora[adapter_name] = list(enable_lora) if enable_lora is not None else None
        self.reset_lora_parameters(adapter_name, init_lora_weights)
        if use_dora:  # m = ||W + ΔW||_c, after A and B (and PiSSA's W) are set: W' = W + ΔW at the start
            norm = dora.weight_norm(self.base_layer.weight.data, self._delta_weight_data(adapter_name))
            self.lora_magnitude_vector[adapter_name] = dora.DoraMagnitude(norm.astype(dtype))
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights) -> None:
        A, Bw = self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight
        if init_lora_weights is False:  # keep nn.Linear's random init for both: a non-zero update (for tests)
            return
        if init_lora_weights == "olora" or str(init_lora_weights).startswith("pissa"):
            if isinstance(self.base_layer, NF4Linear):  # the residual W - B A would need re-quantizing
                raise ValueError(f"init_lora_weights={init_lora_weights!r} needs a dense base layer, not a 4-bit NF4Linear")
            if init_lora_weights == "olora":
                self._olora_init(adapter_name)
            else:  # "pissa", or "pissa_niter_K": a randomized SVD with K subspace iterations
                self._pissa_init(adapter_name, niter=pissa_niter(init_lora_weights))
            return
        if init_lora_weights == "gaussian":
            nn.init.normal_(A, std=1 / self.r[adapter_name])
        else:  # True: A as nn.Linear's default init, as loralib and PEFT do
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        # B = 0 makes B A = 0: training starts exactly from the pretrained model,
        # while A is random so that B's gradient (g^T (A x)) is not zero (docs/lora.md).
        nn.init.zeros_(Bw)
        if self.lora_bias[adapter_name]:
            nn.init.zeros_(self.lora_B[adapter_name].bias)

    def _pissa_init(self, adapter_name: str, niter: int | None = None) -> None:
        """PiSSA (Meng et al., 2024): B A = the top-r singular part of W (divided by the scaling),
        and W is replaced by the residual, so the adapted layer starts at the same output. With
        ``niter``, the top-r part comes from a randomized SVD (``randomized_svd``), as PEFT's
        "pissa_niter_K" (faster on large W; the residual absorbs whatever it misses)."""
        W = self.base_layer.weight
        r, s = self.r[adapter_name], self.scaling[adapter_name]
        if niter is None:
            U, S, Vh = B.xp.linalg.svd(W.data, full_matrices=False)  # W = U diag(S) Vh
        else:
            U, S, Vh = randomized_svd(W.data, r, niter)
        root = B.xp.sqrt(S[:r] / s)  # split each singular value evenly between B and A
        self._replace_by_residual(adapter_name, root[:, None] * Vh[:r], U[:, :r] * root[None, :])

    def _olora_init(self, adapter_name: str) -> None:
        """OLoRA (Büyükakyüz, 2024, arXiv:2406.01775): W = Q R (QR decomposition); B = the first r
        columns of Q (orthonormal), A = the first r rows of R, and W is replaced by W - s B A, so
        the adapted layer starts at the same output. As PEFT, A and B are not divided by s."""
        Q, R = B.xp.linalg.qr(self.base_layer.weight.data)  # (out, k), (k, in), k = min(out, in)
        r = self.r[adapter_name]
        self._replace_by_residual(adapter_name, R[:r], Q[:, :r])

    def _replace_by_residual(self, adapter_name: str, A, Bm) -> None:
        """Set A (r, in) and B (out, r), then W <- W - s B A (from the very A and B stored, so that
        W_res + s B A == W to rounding)."""
        W = self.base_layer.weight
        self.lora_A[adapter_name].weight.data = B.xp.ascontiguousarray(A).astype(W.dtype)  # (r, in)
        self.lora_B[adapter_name].weight.data = B.xp.ascontiguousarray(Bm).astype(W.dtype)  # (out, r)
        W.data = (W.data - self._delta_weight_data(adapter_name)).astype(W.dtype)  # the residual

    # --- the update ---------------------------------------------------------------

    def lora_output(self, x, adapter_name: str) -> Tensor:
        """``(α / r) · dropout(x) A^T B^T``: what the adapter adds to the base output, (..., out)."""
        A = self.lora_A[adapter_name].weight  # (k r, in)
        s = self.scaling[adapter_name]
        h = F.linear(self.lora_dropout[adapter_name](x), A)  # (..., k r): down to the low-rank space
        # Scale the thin (..., r) activation rather than the wide output: same result, fewer multiplies.
        h = h * s
        out = F.linear(h, self.lora_B_full(adapter_name))  # (..., out): back up
        if self.lora_bias[adapter_name]:  # s (B A x + b_B)
            out = out + self.lora_B[adapter_name].bias * s
        return out

    def lora_B_full(self, adapter_name: str) -> Tensor:
        """B as it acts on the whole output, (out, k r): ``lora_B`` itself for a plain adapter.

        With ``enable_lora``, slice ``slot`` of the output takes its own block B_j (out/slices, r)
        in columns j r..(j+1) r, and a frozen slice's rows are zero, so ``B_full A`` is the
        block update [B_q A_q; 0; B_v A_v] (docs/lora.md, section 6). Built from weight-sized
        pieces, it costs nothing next to the activations, and the gradient flows back into B."""
        Bw = self.lora_B[adapter_name].weight  # (k out_slice, r)
        enable = self.enable_lora[adapter_name]
        if enable is None:
            return Bw
        r, k = self.r[adapter_name], sum(enable)
        out_slice = self.out_features // len(enable)

        def zeros(rows, cols):
            return Tensor(B.xp.zeros((rows, cols), dtype=Bw.dtype))

        rows, j = [], 0
        for on in enable:
            if on:
                block = Bw[j * out_slice:(j + 1) * out_slice]  # (out_slice, r)
                rows.append(cat([zeros(out_slice, j * r), block, zeros(out_slice, (k - j - 1) * r)], dim=1))
                j += 1
            else:
                rows.append(zeros(out_slice, k * r))  # this slice is not adapted
        return cat(rows, dim=0)  # (out, k r)

    @no_grad()
    def _delta_weight_data(self, adapter_name: str):
        """ΔW = (α / r) B A as a backend array (out, in); with enable_lora, zero rows for frozen slices."""
        A = self.lora_A[adapter_name].weight.data
        return self.scaling[adapter_name] * (self.lora_B_full(adapter_name).data @ A)

    def _slices(self, adapter_name: str):
        """(slot, j) for each enabled slice: its position among all slices, and among the enabled ones."""
        enabled = [slot for slot, on in enumerate(self.enable_lora[adapter_name]) if on]
        return list(zip(enabled, range(len(enabled))))

    def full_lora_B(self, adapter_name: str):
        """An enable_lora B in PEFT's layout, (out, k r), as a backend array (what save_pretrained writes)."""
        return self.lora_B_full(adapter_name).data

    def set_full_lora_B(self, adapter_name: str, full) -> None:
        """Inverse of ``full_lora_B``; refuses a B with non-zero entries outside the blocks."""
        r, out_slice = self.r[adapter_name], self.out_features // len(self.enable_lora[adapter_name])
        full = B.xp.asarray(full)
        mask = B.xp.zeros(full.shape, dtype=bool)
        Bw = self.lora_B[adapter_name].weight
        for slot, j in self._slices(adapter_name):
            mask[slot * out_slice:(slot + 1) * out_slice, j * r:(j + 1) * r] = True
            Bw.data[j * out_slice:(j + 1) * out_slice] = full[slot * out_slice:(slot + 1) * out_slice, j * r:(j + 1) * r]
        if bool((full[~mask] != 0).any()):
            raise ValueError("an enable_lora lora_B has non-zero entries outside its blocks: it is not an enable_lora adapter")

    def get_delta_weight(self, adapter_name: str) -> Tensor:
        """ΔW = (α / r) B A, (out, in), as PEFT's method of that name (but always (out, in))."""
        return Tensor(self._delta_weight_data(adapter_name))

    # --- forward ------------------------------------------------------------------

    def forward(self, x):
        if self.disable_adapters:
            if self.merged:  # PEFT's behaviour: disabling a merged adapter takes it out of W first
                self.unmerge()
            return self.base_layer(x)
        if self.row_adapters is not None:
            return self._mixed_batch_forward(x, self.row_adapters)
        y = self.base_layer(x)  # x W^T + b, W frozen
        if self.merged or self.active_adapter not in self.lora_A:
            return y  # a merged update is already inside W
        return y + self.adapter_output(x, self.active_adapter, y)

    def adapter_output(self, x, adapter_name: str, y) -> Tensor:
        """What the adapter adds to the base output ``y``: LoRA's update, DoRA's (minilora/peft/dora.py),
        or for an Arrow router the routed mixture of other adapters' updates (minilora/peft/arrow.py)."""
        if adapter_name in self.lora_arrow:
            return self.lora_arrow[adapter_name](self, x)
        if adapter_name in self.lora_magnitude_vector:
            return dora.dora_output(self, x, adapter_name, y)
        return self.lora_output(x, adapter_name)

    # How a mixed batch computes its updates: "bgmv" or "sgmv" (gathered: peft/gathered.py), or
    # "loop" (one pair of products per adapter, on its rows). Set per layer, e.g. to compare them.
    mixed_batch_kernel = "bgmv"

    def _mixed_batch_forward(self, x, names) -> Tensor:
        """Each batch row with its own adapter (or ``"__base__"`` for none). Plain LoRA updates
        are gathered (``mixed_batch_kernel``); a DoRA adapter, a lora_bias, an active dropout or the "loop"
        kernel runs the update of each adapter on its rows only, then puts the rows back in order."""
        y = self.base_layer(x)  # (B, ..., out)
        used = [name for name in dict.fromkeys(names) if name in self.lora_A]  # the adapters this layer holds
        if not used:
            return y
        kernel = self.mixed_batch_kernel
        if kernel not in (*gathered.KERNELS, "loop"):
            raise ValueError(f"mixed_batch_kernel must be one of {[*gathered.KERNELS, 'loop']}, got {kernel!r}")
        if kernel != "loop" and all(self._gatherable(name) for name in used):
            adapters, idx = self._adapter_stack(used, names)
            return y + gathered.KERNELS[kernel](x, adapters, idx)
        groups = group_rows(names)
        pieces = []
        for name, rows in groups.items():
            idx = B.xp.asarray(rows)
            if name in self.lora_A:
                pieces.append(self.adapter_output(x[idx], name, y[idx]))  # (rows, ..., out)
            else:  # "__base__", or an adapter this layer does not have: no update
                pieces.append(Tensor(B.xp.zeros((len(rows),) + y.shape[1:], dtype=y.dtype)))
        return y + in_row_order(pieces, groups.values())

    def _gatherable(self, adapter_name: str) -> bool:
        """Whether the adapter's update is the plain product s B A x a gathered kernel computes
        (DoRA's and a router's are not, a lora_bias adds s b_B, which the kernels do not carry, and a
        dropout in training draws its own mask per adapter)."""
        if adapter_name in self.lora_magnitude_vector or adapter_name in self.lora_arrow:
            return False
        if self.lora_bias[adapter_name]:
            return False
        return not (self.training and isinstance(self.lora_dropout[adapter_name], nn.Dropout))

    def _adapter_stack(self, used: list, names: list) -> tuple:
        """(the stack of the ``used`` adapters, each row's index in it); rows of any other name
        take a zero slot at the end (peft/gathered.py)."""
        As = [self.lora_A[name].weight for name in used]
        Bs = [self.lora_B_full(name) for name in used]
        scalings = [self.scaling[name] for name in used]
        slot = {name: k for k, name in enumerate(used)}
        if len(slot) < len(set(names)):  # some rows use no update here
            dtype = As[0].dtype
            As.append(Tensor(B.xp.zeros((1, self.in_features), dtype=dtype)))
            Bs.append(Tensor(B.xp.zeros((self.out_features, 1), dtype=dtype)))
            scalings.append(0.0)
        return gathered.stack_adapters(As, Bs, scalings), [slot.get(name, len(used)) for name in names]

    # --- merging ------------------------------------------------------------------

    # ``merge(safe_merge=False, adapter_names=None)`` is TunerLayer's: it checks, then stores
    # what merge_steps computes -- W <- W + (α / r) B A for each adapter, after which inference
    # costs exactly what the base layer costs (docs/lora.md, "merging").

    @no_grad()
    def merge_steps(self, adapter_names) -> list:
        """W after each adapter in turn, as new arrays: W + ΔW, or DoRA's m ⊙ (W + ΔW) / ||W + ΔW||_c
        (and b + s b_B for an adapter with a lora_bias)."""
        W = self.base_layer.weight.data
        b = self.base_layer.bias.data if self.base_layer.bias is not None else None  # changed by a lora_bias only
        W_base = None  # for DoRA: W without any merged update, whose norm the forward pass takes
        steps = []
        for name in adapter_names:
            delta = self._delta_weight_data(name).astype(W.dtype)
            if name in self.lora_magnitude_vector:
                W_base = self._unmerged_weight_data() if W_base is None else W_base
                m = self.lora_magnitude_vector[name].weight.data
                W, norm = dora.merged_weight(W, W_base, delta, m)
                steps.append(MergeStep(name, {"weight": W}, memo=norm))
            else:
                W = W + delta
                steps.append(MergeStep(name, {"weight": W}))
            if self.lora_bias[name]:  # b <- b + s b_B
                b = b + self.scaling[name] * self.lora_B[name].bias.data.astype(b.dtype)
                steps[-1].params["bias"] = b
        return steps

    def remember_merge(self, step: MergeStep) -> None:
        if step.memo is not None:
            self._dora_norms[step.adapter_name] = step.memo

    def check_merge(self, adapter_names) -> None:
        """Refuse, before anything changes, a merge that cannot be done: into a 4-bit weight, into
        a tied one, or twice."""
        names = [name for name in adapter_names if name in self.lora_A]
        routers = [name for name in names if name in self.lora_arrow]
        if routers:
            raise RuntimeError(f"cannot merge {routers[0]!r} into {self.layer_name}: an Arrow router weighs its experts "
                               "token by token, so it has no one ΔW to fold into W")
        if names and isinstance(self.base_layer, NF4Linear):
            raise RuntimeError(NF4_MERGE_ERROR)
        for name in names:
            if self.lora_bias[name] and self.base_layer.bias is None:
                raise RuntimeError(f"cannot merge adapter {name!r} into {self.layer_name}: it has a lora_bias, and "
                                   "the layer has no bias to fold it into (PEFT's rule); keep it unmerged")
        super().check_merge(names)

    @no_grad()
    def unmerge(self) -> None:
        """W <- W - (α / r) B A for every merged adapter, last merged first."""
        self.check_unmerge()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            W = self.base_layer.weight
            W.data = self._without_update(W.data, name)
            self._dora_norms.pop(name, None)
            if self.lora_bias[name]:
                b = self.base_layer.bias
                b.data = b.data - self.scaling[name] * self.lora_B[name].bias.data.astype(b.dtype)

    def check_unmerge(self) -> None:
        """Refuse, before anything changes, an unmerge that cannot be done: a DoRA magnitude with
        zeros, or a weight tied to another module since the merge."""
        if self.merged_adapters:
            self.check_untied("unmerge from")
        for name in self.merged_adapters:
            if name in self.lora_magnitude_vector:
                dora.check_unmerge(self.lora_magnitude_vector[name].weight.data, name)

    def _without_update(self, W, adapter_name: str):
        """The array W with the merged update of ``adapter_name`` taken out."""
        delta = self._delta_weight_data(adapter_name).astype(W.dtype)
        if adapter_name in self.lora_magnitude_vector:
            m = self.lora_magnitude_vector[adapter_name].weight.data
            return dora.unmerged_weight(W, delta, m, self._dora_norms[adapter_name])
        return W - delta

    def _unmerged_weight_data(self):
        """W as it was before any merge (a new array): DoRA's norm is taken of it, as in forward."""
        W = self.base_layer.weight.data
        for name in reversed(self.merged_adapters):
            W = self._without_update(W, name)
        return W

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise RuntimeError(f"adapter {adapter_name!r} is merged; unmerge it before deleting it")
        for registry in (self.lora_A, self.lora_B, self.lora_dropout):
            del registry[adapter_name]
        if adapter_name in self.lora_arrow:
            del self.lora_arrow[adapter_name]
        if adapter_name in self.lora_magnitude_vector:
            del self.lora_magnitude_vector[adapter_name]
        for table in (self.r, self.lora_alpha, self.scaling, self.enable_lora, self.lora_bias):
            table.pop(adapter_name, None)
        if self.active_adapter == adapter_name:
            self.active_adapter = None

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={self.r[n]}, alpha={self.lora_alpha[n]}" for n in self.lora_A) + (
            f", active={self.active_adapter!r}" if self.active_adapter else "")


class LoRAEmbedding(DeltaLayer):
    """A frozen ``nn.Embedding`` plus low-rank updates of its table, one per named adapter
    (PEFT's ``lora.Embedding``):

        y = E[x] + s · (A^T)[x] B^T          A: (r, num_embeddings),  B: (embedding_dim, r)

    Looking up row x of a table is multiplying the one-hot vector of x by it, so an embedding
    is a Linear from a one-hot input and this is LoRA's eq. 3 on it: the table gains
    ΔE = s (B A)^T, (num_embeddings, embedding_dim). A is looked up like the table itself
    (with its padding row, whose gradient is zero). As in loralib and PEFT, A starts at zero
    and B ~ N(0, 1) -- the other way round from a Linear's, with the same effect: ΔE = 0 at the
    start, and B's gradient (which needs A x != 0) is zero only for the first step. The
    parameters are ``lora_embedding_A.<adapter>`` and ``lora_embedding_B.<adapter>``, PEFT's names.
    """

    adapter_dict = "lora_embedding_A"
    adapter_parts = ("lora_embedding_A", "lora_embedding_B")
    adapter_tables = ("r", "lora_alpha", "scaling")

    def __init__(self, base_layer: nn.Embedding):
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.r, self.lora_alpha, self.scaling = {}, {}, {}

    in_features = property(lambda self: self.base_layer.num_embeddings)
    out_features = property(lambda self: self.base_layer.embedding_dim)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, use_rslora: bool = False,
                     init_lora_weights=True) -> None:
        if adapter_name in self.lora_embedding_A:
            raise ValueError(f"this layer already has an adapter named {adapter_name!r}")
        self.r[adapter_name], self.lora_alpha[adapter_name] = r, lora_alpha
        self.scaling[adapter_name] = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r
        dtype, rng = self.base_layer.weight.dtype, B.rng()
        # PEFT: every init but False gives A = 0, B ~ N(0, 1) on an Embedding (its PiSSA, OLoRA and
        # "gaussian" inits are for Linear layers); False keeps both random
        A = rng.standard_normal((r, self.in_features)) if init_lora_weights is False else B.xp.zeros((r, self.in_features))
        self.lora_embedding_A[adapter_name] = nn.Parameter(B.xp.asarray(A).astype(dtype))
        self.lora_embedding_B[adapter_name] = nn.Parameter(rng.standard_normal((self.out_features, r)).astype(dtype))
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def delta_output(self, idx, adapter_name: str) -> Tensor:
        """``s · (A^T)[idx] B^T``, (..., embedding_dim): A's columns looked up, then up through B."""
        after_A = F.embedding(idx, self.lora_embedding_A[adapter_name].T, self.base_layer.padding_idx)  # (..., r)
        return F.linear(after_A, self.lora_embedding_B[adapter_name]) * self.scaling[adapter_name]

    @no_grad()
    def delta_weight(self, adapter_name: str):
        """ΔE = s (B A)^T, (num_embeddings, embedding_dim)."""
        return (self.lora_embedding_B[adapter_name].data @ self.lora_embedding_A[adapter_name].data).T * self.scaling[adapter_name]


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


@dataclass
class LoraConfig:
    """What to adapt and how, with PEFT's field names and defaults."""

    r: int = 8  # the rank of the update B A
    lora_alpha: float = 8  # the update is scaled by lora_alpha / r (or / sqrt(r) with use_rslora)
    lora_dropout: float = 0.0  # dropout on the adapter's input x (not on the frozen path)
    target_modules: list | str | None = None  # names, name suffixes (list) or one regex (str); None: PEFT's default
                                              # for the model (GPT-2: c_attn; BERT: query, value; LLaMA: q_proj, v_proj)
    bias: str = "none"  # "none" | "all" (train every bias) | "lora_only" (train the biases of adapted layers)
    use_rslora: bool = False  # rank-stabilised LoRA (Kalajdzievas, 2023): scale by alpha / sqrt(r)
    init_lora_weights: bool | str = True  # True: A Kaiming-uniform, B = 0; "gaussian": A ~ N(0, 1/r); False: both random;
                                          # "pissa" / "pissa_niter_K" / "olora": B A from W's SVD or QR, W the residual
    rank_pattern: dict = field(default_factory=dict)  # {regex of module name: r} overriding r for some layers
    alpha_pattern: dict = field(default_factory=dict)  # {regex of module name: alpha}
    modules_to_save: list | None = None  # modules trained in full beside the adapter (e.g. a classifier head)
    # "SEQ_CLS" adds the classification head ("classifier" or "score") to modules_to_save, as PEFT does
    fan_in_fan_out: bool = False  # True for GPT-2, whose HF layers (Conv1D) store W as (in, out); set automatically
    use_dora: bool = False  # DoRA (weight-decomposed LoRA); see minilora/peft/dora.py
    lora_bias: bool = False  # a trained bias in lora_B too: the update is s (B A x + b_B)
    layers_to_transform: list | int | None = None  # only the targets in these numbered blocks (h.<i>, layers.<i> ...)
    layers_pattern: list | str | None = None  # the name of the block list ("h", "layers"); None: any
    # minilora's addition, after loralib's MergedLinear: adapt only some of the equal
    # slices of a fused projection, e.g. [True, False, True] = Wq and Wv inside GPT-2's
    # c_attn, each with its own rank-r pair -- the setting of the LoRA paper's tables.
    # A list applies to every target; a dict {module-name regex: list} to the modules
    # it matches (e.g. {"c_attn": [True, True, True]} beside a plain attn.c_proj).
    enable_lora: list | dict | None = None
    inference_mode: bool = False  # True: nothing is trainable (set when loading for inference)
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    peft_type: str = field(default="LORA", init=False)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field. Also called when the config is used (``inject_adapter``): a config
        is a plain dataclass and may have been edited since it was made."""
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive int, got {self.r!r}")
        if self.lora_alpha < 0:
            raise ValueError(f"LoraConfig.lora_alpha must be >= 0, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig.lora_dropout must lie in [0, 1), got {self.lora_dropout!r}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"LoraConfig.bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")
        init = self.init_lora_weights
        niter = init.removeprefix("pissa_niter_") if isinstance(init, str) else ""
        if init not in (True, False, "gaussian", "pissa", "olora") and not niter.isdigit():
            raise ValueError(f"LoraConfig.init_lora_weights must be True, False, 'gaussian', 'pissa', 'pissa_niter_K' "
                             f"(K an int >= 0), or 'olora', got {init!r}")
        if self.lora_bias not in (True, False):
            raise ValueError(f"LoraConfig.lora_bias must be True or False, got {self.lora_bias!r}")
        if self.lora_bias and (init not in (True, False) or self.use_dora):  # PEFT's rule
            raise ValueError(f"LoraConfig.lora_bias=True works with init_lora_weights=True or False and without DoRA "
                             f"(PEFT's rule), got init_lora_weights={init!r}, use_dora={self.use_dora}")
        check_layers_fields(self)
        for pattern, value in {**self.rank_pattern}.items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LoraConfig.rank_pattern[{pattern!r}] must be a positive int, got {value!r}")
        for pattern, value in self.alpha_pattern.items():
            if value < 0:
                raise ValueError(f"LoraConfig.alpha_pattern[{pattern!r}] must be >= 0, got {value!r}")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if self.enable_lora is not None:
            lists = self.enable_lora.values() if isinstance(self.enable_lora, dict) else [self.enable_lora]
            if not all(isinstance(lst, (list, tuple)) and any(lst) for lst in lists):
                raise ValueError(f"LoraConfig.enable_lora must enable at least one slice of each list, got {self.enable_lora}")
            if self.init_lora_weights not in (True, False, "gaussian") or self.use_dora or self.lora_bias:
                raise ValueError("LoraConfig.enable_lora works with plain LoRA only (not with pissa, olora, use_dora "
                                 "or lora_bias)")

    # --- PEFT's file has no enable_lora: save its equivalent ------------------------------

    def to_peft_fields(self) -> dict:
        """Fields to write in adapter_config.json. An ``enable_lora`` adapter is saved as PEFT's
        equivalent -- one rank-(k r) pair per layer with zero blocks (see ``LoraModel.adapter_state_dict``),
        with alpha scaled so that alpha / r is unchanged -- plus a ``minilora_enable_lora`` record
        (PEFT ignores it, with a warning) from which minilora restores the original layout."""
        if self.enable_lora is None:
            return {}
        if self.rank_pattern or self.alpha_pattern:
            raise ValueError("saving enable_lora adapters with rank_pattern/alpha_pattern is not supported")
        record = {"enable_lora": self.enable_lora, "r": self.r, "lora_alpha": self.lora_alpha}

        def equivalent(k):  # PEFT's (r, alpha) for k slices of rank r each, keeping alpha / r (or / sqrt r)
            return k * self.r, self.lora_alpha * (math.sqrt(k) if self.use_rslora else k)

        if isinstance(self.enable_lora, dict):
            patterns = {p: equivalent(sum(lst)) for p, lst in self.enable_lora.items()}
            return {"rank_pattern": {p: v[0] for p, v in patterns.items()},
                    "alpha_pattern": {p: v[1] for p, v in patterns.items()},
                    "enable_lora": None, "minilora_enable_lora": record}
        r, alpha = equivalent(sum(self.enable_lora))
        return {"r": r, "lora_alpha": alpha, "enable_lora": None, "minilora_enable_lora": record}

    @staticmethod
    def from_peft_fields(data: dict) -> dict:
        """Undo ``to_peft_fields`` on a loaded dict."""
        data = dict(data)
        record = data.pop("minilora_enable_lora", None)
        if record:
            data.update(record)
            if isinstance(record["enable_lora"], dict):  # the patterns were written for PEFT only
                data["rank_pattern"], data["alpha_pattern"] = {}, {}
        return data

    def enable_lora_for(self, module_name: str):
        """The slice list for one module (None: a plain, unsliced adapter)."""
        if isinstance(self.enable_lora, dict):
            return pattern_value(self.enable_lora, module_name, None)
        return self.enable_lora

    def rank_and_alpha(self, module_name: str) -> tuple:
        """r and alpha for one module: a matching ``rank_pattern``/``alpha_pattern`` entry wins (PEFT's rule)."""
        return (pattern_value(self.rank_pattern, module_name, self.r),
                pattern_value(self.alpha_pattern, module_name, self.lora_alpha))


# ---------------------------------------------------------------------------
# injection into a model
# ---------------------------------------------------------------------------


class LoraModel(BaseTuner):
    """Injects ``LoRALinear`` into a model and manages its adapters (PEFT's ``LoraModel``).

    The wrapped model is ``self.model``, so that inside a ``PeftModel`` a parameter is
    named ``base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight`` --
    PEFT's name, which is what makes the saved files interchangeable. Adding, choosing,
    disabling, mixing, merging and deleting adapters is ``BaseTuner``'s (minilora/tuner.py);
    what is LoRA's own is below: which layers to wrap and how, what is trained, a 4-bit
    base, combining adapters, and PEFT's file keys.
    """

    method = "LoRA"
    prefix = "lora_"
    layer_type = (LoRALinear, LoRAEmbedding)

    # --- finding and wrapping the targets -------------------------------------------

    def _prepare_config(self, config: LoraConfig) -> None:
        config.validate()
        set_fan_in_fan_out(self.model, config)
        self._fill_default(config, "target_modules", DEFAULT_TARGET_MODULES)

    def _target_names(self, config: LoraConfig) -> list:
        accepted = (nn.Linear, NF4Linear, nn.Embedding, LoRALinear, LoRAEmbedding)
        return self._find_targets(config.target_modules, accepted, config)

    def _new_layer(self, name: str, module, config: LoraConfig):
        return LoRAEmbedding(module) if isinstance(module, nn.Embedding) else LoRALinear(module)

    def _update_layer(self, name: str, layer, adapter_name: str, config: LoraConfig) -> None:
        r, alpha = config.rank_and_alpha(name)
        if isinstance(layer, LoRAEmbedding):
            unsupported = [f for f, on in (("use_dora", config.use_dora), ("lora_bias", config.lora_bias),
                                           ("enable_lora", config.enable_lora_for(name) is not None)) if on]
            if unsupported:  # PEFT refuses lora_bias here too; DoRA on an Embedding minilora does not implement
                raise ValueError(f"{name!r} is an Embedding; LoRA on an Embedding takes none of {', '.join(unsupported)}")
            layer.update_layer(adapter_name, r, alpha, config.use_rslora, config.init_lora_weights)
            return
        layer.update_layer(adapter_name, r, alpha, config.lora_dropout, config.use_rslora, config.init_lora_weights,
                           config.enable_lora_for(name), config.use_dora, config.lora_bias)

    def lora_layers(self) -> list:
        """Every ``(name, LoRALinear)`` of the model (its LoRA Embedding layers: ``adapter_layers()``)."""
        return [(n, m) for n, m in self.adapter_layers() if isinstance(m, LoRALinear)]

    def _mark_trainable(self, adapter_name: str) -> None:
        """Train the adapter's A and B (and DoRA's m, and the lora_bias), and the biases its config asks for."""
        for _, module in self.adapter_layers():
            if adapter_name not in module.adapters:
                continue
            if isinstance(module, LoRAEmbedding):
                module.lora_embedding_A[adapter_name].requires_grad_(True)
                module.lora_embedding_B[adapter_name].requires_grad_(True)
                continue
            module.lora_A[adapter_name].requires_grad_(True)
            module.lora_B[adapter_name].requires_grad_(True)  # its weight, and its bias with lora_bias
            if adapter_name in module.lora_magnitude_vector:
                module.lora_magnitude_vector[adapter_name].weight.requires_grad_(True)
        self._mark_biases_trainable(adapter_name)  # bias="lora_only" or "all" (BaseTuner)

    # --- merging into a 4-bit base --------------------------------------------------------

    def _before_merge_and_unload(self, undo: list) -> None:
        """``merge_and_unload`` on a 4-bit base (QLoRA) dequantizes it first, every NF4Linear
        becoming an nn.Linear: the result is a dense model (undone if the merge fails)."""
        for name, q in [(n, m) for n, m in self.model.named_modules() if isinstance(m, NF4Linear)]:
            self._replace(name, q.to_dense(), undo)

    # --- combining adapters ---------------------------------------------------------------

    @no_grad()
    def add_weighted_adapter(self, adapters, weights, adapter_name: str, combination_type: str = "svd",
                             svd_rank: int | None = None) -> None:
        """A new adapter combining existing ones, with PEFT's semantics:

        * ``"cat"``: A = [w_i s_i A_i] stacked, B = [B_i] side by side, r = Σ r_i, scaling 1,
          so ΔW = Σ w_i ΔW_i exactly;
        * ``"svd"``: ΔW = Σ w_i ΔW_i, truncated to rank ``svd_rank`` (default max r_i) by SVD --
          the best such approximation (Eckart-Young);
        * ``"linear"``: A = Σ sign · sqrt(|w_i s_i|) A_i and B = Σ sqrt(|w_i s_i|) B_i (all r_i equal).
          This is *not* Σ w_i ΔW_i: B A has cross terms B_i A_j (docs/lora.md shows the difference).
        """
        check_new_name(self, adapter_name)
        missing = [a for a in adapters if a not in self.peft_config]
        if missing:
            raise ValueError(f"add_weighted_adapter: unknown adapters {missing}; adapters: {sorted(self.peft_config)}")
        if len(adapters) != len(weights):
            raise ValueError(f"add_weighted_adapter: {len(adapters)} adapters but {len(weights)} weights")
        if len(adapters) == 1:
            combination_type = "linear"  # PEFT's rule
        configs = [self.peft_config[a] for a in adapters]
        if any(a in m.adapters for _, m in self.adapter_layers() if isinstance(m, LoRAEmbedding) for a in adapters):
            raise ValueError("add_weighted_adapter does not combine adapters on Embedding layers in minilora")
        if any(c.lora_bias for c in configs):
            raise ValueError("add_weighted_adapter does not combine adapters with a lora_bias")
        if any(c.enable_lora is not None for c in configs):
            raise ValueError("add_weighted_adapter does not combine enable_lora adapters")
        if any(c.use_dora for c in configs):  # a DoRA update depends on W through its norm: not a sum of ΔW_i
            raise ValueError("add_weighted_adapter does not combine DoRA adapters (use_dora=True)")
        ranks = [max([c.r, *c.rank_pattern.values()]) for c in configs]
        if combination_type == "linear":
            if len(set(ranks)) != 1:
                raise ValueError(f"combination_type='linear' needs adapters of one rank, got ranks {ranks}")
            new_rank = ranks[0]
        elif combination_type == "cat":
            new_rank = sum(ranks)
        elif combination_type == "svd":
            new_rank = svd_rank or max(ranks)
        else:
            raise ValueError(f"combination_type must be 'linear', 'cat' or 'svd', got {combination_type!r}")
        targets = sorted(set().union(*[set(n for n, m in self.lora_layers() if a in m.lora_A) for a in adapters]))
        new = copy.copy(configs[0])
        new.r, new.lora_alpha, new.rank_pattern, new.alpha_pattern = new_rank, new_rank, {}, {}
        # The combinations above fold each adapter's scaling into A and B, so the new adapter's own
        # scaling must be 1: alpha = r, and no rsLoRA (whose alpha / sqrt(r) would be sqrt(r)).
        # PEFT up to 0.21.2 keeps use_rslora here and so scales the result by sqrt(r) (fixed upstream, PR #3449).
        new.use_rslora = False
        new.target_modules = [name for name in targets]
        new.init_lora_weights = True
        new.modules_to_save = None
        self.inject_adapter(adapter_name, new)
        for _, m in self.lora_layers():
            if adapter_name not in m.lora_A:
                continue
            A_new, B_new = m.lora_A[adapter_name].weight, m.lora_B[adapter_name].weight
            present = [(a, w) for a, w in zip(adapters, weights) if a in m.lora_A]
            if combination_type == "cat":
                As = [w * m.scaling[a] * m.lora_A[a].weight.data for a, w in present]
                Bs = [m.lora_B[a].weight.data for a, _ in present]
                A_new.data = B.xp.zeros_like(A_new.data)
                B_new.data = B.xp.zeros_like(B_new.data)
                stacked_A = B.xp.concatenate(As, axis=0)
                A_new.data[: stacked_A.shape[0]] = stacked_A
                stacked_B = B.xp.concatenate(Bs, axis=1)
                B_new.data[:, : stacked_B.shape[1]] = stacked_B
            elif combination_type == "svd":
                delta = sum(w * m._delta_weight_data(a) for a, w in present)  # (out, in)
                U, S, Vh = B.xp.linalg.svd(delta, full_matrices=False)
                k = min(new_rank, S.shape[0])
                A_new.data = B.xp.zeros_like(A_new.data)
                B_new.data = B.xp.zeros_like(B_new.data)
                A_new.data[:k] = Vh[:k]
                B_new.data[:, :k] = U[:, :k] * S[:k]
            else:  # linear
                wa = [math.copysign(math.sqrt(abs(w * m.scaling[a])), w * m.scaling[a]) for a, w in present]
                wb = [math.sqrt(abs(w * m.scaling[a])) for a, w in present]
                A_new.data = sum(c * m.lora_A[a].weight.data for c, (a, _) in zip(wa, present)).astype(A_new.dtype)
                B_new.data = sum(c * m.lora_B[a].weight.data for c, (a, _) in zip(wb, present)).astype(B_new.dtype)

    # --- the adapter's weights, named as in PEFT's files -----------------------------------

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """``{PEFT key: array}`` for one adapter: lora_A/lora_B (adapter name removed), the
        trained biases, and the modules_to_save copies. Keys start ``base_model.model.``.

        Arrays are the live parameter arrays, except an ``enable_lora`` layer's B, which is
        exported in PEFT's layout: (out, k r) with zero blocks (docs/lora.md, section 6)."""
        out = {}
        for name, t in self.model.state_dict().items():
            key = _peft_key(name, adapter_name)
            if key is None:
                continue
            out["base_model.model." + key] = t
        for name, m in self.lora_layers():
            if m.enable_lora.get(adapter_name) is not None:
                out[f"base_model.model.{name}.lora_B.weight"] = m.full_lora_B(adapter_name)
        out.update(self._bias_state_dict(adapter_name))  # bias="lora_only" or "all" (BaseTuner)
        return out

    # --- PiSSA / OLoRA as a plain LoRA adapter on the original base --------------------------

    @no_grad()
    def converted_state_dict(self, adapter_name: str, initial: dict) -> tuple:
        """``(config fields, {PEFT key: array})``: the adapter, trained from a PiSSA or OLoRA start,
        as a LoRA adapter of rank 2r for the *original* W (PEFT's ``subtract_mutated_init``).

        PiSSA and OLoRA replace W by W_res = W - s B0 A0. After training, the model computes
        W_res + s B A = W + s (B A - B0 A0), and B A - B0 A0 = [B | -B0] [A ; A0]: a rank-2r update
        of W itself. ``initial`` is the adapter as it was before training (its saved arrays, keyed
        as ``adapter_state_dict``). The scaling is kept by doubling lora_alpha with r (or, with
        rsLoRA, multiplying it by sqrt 2); a lora_bias becomes b_B - b_B0; modules_to_save copies
        and trained biases are kept as they are (PEFT's conversion leaves them out of the file)."""
        config = self.peft_config[adapter_name]
        if config.use_dora or config.enable_lora is not None:
            raise ValueError("save_pretrained(path_initial_model_for_weight_conversion=...) converts plain LoRA "
                             "adapters (PiSSA, OLoRA) only, not DoRA or enable_lora ones")
        if config.use_rslora and (config.rank_pattern or config.alpha_pattern):
            raise ValueError("save_pretrained(path_initial_model_for_weight_conversion=...) is not supported for "
                             "use_rslora=True with rank_pattern or alpha_pattern: doubling r and alpha cannot keep "
                             "alpha / sqrt(r) for every layer (PEFT's rule)")
        tensors = {}
        for key, array in self.adapter_state_dict(adapter_name).items():
            start = B.xp.asarray(initial[key])
            if key.endswith((".lora_A.weight", ".lora_embedding_A")):
                tensors[key] = B.xp.concatenate([array, start], axis=0)  # [A ; A0], (2r, in)
            elif key.endswith((".lora_B.weight", ".lora_embedding_B")):
                tensors[key] = B.xp.concatenate([array, -start], axis=1)  # [B | -B0], (out, 2r)
            elif key.endswith(".lora_B.bias"):
                tensors[key] = array - start
            else:
                tensors[key] = array
        fields = {"init_lora_weights": True, "r": 2 * config.r,
                  "lora_alpha": config.lora_alpha * (math.sqrt(2) if config.use_rslora else 2),
                  "rank_pattern": {k: 2 * v for k, v in config.rank_pattern.items()},
                  "alpha_pattern": {k: 2 * v for k, v in config.alpha_pattern.items()}}
        return fields, tensors

    @no_grad()
    def load_adapter_state_dict(self, adapter_name: str, tensors: dict) -> None:
        """Copy arrays keyed as ``adapter_state_dict`` keys them (shapes already checked) into the adapter."""
        live = self.adapter_state_dict(adapter_name)
        for name, m in self.lora_layers():
            if m.enable_lora.get(adapter_name) is not None:
                key = f"base_model.model.{name}.lora_B.weight"
                m.set_full_lora_B(adapter_name, tensors[key])
                live.pop(key)
        for key, array in live.items():  # each is the live array of a parameter: write into it
            array[...] = B.xp.asarray(tensors[key])


def _peft_key(name: str, adapter_name: str):
    """The saved key for a model key, or None if it is not this adapter's: PEFT drops the
    adapter's name (``lora_A.default.weight`` -> ``lora_A.weight``,
    ``modules_to_save.default.x`` -> ``x``)."""
    for part in (".lora_A.", ".lora_B."):
        marker = f"{part}{adapter_name}."
        if marker in name:
            return name.replace(marker, part)
    marker = f".modules_to_save.{adapter_name}."
    if marker in name:
        return name.replace(marker, ".")
    marker = f".lora_magnitude_vector.{adapter_name}.weight"
    if name.endswith(marker):  # DoRA's m: PEFT saves it without the ".weight"
        return name[: -len(marker)] + ".lora_magnitude_vector"
    for part in (".lora_embedding_A.", ".lora_embedding_B."):  # an Embedding's pair: parameters, no ".weight"
        if name.endswith(part + adapter_name):
            return name[: -len(adapter_name) - 1]
    return None


__all__ = ["LoRALinear", "LoRAEmbedding", "LoraConfig", "LoraModel", "ModulesToSaveWrapper", "target_matches", "BASE"]
