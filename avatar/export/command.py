"""``avatar export AVATAR --mesh OUT``: the head surface of a saved avatar as a GLB, OBJ or PLY mesh;
``avatar export AVATAR_DIR --ply OUT``: a fitted GPHM avatar's Gaussians as a 3D Gaussian Splatting PLY
(:mod:`avatar.export.gphm`).

The CLI registers it with :data:`HELP`, :data:`DESCRIPTION`, :func:`add_arguments` and :func:`run`. Everything
the user can get wrong (output suffix, options, the avatar file, scikit-image) is checked before the networks
load; errors are :class:`~avatar.errors.AvatarError` sentences (exit status 1).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from avatar.errors import InputError, InputNotFoundError
from avatar.export.defaults import DEFAULT_BORDER, DEFAULT_RESOLUTION, EG3D_LEVEL, WORLD_UNITS_PER_METRE

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

logger = logging.getLogger(__name__)

HELP = ("saved avatar -> mesh of its head surface (.glb, .obj, .ply) with vertex colours; fitted GPHM avatar "
        "folder -> 3D Gaussian Splatting PLY")
DESCRIPTION = (
    "Extract the head surface of a saved avatar (from `avatar reconstruct PHOTO --save-avatar FILE` or "
    "Avatar.save) by marching cubes on its triplane density, in its source expression, with vertex colours, and "
    "write it as binary glTF (.glb), Wavefront OBJ (.obj) or binary PLY (.ply). Coordinates: the renderer's world "
    "frame (+Y up, the face towards +Z), in its units (FLAME x 3; --metres divides by 3). Needs scikit-image "
    "(the [app] or [dev] extra). A fitted GPHM avatar folder (`avatar fit VIDEO -o AVATAR_DIR`) is exported with "
    "--ply OUT.ply instead: its Gaussians at the neutral expression as the standard 3D Gaussian Splatting PLY "
    "(SuperSplat and other 3DGS viewers open it), in metres in the avatar's world frame (MediaPipe's canonical "
    "face: +Y up, the face towards +Z; --canonical keeps GPHM's canonical units), colours from the first 3 "
    "feature channels as the renderer's raw image shows them (before the refine network)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``avatar export``."""
    parser.add_argument("avatar", help="a saved avatar (.safetensors, from --save-avatar or Avatar.save), or a "
                                       "fitted GPHM avatar folder (from `avatar fit`, with --ply)")
    output = parser.add_mutually_exclusive_group(required=True)
    output.add_argument("--mesh", metavar="OUT",
                        help="output mesh: .glb (binary glTF), .obj or .ply, chosen by the suffix")
    output.add_argument("--ply", metavar="OUT",
                        help="GPHM avatar folders: output 3D Gaussian Splatting PLY of its Gaussians at the "
                             "neutral expression, in metres in the avatar's world frame (MediaPipe's canonical "
                             "face: +Y up, the face towards +Z, origin inside the head)")
    parser.add_argument("--canonical", action="store_true",
                        help="with --ply: leave the Gaussians in GPHM's canonical units (the head about 1 unit "
                             "long; 1 unit = 0.25 m) instead of the world frame in metres")
    parser.add_argument("--extra-features", action="store_true",
                        help="with --ply: also write the feature channels beyond RGB (29 of GPHM's 32) as "
                             "f_extra_* properties (viewers that read by name skip them; the SIBR viewer "
                             "cannot read them)")
    parser.add_argument("--model", default="portrait4d-v2",
                        help="the model id or pipeline folder that made the avatar (default portrait4d-v2)")
    parser.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION, metavar="N",
                        help=f"density grid samples per axis (default {DEFAULT_RESOLUTION}; memory and time grow "
                             "as N^3)")
    parser.add_argument("--level", type=float, default=EG3D_LEVEL, metavar="L",
                        help=f"iso level on the raw density (default {EG3D_LEVEL:g}, EG3D's shape extraction); "
                             "lower: a fuller surface, higher: a thinner one")
    parser.add_argument("--border", type=int, default=DEFAULT_BORDER, metavar="K",
                        help="grid layers at each face of the box forced empty, so the surface closes there "
                             f"(default {DEFAULT_BORDER}; 0 keeps them; EG3D trims 30 per 256)")
    parser.add_argument("--motion-from", metavar="AVATAR2",
                        help="use the expression (source motion) of another saved avatar of the same model")
    parser.add_argument("--metres", action="store_true",
                        help="write positions in metres (world units / 3) instead of the renderer's units")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")


def _device(name: str) -> str:
    from avatar.runtime import resolve_device

    try:
        return resolve_device(name)
    except InputError as exc:  # the same message, naming the option
        raise InputError(f"--device {name}: {exc}") from None


def _check_avatar_file(path: Path, option: str) -> None:
    if not path.is_file():
        raise InputNotFoundError(f"{option} {path} does not exist; save an avatar first with `avatar reconstruct "
                                 "PHOTO -o orbit.mp4 --save-avatar me.avatar.safetensors`")


_MESH_OPTIONS = {"model": ("--model", "portrait4d-v2"), "resolution": ("--resolution", DEFAULT_RESOLUTION),
                 "level": ("--level", EG3D_LEVEL), "border": ("--border", DEFAULT_BORDER),
                 "motion_from": ("--motion-from", None), "metres": ("--metres", False)}
"""Options of the mesh export, with their defaults: given with --ply they are an error."""


def _run_gphm(args: argparse.Namespace) -> int:
    """``avatar export AVATAR_DIR --ply OUT``."""
    from avatar.fitting.gphm_fit import is_gphm_avatar_dir

    source = Path(args.avatar)
    if not is_gphm_avatar_dir(source):
        if source.suffix == ".safetensors" or source.is_file():
            raise InputError(f"--ply writes the Gaussians of a fitted GPHM avatar folder; {source} is not one (a "
                             "saved one-shot avatar is exported with --mesh OUT.glb)")
        raise InputNotFoundError(f"{source} is not a fitted GPHM avatar folder (no avatar.json of `avatar fit`); "
                                 "fit one with `avatar fit VIDEO -o AVATAR_DIR`")
    given = [flag for name, (flag, default) in _MESH_OPTIONS.items() if getattr(args, name, default) != default]
    if given:
        raise InputError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --mesh exports of saved "
                         "avatars, not to --ply of a GPHM avatar; leave "
                         f"{'it' if len(given) == 1 else 'them'} out")
    out = Path(args.ply)
    if out.suffix.lower() != ".ply":
        raise InputError(f"--ply {out}: the output must end in .ply")
    if out.is_dir():
        raise InputError(f"--ply {out} is a folder; give a file name such as {out / 'avatar.ply'}")
    device = _device(args.device)

    from avatar.export.gphm import export_gphm_ply
    from avatar.export.ply import read_gaussian_ply

    frame = "canonical" if args.canonical else "world"
    path = export_gphm_ply(source, out, frame=frame, extra_features=args.extra_features, device=device)
    n = read_gaussian_ply(path).num_gaussians
    logger.info("wrote %s: %d Gaussians at the neutral expression (%s%s)", path, n,
                "canonical units" if args.canonical else "metres, world frame",
                ", with f_extra_* features" if args.extra_features else "")
    return 0


def run(args: argparse.Namespace) -> int:
    """``avatar export``: returns the exit status (0)."""
    if getattr(args, "ply", None) is not None:
        return _run_gphm(args)
    from avatar.export.formats import check_mesh_path, write_mesh
    from avatar.export.mesh import check_marching_cubes
    from avatar.fitting.gphm_fit import is_gphm_avatar_dir

    if is_gphm_avatar_dir(args.avatar):
        raise InputError(f"{args.avatar} is a fitted GPHM avatar (Gaussians, no density field for a mesh); export "
                         "it with --ply OUT.ply")
    wrong = [flag for flag in ("canonical", "extra_features") if getattr(args, flag, False)]
    if wrong:
        raise InputError(f"{', '.join('--' + w.replace('_', '-') for w in wrong)} appl"
                         f"{'ies' if len(wrong) == 1 else 'y'} to --ply exports of GPHM avatar folders only")
    out = check_mesh_path(args.mesh)
    if args.resolution < 2 + 2 * max(args.border, 0) or args.border < 0:
        raise InputError(f"--resolution must leave samples inside the --border: use --resolution of at least "
                         f"{2 + 2 * max(args.border, 0)} and a --border of at least 0 (got {args.resolution} and "
                         f"{args.border})")
    source = Path(args.avatar)
    _check_avatar_file(source, "avatar")
    if args.motion_from:
        _check_avatar_file(Path(args.motion_from), "--motion-from")
    device = _device(args.device)
    check_marching_cubes()

    from avatar.export.mesh import avatar_mesh
    from avatar.pipelines.auto import load_pipeline

    pipe = load_pipeline(args.model, device=device)
    avatar = pipe.load_avatar(source)
    motion = pipe.load_avatar(Path(args.motion_from)).source_motion if args.motion_from else None
    mesh = avatar_mesh(pipe, avatar, motion, resolution=args.resolution, level=args.level, border=args.border,
                       progress=not getattr(args, "quiet", False))
    if args.metres:
        mesh = mesh.scaled(1 / WORLD_UNITS_PER_METRE)
    write_mesh(mesh, out)
    logger.info("wrote %s: %d vertices, %d triangles (level %g on a %d^3 grid, %s)", out, mesh.num_vertices,
                mesh.num_faces, args.level, args.resolution, "metres" if args.metres else "world units")
    return 0
