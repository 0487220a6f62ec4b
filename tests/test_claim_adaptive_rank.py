"""Claim 14, "automated rank selection" (``experiments/claims/adaptive_rank.py``): its runs and its verdict.

On a tiny GPT and a tiny BERT (real WordPiece vocabulary) for the checks, and on the shipped toy
base in quick mode for the smoke test: each method trains what it says (counts in closed form),
AdaLoRA ends at its target budget, the per-row test predictions are the accuracy's, and runs are
deterministic by seed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import minilora
from minilora.experiments.claims import adaptive_rank as ar
from minilora.experiments.bases import gpt as ft
from minilora.experiments.bases import minilm as M
from minilora.models import GPT, BertConfig, BertForSequenceClassification, GPTConfig
from minilora.tasks import docstring_package_task

TINY_GPT = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
TINY_BERT = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=64)


@pytest.fixture(scope="module")
def cls_task():
    return docstring_package_task(max_prompt_bytes=ft.CLS_PROMPT_BYTES, per_class=12, block_size=64)


@pytest.fixture(scope="module")
def bases(cls_task):
    pytest.importorskip("tokenizers")
    from minilora.models.minilm import BertTokenizer, minilm_folder

    minilora.manual_seed(0)
    toy = ar.ToyRuns(ft.Environment(GPT(TINY_GPT), cls_task, None, {}), batch_size=4)
    minilora.manual_seed(0)
    model = BertForSequenceClassification(TINY_BERT, cls_task.n_classes)
    env = M.environment_of(model, BertTokenizer(minilm_folder() / "tokenizer.json"), cls_task)
    return {"toy": toy, "minilm": ar.MiniLMRuns(env, batch_size=4)}


def closed_form(base: str, per_matrix) -> int:
    """Σ over the adapted matrices of ``per_matrix(in, out)``."""
    if base == "toy":
        C = TINY_GPT.n_embd
        shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]
        layers = TINY_GPT.n_layer
    else:
        H, I = TINY_BERT.hidden_size, TINY_BERT.intermediate_size  # noqa: E741
        shapes = [(H, H)] * 4 + [(H, I), (I, H)]
        layers = TINY_BERT.num_hidden_layers
    return layers * sum(per_matrix(i, o) for i, o in shapes)


@pytest.mark.parametrize("base", ar.BASES)
def test_each_method_trains_what_it_says_and_adalora_ends_at_its_budget(bases, base):
    runs = {m: ar.run_one(bases[base], m, seed=0, lr=1e-2, steps=10) for m in ar.METHODS}
    assert runs["adalora"]["adapter_parameters"] == closed_form(base, lambda i, o: ar.INIT_R * (i + o + 1))
    assert runs["lora"]["adapter_parameters"] == closed_form(base, lambda i, o: ar.TARGET_R * (i + o))
    assert runs["lora_matched"]["r"] == ar.INIT_R  # AdaLoRA's count is LoRA r = 12's plus one λ per triplet
    assert runs["lora_matched"]["adapter_parameters"] == closed_form(base, lambda i, o: ar.INIT_R * (i + o))
    n_layers, n_matrices = (2, len(ar.MATRICES[base]))
    table = np.array(runs["adalora"]["rank_table"])
    assert table.shape == (n_layers, n_matrices) and table.max() <= ar.INIT_R
    assert table.sum() == ar.TARGET_R * n_layers * n_matrices  # the final budget, exactly
    assert len(runs["adalora"]["matrices"]) == n_matrices
    for run in runs.values():
        predicted, labels = np.array(run["test_predictions"]), np.array(run["test_labels"])
        assert len(predicted) == len(labels) == len(bases[base].env.cls.split("test").labels)
        assert run["test"]["accuracy"] == pytest.approx(np.mean(predicted == labels))
        assert set(run["val"]) == {"loss", "accuracy"} and np.isfinite(run["final_train_loss"])
        json.dumps(run)  # plain figures
    if base == "minilm":  # the heads are trained in full beside every method
        assert runs["lora"]["trainable"] > runs["lora"]["adapter_parameters"]


def test_a_run_is_deterministic_by_seed(bases):
    first = ar.run_one(bases["toy"], "adalora", seed=3, lr=1e-2, steps=6)
    again = ar.run_one(bases["toy"], "adalora", seed=3, lr=1e-2, steps=6)
    other = ar.run_one(bases["toy"], "adalora", seed=4, lr=1e-2, steps=6)
    assert first["test_predictions"] == again["test_predictions"] and first["rank_table"] == again["rank_table"]
    assert first["final_train_loss"] == again["final_train_loss"] != other["final_train_loss"]
    with pytest.raises(ValueError, match="method must be one of"):
        ar.run_one(bases["toy"], "lokr", seed=0, lr=1e-2)


def test_the_claim_in_quick_mode_on_the_shipped_toy_base(tmp_path):
    """The smoke test: measure, verdict and render as verify calls them, the shipped base at the quick size."""
    from minilora.experiments import bases as registry
    from minilora.experiments.core import Session

    base = registry.get("toy")
    figures = ar.measure(base, Session(quick=True, progress=False))
    json.dumps(figures)  # plain figures
    assert set(figures["runs"]) == set(ar.METHODS) and figures["settings"]["steps"] == ar.sizes("toy", True).steps
    adalora = figures["runs"]["adalora"][0]
    assert np.mean(np.array(adalora["test_predictions"]) == figures["test_labels"]) == pytest.approx(adalora["test"]["accuracy"])
    assert np.sum(figures["rank_tables"][0]) == ar.TARGET_R * 4 * len(ar.MATRICES["toy"])  # 4 layers, final budget
    verdict = ar.verdict(figures)
    assert set(verdict["parts"]) == set(ar.PARTS.values())

    def plot(fig, name):
        fig.savefig(tmp_path / name)
        return name

    out = ar.render(figures, verdict, plot, quick=True)
    assert out["plots"] == ["adaptive_rank.png"] and (tmp_path / "adaptive_rank.png").exists()
    assert "Quick-mode figures" in out["body"] and "AdaLoRA paper" in out["body"]
    slot = {"short": "toy", "figures": figures, "verdict": verdict}
    comparison = ar.render_comparison({"bases": {"toy": {**slot, "in_text": "the toy"}, "again": {**slot, "in_text": "again"}}})
    assert "same verdict" in comparison and comparison.count("| toy |") == 2


def synthetic(correct: dict) -> dict:
    """The figures ``verdict`` reads, from ``{method: [per-seed number of right answers out of 100 rows]}``:
    the rows a seed gets right are its first ones, so the arms overlap as much as they can."""
    labels = [0] * 100
    return {"test_labels": labels, "runs": {m: [{"test_predictions": [0] * k + [1] * (100 - k)} for k in seeds]
                                            for m, seeds in correct.items()}}


@pytest.mark.parametrize("lora, matched, expected", [
    ([50] * 5, [50] * 5, "holds"),  # the same rows right: the difference is exactly 0
    ([60] * 5, [60] * 5, "does not hold"),  # 10 points below both, every replicate
    ([50] * 5, [60] * 5, "partly"),  # holds against r=8, does not hold against r=12
    ([40, 60, 50, 42, 58], [40, 60, 50, 42, 58], "does not hold or holds — inconclusive"),  # seeds spread 20 points
])
def test_the_verdict_reads_the_difference_s_interval_against_the_thresholds(lora, matched, expected):
    assert ar.verdict(synthetic({"adalora": [50] * 5, "lora": lora, "lora_matched": matched}))["verdict"] == expected


def test_one_seed_is_inconclusive_and_missing_rows_are_an_error():
    assert ar.verdict(synthetic({"adalora": [50], "lora": [40], "lora_matched": [40]}))["verdict"] == "inconclusive (one run)"
    figures = synthetic({"adalora": [50, 50], "lora": [40, 40], "lora_matched": [40, 40]})
    figures["runs"]["lora"][1]["test_predictions"] = []
    with pytest.raises(ValueError, match="per-row test figures"):
        ar.verdict(figures)


@pytest.mark.parametrize("peak, tried, chosen", [
    (3, [1, 3, 10], 3),  # an inside rate wins at once
    (30, [1, 3, 10, 31.6, 100], 31.6),  # the top end wins: extended twice (sqrt(10) a step), then 31.6 is inside
    (1000, [1, 3, 10, 31.6, 100], 100),  # still at the top after two extensions: named in the text
    (0.1, [0.1, 0.316, 1, 3, 10], 0.1),  # the bottom end, likewise
])
def test_adalora_s_rate_is_chosen_on_validation_and_extended_past_an_end(monkeypatch, peak, tried, chosen):
    def fake_run(runs, method, seed, lr, **kw):  # validation accuracy peaks at ``peak`` x LoRA's rate
        return {"val": {"accuracy": -abs(np.log(lr / 1e-3) - np.log(peak))}}

    monkeypatch.setattr(ar, "run_one", fake_run)
    assert ar.adalora_rate(None, 1e-3, 0, quick=True) == (1e-3, {})
    best, runs = ar.adalora_rate(None, 1e-3, 0, quick=False)
    assert best == pytest.approx(chosen * 1e-3) and list(runs) == pytest.approx([f * 1e-3 for f in tried])
    settings = {"lr": {"lora": 1e-3, "adalora": best}, "seeds": [0],
                "adalora_rate_selection": {f"{lr:g}": run["val"]["accuracy"] for lr, run in runs.items()}}
    assert ("still at an end" in ar.rates_text(settings)) == (chosen in (tried[0], tried[-1]))


def test_the_allocation_and_the_heat_map_columns():
    assert ar.matrix_of("minilm", "bert.encoder.layer.3.attention.output.dense") == 3  # not the FFN's output.dense
    assert ar.matrix_of("minilm", "bert.encoder.layer.3.output.dense") == 5
    assert ar.matrix_of("toy", "transformer.h.1.mlp.c_proj") == 3
    # two seeds of a 2-layer, 4-matrix table: feed-forward 12 each, attention 4; the top layer 2 more
    tables = [[[4, 4, 12, 12], [6, 6, 14, 14]], [[4, 4, 12, 12], [6, 6, 14, 14]]]
    a = ar.allocation(tables)
    assert a["by_layer"] == [8.0, 10.0] and a["by_matrix"] == [5.0, 5.0, 13.0, 13.0]
    assert a["ffn_over_attention"] == pytest.approx(13 / 5) and a["top_over_bottom"] == pytest.approx(10 / 8)
    with pytest.raises(ValueError, match="base must be one of"):
        ar.runs_for("llama", None)
