"""``python -m avatar.bench <benchmark> [options]``: speed benchmarks that print Markdown tables."""

from __future__ import annotations

import argparse
import sys

from avatar.bench import pipeline, psi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avatar.bench", description=__doc__)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    psi.add_arguments(sub.add_parser("psi", help="the Portrait4D reconstructor: reference vs fast path"))
    pipeline.add_arguments(sub.add_parser("pipeline", help="photo -> avatar, driving video -> frames, end to end"))
    args = parser.parse_args(argv)
    if args.benchmark == "psi":
        return psi.main(args)
    if args.benchmark == "pipeline":
        return pipeline.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
