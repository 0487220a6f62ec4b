"""Generated sentences scored against several references each, with the field's own libraries.

A data-to-text test set such as E2E's gives each input (a meaning representation, MR) several
human references; a system writes one sentence per input. minilora computes the field's scores
with the libraries the field uses -- it does not re-implement them:

* **BLEU** and **chrF**: ``sacrebleu`` (Post, 2018), corpus-level, every sentence against all
  references of its MR (``sacrebleu.corpus_bleu(hypotheses, reference_streams(references))``:
  MRs with fewer references fill their missing streams with None, as sacrebleu allows). Its
  signature (tokenizer, smoothing, casing, number of references, version) is recorded beside the
  scores, so a figure can be compared only with figures computed the same way.
* **ROUGE-L**: ``rouge-score`` (Google's re-implementation of ROUGE-1.5.5), the F-measure
  (beta = 1) of the longest common subsequence against each reference, the best reference kept,
  averaged over MRs. The E2E challenge's script (e2e-metrics, which the LoRA paper's Table 3
  used) computes ROUGE-L with the COCO caption code instead: PTB tokenisation, beta = 1.2 (recall
  weighs more), and the best precision and best recall taken over the references separately
  before they are combined. The two agree in kind, not in value: compare ROUGE-L figures only
  within one implementation.

Intervals: a bootstrap over MRs (``bootstrap_interval``), the 95% percentile interval of the
corpus score over resamples of the test MRs with replacement. BLEU and chrF are corpus
statistics, not means, so each resample re-computes them from the MRs' summed n-gram counts
(sacrebleu's own ``--confidence`` resampling does the same, through the same two methods).
"""

from __future__ import annotations

import functools
from importlib import metadata

import numpy as np

N_BOOTSTRAP = 1000  # resamples of the test MRs for an interval
LEVEL = 0.95


def reference_streams(references) -> list:
    """sacrebleu's layout of multi-reference data: stream j holds each MR's j-th reference, or None
    where an MR has fewer than j + 1. ``references``: one sequence of references per hypothesis."""
    references = [list(refs) for refs in references]
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"every hypothesis needs at least one reference; entry {empty[0]} has none")
    width = max(len(refs) for refs in references)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]


def resample_counts(n: int, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """(n_bootstrap, n): how often each of ``n`` rows (MRs) is drawn in each resample with replacement."""
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_bootstrap)])


def resampled_scores(stats, statistic, counts) -> np.ndarray:
    """``statistic`` of each resample's summed row statistics: ``stats`` (N, k), one row of additive
    statistics per MR; ``counts`` (R, N), how often each resample draws each MR. A corpus score is
    recomputed from the resample's summed counts -- never averaged over MRs -- and with every count 1
    it is the corpus score itself. The one function behind both kinds of interval: over MRs here,
    over MRs and seeds in ``minilora.experiments.core.intervals.replicate_statistics``."""
    return np.array([statistic(row) for row in np.asarray(counts, dtype=np.float64) @ np.asarray(stats, dtype=np.float64)])


def bootstrap_interval(stats, statistic, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, level: float = LEVEL) -> list:
    """The ``level`` percentile interval of ``statistic(stats[rows].sum(0))`` over ``n_bootstrap``
    resamples of the rows (the MRs) with replacement. ``stats``: (N, k), one row of additive
    statistics per MR (n-gram counts, or a score to average: then ``statistic`` divides by N)."""
    stats = np.asarray(stats, dtype=np.float64)
    values = resampled_scores(stats, statistic, resample_counts(len(stats), n_bootstrap, np.random.default_rng(seed)))
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


SACREBLEU = ("bleu", "chrf")  # the corpus metrics computed from summed per-MR statistics


@functools.lru_cache(maxsize=None)
def _metric(name: str):
    """sacrebleu's metric object (default settings) for "bleu" or "chrf", made once."""
    from sacrebleu.metrics import BLEU, CHRF

    if name not in SACREBLEU:
        raise ValueError(f"unknown sacrebleu metric {name!r}; known: {', '.join(SACREBLEU)}")
    return {"bleu": BLEU, "chrf": CHRF}[name]()


def corpus_stats(name: str, hypotheses, references) -> np.ndarray:
    """(N, k): sacrebleu's statistics of each MR for ``name`` ("bleu": hypothesis and reference lengths, matched and
    total n-grams for n = 1..4; "chrf": character n-gram counts), which ``score_from_stats`` turns back into the
    corpus score once summed over MRs. ``references``: all references of each MR."""
    return np.array(_metric(name)._extract_corpus_statistics(list(hypotheses), reference_streams(references)), dtype=np.float64)


def score_from_stats(name: str, counts) -> float:
    """The corpus score (0-100) of ``name`` from statistics summed over MRs (``corpus_stats(...).sum(0)``), as
    sacrebleu's own ``corpus_score`` computes it (``_compute_score_from_stats`` is its second step)."""
    return float(_metric(name)._compute_score_from_stats(list(counts)).score)


def _sacrebleu_scores(name: str, hypotheses, references, n_bootstrap: int, seed: int) -> dict:
    """A sacrebleu metric's corpus score, its interval over MRs and its signature."""
    stats = corpus_stats(name, hypotheses, references)  # (N, k): counts per MR

    def score(counts):
        return score_from_stats(name, counts)

    return {"score": score(stats.sum(0)), "interval": bootstrap_interval(stats, score, n_bootstrap, seed),
            "signature": _metric(name).get_signature().format()}


def rouge_l(hypotheses, references) -> np.ndarray:
    """Each hypothesis's ROUGE-L F-measure (rouge-score, beta = 1, no stemming) against its best reference, (N,)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return np.array([scorer.score_multi(list(refs), hyp)["rougeL"].fmeasure for hyp, refs in zip(hypotheses, references)])


def score_corpus(hypotheses, references, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """BLEU, chrF and ROUGE-L (each 0-100) of ``hypotheses`` (one string per MR) against ``references``
    (all references of each MR), each with a bootstrap interval over MRs, and the libraries' signatures.

    An empty hypothesis is a sentence with no words: it matches nothing and lowers every score."""
    hypotheses = list(hypotheses)
    references = [list(refs) for refs in references]
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference sets: one hypothesis per MR")
    bad = [i for i, h in enumerate(hypotheses) if not isinstance(h, str)]
    if bad:
        raise TypeError(f"hypotheses must be strings; entry {bad[0]} is {type(hypotheses[bad[0]]).__name__}")
    reference_streams(references)  # checks that every MR has a reference
    rouge = 100 * rouge_l(hypotheses, references)  # (N,)
    return {
        **{name: _sacrebleu_scores(name, hypotheses, references, n_bootstrap, seed) for name in SACREBLEU},
        "rouge_l": {"score": float(rouge.mean()),
                    "interval": bootstrap_interval(rouge[:, None], lambda s: float(s[0]) / len(rouge), n_bootstrap, seed),
                    "signature": f"rouge-score {metadata.version('rouge-score')}: rougeL F1, best reference, no stemmer, mean over MRs"},
        "n_mrs": len(hypotheses),
        "n_bootstrap": n_bootstrap,
    }
