"""The fine-tuning experiments (claims 4, 5, 6, 8, 9) on tiny settings.

* the runner trains, is deterministic by seed, and its seed changes the run;
* the PyTorch + PEFT reference reproduces minilora's loss curve step by step
  (float64: to rounding; float32: closely) -- the strongest test that the
  reference is the same experiment;
* the math of claim 6 (energy shares, the subspace similarity φ) on matrices whose
  answer is known;
* every verdict flips when its figure crosses its threshold;
* each claim's ``run(ctx)`` completes on a tiny model and writes its plots.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest

from minilora.experiments import finetune as ft
from minilora.experiments import intrinsic_rank as ir
from minilora.experiments import modularity as mod
from minilora.experiments import reference as ref
from minilora.experiments import sensitivity as sens
from minilora.experiments import tuning
from minilora.experiments.common import FAILS, HOLDS, PARTLY, Context
from minilora.models import GPT, GPTConfig, LlamaConfig, LlamaForCausalLM
from minilora.tasks import code_corpus, docstring_package_task
from tolerances import assert_close

TINY = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


@pytest.fixture(scope="module")
def cls_task():
    return docstring_package_task(max_prompt_bytes=ft.CLS_PROMPT_BYTES, per_class=20, block_size=64)


@pytest.fixture(scope="module")
def corpus():
    return code_corpus(max_bytes=40_000)


def tiny_base(dtype=np.float32, seed=0) -> GPT:
    import minilora

    minilora.manual_seed(seed)
    return GPT(TINY, dtype=dtype)


def spec(**kw) -> ft.RunSpec:
    defaults = dict(task="cls", method="lora", target="Wq+Wv", r=2, steps=4, batch_size=4, warmup_steps=1)
    return ft.RunSpec(**{**defaults, **kw})


# ---------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------


def test_runner_is_deterministic_by_seed(cls_task):
    base = tiny_base()
    data = ft.ClassificationData(cls_task, 4)
    a, b = ft.finetune(spec(seed=0), base, data), ft.finetune(spec(seed=0), base, data)
    c = ft.finetune(spec(seed=1), base, data)
    assert a.losses == b.losses and a.final == b.final
    assert a.losses != c.losses
    assert set(a.final) == {"loss", "accuracy"} and 0.0 <= a.final["accuracy"] <= 1.0
    # Wq+Wv at r=2: per layer A (2r, C) and B (2C, r)
    assert a.trainable == TINY.n_layer * (2 * 2 * 32 + 2 * 32 * 2)
    # the base model is untouched by the runs
    assert np.array_equal(np.asarray(base.state_dict()["transformer.h.0.attn.c_attn.weight"]),
                          np.asarray(tiny_base().state_dict()["transformer.h.0.attn.c_attn.weight"]))


def tiny_llama_base(seed=0) -> LlamaForCausalLM:
    import minilora

    minilora.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                        tie_word_embeddings=True))


LLAMA_TARGETS = ("q_proj+v_proj", "llama-all")  # claim 13's targets on the LLaMA twin


@pytest.mark.parametrize("target", list(ft.TARGETS))
def test_every_target_set_trains(cls_task, target):
    base = tiny_llama_base() if target in LLAMA_TARGETS else tiny_base()
    result = ft.finetune(spec(target=target, steps=2), base, ft.ClassificationData(cls_task, 4))
    assert all(math.isfinite(x) for x in result.losses)
    assert any("lora_A" in k for k in result.state)
    assert type(base).__name__ in repr(type(ft.fresh_model(spec(target=target), base).base_model.model))


def test_full_finetuning_and_code_task(corpus):
    data = ft.CodeData(corpus, 4, block=32, eval_windows=8)
    result = ft.finetune(spec(task="code", method="full", target=None, r=0), tiny_base(), data)
    assert result.trainable == TINY.num_parameters()
    assert "transformer.h.0.attn.c_attn.weight" in result.state
    assert len(result.losses) == 4 and 0.0 <= result.final["accuracy"] <= 1.0


def test_summarize_mean_and_std():
    runs = [ft.RunResult(spec(seed=s), [1.0], {"loss": 1.0 + s, "accuracy": 0.5 + 0.1 * s}, 10, 0.0) for s in range(3)]
    rows = ft.summarize(runs)["cls"]["Wq+Wv r=2"]
    assert rows["n"] == 3 and rows["accuracy_mean"] == pytest.approx(0.6)
    assert rows["loss_std"] == pytest.approx(1.0)  # sample std of 1, 2, 3


def test_rates_of_untuned_settings_come_from_the_nearest_tuned_one():
    rates = {"cls": {"full": 1.0, "Wq+Wv r=8": 2.0, "Wq+Wv r=64": 3.0, "attn r=8": 4.0, "attn r=64": 5.0}}
    assert ft.rate_for(rates, spec(method="full", target=None, r=0)) == 1.0
    assert [ft.rate_for(rates, spec(r=r)) for r in (1, 2, 4, 8, 16, 32, 64)] == [2.0] * 5 + [3.0] * 2
    assert ft.rate_for(rates, spec(target="attn", r=64)) == 5.0
    assert ft.rate_for(rates, spec(target="Wv", r=1)) == 2.0 and ft.rate_for(rates, spec(target="c_attn", r=64)) == 3.0


def test_failed_runs_are_named_and_left_out_of_the_mean():
    def run(seed, accuracy):
        return ft.RunResult(spec(seed=seed), [1.0], {"loss": 1.0, "accuracy": accuracy}, 10, 0.0)

    runs = [run(0, 0.6), run(1, 0.15), run(2, float("nan")), run(3, 0.4)]
    row = ft.summarize(runs, baseline={"cls": {"accuracy": 0.19, "loss": 2.0}})["cls"]["Wq+Wv r=2"]
    assert row["failed"] == {1: tuning.BELOW, 2: tuning.DIVERGED} and row["n"] == 2 and row["n_runs"] == 4
    assert row["accuracy_mean"] == pytest.approx(0.5) and len(row["accuracy_all"]) == 4
    assert "2 of 4 seeds; seed 1 below baseline, seed 2 diverged" in ft._fmt(row, "accuracy")
    assert tuning.describe_failures({"Wq+Wv r=2": row})[0] == "Wq+Wv r=2 seed 1: below baseline (0.150)"
    # without a baseline only the diverged run is left out
    assert ft.summarize(runs)["cls"]["Wq+Wv r=2"]["failed"] == {2: tuning.DIVERGED}
    # every run failed: no mean, and claim 9's spread leaves the setting out
    rows = ft.summarize([run(0, 0.1), run(1, 0.1)], baseline={"cls": {"accuracy": 0.19}})["cls"]
    assert math.isnan(rows["Wq+Wv r=2"]["accuracy_mean"])
    rows["full"] = {"accuracy_mean": 0.5, "accuracy_std": 0.0}
    assert sens.spread(rows, ["Wq+Wv r=2", "full"], "accuracy")["means"] == {"full": 0.5}


class RunsCode:
    """A pickle that, unpickled, writes a file: what a run cache file must never be able to do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_the_run_cache_never_unpickles_and_refuses_a_damaged_file_naming_it(tmp_path, monkeypatch):
    """The run cache read its files with pickle.loads: a file put in the cache folder ran code. It is
    now a checked safetensors file (tuning.read_run); anything else is an error naming it."""
    import pickle

    from minilora.errors import LoadError

    monkeypatch.setenv("MINILORA_RUN_CACHE", str(tmp_path / "cache"))
    run = ft.RunResult(spec(), [1.0, 0.5], {"accuracy": 0.5, "loss": float("nan")}, 10, 9.0,
                       {"w": np.ones((2, 3), dtype=np.float32)}, {"accuracy": 0.25})
    tuning.cached_run(spec(), "key", lambda: run)
    (path,) = (tmp_path / "cache").iterdir()
    again = tuning.cached_run(spec(), "key", lambda: pytest.fail("trained instead of reading the cache"))
    assert again.losses == run.losses and again.val == run.val and np.array_equal(again.state["w"], run.state["w"])
    assert again.final["accuracy"] == 0.5 and math.isnan(again.final["loss"])  # a diverged figure comes back as NaN
    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(LoadError, match=re.escape(str(path))):
        tuning.cached_run(spec(), "key", lambda: pytest.fail("trained instead of refusing"))
    assert not marker.exists()


def test_runs_read_from_the_cache_are_counted_and_the_report_says_so(tmp_path, monkeypatch):
    from minilora.report import _cache_sentence

    monkeypatch.setenv("MINILORA_RUN_CACHE", str(tmp_path))
    monkeypatch.setattr(tuning, "CACHE_READS", {"runs": 0, "training_seconds": 0.0})
    trained = []

    def train():
        trained.append(1)
        return ft.RunResult(spec(), [1.0], {"accuracy": 0.5}, 10, 90.0)

    first, again = tuning.cached_run(spec(), "key", train), tuning.cached_run(spec(), "key", train)
    assert len(trained) == 1 and again.final == first.final and again.seconds == 90.0
    assert tuning.CACHE_READS == {"runs": 1, "training_seconds": 90.0}
    tuning.cached_run(spec(seed=1), "key", train)  # another spec: trained, not read
    assert len(trained) == 2 and tuning.CACHE_READS["runs"] == 1
    assert _cache_sentence(tuning.CACHE_READS) == (
        " 1 fine-tuning run was read back from a run cache (`MINILORA_RUN_CACHE`) rather than trained by this command, "
        "so the time above leaves out its 1.5 min of training (as measured when trained).")
    assert _cache_sentence({"runs": 0, "training_seconds": 0.0}) == ""


def test_choose_rate_skips_failed_runs():
    # the best validation accuracy is 0.9 at 1e-2, but 0.1 at 1e-1 is below the baseline and NaN diverged
    candidates = {1e-3: {"accuracy": 0.5}, 1e-2: {"accuracy": 0.9}, 1e-1: {"accuracy": 0.1}, 1.0: {"accuracy": float("nan")}}
    rate, table = tuning.choose_rate(candidates, "accuracy", True, baseline=0.2)
    assert rate == 1e-2 and table[1e-1]["status"] == tuning.BELOW and table[1.0]["status"] == tuning.DIVERGED
    assert tuning.choose_rate({1e-3: {"loss": 2.0}, 1e-2: {"loss": 1.5}}, "loss", False, baseline=1.8)[0] == 1e-2
    # every run below the baseline: the best of them all the same (its setting then reports its failed runs)
    assert tuning.choose_rate({1e-3: {"accuracy": 0.1}, 1e-2: {"accuracy": 0.15}}, "accuracy", True, 0.2)[0] == 1e-2
    assert tuning.nearest_rank(16) == 8 and tuning.nearest_rank(32) == 64 and tuning.nearest_rank(1) == 8


def test_a_diverging_run_is_returned_not_raised(cls_task):
    with np.errstate(all="ignore"):  # the overflow is the point
        result = ft.finetune(spec(method="full", target=None, r=0, lr=1e30, steps=6), tiny_base(), ft.ClassificationData(cls_task, 4))
    assert math.isnan(result.final["accuracy"]) and math.isnan(result.val["accuracy"])
    assert tuning.run_status(result.final, "accuracy", True, 0.1) == tuning.DIVERGED


def test_runspec_refuses_bad_settings():
    with pytest.raises(ValueError, match="target"):
        ft.RunSpec("cls", "lora", "Wk+Wq", 8)
    with pytest.raises(ValueError, match="task"):
        ft.RunSpec("images", "full")


# ---------------------------------------------------------------------------
# the reference: the same run in PyTorch + PEFT
# ---------------------------------------------------------------------------


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_reference_matches_minilora_float64(cls_task, method):
    base = tiny_base(np.float64)
    s = spec(method=method, target="c_attn" if method == "lora" else None, r=4 if method == "lora" else 0, steps=6, lr=3e-2)
    data = ft.ClassificationData(cls_task, 4)
    ours, theirs = ft.finetune(s, base, data), ref.torch_finetune(s, base, data)
    assert _rel_err(ours.losses, theirs["losses"]) < 1e-9
    assert ours.final["loss"] == pytest.approx(theirs["final"]["loss"], rel=1e-9)
    assert ours.losses[-1] < ours.losses[0]  # it did learn something: the curves are not trivially flat


def test_reference_matches_minilora_float32(corpus):
    base = tiny_base(np.float32)
    s = spec(task="code", target="c_attn", r=4, steps=6, lr=1e-2)
    data = ft.CodeData(corpus, 4, block=32, eval_windows=8)
    ours, theirs = ft.finetune(s, base, data), ref.torch_finetune(s, base, data)
    # float32 on both sides (tolerances.py): the widest reduction is the softmax over the 256 bytes, through 2
    # layers and the head, over 6 steps whose errors add: 2 x 6 x 3 x gamma_256 = 5.5e-4 of the loss.
    n, depth = TINY.vocab_size, s.steps * (TINY.n_layer + 1)
    assert_close(ours.losses, theirs["losses"], n=n, depth=depth, what="losses")
    assert_close(ours.final["loss"], theirs["final"]["loss"], n=n, depth=depth + 1, what="final validation loss")


def test_reference_refuses_what_peft_cannot_express():
    with pytest.raises(ValueError, match="c_attn"):
        ref.torch_model(spec(target="Wq+Wv"), tiny_base())


def test_agreement_measures_against_seed_spread():
    def run(seed, offset):
        losses = list(2.0 + 0.1 * seed + offset + np.zeros(20))
        return ft.RunResult(spec(seed=seed), losses, {"accuracy": 0.5 + 0.1 * seed + offset}, 1, 0.0)

    ours = [run(s, 0.0) for s in range(3)]
    close = [{"losses": r.losses, "final": {"accuracy": r.final["accuracy"] + 0.01}} for r in ours]
    a = ref.agreement(ours, close, "accuracy")
    assert a["final_spread"] == pytest.approx(0.1) and a["final_ratio"] == pytest.approx(0.1)
    assert a["curve_ratio"] == pytest.approx(0.0)
    far = [{"losses": [x + 0.5 for x in r.losses], "final": {"accuracy": r.final["accuracy"]}} for r in ours]
    assert ref.agreement(ours, far, "accuracy")["curve_ratio"] == pytest.approx(5.0)
    same = [ft.RunResult(spec(seed=s), [2.0] * 20, {"accuracy": 0.5}, 1, 0.0) for s in range(2)]
    exact = [{"losses": r.losses, "final": dict(r.final)} for r in same]
    assert ref.agreement(same, exact, "accuracy")["final_ratio"] == 0.0  # no difference, even with no spread


# ---------------------------------------------------------------------------
# claim 6's math
# ---------------------------------------------------------------------------


def test_energy_share():
    s = np.array([3.0, 2.0, 1.0, 0.0])
    assert ir.energy_share(s, 1) == pytest.approx(9 / 14)
    assert ir.energy_share(s, 3) == pytest.approx(1.0)
    assert ir.rank_for_energy(s, 0.9) == 2  # cumulative shares 9/14, 13/14, 1
    rng = np.random.default_rng(0)
    low_rank = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 30))  # rank 3
    assert ir.energy_share(np.linalg.svd(low_rank, compute_uv=False), 3) == pytest.approx(1.0)
    assert ir.rank_for_energy(np.linalg.svd(low_rank, compute_uv=False), 0.999) <= 3
    # a random square matrix spreads its energy: top 8 of 128 hold far less than half
    assert 0.05 < ir.random_energy_share((128, 128), 8) < 0.3


def test_update_spectra_reads_every_projection():
    base = tiny_base()
    state = {k: np.array(v) for k, v in base.state_dict().items()}
    tuned = {k: v.copy() for k, v in state.items()}
    rng = np.random.default_rng(0)
    tuned["transformer.h.1.attn.c_attn.weight"][32:64] += np.outer(rng.standard_normal(32), rng.standard_normal(32))
    spectra = ir.update_spectra(state, tuned, TINY.n_layer)
    assert len(spectra) == 6 * TINY.n_layer
    assert ir.energy_share(spectra["h.1.Wk"], 1) == pytest.approx(1.0)  # a rank-1 change of Wk only
    assert np.allclose(spectra["h.1.Wq"], 0) and np.allclose(spectra["h.0.W_fc"], 0)


def test_phi_of_a_subspace_with_itself_is_one():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((8, 64))
    for i in (1, 4, 8):
        assert ir.subspace_similarity(A, A, i, i) == pytest.approx(1.0)
    # a larger adapter containing A's rows spans A's directions: phi(i, j) = 1 for j = all of its rank
    A_big = np.concatenate([A, rng.standard_normal((24, 64))])
    assert ir.subspace_similarity(A, A_big, 8, 32) == pytest.approx(1.0)
    # the grid agrees with the function, entry by entry
    grid = ir.similarity_grid(A, A_big)
    assert grid.shape == (8, 32)
    assert grid[2, 9] == pytest.approx(ir.subspace_similarity(A, A_big, 3, 10))


def test_phi_of_random_subspaces_is_max_ij_over_d():
    rng = np.random.default_rng(1)
    d = 128
    for i, j in ((1, 1), (4, 16), (8, 64)):
        values = [ir.subspace_similarity(rng.standard_normal((i, d)), rng.standard_normal((j, d)), i, j) for _ in range(200)]
        assert np.mean(values) == pytest.approx(ir.random_similarity(i, j, d), rel=0.2)


# ---------------------------------------------------------------------------
# verdicts: each flips when its figure crosses its threshold
# ---------------------------------------------------------------------------


def test_accuracy_verdict_flips():
    assert ft.judge_accuracy(0.01, 0.95)[0] == HOLDS
    assert ft.judge_accuracy(ft.CLS_GAP_HOLDS + 0.001, 0.95)[0] == PARTLY
    assert ft.judge_accuracy(0.01, ft.CODE_SHARE_HOLDS - 0.01)[0] == PARTLY
    assert ft.judge_accuracy(ft.CLS_GAP_PARTLY + 0.01, ft.CODE_SHARE_PARTLY - 0.01)[0] == FAILS
    assert ft.judge_accuracy(-0.05, 1.2)[0] == HOLDS  # LoRA better than full fine-tuning


def test_headline_figures():
    summary = {"cls": {"full": {"accuracy_mean": 0.8}, "Wq+Wv r=8": {"accuracy_mean": 0.75}},
               "code": {"full": {"loss_mean": 1.0}, "all r=8": {"loss_mean": 1.5}}}
    head = ft.headline(summary, {"code": {"loss": 2.0}})
    assert head["cls_gap"] == pytest.approx(0.05) and head["code_share"] == pytest.approx(0.5)
    summary["code"]["full"]["loss_mean"] = 1.999  # full fine-tuning barely moved; LoRA did better: all of it
    assert ft.headline(summary, {"code": {"loss": 2.0}})["code_share"] == math.inf
    assert ft.judge_accuracy(0.0, math.inf)[1]["domain shift"] == HOLDS
    summary["code"]["all r=8"]["loss_mean"] = 2.1  # ... and LoRA did worse: nothing measurable
    assert math.isnan(ft.headline(summary, {"code": {"loss": 2.0}})["code_share"])
    # a LoRA setting whose every run failed has no mean: the report says so rather than "nan"
    summary["cls"]["Wq+Wv r=8"]["accuracy_mean"] = math.nan
    assert ft._gap_points(ft.headline(summary, {"code": {"loss": 2.0}})["cls_gap"]).startswith("not measurable")
    assert ft._gap_points(0.118) == "11.8 points"


def test_reference_verdict_flips():
    assert ref.judge_reference({"a": 0.2, "b": 0.9})[0] == HOLDS
    assert ref.judge_reference({"a": 0.2, "b": 1.1})[0] == PARTLY
    assert ref.judge_reference({"a": 3.5, "b": 4.0})[0] == FAILS


def test_rank_verdict_flips():
    assert ir.judge_rank(ir.SHARE_HOLDS, ir.PHI_HOLDS)[0] == HOLDS
    assert ir.judge_rank(ir.SHARE_HOLDS - 0.01, ir.PHI_HOLDS)[0] == PARTLY
    assert ir.judge_rank(ir.SHARE_PARTLY - 0.01, ir.PHI_PARTLY - 0.01)[0] == FAILS


def test_modularity_verdict_flips():
    good = dict(storage_ratio=0.02, swap_speedup=100.0, retained_min=0.9, mixed_diff=1e-6)
    assert mod.judge_modularity(**good)[0] == HOLDS
    assert mod.judge_modularity(**{**good, "retained_min": 0.6})[0] == PARTLY
    assert mod.judge_modularity(**{**good, "mixed_diff": 1e-2})[1]["mixed batch"] == FAILS
    assert mod.judge_modularity(storage_ratio=0.9, swap_speedup=1.0, retained_min=0.1, mixed_diff=1.0)[0] == FAILS


def test_retained_share():
    scores = {"base": {"cls": {"accuracy": 0.2}, "code": {"loss": 2.0}},
              "cls": {"cls": {"accuracy": 0.6}, "code": {"loss": 2.1}},
              "code": {"cls": {"accuracy": 0.2}, "code": {"loss": 1.5}},
              "both": {"cls": {"accuracy": 0.5}, "code": {"loss": 1.6}}}
    keep = mod.retained(scores)
    assert keep["cls"] == pytest.approx(0.75) and keep["code"] == pytest.approx(0.8)


def test_sensitivity_verdict_flips():
    assert sens.judge_sensitivity(5.0, 0.1, 5.0, 0.1)[0] == HOLDS
    assert sens.judge_sensitivity(5.0, 0.1, 2.0, 0.1)[0] == PARTLY
    assert sens.judge_sensitivity(5.0, 0.01, 5.0, 0.01)[0] == FAILS  # ranges below MIN_RANGE count as no effect
    assert sens.judge_sensitivity(1.0, 0.1, 1.0, 0.1)[0] == FAILS
    assert sens.judge_sensitivity(math.inf, 0.1, math.inf, 0.1)[0] == PARTLY  # one seed: no noise estimate


def test_spread_against_noise():
    rows = {"a": {"accuracy_mean": 0.5, "accuracy_std": 0.02}, "b": {"accuracy_mean": 0.6, "accuracy_std": 0.02}}
    s = sens.spread(rows, ["a", "b", "missing"], "accuracy")
    assert s["range"] == pytest.approx(0.1) and s["ratio"] == pytest.approx(5.0) and s["best"] == "b"


# ---------------------------------------------------------------------------
# every claim, end to end, on a tiny model
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_claims_run_end_to_end(cls_task, corpus, tmp_path, monkeypatch, quick):
    if quick:
        tiny = dataclasses.replace(ft.QUICK, cls_steps=3, code_steps=3, batch_size=4, code_eval_windows=8)
        monkeypatch.setattr(ft, "QUICK", tiny)
    else:  # the full mode's code paths (several seeds and targets), at tiny sizes
        tiny = dataclasses.replace(ft.FULL, cls_steps=2, code_steps=2, batch_size=4, seeds=(0, 1),
                                   cls_ranks=(1, 8, 64), code_ranks=(1, 8), code_eval_windows=8)
        monkeypatch.setattr(ft, "FULL", tiny)
        monkeypatch.setattr(ft, "RATE_GRID", {task: {"full": (1e-4, 1e-3), "lora": (1e-3, 1e-2)} for task in ("cls", "code")})
        monkeypatch.setattr(ft, "TUNED_TARGETS", {"cls": ("Wq+Wv",), "code": ("Wq+Wv",)})  # the others take its rates
    ctx = Context(out=str(tmp_path), quick=quick, progress=False)
    ctx.shared["finetune_env"] = ft.Environment(tiny_base(), cls_task, corpus, {"test": True})
    for module in (ft, ref, ir, mod, sens):
        result = module.run(ctx)
        assert result.verdict in (HOLDS, PARTLY, FAILS)
        assert result.body and ("Quick-mode" in result.body) == quick
        for plot in result.plots:
            assert (tmp_path / plot).stat().st_size > 1000
    # claim 4's grid was trained once, at the chosen rates; the later claims reused it and added only
    # their own runs, and (full mode) the learning-rate selection's runs at the other rates
    grid = set(ft.resolved(ctx, ft.grid(quick)))
    assert grid <= set(ctx.shared["finetune_runs"])
    extra = set(ctx.shared["finetune_runs"]) - grid
    own = set(ft.resolved(ctx, sens.extra_specs(quick)))
    if quick:
        own |= set(ft.resolved(ctx, [s for _, specs in ref.reference_specs(True, "cls") for s in specs])) - grid
        assert ctx.shared["learning_rates"]["cls"]["full"] == ft.LR["cls"]["full"]  # quick mode: the defaults
    else:
        selection = {s for settings in ft.selection_specs(False).values() for specs in settings.values() for s in specs}
        own |= selection - grid
        assert set(ctx.shared["lr_selection"]["cls"]) == {"full", "Wq+Wv r=8", "Wq+Wv r=64"}
        for task, settings in ctx.shared["lr_selection"].items():  # each chosen rate is one of its grid's
            for name, (rate, rows) in settings.items():
                assert rate in rows and set(rows) == set(ft.RATE_GRID[task]["full" if name == "full" else "lora"])
    assert extra == own
