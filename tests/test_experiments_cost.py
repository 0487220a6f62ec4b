"""The cost claims of ``minilora verify``: parameter counts, memory, training time, inference.

Each experiment function runs here on tiny settings; the counts are checked against the
closed forms and PEFT, the measured memory against the analytic count, and every
verdict is shown to flip when its figure crosses its threshold.
"""

import copy

import numpy as np
import pytest

import minilora
from experiment_helpers import claim_entry, registered, timed_setting
from minilora.experiments.bases import gpt
from minilora.experiments.bases.toy import BASE as TOY
from minilora.experiments.claims import inference, memory, params
from minilora.experiments.claims import time as speed
from minilora.experiments.core import FAILS, HOLDS, ONE_RUN, PARTLY, Session, inconclusive, verdict_range
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
    assert params.published_figures(rows)["max_fraction_r8_qv"] < 0.01

    def synthetic(fraction, reductions, mismatches=0):
        rows = [{"model": "gpt2", "target": "qv", "r": 8, "fraction": fraction, "reduction": 1 / fraction}]
        rows += [{"model": "gpt2", "target": "all", "r": 1, "fraction": 1 / x, "reduction": x} for x in reductions]
        return params.verdict({**params.published_figures(rows), "grid": rows, "mismatches": mismatches})

    assert synthetic(0.009, [100] * 20)["verdict"] == HOLDS
    assert synthetic(0.011, [100] * 20)["parts"]["under 1%"] == PARTLY
    assert synthetic(0.06, [100] * 20)["parts"]["under 1%"] == FAILS
    assert synthetic(0.009, [100] * 10 + [20_000] * 10)["parts"]["10x-10,000x"] == PARTLY
    assert synthetic(0.06, [5] * 20)["verdict"] == FAILS
    assert synthetic(0.009, [100] * 20, mismatches=1)["verdict"] == FAILS  # a count off its formula voids the figures


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["full", "lora"])
def test_measured_memory_equals_analytic(method):
    for batch in (1, 4):
        measured = gpt.measure_step_memory(SMALL, batch, method)
        analytic = gpt.analytic_step_memory(SMALL, batch, method)
        assert measured["weights"] == analytic["weights"]
        assert measured["optimizer"] == analytic["optimizer"]
        assert measured["gradients"] == analytic["gradients"]
        assert measured["activations"] == pytest.approx(analytic["activations"], rel=0.10)
        assert measured["peak"] == pytest.approx(analytic["peak"], rel=0.10)


def test_full_fine_tuning_holds_16_bytes_a_parameter():
    a = gpt.analytic_step_memory(SMALL, 1, "full")
    assert a["weights"] + a["gradients"] + a["optimizer"] == 16 * SMALL.num_parameters()
    lora = gpt.analytic_step_memory(SMALL, 1, "lora")
    assert lora["gradients"] == 4 * 2 * SMALL.n_layer * (2 * 8 * SMALL.n_embd)  # A (2r, d) and B (2d, r) a layer


def test_lora_saves_memory_where_weights_dominate():
    full = gpt.measure_step_memory(WIDE_SMALL, 1, "full")
    lora = gpt.measure_step_memory(WIDE_SMALL, 1, "lora")
    assert lora["peak"] < 0.5 * full["peak"]


def test_memory_verdict_flips():
    def judged(ratio, error):
        return memory.verdict({"ratio": ratio, "max_error": error})

    assert judged(0.49, 0.01)["verdict"] == HOLDS
    assert judged(0.51, 0.01)["verdict"] == PARTLY
    assert judged(0.95, 0.01)["verdict"] == FAILS
    assert judged(0.3, 0.11)["agreement"] == PARTLY


# ---------------------------------------------------------------------------
# training time
# ---------------------------------------------------------------------------


def test_step_flops():
    full = gpt.step_flops(SMALL, 2, "full")
    lora = gpt.step_flops(SMALL, 2, "lora")
    assert full["backward"] == 2 * full["forward"]  # dX and dW, each as costly as the forward
    assert lora["total"] < full["total"]
    # with short sequences and wide matrices, the ratio tends to 4/6
    # (less a little: LoRA needs no input gradient for layer 0's c_attn, 3 d^2 of the model's 12 d^2 L)
    wide = GPTConfig(vocab_size=8, block_size=2, n_layer=50, n_head=4, n_embd=4096)
    ratio = gpt.step_flops(wide, 1, "lora", r=1)["total"] / gpt.step_flops(wide, 1, "full")["total"]
    assert ratio == pytest.approx(2 / 3 - 1 / (12 * 50), rel=1e-3)


def small_toy():
    """The toy base measuring the cost of small models: WIDE_SMALL for the wide one, SMALL for the base's shape."""
    toy = copy.copy(TOY)
    toy.cost_models = {"wide": WIDE_SMALL, "base": SMALL}
    toy.cost_batches = {True: (1, 2), False: (1, 2)}
    return toy


def test_measure_step_time_runs_both_methods():
    res = speed.measure_setting(small_toy(), small_toy().cost_setting("wide", 2, repeats=2))
    assert set(res) >= {"full", "lora", "ratio", "flop_ratio"}
    assert len(res["full"]["steps"]) == len(res["lora"]["steps"]) == 2
    assert res["ratio"] > 0 and 0 < res["flop_ratio"] < 1


def test_speed_verdict_reads_the_interval():
    def judged(*ratios, noise=0.01, repeats=16):
        """Full fine-tuning's steps take 1 s +- ``noise`` (a shared machine), LoRA's ``ratio`` of the same round's."""
        rng = np.random.default_rng(0)
        results = []
        for i, ratio in enumerate(ratios):
            full = 1 + noise * rng.standard_normal(repeats)
            lora = ratio * (1 + noise * rng.standard_normal(repeats))
            results.append({"label": f"setting {i}", "full": {"steps": full.tolist()}, "lora": {"steps": lora.tolist()}})
        return speed.verdict({"results": results})["verdict"]

    assert judged(0.70) == HOLDS
    assert judged(0.88) == PARTLY
    assert judged(1.10) == FAILS
    assert judged(0.5, 0.88) == PARTLY
    assert judged(0.81, noise=0.2) == inconclusive(PARTLY, HOLDS)  # 0.81 on noisy steps: either side of 0.8
    assert judged(0.5, repeats=1) == ONE_RUN


# ---------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------


def test_merged_logits_equal_unmerged():
    variants = gpt.serving_variants(config=TINY)
    x = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, TINY.block_size))
    check = inference.merge_check(variants, x)
    assert check["merged_vs_unmerged"] < inference.MERGE_TOLERANCE
    assert check["unmerged_vs_base"] > 1e-3  # the adapter does change the model


def test_measure_latency_reports_ratios():
    from minilora.experiments.core import time_rounds

    variants = gpt.serving_variants(config=TINY)
    res = time_rounds(variants, inference.latency_tasks(TINY, batches=(1,), gen_tokens=2, prompt_len=2), repeats=3)
    assert set(res) == {"forward B=1", "generate 2 tokens B=1"}
    assert all(s["merged/base"] > 0 and s["unmerged/base"] > 0 for s in res.values())
    assert all(len(t) == 3 for s in res.values() for t in s["rounds"].values())  # every round kept, for the intervals


def test_inference_verdict_reads_the_interval():
    def judged(*settings, error=1e-7, noise=0.005, rounds=21):
        """``settings``: (merged/base, base again/base) of each, timed in made-up interleaved rounds."""
        latency = {"m": {f"s{i}": timed_setting({"base again": c, "unmerged": 1.3, "merged": m}, noise, rounds, seed=i)
                         for i, (m, c) in enumerate(settings)}}
        return inference.verdict({"latency": latency, "merge_error": error})

    assert judged((1.02, 1.0), (0.99, 1.0))["verdict"] == HOLDS
    assert judged((1.12, 0.9))["verdict"] == HOLDS  # within the noise the control shows
    assert judged((1.10, 1.0))["verdict"] == PARTLY
    assert judged((1.3, 1.0), error=1e-3)["verdict"] == FAILS
    assert judged((1.0, 1.0), error=1e-4)["verdict"] == PARTLY
    # 5% beyond the noise, timed noisily: the interval straddles the holds line; the worst setting decides
    noisy = judged((1.05, 1.0), (1.0, 1.0), noise=0.05)
    assert noisy["parts"]["latency"] == inconclusive(PARTLY, HOLDS) == noisy["verdict"]
    assert noisy["worst_merged_excess_interval"][0] < inference.MERGED_HOLDS < noisy["worst_merged_excess_interval"][1]
    assert noisy["merge_error"] == "exact"
    assert judged((1.0, 1.0), rounds=1)["parts"]["latency"] == ONE_RUN
    # a results file written before the rounds were kept: an error naming the claim and the setting
    latency = {"m": {"s0": {k: v for k, v in timed_setting({"base again": 1.0, "merged": 1.0}).items() if k != "rounds"}}}
    with pytest.raises(ValueError, match=r"claim 7 \(inference\): m model, s0: the per-round times"):
        inference.verdict({"latency": latency, "merge_error": 0.0})


# ---------------------------------------------------------------------------
# each claim, measured, judged and rendered, on tiny settings
# ---------------------------------------------------------------------------


def test_claim_params(tmp_path):
    entry, section = claim_entry("params", Session(quick=True, bases=("toy",)), tmp_path)
    assert entry["verdict"] == HOLDS and entry["bases"]["toy"]["figures"]["mismatches"] == 0
    assert section["plots"] == ["params.png"] and (tmp_path / "params.png").stat().st_size > 1000


def test_claim_memory_and_time(tmp_path):
    with registered(small_toy()):
        entry, section = claim_entry("memory", Session(quick=True, bases=("toy",)), tmp_path)
        figures = entry["bases"]["toy"]["figures"]
        # quick mode measures other sizes than the full run: it reads "inconclusive (quick)", the verdict beside it
        assert figures["max_error"] < memory.AGREEMENT and entry["verdict"] == "inconclusive (quick)"
        assert entry["bases"]["toy"]["verdict"]["quick_reading"]["verdict"] == HOLDS
        assert list(figures["ratios"]) == ["wide batch 1", "base batch 1", "base batch 2"]
        assert (tmp_path / "memory.png").stat().st_size > 1000
        entry, section = claim_entry("time", Session(quick=True, bases=("toy",)), tmp_path)
        assert [r["label"] for r in entry["bases"]["toy"]["figures"]["results"]] == ["wide batch 1", "base batch 8"]
        assert section["thresholds"] and (tmp_path / "speed.png").stat().st_size > 1000


def test_claim_inference(tmp_path):
    minilora.manual_seed(0)
    session = Session(quick=True)
    figures = inference.measure(TOY, session, models={"tiny": GPT(TINY)}, batches=(1,), repeats=2, gen_tokens=2)
    assert figures["merge_error"] < inference.MERGE_TOLERANCE
    verdict = inference.verdict(figures)
    section = inference.render(figures, verdict, lambda fig, name: fig.savefig(tmp_path / name) or name, True)
    assert section["plots"] == ["inference.png"] and verdict_range(verdict["verdict"])


def test_blas_threads_are_limited_and_restored():
    import numpy  # noqa: F401  (loads the BLAS threadpoolctl looks for)
    from threadpoolctl import threadpool_info

    from minilora.experiments.core import timing

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
