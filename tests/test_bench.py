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


def test_the_llama_steps_are_the_gpt_steps_batches_and_the_shipped_llama_base():
    from minilora.pretrain import LLAMA_BASE_CONFIG

    (_, base, base_batch), (_, wide, wide_batch) = bench.llama_training_steps()
    (_, _, gpt_batch), (_, _, gpt_wide_batch) = bench.training_steps()
    assert base == LLAMA_BASE_CONFIG and (base_batch, wide_batch) == (gpt_batch, gpt_wide_batch)
    assert (wide.hidden_size, wide.num_attention_heads, wide.num_key_value_heads) == (768, 12, 4)


# ---------------------------------------------------------------------------
# the GPU section: it says why it is skipped, and its code runs on the CuPy stand-in at tiny sizes
# ---------------------------------------------------------------------------


def test_the_gpu_section_says_why_it_is_skipped(monkeypatch, capsys):
    import torch

    monkeypatch.setitem(sys.modules, "cupy", None)  # as where CuPy is not installed
    assert bench.bench_gpu(torch) == []
    assert "skipped: the 'cupy' backend needs CuPy and a CUDA GPU" in capsys.readouterr().out


def test_the_gpu_section_runs_on_cupy(cupy_module, monkeypatch):
    import torch

    import minilora

    tiny = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    monkeypatch.setattr(bench, "GPT2_SMALL", tiny)
    monkeypatch.setattr(bench, "GPT2_MEDIUM", tiny)
    monkeypatch.setattr(bench, "GPU_BATCH", (2, 16))
    previous = minilora.get_backend()
    rows = bench.bench_gpu(torch)
    assert minilora.get_backend() == previous  # the section leaves the backend as it found it
    names = [r["name"] for r in rows]
    assert len(rows) == 6 and all("GPU" in r["device"] for r in rows)
    steps = {name: r for name, r in zip(names, rows) if "train step" in name}
    assert len(steps) == 2 and all(r["minilora"] > 0 and r["flops"] > 0 for r in steps.values())
    memory = [r for r in rows if "peak memory" in r["name"]]
    assert [r["minilora"] > 0 for r in memory] == [True, True] and memory[1]["minilora"] < memory[0]["minilora"]
    assert all("memory hook" in r["device"] for r in memory)


def test_every_section_returns_its_rows():
    """main() adds up what each section returns: one that ends without ``return rows`` (the BERT
    section once did) breaks ``make bench`` after it has spent minutes timing."""
    import ast
    import inspect
    import textwrap

    for name, fn in bench.SECTIONS.items():
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        last = tree.body[0].body[-1]
        assert isinstance(last, ast.Return) and last.value is not None, f"section {name!r} does not end by returning its rows"

