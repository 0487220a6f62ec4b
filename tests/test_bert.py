"""BERT against Hugging Face transformers: the hidden states, every gradient, the padding mask, the files.

A tiny random ``transformers.BertConfig`` (vocab 50, width 16, 2 layers, 2 heads, 20
positions) is built by transformers itself, perturbed so that no bias or LayerNorm sits at
its initial 0 or 1, and saved; minilora loads that folder. Oracles: transformers' eager
BertModel / BertForSequenceClassification in float64 (values and autograd), and a
hypothesis property: padding a row never changes its tokens' states.
The real all-MiniLM-L6-v2 and PEFT are tested in ``test_bert_real.py`` and ``test_bert_peft.py``.
"""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from minilora.models import BertConfig, BertForSequenceClassification, BertModel, CheckpointError  # noqa: E402
from minilora.models import bert_hf  # noqa: E402
from minilora.tensor import Tensor  # noqa: E402
from bert_helpers import TINY, padded_batch, tiny_hf, torch_inputs  # noqa: E402
from peft_helpers import rel_err  # noqa: E402


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    tiny_hf().save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------
# the forward and backward against transformers, float64
# ---------------------------------------------------------------------------


def test_hidden_states_equal_transformers(tiny_folder):
    hf = transformers.BertModel.from_pretrained(tiny_folder, attn_implementation="eager", dtype=torch.float64).eval()
    ours = BertModel.from_pretrained(tiny_folder, dtype=np.float64)
    ids, types, mask = padded_batch([7, 3, 5, 1])
    h = ours(ids, mask, types).data
    with torch.no_grad():
        ref = hf(**torch_inputs(ids, types, mask)).last_hidden_state.numpy()
    assert h.shape == ref.shape == (4, 7, 16)
    assert rel_err(h, ref) < 1e-10  # measured ~5e-16


@pytest.mark.parametrize("cls_name", ["BertModel", "BertForSequenceClassification"])
def test_every_gradient_equals_transformers(cls_name):
    """Loss = sum(h * R) + sum(pooler(h) * S) for the encoder, cross-entropy for the classifier; every parameter's
    gradient within 1e-8 of torch's autograd."""
    hf = tiny_hf(cls_name)
    ours = bert_hf.from_transformers(hf)
    ids, types, mask = padded_batch([6, 2, 4])
    if cls_name == "BertModel":
        R, S = np.random.default_rng(1).standard_normal((3, 6, 16)), np.random.default_rng(2).standard_normal((3, 16))
        h = ours(ids, mask, types)
        ((h * Tensor(R)).sum() + (ours.pooler(h) * Tensor(S)).sum()).backward()
        out = hf(**torch_inputs(ids, types, mask))
        ((out.last_hidden_state * torch.tensor(R)).sum() + (out.pooler_output * torch.tensor(S)).sum()).backward()
    else:
        labels = np.array([0, 2, 1])
        _, loss = ours(ids, mask, types, labels=labels)
        loss.backward()
        ref = hf(**torch_inputs(ids, types, mask), labels=torch.tensor(labels)).loss
        ref.backward()
        assert abs(loss.item() - ref.item()) < 1e-12
    theirs = {k: p for k, p in hf.named_parameters()}
    ours_params = dict(ours.named_parameters())
    assert set(ours_params) == set(theirs)  # Hugging Face's names, one to one
    for name, p in ours_params.items():
        ref = theirs[name].grad.numpy()
        assert p.grad is not None, name
        # relative to the gradient's largest entry, or absolute where a gradient is ~0 in exact
        # arithmetic (the key bias: softmax ignores a shift of a row's scores); measured ~1e-15 relative
        assert np.max(np.abs(p.grad - ref)) <= 1e-8 * max(np.max(np.abs(ref)), 1.0), name


@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4), extra=st.integers(0, 4), seed=st.integers(0, 99))
def test_padding_never_changes_a_rows_tokens(tiny_folder, lengths, extra, seed):
    """Each row of a padded batch (padded to its longest + ``extra``) equals that row run alone, unpadded."""
    model = _tiny_model(tiny_folder)
    ids, types, mask = padded_batch(lengths, T=max(lengths) + extra, seed=seed)
    h = model(ids, mask, types).data
    for i, n in enumerate(lengths):
        alone = model(ids[i:i + 1, :n], np.ones((1, n), dtype=np.int64), types[i:i + 1, :n]).data
        np.testing.assert_allclose(h[i, :n], alone[0], rtol=0, atol=1e-12)


_models = {}


def _tiny_model(folder):  # hypothesis runs the property many times: load once
    if folder not in _models:
        _models[folder] = BertModel.from_pretrained(folder, dtype=np.float64)
    return _models[folder]


def test_dropout_only_in_training():
    model = bert_hf.from_transformers(tiny_hf())
    ids, types, mask = padded_batch([5, 5])
    assert np.array_equal(model(ids, mask, types).data, model(ids, mask, types).data)
    model.train()
    assert not np.array_equal(model(ids, mask, types).data, model(ids, mask, types).data)


# ---------------------------------------------------------------------------
# files: minilora's save loads in transformers, and a classifier from a bare encoder
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [BertModel, BertForSequenceClassification])
def test_save_pretrained_loads_in_transformers(cls, tiny_folder, tmp_path):
    ours = cls.from_pretrained(tiny_folder, dtype=np.float64)
    ours.save_pretrained(tmp_path)
    hf = getattr(transformers, cls.__name__).from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert hf.dtype == torch.float64
    ids, types, mask = padded_batch([4, 6])
    with torch.no_grad():
        out = hf(**torch_inputs(ids, types, mask))
    if cls is BertModel:
        assert rel_err(ours(ids, mask, types).data, out.last_hidden_state.numpy()) < 1e-12
    else:
        assert hf.config.num_labels == ours.num_labels == 2
        assert rel_err(ours(ids, mask, types)[0].data, out.logits.numpy()) < 1e-12
    again = cls.from_pretrained(tmp_path, dtype=np.float64)  # and back
    for (k, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert np.array_equal(a, b), k


def test_classifier_from_a_bare_encoder_keeps_the_encoder(tiny_folder):
    enc = BertModel.from_pretrained(tiny_folder, dtype=np.float64)
    clf = BertForSequenceClassification.from_pretrained(tiny_folder, num_labels=5, dtype=np.float64)
    for k, v in enc.state_dict().items():
        assert np.array_equal(clf.state_dict()["bert." + k], v), k
    assert clf.classifier.weight.shape == (5, 16)
    ids, types, mask = padded_batch([3, 4])
    logits, loss = clf(ids, mask, types, labels=np.array([4, 0]))
    assert logits.shape == (2, 5) and np.isfinite(loss.item())


def test_num_parameters_closed_form(tiny_folder):
    model = BertModel.from_pretrained(tiny_folder)
    assert model.num_parameters() == BertConfig(**TINY).num_parameters()
    assert BertConfig.preset("all-MiniLM-L6-v2").num_parameters() == 22_713_216  # the 22.7M
    assert BertConfig.preset("bert-base").num_parameters() == 109_482_240  # BERT-base's 110M


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_attention_mask_of_the_wrong_shape_names_both_shapes(tiny_folder):
    model = _tiny_model(tiny_folder)
    ids, types, mask = padded_batch([4, 5])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\).*input_ids has shape \(2, 5\)"):
        model(ids, mask[:, :4])
    with pytest.raises(ValueError, match="token_type_ids has shape"):
        model(ids, mask, types[:1])
    with pytest.raises(ValueError, match="1 .*and 0 .*only"):
        model(ids, mask * 2)


def test_input_longer_than_the_positions_is_an_error(tiny_folder):
    model = _tiny_model(tiny_folder)
    with pytest.raises(ValueError, match="21 positions, more than max_position_embeddings=20.*truncation=True"):
        model(np.ones((1, 21), dtype=np.int64))


def test_checkpoint_that_does_not_fit_names_key_and_shapes(tiny_folder, tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(tiny_folder / "model.safetensors")
    tensors["encoder.layer.0.attention.self.query.weight"] = np.zeros((16, 8))
    del tensors["encoder.layer.1.output.dense.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((tiny_folder / "config.json").read_text())
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError) as err:
        BertModel.from_pretrained(tmp_path)
    message = str(err.value)
    assert "'encoder.layer.0.attention.self.query.weight' has shape (16, 8)" in message and "(16, 16)" in message
    assert "encoder.layer.1.output.dense.bias" in message
    assert (tmp_path / "model.safetensors").read_bytes() == before  # the user's file as it was


def test_unsupported_config_is_refused(tiny_folder, tmp_path):
    hf = json.loads((tiny_folder / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes((tiny_folder / "model.safetensors").read_bytes())
    for field, value in (("position_embedding_type", "relative_key"), ("hidden_act", "relu"), ("is_decoder", True),
                         ("hidden_size", "16"), ("hidden_dropout_prob", [0.1]), ("num_hidden_layers", 2.0)):
        (tmp_path / "config.json").write_text(json.dumps({**hf, field: value}))
        with pytest.raises(CheckpointError, match=field):
            BertModel.from_pretrained(tmp_path)


def test_config_and_labels_are_checked():
    with pytest.raises(ValueError, match="hidden_size=10 must be divisible by num_attention_heads=3"):
        BertConfig(hidden_size=10, num_attention_heads=3)
    with pytest.raises(ValueError, match="num_labels must be a positive int"):
        BertForSequenceClassification(BertConfig(**TINY), num_labels=0)
    model = BertForSequenceClassification(BertConfig(**TINY), num_labels=3)
    ids = np.ones((2, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\) = \(2,\)"):
        model(ids, labels=np.zeros((2, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="integer class ids"):
        model(ids, labels=np.zeros(2))
