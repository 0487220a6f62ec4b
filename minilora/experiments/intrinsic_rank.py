"""Claim 6: the weight updates of fine-tuning have a low intrinsic rank.

    The source article (docs/claims.md, claim 6): the change fine-tuning makes to a
    weight matrix tends to have a low intrinsic rank -- adapting a model takes far
    fewer directions than the matrix has.

Two measurements, after the LoRA paper (Hu et al., 2021, sec. 7):

1. **The spectrum of a full fine-tuning update.** For every projection W of the
   fully fine-tuned model (Wq, Wk, Wv -- the three slices of ``c_attn`` -- Wo,
   and the MLP's two), take ΔW = W_tuned - W_base and its singular values
   s_1 >= s_2 >= ...; the share of ΔW's energy (squared Frobenius norm) in its top r
   directions is ``Σ_{k<=r} s_k² / Σ_k s_k²``. A low-rank update puts most of it in a
   few directions; a random (Gaussian) matrix of the same shape is the baseline.

2. **Do a small and a large adapter find the same directions?** (the paper's
   sec. 7.2). With A_{r=8} and A_{r=64} the trained A matrices of two LoRA
   adapters of Wq (and of Wv), and U^i the top-i right-singular vectors of an A,

       φ(A_1, A_2, i, j) = ||U_{A_1}^{i T} U_{A_2}^j||_F² / min(i, j)   in [0, 1],

   1 when one subspace contains the other, and about max(i, j) / d for random
   subspaces of R^d (d = n_embd = 128).
"""

from __future__ import annotations

import functools

import numpy as np

from minilora import backend as B
from minilora.experiments import finetune as ft
from minilora.experiments.common import ClaimResult, combine, judge, over_bases

TOP_RANKS = (1, 2, 4, 8, 16, 32)  # r at which the energy share is reported
JUDGED_RANK = 8  # the headline: the share of ΔW's energy in its top 8 directions (of 128)
SMALL_R, LARGE_R = 8, 64  # the two adapters compared by φ (the paper's 8 and 64)


# ---------------------------------------------------------------------------
# the math
# ---------------------------------------------------------------------------


def energy_share(singular_values, r: int) -> float:
    """Σ_{k<=r} s_k² / Σ_k s_k²: the share of ||M||_F² in the best rank-r approximation of M (Eckart-Young)."""
    s2 = np.sort(np.asarray(singular_values, dtype=np.float64))[::-1] ** 2
    total = s2.sum()
    return float(s2[:r].sum() / total) if total > 0 else float("nan")


def rank_for_energy(singular_values, share: float = 0.9) -> int:
    """The smallest r whose top-r directions hold ``share`` of the energy."""
    s2 = np.sort(np.asarray(singular_values, dtype=np.float64))[::-1] ** 2
    return int(np.searchsorted(np.cumsum(s2) / s2.sum(), share - 1e-12) + 1)


def random_energy_share(shape, r: int, trials: int = 4, seed: int = 0) -> float:
    """The energy share of the top r directions of a Gaussian matrix of ``shape`` (mean over trials)."""
    return float(np.mean([energy_share(s, r) for s in random_spectra(tuple(shape), trials, seed)]))


@functools.lru_cache(maxsize=16)
def random_spectra(shape: tuple, trials: int, seed: int) -> tuple:
    """Singular values of ``trials`` Gaussian matrices of ``shape`` (drawn once per shape: a 1536 x 384 SVD is not free)."""
    rng = np.random.default_rng(seed)
    return tuple(np.linalg.svd(rng.standard_normal(shape), compute_uv=False) for _ in range(trials))


def right_singular_vectors(A) -> np.ndarray:
    """The right-singular vectors of A (r, d) as columns, (d, r), by decreasing singular value."""
    _, _, Vh = np.linalg.svd(np.asarray(A, dtype=np.float64), full_matrices=False)
    return Vh.T


def subspace_similarity(A1, A2, i: int, j: int) -> float:
    """φ(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F² / min(i, j) (Hu et al., sec. 7.2), U = right-singular vectors."""
    U1, U2 = right_singular_vectors(A1)[:, :i], right_singular_vectors(A2)[:, :j]  # (d, i), (d, j)
    return float(np.sum((U1.T @ U2) ** 2) / min(i, j))


def similarity_grid(A1, A2) -> np.ndarray:
    """φ(A1, A2, i, j) for i = 1..r1, j = 1..r2, as an (r1, r2) array."""
    U1, U2 = right_singular_vectors(A1), right_singular_vectors(A2)  # (d, r1), (d, r2)
    overlap = np.cumsum(np.cumsum((U1.T @ U2) ** 2, axis=0), axis=1)  # [i-1, j-1] = ||U1^i T U2^j||_F²
    i, j = np.meshgrid(np.arange(1, U1.shape[1] + 1), np.arange(1, U2.shape[1] + 1), indexing="ij")
    return overlap / np.minimum(i, j)


def random_similarity(i: int, j: int, d: int) -> float:
    """E[φ] for random subspaces of dimension i and j in R^d: E||P_i Q_j||_F² = i j / d, so φ = max(i, j) / d."""
    return max(i, j) / d


# ---------------------------------------------------------------------------
# the matrices of a GPT-2 state
# ---------------------------------------------------------------------------


def projections(state: dict, n_layer: int) -> dict:
    """``{"h.0.Wq": (out, in) array, ...}``: Wq, Wk, Wv (slices of c_attn), Wo, W_fc, W_proj of each layer."""
    out = {}
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        qkv = state[h + "attn.c_attn.weight"]  # (3C, C)
        C = qkv.shape[1]
        for k, name in enumerate(("Wq", "Wk", "Wv")):
            out[f"h.{i}.{name}"] = qkv[k * C:(k + 1) * C]
        out[f"h.{i}.Wo"] = state[h + "attn.c_proj.weight"]
        out[f"h.{i}.W_fc"] = state[h + "mlp.c_fc.weight"]
        out[f"h.{i}.W_proj"] = state[h + "mlp.c_proj.weight"]
    return out


def update_spectra(base_state: dict, tuned_state: dict, n_layer: int, projections=projections) -> dict:
    """Singular values of ΔW = W_tuned - W_base for every projection (``projections(state, n_layer)``
    names them: GPT-2's by default, ``bert_projections`` for BERT)."""
    base, tuned = projections(base_state, n_layer), projections(tuned_state, n_layer)
    return {name: np.linalg.svd(tuned[name].astype(np.float64) - base[name].astype(np.float64), compute_uv=False)
            for name in base}


def spectrum_figures(spectra: dict) -> dict:
    """Energy shares at TOP_RANKS, the rank holding 90% of the energy, and the random baseline, per matrix."""
    rows = {}
    for name, s in spectra.items():
        shape = _shape_of(name, len(s))
        rows[name] = {"share": {r: energy_share(s, r) for r in TOP_RANKS},
                      "random_share": {r: random_energy_share(shape, r) for r in TOP_RANKS},
                      "rank_90": rank_for_energy(s, 0.9), "singular_values": np.asarray(s).tolist()}
    return rows


def _shape_of(name: str, n_singular: int) -> tuple:
    """The (out, in) shape of a projection, for its random baseline (MLP matrices are 4x wide)."""
    return (4 * n_singular, n_singular) if name.endswith(("W_fc", "W_proj")) else (n_singular, n_singular)


def bert_projections(state: dict, n_layer: int, prefix: str = "bert.") -> dict:
    """``projections`` of a BERT state (Hugging Face's names), under the same short names:
    query, key, value, attention.output.dense, intermediate.dense, output.dense -> Wq, Wk, Wv, Wo, W_fc, W_proj."""
    names = {"Wq": "attention.self.query", "Wk": "attention.self.key", "Wv": "attention.self.value",
             "Wo": "attention.output.dense", "W_fc": "intermediate.dense", "W_proj": "output.dense"}
    return {f"h.{i}.{short}": state[f"{prefix}encoder.layer.{i}.{name}.weight"] for i in range(n_layer) for short, name in names.items()}


def bert_adapter_A(state: dict, n_layer: int, r: int = 0) -> dict:
    """``{"h.0.Wq": A (r, in), "h.0.Wv": ...}`` from a query + value adapter's state (PEFT keys)."""
    key = "base_model.model.bert.encoder.layer.{}.attention.self.{}.lora_A.weight"
    return {f"h.{i}.{short}": state[key.format(i, name)] for i in range(n_layer) for short, name in (("Wq", "query"), ("Wv", "value"))}


def adapter_A(state: dict, n_layer: int, r: int) -> dict:
    """``{"h.0.Wq": A (r, in), "h.0.Wv": ...}`` from a Wq+Wv adapter's state (PEFT keys; A is (2r, in), q rows first)."""
    out = {}
    for i in range(n_layer):
        A = state[f"base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight"]  # (2r, in)
        out[f"h.{i}.Wq"], out[f"h.{i}.Wv"] = A[:r], A[r:2 * r]
    return out


def relative_change(after: dict, before: dict) -> float:
    """Mean over matrices of ||after - before||_F / ||before||_F: how far training moved the A matrices."""
    return float(np.mean([np.linalg.norm(after[k] - before[k]) / np.linalg.norm(before[k]) for k in after]))


def phi_figures(small: dict, large: dict, d: int) -> dict:
    """φ between the adapters' A matrices, matrix by matrix, with the random baseline."""
    rows = {}
    for name in small:
        grid = similarity_grid(small[name], large[name])  # (r_small, r_large)
        rows[name] = {"phi_1_1": float(grid[0, 0]), "phi_diag_mean": float(np.mean(np.diag(grid))),
                      "grid": grid.tolist()}
    rows["random"] = {"phi_1_1": random_similarity(1, 1, d),
                      "phi_diag_mean": float(np.mean([random_similarity(i, i, d) for i in range(1, SMALL_R + 1)]))}
    return rows


def adapter_figures(A: dict, A0: dict, d: int) -> dict:
    """φ between the trained A matrices of the ``"small"`` and ``"large"`` adapters (``{matrix: A}`` each),
    on the whole of A and on what training added (A - A_init, from ``A0``), and how far A moved."""
    phi = phi_figures(A["small"], A["large"], d)
    learned = phi_figures({n: A["small"][n] - A0["small"][n] for n in A["small"]},
                          {n: A["large"][n] - A0["large"][n] for n in A["large"]}, d)  # φ of what training added

    def mean(rows, key):
        return float(np.mean([row[key] for name, row in rows.items() if name != "random"]))

    return {"phi": phi, "phi_learned": learned, "mean_phi_1_1": mean(phi, "phi_1_1"), "mean_phi_diag": mean(phi, "phi_diag_mean"),
            "mean_phi_1_1_learned": mean(learned, "phi_1_1"),
            "A_relative_change": {k: relative_change(A[k], A0[k]) for k in A}}  # how far A travelled from its random start


# The verdict.
# (1) Low rank: the mean share of ΔW's energy in its top 8 of 128 directions (a random
#     matrix of the same shape puts ~15% there).
SHARE_HOLDS, SHARE_PARTLY = 0.50, 0.30
# (2) The paper's finding: the top direction of a rank-8 adapter lies in the span of
#     the rank-64 one's top direction far more than chance (1/128 = 0.008).
PHI_HOLDS, PHI_PARTLY = 0.50, 0.10


def judge_rank(mean_share: float, mean_phi_1_1: float) -> tuple:
    parts = {"energy in top 8": judge(mean_share, SHARE_HOLDS, SHARE_PARTLY),
             "phi(1,1) of r=8 vs r=64": judge(mean_phi_1_1, PHI_HOLDS, PHI_PARTLY)}
    return combine(*parts.values()), parts


# ---------------------------------------------------------------------------
# plots and the claim
# ---------------------------------------------------------------------------


def plot_spectra(rows: dict, path: str, title: str) -> None:
    """Cumulative energy share against r for every ΔW (thin lines), their mean, and the random baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for name, row in rows.items():
        s2 = np.asarray(row["singular_values"]) ** 2
        ax.plot(np.arange(1, len(s2) + 1), np.cumsum(s2) / s2.sum(), color="C0", alpha=0.25, lw=0.8)
    first = next(iter(rows.values()))
    n = len(first["singular_values"])
    rng = np.random.default_rng(0)
    s2 = np.linalg.svd(rng.standard_normal((n, n)), compute_uv=False) ** 2
    ax.plot(np.arange(1, n + 1), np.cumsum(s2) / s2.sum(), color="k", ls="--", label=f"random {n}x{n} matrix")
    ax.plot([], [], color="C0", label="ΔW of full fine-tuning (each matrix)")
    ax.axvline(JUDGED_RANK, color="gray", ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("r (top singular directions)")
    ax.set_ylabel("share of ||ΔW||_F² in the top r")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_phi(rows: dict, path: str) -> None:
    """φ(A_8, A_64, i, j) averaged over the adapted matrices, as the paper's Figure 3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = np.array([row["grid"] for name, row in rows.items() if name != "random"])  # (m, 8, 64)
    fig, ax = plt.subplots(figsize=(7.0, 2.6))
    im = ax.imshow(grids.mean(axis=0), aspect="auto", vmin=0, vmax=1, cmap="viridis",
                   extent=(0.5, grids.shape[2] + 0.5, grids.shape[1] + 0.5, 0.5))
    ax.set_xlabel(f"j (top directions of A, r={LARGE_R})")
    ax.set_ylabel(f"i (r={SMALL_R})")
    ax.set_title("φ(A_r=8, A_r=64, i, j), mean over Wq and Wv of every layer", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rank_specs(quick: bool) -> dict:
    """The runs this claim reads: full fine-tuning on both tasks, and Wq+Wv adapters at r=8 and r=64 (seed 0)."""
    s = ft.sizes(quick)
    seed = s.seeds[0]
    return {"full cls": ft.RunSpec("cls", "full", seed=seed, **s.common("cls")),
            "full code": ft.RunSpec("code", "full", seed=seed, **s.common("code")),
            "small": ft.RunSpec("cls", "lora", "Wq+Wv", SMALL_R, seed=seed, **s.common("cls")),
            "large": ft.RunSpec("cls", "lora", "Wq+Wv", LARGE_R, seed=seed, **s.common("cls"))}


TITLE = "Low intrinsic rank of the update"
CLAIM = "the change fine-tuning makes to a weight matrix tends to have a low intrinsic rank: a few directions carry most of it"


def run(ctx) -> ClaimResult:
    """Claim 6 on the toy base (``run_toy``) and on MiniLM (``minilm_claims.rank``), side by side."""
    from minilora.experiments import minilm_claims

    toy = run_toy(ctx) if "toy" in ctx.bases else None
    real = minilm_claims.rank(ctx) if "minilm" in ctx.bases else None
    return over_bases("rank", TITLE, CLAIM, f"energy of full fine-tuning's ΔW in its top {JUDGED_RANK} directions; "
                      "φ between r=8 and r=64 adapters; on both base models", toy, real,
                      minilm_claims.rank_comparison(toy, real) if toy and real else "")


def run_toy(ctx) -> ClaimResult:
    env = ft.environment(ctx)
    specs = rank_specs(ctx.quick)
    runs = dict(zip(specs, ft.runs_for(ctx, list(specs.values()))))
    n_layer, d = env.base.config.n_layer, env.base.config.n_embd
    base_state = {k: B.to_numpy(v) for k, v in env.base.state_dict().items()}  # on the host: the SVDs run in NumPy

    spectra = {task: spectrum_figures(update_spectra(base_state, runs[f"full {task}"].state, n_layer))
               for task in ("cls", "code")}
    mean_share = {task: float(np.mean([row["share"][JUDGED_RANK] for row in rows.values()])) for task, rows in spectra.items()}
    random_share = float(np.mean([row["random_share"][JUDGED_RANK] for row in spectra["cls"].values()]))
    rank_90 = {task: float(np.median([row["rank_90"] for row in rows.values()])) for task, rows in spectra.items()}
    A = {k: adapter_A(runs[k].state, n_layer, runs[k].spec.r) for k in ("small", "large")}
    A0 = {k: adapter_A(ft.trained_state(ft.fresh_model(specs[k], env.base)), n_layer, specs[k].r) for k in ("small", "large")}
    a = adapter_figures(A, A0, d)
    moved, phi, learned = a["A_relative_change"], a["phi"], a["phi_learned"]
    mean_phi, mean_phi_diag, mean_phi_learned = a["mean_phi_1_1"], a["mean_phi_diag"], a["mean_phi_1_1_learned"]
    share = float(np.mean(list(mean_share.values())))
    verdict, parts = judge_rank(share, mean_phi)

    plots = ["rank_spectrum_cls.png", "rank_spectrum_code.png", "rank_phi.png"]
    plot_spectra(spectra["cls"], ctx.path(plots[0]), "Full fine-tuning, docstring -> package: cumulative energy of ΔW")
    plot_spectra(spectra["code"], ctx.path(plots[1]), "Full fine-tuning, prose -> code: cumulative energy of ΔW")
    plot_phi(phi, ctx.path(plots[2]))

    quick = "**Quick-mode figures** (a few dozen steps, one seed). " if ctx.quick else ""
    body = (
        quick + f"Full fine-tuning's update ΔW puts on average {100 * mean_share['cls']:.0f}% (classification) and "
        f"{100 * mean_share['code']:.0f}% (code) of its energy in its top {JUDGED_RANK} of {d} directions, against "
        f"{100 * random_share:.0f}% for a random matrix of the same shape ({parts['energy in top 8']}); the median "
        f"matrix needs {rank_90['cls']:.0f} (classification) and {rank_90['code']:.0f} (code) of its directions for 90% "
        f"of its energy.\n\n"
        f"Between the A matrices of a rank-{SMALL_R} and a rank-{LARGE_R} adapter of Wq and Wv (classification, same "
        f"seed, independent random initialisations), the top directions overlap with φ(1,1) = {mean_phi:.2f} on average "
        f"(random subspaces: {phi['random']['phi_1_1']:.3f}; {parts['phi(1,1) of r=8 vs r=64']}), and φ(i,i) for "
        f"i = 1..{SMALL_R} averages {mean_phi_diag:.2f} (random: {phi['random']['phi_diag_mean']:.3f}). Training moved "
        f"A by {100 * moved['small']:.0f}% (r={SMALL_R}) and {100 * moved['large']:.0f}% (r={LARGE_R}) of its initial "
        f"norm, so part of each A is still its random start; on the learned parts alone, A - A_init, φ(1,1) = "
        f"{mean_phi_learned:.2f}."
    )
    return ClaimResult(
        key="rank",
        title=TITLE,
        claim=CLAIM,
        measured=f"energy of full fine-tuning's ΔW in its top {JUDGED_RANK} directions; φ between r=8 and r=64 adapters",
        figure=f"top-{JUDGED_RANK} energy {100 * share:.0f}% (random {100 * random_share:.0f}%); φ(1,1) {mean_phi:.2f} (random {phi['random']['phi_1_1']:.3f})",
        verdict=verdict,
        thresholds={"energy share holds >=": SHARE_HOLDS, "energy share partly >=": SHARE_PARTLY,
                    "phi(1,1) holds >=": PHI_HOLDS, "phi(1,1) partly >=": PHI_PARTLY},
        figures={"mean_share": mean_share, "random_share": random_share, "rank_90_median": rank_90,
                 "mean_phi_1_1": mean_phi, "mean_phi_diag": mean_phi_diag, "mean_phi_1_1_learned": mean_phi_learned,
                 "A_relative_change": moved, "parts": parts, "spectra": spectra, "phi": phi, "phi_learned": learned},
        settings={"runs": {k: v.label() for k, v in specs.items()}, "top_ranks": list(TOP_RANKS)},
        plots=plots,
        body=body,
    )
