"""The ``avatar`` command line.

Subcommands:
    models      list pipeline model ids and network ids, the files each needs and whether they are cached
    download    fetch, verify and convert what a model id needs (once; later calls do nothing)
    convert     convert one upstream checkpoint file into safetensors + JSON, without running its code
    reconstruct photo -> 3D avatar rendered along a camera orbit (video)
    reenact     photo (or a fitted GPHM avatar folder) + driving video -> reenacted video (driving audio kept)
    fit         talking-head video -> a person's GPHM Gaussian head avatar folder (resumable)
    tiny        write a complete pipeline of tiny random networks (tests, offline work)
    live        a camera (or a video played as one) drives the avatar in real time (window, virtual camera, file)
    export      saved avatar -> mesh of its head surface (.glb, .obj, .ply) by marching cubes; fitted GPHM
                avatar folder -> 3D Gaussian Splatting PLY (--ply)
    eval        = ``python -m eval.run``: score a benchmark protocol
    prepare     = ``python -m eval.prepare``: build a benchmark's ground-truth frames from raw clips/images
    bench       = ``python -m avatar.bench``: speed benchmarks
    app         = ``python app.py``: the Gradio app on localhost

``eval``, ``prepare``, ``bench`` and ``app`` hand every argument after their name to the same ``main`` as the
``python -m`` form (``avatar eval --help`` is ``python -m eval.run --help``).

Every command logs through :mod:`logging` (``-v`` for debug, ``-q`` for warnings only; see :mod:`avatar.logs`);
``avatar --version`` prints the installed version. Numeric options are checked when the command line is parsed
(:func:`int_option`, :func:`float_option`): a value out of range is argparse's one-line error, exit status 1.
Exit status (every entry point, ``eval`` and the app's launcher included):

* 0: done;
* 1: the user's input cannot be used (an :class:`~avatar.errors.AvatarError`: bad option, missing file or
  weights, unknown model id, no face, unreadable media, predictions that do not match the protocol...): one
  plain sentence on stderr (``-v`` adds the traceback); a command line argparse rejects also exits 1;
* 2: anything else, i.e. a bug: the traceback is printed, please report it;
* 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .logs import setup_logging

__all__ = ["EXIT_BUG", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "ArgumentParser", "build_parser",
           "float_option", "int_option", "main", "run_guarded", "setup_logging", "version"]

logger = logging.getLogger("avatar")

EXIT_OK = 0
EXIT_ERROR = 1
"""The user's fault: an :class:`~avatar.errors.AvatarError` (or a command line argparse rejects)."""
EXIT_BUG = 2
"""Any other exception: a bug."""
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors exit with :data:`EXIT_ERROR` (1, the user's fault) instead
    of argparse's 2, which this toolkit keeps for bugs. Used by every entry point's parser."""

    def error(self, message: str):  # noqa: ANN201 - NoReturn
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def int_option(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` for a whole number in ``[minimum, maximum]``: a value outside is rejected when the
    command line is parsed, with argparse's one-line error (``argument --batch-size: must be a whole number of
    at least 1, got 0``) and exit status 1, before anything is loaded."""
    bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number {bounds}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be a whole number {bounds}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def float_option(above: float, at_most: float) -> Callable[[str], float]:
    """An argparse ``type`` for a finite number in ``(above, at_most]`` (see :func:`int_option`)."""
    bounds = f"a number above {above:g} and at most {at_most:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text!r}") from None
        if not (math.isfinite(value) and above < value <= at_most):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


POSITIVE_INT = int_option(1)
SEED = int_option(0, 2**32 - 1)
FPS = float_option(0, 1000)
NON_NEGATIVE_INT = int_option(0)
PORT = int_option(1, 65535)


def version() -> str:
    """The installed distribution's version (``avatar4d``), else :data:`avatar.__version__` (a source tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("avatar4d")
    except PackageNotFoundError:
        from . import __version__

        return __version__


class _VersionAction(argparse.Action):
    """``--version``: like argparse's ``action='version'``, with the version looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:  # noqa: ANN003
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit(EXIT_OK)


def run_guarded(func: Callable[[], int | None], *, verbosity: int = 0, log: logging.Logger | None = None,
                command: str = "avatar") -> int:
    """Run an entry point's work and turn its outcome into an exit status (see the module docstring).

    :class:`~avatar.errors.AvatarError` -> its message as one ERROR line (with the traceback when
    ``verbosity > 0``), 1; CUDA out of memory -> one line, 1; :class:`KeyboardInterrupt` -> 130; any other
    exception -> the traceback, 2. ``func``'s own return value (``None`` is 0) is returned otherwise.
    """
    from .errors import AvatarError

    log = log or logger
    try:
        return int(func() or EXIT_OK)
    except KeyboardInterrupt:
        log.error("%s: interrupted", command)
        return EXIT_INTERRUPTED
    except AvatarError as exc:
        log.error("%s", exc, exc_info=verbosity > 0)
        return EXIT_ERROR
    except ModuleNotFoundError as exc:
        extra = OPTIONAL_MODULES.get((exc.name or "").partition(".")[0])
        if extra is None:
            log.exception("%s failed: %s; this is a bug, please report it with this traceback", command, exc)
            return EXIT_BUG
        log.error("%s needs the optional package %s: pip install 'avatar4d[%s]'", command, exc.name, extra,
                  exc_info=verbosity > 0)
        return EXIT_ERROR
    except Exception as exc:
        if _is_cuda_oom(exc):
            log.error("%s: the GPU ran out of memory (%s); try a smaller --batch-size, a shorter input or "
                      "--dtype bfloat16", command, str(exc).splitlines()[0] if str(exc) else "", exc_info=verbosity > 0)
            return EXIT_ERROR
        log.exception("%s failed with an unexpected %s: this is a bug; please report it with the command line "
                      "and this traceback", command, type(exc).__name__)
        return EXIT_BUG


OPTIONAL_MODULES = {
    "gradio": "app", "gradio_client": "app", "lpips": "eval", "pytorch_fid": "eval", "scipy": "eval",
    "skimage": "app", "matplotlib": "eval", "accelerate": "eval",
}
"""Top-level modules of the optional extras (pyproject.toml) -> the extra that installs them: a command that needs
one that is missing says which extra to install (exit 1) instead of printing a traceback."""


def _is_cuda_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to classify an error
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return oom is not None and isinstance(exc, oom)


def _cmd_models(args: argparse.Namespace) -> int:
    from .hub.download import cache_root, is_converted
    from .hub.registry import DEFAULT_MODEL_ID, FILES, MODELS

    def show(spec, default: bool = False) -> None:  # noqa: ANN001 - ModelSpec
        have = sum(is_converted(f) for f in spec.files)
        print(f"\n{spec.model_id}{' (default)' if default else ''}: {spec.description}")
        print(f"  files in cache: {have}/{len(spec.files)}")
        if args.files:
            for f in spec.files:
                mark = "x" if is_converted(f) else " "
                print(f"  [{mark}] {f.key:30s} {f.repo}:{f.path}")

    pipelines = [s for s in MODELS.values() if s.pipeline_class is not None]
    networks = [s for s in MODELS.values() if s.pipeline_class is None]
    print(f"cache: {cache_root()}")
    print("\n== pipeline model ids (--model of reconstruct/reenact, the app and `avatar eval`) ==")
    for spec in pipelines:
        show(spec, spec.model_id == DEFAULT_MODEL_ID)
    if networks:
        print("\n== network ids (used inside the pipelines and the benchmark; `avatar download ID` fetches one) ==")
        for spec in networks:
            show(spec)
    used = {k for s in MODELS.values() for k in (s.checkpoint, *s.requires)}
    others = [f for f in FILES.values() if f.key not in used]
    if others:
        print("\nother upstream files (download with `avatar download --file KEY`):")
        for f in others:
            print(f"  {f.key:30s} {f.repo}:{f.path}  {f.description}")
    return EXIT_OK


def _cmd_download(args: argparse.Namespace) -> int:
    from .hub.download import cache_root, check_local_dir, download_model, ensure_file
    from .hub.registry import FILES, get_file

    if args.from_dir is not None:
        check_local_dir(args.from_dir, "--from-dir")  # says so at once, not as 17 missing files
    if args.file:
        unknown = [key for key in args.file if key not in FILES]
        if unknown:  # all unknown keys at once, before fetching anything
            from .errors import InputError

            raise InputError(f"unknown upstream file {', '.join(unknown)}; `avatar models --files` lists the keys "
                             f"({', '.join(FILES)})")
        for key in args.file:
            folder = ensure_file(get_file(key), local_dir=args.from_dir, force=args.force)
            if key == "goha-s3":
                _verify_goha_download(folder)
            logger.info("%s -> %s", key, folder)
        return EXIT_OK

    def report(file, status: str) -> None:
        logger.info("%-8s %s", status, file.path)

    result = download_model(args.model_id, local_dir=args.from_dir, force=args.force, on_file=report)
    if "goha-s3" in result.fetched:
        _verify_goha_download(result.folders["goha-s3"])
    if not result.fetched:
        logger.info("%s: all %d files were already in the cache %s", args.model_id, len(result.cached), cache_root())
    else:
        logger.info("%s: %d fetched and converted, %d already cached (%s)", args.model_id, len(result.fetched),
                    len(result.cached), cache_root())
    for file in (f for f in result.folders if f in result.fetched):
        logger.info("  %s", result.folders[file])
    return EXIT_OK


def _verify_goha_download(folder: Path) -> None:
    """GOHA's checkpoint has no published digest (Google Drive): check that the converted file holds every GOHA
    tensor with its shape; a file that does not is removed from the cache, with the reason."""
    import shutil

    weights = sorted(folder.glob("*.safetensors"))
    try:
        if len(weights) != 1:
            from .errors import CheckpointMismatchError

            raise CheckpointMismatchError(f"{folder} holds {len(weights)} converted weight files, expected one")
        logger.info("checked: %s", _check_goha_checkpoint(weights[0]))
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _is_goha_checkpoint(weights: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return any(k.startswith(("model_state_dict.template_net.", "template_net.")) for k in f.keys())  # noqa: SIM118


def _check_goha_checkpoint(weights: Path, config: object = None) -> str:
    """Check a converted GOHA checkpoint against GOHA's own names and shapes (no tensor is loaded: shapes only,
    the network built on the meta device); the Deep3D regressor is not in GOHA's checkpoint and is not checked.
    Raises :class:`~avatar.errors.CheckpointMismatchError` naming the keys that do not fit."""
    import torch
    from safetensors import safe_open

    from .errors import CheckpointMismatchError
    from .models.goha import GOHA, GOHAConfig, official_to_model_state

    with safe_open(str(weights), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 (not a dict)
    with torch.device("meta"):
        state = {k: torch.empty(shape) for k, shape in shapes.items()}
        converted = official_to_model_state(state)
        own = {k: tuple(v.shape) for k, v in GOHA(config or GOHAConfig()).state_dict().items()  # type: ignore[arg-type]
               if not k.startswith("exp_loss_fn.")}
    got = {k: tuple(v.shape) for k, v in converted.model_state.items() if not k.startswith("exp_loss_fn.")}
    missing, extra = sorted(set(own) - set(got)), sorted(set(got) - set(own))
    wrong = sorted(k for k in set(own) & set(got) if own[k] != got[k])
    if missing or extra or wrong:
        parts = [f"{name}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys]
        raise CheckpointMismatchError(f"{weights} is not GOHA's released checkpoint (" + "; ".join(parts) + ")")
    return (f"{weights.name} has every tensor of GOHA with its shape ({len(got)} tensors; discriminator: "
            f"{len(converted.discriminator_state)} tensors, not used)")


def _cmd_convert(args: argparse.Namespace) -> int:
    from .hub.convert import convert_file

    if not Path(args.checkpoint).is_file():
        from .errors import InputError

        raise InputError(f"{args.checkpoint} does not exist or is not a file")
    out = Path(args.out)
    result = convert_file(args.checkpoint, out, fmt=args.format, name=args.name, network=args.network)
    target = result.weights or result.copy
    logger.info("wrote %s (%d tensors) and %s", target, result.num_tensors, result.metadata)
    meta = json.loads(result.metadata.read_text())
    if result.weights and _is_goha_checkpoint(result.weights):
        logger.info("checked: %s", _check_goha_checkpoint(result.weights))
    if str(meta.get("class_name", "")).endswith("TriPlaneReconstructorNeutralize") and result.weights:
        from .errors import AvatarError
        from .models.portrait4d import Portrait4D

        try:  # strict: any missing, unexpected or mis-shaped tensor is reported
            model = Portrait4D.from_official(result.weights)
        except AvatarError as exc:
            logger.warning("converted, but it does not load into Portrait4D: %s", exc)
        else:
            logger.info("checked: loads strictly into Portrait4D (%d tensors, static=%s, FLAME deformer: %s)",
                        len(model.state_dict()), model.config.is_static, model.deformer.available)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# pipeline commands

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v")


def _device(name: str) -> str:
    from .errors import InputError
    from .runtime import resolve_device

    try:
        return resolve_device(name)
    except InputError as exc:  # the same message, naming the option
        raise InputError(f"--device {name}: {exc}") from None


def _dtype(name: str):  # noqa: ANN202 - torch.dtype
    from .errors import InputError
    from .runtime import resolve_dtype

    try:
        return resolve_dtype(name)
    except InputError as exc:  # the same message, naming the option
        raise InputError(f"--dtype {name}: {exc}") from None


def _check_output(path: Path) -> None:
    from .errors import InputError

    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"output {path} must end in one of {', '.join(VIDEO_SUFFIXES)}")
    if path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name such as {path / 'out.mp4'}")


def _check_pipeline_options(args: argparse.Namespace) -> None:
    """Option values the networks cannot run with: checked before anything is loaded (the numbers were checked
    when the command line was parsed: :func:`int_option`)."""
    _check_output(Path(args.output))
    _device(args.device)
    _dtype(args.dtype)


def _check_photo(photo: str) -> None:
    """Fail on a bad photo (or a missing saved avatar) before any model work."""
    from .io import load_image

    path = Path(photo)
    if path.suffix != ".safetensors":
        load_image(path)
    elif not path.is_file():
        from .errors import InputNotFoundError

        raise InputNotFoundError(f"{path} does not exist or is not a file; give a photo or an avatar saved with "
                                 "--save-avatar")


def _load_pipeline(args: argparse.Namespace):  # noqa: ANN202 - AvatarPipeline
    from .pipelines.auto import load_pipeline

    pipe = load_pipeline(args.model, device=_device(args.device), dtype=_dtype(args.dtype),
                         preprocess=getattr(args, "preprocess", None))
    if getattr(args, "compile", False):
        compile_field = getattr(pipe, "compile_head_pose_field", None)
        if compile_field is None:
            logger.warning("--compile: %s has no head-pose field to compile; ignored", type(pipe).__name__)
        else:
            compile_field()
    return pipe


def _avatar(pipe, source: Path, aligned: bool):  # noqa: ANN001, ANN202
    if source.suffix == ".safetensors":
        return pipe.load_avatar(source)
    return pipe.create_avatar(source, aligned=aligned)


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from .io import VideoWriter

    out = Path(args.output)
    _check_pipeline_options(args)
    _check_photo(args.photo)  # fail on a bad photo before loading the networks
    pipe = _load_pipeline(args)
    avatar = _avatar(pipe, Path(args.photo), args.aligned)
    if args.save_avatar:
        avatar.save(args.save_avatar)
        logger.info("avatar saved to %s", args.save_avatar)
    frames = pipe.render_orbit(avatar, args.frames, batch_size=args.batch_size, progress=not args.quiet)
    with VideoWriter(out, args.fps) as writer:
        for frame in frames:
            writer.write(frame)
    logger.info("wrote %s: %d frames at %s fps (%s)", out, writer.frames_written, writer.fps, writer.codec)
    return EXIT_OK


_GPHM_REENACT_UNUSED = {"pose": ("--pose", "neck"), "no_smooth": ("--no-smooth", False),
                        "side_by_side": ("--side-by-side", False), "paste_back": ("--paste-back", False),
                        "aligned": ("--aligned", False), "compile": ("--compile", False),
                        "save_avatar": ("--save-avatar", None), "model": ("--model", "portrait4d-v2"),
                        "dtype": ("--dtype", "float32")}
"""``avatar reenact`` options of the one-shot models (with their defaults) that a GPHM avatar folder cannot use."""


def _cmd_reenact_gphm(args: argparse.Namespace) -> int:
    """``avatar reenact AVATAR_DIR DRIVING -o OUT``: a fitted GPHM avatar driven by a video
    (:func:`avatar.fitting.reenact.reenact_video`)."""
    from .errors import InputError

    given = [flag for name, (flag, default) in _GPHM_REENACT_UNUSED.items() if getattr(args, name) != default]
    if args.preprocess == "official":
        given.append("--preprocess official")
    if given:
        raise InputError(f"{', '.join(given)}: not for a fitted GPHM avatar folder ({args.photo}), which is driven "
                         "by MediaPipe's face mesh and head pose with its own renderer; leave "
                         f"{'it' if len(given) == 1 else 'them'} out (usable: --relative/--absolute, --batch-size, "
                         "--device, --max-frames, --no-audio)")
    _check_output(Path(args.output))
    device = _device(args.device)
    from .fitting.reenact import reenact_video

    result = reenact_video(args.photo, args.driving, args.output, relative=not args.absolute,
                           batch_size=args.batch_size, device=device, max_frames=args.max_frames,
                           audio=not args.no_audio, progress=not args.quiet)
    audio = {"copy": "audio copied", "aac": "audio re-encoded to AAC", None: "no audio"}[result.audio_mode]
    missing = len(result.frames_without_face)
    logger.info("wrote %s: %d frames at %s fps (%s, %s); rendered at %.1f frames/s on %s%s", result.path,
                result.frames, result.fps, result.codec, audio, result.render_fps, result.device,
                f"; {missing} frames without a face held the last motion" if missing else "")
    return EXIT_OK


def _cmd_reenact(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .fitting.gphm_fit import is_gphm_avatar_dir
    from .io import VideoReader, VideoWriter
    from .pipelines import side_by_side

    if is_gphm_avatar_dir(args.photo):
        return _cmd_reenact_gphm(args)
    if Path(args.photo).is_dir():
        raise InputError(f"{args.photo} is a folder but not a fitted GPHM avatar (no avatar.json from `avatar fit`); "
                         "give a portrait photo, a saved avatar (.safetensors) or an avatar folder from `avatar fit`")
    out = Path(args.output)
    _check_pipeline_options(args)
    if args.paste_back and (args.side_by_side or args.aligned or Path(args.photo).suffix == ".safetensors"):
        raise InputError("--paste-back puts the result back into the original photo: give the photo itself (not a "
                         "saved avatar or an --aligned crop), without --side-by-side")
    _check_photo(args.photo)  # fail on bad inputs before loading the networks:
    reader = VideoReader(args.driving, max_frames=args.max_frames)  # opens the video and decodes its first frame
    pipe = _load_pipeline(args)
    avatar = _avatar(pipe, Path(args.photo), args.aligned)
    paste = None
    if args.paste_back:
        from .io import load_image
        from .pipelines.paste_back import PasteBack

        paste = PasteBack(load_image(args.photo), avatar.align)
    if args.save_avatar:
        avatar.save(args.save_avatar)
    if not pipe.can_reenact:
        logger.warning("%s is a static model: the result follows the driving head motion but keeps the photo's "
                       "expression (portrait4d-v2 or portrait4d-v1 follow both)", args.model)
    with pipe.iter_reenact(avatar, args.driving, relative=not args.absolute, head_pose=args.pose,
                           smooth=not args.no_smooth, batch_size=args.batch_size, max_frames=args.max_frames,
                           progress=not args.quiet) as stream, \
            VideoWriter(out, reader.fps, audio_from=None if args.no_audio else args.driving) as writer:
        for f in stream:
            if paste is not None:
                writer.write(paste(f.image))
            else:
                writer.write(side_by_side(avatar.source_crop, f.image, f.driving) if args.side_by_side else f.image)
    missing = len(stream.frames_without_face)  # this call's own count
    audio = {"copy": "audio copied", "aac": "audio re-encoded to AAC", None: "no audio"}[writer.audio_mode]
    logger.info("wrote %s: %d frames at %s fps (%s, %s)%s", out, writer.frames_written, writer.fps, writer.codec,
                audio, f"; {missing} frames without a face held the last motion" if missing else "")
    return EXIT_OK


def _cmd_tiny(args: argparse.Namespace) -> int:
    from .hub.registry import DEFAULT_MODEL_ID, get_model, pipeline_class

    cls = pipeline_class(get_model(args.model or DEFAULT_MODEL_ID))  # the family of that model id
    folder = cls.tiny(seed=args.seed, preprocess=args.preprocess).save_pretrained(args.directory)
    logger.info("wrote a tiny random %s pipeline to %s (use it with --model %s; its pictures are meaningless)",
                cls.family, folder, folder)
    return EXIT_OK


def _cmd_fit(args: argparse.Namespace) -> int:
    from .errors import InputError, InputNotFoundError

    video, out = Path(args.video), Path(args.output)
    if not video.is_file():
        raise InputNotFoundError(f"{video} does not exist or is not a file; give a talking-head video of one person")
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out} is a file; give a folder for the avatar")
    if args.from_model is not None and not Path(args.from_model).exists():
        raise InputNotFoundError(f"--from-model {args.from_model} does not exist; give a folder saved by "
                                 "GPHM.save_pretrained (or leave it out to start from the template head)")
    device = _device(args.device)
    from .fitting.gphm_fit import FitConfig, fit_gphm_avatar
    from .fitting.video_data import prepare_video

    changes: dict[str, object] = {"time_budget_s": args.minutes * 60.0, "resolution": args.resolution,
                                  "seed": args.seed}
    if args.steps is not None:
        changes.update(finetune_steps=args.steps, identity_steps=min(FitConfig.identity_steps, args.steps))
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.num_points is not None:
        changes["num_points"] = args.num_points
    config = FitConfig(**changes)  # type: ignore[arg-type]  # ConfigError (exit 1) on a bad combination
    if args.resolution % 4:
        raise InputError(f"--resolution must be a multiple of 4 (the refine network halves it twice), got "
                         f"{args.resolution}")
    model = None
    if args.from_model is not None:
        from .models.gphm import GPHM

        model = GPHM.from_pretrained(args.from_model)
    prepared = prepare_video(video, out / "prepared", resolution=args.resolution, max_frames=args.max_frames,
                             progress=not args.quiet)
    result = fit_gphm_avatar(prepared, out, config=config, model=model, device=device, progress=not args.quiet,
                             resume=not args.restart)
    how = {"steps": "step limit", "time": "time budget", "finished": "already finished"}[result.stopped_by]
    logger.info("avatar in %s: %d + %d steps in %.0f s (%s)%s", out, result.identity_steps, result.finetune_steps,
                result.fit_seconds, how, "; resumed" if result.resumed else "")
    return EXIT_OK


def _pipeline_ids() -> list[str]:
    from .hub.registry import pipeline_model_ids

    return pipeline_model_ids()


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="portrait4d-v2",
                   help="model id (portrait4d-v2, portrait4d-v1, portrait4d-static, goha) or a pipeline folder "
                        "(e.g. from `avatar tiny DIR`)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],  # avatar.runtime.DTYPES
                   help="precision of the reconstructor's networks (preprocessing stays float32)")
    p.add_argument("--aligned", action="store_true",
                   help="the photo is already the model's crop (512x512 Portrait4D crop; for goha a square EG3D "
                        "crop): skip cropping")
    p.add_argument("--preprocess", choices=["official", "mediapipe"], default=None,
                   help="face backend: official (RetinaFace + H3R, the default for Portrait4D: its checkpoints were "
                        "trained on it) or mediapipe (MediaPipe's detector and mesh find the face and the crop; real "
                        "weights inside the mediapipe wheel, the [face] extra); default: the model's own")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=8, metavar="N",
                   help="frames rendered together (default 8)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the FLAME head-pose field (about 16 s once; on an H200 the field then "
                        "takes 0.9 instead of 10 ms per frame): worth it for long videos on a GPU")
    p.add_argument("--save-avatar", metavar="FILE", help="also save the avatar (.safetensors) for later runs")


# ---------------------------------------------------------------------------------------------------------
# commands that hand their arguments to another entry point's main


@dataclass(frozen=True)
class _Forward:
    target: str  # "module:function", called with the remaining arguments
    same_as: str  # the other form of the command
    help: str


FORWARDED: dict[str, _Forward] = {
    "eval": _Forward("eval.run:main", "python -m eval.run",
                     "score a benchmark protocol for a model or another method's frames"),
    "prepare": _Forward("eval.prepare:main", "python -m eval.prepare",
                        "build a benchmark's ground-truth frames from raw HDTF clips or CelebA images"),
    "bench": _Forward("avatar.bench:main", "python -m avatar.bench",
                      "speed benchmarks: psi (reconstructor), pipeline (end to end), metrics (eval's metric set)"),
    "app": _Forward("avatar.app:main", "python app.py",
                    "start the Gradio app on localhost (needs the [app] extra)"),
}
"""``avatar eval ARGS`` is ``python -m eval.run ARGS``, and so on: the same ``main`` with the same arguments."""


def _forward(command: str, argv: list[str], verbosity: int) -> int:
    import importlib

    spec = FORWARDED[command]
    module, _, function = spec.target.partition(":")
    flags = ["-q"] if verbosity < 0 else ["-v"] * verbosity  # every forwarded main takes -v / -q

    def call() -> int:
        return getattr(importlib.import_module(module), function)([*flags, *argv])

    return run_guarded(call, verbosity=verbosity, command=f"avatar {command}")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="avatar",
        description="One-shot 4D head avatars: Portrait4D family models, preprocessing, rendering and reenactment.",
        epilog="Exit status: 0 done; 1 the input cannot be used (one plain sentence on stderr; -v adds the "
               "traceback); 2 a bug (the traceback is printed: please report it); 130 interrupted.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list pipeline model ids and network ids, and which files are cached",
                       description="List the pipeline model ids (what --model takes), the network ids used inside "
                                   "the pipelines, what each needs, and what is already in the cache.")
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
                   help="portrait4d-v2 (default), portrait4d-v1, portrait4d-static, goha (its checkpoint and the BFM "
                        "with --from-dir), or a network id (`avatar models`)")
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

    p = sub.add_parser(
        "reconstruct", help="photo -> 3D avatar rendered along a camera orbit",
        description="Build an avatar from one portrait photo and render it along a closed camera orbit into a "
                    "video. PHOTO may also be an avatar saved with --save-avatar.")
    p.add_argument("photo", help="portrait photo (JPEG, PNG, ...) or a saved avatar (.safetensors)")
    p.add_argument("-o", "--output", required=True, help="output video (.mp4)")
    p.add_argument("--frames", type=POSITIVE_INT, default=60, metavar="N", help="frames in the orbit (default 60)")
    p.add_argument("--fps", type=FPS, default=25.0, help="frame rate of the orbit video (above 0, at most 1000; "
                                                          "default 25)")
    _add_model_options(p)
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser(
        "reenact", help="photo + driving video -> reenacted video",
        description="Animate the face of PHOTO with the expressions and head motion of DRIVING. The output keeps "
                    "the driving video's frame rate and audio. Frames of DRIVING without a face hold the last "
                    "good motion. PHOTO may also be an avatar saved with --save-avatar, or a fitted GPHM avatar "
                    "folder (`avatar fit VIDEO -o AVATAR_DIR`): then DRIVING's MediaPipe face mesh and head pose "
                    "drive it (relative: as changes from DRIVING's first frame applied to the avatar's neutral "
                    "face and pose; absolute: as they are, for the fitted person), the video has the avatar's "
                    "resolution, and only --relative/--absolute, --batch-size, --device, --max-frames and "
                    "--no-audio apply.")
    p.add_argument("photo", help="portrait photo, a saved avatar (.safetensors) or a fitted GPHM avatar folder")
    p.add_argument("driving", help="driving video")
    p.add_argument("-o", "--output", required=True, help="output video (.mp4)")
    motion = p.add_mutually_exclusive_group()
    motion.add_argument("--relative", action="store_true", default=True,
                        help="apply the driving motion as changes from its first frame (default)")
    motion.add_argument("--absolute", action="store_true", help="use the driving motion and head pose as they are")
    p.add_argument("--pose", choices=["neck", "camera", "fixed"], default="neck",
                   help="head rotation: neck (FLAME neck rotation, fixed camera; official default), camera (the "
                        "driving camera moves), fixed (no head rotation)")
    p.add_argument("--no-smooth", action="store_true", help="no one-euro smoothing of crops and head poses")
    p.add_argument("--side-by-side", action="store_true", help="write source | result | driving panels")
    p.add_argument("--paste-back", action="store_true",
                   help="composite the result back into the full photo (feathered crop border); the video then has "
                        "the photo's size")
    p.add_argument("--max-frames", type=POSITIVE_INT, default=None, metavar="N",
                   help="use only the first N driving frames (N >= 1)")
    p.add_argument("--no-audio", action="store_true", help="do not copy the driving video's audio")
    _add_model_options(p)
    p.set_defaults(func=_cmd_reenact)

    p = sub.add_parser(
        "tiny", help="write a complete pipeline of tiny random networks (tests, offline work)",
        description="Write a pipeline folder with tiny random weights, loadable wherever a model id is accepted "
                    "(--model DIR). Its pictures are meaningless; it exists for tests and offline trials.")
    p.add_argument("directory", help="output folder")
    p.add_argument("--model", default=None, choices=_pipeline_ids(),
                   help="the model family to imitate, by one of its model ids (default portrait4d-v2; goha: a tiny "
                        "GOHA pipeline)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed of the weights (0 or more; default 0)")
    p.add_argument("--preprocess", choices=["official", "mediapipe"], default=None,
                   help="face backend saved with it: official (random detector that sees a face anywhere, default) "
                        "or mediapipe (real face detection and crops, the [face] extra)")
    p.set_defaults(func=_cmd_tiny)

    p = sub.add_parser(
        "fit", help="talking-head video -> a person's GPHM Gaussian head avatar (resumable)",
        description="Prepare VIDEO with the mediapipe face backend (crop, matte, mesh, head pose; cached in "
                    "AVATAR_DIR/prepared) and fit a GPHM Gaussian head avatar to it (paper section 3.5) within a "
                    "time budget. Checkpoints go to AVATAR_DIR: running the same command again continues an "
                    "interrupted fit. No pretrained GPHM exists yet, so the fit starts from a template head unless "
                    "--from-model is given.")
    p.add_argument("video", help="talking-head video of one person (about a minute is plenty)")
    p.add_argument("-o", "--output", required=True, metavar="AVATAR_DIR", help="the avatar folder")
    p.add_argument("--minutes", type=float_option(0, 24 * 60), default=5.0,
                   help="wall-clock fitting budget in minutes (above 0, at most 1440; default 5)")
    p.add_argument("--steps", type=POSITIVE_INT, default=None, metavar="N",
                   help="fine-tuning steps at most (default: until the budget is spent)")
    p.add_argument("--resolution", type=int_option(16, 2048), default=512,
                   help="crop and fitting resolution in pixels, a multiple of 4 (default 512)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--max-frames", type=POSITIVE_INT, default=None, metavar="N", help="use only the first N frames")
    p.add_argument("--from-model", default=None, metavar="PATH",
                   help="a pretrained GPHM folder (GPHM.save_pretrained) to start from")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=None, metavar="N", help="frames per step (default 1)")
    p.add_argument("--num-points", type=int_option(16), default=None, metavar="N",
                   help="Gaussians of the template head (default 100000)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint in AVATAR_DIR and fit again")
    p.set_defaults(func=_cmd_fit)

    from . import live_command
    from .export import command as export_command  # light: torch is imported only when it runs

    p = sub.add_parser("live", help=live_command.HELP, description=f"avatar live: {live_command.HELP}.")
    live_command.add_arguments(p)
    p.set_defaults(func=live_command.run)
    p = sub.add_parser("export", help=export_command.HELP, description=export_command.DESCRIPTION)
    export_command.add_arguments(p)
    p.set_defaults(func=export_command.run)
    from . import genhead_command

    p = sub.add_parser("genhead", help=genhead_command.HELP, description=genhead_command.DESCRIPTION)
    genhead_command.add_arguments(p)
    p.set_defaults(func=genhead_command.run)

    for name, spec in FORWARDED.items():  # every later argument, --help included, goes to spec.target
        sub.add_parser(name, help=f"{spec.help} (= `{spec.same_as}`; `avatar {name} --help` for its options)",
                       add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``avatar [-v|-q] COMMAND ...``; returns the exit status (module docstring)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    verbosity = -1 if args.quiet else args.verbose
    setup_logging(verbosity)
    if args.command in FORWARDED:
        return _forward(args.command, rest, verbosity)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    return run_guarded(lambda: args.func(args), verbosity=verbosity, command=args.command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
