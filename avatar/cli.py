"""The ``avatar`` command line.

Subcommands:
    models      list model ids, the files each needs and whether they are in the cache
    download    fetch, verify and convert what a model id needs (once; later calls do nothing)
    convert     convert one upstream checkpoint file into safetensors + JSON, without running its code

Every command logs through :mod:`logging` (``-v`` for debug, ``-q`` for warnings only). Errors are one
plain sentence on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("avatar")

EXIT_OK = 0
EXIT_ERROR = 1


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (plays well with redirection)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(verbosity: int = 0) -> None:
    """Log the ``avatar`` namespace to stderr: INFO by default, DEBUG with ``verbosity > 0``, WARNING if < 0."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    root = logging.getLogger("avatar")
    root.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


def _cmd_models(args: argparse.Namespace) -> int:
    from .hub.download import cache_root, is_converted
    from .hub.registry import DEFAULT_MODEL_ID, FILES, MODELS

    print(f"cache: {cache_root()}")
    for spec in MODELS.values():
        have = sum(is_converted(f) for f in spec.files)
        default = " (default)" if spec.model_id == DEFAULT_MODEL_ID else ""
        print(f"\n{spec.model_id}{default}: {spec.description}")
        print(f"  files in cache: {have}/{len(spec.files)}")
        if args.files:
            for f in spec.files:
                mark = "x" if is_converted(f) else " "
                print(f"  [{mark}] {f.key:30s} {f.repo}:{f.path}")
    others = [f for f in FILES.values() if all(f.key not in (s.reconstructor, *s.requires) for s in MODELS.values())]
    if others:
        print("\nother upstream files (download with `avatar download --file KEY`):")
        for f in others:
            print(f"  {f.key:30s} {f.repo}:{f.path}  {f.description}")
    return EXIT_OK


def _cmd_download(args: argparse.Namespace) -> int:
    from .hub.download import cache_root, download_model, ensure_file
    from .hub.registry import get_file

    if args.file:
        for key in args.file:
            folder = ensure_file(get_file(key), local_dir=args.from_dir, force=args.force)
            logger.info("%s -> %s", key, folder)
        return EXIT_OK

    def report(file, status: str) -> None:
        logger.info("%-8s %s", status, file.path)

    result = download_model(args.model_id, local_dir=args.from_dir, force=args.force, on_file=report)
    if not result.fetched:
        logger.info("%s: all %d files were already in the cache %s", args.model_id, len(result.cached), cache_root())
    else:
        logger.info("%s: %d fetched and converted, %d already cached (%s)", args.model_id, len(result.fetched),
                    len(result.cached), cache_root())
    for file in (f for f in result.folders if f in result.fetched):
        logger.info("  %s", result.folders[file])
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    from .hub.convert import convert_file

    out = Path(args.out)
    result = convert_file(args.checkpoint, out, fmt=args.format, name=args.name, network=args.network)
    target = result.weights or result.copy
    logger.info("wrote %s (%d tensors) and %s", target, result.num_tensors, result.metadata)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatar",
        description="One-shot 4D head avatars: Portrait4D family models, preprocessing, rendering and reenactment.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list model ids and which of their files are cached",
                       description="List the model ids, what each needs, and what is already in the cache.")
    p.add_argument("--files", action="store_true", help="list every file of each model")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser(
        "download",
        help="fetch, verify and convert the files a model id needs",
        description=(
            "Fetch every upstream file MODEL_ID needs from the Hugging Face Hub (and the official GitHub repo for "
            "a few small files), check sizes and SHA-256 digests, convert pickles to safetensors without running "
            "their code, and cache the result. A second call does nothing. Offline, it says which files are "
            "missing and stops at once."
        ),
    )
    p.add_argument("model_id", nargs="?", default="portrait4d-v2",
                   help="portrait4d-v2 (default), portrait4d-v1 or portrait4d-static")
    p.add_argument("--from-dir", metavar="DIR", type=Path,
                   help="take the files from DIR (a copy of the Hub repo or an official checkout) instead of the network")
    p.add_argument("--file", action="append", metavar="KEY", help="fetch single files by registry key (see `avatar models`)")
    p.add_argument("--force", action="store_true", help="fetch and convert again even if cached")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser(
        "convert",
        help="convert one upstream checkpoint into safetensors + JSON",
        description=(
            "Convert one upstream file (EG3D persistence .pkl, FLAME chumpy .pkl, numpy pickle, .npy, torch .pth "
            "or TorchScript .zip) into DIR/<name>.safetensors and DIR/<name>.json. Pickles are read with a "
            "restricted unpickler: embedded source is never executed and any global outside the allowlist is "
            "refused. Nothing is written when the conversion fails."
        ),
    )
    p.add_argument("checkpoint", type=Path, help="the upstream file")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--format", choices=["persistence-pickle", "chumpy-pickle", "numpy-pickle", "npy", "torch",
                                        "torchscript", "raw"], help="input format (guessed from the content by default)")
    p.add_argument("--network", default=None, help="network to extract from a persistence pickle (default G_ema)")
    p.add_argument("--name", default=None, help="output file stem (default: the input's stem)")
    p.set_defaults(func=_cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except Exception as exc:  # one plain sentence, no traceback (use -v for it)
        from .hub.download import AssetNotFoundError, AssetVerificationError
        from .hub.formats import FormatError
        from .hub.unpickle import UnsafePickleError

        known = (AssetNotFoundError, AssetVerificationError, FormatError, UnsafePickleError, FileNotFoundError,
                 KeyError, ValueError)
        if args.verbose or not isinstance(exc, known):
            logger.exception("%s failed", args.command)
        else:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            logger.error("%s", message)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
