"""AdaLoRA's rank allocation against PEFT's, step by step, and its refusals.

``test_peft_methods.py`` checks AdaLoRA's forward, merge, files and gradients with the other
methods. Here: the budget schedule (exact integers at every step), the sensitivity EMAs and the
masks after k steps on identical gradients, the rank pattern and the file it shrinks, files with
a rank pattern crossing both ways, the orthogonality regulariser against its closed form, and
``minilora.train.train`` calling ``update_and_allocate`` itself. All in float64 on the tiny GPT-2
of ``peft_helpers.py`` (its projections are Conv1D in transformers, as in GPT-2).

How close is "equal": both sides hold the same float64 parameters and gradients (ours are copied
into PEFT's), and update them by the same ``p - 0.05 g``, bit for bit. The EMAs are then sums of a
few products: equal to a few units of 2^-53 relative (1e-12 asserted). The triplet scores are
means over rows (NumPy and torch sum in different orders, a few ulps apart), so a mask could only
differ on a tie within ~1e-15 relative -- none occurs with random data; the masks are compared exactly.
"""

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from safetensors.numpy import load_file  # noqa: E402

from minilora.models import to_transformers  # noqa: E402
from minilora.peft import AdaLoraConfig, PeftModel, get_peft_model  # noqa: E402
from minilora.train import TrainConfig, train  # noqa: E402
from peft_helpers import assert_edited_config_refused, assert_unchanged, ids, max_err, peft_logits, perturb_trainable, snapshot, tiny_gpt  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),
              pytest.mark.filterwarnings("ignore:Unexpected keyword arguments:UserWarning")]

# a schedule with every phase: tinit warm-up, the cubic fall masking every deltaT steps, the final phase
SCHEDULE = dict(init_r=4, target_r=2, tinit=2, tfinal=3, total_step=12, deltaT=2, beta1=0.8, beta2=0.7,
                lora_alpha=6, target_modules=["c_attn", "c_fc", "mlp.c_proj"], task_type="CAUSAL_LM")


def pair(tmp_path, fields=SCHEDULE):
    """Our random AdaLoRA model and PEFT's, loaded from our file for training (ranknum frozen, see
    ``test_peft_methods.RANKNUM``)."""
    ours = get_peft_model(tiny_gpt(), AdaLoraConfig(init_lora_weights=False, **copy.deepcopy(fields)))
    perturb_trainable(ours)
    ours.save_pretrained(tmp_path / "start")
    theirs = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), tmp_path / "start", is_trainable=True)
    for n, p in theirs.named_parameters():
        if ".ranknum." in n:
            p.requires_grad_(False)
    return ours, theirs


def step_both(ours, theirs, x, step: int) -> None:
    """One step on both sides with our gradients: p <- p - 0.05 g, then update_and_allocate(step)."""
    targets = np.concatenate([x[:, 1:], np.full((x.shape[0], 1), -100)], axis=1)
    _, loss = ours(x, targets)
    ours.base_model.model.zero_grad()
    loss.backward()
    theirs_params = dict(theirs.named_parameters())
    for n, p in ours.named_parameters():
        if p.requires_grad:
            q = theirs_params[n]
            q.grad = torch.tensor(p.grad)
            p.data = p.data - 0.05 * p.grad
            with torch.no_grad():
                q -= 0.05 * q.grad
    ours.base_model.update_and_allocate(step)
    theirs.base_model.update_and_allocate(step)


def strip(pattern: dict) -> dict:
    """PEFT's live rank_pattern keys carry the adapter's name; its files and minilora drop it."""
    return None if pattern is None else {k.removesuffix(".default"): v for k, v in pattern.items()}


@pytest.mark.parametrize("fields", [
    dict(init_r=12, target_r=8, tinit=0, tfinal=0, total_step=50, deltaT=1),  # the claim's setting
    dict(init_r=4, target_r=2, tinit=3, tfinal=4, total_step=17, deltaT=3),
    dict(init_r=5, target_r=1, tinit=10, tfinal=0, total_step=11, deltaT=1),  # one step of budgeting
    dict(init_r=3, target_r=3, total_step=9),  # nothing to take away
    dict(init_r=2, target_r=6, total_step=9),  # a budget that grows: PEFT accepts it, so do we
])
def test_the_budget_at_every_step_is_peft_s(fields):
    ours = get_peft_model(tiny_gpt(), AdaLoraConfig(target_modules=["c_attn", "c_fc"], **fields))
    theirs = peft.get_peft_model(to_transformers(tiny_gpt()), peft.AdaLoraConfig(target_modules=["c_attn", "c_fc"], **fields))
    allocator = theirs.base_model.rankallocator
    assert ours.base_model.rankallocator.init_bgt == allocator.init_bgt == 4 * fields["init_r"]
    for step in range(fields["total_step"] + 3):
        assert ours.base_model.rankallocator.budget_schedule(step) == allocator.budget_schedule(step), step
        assert isinstance(ours.base_model.budget(step), int)


def test_sensitivities_masks_and_rank_pattern_equal_peft_s_step_by_step(tmp_path):
    ours, theirs = pair(tmp_path)
    allocator, theirs_allocator = ours.base_model.rankallocator, theirs.base_model.rankallocator
    layers = dict(ours.base_model.svd_layers("default"))
    theirs_modules = dict(theirs.base_model.model.named_modules())
    masked_steps = 0
    for step in range(SCHEDULE["total_step"] + 2):
        step_both(ours, theirs, ids(seed=step), step)
        if step < SCHEDULE["total_step"] - SCHEDULE["tfinal"]:  # the EMAs (reset after the last allocation)
            assert set(allocator.exp_avg_ipt) == set(theirs_allocator.exp_avg_ipt)
            for n in allocator.exp_avg_ipt:
                for ours_ema, theirs_ema in ((allocator.exp_avg_ipt, theirs_allocator.exp_avg_ipt),
                                             (allocator.exp_avg_unc, theirs_allocator.exp_avg_unc)):
                    assert max_err(ours_ema[n], theirs_ema[n].numpy()) <= 1e-12 * np.abs(theirs_ema[n].numpy()).max(), (step, n)
        for name, layer in layers.items():  # λ after masking, entry by entry
            E = layer.lora_E["default"].numpy()
            assert max_err(E, theirs_modules[name].lora_E["default"].detach().numpy()) <= 1e-12, (step, name)
        pattern = ours.peft_config["default"].rank_pattern
        assert pattern == strip(theirs.peft_config["default"].rank_pattern), step
        budget, masks_now = allocator.budget_schedule(step)
        if masks_now and step <= SCHEDULE["total_step"] - SCHEDULE["tfinal"]:  # a new mask, within this step's budget
            assert sum(map(sum, pattern.values())) <= budget, step
            masked_steps += 1
    assert masked_steps >= 3
    final = ours.peft_config["default"].rank_pattern
    assert sum(map(sum, final.values())) == SCHEDULE["target_r"] * len(layers)  # the target budget, exactly
    assert len({sum(mask) for mask in final.values()}) > 1  # and not spread evenly: that is the point

    # the saved files: each matrix cut down to its kept triplets, the same arrays and config as PEFT's
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "peft")
    ours_t = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    peft_t = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert sorted(ours_t) == sorted(peft_t)
    for key, array in ours_t.items():
        assert array.shape == peft_t[key].shape and max_err(array, peft_t[key]) <= 1e-12, key
    for name, mask in final.items():
        assert ours_t[f"base_model.model.{name.removesuffix('.lora_E')}.lora_A"].shape[0] == sum(mask)
    ours_json = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_json = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert ours_json["rank_pattern"] == peft_json["rank_pattern"] == final


def test_adapters_with_a_rank_pattern_cross_both_ways(tmp_path):
    """A trained adapter's file holds rank-pattern-sized matrices; each side loads the other's
    (resizing its layers to the pattern, the scaling still alpha / init_r) to the same logits."""
    ours, theirs = pair(tmp_path)
    for step in range(SCHEDULE["total_step"]):
        step_both(ours, theirs, ids(seed=step), step)
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "peft")
    x = ids(seed=20)
    expected = peft_logits(theirs.eval(), x)
    assert max_err(ours(x)[0].numpy(), expected) < 1e-10
    loaded = PeftModel.from_pretrained(tiny_gpt(), tmp_path / "peft")
    assert max_err(loaded(x)[0].numpy(), expected) < 1e-10
    sizes = {n: layer.r["default"] for n, layer in loaded.base_model.svd_layers("default")}
    assert sizes == {n.removesuffix(".lora_E"): sum(m) for n, m in ours.peft_config["default"].rank_pattern.items()}
    back = peft.PeftModel.from_pretrained(to_transformers(tiny_gpt()), tmp_path / "ours").eval()
    assert max_err(peft_logits(back, x), expected) < 1e-10
    loaded.save_pretrained(tmp_path / "again")  # a resized adapter saves as it was loaded
    again, original = load_file(tmp_path / "again" / "adapter_model.safetensors"), load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert {k: v.tobytes() for k, v in again.items()} == {k: v.tobytes() for k, v in original.items()}


def test_the_orthogonality_regulariser_is_its_closed_form():
    """R = mean over the Q and P of every layer of ||Q Q^T - I||_F and ||P^T P - I||_F; zero for
    orthonormal vectors, and the loss is the model's plus orth_reg_weight R."""
    model = get_peft_model(tiny_gpt(), AdaLoraConfig(init_lora_weights=False, orth_reg_weight=0.3, **{
        k: v for k, v in SCHEDULE.items() if k != "orth_reg_weight"}))
    layers = model.base_model.svd_layers("default")
    terms = []
    for _, layer in layers:
        Q, P = layer.lora_A["default"].numpy(), layer.lora_B["default"].numpy()
        terms += [np.linalg.norm(Q @ Q.T - np.eye(len(Q))), np.linalg.norm(P.T @ P - np.eye(P.shape[1]))]
    R = model.base_model.orthogonal_regularizer("default").item()
    assert abs(R - np.mean(terms)) <= 1e-12 * R
    x = ids()
    targets = np.concatenate([x[:, 1:], np.full((x.shape[0], 1), -100)], axis=1)
    _, with_reg = model(x, targets)
    _, plain = model.base_model.model(x, targets)
    assert abs(with_reg.item() - plain.item() - 0.3 * R) <= 1e-12 * with_reg.item()
    for _, layer in layers:  # orthonormal Q rows and P columns: R = 0
        for part, transpose in ((layer.lora_A["default"], False), (layer.lora_B["default"], True)):
            M = part.numpy().T if transpose else part.numpy()
            U, _, Vh = np.linalg.svd(M, full_matrices=False)
            part.data = ((U @ Vh).T if transpose else U @ Vh).copy()
    assert model.base_model.orthogonal_regularizer("default").item() < 1e-13


def test_train_allocates_the_rank_itself():
    """``minilora.train.train`` calls update_and_allocate after each optimizer step: at the end the
    rank pattern keeps exactly target_r triplets per matrix on average, and every dropped λ is 0."""
    fields = dict(SCHEDULE, total_step=8, tinit=1, tfinal=2)
    model = get_peft_model(tiny_gpt(), AdaLoraConfig(**fields))
    x = ids(4, 12, seed=9)
    targets = np.concatenate([x[:, 1:], np.full((x.shape[0], 1), -100)], axis=1)
    train(model, lambda rng: (x, targets), TrainConfig(max_steps=8, lr=1e-2, warmup_steps=1, eval_interval=0, progress=False))
    pattern = model.peft_config["default"].rank_pattern
    layers = dict(model.base_model.svd_layers("default"))
    assert sum(map(sum, pattern.values())) == fields["target_r"] * len(layers)
    for name, mask in pattern.items():
        E = layers[name.removesuffix(".lora_E")].lora_E["default"].numpy()[:, 0]
        assert np.all(E[~np.array(mask)] == 0) and np.all(E[np.array(mask)] != 0)
    with pytest.raises(ValueError, match="checkpoint_path cannot be used with an AdaLoRA model"):
        train(model, lambda rng: (x, targets), TrainConfig(max_steps=2, checkpoint_path="never-written", progress=False))


def test_a_budget_at_or_above_the_start_masks_nothing_where_peft_raises():
    """target_r >= init_r is accepted by both; PEFT's torch.kthvalue then has no k-th value to take
    (k = init_bgt - budget <= 0) and raises at the first masking step; minilora masks nothing."""
    fields = dict(init_r=2, target_r=3, total_step=6, target_modules=["c_attn"])
    ours = get_peft_model(tiny_gpt(), AdaLoraConfig(init_lora_weights=False, **fields))
    theirs = peft.get_peft_model(to_transformers(tiny_gpt()), peft.AdaLoraConfig(**fields))
    x = ids()
    theirs(input_ids=torch.tensor(x), labels=torch.tensor(x)).loss.backward()
    with pytest.raises(RuntimeError, match="kthvalue"):
        theirs.base_model.update_and_allocate(1)
    targets = np.concatenate([x[:, 1:], np.full((x.shape[0], 1), -100)], axis=1)
    ours(x, targets)[1].backward()
    E = [layer.lora_E["default"].numpy().copy() for _, layer in ours.base_model.svd_layers("default")]
    for step in range(8):
        ours.base_model.update_and_allocate(step)
    assert all(all(mask) for mask in ours.peft_config["default"].rank_pattern.values())
    assert all(np.array_equal(e, layer.lora_E["default"].numpy()) for e, (_, layer) in zip(E, ours.base_model.svd_layers("default")))


# ---------------------------------------------------------------------------
# bad input: PEFT's ValueErrors, and the model as it was
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fields, ours_message, peft_message", [
    (dict(), r"AdaLoRA needs total_step, the number of training steps, as an int > 0; got None", "total_step"),
    (dict(total_step=0), r"as an int > 0; got 0", "total_step"),
    (dict(total_step=10, tinit=6, tfinal=4), r"tinit=6 >= total_step - tfinal = 10 - 4", "budgeting phase"),
    (dict(total_step=10, orth_reg_weight=-0.1), r"orth_reg_weight must be >= 0, got -0.1", "orth_reg_weight"),
])
def test_a_bad_schedule_is_refused_as_peft_refuses_it(fields, ours_message, peft_message):
    with pytest.raises(ValueError, match=peft_message):
        peft.AdaLoraConfig(**fields)
    with pytest.raises(ValueError, match=ours_message):
        AdaLoraConfig(**fields)
    assert_edited_config_refused(AdaLoraConfig(total_step=10), {"total_step": None, **fields}, ours_message)


def test_a_second_trainable_adapter_is_refused_and_changes_nothing():
    model = get_peft_model(tiny_gpt(), AdaLoraConfig(total_step=10, target_modules=["c_attn"]))
    before = snapshot(model)
    with pytest.raises(ValueError, match="AdaLoRA trains one adapter at a time and 'default' is trainable"):
        model.add_adapter("other", AdaLoraConfig(total_step=10, target_modules=["c_attn"]))
    assert_unchanged(model, before)
    model.add_adapter("other", AdaLoraConfig(total_step=10, target_modules=["c_attn"], inference_mode=True))
    assert model.base_model.trainable_adapter_name == "default"
    with pytest.raises(TypeError, match="AdaLoRA has no add_weighted_adapter"):
        model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "mix")
