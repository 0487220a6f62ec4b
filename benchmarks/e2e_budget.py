"""What the E2E benchmark costs on this machine: the figures its time budget is planned from.

Not a test (timings on a shared machine are noisy; nothing here asserts). Prints JSON:

* ``step``: seconds per training step (forward, backward, AdamW) on a fixed batch of 8 training
  pairs padded to 300 bytes, for full fine-tuning and LoRA r = 4 on each 512-position base:
  the median of 10 steps after 2 of warm-up;
* ``runs``: one LoRA r = 4, seed-0 run on the GPT base (``minilora.experiments.bases.e2e.run_e2e``), in
  quick mode and (with ``--full``) for one whole epoch: its time per step, the time to decode its
  test MRs (all 630 in full mode), its validation loss and scores;
* the machine's load average before and after, and the BLAS thread count.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/e2e_budget.py [--full] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

import minilora
from minilora.experiments.bases.e2e import E2ESpec, build_model, run_e2e
from minilora.optim import AdamW
from minilora.tasks import e2e_task

STEP_BYTES = 300  # the padded length of the timed batch: about a typical batch of 8 E2E pairs


def step_seconds(base: str, method: str, task, repeats: int = 10, warmup: int = 2) -> float:
    """The median time of one training step on 8 training pairs padded (or cut) to STEP_BYTES."""
    model = build_model(E2ESpec(base=base, method=method, size=4 if method == "lora" else None))
    x, y = task.batch(task.train[:8], block_size=STEP_BYTES)
    pad = STEP_BYTES - x.shape[1]
    if pad > 0:  # pad to the timed length: padding costs what real bytes cost
        x, y = np.pad(x, ((0, 0), (0, pad))), np.pad(y, ((0, 0), (0, pad)), constant_values=-100)
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        _, loss = model(x, targets=y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def summary(result: dict) -> dict:
    return {"steps": result["steps"], "train_seconds": result["train_seconds"],
            "seconds_per_step": result["train_seconds"] / result["steps"], "decode_seconds": result["decode_seconds"],
            "test_mrs": len(result["generations"]), "val_loss": result["val_loss"],
            "bleu": result["scores"]["bleu"]["score"], "bleu_interval": result["scores"]["bleu"]["interval"],
            "chrf": result["scores"]["chrf"]["score"], "rouge_l": result["scores"]["rouge_l"]["score"],
            "trainable": result["trainable"], "first_generations": result["generations"][:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also one whole-epoch LoRA run on the GPT base")
    parser.add_argument("--lr", type=float, default=3e-3, help="the LoRA run's learning rate")
    parser.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args()
    task = e2e_task()
    out = {"load_before": os.getloadavg(), "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
           "minilora": minilora.__version__, "step_bytes": STEP_BYTES, "step": {}, "runs": {}}
    for base in ("gpt", "llama"):
        for method in ("full", "lora"):
            out["step"][f"{base} {method}"] = step_seconds(base, method, task)
    modes = {"quick": True, "full": False} if args.full else {"quick": True}
    for mode, quick in modes.items():
        out["runs"][mode] = summary(run_e2e(E2ESpec(base="gpt", method="lora", size=4, seed=0, lr=args.lr, quick=quick), task=task))
    out["load_after"] = os.getloadavg()
    text = json.dumps(out, indent=1, ensure_ascii=False)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
