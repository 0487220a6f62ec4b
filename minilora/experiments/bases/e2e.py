"""One E2E NLG run: fine-tune a 512-position base on the E2E pairs, write for every test MR, score it.

The LoRA paper's GPT-2 experiment (its sec. 5.4 and Table 3) in miniature: the same data set
(minilora ships its development and test sets; the 42k-pair training set is not available here,
so training uses the development set's pairs, ``minilora.tasks.e2e_task``), the same methods
and the same metrics, on minilora's 0.84M-parameter bases with 512 byte positions
(``minilora/checkpoints/base_512``, ``llama_base_512``) instead of GPT-2 Medium and Large.

    result = run_e2e(E2ESpec(base="gpt", method="lora", size=4, seed=0, lr=3e-3))
    result["val_loss"], result["scores"]["bleu"]["score"], result["generations"][:3]

The methods (``METHODS``), each on the query and value side where the paper puts it:

    full      every weight
    lora      rank-``size`` updates of W_q and W_v, alpha = 2 r: on GPT-2 the q and v slices of the
              fused c_attn (``enable_lora=[True, False, True]``, as the paper's own code does; PEFT
              has no such option -- minilora saves the adapter as PEFT's c_attn adapter of rank 2 r
              whose B is zero outside its q and v blocks, which PEFT loads and computes identically,
              but would not keep q-and-v-only if it trained it further), on LLaMA q_proj and v_proj
    houlsby   bottleneck adapters of width ``size`` after attention and after the MLP (Adapter^H)
    prefix    ``size`` trained keys and values in front of every layer (Li & Liang's prefix tuning:
              the paper's PreLayer, trained activations at every layer)
    ia3       PEFT's (IA)^3 on GPT-2: scales on c_attn's output and mlp.c_proj's input (not in
              the paper's table, which predates it)

LLaMA runs take full fine-tuning and LoRA only (the E2E table's judged comparison); the other
methods are descriptive rows on the GPT base.

One epoch at batch 8 (``steps=None``), AdamW with the project's warm-up and cosine schedule,
the loss on the reference bytes and the end marker only. Decoding is greedy and batched
(``minilora.models.decoding``), stopping at the end marker ``\\n`` or ``MAX_NEW_TOKENS``; the paper
used beam search of width 10. Bytes become text with ``errors="replace"`` (a byte cap can cut a
UTF-8 character), and a generated line break other than the end marker (``\\r``, ...) becomes a
space, so that the output file holds exactly one line per test MR.

A run is ``train_e2e`` (the trained model, and its figures up to the validation loss, which the
failure rule reads) then ``measure_test`` (decode the test MRs, score them); ``run_e2e`` does both.
The section that chooses learning rates trains candidates with ``train_e2e`` alone and decodes only
the chosen one. Nothing here judges: the verdict belongs to ``experiments/claims/e2e.py``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import minilora
from minilora.experiments.bases import gpt_methods as M
from minilora.experiments.bases.gpt import TARGETS
from minilora.experiments.runs import ALPHA_PER_RANK
from minilora.io import atomic_write
from minilora.models.decoding import greedy_decode
from minilora.nlg_metrics import score_corpus
from minilora.peft import LoraConfig, get_peft_model
from minilora.pretrain import SHIPPED_SHA256, base_dir, load_base
from minilora.tasks import E2E_END, e2e_task
from minilora.train import TrainConfig, evaluate_loss, train

POSITIONS = 512  # the E2E bases' context: an E2E row runs to 545 bytes (a few are cut)
METHODS = ("full", "lora", "houlsby", "prefix", "ia3")
BASES = {"gpt": "base_512 (GPT-2)", "llama": "llama_base_512 (LLaMA)"}
LORA_TARGETS = {"gpt": "Wq+Wv", "llama": "q_proj+v_proj"}  # keys of experiments.bases.gpt.TARGETS
MAX_NEW_TOKENS = 320  # the generation cap (bytes): all 4,693 test references but one are shorter
BATCH_SIZE = 8  # the paper's batch
WARMUP_FRACTION = 0.05  # of the run's steps
WEIGHT_DECAY = {"ia3": 0.0}  # as the GPT bases' METHOD_WEIGHT_DECAY: a decayed (IA)^3 scale is pulled towards 0, not 1
DECODE_BATCH = 32  # test MRs decoded together
# Quick mode: a few steps, a handful of MRs -- the figures are rough, for a notebook or a test.
QUICK = dict(steps=30, val_pairs=32, test_mrs=8, max_new_tokens=96)  # a quick sentence is cut at 96 bytes


@dataclass(frozen=True)
class E2ESpec:
    """One E2E run. Frozen, so that it can key a cache of runs."""

    base: str = "gpt"  # "gpt" (base_512) or "llama" (llama_base_512)
    method: str = "lora"  # one of METHODS
    size: int | None = 4  # LoRA's r, the adapters' bottleneck m, prefix tuning's P; None for full and ia3
    seed: int = 0  # the adapter's init, the order of the pairs
    lr: float = 3e-3  # the peak learning rate
    steps: int | None = None  # None: one epoch at batch_size
    quick: bool = False  # QUICK's sizes: steps, validation pairs and test MRs cut down
    batch_size: int = BATCH_SIZE

    def __post_init__(self):
        if self.base not in BASES:
            raise ValueError(f"E2ESpec.base must be one of {', '.join(BASES)}, got {self.base!r}")
        if self.method not in METHODS:
            raise ValueError(f"E2ESpec.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.base == "llama" and self.method not in ("full", "lora"):
            raise ValueError(f"E2ESpec: method {self.method!r} runs on the GPT base only (LLaMA: full, lora)")
        M.check(self.method, self.size)
        if M.SIZE_NAMES.get(self.method) is None and self.size is not None:
            raise ValueError(f"E2ESpec: {self.method} has no size; pass size=None, got {self.size!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"E2ESpec.lr must be a positive number, got {self.lr!r}")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"E2ESpec.{name} must be a positive int{' or None (one epoch)' if name == 'steps' else ''}, "
                                 f"got {value!r}")

    def label(self) -> str:
        """E.g. "gpt lora r=4 seed 0 lr 0.003"."""
        return " ".join(filter(None, [self.base, self.method, M.size_label(self.method, self.size),
                                      f"seed {self.seed} lr {self.lr:g}"]))


def base_folder(arch: str) -> str:
    """The shipped folder of ``arch``'s 512-position base: "base_512" or "llama_base_512"."""
    return base_dir(arch, POSITIONS).name


def run_identity(spec: E2ESpec, task) -> dict:
    """What decides ``spec``'s figures besides the spec itself and the code: the base's weights (the sha256
    ``load_base`` checks them against) and the data (``task.meta``: the E2E files' sha256 and the split)."""
    return {"base_model_sha256": SHIPPED_SHA256[base_folder(spec.base)], "e2e_task": task.meta}


def peft_config(spec: E2ESpec):
    """The method's config on the spec's base; None for full fine-tuning."""
    if spec.method == "full":
        return None
    if spec.method == "lora":
        return LoraConfig(r=spec.size, lora_alpha=ALPHA_PER_RANK * spec.size, **TARGETS[LORA_TARGETS[spec.base]])
    return M.peft_config(spec.method, spec.size)


def build_model(spec: E2ESpec):
    """The base, with the method's adapter drawn right after ``minilora.manual_seed(spec.seed)``."""
    model = load_base(arch=spec.base, positions=POSITIONS)
    minilora.manual_seed(spec.seed)
    config = peft_config(spec)
    return model if config is None else get_peft_model(model, config)


def text(ids) -> str:
    """Generated byte ids as one line of text: UTF-8 with errors="replace", line breaks made spaces."""
    return " ".join(bytes(ids).decode("utf-8", errors="replace").splitlines())


def quick_sizes(spec: E2ESpec, task) -> tuple:
    """(steps, validation pairs, test MRs) of ``spec``'s run: one epoch and every pair and MR, or QUICK's."""
    steps = spec.steps or math.ceil(len(task.train) / spec.batch_size)
    if spec.quick:
        return min(steps, QUICK["steps"]), task.val[: QUICK["val_pairs"]], task.test_mrs[: QUICK["test_mrs"]]
    return steps, task.val, task.test_mrs


def block(spec: E2ESpec) -> int:
    """The real tokens' share of the positions (prefix tuning's virtual tokens take the rest)."""
    return POSITIONS - (spec.size if spec.method == "prefix" else 0)


def val_loss(model, spec: E2ESpec, task) -> float:
    """Nats per reference byte on the validation pairs (QUICK's few in quick mode)."""
    return evaluate_loss(model, task.batches(quick_sizes(spec, task)[1], spec.batch_size, block(spec)))


def untuned_val_loss(base: str, quick: bool = False, task=None) -> float:
    """The untuned base's validation loss: the failure rule's floor (a run that ends no better fails)."""
    task = task or e2e_task()
    return val_loss(load_base(arch=base, positions=POSITIONS), E2ESpec(base=base, method="full", size=None, quick=quick), task)


def train_e2e(spec: E2ESpec, progress: bool = False, task=None) -> tuple:
    """Train ``spec``'s run: (the trained model, its figures before the test split is read -- ``spec``,
    ``trainable`` and ``total`` parameters, ``steps``, ``train_losses``, ``train_seconds``, ``val_loss``)."""
    task = task or e2e_task()
    model = build_model(spec)
    steps, _, _ = quick_sizes(spec, task)
    epochs = iter(())

    def batches(rng):  # the training pairs in a fresh shuffled order each epoch
        nonlocal epochs
        batch = next(epochs, None)
        if batch is None:
            epochs = task.epoch_batches(spec.batch_size, block(spec), rng)
            batch = next(epochs)
        return batch

    config = TrainConfig(max_steps=steps, lr=spec.lr, warmup_steps=max(1, round(WARMUP_FRACTION * steps)),
                         weight_decay=WEIGHT_DECAY.get(spec.method, 0.1), eval_interval=0, seed=spec.seed,
                         progress=progress, desc=spec.label())
    history = train(model, batches, config)
    return model, {
        "spec": asdict(spec),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "train_losses": history.losses,
        "train_seconds": history.seconds,
        "val_loss": val_loss(model, spec, task),
    }


def measure_test(model, spec: E2ESpec, task=None) -> dict:
    """A trained model's test figures: ``generations`` (one line per test MR, in the test file's order),
    ``decode_seconds``, ``max_new_tokens``, ``scores`` (``nlg_metrics.score_corpus``: BLEU, chrF, ROUGE-L with
    intervals and signatures)."""
    task = task or e2e_task()
    _, _, test_mrs = quick_sizes(spec, task)
    prompts = [task.prompt(mr) for mr in test_mrs]
    cap = min(QUICK["max_new_tokens"] if spec.quick else MAX_NEW_TOKENS, block(spec) - max(len(p) for p in prompts))
    start = time.perf_counter()
    generated = greedy_decode(model, prompts, cap, stop_token=E2E_END[0], batch_size=DECODE_BATCH)
    decode_seconds = time.perf_counter() - start
    generations = [text(ids) for ids in generated]
    refs = task.test_refs[: len(test_mrs)]
    return {"generations": generations, "decode_seconds": decode_seconds, "max_new_tokens": cap,
            "scores": score_corpus(generations, refs, seed=spec.seed)}




def run_e2e(spec: E2ESpec, progress: bool = False, task=None) -> dict:
    """Train ``spec``'s run and measure it: ``train_e2e``'s figures and ``measure_test``'s, as plain JSON.
    ``task``: an ``E2ETask`` to reuse (default: ``e2e_task()``)."""
    task = task or e2e_task()
    model, figures = train_e2e(spec, progress, task)
    return {**figures, **measure_test(model, spec, task)}


def write_generations(path, generations) -> None:
    """The test-set outputs as sacrebleu reads them: one UTF-8 line per test MR, in the test file's order."""
    bad = [i for i, line in enumerate(generations) if len(line.splitlines()) > 1]
    if bad:
        raise ValueError(f"generation {bad[0]} holds a line break; each must be one line (see text())")
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in generations), encoding="utf-8"))


__all__ = ["E2ESpec", "run_e2e", "train_e2e", "measure_test", "untuned_val_loss", "build_model", "run_identity", "peft_config", "write_generations", "text", "METHODS", "BASES"]
