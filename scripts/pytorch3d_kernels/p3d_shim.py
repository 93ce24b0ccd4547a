"""pytorch3d's own kernels for the official Portrait-4D code, without installing pytorch3d.

pytorch3d has no wheel for current PyTorch. The official deformer (``training/deformer/{deformation,deform_utils,
mesh_renderer}.py``) needs four of its kernels: ``knn_points_idx`` (``knn_points`` / ``knn_gather``),
``point_face_dist_forward`` (called directly on ``pytorch3d._C``), ``rasterize_meshes`` (``MeshRasterizer`` with
``FoVPerspectiveCameras``) and, on CUDA, ``interp_face_attrs_forward`` (``interpolate_face_attributes``). This
module compiles exactly those kernels from an *unmodified* pytorch3d source folder with
``torch.utils.cpp_extension.load`` (JIT, in place: the ``.cpp`` / ``.cu`` files are read from the given folder,
never copied; :file:`binding.cpp` beside this file is the only C++ of ours, ext.cpp's bindings for those kernels),
and re-creates the Python glue around them the way pytorch3d writes it (``pytorch3d/ops/knn.py``,
``ops/interp_face_attrs.py``, ``structures/meshes.py`` / ``pointclouds.py`` packed-padded conversions,
``renderer/cameras.py`` projection maths, ``transforms/transform3d.py`` point transforms,
``renderer/mesh/rasterizer.py`` + ``rasterize_meshes.py`` with the bin-size heuristic). Triangle clipping at
``z_clip_value = znear / 2`` (perspective cameras) runs pytorch3d's own ``renderer/mesh/clip.py``, loaded
unmodified from the same source folder (it imports only torch).

Supported (anything else raises): ``Meshes`` / ``Pointclouds`` built from padded tensors (no lists, no textures,
normals or features); ``FoVPerspectiveCameras`` / ``FoVOrthographicCameras`` (``R``, ``T``, ``K`` and the FoV
parameters as in pytorch3d); ``MeshRasterizer`` with any ``RasterizationSettings`` that pytorch3d's own kernels take
(blur, several faces per pixel, bins, culling, clipping: these are kernel arguments, passed through);
``interpolate_face_attributes``; ``knn_points`` (L1/L2, lengths, sorted) and ``knn_gather``. The other names
``mesh_renderer.py`` imports (``look_at_view_transform``, ``DirectionalLights``, ``MeshRenderer``,
``SoftPhongShader``, ``TexturesUV``, ``pytorch3d.io.load_obj``) are placeholders that raise when called: the
official GenHead / Portrait4D code never calls them.

Use::

    from pytorch3d_kernels import p3d_shim  # scripts/ on sys.path

    # build (first time only) and import the kernels, then register pytorch3d, pytorch3d._C, pytorch3d.ops, ...
    p3d_shim.install(sys.modules, source="/path/to/pytorch3d-source", build="/tmp/p3d-build")
    # or in two steps: p3d_shim.load(source, build_dir); p3d_shim.install(sys.modules)

``load`` compiles the CPU kernels always and the CUDA kernels too when ``torch.cuda.is_available()`` and a CUDA
toolkit is found (``CUDA_HOME`` or ``nvcc`` on the PATH); ``P3D_SHIM_CUDA=0`` / ``=1`` (or pytorch3d's own
``PYTORCH3D_FORCE_NO_CUDA=1`` / ``FORCE_CUDA=1``) force either way. The CPU and CUDA builds go to separate
sub-folders of ``build_dir``. Build-time variables: ``MAX_JOBS`` (parallel compile jobs), ``TORCH_CUDA_ARCH_LIST``
(e.g. ``9.0`` for H100; default: the visible GPU's), ``NVCC_FLAGS`` (appended, as in pytorch3d's setup.py),
``CC`` / ``CXX``.

Offline CUDA machine: it needs PyTorch with its CUDA headers, a CUDA toolkit of the same major version as
``torch.version.cuda`` (``nvcc``), a C++ compiler, ``ninja`` (binary on the PATH, or the pip package), this folder
(``p3d_shim.py``, ``binding.cpp``) and a pytorch3d source folder: the build reads only ``pytorch3d/__init__.py``,
``pytorch3d/renderer/mesh/clip.py`` and ``pytorch3d/csrc/{knn,point_mesh,rasterize_meshes,rasterize_coarse,
interp_face_attrs,rasterize_points,utils}/``; ``check_shim.py``'s upstream-glue check imports the whole
``pytorch3d/`` package folder (4 MB: ``git archive HEAD pytorch3d`` of the repository). Nothing is downloaded.
Build once and check the kernels (CPU and CUDA)::

    MAX_JOBS=8 TORCH_CUDA_ARCH_LIST=9.0 python scripts/pytorch3d_kernels/check_shim.py --pytorch3d-src SRC \\
        --pytorch3d-build BUILD

later runs with the same ``BUILD`` reuse the compiled module (rebuilt when a source or a flag changes).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import types
import warnings
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

HERE = Path(__file__).resolve().parent
BINDING = HERE / "binding.cpp"

# pytorch3d/csrc files compiled in place (the kernels of the bound ops; the CPU/CUDA dispatch lives in the headers
# binding.cpp includes)
CPU_SOURCES = ("knn/knn_cpu.cpp", "point_mesh/point_mesh_cpu.cpp", "rasterize_meshes/rasterize_meshes_cpu.cpp")
CUDA_SOURCES = ("knn/knn.cu", "point_mesh/point_mesh_cuda.cu", "rasterize_meshes/rasterize_meshes.cu",
                "rasterize_coarse/rasterize_coarse.cu", "interp_face_attrs/interp_face_attrs.cu")
CLIP_PY = "renderer/mesh/clip.py"

# nvcc arguments of pytorch3d's setup.py (its "-std=c++17" left out: PyTorch >= 2.10 headers need the C++20 that
# cpp_extension passes)
NVCC_ARGS = ["-DCUDA_HAS_FP16=1", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
             "-D__CUDA_NO_HALF2_OPERATORS__"]
NVCC_ARGS_CUDA13 = ["--device-entity-has-hidden-visibility=false", "-static-global-template-stub=false"]

_C: types.ModuleType | None = None  # the compiled extension (registered as pytorch3d._C)
_clip: types.ModuleType | None = None  # pytorch3d/renderer/mesh/clip.py of the same source folder
VERSION = "unknown"  # pytorch3d.__version__ of the source folder


# ----------------------------------------------------------------------------------------------------------
# Build and load


def package_dir(src: str | os.PathLike) -> Path:
    """The ``pytorch3d`` package folder of a source tree (accepts the repository root or the package itself)."""
    src = Path(src).expanduser().resolve()
    for cand in (src / "pytorch3d", src):
        if (cand / "csrc" / "knn" / "knn.h").is_file():
            return cand
    raise FileNotFoundError(f"{src}: no pytorch3d source here (expected pytorch3d/csrc/knn/knn.h)")


def cuda_wanted() -> bool:
    """CUDA kernels too? ``P3D_SHIM_CUDA`` / ``FORCE_CUDA`` / ``PYTORCH3D_FORCE_NO_CUDA``, else auto-detect."""
    flag = os.environ.get("P3D_SHIM_CUDA")
    if flag is not None:
        return flag == "1"
    if os.environ.get("PYTORCH3D_FORCE_NO_CUDA", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and torch.version.cuda is not None and (
        CUDA_HOME is not None or shutil.which("nvcc") is not None)


def _ensure_ninja() -> None:
    """cpp_extension runs ``ninja`` from the PATH: add the pip package's binary (or the venv's bin) if missing."""
    if shutil.which("ninja"):
        return
    folders = [Path(sys.executable).parent]
    try:
        import ninja

        folders.insert(0, Path(ninja.BIN_DIR))
    except (ImportError, AttributeError):
        pass
    for folder in folders:
        if (folder / "ninja").is_file():
            os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
            return


def build(src: str | os.PathLike, build_dir: str | os.PathLike | None = None, *, cuda: bool | None = None,
          verbose: bool = False) -> types.ModuleType:
    """Compile (or reuse) and import the extension; ``build_dir`` defaults to torch's extension cache."""
    from torch.utils.cpp_extension import load as load_extension

    _ensure_ninja()

    csrc = package_dir(src) / "csrc"
    cuda = cuda_wanted() if cuda is None else cuda
    sources = [BINDING] + [csrc / s for s in CPU_SOURCES] + ([csrc / s for s in CUDA_SOURCES] if cuda else [])
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"missing kernel sources: {missing}")
    name = "pytorch3d_kernels_cuda" if cuda else "pytorch3d_kernels_cpu"
    cflags, cuda_cflags = ["-O3"], []
    if cuda:
        defines = ["-DWITH_CUDA", "-DTHRUST_IGNORE_CUB_VERSION_CHECK"]
        cflags += defines
        cuda_cflags = defines + NVCC_ARGS
        if torch.version.cuda and int(torch.version.cuda.split(".")[0]) >= 13:
            cuda_cflags += NVCC_ARGS_CUDA13
        if os.environ.get("NVCC_FLAGS"):
            cuda_cflags += os.environ["NVCC_FLAGS"].split(" ")
        if os.environ.get("CC") and not any(a.startswith("-ccbin") for a in cuda_cflags):
            cuda_cflags.append(f"-ccbin={os.environ['CC']}")
    directory = None
    if build_dir is not None:
        directory = Path(build_dir).expanduser().resolve() / name
        directory.mkdir(parents=True, exist_ok=True)
    return load_extension(name, [str(s) for s in sources], extra_cflags=cflags, extra_cuda_cflags=cuda_cflags,
                          extra_include_paths=[str(csrc)], build_directory=None if directory is None else str(directory),
                          verbose=verbose, with_cuda=cuda)


def load(src: str | os.PathLike, build_dir: str | os.PathLike | None = None, *, cuda: bool | None = None,
         verbose: bool = False) -> types.ModuleType:
    """Build/import the kernels and load ``clip.py`` from the same pytorch3d source folder; returns ``_C``."""
    global _C, _clip, VERSION
    pkg = package_dir(src)
    spec = importlib.util.spec_from_file_location("_p3d_shim_clip", pkg / CLIP_PY)
    clip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clip)
    init = (pkg / "__init__.py").read_text() if (pkg / "__init__.py").is_file() else ""
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", init)
    _C = build(pkg, build_dir, cuda=cuda, verbose=verbose)
    _clip, VERSION = clip, match.group(1) if match else "unknown"
    return _C


def _ext() -> types.ModuleType:
    if _C is None:
        raise RuntimeError("p3d_shim.load(pytorch3d_source, build_dir) must be called first")
    return _C


# ----------------------------------------------------------------------------------------------------------
# pytorch3d/ops/knn.py

_KNN = namedtuple("KNN", "dists idx knn")


class _knn_points(Function):  # noqa: N801 - pytorch3d's name
    @staticmethod
    def forward(ctx, p1, p2, lengths1, lengths2, K, version, norm: int = 2, return_sorted: bool = True):
        if not ((norm == 1) or (norm == 2)):
            raise ValueError("Support for 1 or 2 norm.")
        idx, dists = _ext().knn_points_idx(p1, p2, lengths1, lengths2, norm, K, version)
        # sort KNN in ascending order if K > 1
        if K > 1 and return_sorted:
            if lengths2.min() < K:
                P1 = p1.shape[1]
                mask = lengths2[:, None] <= torch.arange(K, device=dists.device)[None]
                mask = mask[:, None].expand(-1, P1, -1)
                dists[mask] = float("inf")
                dists, sort_idx = dists.sort(dim=2)
                dists[mask] = 0
            else:
                dists, sort_idx = dists.sort(dim=2)
            idx = idx.gather(2, sort_idx)
        ctx.save_for_backward(p1, p2, lengths1, lengths2, idx)
        ctx.mark_non_differentiable(idx)
        ctx.norm = norm
        return dists, idx

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_dists, grad_idx):
        p1, p2, lengths1, lengths2, idx = ctx.saved_tensors
        if grad_dists.dtype != torch.float32:
            grad_dists = grad_dists.float()
        if p1.dtype != torch.float32:
            p1 = p1.float()
        if p2.dtype != torch.float32:
            p2 = p2.float()
        grad_p1, grad_p2 = _ext().knn_points_backward(p1, p2, lengths1, lengths2, idx, ctx.norm, grad_dists)
        return grad_p1, grad_p2, None, None, None, None, None, None


def knn_points(p1, p2, lengths1=None, lengths2=None, norm: int = 2, K: int = 1, version: int = -1,
               return_nn: bool = False, return_sorted: bool = True) -> _KNN:
    """``pytorch3d.ops.knn_points``: squared distances and indices of the K nearest points of ``p2``."""
    if p1.shape[0] != p2.shape[0]:
        raise ValueError("pts1 and pts2 must have the same batch dimension.")
    if p1.shape[2] != p2.shape[2]:
        raise ValueError("pts1 and pts2 must have the same point dimension.")
    p1 = p1.contiguous()
    p2 = p2.contiguous()
    P1 = p1.shape[1]
    P2 = p2.shape[1]
    if lengths1 is None:
        lengths1 = torch.full((p1.shape[0],), P1, dtype=torch.int64, device=p1.device)
    if lengths2 is None:
        lengths2 = torch.full((p1.shape[0],), P2, dtype=torch.int64, device=p1.device)
    p1_dists, p1_idx = _knn_points.apply(p1, p2, lengths1, lengths2, K, version, norm, return_sorted)
    p2_nn = None
    if return_nn:
        p2_nn = knn_gather(p2, p1_idx, lengths2)
    return _KNN(dists=p1_dists, idx=p1_idx, knn=p2_nn if return_nn else None)


def knn_gather(x, idx, lengths=None):
    """``pytorch3d.ops.knn_gather``: ``out[n, l, k] = x[n, idx[n, l, k]]`` (0 where ``k >= lengths[n]``)."""
    N, M, U = x.shape
    _N, L, K = idx.shape
    if N != _N:
        raise ValueError("x and idx must have same batch dimension.")
    if lengths is None:
        lengths = torch.full((x.shape[0],), M, dtype=torch.int64, device=x.device)
    idx_expanded = idx[:, :, :, None].expand(-1, -1, -1, U)
    x_out = x[:, :, None].expand(-1, -1, K, -1).gather(1, idx_expanded)
    needs_mask = lengths.min() < K
    if needs_mask:
        mask = lengths[:, None] <= torch.arange(K, device=x.device)[None]
        mask = mask[:, None].expand(-1, L, -1)
        mask = mask[:, :, :, None].expand(-1, -1, -1, U)
        x_out[mask] = 0.0
    return x_out


def point_face_dist_forward(points, points_first_idx, tris, tris_first_idx, max_points, min_triangle_area):
    """``pytorch3d._C.point_face_dist_forward`` (the kernel itself; official code calls ``_C`` directly)."""
    return _ext().point_face_dist_forward(points, points_first_idx, tris, tris_first_idx, max_points,
                                          min_triangle_area)


# ----------------------------------------------------------------------------------------------------------
# pytorch3d/ops/interp_face_attrs.py


def interpolate_face_attributes(pix_to_face, barycentric_coords, face_attributes):
    """``pytorch3d.ops.interpolate_face_attributes`` (CPU: pytorch3d's Python version; CUDA: its kernel)."""
    F, FV, D = face_attributes.shape
    if FV != 3:
        raise ValueError(f"Faces can only have three vertices; got {FV!r}")
    N, H, W, K, _ = barycentric_coords.shape
    if pix_to_face.shape != (N, H, W, K):
        raise ValueError(f"pix_to_face must have shape (batch_size, H, W, K); got {pix_to_face.shape!r}")
    if not pix_to_face.is_cuda:
        return interpolate_face_attributes_python(pix_to_face, barycentric_coords, face_attributes)
    N, H, W, K = pix_to_face.shape
    pix_to_face = pix_to_face.view(-1)
    barycentric_coords = barycentric_coords.view(N * H * W * K, 3)
    out = _InterpFaceAttrs.apply(pix_to_face, barycentric_coords, face_attributes)
    return out.view(N, H, W, K, -1)


class _InterpFaceAttrs(Function):
    @staticmethod
    def forward(ctx, pix_to_face, barycentric_coords, face_attrs):
        args = (pix_to_face, barycentric_coords, face_attrs)
        ctx.save_for_backward(*args)
        return _ext().interp_face_attrs_forward(*args)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pix_attrs):
        grads = _ext().interp_face_attrs_backward(*ctx.saved_tensors, grad_pix_attrs)
        return None, grads[0], grads[1]


def interpolate_face_attributes_python(pix_to_face, barycentric_coords, face_attributes):
    F, FV, D = face_attributes.shape
    N, H, W, K, _ = barycentric_coords.shape
    mask = pix_to_face < 0
    pix_to_face = pix_to_face.clone()
    pix_to_face[mask] = 0
    idx = pix_to_face.view(N * H * W * K, 1, 1).expand(N * H * W * K, 3, D)
    pixel_face_vals = face_attributes.gather(0, idx).view(N, H, W, K, 3, D)
    pixel_vals = (barycentric_coords[..., None] * pixel_face_vals).sum(dim=-2)
    pixel_vals[mask] = 0
    return pixel_vals


# ----------------------------------------------------------------------------------------------------------
# pytorch3d/structures (padded tensors only)


def _list_to_packed(x: list):
    """``structures.utils.list_to_packed``."""
    device = x[0].device
    sizes = [xi.shape[0] for xi in x]
    num_items = torch.tensor(sizes, dtype=torch.int64, device=device)
    first_idx = torch.zeros_like(num_items)
    first_idx[1:] = torch.cumsum(num_items[:-1], dim=0)
    to_list_idx = torch.bucketize(torch.arange(sum(sizes), dtype=torch.int64, device=device), first_idx,
                                  right=True) - 1
    return torch.cat(x, dim=0), num_items, first_idx, to_list_idx


def _padded_to_list(x, split_size: list):
    return [xi[:n] for xi, n in zip(x.unbind(0), split_size, strict=True)]


class Meshes:
    """``pytorch3d.structures.Meshes`` built from padded ``verts (N, V, 3)`` and ``faces (N, F, 3)`` tensors
    (faces padded with -1 at the end, as pytorch3d allows); the packed/padded accessors the rasterizer and the
    official deformer use."""

    def __init__(self, verts, faces, textures=None, *, verts_normals=None) -> None:
        if textures is not None or verts_normals is not None:
            raise NotImplementedError("p3d_shim.Meshes: textures / verts_normals are not supported")
        if not (torch.is_tensor(verts) and torch.is_tensor(faces)):
            raise NotImplementedError("p3d_shim.Meshes: only padded tensors (N, V, 3) / (N, F, 3) are supported")
        if verts.dim() != 3 or faces.dim() != 3 or verts.size(2) != 3 or faces.size(2) != 3:
            raise ValueError("Verts or Faces tensors have incorrect dimensions.")
        if verts.device != faces.device:
            raise ValueError(f"Verts and Faces tensors should be on same device. \n Got {verts.device} and "
                             f"{faces.device}.")
        self._verts_padded = verts
        self._faces_padded = faces.to(torch.int64)
        self._N, self._V = verts.shape[0], verts.shape[1]
        self.device = verts.device
        self.equisized = False
        self.textures = None
        self._F = 0
        if self._N == 0:
            raise NotImplementedError("p3d_shim.Meshes: empty batches are not supported")
        faces_not_padded = self._faces_padded.gt(-1).all(2)
        self._num_faces_per_mesh = faces_not_padded.sum(1)
        if (faces_not_padded[:, :-1] < faces_not_padded[:, 1:]).any():
            raise ValueError("Padding of faces must be at the end")
        self.valid = self._num_faces_per_mesh > 0
        self._F = int(self._num_faces_per_mesh.max())
        if len(self._num_faces_per_mesh.unique()) == 1:
            self.equisized = True
        self._num_verts_per_mesh = torch.full((self._N,), self._V, dtype=torch.int64, device=self.device)
        self._packed = None
        self._verts_normals_packed = None

    def __len__(self) -> int:
        return self._N

    def isempty(self) -> bool:
        return self._N == 0 or self.valid.eq(False).all()

    def verts_padded(self):
        return self._verts_padded

    def faces_padded(self):
        return self._faces_padded

    def num_verts_per_mesh(self):
        return self._num_verts_per_mesh

    def num_faces_per_mesh(self):
        return self._num_faces_per_mesh

    def verts_list(self):
        return _padded_to_list(self._verts_padded, self._num_verts_per_mesh.tolist())

    def faces_list(self):
        return _padded_to_list(self._faces_padded, self._num_faces_per_mesh.tolist())

    def _compute_packed(self) -> dict:
        """``Meshes._compute_packed``: concatenated verts/faces, faces offset by their mesh's first vertex."""
        if self._packed is None:
            verts_packed, _, verts_first, verts_to_mesh = _list_to_packed(self.verts_list())
            faces_packed, _, faces_first, faces_to_mesh = _list_to_packed(self.faces_list())
            offset = verts_first[faces_to_mesh]
            self._packed = {"verts": verts_packed, "verts_first": verts_first, "verts_to_mesh": verts_to_mesh,
                            "faces": faces_packed + offset.view(-1, 1), "faces_first": faces_first,
                            "faces_to_mesh": faces_to_mesh}
        return self._packed

    def verts_packed(self):
        return self._compute_packed()["verts"]

    def faces_packed(self):
        return self._compute_packed()["faces"]

    def mesh_to_verts_packed_first_idx(self):
        return self._compute_packed()["verts_first"]

    def mesh_to_faces_packed_first_idx(self):
        return self._compute_packed()["faces_first"]

    def verts_packed_to_mesh_idx(self):
        return self._compute_packed()["verts_to_mesh"]

    def faces_packed_to_mesh_idx(self):
        return self._compute_packed()["faces_to_mesh"]

    def verts_normals_packed(self):
        """``Meshes._compute_vertex_normals``: area-weighted face normals summed per vertex, normalised."""
        if self._verts_normals_packed is None:
            faces_packed = self.faces_packed()
            verts_packed = self.verts_packed()
            verts_normals = torch.zeros_like(verts_packed)
            vertices_faces = verts_packed[faces_packed]
            faces_normals = torch.cross(vertices_faces[:, 2] - vertices_faces[:, 1],
                                        vertices_faces[:, 0] - vertices_faces[:, 1], dim=1)
            for k in range(3):
                verts_normals = verts_normals.index_add(0, faces_packed[:, k], faces_normals)
            self._verts_normals_packed = torch.nn.functional.normalize(verts_normals, eps=1e-6, dim=1)
        return self._verts_normals_packed

    def verts_normals_list(self):
        return list(self.verts_normals_packed().split(self._num_verts_per_mesh.tolist(), 0))

    def update_padded(self, new_verts_padded) -> Meshes:
        """``Meshes.update_padded``: same faces, new padded vertices."""
        if tuple(new_verts_padded.shape) != (self._N, self._V, 3):
            raise ValueError("new values must have the same batch dimension, number of points and dimension.")
        new = self.__class__(verts=new_verts_padded, faces=self.faces_padded())
        if new._N != self._N or new._V != self._V or new._F != self._F:
            raise ValueError("Inconsistent sizes after construction.")
        new.equisized = self.equisized
        new._num_verts_per_mesh, new._num_faces_per_mesh, new.valid = (
            self._num_verts_per_mesh, self._num_faces_per_mesh, self.valid)
        return new


class Pointclouds:
    """``pytorch3d.structures.Pointclouds`` from a padded ``points (N, P, 3)`` tensor (every cloud has P points,
    as pytorch3d assumes for a tensor)."""

    def __init__(self, points, normals=None, features=None) -> None:
        if normals is not None or features is not None:
            raise NotImplementedError("p3d_shim.Pointclouds: normals / features are not supported")
        if not torch.is_tensor(points):
            raise NotImplementedError("p3d_shim.Pointclouds: only a padded (N, P, 3) tensor is supported")
        if points.dim() != 3 or points.shape[2] != 3:
            raise ValueError("Points tensor has incorrect dimensions.")
        self._points_padded = points
        self._N, self._P = points.shape[0], points.shape[1]
        self.device = points.device
        self.valid = torch.ones((self._N,), dtype=torch.bool, device=self.device)
        self._num_points_per_cloud = torch.tensor([self._P] * self._N, device=self.device)
        self.equisized = True
        self._packed = None

    def __len__(self) -> int:
        return self._N

    def points_padded(self):
        return self._points_padded

    def points_list(self):
        return _padded_to_list(self._points_padded, self._num_points_per_cloud.tolist())

    def num_points_per_cloud(self):
        return self._num_points_per_cloud

    def _compute_packed(self):
        if self._packed is None:
            self._packed = _list_to_packed(self.points_list())
        return self._packed

    def points_packed(self):
        return self._compute_packed()[0]

    def cloud_to_packed_first_idx(self):
        return self._compute_packed()[2]

    def packed_to_cloud_idx(self):
        return self._compute_packed()[3]


# ----------------------------------------------------------------------------------------------------------
# pytorch3d/transforms/transform3d.py and pytorch3d/renderer/cameras.py (the parts the rasterizer uses)


def _make_device(device) -> torch.device:
    device = torch.device(device) if isinstance(device, str) else device
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{torch.cuda.current_device()}")
    return device


def _broadcast_bmm(a, b):
    if a.dim() == 2:
        a = a[None]
    if len(a) != len(b):
        if not ((len(a) == 1) or (len(b) == 1)):
            raise ValueError(f"Expected batch dim for bmm to be equal or 1; got {a.shape!r}, {b.shape!r}")
        if len(a) == 1:
            a = a.expand(len(b), -1, -1)
        if len(b) == 1:
            b = b.expand(len(a), -1, -1)
    return a.bmm(b)


class _Transform3d:
    """``Transform3d``: row-vector 4x4 matrices, ``compose`` (applied left to right), ``transform_points``."""

    def __init__(self, dtype=torch.float32, device="cpu", matrix=None) -> None:
        if matrix is None:
            self._matrix = torch.eye(4, dtype=dtype, device=device).view(1, 4, 4)
        else:
            if matrix.ndim not in (2, 3) or matrix.shape[-2:] != (4, 4):
                raise ValueError('"matrix" has to be a tensor of shape (minibatch, 4, 4) or (4, 4).')
            dtype, device = matrix.dtype, matrix.device
            self._matrix = matrix.view(-1, 4, 4)
        self._transforms: list[_Transform3d] = []
        self.device = _make_device(device)
        self.dtype = dtype

    def compose(self, *others: _Transform3d) -> _Transform3d:
        out = _Transform3d(dtype=self.dtype, device=self.device)
        out._matrix = self._matrix.clone()
        out._transforms = self._transforms + list(others)
        return out

    def get_matrix(self):
        composed_matrix = self._matrix.clone()
        for other in self._transforms:
            composed_matrix = _broadcast_bmm(composed_matrix, other.get_matrix())
        return composed_matrix

    def transform_points(self, points, eps: float | None = None):
        points_batch = points.clone()
        if points_batch.dim() == 2:
            points_batch = points_batch[None]
        if points_batch.dim() != 3:
            raise ValueError(f"Expected points to have dim = 2 or dim = 3: got shape {points.shape!r}")
        N, P, _3 = points_batch.shape
        ones = torch.ones(N, P, 1, dtype=points.dtype, device=points.device)
        points_batch = torch.cat([points_batch, ones], dim=2)
        points_out = _broadcast_bmm(points_batch, self.get_matrix())
        denom = points_out[..., 3:]
        if eps is not None:
            denom_sign = denom.sign() + (denom == 0.0).type_as(denom)
            denom = denom_sign * torch.clamp(denom.abs(), eps)
        points_out = points_out[..., :3] / denom
        if points_out.shape[0] == 1 and points.dim() == 2:
            points_out = points_out.reshape(points.shape)
        return points_out


def _get_world_to_view_transform(R, T) -> _Transform3d:
    """``cameras.get_world_to_view_transform``: ``Rotate(R).compose(Translate(T))`` (``X_cam = X R + T``)."""
    if T.shape[0] != R.shape[0]:
        raise ValueError(f"Expected R, T to have the same batch dimension; got {R.shape[0]!r}, {T.shape[0]!r}")
    if T.dim() != 2 or T.shape[1:] != (3,):
        raise ValueError(f"Expected T to have shape (N, 3); got {T.shape!r}")
    if R.dim() != 3 or R.shape[1:] != (3, 3):
        raise ValueError(f"Expected R to have shape (N, 3, 3); got {R.shape!r}")
    t = T.to(dtype=torch.float32)  # Translate(T, device=T.device): float32 on T's device
    t_mat = torch.eye(4, dtype=torch.float32, device=t.device).view(1, 4, 4).repeat(t.shape[0], 1, 1)
    t_mat[:, 3, :3] = t
    r = R.to(device=R.device, dtype=torch.float32)  # Rotate(R, device=R.device)
    r_mat = torch.eye(4, dtype=torch.float32, device=R.device).view(1, 4, 4).repeat(r.shape[0], 1, 1)
    r_mat[:, :3, :3] = r
    return _Transform3d(matrix=r_mat).compose(_Transform3d(matrix=t_mat))


_R = torch.eye(3)[None]
_T = torch.zeros(1, 3)
_BROADCAST_TYPES = (float, int, list, tuple, torch.Tensor, np.ndarray)


def _format_tensor(value, dtype=torch.float32, device="cpu"):
    device_ = _make_device(device)
    if not torch.is_tensor(value):
        value = torch.tensor(value, dtype=dtype, device=device_)
    if value.dim() == 0:
        value = value.view(1)
    if value.device == device_:
        return value
    return value.to(device=device)


class _CamerasBase:
    """``CamerasBase`` / ``TensorProperties``: numbers and tensors broadcast to a batch of ``N`` float32 values."""

    def __init__(self, device="cpu", **kwargs) -> None:
        self.device = _make_device(device)
        self._N = 0
        names, values = [], []
        for k, v in kwargs.items():
            if v is None or isinstance(v, (str, bool)):
                setattr(self, k, v)
            elif isinstance(v, _BROADCAST_TYPES):
                names.append(k)
                values.append(v)
            else:
                warnings.warn(f"Arg {k} with type {type(v)!r} is not broadcastable", stacklevel=2)
        if values:
            args_1d = [_format_tensor(c, torch.float32, device) for c in values]
            sizes = [c.shape[0] for c in args_1d]
            N = max(sizes)
            for n, c in zip(names, args_1d, strict=True):
                if c.shape[0] != 1 and c.shape[0] != N:
                    raise ValueError(f"Got non-broadcastable sizes {sizes!r}")
                setattr(self, n, c.expand(*((N,) + (-1,) * len(c.shape[1:]))))
                if self._N == 0:
                    self._N = N

    def __len__(self) -> int:
        return self._N

    def to(self, device) -> _CamerasBase:
        """``TensorProperties.to``: every tensor attribute moved."""
        self.device = _make_device(device)
        for k, v in vars(self).items():
            if torch.is_tensor(v):
                setattr(self, k, v.to(self.device))
        return self

    def get_world_to_view_transform(self, **kwargs) -> _Transform3d:
        R = kwargs.get("R", self.R)
        T = kwargs.get("T", self.T)
        self.R, self.T = R, T
        return _get_world_to_view_transform(R=R, T=T)

    def get_full_projection_transform(self, **kwargs) -> _Transform3d:
        self.R = kwargs.get("R", self.R)
        self.T = kwargs.get("T", self.T)
        return self.get_world_to_view_transform(R=self.R, T=self.T).compose(self.get_projection_transform(**kwargs))

    def transform_points(self, points, eps: float | None = None, **kwargs):
        return self.get_full_projection_transform(**kwargs).transform_points(points, eps=eps)

    def get_ndc_camera_transform(self, **kwargs) -> _Transform3d:
        assert self.in_ndc()  # FoV cameras are defined in NDC: identity
        return _Transform3d(device=self.device, dtype=torch.float32)

    def get_projection_transform(self, **kwargs) -> _Transform3d:
        K = kwargs.get("K", self.K)
        if K is not None:
            if K.shape != (self._N, 4, 4):
                raise ValueError(f"Expected K to have shape of ({self._N!r}, 4, 4)")
        else:
            K = self.compute_projection_matrix(**{k: kwargs.get(k, getattr(self, k)) for k in self._K_ARGS})
        return _Transform3d(matrix=K.transpose(1, 2).contiguous(), device=self.device)

    def get_znear(self):
        return getattr(self, "znear", None)

    def in_ndc(self) -> bool:
        return True


class FoVPerspectiveCameras(_CamerasBase):
    """``pytorch3d.renderer.FoVPerspectiveCameras`` (OpenGL-style frustum; pytorch3d's right-handed NDC)."""

    _K_ARGS = ("znear", "zfar", "fov", "aspect_ratio", "degrees")

    def __init__(self, znear=1.0, zfar=100.0, aspect_ratio=1.0, fov=60.0, degrees: bool = True, R=_R, T=_T,
                 K=None, device="cpu") -> None:
        super().__init__(device=device, znear=znear, zfar=zfar, aspect_ratio=aspect_ratio, fov=fov, R=R, T=T, K=K)
        self.degrees = degrees

    def compute_projection_matrix(self, znear, zfar, fov, aspect_ratio, degrees: bool):
        K = torch.zeros((self._N, 4, 4), device=self.device, dtype=torch.float32)
        ones = torch.ones(self._N, dtype=torch.float32, device=self.device)
        if degrees:
            fov = (np.pi / 180) * fov
        if not torch.is_tensor(fov):
            fov = torch.tensor(fov, device=self.device)
        tanHalfFov = torch.tan(fov / 2)
        max_y = tanHalfFov * znear
        min_y = -max_y
        max_x = max_y * aspect_ratio
        min_x = -max_x
        z_sign = 1.0
        K[:, 0, 0] = torch.div(2.0 * znear, max_x - min_x)
        K[:, 1, 1] = torch.div(2.0 * znear, max_y - min_y)
        K[:, 0, 2] = (max_x + min_x) / (max_x - min_x)
        K[:, 1, 2] = (max_y + min_y) / (max_y - min_y)
        K[:, 3, 2] = z_sign * ones
        K[:, 2, 2] = z_sign * zfar / (zfar - znear)
        K[:, 2, 3] = -(zfar * znear) / (zfar - znear)
        return K

    def is_perspective(self) -> bool:
        return True


class FoVOrthographicCameras(_CamerasBase):
    """``pytorch3d.renderer.FoVOrthographicCameras``."""

    _K_ARGS = ("znear", "zfar", "max_x", "min_x", "max_y", "min_y", "scale_xyz")

    def __init__(self, znear=1.0, zfar=100.0, max_y=1.0, min_y=-1.0, max_x=1.0, min_x=-1.0,
                 scale_xyz=((1.0, 1.0, 1.0),), R=_R, T=_T, K=None, device="cpu") -> None:
        super().__init__(device=device, znear=znear, zfar=zfar, max_y=max_y, min_y=min_y, max_x=max_x,
                         min_x=min_x, scale_xyz=scale_xyz, R=R, T=T, K=K)

    def compute_projection_matrix(self, znear, zfar, max_x, min_x, max_y, min_y, scale_xyz):
        K = torch.zeros((self._N, 4, 4), dtype=torch.float32, device=self.device)
        ones = torch.ones(self._N, dtype=torch.float32, device=self.device)
        z_sign = +1.0
        K[:, 0, 0] = (2.0 / (max_x - min_x)) * scale_xyz[:, 0]
        K[:, 1, 1] = (2.0 / (max_y - min_y)) * scale_xyz[:, 1]
        K[:, 0, 3] = -(max_x + min_x) / (max_x - min_x)
        K[:, 1, 3] = -(max_y + min_y) / (max_y - min_y)
        K[:, 3, 3] = ones
        K[:, 2, 2] = z_sign * (1.0 / (zfar - znear)) * scale_xyz[:, 2]
        K[:, 2, 3] = -znear / (zfar - znear)
        return K

    def is_perspective(self) -> bool:
        return False


# ----------------------------------------------------------------------------------------------------------
# pytorch3d/renderer/mesh/rasterize_meshes.py and rasterizer.py

K_MAX_FACES_PER_BIN = 22  # pytorch3d's kMaxFacesPerBin


def _parse_image_size(image_size) -> tuple[int, int]:
    if not isinstance(image_size, (tuple, list)):
        return (image_size, image_size)
    if len(image_size) != 2:
        raise ValueError("Image size can only be a tuple/list of (H, W)")
    if not all(i > 0 for i in image_size):
        raise ValueError(f"Image sizes must be greater than 0; got {image_size[0]}, {image_size[1]}")
    if not all(isinstance(i, int) for i in image_size):
        raise ValueError(f"Image sizes must be integers; got {image_size[0]}, {image_size[1]}")
    return tuple(image_size)


def rasterize_meshes(meshes, image_size=256, blur_radius: float = 0.0, faces_per_pixel: int = 8,
                     bin_size: int | None = None, max_faces_per_bin: int | None = None,
                     perspective_correct: bool = False, clip_barycentric_coords: bool = False,
                     cull_backfaces: bool = False, z_clip_value: float | None = None, cull_to_frustum: bool = False):
    """``pytorch3d.renderer.mesh.rasterize_meshes``: clipping (pytorch3d's clip.py), bin size, the kernel."""
    verts_packed = meshes.verts_packed()
    faces_packed = meshes.faces_packed()
    face_verts = verts_packed[faces_packed]
    mesh_to_face_first_idx = meshes.mesh_to_faces_packed_first_idx()
    num_faces_per_mesh = meshes.num_faces_per_mesh()
    im_size = _parse_image_size(image_size)
    max_image_size = max(*im_size)
    clipped_faces_neighbor_idx = None
    clipped_faces = None
    if z_clip_value is not None or cull_to_frustum:
        if _clip is None:
            raise RuntimeError("p3d_shim.load(...) must be called first (clip.py comes from the source folder)")
        frustum = _clip.ClipFrustum(left=-1, right=1, top=-1, bottom=1, perspective_correct=perspective_correct,
                                    z_clip_value=z_clip_value, cull=cull_to_frustum)
        clipped_faces = _clip.clip_faces(face_verts, mesh_to_face_first_idx, num_faces_per_mesh, frustum=frustum)
        face_verts = clipped_faces.face_verts
        mesh_to_face_first_idx = clipped_faces.mesh_to_face_first_idx
        num_faces_per_mesh = clipped_faces.num_faces_per_mesh
        clipped_faces_neighbor_idx = clipped_faces.clipped_faces_neighbor_idx
    if clipped_faces_neighbor_idx is None:
        clipped_faces_neighbor_idx = torch.full(size=(face_verts.shape[0],), fill_value=-1, device=meshes.device,
                                                dtype=torch.int64)
    if bin_size is None:
        if not verts_packed.is_cuda:
            bin_size = 0  # binned CPU rasterization is not supported
        elif max_image_size <= 64:
            bin_size = 8
        else:
            bin_size = int(2 ** max(np.ceil(np.log2(max_image_size)) - 4, 4))
    if bin_size != 0:
        faces_per_bin = 1 + (max_image_size - 1) // bin_size
        if faces_per_bin >= K_MAX_FACES_PER_BIN:
            raise ValueError(f"bin_size too small, number of faces per bin must be less than {K_MAX_FACES_PER_BIN}; "
                             f"got {faces_per_bin}")
    if max_faces_per_bin is None:
        max_faces_per_bin = int(max(10000, meshes._F / 5))
    pix_to_face, zbuf, barycentric_coords, dists = _RasterizeFaceVerts.apply(
        face_verts, mesh_to_face_first_idx, num_faces_per_mesh, clipped_faces_neighbor_idx, im_size, blur_radius,
        faces_per_pixel, bin_size, max_faces_per_bin, perspective_correct, clip_barycentric_coords, cull_backfaces)
    if clipped_faces is not None:
        pix_to_face, barycentric_coords = _clip.convert_clipped_rasterization_to_original_faces(
            pix_to_face, barycentric_coords, clipped_faces)
    return pix_to_face, zbuf, barycentric_coords, dists


class _RasterizeFaceVerts(Function):
    @staticmethod
    def forward(ctx, face_verts, mesh_to_face_first_idx, num_faces_per_mesh, clipped_faces_neighbor_idx,
                image_size=(256, 256), blur_radius=0.01, faces_per_pixel=0, bin_size=0, max_faces_per_bin=0,
                perspective_correct=False, clip_barycentric_coords=False, cull_backfaces=False):
        pix_to_face, zbuf, barycentric_coords, dists = _ext().rasterize_meshes(
            face_verts, mesh_to_face_first_idx, num_faces_per_mesh, clipped_faces_neighbor_idx, image_size,
            blur_radius, faces_per_pixel, bin_size, max_faces_per_bin, perspective_correct, clip_barycentric_coords,
            cull_backfaces)
        ctx.save_for_backward(face_verts, pix_to_face)
        ctx.mark_non_differentiable(pix_to_face)
        ctx.perspective_correct = perspective_correct
        ctx.clip_barycentric_coords = clip_barycentric_coords
        return pix_to_face, zbuf, barycentric_coords, dists

    @staticmethod
    def backward(ctx, grad_pix_to_face, grad_zbuf, grad_barycentric_coords, grad_dists):
        face_verts, pix_to_face = ctx.saved_tensors
        grad_face_verts = _ext().rasterize_meshes_backward(face_verts, pix_to_face, grad_zbuf,
                                                           grad_barycentric_coords, grad_dists,
                                                           ctx.perspective_correct, ctx.clip_barycentric_coords)
        return (grad_face_verts,) + (None,) * 11


@dataclass(frozen=True)
class Fragments:
    pix_to_face: torch.Tensor
    zbuf: torch.Tensor
    bary_coords: torch.Tensor
    dists: torch.Tensor | None

    def detach(self) -> Fragments:
        return Fragments(pix_to_face=self.pix_to_face, zbuf=self.zbuf.detach(), bary_coords=self.bary_coords.detach(),
                         dists=self.dists.detach() if self.dists is not None else self.dists)


@dataclass
class RasterizationSettings:
    image_size: int | tuple[int, int] = 256
    blur_radius: float = 0.0
    faces_per_pixel: int = 1
    bin_size: int | None = None
    max_faces_opengl: int = 10_000_000
    max_faces_per_bin: int | None = None
    perspective_correct: bool | None = None
    clip_barycentric_coords: bool | None = None
    cull_backfaces: bool = False
    z_clip_value: float | None = None
    cull_to_frustum: bool = False


class MeshRasterizer(nn.Module):
    """``pytorch3d.renderer.MeshRasterizer`` (world -> view -> NDC with the view depth kept as z, then the
    kernel); pickles as ``pytorch3d.renderer.mesh.rasterizer.MeshRasterizer`` once :func:`install` ran."""

    def __init__(self, cameras=None, raster_settings=None) -> None:
        super().__init__()
        if raster_settings is None:
            raster_settings = RasterizationSettings()
        self.cameras = cameras
        self.raster_settings = raster_settings

    def to(self, device):
        if self.cameras is not None:
            self.cameras = self.cameras.to(device)
        return self

    def transform(self, meshes_world, **kwargs):
        cameras = kwargs.get("cameras", self.cameras)
        if cameras is None:
            raise ValueError("Cameras must be specified either at initialization or in the forward pass of "
                             "MeshRasterizer")
        n_cameras = len(cameras)
        if n_cameras != 1 and n_cameras != len(meshes_world):
            raise ValueError(f"Wrong number ({n_cameras!r}) of cameras for {len(meshes_world)!r} meshes")
        verts_world = meshes_world.verts_padded()
        eps = kwargs.get("eps")
        verts_view = cameras.get_world_to_view_transform(**kwargs).transform_points(verts_world, eps=eps)
        to_ndc_transform = cameras.get_ndc_camera_transform(**kwargs)
        projection_transform = cameras.get_projection_transform(**kwargs).compose(to_ndc_transform)
        verts_ndc = projection_transform.transform_points(verts_view, eps=eps)
        verts_ndc[..., 2] = verts_view[..., 2]
        return meshes_world.update_padded(new_verts_padded=verts_ndc)

    def forward(self, meshes_world, **kwargs) -> Fragments:
        meshes_proj = self.transform(meshes_world, **kwargs)
        raster_settings = kwargs.get("raster_settings", self.raster_settings)
        clip_barycentric_coords = raster_settings.clip_barycentric_coords
        if clip_barycentric_coords is None:
            clip_barycentric_coords = raster_settings.blur_radius > 0.0
        cameras = kwargs.get("cameras", self.cameras)
        if raster_settings.perspective_correct is not None:
            perspective_correct = raster_settings.perspective_correct
        else:
            perspective_correct = cameras.is_perspective()
        if raster_settings.z_clip_value is not None:
            z_clip = raster_settings.z_clip_value
        else:
            znear = cameras.get_znear()
            if isinstance(znear, torch.Tensor):
                znear = znear.min().item()
            z_clip = None if not perspective_correct or znear is None else znear / 2
        pix_to_face, zbuf, bary_coords, dists = rasterize_meshes(
            meshes_proj, image_size=raster_settings.image_size, blur_radius=raster_settings.blur_radius,
            faces_per_pixel=raster_settings.faces_per_pixel, bin_size=raster_settings.bin_size,
            max_faces_per_bin=raster_settings.max_faces_per_bin, clip_barycentric_coords=clip_barycentric_coords,
            perspective_correct=perspective_correct, cull_backfaces=raster_settings.cull_backfaces,
            z_clip_value=z_clip, cull_to_frustum=raster_settings.cull_to_frustum)
        return Fragments(pix_to_face=pix_to_face, zbuf=zbuf, bary_coords=bary_coords, dists=dists)


# the classes pytorch3d pickles by reference (the official MeshRenderer holds a MeshRasterizer)
for _cls in (MeshRasterizer, RasterizationSettings, Fragments):
    _cls.__module__ = "pytorch3d.renderer.mesh.rasterizer"


# ----------------------------------------------------------------------------------------------------------
# Registration


def _unsupported(name: str):
    def call(*args, **kwargs):
        raise NotImplementedError(f"pytorch3d.{name} is not provided by p3d_shim (the official code never calls it)")

    call.__name__ = call.__qualname__ = name.rsplit(".", 1)[-1]
    return call


def install(sys_modules: dict | None = None, *, source: str | os.PathLike | None = None,
            build: str | os.PathLike | None = None, cuda: bool | None = None,
            verbose: bool = False) -> dict[str, types.ModuleType]:
    """Register ``pytorch3d`` and the sub-modules the official code imports, backed by this shim; returns them.

    ``source`` / ``build``: call :func:`load` first with that pytorch3d source folder and build folder (else
    :func:`load` must have been called already). ``sys_modules`` defaults to :data:`sys.modules`.
    """
    if source is not None:
        load(source, build, cuda=cuda, verbose=verbose)
    ext = _ext()
    sys_modules = sys.modules if sys_modules is None else sys_modules
    made: dict[str, types.ModuleType] = {}

    def module(name: str, package: bool = False, **attrs: object) -> types.ModuleType:
        m = types.ModuleType(name, f"p3d_shim stand-in for {name} (pytorch3d {VERSION} kernels)")
        if package:
            m.__path__ = []
        m.__dict__.update(attrs)
        made[name] = m
        return m

    knn = module("pytorch3d.ops.knn", knn_points=knn_points, knn_gather=knn_gather, _KNN=_KNN)
    interp = module("pytorch3d.ops.interp_face_attrs", interpolate_face_attributes=interpolate_face_attributes,
                    interpolate_face_attributes_python=interpolate_face_attributes_python)
    ops = module("pytorch3d.ops", package=True, knn=knn, interp_face_attrs=interp, knn_points=knn_points,
                 knn_gather=knn_gather, interpolate_face_attributes=interpolate_face_attributes)
    structures = module("pytorch3d.structures", package=True, Meshes=Meshes, Pointclouds=Pointclouds)
    io = module("pytorch3d.io", package=True, load_obj=_unsupported("io.load_obj"),
                save_obj=_unsupported("io.save_obj"))
    rasterizer = module("pytorch3d.renderer.mesh.rasterizer", MeshRasterizer=MeshRasterizer,
                        RasterizationSettings=RasterizationSettings, Fragments=Fragments)
    module("pytorch3d.renderer.mesh.rasterize_meshes", rasterize_meshes=rasterize_meshes,
           kMaxFacesPerBin=K_MAX_FACES_PER_BIN)
    mesh = module("pytorch3d.renderer.mesh", package=True, rasterizer=rasterizer, rasterize_meshes=rasterize_meshes,
                  MeshRasterizer=MeshRasterizer, RasterizationSettings=RasterizationSettings)  # the function, as
    # in pytorch3d (its __init__ shadows the sub-module of the same name, which stays in sys.modules)
    cameras = module("pytorch3d.renderer.cameras", FoVPerspectiveCameras=FoVPerspectiveCameras,
                     FoVOrthographicCameras=FoVOrthographicCameras)
    placeholders = {n: _unsupported(f"renderer.{n}") for n in (
        "look_at_view_transform", "DirectionalLights", "MeshRenderer", "SoftPhongShader", "TexturesUV")}
    renderer = module("pytorch3d.renderer", package=True, mesh=mesh, cameras=cameras, MeshRasterizer=MeshRasterizer,
                      RasterizationSettings=RasterizationSettings, FoVPerspectiveCameras=FoVPerspectiveCameras,
                      FoVOrthographicCameras=FoVOrthographicCameras, rasterize_meshes=rasterize_meshes,
                      **placeholders)
    made["pytorch3d._C"] = ext
    module("pytorch3d", package=True, _C=ext, ops=ops, structures=structures, renderer=renderer, io=io,
           __version__=VERSION)
    sys_modules.update(made)
    return made
