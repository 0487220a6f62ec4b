"""The measuring function of the "automated rank selection" claim (``experiments/adaptive_rank.py``).

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
from minilora.experiments import adaptive_rank as ar
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
    toy = ar.ToyBase(ft.Environment(GPT(TINY_GPT), cls_task, None, {}), batch_size=4)
    minilora.manual_seed(0)
    model = BertForSequenceClassification(TINY_BERT, cls_task.n_classes)
    env = M.environment_of(model, BertTokenizer(minilm_folder() / "tokenizer.json"), cls_task)
    return {"toy": toy, "minilm": ar.MiniLMBase(env, batch_size=4)}


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


def test_quick_mode_on_the_shipped_toy_base():
    """The smoke test: the shipped base, the quick mode's size, AdaLoRA and LoRA."""
    base = ar.load_base("toy", quick=True)
    for method in ("adalora", "lora"):
        run = ar.run_one(base, method, seed=0, lr=3e-3, quick=True)
        assert run["steps"] == ar.sizes("toy", True).steps and 0 <= run["test"]["accuracy"] <= 1
    assert np.array(run["test_predictions"]).shape == (len(base.env.cls.split("test").labels),)


def test_the_heat_map_columns_name_every_matrix():
    assert ar.matrix_of("minilm", "bert.encoder.layer.3.attention.output.dense") == 3  # not the FFN's output.dense
    assert ar.matrix_of("minilm", "bert.encoder.layer.3.output.dense") == 5
    assert ar.matrix_of("toy", "transformer.h.1.mlp.c_proj") == 3
    assert ar.mean_rank_by([[12, 4], [8, 8]], axis=1) == [8.0, 8.0]
