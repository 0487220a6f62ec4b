"""Claim 13 (model compatibility, experiments/compatibility.py) on tiny bases.

* the verdict flips where its thresholds say, and a setting that fails on one architecture only counts;
* the gaps' standard errors are those of a difference of two means;
* run(ctx) completes in quick and full mode on a tiny GPT and a tiny LLaMA (saved and loaded as the
  shipped LLaMA base is), GPT-2's runs are claim 4's own, and the learning rates are chosen alike.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from minilora.experiments import compatibility as compat
from minilora.experiments import finetune as ft
from minilora.experiments.common import FAILS, HOLDS, PARTLY, Context
from minilora.models import GPT, GPTConfig, LlamaConfig, LlamaForCausalLM
from minilora.tasks import code_corpus, docstring_package_task

TINY_GPT = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
TINY_LLAMA = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=True)


def row(mean, std=0.0, n=3):
    return {"accuracy_mean": mean, "accuracy_std": std, "n": n}


def test_gap_and_its_standard_error():
    rows = {"full": row(0.6, 0.03), "c_attn r=8": row(0.5, 0.04)}
    (gap, se), = compat.gaps(rows, {("default", 8): "c_attn r=8"}).values()
    assert gap == pytest.approx(0.1)
    assert se == pytest.approx(math.sqrt(0.03 ** 2 / 3 + 0.04 ** 2 / 3))


def test_verdict_flips_at_its_thresholds():
    d = compat.DIFF_HOLDS
    other = ("all-linear", 64)
    assert compat.judge_compatibility({compat.JUDGED: (d + 0.001, 0.0)})[0] == HOLDS
    assert compat.judge_compatibility({compat.JUDGED: (-(d + 0.001), 0.0)})[0] == HOLDS  # either direction
    assert compat.judge_compatibility({compat.JUDGED: (d - 0.001, 0.0)})[0] == FAILS
    # large but within the seed noise: does not count
    assert compat.judge_compatibility({compat.JUDGED: (0.2, 0.2 / compat.NOISE_SE)})[0] == FAILS
    assert compat.judge_compatibility({compat.JUDGED: (0.2, 0.99 * 0.2 / compat.NOISE_SE)})[0] == HOLDS
    verdict, clear = compat.judge_compatibility({compat.JUDGED: (0.0, 0.0), other: (0.1, 0.01)})
    assert verdict == PARTLY and clear == [other]


def test_a_setting_failing_on_one_architecture_only_counts():
    gpt = {compat.JUDGED: (0.05, 0.01)}
    llama = {compat.JUDGED: (float("nan"), 0.0)}  # every LLaMA run of the setting failed
    diffs = compat.differences(gpt, llama)
    assert diffs[compat.JUDGED][0] == float("inf")
    assert compat.judge_compatibility(diffs)[0] == HOLDS
    assert compat.differences(llama, llama) == {}  # failed on both: nothing to compare


@pytest.fixture(scope="module")
def tiny_envs(tmp_path_factory):
    import minilora

    cls = docstring_package_task(max_prompt_bytes=ft.CLS_PROMPT_BYTES, per_class=20, block_size=64)
    corpus = code_corpus(max_bytes=40_000)
    minilora.manual_seed(0)
    gpt = ft.Environment(GPT(TINY_GPT), cls, corpus, {"test": True, "base_model_val_loss": 5.0})
    folder = tmp_path_factory.mktemp("llama_base")
    LlamaForCausalLM(TINY_LLAMA).save_pretrained(folder)
    return gpt, folder


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_claim_runs_end_to_end(tiny_envs, tmp_path, monkeypatch, quick):
    gpt, folder = tiny_envs
    tiny = dataclasses.replace(ft.sizes(quick), cls_steps=2, batch_size=4)
    monkeypatch.setattr(ft, "QUICK" if quick else "FULL", tiny)
    if not quick:
        monkeypatch.setattr(compat, "FULL", compat.Sizes(seeds=(0, 1), ranks=(1, 8), target_sets=("default", "all-linear")))
        monkeypatch.setattr(ft, "RATE_GRID", {task: {"full": (1e-4, 1e-3), "lora": (1e-3, 1e-2)} for task in ("cls", "code")})
    ctx = Context(out=str(tmp_path), quick=quick, progress=False)
    ctx.shared["finetune_env"] = gpt
    llama = compat.llama_environment(gpt, folder)
    assert isinstance(llama.base, LlamaForCausalLM) and llama.cls is gpt.cls
    assert llama.provenance["base_model_sha256"] != gpt.provenance.get("base_model_sha256")
    ctx.shared["compat_envs"] = {"gpt": gpt, "llama": llama}

    result = compat.run(ctx)
    assert result.verdict in (HOLDS, PARTLY, FAILS)
    assert ("Quick-mode" in result.body) == quick
    assert (tmp_path / "compatibility_gaps.png").stat().st_size > 1000
    s = compat.sizes(quick)
    assert result.settings["runs"] == 2 * len(s.seeds) * (1 + len(s.ranks) * len(s.target_sets))
    # GPT-2's runs went into claim 4's dict; LLaMA's trained LLaMA models with LLaMA's targets
    gpt_specs = set(ctx.shared["finetune_runs"])
    llama_runs = ctx.shared["compat_llama_runs"]
    assert all(spec.target in (None, "c_attn", "all") for spec in gpt_specs)
    assert {spec.target for spec in llama_runs} == {None, *(compat.TARGET_SETS[t]["llama"] for t in s.target_sets)}
    q = next(r for spec, r in llama_runs.items() if spec.target == "q_proj+v_proj")
    assert any(".q_proj.lora_A." in k for k in q.state) and not any(".k_proj." in k for k in q.state)
    for arch in compat.ARCHS:
        if quick:
            assert ctx.shared[f"compat_rates_{arch}"]["full"] == ft.LR["cls"]["full"]
        else:  # chosen alike: the same settings, each from its grid
            table = ctx.shared["compat_lr_selection"][arch]
            assert set(table) == set(compat.tuned_specs(False, arch))
            for name, (rate, rows) in table.items():
                assert rate in rows and set(rows) == set(ft.RATE_GRID["cls"]["full" if name == "full" else "lora"])
    # every difference in the figures is LLaMA's gap minus GPT-2's
    for key, (d, _) in result.figures["differences"].items():
        assert d == pytest.approx(result.figures["gaps"]["llama"][key][0] - result.figures["gaps"]["gpt"][key][0])


def test_llama_environment_names_the_command_when_the_base_is_missing(tiny_envs, tmp_path):
    with pytest.raises(FileNotFoundError, match="minilora pretrain --arch llama"):
        compat.llama_environment(tiny_envs[0], tmp_path / "nowhere")
