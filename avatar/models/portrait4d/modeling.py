"""Portrait4D / Portrait4D-v2 reconstructor Psi (official ``TriPlaneReconstructorNeutralize``).

One aligned 512x512 source photo and its PD-FGC motion vector give an animatable triplane avatar; a
driving motion vector and a camera render it. The module and buffer names equal the official ``G_ema``
names, so converted official checkpoints load strictly (see :mod:`avatar.models.portrait4d.convert`).
Building, loading, saving and publishing come from :class:`avatar.modeling.ModelMixin`.

Work split for fast inference (the official ``synthesis()`` recomputes everything for every frame):

* :meth:`Portrait4D.encode` - source-only work, once per avatar: E_global, E_detail, the 4 neutral
  cross-attention blocks, the background U-Net (and, for the static model, the whole triplane);
* :meth:`Portrait4D.render` - per driving frame: the 4 motion blocks, the triplane decoder, volume
  rendering (with the optional FLAME head-pose deformation) and super-resolution.

:meth:`Portrait4D.reference_forward` is the official order of operations, kept as the reference that the
cached path is tested against.

Conventions: images are ``(B, 3, H, W)`` float in ``[-1, 1]``; cameras are 25-number labels
(cam2world 4x4 flattened + normalised intrinsics 3x3, see :mod:`avatar.render.camera`); motions are
PD-FGC vectors ``(B, 548)``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.errors import InputError
from avatar.flame.deformation import FlameHeadPoseDeformer, HeadPoseField
from avatar.modeling import ModelMixin
from avatar.models.portrait4d.configuration import Portrait4DConfig
from avatar.models.portrait4d.convert import official_to_model_state, read_official
from avatar.models.portrait4d.encoders import Portrait4DEncoders
from avatar.nn.cuda_graphs import GraphCache, tensor_addresses
from avatar.nn.stylegan2 import constant_ws
from avatar.render.camera import camera_z, split_label
from avatar.render.fused import fused_available
from avatar.render.rays import sample_rays
from avatar.render.triplane import ImportanceRenderer, TriplaneNeRFDecoder, rays_to_image

__all__ = ["AvatarState", "FastInference", "HeadPose", "Portrait4D", "HeadPoseDeformerSlot"]

logger = logging.getLogger(__name__)

FLAME_SHAPE_DIM = 300
FLAME_EXP_DIM = 100


# ----------------------------------------------------------------------------------------------------------
# Inputs and cached state


@dataclass
class HeadPose:
    """FLAME parameters that drive the head-pose deformation field (only the neck rotation moves the head).

    Attributes:
        pose: ``(B, 6)`` neck (global) + jaw axis-angle, as in the 437-float label ``[425:431]``.
        expression: ``(B, 100)`` driving expression (``[325:425]``); zeros when ``None``.
        eye_pose: ``(B, 6)`` driving eye pose (``[431:437]``); zeros when ``None``.
        shape: ``(B, 300)`` identity; ``None`` uses the source shape stored in the avatar state (upstream
            passes the *source* shape), or zeros.
    """

    pose: Tensor
    expression: Tensor | None = None
    eye_pose: Tensor | None = None
    shape: Tensor | None = None

    @classmethod
    def from_label(cls, label: Tensor, use_shape: bool = False) -> HeadPose:
        """From ``(B, 437)`` FLAME labels (camera 25, shape 300, expression 100, pose 6, eye pose 6)."""
        if label.ndim != 2 or label.shape[1] != 437:
            raise InputError(f"expected FLAME labels of shape (B, 437), got {tuple(label.shape)}")
        return cls(
            pose=label[:, 425:431],
            expression=label[:, 325:425],
            eye_pose=label[:, 431:437],
            shape=label[:, 25:325] if use_shape else None,
        )

    def index(self, i: slice) -> HeadPose:
        return HeadPose(*(None if v is None else v[i] for v in (self.pose, self.expression, self.eye_pose,
                                                                self.shape)))


@dataclass
class AvatarState:
    """Source-only encoding of one or more avatars (the result of :meth:`Portrait4D.encode`).

    Attributes:
        features_detail: ``(B, 96, 256, 256)`` E_detail output.
        neutral_tokens: ``(B, 1024, 1024)`` tokens after the neutral (canonicalisation) blocks.
        token_hw: ``(32, 32)`` token grid of ``neutral_tokens``.
        background: ``(B, 32, 512, 512)`` ``sigmoid`` of the background U-Net (``None`` without background).
        flame_shape: ``(B, 300)`` source FLAME identity for the deformation field, or ``None``.
        planes: ``(B, 3, 32, 256, 256)`` triplanes when they do not depend on the driving frame (static
            model), else ``None``.
    """

    features_detail: Tensor
    neutral_tokens: Tensor
    token_hw: tuple[int, int]
    background: Tensor | None = None
    flame_shape: Tensor | None = None
    planes: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.neutral_tokens.shape[0]

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> AvatarState:
        def move(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() and dtype is not None else None)

        return AvatarState(move(self.features_detail), move(self.neutral_tokens), self.token_hw,  # type: ignore[arg-type]
                           move(self.background), move(self.flame_shape), move(self.planes))

    def expand(self, batch_size: int) -> AvatarState:
        """Broadcast a batch-1 state to ``batch_size`` driving frames (no copy)."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise InputError(f"the avatar state holds {self.batch_size} avatars but {batch_size} driving frames "
                             "were given; use one avatar, or as many driving frames as avatars")

        def ex(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.expand(batch_size, *t.shape[1:])

        return AvatarState(ex(self.features_detail), ex(self.neutral_tokens), self.token_hw,  # type: ignore[arg-type]
                           ex(self.background), ex(self.flame_shape), ex(self.planes))

    def save(self, path: str | Path) -> None:
        """Write the state as safetensors (token grid in the metadata)."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().cpu() for k, v in self.tensors().items()}
        save_file(tensors, str(path), metadata={"token_hw": f"{self.token_hw[0]},{self.token_hw[1]}"})

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> AvatarState:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        if "token_hw" not in meta or "neutral_tokens" not in tensors:
            raise InputError(f"{path} is not a saved Portrait4D avatar state")
        h, w = (int(v) for v in meta["token_hw"].split(","))
        return cls(token_hw=(h, w), **tensors)


class HeadPoseDeformerSlot(nn.Module):
    """Holds the official ``deformer.flame_deform`` buffers (the upstream ``DeformationModuleOnlyHead``).

    Empty until a checkpoint with FLAME buffers is loaded (or buffers are given); rendering with a
    ``head_pose`` then needs it.
    """

    def __init__(self, flame_deform: FlameHeadPoseDeformer | None = None) -> None:
        super().__init__()
        self.flame_deform = flame_deform

    @property
    def available(self) -> bool:
        return self.flame_deform is not None


@dataclass(frozen=True)
class FastInference:
    """How :meth:`Portrait4D.render` runs (set by :meth:`Portrait4D.enable_fast_inference`); the default is the
    reference: float32, upstream's fused modulated convolutions.

    Attributes:
        dtype: ``torch.autocast`` dtype of the encoders and the triplane decoder (``None``: float32).
        sr_fused_modconv: the super-resolution's modulated convolutions as one grouped convolution (``True``),
            as a batched convolution with the styles on the activations (``False``), or upstream's choice.
        fused_rendering: volume rendering with the Triton kernels of :mod:`avatar.render.fused` where they run
            (CUDA): ``'ieee'`` (float32 decoder products), ``'tf32'``, or ``None`` (the PyTorch renderer).
        cuda_graphs: on CUDA, :meth:`Portrait4D.render` (deterministic) replays its per-frame work from a CUDA
            graph captured per batch size and avatar shape (:mod:`avatar.nn.cuda_graphs`).
        sr_shared_styles: the super-resolution's styles (the constant ``w_avg``) given once, not once per frame:
            each modulated weight is computed once and the batch goes through plain convolutions.
    """

    dtype: torch.dtype | None = None
    sr_fused_modconv: bool | None = None
    fused_rendering: str | None = None
    cuda_graphs: bool = False
    sr_shared_styles: bool = False


REFERENCE = FastInference()


# ----------------------------------------------------------------------------------------------------------
# The model


class Portrait4D(ModelMixin, Portrait4DEncoders):
    """The Portrait4D reconstructor Psi: source photo + motions + camera -> 512x512 portrait.

    Build with a :class:`Portrait4DConfig` (random init, nothing downloaded) or load with
    :meth:`from_pretrained` (``portrait4d-v2``, ``portrait4d-v1``, ``portrait4d-static``, one of our folders,
    a folder of ``avatar convert`` output, or a Hub repo). Attribute names follow the official module, so
    ``state_dict()`` keys are the official ``G_ema`` keys.
    """

    config_class: ClassVar[type] = Portrait4DConfig
    default_model_id: ClassVar[str | None] = "portrait4d-v2"

    def __init__(self, config: Portrait4DConfig | None = None,
                 deformer_buffers: Mapping[str, Any] | None = None) -> None:
        config = config or Portrait4DConfig()
        super().__init__(config.encoders, has_background=config.has_background)
        self.config = config
        self.renderer = ImportanceRenderer(config.rendering)
        self.superresolution = config.superresolution.build() if config.has_superresolution else None
        self.decoder = TriplaneNeRFDecoder(config.encoders.plane_channels, config.feature_channels,
                                           lr_multiplier=config.decoder_lr_mul)
        deform = None
        if deformer_buffers is not None:
            deform = FlameHeadPoseDeformer(deformer_buffers, box_warp=config.deformer_box_warp)
        self.deformer = HeadPoseDeformerSlot(deform)
        self.register_buffer("w_avg", torch.zeros([config.w_dim]))
        self.fast = REFERENCE
        # torch.compiled per-frame steps ("planes", "decoder", "superresolution") set by compile_fast_path; a
        # plain dict, so compiled modules are not registered as submodules and no method is patched
        self.compiled: dict[str, Callable[..., Any]] = {}
        self._graphs = GraphCache(max_graphs=2)  # CUDA graphs of render() (FastInference.cuda_graphs)
        self.is_random_init = True

    def _init_tiny(self) -> None:
        """Non-zero density, and cross-attention strong enough for the motion to show (tiny random models)."""
        with torch.no_grad():
            self.decoder.out_sigma.bias.fill_(2.0)
            self.decoder.out_sigma.weight.normal_(0.0, 0.5)
            self.w_avg.normal_()
            for name, p in self.encoder_canonical.named_parameters():
                if "attn2" in name or "proj_y" in name:
                    p.normal_(0.0, 0.3)

    # ------------------------------------------------------------------------------------------------------
    # loading and saving

    def set_deformer_buffers(self, buffers: Mapping[str, Any]) -> None:
        """(Re)build the FLAME head-pose deformer from its buffers (names without ``deformer.flame_deform.``),
        unless the current deformer already has exactly these names and shapes."""
        current = self.deformer.flame_deform
        if current is not None:
            own = current.state_dict()
            if set(own) == set(buffers) and all(tuple(own[k].shape) == tuple(buffers[k].shape) for k in own):
                return
        deform = FlameHeadPoseDeformer(buffers, box_warp=self.config.deformer_box_warp)
        self.deformer.flame_deform = deform.to(self.w_avg.device)

    def _prepare_load(self, state: Mapping[str, Tensor]) -> None:
        """FLAME deformer buffers (``deformer.flame_deform.*``) in ``state`` first (re)build the deformer with
        their shapes, so that the strict load then matches every key."""
        prefix = "deformer.flame_deform."
        buffers = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if buffers:
            self.set_deformer_buffers(buffers)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Load official-named weights. FLAME deformer buffers (``deformer.flame_deform.*``), when present,
        (re)build the deformer with their shapes first; with ``strict`` every other key must match exactly."""
        self._prepare_load(state_dict)
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.is_random_init = False
        return result

    def load_official(self, state: Mapping[str, Tensor]) -> None:
        """Strictly load an official ``G_ema`` state (names checked by
        :func:`~avatar.models.portrait4d.convert.official_to_model_state`)."""
        self.load_state_dict_strict(official_to_model_state(state))

    @classmethod
    def from_official(cls, source: str | Path | Mapping[str, Tensor], *, config: Portrait4DConfig | None = None,
                      static: bool | None = None) -> Portrait4D:
        """Build and strictly load a converted official checkpoint (in eval mode).

        Args:
            source: the folder of ``avatar convert`` output, its ``.safetensors`` file, or an official state dict
                (then ``config`` or the default config is used).
            config: use this config instead of the one derived from the checkpoint's ``init_kwargs``.
            static: force the static mode (motion scale 0); ``None`` detects it from the metadata.
        """
        if isinstance(source, Mapping):
            model = cls(config or Portrait4DConfig())
            model.load_official(source)
            return model.eval()
        ckpt = read_official(source, static=static, config=config)
        model = cls(ckpt.config)
        model.load_state_dict_strict(ckpt.state, what=str(ckpt.weights))
        logger.info("loaded %s (static=%s)", ckpt.weights.name, ckpt.static)
        return model.eval()

    @classmethod
    def from_registry(cls, spec: Any, *, local_dir: str | Path | None = None, **kwargs: Any) -> Portrait4D:
        """The official checkpoint of a registered id, converted once into the cache (``avatar download``)."""
        from avatar.hub.download import download_model

        report = download_model(spec.model_id, local_dir=local_dir, only=[spec.checkpoint])
        static = bool(spec.option_dict.get("static", False))
        return cls.from_official(report.folders[spec.checkpoint], static=static, **kwargs)

    # ------------------------------------------------------------------------------------------------------
    # fast-path switches

    def enable_fast_inference(self, dtype: torch.dtype | None = torch.bfloat16, sdpa: bool = True,
                              channels_last: bool = True, sr_fused_modconv: bool | None = None,
                              fused_rendering: str | None = "ieee", cuda_graphs: bool = True) -> Portrait4D:
        """Switch to the fast inference path (same outputs within bf16 tolerance).

        Args:
            dtype: ``torch.autocast`` dtype for the encoders and the triplane decoder (``None``: float32).
                Rendering and the super-resolution keep their official precision.
            sdpa: PyTorch's fused attention kernels instead of the explicit softmax.
            channels_last: NHWC weights for the convolutions (faster cuDNN kernels in half precision).
            sr_fused_modconv: the super-resolution's modulated convolutions as one grouped convolution
                (``True``, upstream's inference choice) or as a plain batched convolution with the styles
                applied to the activations (``False``, faster for several frames); ``None`` keeps upstream's.
            fused_rendering: ``'ieee'`` (default) or ``'tf32'``: volume rendering with the fused Triton kernels
                (:mod:`avatar.render.fused`) on CUDA devices (elsewhere the PyTorch renderer runs); ``None``: always
                the PyTorch renderer.
            cuda_graphs: on CUDA, replay :meth:`render`'s per-frame work from CUDA graphs (captured on the first
                call of each batch size; at most two are kept, each with its own memory pool): launch overhead
                goes, which halves the time of a single frame. Inputs and outputs are copied, so results are
                never overwritten.

        The super-resolution then also takes its constant styles once (``FastInference.sr_shared_styles``).
        """
        if fused_rendering not in (None, "ieee", "tf32"):
            raise InputError(f"fused_rendering must be 'ieee', 'tf32' or None, got {fused_rendering!r}")
        from avatar.nn.attention import set_sdpa

        set_sdpa(self, sdpa)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.weight.ndim == 4:
                m.weight.data = m.weight.data.contiguous(memory_format=fmt)
        self._graphs.clear()
        self.fast = FastInference(dtype=dtype, sr_fused_modconv=sr_fused_modconv, fused_rendering=fused_rendering,
                                  cuda_graphs=cuda_graphs, sr_shared_styles=True)
        return self

    def compile_fast_path(self, mode: str | None = "max-autotune-no-cudagraphs") -> Portrait4D:
        """``torch.compile`` the per-frame networks (motion blocks + triplane decoder, super-resolution).

        ``mode='reduce-overhead'`` also captures CUDA graphs. Shapes are static per batch size, so each new
        batch size compiles once.
        """
        self._graphs.clear()
        self.compiled["planes"] = torch.compile(self._planes, mode=mode, dynamic=False)
        self.renderer.compile_steps(mode)
        self.compiled["decoder"] = torch.compile(self.decoder, mode=mode, dynamic=False)
        if self.superresolution is not None:
            self.compiled["superresolution"] = torch.compile(self.superresolution, mode=mode, dynamic=False)
        if self.deformer.flame_deform is not None and not fused_available(self.w_avg.device):
            self.deformer.flame_deform.compile_search(mode)  # (on CUDA the Triton search is faster)
        return self

    @staticmethod
    @contextlib.contextmanager
    def _autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield

    # ------------------------------------------------------------------------------------------------------
    # input checks

    def _check_image(self, image: Tensor, name: str = "source_image") -> None:
        r = self.config.img_resolution
        if not isinstance(image, Tensor):
            raise InputError(f"{name} must be a torch.Tensor of shape (B, 3, {r}, {r}), got {type(image).__name__}")
        if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[-2:]) != (r, r):
            raise InputError(f"{name} must have shape (B, 3, {r}, {r}) (an aligned crop), got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise InputError(f"{name} must be a float tensor in [-1, 1], got dtype {image.dtype} "
                             "(convert uint8 images with x / 127.5 - 1)")
        lo, hi = float(image.min()), float(image.max())
        if lo < -1.01 or hi > 1.01:
            raise InputError(f"{name} values must be in [-1, 1], got [{lo:.3g}, {hi:.3g}]")

    def _check_motion(self, motion: Tensor | None, batch: int | None, name: str) -> Tensor:
        dim = self.config.encoders.motion_dim
        if motion is None:
            if self.config.is_static:
                return torch.zeros([batch or 1, dim], device=self.w_avg.device)
            raise InputError(f"{name} is required: a PD-FGC motion vector of shape (B, {dim})")
        if not isinstance(motion, Tensor) or motion.ndim != 2 or motion.shape[1] != dim:
            shape = tuple(motion.shape) if isinstance(motion, Tensor) else type(motion).__name__
            raise InputError(f"{name} must have shape (B, {dim}), got {shape}")
        if not motion.is_floating_point():
            raise InputError(f"{name} must be a float tensor, got {motion.dtype}")
        if batch is not None and motion.shape[0] != batch:
            raise InputError(f"{name} has batch {motion.shape[0]}, expected {batch}")
        return motion

    @staticmethod
    def _check_camera(camera: Tensor, batch: int) -> Tensor:
        if not isinstance(camera, Tensor) or camera.ndim != 2 or camera.shape[1] != 25:
            shape = tuple(camera.shape) if isinstance(camera, Tensor) else type(camera).__name__
            raise InputError(f"camera must be (B, 25) labels (cam2world 16 + intrinsics 9), got {shape}")
        if camera.shape[0] == 1 and batch > 1:
            camera = camera.expand(batch, 25)
        if camera.shape[0] != batch:
            raise InputError(f"camera has batch {camera.shape[0]}, expected 1 or {batch}")
        return camera.float()

    # ------------------------------------------------------------------------------------------------------
    # encoding (source only)

    @torch.no_grad()
    def encode(self, source_image: Tensor, source_motion: Tensor | None = None,
               flame_shape: Tensor | None = None) -> AvatarState:
        """The source-only work, once per avatar.

        Args:
            source_image: ``(B, 3, 512, 512)`` aligned crop in ``[-1, 1]``.
            source_motion: ``(B, 548)`` PD-FGC motion of the source (optional for the static model).
            flame_shape: ``(B, 300)`` FLAME identity of the source, used by the head-pose deformation.
        """
        self._check_image(source_image)
        b = source_image.shape[0]
        motion_app = self._check_motion(source_motion, b, "source_motion")
        if flame_shape is not None and (flame_shape.ndim != 2 or flame_shape.shape != (b, FLAME_SHAPE_DIM)):
            raise InputError(f"flame_shape must have shape ({b}, {FLAME_SHAPE_DIM}), got {tuple(flame_shape.shape)}")
        scale = self.config.motion_scale
        with self._autocast(source_image.device, self.fast.dtype):
            features_global = self.encoder_global(source_image)
            features_detail = self.encoder_detail(source_image)
            tokens, h, w = self.encoder_canonical.neutralize(features_global, motion_app, scale)
        background = torch.sigmoid(self.background(source_image).float()) if self.background is not None else None
        state = AvatarState(features_detail.float(), tokens.float(), (h, w), background, flame_shape)
        if self.config.is_static:  # the motion blocks are then the identity in the motion: cache the planes
            state.planes = self.compiled.get("planes", self._planes)(state, torch.zeros_like(motion_app), self.fast)
        return state

    def _planes(self, state: AvatarState, motion: Tensor, fast: FastInference) -> Tensor:
        """Motion blocks + triplane decoder: ``(B, 3, C, 256, 256)`` float32."""
        with self._autocast(motion.device, fast.dtype):
            h, w = state.token_hw
            _, features_sr = self.encoder_canonical.reenact(state.neutral_tokens, h, w, motion,
                                                            self.config.motion_scale)
            p = self.generator_triplane(features_sr, state.features_detail)
        p = p.float().contiguous()  # NCHW: grid_sample reads planes much faster than from an NHWC layout
        return p.view(p.shape[0], -1, self.plane_channels, p.shape[-2], p.shape[-1])

    # ------------------------------------------------------------------------------------------------------
    # rendering (per driving frame)

    def head_pose_field(self, head_pose: HeadPose | None, flame_shape: Tensor | None, batch: int) -> HeadPoseField | None:
        """Precompute the FLAME head-pose deformation grids (``None``: identity)."""
        if head_pose is None:
            return None
        if not self.deformer.available:
            raise RuntimeError("this model has no FLAME deformer buffers; load an official checkpoint "
                               "(they carry them) or render with head_pose=None")
        pose = head_pose.pose
        if pose.ndim != 2 or pose.shape != (batch, 6):
            raise InputError(f"head_pose.pose must have shape ({batch}, 6), got {tuple(pose.shape)}")
        dev = pose.device
        shape = head_pose.shape if head_pose.shape is not None else flame_shape
        shape = torch.zeros([batch, FLAME_SHAPE_DIM], device=dev) if shape is None else shape.expand(batch, -1)
        exp = head_pose.expression if head_pose.expression is not None else torch.zeros([batch, FLAME_EXP_DIM], device=dev)
        eye = head_pose.eye_pose if head_pose.eye_pose is not None else torch.zeros([batch, 6], device=dev)
        for name, t, d in (("shape", shape, FLAME_SHAPE_DIM), ("expression", exp, FLAME_EXP_DIM), ("eye_pose", eye, 6)):
            if t.shape != (batch, d):
                raise InputError(f"head_pose {name} must have shape ({batch}, {d}), got {tuple(t.shape)}")
        assert self.deformer.flame_deform is not None
        return self.deformer.flame_deform.precompute(shape.float(), exp.float(), pose.float(), eye.float())

    @torch.no_grad()
    def render(
        self,
        state: AvatarState,
        driving_motion: Tensor | None,
        camera: Tensor,
        head_pose: HeadPose | None = None,
        *,
        neural_rendering_resolution: int | None = None,
        deterministic: bool = True,
        chunk: int | None = None,
    ) -> dict[str, Tensor]:
        """Render driving frames of an encoded avatar.

        Args:
            state: from :meth:`encode`; a batch-1 state is broadcast over the driving frames.
            driving_motion: ``(N, 548)`` PD-FGC motions (ignored, may be ``None``, for the static model).
            camera: ``(N, 25)`` or ``(1, 25)`` camera labels.
            head_pose: FLAME parameters for the head-pose deformation; ``None`` renders without it (identity).
            neural_rendering_resolution: raw render side (default ``config.neural_rendering_resolution``).
            deterministic: stratified depths without jitter and deterministic importance samples (our
                inference convention); ``False`` draws them randomly as the official renderer does.
            chunk: render at most this many rays at a time (memory bound).

        Returns:
            ``image`` ``(N, 3, 512, 512)`` in ``[-1, 1]``; ``image_raw`` ``(N, 3, r, r)``; ``depth``
            ``(N, 1, r, r)`` (distance along the ray); ``alpha`` ``(N, 1, r, r)`` (``1 - T_bg``); ``features``
            ``(N, 32, r, r)`` (the composited feature image in ``[-1, 1]``).
        """
        if not isinstance(state, AvatarState):
            raise InputError(f"state must be an AvatarState from Portrait4D.encode, got {type(state).__name__}")
        if driving_motion is None:
            if state.planes is None:
                raise InputError(f"driving_motion is required: PD-FGC motions of shape (N, {self.config.encoders.motion_dim})")
            n = max(camera.shape[0] if isinstance(camera, Tensor) and camera.ndim == 2 else 1, state.batch_size)
        else:
            driving_motion = self._check_motion(driving_motion, None, "driving_motion")
            n = driving_motion.shape[0]
        camera = self._check_camera(camera, n)
        state.expand(n)  # checks that the state broadcasts
        field = self.head_pose_field(head_pose, state.flame_shape, n)
        if (self.fast.cuda_graphs and deterministic and camera.device.type == "cuda"
                and not torch.cuda.is_current_stream_capturing()):
            return self._render_graphed(state, driving_motion, camera, field, neural_rendering_resolution, chunk)
        return self._render_frames(state, driving_motion, camera, field, neural_rendering_resolution, deterministic,
                                   chunk)

    def _render_frames(self, state: AvatarState, motion: Tensor | None, camera: Tensor, field: HeadPoseField | None,
                       resolution: int | None, deterministic: bool, chunk: int | None) -> dict[str, Tensor]:
        """The per-frame work of :meth:`render` (motion blocks, triplane decoder, rendering, super-resolution)."""
        state = state.expand(camera.shape[0])
        planes_fn = self.compiled.get("planes", self._planes)
        planes = state.planes if state.planes is not None else planes_fn(state, motion, self.fast)
        return self._render_planes(planes, state.background, camera, field, resolution, deterministic, chunk,
                                   self.fast, reference=False)

    def _render_graphed(self, state: AvatarState, motion: Tensor | None, camera: Tensor, field: HeadPoseField | None,
                        resolution: int | None, chunk: int | None) -> dict[str, Tensor]:
        """:meth:`_render_frames` replayed from a CUDA graph captured for these shapes, options and weights (the
        head-pose field is computed eagerly before; its grids are graph inputs)."""
        inputs: dict[str, Tensor] = {"camera": camera}
        if state.planes is None:
            assert motion is not None
            inputs["motion"] = motion
        inputs.update({f"state.{k}": v for k, v in state.tensors().items() if k != "flame_shape"})
        if field is not None:
            inputs.update({f"field.{f.name}": getattr(field, f.name) for f in fields(field)
                           if getattr(field, f.name) is not None})
        token_hw = state.token_hw

        def per_frame(**x: Tensor) -> dict[str, Tensor]:
            st = AvatarState(x["state.features_detail"], x["state.neutral_tokens"], token_hw,
                             x.get("state.background"), None, x.get("state.planes"))
            fld = None if field is None else HeadPoseField(**{k[6:]: v for k, v in x.items() if k.startswith("field.")})
            return self._render_frames(st, x.get("motion"), x["camera"], fld, resolution, True, chunk)

        key = (tuple((k, tuple(v.shape), v.stride(), v.dtype, v.device) for k, v in inputs.items()), token_hw,
               resolution, chunk, self.fast, tensor_addresses(self))
        out = self._graphs.replay_or_none(key, per_frame, inputs, "Portrait4D.render")
        return out if out is not None else self._render_frames(state, motion, camera, field, resolution, True, chunk)

    def _render_planes(self, planes: Tensor, background: Tensor | None, camera: Tensor, field: HeadPoseField | None,
                       resolution: int | None, deterministic: bool, chunk: int | None, fast: FastInference,
                       reference: bool) -> dict[str, Tensor]:
        """Volume rendering, background compositing and super-resolution (official ``synthesis()`` tail);
        ``reference`` uses the eager modules even when :meth:`compile_fast_path` compiled them."""
        r = resolution or self.config.neural_rendering_resolution
        if not 0 < r <= 128:
            raise InputError(f"neural_rendering_resolution must be in 1..128 (the inference branch upstream), got {r}")
        n = planes.shape[0]
        cam2world, intrinsics = split_label(camera)
        origins, directions = sample_rays(cam2world, intrinsics, r)
        deformer = None
        if field is not None:
            def deformer(points: Tensor) -> Tensor:
                return FlameHeadPoseDeformer.warp(field, points)
        decoder = self.decoder if reference else self.compiled.get("decoder", self.decoder)
        fused = None if reference or not fused_available(planes.device) else fast.fused_rendering
        if fused is not None:
            decoder = self.decoder  # the kernels read its weights
        out = self.renderer(planes, decoder, origins, directions, cam_z=camera_z(cam2world),
                            deformer=deformer, deterministic=deterministic, chunk=chunk, fused=fused)
        # contiguous NCHW images (the ray-major reshape is a strided view, slow for the convolutions after it)
        features = rays_to_image(out.features, r, r).contiguous()
        depth = rays_to_image(out.depth, r, r).contiguous()
        t_bg = rays_to_image(out.t_bg, r, r).contiguous()
        if background is not None:
            if background.shape[-1] != r:
                background = F.interpolate(background, size=(r, r), mode="bilinear", align_corners=False)
            features = features + t_bg * background
        else:
            features = features + t_bg * 0
        features = 2 * features - 1
        rgb = features[:, :3]
        if self.superresolution is not None:
            # the styles are the constant w_avg: the fast path passes them once (the SR modulates each weight once
            # and convolves the whole batch with it) instead of n identical copies (n grouped-conv groups)
            ws = constant_ws(self.w_avg, 1 if fast.sr_shared_styles and not reference else n)
            sr = self.superresolution if reference else self.compiled.get("superresolution", self.superresolution)
            image = sr(rgb, features, ws, noise_mode=self.config.superresolution_noise_mode,
                       fused_modconv=fast.sr_fused_modconv)
        else:
            image = rgb
        return {"image": image, "image_raw": rgb, "depth": depth, "alpha": 1 - t_bg, "features": features}

    # ------------------------------------------------------------------------------------------------------
    # reference (official order: everything recomputed for each frame)

    @torch.no_grad()
    def reference_forward(
        self,
        source_image: Tensor,
        source_motion: Tensor,
        driving_motion: Tensor,
        camera: Tensor,
        head_pose: HeadPose | None = None,
        *,
        flame_shape: Tensor | None = None,
        neural_rendering_resolution: int | None = None,
        deterministic: bool = True,
    ) -> dict[str, Tensor]:
        """Every encoder recomputed from the source image, in the order of the official ``synthesis()``,
        in float32 whatever :meth:`enable_fast_inference` set. Same arguments as :meth:`encode` + :meth:`render`."""
        self._check_image(source_image)
        b = source_image.shape[0]
        source_motion = self._check_motion(source_motion, b, "source_motion")
        driving_motion = self._check_motion(driving_motion, b, "driving_motion")
        camera = self._check_camera(camera, b)
        planes = self.planes(source_image, driving_motion, source_motion, self.config.motion_scale)
        background = self.background_image(source_image) if self.background is not None else None
        field = self.head_pose_field(head_pose, flame_shape, b)
        return self._render_planes(planes, background, camera, field, neural_rendering_resolution,
                                   deterministic, None, REFERENCE, reference=True)

    # ------------------------------------------------------------------------------------------------------
    # training (official ``synthesis()`` / ``sample_mixed`` with gradients: avatar.models.portrait4d.training)

    def train_forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Training-mode forward with gradients, float32, returning every output the official training losses
        read (``image``, ``image_sr``, ``image_wobg``, ``image_feature[_wobg]``, ``background_feature``,
        ``rgb_bg``, ``image_depth``, ``T_bg``, ``seg``, ``planes``, ...): the arguments after ``self`` and the
        result of :func:`avatar.models.portrait4d.training.train_forward` (one signature, kept there)."""
        from avatar.models.portrait4d.training import train_forward

        return train_forward(self, *args, **kwargs)

    def sample_density(
        self,
        source_image: Tensor,
        source_motion: Tensor | None,
        driving_motion: Tensor | None,
        points: Tensor,
        head_pose: HeadPose | HeadPoseField | None = None,
        motion_scale: float | Tensor | None = None,
        directions: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The official ``sample_mixed`` with gradients: raw ``sigma`` ``(B, M, 1)`` (and ``rgb``,
        ``triplane_feature``, ``canonical``) at ``points`` ``(B, M, 3)``; see
        :func:`avatar.models.portrait4d.training.sample_density`."""
        from avatar.models.portrait4d.training import sample_density

        return sample_density(self, source_image, source_motion, driving_motion, points, head_pose, motion_scale,
                              directions)

    def forward(self, state: AvatarState, driving_motion: Tensor | None, camera: Tensor,  # type: ignore[override]
                head_pose: HeadPose | None = None, **kwargs: Any) -> dict[str, Tensor]:
        """Alias of :meth:`render`."""
        return self.render(state, driving_motion, camera, head_pose, **kwargs)

    def extra_repr(self) -> str:
        c = self.config
        return (f"img_resolution={c.img_resolution}, neural_rendering_resolution={c.neural_rendering_resolution}, "
                f"motion_scale={c.motion_scale}, background={c.has_background}")
