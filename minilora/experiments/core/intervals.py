"""95% intervals on judged figures, by the bootstrap (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993: ch. 13, the percentile interval).

A fine-tuned figure varies for two reasons: the seed (the adapter's initialisation and the batch
order) and the test rows (another draw of 312 docstrings would score differently). A mean over a few
seeds of one test set hides both, so each verdict is read off an interval that carries them:

* **accuracies and losses** -- ``replicate_means``: a *two-level* bootstrap. Each replicate draws the
  test rows with replacement, then each arm's seeds with replacement, and takes the mean over the drawn
  seeds of each one's mean over the drawn rows. The rows are drawn **once per replicate, for every arm**:
  a comparison (LoRA against full fine-tuning) is paired by row, so a hard docstring counts against both
  arms at once and the difference is not blurred by which rows happened to be drawn.
* **timings** -- ``repeat_replicates``: the repeats were timed interleaved (one round runs each variant
  moments apart), so a replicate draws whole rounds with replacement, the same rounds for every variant.
  ``round_ratio_replicates`` does the same for ratios read as ``core.time_rounds`` reads them: the median
  over the drawn rounds of each round's own ratio to the reference variant; ``latency_intervals`` gives
  every variant's ratio to the base model its interval, and that of a merged model's ``excess`` over the
  noise a second copy of the base shows (claims 7 and 10).
* **a spread between seeds** used as a yardstick (claim 5: the libraries' difference over the seed spread)
  -- ``spread_factors``: with two or three seeds, resampling seeds is degenerate (a draw of one seed three
  times has no spread), so the interval of the standard deviation is read off its sampling distribution
  under normal seed-to-seed variation, drawn as ``REPLICATES`` samples of that many normal seeds.
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


def per_round_times(setting: dict, claim: str, what: str) -> dict:
    """``{variant: [seconds per round]}`` of one setting timed by ``core.time_rounds``, or a ValueError naming
    ``claim`` and ``what`` when a results file written before the rounds were kept lacks them."""
    if not setting.get("rounds"):
        raise ValueError(f"claim {claim}: {what}: the per-round times an interval needs are missing; "
                         "measure the claim again (minilora verify --only ...) with this version")
    return setting["rounds"]


def round_ratio_replicates(rounds: dict, reference: str, replicates: int = REPLICATES, seed: int = SEED) -> dict:
    """``{name: (replicates,) array}`` of the median over the drawn rounds of each round's own ratio
    name / ``reference`` (how ``core.time_rounds`` reads a ratio), whole rounds drawn, the same for every name."""
    base = np.asarray(rounds[reference], dtype=np.float64)
    ratios = {name: np.asarray(t, dtype=np.float64) / base for name, t in rounds.items() if name != reference}
    return {name: np.median(r, axis=1) for name, r in repeat_replicates(ratios, replicates, seed).items()}


def spread_factors(seeds: int, level: float = LEVEL, replicates: int = REPLICATES, seed: int = SEED) -> list | None:
    """``[low, high]``: the 95% range of s / sigma, the standard deviation of ``seeds`` draws (ddof=1) over the
    true one, for normal draws -- so sigma lies in [s / high, s / low], and a figure divided by s, in
    [figure * low, figure * high]. ``None`` for one seed. Drawn (``replicates`` sets of ``seeds`` normal draws,
    fixed seed) rather than read off the chi-square distribution, so it needs no statistics library; for
    three seeds it is about [0.16, 1.91] (s/sigma = sqrt(chi2(2) / 2))."""
    if seeds < 2:
        return None
    draws = np.random.default_rng(seed).standard_normal((replicates, seeds))
    return percentile_interval(draws.std(axis=1, ddof=1), level)


def excess(merged, control):
    """How far merged/base strays from 1 beyond the control's own |base again/base - 1| (never below 0): the
    noise of the setting's measurement taken out (claims 7 and 10: a merged LoRA model is the base model's
    computation, and a second copy of the base, timed alongside, shows the noise). Floats, or replicates."""
    return np.maximum(0.0, np.abs(np.asarray(merged) - 1) - np.abs(np.asarray(control) - 1))


def latency_intervals(setting: dict, claim: str, what: str, merged: str = "merged") -> dict:
    """One setting's 95% intervals from its rounds (``core.time_rounds``'s), whole rounds resampled: every variant's
    ``"<variant>/base"`` ratio, and ``"excess"``, the ``merged`` variant's ``excess``; each ``None`` for one
    round. A setting without its rounds is an error naming ``claim`` and ``what``."""
    rounds = per_round_times(setting, claim, what)
    keys = [f"{name}/base" for name in rounds if name != "base"] + ["excess"]
    if len(rounds["base"]) < 2:
        return dict.fromkeys(keys)
    reps = round_ratio_replicates(rounds, "base")
    out = {f"{name}/base": percentile_interval(r) for name, r in reps.items()}
    return {**out, "excess": percentile_interval(excess(reps[merged], reps["base again"]))}


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


def interval_cell(interval, scale: float = 1.0, digits: int = 2) -> str:
    """An interval in a table cell whose header says "95% interval": " [a, b]", or "" for ``None`` (one round)."""
    if interval is None:
        return ""
    low, high = (scale * v for v in interval)
    return f" [{low:.{digits}f}, {high:.{digits}f}]"


def error_bars(values: list, intervals: list) -> np.ndarray:
    """``yerr`` for ``ax.bar``: (2, n) distances from each value down to its interval's low end and up to its
    high end (0 where there is no interval: one round). A percentile interval need not be centred on the value."""
    return np.array([[v - i[0], i[1] - v] if i else [0.0, 0.0] for v, i in zip(values, intervals)]).T.clip(min=0)


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
