"""GOHA: NVIDIA's three-branch one-shot head avatar (Li et al., NeurIPS 2023; official ``src/models/model_s2.py``).

From one 512x512 EG3D crop of a portrait (background removed, values in [-1, 1]) and its EG3D camera, GOHA builds
a tri-plane as the plain sum of three branches, renders it with EG3D's volume renderer and super-resolves it::

    canonical  template_net(norm(src) * keep)        -> embedding2neutral  (B, 3, 32, 256, 256)
    expression expr_net(norm(pseudo_render(src, driving)))  -> embedding2expr
    appearance render(canonical + expression, source camera, 128) -> depth points + parsing-blended source
               -> id_net (6 channels) -> nearest-point lifting onto the planes -> id_upsampler
    plane = canonical + expression + appearance
    render(plane, target camera, 224)[:3] -> neural_layers (GFPGANv1Clean) -> (B, 3, 512, 512)

``keep = 1 - parsing_mask(src)`` hides brows, eyes (dilated) and lips from the canonical branch; the
pseudo-render is the BFM face of Deep3DFaceRecon with the source's identity, texture and lighting, the driving
frame's expression and the frontal pose of ``cano_exemplar`` (:mod:`avatar.models.goha.pseudo_render`).

Module and buffer names are the official ones (``template_net``, ``embedding2neutral``, ``id_net``,
``id_upsampler``, ``expr_net``, ``embedding2expr``, ``expr_upsampler``, ``decoder``, ``face_parsing_net``,
``neural_layers``; buffers ``cano_pose``, ``cano_exemplar``, ``image_mean``, ``image_std``, ``uv``), so the official
``model_state_dict`` loads strictly after the two key conversions of :mod:`avatar.models.goha.convert` (SegFormer
names of transformers 4.x, the OSG decoder's last layer split in two). ``exp_loss_fn.net_recon.*`` holds the
Deep3D regressor, which the official model builds from Deep3DFaceRecon's own ``epoch_20.pth``, not from GOHA's
checkpoint; the BFM is attached with :meth:`GOHA.set_face_model` (it cannot be downloaded).

Differences from the official code, all on purpose:

* every branch is on (the official gates the expression and appearance branches by training iteration; the
  demos pass the checkpoint's iteration 825000, which turns both on);
* deterministic by default (``config.deterministic``): the official stratified jitter, random importance samples
  and fresh GFPGAN noise make every call different; here the depths are ``linspace`` / ``det=True`` samples and
  the super-resolution uses the checkpoint's stored noise. ``deterministic=False`` (per call, or in the config) is
  the official behaviour;
* batches: the official ``get_sudo`` is only correct for batch 1 (it indexes coefficient rows 0, 1, 2); here each
  source is paired with its own driving frame;
* the source's work is done once (:meth:`GOHA.encode_source`: parsing mask, canonical plane, Deep3D coefficients
  of the source and of the exemplar) and reused for every driving frame; the official recomputes it per frame
  (also the unused neutral render of ``get_canonical_plane`` and the target's parsing mask, which feed only
  training outputs, are skipped);
* the appearance lifting's nearest-point search is chunked (:func:`avatar.models.goha.planes.lift_features`): the
  same indices without the 16k x 16k distance matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from avatar.errors import ConfigError, InputError
from avatar.face.bfm import ParametricFaceModel
from avatar.face.deep3d import Deep3DReconNet
from avatar.modeling import ModelMixin
from avatar.models.goha.configuration import GOHAConfig
from avatar.models.goha.gfpgan import GOHASuperResolution
from avatar.models.goha.parsing import PARSING_MEAN, PARSING_STD, BiSeNet, appearance_blend_mask, parsing_mask
from avatar.models.goha.planes import (
    Embed2Plane,
    IDUpsampler,
    depth_to_points,
    lift_features,
    lifting_grid,
    make_osg_decoder,
    opencv_rays,
    sum_planes,
)
from avatar.models.goha.pseudo_render import ExpressionPseudoRenderer, mix_coefficients
from avatar.models.goha.segformer import SegformerBranch
from avatar.nn.cuda_graphs import GraphCache, tensor_addresses
from avatar.render.camera import split_label
from avatar.render.triplane import ImportanceRenderer, rays_to_image

__all__ = ["CANO_POSE", "GOHA", "GOHAOutput", "GOHASource"]

logger = logging.getLogger(__name__)

CANO_POSE = (
    0.9997, 0.0059, 0.0250, -0.0731, 0.0081, -0.9961, -0.0882, 0.2462, 0.0244, 0.0884, -0.9958, 2.6878,
    0.0, 0.0, 0.0, 1.0, 4.2647, 0.0, 0.5, 0.0, 4.2647, 0.5, 0.0, 0.0, 1.0,
)
"""The official ``cano_pose`` buffer (a frontal EG3D camera; stored in the checkpoint, unused by the forward pass)."""


@dataclass
class GOHASource:
    """The per-source work of GOHA, done once by :meth:`GOHA.encode_source` and reused for every driving frame."""

    image: Tensor
    """``(B, 3, S, S)`` the source crops in [-1, 1]."""
    camera: Tensor
    """``(B, 25)`` their EG3D cameras."""
    keep_mask: Tensor
    """``(B, 1, S, S)`` float, 0 on brows / eyes / lips (official ``src_mask``)."""
    canonical_plane: Tensor
    """``(B, 3, C, P, P)`` the canonical tri-plane."""
    coefficients: Tensor | None
    """``(B, 257)`` Deep3D coefficients of the sources (``None`` when no pseudo-render will be computed)."""
    exemplar_coefficients: Tensor | None
    """``(1, 257)`` Deep3D coefficients of ``cano_exemplar`` (the pseudo-render's pose)."""

    @property
    def batch_size(self) -> int:
        return self.image.shape[0]

    def tensors(self) -> dict[str, Tensor]:
        """The fields that are set, by name (for saving)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GOHASource:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return GOHASource(**{k: None if v is None else v.to(device=device, dtype=dtype) for k, v in values.items()})

    def expand(self, batch_size: int) -> GOHASource:
        """One source (batch 1) as a batch of ``batch_size`` (views, not copies), to drive it with that many frames
        at once; ``exemplar_coefficients`` stays one row."""
        if self.batch_size != 1:
            raise InputError(f"expand() takes a source of batch 1, got {self.batch_size}; index it first")

        def grow(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.expand(batch_size, *t.shape[1:])

        return GOHASource(grow(self.image), grow(self.camera), grow(self.keep_mask), grow(self.canonical_plane),
                          grow(self.coefficients), self.exemplar_coefficients)


@dataclass
class GOHAOutput:
    """What :meth:`GOHA.reenact` returns (official output keys in brackets)."""

    image: Tensor
    """``(B, 3, 512, 512)`` super-resolved image, unclamped [``high_res``]."""
    image_raw: Tensor
    """``(B, 3, R, R)`` the rendered RGB (first 3 feature channels) at ``render_resolution`` [``rgb_low_res``]."""
    depth: Tensor
    """``(B, 1, R, R)`` expected ray depth [``depth_image``]."""
    features: Tensor
    """``(B, C, R, R)`` all rendered feature channels in [-1, 1]."""
    pseudo_render: Tensor
    """``(B, 3, S, S)`` the 3DMM pseudo-render that drove the expression branch, in [-1, 1] [``sudo_tar``]."""
    plane: Tensor
    """``(B, 3, C, P, P)`` the summed tri-plane [``target_plane``]."""
    expression_plane: Tensor
    """``(B, 3, C, P, P)``."""
    appearance_plane: Tensor
    """``(B, 3, C, P, P)`` [``id_planes``]."""

    def __getitem__(self, key: str) -> Tensor:
        return getattr(self, key)


class GOHA(ModelMixin):
    """GOHA's ``Model`` (see the module docstring). Build from a :class:`GOHAConfig` (random weights) or load with
    :meth:`from_pretrained` (registry id ``goha``, a converted official checkpoint, or a saved folder).

    Inputs everywhere: crops ``(B, 3, S, S)`` in [-1, 1] with the background at -1 (GOHA's training data are
    matted), cameras ``(B, 25)`` = EG3D cam2world (OpenCV, flattened 4x4) + normalised intrinsics (3x3).
    """

    config_class: ClassVar[type] = GOHAConfig
    default_model_id: ClassVar[str | None] = "goha"
    config: GOHAConfig

    def __init__(self, config: GOHAConfig | None = None, face_model: ParametricFaceModel | None = None) -> None:
        super().__init__()
        config = config or GOHAConfig()
        self.config = config
        seg = config.segformer
        planes = config.planes
        self.template_net = SegformerBranch(seg.with_in_channels(3))
        self.embedding2neutral = Embed2Plane(planes.feature_channels, planes.triplane_channels, planes.embed_channels)
        self.id_net = SegformerBranch(seg.with_in_channels(6))
        self.id_upsampler = IDUpsampler(planes.feature_channels, planes.plane_channels, planes.upsampler_hidden)
        self.expr_net = SegformerBranch(seg.with_in_channels(3))
        self.embedding2expr = Embed2Plane(planes.feature_channels, planes.triplane_channels, planes.embed_channels)
        self.expr_upsampler = IDUpsampler(planes.expression_upsampler_channels, planes.plane_channels,
                                          planes.upsampler_hidden)  # never called upstream; in the checkpoint
        self.decoder = make_osg_decoder(planes)
        self.renderer = ImportanceRenderer(config.rendering)
        self.face_parsing_net = BiSeNet(config.parsing)
        self.neural_layers = GOHASuperResolution(config.superresolution)
        self.exp_loss_fn = ExpressionPseudoRenderer(Deep3DReconNet(config.deep3d), face_model,
                                                    config.pseudo_render_size)
        s = config.image_size
        self.register_buffer("cano_pose", torch.tensor([CANO_POSE]))
        self.register_buffer("cano_exemplar", torch.zeros(1, 3, s, s))
        self.register_buffer("image_mean", torch.tensor(PARSING_MEAN).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor([PARSING_STD]).view(1, 3, 1, 1))
        self.register_buffer("uv", lifting_grid(planes.lift_resolution))
        self.is_random_init = True
        self.fused_rendering: str | None = None
        self.fast_inference_on = False
        self.fast_lift_chunk: int | None = None  # None: by device (_lift_chunk)
        self.cuda_graphs = False
        self.sr_fused_modconv = True  # False: input-modulated SR convolutions (enable_fast_inference)
        self.sr_frames: int | None = None  # frames per super-resolution call (enable_fast_inference)
        self.fused_lifting = False  # True: the Triton nearest-point lifting (enable_fast_inference)
        self._graphs = GraphCache(max_graphs=2)  # CUDA graphs of reenact()'s per-frame work (enable_fast_inference)

    # ---- fast inference ------------------------------------------------------------------------------------

    def enable_fast_inference(self, fused_rendering: str | None = "ieee", lift_chunk: int | None = None,
                              cuda_graphs: bool = False, sr_fused_modconv: bool = True,
                              fused_lifting: bool = True, sr_frames: int | None = None) -> GOHA:
        """Where no gradient is recorded: volume rendering through the fused Triton kernels
        (:mod:`avatar.render.fused`, ``'ieee'`` float32 or ``'tf32'`` decoder products; ``None``: the PyTorch
        renderer) on CUDA, and ``lift_chunk`` grid cells per nearest-point distance block (default 1024 on CUDA,
        256 elsewhere; the indices do not depend on it, see :func:`~avatar.models.goha.planes.nearest_point_indices`).
        ``cuda_graphs``: on CUDA, :meth:`reenact` (deterministic) replays its per-frame work (expression branch,
        appearance lifting, rendering, super-resolution) from a CUDA graph captured per batch size, dtype and
        weights (:mod:`avatar.nn.cuda_graphs`; a capture that fails falls back to eager with one warning). Off by
        default: it captures on an H100 (and its GPU test passes) but gained little there (fp32, batch 1: 54.0 ->
        52.9 ms; batch 8: 48.0 -> 46.9 ms a frame), so the frame is bound by GPU work, not launches, and the
        graph pool costs memory. ``sr_fused_modconv=False``:
        the super-resolution's modulated convolutions take the modulation on their inputs (one shared-weight
        convolution over the batch instead of a grouped one; equal up to rounding, see
        :meth:`~avatar.models.goha.gfpgan.ModulatedConv2d.forward`). ``fused_lifting``: where Triton runs
        (CUDA), the nearest-point lifting by a Triton kernel that stores no distance matrix
        (:func:`~avatar.models.goha.planes.fused_nearest_point_indices`; the same points except at float32
        near-ties; ``lift_chunk`` is then unused). On one H100 it took the fp32 batch-1 frame from 54.0 to 47.6 ms
        with the same SR difference to the official output (docs/goha/README.md, run 3). ``sr_frames``: in
        deterministic calls, the super-resolution runs over at most this many frames at a time (``None``: the whole
        batch), so that its activations (about 350 MiB a 512x512 frame in float32) stop growing with the batch while
        the smaller stages keep the batch; the frames are those of one call up to the convolution algorithms'
        rounding. The fast path also folds each SegFormer decode head's ``linear_fuse`` into its stage projections
        (no concatenation; :meth:`~avatar.models.goha.segformer.SegformerHead.forward`) and runs ``IDUpsampler``'s
        1x1 skip convolutions before their 2x resize (:meth:`~avatar.models.goha.planes.IDUpsampler.forward`; that
        stage's peak at the released sizes drops from 88 to 64 MiB a frame, counted by
        :mod:`avatar.bench.live_memory`); both equal the reference up to float rounding.
        Autocast (bf16) is the caller's, as in :class:`~avatar.pipelines.goha.GOHAPipeline`. Returns ``self``."""
        if fused_rendering not in (None, "ieee", "tf32"):
            raise ConfigError(f"fused_rendering must be 'ieee', 'tf32' or None, got {fused_rendering!r}")
        if lift_chunk is not None and lift_chunk < 2:
            raise ConfigError(f"lift_chunk must be at least 2 grid cells, got {lift_chunk}")
        if sr_frames is not None and (isinstance(sr_frames, bool) or not isinstance(sr_frames, int) or sr_frames < 1):
            raise ConfigError(f"sr_frames must be a positive number of frames or None, got {sr_frames!r}")
        self.fast_inference_on = True
        self.fused_rendering = fused_rendering
        self.fast_lift_chunk = lift_chunk
        self.cuda_graphs = bool(cuda_graphs)
        self.sr_fused_modconv = bool(sr_fused_modconv)
        self.fused_lifting = bool(fused_lifting)
        self.sr_frames = sr_frames
        self._graphs.clear()
        return self

    def disable_fast_inference(self) -> GOHA:
        """The reference path (the default). Returns ``self``."""
        self.fast_inference_on = False
        self.fused_rendering = None
        self.fast_lift_chunk = None
        self.cuda_graphs = False
        self.sr_fused_modconv = True
        self.sr_frames = None
        self.fused_lifting = False
        self._graphs.clear()
        return self

    def _fast_forms(self) -> bool:
        """Whether the fast path's reordered operations apply (fast inference on, no gradient recorded): the
        SegFormer decode heads without their concatenation and ``IDUpsampler``'s skip before its resize."""
        return self.fast_inference_on and not torch.is_grad_enabled()

    def _lift_chunk(self, device: torch.device) -> int:
        if not self.fast_inference_on:
            return 256
        if self.fast_lift_chunk is not None:
            return self.fast_lift_chunk
        return 1024 if device.type == "cuda" else 256

    def _lift_fused(self, device: torch.device) -> bool:
        from avatar.render.fused import fused_available

        return self.fast_inference_on and self.fused_lifting and not torch.is_grad_enabled() and fused_available(device)

    def _fused(self, plane: Tensor) -> str | None:
        from avatar.render.fused import fused_available

        if self.fused_rendering is None or torch.is_grad_enabled() or not fused_available(plane.device):
            return None
        return self.fused_rendering

    # ---- assets ------------------------------------------------------------------------------------------

    def set_face_model(self, face_model: ParametricFaceModel) -> None:
        """Attach the BFM (``BFM_model_front.mat``) the expression pseudo-render needs."""
        self.exp_loss_fn.set_face_model(face_model)

    @property
    def has_face_model(self) -> bool:
        return self.exp_loss_fn.has_face_model

    def load_official(self, state: Mapping[str, Tensor], deep3d_state: Mapping[str, Tensor] | None = None) -> Any:
        """Load an official checkpoint (flattened ``torch.load`` dict or its ``model_state_dict``) strictly, and the
        Deep3D regressor from ``deep3d_state`` (``epoch_20.pth``'s ``net_recon.*``; required unless ``state``
        already holds ``exp_loss_fn.net_recon.*``). Returns the checkpoint's extra entries
        (:class:`avatar.models.goha.convert.OfficialGOHAState`: iteration, discriminator)."""
        from avatar.models.goha.convert import official_to_model_state

        converted = official_to_model_state(state)
        model_state = dict(converted.model_state)
        if deep3d_state is not None:
            net = {k: v for k, v in deep3d_state.items() if k.startswith("net_recon.")} or dict(deep3d_state)
            for key, value in net.items():
                leaf = key[len("net_recon."):] if key.startswith("net_recon.") else key
                model_state[f"exp_loss_fn.net_recon.{leaf}"] = value
        self.load_state_dict_strict(model_state, what="GOHA checkpoint (+ Deep3D net_recon)")
        self.is_random_init = False
        return converted

    @classmethod
    def from_official(cls, source: str | Path | Mapping[str, Tensor], *, config: Any = None,
                      deep3d: str | Path | Mapping[str, Tensor] | None = None,
                      face_model: ParametricFaceModel | str | Path | None = None) -> GOHA:
        """Build from the official checkpoint (``checkpoint825000.ckpt``, its converted folder, or a state dict).

        Args:
            deep3d: Deep3DFaceRecon's ``epoch_20.pth`` (file, converted folder or state); ``None`` takes the
                registry's ``deep3d-recon`` from the asset cache.
            face_model: a :class:`ParametricFaceModel` or a folder holding ``BFM_model_front.mat``; ``None`` takes
                the registry's ``bfm-front`` from the cache when it is there (else attach it later).
        """
        from avatar.hub.weights import read_converted_weights, read_weights

        state = source if isinstance(source, Mapping) else read_weights(source)
        holds_deep3d = any(k.startswith(("exp_loss_fn.net_recon.", "model_state_dict.exp_loss_fn.net_recon."))
                           for k in state)
        if deep3d is None:
            deep3d_state = None if holds_deep3d else read_converted_weights("deep3d-recon")
        else:
            deep3d_state = deep3d if isinstance(deep3d, Mapping) else read_weights(deep3d)
        model = cls(config if config is not None else GOHAConfig())
        model.load_official(state, deep3d_state)
        model._attach_face_model(face_model)
        return model.eval()

    @classmethod
    def from_registry(cls, spec: Any, *, local_dir: str | Path | None = None, **kwargs: Any) -> GOHA:
        from avatar.hub.download import ensure_file
        from avatar.hub.weights import read_converted_weights

        state = read_converted_weights(spec.checkpoint, local_dir)
        deep3d = read_converted_weights("deep3d-recon", local_dir)
        return cls.from_official(state, deep3d=deep3d, face_model=ensure_file("bfm-front", local_dir=local_dir),
                                 **kwargs)

    def _attach_face_model(self, face_model: ParametricFaceModel | str | Path | None) -> None:
        if isinstance(face_model, ParametricFaceModel):
            self.set_face_model(face_model)
        elif face_model is not None:
            self.set_face_model(ParametricFaceModel.from_folder(face_model))
        else:
            from avatar.hub.download import converted_dir, is_converted
            from avatar.hub.registry import FILES

            if is_converted(FILES["bfm-front"]):
                self.set_face_model(ParametricFaceModel.from_folder(converted_dir(FILES["bfm-front"])))

    def _after_load_saved(self, folder: Path) -> None:
        self._attach_face_model(None)

    # ---- the branches ------------------------------------------------------------------------------------

    def _deterministic(self, deterministic: bool | None) -> bool:
        return self.config.deterministic if deterministic is None else deterministic

    def normalize(self, img: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ImageNet-normalised (the ``image_mean`` / ``image_std`` buffers)."""
        return ((img + 1) / 2.0 - self.image_mean) / self.image_std

    def parsing_mask(self, img: Tensor) -> Tensor:
        """``(B, 3, S, S)`` -> ``(B, 1, S, S)`` long, 1 on brows / eyes (dilated) / lips (``get_parsing_mask``)."""
        return parsing_mask(self.face_parsing_net, img, self.normalize)

    def _check_inputs(self, image: Tensor, camera: Tensor, what: str) -> None:
        s = self.config.image_size
        if image.ndim != 4 or image.shape[1] != 3 or image.shape[-2:] != (s, s):
            raise InputError(f"{what} must be (B, 3, {s}, {s}) crops in [-1, 1], got {tuple(image.shape)}; "
                             "make them with avatar.models.goha.preprocess (GOHA's EG3D crop)")
        if camera.ndim != 2 or camera.shape[-1] < 25 or camera.shape[0] != image.shape[0]:
            raise InputError(f"{what} cameras must be (B, 25) EG3D labels for B = {image.shape[0]}, "
                             f"got {tuple(camera.shape)}")

    def encode_source(self, image: Tensor, camera: Tensor, *, coefficients: Tensor | None = None,
                      with_coefficients: bool = True) -> GOHASource:
        """The per-source work: parsing mask, canonical plane and (for the pseudo-render) Deep3D coefficients.

        Args:
            image: ``(B, 3, S, S)`` crops in [-1, 1].
            camera: ``(B, 25)`` their cameras.
            coefficients: ``(B, 257)`` Deep3D coefficients to use instead of regressing them.
            with_coefficients: regress the source and exemplar coefficients (off when every driving frame will
                come with its own pseudo-render).
        """
        self._check_inputs(image, camera, "source images")
        keep = 1 - self.parsing_mask(image)
        features = self.template_net(self.normalize(image) * keep, fold_head=self._fast_forms())
        canonical = self.embedding2neutral(features).contiguous()
        exemplar = None
        if with_coefficients:
            if coefficients is None:
                coefficients = self.exp_loss_fn.regress(image)
            exemplar = self.exp_loss_fn.regress(self.cano_exemplar)
        return GOHASource(image, camera[:, :25], keep.float(), canonical, coefficients, exemplar)

    def pseudo_render(self, source: GOHASource, driving: Tensor | None = None, *,
                      driving_coefficients: Tensor | None = None, exp_transfer: bool = True) -> Tensor:
        """``(B, 3, S, S)`` in [-1, 1]: the BFM face with the source's identity, the driving expression and the
        exemplar's pose (``get_sudo`` + the resize of ``get_expr_plane``). Give ``driving`` crops or their
        ``driving_coefficients`` ``(B, 257)``; ``exp_transfer=False`` keeps the source's own expression."""
        if source.coefficients is None or source.exemplar_coefficients is None:
            raise InputError("this source was encoded with with_coefficients=False: pass pseudo_render= to reenact, "
                             "or encode the source again")
        if driving_coefficients is None:
            if driving is None:
                driving_coefficients = source.coefficients
            else:
                driving_coefficients = self.exp_loss_fn.regress(driving)
        mixed = mix_coefficients(source.coefficients, source.exemplar_coefficients, driving_coefficients, exp_transfer)
        sudo = self.exp_loss_fn.render(mixed)
        return F.interpolate(sudo, size=source.image.shape[-2:], mode="bilinear", align_corners=False)

    def expression_plane(self, pseudo_render: Tensor) -> Tensor:
        """``(B, 3, S, S)`` pseudo-render in [-1, 1] -> the expression tri-plane ``(B, 3, C, P, P)``."""
        return self.embedding2expr(self.expr_net(self.normalize(pseudo_render), fold_head=self._fast_forms()))

    def render(self, plane: Tensor, camera: Tensor, resolution: int | None = None, *,
               deterministic: bool | None = None) -> tuple[Tensor, Tensor]:
        """Volume-render a tri-plane (official ``render_plane``).

        Returns features ``(B, C, R, R)`` in [-1, 1] (RGB = the first 3) and depth ``(B, 1, R, R)``;
        ``R = resolution or config.render_resolution``.
        """
        r = resolution or self.config.render_resolution
        cam2world, intrinsics = split_label(camera)
        origins, directions = opencv_rays(cam2world, intrinsics, r)
        out = self.renderer(plane, self.decoder, origins, directions,
                            deterministic=self._deterministic(deterministic), fused=self._fused(plane),
                            per_sample=False)  # only the features and the depth are used
        return rays_to_image(out.features, r, r) * 2 - 1, rays_to_image(out.depth, r, r)

    def appearance_plane(self, source: GOHASource, base_plane: Tensor, *,
                         deterministic: bool | None = None) -> Tensor:
        """The appearance tri-plane lifted from the source (official ``get_apperance_plane``).

        ``base_plane`` (canonical + expression) is rendered at the source camera at ``cano_render_resolution``;
        its depth gives one 3D point per feature pixel, its RGB the parsing-based blend of the source with the
        render, which ``id_net`` encodes; the features are splatted onto the planes by nearest point.
        """
        r = self.config.cano_render_resolution
        features, depth = self.render(base_plane, source.camera, r, deterministic=deterministic)
        cam2world, intrinsics = split_label(source.camera)
        points = depth_to_points(cam2world, intrinsics, depth)
        id_features = self.id_net(self.appearance_pixels(source, features), fold_head=self._fast_forms())
        lifted = lift_features(points, id_features, self.uv, self._lift_chunk(points.device),
                               fused=self._lift_fused(points.device))
        return self.id_upsampler(lifted, skip_first=self._fast_forms())

    def appearance_pixels(self, source: GOHASource, features: Tensor) -> Tensor:
        """``id_net``'s 6-channel input ``(B, 6, S, S)``: the render at the source camera (``features`` ``(B, C, r,
        r)``, RGB first, resized to ``S``) parsed by BiSeNet, the source blended with it where either is not
        brows / eyes / lips, then the render itself (both ImageNet-normalised)."""
        cano_render = F.interpolate(features[:, :3], size=source.image.shape[-2:], mode="bilinear",
                                    align_corners=False)
        blend = appearance_blend_mask(self.parsing_mask(cano_render), source.keep_mask)
        cano = self.normalize(cano_render)
        return torch.cat((self.normalize(source.image) * blend + cano * (1 - blend), cano), dim=1)

    def reenact(self, source: GOHASource, camera: Tensor, driving: Tensor | None = None, *,
                pseudo_render: Tensor | None = None, driving_coefficients: Tensor | None = None,
                exp_transfer: bool = True, deterministic: bool | None = None) -> GOHAOutput:
        """One batch of frames: the source driven by ``driving`` (crops ``(B, 3, S, S)``, their Deep3D
        ``driving_coefficients``, or a ready ``pseudo_render``), seen from ``camera`` ``(B, 25)``.

        Without any driving input the source keeps its own expression (a novel view of the source).
        ``deterministic=None`` follows ``config.deterministic``.
        """
        b = source.batch_size
        if camera.ndim != 2 or camera.shape[0] != b or camera.shape[-1] < 25:
            raise InputError(f"cameras must be (B, 25) EG3D labels for B = {b}, got {tuple(camera.shape)}")
        if pseudo_render is None:
            if driving is not None:
                self._check_inputs(driving, camera, "driving frames")
            pseudo_render = self.pseudo_render(source, driving, driving_coefficients=driving_coefficients,
                                               exp_transfer=exp_transfer)
        deterministic = self._deterministic(deterministic)
        if (self.cuda_graphs and deterministic and camera.device.type == "cuda" and not torch.is_grad_enabled()
                and not torch.cuda.is_current_stream_capturing()):
            return self._reenact_graphed(source, camera[:, :25], pseudo_render)
        return self._reenact_frames(source, camera[:, :25], pseudo_render, deterministic)

    def _reenact_frames(self, source: GOHASource, camera: Tensor, pseudo_render: Tensor,
                        deterministic: bool) -> GOHAOutput:
        """The per-frame work of :meth:`reenact` once the pseudo-render is known."""
        expression = self.expression_plane(pseudo_render)
        base = sum_planes(source.canonical_plane, expression)
        appearance = self.appearance_plane(source, base, deterministic=deterministic)
        del base  # not needed by the final render: one tri-plane less alive during it
        plane = sum_planes(source.canonical_plane, expression, appearance)
        features, depth = self.render(plane, camera, deterministic=deterministic)
        rgb = features[:, :3]
        image = self._super_resolve(rgb, deterministic)
        return GOHAOutput(image, rgb, depth, features, pseudo_render, plane, expression, appearance)

    def _super_resolve(self, rgb: Tensor, deterministic: bool, frames: int | None = None) -> Tensor:
        """``neural_layers`` over ``rgb`` (B, 3, r, r), in groups of ``frames`` (default ``sr_frames``) frames when
        deterministic (a random draw stays one call, as the official's)."""
        noise_mode = "const" if deterministic else "random"
        frames = frames or self.sr_frames
        n = frames if deterministic and frames else rgb.shape[0]
        if n >= rgb.shape[0]:
            return self.neural_layers(rgb, noise_mode=noise_mode, fused_modconv=self.sr_fused_modconv)
        return torch.cat([self.neural_layers(part, noise_mode=noise_mode, fused_modconv=self.sr_fused_modconv)
                          for part in rgb.split(n)])

    def _reenact_graphed(self, source: GOHASource, camera: Tensor, pseudo_render: Tensor) -> GOHAOutput:
        """:meth:`_reenact_frames` (deterministic) replayed from a CUDA graph captured for these shapes, strides,
        dtypes, autocast state, options and weights. The source's tensors are graph inputs (copied in per call)."""
        inputs = {"camera": camera, "pseudo_render": pseudo_render, "source.image": source.image,
                  "source.camera": source.camera, "source.keep_mask": source.keep_mask,
                  "source.canonical_plane": source.canonical_plane}

        def per_frame(**x: Tensor) -> dict[str, Tensor]:
            src = GOHASource(x["source.image"], x["source.camera"], x["source.keep_mask"],
                             x["source.canonical_plane"], None, None)
            out = self._reenact_frames(src, x["camera"], x["pseudo_render"], True)
            return {f.name: getattr(out, f.name) for f in fields(out)}

        device = camera.device
        autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        key = (tuple((k, tuple(v.shape), v.stride(), v.dtype, v.device) for k, v in inputs.items()), autocast,
               self.fused_rendering, self._lift_chunk(device), self.sr_fused_modconv, self.sr_frames,
               self._lift_fused(device),
               torch.backends.cuda.matmul.allow_tf32,
               torch.backends.cudnn.allow_tf32, tensor_addresses(self))
        out = self._graphs.replay_or_none(key, per_frame, inputs, "GOHA.reenact")
        return GOHAOutput(**out) if out is not None else self._reenact_frames(source, camera, pseudo_render, True)

    def forward(self, img_src: Tensor, pose_src: Tensor, img_target: Tensor, pose_target: Tensor, *,
                exp_transfer: bool = True, deterministic: bool | None = None) -> GOHAOutput:
        """The official ``forward(data, mode='full_rec_tar')``: ``img_src`` driven by ``img_target``'s expression,
        rendered at ``pose_target``."""
        source = self.encode_source(img_src, pose_src)
        return self.reenact(source, pose_target, img_target, exp_transfer=exp_transfer, deterministic=deterministic)

    def _init_tiny(self) -> None:
        # a visible density: shift the decoder's sigma bias so that tiny renders are not empty
        with torch.no_grad():
            self.decoder.out_sigma.bias.fill_(2.0)
            self.cano_exemplar.uniform_(-1, 1, generator=torch.Generator().manual_seed(0))

    def extra_repr(self) -> str:
        c = self.config
        return (f"image_size={c.image_size}, plane={c.plane_resolution}, render={c.render_resolution}, "
                f"deterministic={c.deterministic}")

