"""The benchmark's counts (benchmarks/bench.py): not its timings, which are never asserted."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import bench  # noqa: E402


@pytest.mark.parametrize("config", [
    dict(vocab_size=256, block_size=128, n_layer=2, n_head=4, n_embd=64),
    dict(vocab_size=97, block_size=32, n_layer=3, n_head=2, n_embd=48),
])
@pytest.mark.parametrize("batch", [(2, 16), (1, 32)])
def test_the_floor_runs_exactly_the_products_step_flops_counts(config, batch):
    pairs = bench.step_products(config, batch)
    assert sum(bench.product_flops(a, b) for a, b in pairs) == bench.step_flops(config, batch)
    for a, b in pairs:  # every pair multiplies: the shapes are the step's
        assert (a @ b).shape[-2:] == (a.shape[-2], b.shape[-1])


def test_step_flops_of_a_frozen_model_with_lora_is_below_full_fine_tuning():
    config = dict(vocab_size=256, block_size=128, n_layer=2, n_head=12, n_embd=768)
    ratio = bench.step_flops(config, (8, 128), lora_r=8) / bench.step_flops(config, (8, 128))
    assert 0.66 < ratio < 0.70  # 4 of 6 FLOPs per frozen weight, plus the thin adapters


def test_bert_step_flops_match_the_issues_count_and_lora_skips_the_weight_gradients():
    config = bench.bert_config()
    full = bench.bert_step_flops(config, bench.BERT_BATCH)
    assert 66e9 < full < 68e9  # the issue's "66 GFLOP" for a MiniLM-size step at 16 x 64
    assert 0.66 < bench.bert_step_flops(config, bench.BERT_BATCH, lora_r=8) / full < 0.70
