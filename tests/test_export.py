"""ONNX export (minilora/export.py): the files pass ``onnx.checker``, run in onnxruntime and in
``onnx.reference.ReferenceEvaluator``, and give minilora's outputs.

How close. A float64 export computes the same operations as minilora, in the same order where
the graph allows: within 1e-10 relative to the largest output (measured ~1e-15). A float32
export is held to the error model of the reliability issue (#19's tests/tolerances.py, copied
in ``f32_bound`` until that lands): two float32 evaluations of the same network differ by at
most ``2 x depth x gamma_n x scale``, n the longest reduction on the way (the MLP's inner width,
the largest here), depth the layers plus embedding and head, scale the largest output.
BERT is compared on the positions the attention mask keeps: a padded position's output is
computed from nothing but padding and is never read.
"""

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx.reference import ReferenceEvaluator  # noqa: E402

from minilora.export import ExportError, to_onnx  # noqa: E402
from minilora.models import bert_hf  # noqa: E402
from minilora.peft import IA3Config, LoraConfig, PromptTuningConfig, get_peft_model  # noqa: E402
from minilora.quant import quantize_model  # noqa: E402
from bert_helpers import padded_batch, tiny_hf  # noqa: E402
from peft_helpers import assert_unchanged, ids, perturb_trainable, rel_err, snapshot, tiny_gpt, tiny_llama  # noqa: E402


def f32_bound(n: int, depth: int, scale: float) -> float:
    """tests/tolerances.py's ``bound`` (issue #19): 2 x depth x gamma_n(float32) x scale."""
    nu = n * np.finfo(np.float32).eps / 2
    return 2 * depth * nu / (1 - nu) * scale


ARCHS = ["gpt", "llama", "bert", "bert-cls"]


def base(arch, dtype):
    if arch == "gpt":
        return tiny_gpt(dtype=dtype)
    if arch == "llama":
        return tiny_llama(dtype=dtype)
    cls = "BertModel" if arch == "bert" else "BertForSequenceClassification"
    return bert_hf.from_transformers(tiny_hf(cls)).to(dtype)


def adapted(arch, dtype, **fields):
    model = get_peft_model(base(arch, dtype), LoraConfig(**{"r": 3, "init_lora_weights": False, **fields}))
    perturb_trainable(model)
    return model.eval()


def inputs(arch, batch=3, length=7, seed=0):
    if arch.startswith("bert"):
        lengths = np.random.default_rng(seed).integers(1, length + 1, size=batch)
        lengths[0] = length
        input_ids, types, mask = padded_batch(list(lengths), T=length, seed=seed)
        return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}
    return {"input_ids": ids(batch, length, seed=seed)}


def ours(model, feed):
    if "attention_mask" in feed:
        out = model(feed["input_ids"], feed["attention_mask"], feed["token_type_ids"])
        return (out[0] if isinstance(out, tuple) else out).numpy()
    return model(feed["input_ids"])[0].numpy()


def kept(arch, out, feed):
    """The outputs compared: BERT's hidden states at unmasked positions only."""
    return out[feed["attention_mask"].astype(bool)] if arch == "bert" else out


def session(path, dtype=np.float32):
    """An onnxruntime session on the CPU. For a float64 file, graph optimisations at the basic level
    only: the extended level fuses patterns into kernels that some releases compute in float32
    precision (LayerNorm, GELU: 1e-8 off in onnxruntime 1.29) or lack in float64 (FusedMatMul, 1.24)."""
    options = ort.SessionOptions()
    if dtype == np.float64:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def assert_matches(arch, dtype, got, expected, feed):
    got, expected = kept(arch, got, feed), kept(arch, expected, feed)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if dtype == np.float64:
        assert rel_err(got, expected) < 1e-10
    else:  # the widest reduction: the MLP's inner width (GPT 4C = 64, LLaMA 24, BERT 24); 2 layers + 2
        bound = f32_bound(64, depth=4, scale=float(np.max(np.abs(expected))))
        assert np.max(np.abs(got.astype(np.float64) - expected)) <= bound


@pytest.mark.parametrize("merged", [True, False], ids=["merged", "unmerged"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("arch", ARCHS)
def test_the_exported_graph_gives_minilora_s_outputs_in_onnxruntime_and_the_reference(arch, dtype, merged, tmp_path):
    model = adapted(arch, dtype)
    before = snapshot(model)
    path = tmp_path / "model.onnx"
    proto = to_onnx(model, path, merged=merged)  # onnx.checker ran inside
    assert_unchanged(model, before)  # merging was for the file only
    onnx.checker.check_model(str(path))
    assert [o.dim_param for o in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert max(o.version for o in proto.opset_import if o.domain == "") == 23
    lora_nodes = [t.name for t in proto.graph.initializer if ".lora_" in t.name]
    assert bool(lora_nodes) != merged  # the branch is in the file exactly when unmerged
    feed = inputs(arch)
    expected = ours(model, feed)
    assert_matches(arch, dtype, session(path, dtype).run(None, feed)[0], expected, feed)
    assert_matches(arch, dtype, ReferenceEvaluator(proto).run(None, feed)[0], expected, feed)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_file_runs_at_two_shapes(arch, tmp_path):
    model = adapted(arch, np.float64)
    to_onnx(model, tmp_path / "m.onnx", merged=False)
    s = session(tmp_path / "m.onnx", np.float64)
    for batch, length in ((2, 5), (4, 9)):
        feed = inputs(arch, batch, length, seed=batch)
        got = s.run(None, feed)[0]
        assert got.shape[0] == batch and rel_err(kept(arch, got, feed), kept(arch, ours(model, feed), feed)) < 1e-10


def test_a_bare_model_and_a_dora_adapter_merged_export_too(tmp_path):
    bare = tiny_gpt()
    feed = inputs("gpt")
    to_onnx(bare, tmp_path / "bare.onnx")
    assert rel_err(session(tmp_path / "bare.onnx", np.float64).run(None, feed)[0], ours(bare, feed)) < 1e-10
    dora = adapted("gpt", np.float64, use_dora=True, target_modules=["c_attn", "c_fc"])
    to_onnx(dora, tmp_path / "dora.onnx")
    assert rel_err(session(tmp_path / "dora.onnx", np.float64).run(None, feed)[0], ours(dora, feed)) < 1e-10
    with pytest.raises(ExportError, match=r"cannot express transformer\.h\.0\.attn\.c_attn's DoRA adapter 'default' "
                                          r"unmerged .*; export it with merged=True"):
        to_onnx(dora, tmp_path / "dora-unmerged.onnx", merged=False)
    assert not (tmp_path / "dora-unmerged.onnx").exists()


@pytest.mark.parametrize("merged", [False, True], ids=["4-bit base + LoRA branch", "merged dense"])
def test_an_nf4_base_runs_through_onnxruntime_s_matmulbnb4(merged, tmp_path):
    """QLoRA: the base's 4-bit codes and its double-quantized absmax (expanded to float32) go
    into com.microsoft.MatMulBnb4 with quant_type=1 (NF4). onnxruntime only: the reference
    evaluator has no com.microsoft operators. The bound: float32's, as above; the dequantized
    weights are the same numbers on both sides, only the order of the sums differs."""
    model = quantize_model(tiny_gpt(dtype=np.float32))  # blocks of 64, double quantization
    model = get_peft_model(model, LoraConfig(r=3, init_lora_weights=False, target_modules=["c_attn"]))
    perturb_trainable(model)
    proto = to_onnx(model, tmp_path / "q.onnx", merged=merged)
    bnb4 = [n for n in proto.graph.node if n.op_type == "MatMulBnb4"]
    assert len(bnb4) == (6 if merged else 8)  # c_attn merged becomes dense; c_proj, c_fc, mlp.c_proj stay 4-bit
    assert all(n.domain == "com.microsoft" and {a.name: a.i for a in n.attribute}["quant_type"] == 1 for n in bnb4)
    feed = inputs("gpt")
    assert_matches("gpt", np.float32, session(tmp_path / "q.onnx").run(None, feed)[0], ours(model, feed), feed)
    with pytest.raises(ExportError, match=r"4-bit NF4 layer, which onnxruntime's MatMulBnb4 runs in float32 only"):
        to_onnx(quantize_model(tiny_gpt()), tmp_path / "q64.onnx")


@pytest.mark.parametrize("method", ["prompt tuning", "ia3", "arrow"])
def test_a_module_the_exporter_cannot_express_is_named_and_no_file_is_left(method, tmp_path):
    if method == "arrow":
        from minilora.peft.arrow import ArrowConfig, add_arrow_router

        model = adapted("gpt", np.float64, target_modules=["c_attn"])
        model.add_adapter("other", LoraConfig(r=3, init_lora_weights=False, target_modules=["c_attn"]))
        add_arrow_router(model, ArrowConfig(top_k=1, rng_seed=0), ["default", "other"])
        message = r"cannot express transformer\.h\.0\.attn\.c_attn's Arrow router 'arrow_router': it routes token by token"
    elif method == "prompt tuning":
        model = get_peft_model(tiny_gpt(), PromptTuningConfig(num_virtual_tokens=3))
        message = r"cannot express prompt_encoder\.default \(PromptEmbedding\): PROMPT_TUNING puts trained virtual tokens"
    else:
        model = get_peft_model(tiny_gpt(), IA3Config())
        message = r"cannot express transformer\.h\.0\.attn\.c_attn \(IA3Linear\): only LoRA layers are exported"
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=message):
        to_onnx(model, path)
    assert os.listdir(tmp_path) == []  # no file, no temporary
    path.write_bytes(b"an older export")
    with pytest.raises(ExportError):
        to_onnx(model, path)
    assert path.read_bytes() == b"an older export" and os.listdir(tmp_path) == ["model.onnx"]
