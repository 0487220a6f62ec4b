"""The real base (``bases/minilm.py``) and the claims measured on it, on a tiny random BERT.

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
* every claim measured on it runs end to end, and the report puts both bases side by side.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import minilora
from experiment_helpers import claim_entry, registered, session_for
from minilora.experiments.bases import gpt
from minilora.experiments.bases import minilm as M
from minilora.experiments.claims import accuracy
from minilora.experiments.core import FAILS, HOLDS, PARTLY, Session, traced_step, verdict_range
from minilora.experiments.runs import Grid, RunSpec, TaskGrid, rates, resolved
from minilora.models import BertConfig, BertForSequenceClassification

pytest.importorskip("tokenizers")
TINY = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=64)


@pytest.fixture(scope="module")
def cls_task():
    from minilora.tasks import docstring_package_task

    return docstring_package_task(max_prompt_bytes=gpt.CLS_PROMPT_BYTES, per_class=20, block_size=64)


@pytest.fixture(scope="module")
def tokenizer():
    from minilora.models.minilm import BertTokenizer, minilm_folder

    return BertTokenizer(minilm_folder() / "tokenizer.json")


def tiny_env(cls_task, tokenizer, dtype=np.float32) -> M.Environment:
    minilora.manual_seed(0)
    model = BertForSequenceClassification(TINY, cls_task.n_classes, dtype=dtype)
    return M.environment_of(model, tokenizer, cls_task, {"test": True})


def spec(**kw) -> RunSpec:
    return RunSpec(**{**dict(task="cls", method="lora", target="qv", r=2, steps=3, batch_size=4, warmup_steps=1, lr=1e-2), **kw})


# ---------------------------------------------------------------------------
# the runs
# ---------------------------------------------------------------------------


def test_each_method_trains_what_it_says(cls_task, tokenizer):
    env = tiny_env(cls_task, tokenizer)
    data = M.Classification(cls_task, tokenizer, 4)
    H, K, L = TINY.hidden_size, cls_task.n_classes, TINY.num_hidden_layers
    heads = H * H + H + H * K + K  # pooler, classifier
    lora = M.finetune(spec(), env, data)
    assert lora.trainable == L * 2 * 2 * (2 * H) + heads == M.lora_count(TINY, 2, "qv") + M.head_parameters(TINY, K)
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


def test_the_base_refuses_runs_it_cannot_train():
    with pytest.raises(ValueError, match="method"):
        M.BASE.check(RunSpec("cls", "adapters"))
    with pytest.raises(ValueError, match="target"):
        M.BASE.check(RunSpec("cls", "lora", "mlp", 8))
    with pytest.raises(ValueError, match="task"):
        M.BASE.check(RunSpec("code", "full"))
    with pytest.raises(ValueError, match="learning rate"):
        M.train_config(RunSpec("cls", "full"))


def test_rates_of_untuned_ranks_come_from_the_nearest_tuned_one():
    session = Session(quick=False)
    rates = {"probe": 1.0, "full": 2.0, "qv r=8": 3.0, "qv r=64": 4.0, "attn r=8": 5.0, "attn r=64": 6.0}
    session.memo[("rates", "minilm", "cls", None)] = (rates, {})

    def rate_for(s):
        return resolved(session, M.BASE, [s])[0].lr

    assert [rate_for(RunSpec("cls", "lora", "qv", r)) for r in (1, 4, 8, 64)] == [3.0, 3.0, 3.0, 4.0]
    assert rate_for(RunSpec("cls", "lora", "attn", 64)) == 6.0 and rate_for(RunSpec("cls", "probe")) == 1.0


# ---------------------------------------------------------------------------
# the PyTorch reference: the same run, step by step
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["full", "lora"])
def test_reference_matches_minilora_float64(cls_task, tokenizer, method):
    pytest.importorskip("peft")
    env = tiny_env(cls_task, tokenizer, np.float64)
    data = M.Classification(cls_task, tokenizer, 4)
    s = spec(method=method, target="qv" if method == "lora" else None, r=2 if method == "lora" else 0, steps=4, lr=3e-2)
    ours, theirs = M.finetune(s, env, data), M.torch_finetune(s, env, data)
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
    rows = M.count_rows(SMALL, 6, (1, 8), tuple(M.COUNT_TARGETS), peft=True)
    assert len(rows) == 6 and all(row["match"] for row in rows), rows
    row = next(r for r in rows if r["target"] == "all" and r["r"] == 8)
    H, I = SMALL.hidden_size, SMALL.intermediate_size
    assert row["adapters"] == 2 * 8 * (4 * 2 * H + 2 * (H + I))


@pytest.mark.parametrize("method, batch, T", [("full", 2, 32), ("full", 8, 64), ("lora", 8, 64)])  # LoRA at 2 x 32: Python objects are 5%
def test_analytic_memory_agrees_with_tracemalloc(method, batch, T):
    from minilora.experiments.claims.memory import AGREEMENT

    def make():
        model, trained = M.bert_classifier(SMALL, 6, method)
        inputs, labels = M.random_inputs(SMALL, batch, T, 6)
        return model, trained, lambda: model(**inputs, labels=labels)[1]

    measured = traced_step(make)
    analytic = M.bert_analytic_step_memory(SMALL, 6, batch, T, method)
    assert measured["weights"] == analytic["weights"] and measured["optimizer"] == analytic["optimizer"]
    assert abs(measured["peak"] / analytic["peak"] - 1) < AGREEMENT, (measured, analytic)


def test_step_flops():
    full, lora = (M.bert_step_flops(SMALL, 4, 32, m) for m in ("full", "lora"))
    assert lora["forward"] > full["forward"] and 0.5 < lora["total"] / full["total"] < 0.75
    assert M.bert_step_flops(SMALL, 8, 32, "full")["total"] == 2 * full["total"]  # linear in the batch


# ---------------------------------------------------------------------------
# the report: both bases side by side
# ---------------------------------------------------------------------------


def tiny_minilm(quick: bool):
    base = copy.copy(M.BASE)
    grid = Grid(seeds=(0,) if quick else (0, 1), batch_size=4, tasks=(
        ("cls", TaskGrid(2, (("qv", (8, 64)), ("attn", () if quick else (8,))), methods=("probe", "full"))),))
    base.grids = {quick: grid}
    base.rate_grids = {"probe": (1e-3, 1e-2), "full": (1e-4, 1e-3), "lora": (1e-3, 1e-2)}
    base.cost_size = {quick: (2, 16)}
    return base


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_claims_run_end_to_end(cls_task, tokenizer, tmp_path, monkeypatch, quick):
    from minilora.experiments.claims import params

    monkeypatch.setattr(params, "COUNT_RANKS", {quick: (1, 8)})
    base = tiny_minilm(quick)
    session = session_for(quick, cls_task, None, {"minilm": tiny_env(cls_task, tokenizer)}, bases_chosen=("minilm",))
    keys = ["accuracy", "rank", "params", "memory", "time"] + ([] if quick else ["reference"])
    with registered(base):
        for key in keys:
            entry, section = claim_entry(key, session, tmp_path)
            assert list(entry["bases"]) == ["minilm"] and verdict_range(entry["verdict"]) and section["body"]
            assert section["figure"].startswith("MiniLM: ") and "(MiniLM: " in section["verdict"]
            assert ("Quick-mode" in section["body"]) == (quick and key in ("accuracy", "rank", "memory", "time"))
            for plot in section["plots"]:
                assert plot.startswith("minilm_") and (tmp_path / plot).stat().st_size > 1000
    if not quick:  # the selection trained the probe, full fine-tuning and LoRA at r = 8, 64 on qv and attn, each rate
        table = session.memo[("rates", "minilm", "cls", None)][1]
        assert list(table) == ["probe", "full", "qv r=8", "qv r=64", "attn r=8", "attn r=64"]
        for name, (rate, rows) in table.items():
            grid = sorted(base.rate_grids["lora" if " r=" in name else name])
            extra = sorted(set(rows) - set(grid))  # the grid extended past a winning edge, at most EXTEND_STEPS times
            assert rate in rows and set(grid) <= set(rows) and len(extra) <= rates.EXTEND_STEPS
            assert all(r < grid[0] or r > grid[-1] for r in extra)
    trained = {key[2] for key in session.memo if key[0] == "run"}
    assert set(resolved(session, base, base.grid(quick).specs())) <= trained


def test_the_report_puts_both_bases_side_by_side(tmp_path):
    """A claim measured on two bases: each base's verdict in the table, a section for each, the comparison."""
    from minilora import verify
    from minilora.report import render_claim

    def slot(short, in_text, figures, verdict):
        return {"short": short, "title": f"the {short} base", "in_text": in_text, "figures": figures,
                "verdict": {"verdict": verdict, "parts": {"classification": verdict}, "thresholds": {"gap holds <=": 0.03}}}

    summary = {"cls": {"Wq+Wv r=8": {"accuracy_mean": 0.42}, "full": {"accuracy_mean": 0.54}}}
    toy = {"summary": summary, "untuned": {"cls": {"accuracy": 0.19}}, "cls_gap": 0.12, "judged": {"cls": "Wq+Wv r=8"}}
    real = {"summary": {"cls": {"qv r=8": {"accuracy_mean": 0.76}, "full": {"accuracy_mean": 0.77},
                                "probe": {"accuracy_mean": 0.71}}}, "cls_gap": 0.01, "chance": 1 / 6, "judged": {"cls": "qv r=8"}}
    claim = {"number": 4, "title": "t", "claim": "c", "measured": "m", "verdict": PARTLY, "comparison": None, "provenance": {},
             "bases": {"toy": slot("toy", "the toy base", toy, PARTLY), "minilm": slot("MiniLM", "MiniLM", real, HOLDS)}}
    text = accuracy.render_comparison(claim)
    assert "The verdicts differ" in text and "comes closer" in text
    real["cls_gap"], claim["bases"]["minilm"]["verdict"]["verdict"] = 0.25, FAILS
    assert "further short" in accuracy.render_comparison(claim)
    toy["cls_gap"] = float("nan")
    assert "cannot be compared" in accuracy.render_comparison(claim)

    class Stub:  # a claim whose sections are fixed text: what the report does with two bases
        BASES = ("toy", "minilm")

        @staticmethod
        def render(figures, verdict, plot, quick):
            return {"figure": f"gap {figures['cls_gap']}", "body": "body", "plots": []}

        @staticmethod
        def render_comparison(claim):
            return "they differ"

    section = render_claim("accuracy", claim, Stub, tmp_path, "r.json: claims.accuracy")
    assert section["verdict"] == f"**{PARTLY}** (toy: {PARTLY}; MiniLM: {FAILS})"
    assert section["figure"].startswith("toy: gap ") and " · MiniLM: gap 0.25" in section["figure"]
    assert "### On the toy base" in section["body"] and "they differ" in section["body"]
    assert "MiniLM: gap holds <=" in section["thresholds"]
    assert verify.claim_bases(Stub, Session(bases=("minilm",))) == ("minilm",)
    assert verify.claim_bases(Stub, Session(bases=("llama",))) == ("toy",)  # none chosen: its first
