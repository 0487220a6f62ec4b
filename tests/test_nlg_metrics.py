"""Scores of generated sentences against several references (minilora/nlg_metrics.py).

Oracles: sacrebleu's own corpus_bleu and corpus_chrf, rouge-score's scorer reference by
reference, and constructed cases whose score is known (a hypothesis equal to one of its
references; an empty hypothesis).
"""

import numpy as np
import pytest

sacrebleu = pytest.importorskip("sacrebleu")
pytest.importorskip("rouge_score")

from minilora.nlg_metrics import bootstrap_interval, reference_streams, score_corpus  # noqa: E402

# three MRs' references (3, 1 and 2 of them) and a system's sentences, one per MR
REFS = [
    ["The Eagle is a cheap coffee shop near Burger King.", "Near Burger King, The Eagle serves cheap coffee.",
     "The Eagle coffee shop, close to Burger King, is low priced."],
    ["Alimentum is a family-friendly restaurant in the city centre."],
    ["Zizzi serves French food for £20-25.", "For French food at £20-25, try Zizzi."],
]
HYPS = ["The Eagle is a cheap coffee shop close to Burger King.", "Alimentum is a restaurant in the city centre.",
        "Zizzi is a French place with prices of £20-25."]


def test_bleu_and_chrf_equal_sacrebleu_s_corpus_scores():
    streams = [[r[0] for r in REFS], [r[1] if len(r) > 1 else None for r in REFS], [r[2] if len(r) > 2 else None for r in REFS]]
    assert reference_streams(REFS) == streams  # stream j: each MR's j-th reference, None where it has fewer
    scores = score_corpus(HYPS, REFS, n_bootstrap=50)
    bleu = sacrebleu.corpus_bleu(HYPS, streams)
    assert scores["bleu"]["score"] == pytest.approx(bleu.score, rel=1e-12) and 0 < bleu.score < 100
    assert scores["chrf"]["score"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, streams).score, rel=1e-12)
    assert scores["bleu"]["signature"].startswith("nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|version:")


def test_each_sentence_is_scored_against_all_references_of_its_own_mr():
    """Each hypothesis is one of its MR's references -- a different one each time: perfect scores.
    The same sentences shifted by one MR score far lower."""
    hyps = [REFS[0][2], REFS[1][0], REFS[2][1]]
    perfect = score_corpus(hyps, REFS, n_bootstrap=50)
    assert perfect["bleu"]["score"] == pytest.approx(100) and perfect["chrf"]["score"] == pytest.approx(100)
    assert perfect["rouge_l"]["score"] == pytest.approx(100)
    shifted = score_corpus(hyps[1:] + hyps[:1], REFS, n_bootstrap=50)
    assert shifted["bleu"]["score"] < 20 and shifted["rouge_l"]["score"] < 60


def test_rouge_l_keeps_the_best_reference_of_each_mr():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    best = [max(scorer.score(ref, hyp)["rougeL"].fmeasure for ref in refs) for hyp, refs in zip(HYPS, REFS)]
    assert score_corpus(HYPS, REFS, n_bootstrap=50)["rouge_l"]["score"] == pytest.approx(100 * np.mean(best), rel=1e-12)


def test_an_empty_generation_scores_zero_and_lowers_the_corpus():
    nothing = score_corpus(["", "", ""], REFS, n_bootstrap=50)
    assert [nothing[m]["score"] for m in ("bleu", "chrf", "rouge_l")] == [0.0, 0.0, 0.0]
    one_empty = score_corpus(HYPS[:2] + [""], REFS, n_bootstrap=50)
    full = score_corpus(HYPS, REFS, n_bootstrap=50)
    assert all(one_empty[m]["score"] < full[m]["score"] for m in ("bleu", "chrf", "rouge_l"))


def test_the_bootstrap_interval_is_over_mrs_and_reproducible():
    scores = score_corpus(HYPS, REFS, n_bootstrap=200, seed=3)
    for metric in ("bleu", "chrf", "rouge_l"):
        lo, hi = scores[metric]["interval"]
        assert lo <= hi and 0 <= lo and hi <= 100
    assert score_corpus(HYPS, REFS, n_bootstrap=200, seed=3) == scores
    # a mean over rows: the percentile interval of resampled means; identical rows give a point
    assert bootstrap_interval(np.ones((10, 1)), lambda s: s[0] / 10, 100) == [1.0, 1.0]
    lo, hi = bootstrap_interval(np.arange(100.0)[:, None], lambda s: s[0] / 100, 2000)
    assert 49.5 - 2.5 * 2.9 < lo < 49.5 < hi < 49.5 + 2.5 * 2.9  # the mean's standard error is 28.9 / 10


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="2 hypotheses for 3 reference sets"):
        score_corpus(HYPS[:2], REFS)
    with pytest.raises(ValueError, match="entry 1 has none"):
        score_corpus(HYPS, [REFS[0], [], REFS[2]])
    with pytest.raises(TypeError, match="entry 0 is bytes"):
        score_corpus([b"x", "y", "z"], REFS)
