"""95% intervals on judged figures, by the bootstrap (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993: ch. 13, the percentile interval).

A fine-tuned figure varies for two reasons: the seed (the adapter's initialisation and the batch
order) and the test rows (another draw of 156 docstrings would score differently). A mean over three
seeds of one test set hides both, so each verdict is read off an interval that carries them:

* **accuracies and losses** -- ``replicate_means``: a *two-level* bootstrap. Each replicate draws the
  test rows with replacement, then each arm's seeds with replacement, and takes the mean over the drawn
  seeds of each one's mean over the drawn rows. The rows are drawn **once per replicate, for every arm**:
  a comparison (LoRA against full fine-tuning) is paired by row, so a hard docstring counts against both
  arms at once and the difference is not blurred by which rows happened to be drawn.
* **timings** -- ``repeat_replicates``: the repeats were timed interleaved (one round runs each variant
  moments apart), so a replicate draws whole rounds with replacement, the same rounds for every variant.
* exact counts and analytic memory have no interval: they are marked "exact".

``percentile_interval`` reads the 2.5th and 97.5th percentiles of the replicates of any figure built
from the arms' means (a gap, a ratio, a share). ``REPLICATES`` = 10,000, drawn from a fixed seed, so
the same figures always give the same interval.
"""

from __future__ import annotations

import numpy as np

REPLICATES = 10_000
LEVEL = 0.95
SEED = 0  # the bootstrap's own seed: an interval is a function of the figures alone


def per_seed_rows(runs: list, claim: str, what: str) -> np.ndarray:
    """``(seeds, rows)`` array of the runs' per-row test figures (``runs``: one list per run), or a ValueError
    naming ``claim`` and ``what`` when they are missing -- a results file, or a run-cache entry, written
    before per-row figures were kept -- or scored on different rows."""
    if any(r is None or len(r) == 0 for r in runs):
        raise ValueError(f"claim {claim}: {what}: the per-row test figures an interval needs are missing; "
                         "measure the claim again (minilora verify --only ...) with this version")
    if len({len(r) for r in runs}) > 1:
        raise ValueError(f"claim {claim}: {what}: runs scored on different numbers of test rows: {sorted({len(r) for r in runs})}")
    return np.asarray(runs, dtype=np.float64).reshape(len(runs), -1)


def replicate_means(arms: dict, replicates: int = REPLICATES, seed: int = SEED) -> dict:
    """``{arm: (replicates,) array}`` of two-level bootstrap means of ``{arm: (seeds, rows) array}``.

    Every arm must be scored on the same test rows (row ``j`` is the same example in each): one draw of
    the rows per replicate serves every arm and every seed; each arm's seeds are drawn on their own. An
    arm of one seed (the untuned base model) varies by its rows alone."""
    return replicate_statistics(arms, None, replicates, seed)


def replicate_statistics(arms: dict, statistic=None, replicates: int = REPLICATES, seed: int = SEED) -> dict:
    """``replicate_means`` for any figure of the drawn rows: ``{arm: (seeds, rows) array}`` and their mean
    (``statistic=None``), or ``{arm: (seeds, rows, k) array}`` of additive per-row statistics and a
    corpus score of their sum (``statistic(summed (k,) counts)``: corpus BLEU, which is not a mean of
    per-sentence figures, from ``nlg_metrics.corpus_stats``). Each replicate draws the rows once for every arm,
    scores each seed on them (``nlg_metrics.resampled_scores``), draws each arm's seeds and averages."""
    from minilora.nlg_metrics import resampled_scores

    arrays = {name: np.asarray(a, dtype=np.float64) for name, a in arms.items()}
    shapes = {name: a.shape for name, a in arrays.items()}
    dims = 2 if statistic is None else 3
    if any(len(s) != dims or s[0] < 1 or s[1] < 1 for s in shapes.values()) or len({s[1] for s in shapes.values()}) != 1:
        raise ValueError(f"replicate_{'means' if statistic is None else 'statistics'} needs (seeds, rows{'' if dims == 2 else ', k'}) "
                         f"arrays with the same rows in every arm, got {shapes}")
    rng = np.random.default_rng(seed)
    n = next(iter(shapes.values()))[1]
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates)  # (R, n): how often each row is drawn
    out = {}
    for name, a in arrays.items():
        if statistic is None:
            per_seed = (counts / n) @ a.T  # (R, S): each seed's mean over the drawn rows
        else:
            per_seed = np.stack([resampled_scores(seed_stats, statistic, counts) for seed_stats in a], axis=1)
        picks = rng.integers(0, a.shape[0], size=(replicates, a.shape[0]))  # (R, S): the seeds drawn
        out[name] = np.take_along_axis(per_seed, picks, axis=1).mean(axis=1)
    return out


def repeat_replicates(series: dict, replicates: int = REPLICATES, seed: int = SEED) -> dict:
    """``{name: (replicates, repeats) array}``: the interleaved rounds of ``{name: [seconds per round]}``
    drawn with replacement, the same rounds for every name (a round's variants ran moments apart)."""
    arrays = {name: np.asarray(t, dtype=np.float64) for name, t in series.items()}
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"repeat_replicates needs the same number (>= 1) of rounds of each, got "
                         f"{ {name: len(a) for name, a in arrays.items()} }")
    n = lengths.pop()
    picks = np.random.default_rng(seed).integers(0, n, size=(replicates, n))
    return {name: a[picks] for name, a in arrays.items()}


def median_ratio_interval(numerator, denominator, level: float = LEVEL) -> list | None:
    """The interval of median(numerator) / median(denominator) over interleaved rounds (seconds per round of
    each), the rounds drawn together; ``None`` for a single round."""
    if len(numerator) < 2:
        return None
    reps = repeat_replicates({"num": numerator, "den": denominator})
    return percentile_interval(np.median(reps["num"], axis=1) / np.median(reps["den"], axis=1), level)


def percentile_interval(samples, level: float = LEVEL) -> list:
    """``[low, high]``: the percentile interval of a figure's replicates. Read without interpolation, so a
    replicate that is infinite (a ratio over a zero) stays at its end of the interval instead of making it NaN."""
    samples = np.asarray(samples, dtype=np.float64)
    tail = (1 - level) / 2
    return [float(np.quantile(samples, tail, method="lower")), float(np.quantile(samples, 1 - tail, method="higher"))]


def mean_difference_interval(new, reference, level: float = LEVEL, fixed_reference: bool = False) -> list | None:
    """The interval of mean(new) - mean(reference) over ``(seeds, rows)`` arrays, rows paired; ``None`` when
    either rests on one run (no spread between seeds to draw from: the verdict is "inconclusive (one run)").
    ``fixed_reference``: the reference is no run but one fixed model (the untuned base), which varies by its
    rows alone."""
    new, reference = np.asarray(new, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if len(new) < 2 or (len(reference) < 2 and not fixed_reference):
        return None
    reps = replicate_means({"new": new, "reference": reference})
    return percentile_interval(reps["new"] - reps["reference"], level)


def interval_text(interval, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
    """How the report prints an interval after its figure: " (95% interval [a, b] unit)", " (exact)", or
    " (one run: no interval)" for ``None``."""
    if interval == "exact":
        return " (exact)"
    if interval is None:
        return " (one run: no interval)"
    low, high = (scale * v for v in interval)
    return f" (95% interval [{low:.{digits}f}, {high:.{digits}f}]{unit})"


def plot_interval(ax, value: float, interval, thresholds: dict, label: str, scale: float = 1.0) -> None:
    """One judged figure as a point with its 95% interval as a bar (none for one run), beside the
    thresholds it is judged against (``{"holds": x, "partly": y}``, dashed lines)."""
    ax.axvline(0, color="0.8", lw=0.8)
    for (name, x), style in zip(thresholds.items(), ("--", ":")):
        ax.axvline(scale * x, color="k", ls=style, lw=1, label=f"{name} {scale * x:g}")
    if interval is not None:  # drawn from its ends: a percentile interval need not be centred on the mean
        ax.plot([scale * interval[0], scale * interval[1]], [0, 0], "|-", color="tab:blue", ms=14, label="95% interval")
    ax.plot([scale * value], [0], "o", color="tab:blue", label="mean" if interval is not None else "one run: no interval")
    ax.set_yticks([])
    ax.set_xlabel(label)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
