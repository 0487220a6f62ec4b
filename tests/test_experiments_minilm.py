"""The real base's experiments (``minilm``, ``minilm_claims``) on a tiny random BERT.

The BERT is minilora's own, 2 layers of width 16, with the real WordPiece vocabulary
(the installed all-MiniLM-L6-v2's tokenizer, so the task's rows are tokenized as in the
full run). Checked here:

* a run trains what its method says (LoRA: adapters + classifier + pooler; the probe:
  classifier + pooler; full: everything), is deterministic by seed, and batches are padded
  to their longest row;
* the PyTorch + transformers + PEFT reference reproduces minilora's run step by step in
  float64 (full fine-tuning and LoRA with the SEQ_CLS heads);
* the learning-rate selection picks among its grid, the probe first;
* the trainable counts equal the closed form, minilora's and PEFT's; the analytic memory
  count agrees with tracemalloc; the FLOP count's LoRA/full ratio;
* every section runs end to end and the claims put both bases side by side.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import minilora
from minilora.experiments import finetune as ft
from minilora.experiments import minilm as M
from minilora.experiments import minilm_claims as C
from minilora.experiments import tuning
from minilora.experiments.common import FAILS, HOLDS, PARTLY, BaseResult, ClaimResult, Context, over_bases
from minilora.models import BertConfig, BertForSequenceClassification

pytest.importorskip("tokenizers")
TINY = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=64)


@pytest.fixture(scope="module")
def cls_task():
    return ft.docstring_package_task(max_prompt_bytes=ft.CLS_PROMPT_BYTES, per_class=20, block_size=64)


@pytest.fixture(scope="module")
def tokenizer():
    from minilora.models.minilm import BertTokenizer, minilm_folder

    return BertTokenizer(minilm_folder() / "tokenizer.json")


def tiny_env(cls_task, tokenizer, dtype=np.float32) -> M.Environment:
    minilora.manual_seed(0)
    model = BertForSequenceClassification(TINY, cls_task.n_classes, dtype=dtype)
    return M.environment_of(model, tokenizer, cls_task, {"test": True})


def spec(**kw) -> M.RunSpec:
    return M.RunSpec(**{**dict(method="lora", target="qv", r=2, steps=3, batch_size=4, warmup_steps=1, lr=1e-2), **kw})


# ---------------------------------------------------------------------------
# the runs
# ---------------------------------------------------------------------------


def test_each_method_trains_what_it_says(cls_task, tokenizer):
    env = tiny_env(cls_task, tokenizer)
    data = M.Classification(cls_task, tokenizer, 4)
    H, K, L = TINY.hidden_size, cls_task.n_classes, TINY.num_hidden_layers
    heads = H * H + H + H * K + K  # pooler, classifier
    lora = M.finetune(spec(), env, data)
    assert lora.trainable == L * 2 * 2 * (2 * H) + heads == C.lora_count(TINY, 2, "qv") + C.head_parameters(TINY, K)
    assert {"base_model.model.bert.pooler.dense.weight", "base_model.model.classifier.weight"} <= set(lora.state)  # PEFT's keys
    probe = M.finetune(spec(method="probe", target=None, r=0), env, data)
    assert probe.trainable == heads and set(probe.state) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                                            "classifier.weight", "classifier.bias"}
    full = M.finetune(spec(method="full", target=None, r=0), env, data)
    assert full.trainable == TINY.num_parameters() + H * K + K and "bert.encoder.layer.0.attention.self.query.weight" in full.state
    assert set(full.final) == {"loss", "accuracy"} and set(full.val) == {"loss", "accuracy"}
    # deterministic by seed; the seed changes the classifier, the adapter and the batches
    again, other = M.finetune(spec(), env, data), M.finetune(spec(seed=1), env, data)
    assert again.losses == lora.losses and other.losses != lora.losses
    # the pretrained weights are untouched by the runs
    assert np.array_equal(env.state["bert.encoder.layer.0.attention.self.query.weight"],
                          tiny_env(cls_task, tokenizer).state["bert.encoder.layer.0.attention.self.query.weight"])


def test_batches_are_padded_to_their_longest_row(cls_task, tokenizer):
    data = M.Classification(cls_task, tokenizer, 8)
    inputs, labels = data.batches(np.random.default_rng(0))
    lengths = inputs["attention_mask"].sum(axis=1)
    assert inputs["input_ids"].shape == (8, lengths.max()) and labels.shape == (8,)
    assert np.all(inputs["input_ids"][inputs["attention_mask"] == 0] == tokenizer.pad_token_id)
    assert np.all(inputs["input_ids"][:, 0] == tokenizer.cls_token_id)
    assert data.lengths("test").max() <= 64


def test_runspec_refuses_bad_settings():
    with pytest.raises(ValueError, match="method"):
        M.RunSpec("adapters")
    with pytest.raises(ValueError, match="target"):
        M.RunSpec("lora", "mlp", 8)
    with pytest.raises(ValueError, match="learning rate"):
        M.RunSpec("full").train_config()


def test_rates_of_untuned_ranks_come_from_the_nearest_tuned_one():
    rates = {"probe": 1.0, "full": 2.0, "qv r=8": 3.0, "qv r=64": 4.0, "attn r=8": 5.0, "attn r=64": 6.0}
    assert [M.rate_for(rates, M.RunSpec("lora", "qv", r)) for r in (1, 4, 8, 64)] == [3.0, 3.0, 3.0, 4.0]
    assert M.rate_for(rates, M.RunSpec("lora", "attn", 64)) == 6.0 and M.rate_for(rates, M.RunSpec("probe")) == 1.0


# ---------------------------------------------------------------------------
# the PyTorch reference: the same run, step by step
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["full", "lora"])
def test_reference_matches_minilora_float64(cls_task, tokenizer, method):
    pytest.importorskip("peft")
    env = tiny_env(cls_task, tokenizer, np.float64)
    data = M.Classification(cls_task, tokenizer, 4, with_val=False)
    s = spec(method=method, target="qv" if method == "lora" else None, r=2 if method == "lora" else 0, steps=4, lr=3e-2)
    ours, theirs = M.finetune(s, env, data), C.torch_finetune(s, env, data)
    assert np.max(np.abs(np.array(ours.losses) - theirs["losses"]) / np.abs(theirs["losses"])) < 1e-9
    assert ours.final["loss"] == pytest.approx(theirs["final"]["loss"], rel=1e-9)
    assert ours.losses[-1] != ours.losses[0]


# ---------------------------------------------------------------------------
# claims 1-3 at a BERT's size, small here
# ---------------------------------------------------------------------------


SMALL = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                   max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def test_counts_equal_minilora_and_peft():
    pytest.importorskip("peft")
    rows = C.count_rows(SMALL, 6, (1, 8), tuple(C.COUNT_TARGETS), peft=True)
    assert len(rows) == 6 and all(row["match"] for row in rows), rows
    row = next(r for r in rows if r["target"] == "all" and r["r"] == 8)
    H, I = SMALL.hidden_size, SMALL.intermediate_size
    assert row["adapters"] == 2 * 8 * (4 * 2 * H + 2 * (H + I))


@pytest.mark.parametrize("method, batch, T", [("full", 2, 32), ("full", 8, 64), ("lora", 8, 64)])  # LoRA at 2 x 32: Python objects are 5%
def test_analytic_memory_agrees_with_tracemalloc(method, batch, T):
    from minilora.experiments.memory import AGREEMENT, traced_step

    def make():
        model, trained = C.bert_classifier(SMALL, 6, method)
        inputs, labels = C.random_inputs(SMALL, batch, T, 6)
        return model, trained, lambda: model(**inputs, labels=labels)[1]

    measured = traced_step(make)
    analytic = C.bert_analytic_step_memory(SMALL, 6, batch, T, method)
    assert measured["weights"] == analytic["weights"] and measured["optimizer"] == analytic["optimizer"]
    assert abs(measured["peak"] / analytic["peak"] - 1) < AGREEMENT, (measured, analytic)


def test_step_flops():
    full, lora = (C.bert_step_flops(SMALL, 4, 32, m) for m in ("full", "lora"))
    assert lora["forward"] > full["forward"] and 0.5 < lora["total"] / full["total"] < 0.75
    assert C.bert_step_flops(SMALL, 8, 32, "full")["total"] == 2 * full["total"]  # linear in the batch


# ---------------------------------------------------------------------------
# the report: both bases side by side
# ---------------------------------------------------------------------------


def test_over_bases_keeps_both_verdicts():
    toy = ClaimResult("accuracy", "t", "c", "m", "toy figure", PARTLY, figures={"x": 1}, body="toy body")
    real = BaseResult(HOLDS, "real figure", "real body", {"y": 2})
    both = over_bases("accuracy", "t", "c", "m", toy, real, "they differ")
    assert both.verdict == PARTLY and both.bases == {"toy": PARTLY, "minilm": HOLDS}
    assert both.figures == {"x": 1, "minilm": {"y": 2}} and "toy body" in both.body and "they differ" in both.body
    assert over_bases("accuracy", "t", "c", "m", None, real).verdict == HOLDS
    assert over_bases("accuracy", "t", "c", "m", toy, None) is toy
    from minilora.report import render_table

    assert "**partly** (toy: partly; MiniLM: holds)" in render_table([both])
    assert FAILS not in render_table([toy])


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_sections_run_end_to_end(cls_task, tokenizer, tmp_path, monkeypatch, quick):
    tiny = M.Sizes(steps=2, batch_size=4, seeds=(0,) if quick else (0, 1), qv_ranks=(8, 64), attn_ranks=() if quick else (8,))
    monkeypatch.setattr(M, "QUICK" if quick else "FULL", tiny)
    monkeypatch.setattr(C, "COST_SIZE", {quick: (2, 16)})
    monkeypatch.setattr(C, "COUNT_RANKS", (1, 8))
    monkeypatch.setattr(M, "RATE_GRID", {"probe": (1e-3, 1e-2), "full": (1e-4, 1e-3), "lora": (1e-3, 1e-2)})
    ctx = Context(out=str(tmp_path), quick=quick, progress=False, bases=("minilm",))
    ctx.shared["minilm_env"] = tiny_env(cls_task, tokenizer)
    sections = [C.accuracy, C.rank, C.params, C.memory, C.time] + ([] if quick else [C.reference])
    for section in sections:
        result = section(ctx)
        assert result.verdict in (HOLDS, PARTLY, FAILS) and result.body
        assert ("Quick-mode" in result.body) == (quick and section in (C.accuracy, C.rank, C.memory, C.time))
        for plot in result.plots:
            assert (tmp_path / plot).stat().st_size > 1000
    if not quick:  # the selection trained the probe, full fine-tuning and LoRA at r = 8, 64 on qv and attn, each rate
        table = ctx.shared["minilm_lr_selection"]
        assert list(table) == ["probe", "full", "qv r=8", "qv r=64", "attn r=8", "attn r=64"]
        for name, (rate, rows) in table.items():
            assert rate in rows and set(rows) == set(M.RATE_GRID["lora" if " r=" in name else name])
    trained = set(ctx.shared["minilm_runs"])
    assert set(M.resolved(ctx, M.grid(quick))) <= trained


def test_accuracy_comparison_says_which_way_the_bases_differ():
    from types import SimpleNamespace

    toy = SimpleNamespace(verdict=PARTLY, figures={
        "summary": {"cls": {"Wq+Wv r=8": {"accuracy_mean": 0.42}, "full": {"accuracy_mean": 0.54}}},
        "base": {"cls": {"accuracy": 0.19}}, "parts": {"classification": FAILS}, "cls_gap": 0.12})
    real = SimpleNamespace(verdict=HOLDS, figures={
        "summary": {"cls": {"qv r=8": {"accuracy_mean": 0.76}, "full": {"accuracy_mean": 0.77}, "probe": {"accuracy_mean": 0.71}}},
        "gap": 0.01, "chance": 1 / 6})
    assert "The verdicts differ" in C.accuracy_comparison(toy, real) and "comes closer" in C.accuracy_comparison(toy, real)
    real.figures["gap"], real.verdict = 0.25, FAILS
    assert "further short" in C.accuracy_comparison(toy, real)
    toy.figures["cls_gap"] = float("nan")
    assert "cannot be compared" in C.accuracy_comparison(toy, real)
