"""The training loop and the shipped base model.

The loop: deterministic by seed, stops on a non-finite loss with a clear message,
trains only what requires grad, and writes checkpoints atomically. The base model:
it loads offline, reaches the validation loss recorded when it was trained (within
2%) and generates text.
"""

import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file

import minilora
from minilora.data import ByteTokenizer, build_corpus, get_batch
from minilora.models import GPT, GPTConfig
from minilora.pretrain import (BASE_CONFIG, BASE_DIR, LLAMA_BASE_CONFIG, LLAMA_BASE_DIR, base_config, base_dir, base_log,
                               load_base, prose_val_loss)
from minilora.train import NonFiniteLossError, TrainConfig, atomic_write, save_checkpoint, train

TINY = GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16)


def tiny_run(seed, steps=6, **overrides):
    minilora.manual_seed(seed)
    model = GPT(TINY)
    data = np.random.default_rng(0).integers(0, 256, size=4096).astype(np.uint8)
    config = TrainConfig(max_steps=steps, warmup_steps=2, eval_interval=3, seed=seed, progress=False, **overrides)
    history = train(model, lambda rng: get_batch(data, 4, 16, rng), config,
                    evaluate=lambda m: {"val_loss": float(m(data[None, :16], data[None, 1:17])[1].data)})
    return model, history


def test_two_runs_with_one_seed_give_identical_losses():
    _, a = tiny_run(seed=3)
    _, b = tiny_run(seed=3)
    _, c = tiny_run(seed=4)
    assert a.losses == b.losses
    assert a.evals == b.evals
    assert a.losses != c.losses


def test_training_lowers_the_loss_and_evaluates_periodically():
    _, history = tiny_run(seed=0, steps=30, lr=3e-3)
    assert np.mean(history.losses[-5:]) < np.mean(history.losses[:5])
    assert [row["step"] for row in history.evals] == list(range(3, 31, 3))
    assert len(history.steps) == 30 and history.seconds > 0


def test_an_evaluation_may_report_its_own_loss():
    minilora.manual_seed(0)
    model = GPT(TINY)
    data = np.random.default_rng(0).integers(0, 256, size=2048).astype(np.uint8)
    history = train(model, lambda rng: get_batch(data, 2, 16, rng), TrainConfig(max_steps=2, warmup_steps=1, progress=True),
                    evaluate=lambda m: {"loss": 1.0, "accuracy": 0.5})
    assert history.last_eval() == {"step": 2, "loss": 1.0, "accuracy": 0.5}


def test_a_non_finite_loss_stops_training_with_a_clear_message():
    with pytest.raises(NonFiniteLossError, match=r"the loss became (nan|inf) at step \d+"):
        tiny_run(seed=0, steps=20, lr=1e12, grad_clip=0.0)


def test_only_parameters_that_require_grad_are_trained():
    minilora.manual_seed(0)
    model = GPT(TINY)
    frozen = model.transformer.h[0].attn.c_attn.weight
    frozen.requires_grad_(False)
    before = frozen.data.copy()
    data = np.random.default_rng(0).integers(0, 256, size=2048).astype(np.uint8)
    train(model, lambda rng: get_batch(data, 2, 16, rng), TrainConfig(max_steps=3, warmup_steps=1, progress=False))
    assert np.array_equal(frozen.data, before)
    assert frozen.grad is None


def test_checkpoints_are_written_atomically(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    _, _ = tiny_run(seed=0, steps=6, checkpoint_path=str(path))
    saved = load_file(str(path))
    assert "transformer.wte.weight" in saved and "lm_head.weight" not in saved  # the tied head once
    good = path.read_bytes()

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(path), crash)
    assert path.read_bytes() == good  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temporary left behind


def test_checkpoint_metadata(tmp_path):
    minilora.manual_seed(0)
    model = GPT(TINY)
    save_checkpoint(model, str(tmp_path / "m.safetensors"), metadata={"step": 7, "val_loss": 1.5})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "np") as f:
        assert json.loads(f.metadata()["step"]) == 7


class Interrupted(Exception):
    """Stands in for a killed process: raised by the batch source part-way through a run."""


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_a_resumed_run_reaches_the_losses_of_an_uninterrupted_one(arch, tmp_path):
    """Interrupt a run after its second checkpoint, resume it: the losses, learning rates, evaluations
    and final weights equal, bit for bit, those of the same run never interrupted (AdamW's moments
    and step counts, the schedule's step and the batch generator all come back)."""
    from minilora.models import LlamaConfig, LlamaForCausalLM

    data = np.random.default_rng(0).integers(0, 256, size=4096).astype(np.uint8)

    def run(path, stop_at=None):
        minilora.manual_seed(5)
        model = GPT(TINY) if arch == "gpt" else LlamaForCausalLM(LlamaConfig(
            vocab_size=256, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=16, tie_word_embeddings=True))
        calls = []

        def batches(rng):
            if len(calls) == stop_at:
                raise Interrupted
            calls.append(1)
            return get_batch(data, 4, 16, rng)

        config = TrainConfig(max_steps=9, warmup_steps=3, eval_interval=3, seed=5, progress=False,
                             checkpoint_path=str(path), resume=True)
        history = train(model, batches, config, evaluate=lambda m: {"val_loss": float(m(data[None, :16], data[None, 1:17])[1].data)})
        return model, history

    whole, expected = run(tmp_path / "a.safetensors")
    with pytest.raises(Interrupted):
        run(tmp_path / "b.safetensors", stop_at=7)  # checkpoints after steps 3 and 6; step 7 is lost
    resumed, history = run(tmp_path / "b.safetensors")  # a fresh process: new model, new optimizer
    assert history.losses == expected.losses and len(history.losses) == 9
    assert [r["lr"] for r in history.steps] == [r["lr"] for r in expected.steps]
    assert history.evals == expected.evals
    for (name, p), q in zip(resumed.named_parameters(), whole.parameters()):
        assert np.array_equal(p.data, q.data), name


def test_resuming_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    tiny_run(seed=0, steps=6, checkpoint_path=str(path))
    with pytest.raises(ValueError, match=r"max_steps=6 there, 9 now"):
        tiny_run(seed=0, steps=9, checkpoint_path=str(path), resume=True)


def test_the_llama_base_has_the_gpt_base_s_budget_and_its_own_command(tmp_path):
    from minilora.cli import build_parser
    from minilora.pretrain import pretrain

    assert abs(LLAMA_BASE_CONFIG.num_parameters() / BASE_CONFIG.num_parameters() - 1) < 0.01
    assert LLAMA_BASE_CONFIG.block_size == BASE_CONFIG.block_size and LLAMA_BASE_CONFIG.vocab_size == BASE_CONFIG.vocab_size
    args = build_parser().parse_args(["pretrain", "--arch", "llama"])
    assert (args.arch, args.out, args.restart) == ("llama", None, False)
    with pytest.raises(FileNotFoundError, match="minilora pretrain --arch llama"):
        load_base(path=tmp_path, arch="llama")
    with pytest.raises(ValueError, match="arch must be one of gpt, llama, got 'bert'"):
        pretrain(out=tmp_path, arch="bert")


def test_pretrain_takes_the_context_and_the_batch_of_the_e2e_bases(tmp_path):
    from minilora.cli import build_parser
    from minilora.pretrain import pretrain

    args = build_parser().parse_args(["pretrain", "--arch", "llama", "--positions", "512", "--batch-size", "8"])
    assert (args.positions, args.batch_size) == (512, 8)
    log = pretrain(out=tmp_path, max_steps=1, batch_size=2, positions=24, arch="llama", progress=False)
    assert log["model"]["max_position_embeddings"] == 24 and log["train"]["batch_size"] == 2
    assert load_base(path=tmp_path, arch="llama", positions=24).config == base_config("llama", 24)
    with pytest.raises(ValueError, match="positions must be a positive int, got 0"):
        pretrain(out=tmp_path, positions=0)


# ---------------------------------------------------------------------------
# the shipped base model
# ---------------------------------------------------------------------------


# the shipped bases: (arch, positions) -> (config, folder); the 512-position ones serve the E2E benchmark
BASES = {("gpt", 128): (BASE_CONFIG, BASE_DIR), ("llama", 128): (LLAMA_BASE_CONFIG, LLAMA_BASE_DIR),
         ("gpt", 512): (base_config("gpt", 512), BASE_DIR.with_name("base_512")),
         ("llama", 512): (base_config("llama", 512), LLAMA_BASE_DIR.with_name("llama_base_512"))}


@pytest.mark.parametrize("arch,positions", BASES)
def test_the_base_model_ships_in_the_package_and_loads_offline(arch, positions):
    config, folder = BASES[arch, positions]
    assert base_dir(arch, positions) == folder
    assert (folder / "model.safetensors").stat().st_size <= 10 * 2**20
    assert not (folder / "training-checkpoint.safetensors").exists()  # a finished run leaves none
    model = load_base(arch=arch, positions=positions)
    assert model.config == config and model.config.block_size == positions
    assert model.num_parameters() == config.num_parameters()


@pytest.mark.parametrize("arch,positions", BASES)
def test_the_base_model_reaches_its_recorded_validation_loss(arch, positions):
    log = base_log(BASES[arch, positions][1])
    assert log.get("arch", "gpt") == arch  # the GPT base's log predates the field
    assert log["model"].get("block_size", log["model"].get("max_position_embeddings")) == positions
    corpus = build_corpus("prose")
    assert corpus.sha256 == log["corpus"]["sha256"], "the prose corpus differs from the one the model was trained on"
    loss = prose_val_loss(load_base(arch=arch, positions=positions), corpus)
    assert math.isfinite(loss)
    assert abs(loss - log["val_loss"]) <= 0.02 * log["val_loss"], (loss, log["val_loss"])
    # and it is far below the unigram entropy of the bytes: the model has learned English
    assert loss < 0.6 * math.log(256)


@pytest.mark.parametrize("arch,positions", BASES)
def test_the_base_model_generates_text(arch, positions):
    model = load_base(arch=arch, positions=positions)
    tok = ByteTokenizer()
    prompt = tok.encode("Return the ")[None]
    out = model.generate(prompt, max_new_tokens=60, temperature=0.8, top_k=40, seed=0)
    text = tok.decode(out.numpy()[0])
    assert text.startswith("Return the ") and len(text) >= 60
    words = text.split()
    letters = sum(c.isalpha() or c.isspace() for c in text) / len(text)
    assert letters > 0.8 and len(words) >= 8  # English-like: mostly letters, broken into words
