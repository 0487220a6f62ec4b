"""The fine-tuning experiments (claims 4, 5, 6, 8, 9) on tiny settings.

* the runner trains, is deterministic by seed, and its seed changes the run;
* the PyTorch + PEFT reference reproduces minilora's loss curve step by step
  (float64: to rounding; float32: closely) -- the strongest test that the
  reference is the same experiment;
* the math of claim 6 (energy shares, the subspace similarity φ) on matrices whose
  answer is known;
* every verdict flips when its figure crosses its threshold;
* each claim measures, judges and renders on a tiny model, and writes its plots.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from experiment_helpers import TINY, claim_entry, registered, runs_missing_rows, session_for, tiny_gpt, tiny_toy, toy_env
from minilora.experiments.bases import gpt as ft
from minilora.experiments.bases.toy import BASE as TOY
from minilora.experiments.claims import accuracy, modularity as mod, rank as ir, reference as ref, sensitivity as sens
from minilora.experiments.core import FAILS, HOLDS, ONE_RUN, PARTLY, inconclusive, verdict_range
from minilora.experiments.core.intervals import spread_factors
from minilora.experiments.runs import RunResult, RunSpec, describe_failures, fmt, rates as tuning, resolved, summarize
from minilora.experiments.runs import summary as summary_module
from minilora.experiments.runs import tuned_specs as tuned
from minilora.models import GPT, LlamaConfig, LlamaForCausalLM
from minilora.tasks import code_corpus, docstring_package_task
from tolerances import assert_close


@pytest.fixture(scope="module")
def cls_task():
    return docstring_package_task(max_prompt_bytes=ft.CLS_PROMPT_BYTES, per_class=20, block_size=64)


@pytest.fixture(scope="module")
def corpus():
    return code_corpus(max_bytes=40_000)


def tiny_base(dtype=np.float32, seed=0) -> GPT:
    return tiny_gpt(TINY, seed, dtype)


def spec(**kw) -> RunSpec:
    defaults = dict(task="cls", method="lora", target="Wq+Wv", r=2, steps=4, batch_size=4, warmup_steps=1)
    return RunSpec(**{**defaults, **kw})


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
    runs = [RunResult(spec(seed=s), [1.0], {"loss": 1.0 + s, "accuracy": 0.5 + 0.1 * s}, 10, 0.0, {},
                      {"loss": 1.0, "accuracy": 0.5}) for s in range(3)]
    rows = summarize(runs)["cls"]["Wq+Wv r=2"]
    assert rows["n"] == 3 and rows["accuracy_mean"] == pytest.approx(0.6)
    assert rows["loss_std"] == pytest.approx(1.0)  # sample std of 1, 2, 3


def test_rates_of_untuned_settings_come_from_the_nearest_tuned_one():
    from minilora.experiments.core import Session

    session = Session(quick=False)
    rates = {"full": 1.0, "Wq+Wv r=8": 2.0, "Wq+Wv r=64": 3.0, "attn r=8": 4.0, "attn r=64": 5.0}
    session.memo[("rates", "toy", "cls", None)] = (rates, {})

    def rate_for(s):
        return resolved(session, TOY, [s])[0].lr

    assert rate_for(spec(method="full", target=None, r=0)) == 1.0
    assert [rate_for(spec(r=r)) for r in (1, 2, 4, 8, 16, 32, 64)] == [2.0] * 5 + [3.0] * 2
    assert rate_for(spec(target="attn", r=64)) == 5.0
    assert rate_for(spec(target="Wv", r=1)) == 2.0 and rate_for(spec(target="c_attn", r=64)) == 3.0
    assert rate_for(spec(method="prompt", target=None, r=4)) == ft.METHOD_LR["prompt"]  # no rate is chosen for it


def test_failed_runs_are_named_and_left_out_of_the_mean():
    def run(seed, accuracy):  # validation and test agree here
        return RunResult(spec(seed=seed), [1.0], {"loss": 1.0, "accuracy": accuracy}, 10, 0.0, {}, {"loss": 1.0, "accuracy": accuracy})

    runs = [run(0, 0.6), run(1, 0.15), run(2, float("nan")), run(3, 0.4)]
    row = summarize(runs, baseline={"cls": {"val_accuracy": 0.19, "val_loss": 2.0}})["cls"]["Wq+Wv r=2"]
    assert row["failed"] == {1: tuning.BELOW, 2: tuning.DIVERGED} and row["n"] == 2 and row["n_runs"] == 4
    assert row["accuracy_mean"] == pytest.approx(0.5) and len(row["accuracy_all"]) == 4
    assert row["accuracy_all_mean"] == pytest.approx((0.6 + 0.15 + 0.4) / 3)  # every finite run, beside the kept ones'
    assert "2 of 4 seeds; seed 1 below baseline, seed 2 diverged; all 4: 0.383" in fmt(row, "accuracy")
    assert describe_failures({"Wq+Wv r=2": row})[0] == "Wq+Wv r=2 seed 1: below baseline (validation 0.150)"
    # without a baseline only the diverged run is left out
    assert summarize(runs)["cls"]["Wq+Wv r=2"]["failed"] == {2: tuning.DIVERGED}
    # one run kept: labelled so, never "± 0.000"
    one = summarize(runs[:3], baseline={"cls": {"val_accuracy": 0.19}})["cls"]["Wq+Wv r=2"]
    assert fmt(one, "accuracy").startswith("0.600 (one run) (1 of 3 seeds;") and "± 0.000" not in fmt(one, "accuracy")
    # every run failed: no mean, and claim 9's spread leaves the setting out
    rows = summarize([run(0, 0.1), run(1, 0.1)], baseline={"cls": {"val_accuracy": 0.19}})["cls"]
    assert math.isnan(rows["Wq+Wv r=2"]["accuracy_mean"])
    assert fmt(rows["Wq+Wv r=2"], "accuracy").startswith("no run kept (0 of 2 seeds;")
    rows["full"] = {"accuracy_mean": 0.5, "accuracy_std": 0.0}
    assert sens.spread(rows, ["Wq+Wv r=2", "full"], "accuracy")["means"] == {"full": 0.5}


def test_the_failure_rule_reads_validation_only():
    """A run below the floor on validation fails though its test figure is fine; one above it on validation
    is kept though its test figure is below the floor: the test split never decides which runs count."""
    floor = {"cls": {"val_accuracy": 0.30, "accuracy": 0.30}}
    low_val = RunResult(spec(seed=0), [1.0], {"loss": 1.0, "accuracy": 0.80}, 10, 0.0, {}, {"loss": 1.0, "accuracy": 0.25})
    low_test = RunResult(spec(seed=1), [1.0], {"loss": 1.0, "accuracy": 0.20}, 10, 0.0, {}, {"loss": 1.0, "accuracy": 0.70})
    row = summarize([low_val, low_test], baseline=floor)["cls"]["Wq+Wv r=2"]
    assert row["failed"] == {0: tuning.BELOW} and row["accuracy_mean"] == pytest.approx(0.20)
    no_val = RunResult(spec(seed=2), [1.0], {"loss": 1.0, "accuracy": 0.5}, 10, 0.0)
    with pytest.raises(ValueError, match="no validation figures"):
        summarize([no_val], baseline=floor)


def test_choose_rate_skips_failed_runs():
    # the best validation accuracy is 0.9 at 1e-2, but 0.1 at 1e-1 is below the baseline and NaN diverged
    candidates = {1e-3: {"accuracy": 0.5}, 1e-2: {"accuracy": 0.9}, 1e-1: {"accuracy": 0.1}, 1.0: {"accuracy": float("nan")}}
    rate, table = tuning.choose_rate(candidates, "accuracy", True, baseline=0.2)
    assert rate == 1e-2 and table[1e-1]["status"] == tuning.BELOW and table[1.0]["status"] == tuning.DIVERGED
    assert tuning.choose_rate({1e-3: {"loss": 2.0}, 1e-2: {"loss": 1.5}}, "loss", False, baseline=1.8)[0] == 1e-2
    # every run below the baseline: the best of them all the same (its setting then reports its failed runs)
    assert tuning.choose_rate({1e-3: {"accuracy": 0.1}, 1e-2: {"accuracy": 0.15}}, "accuracy", True, 0.2)[0] == 1e-2
    assert tuning.nearest_rank(16) == 8 and tuning.nearest_rank(32) == 64 and tuning.nearest_rank(1) == 8


def extended_choice(peak, grid=(1e-3, 3e-3, 1e-2), key="accuracy", higher=True, ladder=None):
    """choose_rate_extended on synthetic validation figures that peak at ``peak`` (log scale)."""
    tried = []

    def validate(lr):
        tried.append(lr)
        gap = abs(math.log(lr / peak))
        return {key: -gap if higher else gap}

    rate, table = tuning.choose_rate_extended(grid, validate, key, higher, ladder=ladder)
    return rate, table, tuning.at_edge(rate, table), tried


def test_a_rate_grid_is_extended_past_a_winning_edge_at_most_twice():
    # an interior rate wins: nothing more is trained
    rate, table, at_edge, tried = extended_choice(3e-3)
    assert rate == 3e-3 and not at_edge and tried == [1e-3, 3e-3, 1e-2]
    # the top edge wins: one step of the grid's log spacing (sqrt(10)) beyond it, then an interior rate
    rate, table, at_edge, tried = extended_choice(3e-2)
    assert tried == [1e-3, 3e-3, 1e-2, 0.0316, 0.1] and rate == 0.0316 and not at_edge
    rate, table, at_edge, tried = extended_choice(1.2e-2, key="loss", higher=False)  # a loss, lower is better
    assert tried == [1e-3, 3e-3, 1e-2, 0.0316] and rate == 1e-2 and not at_edge
    # still at the bottom after two steps: kept, and said to be at the edge
    rate, table, at_edge, tried = extended_choice(1e-6)
    assert tried == [1e-3, 3e-3, 1e-2, 3.16e-4, 1e-4] and rate == 1e-4 and at_edge and list(table) == sorted(tried)
    assert summary_module.selection_table({"cls": {"full": [rate, table]}})[-1].endswith("| 0.0001 (lr at the grid's edge) |")
    assert not summary_module.selection_table({"cls": {"full": [3e-3, extended_choice(3e-3)[1]]}})[-1].endswith("edge) |")
    with pytest.raises(ValueError, match="at least two rates"):
        tuning.choose_rate_extended((1e-3,), lambda lr: {"accuracy": 0.5}, "accuracy", True)


def test_along_a_ladder_a_grid_is_extended_to_the_ladder_s_next_rates():
    half_decades = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
    # a two-rate grid's own spacing (10x from 1e-2 to 3e-2: 3x) would step to 9e-2; the ladder steps to 0.1, then 0.3
    rate, table, at_edge, tried = extended_choice(10.0, grid=(1e-2, 3e-2), ladder=half_decades)
    assert tried == [1e-2, 3e-2, 0.1, 0.3] and rate == 0.3 and at_edge and list(table) == tried
    rate, table, at_edge, tried = extended_choice(3e-3, grid=(1e-2, 3e-2), ladder=half_decades)
    assert tried == [1e-2, 3e-2, 3e-3, 1e-3] and rate == 3e-3 and not at_edge
    assert extended_choice(3e-2, grid=(1e-2, 3e-2, 0.1), ladder=half_decades)[3] == [1e-2, 3e-2, 0.1]  # inside: as without
    with pytest.raises(ValueError, match="rate 0.02 at the grid's edge is not on the ladder"):
        extended_choice(1.0, grid=(1e-2, 2e-2), ladder=half_decades)
    with pytest.raises(ValueError, match="ends at 0.3; it has no rate above it"):
        extended_choice(10.0, grid=(0.1, 0.3), ladder=half_decades[:-1])


def test_a_diverging_run_is_returned_not_raised(cls_task):
    with np.errstate(all="ignore"):  # the overflow is the point
        result = ft.finetune(spec(method="full", target=None, r=0, lr=1e30, steps=6), tiny_base(), ft.ClassificationData(cls_task, 4))
    assert math.isnan(result.final["accuracy"]) and math.isnan(result.val["accuracy"])
    assert tuning.run_status(result.final, "accuracy", True, 0.1) == tuning.DIVERGED


def test_the_base_refuses_runs_it_cannot_train():
    with pytest.raises(ValueError, match="target"):
        TOY.check(RunSpec("cls", "lora", "Wk+Wq", 8))
    with pytest.raises(ValueError, match="task"):
        TOY.check(RunSpec("images", "full"))
    with pytest.raises(ValueError, match="method"):
        TOY.check(RunSpec("cls", "probe"))
    with pytest.raises(ValueError, match="r must be"):
        RunSpec("cls", "lora", "Wq+Wv", -1)


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
    ours, theirs = ft.finetune(s, base, data), ft.torch_finetune(s, base, data)
    assert _rel_err(ours.losses, theirs["losses"]) < 1e-9
    assert ours.final["loss"] == pytest.approx(theirs["final"]["loss"], rel=1e-9)
    assert ours.losses[-1] < ours.losses[0]  # it did learn something: the curves are not trivially flat


def test_reference_matches_minilora_float32(corpus):
    base = tiny_base(np.float32)
    s = spec(task="code", target="c_attn", r=4, steps=6, lr=1e-2)
    data = ft.CodeData(corpus, 4, block=32, eval_windows=8)
    ours, theirs = ft.finetune(s, base, data), ft.torch_finetune(s, base, data)
    # float32 on both sides (tolerances.py): the widest reduction is the softmax over the 256 bytes, through 2
    # layers and the head, over 6 steps whose errors add: 2 x 6 x 3 x gamma_256 = 5.5e-4 of the loss.
    n, depth = TINY.vocab_size, s.steps * (TINY.n_layer + 1)
    assert_close(ours.losses, theirs["losses"], n=n, depth=depth, what="losses")
    assert_close(ours.final["loss"], theirs["final"]["loss"], n=n, depth=depth + 1, what="final validation loss")


def test_reference_refuses_what_peft_cannot_express():
    with pytest.raises(ValueError, match="c_attn"):
        ft.torch_model(spec(target="Wq+Wv"), tiny_base())


def test_agreement_measures_against_seed_spread():
    def run(seed, offset):
        losses = list(2.0 + 0.1 * seed + offset + np.zeros(20))
        return RunResult(spec(seed=seed), losses, {"accuracy": 0.5 + 0.1 * seed + offset}, 1, 0.0)

    ours = [run(s, 0.0) for s in range(3)]
    close = [{"losses": r.losses, "final": {"accuracy": r.final["accuracy"] + 0.01}} for r in ours]
    a = ref.agreement(ours, close, "accuracy")
    assert a["final_spread"] == pytest.approx(0.1) and a["final_ratio"] == pytest.approx(0.1)
    assert a["curve_ratio"] == pytest.approx(0.0)
    far = [{"losses": [x + 0.5 for x in r.losses], "final": {"accuracy": r.final["accuracy"]}} for r in ours]
    assert ref.agreement(ours, far, "accuracy")["curve_ratio"] == pytest.approx(5.0)
    same = [RunResult(spec(seed=s), [2.0] * 20, {"accuracy": 0.5}, 1, 0.0) for s in range(2)]
    exact = [{"losses": r.losses, "final": dict(r.final)} for r in same]
    assert ref.agreement(same, exact, "accuracy")["final_ratio"] == 0.0  # no difference, even with no spread
    # a reference of the first seed only (MiniLM's): the difference at that seed, the spread over all of minilora's
    one = ref.agreement(ours, close[:1], "accuracy")
    assert one["final_ratio"] == pytest.approx(0.1) and one["final_spread"] == pytest.approx(0.1)


def test_reference_verdict_reads_the_spread_interval():
    def judged(*ratios, seeds=3):
        settings = {f"s{i}": {"seeds": list(range(seeds))} for i in range(len(ratios))}
        return ref.verdict({"settings": settings, "ratios": {f"s{i}": r for i, r in enumerate(ratios)}})

    low, high = spread_factors(3)
    assert 0.1 < low < 0.2 and 1.8 < high < 2.0  # s / sigma for three normal seeds: sqrt(chi2(2) / 2)'s 95% range
    v = judged(1e-5, 0.0)
    assert v["verdict"] == HOLDS and v["intervals"]["s0"] == pytest.approx([1e-5 * low, 1e-5 * high]) and v["intervals"]["s1"] == [0, 0]
    assert judged(1.0 / high - 0.01)["verdict"] == HOLDS  # the interval's top just under the holds line
    assert judged(0.8)["verdict"] == inconclusive(PARTLY, HOLDS)  # 0.8 of a spread from three seeds: either side of 1
    assert judged(1.6)["verdict"] == inconclusive(FAILS, HOLDS)  # [0.26, 3.05]: across both lines
    assert judged(7.0)["verdict"] == inconclusive(FAILS, PARTLY)  # [1.1, 13.4]
    assert judged(40.0)["verdict"] == FAILS and judged(float("inf"))["verdict"] == FAILS  # a difference where seeds agree
    assert judged(0.5, seeds=1)["verdict"] == ONE_RUN
    assert judged(0.8, seeds=8)["verdict"] == inconclusive(PARTLY, HOLDS)  # more seeds, a narrower interval
    assert judged(0.3, seeds=8)["verdict"] == HOLDS


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
    spectra = ir.update_spectra(TOY.projections(state), TOY.projections(tuned))
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


def _accuracy(cls_gap, code_share=None, seeds=5, n=1000):
    """Claim 4's verdict on synthetic per-row figures: every seed of an arm scores the same rows alike, so the
    interval comes from the rows alone (about +-2 binomial standard errors of ``n`` rows around the gap)."""
    wrong = int(round(abs(cls_gap) * n))
    full, lora = np.ones(n), np.ones(n)
    (lora if cls_gap >= 0 else full)[:wrong] = 0.0
    figures = {"cls_gap": cls_gap, "judged": {"cls": "Wq+Wv r=8"},
               "rows": {"cls": {"full": [full.tolist()] * seeds, "lora": [lora.tolist()] * seeds, "untuned": None}}}
    if code_share is not None:
        untuned = 3.0 + np.random.default_rng(0).random(n)  # LoRA gains code_share of full fine-tuning's 1 nat on every row
        figures["code_share"] = code_share
        figures["rows"]["code"] = {"full": [(untuned - 1.0).tolist()] * seeds,
                                   "lora": [(untuned - code_share).tolist()] * seeds, "untuned": untuned.tolist()}
    return accuracy.verdict(figures)


def test_accuracy_verdict_reads_the_interval():
    assert _accuracy(0.01, 0.95)["verdict"] == HOLDS
    assert _accuracy(0.06, 0.95)["verdict"] == PARTLY  # 6 points below, +-1.5: clear of both lines
    assert _accuracy(0.01, accuracy.CODE_SHARE_HOLDS - 0.01)["verdict"] == PARTLY
    assert _accuracy(0.30, accuracy.CODE_SHARE_PARTLY - 0.01)["verdict"] == FAILS
    assert _accuracy(-0.05, 1.2)["verdict"] == HOLDS  # LoRA better than full fine-tuning never counts against it
    assert _accuracy(0.01)["parts"] == {"classification": HOLDS}  # a base with no code task (MiniLM)
    # on the line: 3 points below full fine-tuning on 1,000 rows is +-1 point, either side of the 3-point line
    straddling = _accuracy(accuracy.CLS_GAP_HOLDS)
    assert straddling["verdict"] == "partly or holds — inconclusive"
    low, high = straddling["intervals"]["cls_gap"]
    assert low < accuracy.CLS_GAP_HOLDS < high and high - low < 0.03
    assert _accuracy(0.01, seeds=1)["verdict"] == ONE_RUN  # one seed: no interval


def test_accuracy_verdict_needs_the_rows():
    figures = {"cls_gap": 0.01, "judged": {"cls": "Wq+Wv r=8"}}  # a results file from before per-row figures
    with pytest.raises(ValueError, match=r"claim 4 \(accuracy\).*per-row"):
        accuracy.verdict(figures)
    figures["rows"] = {"cls": {"full": [[1.0, 0.0]] * 3, "lora": [None] * 3, "untuned": None}}
    with pytest.raises(ValueError, match="claim 4: classification: the per-row test figures"):
        accuracy.verdict(figures)


def test_judged_settings_train_the_grid_s_more_seeds_and_the_others_do_not():
    from minilora.experiments.bases import minilm

    for base, full in ((TOY, ft.FULL), (minilm.BASE, minilm.FULL)):
        assert len(full.judged_seeds) == 5 and full.judged_seeds[:len(full.seeds)] == full.seeds  # issue #21: 5 seeds
        added = accuracy.judged_specs(base, full)
        assert {s.seed for s in added} == set(full.more_seeds)
        for task, _ in full.tasks:  # each task's baseline methods and its judged LoRA setting, nothing else
            assert {(s.method, s.target, s.r) for s in added if s.task == task and s.seed == full.more_seeds[0]} == {
                *((m, None, 0) for m in base.BASELINE_METHODS), ("lora", accuracy.judged_target(base, task), accuracy.JUDGED_RANK)}
            judged_name = accuracy.judged_settings(base)[task]
            assert judged_name in {f"{t} r={r}" for t, ranks in full.task(task).targets for r in ranks}  # the grid's own setting
    assert ft.QUICK.judged_seeds == ft.QUICK.seeds and accuracy.judged_specs(TOY, ft.QUICK) == []
    text = accuracy.seeds_text({"seeds": [0, 1, 2], "judged_seeds": [0, 1, 2, 3, 4]})
    assert text.startswith("seeds [0, 1, 2]; the judged settings") and "[3, 4], 5 in all" in text


def test_headline_figures():
    judged = {"cls": "Wq+Wv r=8", "code": "all r=8"}
    summary = {"cls": {"full": {"accuracy_mean": 0.8}, "Wq+Wv r=8": {"accuracy_mean": 0.75}},
               "code": {"full": {"loss_mean": 1.0}, "all r=8": {"loss_mean": 1.5}}}
    head = accuracy.headline(summary, {"code": {"loss": 2.0}}, judged)
    assert head["cls_gap"] == pytest.approx(0.05) and head["code_share"] == pytest.approx(0.5)
    summary["code"]["full"]["loss_mean"] = 1.999  # full fine-tuning barely moved; LoRA did better: all of it
    assert accuracy.headline(summary, {"code": {"loss": 2.0}}, judged)["code_share"] == math.inf
    assert _accuracy(0.0, math.inf)["parts"]["domain shift"] == HOLDS  # no interval on an infinite share: the point
    summary["code"]["all r=8"]["loss_mean"] = 2.1  # ... and LoRA did worse: nothing measurable
    assert math.isnan(accuracy.headline(summary, {"code": {"loss": 2.0}}, judged)["code_share"])
    # a LoRA setting whose every run failed has no mean: the report says so rather than "nan"
    summary["cls"]["Wq+Wv r=8"]["accuracy_mean"] = math.nan
    assert accuracy._gap_points(accuracy.headline(summary, {"code": {"loss": 2.0}}, judged)["cls_gap"]).startswith("not measurable")
    assert accuracy._gap_points(0.118) == "11.8 points"


def rank_figures(shares: list, phis: list) -> dict:
    """Claim 6's figures from per-matrix values: each matrix's top-8 energy share (one task), each adapted matrix's φ(1,1)."""
    return {"mean_share": {"cls": float(np.mean(shares))}, "mean_phi_1_1": float(np.mean(phis)),
            "spectra": {"cls": {f"h.{i}.Wq": {"share": {"8": v}} for i, v in enumerate(shares)}},
            "phi": {**{f"h.{i}.Wq": {"phi_1_1": v} for i, v in enumerate(phis)}, "random": {"phi_1_1": 0.008}}}


def test_rank_is_judged_on_intervals_over_the_matrices():
    def rank(shares, phis):
        return ir.verdict(rank_figures(shares, phis))

    tight = rank([0.70, 0.72, 0.68, 0.71], [0.60, 0.62, 0.58, 0.61])  # every matrix well above the holds lines
    assert tight["verdict"] == HOLDS and tight["intervals"]["share"][0] > ir.SHARE_HOLDS
    assert rank([0.40, 0.42, 0.38, 0.41], [0.60, 0.62, 0.58, 0.61])["parts"]["energy in top 8"] == PARTLY
    assert rank([0.10, 0.12, 0.08, 0.11], [0.01, 0.02, 0.01, 0.03])["verdict"] == FAILS
    # one matrix at 0.574 lifts a mean of seven near 0.05 past 0.10: the interval over the matrices straddles it
    lifted = rank([0.7] * 8, [0.05, 0.04, 0.06, 0.05, 0.03, 0.07, 0.05, 0.574])
    low, high = lifted["intervals"]["phi"]
    assert low < ir.PHI_PARTLY < np.mean([0.05, 0.04, 0.06, 0.05, 0.03, 0.07, 0.05, 0.574]) < high
    assert lifted["parts"]["phi(1,1) of r=8 vs r=64"] == f"{FAILS} or {PARTLY} — inconclusive"
    assert ir.verdict({"diverged": True})["verdict"] == FAILS
    with pytest.raises(ValueError, match=r"claim 6 \(rank\).*per-matrix"):
        ir.verdict({"mean_share": {"cls": 0.7}, "mean_phi_1_1": 0.6})


def modularity_scores(kept: float, seeds: int = 3, rows: int = 300) -> list:
    """Each seed's combination scores on synthetic rows: the base right on a third of the classification rows, each
    adapter alone on two thirds (its gain), the combination on ``kept`` of that gain (+ a row a seed); code losses
    alike (base 2.0, the adapter 1.5, the combination keeping ``kept`` of the 0.5)."""
    base = (np.arange(rows) % 3 == 0).astype(float)
    alone = (np.arange(rows) % 3 != 2).astype(float)
    out = []
    for seed in range(seeds):
        both = base.copy()
        both[np.flatnonzero(alone - base)[: int(kept * rows / 3) + seed]] = 1.0
        wave = 0.1 * np.sin(np.arange(rows) + seed)  # rows differ, the same for every arm of a seed
        losses = {"base": 2.0 + wave, "cls": 2.0 + wave, "code": 1.5 + wave, "both": 2.0 - 0.5 * kept + wave}
        accuracy = {"base": base, "cls": alone, "code": base, "both": both}
        out.append({name: {"cls": {"accuracy": float(accuracy[name].mean()), "loss": 1.0, "rows": {"accuracy": accuracy[name].tolist()}},
                           "code": {"loss": float(losses[name].mean()), "accuracy": 0.5, "rows": {"loss": losses[name].tolist()}}}
                    for name in ("base", "cls", "code", "both")})
    return out


def modularity_figures(kept: float = 0.9, seeds: int = 3, **changes) -> dict:
    per_seed = modularity_scores(kept, seeds)
    return {"storage_ratio": 0.02, "swap_speedup": 100.0, "mixed_batch": {"max_abs_diff": 1e-6},
            "rounds": {"full_checkpoint_load": [1e-2, 1.1e-2, 0.9e-2, 1e-2], "set_adapter": [1e-4, 1e-4, 1.1e-4, 0.9e-4]},
            "combination": per_seed[0], "combination_seeds": {"seeds": list(range(seeds)), "scores": per_seed[1:]},
            "retained": mod.retained(mod.mean_scores(per_seed)), **changes}


def test_modularity_is_judged_on_exact_figures_and_intervals():
    good = mod.verdict(modularity_figures(0.95))
    assert good["verdict"] == HOLDS and good["intervals"]["storage"] == "exact"
    low, high = good["intervals"]["combination"]
    assert mod.RETAINED_HOLDS < low <= good["worst_retained"] <= high and good["intervals"]["swap"][0] > mod.SPEEDUP_HOLDS
    assert mod.verdict(modularity_figures(0.65))["parts"]["combination"] == PARTLY
    straddle = mod.verdict(modularity_figures(0.8))  # the share sits on the holds line: its interval crosses it
    assert straddle["parts"]["combination"] == f"{PARTLY} or {HOLDS} — inconclusive"
    assert mod.verdict(modularity_figures(0.95, seeds=1))["parts"]["combination"] == ONE_RUN
    assert mod.verdict(modularity_figures(mixed_batch={"max_abs_diff": 1e-2}))["parts"]["mixed batch"] == FAILS
    bad = modularity_figures(0.1, storage_ratio=0.9, rounds={"full_checkpoint_load": [1.0, 1.1], "set_adapter": [1.0, 1.0]},
                             mixed_batch={"max_abs_diff": 1.0})
    assert mod.verdict(bad)["verdict"] == FAILS
    old = modularity_figures()
    del old["combination_seeds"]
    with pytest.raises(ValueError, match=r"claim 8 \(modularity\)"):
        mod.verdict(old)
    for scores in old["combination"].values():
        scores["cls"].pop("rows")
    with pytest.raises(ValueError, match=r"claim 8 \(modularity\).*per-row"):
        mod.verdict({**old, "combination_seeds": {"seeds": [0, 1], "scores": [old["combination"]]}})

def test_modularity_tells_a_share_below_the_base_as_the_multiple_it_loses():
    """A combination that ends worse than the base model: its share (e.g. -9.1, "-910%") is told as the
    multiple of the adapter's gain it loses, with the interval turned round; any other share stays a percentage."""
    assert mod._kept(-9.1, [-11.72, -6.71], "its gain") == (
        "none of its gain: it ends worse than the base model, by 9.1x that gain (95% interval [6.7, 11.7]x)")
    assert mod._kept(0.77, [0.6, 0.9], "its gain") == "77% (95% interval [60, 90]%) of its gain"
    assert mod._kept(-0.1, [-0.5, 0.2], "its gain").startswith("none (worse than the base model) (95% interval [-50, 20]%)")
    assert mod._kept(float("nan"), None, "its gain").startswith("(not measurable")



def test_retained_share():
    scores = {"base": {"cls": {"accuracy": 0.2}, "code": {"loss": 2.0}},
              "cls": {"cls": {"accuracy": 0.6}, "code": {"loss": 2.1}},
              "code": {"cls": {"accuracy": 0.2}, "code": {"loss": 1.5}},
              "both": {"cls": {"accuracy": 0.5}, "code": {"loss": 1.6}}}
    keep = mod.retained(scores)
    assert keep["cls"] == pytest.approx(0.75) and keep["code"] == pytest.approx(0.8)
    routed = mod.retained({**scores, "routed_top1": {"cls": {"accuracy": 0.6}, "code": {"loss": 2.0}}}, "routed_top1")
    assert routed["cls"] == pytest.approx(1.0) and routed["code"] == pytest.approx(0.0)


def sensitivity_figures(lost: dict, seeds: int = 3, comparisons: int = 1) -> dict:
    """Claim 9's judged figures from synthetic per-row accuracies: 300 test rows, the same ones right for every
    setting except ``lost[setting]`` (+ the seed) of them; rank judged between "r=1" and "r=8", target sets alike."""
    right = np.random.default_rng(0).random(300) < 0.9

    rows = {name: runs_missing_rows(right, k, seeds, seed_base=10) for name, k in lost.items()}
    mean = {name: float(np.mean(r)) for name, r in rows.items()}
    judged = {part: {"best": best, "worst": worst, "difference": mean[best] - mean[worst], "comparisons": comparisons}
              for part, (best, worst) in {"rank": ("r=8", "r=1"), "target matrices": ("Wq+Wv", "Wq")}.items()}
    return {"judged": judged, "rows": rows}


def test_sensitivity_is_judged_on_the_interval_of_best_minus_worst():
    def verdict(rank_lost, target_lost, **kw):  # rows lost by the worst setting of each part (the best loses none)
        return sens.verdict(sensitivity_figures({"r=8": 0, "r=1": rank_lost, "Wq+Wv": 0, "Wq": target_lost}, **kw))

    clear = verdict(30, 30)  # 10 points apart, the interval well above 2
    assert clear["verdict"] == HOLDS and clear["intervals"]["rank"][0] > sens.RANGE_HOLDS
    assert verdict(30, 1)["parts"] == {"rank": HOLDS, "target matrices": FAILS}  # 0.3 points: below 2 on all its interval
    straddle = verdict(9, 30)  # 3 points, the interval across 2
    low, high = straddle["intervals"]["rank"]
    assert low < sens.RANGE_HOLDS < high and straddle["parts"]["rank"] == f"{FAILS} or {HOLDS} — inconclusive"
    # the pick among many pairs widens the interval (Bonferroni): 15 pairs, wider than one
    wide = verdict(30, 30, comparisons=15)["intervals"]["rank"]
    assert wide[0] < clear["intervals"]["rank"][0] and wide[1] > clear["intervals"]["rank"][1]
    assert verdict(30, 30, seeds=1)["verdict"] == ONE_RUN  # one seed: no interval
    figures = sensitivity_figures({"r=8": 0, "r=1": 30, "Wq+Wv": 0, "Wq": 30})
    del figures["rows"]
    with pytest.raises(ValueError, match=r"claim 9 \(sensitivity\).*per-row"):
        sens.verdict(figures)


def test_spread_against_noise():
    rows = {"a": {"accuracy_mean": 0.5, "accuracy_std": 0.02}, "b": {"accuracy_mean": 0.6, "accuracy_std": 0.02}}
    s = sens.spread(rows, ["a", "b", "missing"], "accuracy")
    assert s["range"] == pytest.approx(0.1) and s["ratio"] == pytest.approx(5.0) and s["best"] == "b"


# ---------------------------------------------------------------------------
# every claim, end to end, on a tiny model
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_claims_run_end_to_end(cls_task, corpus, tmp_path, quick, monkeypatch):
    monkeypatch.delenv("MINILORA_RUN_CACHE", raising=False)  # every run trained here, none read back
    toy = tiny_toy()
    session = session_for(quick, cls_task, corpus, {"toy": toy_env(cls_task, corpus, tiny_base())})
    with registered(toy):
        for key in ("accuracy", "reference", "rank", "modularity", "sensitivity"):
            entry, section = claim_entry(key, session, tmp_path)
            verdict_range(entry["verdict"])  # a verdict, decided or inconclusive
            assert list(entry["bases"]) == ["toy"]
            assert section["body"] and ("Quick-mode" in section["body"]) == quick
            for plot in section["plots"]:
                assert (tmp_path / plot).stat().st_size > 1000
            runs = entry["provenance"]["runs"]
            assert runs["trained"] and not runs["from_cache"]
            if key == "rank":  # the seed-against-seed reference needs a second seed whose r = 64 run did not fail
                figures, body = entry["bases"]["toy"]["figures"], section["body"]
                assert set(figures["table7"]) == {"8", "64"} and (figures["seed_phi"] is None or not quick)
                assert ("has one seed" in body) == quick and ("no other seed's" in body) == (figures["seed_phi"] is None and not quick)
            if key == "modularity":  # Arrow routing beside each adapter alone and their average merge
                routing = entry["bases"]["toy"]["figures"]["routing"]
                assert set(routing["figures"]) == {"base", "cls", "code", *mod.ROUTED} and set(routing["retained"]) == set(mod.ROUTED)
                assert "Routing by context" in section["body"] and "Arrow, top-2" in section["body"]
    # claim 4's grid was trained once, at the chosen rates; the later claims reused it and added only
    # their own runs, and (full mode) the learning-rate selection's runs at the other rates
    trained = {key[2] for key in session.memo if key[0] == "run"}
    grid = set(resolved(session, toy, toy.grid(quick).specs()))
    assert grid <= trained
    own = set(resolved(session, toy, sens.extra_specs(toy, quick)))
    if quick:
        own |= set(resolved(session, toy, [s for _, specs in ref.reference_specs(toy, True) for s in specs])) - grid
        assert session.memo[("rates", "toy", "cls", None)][0]["full"] == ft.LR["cls"]["full"]  # quick mode: the defaults
    else:
        tables = {task: session.memo[("rates", "toy", task, None)][1] for task in ("cls", "code")}
        selection = {s.replace(lr=lr) for task in tables for name, s in tuned(session, toy, task).items()
                     for lr in tables[task][name][1]}
        own |= selection - grid
        assert set(tables["cls"]) == {"full", "Wq+Wv r=8", "Wq+Wv r=64"}
        for task in tables:  # each chosen rate is one tried: its grid's, or one of at most two beyond an edge
            for name, (rate, rows) in tables[task].items():
                grid_rates = set(toy.rate_grids[task]["full" if name == "full" else "lora"])
                assert rate in rows and grid_rates <= set(rows) and len(rows) <= len(grid_rates) + tuning.EXTEND_STEPS
    assert trained - grid == own
