"""3D Gaussian Splatting PLY files: the layout common splat viewers open, written and read with plain numpy.

The format is the one the original 3D Gaussian Splatting code (Kerbl et al. 2023, ``GaussianModel.save_ply``)
writes and that SuperSplat, antimatter15's ``splat`` viewer (its PLY converter), the SIBR viewer of the
original release and most other tools read::

    ply
    format binary_little_endian 1.0
    element vertex N
    property float x             \\
    property float y              } mean
    property float z             /
    property float nx            \\
    property float ny             } normals, always 0 (the original writes zeros; viewers ignore them)
    property float nz            /
    property float f_dc_0        \\
    property float f_dc_1         } degree-0 spherical-harmonic coefficient per colour channel
    property float f_dc_2        /
    property float f_rest_0      \\  only with higher-degree SH: 3 * K values, channel-major
    ...                           } (f_rest_{c K + k} = coefficient k of channel c, K = (degree + 1)^2 - 1)
    property float f_rest_{3K-1} /
    property float opacity       -- logit of the opacity (the viewers apply a sigmoid)
    property float scale_0       \\
    property float scale_1        } natural log of the per-axis standard deviation (the viewers apply exp)
    property float scale_2       /
    property float rot_0         \\
    ...                           } unit quaternion w, x, y, z (rot_0 is w)
    property float rot_3         /
    end_header
    <N records of float32, little endian, in this order, no padding>

Colours: a colour ``c`` in ``[0, 1]`` becomes ``f_dc = (c - 0.5) / C0`` with ``C0 = 0.28209479177387814``,
the degree-0 SH basis constant ``1 / (2 sqrt(pi))``; viewers show ``0.5 + C0 f_dc``.

Choices:

* **Opacity** is clipped to ``[OPACITY_EPS, 1 - OPACITY_EPS]`` (``1e-6``: logits within +-13.8) before the
  logit, so exact 0 and 1 (common after thresholding) stay finite. **Scales** must be positive and finite;
  quaternions must be non-zero and are normalised (the viewers normalise too, so this only makes the file
  tidy).
* **SH rest**: none by default. The SIBR viewer of the original release reads fixed-size records of SH degree
  3 (62 floats, set by the model's ``cfg_args``) and misreads anything else, so ``sh_degree=3`` pads the missing
  coefficients with zeros to give exactly the original layout; SuperSplat and the ``splat`` converter read the
  properties by name and take any degree.
* **Extra features** (e.g. GPHM's 32-channel colour beyond RGB) go after ``rot_3`` as ``f_extra_0 ..``
  float32 properties: tools that read by name (SuperSplat, the ``splat`` converter, ``plyfile``) skip them, the
  SIBR viewer does not (its fixed records), so leave them out for SIBR.
* The file is written atomically (a partial file next to the target, moved into place when complete), like
  the other exports of :mod:`avatar.export`.

:func:`read_gaussian_ply` reads these files and those of other tools in the same layout (any property order,
``float``/``double``/integer properties, extra properties kept by name); ASCII and big-endian PLY are refused
with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from avatar.errors import FormatError, InputError, InputNotFoundError
from avatar.export.formats import _write_atomic

__all__ = ["OPACITY_EPS", "SH_C0", "GaussianPly", "colors_to_sh_dc", "gaussian_ply_header",
           "read_gaussian_ply", "sh_dc_to_colors", "write_gaussian_ply"]

SH_C0 = 0.28209479177387814
"""The degree-0 real spherical-harmonic basis constant ``1 / (2 sqrt(pi))``."""

OPACITY_EPS = 1e-6
"""Opacities are clipped to ``[OPACITY_EPS, 1 - OPACITY_EPS]`` before the logit."""

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2", "ushort": "u2",
    "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}


def colors_to_sh_dc(colors: np.ndarray) -> np.ndarray:
    """Colours in ``[0, 1]`` -> degree-0 SH coefficients ``(c - 0.5) / C0`` (float64 arithmetic, float32 out)."""
    return ((np.asarray(colors, dtype=np.float64) - 0.5) / SH_C0).astype(np.float32)


def sh_dc_to_colors(sh_dc: np.ndarray) -> np.ndarray:
    """Degree-0 SH coefficients -> the colour a viewer shows, ``0.5 + C0 f_dc`` (not clipped)."""
    return (0.5 + SH_C0 * np.asarray(sh_dc, dtype=np.float64)).astype(np.float32)


@dataclass
class GaussianPly:
    """Gaussians read from (or to be written to) a 3DGS PLY, in natural units.

    Attributes:
        means: ``(N, 3)`` float32 centres.
        quats: ``(N, 4)`` float32 unit quaternions ``w, x, y, z``.
        scales: ``(N, 3)`` float32 standard deviations (linear; the file stores their log).
        opacities: ``(N,)`` float32 in ``(0, 1)`` (the file stores the logit).
        sh_dc: ``(N, 3)`` float32 degree-0 SH coefficients.
        sh_rest: ``(N, K, 3)`` float32 higher-degree coefficients (``K = 0`` when the file has none).
        extra: other per-Gaussian properties by name (``f_extra_*`` and anything a foreign file adds;
            normals are dropped).
    """

    means: np.ndarray
    quats: np.ndarray
    scales: np.ndarray
    opacities: np.ndarray
    sh_dc: np.ndarray
    sh_rest: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def colors(self) -> np.ndarray:
        """``(N, 3)`` the degree-0 colours ``0.5 + C0 f_dc`` (not clipped)."""
        return sh_dc_to_colors(self.sh_dc)

    @property
    def sh_degree(self) -> int:
        """Degree of the SH stored (0 without ``f_rest``)."""
        return int(round(np.sqrt(self.sh_rest.shape[1] + 1))) - 1

    @property
    def extra_features(self) -> np.ndarray | None:
        """``(N, D)`` the ``f_extra_0 .. f_extra_{D-1}`` properties in order, or ``None``."""
        names = sorted((k for k in self.extra if k.startswith("f_extra_") and k[8:].isdigit()),
                       key=lambda k: int(k[8:]))
        return np.stack([self.extra[k] for k in names], axis=1) if names else None


def _array(name: str, value: object, shape: tuple[int | None, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape, strict=True)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise InputError(f"{name} must have shape {want}, got {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinity")
    return arr


def _sh_count(degree: int) -> int:
    return (degree + 1) ** 2 - 1


def gaussian_ply_header(num_gaussians: int, num_rest: int = 0, num_extra: int = 0) -> str:
    """The header text of a file with ``num_rest`` ``f_rest_*`` and ``num_extra`` ``f_extra_*`` properties."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(num_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    names += [f"f_extra_{i}" for i in range(num_extra)]
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {int(num_gaussians)}"]
    lines += [f"property float {n}" for n in names]
    lines.append("end_header")
    return "\n".join(lines) + "\n"


def write_gaussian_ply(
    path: str | Path,
    means: np.ndarray,
    quats: np.ndarray,
    scales: np.ndarray,
    opacities: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    sh_dc: np.ndarray | None = None,
    sh_rest: np.ndarray | None = None,
    sh_degree: int | None = None,
    extra_features: np.ndarray | None = None,
) -> Path:
    """Write Gaussians as a standard 3DGS binary PLY (module docstring); returns the path.

    Args:
        path: the output file (its folder is created).
        means: ``(N, 3)`` centres.
        quats: ``(N, 4)`` rotations as quaternions ``w, x, y, z`` (normalised here; any non-zero length).
        scales: ``(N, 3)`` positive standard deviations, linear (the file stores ``log``).
        opacities: ``(N,)`` in ``[0, 1]`` (the file stores the logit of the value clipped to
            ``[OPACITY_EPS, 1 - OPACITY_EPS]``).
        colors: ``(N, 3)`` colours in ``[0, 1]`` (stored as ``f_dc = (c - 0.5) / C0``); give this or ``sh_dc``.
        sh_dc: ``(N, 3)`` degree-0 SH coefficients, stored as they are.
        sh_rest: ``(N, K, 3)`` higher-degree SH coefficients (``K = 3, 8 or 15`` for degree 1, 2, 3), written as
            ``f_rest_*`` channel-major as the original code does.
        sh_degree: write ``f_rest_*`` for this degree, zero-padding ``sh_rest`` (``3`` gives the exact layout the
            SIBR viewer reads); ``None``: the degree of ``sh_rest``, or none.
        extra_features: ``(N, D)`` more float properties ``f_extra_0 ..`` after ``rot_3``.

    Raises:
        InputError: shapes that disagree, NaN or infinity, non-positive scales, opacities outside ``[0, 1]``,
            zero quaternions, both or neither of ``colors`` / ``sh_dc``.
    """
    xyz = _array("means", means, (None, 3))
    n = xyz.shape[0]
    q = _array("quats", quats, (n, 4))
    s = _array("scales", scales, (n, 3))
    o = _array("opacities", opacities, (n,))
    if (colors is None) == (sh_dc is None):
        raise InputError("give the colours either as colors (N, 3) in [0, 1] or as sh_dc (N, 3), exactly one")
    if colors is not None:
        c = _array("colors", colors, (n, 3))
        dc = (c - 0.5) / SH_C0
    else:
        dc = _array("sh_dc", sh_dc, (n, 3))
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if (norms <= 0).any():
        raise InputError(f"{int((norms <= 0).sum())} quaternion(s) are zero; a rotation needs a non-zero quaternion")
    if (s <= 0).any():
        raise InputError(f"scales must be positive (the file stores their log); {int((s <= 0).sum())} are not")
    if (o < 0).any() or (o > 1).any():
        raise InputError(f"opacities must lie in [0, 1], got values from {o.min():.4g} to {o.max():.4g}")
    rest = np.zeros((n, 0, 3)) if sh_rest is None else _array("sh_rest", sh_rest, (n, None, 3))
    degree = sh_degree
    if degree is None:
        degree = int(round(np.sqrt(rest.shape[1] + 1))) - 1
        if _sh_count(degree) != rest.shape[1]:
            raise InputError(f"sh_rest must hold (degree + 1)^2 - 1 = 3, 8 or 15 coefficients per channel, got "
                             f"{rest.shape[1]}")
    elif not 0 <= degree <= 4 or _sh_count(degree) < rest.shape[1]:
        raise InputError(f"sh_degree {degree} must be in 0..4 and hold sh_rest's {rest.shape[1]} coefficients")
    k = _sh_count(degree)
    if rest.shape[1] < k:
        rest = np.concatenate([rest, np.zeros((n, k - rest.shape[1], 3))], axis=1)
    extra = np.zeros((n, 0)) if extra_features is None else _array("extra_features", extra_features, (n, None))

    p = np.clip(o, OPACITY_EPS, 1.0 - OPACITY_EPS)
    columns = [xyz, np.zeros((n, 3)), dc, rest.transpose(0, 2, 1).reshape(n, 3 * k),
               np.log(p / (1.0 - p))[:, None], np.log(s), q / norms, extra]
    records = np.ascontiguousarray(np.concatenate(columns, axis=1).astype("<f4"))
    header = gaussian_ply_header(n, 3 * k, extra.shape[1]).encode("ascii")

    def write(f: BinaryIO) -> None:
        f.write(header)
        f.write(records.tobytes())

    return _write_atomic(Path(path), write)


def _parse_header(raw: bytes, path: Path) -> tuple[int, int, list[tuple[str, str]]]:
    """``(bytes of the header, vertex count, [(property, numpy type)])`` of the vertex element."""
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise FormatError(f"{path} is not a PLY file (no 'ply' magic or 'end_header')")
    nl = raw.find(b"\n", end)
    if nl < 0:
        raise FormatError(f"{path}: the PLY header does not end with a newline")
    lines = raw[:end].decode("ascii", errors="replace").replace("\r", "").split("\n")
    fmt, count, props, element = None, None, [], None
    for line in lines:
        parts = line.split()
        if not parts or parts[0] in ("ply", "comment", "obj_info"):
            continue
        if parts[0] == "format":
            fmt = parts[1] if len(parts) > 1 else ""
        elif parts[0] == "element":
            if element == "vertex":
                raise FormatError(f"{path}: an element follows 'vertex'; a 3DGS PLY has the vertex element only")
            element = parts[1] if len(parts) > 1 else ""
            if element == "vertex":
                count = int(parts[2])
            elif count is None:
                raise FormatError(f"{path}: element {element!r} comes before the vertices; not a 3DGS PLY")
        elif parts[0] == "property" and element == "vertex":
            if parts[1] == "list" or parts[1] not in _PLY_TYPES or len(parts) != 3:
                raise FormatError(f"{path}: vertex property {' '.join(parts[1:])!r} is not a scalar PLY type")
            props.append((parts[2], "<" + _PLY_TYPES[parts[1]]))
    if fmt != "binary_little_endian":
        raise FormatError(f"{path} is a {fmt} PLY; Gaussian splat files are binary_little_endian (convert it, e.g. "
                          "with plyfile or MeshLab)")
    if count is None:
        raise FormatError(f"{path} has no vertex element")
    return nl + 1, count, props


def read_gaussian_ply(path: str | Path) -> GaussianPly:
    """Read a 3DGS PLY (module docstring) into natural units: ``scales = exp``, ``opacities = sigmoid``,
    quaternions normalised.

    Raises:
        InputNotFoundError: no such file.
        FormatError: not a binary little-endian PLY, missing a property of the layout, or shorter than its
            header says.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path} does not exist; give a .ply file of Gaussians")
    raw = path.read_bytes()
    start, count, props = _parse_header(raw[:1 << 20], path)
    dtype = np.dtype(props)
    need = count * dtype.itemsize
    if len(raw) - start < need:
        raise FormatError(f"{path} is truncated: {count} Gaussians need {need} bytes of data, it holds "
                          f"{len(raw) - start}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=start)
    names = set(dtype.names or ())
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [k for k in required if k not in names]
    if missing:
        raise FormatError(f"{path} is not a Gaussian splat PLY: it lacks {', '.join(missing)}")

    def cols(keys: list[str]) -> np.ndarray:
        if not keys:
            return np.zeros((count, 0), dtype=np.float64)
        return np.stack([data[k].astype(np.float64) for k in keys], axis=1)

    rest_keys = sorted((k for k in names if k.startswith("f_rest_") and k[7:].isdigit()), key=lambda k: int(k[7:]))
    k_rest = len(rest_keys) // 3
    if len(rest_keys) % 3 or [int(k[7:]) for k in rest_keys] != list(range(len(rest_keys))):
        raise FormatError(f"{path}: the f_rest_* properties are not 3 K consecutive ones ({len(rest_keys)} found)")
    rest = cols(rest_keys).reshape(count, 3, k_rest).transpose(0, 2, 1)
    quats = cols(["rot_0", "rot_1", "rot_2", "rot_3"])
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.where(norms > 0, quats / np.where(norms > 0, norms, 1.0), np.array([1.0, 0, 0, 0]))
    known = set(required) | set(rest_keys) | {"nx", "ny", "nz"}
    extra = {k: np.array(data[k], dtype=np.float32) for k in dtype.names or () if k not in known}
    logit = cols(["opacity"])[:, 0]
    with np.errstate(over="ignore"):
        opacities = 1.0 / (1.0 + np.exp(-logit))
    return GaussianPly(
        means=cols(["x", "y", "z"]).astype(np.float32),
        quats=quats.astype(np.float32),
        scales=np.exp(cols(["scale_0", "scale_1", "scale_2"])).astype(np.float32),
        opacities=opacities.astype(np.float32),
        sh_dc=cols(["f_dc_0", "f_dc_1", "f_dc_2"]).astype(np.float32),
        sh_rest=rest.astype(np.float32),
        extra=extra,
    )
