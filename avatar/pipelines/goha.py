"""GOHA pipeline: photo -> avatar; avatar + driving video -> reenacted frames; avatar + cameras -> views.

:class:`GOHAPipeline` bundles GOHA (:class:`~avatar.models.goha.GOHA`) with its preprocessing
(:class:`~avatar.models.goha.preprocess.GOHAPreprocessor`: EG3D's in-the-wild 512 crop and camera from the
detector's five points and Deep3DFaceRecon, and the MODNet matte) behind the interface every family offers
(:class:`~avatar.pipelines.base.AvatarPipeline`), so the CLI, the app and ``eval`` run it as they run Portrait4D.

Per photo, :meth:`GOHAPipeline.create_avatar` runs the preprocessing and GOHA's per-source work once
(:meth:`~avatar.models.goha.GOHA.encode_source`: parsing mask, canonical tri-plane, Deep3D coefficients of the source
and of ``cano_exemplar``) and returns a :class:`GOHAAvatar`. Per driving frame, :meth:`GOHAPipeline.iter_reenact`
crops and mattes the frame and takes its EG3D camera (preprocessor), regresses its Deep3D coefficients on the
matted crop (GOHA's own ``net_recon``, as the official ``get_sudo``), then GOHA renders the pseudo-render, the
expression plane, the appearance plane and the final image; the source encoding is reused.

Driving (``iter_reenact``):

* **expression**: ``relative=True`` (default) applies the change of the driving Deep3D expression from the first
  driving frame with a face to the source's own (``exp_src + exp_t - exp_0``); ``relative=False`` uses the driving
  expression as it is (the official cross-identity transfer).
* **head pose** (``head_pose``): ``'camera'``: GOHA sees head motion as camera motion (the official test renders at
  the driving frame's camera); relative: ``C_src C_0^-1 C_t`` (the driving camera's motion since the first
  frame, applied to the source's camera, put back at EG3D's radius 2.7); absolute: the driving frame's camera.
  ``'fixed'``: the source's own camera (expression only). ``'neck'`` (the CLI's default, Portrait4D's FLAME neck):
  GOHA has no neck, so it is ``'camera'``.

Frames without a usable face hold the last good driving values (the source's own before the first one). Novel
views (:meth:`GOHAPipeline.render_views`) take the toolkit's camera labels and map each onto GOHA's camera with
the same viewing direction (:func:`goha_cameras`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from avatar.errors import (
    FaceTooSmallError,
    InputError,
    ModelNotFoundError,
    NoFaceError,
    UnknownOptionValueError,
)
from avatar.face.bfm import ParametricFaceModel
from avatar.face.deep3d import Deep3DReconNet, split_coefficients
from avatar.face.geometry import AlignParams
from avatar.face.retinaface import RetinaFace
from avatar.face.smoothing import POSE_FILTER, OneEuroFilter
from avatar.io.image import load_image
from avatar.io.video import VideoReader
from avatar.models.goha import GOHA, GOHASource
from avatar.models.goha.preprocess import (
    EG3D_CAMERA_RADIUS,
    GOHA_IMAGE_SIZE,
    GOHACrop,
    GOHAPreprocessor,
    eg3d_camera_label,
    eg3d_intrinsics,
)
from avatar.pipelines.base import (
    PIPELINE_FILE,
    AvatarPipeline,
    HeadPoseMode,
    PhotoLike,
    VideoLike,
    class_path,
    read_saved_tensors,
    save_tensors_atomically,
    write_pipeline_folder,
)
from avatar.pipelines.frames import to_uint8
from avatar.pipelines.prefetch import in_background
from avatar.pipelines.results import ReenactedFrame, ReenactStream
from avatar.render.camera import cam2world_from_forward, make_label, split_label

__all__ = ["GOHAAvatar", "GOHAPipeline", "GOHAState", "GOHA_PIVOT", "goha_cameras", "relative_camera"]

logger = logging.getLogger(__name__)

PIPELINE_FORMAT = "avatar4d-goha-pipeline"
AVATAR_FORMAT = "avatar4d-goha-avatar"
FACE_MODEL_FILE = "face_model.npz"
RANDOM_WEIGHTS_WARNING = ("this GOHA pipeline has random weights (tiny, for tests): its pictures are meaningless; "
                          "use the model id goha for real results")
GOHA_PIVOT: tuple[float, float, float] = (0.0, 0.0, 0.2)
"""EG3D's ``avg_camera_pivot``: the point GOHA's demo orbit looks at (its cameras sit 2.7 from the origin)."""

_MATTING = ("modnet", "mediapipe")


# ----------------------------------------------------------------------------------------------------------
# cameras


def goha_cameras(labels: Tensor, pivot: tuple[float, float, float] = GOHA_PIVOT,
                 radius: float = EG3D_CAMERA_RADIUS) -> Tensor:
    """The toolkit's ``(N, 25)`` camera labels (:mod:`avatar.render.camera`: OpenGL-like, 12 degrees, 4.2 from the
    origin) -> GOHA's (EG3D: OpenCV, focal 4.2647) with the same direction from the origin: the camera at
    ``radius`` (2.7) along that direction, looking at ``pivot`` (as GOHA's demo orbit,
    ``LookAtPoseSampler.sample(yaw, pitch, [0, 0, 0.2], radius=2.7)``). The toolkit's frontal camera becomes
    GOHA's frontal camera; an orbit stays an orbit with the same yaw and pitch."""
    if labels.ndim != 2 or labels.shape[-1] < 25:
        raise InputError(f"cameras must be (N, 25) labels, got {tuple(labels.shape)}")
    cam2world, _ = split_label(labels.float())
    position = cam2world[:, :3, 3]
    norm = position.norm(dim=-1, keepdim=True)
    if bool((norm < 1e-6).any()):
        raise InputError("a camera sits at the origin: it has no viewing direction")
    origin = position / norm * radius
    forward = position.new_tensor(pivot) - origin
    gl = cam2world_from_forward(forward, origin)
    cv = gl * gl.new_tensor([1.0, -1.0, -1.0, 1.0])  # OpenGL-like -> OpenCV: flip the camera's y and z axes
    return make_label(cv, eg3d_intrinsics(labels.shape[0]).to(cv))


def relative_camera(source: Tensor, reference: Tensor, driving: Tensor, radius: float = EG3D_CAMERA_RADIUS) -> Tensor:
    """``(B, 25)`` GOHA cameras ``C_src C_ref^-1 C_t``: the driving camera's motion since the reference frame
    applied to the source's camera (the head's relative motion, seen as camera motion), put back at ``radius``
    from the origin (EG3D's ``fix_pose_orig``); intrinsics of ``driving``."""
    c_src, _ = split_label(source.double())
    c_ref, _ = split_label(reference.double())
    c_t, k = split_label(driving.double())
    pose = c_src @ torch.linalg.inv(c_ref) @ c_t
    location = pose[:, :3, 3]
    pose[:, :3, 3] = location / location.norm(dim=-1, keepdim=True) * radius
    return make_label(pose, k).to(driving.dtype)


# ----------------------------------------------------------------------------------------------------------
# the avatar


GOHAState = GOHASource
"""GOHA's per-source encoding as the pipelines hold it (:class:`~avatar.models.goha.GOHASource`)."""


@dataclass
class GOHAAvatar:
    """One source photo, encoded for GOHA: reusable across any number of driving frames, cameras and videos.

    Attributes:
        state: GOHA's per-source encoding (:class:`GOHAState`; its ``camera`` is the photo's EG3D camera and its
            ``coefficients`` the Deep3D coefficients GOHA regressed on the matted crop).
        source_crop: ``(512, 512, 3)`` uint8 EG3D crop of the photo (before the matte).
        source_matte: ``(1, 512, 512)`` float32 MODNet matte of the crop.
        align: the crop in the photo, for paste-back (``None`` when the photo was given aligned).
    """

    state: GOHAState
    source_crop: np.ndarray
    source_matte: Tensor
    align: AlignParams | None = None

    @property
    def camera(self) -> Tensor:
        """``(1, 25)`` the photo's GOHA camera."""
        return self.state.camera

    def save(self, path: str | Path) -> Path:
        """Write one ``.safetensors`` file (moved into place when complete); :meth:`GOHAPipeline.load_avatar`
        reads it."""
        tensors = {f"state.{k}": v.detach().float().cpu().contiguous().clone() for k, v in self.state.tensors().items()}
        tensors["source_crop"] = torch.from_numpy(np.ascontiguousarray(self.source_crop, dtype=np.uint8)).clone()
        tensors["source_matte"] = self.source_matte.detach().float().cpu().contiguous().clone()
        meta = {"format": AVATAR_FORMAT, "align": json.dumps(self.align.to_array().tolist() if self.align else None)}
        return save_tensors_atomically(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> GOHAAvatar:
        path = Path(path)
        tensors, meta = read_saved_tensors(path, device)
        if meta.get("format") != AVATAR_FORMAT:
            hint = " (it is a Portrait4D avatar)" if meta.get("format") == "avatar4d-avatar" else ""
            raise InputError(f"{path} is not a saved GOHA avatar{hint}; create it again with --model goha")
        state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
        missing = [f.name for f in fields(GOHASource) if f.name not in state
                   and f.name not in ("coefficients", "exemplar_coefficients")]
        if missing:
            raise InputError(f"{path} is not a complete GOHA avatar (no {', '.join(missing)})")
        for name in ("coefficients", "exemplar_coefficients"):
            state.setdefault(name, None)
        align = json.loads(meta.get("align") or "null")
        return cls(GOHAState(**state), tensors["source_crop"].cpu().numpy(), tensors["source_matte"].cpu(),
                   AlignParams.from_array(align) if align is not None else None)


# ----------------------------------------------------------------------------------------------------------
# the pipeline


class GOHAPipeline(AvatarPipeline):
    """Photo -> GOHA avatar -> reenacted or novel-view frames (module docstring).

    Args:
        model: GOHA with its BFM face model attached (the expression branch renders it).
        preprocessor: detector, Deep3DFaceRecon and matting network (:class:`GOHAPreprocessor`).
        random_init: the weights are random (tiny test pipeline); a warning is logged when it is built.
        dtype: ``torch.bfloat16`` / ``torch.float16`` run GOHA under autocast (``None``: float32).
    """

    family = "goha"
    pipeline_format = PIPELINE_FORMAT
    aligned_crop = "eg3d"
    preprocess_backends = ("official", "mediapipe")
    """``'official'`` (default): RetinaFace's five points (EG3D used MTCNN's; the crop is the same computation).
    ``'mediapipe'``: MediaPipe's detector and five points (no RetinaFace weights)."""

    def __init__(self, model: GOHA, preprocessor: GOHAPreprocessor, random_init: bool = False,
                 dtype: torch.dtype | None = None, preprocess: str = "official") -> None:
        self.model = model.eval()
        self.preprocessor = preprocessor
        self.random_init = random_init or bool(getattr(model, "is_random_init", False))
        self.dtype = dtype
        self._preprocess = preprocess
        if self.random_init:
            logger.warning(RANDOM_WEIGHTS_WARNING)

    # ---- construction ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.image_mean.device

    @property
    def preprocess(self) -> str:
        return self._preprocess

    @property
    def matting(self) -> str:
        return "mediapipe" if not isinstance(self.preprocessor.matting, torch.nn.Module) else "modnet"

    @property
    def output_resolution(self) -> int:
        return self.model.config.superresolution.out_size

    @property
    def reconstructor(self) -> GOHA:
        """GOHA (the name ``eval`` and the app look for)."""
        return self.model

    def to(self, device: torch.device | str) -> GOHAPipeline:
        self.model.to(device)
        self.preprocessor.to(device)
        return self

    def enable_fast_inference(self, dtype: torch.dtype | None = torch.bfloat16,
                              fused_rendering: str | None = "ieee", *, cuda_graphs: bool = False,
                              sr_fused_modconv: bool = True, fused_lifting: bool = True,
                              sr_frames: int | None = None) -> GOHAPipeline:
        """Run GOHA under autocast ``dtype`` (``None``: float32; the preprocessing stays float32) and with
        :meth:`GOHA.enable_fast_inference` (``fused_rendering``: the Triton volume renderer on CUDA, ``None`` for
        the PyTorch one; ``cuda_graphs``, ``sr_fused_modconv``, ``fused_lifting`` and ``sr_frames`` as there,
        with its defaults)."""
        self.dtype = dtype
        self.model.enable_fast_inference(fused_rendering, cuda_graphs=cuda_graphs, sr_fused_modconv=sr_fused_modconv,
                                         fused_lifting=fused_lifting, sr_frames=sr_frames)
        return self

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None or self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @classmethod
    def tiny(cls, seed: int = 0, preprocess: str | None = None) -> GOHAPipeline:
        """A complete pipeline of tiny random networks (32x32 GOHA, a synthetic sphere face model) for tests and
        offline work. Pictures are meaningless. With the official backend the random detector is biased to report
        face-sized boxes so that every stage runs on any photo; with ``preprocess='mediapipe'`` faces are found for
        real (MediaPipe's own weights, and its matting)."""
        from avatar.face.matting import MediaPipeMatting
        from avatar.face.mediapipe_face import MediaPipeFaceBackend
        from avatar.face.modnet import MODNet
        from avatar.face.retinaface import rig_for_random_weights
        from avatar.flame.synthetic import synthetic_bfm_assets

        backend = cls.check_preprocess(preprocess)
        model = GOHA.tiny(seed)
        model.set_face_model(ParametricFaceModel(synthetic_bfm_assets(seed)))
        model.is_random_init = True
        detector: Any
        matting: Any
        if backend == "mediapipe":
            detector, matting = MediaPipeFaceBackend(), MediaPipeMatting()
        else:
            detector = RetinaFace.tiny(seed).eval()
            rig_for_random_weights(detector, 1, 0)  # every 64 px anchor of the middle level is a face
            matting = MODNet.tiny(seed).eval()
        pre = GOHAPreprocessor(detector, Deep3DReconNet.tiny(seed).eval(), matting)
        return cls(model.eval(), pre, random_init=True, preprocess=backend)

    @classmethod
    def from_pretrained(cls, model_id_or_dir: str | Path = "goha", device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None, preprocess: str | None = None,
                        local_dir: str | Path | None = None, matting: str = "modnet") -> GOHAPipeline:
        """Load a pipeline folder (:meth:`save_pretrained`), or the model id ``goha`` / a GOHA network folder plus
        the preprocessing networks from the cache (``avatar download goha`` fetches and converts them).

        Args:
            preprocess: ``'official'`` or ``'mediapipe'``; ``None``: the folder's own, else ``'official'``.
            local_dir: take the upstream files from this folder instead of the network.
            matting: ``'modnet'`` (GOHA's) or ``'mediapipe'`` (for the model id; a folder keeps its own).
        """
        if preprocess is not None:
            cls.check_preprocess(preprocess)
        if matting not in _MATTING:
            raise UnknownOptionValueError(f"matting must be one of {', '.join(_MATTING)}, got {matting!r}")
        path = Path(model_id_or_dir).expanduser()
        if path.is_dir() and (path / PIPELINE_FILE).is_file():
            pipe = cls._load_folder(path, preprocess)
        else:
            backend = cls.check_preprocess(preprocess)
            model = GOHA.from_pretrained(model_id_or_dir, local_dir=local_dir)
            if not model.has_face_model:
                from avatar.hub.download import ensure_file

                model.set_face_model(ParametricFaceModel.from_folder(ensure_file("bfm-front", local_dir=local_dir)))
            pre = GOHAPreprocessor.from_pretrained(backend, matting, local_dir=local_dir)
            pipe = cls(model, pre, preprocess=backend)
        pipe.to(device)
        if dtype is not None and dtype != torch.float32:
            pipe.enable_fast_inference(dtype)
        return pipe

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write the whole pipeline into one folder (moved into place when complete) that :meth:`from_pretrained`
        loads back: ``pipeline.json``, ``model/`` (GOHA, with its Deep3D regressor), ``face_model.npz`` (the BFM
        arrays its expression branch renders; from your own cache: the BFM licence applies to the folder),
        ``face_recon/`` and, for the official backends, ``detector/`` and ``matting/``."""
        def fill(tmp: Path) -> dict[str, Any]:
            self.model.save_pretrained(tmp / "model")
            components = {"model": class_path(type(self.model))}
            face_model = self.model.exp_loss_fn.facemodel
            if face_model is not None:
                np.savez(tmp / FACE_MODEL_FILE, **face_model.to_arrays())
            for name, module in (("detector", self.preprocessor.detector), ("face_recon", self.preprocessor.face_recon),
                                 ("matting", self.preprocessor.matting)):
                if isinstance(module, torch.nn.Module):
                    module.save_pretrained(tmp / name)
                    components[name] = class_path(type(module))
            return {"format": PIPELINE_FORMAT, "version": 1, "pipeline_class": class_path(type(self)),
                    "random_init": self.random_init, "components": components, "preprocess": self.preprocess,
                    "matting": self.matting, "min_face_size": self.preprocessor.min_face_size}

        return write_pipeline_folder(save_directory, fill)

    @classmethod
    def _load_folder(cls, folder: Path, preprocess: str | None = None) -> GOHAPipeline:
        from avatar.face.matting import MediaPipeMatting
        from avatar.face.mediapipe_face import MediaPipeFaceBackend
        from avatar.face.modnet import MODNet

        try:
            meta = json.loads((folder / PIPELINE_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise ModelNotFoundError(f"{folder / PIPELINE_FILE} is not valid JSON ({exc}); save the pipeline again") from exc
        if meta.get("format") != PIPELINE_FORMAT:
            raise ModelNotFoundError(f"{folder / PIPELINE_FILE} is not a GOHA pipeline description")
        saved_with = meta.get("preprocess", "official")
        backend = cls.check_preprocess(preprocess or saved_with)
        model = GOHA.from_pretrained(folder / "model")
        if (folder / FACE_MODEL_FILE).is_file():
            with np.load(folder / FACE_MODEL_FILE, allow_pickle=False) as arrays:
                model.set_face_model(ParametricFaceModel(dict(arrays), recenter=False))
        detector: Any
        if backend == "mediapipe":
            detector = MediaPipeFaceBackend()
        elif (folder / "detector").is_dir():
            detector = RetinaFace.from_pretrained(folder / "detector")
        else:
            raise ModelNotFoundError(f"{folder} has no detector/ (it was saved with the {saved_with} preprocessing); "
                                     f"load it with preprocess={saved_with!r}")
        if not (folder / "face_recon").is_dir():
            raise ModelNotFoundError(f"{folder} lacks face_recon/; save the pipeline again")
        face_recon = Deep3DReconNet.from_pretrained(folder / "face_recon")
        matting: Any = (MODNet.from_pretrained(folder / "matting") if meta.get("matting", "modnet") == "modnet"
                        else MediaPipeMatting())
        random_init = bool(meta.get("random_init"))
        if random_init:
            model.is_random_init = True
        pre = GOHAPreprocessor(detector, face_recon, matting, min_face_size=float(meta.get("min_face_size", 40.0)))
        return cls(model, pre, random_init=random_init, preprocess=backend)

    def load_avatar(self, path: str | Path) -> GOHAAvatar:
        """An avatar written by :meth:`GOHAAvatar.save`, on this pipeline's device."""
        avatar = GOHAAvatar.load(path, device=self.device)
        self._check_avatar(avatar)
        return avatar

    def _check_avatar(self, avatar: Any) -> None:
        if not isinstance(avatar, GOHAAvatar):
            raise InputError(f"this is not a GOHA avatar ({type(avatar).__name__}); create it with the GOHA pipeline")
        s = self.model.config.image_size
        if tuple(avatar.state.image.shape[-2:]) != (s, s):
            raise InputError(f"this avatar was made by a GOHA of {avatar.state.image.shape[-1]}x"
                             f"{avatar.state.image.shape[-2]} inputs, not by this one ({s}x{s}); create it again")

    # ---- preprocessing ---------------------------------------------------------------------------------
    def _model_input(self, crops: list[GOHACrop]) -> Tensor:
        """The crops' matted images at GOHA's input size ``(B, 3, S, S)`` on the device (512: as they are)."""
        images = torch.stack([c.image for c in crops]).to(self.device)
        s = self.model.config.image_size
        if images.shape[-1] != s:  # tiny models: same picture, smaller
            images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return images

    def analyze_photo(self, photo: PhotoLike, aligned: bool = False) -> GOHACrop:
        """The largest face of a photo, prepared as GOHA's input (crop, camera, matte).

        Args:
            aligned: the photo already is a square GOHA (EG3D) crop; it is resized to 512 if needed and not cropped
                again, its camera comes from its own five points.

        Raises:
            ImageReadError: the photo cannot be read. NoFaceError: no face. FaceTooSmallError: the largest face is
            smaller than ``min_face_size``. InputError: ``aligned`` with a photo that is not square.
        """
        image = load_image(photo, max_side=None)
        name = str(photo) if isinstance(photo, str | Path) else "the photo"
        if aligned:
            h, w = image.shape[:2]
            if h != w:
                raise InputError(f"{name} is {w}x{h}, but --aligned needs a square GOHA (EG3D) crop; drop --aligned "
                                 "to detect and crop the face")
            if h != GOHA_IMAGE_SIZE:
                image = np.asarray(Image.fromarray(image).resize((GOHA_IMAGE_SIZE,) * 2, Image.LANCZOS))
        faces = self.preprocessor.detect([image])[0]
        if not faces:
            raise NoFaceError(f"no face found in {name}; use a photo with one clearly visible, roughly frontal face")
        if len(faces) > 1:
            logger.warning("%d faces found in %s; using the largest", len(faces), name)
        if not aligned and faces[0].size < self.preprocessor.min_face_size:
            raise FaceTooSmallError(
                f"the face in {name} is only {faces[0].size:.0f} pixels across; use a photo where it is at least "
                f"{self.preprocessor.min_face_size:.0f} pixels (closer or higher resolution)")
        if aligned:
            return self.preprocessor.process_aligned([image], [faces[0]])[0]
        return self.preprocessor.process([image], [faces[0]])[0]

    # ---- source ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def create_avatar(self, photo: PhotoLike, aligned: bool = False) -> GOHAAvatar:
        """Build an avatar from one photo (path, PIL image or ``(H, W, 3)`` uint8 array): GOHA's preprocessing,
        then its per-source work, done once.

        Args:
            aligned: the photo already is a GOHA (EG3D) crop (skip the crop; see :meth:`analyze_photo`).
        """
        crop = self.analyze_photo(photo, aligned=aligned)
        image = self._model_input([crop])
        camera = crop.camera[None].to(self.device)
        with self._autocast():
            source = self.model.encode_source(image, camera)
        state = source.to(dtype=torch.float32)
        return GOHAAvatar(state, crop.crop, crop.matte, crop.align)

    # ---- novel views -----------------------------------------------------------------------------------
    @torch.no_grad()
    def render_cameras(self, avatar: GOHAAvatar, cameras: Tensor, batch_size: int = 8,
                       progress: bool = False) -> np.ndarray:
        """The avatar with its own expression seen from GOHA (EG3D) cameras ``(N, 25)`` -> ``(N, r, r, 3)`` uint8."""
        self._check_avatar(avatar)
        if cameras.ndim != 2 or cameras.shape[1] != 25:
            raise InputError(f"cameras must be (N, 25) labels, got {tuple(cameras.shape)}")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        state = avatar.state.to(self.device)
        frames = []
        for i in tqdm(range(0, cameras.shape[0], batch_size), disable=not progress, unit="batch", desc="render"):
            cam = cameras[i:i + batch_size].to(self.device).float()
            with self._autocast():
                # the source's own expression: its own coefficients drive the pseudo-render
                out = self.model.reenact(state.expand(cam.shape[0]), cam)
            frames.append(to_uint8(out.image))
        return np.concatenate(frames)

    def render_views(self, avatar: GOHAAvatar, cameras: Tensor, batch_size: int = 8,
                     progress: bool = False) -> np.ndarray:
        """The avatar with its own expression seen from the toolkit's camera labels ``(N, 25)``
        (:func:`~avatar.render.camera.view_label`, :func:`~avatar.render.camera.orbit_labels`), each mapped onto
        GOHA's camera with the same viewing direction (:func:`goha_cameras`) -> ``(N, r, r, 3)`` uint8."""
        if cameras.ndim != 2 or cameras.shape[1] != 25:
            raise InputError(f"cameras must be (N, 25) labels, got {tuple(cameras.shape)}")
        return self.render_cameras(avatar, goha_cameras(cameras), batch_size, progress)

    # ---- reenactment -----------------------------------------------------------------------------------
    @staticmethod
    def _resolve_pose_mode(mode: str) -> HeadPoseMode:
        if mode not in ("neck", "camera", "fixed"):
            raise InputError(f"head_pose must be 'neck', 'camera' or 'fixed', got {mode!r}")
        if mode == "neck":
            logger.info("GOHA has no neck: the driving head rotation moves the camera (head_pose='camera')")
            return "camera"
        return mode  # type: ignore[return-value]

    def iter_reenact(
        self,
        avatar: GOHAAvatar,
        video: VideoLike,
        *,
        relative: bool = True,
        head_pose: HeadPoseMode = "neck",
        smooth: bool = True,
        batch_size: int = 8,
        max_frames: int | None = None,
        progress: bool = False,
        prefetch: bool = False,
    ) -> ReenactStream:
        """Drive the avatar with a video (path, or an iterable of ``(H, W, 3)`` uint8 frames); see the module
        docstring for ``relative`` and ``head_pose``. ``smooth``: one-euro smoothing of the driving head poses
        (Deep3D angles and translations, before the camera is built). Other arguments as
        :meth:`Portrait4DPipeline.iter_reenact <avatar.pipelines.portrait4d.Portrait4DPipeline.iter_reenact>`.

        A video in which no frame has a face raises :class:`~avatar.errors.NoFaceError` once the stream ends.
        """
        self._check_avatar(avatar)
        mode = self._resolve_pose_mode(head_pose)
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if max_frames is not None and max_frames < 1:
            raise InputError(f"max_frames must be at least 1, got {max_frames}")
        fps = Fraction(25)
        if isinstance(video, str | Path):
            reader: Iterable[np.ndarray] = VideoReader(video, max_frames=max_frames)
            total: int | None = len(reader)  # type: ignore[arg-type]
            fps = reader.fps  # type: ignore[attr-defined]
        else:
            reader, total = video, None
        frames = self._reenact_frames(avatar, reader, total, relative=relative, mode=mode, smooth=smooth,
                                      batch_size=batch_size, max_frames=max_frames, progress=progress,
                                      prefetch=prefetch)
        return ReenactStream(frames, total=total, fps=fps, head_pose=mode)

    def _driving_batches(self, frames: Iterable[np.ndarray], batch_size: int, max_frames: int | None,
                         ) -> Iterator[tuple[list[np.ndarray], list[int], list[GOHACrop], Tensor | None]]:
        """Driving frames in batches -> ``(frames, indices with a usable face, their crops, their Deep3D
        coefficients regressed by GOHA on the matted crops)``."""
        for chunk, good, crops in self.preprocessor.process_batches(frames, batch_size, max_frames):
            coefficients = None
            if crops:
                with torch.no_grad():
                    coefficients = self.model.exp_loss_fn.regress(self._model_input(crops)).float().cpu()
            yield chunk, good, crops, coefficients

    @torch.no_grad()
    def _reenact_frames(self, avatar: GOHAAvatar, reader: Iterable[np.ndarray], total: int | None, *,
                        relative: bool, mode: HeadPoseMode, smooth: bool, batch_size: int, max_frames: int | None,
                        progress: bool, prefetch: bool) -> Iterator[ReenactedFrame]:
        pose_filter = OneEuroFilter.from_params(POSE_FILTER) if smooth else None
        state = avatar.state.to(self.device)
        src_camera = state.camera[0].float().cpu()
        if state.coefficients is None:
            raise InputError("this avatar has no Deep3D coefficients; create it again with this pipeline")
        src_coeffs = state.coefficients[0].float().cpu()
        reference: tuple[Tensor, Tensor] | None = None  # first driving frame with a face: (coefficients, camera)
        last = (src_coeffs, src_camera)
        missing = index = 0
        bar = tqdm(total=total, disable=not progress, unit="frame", desc="reenact")
        batches = self._driving_batches(reader, batch_size, max_frames)
        if prefetch:
            batches = in_background(batches)
        try:
            for chunk, good, crops, coefficients in batches:
                by_frame = {i: k for k, i in enumerate(good)}
                coeff_list, cam_list, shown, found = [], [], [], []
                for i, frame in enumerate(chunk):
                    k = by_frame.get(i)
                    if k is None:
                        missing += 1
                        coeff, cam = last
                        shown.append(np.asarray(Image.fromarray(frame).resize((GOHA_IMAGE_SIZE,) * 2, Image.BILINEAR)))
                    else:
                        assert coefficients is not None
                        coeff = coefficients[k]
                        cam = crops[k].camera.float()
                        if pose_filter is not None:
                            groups = split_coefficients(crops[k].coefficients[None].double())
                            pose = np.concatenate([groups["angle"][0].numpy(), groups["trans"][0].numpy()])
                            pose = np.asarray(pose_filter(pose), dtype=np.float64)
                            cam = eg3d_camera_label(torch.from_numpy(pose[None, :3]),
                                                    torch.from_numpy(pose[None, 3:]))[0]
                        last = (coeff, cam)
                        if reference is None:
                            reference = (coeff, cam)
                        shown.append(crops[k].crop)
                    coeff_list.append(coeff)
                    cam_list.append(cam)
                    found.append(k is not None)
                coeffs, cams = torch.stack(coeff_list), torch.stack(cam_list)
                n = len(chunk)
                if relative and reference is not None:  # before the first face the held values are the source's
                    coeffs = coeffs.clone()
                    coeffs[:, 80:144] = src_coeffs[80:144] + coeffs[:, 80:144] - reference[0][80:144]
                    if mode == "camera":
                        cams = relative_camera(src_camera[None].expand(n, -1), reference[1][None].expand(n, -1), cams)
                if mode == "fixed" or reference is None:
                    cams = src_camera[None].expand(n, -1)
                with self._autocast():
                    out = self.model.reenact(state.expand(n), cams.to(self.device),
                                             driving_coefficients=coeffs.to(self.device))
                images = to_uint8(out.image)
                for i in range(n):
                    yield ReenactedFrame(index + i, images[i], shown[i], found[i])
                index += n
                bar.update(n)
        finally:
            bar.close()
            batches.close()  # type: ignore[attr-defined]  # stops a prefetching thread, closes the video
        if index and reference is None:
            raise NoFaceError(f"no face found in any of the {index} driving frames; use a driving video that shows "
                              "one clearly visible face")
        if missing:
            logger.warning("no usable face in %d of %d driving frames; their expression and pose were held from "
                           "the last good frame", missing, index)
