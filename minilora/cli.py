"""The command line: ``minilora verify`` (the main command), ``minilora report`` and ``minilora pretrain``."""

from __future__ import annotations

import argparse
import signal
import sys


def _pretrain(args) -> int:
    from minilora.pretrain import pretrain

    for flag, value, least in (("--steps", args.steps, 1), ("--seed", args.seed, 0), ("--positions", args.positions, 1),
                               ("--batch-size", args.batch_size, 1)):
        if value < least:  # checked here too, so that the message names the flag
            print(f"minilora pretrain: {flag} must be an integer >= {least}, got {value}", file=sys.stderr)
            return 1
    try:
        log = pretrain(out=args.out, max_steps=args.steps, seed=args.seed, progress=not args.no_progress, arch=args.arch,
                       resume=not args.restart, positions=args.positions, batch_size=args.batch_size)
    except (OSError, ValueError) as err:
        print(f"minilora pretrain: {err}", file=sys.stderr)
        return 1
    print(f"saved to {log['out']}: validation loss {log['val_loss']:.4f} nats/byte after {log['train']['max_steps']} steps "
          f"in {log['wall_seconds'] / 60:.1f} min")
    return 0


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that its ``finally`` blocks clean up (as after Ctrl-C)."""


def _terminate(signum, frame):
    raise Terminated


def build_parser() -> argparse.ArgumentParser:
    from minilora.pretrain import ARCHS, BASE_TRAIN, BATCH_SIZE, POSITIONS

    parser = argparse.ArgumentParser(prog="minilora", description="LoRA from first principles, measured.")
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("verify", help="measure each claim of the article and write a report (the main command)")
    v.add_argument("--quick", action="store_true", help="the demo's sizes: minutes instead of about an hour")
    v.add_argument("--out", default="verify-report", help="the report folder to write (default %(default)s)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--only", default=None, help="comma-separated claim keys to run (default: all)")
    v.add_argument("--bases", default="toy,minilm",
                   help="the base models of the claims measured on several: toy (minilora's GPT), minilm (all-MiniLM-L6-v2); "
                        "default %(default)s")
    v.add_argument("--merge", default=None, metavar="RESULTS.json",
                   help="measure only the claims --only names and merge them into this results.json (of the same mode "
                        "and seed), keeping the others as they were; the merged report goes to --out")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")
    v.add_argument("--against", default=None, metavar="RESULTS.json",
                   help="after writing the report, compare each claim's verdict with this results.json's (e.g. the "
                        "committed full run's) and exit with status 2 if any contradicts it (an inconclusive verdict "
                        "contradicts nothing it lies across)")
    v.set_defaults(run=lambda args: __import__("minilora.verify", fromlist=["main_verify"]).main_verify(args))

    r = sub.add_parser("report", help="write the report of a results.json again, measuring nothing")
    r.add_argument("results", nargs="+", help="the results.json a verify wrote; several: sections of one report "
                                              "(verify --only ...) joined into one, each claim from one file")
    r.add_argument("--out", required=True, help="the report folder to write")
    r.set_defaults(run=lambda args: __import__("minilora.verify", fromlist=["main_report"]).main_report(args))

    p = sub.add_parser("pretrain", help="train the base model from scratch on the prose corpus")
    p.add_argument("--arch", choices=list(ARCHS), default="gpt", help="GPT-2 or the LLaMA-style twin (default %(default)s)")
    p.add_argument("--out", default=None, help="the folder to write: new, empty or an earlier run's, outside the "
                                                "installed package (default: ./pretrain-<arch>)")
    p.add_argument("--steps", type=int, default=BASE_TRAIN.max_steps, help="optimizer steps (default %(default)s)")
    p.add_argument("--positions", type=int, default=POSITIONS,
                   help="byte positions the model sees, and the length of its training windows (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="windows per step (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--restart", action="store_true",
                   help="start over even if --out holds a training checkpoint (by default the run continues from it)")
    p.set_defaults(run=_pretrain)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("\nterminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
