"""``avatar genhead sample|animate``: GenHead's random heads as a picture grid, and one of them driven by a video.

* ``avatar genhead sample --n 16 --seed 0 -o grid.png``: seeds ``seed .. seed+n-1``, one 512^2 head each;
* ``avatar genhead animate --seed 3 --driving video.mp4 -o out.mp4 [--orbit]``: the head of one seed with the
  expressions, jaw, gaze and head motion of a driving video (read by the toolkit's face preprocessing), or with
  the camera circling it.

Identities, cameras and motions: :mod:`avatar.pipelines.genhead`. The FLAME shape and sample expressions come
from the official parameter pools (``--pools``); without them heads use the mean shape and a neutral face.
Errors are one sentence (exit status 1), checked before the networks load where possible.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from avatar.errors import AvatarError, InputError

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

logger = logging.getLogger("avatar.genhead")

HELP = "GenHead, the 4D head generator: random heads (sample) and a head driven by a video (animate)"
DESCRIPTION = ("GenHead (Portrait4D's part-wise 4D head generator): `sample` writes a grid of random heads, `animate` "
               "drives one of them with a video's expressions and head motion, or orbits the camera around it.")


def _common(p: argparse.ArgumentParser) -> None:
    from avatar.cli import SEED

    p.add_argument("--model", default="genhead-ffhq512",
                   help="genhead-ffhq512 (default; `avatar download genhead-ffhq512`) or a folder from "
                        "GenHead.save_pretrained / train/genhead.py")
    p.add_argument("--seed", type=SEED, default=0, help="random seed of the (first) identity (default 0)")
    p.add_argument("--truncation", type=float, default=0.7, metavar="PSI",
                   help="truncation psi in [0, 1]: lower is more average, higher more varied (default 0.7)")
    p.add_argument("--pools", default="auto",
                   help="FLAME shapes and expressions to draw from: auto (the official pools when cached, else "
                        "the mean shape and a neutral face; default), registry (download them), none, or a folder "
                        "holding the four official *_params.npy files")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands of ``avatar genhead``."""
    from avatar.cli import POSITIVE_INT

    sub = parser.add_subparsers(dest="genhead_command", metavar="ACTION", required=True)
    p = sub.add_parser("sample", help="a grid of random heads", description="Render N random heads (seeds SEED .. "
                       "SEED+N-1) into one image grid (PNG or JPEG).")
    p.add_argument("-o", "--output", required=True, help="output image (.png or .jpg)")
    p.add_argument("--n", type=POSITIVE_INT, default=16, metavar="N", help="number of heads (default 16)")
    p.add_argument("--columns", type=POSITIVE_INT, default=None, metavar="K", help="heads per row (default ~sqrt N)")
    _common(p)
    p = sub.add_parser("animate", help="one random head driven by a video, or orbited by the camera",
                       description="Drive the head of SEED with the expressions, jaw, gaze and head motion of a "
                                   "video, or with --orbit move the camera around it.")
    p.add_argument("-o", "--output", required=True, help="output video (.mp4)")
    p.add_argument("--driving", help="driving video (needed unless --orbit is given)")
    p.add_argument("--orbit", action="store_true", help="camera orbit (with --driving: the driving expressions "
                   "and a moving camera; without: the sample expression)")
    p.add_argument("--frames", type=POSITIVE_INT, default=60, metavar="N", help="orbit frames without --driving "
                   "(default 60)")
    p.add_argument("--pose", choices=["neck", "camera", "fixed"], default="neck",
                   help="driving head rotation: neck (FLAME neck, fixed camera; default), camera, fixed")
    p.add_argument("--max-frames", type=POSITIVE_INT, default=None, metavar="N", help="first N driving frames")
    p.add_argument("--no-smooth", action="store_true", help="no one-euro smoothing of the driving crops and poses")
    p.add_argument("--preprocess", choices=["official", "mediapipe"], default="official",
                   help="face preprocessing of the driving video (default official)")
    p.add_argument("--face-pipeline", metavar="DIR",
                   help="take the face preprocessing from a saved pipeline folder instead (e.g. `avatar tiny`)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=4, metavar="N", help="frames per batch (default 4)")
    _common(p)


def _device(name: str) -> str:
    from avatar.runtime import resolve_device

    try:
        return resolve_device(name)
    except InputError as exc:
        raise InputError(f"--device {name}: {exc}") from None


def _pools(choice: str) -> Any:
    """The parameter pools of ``--pools`` (``None``: mean shape, neutral face)."""
    if choice == "none":
        return None
    from avatar.models.genhead.pools import FlameParameterPools

    if choice not in ("auto", "registry"):
        folder = Path(choice)
        if not folder.is_dir():
            raise InputError(f"--pools {choice}: not a folder; give auto, registry, none or the folder of the four "
                             "official *_params.npy files")
        return FlameParameterPools.from_folder(folder)
    try:
        return FlameParameterPools.from_registry()
    except AvatarError as exc:
        if choice == "registry":
            raise
        logger.warning("the official FLAME parameter pools are not available (%s): heads use the mean FLAME shape "
                       "and a neutral face; `avatar download --file ...` or --pools DIR give varied ones", exc)
        return None


def _check(args: argparse.Namespace) -> None:
    if not 0.0 <= args.truncation <= 1.0:
        raise InputError(f"--truncation must lie in [0, 1], got {args.truncation}")
    out = Path(args.output)
    if args.genhead_command == "sample" and out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise InputError(f"-o {out}: write the grid as .png or .jpg")
    if args.genhead_command == "animate":
        if out.suffix.lower() != ".mp4":
            raise InputError(f"-o {out}: write the video as .mp4")
        if not args.driving and not args.orbit:
            raise InputError("give a driving video (--driving VIDEO) or --orbit")
        if args.driving and not Path(args.driving).is_file():
            raise InputError(f"--driving {args.driving} does not exist")
    out.parent.mkdir(parents=True, exist_ok=True)


def run(args: argparse.Namespace) -> int:
    """``avatar genhead``: returns the exit status (0)."""
    _check(args)
    device = _device(args.device)
    from avatar.models.genhead import GenHead

    model = GenHead.from_pretrained(args.model, device=device)
    if not model.can_render:
        raise InputError(f"{args.model} has no FLAME assets, so it cannot render; load genhead-ffhq512 or a folder "
                         "saved from a GenHead that renders")
    pools = _pools(args.pools)
    if args.genhead_command == "sample":
        return _sample(args, model, pools)
    return _animate(args, model, pools, device)


def _sample(args: argparse.Namespace, model: Any, pools: Any) -> int:
    from PIL import Image

    from avatar.pipelines.frames import image_grid
    from avatar.pipelines.genhead import sample_grid

    seeds = list(range(args.seed, args.seed + args.n))
    images = sample_grid(model, seeds, pools, args.truncation)
    import torch

    grid = image_grid(torch.from_numpy(images).permute(0, 3, 1, 2), args.columns)
    Image.fromarray(grid).save(args.output)
    logger.info("wrote %s: %d heads (seeds %d-%d, truncation %.2f)", args.output, len(seeds), seeds[0], seeds[-1],
                args.truncation)
    return 0


def _animate(args: argparse.Namespace, model: Any, pools: Any, device: str) -> int:
    from fractions import Fraction

    from avatar.face.geometry import FlameLabel
    from avatar.io import VideoReader, VideoWriter
    from avatar.pipelines.genhead import animate, driving_flame, identity_from_seed, seed_motion
    from avatar.render.camera import orbit_labels

    identity = identity_from_seed(model, args.seed, pools, args.truncation)
    fps: Fraction | float = Fraction(25)
    if args.driving:
        reader = VideoReader(args.driving, max_frames=args.max_frames)
        fps = reader.fps
        pre = _preprocessor(args, device)
        labels = (label for label, _ in driving_flame(pre, reader, args.batch_size, args.max_frames,
                                                       smooth=not args.no_smooth))
        orbit = orbit_labels(max(len(reader), 1)) if args.orbit else None
    else:
        import torch

        exp, pose, eye = (t.cpu() for t in seed_motion(model, args.seed, pools))
        label = FlameLabel(torch.zeros(25), identity.shape[0].cpu(), exp[0], pose[0], eye[0])
        labels = (label for _ in range(args.frames))
        orbit = orbit_labels(args.frames)
    with VideoWriter(Path(args.output), fps) as writer:
        for frame in animate(model, identity, labels, args.pose, orbit, args.batch_size):
            writer.write(frame)
    logger.info("wrote %s: %d frames at %s fps (seed %d)", args.output, writer.frames_written, writer.fps, args.seed)
    return 0


def _preprocessor(args: argparse.Namespace, device: str) -> Any:
    from avatar.pipelines.preprocess import FacePreprocessor

    if args.face_pipeline:
        from avatar.pipelines.auto import load_pipeline

        pipe = load_pipeline(args.face_pipeline, device=device)
        pre = getattr(pipe, "preprocessor", None)
        if pre is None:
            raise InputError(f"--face-pipeline {args.face_pipeline} holds no face preprocessing")
        return pre
    return FacePreprocessor.from_pretrained(args.preprocess, motion=False).to(device)
