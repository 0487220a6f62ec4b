"""The E2E section of verify (minilora/experiments/claims/e2e.py): its verdict read off a two-level
interval of corpus BLEU, the rate grid's extension, the test outputs it writes, and the quick section
end to end.

Oracles: sacrebleu's corpus_bleu on the same sentences; sentences whose BLEU is known (a reference of
the MR itself: 100; nothing: 0); the report folder's files read back.
"""

import json

import numpy as np
import pytest

sacrebleu = pytest.importorskip("sacrebleu")

from minilora.experiments.claims import e2e as section  # noqa: E402
from minilora.experiments.core import FAILS, HOLDS, ONE_RUN, inconclusive  # noqa: E402
from minilora.experiments.core.intervals import replicate_statistics  # noqa: E402
from minilora.nlg_metrics import corpus_stats, reference_streams, resampled_scores, score_corpus, score_from_stats  # noqa: E402
from minilora.tasks import e2e_task  # noqa: E402

N = 40  # test MRs of the synthetic runs


@pytest.fixture(scope="module")
def task():
    return e2e_task()


def fake_run(task, generations, seed=0, status="ok", n=N):
    """A run's figures as measure_test returns them, for the given sentences (scored, with 20 resamples)."""
    return {"spec": {"seed": seed}, "status": status, "generations": generations, "val_loss": 1.0, "trainable": 8192,
            "steps": 1, "max_new_tokens": 8, "scores": score_corpus(generations, task.test_refs[:n], n_bootstrap=20)}


def bleu(counts):
    return score_from_stats("bleu", counts)


def figures(full, lora):
    return {"judged": list(section.JUDGED), "runs": dict(zip(section.JUDGED, (full, lora)))}


def test_corpus_bleu_from_summed_counts_is_sacrebleu_s_and_the_bootstrap_resamples_it(task):
    refs = task.test_refs[:N]
    hyps = [r[-1] for r in task.test_refs[1 : N + 1]]  # another MR's sentence: a BLEU well inside (0, 100)
    stats = corpus_stats("bleu", hyps, refs)
    expected = sacrebleu.corpus_bleu(hyps, reference_streams(refs)).score
    assert 0 < expected < 100
    assert bleu(stats.sum(0)) == pytest.approx(expected, rel=1e-12)
    chrf = corpus_stats("chrf", hyps, refs).sum(0)
    assert score_from_stats("chrf", chrf) == pytest.approx(sacrebleu.corpus_chrf(hyps, reference_streams(refs)).score, rel=1e-12)
    # every MR drawn once: the resample is the full sample, and its score sacrebleu's
    assert resampled_scores(stats, bleu, np.ones((1, N)))[0] == pytest.approx(expected, rel=1e-12)
    # two levels, one arm of two identical seeds: the replicates scatter around the corpus score
    reps = replicate_statistics({"a": [stats, stats]}, bleu, replicates=400)["a"]
    assert reps.shape == (400,) and np.quantile(reps, 0.025) < expected < np.quantile(reps, 0.975)
    with pytest.raises(ValueError, match=r"\(seeds, rows, k\)"):
        replicate_statistics({"a": stats}, bleu)


def test_an_empty_generation_scores_zero_and_is_judged_without_crashing(task):
    empty = [""] * N
    assert bleu(corpus_stats("bleu", empty, task.test_refs[:N]).sum(0)) == 0.0
    good = [refs[0] for refs in task.test_refs[:N]]
    full = [fake_run(task, good, s) for s in range(2)]
    v = section.verdict(figures(full, [fake_run(task, empty, s) for s in range(2)]))
    assert v["verdict"] == FAILS and v["bleu_difference"] == pytest.approx(-100)


def test_the_verdict_is_read_off_the_interval_of_lora_minus_full(task, monkeypatch):
    good = [refs[0] for refs in task.test_refs[:N]]
    shifted = good[1:] + good[:1]  # each MR gets its neighbour's sentence
    full = [fake_run(task, good, s) for s in range(2)]
    same = section.verdict(figures(full, [fake_run(task, good, s) for s in range(2)]))
    assert same["verdict"] == HOLDS and same["intervals"]["bleu_difference"] == [0.0, 0.0]
    worse = section.verdict(figures(full, [fake_run(task, shifted, s) for s in range(2)]))
    assert worse["verdict"] == FAILS and worse["intervals"]["bleu_difference"][1] < -section.MARGIN_PARTLY
    # an interval straddling the holds margin: between partly and holds; below both margins' span: all three
    for interval, expected in (([-3.0, 0.5], inconclusive("partly", HOLDS)), ([-6.0, 1.0], inconclusive(FAILS, HOLDS)),
                               ([-4.0, -2.5], "partly"), ([-1.9, 3.0], HOLDS)):
        monkeypatch.setattr(section, "percentile_interval", lambda samples, interval=interval: interval)
        assert section.verdict(figures(full, full))["verdict"] == expected
    monkeypatch.undo()
    # failed runs (decided on validation) are left out: one kept run has no interval; none kept, nothing to compare
    one = [fake_run(task, good, 0)] + [fake_run(task, good, s, status="below baseline") for s in (1, 2)]
    assert section.verdict(figures(full, one))["verdict"] == ONE_RUN
    none = [fake_run(task, good, s, status="diverged") for s in range(2)]
    assert section.verdict(figures(full, none))["verdict"] == FAILS


def test_a_grid_is_extended_while_its_best_rate_is_at_an_edge(monkeypatch):
    from minilora.experiments.core.session import Session

    trained = []

    def fake_trained(session, spec):  # validation loss falls as the rate rises, for every setting
        trained.append((spec.method, spec.size, spec.lr))
        return None, {"val_loss": 1.0 - spec.lr}

    monkeypatch.setattr(section, "_trained", fake_trained)
    monkeypatch.setattr(section, "_untuned", lambda session, arch: 2.0)
    rates = section.choose_rates(Session(quick=False, progress=False))
    lora = rates["LoRA r=4 (Wq, Wv)"]
    assert section.RATE_GRIDS["lora"] == (3e-2, 1e-1)
    assert list(lora["table"]) == ["0.03", "0.1", "0.3", "1"] and lora["lr"] == 1.0 and lora["edge"] == "top"
    assert set(rates) == {*section.JUDGED, *section.DESCRIPTIVE}
    assert section.half_decades(1e-3, 1e-1) == [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def test_every_run_s_test_output_is_one_line_per_mr_in_the_test_file_s_order(task, tmp_path):
    from minilora.report import Plots

    n = len(task.test_mrs)
    assert n == 630
    lines = [refs[0] for refs in task.test_refs]
    figs = {"arch": "gpt", "runs": {"full": [fake_run(task, lines, 0, n=n)]}}
    (name,) = section.write_outputs(figs, Plots(tmp_path))
    assert name == "e2e-generations/gpt_full_seed0.txt"
    text = (tmp_path / name).read_text(encoding="utf-8")
    assert text.endswith("\n") and text[:-1].split("\n") == lines  # 630 lines, MR i on line i
    assert sacrebleu.corpus_bleu(text[:-1].split("\n"), reference_streams(task.test_refs)).score == pytest.approx(100)


def test_the_quick_section_end_to_end(tmp_path):
    from minilora.verify import verify

    out = tmp_path / "report"
    results = verify(out, quick=True, only=["e2e"], progress=False, log=lambda *a: None)
    claim = results["claims"]["e2e"]
    assert claim["verdict"] == "inconclusive (quick)" and set(claim["bases"]) == set(section.BASES)
    written = json.loads((out / "results.json").read_text())["claims"]["e2e"]
    files = 0
    for base, slot in written["bases"].items():
        assert slot["verdict"]["verdict"] == "inconclusive (quick)" and "quick_reading" in slot["verdict"]
        figs = slot["figures"]
        for name, runs in figs["runs"].items():
            for run in runs:
                path = out / section.generations_name(figs["arch"], name, run["spec"]["seed"])
                lines = path.read_text(encoding="utf-8").split("\n")[:-1]
                assert lines == run["generations"] and len(lines) == figs["settings"]["test_mrs"]
                refs = e2e_task().test_refs[: len(lines)]
                assert sacrebleu.corpus_bleu(lines, reference_streams(refs)).score == pytest.approx(
                    run["scores"]["bleu"]["score"], rel=1e-12)
                files += 1
    assert files == 2 * 2 * len(section.SEEDS[True]) + len(section.DESCRIPTIVE)
    readme = (out / "README.md").read_text()
    assert "Quick-mode figures" in readme and "The paper's Table 3" in readme and "e2e_gpt_bleu_vs_params.png" in readme and "### On base_512 (GPT-2)" in readme
