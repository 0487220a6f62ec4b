"""Many adapters on one base, and the exported graph: ``python benchmarks/serving.py`` (part of ``make bench``).

Not a test -- timings on a shared machine are noisy, so nothing here asserts; every figure
is a median over rounds that call each contender in turn (``bench.interleaved_times``),
in one process, on the threads the caller allows (run it as
``OMP_NUM_THREADS=1 nice python benchmarks/serving.py`` on a shared machine; the load
average is recorded before and after).

``serving``: the shipped base GPT (4 layers, width 128, 0.8M parameters) with N = 1, 2, 8,
32, 128 LoRA adapters loaded (r = 8 on ``c_attn``, random weights). Each batch holds 32
requests whose adapters are drawn uniformly from the N (so at most 32 distinct), plus one
batch of 128 requests at N = 128. Tokens per second of one forward pass, in two shapes: a
prefill (32 tokens a request) and a decode step (1 token a request: the shape of one step of
generation, here without the KV cache, so that only the adapters' cost differs), by:

* ``gathered``: minilora's mixed batch with the BGMV kernel (``peft/gathered.py``);
* ``loop``: the same with the loop over the batch's adapters (``mixed_batch_kernel="loop"``);
* ``merge``: merging per request -- for each request, its adapter merged into W, the
  request run alone, the adapter unmerged;
* ``peft``: PEFT's mixed batch (``adapter_names=``) over transformers' GPT-2 in torch, the
  same weights.

S-LoRA's figures (Sheng et al., 2023, Llama-13B on an A100, 1,000 adapters in its pool)
are quoted beside ours in docs/serving.md with the difference in scale.

``onnx``: the base with a LoRA adapter exported by ``minilora.export.to_onnx``, merged and
unmerged, and with a 4-bit NF4 base (``MatMulBnb4``): file sizes, and the latency of one
forward pass at batch 8 x 128 in onnxruntime against minilora and torch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import bench  # noqa: E402  (the timing helpers and the table)
import minilora  # noqa: E402

SECTIONS = {}

ADAPTER_COUNTS = (1, 2, 8, 32, 128)
BATCH, BIG_BATCH = 32, 128
PHASES = {"prefill": 32, "decode step": 1}  # tokens a request
REPEATS = {"prefill": 1, "decode step": 8}  # forwards a timed call (merging per request: one batch a call)
RANK, TARGETS = 8, ["c_attn"]
ROUNDS = 5
ONNX_BATCH = (8, 128)

# S-LoRA's Table (Sheng et al., 2023, sec. 7): throughput in requests/s on Llama-13B, A100 80GB
S_LORA = {"S-LoRA": {2: 4.49, 1000: 3.90}, "PEFT": {2: 0.54, 100: 0.13}}


def section(name):
    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register


def with_adapters(n: int, torch):
    """(minilora's base with adapters a0 .. a{n-1}, PEFT's transformers twin with the same weights)."""
    import peft

    from minilora.models import to_transformers
    from minilora.peft import LoraConfig, get_peft_model
    from minilora.pretrain import load_base

    minilora.manual_seed(n)
    config = dict(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS)
    ours = get_peft_model(load_base(), LoraConfig(init_lora_weights=False, **config), adapter_name="a0")
    for i in range(1, n):
        ours.add_adapter(f"a{i}", LoraConfig(init_lora_weights=False, **config))
    theirs = peft.get_peft_model(to_transformers(load_base()), peft.LoraConfig(fan_in_fan_out=True, **config),
                                 adapter_name="a0")
    for i in range(1, n):
        theirs.add_adapter(f"a{i}", peft.LoraConfig(fan_in_fan_out=True, **config))
    modules = dict(theirs.base_model.model.named_modules())
    with torch.no_grad():
        for name, layer in ours.base_model.lora_layers():
            twin = modules[name]
            for adapter in layer.lora_A:
                twin.lora_A[adapter].weight.copy_(torch.from_numpy(layer.lora_A[adapter].weight.data))
                twin.lora_B[adapter].weight.copy_(torch.from_numpy(layer.lora_B[adapter].weight.data))
    return ours.eval(), theirs.eval()


def set_kernel(model, kernel: str) -> None:
    for _, layer in model.base_model.lora_layers():
        layer.mixed_batch_kernel = kernel


def contenders(ours, theirs, torch, n: int, batch: int, phase: str, seed: int) -> tuple:
    """(the four paths as callables, the batch's description): one batch of ``batch`` requests whose
    adapters are drawn from the ``n`` loaded."""
    rng = np.random.default_rng(seed)
    names = [f"a{i}" for i in rng.integers(0, n, size=batch)]
    x = rng.integers(0, 256, size=(batch, PHASES[phase]))
    xt = torch.tensor(x)
    reps = REPEATS[phase]  # a short forward is repeated, so that one scheduling hiccup is not the whole call

    def mixed(kernel):
        def run():
            set_kernel(ours, kernel)
            for _ in range(reps):
                ours(x, adapter_names=names)
        return run

    def merge():
        for i, name in enumerate(names):
            ours.set_adapter(name)
            ours.merge_adapter()
            ours(x[i:i + 1])
            ours.unmerge_adapter()

    def peft_mixed():
        with torch.no_grad():
            for _ in range(reps):
                theirs(input_ids=xt, adapter_names=names)

    fns = {"gathered": mixed("bgmv"), "loop": mixed("loop"), "merge": merge, "peft": peft_mixed}
    tokens = {k: x.size * (1 if k == "merge" else reps) for k in fns}  # per call
    return fns, {"phase": phase, "adapters": n, "batch": batch, "distinct": len(set(names)), "tokens": tokens}


@section("serving")
def bench_serving(torch, counts=ADAPTER_COUNTS, rounds=ROUNDS):
    """Tokens/s of a mixed-adapter batch against the number of adapters: gathered, loop, merge per request, PEFT."""
    models = {n: with_adapters(n, torch) for n in counts}
    rows = []
    for phase in PHASES:
        # every N and path of a phase timed in the same interleaved rounds, so that the machine's
        # load falls on all of them alike: the figures can be compared across N, not only across paths
        batches = [(n, BATCH) for n in counts] + [(max(counts), BIG_BATCH)]
        fns, meta = {}, {}
        for n, batch in batches:
            paths, meta[(n, batch)] = contenders(*models[n], torch, n, batch, phase, seed=n + batch)
            fns.update({(n, batch, path): fn for path, fn in paths.items()})
        with minilora.no_grad():
            t = bench.interleaved_times(fns, rounds=rounds, warmup=1)
        for n, batch in batches:
            m = meta[(n, batch)]
            speed = {path: m["tokens"][path] / t[(n, batch, path)] for path in m["tokens"]}
            rows.append({"name": f"{phase}, N={n:>3} adapters, batch {batch}: tokens/s", "minilora": speed["gathered"],
                         "torch": speed["peft"], "unit": "tok/s", "ratio": speed["gathered"] / speed["peft"],
                         **{k: v for k, v in m.items() if k != "tokens"},
                         **{f"{path}_tokens_per_s": v for path, v in speed.items()}})
            print(f"  {rows[-1]['name']}: " + ", ".join(f"{path} {v:.0f}" for path, v in speed.items()), flush=True)
        first = next(r for r in rows if r["phase"] == phase)  # N = 1's: the aim is >= 0.8 of it at N = 128
        for r in rows[-len(batches):]:
            r.update({f"{path}_vs_first": r[f"{path}_tokens_per_s"] / first[f"{path}_tokens_per_s"]
                      for path in ("gathered", "loop", "merge", "peft")})
    for n, (ours, _) in models.items():
        set_kernel(ours, "bgmv")
    return rows


@section("onnx")
def bench_onnx(torch, batch=ONNX_BATCH, rounds=ROUNDS):
    """The exported base + LoRA (merged, unmerged, NF4): file sizes, and onnxruntime's latency against minilora and torch."""
    import onnxruntime as ort

    from minilora.export import to_onnx
    from minilora.peft import LoraConfig, get_peft_model
    from minilora.pretrain import load_base
    from minilora.quant import quantize_model

    rows = []
    minilora.manual_seed(0)

    def config():
        return LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS, init_lora_weights=False)

    ours = get_peft_model(load_base(), config()).eval()
    qlora = get_peft_model(quantize_model(load_base()), config()).eval()  # QLoRA: a 4-bit base
    merged_torch = _torch_twin(ours, torch)
    x = np.random.default_rng(0).integers(0, 256, size=batch)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        files = {"merged": (ours, True), "unmerged": (ours, False), "NF4 base + LoRA": (qlora, False)}
        sessions, sizes = {}, {}
        for label, (model, merged) in files.items():
            path = Path(tmp) / f"{label.replace(' ', '_')}.onnx"
            to_onnx(model, path, merged=merged)
            sizes[label] = path.stat().st_size
            sessions[label] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        checkpoint = Path(tmp) / "ckpt"
        load_base().save_pretrained(checkpoint)
        sizes["safetensors checkpoint (base)"] = (checkpoint / "model.safetensors").stat().st_size
    for label, size in sizes.items():
        rows.append({"name": f"ONNX file: {label} (KB)", "minilora": size / 1024, "torch": float("nan"), "unit": "KB",
                     "ratio": size / sizes["merged"]})
    xt = torch.tensor(x)
    fns = {"minilora unmerged": lambda: ours(x), "minilora NF4 + LoRA": lambda: qlora(x),
           "torch merged": lambda: merged_torch(input_ids=xt)}
    fns.update({f"onnxruntime {label}": (lambda s=s: s.run(None, {"input_ids": x})) for label, s in sessions.items()})
    with minilora.no_grad(), torch.no_grad():
        t = bench.interleaved_times(fns, rounds=rounds, warmup=2)
    for label, seconds in t.items():
        rows.append({"name": f"forward {batch[0]}x{batch[1]}: {label} (ms)", "minilora": seconds * 1e3,
                     "torch": t["torch merged"] * 1e3, "unit": "ms", "ratio": seconds / t["torch merged"],
                     "vs_minilora": seconds / t["minilora unmerged"]})
    return rows


def _torch_twin(peft_model, torch):
    """transformers' GPT-2 holding the adapter merged (the stronger torch baseline for one adapter)."""
    import copy

    from minilora.models import to_transformers

    return to_transformers(copy.deepcopy(peft_model).merge_and_unload()).eval()


def plot(rows, path) -> None:
    """Tokens/s against the number of adapters, one line per path, a panel per phase (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    serving = [r for r in rows if "gathered_tokens_per_s" in r]
    if not serving:
        return
    phases = list(dict.fromkeys(r["phase"] for r in serving))
    fig, axes = plt.subplots(1, len(phases), figsize=(6 * len(phases), 4.2), squeeze=False)
    for ax, phase in zip(axes[0], phases):
        for key, label in (("gathered", "gathered (BGMV)"), ("loop", "loop over adapters"),
                           ("merge", "merge per request"), ("peft", "PEFT mixed batch (torch)")):
            line, = ax.plot(*_points(serving, phase, BATCH, key), marker="o", label=label)
            ax.plot(*_points(serving, phase, BIG_BATCH, key), marker="s", linestyle="none", color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("adapters loaded (N)")
        ax.set_ylabel("tokens / s")
        ax.set_title(f"{phase} ({PHASES[phase]} token{'s' * (PHASES[phase] > 1)} a request)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"batches of {BATCH} requests (circles) and {BIG_BATCH} (squares); base GPT 0.8M, LoRA r={RANK}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _points(rows, phase, batch, key) -> tuple:
    chosen = [r for r in rows if r["phase"] == phase and r["batch"] == batch]
    return [r["adapters"] for r in chosen], [r[f"{key}_tokens_per_s"] for r in chosen]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--out", default=None, help="folder for the JSON and the plot (default benchmarks/results)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"timing rounds per figure (default {ROUNDS})")
    args = parser.parse_args(argv)
    import torch

    unknown = [s for s in args.only.split(",") if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    load_before = os.getloadavg()
    rows = []
    for name in args.only.split(","):
        print(f"# {name}: {SECTIONS[name].__doc__.strip().splitlines()[0]}", flush=True)
        rows += SECTIONS[name](torch, rounds=args.rounds)
    bench.print_table(rows)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path(__file__).parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "load_before": load_before,
                    "load_after": os.getloadavg()},
        "versions": {"minilora": minilora.__version__, "numpy": np.__version__, "torch": torch.__version__},
        "s_lora": S_LORA,
        "rows": rows,
    }
    (out / f"serving-{stamp}.json").write_text(json.dumps(result, indent=1))
    plot(rows, out / f"serving-{stamp}.png")
    print(f"wrote {out / f'serving-{stamp}.json'} and the plot beside it")
    return result


if __name__ == "__main__":
    main()
