"""The method-comparison claims (10-12: latency from added depth, expressiveness, quantization) on tiny settings.

* every method's trainable count equals its closed form (``gpt_methods.trainable_count``), and
  ``matched_size`` picks the size nearest a budget, within the context prompt tuning leaves;
* each method trains through the GPT bases' ``finetune``; prompt tuning's held-out figures are
  read after its virtual positions;
* the latency variants: merged LoRA computes what unmerged LoRA computes, adapters change
  the output, and the timing returns every variant;
* the stored bytes of a quantized model equal the closed form to the byte and the analytic
  count (bits x parameters) within padding; tracemalloc sees what is stored;
* LoRA on the NF4 base starts from the same adapter as on the dense base;
* every verdict flips when its figure crosses its threshold;
* each claim measures, judges and renders on a tiny model, and writes its plot.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import minilora
from experiment_helpers import claim_entry, registered, session_for, timed_setting, tiny_toy, toy_env
from minilora.experiments.bases import gpt as ft
from minilora.experiments.bases import gpt_methods as M
from minilora.experiments.bases.toy import BASE as TOY
from minilora.experiments.claims import depth_latency as lat
from minilora.experiments.claims import expressiveness as acc
from minilora.experiments.claims import quantization as qz
from minilora.experiments.core import FAILS, HOLDS, ONE_RUN, PARTLY, Session, inconclusive, verdict_range
from minilora.experiments.runs import RunSpec
from minilora.models import GPT, GPTConfig
from minilora.peft import get_peft_model
from minilora.quant import NF4Linear
from minilora.tasks import docstring_package_task
from tolerances import assert_close, bound

# block 96 with 64-token rows: room for up to 32 virtual tokens
TINY = GPTConfig(vocab_size=256, block_size=96, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def tiny_base(config=TINY, seed=0) -> GPT:
    minilora.manual_seed(seed)
    return GPT(config).eval()


@pytest.fixture(scope="module")
def cls_task():
    return docstring_package_task(max_prompt_bytes=ft.CLS_PROMPT_BYTES, per_class=20, block_size=TINY.block_size)


# ---------------------------------------------------------------------------
# matched budgets
# ---------------------------------------------------------------------------

SIZES = {"lora": (1, 3), "dora": (1, 2), "ia3": (None,), "prompt": (1, 7), "prefix": (1, 3), "houlsby": (1, 5),
         "pfeiffer": (2, 6)}


@pytest.mark.parametrize("config", [TINY, GPTConfig(vocab_size=64, block_size=32, n_layer=3, n_head=4, n_embd=48)])
@pytest.mark.parametrize("method", M.METHODS)
def test_trainable_count_is_the_closed_form(method, config):
    for size in SIZES[method]:
        model = get_peft_model(tiny_base(config), M.peft_config(method, size))
        trainable, _ = model.get_nb_trainable_parameters()
        assert trainable == M.trainable_count(method, size, config), (method, size)
    assert M.trainable_count("full", None, config) == config.num_parameters()


def test_closed_forms_by_hand():
    C, L = TINY.n_embd, TINY.n_layer
    assert M.trainable_count("lora", 4, TINY) == L * (4 * 2 * C + 2 * C * 4)  # A (2r, C), B (2C, r)
    assert M.trainable_count("ia3", None, TINY) == 7 * L * C
    assert M.trainable_count("prefix", 5, TINY) == 5 * 2 * L * C
    assert M.trainable_count("houlsby", 3, TINY) == 2 * M.trainable_count("pfeiffer", 3, TINY)


@pytest.mark.parametrize("method", [m for m in M.METHODS if m != "ia3"])
@pytest.mark.parametrize("budget", [100, 1000, 4096, 9000])
def test_matched_size_is_the_nearest(method, budget):
    cap = M.max_size(method, TINY, 64)
    size = M.matched_size(method, budget, TINY, seq_len=64)
    sizes = range(1, (cap or 400) + 1)
    best = min(abs(M.trainable_count(method, s, TINY) - budget) for s in sizes)
    assert abs(M.trainable_count(method, size, TINY) - budget) == best
    if cap is not None:
        assert size <= cap


def test_matched_size_on_the_base_model():
    from minilora.pretrain import BASE_CONFIG

    # the judged budget: LoRA r=4 and 64 virtual tokens train exactly 8,192 numbers
    assert M.matched_size("lora", 8192, BASE_CONFIG) == 4
    assert M.matched_size("prompt", 8192, BASE_CONFIG, seq_len=64) == 64
    assert M.matched_size("prompt", 16384, BASE_CONFIG, seq_len=64) == 64  # capped: the context is full
    assert M.matched_size("ia3", 8192, BASE_CONFIG) is None
    with pytest.raises(ValueError, match="unknown method"):
        M.matched_size("bitfit", 100, BASE_CONFIG)
    with pytest.raises(ValueError, match="positive int"):
        M.peft_config("lora", 0)


# ---------------------------------------------------------------------------
# training every method
# ---------------------------------------------------------------------------


def mspec(method, size, **kw) -> RunSpec:
    return RunSpec("cls", method, "Wq+Wv" if method == "lora" else None, size or 0,
                   **{**dict(steps=3, batch_size=4, warmup_steps=1), **kw})


@pytest.mark.parametrize("method", M.METHODS)
def test_every_method_trains(cls_task, method):
    size = SIZES[method][0] if method != "prompt" else 4
    data = ft.ClassificationData(cls_task, 4)
    result = ft.finetune(mspec(method, size), tiny_base(), data)
    assert len(result.losses) == 3 and all(math.isfinite(x) for x in result.losses)
    assert result.trainable == M.trainable_count(method, size, TINY)
    assert 0.0 <= result.final["accuracy"] <= 1.0 and result.final["loss"] > 0
    assert result.state  # the adapter's weights
    assert acc.setting(mspec(method, size)) == f"{method} {M.size_label(method, size)}".strip()


def test_lora_is_claim_4s_run_and_ia3_has_no_decay(cls_task):
    assert mspec("lora", 2) == RunSpec("cls", "lora", "Wq+Wv", 2, steps=3, batch_size=4, warmup_steps=1)
    assert acc.setting(mspec("lora", 2)) == "lora r=2" and acc.setting(mspec("ia3", None)) == "ia3"
    assert ft.train_config(mspec("ia3", None)).weight_decay == 0.0
    assert ft.train_config(mspec("prompt", 4)).weight_decay == ft.WEIGHT_DECAY
    assert ft.train_config(mspec("prompt", 4)).lr == ft.METHOD_LR["prompt"]


def test_prompt_tuning_is_scored_after_its_virtual_tokens(cls_task):
    P = 8
    model = ft.fresh_model(mspec("prompt", P), tiny_base())
    data = ft.ClassificationData(cls_task, 4)
    logits = ft._logits(model, data.x_eval)
    assert logits.shape[:2] == (len(data.x_eval), P + data.x_eval.shape[1])
    with pytest.raises((ValueError, IndexError)):
        data.score(logits)  # the unshifted logits do not fit the targets
    result = ft.finetune(mspec("prompt", P, steps=1, lr=0.0), tiny_base(), data)  # lr 0: the model as it starts
    assert result.final == pytest.approx(data.score(logits[:, P:]))
    # the training loss is the held-out loss's formula on the real positions: the virtual ones get -100
    x, y = data.x_eval[:4], data.y_eval[:4]
    with minilora.no_grad():
        _, loss = model(x, targets=y)
    # the float32 loss against a float64 one from the same float32 logits: a logsumexp over the 256 bytes and a
    # mean over the positions, each rounded in float32 on one side (tolerances.py, both sides counted)
    assert_close(float(loss.data), ft._cross_entropy(logits[:4, P:], y), n=max(TINY.vocab_size, y.size), depth=2,
                 what="training loss")


def test_specs_for_matches_budgets_and_lists_ia3_once():
    g = acc.Grid(cls_budgets=(2048, 512), cls_methods=M.METHODS, cls_seeds=(0, 1), cls_other_seeds=(0,),
                 code_budgets=(), code_methods=(), code_seeds=())
    specs = acc.specs_for(g, TOY, TINY, {"cls": dict(steps=2, batch_size=4, warmup_steps=1)})
    assert len(specs) == len(set(specs))
    assert sum(s.method == "ia3" for s in specs) == 2  # one size, two seeds
    assert sum(s.method == "full" for s in specs) == 2
    assert {s.target for s in specs if s.method == "lora"} == {"Wq+Wv"}  # claim 4's LoRA
    judged = {s.method: s.r for s in specs if s.seed == 1 and s.method not in ("full", "ia3")}
    assert judged == {m: M.matched_size(m, 2048, TINY, acc.TASK_ROW) for m in judged}
    assert judged["prompt"] == TINY.block_size - acc.TASK_ROW  # capped by the context


# ---------------------------------------------------------------------------
# latency
# ---------------------------------------------------------------------------


def test_latency_variants_and_timing():
    base = tiny_base(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32))
    variants = lat.build_variants(TOY, base)
    assert list(variants) == ["base", "base again", "LoRA merged", "LoRA unmerged", "Houlsby", "Pfeiffer"]
    x = np.random.default_rng(0).integers(0, 64, (2, 16))
    with minilora.no_grad():
        out = {k: m(x)[0].numpy().astype(np.float64) for k, m in variants.items()}
    # merged and unmerged: the same float32 logits summed in another order, through 2 layers of width 32 (MLP
    # 128) and the head (tolerances.py); an adapter's update must move the logits by more than that rounding
    n, depth = 4 * base.config.n_embd, base.config.n_layer + 1
    assert_close(out["LoRA merged"], out["LoRA unmerged"], n=n, depth=depth, what="LoRA merged vs unmerged")
    assert np.array_equal(out["base"], out["base again"])
    for name in ("LoRA unmerged", "Houlsby", "Pfeiffer"):
        assert np.abs(out[name] - out["base"]).max() > bound(n, depth, np.abs(out["base"]).max()), name  # not zero
    matched = lat.matched_adapter_sizes(base.config)
    for method, m in matched["sizes"].items():  # nearest to LoRA's count
        budget = matched["trainable"]["LoRA"]
        assert all(abs(M.trainable_count(method, m, base.config) - budget)
                   <= abs(M.trainable_count(method, k, base.config) - budget) for k in range(1, 40))
    from minilora.tensor import Tensor

    make = Tensor.__dict__["_make"]
    ops = lat.op_counts(variants)
    assert Tensor.__dict__["_make"] is make  # put back
    assert ops["LoRA merged"] == ops["base again"] == ops["base"]  # merged: the base model's computation
    added = {k: ops[k] - ops["base"] for k in ("Houlsby", "Pfeiffer", "LoRA unmerged")}
    assert added["Houlsby"] == 2 * added["Pfeiffer"] > 0 and added["Pfeiffer"] % base.config.n_layer == 0
    assert added["LoRA unmerged"] > 0
    from minilora.experiments.core import time_rounds

    res = time_rounds(variants, lat.forward_tasks(base.config, ((1, 4), (2, 16))), repeats=2)
    assert list(res) == ["B=1 T=4", "B=2 T=16"]
    for setting in res.values():
        assert setting["repeats"] == 2 and all(setting[k] > 0 for k in variants)
        assert set(lat.overheads(setting)) == set(variants) - {"base"}
    with pytest.raises(ValueError, match="block_size"):
        lat.forward_tasks(base.config, ((1, 33),))


def test_depth_latency_verdict_reads_the_interval():
    def judged(houlsby, pfeiffer, merged=1.0, control=1.0, noise=0.005, rounds=21):
        """Ratios to the base model at batch 1, timed in made-up interleaved rounds."""
        ratios = {"base again": control, "LoRA merged": merged, "LoRA unmerged": 1.3, "Houlsby": houlsby, "Pfeiffer": pfeiffer}
        setting = timed_setting(ratios, noise, rounds)
        return lat.verdict({"latency": {"base": {"B=1 T=16": setting}},
                            "judged": {"model": "base", "setting": "B=1 T=16", "overheads": lat.overheads(setting)}})

    adapters, merged = "adapters slower than the base model", "merged LoRA as fast as the base"
    v = judged(1.30, 1.15)
    assert v["verdict"] == HOLDS and v["lighter_adapter"] == "Pfeiffer"
    assert v["lighter_overhead_interval"][0] > lat.ADAPTER_HOLDS
    assert judged(1.30, 1.06)["parts"][adapters] == PARTLY
    assert judged(1.02, 1.02)["parts"][adapters] == FAILS
    # judged against the base model: merged LoRA 4% faster (noise) is no longer subtracted from the adapters
    assert judged(1.30, 1.12, merged=0.96)["parts"][adapters] == HOLDS
    # merged LoRA 8% slower where the control is 1% off: 7% beyond the noise, "partly"
    assert judged(1.30, 1.15, merged=1.08, control=1.01)["parts"][merged] == PARTLY
    assert judged(1.0, 1.0, merged=1.30)["verdict"] == FAILS
    # noisy rounds: an adapter 10% slower straddles the holds line, "partly or holds"
    assert judged(1.30, 1.10, noise=0.05)["parts"][adapters] == inconclusive(PARTLY, HOLDS)
    assert judged(1.30, 1.15, rounds=1)["verdict"] == ONE_RUN
    setting = {k: v for k, v in timed_setting({"base again": 1.0, "LoRA merged": 1.0, "Houlsby": 1.2, "Pfeiffer": 1.1}).items()
               if k != "rounds"}
    with pytest.raises(ValueError, match=r"claim 10 \(depth_latency\): base model, B=1 T=16: the per-round times"):
        lat.verdict({"latency": {"base": {"B=1 T=16": setting}}, "judged": {"model": "base", "setting": "B=1 T=16"}})


# ---------------------------------------------------------------------------
# quantization
# ---------------------------------------------------------------------------


def _closed_form_bytes(n: int, double_quant: bool) -> int:
    blocks = -(-n // 64)
    codes = blocks * 64 // 2
    if not double_quant:
        return codes + 4 * blocks
    return codes + blocks + 4 * -(-blocks // 256) + 4  # int8 constants, float32 scales, one float32 mean


@pytest.mark.parametrize("scheme", qz.SCHEMES)
def test_stored_bytes_closed_form_and_analytic(scheme):
    base = tiny_base()
    stored = qz.stored_bytes(qz.quantized_copy(base, scheme))
    analytic = qz.analytic_bytes(TINY, scheme)
    C, L = TINY.n_embd, TINY.n_layer
    shapes = [3 * C * C, C * C, 4 * C * C, 4 * C * C] * L
    if scheme == "float32":
        assert stored["total"] == 4 * TINY.num_parameters() == analytic["total"]
        assert stored["codes"] == stored["constants"] == 0
        return
    dq = scheme == "NF4 + double quant"
    assert stored["quantized_params"] == sum(shapes) == analytic["quantized_params"]
    assert stored["codes"] + stored["constants"] == sum(_closed_form_bytes(n, dq) for n in shapes)
    assert stored["dense"] == 4 * (TINY.num_parameters() - sum(shapes))
    # bits x parameters leaves out only the per-matrix means and the padding of the last 8-bit block
    assert stored["total"] == pytest.approx(analytic["total"], rel=0.01)


def test_tracemalloc_sees_the_stored_arrays():
    base = tiny_base(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=128))
    for scheme in qz.SCHEMES:
        stored = qz.stored_bytes(qz.quantized_copy(base, scheme))["total"]
        traced = qz.traced_bytes(base, scheme)
        # the arrays plus the Python objects of the modules (tens of KiB)
        assert stored <= traced["held"] < stored + 100_000, scheme
        assert traced["peak"] >= traced["held"]
    table = qz.memory_table(base)
    assert table["NF4 + double quant"]["bits_per_quantized_measured"] == pytest.approx(4.127, abs=0.01)
    assert table["NF4"]["bits_per_quantized_measured"] == pytest.approx(4.5, abs=0.01)


def test_quantization_errors_are_nf4_sized():
    errors = qz.quantization_errors(tiny_base())
    assert len(errors["matrices"]) == 4 * TINY.n_layer
    assert 0.05 < errors["overall_rel_frobenius"] < 0.15  # NF4 on Gaussian weights: about 0.09
    no_dq = qz.quantization_errors(tiny_base(), double_quant=False)
    assert no_dq["overall_rel_frobenius"] <= errors["overall_rel_frobenius"] + 1e-3


def test_qlora_starts_from_the_dense_runs_adapter(cls_task):
    spec = RunSpec("cls", "lora", "Wq+Wv", 2, steps=3, batch_size=4, warmup_steps=1)
    dense, nf4 = ft.fresh_model(spec, tiny_base()), ft.fresh_model(spec.replace(quantized=True), tiny_base())
    d, q = dense.base_model.adapter_state_dict("default"), nf4.base_model.adapter_state_dict("default")
    assert d.keys() == q.keys() and all(np.array_equal(d[k], q[k]) for k in d)
    assert any(isinstance(m, NF4Linear) for _, m in nf4.named_modules())
    assert not any(isinstance(m, NF4Linear) for _, m in dense.named_modules())
    result = ft.finetune(spec.replace(quantized=True), tiny_base(), ft.ClassificationData(cls_task, 4))
    assert result.trainable == M.trainable_count("lora", 2, TINY) and len(result.losses) == 3
    assert set(result.final) == set(result.val) == {"loss", "accuracy"}


def test_quantization_verdict_reads_the_interval():
    def judged(memory_ratio, gap, lora_gain=1.0, seeds=5, n=1000):
        """Every seed scores the same rows alike: the gap's interval comes from ``n`` paired rows alone."""
        dense, nf4 = np.ones(n), np.ones(n)
        nf4[:int(round(gap * n))] = 0.0
        rows = {"dense": [dense.tolist()] * seeds, "nf4": [nf4.tolist()] * seeds}
        return qz.verdict({"memory_ratio": memory_ratio, "accuracy": {"gap": gap, "dense_gain_over_base": lora_gain,
                                                                     "rows": rows}})

    assert judged(0.2, 0.01)["verdict"] == HOLDS
    assert judged(0.2, 0.06)["parts"]["accuracy"] == PARTLY
    assert judged(0.2, 0.03)["parts"]["accuracy"] == inconclusive(PARTLY, HOLDS)  # on the 3-point line
    assert judged(0.3, 0.01)["parts"]["memory"] == PARTLY and judged(0.3, 0.01)["intervals"]["memory_ratio"] == "exact"
    assert judged(0.6, 0.2)["verdict"] == FAILS
    assert judged(0.2, 0.0, lora_gain=0.01)["parts"]["accuracy"] == FAILS  # near chance: not judged
    assert judged(0.2, 0.01, seeds=1)["parts"]["accuracy"] == ONE_RUN
    with pytest.raises(ValueError, match=r"claim 12 \(quantization\).*per-row"):
        qz.verdict({"memory_ratio": 0.2, "accuracy": {"gap": 0.0, "dense_gain_over_base": 1.0}})


def test_code_shares():
    rows = {"full": {"loss_mean": 1.0, "trainable": 100}, "lora r=4": {"loss_mean": 1.5, "trainable": 10},
            "prompt P=64": {"loss_mean": 2.0, "trainable": 10}}
    assert acc.code_shares(rows, 2.0) == {"lora r=4": 0.5, "prompt P=64": 0.0}
    assert math.isnan(acc.code_shares(rows, 1.005)["lora r=4"])  # full fine-tuning barely improved
    assert "lora r=4 (10) 1.500 = 50%, prompt P=64" in acc.code_summary(rows, 2.0)


def test_expressiveness_verdict_reads_the_intervals():
    def judged(lora_minus_prompt, full_minus_lora, lora_gain=1.0, seeds=5, n=1000):
        """Accuracies on ``n`` rows every seed scores alike: LoRA's errors are the first rows, prompt tuning's and
        full fine-tuning's the same rows plus or minus a block, so the intervals come from paired rows alone."""
        def wrong(k):
            a = np.ones(n)
            a[:k] = 0.0
            return [a.tolist()] * seeds
        base = 300
        rows = {"lora": wrong(base), "prompt": wrong(base + round(lora_minus_prompt * n)),
                "full": wrong(base - round(full_minus_lora * n))}
        return acc.verdict({"headline": {"lora_minus_prompt": lora_minus_prompt, "full_minus_lora": full_minus_lora,
                                         "lora_gain_over_base": lora_gain, "rows": rows}, "settings": {"budget": 8192}})

    assert judged(0.10, 0.01)["verdict"] == HOLDS
    assert judged(0.10, 0.03)["parts"]["LoRA near full fine-tuning"] == inconclusive(PARTLY, HOLDS)
    assert judged(0.10, 0.01, seeds=1)["verdict"] == ONE_RUN
    assert judged(0.10, -0.05)["parts"]["LoRA near full fine-tuning"] == HOLDS  # LoRA better than full fine-tuning
    # every prompt-tuning run failed on validation: LoRA is judged against the untuned base, where those runs lie
    n = 1000
    lora, base = np.ones(n), np.ones(n)
    lora[:300], base[:400] = 0.0, 0.0
    head = {"lora_minus_prompt": 0.10, "full_minus_lora": 0.0, "lora_gain_over_base": 0.10, "prompt_failed": True,
            "rows": {"lora": [lora.tolist()] * 5, "prompt": [], "full": [lora.tolist()] * 5, "untuned": base.tolist()}}
    failed = acc.verdict({"headline": head, "settings": {"budget": 8192}})
    low, high = failed["intervals"]["lora_minus_prompt"]  # 10 points on 1,000 rows: about +-2
    assert failed["parts"]["LoRA above prompt tuning"] == HOLDS and 0.05 < low < 0.1 < high < 0.15
    # LoRA has not learned the task (2 points over the base model): its lead over prompt tuning is not judged
    assert judged(0.10, 0.01, lora_gain=0.02)["parts"]["LoRA above prompt tuning"] == FAILS
    assert judged(0.03, 0.01)["parts"]["LoRA above prompt tuning"] == PARTLY
    assert judged(-0.01, 0.01)["parts"]["LoRA above prompt tuning"] == FAILS
    assert judged(0.10, 0.05)["parts"]["LoRA near full fine-tuning"] == PARTLY
    assert judged(-0.01, 0.20)["verdict"] == FAILS


# ---------------------------------------------------------------------------
# the claims, end to end on a tiny model
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_session(cls_task):
    """A quick-mode Session whose toy base is a tiny model, on a small task and corpus."""
    from minilora.tasks import code_corpus

    corpus = code_corpus(max_bytes=20_000)
    return session_for(True, cls_task, corpus, {"toy": toy_env(cls_task, corpus, tiny_base())})


def test_depth_latency_claim_runs(tiny_session, tmp_path):
    shapes = {"tiny": ((1, 4), (4, 32))}
    figures = lat.measure(TOY, tiny_session, models={"tiny": tiny_base()}, shapes=shapes, repeats={"tiny": 2})
    verdict = lat.verdict(figures)
    assert verdict_range(verdict["verdict"])
    assert set(figures["latency"]["tiny"]) == {"B=1 T=4", "B=4 T=32"}
    section = lat.render(figures, verdict, lambda fig, name: fig.savefig(tmp_path / name) or name, True)
    assert (tmp_path / section["plots"][0]).stat().st_size > 1000


def test_expressiveness_and_quantization_claims_run(tiny_session, tmp_path, monkeypatch):
    toy = tiny_toy(grids={True: ft.Grid(seeds=(0,), batch_size=4, tasks=(
        ("cls", ft.TaskGrid(2, (("Wq+Wv", (1,)),))), ("code", ft.TaskGrid(2, (("Wq+Wv", (1,)),)))))})
    g = acc.Grid(cls_budgets=(2048,), cls_methods=("lora", "prompt", "ia3"), cls_seeds=(0,), cls_other_seeds=(),
                 code_budgets=(), code_methods=(), code_seeds=())
    monkeypatch.setattr(acc, "QUICK", g)
    with registered(toy):
        entry, section = claim_entry("expressiveness", tiny_session, tmp_path)
        assert verdict_range(entry["verdict"])
        lora, prompt = (M.matched_size(m, 2048, TINY, acc.TASK_ROW) for m in ("lora", "prompt"))
        assert {"full", f"lora r={lora}", f"prompt P={prompt}", "ia3"} <= set(entry["bases"]["toy"]["figures"]["summary"]["cls"])
        assert (tmp_path / "methods_accuracy.png").exists()

        entry, section = claim_entry("quantization", tiny_session, tmp_path)
        figures = entry["bases"]["toy"]["figures"]
        assert verdict_range(entry["verdict"]) and 0.1 < figures["memory_ratio"] < 0.5
        assert figures["step_time"]["ratio"] > 0 and len(figures["step_time"]["nf4"]["steps"]) == qz.STEP_REPEATS[True]
        assert (tmp_path / "quantization.png").exists()
    # the dense LoRA run is claim 4's, shared: trained once; the NF4 runs are the same specs, quantized
    runs = [key[2] for key in tiny_session.memo if key[0] == "run"]
    assert {s.replace(quantized=False) for s in runs if s.quantized} <= {s for s in runs if not s.quantized}
