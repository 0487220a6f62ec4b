"""minilora's CuPy path end to end: a training step's syncs, and the claims that move device data.

On a CPU this runs on the CuPy stand-in (``tests/fake_cupy``), which refuses every host array
that meets a device array and counts each time the host waits for the device (a *sync*).
It proves:

* a training step -- forward, backward, clipping, AdamW, the loss checked for divergence --
  makes the host wait once (``backend.read_scalars`` of the loss and the gradient norm; the
  budget is 2), for full fine-tuning and for LoRA, and copies three arrays to the device
  (the batch's ids and targets, the positions); and it computes what the NumPy path does;
* divergence is caught at the step it happens, before the update touches the weights;
* the claims that time, trace memory or move results to the host (memory, time, inference,
  rank, modularity, depth_latency) run on device arrays in quick mode, at tiny sizes, and
  their figures reach the report as host values (``verify.plain`` refuses device arrays);
  the measured memory agrees with the analytic count within 10% there too.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import minilora
from experiment_helpers import claim_entry, registered, session_for, tiny_toy, toy_env
from minilora import backend
from minilora.experiments.bases import gpt
from minilora.experiments.bases.toy import BASE as TOY
from minilora.experiments.claims import depth_latency as lat
from minilora.experiments.claims import inference, memory
from minilora.experiments.core import Session, verdict_range
from minilora.models import GPT, GPTConfig
from minilora.peft import get_peft_model
from minilora.train import NonFiniteLossError, TrainConfig, train
from minilora.verify import plain

from tolerances import assert_close

TINY = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
STEP = GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=2, n_embd=32)


def _model(config, method, seed=0):
    minilora.manual_seed(seed)
    model = GPT(config)
    return get_peft_model(model, gpt.cost_lora_config("qv", 4)) if method == "lora" else model


def _batches(config, batch=2):
    def batches(rng):
        x = rng.integers(0, config.vocab_size, (batch, config.block_size))
        return x, np.roll(x, -1, axis=1)

    return batches


def _train(config, method, steps, **kw):
    settings = dict(max_steps=steps, progress=False, eval_interval=0, warmup_steps=1, lr=1e-3)
    return train(_model(config, method), _batches(config), TrainConfig(**{**settings, **kw}))


@pytest.mark.usefixtures("cupy_backend")
class TestTrainingOnCuPy:
    @pytest.mark.parametrize("method", ["full", "lora"])
    def test_a_training_step_syncs_once(self, counters, method):
        runs = {}
        for steps in (2, 4):  # the difference of two runs: what two steps cost, without the run's set-up and end
            counters.reset()
            _train(STEP, method, steps)
            runs[steps] = (counters.syncs.copy(), counters.to_device.copy())
        syncs, copies = runs[4][0] - runs[2][0], runs[4][1] - runs[2][1]
        assert sum(syncs.values()) <= 2 * 2, f"{method}: {dict(syncs)} in two steps; the budget is 2 a step"
        assert syncs == {"get": 2}  # one a step: loss and gradient norm, read together
        assert copies == {"numpy array": 2 * 3}  # ids, targets, positions: host arrays copied once each

    @pytest.mark.parametrize("method", ["full", "lora"])
    def test_training_on_cupy_computes_what_numpy_computes(self, cupy_module, method):
        if not hasattr(cupy_module, "_core"):
            pytest.skip("a real CuPy draws other random numbers: the runs cannot match step by step")
        on_cupy = _train(STEP, method, 3)
        backend.set_backend("numpy")
        try:
            on_numpy = _train(STEP, method, 3)
        finally:
            backend.set_backend("cupy")
        # Same float32 arithmetic, another array library: only the order of the sums may differ. STEP's widest
        # reduction is the MLP's 4 x 32 = 128 inputs, through 2 layers and the head, over 3 steps whose errors
        # add (tolerances.py): 2 x 3 x 3 x gamma_128 of the loss; the gradient norm takes one more reduction.
        depth = 3 * (STEP.n_layer + 1)
        assert_close(on_cupy.losses, on_numpy.losses, n=4 * STEP.n_embd, depth=depth, what="losses")
        assert_close([r["grad_norm"] for r in on_cupy.steps], [r["grad_norm"] for r in on_numpy.steps],
                     n=4 * STEP.n_embd, depth=depth + 1, what="gradient norms")

    def test_divergence_is_caught_before_the_update(self):
        model = _model(STEP, "full")
        before = {name: backend.to_numpy(p.data).copy() for name, p in model.named_parameters()}
        model.transformer.ln_f.weight.data[...] = float("nan")  # the loss is NaN from the first step
        with pytest.raises(NonFiniteLossError, match="the loss is nan at step 0, before any update"):
            train(model, _batches(STEP), TrainConfig(max_steps=2, progress=False, eval_interval=0, warmup_steps=1))
        for name, p in model.named_parameters():
            if name != "transformer.ln_f.weight":
                np.testing.assert_array_equal(backend.to_numpy(p.data), before[name], err_msg=name)


# ---------------------------------------------------------------------------
# the claims that move device data, in quick mode at tiny sizes
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetune_env():
    from minilora.tasks import code_corpus, docstring_package_task

    cls_task = docstring_package_task(max_prompt_bytes=gpt.CLS_PROMPT_BYTES, per_class=20, block_size=64)
    return cls_task, code_corpus(max_bytes=40_000)


def _reportable(figures: dict, verdict: dict) -> dict:
    """The figures as results.json holds them (host values only: ``plain`` refuses a device array), judged."""
    plain(figures)
    assert verdict_range(verdict["verdict"])
    return figures


@pytest.mark.usefixtures("cupy_backend")
class TestClaimsOnCuPy:
    def test_cost_claims(self, tmp_path):
        small_toy = copy.copy(TOY)  # weights dominate the wide model at batch 1
        small_toy.cost_models = {"wide": GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=4, n_embd=256),
                                 "base": GPTConfig(vocab_size=128, block_size=64, n_layer=2, n_head=4, n_embd=64)}
        small_toy.cost_batches = {True: (1,)}
        with registered(small_toy):
            entry, section = claim_entry("memory", Session(quick=True, bases=("toy",)), tmp_path)
            assert entry["bases"]["toy"]["figures"]["max_error"] < memory.AGREEMENT  # the device trace agrees, as tracemalloc
            assert "memory hook" in section["body"] and "GPU" in section["body"]
            entry, _ = claim_entry("time", Session(quick=True, bases=("toy",)), tmp_path)
            assert "after a device sync" in entry["bases"]["toy"]["figures"]["results"][0]["clock"]
        session = Session(quick=True)
        minilora.manual_seed(0)
        figures = inference.measure(TOY, session, models={"tiny": GPT(TINY)}, batches=(1,), repeats=2, gen_tokens=2)
        assert _reportable(figures, inference.verdict(figures))["merge_error"] < inference.MERGE_TOLERANCE
        minilora.manual_seed(0)
        figures = lat.measure(TOY, session, models={"tiny": GPT(TINY)}, shapes={"tiny": ((1, 8),)}, repeats={"tiny": 2})
        _reportable(figures, lat.verdict(figures))

    def test_finetuning_claims(self, tmp_path, finetune_env):
        cls_task, corpus = finetune_env
        minilora.manual_seed(0)
        base = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
        session = session_for(True, cls_task, corpus, {"toy": toy_env(cls_task, corpus, base)})
        with registered(tiny_toy(steps=3)):
            for key in ("rank", "modularity"):
                entry, _ = claim_entry(key, session, tmp_path)
                assert verdict_range(entry["verdict"])
