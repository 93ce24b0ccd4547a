"""Mesh files: Wavefront OBJ, binary PLY and binary glTF 2.0 (GLB), written by hand (no dependency).

Every writer keeps the mesh's coordinates as they are (no axis flip: the Portrait4D world frame is already
``+Y`` up with the face towards ``+Z``, glTF's frame; see :mod:`avatar.export.mesh`) and writes atomically: a
partial file in the same folder (``.head.partial-<pid>-<random>.glb``), created with the mode a new file gets
(``0o666 & ~umask``), moved into place with :func:`os.replace` when complete; nothing is left on failure.

* **OBJ**: ``v x y z r g b`` lines (colour in ``[0, 1]``, sRGB, the extension MeshLab, Blender and trimesh read)
  and 1-based ``f a b c`` lines.
* **PLY**: ``binary_little_endian 1.0``; ``vertex`` with ``float x, y, z`` and ``uchar red, green, blue`` (sRGB);
  ``face`` with ``list uchar int vertex_indices``.
* **GLB**: one scene, one node, one mesh of one triangle primitive: ``POSITION`` float32 VEC3 (with ``min``
  / ``max``), ``COLOR_0`` float32 VEC3 and uint32 indices, in one buffer. glTF defines vertex colours as
  *linear* RGB (glTF 2.0 spec, 3.7.2.1 "Meshes / Overview": ``COLOR_n`` is a linear multiplier), so the sRGB
  colours are decoded with the sRGB transfer function first (float32 keeps the dark tones that 8-bit linear
  values would lose). The material is matte (``metallicFactor`` 0, ``roughnessFactor`` 1; glTF's default
  material is fully metallic and looks black in most viewers) and asks for ``KHR_materials_unlit`` (the colours
  are already lit, they come from a radiance field); viewers without the extension fall back to the matte PBR.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from avatar.errors import InputError, UnknownOptionValueError
from avatar.export.mesh import Mesh
from avatar.io.files import create_partial, remove_stale_partials

__all__ = ["MESH_SUFFIXES", "check_mesh_path", "glb_bytes", "srgb_to_linear", "write_glb", "write_mesh", "write_obj",
           "write_ply"]

MESH_SUFFIXES = (".glb", ".obj", ".ply")
GENERATOR = "avatar4d mesh export"

# glTF constants
_FLOAT, _UINT32 = 5126, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_TRIANGLES = 4
_GLB_MAGIC, _CHUNK_JSON, _CHUNK_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942


def check_mesh_path(path: str | Path) -> Path:
    """The output path if its suffix is a mesh format and it is not a folder, else an :class:`InputError`."""
    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise UnknownOptionValueError(f"mesh output {path} must end in {', '.join(MESH_SUFFIXES)} (binary glTF, "
                                      "Wavefront OBJ or binary PLY)")
    if path.is_dir():
        raise InputError(f"mesh output {path} is a folder; give a file name such as {path / 'head.glb'}")
    return path


def write_mesh(mesh: Mesh, path: str | Path) -> Path:
    """Write ``mesh`` in the format of ``path``'s suffix (``.glb``, ``.obj``, ``.ply``); returns the path."""
    path = check_mesh_path(path)
    writer = {".glb": write_glb, ".obj": write_obj, ".ply": write_ply}[path.suffix.lower()]
    return writer(mesh, path)


# ----------------------------------------------------------------------------------------------------------
# atomic writes


def _write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write through a partial file of :mod:`avatar.io.files` (the user's umask, stale ones of killed runs
    removed first), moved into place with :func:`os.replace` when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = create_partial(path)
    try:
        with tmp.open("wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------------------------
# OBJ and PLY


def write_obj(mesh: Mesh, path: str | Path) -> Path:
    """Wavefront OBJ with ``v x y z r g b`` vertex colours (module docstring)."""

    def write(f: BinaryIO) -> None:
        f.write(f"# {GENERATOR}: {mesh.num_vertices} vertices, {mesh.num_faces} triangles\n".encode())
        f.write(b"# +Y up, +Z towards the viewer; Portrait4D world units (FLAME x 3) unless scaled\n")
        if mesh.colors is not None:
            rows = np.concatenate([mesh.vertices.astype(np.float64), mesh.colors / 255.0], axis=1)
            np.savetxt(f, rows, fmt="v %.6g %.6g %.6g %.4f %.4f %.4f")
        else:
            np.savetxt(f, mesh.vertices.astype(np.float64), fmt="v %.6g %.6g %.6g")
        np.savetxt(f, mesh.faces + 1, fmt="f %d %d %d")

    return _write_atomic(Path(path), write)


def write_ply(mesh: Mesh, path: str | Path) -> Path:
    """Binary little-endian PLY with uchar vertex colours (module docstring)."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if mesh.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertices = np.empty(mesh.num_vertices, dtype=np.dtype(fields))
    for axis, name in enumerate("xyz"):
        vertices[name] = mesh.vertices[:, axis]
    if mesh.colors is not None:
        for channel, name in enumerate(("red", "green", "blue")):
            vertices[name] = mesh.colors[:, channel]
    faces = np.empty(mesh.num_faces, dtype=np.dtype([("n", "u1"), ("indices", "<i4", (3,))]))
    faces["n"] = 3
    faces["indices"] = mesh.faces
    properties = "".join(f"property {'float' if kind == '<f4' else 'uchar'} {name}\n" for name, kind in fields)
    header = (f"ply\nformat binary_little_endian 1.0\ncomment {GENERATOR}\nelement vertex {mesh.num_vertices}\n"
              f"{properties}element face {mesh.num_faces}\nproperty list uchar int vertex_indices\nend_header\n")

    def write(f: BinaryIO) -> None:
        f.write(header.encode("ascii"))
        f.write(vertices.tobytes())
        f.write(faces.tobytes())

    return _write_atomic(Path(path), write)


# ----------------------------------------------------------------------------------------------------------
# GLB


def srgb_to_linear(colors: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> float32 linear RGB in ``[0, 1]`` (the IEC 61966-2-1 transfer function)."""
    c = np.asarray(colors, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _pad4(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def glb_bytes(mesh: Mesh) -> bytes:
    """The GLB file of ``mesh`` (module docstring)."""
    if mesh.num_faces == 0:
        raise InputError("the mesh has no triangles, and glTF needs at least one; check the level")
    if mesh.num_vertices >= 2**32 - 1:
        raise InputError(f"{mesh.num_vertices} vertices do not fit glTF's 32-bit indices; use a lower resolution")
    positions = mesh.vertices.astype("<f4").tobytes()
    parts = [positions]
    views = [{"buffer": 0, "byteOffset": 0, "byteLength": len(positions), "target": _ARRAY_BUFFER}]
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    accessors: list[dict] = [{"bufferView": 0, "componentType": _FLOAT, "count": mesh.num_vertices, "type": "VEC3",
                              "min": [float(v) for v in lo], "max": [float(v) for v in hi]}]
    attributes = {"POSITION": 0}

    def add(data: bytes, target: int, accessor: dict) -> int:
        offset = sum(len(p) for p in parts)  # every part is a multiple of 4 bytes
        parts.append(data)
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(data), "target": target})
        accessors.append({"bufferView": len(views) - 1, **accessor})
        return len(accessors) - 1

    if mesh.colors is not None:
        linear = srgb_to_linear(mesh.colors).astype("<f4").tobytes()
        attributes["COLOR_0"] = add(linear, _ARRAY_BUFFER,
                                    {"componentType": _FLOAT, "count": mesh.num_vertices, "type": "VEC3"})
    indices = add(mesh.faces.astype("<u4").tobytes(), _ELEMENT_ARRAY_BUFFER,
                  {"componentType": _UINT32, "count": mesh.faces.size, "type": "SCALAR"})
    binary = b"".join(parts)
    gltf = {
        "asset": {"version": "2.0", "generator": GENERATOR},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "head"}],
        "meshes": [{"name": "head", "primitives": [
            {"attributes": attributes, "indices": indices, "mode": _TRIANGLES, "material": 0}]}],
        "materials": [{"name": "vertex colours",
                       "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
                                                "roughnessFactor": 1.0},
                       "extensions": {"KHR_materials_unlit": {}}}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(binary)}],
    }
    json_chunk = _pad4(json.dumps(gltf, separators=(",", ":")).encode("utf-8"), b" ")
    bin_chunk = _pad4(binary, b"\0")
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    return b"".join([struct.pack("<III", _GLB_MAGIC, 2, total),
                     struct.pack("<II", len(json_chunk), _CHUNK_JSON), json_chunk,
                     struct.pack("<II", len(bin_chunk), _CHUNK_BIN), bin_chunk])


def write_glb(mesh: Mesh, path: str | Path) -> Path:
    """Binary glTF 2.0 (module docstring)."""
    data = glb_bytes(mesh)

    def write(f: BinaryIO) -> None:
        f.write(data)

    return _write_atomic(Path(path), write)
