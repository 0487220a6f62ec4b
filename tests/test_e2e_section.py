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

    def fake_validated(session, spec):  # validation loss falls as the rate rises, for every setting
        return {"val_loss": 1.0 - spec.lr}

    monkeypatch.setattr(section, "_validated", fake_validated)
    monkeypatch.setattr(section, "_untuned", lambda session, arch: 2.0)
    rates = section.choose_rates(Session(quick=False, progress=False))
    lora = rates["LoRA r=4 (Wq, Wv)"]
    assert section.RATE_GRIDS["lora"] == (3e-2, 1e-1)
    assert list(lora["table"]) == ["0.03", "0.1", "0.3", "1"] and lora["lr"] == 1.0 and lora["edge"] == "top"
    assert set(rates) == {*section.JUDGED, *section.DESCRIPTIVE}


def test_the_committed_report_s_rates_are_what_the_rule_chooses_from_its_validation_losses(monkeypatch):
    """The committed full run's E2E rate tables (docs/report/results.json), their validation losses replayed:
    every setting's rates tried, its rate and its edge are what choose_rates computes (the half-decade ladder)."""
    from pathlib import Path

    from minilora.experiments.core.session import Session

    committed = json.loads((Path(__file__).parents[1] / "docs/report/results.json").read_text())["claims"]["e2e"]
    figs = committed["bases"]["toy"]["figures"]
    losses = {(name, float(lr)): row["loss"] for name, rate in figs["rates"].items() for lr, row in rate["table"].items()}
    names = {setting: name for name, setting in {**section.JUDGED, **section.DESCRIPTIVE}.items()}
    monkeypatch.setattr(section, "_validated", lambda session, spec: {"val_loss": losses[names[spec.method, spec.size], spec.lr]})
    monkeypatch.setattr(section, "_untuned", lambda session, arch: figs["untuned_val_loss"])
    assert section.choose_rates(Session(quick=False, progress=False)) == figs["rates"]
    assert figs["rates"]["prefix tuning P=8"]["edge"] == "top" and list(figs["rates"]["prefix tuning P=8"]["table"]) == [
        "0.01", "0.03", "0.1", "0.3"]


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


def test_the_section_s_runs_are_read_back_from_the_run_cache(tmp_path, monkeypatch):
    """A quick section measured twice on one run cache: the same figures, byte for byte, and nothing trained the
    second time; an edited record is named in a warning and its run trained again; other code misses."""
    from minilora.experiments import bases
    from minilora.experiments.bases import e2e as runs
    from minilora.experiments.core import provenance
    from minilora.experiments.core.session import Session
    from minilora.experiments.runs import RunCacheWarning
    from minilora.verify import plain

    monkeypatch.setenv("MINILORA_RUN_CACHE", str(tmp_path))
    trained, train = [], runs.train_e2e
    monkeypatch.setattr(runs, "train_e2e", lambda spec, *args: trained.append(spec) or train(spec, *args))

    def measured():
        session = Session(quick=True, progress=False, claim=section.KEY)
        return json.dumps(plain(section.measure(bases.get("llama"), session))), session.used[section.KEY]

    first, used = measured()
    n = 2 * len(section.SEEDS[True])  # LLaMA: full fine-tuning and LoRA, each seed
    assert len(trained) == n and len(list(tmp_path.glob("*.json"))) == 2 * n  # each run's validated and tested record
    assert {p["origin"] for p in used.values()} == {"trained"} and len(used) == n  # a run counted once
    again, used = measured()
    assert again == first and len(trained) == n and {p["origin"] for p in used.values()} == {"run cache"}
    # an edited record: warned about, by name, and trained again (the same figures: the same code and data)
    spec = trained[0]
    (path,) = [p for p in tmp_path.glob("*.json") if json.loads(p.read_text())["request"]["identity"]["record"] == "tested"
               and json.loads(p.read_text())["request"]["spec"] == json.loads(first)["runs"]["full"][0]["spec"]]
    path.write_text(path.read_text().replace('"status": "ok"', '"status": "diverged"'))
    with pytest.warns(RunCacheWarning, match=f"{path.name}.*checksum"):
        rerun = plain(section._run(Session(quick=True, progress=False), spec, 9.0))
    untimed = lambda run: {k: v for k, v in run.items() if not k.endswith("_seconds")}  # noqa: E731
    assert untimed(rerun) == untimed(json.loads(first)["runs"]["full"][0])
    assert len(trained) == n + 1
    # another code: another key, not read
    monkeypatch.setattr(provenance, "code_sha256", lambda: "0" * 64)
    section._validated(Session(quick=True, progress=False), spec)
    assert len(trained) == n + 2
