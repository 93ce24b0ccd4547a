"""GOHA's expression-branch 3DMM pseudo-render (``src/losses/threeDMM.py::ExpLoss.get_sudo``), without nvdiffrast.

Official chain (``Model.get_expr_plane`` of ``src/models/model_s2.py`` calling ``ExpLoss.get_sudo``):

1. ``preprocess``: each ``(b, 3, 512, 512)`` image in [-1, 1] -> ``(x + 1) / 2``, bilinear (``align_corners=False``)
   to 224. No Deep3D re-alignment: the EG3D crop goes straight into the regressor.
2. ``net_recon`` (:class:`avatar.face.deep3d.Deep3DReconNet`) on ``cat(source, cano_exemplar, driving)`` -> 257
   coefficients each.
3. Mixing (:func:`mix_coefficients`): the source's ``id``, ``tex``, ``gamma``; the driving ``exp [80:144]`` (only when
   ``exp_transfer``); the exemplar's ``angle [224:227]`` and ``trans [254:257]``.
4. ``ParametricFaceModel.compute_for_render`` (:class:`avatar.face.bfm.ParametricFaceModel`) and
   ``MeshRenderer(fov = 2 atan(112 / 1015) deg, znear 5, zfar 15, size 224)`` with the vertex colours as features:
   image ``(b, 3, 224, 224)``, background 0 (:func:`render_mesh_nvdiffrast`).
5. ``x * 2 - 1`` (returned by ``get_sudo``), then bilinear (``align_corners=False``) to the source size (512).

The official indexes ``output_coeff[0]``, ``[1]``, ``[2]`` of that concatenation and renders one image, so it is only
correct for batch 1 (for ``b > 1`` index 1 is the second source, not the exemplar). Here each source ``i`` is mixed
with driving frame ``i`` and the exemplar (batch 1 or ``b``); for ``b = 1`` this is the official computation.

Rasterisation (nvdiffrast ``rasterize`` + ``interpolate`` semantics; conventions from the nvdiffrast documentation,
https://nvlabs.github.io/nvdiffrast, and the official ``MeshRenderer``): clip coordinates are built exactly as
``MeshRenderer.forward`` does (``y`` negated, then ``ndc_proj @ diag(1, -1, -1, 1)``, so ``w`` = the camera distance
``z``); pixel ``(row i, col j)`` samples NDC ``((j + 0.5) 2 / W - 1, (i + 0.5) 2 / H - 1)`` (nvdiffrast's row 0 is
NDC ``y = -1``; with the ``y`` flip this puts the face upright: row = ``224 - v``); no back-face culling; the
front-most triangle wins (depth test on ``z / w``, monotone in the camera distance); barycentrics are
perspective-correct and ``interpolate`` gives ``sum w_k a_k``; no antialiasing (the official skips ``dr.antialias``);
the frustum clips ``z / w`` to [-1, 1], i.e. camera distances [znear, zfar]. It runs on the pytorch3d-style
:func:`avatar.render.rasterize.rasterize_ndc` fed mirrored NDC (pytorch3d's ``+x`` left / ``+y`` up pixel grid
mirrored back onto nvdiffrast's), with the view depth ``w`` as its perspective ``Z``. Known differences from
nvdiffrast, none of which occur for a Deep3D face (camera 10 units away, head within +-2): a pixel centre exactly on
a shared edge is covered by neither triangle here (nvdiffrast's fill rule gives it to one); exact depth ties may
resolve differently; a triangle crossing the near plane is dropped instead of clipped (pixels beyond ``zfar`` are
rejected per pixel, which equals clipping there).

State: this module holds ``net_recon.`` (the Deep3D ``epoch_20.pth`` ``net_recon`` keys, *not* in GOHA's
``model_state_dict``: the official ``ExpLoss`` is built from Deep3D's own checkpoint) and the BFM as non-persistent
buffers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.errors import AssetNotFoundError
from avatar.face.bfm import DEEP3D_CENTER, DEEP3D_FOCAL, ParametricFaceModel
from avatar.face.deep3d import Deep3DReconNet
from avatar.render.rasterize import rasterize_ndc

__all__ = [
    "PSEUDO_RENDER_FOV_DEG",
    "PSEUDO_RENDER_SIZE",
    "PSEUDO_RENDER_ZFAR",
    "PSEUDO_RENDER_ZNEAR",
    "ExpressionPseudoRenderer",
    "clip_coordinates",
    "mix_coefficients",
    "preprocess",
    "rasterize_nvdiffrast",
    "render_mesh_nvdiffrast",
]

PSEUDO_RENDER_FOV_DEG = 2 * math.atan(DEEP3D_CENTER / DEEP3D_FOCAL) * 180 / math.pi
PSEUDO_RENDER_ZNEAR = 5.0
PSEUDO_RENDER_ZFAR = 15.0
PSEUDO_RENDER_SIZE = 224


def preprocess(img: Tensor, size: int = PSEUDO_RENDER_SIZE) -> Tensor:
    """``(B, 3, H, W)`` in [-1, 1] -> Deep3D input ``(B, 3, size, size)`` in [0, 1] (``ExpLoss.preprocess``)."""
    return F.interpolate((img + 1) / 2.0, size=(size, size), mode="bilinear", align_corners=False)


def mix_coefficients(source: Tensor, exemplar: Tensor, driving: Tensor, exp_transfer: bool = True) -> Tensor:
    """``(B, 257)`` source, ``(1 or B, 257)`` exemplar, ``(B, 257)`` driving -> the rendered ``(B, 257)``."""
    out = source.clone()
    if exp_transfer:
        out[:, 80:144] = driving[:, 80:144]
    out[:, 224:227] = exemplar[:, 224:227].expand(out.shape[0], 3)
    out[:, 254:] = exemplar[:, 254:].expand(out.shape[0], 3)
    return out


def clip_coordinates(vertex: Tensor, fov_deg: float = PSEUDO_RENDER_FOV_DEG, znear: float = PSEUDO_RENDER_ZNEAR,
                     zfar: float = PSEUDO_RENDER_ZFAR) -> Tensor:
    """Deep3D camera-space vertices ``(B, N, 3)`` (``y`` up, ``z`` = distance) -> nvdiffrast clip ``(B, N, 4)``."""
    t = math.tan(math.radians(fov_deg * 0.5)) * znear
    x, y, z = vertex.unbind(-1)
    # ndc_projection(x=t, n, f) @ diag(1, -1, -1, 1) applied to (x, -y, z, 1)
    return torch.stack([
        (znear / t) * x,
        -(znear / t) * y,
        (zfar + znear) / (zfar - znear) * z - 2 * zfar * znear / (zfar - znear),
        z,
    ], dim=-1)


def rasterize_nvdiffrast(vertex: Tensor, faces: Tensor, size: int = PSEUDO_RENDER_SIZE,
                         fov_deg: float = PSEUDO_RENDER_FOV_DEG, znear: float = PSEUDO_RENDER_ZNEAR,
                         zfar: float = PSEUDO_RENDER_ZFAR) -> tuple[Tensor, Tensor, Tensor]:
    """Front-most triangle per pixel, nvdiffrast-style (see the module notes).

    Returns ``pix_to_face (B, H, W)`` (-1 = background; nvdiffrast's ``triangle_id - 1``), perspective-correct
    barycentrics ``(B, H, W, 3)`` of the face's three vertices, and the camera distance ``(B, H, W)`` (0 outside).
    """
    clip = clip_coordinates(vertex, fov_deg, znear, zfar)
    w = clip[..., 3]
    ndc = torch.stack([-clip[..., 0] / w, -clip[..., 1] / w, w], dim=-1)
    frags = rasterize_ndc(ndc, faces, size, cull_backfaces=False, perspective_correct=True, z_clip=znear)
    keep = (frags.pix_to_face >= 0) & (frags.zbuf <= zfar)
    pix_to_face = torch.where(keep, frags.pix_to_face, torch.full_like(frags.pix_to_face, -1))
    bary = torch.where(keep.unsqueeze(-1), frags.bary_coords, torch.zeros_like(frags.bary_coords))
    depth = torch.where(keep, frags.zbuf, torch.zeros_like(frags.zbuf))
    return pix_to_face, bary, depth


def render_mesh_nvdiffrast(vertex: Tensor, faces: Tensor, feat: Tensor, size: int = PSEUDO_RENDER_SIZE,
                           fov_deg: float = PSEUDO_RENDER_FOV_DEG, znear: float = PSEUDO_RENDER_ZNEAR,
                           zfar: float = PSEUDO_RENDER_ZFAR) -> tuple[Tensor, Tensor, Tensor]:
    """``MeshRenderer.forward``: ``vertex (B, N, 3)``, ``faces (F, 3)``, ``feat (B, N, C)`` -> ``mask (B, 1, H, W)``,
    ``depth (B, 1, H, W)``, ``image (B, C, H, W)`` (0 on the background)."""
    pix_to_face, bary, depth = rasterize_nvdiffrast(vertex, faces, size, fov_deg, znear, zfar)
    mask = (pix_to_face >= 0).to(vertex.dtype)
    fidx = faces[pix_to_face.clamp(min=0)]  # (B, H, W, 3)
    b = vertex.shape[0]
    batch = torch.arange(b, device=vertex.device).view(b, 1, 1, 1)
    vals = feat[batch, fidx]  # (B, H, W, 3, C)
    image = (bary.to(feat.dtype).unsqueeze(-1) * vals).sum(dim=3) * mask.unsqueeze(-1)
    return mask.unsqueeze(1), (depth * mask).unsqueeze(1), image.permute(0, 3, 1, 2)


class ExpressionPseudoRenderer(nn.Module):
    """``ExpLoss.get_sudo`` + the resize of ``Model.get_expr_plane``.

    ``forward(img_src (B, 3, H, W), cano_exemplar (1 or B, 3, H', W'), img_drv (B, 3, H, W))``, all in [-1, 1]
    -> pseudo-render ``(B, 3, H, W)`` in [-1, 1] (background -1). State-dict keys: ``net_recon.*`` only.

    The steps are also separate (:meth:`regress`, :func:`mix_coefficients`, :meth:`render`) so that a caller can
    keep the coefficients of a source and of the exemplar and only regress the driving frames. ``facemodel`` may
    be attached later (:meth:`set_face_model`): the BFM cannot be downloaded, so a model built from a config or a
    saved folder has none until it is given.
    """

    def __init__(self, net_recon: Deep3DReconNet, facemodel: ParametricFaceModel | None = None,
                 size: int = PSEUDO_RENDER_SIZE) -> None:
        super().__init__()
        self.net_recon = net_recon
        self.facemodel = facemodel
        self.size = size
        """Side of the render (official: 224, Deep3D's crop; tiny test configs use less)."""

    def set_face_model(self, facemodel: ParametricFaceModel) -> None:
        """Attach the BFM (moved to this module's device)."""
        device = next(self.net_recon.parameters()).device
        self.facemodel = facemodel.to(device)

    @property
    def has_face_model(self) -> bool:
        return self.facemodel is not None

    @torch.no_grad()
    def regress(self, img: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> Deep3D coefficients ``(B, 257)`` (``preprocess`` then ``net_recon``)."""
        return self.net_recon(preprocess(img))

    @torch.no_grad()
    def coefficients(self, img_src: Tensor, cano_exemplar: Tensor, img_drv: Tensor,
                     exp_transfer: bool = True) -> Tensor:
        """The mixed ``(B, 257)`` coefficients (one ``net_recon`` call on the concatenation, as the official)."""
        b, e = img_src.shape[0], cano_exemplar.shape[0]
        coeffs = self.net_recon(torch.cat([preprocess(img_src), preprocess(cano_exemplar), preprocess(img_drv)]))
        return mix_coefficients(coeffs[:b], coeffs[b:b + e], coeffs[b + e:], exp_transfer)

    @torch.no_grad()
    def render(self, coefficients: Tensor) -> Tensor:
        """Mixed ``(B, 257)`` coefficients -> ``(B, 3, size, size)`` in [-1, 1] (the official ``get_sudo`` output,
        224 x 224)."""
        if self.facemodel is None:
            raise AssetNotFoundError(
                "GOHA's expression branch needs the BFM face model (BFM_model_front.mat), which cannot be "
                "downloaded: run `avatar download goha --from-dir DIR` with the file in DIR, or call "
                "set_face_model(ParametricFaceModel.from_folder(DIR))")
        vertex, _, color, _ = self.facemodel.compute_for_render(coefficients)
        _, _, face = render_mesh_nvdiffrast(vertex, self.facemodel.face_buf, color, self.size)
        return face * 2 - 1

    @torch.no_grad()
    def get_sudo(self, img_src: Tensor, cano_exemplar: Tensor, img_drv: Tensor, exp_transfer: bool = True) -> Tensor:
        """``(B, 3, 224, 224)`` in [-1, 1]: the official ``get_sudo`` output."""
        return self.render(self.coefficients(img_src, cano_exemplar, img_drv, exp_transfer))

    def forward(self, img_src: Tensor, cano_exemplar: Tensor, img_drv: Tensor, exp_transfer: bool = True) -> Tensor:
        sudo = self.get_sudo(img_src, cano_exemplar, img_drv, exp_transfer)
        return F.interpolate(sudo, size=img_src.shape[-2:], mode="bilinear", align_corners=False)
