"""GenHead's part-wise volume rendering (official ``training/volumetric_rendering/renderer.py::
PartDeformImportanceRenderer``), built from the steps of :class:`avatar.render.triplane.ImportanceRenderer`.

Two triplanes share one decoder: the *part* triplane (eyes and inner mouth, ``planes[:, 0:3]``) and the *face*
triplane (``planes[:, 3:6]``). Each sample point ``x`` is deformed three ways (:class:`avatar.flame.parts.
PartDeformation`): ``x_eye``, ``x_face``, ``x_mouth``. Per ray ``r`` and sample ``s``, with the screen-space masks
``e_r`` (eyes) and ``m_r`` (mouth) of the ray's pixel and ``b_s`` (the point lies in an eyeball's bounding box):

* part field at ``x_mouth`` where ``m_r > 0`` else at ``x_eye``; its density is multiplied by ``b_s + m_r``;
* face field at ``x_face``;
* **training form** (``fuse=False``, the official ``auto_fuse=False`` used at the training resolution 64):
  ``sigma = sigma_p e_r b_s + sigma_p m_r + sigma_f (1 - e_r b_s - m_r)`` and the same blend of the colours;
* **fused form** (``fuse=True``, upstream at rendering resolutions above 64): the training blend where
  ``m_r = 0``; on mouth rays ``sigma = sigma_p + sigma_f`` and colour ``softmax(sigma_p, sigma_f)``-weighted.

The same composition is applied to the coarse (stratified) and the fine (importance) samples; both passes use the
ray masks of the coarse pass (upstream reuses them; the two passes have the same number of samples). Extra
outputs feed GenHead's part regularisers and Portrait4D v1's distillation: the face densities inside the eye boxes
and on mouth rays, the coarse sample points, and the face triplane features at the coarse points.

With ``fused='ieee'|'tf32'`` (no gradients; CUDA, or Triton's interpreter on the CPU) each field (triplane
sampling + decoder) is evaluated by :func:`avatar.render.fused.fused_triplane_field` instead of
:func:`~avatar.render.triplane.sample_from_planes` and the decoder module: no ``(B, 3, M, C)`` sampled-feature or
hidden-layer tensors. The deformation, the compositing above and the ray marching stay the PyTorch steps; the face
features at the coarse points (a distillation target) are then sampled by ``sample_from_planes`` for the coarse
pass only.

Shapes: ``B`` batch, ``R`` rays, ``S`` samples per pass, ``C`` decoder features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from avatar.flame.parts import PartDeformation
from avatar.render.triplane import ImportanceRenderer, sample_from_planes

__all__ = ["PartRenderOutput", "render_parts"]

PartDeformFn = Callable[[Tensor], PartDeformation]
"""Maps target-space points ``(B, M, 3)`` to their :class:`PartDeformation`."""


class PartRenderOutput(NamedTuple):
    """Per-ray results of :func:`render_parts`."""

    features: Tensor
    """``(B, R, C)`` composited features (without background)."""
    depth: Tensor
    """``(B, R, 1)``."""
    all_depths: Tensor
    """``(B, R, 2S, 1)`` sorted depths of the coarse + fine samples."""
    weights: Tensor
    """``(B, R, 2S - 1, 1)`` compositing weights."""
    t_bg: Tensor
    """``(B, R, 1)`` background transmittance."""
    face_density_in_eye: Tensor
    """``(B, R, 2S, 1)`` raw face density times the eye-box indicator (coarse then fine, unsorted)."""
    face_density_in_mouth: Tensor
    """``(B, R, 2S, 1)`` raw face density times the mouth mask (coarse then fine, unsorted)."""
    coarse_points: Tensor
    """``(B, R * S, 3)`` coarse sample points (target space)."""
    coarse_face_features: Tensor
    """``(B, R * S, C_plane)`` face triplane features (mean over the 3 planes) at the coarse points."""
    eye_mask_coarse: Tensor
    """``(B, R, S)`` eye mask times the eye-box indicator of the coarse samples."""
    mouth_mask_samples: Tensor
    """``(B, R, S)`` the mouth mask broadcast over the samples."""


class _Pass(NamedTuple):
    colors: Tensor
    densities: Tensor
    face_density_in_eye: Tensor
    face_density_in_mouth: Tensor
    face_features: Tensor
    eye_sel: Tensor


FusedField = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``points (B, M, 3) -> (rgb (B, M, C_out), sigma (B, M, 1))`` of one triplane by the fused kernel."""


def _fused_fields(renderer: ImportanceRenderer, decoder: Any, planes: Tensor, precision: str,
                  det: bool) -> tuple[FusedField, FusedField]:
    """The part and the face fields (triplane sampling + decoder) through
    :func:`avatar.render.fused.fused_triplane_field`; the decoder's weights and the triplanes' channels-last copies
    are made once per render."""
    from avatar.render.fused import check_fused_setup, decoder_weights, fused_triplane_field

    opt = renderer.options
    check_fused_setup(opt, det, decoder, precision, planes.device)
    weights = decoder_weights(decoder)
    out_dim = decoder.out_rgb.out_features

    def field_of(triplane: Tensor) -> FusedField:
        hwc = triplane.float().permute(0, 1, 3, 4, 2).contiguous()

        def field(points: Tensor) -> tuple[Tensor, Tensor]:
            b, m, _ = points.shape
            colors = torch.empty(b, m, 1, out_dim, device=points.device)
            sigmas = torch.empty(b, m, 1, device=points.device)
            fused_triplane_field(hwc, points.float().contiguous(), weights, 2.0 / opt.box_warp, colors, sigmas, 0,
                                 precision, opt.plane_axes)
            return colors.reshape(b, m, out_dim), sigmas.reshape(b, m, 1)

        return field

    return field_of(planes[:, 0:3]), field_of(planes[:, 3:6])


def _evaluate_pass(
    renderer: ImportanceRenderer, part_planes: Tensor, face_planes: Tensor,
    decoder: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], deform: PartDeformFn, points: Tensor,
    directions: Tensor, depths_shape: torch.Size, eye_rays: Tensor, mouth_rays: Tensor, fuse: bool,
    fused_fields: tuple[FusedField, FusedField] | None = None, face_features: bool = True,
) -> _Pass:
    """One pass (coarse or fine). ``fused_fields``: the part and the face field instead of ``decoder`` on the
    sampled planes; ``face_features=False`` (fused only) leaves the face features at the points empty
    ``(B, M, 0)``."""
    b, r, s, _ = depths_shape
    box = renderer.options.box_warp
    d = deform(points)
    mouth_pts = (mouth_rays > 0).reshape(b, r * s, 1)
    part_points = torch.where(mouth_pts, d.mouth, d.eye)
    inside = d.inside_bbox_eye.reshape(b, r, s, 1).to(points.dtype)
    mouth = mouth_rays.unsqueeze(-1)  # (B, R, S, 1)

    if fused_fields is None:
        rgb_p, sigma_p = decoder(sample_from_planes(part_planes, part_points, box), directions)
        sampled = sample_from_planes(face_planes, d.face, box)
        rgb_f, sigma_f = decoder(sampled, directions)
        face_feats = sampled.mean(1)
    else:
        rgb_p, sigma_p = fused_fields[0](part_points)
        rgb_f, sigma_f = fused_fields[1](d.face)
        face_feats = (sample_from_planes(face_planes, d.face, box).mean(1) if face_features
                      else points.new_zeros(b, r * s, 0))
    rgb_p, sigma_p = rgb_p.reshape(b, r, s, -1), sigma_p.reshape(b, r, s, 1) * (inside + mouth)
    rgb_f, sigma_f = rgb_f.reshape(b, r, s, -1), sigma_f.reshape(b, r, s, 1)

    eye_sel = eye_rays * inside[..., 0]  # (B, R, S)
    e, m = eye_sel.unsqueeze(-1), mouth
    sigma = sigma_p * e + sigma_p * m + sigma_f * (1 - e - m)
    color = rgb_p * e + rgb_p * m + rgb_f * (1 - e - m)
    if fuse:
        weight = torch.softmax(torch.cat([sigma_p.unsqueeze(-1), sigma_f.unsqueeze(-1)], dim=-1), dim=-1)
        color_mouth = weight[..., 0] * rgb_p + weight[..., 1] * rgb_f
        hard = (mouth > 0).to(sigma.dtype)
        sigma = sigma * (1 - hard) + (sigma_p + sigma_f) * hard
        color = color * (1 - hard) + color_mouth * hard
    return _Pass(color, sigma, sigma_f * inside, sigma_f * mouth, face_feats, eye_sel)


def render_parts(
    renderer: ImportanceRenderer,
    planes: Tensor,
    decoder: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    deform: PartDeformFn,
    origins: Tensor,
    directions: Tensor,
    cam_z: Tensor,
    eye_mask: Tensor,
    mouth_mask: Tensor,
    fuse: bool = False,
    deterministic: bool | None = None,
    fused: str | None = None,
) -> PartRenderOutput:
    """Render GenHead's two triplanes with part-wise deformation and compositing.

    Args:
        renderer: supplies the options (depth range, sample counts) and the ray-marching steps.
        planes: ``(B, 6, C_plane, H, W)``: part triplane then face triplane.
        decoder: the shared OSG decoder.
        deform: target points ``(B, M, 3)`` -> :class:`PartDeformation`.
        origins, directions: ``(B, R, 3)`` rays (unit directions).
        cam_z: ``(B,)`` for the ``'auto-plane'`` depth range.
        eye_mask, mouth_mask: ``(B, R, 1)`` screen-space masks of the rays' pixels.
        fuse: the fused (inference) compositing on mouth rays; ``False`` is the training form.
        deterministic: no stratified jitter and deterministic importance sampling (default: ``not training``).
        fused: ``None`` (the reference), or ``'ieee'`` / ``'tf32'``: the fields through the fused Triton kernel
            (module docstring; no gradients; raises :class:`avatar.render.fused.FusedRenderingUnsupportedError`
            for options it does not cover).
    """
    opt = renderer.options
    if opt.depth_resolution_importance not in (0, opt.depth_resolution):
        raise ValueError("part rendering needs depth_resolution_importance == depth_resolution (as upstream) or 0")
    det = renderer.is_deterministic(deterministic)
    part_planes, face_planes = planes[:, 0:3], planes[:, 3:6]
    fused_fields = None if fused is None else _fused_fields(renderer, decoder, planes, fused, det)
    depths = renderer.coarse_depths(origins, directions, cam_z, 1.0, det)
    b, r, s, _ = depths.shape
    eye_rays = eye_mask.expand(b, r, s)
    mouth_rays = mouth_mask.expand(b, r, s)

    def run(depths_: Tensor, coarse_pass: bool) -> tuple[Tensor, _Pass]:
        points = (origins.unsqueeze(-2) + depths_ * directions.unsqueeze(-2)).reshape(b, -1, 3)
        dirs = directions.unsqueeze(-2).expand(-1, -1, depths_.shape[2], -1).reshape(b, -1, 3)
        return points, _evaluate_pass(renderer, part_planes, face_planes, decoder, deform, points, dirs,
                                      depths_.shape, eye_rays, mouth_rays, fuse, fused_fields,
                                      face_features=coarse_pass)  # the fine pass's are never returned

    coarse_points, coarse = run(depths, True)
    colors, densities = coarse.colors, coarse.densities
    in_eye, in_mouth = coarse.face_density_in_eye, coarse.face_density_in_mouth
    if opt.depth_resolution_importance > 0:
        march = renderer.march_fn(colors, densities, depths, opt.clamp_mode, opt.white_back)
        fine_depths = renderer.importance_fn(depths, march.weights, opt.depth_resolution_importance, det)
        _, fine = run(fine_depths, False)
        depths, colors, densities = renderer.merge_fn(depths, colors, densities, fine_depths, fine.colors,
                                                      fine.densities)
        in_eye = torch.cat([in_eye, fine.face_density_in_eye], dim=-2)
        in_mouth = torch.cat([in_mouth, fine.face_density_in_mouth], dim=-2)
    out = renderer.march_fn(colors, densities, depths, opt.clamp_mode, opt.white_back)
    return PartRenderOutput(out.rgb, out.depth, depths, out.weights, out.t_bg, in_eye, in_mouth, coarse_points,
                            coarse.face_features, coarse.eye_sel, mouth_rays)
