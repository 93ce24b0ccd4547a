"""``avatar export AVATAR --mesh OUT``: the head surface of a saved avatar as a GLB, OBJ or PLY mesh.

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

HELP = "saved avatar -> mesh of its head surface (.glb, .obj, .ply) with vertex colours"
DESCRIPTION = (
    "Extract the head surface of a saved avatar (from `avatar reconstruct PHOTO --save-avatar FILE` or "
    "Avatar.save) by marching cubes on its triplane density, in its source expression, with vertex colours, and "
    "write it as binary glTF (.glb), Wavefront OBJ (.obj) or binary PLY (.ply). Coordinates: the renderer's world "
    "frame (+Y up, the face towards +Z), in its units (FLAME x 3; --metres divides by 3). Needs scikit-image "
    "(the [app] or [dev] extra)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``avatar export``."""
    parser.add_argument("avatar", help="a saved avatar (.safetensors, from --save-avatar or Avatar.save)")
    parser.add_argument("--mesh", required=True, metavar="OUT",
                        help="output mesh: .glb (binary glTF), .obj or .ply, chosen by the suffix")
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


def run(args: argparse.Namespace) -> int:
    """``avatar export``: returns the exit status (0)."""
    from avatar.export.formats import check_mesh_path, write_mesh
    from avatar.export.mesh import check_marching_cubes

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
