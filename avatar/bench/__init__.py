"""Speed benchmarks: each prints a Markdown table of measured figures.

    python -m avatar.bench psi ...        # the Portrait4D reconstructor: reference vs fast path (avatar.bench.psi)
    python -m avatar.bench pipeline ...   # photo -> avatar, driving video -> frames (avatar.bench.pipeline)
    python -m avatar.bench face ...       # the face backends per frame: MediaPipe vs official (avatar.bench.face)
    python -m avatar.bench goha ...       # GOHA reenactment: ours vs the official Model (avatar.bench.goha)
    python -m avatar.bench gaussians ...  # the Gaussian rasteriser: gsplat vs the PyTorch reference (avatar.bench.gaussians)
    python -m avatar.bench gphm ...       # a fitted GPHM avatar per stage: reference vs fast path (avatar.bench.gphm)
    python -m avatar.bench metrics ...    # eval's HDTF metric set (= python -m eval.bench ...)

``avatar bench ...`` is the same command.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser():  # noqa: ANN201 - argparse.ArgumentParser
    from avatar.bench import face, gaussians, goha, gphm, pipeline, psi
    from avatar.cli import ArgumentParser

    parser = ArgumentParser(prog="python -m avatar.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    psi.add_arguments(sub.add_parser("psi", help="the Portrait4D reconstructor: reference vs fast path"))
    pipeline.add_arguments(sub.add_parser("pipeline", help="photo -> avatar, driving video -> frames, end to end"))
    face.add_arguments(sub.add_parser("face", help="the face backends per frame: MediaPipe against the official"))
    gaussians.add_arguments(sub.add_parser("gaussians", help="the Gaussian rasteriser: gsplat against the PyTorch "
                                                             "reference"))
    gphm.add_arguments(sub.add_parser("gphm", help="a fitted GPHM avatar per stage: reference against the fast path"))
    goha.add_arguments(sub.add_parser("goha", help="GOHA reenactment: ours against the official Model"))
    sub.add_parser("metrics", add_help=False,  # every later argument, --help included, goes to eval.bench
                   help="the HDTF metric set in frames/s (= `python -m eval.bench`; `metrics --help` for options)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark; returns the exit status (see :mod:`avatar.cli`)."""
    from avatar.cli import run_guarded
    from avatar.logs import setup_logging

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    verbosity = -1 if args.quiet else args.verbose
    setup_logging(verbosity)
    if args.benchmark != "metrics" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    def run() -> int:
        if args.benchmark == "metrics":
            from eval.bench import main as metrics_main

            return metrics_main([*(["-q"] if verbosity < 0 else ["-v"] * verbosity), *rest])
        from avatar.bench import face, gaussians, goha, gphm, pipeline, psi

        mains = {"psi": psi.main, "pipeline": pipeline.main, "face": face.main, "gaussians": gaussians.main,
                 "gphm": gphm.main, "goha": goha.main}
        return mains[args.benchmark](args)

    return run_guarded(run, verbosity=verbosity, log=logger, command=f"bench {args.benchmark}")
