"""``python -m analysis DIR [--out OUT] [--asr-threshold T]``: write the report (see ``write_report``)."""

from __future__ import annotations

import argparse
import sys

from privtune_ray.errors import PrivtuneError

from .report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    parser.add_argument("dir", help="a sweep directory, a run directory, or a folder holding several")
    parser.add_argument("--out", help="where report.md and the plots go (default: DIR/report)")
    parser.add_argument("--asr-threshold", type=float, default=0.10, help="max EIA ASR of the headline (default 0.10)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.dir, args.out, asr_threshold=args.asr_threshold)
    except PrivtuneError as exc:
        print(f"python -m analysis: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
