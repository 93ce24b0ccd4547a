"""GenHead: Portrait4D's part-wise animatable 3D head generator (official ``training/generator/triplane.py::
PartTriPlaneGeneratorDeform``).

A latent ``z`` and a FLAME shape give an identity (``mapping``: ``w = M(z, [camera, shape])``); FLAME expression,
jaw, neck and eye poses animate it through the part-wise deformation field and the screen-space part masks only
(``synthesis``); a camera renders it (triplanes -> part volume rendering at 64^2 -> super-resolution to 512^2).

Module and buffer names equal the official ``G_ema`` names (``backbone.*``, ``background.*``, ``decoder.*``,
``superresolution.*``, ``deformer.flame_deform.*``), so a converted ``genhead-ffhq512.pkl`` loads strictly. Two
renderers that need the ``FLAME_masks.pkl`` vertex sets (not stored in the official checkpoint) are added at load
time: ``part_masks`` renders the eye / mouth / head masks and the uv map the discriminator reads; its vertex index
buffers are saved by :meth:`save_pretrained` (its FLAME buffers are the deformer's, saved once).

Randomness: upstream jitters the stratified depths and draws the importance samples at random on every call;
here ``deterministic=None`` means deterministic in ``eval()`` and stochastic in ``train()`` mode (the renderer's
convention); the noise inputs of the StyleGAN2 layers follow ``noise_mode`` (``'const'``, as the official data
generation and inference use).

Conventions: images in ``[-1, 1]``; cameras are 25-number labels (:mod:`avatar.render.camera`); FLAME parameters
``shape (B, 300)``, ``expression (B, 100)``, ``pose (B, 6)`` = neck + jaw axis-angles, ``eye_pose (B, 6)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.errors import ConfigError, InputError, StateDictMismatchError
from avatar.flame.correspondence import CorrespondenceMap
from avatar.flame.masks import FlamePartMaskRenderer, PartMasks
from avatar.flame.parts import FlamePartDeformer, PartDeformation
from avatar.modeling import ModelMixin
from avatar.models.genhead.configuration import GenHeadConfig
from avatar.models.genhead.rendering import PartRenderOutput, render_parts
from avatar.nn.generator import StyleGAN2Generator
from avatar.render.camera import camera_z, split_label
from avatar.render.fused import fused_available
from avatar.render.rays import sample_rays
from avatar.render.triplane import ImportanceRenderer, TriplaneNeRFDecoder, rays_to_image

__all__ = ["GenHead", "GenHeadOutput", "PartDeformerSlot"]

logger = logging.getLogger(__name__)

DEFORMER_PREFIX = "deformer.flame_deform."
MASKS_PREFIX = "part_masks."
MASKS_FLAME_PREFIX = "part_masks.flame."
DEFORMER_FLAME_PREFIX = DEFORMER_PREFIX + "flame_model."


@dataclass
class GenHeadOutput:
    """What :meth:`GenHead.synthesis` returns (official output keys in brackets)."""

    image: Tensor
    """``(B, 3, 512, 512)`` super-resolved image [``image_sr``]."""
    image_raw: Tensor
    """``(B, 3, NR, NR)`` raw neural rendering [``image``]."""
    features: Tensor
    """``(B, C, NR, NR)`` feature image with background, in ``[-1, 1]`` [``image_feature``]."""
    depth: Tensor
    """``(B, 1, NR, NR)`` expected depth [``image_depth``]."""
    t_bg: Tensor
    """``(B, 1, NR, NR)`` background transmittance [``T_bg``]."""
    seg: Tensor
    """``(B, 1, NR, NR)`` ``2 (1 - t_bg) - 1`` [``seg``]."""
    background: Tensor
    """``(B, C, NR, NR)`` background features in ``[-1, 1]`` [``background``]."""
    masks: PartMasks
    """Eye, mouth and head masks at NR and the blurred eye / mouth masks at 512."""
    render: PartRenderOutput
    """Per-ray extras (sample depths and weights, part densities, coarse points and face features)."""
    ws: Tensor
    """``(B, num_ws, w_dim)`` the styles used."""

    def __getitem__(self, key: str) -> Tensor:
        return getattr(self, key)


class PartDeformerSlot(nn.Module):
    """Holds the FLAME part deformer as ``flame_deform`` (official ``DeformationModule`` -> ``deformer.flame_deform``)."""

    def __init__(self, flame_deform: FlamePartDeformer | None = None) -> None:
        super().__init__()
        self.flame_deform = flame_deform

    @property
    def available(self) -> bool:
        return self.flame_deform is not None


def _planes(planes: Tensor, plane_features: int) -> Tensor:
    """``(B, 6 * C, H, W)`` backbone output -> ``(B, 6, C, H, W)``."""
    return planes.view(planes.shape[0], -1, plane_features, planes.shape[-2], planes.shape[-1])


class GenHead(ModelMixin):
    """GenHead generator; see the module docstring. Build from a :class:`GenHeadConfig` (random weights) or load
    with :meth:`from_pretrained` (``genhead-ffhq512``, a converted official checkpoint, or a saved folder).

    The FLAME parts (deformer, masks, uv map) come from ``deformer_buffers`` (the official ``deformer.flame_deform.*``
    buffers, or :func:`avatar.flame.deformation.build_deformer_buffers` output) and ``flame_masks`` (the fields of
    ``FLAME_masks.pkl``); without them the model can map and synthesise triplanes but not render.
    """

    config_class: ClassVar[type] = GenHeadConfig
    default_model_id: ClassVar[str | None] = "genhead-ffhq512"

    def __init__(self, config: GenHeadConfig | None = None, deformer_buffers: Mapping[str, Any] | None = None,
                 flame_masks: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        config = config or GenHeadConfig()
        self.config = config
        self.backbone = StyleGAN2Generator(
            config.z_dim, config.c_dim, config.w_dim, config.triplane_resolution, config.triplane_channels,
            mapping_kwargs={"num_layers": config.mapping_layers}, channel_base=config.channel_base,
            channel_max=config.channel_max, num_fp16_res=0, conv_clamp=None, fused_modconv_default="inference_only",
        )
        self.background = None
        if config.has_background:
            self.background = StyleGAN2Generator(
                config.z_dim, 0, config.w_dim, config.background_resolution, config.feature_channels,
                mapping_kwargs={"num_layers": config.background_mapping_layers},
                channel_base=config.background_channel_base, num_fp16_res=config.background_num_fp16_res,
            )
        self.superresolution = config.superresolution.build() if config.has_superresolution else None
        self.decoder = TriplaneNeRFDecoder(config.plane_features, config.feature_channels,
                                           lr_multiplier=config.decoder_lr_mul)
        self.renderer = ImportanceRenderer(config.rendering)
        self.deformer = PartDeformerSlot()
        self.part_masks: FlamePartMaskRenderer | None = None
        self.is_random_init = True
        self.fused_rendering: str | None = None  # enable_fast_inference
        if deformer_buffers is not None:
            self.set_flame(deformer_buffers, flame_masks)

    def enable_fast_inference(self, fused_rendering: str | None = "ieee") -> GenHead:
        """Where no gradient is recorded and the fused kernels can run (CUDA, or Triton's interpreter): the part
        and face fields of :func:`~avatar.models.genhead.rendering.render_parts` through the fused Triton field
        kernel (``'ieee'``: float32 decoder products, ``'tf32'``; ``None``: the PyTorch path). Training and
        anything recording gradients keep the PyTorch path. Returns ``self``."""
        if fused_rendering not in (None, "ieee", "tf32"):
            raise ConfigError(f"fused_rendering must be 'ieee', 'tf32' or None, got {fused_rendering!r}")
        self.fused_rendering = fused_rendering
        return self

    def disable_fast_inference(self) -> GenHead:
        """Back to the PyTorch path (the default). Returns ``self``."""
        self.fused_rendering = None
        return self

    def _fused(self, planes: Tensor) -> str | None:
        if self.fused_rendering is None or torch.is_grad_enabled() or not fused_available(planes.device):
            return None
        return self.fused_rendering

    def _init_tiny(self) -> None:
        """Tiny models get the synthetic FLAME stand-in (:func:`avatar.flame.synthetic.synthetic_genhead_assets`),
        so that they render, and a decoder with some density."""
        from avatar.flame.deformation import build_deformer_buffers
        from avatar.flame.synthetic import synthetic_genhead_assets

        assets = synthetic_genhead_assets(0)
        self.set_flame(build_deformer_buffers(**assets), assets["masks"])
        with torch.no_grad():
            self.decoder.out_sigma.bias.fill_(2.0)
            self.decoder.out_sigma.weight.normal_(0.0, 0.5)

    # ------------------------------------------------------------------------------------------------------
    # FLAME parts

    def set_flame(self, deformer_buffers: Mapping[str, Any], flame_masks: Mapping[str, Any] | None) -> None:
        """(Re)build the FLAME deformer from its buffers, and the mask / uv renderer on it when ``flame_masks``
        (the ``FLAME_masks.pkl`` fields) is given."""
        device = next(self.parameters()).device
        deform = FlamePartDeformer(deformer_buffers, box_warp=self.config.deformer_box_warp).to(device)
        self.deformer.flame_deform = deform
        self.part_masks = None if flame_masks is None else FlamePartMaskRenderer(deform, flame_masks).to(device)

    @property
    def can_render(self) -> bool:
        return self.deformer.available and self.part_masks is not None

    def _require_flame(self) -> FlamePartDeformer:
        if self.deformer.flame_deform is None or self.part_masks is None:
            raise InputError("this GenHead has no FLAME assets: load it with GenHead.from_pretrained('genhead-ffhq512') "
                             "or build it with deformer_buffers and flame_masks")
        return self.deformer.flame_deform

    # ------------------------------------------------------------------------------------------------------
    # loading and saving

    def _prepare_load(self, state: Mapping[str, Tensor]) -> None:
        buffers = {k[len(DEFORMER_PREFIX):]: v for k, v in state.items() if k.startswith(DEFORMER_PREFIX)}
        if not buffers:
            return
        current = self.deformer.flame_deform
        if current is not None:
            own = current.state_dict()
            if set(own) == set(buffers) and all(tuple(own[k].shape) == tuple(buffers[k].shape) for k in own):
                return
        masks = _masks_from_state(state)
        self.set_flame(buffers, masks)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        self._prepare_load(state_dict)
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.is_random_init = False
        return result

    def load_official(self, state: Mapping[str, Tensor]) -> None:
        """Strictly load an official ``G_ema`` state; the mask renderers' index buffers (not official) are kept."""
        from avatar.models.genhead.convert import official_to_model_state

        state = official_to_model_state(state)
        self._prepare_load(state)
        extra = {k: v for k, v in self.state_dict().items() if k.startswith(MASKS_PREFIX)}
        self.load_state_dict_strict({**state, **extra})

    def _state_to_save(self) -> dict[str, Tensor]:
        """The state without the mask renderer's copy of the deformer's FLAME buffers (the same tensors); its other
        buffers cloned (``masked_faces`` is the deformer's tensor too)."""
        return {k: v.clone() if k.startswith(MASKS_PREFIX) else v for k, v in self.state_dict().items()
                if not k.startswith(MASKS_FLAME_PREFIX)}

    def _state_from_saved(self, state: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        out = dict(state)
        if any(k.startswith(MASKS_PREFIX) for k in state):
            for k, v in state.items():
                if k.startswith(DEFORMER_FLAME_PREFIX):
                    out[MASKS_FLAME_PREFIX + k[len(DEFORMER_FLAME_PREFIX):]] = v
        return out

    @classmethod
    def from_official(cls, source: str | Path | Mapping[str, Tensor], *, config: GenHeadConfig | None = None,
                      flame_masks: Mapping[str, Any] | None = None) -> GenHead:
        """Build and strictly load an official GenHead ``G_ema`` (a state dict, or the folder / file of ``avatar
        convert`` output); ``flame_masks`` (``FLAME_masks.pkl`` fields) enables rendering."""
        from avatar.models.genhead.convert import read_official

        if isinstance(source, Mapping):
            state, config = dict(source), config or GenHeadConfig()
        else:
            ckpt = read_official(source)
            state, config = ckpt.state, config or ckpt.config
        buffers = {k[len(DEFORMER_PREFIX):]: v for k, v in state.items() if k.startswith(DEFORMER_PREFIX)}
        model = cls(config, buffers or None, flame_masks if buffers else None)
        model.load_official(state)
        return model.eval()

    @classmethod
    def from_registry(cls, spec: Any, *, local_dir: str | Path | None = None, **kwargs: Any) -> GenHead:
        """The official checkpoint of a registered id (converted once into the cache) with the FLAME masks."""
        from avatar.hub.download import download_model
        from avatar.hub.weights import read_converted_weights

        report = download_model(spec.model_id, local_dir=local_dir, only=[spec.checkpoint, "flame-masks"])
        masks = read_converted_weights("flame-masks", local_dir=local_dir)
        return cls.from_official(report.folders[spec.checkpoint], flame_masks=masks, **kwargs)

    # ------------------------------------------------------------------------------------------------------
    # mapping and synthesis

    def mapping(self, z: Tensor, camera: Tensor, shape: Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> Tensor:
        """Styles ``(B, num_ws, w_dim)`` of latents ``z (B, z_dim)`` conditioned on ``[camera (B, 25), shape]``."""
        c = torch.cat([camera, shape], dim=-1)
        if c.shape[-1] != self.config.c_dim:
            raise InputError(f"the conditioning [camera, shape] has {c.shape[-1]} numbers, expected {self.config.c_dim}")
        if self.config.c_gen_conditioning_zero:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * self.config.c_scale, truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff, update_emas=update_emas)

    def triplanes(self, ws: Tensor, noise_mode: str = "const", update_emas: bool = False) -> Tensor:
        """``(B, 6, C, H, W)`` part + face triplanes of styles ``ws``."""
        planes, _ = self.backbone.synthesis(ws, noise_mode=noise_mode, update_emas=update_emas)
        return _planes(planes, self.config.plane_features)

    def render_masks(self, camera: Tensor, shape: Tensor, expression: Tensor, pose: Tensor, eye_pose: Tensor,
                     neural_rendering_resolution: int | None = None) -> PartMasks:
        """Screen-space eye / mouth / head masks (official ``synthesis``'s first block): rendered at the output
        resolution; eye and mouth resized to the training resolution (64) and the head mask to
        ``neural_rendering_resolution``, as upstream."""
        self._require_flame()
        assert self.part_masks is not None
        nr_train = self.config.neural_rendering_resolution
        return self.part_masks.render_part_masks(shape, expression, pose, eye_pose, camera,
                                                 neural_rendering_resolution or nr_train, self.config.img_resolution,
                                                 part_resolution=nr_train)

    def uv_map(self, camera: Tensor, shape: Tensor, expression: Tensor, pose: Tensor, eye_pose: Tensor,
               ) -> CorrespondenceMap:
        """The FLAME correspondence map at the output resolution (the discriminator's ``uv`` input) and the 70
        projected landmarks (official ``forward``'s ``uv`` / ``landmarks``)."""
        self._require_flame()
        assert self.part_masks is not None
        return self.part_masks(shape, expression, pose, eye_pose, camera, half_size=self.config.img_resolution // 2)

    def part_deformation(self, shape: Tensor, expression: Tensor, pose: Tensor, eye_pose: Tensor
                         ) -> Callable[[Tensor], PartDeformation]:
        """The per-point part deformation for one set of FLAME parameters, ``points (B, M, 3) -> PartDeformation``
        (official ``FlameDeformationModule.forward(part=True)``). The head-pose grids and the FLAME meshes are
        computed once here; upstream recomputes them for the coarse and again for the fine samples (same values).

        When every neck rotation is exactly zero (GenHead's training data, Portrait4D v1's engine) the head-pose
        field is skipped: its target and canonical meshes are then the same mesh and the GNARF field maps every
        point to itself up to float rounding (measured below 1e-6 in ``tests/test_genhead.py``), while its grid
        search is the costliest step of a render on a CPU."""
        deform = self._require_flame()
        with torch.no_grad():
            field = None if not bool(pose[:, :3].any()) else deform.precompute(shape, expression, pose, eye_pose)
            no_neck = torch.cat([torch.zeros_like(pose[..., :3]), pose[..., 3:]], dim=-1)
            meshes = deform.part_meshes(shape, expression, no_neck, eye_pose)

        def fn(points: Tensor) -> PartDeformation:
            return deform.parts_from_meshes(deform.warp(field, points), meshes)

        return fn

    def synthesis(
        self,
        ws: Tensor,
        z_bg: Tensor | None,
        camera: Tensor,
        shape: Tensor,
        expression: Tensor,
        pose: Tensor,
        eye_pose: Tensor,
        neural_rendering_resolution: int | None = None,
        noise_mode: str = "const",
        deterministic: bool | None = None,
        update_emas: bool = False,
    ) -> GenHeadOutput:
        """Render an identity (styles ``ws``; ``z_bg`` the background latent) with a FLAME motion and a camera.

        ``neural_rendering_resolution`` (default 64, the training and official inference setting): above 64 the
        fused compositing is used, as upstream, with the 512^2 masks resized to it (upstream indexes them
        unresized, which only runs at 512); at most 128 (the branch with super-resolution).
        """
        nr_train = self.config.neural_rendering_resolution
        nr = neural_rendering_resolution or nr_train
        if not 0 < nr <= 128:
            raise InputError(f"neural_rendering_resolution must be in 1..128, got {nr}")
        b = ws.shape[0]
        for name, t, width in (("camera", camera, 25), ("shape", shape, self.config.shape_dim),
                               ("expression", expression, self.config.exp_dim), ("pose", pose, 6),
                               ("eye_pose", eye_pose, 6)):
            if t.ndim != 2 or t.shape != (b, width):
                raise InputError(f"{name} must have shape ({b}, {width}), got {tuple(t.shape)}")
        with torch.no_grad():
            masks = self.render_masks(camera, shape, expression, pose, eye_pose, nr)
        planes = self.triplanes(ws, noise_mode=noise_mode, update_emas=update_emas)
        background = None
        if self.background is not None:
            if z_bg is None:
                raise InputError("z_bg is needed for the background generator")
            background = torch.sigmoid(self.background(z_bg, None, noise_mode=noise_mode))
            if background.shape[-1] != nr:
                background = F.interpolate(background, size=(nr, nr), mode="bilinear")
        cam2world, intrinsics = split_label(camera)
        origins, directions = sample_rays(cam2world, intrinsics, nr)
        if nr == nr_train:
            eye, mouth, fuse = masks.eye, masks.mouth, False
        else:  # upstream takes the 512^2 masks here, which only fits at 512; resized to the rendering resolution
            eye, mouth = (F.interpolate(m, size=(nr, nr), mode="bilinear", align_corners=False, antialias=True)
                          for m in (masks.eye_sr, masks.mouth_sr))
            fuse = nr > nr_train
        out = render_parts(self.renderer, planes, self.decoder, self.part_deformation(shape, expression, pose, eye_pose),
                           origins, directions, camera_z(cam2world), eye[:, 0].reshape(b, -1, 1),
                           mouth[:, 0].reshape(b, -1, 1), fuse=fuse, deterministic=deterministic,
                           fused=self._fused(planes))
        features = rays_to_image(out.features, nr, nr).contiguous()
        depth = rays_to_image(out.depth, nr, nr).contiguous()
        t_bg = rays_to_image(out.t_bg, nr, nr).contiguous()
        features = features + t_bg * (background if background is not None else 1.0)
        features = 2 * features - 1
        rgb = features[:, :3]
        image = rgb
        if self.superresolution is not None:
            image = self.superresolution(rgb, features, ws, noise_mode=self.config.superresolution_noise_mode)
        bg = 2 * background - 1 if background is not None else torch.zeros_like(features)
        return GenHeadOutput(image, rgb, features, depth, t_bg, (1 - t_bg) * 2 - 1, bg, masks, out, ws)

    def sample(
        self,
        z: Tensor,
        shape: Tensor,
        expression: Tensor,
        pose: Tensor,
        eye_pose: Tensor,
        camera: Tensor,
        conditioning_camera: Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        z_bg: Tensor | None = None,
        neural_rendering_resolution: int | None = None,
        noise_mode: str = "const",
        deterministic: bool | None = None,
    ) -> GenHeadOutput:
        """Map and render in one call: ``z (B, z_dim)``, FLAME ``shape``/``expression``/``pose``/``eye_pose``, the
        render ``camera (B, 25)``; the mapping is conditioned on ``conditioning_camera`` (default ``camera``) and
        ``shape``; the background latent ``z_bg`` defaults to ``z`` (as upstream)."""
        cond = camera if conditioning_camera is None else conditioning_camera
        ws = self.mapping(z, cond, shape, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, z if z_bg is None else z_bg, camera, shape, expression, pose, eye_pose,
                              neural_rendering_resolution, noise_mode, deterministic)

    def forward(self, z: Tensor, shape: Tensor, expression: Tensor, pose: Tensor, eye_pose: Tensor,  # type: ignore[override]
                camera: Tensor, **kwargs: Any) -> GenHeadOutput:
        return self.sample(z, shape, expression, pose, eye_pose, camera, **kwargs)

    def extra_repr(self) -> str:
        c = self.config
        return f"triplanes={c.triplane_resolution}^2 x 6 x {c.plane_features}, nr={c.neural_rendering_resolution}"


def _masks_from_state(state: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """``FLAME_masks.pkl``-like vertex sets from a saved model's ``part_masks.*`` buffers (our format): the face
    without eyes and the eyeballs (their union is the uv map's vertex set), or ``None`` for an official state."""
    face, eyes = state.get(MASKS_PREFIX + "face_wo_eye_vertex_idx"), state.get(MASKS_PREFIX + "eye_vertex_idx")
    if face is None and eyes is None:
        return None
    if face is None or eyes is None:
        raise StateDictMismatchError("saved part_masks buffers are incomplete (need face_wo_eye_vertex_idx and "
                                     "eye_vertex_idx)")
    return {"face": face, "right_eyeball": eyes, "left_eyeball": eyes[:0]}
