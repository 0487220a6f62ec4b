"""``minilora verify`` and ``minilora report``: the report from results.json alone, claims merged one at a
time, a base and a claim added from outside, and a run cache that knows the code.

* ``report`` re-renders what ``verify`` wrote, byte for byte (README.md and every plot), from
  ``verify --quick --only params,memory,accuracy --bases toy`` (the toy base made tiny here, so that
  it takes seconds); a results file from another version, cut short or missing a field is an error
  naming the file and the field, and nothing is written;
* ``--merge`` measures only the claims named and keeps the others with their own provenance;
* a base and a claim defined in a temporary module, registered, show up in the report;
* the run cache: runs come back identical, a change to the source is a miss, an edited, cut short or
  swapped entry is named in a warning and trained again, and no time is read from it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import warnings

import pytest

from experiment_helpers import registered, session_for, tiny_gpt, tiny_toy, toy_env
from minilora import verify
from minilora.cli import main as cli
from minilora.experiments import bases
from minilora.experiments.bases import gpt
from minilora.experiments.core import provenance
from minilora.experiments.runs import RunCache, RunCacheWarning, RunSpec, train
from minilora.models import GPTConfig
from minilora.report import ResultsError, load_results
from minilora.tasks import code_corpus, docstring_package_task


@pytest.fixture(scope="module")
def tasks():
    return (docstring_package_task(max_prompt_bytes=gpt.CLS_PROMPT_BYTES, per_class=20, block_size=64),
            code_corpus(max_bytes=40_000))


@pytest.fixture(scope="module")
def tiny_verify(tasks):
    """verify on a tiny toy base: small cost models, claim 4's grid at 2 steps, the tiny tasks and model."""
    toy = tiny_toy()
    toy.cost_models = {"wide": GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=4, n_embd=128),
                       "base": GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)}
    toy.cost_batches = {True: (1, 2), False: (1, 2)}
    cls_task, corpus = tasks
    env = toy_env(cls_task, corpus, tiny_gpt())
    original = verify.Session

    def session(**kw):  # the Session verify makes, with the tiny environment in its memo
        s = session_for(kw.pop("quick"), cls_task, corpus, {"toy": env}, kw.pop("bases"))
        s.seed, s.progress = kw.pop("seed"), kw.pop("progress")
        return s

    with pytest.MonkeyPatch.context() as patch, registered(toy):
        patch.setattr(verify, "Session", lambda **kw: session(**kw) if kw else original())
        yield lambda out, **kw: verify.verify(out, quick=True, bases=("toy",), progress=False, log=lambda *a: None, **kw)


@pytest.fixture(scope="module")
def verified(tiny_verify, tmp_path_factory):
    """(folder, results) of ``verify --quick --only params,memory,accuracy --bases toy`` on the tiny toy."""
    folder = tmp_path_factory.mktemp("verified") / "report"
    return folder, tiny_verify(folder, only=["params", "memory", "accuracy"])


def files(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_report_rerenders_what_verify_wrote(verified, tmp_path):
    folder, results = verified
    assert list(results["claims"]) == ["params", "memory", "accuracy"]
    assert cli(["report", str(folder / "results.json"), "--out", str(tmp_path / "again")]) == 0
    written, again = files(folder), files(tmp_path / "again")
    assert written.keys() == again.keys() and {"README.md", "results.json", "params.png", "memory.png",
                                               "accuracy_vs_rank.png", "code_loss_vs_rank.png"} <= written.keys()
    assert all(written[name] == again[name] for name in written), [n for n in written if written[n] != again[n]]
    readme = written["README.md"].decode()
    for claim in results["claims"].values():  # each section says where its figures came from
        assert claim["provenance"]["code_sha256"] == provenance.code_sha256()
        assert {"commit", "clean", "versions", "machine", "wall_seconds", "runs"} <= set(claim["provenance"])
    assert readme.count("**Provenance:** `minilora verify --quick --only params,memory,accuracy --bases toy`") == 3


def test_report_joins_sections_measured_apart(verified, tmp_path, capsys):
    """make report measures the claims as sections, side by side; minilora report joins their results files."""
    folder, results = verified
    parts = []
    for i, keys in enumerate((["memory"], ["params", "accuracy"])):  # given out of claim order
        part = json.loads((folder / "results.json").read_text())
        part["claims"] = {k: v for k, v in part["claims"].items() if k in keys}
        parts.append(tmp_path / f"section{i}.json")
        parts[-1].write_text(json.dumps(part))
    assert cli(["report", *map(str, parts), "--out", str(tmp_path / "joined")]) == 0
    joined = json.loads((tmp_path / "joined" / "results.json").read_text())
    assert joined["claims"] == results["claims"] and list(joined["claims"]) == ["params", "memory", "accuracy"]
    assert len(joined["meta"]["commands"]) == 2
    written, again = files(folder), files(tmp_path / "joined")
    assert all(written[name] == again[name] for name in written if name.endswith(".png"))
    for claim in results["claims"].values():  # each section's text as verify wrote it
        heading = f"## {claim['number']}. "
        section = written["README.md"].decode().split(heading)[1].split("\n## ")[0]
        assert section in again["README.md"].decode()

    assert cli(["report", str(parts[1]), str(folder / "results.json"), "--out", str(tmp_path / "twice")]) == 1
    assert "claim 'params' is also in" in capsys.readouterr().err and not (tmp_path / "twice").exists()
    full = json.loads(parts[0].read_text())
    full["meta"]["mode"] = "full"
    (tmp_path / "full.json").write_text(json.dumps(full))
    assert cli(["report", str(parts[1]), str(tmp_path / "full.json"), "--out", str(tmp_path / "mixed")]) == 1
    assert "join like with like" in capsys.readouterr().err and not (tmp_path / "mixed").exists()


def damaged(path, bad, change) -> str:
    """``path``'s results with ``change`` made, written to ``bad``."""
    results = json.loads(path.read_text())
    change(results)
    bad.write_text(json.dumps(results))
    return str(bad)


def test_a_bad_results_file_names_the_file_and_the_field_and_writes_nothing(verified, tmp_path, capsys):
    good = verified[0] / "results.json"
    cut = tmp_path / "cut.json"
    cut.write_text(good.read_text()[:5000])
    cases = {
        str(cut): "not a complete JSON file",
        damaged(good, tmp_path / "old.json", lambda r: r.update(version=1)): "version is 1, written by another version",
        damaged(good, tmp_path / "no-figures.json", lambda r: r["claims"]["accuracy"]["bases"]["toy"].pop("figures")):
            "the field 'claims.accuracy.bases.toy.figures' is missing",
        damaged(good, tmp_path / "no-gap.json", lambda r: r["claims"]["accuracy"]["bases"]["toy"]["figures"].pop("cls_gap")):
            "claims.accuracy.bases.toy.figures: the field 'cls_gap' is missing",
        damaged(good, tmp_path / "text.json", lambda r: r["claims"]["params"].update(number="one")):
            "'claims.params.number' is a str",
    }
    assert len(cases) == 5
    for path, message in cases.items():
        with pytest.raises(ResultsError) as err:
            verify.report(path, tmp_path / "out")
        assert path in str(err.value) and message in str(err.value), str(err.value)
        assert not (tmp_path / "out").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]
    capsys.readouterr()
    assert cli(["report", str(cut), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minilora report: ") and str(cut) in err and err.count("\n") == 1


def test_merge_measures_only_the_claims_named(tiny_verify, verified, tmp_path):
    folder, first = verified
    shutil.copytree(folder, tmp_path / "report")
    merged = tiny_verify(tmp_path / "report", only=["params"], merge=tmp_path / "report" / "results.json")
    assert list(merged["claims"]) == ["params", "memory", "accuracy"]
    for key in ("memory", "accuracy"):  # kept as they were, their provenance too
        assert merged["claims"][key] == first["claims"][key]
    assert merged["claims"]["params"]["provenance"]["command"].endswith(f"--merge {tmp_path / 'report' / 'results.json'}")
    assert merged["claims"]["params"]["provenance"]["date"] >= first["claims"]["params"]["provenance"]["date"]
    assert len(merged["meta"]["commands"]) == 2
    assert "## 4. Comparable performance" in (tmp_path / "report" / "README.md").read_text()
    with pytest.raises(ValueError, match="quick mode with seed 0, this run is full"):
        verify.verify(tmp_path / "x", quick=False, only=["params"], merge=tmp_path / "report" / "results.json", log=lambda *a: None)


DUMMY = '''
from minilora.experiments.core import HOLDS, judge

class DummyBase:
    name, SHORT, TITLE, IN_TEXT = "dummy", "Dummy", "a dummy base (a test's)", "the dummy"
    def size(self, session):
        return 3 if session.quick else 30

BASE = DummyBase()

KEY, NUMBER, BASES = "dummy", 99, ("dummy",)
TITLE, CLAIM, MEASURED = "A dummy claim", "a dummy base has a size", "the size of the dummy"

def measure(base, session):
    return {"size": base.size(session), "settings": {"quick": session.quick}}

def verdict(figures):
    return {"verdict": judge(figures["size"], 3, 1), "parts": {}, "thresholds": {"size holds >=": 3}}

def render(figures, verdict, plot, quick):
    return {"figure": f"size {figures['size']}", "body": f"The dummy measured {figures['size']}.", "plots": []}
'''


def test_a_base_and_a_claim_from_elsewhere_reach_the_report(tmp_path):
    path = tmp_path / "dummy_extension.py"
    path.write_text(DUMMY)
    spec = importlib.util.spec_from_file_location("dummy_extension", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bases.register(module.BASE)
    verify.register_claim(module)
    try:
        results = verify.verify(tmp_path / "report", quick=True, only=["dummy"], bases=("dummy",), log=lambda *a: None)
        again = verify.claim_modules()
    finally:
        verify.unregister_claim("dummy")
        bases.unregister("dummy")
    assert "dummy" in again and "dummy" not in verify.claim_modules()
    dummy = results["claims"]["dummy"]
    # quick mode: a claim that does not set QUICK_DECIDES reads "inconclusive (quick)", what it measured kept beside
    assert dummy["verdict"] == "inconclusive (quick)" and dummy["bases"]["dummy"]["verdict"]["quick_reading"]["verdict"] == "holds"
    assert dummy["bases"]["dummy"]["figures"]["size"] == 3
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "## 99. A dummy claim" in readme and "The dummy measured 3." in readme and "| 99 | A dummy claim |" in readme
    with pytest.raises(ValueError, match="unknown claims \\['dummy'\\]"):
        verify.verify(tmp_path / "x", only=["dummy"])


# ---------------------------------------------------------------------------
# the run cache
# ---------------------------------------------------------------------------


def cached_session(tasks, quick=True):
    cls_task, corpus = tasks
    return session_for(quick, cls_task, corpus, {"toy": toy_env(cls_task, corpus, tiny_gpt())})


SPEC = RunSpec("cls", "lora", "Wq+Wv", 2, steps=2, batch_size=4, warmup_steps=1, lr=1e-2)


def test_the_cache_keeps_runs_as_json_and_safetensors(tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("MINILORA_RUN_CACHE", str(tmp_path))
    toy = tiny_toy()
    (first,) = train(cached_session(tasks), toy, [SPEC])
    assert first.provenance["origin"] == "trained"
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".safetensors"]  # never a pickle
    entry = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert entry["request"]["code_sha256"] == provenance.code_sha256() and entry["request"]["base"] == "toy"
    assert entry["request"]["spec"]["r"] == 2 and set(entry["request"]["versions"]) >= {"numpy", "torch", "peft", "transformers"}
    assert {"date", "load", "wall_seconds"} <= set(entry["provenance"])
    (again,) = train(cached_session(tasks), toy, [SPEC])
    assert again.provenance["origin"] == "run cache"
    assert again.losses == first.losses and again.final == first.final and again.val == first.val
    assert again.state.keys() == first.state.keys() and all((again.state[k] == first.state[k]).all() for k in first.state)
    # a change to minilora's source: another key, trained again
    monkeypatch.setattr(provenance, "code_sha256", lambda: "0" * 64)
    (changed,) = train(cached_session(tasks), toy, [SPEC])
    assert changed.provenance["origin"] == "trained" and len(list(tmp_path.glob("*.json"))) == 2


class RunsCode:
    """A pickle that, unpickled, writes a file: what a run cache entry must never be able to do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        from pathlib import Path

        return (Path.write_text, (Path(self.marker), "code ran"))


def entry_path(tmp_path):
    (path,) = tmp_path.glob("*.json")
    return path


@pytest.mark.parametrize("damage, why", [
    ("edit", "checksum does not match"),  # an accuracy edited by hand
    ("cut", "not a JSON file"),
    ("swap", "holds another run"),
    ("weights", "weights file"),
    ("pickle", "not a JSON file"),  # a file that would run code if unpickled (the old cache's format)
])
def test_a_bad_cache_entry_is_named_and_trained_again(tasks, tmp_path, monkeypatch, damage, why):
    monkeypatch.setenv("MINILORA_RUN_CACHE", str(tmp_path))
    toy = tiny_toy()
    (first,) = train(cached_session(tasks), toy, [SPEC])
    path = entry_path(tmp_path)
    if damage == "edit":
        entry = json.loads(path.read_text())
        entry["result"]["final"]["accuracy"] = 0.30
        path.write_text(json.dumps(entry))
    elif damage == "cut":
        path.write_text(path.read_text()[:200])
    elif damage == "swap":  # another run's entry under this one's name
        other = tmp_path / "other"
        monkeypatch.setenv("MINILORA_RUN_CACHE", str(other))
        train(cached_session(tasks), toy, [SPEC.replace(seed=1)])
        (other_path,) = other.glob("*.json")
        path.write_text(other_path.read_text())
        path.with_suffix(".safetensors").write_bytes(other_path.with_suffix(".safetensors").read_bytes())
        monkeypatch.setenv("MINILORA_RUN_CACHE", str(tmp_path))
    elif damage == "pickle":
        import pickle

        for target in (path, path.with_suffix(".safetensors")):
            target.write_bytes(pickle.dumps(RunsCode(tmp_path / "code-ran")))
    else:
        weights = path.with_suffix(".safetensors")
        weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.warns(RunCacheWarning, match=why) as caught:
        (again,) = train(cached_session(tasks), toy, [SPEC])
    assert str(path) in str(caught[0].message)
    assert not (tmp_path / "code-ran").exists()  # nothing in the cache is ever unpickled
    assert again.provenance["origin"] == "trained" and again.final == first.final and again.losses == first.losses
    with warnings.catch_warnings():  # written over: read back cleanly now
        warnings.simplefilter("error")
        assert train(cached_session(tasks), toy, [SPEC])[0].provenance["origin"] == "run cache"


def test_a_record_is_kept_as_strict_json_with_its_nan_and_infinities(tmp_path):
    """RunCache's JSON records (the E2E section's runs): read back as written -- NaN and infinities included, the
    file strict JSON all the same -- and an edited or another request's record named in a warning."""
    import math

    import numpy as np

    from minilora.experiments.runs.cache import request

    cache, spec = RunCache(tmp_path), SPEC
    req = request("toy", spec, {"record": "validated"})
    record = {"val_loss": float("nan"), "losses": [1.5, float("inf"), float("-inf")], "pair": (1, "a"), "n": np.int64(3),
              "float": "nan"}
    cache.write_record(req, record, {"origin": "trained", "run": "x", "date": "today"})
    (path,) = tmp_path.glob("*.json")
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the file: not strict JSON"))
    back, origin = cache.read_record(req)
    assert math.isnan(back.pop("val_loss")) and back == {"losses": [1.5, math.inf, -math.inf], "pair": [1, "a"], "n": 3,
                                                       "float": "nan"}
    assert origin == {"date": "today", "origin": "run cache", "file": str(path)}
    assert cache.read_record(request("toy", spec, {"record": "tested"})) is None  # another kind: another key
    path.write_text(path.read_text().replace('"today"', '"yesterday"'))
    with pytest.warns(RunCacheWarning, match=f"{path.name}.*checksum"):
        assert cache.read_record(req) is None


def test_no_time_is_read_from_the_cache(tasks, tmp_path, monkeypatch):
    """Claim 12 reads runs from the cache whose recorded training took 12345 s: its step times are measured in
    this process, and the 12345 s appear only in the provenance, labelled."""
    monkeypatch.setenv("MINILORA_RUN_CACHE", str(tmp_path))
    toy = tiny_toy(grids={True: gpt.Grid(seeds=(0,), batch_size=4, tasks=(("cls", gpt.TaskGrid(2, (("Wq+Wv", (8,)),))),))})
    specs = [SPEC.replace(r=8, lr=None), SPEC.replace(r=8, lr=None, quantized=True)]
    session = cached_session(tasks)
    cache = RunCache(tmp_path)
    from minilora.experiments.runs.cache import request

    for result in train(session, toy, specs):  # trained, then recorded again as if they had taken 12345 s
        result.seconds, result.provenance["wall_seconds"] = 12345.0, 12345.0
        env = toy.environment(session)
        cache.write(request("toy", result.spec, {**env.provenance, **toy.run_identity(session)}), result)
    from minilora.report import provenance_line
    from minilora.experiments.claims import quantization

    with registered(toy):
        session = cached_session(tasks)
        session.claim = "quantization"
        figures = json.loads(json.dumps(quantization.measure(toy, session)))
        entry = verify.claim_provenance(session, "quantization", 1.0, 0.0)
    assert "12345" not in json.dumps(figures)
    step = figures["step_time"]
    assert step["repeats"] == quantization.STEP_REPEATS[True] and 0 < step["dense"]["step"] < 100 and step["ratio"] > 0
    cached = entry["runs"]["from_cache"]
    assert len(cached) == 2 and {c["wall_seconds"] for c in cached.values()} == {12345.0} and not entry["runs"]["trained"]
    line = provenance_line({**entry, "command": "minilora verify --only quantization", "wall_seconds": 1.0})
    assert "2 read back from the run cache" in line and "their recorded training time, not in the time above: 411.5 min" in line


def test_bad_arguments_are_one_line_errors(capsys, tmp_path):
    assert cli(["verify", "--only", "nothing", "--out", str(tmp_path / "r")]) == 1
    assert "unknown claims ['nothing']" in capsys.readouterr().err
    assert cli(["verify", "--bases", "gpt5", "--out", str(tmp_path / "r")]) == 1
    assert "unknown bases ['gpt5']" in capsys.readouterr().err
    assert cli(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r")]) == 1
    assert "missing.json: cannot read it" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_load_results_refuses_an_unknown_claim(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"format": "minilora verify results", "version": 2,
                                "meta": {"mode": "quick", "seed": 0, "bases": [], "commands": []},
                                "claims": {"telepathy": {}}}))
    with pytest.raises(ResultsError, match="claims.telepathy: no claim of this minilora is called 'telepathy'"):
        load_results(path, verify.claim_modules())
    assert copy.deepcopy(bases.all_bases()).keys() >= {"toy", "minilm", "llama"}


# ---------------------------------------------------------------------------
# --against: a quick run checked against another run's verdicts
# ---------------------------------------------------------------------------

SYNTHETIC = {"claims": {"params": {"number": 1, "verdict": "holds"},
                        "memory": {"number": 2, "verdict": "does not hold"},
                        "time": {"number": 3, "verdict": "partly or holds — inconclusive"},
                        "accuracy": {"number": 4, "verdict": "inconclusive (quick)"},
                        "rank": {"number": 6, "verdict": "partly"}}}


def test_against_names_only_verdicts_that_cannot_agree():
    reference = {"params": "holds", "memory": "partly", "time": "does not hold", "accuracy": "does not hold",
                 "rank": "partly or holds — inconclusive"}
    assert verify.contradictions(SYNTHETIC, reference) == [
        "claim 2 (memory): 'does not hold' here, 'partly' in the reference",
        "claim 3 (time): 'partly or holds — inconclusive' here, 'does not hold' in the reference"]
    assert verify.contradictions(SYNTHETIC, {"params": "holds", "accuracy": "holds"}) == []  # quick lies across both


def test_against_reads_either_layout_and_refuses_anything_else(tmp_path):
    old = tmp_path / "v1.json"  # the layout before claims x bases: {"meta", "claims": {key: {"verdict", ...}}}
    old.write_text(json.dumps({"meta": {}, "claims": {"params": {"verdict": "holds", "figures": {}}}}))
    assert verify.reference_verdicts(old) == {"params": "holds"}
    for text, why in (("[]", "not a results.json"), ('{"claims": {"params": {"verdict": "maybe"}}}', "is 'maybe', not a verdict"),
                      ('{"claims": {"params": {"verdict": 3}}}', "have no verdict text"), ("{", "not a results.json")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ResultsError, match=why):
            verify.reference_verdicts(tmp_path / "bad.json")


def test_against_sets_the_exit_status(tmp_path, monkeypatch, capsys):
    measured = []
    monkeypatch.setattr(verify, "verify", lambda *a, **k: measured.append(k) or SYNTHETIC)
    reference = tmp_path / "full.json"
    reference.write_text(json.dumps({"claims": {"params": {"verdict": "holds"}, "memory": {"verdict": "partly"}}}))
    assert cli(["verify", "--quick", "--out", str(tmp_path / "r"), "--against", str(reference)]) == 2
    assert "contradicts" in capsys.readouterr().err and measured
    reference.write_text(json.dumps({"claims": {"params": {"verdict": "holds"}}}))
    assert cli(["verify", "--quick", "--out", str(tmp_path / "r"), "--against", str(reference)]) == 0
    assert "no verdict contradicts" in capsys.readouterr().out
    measured.clear()
    reference.write_text("[]")  # refused before anything is measured
    assert cli(["verify", "--quick", "--out", str(tmp_path / "r"), "--against", str(reference)]) == 1 and not measured


def test_quick_mode_decides_only_what_it_can_resolve():
    slots = {"toy": {"verdict": {"verdict": "does not hold", "parts": {"a": "does not hold"}}}, "minilm": {"verdict": None}}
    comparison = {"verdict": "holds"}
    assert verify.quick_verdict(slots, comparison) == "inconclusive (quick)"
    assert slots["toy"]["verdict"] == {"verdict": "inconclusive (quick)", "parts": {"a": "inconclusive (quick)"},
                                       "quick_reading": {"verdict": "does not hold", "parts": {"a": "does not hold"}}}
    assert comparison == {"verdict": "inconclusive (quick)", "quick_reading": "holds"}
    decides = {key for key, module in verify.claim_modules().items() if getattr(module, "QUICK_DECIDES", False)}
    assert decides == {"params"}  # exact counts, the same in both modes
