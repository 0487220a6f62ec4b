"""The serving benchmark (benchmarks/serving.py) runs and returns its rows: not its timings, which are never asserted."""

import ast
import inspect
import os
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import serving  # noqa: E402


def test_the_serving_section_gives_a_row_per_adapter_count_and_the_big_batch(monkeypatch, tmp_path):
    monkeypatch.setattr(serving, "BATCH", 4)
    monkeypatch.setattr(serving, "BIG_BATCH", 6)
    monkeypatch.setattr(serving, "PHASES", {"prefill": 8, "decode step": 1})
    monkeypatch.setattr(serving, "REPEATS", {"prefill": 1, "decode step": 2})
    rows = serving.bench_serving(torch, counts=(1, 3), rounds=1)
    assert [(r["phase"], r["adapters"], r["batch"]) for r in rows] == [
        ("prefill", 1, 4), ("prefill", 3, 4), ("prefill", 3, 6), ("decode step", 1, 4), ("decode step", 3, 4),
        ("decode step", 3, 6)]
    for r in rows:
        assert all(r[f"{k}_tokens_per_s"] > 0 for k in ("gathered", "loop", "merge", "peft"))
        assert 1 <= r["distinct"] <= min(r["adapters"], r["batch"])
    assert rows[0]["gathered_vs_first"] == rows[3]["peft_vs_first"] == 1.0 and rows[0]["distinct"] == 1
    serving.plot(rows, tmp_path / "serving.png")
    assert (tmp_path / "serving.png").stat().st_size > 0


def test_the_adapters_of_both_sides_are_the_same():
    """The PEFT twin holds the very weights minilora holds: the mixed batches agree (float32, so to
    float32's error model: 2 x (4 layers + 2) x gamma_512 x the largest logit, n = the MLP's width)."""
    import numpy as np

    ours, theirs = serving.with_adapters(3, torch)
    names = ["a2", "a0", "a1", "a2"]
    x = np.random.default_rng(0).integers(0, 256, size=(4, 8))
    mine = ours(x, adapter_names=names)[0].numpy()
    with torch.no_grad():
        peft_out = theirs(input_ids=torch.tensor(x), adapter_names=names).logits.numpy()
    nu = 512 * np.finfo(np.float32).eps / 2
    assert np.max(np.abs(mine - peft_out)) <= 2 * 6 * nu / (1 - nu) * np.max(np.abs(peft_out))


def test_the_onnx_section_gives_sizes_and_latencies():
    rows = serving.bench_onnx(torch, batch=(2, 8), rounds=1)
    names = [r["name"] for r in rows]
    assert sum("ONNX file" in n for n in names) == 4 and sum(n.startswith("forward 2x8") for n in names) == 6
    sizes = {r["name"]: r["minilora"] for r in rows if "ONNX file" in r["name"]}
    assert sizes["ONNX file: NF4 base + LoRA (KB)"] < 0.5 * sizes["ONNX file: merged (KB)"]  # 4-bit weights


def test_every_section_returns_its_rows():
    for name, fn in serving.SECTIONS.items():
        last = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0].body[-1]
        assert isinstance(last, ast.Return) and last.value is not None, f"section {name!r} does not return its rows"
