"""minilora against PyTorch eager, side by side in one process: ``make bench``.

Not a test -- timings on shared machines are noisy, so nothing here asserts.
Each figure is the median of repeated runs after a warm-up, both libraries on
the same thread count, float32. The table prints ratios ``minilora / torch``
(below 1.0: minilora is faster) and is also written as JSON so runs can be
compared (``benchmarks/results/<date>.json`` unless ``--json`` says otherwise).

    python benchmarks/bench.py                 # everything
    python benchmarks/bench.py --only ops,mlp  # some sections
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minilora  # noqa: E402
import minilora.nn.functional as F  # noqa: E402
from minilora import nn  # noqa: E402

SECTIONS = {}


def section(name):
    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register


def median_time(fn, repeat=20, warmup=3, min_time=0.2):
    """Median seconds per call of ``fn`` after ``warmup`` calls; repeats until ``min_time`` is spent."""
    for _ in range(warmup):
        fn()
    times = []
    spent = 0.0
    while len(times) < repeat or spent < min_time:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if len(times) >= 10 * repeat:
            break
    return statistics.median(times)


def compare(rows, name, ours, theirs, unit="us", scale=1e6, **extra):
    """Time two callables back to back and append a row with their ratio."""
    t_ours, t_theirs = median_time(ours), median_time(theirs)
    row = {"name": name, "minilora": t_ours * scale, "torch": t_theirs * scale, "unit": unit, "ratio": t_ours / t_theirs, **extra}
    rows.append(row)
    return row


# ---------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------


@section("ops")
def bench_ops(torch):
    """Per-op overhead on tiny tensors, forward + backward: what a deep graph of small ops pays."""
    rows = []
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 8)).astype(np.float32)
    b = rng.standard_normal((4, 8)).astype(np.float32)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    target = rng.integers(0, 8, size=4)

    def pair(make):
        ours = make(minilora, F, lambda x: minilora.tensor(x, requires_grad=True))
        theirs = make(torch, torch.nn.functional, lambda x: torch.tensor(x, requires_grad=True))
        return ours, theirs

    cases = {
        "add": lambda lib, f, T: (lambda x=T(a), y=T(b): (x + y).sum().backward()),
        "mul": lambda lib, f, T: (lambda x=T(a), y=T(b): (x * y).sum().backward()),
        "matmul": lambda lib, f, T: (lambda x=T(a), y=T(w): (x @ y).sum().backward()),
        "softmax": lambda lib, f, T: (lambda x=T(a): f.softmax(x, dim=-1).sum().backward()),
        "layer_norm": lambda lib, f, T: (lambda x=T(a): f.layer_norm(x, (8,)).sum().backward()),
        "cross_entropy": lambda lib, f, T: (
            lambda x=T(a), t=(minilora.tensor(target) if lib is minilora else torch.tensor(target)): f.cross_entropy(x, t).backward()
        ),
    }
    for name, make in cases.items():
        ours, theirs = pair(make)
        compare(rows, f"{name} fwd+bwd (4x8)", ours, theirs)
    return rows


def _mlp(lib, nn_mod, width, depth=2):
    layers = []
    for _ in range(depth):
        layers += [nn_mod.Linear(width, width), nn_mod.GELU()]
    return nn_mod.Sequential(*layers)


@section("mlp")
def bench_mlp(torch):
    """Forward + backward of a 2-layer MLP, batch 64: overhead-bound at width 64, BLAS-bound at 1024."""
    rows = []
    for width in (64, 1024):
        x_np = np.random.default_rng(0).standard_normal((64, width)).astype(np.float32)
        ours_m, theirs_m = _mlp(minilora, nn, width), _mlp(torch, torch.nn, width)
        x_ours, x_theirs = minilora.tensor(x_np), torch.tensor(x_np)

        def ours():
            ours_m.zero_grad()
            ours_m(x_ours).sum().backward()

        def theirs():
            theirs_m.zero_grad()
            theirs_m(x_theirs).sum().backward()

        compare(rows, f"MLP 2x{width} fwd+bwd (batch 64)", ours, theirs)
    return rows


# ---------------------------------------------------------------------------


def print_table(rows):
    width = max(len(r["name"]) for r in rows) + 2
    print(f"{'benchmark':<{width}}{'minilora':>12}{'torch':>12}  unit   ratio")
    for r in rows:
        print(f"{r['name']:<{width}}{r['minilora']:>12.1f}{r['torch']:>12.1f}  {r['unit']:<5}{r['ratio']:>7.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--json", default=None, help="where to write the results (default benchmarks/results/<timestamp>.json)")
    args = parser.parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    torch.manual_seed(0)
    minilora.manual_seed(0)
    unknown = [s for s in args.only.split(",") if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    rows = []
    for name in args.only.split(","):
        print(f"# {name}: {SECTIONS[name].__doc__.strip().splitlines()[0]}", flush=True)
        rows += SECTIONS[name](torch)
    print_table(rows)
    result = {
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(), "threads": threads},
        "versions": {"minilora": minilora.__version__, "numpy": np.__version__, "torch": torch.__version__},
        "rows": rows,
    }
    path = args.json or os.path.join(os.path.dirname(__file__), "results", datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
