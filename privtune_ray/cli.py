"""``privtune-ray`` command line.

    privtune-ray train simulations/sst2_baseline.yaml --set train.max_steps=30 --out runs/x
    privtune-ray train simulations/sst2_baseline.yaml --out runs/x --resume
    privtune-ray datasets
"""

from __future__ import annotations

import argparse
import sys

from .errors import PrivtuneError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privtune-ray", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="split fine-tuning, single process (the reference run)")
    train.add_argument("config", help="YAML config, e.g. simulations/sst2_baseline.yaml")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.max_steps=30 (repeatable)")  # fmt: skip
    train.add_argument("--out", help="run directory (default: runs/<name>-<timestamp>)")
    train.add_argument("--data-dir", help="data directory (overrides data.data_dir and $PRIVTUNE_DATA_DIR)")
    train.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")

    sub.add_parser("datasets", help="list the datasets and where they are read from")
    return parser


def _train(args) -> None:
    from .config import load_config
    from .training.loop import run_training

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    cfg = load_config(args.config, overrides)
    if args.resume and not args.out:
        raise PrivtuneError("--resume needs --out DIR, the run directory to continue")
    run_training(cfg, out=args.out, resume=args.resume)


def _datasets(args) -> None:
    from .data.registry import DATASETS, resolve_data_dir

    root = resolve_data_dir()
    print(f"data directory: {root if root else 'not found (set PRIVTUNE_DATA_DIR or --data-dir)'}")
    for name, spec in DATASETS.items():
        attrs = f"; private attributes: {', '.join(spec.attributes)}" if spec.attributes else ""
        print(f"  {name:22s} {spec.task:14s} splits: {', '.join(spec.splits)}{attrs}\n  {'':22s} {spec.description}")


COMMANDS = {"train": _train, "datasets": _datasets}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except PrivtuneError as exc:
        print(f"privtune-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("privtune-ray: interrupted; resume with the same command plus --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
