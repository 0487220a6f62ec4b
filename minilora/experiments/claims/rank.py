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
   subspaces of R^d (d = n_embd = 128 on the toy, hidden = 384 on MiniLM).

3. **The learned update and W** (sec. 7.2-7.3, shown, not judged): φ on ΔW = s B A instead of A (its
   top directions are the update's, not A's random start's); two r = 64 adapters from different seeds
   (the paper's Figure 4, what noise alone gives); and the paper's Table 7, ||U^T W V||_F for the top-r
   singular vectors of ΔW, of W and of a random subspace, with the amplification ||ΔW||_F / ||U^T W V||_F.

A base names its matrices (``base.projections``: Wq, Wk, Wv, Wo, W_fc, W_proj of each layer)
and its adapters' A and B (``base.adapter_A``, ``base.adapter_B``); the mathematics here is the same on every base.
"""

from __future__ import annotations

import functools

import numpy as np

from minilora.experiments.core import FAILS, combine, compare_verdicts, judge_interval
from minilora.experiments.core.intervals import LEVEL, REPLICATES, SEED, interval_text, percentile_interval, plot_interval
from minilora.experiments.runs import RunSpec, summarize, train, trained_state

KEY, NUMBER = "rank", 6
TITLE = "Low intrinsic rank of the update"
CLAIM = "the change fine-tuning makes to a weight matrix tends to have a low intrinsic rank: a few directions carry most of it"
MEASURED = ("energy of full fine-tuning's ΔW in its top 8 directions; φ between r=8 and r=64 adapters; "
            "shown beside: φ of their ΔW = sBA, seed against seed, the LoRA paper's Table 7; on both base models")
BASES = ("toy", "minilm")

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


def similarity_grid(A1, A2, r1: int | None = None, r2: int | None = None) -> np.ndarray:
    """φ(A1, A2, i, j) for i = 1..r1, j = 1..r2 (all of each A's directions unless given), as an (r1, r2) array.
    (r1, r2 cut a ΔW = s B A of rank r to its top r: its singular vectors past r are arbitrary.)"""
    U1, U2 = right_singular_vectors(A1)[:, :r1], right_singular_vectors(A2)[:, :r2]  # (d, r1), (d, r2)
    overlap = np.cumsum(np.cumsum((U1.T @ U2) ** 2, axis=0), axis=1)  # [i-1, j-1] = ||U1^i T U2^j||_F²
    i, j = np.meshgrid(np.arange(1, U1.shape[1] + 1), np.arange(1, U2.shape[1] + 1), indexing="ij")
    return overlap / np.minimum(i, j)


def random_similarity(i: int, j: int, d: int) -> float:
    """E[φ] for random subspaces of dimension i and j in R^d: E||P_i Q_j||_F² = i j / d, so φ = max(i, j) / d."""
    return max(i, j) / d


# The learned update and the paper's Table 7 (sec. 7.3): how ΔW relates to W.


def lora_update(B, A, scaling: float) -> np.ndarray:
    """ΔW = s B A (out, in), the update an adapter adds to W (s = alpha / r, or alpha / sqrt(r) with rsLoRA)."""
    return scaling * (np.asarray(B, dtype=np.float64) @ np.asarray(A, dtype=np.float64))


def top_singular(M, r: int) -> tuple:
    """(U, V): M's top-r left and right singular vectors as columns, (out, r) and (in, r)."""
    U, _, Vh = np.linalg.svd(np.asarray(M, dtype=np.float64), full_matrices=False)
    return U[:, :r], Vh[:r].T


def projected_norm(W, U, V) -> float:
    """||U^T W V||_F: how much of W lies in the left/right subspaces spanned by U's and V's orthonormal columns."""
    return float(np.linalg.norm(U.T @ np.asarray(W, dtype=np.float64) @ V))


def random_orthonormal(n: int, r: int, rng) -> np.ndarray:
    """r orthonormal columns spanning a uniformly random subspace of R^n (QR of a Gaussian matrix)."""
    return np.linalg.qr(rng.standard_normal((n, r)))[0]


def amplification(W, delta, r: int) -> float:
    """||ΔW||_F / ||U^T W V||_F with U, V ΔW's top-r singular vectors: how strongly ΔW amplifies the
    directions of W it shares (the paper's sec. 7.3, ~21.5 for GPT-3's Wq at r = 4)."""
    return float(np.linalg.norm(delta) / projected_norm(W, *top_singular(delta, r)))


def update_table(W, delta, r: int, seed: int = 0) -> dict:
    """The paper's Table 7 for one matrix: ||U^T W V||_F with U, V the top-r singular vectors of ΔW, of W
    itself, and of a random subspace; ||W||_F, ||ΔW||_F, and the amplification factor."""
    rng = np.random.default_rng(seed)
    W = np.asarray(W, dtype=np.float64)
    return {"delta": projected_norm(W, *top_singular(delta, r)), "W": projected_norm(W, *top_singular(W, r)),
            "random": projected_norm(W, random_orthonormal(W.shape[0], r, rng), random_orthonormal(W.shape[1], r, rng)),
            "norm_W": float(np.linalg.norm(W)), "norm_delta": float(np.linalg.norm(delta)),
            "amplification": amplification(W, delta, r)}


# ---------------------------------------------------------------------------
# the matrices of a state
# ---------------------------------------------------------------------------


def update_spectra(base: dict, tuned: dict) -> dict:
    """Singular values of ΔW = W_tuned - W_base for every projection (``{name: W}``, as ``base.projections`` gives them)."""
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


def relative_change(after: dict, before: dict) -> float:
    """Mean over matrices of ||after - before||_F / ||before||_F: how far training moved the A matrices."""
    return float(np.mean([np.linalg.norm(after[k] - before[k]) / np.linalg.norm(before[k]) for k in after]))


def phi_figures(small: dict, large: dict, d: int, ranks: tuple = (None, None)) -> dict:
    """φ between two adapters' matrices (A, or ΔW with ``ranks`` its directions to read), matrix by matrix,
    with the random baseline."""
    rows = {}
    for name in small:
        grid = similarity_grid(small[name], large[name], *ranks)  # (r_small, r_large)
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


def mean_phi(rows: dict) -> dict:
    """φ(1,1) and the mean of φ(i,i), i = 1..8, averaged over the matrices of ``phi_figures`` rows."""
    kept = [row for name, row in rows.items() if name != "random"]
    return {"phi_1_1": float(np.mean([row["phi_1_1"] for row in kept])),
            "phi_diag": float(np.mean([row["phi_diag_mean"] for row in kept]))}


def update_figures(delta: dict, pretrained: dict, A: dict, other_seed: dict | None, d: int) -> dict:
    """The paper's sec. 7 on the learned updates ΔW = s B A (``delta``: {"small"|"large": {matrix: ΔW}}):
    φ between ΔW_8's and ΔW_64's right-singular subspaces (Figure 3 without A's random start); seed against
    seed at r = 64 on A and on ΔW (Figure 4's noise reference; ``other_seed`` holds the second seed's
    {"A", "delta"}, or None with one seed); Table 7 for every adapted matrix at r = 8 and r = 64."""
    phi = phi_figures(delta["small"], delta["large"], d, (SMALL_R, LARGE_R))
    out = {"phi_delta": mean_phi(phi), "phi_delta_grid": phi, "seed_phi": None}
    if other_seed is not None:
        out["seed_phi"] = {"A": mean_phi(phi_figures(A["large"], other_seed["A"], d)),
                           "delta": mean_phi(phi_figures(delta["large"], other_seed["delta"], d, (LARGE_R, LARGE_R)))}
    tables = {str(r): {name: update_table(pretrained[name], delta[k][name], r) for name in delta[k]}
              for k, r in (("small", SMALL_R), ("large", LARGE_R))}  # keyed "8", "64" (as results.json keeps them)
    out["table7"] = {r: {key: float(np.mean([row[key] for row in rows.values()])) for key in next(iter(rows.values()))}
                     for r, rows in tables.items()}  # the mean over the adapted matrices
    return out


# The LoRA paper's Table 7 (GPT-3 175B, Wq of layer 48): ||U^T Wq V^T||_F with U, V the top-r singular
# vectors of ΔWq, of Wq, and of a random matrix; ||Wq||_F = 61.95, ||ΔWq||_F = 6.91 (r = 4), 3.57 (r = 64).
PAPER_TABLE7 = {4: {"delta": 0.32, "W": 21.67, "random": 0.02, "norm_W": 61.95, "norm_delta": 6.91},
                64: {"delta": 1.90, "W": 37.71, "random": 0.33, "norm_W": 61.95, "norm_delta": 3.57}}


# ---------------------------------------------------------------------------
# plots and the claim
# ---------------------------------------------------------------------------


def plot_spectra(rows: dict, title: str):
    """Cumulative energy share against r for every ΔW (thin lines), their mean, and the random baseline."""
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
    return fig


def plot_phi(rows: dict, of: str = "A"):
    """φ(A_8, A_64, i, j) (or the same of ΔW, ``of``) averaged over the adapted matrices, as the paper's Figure 3."""
    import matplotlib.pyplot as plt

    grids = np.array([row["grid"] for name, row in rows.items() if name != "random"])  # (m, 8, 64)
    fig, ax = plt.subplots(figsize=(7.0, 2.6))
    im = ax.imshow(grids.mean(axis=0), aspect="auto", vmin=0, vmax=1, cmap="viridis",
                   extent=(0.5, grids.shape[2] + 0.5, grids.shape[1] + 0.5, 0.5))
    ax.set_xlabel(f"j (top directions of {of}, r={LARGE_R})")
    ax.set_ylabel(f"i (r={SMALL_R})")
    ax.set_title(f"φ({of} at r=8, {of} at r=64, i, j), mean over Wq and Wv of every layer", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# the claim
# ---------------------------------------------------------------------------


def rank_specs(base, quick: bool, seed: int | None = None) -> dict:
    """The runs this claim reads at one seed of claim 4's grid (its first unless given): full fine-tuning on
    each task, and adapters on Wq and Wv (the base's PAPER_TARGET) at r = 8 and r = 64 on classification."""
    grid = base.grid(quick)
    seed = grid.seeds[0] if seed is None else seed
    specs = {f"full {task}": RunSpec(task, "full", seed=seed, **grid.common(task)) for task in base.TASKS}
    specs["small"] = RunSpec("cls", "lora", base.PAPER_TARGET, SMALL_R, seed=seed, **grid.common("cls"))
    specs["large"] = RunSpec("cls", "lora", base.PAPER_TARGET, LARGE_R, seed=seed, **grid.common("cls"))
    return specs


def kept_runs(base, session) -> tuple:
    """(specs, runs, seeds passed over) at the first seed of claim 4's grid whose every run this claim reads
    did not fail -- claim 4's rule, on the validation split (``runs.summarize``) -- so claim 6 never reads a
    run claim 4 left out; the first seed's if every seed has a failed run."""
    baseline = base.baseline(session)
    passed = []
    for seed in base.grid(session.quick).seeds:
        specs = rank_specs(base, session.quick, seed)
        runs = dict(zip(specs, train(session, base, list(specs.values()))))
        rows = summarize(list(runs.values()), baseline, name=lambda spec: f"{spec.method} {spec.r}")
        if not any(row["failed"] for task in rows.values() for row in task.values()):
            return specs, runs, passed
        passed.append(seed)
    specs = rank_specs(base, session.quick)
    return specs, dict(zip(specs, train(session, base, list(specs.values())))), passed


def measure(base, session) -> dict:
    specs, runs, passed = kept_runs(base, session)
    labels = {k: base.label(r.spec) for k, r in runs.items()}
    if not all(runs[f"full {task}"].state for task in base.TASKS):  # diverged: no weights to read
        return {"diverged": True, "runs": labels}
    d = base.width(session)
    pretrained = base.projections(base.pretrained_state(session))  # on the host: the SVDs run in NumPy
    spectra = {task: spectrum_figures(update_spectra(pretrained, base.projections(runs[f"full {task}"].state)))
               for task in base.TASKS}
    env = base.environment(session)
    A = {k: base.adapter_A(runs[k].state, specs[k]) for k in ("small", "large")}
    A0 = {k: base.adapter_A(trained_state(base.fresh_model(specs[k], env)), specs[k]) for k in ("small", "large")}
    delta = {k: adapter_updates(base, runs[k]) for k in ("small", "large")}
    run = second_seed(base, session, specs["large"])
    other = None if run is None else {"A": base.adapter_A(run.state, run.spec), "delta": adapter_updates(base, run)}
    first = spectra[base.TASKS[0]]
    return {"spectra": spectra, "d": d, "runs": labels, "seed": specs["small"].seed, "seeds_passed_over": passed,
            "mean_share": {task: float(np.mean([row["share"][JUDGED_RANK] for row in rows.values()])) for task, rows in spectra.items()},
            "random_share": float(np.mean([row["random_share"][JUDGED_RANK] for row in first.values()])),
            "rank_90_median": {task: float(np.median([row["rank_90"] for row in rows.values()])) for task, rows in spectra.items()},
            "share_by_matrix": {m: float(np.mean([row["share"][JUDGED_RANK] for n, row in first.items() if n.endswith("." + m)]))
                                for m in ("Wq", "Wk", "Wv", "Wo", "W_fc", "W_proj")},
            "top_ranks": list(TOP_RANKS), **adapter_figures(A, A0, d),
            **update_figures(delta, pretrained, A, other, d), "seed_other": None if run is None else run.spec.seed}


def adapter_updates(base, run) -> dict:
    """``{matrix: ΔW = s B A}`` of a trained LoRA run's adapted matrices."""
    spec = run.spec
    scaling = spec.lora_alpha / (np.sqrt(spec.r) if spec.use_rslora else spec.r)
    A, B = base.adapter_A(run.state, spec), base.adapter_B(run.state, spec)
    return {name: lora_update(B[name], A[name], scaling) for name in A}


def second_seed(base, session, spec):
    """``spec``'s run at the first other seed of claim 4's grid, for the seed-against-seed reference (the
    paper's Figure 4); None with one seed (quick mode), or when that run failed claim 4's rule (on
    validation) or diverged."""
    seed = next((s for s in base.grid(session.quick).seeds if s != spec.seed), None)
    if seed is None:
        return None
    run, = train(session, base, [spec.replace(seed=seed)])
    rows = summarize([run], base.baseline(session), name=lambda s: f"{s.method} {s.r}")
    return None if not run.state or any(row["failed"] for task in rows.values() for row in task.values()) else run


# The verdict.
# (1) Low rank: the mean share of ΔW's energy in its top 8 directions, over the tasks (a random
#     matrix of the toy's shape puts ~15% there).
SHARE_HOLDS, SHARE_PARTLY = 0.50, 0.30
# (2) The paper's finding: the top direction of a rank-8 adapter lies in the span of
#     the rank-64 one's top direction far more than chance (1/128 = 0.008 on the toy).
PHI_HOLDS, PHI_PARTLY = 0.50, 0.10


def matrix_interval(groups: list, level: float = LEVEL) -> list | None:
    """The 95% interval of the mean over ``groups`` of each group's mean per-matrix figure, the matrices of each
    group (a task's projections; the adapted matrices) drawn with replacement; ``None`` when a group has one matrix."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    if any(len(g) < 2 for g in groups):
        return None
    rng = np.random.default_rng(SEED)
    reps = np.mean([g[rng.integers(0, len(g), size=(REPLICATES, len(g)))].mean(axis=1) for g in groups], axis=0)
    return percentile_interval(reps, level)


def per_matrix(figures: dict) -> dict:
    """What the intervals resample: each task's per-matrix top-8 energy share, and each adapted matrix's φ(1,1)."""
    if "spectra" not in figures or "phi" not in figures:
        raise ValueError(f"claim {NUMBER} ({KEY}): the results hold no per-matrix figures, which its intervals need; "
                         "measure it again with this version (minilora verify --only rank)")
    share = lambda row: row["share"].get(str(JUDGED_RANK), row["share"].get(JUDGED_RANK))  # noqa: E731  (JSON keys are text)
    return {"share": [[share(row) for row in rows.values()] for rows in figures["spectra"].values()],
            "phi": [row["phi_1_1"] for name, row in figures["phi"].items() if name != "random"]}


def verdict(figures: dict) -> dict:
    """Both parts on their 95% intervals over the matrices (``matrix_interval``): the seed's runs are one (claim 6 reads
    one seed's), so the interval says how much the figure rests on a few matrices, not how another seed would vary."""
    thresholds = {"energy share holds >=": SHARE_HOLDS, "energy share partly >=": SHARE_PARTLY,
                  "phi(1,1) holds >=": PHI_HOLDS, "phi(1,1) partly >=": PHI_PARTLY,
                  "interval": "over the matrices (one seed's runs)"}
    if figures.get("diverged"):
        return {"verdict": FAILS, "parts": {}, "thresholds": thresholds}
    share = float(np.mean(list(figures["mean_share"].values())))
    rows = per_matrix(figures)
    ci = {"share": matrix_interval(rows["share"]), "phi": matrix_interval([rows["phi"]])}
    parts = {"energy in top 8": judge_interval(ci["share"], SHARE_HOLDS, SHARE_PARTLY),
             "phi(1,1) of r=8 vs r=64": judge_interval(ci["phi"], PHI_HOLDS, PHI_PARTLY)}
    return {"verdict": combine(*parts.values()), "parts": parts, "share": share, "intervals": ci, "thresholds": thresholds}


TASK_NAMES = {"cls": ("classification", "docstring -> package"), "code": ("code", "prose -> code")}


def render(figures: dict, verdict: dict, plot, quick: bool) -> dict:
    if figures.get("diverged"):
        return {"figure": "full fine-tuning diverged", "body": "Full fine-tuning's loss diverged: no ΔW to read.", "plots": []}
    f, parts, d = figures, verdict["parts"], figures["d"]
    tasks = list(f["spectra"])
    plots = [plot(plot_spectra(f["spectra"][task], f"Full fine-tuning, {TASK_NAMES[task][1]}: cumulative energy of ΔW"),
                  f"rank_spectrum_{task}.png") for task in tasks]
    plots.append(plot(plot_phi(f["phi"], "A"), "rank_phi.png"))
    plots.append(plot(plot_phi(f["phi_delta_grid"], "ΔW = sBA"), "rank_phi_delta.png"))
    each = " and ".join(f"{100 * f['mean_share'][t]:.0f}% ({TASK_NAMES[t][0]})" for t in tasks) if len(tasks) > 1 else \
        f"{100 * f['mean_share'][tasks[0]]:.0f}%"
    rank90 = " and ".join(f"{f['rank_90_median'][t]:.0f} ({TASK_NAMES[t][0]})" for t in tasks) if len(tasks) > 1 else \
        f"{f['rank_90_median'][tasks[0]]:.0f}"
    by_kind = "" if len(tasks) > 1 else "; by kind: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in f["share_by_matrix"].items())
    moved, phi = f["A_relative_change"], f["phi"]
    body = (
        ("**Quick-mode figures** (a few dozen steps, one seed). " if quick else "")
        + f"Full fine-tuning's update ΔW of the {len(f['spectra'][tasks[0]])} projection matrices puts on average {each} "
        f"of its energy in its top {JUDGED_RANK} of {d} directions, against {100 * f['random_share']:.0f}% for a random "
        f"matrix of the same shape; the mean over tasks {100 * verdict['share']:.0f}%"
        f"{interval_text(verdict['intervals']['share'], 100, '%', 0)} ({parts['energy in top 8']}){by_kind}; the median matrix needs {rank90} of its directions "
        "for 90% of its energy.\n\n"
        f"Between the A matrices of a rank-{SMALL_R} and a rank-{LARGE_R} adapter of Wq and Wv (classification, same "
        f"seed, independent random initialisations), the top directions overlap with φ(1,1) = {f['mean_phi_1_1']:.2f}"
        f"{interval_text(verdict['intervals']['phi'], 1, '', 2)} on average "
        f"(random subspaces: {phi['random']['phi_1_1']:.3f}; {parts['phi(1,1) of r=8 vs r=64']}), and φ(i,i) for "
        f"i = 1..{SMALL_R} averages {f['mean_phi_diag']:.2f} (random: {phi['random']['phi_diag_mean']:.3f}). Training moved "
        f"A by {100 * moved['small']:.0f}% (r={SMALL_R}) and {100 * moved['large']:.0f}% (r={LARGE_R}) of its initial "
        f"norm, so part of each A is still its random start; on the learned parts alone, A - A_init, φ(1,1) = "
        f"{f['mean_phi_1_1_learned']:.2f}."
        + " (The intervals resample the matrices: they say how much each figure rests on a few matrices -- one matrix "
        "far from the others moves a mean over eight -- not how another seed's runs would differ; this claim reads one "
        "seed's.)"
        + _passed_over_text(f["seed"], f["seeds_passed_over"])
        + "\n\n" + _update_text(f, quick)
    )
    plots.append(plot(plot_intervals(f, verdict), "rank_intervals.png"))
    ci = verdict["intervals"]
    return {"figure": f"top-{JUDGED_RANK} energy {100 * verdict['share']:.0f}%{interval_text(ci['share'], 100, '%', 0)} "
                      f"(random {100 * f['random_share']:.0f}%); φ(1,1) {f['mean_phi_1_1']:.2f}{interval_text(ci['phi'], 1, '', 2)} "
                      f"(random {phi['random']['phi_1_1']:.3g})",
            "body": body, "plots": plots}


def plot_intervals(figures: dict, verdict: dict):
    """The two judged figures with their intervals over the matrices, against their thresholds."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8.6, 3.6))
    plot_interval(ax1, verdict["share"], verdict["intervals"]["share"], {"holds": SHARE_HOLDS, "partly": SHARE_PARTLY},
                  f"% of full fine-tuning's ΔW energy in its top {JUDGED_RANK} directions (interval over the matrices)", scale=100)
    plot_interval(ax2, figures["mean_phi_1_1"], verdict["intervals"]["phi"], {"holds": PHI_HOLDS, "partly": PHI_PARTLY},
                  f"φ(1,1) of A, r={SMALL_R} against r={LARGE_R} (interval over the adapted matrices)")
    fig.tight_layout()
    return fig


def _update_text(f: dict, quick: bool) -> str:
    """The paragraph on the learned updates ΔW = s B A: φ of ΔW, seed against seed, Table 7 beside the paper's."""
    text = (f"On the learned updates ΔW = s B A themselves (whose top directions are those the update uses most, "
            f"not those of A's random start), φ between ΔW at r={SMALL_R} and at r={LARGE_R}: φ(1,1) = "
            f"{f['phi_delta']['phi_1_1']:.2f}, φ(i,i) for i = 1..{SMALL_R} averages {f['phi_delta']['phi_diag']:.2f}. ")
    if f["seed_phi"] is None:
        text += (f"The seed-against-seed reference (the paper's Figure 4: two r={LARGE_R} adapters from different seeds) "
                 + ("needs two seeds; a quick run has one seed. " if quick else
                    f"is missing: no other seed's r={LARGE_R} run passed claim 4's failure rule (on validation). "))
    else:
        sp = f["seed_phi"]
        text += (f"Seed {f['seed']} against seed {f['seed_other']} at r={LARGE_R} (the paper's Figure 4, the noise "
                 f"reference): φ(1,1) = {sp['A']['phi_1_1']:.2f} on A and {sp['delta']['phi_1_1']:.2f} on ΔW, mean "
                 f"φ(i,i), i = 1..{SMALL_R}: {sp['A']['phi_diag']:.2f} and {sp['delta']['phi_diag']:.2f}. ")
    t, p = f["table7"], PAPER_TABLE7
    rows = "; ".join(
        f"r={r}: ||UᵀWV||_F = {t[r]['delta']:.2f} for ΔW's top-{r} directions, {t[r]['W']:.2f} for W's own, "
        f"{t[r]['random']:.2f} for random ones; ||W||_F {t[r]['norm_W']:.2f}, ||ΔW||_F {t[r]['norm_delta']:.3g}, "
        f"amplification ||ΔW||_F / ||UᵀWV||_F = {t[r]['amplification']:.2g}" for r in t)
    return text + (
        f"The paper's Table 7 on Wq and Wv (each figure the mean over the adapted matrices): {rows}. The paper (GPT-3's Wq, layer 48, "
        f"width 12,288): r=4: {p[4]['delta']}, {p[4]['W']}, {p[4]['random']}, ||ΔW||_F {p[4]['norm_delta']}, "
        f"amplification {p[4]['norm_delta'] / p[4]['delta']:.1f}; r=64: {p[64]['delta']}, {p[64]['W']}, "
        f"{p[64]['random']}, ||ΔW||_F {p[64]['norm_delta']}, amplification {p[64]['norm_delta'] / p[64]['delta']:.1f} "
        f"(||W||_F {p[4]['norm_W']}). Ours are matrices of width {f['d']}, not 12,288, after a short run: a random "
        f"r-dimensional subspace holds about r/{f['d']} of W's energy here against r/12,288 there, so the 'random' "
        "column is far larger relative to ||W||_F, and ||ΔW||_F depends on the steps and the learning rate; the "
        "comparison is of the pattern (ΔW's column nearer the random one than W's own: the update works in directions "
        "W does not emphasise), not of the numbers; the amplification factor grows with ||ΔW||_F, so with the run's "
        "length and learning rate. These figures are shown, not judged.")


def _passed_over_text(seed: int, passed: list) -> str:
    """Which seed's runs were read, and which seeds were passed over because one of their runs failed."""
    if seed in passed:
        return (f" Every seed had a run that failed claim 4's rule (on the validation split): seed {seed}'s runs are "
                "read all the same, a failed one among them.")
    over = f"; seed{'s' if len(passed) > 1 else ''} {', '.join(map(str, passed))} had a failed run" if passed else ""
    return f" The runs read are seed {seed}'s, the first whose runs all passed claim 4's failure rule (on validation){over}."


def render_comparison(claim: dict) -> str:
    slots = claim["bases"]
    if not {"toy", "minilm"} <= set(slots) or any(s["figures"].get("diverged") for s in slots.values()):
        return ""
    t, r = slots["toy"]["figures"], slots["minilm"]["figures"]
    t_share, r_share = t["mean_share"]["cls"], r["mean_share"]["cls"]
    text = (compare_verdicts(claim)
            + f" Top-{JUDGED_RANK} energy of full fine-tuning's ΔW: {100 * t_share:.0f}% on the toy base "
            f"(classification; of {t['d']} directions, random {100 * t['random_share']:.0f}%) and {100 * r_share:.0f}% "
            f"on MiniLM (of {r['d']}, random {100 * r['random_share']:.0f}%); φ(1,1) between the r=8 and r=64 adapters: "
            f"{t['mean_phi_1_1']:.2f} and {r['mean_phi_1_1']:.2f} on A, {t['phi_delta']['phi_1_1']:.2f} and "
            f"{r['phi_delta']['phi_1_1']:.2f} on ΔW; amplification factor at r={SMALL_R}: "
            f"{t['table7'][str(SMALL_R)]['amplification']:.2g} and {r['table7'][str(SMALL_R)]['amplification']:.2g}.")
    share_ratio = (r_share / r["random_share"]) / (t_share / t["random_share"])
    text += (f" Against its own random baseline (top {JUDGED_RANK} of {r['d']} directions hold less of a random "
             f"matrix than of {t['d']}) MiniLM's update is {share_ratio:.1f}x as concentrated as the toy's. The energy share "
             "is judged against the same fixed thresholds on both, so the wider model must concentrate its update more "
             "to pass. Both updates come from one short run (150-200 steps) on one small task; the LoRA paper's sec. 7, "
             "on GPT-3, found the top directions of r=8 and r=64 adapters shared (φ above 0.5 for the first).")
    return text
