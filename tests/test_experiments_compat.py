"""Claim 13 (model compatibility, ``claims/compatibility.py``) on tiny bases.

* the verdict flips where its thresholds say, and a setting that fails on one architecture only counts;
* the gaps' standard errors are those of a difference of two means;
* the claim completes in quick and full mode on a tiny GPT and a tiny LLaMA (saved and loaded as the
  shipped LLaMA base is), GPT-2's runs are claim 4's own, and the learning rates are chosen alike.
"""

from __future__ import annotations

import math

import pytest

from experiment_helpers import claim_entry, registered, session_for, tiny_gpt, tiny_toy, toy_env
from minilora.experiments.bases import gpt
from minilora.experiments.bases.llama import BASE as LLAMA
from minilora.experiments.claims import compatibility as compat
from minilora.experiments.core import FAILS, HOLDS, PARTLY, verdict_range
from minilora.experiments.runs import tuned_specs
from minilora.models import GPTConfig, LlamaConfig, LlamaForCausalLM
from minilora.tasks import code_corpus, docstring_package_task

TINY_GPT = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
TINY_LLAMA = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=True)


def row(mean, std=0.0, n=3):
    return {"accuracy_mean": mean, "accuracy_std": std, "n": n}


JUDGED = compat.key_text(*compat.JUDGED)
OTHER = compat.key_text("all-linear", 64)


def test_gap_and_its_standard_error():
    rows = {"full": row(0.6, 0.03), "c_attn r=8": row(0.5, 0.04)}
    (gap, se), = compat.gaps(rows, {JUDGED: "c_attn r=8"}).values()
    assert gap == pytest.approx(0.1)
    assert se == pytest.approx(math.sqrt(0.03 ** 2 / 3 + 0.04 ** 2 / 3))


def judged(gpt_gaps: dict, llama_gaps: dict) -> dict:
    keys = {JUDGED: ["default", 8], OTHER: ["all-linear", 64]}
    return compat.compare({"toy": {"figures": {"gaps": gpt_gaps, "keys": keys}}, "llama": {"figures": {"gaps": llama_gaps}}})


def test_verdict_flips_at_its_thresholds():
    d = compat.DIFF_HOLDS

    def verdict(diff, se):  # GPT-2's gap 0 with no spread, LLaMA's diff with standard error se
        return judged({JUDGED: [0.0, 0.0]}, {JUDGED: [diff, se]})["verdict"]

    assert verdict(d + 0.001, 0.0) == HOLDS
    assert verdict(-(d + 0.001), 0.0) == HOLDS  # either direction
    assert verdict(d - 0.001, 0.0) == FAILS
    # large but within the seed noise: does not count
    assert verdict(0.2, 0.2 / compat.NOISE_SE) == FAILS
    assert verdict(0.2, 0.99 * 0.2 / compat.NOISE_SE) == HOLDS
    comparison = judged({JUDGED: [0.1, 0.0], OTHER: [0.1, 0.0]}, {JUDGED: [0.1, 0.0], OTHER: [0.2, 0.01]})
    assert comparison["verdict"] == PARTLY and comparison["clear"] == [OTHER]


def test_a_setting_failing_on_one_architecture_only_counts():
    gpt_gaps = {JUDGED: [0.05, 0.01]}
    llama_gaps = {JUDGED: [float("nan"), 0.0]}  # every LLaMA run of the setting failed
    diffs = compat.differences(gpt_gaps, llama_gaps)
    assert diffs[JUDGED][0] == float("inf")
    assert judged(gpt_gaps, llama_gaps)["verdict"] == HOLDS
    assert compat.differences(llama_gaps, llama_gaps) == {}  # failed on both: nothing to compare


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    cls = docstring_package_task(max_prompt_bytes=gpt.CLS_PROMPT_BYTES, per_class=20, block_size=64)
    corpus = code_corpus(max_bytes=40_000)
    folder = tmp_path_factory.mktemp("llama_base")
    LlamaForCausalLM(TINY_LLAMA).save_pretrained(folder)
    return cls, corpus, folder


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_claim_runs_end_to_end(tiny_setup, tmp_path, monkeypatch, quick):
    cls, corpus, folder = tiny_setup
    toy, llama = tiny_toy(), tiny_toy(LLAMA, path=folder)
    if not quick:
        monkeypatch.setattr(compat, "FULL", compat.Sizes(seeds=(0, 1), ranks=(1, 8), target_sets=("default", "all-linear")))
    session = session_for(quick, cls, corpus, {"toy": toy_env(cls, corpus, tiny_gpt(TINY_GPT))})
    with registered(toy, llama):
        env = llama.environment(session)  # loaded as the shipped LLaMA base is, with the toy's tasks
        assert isinstance(env.base, LlamaForCausalLM) and env.cls is cls
        entry, section = claim_entry("compatibility", session, tmp_path)
    assert list(entry["bases"]) == ["toy", "llama"] and entry["verdict"] == entry["comparison"]["verdict"]
    assert verdict_range(entry["verdict"]) and section["verdict"] == f"**{entry['verdict']}**"
    assert ("Quick-mode" in section["body"]) == quick
    assert (tmp_path / "compatibility_gaps.png").stat().st_size > 1000
    s = compat.sizes(quick)
    for name in ("toy", "llama"):
        assert entry["bases"][name]["figures"]["runs"] == len(s.seeds) * (1 + len(s.ranks) * len(s.target_sets))
    # GPT-2's runs are the toy's (claim 4's); LLaMA's trained LLaMA models with LLaMA's targets
    runs = {(key[1], key[2]) for key in session.memo if key[0] == "run"}
    assert all(spec.target in (None, "c_attn", "all") for base, spec in runs if base == "toy")
    llama_targets = {spec.target for base, spec in runs if base == "llama"}
    assert llama_targets == {None, *(compat.target_of(llama, t) for t in s.target_sets)}
    q = next(session.memo[("run", "llama", spec)] for base, spec in runs if base == "llama" and spec.target == "q_proj+v_proj")
    assert any(".q_proj.lora_A." in k for k in q.state) and not any(".k_proj." in k for k in q.state)
    for base in (toy, llama):
        rates, table = session.memo[("rates", base.name, "cls", (base.PEFT_TARGET,))]
        if quick:
            assert rates["full"] == gpt.LR["cls"]["full"]
        else:  # chosen alike: the same settings, each from its grid
            assert set(table) == set(tuned_specs(session, base, "cls", (base.PEFT_TARGET,)))
            for name, (rate, rows) in table.items():
                assert rate in rows and set(rows) == set(base.rate_grids["cls"]["full" if name == "full" else "lora"])
    # every difference in the comparison is LLaMA's gap minus GPT-2's
    for key, (d, _) in entry["comparison"]["differences"].items():
        assert d == pytest.approx(entry["bases"]["llama"]["figures"]["gaps"][key][0] - entry["bases"]["toy"]["figures"]["gaps"][key][0])


def test_the_llama_base_names_the_command_when_its_checkpoint_is_missing(tiny_setup, tmp_path):
    cls, corpus, _ = tiny_setup
    with pytest.raises(FileNotFoundError, match="minilora pretrain --arch llama"):
        tiny_toy(LLAMA, path=tmp_path / "nowhere").environment(session_for(True, cls, corpus))
