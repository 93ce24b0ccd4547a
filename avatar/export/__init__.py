"""Exports of an avatar to other tools: the head surface as a mesh (GLB, OBJ, PLY), Gaussians as a 3DGS PLY.

* :mod:`.mesh` - density on a grid, marching cubes, vertex colours (:func:`avatar_mesh`, :func:`extract_mesh`)
* :mod:`.formats` - the file writers (:func:`write_mesh`)
* :mod:`.command` - ``avatar export AVATAR --mesh OUT``
* :mod:`.defaults` - the default level, resolution and border
* :mod:`.ply` - Gaussians as the standard 3D Gaussian Splatting PLY (:func:`write_gaussian_ply`,
  :func:`read_gaussian_ply`)
* :mod:`.gphm` - a fitted GPHM avatar's neutral Gaussians as that PLY (:func:`export_gphm_ply`,
  ``avatar export AVATAR_DIR --ply OUT``)

Example::

    from avatar.export import avatar_mesh, write_mesh

    mesh = avatar_mesh(pipe, pipe.load_avatar("me.avatar.safetensors"), resolution=256)
    write_mesh(mesh, "me.glb")

Names are imported on first use, so that ``avatar.export.command`` (the CLI's parser) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "DEFAULT_BORDER": "defaults", "DEFAULT_RESOLUTION": "defaults", "EG3D_LEVEL": "defaults",
    "MESH_SUFFIXES": "formats", "write_glb": "formats", "write_mesh": "formats", "write_obj": "formats",
    "write_ply": "formats",
    "EmptySurfaceError": "mesh", "Mesh": "mesh", "avatar_field": "mesh", "avatar_mesh": "mesh",
    "density_grid": "mesh", "extract_mesh": "mesh", "field_colors": "mesh", "grid_axis": "mesh",
    "marching_cubes": "mesh",
    "GaussianPly": "ply", "read_gaussian_ply": "ply", "write_gaussian_ply": "ply",
    "export_gphm_ply": "gphm", "gphm_gaussians": "gphm",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
