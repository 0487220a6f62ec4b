"""The cost claims of ``minilora verify``: parameter counts, memory, training time, inference.

Each experiment function runs here on tiny settings; the counts are checked against the
closed forms and PEFT, the measured memory against the analytic count, and every
verdict helper is shown to flip when its figure crosses its threshold.
"""

import os

import numpy as np
import pytest

import minilora
from minilora.experiments import inference, memory, params, speed
from minilora.experiments.common import FAILS, HOLDS, PARTLY, ClaimResult, Context
from minilora.models import GPT, GPTConfig

TINY = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
SMALL = GPTConfig(vocab_size=128, block_size=64, n_layer=2, n_head=4, n_embd=64)  # activations >> Python's overhead
WIDE_SMALL = GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=4, n_embd=256)  # weights dominate at batch 1


# ---------------------------------------------------------------------------
# parameter counts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-xl"])
def test_gpt2_total_equals_gpt_config_closed_form(name):
    arch = params.ARCHS[name]
    assert params.total_parameters(arch) == GPTConfig.preset(name).num_parameters()


def test_published_totals():
    # the sizes the model cards state, to the parameter
    assert params.total_parameters(params.ARCHS["gpt2"]) == 124_439_808
    assert params.total_parameters(params.ARCHS["llama-7b"]) == 6_738_415_616
    assert params.total_parameters(params.ARCHS["llama-70b"]) == 68_976_648_192
    assert 174e9 < params.total_parameters(params.ARCHS["gpt3-175b"]) < 175.5e9


def test_lora_count_is_r_times_in_plus_out():
    arch = params.ARCHS["llama-70b"]  # grouped-query attention: v maps 8192 -> 1024
    d, kv = arch.n_embd, arch.kv_dim
    assert kv == 1024
    assert params.lora_parameters(arch, 8, "qv") == 80 * (8 * (d + d) + 8 * (d + kv))
    for target in ("qv", "all"):
        assert params.lora_parameters(arch, 16, target) == 2 * params.lora_parameters(arch, 8, target)
    with pytest.raises(ValueError, match="c_attn"):
        params.lora_parameters(arch, 8, "c_attn")


@pytest.mark.parametrize("config", [TINY, GPTConfig(vocab_size=50, block_size=8, n_layer=3, n_head=3, n_embd=48)])
def test_minilora_injection_equals_formula(config):
    rows = params.minilora_checks((1, 4), config=config)
    assert len(rows) == 6 and all(row["match"] for row in rows), rows


def test_minilora_injection_leaves_the_model_as_it_was():
    minilora.manual_seed(0)
    model = GPT(TINY)
    names = [n for n, _ in model.named_parameters()]
    params.minilora_count(model, 4, "all")
    assert [n for n, _ in model.named_parameters()] == names
    assert all(p.requires_grad for p in model.parameters())


def _tiny_arch(family):
    if family == "gpt2":
        return params.Arch("tiny gpt2", "gpt2", TINY.n_layer, TINY.n_embd, TINY.n_head, TINY.vocab_size, TINY.block_size)
    return params.Arch("tiny llama (GQA)", "llama", 2, 64, 4, 100, n_kv_head=2, intermediate_size=96)


@pytest.mark.parametrize("family,target", [("gpt2", "c_attn"), ("gpt2", "all"), ("llama", "qv"), ("llama", "all")])
def test_counts_equal_peft(family, target):
    pytest.importorskip("peft")
    arch = _tiny_arch(family)
    for r in (1, 8):
        trainable, total = params.peft_count(arch, r, target)
        assert trainable == params.lora_parameters(arch, r, target)
        assert total - trainable == params.total_parameters(arch)


def test_llama_7b_on_the_meta_device_equals_peft():
    pytest.importorskip("peft")
    arch = params.ARCHS["llama-7b"]
    trainable, total = params.peft_count(arch, 8, "qv")
    assert trainable == params.lora_parameters(arch, 8, "qv") == 4_194_304
    assert total - trainable == params.total_parameters(arch)


def test_count_grid_and_its_verdict_flip():
    rows = params.count_grid()
    assert len(rows) == len(params.ARCHS) * len(params.RANKS) * len(params.TARGETS)
    figures = params.judge_counts(rows)
    assert figures["max_fraction_r8_qv"] < 0.01

    def synthetic(fraction, reductions):
        rows = [{"model": "gpt2", "target": "qv", "r": 8, "fraction": fraction, "reduction": 1 / fraction}]
        return rows + [{"model": "gpt2", "target": "all", "r": 1, "fraction": 1 / x, "reduction": x} for x in reductions]

    assert params.judge_counts(synthetic(0.009, [100] * 20))["verdict"] == HOLDS
    assert params.judge_counts(synthetic(0.011, [100] * 20))["fraction_verdict"] == PARTLY
    assert params.judge_counts(synthetic(0.06, [100] * 20))["fraction_verdict"] == FAILS
    assert params.judge_counts(synthetic(0.009, [100] * 10 + [20_000] * 10))["range_verdict"] == PARTLY
    assert params.judge_counts(synthetic(0.06, [5] * 20))["verdict"] == FAILS


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["full", "lora"])
def test_measured_memory_equals_analytic(method):
    for batch in (1, 4):
        measured = memory.measure_step_memory(SMALL, batch, method)
        analytic = memory.analytic_step_memory(SMALL, batch, method)
        assert measured["weights"] == analytic["weights"]
        assert measured["optimizer"] == analytic["optimizer"]
        assert measured["gradients"] == analytic["gradients"]
        assert measured["activations"] == pytest.approx(analytic["activations"], rel=0.10)
        assert measured["peak"] == pytest.approx(analytic["peak"], rel=0.10)


def test_full_fine_tuning_holds_16_bytes_a_parameter():
    a = memory.analytic_step_memory(SMALL, 1, "full")
    assert a["weights"] + a["gradients"] + a["optimizer"] == 16 * SMALL.num_parameters()
    lora = memory.analytic_step_memory(SMALL, 1, "lora")
    assert lora["gradients"] == 4 * 2 * SMALL.n_layer * (2 * 8 * SMALL.n_embd)  # A (2r, d) and B (2d, r) a layer


def test_lora_saves_memory_where_weights_dominate():
    full = memory.measure_step_memory(WIDE_SMALL, 1, "full")
    lora = memory.measure_step_memory(WIDE_SMALL, 1, "lora")
    assert lora["peak"] < 0.5 * full["peak"]


def test_memory_verdict_flips():
    assert memory.judge_memory(0.49, 0.01)["verdict"] == HOLDS
    assert memory.judge_memory(0.51, 0.01)["verdict"] == PARTLY
    assert memory.judge_memory(0.95, 0.01)["verdict"] == FAILS
    assert memory.judge_memory(0.3, 0.11)["agreement"] == PARTLY


# ---------------------------------------------------------------------------
# training time
# ---------------------------------------------------------------------------


def test_step_flops():
    full = speed.step_flops(SMALL, 2, "full")
    lora = speed.step_flops(SMALL, 2, "lora")
    assert full["backward"] == 2 * full["forward"]  # dX and dW, each as costly as the forward
    assert lora["total"] < full["total"]
    # with short sequences and wide matrices, the ratio tends to 4/6
    # (less a little: LoRA needs no input gradient for layer 0's c_attn, 3 d^2 of the model's 12 d^2 L)
    wide = GPTConfig(vocab_size=8, block_size=2, n_layer=50, n_head=4, n_embd=4096)
    ratio = speed.step_flops(wide, 1, "lora", r=1)["total"] / speed.step_flops(wide, 1, "full")["total"]
    assert ratio == pytest.approx(2 / 3 - 1 / (12 * 50), rel=1e-3)


def test_measure_step_time_runs_both_methods():
    res = speed.measure_step_time(TINY, 2, repeats=2)
    assert set(res) >= {"full", "lora", "ratio", "flop_ratio"}
    assert len(res["full"]["steps"]) == len(res["lora"]["steps"]) == 2
    assert res["ratio"] > 0 and 0 < res["flop_ratio"] < 1


def test_speed_verdict_flips():
    assert speed.judge_speed([0.79])["verdict"] == HOLDS
    assert speed.judge_speed([0.81])["verdict"] == PARTLY
    assert speed.judge_speed([0.96])["verdict"] == FAILS
    assert speed.judge_speed([0.5, 0.9])["verdict"] == PARTLY


# ---------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------


def test_merged_logits_equal_unmerged():
    variants = inference.build_variants(config=TINY)
    x = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, TINY.block_size))
    check = inference.merge_check(variants, x)
    assert check["merged_vs_unmerged"] < inference.MERGE_TOLERANCE
    assert check["unmerged_vs_base"] > 1e-3  # the adapter does change the model


def test_measure_latency_reports_ratios():
    variants = inference.build_variants(config=TINY)
    res = inference.measure_latency(variants, batches=(1,), repeats=3, gen_tokens=2, prompt_len=2)
    assert set(res) == {"forward B=1", "generate 2 tokens B=1"}
    assert all(s["merged/base"] > 0 and s["unmerged/base"] > 0 for s in res.values())


def test_inference_verdict_flips():
    assert inference.judge_inference([1.04, 0.97], [1.0, 1.0], 1e-7)["verdict"] == HOLDS
    assert inference.judge_inference([1.12], [0.9], 1e-7)["verdict"] == HOLDS  # within the noise
    assert inference.judge_inference([1.06], [1.0], 1e-7)["verdict"] == PARTLY
    assert inference.judge_inference([1.2], [1.01], 1e-3)["verdict"] == FAILS
    assert inference.judge_inference([1.0], [1.0], 1e-4)["verdict"] == PARTLY


# ---------------------------------------------------------------------------
# each claim's run(), on tiny settings
# ---------------------------------------------------------------------------


def _check(result, tmp_path):
    assert isinstance(result, ClaimResult) and result.verdict in (HOLDS, PARTLY, FAILS)
    assert result.body and result.thresholds and result.settings
    for plot in result.plots:
        assert os.path.getsize(tmp_path / plot) > 1000


def test_run_params(tmp_path):
    result = params.run(Context(out=str(tmp_path), quick=True))
    _check(result, tmp_path)
    assert result.verdict == HOLDS and result.figures["mismatches"] == 0


def test_run_memory(tmp_path):
    result = memory.run(Context(out=str(tmp_path), quick=True), wide=WIDE_SMALL, base=SMALL, batches=(1, 2))
    _check(result, tmp_path)
    assert result.figures["max_error"] < memory.AGREEMENT
    assert result.verdict == HOLDS


def test_run_speed(tmp_path):
    _check(speed.run(Context(out=str(tmp_path), quick=True), settings=[(TINY, 1)], repeats=1), tmp_path)


def test_run_inference(tmp_path):
    minilora.manual_seed(0)
    result = inference.run(Context(out=str(tmp_path), quick=True), models={"tiny": GPT(TINY)}, batches=(1,), repeats=2, gen_tokens=2)
    _check(result, tmp_path)
    assert result.figures["merge_error"] < inference.MERGE_TOLERANCE


def test_blas_threads_are_limited_and_restored():
    import numpy  # noqa: F401  (loads the BLAS threadpoolctl looks for)
    from threadpoolctl import threadpool_info

    from minilora.experiments import timing

    def blas_threads():
        return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]

    before = blas_threads()
    assert before, "threadpoolctl finds NumPy's BLAS"
    with timing.blas_threads(1) as how:
        assert how == "threadpoolctl"
        assert set(blas_threads()) == {1}
    assert blas_threads() == before
    with timing.blas_threads(None) as how:
        assert how is None
        assert blas_threads() == before
