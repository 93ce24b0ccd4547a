"""Portrait4D pipeline: photo -> avatar; avatar + driving video -> reenacted frames; avatar + cameras -> views.

:class:`Portrait4DPipeline` bundles the reconstructor (:class:`~avatar.models.portrait4d.Portrait4D`) with the
official preprocessing networks (:class:`~avatar.pipelines.preprocess.FacePreprocessor`). It owns no weights of
its own. Per photo, :meth:`Portrait4DPipeline.create_avatar` returns an :class:`Avatar` (the cached source
encoding, the FLAME shape, the crop and the source motion) that can be saved, loaded and reused.

Driving a video (:meth:`Portrait4DPipeline.iter_reenact`): every frame is preprocessed (batched), its PD-FGC
motion and FLAME head pose are taken either **relative** to the first driving frame with a face
(``motion_src + motion_t - motion_0``; neck rotation ``R_t R_0^T R_src``; jaw and expression as differences:
the default, it keeps the source's own expression and pose as the starting point) or **absolute**; then
rendered in batches. Head pose (``head_pose=``):

* ``'neck'`` (upstream default ``use_neck=True``): the fixed inference camera and the driving neck rotation
  applied through the FLAME deformation field;
* ``'camera'`` (upstream ``use_neck=False``): the driving frame's camera label (the head rotation moves the
  camera) and the neck rotation set to zero;
* ``'fixed'``: the fixed inference camera, no head rotation (expression only).

A reconstructor without FLAME deformer buffers (e.g. the tiny random one) cannot apply a neck rotation; then
``'neck'`` falls back to ``'camera'`` with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from avatar.errors import ConfigError, FaceTooSmallError, InputError, ModelNotFoundError, NoFaceError
from avatar.face.bfm2flame import BFM2FLAMEMapper
from avatar.face.deep3d import Deep3DReconNet
from avatar.face.fan3d import FAN3DLandmarker
from avatar.face.geometry import AlignParams, FlameLabel, camera_label_from_pose
from avatar.face.h3r import H3R, H3RLandmarker
from avatar.face.mediapipe_face import MediaPipeFaceBackend
from avatar.face.retinaface import DetectedFace, RetinaFace, rig_for_random_weights
from avatar.face.smoothing import POSE_FILTER, OneEuroFilter
from avatar.io.image import load_image
from avatar.io.video import VideoReader
from avatar.modeling import ModelMixin
from avatar.models.portrait4d import AvatarState, HeadPose, Portrait4D, Portrait4DConfig
from avatar.motion.pdfgc import PDFGCEncoder
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
from avatar.pipelines.frames import side_by_side, to_uint8
from avatar.pipelines.prefetch import in_background
from avatar.pipelines.preprocess import (
    ALIGNED_FACE_BOX,
    CropSmoother,
    FaceAnalysis,
    FacePreprocessor,
    crop_to_model_input,
)
from avatar.pipelines.relative import relative_flame_labels, relative_motion
from avatar.pipelines.results import ReenactedFrame, ReenactResult, ReenactStream
from avatar.render.camera import inference_label

__all__ = ["Avatar", "HeadPoseMode", "Portrait4DPipeline", "ReenactResult", "ReenactStream", "ReenactedFrame",
           "side_by_side", "to_uint8"]

logger = logging.getLogger(__name__)

PIPELINE_FORMAT = "avatar4d-portrait4d-pipeline"
AVATAR_FORMAT = "avatar4d-avatar"
RANDOM_WEIGHTS_WARNING = ("this pipeline has random weights (made by `avatar tiny` for tests): its pictures are "
                          "meaningless; use a real model id such as portrait4d-v2 for real results")

# component name -> network class: each is saved with its own save_pretrained into a sub-folder
_COMPONENTS: dict[str, type[ModelMixin]] = {
    "detector": RetinaFace,
    "landmarker": H3R,
    "landmarker_3d": FAN3DLandmarker,
    "face_recon": Deep3DReconNet,
    "bfm2flame": BFM2FLAMEMapper,
    "motion_encoder": PDFGCEncoder,
}


# ----------------------------------------------------------------------------------------------------------
# the avatar


@dataclass
class Avatar:
    """One source photo, encoded: reusable across any number of driving frames, cameras and videos.

    Attributes:
        state: the reconstructor's cached source encoding.
        source_crop: ``(512, 512, 3)`` uint8 aligned crop of the photo.
        source_motion: ``(1, D)`` PD-FGC motion of the photo (zeros for the static model).
        source_label: ``(1, 437)`` FLAME label of the photo (camera, shape, expression, pose, eye pose).
        align: the crop in the original photo (``None`` when the photo was given aligned).
    """

    state: AvatarState
    source_crop: np.ndarray
    source_motion: Tensor
    source_label: Tensor
    align: AlignParams | None = None

    @property
    def flame(self) -> FlameLabel:
        return FlameLabel.from_label(self.source_label)

    def save(self, path: str | Path) -> Path:
        """Write one ``.safetensors`` file (moved into place when complete)."""
        tensors = {f"state.{k}": v.detach().cpu().clone() for k, v in self.state.tensors().items()}
        tensors["source_crop"] = torch.tensor(np.ascontiguousarray(self.source_crop, dtype=np.uint8)).contiguous()
        tensors["source_motion"] = self.source_motion.detach().float().cpu().clone()
        tensors["source_label"] = self.source_label.detach().float().cpu().clone()
        meta = {"format": AVATAR_FORMAT, "token_hw": json.dumps(list(self.state.token_hw)),
                "align": json.dumps(self.align.to_array().tolist() if self.align else None)}
        return save_tensors_atomically(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Avatar:
        path = Path(path)
        tensors, meta = read_saved_tensors(path, device)
        if meta.get("format") != AVATAR_FORMAT:
            raise InputError(f"{path} is not a saved avatar (format {meta.get('format')!r})")
        state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
        h, w = json.loads(meta["token_hw"])
        align = json.loads(meta.get("align") or "null")
        return cls(AvatarState(token_hw=(h, w), **state), tensors["source_crop"].cpu().numpy(),
                   tensors["source_motion"], tensors["source_label"],
                   AlignParams.from_array(align) if align is not None else None)


# ----------------------------------------------------------------------------------------------------------
# the pipeline


class Portrait4DPipeline(AvatarPipeline):
    """Photo -> 4D avatar -> reenacted or novel-view frames (see the module docstring); the first
    :class:`~avatar.pipelines.base.AvatarPipeline`.

    Args:
        reconstructor: the Portrait4D (v1, v2 or static) reconstructor.
        preprocessor: the preprocessing networks.
        random_init: the weights are random (tiny test pipeline); a warning is logged when it is used.
    """

    family = "portrait4d"
    pipeline_format = PIPELINE_FORMAT
    preprocess_backends = ("official", "mediapipe")
    """``'official'`` (default): the preprocessing the checkpoints were trained on. ``'mediapipe'``: MediaPipe
    finds the face and its five alignment points (no RetinaFace or H3R weights needed); the FLAME label and
    PD-FGC motion still come from the official networks, on a crop that differs from the official one by a few
    pixels."""

    def __init__(self, reconstructor: Portrait4D, preprocessor: FacePreprocessor, random_init: bool = False) -> None:
        self.reconstructor = reconstructor.eval()
        self.preprocessor = preprocessor
        self.random_init = random_init or bool(getattr(reconstructor, "is_random_init", False))
        if self.random_init:
            logger.warning(RANDOM_WEIGHTS_WARNING)
        if not reconstructor.config.is_static:
            enc = preprocessor.motion_encoder
            if enc is None:
                raise ConfigError("a dynamic reconstructor needs the PD-FGC motion encoder")
            if enc.config.motion_dim != reconstructor.config.encoders.motion_dim:
                raise ConfigError(f"the motion encoder gives {enc.config.motion_dim}-d motions but the reconstructor "
                                 f"expects {reconstructor.config.encoders.motion_dim}")

    # ---- construction ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.reconstructor.w_avg.device

    @property
    def can_reenact(self) -> bool:
        return not self.reconstructor.config.is_static

    @property
    def preprocess(self) -> str:
        return self.preprocessor.backend

    @property
    def output_resolution(self) -> int:
        return self.reconstructor.config.img_resolution

    def to(self, device: torch.device | str) -> Portrait4DPipeline:
        self.reconstructor.to(device)
        self.preprocessor.to(device)
        return self

    def enable_fast_inference(self, dtype: torch.dtype | None = torch.bfloat16) -> Portrait4DPipeline:
        """Run the reconstructor's networks under autocast ``dtype`` (``None``: float32); preprocessing stays
        float32."""
        self.reconstructor.enable_fast_inference(dtype)
        return self

    def compile_head_pose_field(self, mode: str | None = None) -> Portrait4DPipeline:
        """``torch.compile`` the FLAME head-pose field's closest-triangle search where the Triton search does not
        run (no-op without a deformer, and on CUDA, where the default search is already one Triton kernel).

        Measured: on an H200 at batch 32 the compiled PyTorch search took the field from 10 to 0.9 ms per frame
        after about 16 s of compilation; the Triton search (the default on CUDA since) takes 0.4 ms per frame at
        batch 16 on an H100 with no compilation (``python -m avatar.bench pipeline``).
        """
        from avatar.render.fused import fused_available

        deformer = self.reconstructor.deformer.flame_deform
        if deformer is not None and not fused_available(self.device):
            deformer.compile_search(mode)
        return self

    @classmethod
    def tiny(cls, seed: int = 0, preprocess: str | None = None) -> Portrait4DPipeline:
        """A complete pipeline of tiny random networks (64x64 reconstructor) for tests and offline work.

        Pictures are meaningless. With the official backend the random detector is biased to report face-sized
        boxes (one anchor size everywhere) so that every stage runs on any photo; with ``preprocess='mediapipe'``
        faces are found and cropped for real (MediaPipe's own weights) and a photo without a face is refused.
        """
        return cls.random("tiny", seed, preprocess=preprocess)

    @classmethod
    def random(cls, size: Literal["tiny", "official"] = "tiny", seed: int = 0,
               head_pose_field: bool = False, preprocess: str | None = None) -> Portrait4DPipeline:
        """A complete pipeline of random networks: ``'tiny'`` configs (tests) or the ``'official'`` architectures
        (speed benchmarks: the work per frame does not depend on the weight values).

        Pictures are meaningless. The detector's heads are set so that every anchor of one size is a face, so
        every stage runs on any image (:func:`~avatar.face.retinaface.rig_for_random_weights`; official size:
        256-pixel faces and at most 5 candidates, as a trained detector has around one face). ``head_pose_field=True`` adds a FLAME head-pose deformer built on a
        synthetic sphere head (:mod:`avatar.flame.synthetic`, 1280 triangles, close to the official simplified
        mesh), so the ``'neck'`` head-pose mode runs as it does with real weights.
        """
        if size not in ("tiny", "official"):
            raise InputError(f"size must be 'tiny' or 'official', got {size!r}")
        backend = cls.check_preprocess(preprocess)
        tiny = size == "tiny"
        torch.manual_seed(seed)
        motion_cfg = PDFGCEncoder.config_class.tiny() if tiny else PDFGCEncoder.config_class()
        p4d_cfg = Portrait4DConfig.tiny() if tiny else Portrait4DConfig()
        p4d_cfg = replace(p4d_cfg, encoders=replace(p4d_cfg.encoders, motion_dim=motion_cfg.motion_dim))
        if tiny:
            reconstructor = Portrait4D.tiny(seed, encoders=p4d_cfg.encoders)
        else:
            reconstructor = Portrait4D(p4d_cfg).eval()
            with torch.no_grad():  # a non-trivial density, so the renderer does realistic work
                reconstructor.decoder.out_sigma.weight.normal_(0, 0.3)
        if head_pose_field:
            from avatar.flame.deformation import build_deformer_buffers
            from avatar.flame.synthetic import synthetic_flame_assets

            reconstructor.set_deformer_buffers(build_deformer_buffers(**synthetic_flame_assets(seed, subdivisions=3)))
        def build(net: type[ModelMixin]) -> Any:  # tiny or official-size random network, in eval mode
            return (net.tiny(seed) if tiny else net(net.config_class())).eval()

        detector: RetinaFace | MediaPipeFaceBackend
        landmarker: H3RLandmarker | None = None
        if backend == "mediapipe":
            detector = MediaPipeFaceBackend()
        else:
            detector = build(RetinaFace)
            # tiny: every 64 px anchor of the middle level is a face; official: 256 px faces, 5 candidates at most
            rig_for_random_weights(detector, 1, 0) if tiny else rig_for_random_weights(detector, 2, 0, top_k=5)
            landmarker = H3RLandmarker(build(H3R))
        pre = FacePreprocessor(
            detector, landmarker, build(FAN3DLandmarker), build(Deep3DReconNet),
            build(BFM2FLAMEMapper), PDFGCEncoder(motion_cfg).eval(),
        )
        return cls(reconstructor, pre, random_init=True)

    @classmethod
    def from_pretrained(cls, model_id_or_dir: str | Path = "portrait4d-v2", device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None, preprocess: str | None = None,
                        local_dir: str | Path | None = None) -> Portrait4DPipeline:
        """Load a pipeline folder (:meth:`save_pretrained`, ``avatar tiny``), or a model id / reconstructor folder
        plus the official preprocessing networks from the cache (``avatar download`` fetches them).

        Args:
            model_id_or_dir: ``portrait4d-v2`` (default), ``portrait4d-v1``, ``portrait4d-static``, a pipeline
                folder, or a reconstructor folder (``Portrait4D.save_pretrained`` / ``avatar convert``).
            device: where to run.
            dtype: ``torch.bfloat16`` / ``torch.float16`` run the reconstructor under autocast.
            preprocess: ``'official'`` or ``'mediapipe'`` (:attr:`preprocess_backends`); ``None``: the folder's own,
                else ``'official'``. With ``'mediapipe'`` RetinaFace and H3R are not loaded.
            local_dir: take the upstream files from this folder instead of the network.
        """
        if preprocess is not None:
            cls.check_preprocess(preprocess)
        path = Path(model_id_or_dir)
        if path.is_dir() and (path / PIPELINE_FILE).is_file():
            pipe = cls._load_folder(path, preprocess)
        else:
            reconstructor = Portrait4D.from_pretrained(model_id_or_dir, local_dir=local_dir)
            pre = FacePreprocessor.from_pretrained(cls.check_preprocess(preprocess),
                                                   motion=not reconstructor.config.is_static,
                                                   local_dir=local_dir)
            pipe = cls(reconstructor, pre)
        pipe.to(device)
        if dtype is not None and dtype != torch.float32:
            pipe.enable_fast_inference(dtype)
        return pipe

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write the whole pipeline into one folder (moved into place when complete) that
        :meth:`from_pretrained` loads back: ``pipeline.json`` and one folder per network (``reconstructor/``,
        ``detector/``, ...), each written by that network's ``save_pretrained``."""
        def fill(tmp: Path) -> dict[str, Any]:
            self.reconstructor.save_pretrained(tmp / "reconstructor")
            components = {"reconstructor": _class_path(type(self.reconstructor))}
            for name, module in self.preprocessor.modules().items():
                if module is not None:
                    module.save_pretrained(tmp / name)
                    components[name] = _class_path(type(module))
            return {"format": PIPELINE_FORMAT, "version": 2, "pipeline_class": _class_path(type(self)),
                    "random_init": self.random_init, "components": components, "preprocess": self.preprocess,
                    "min_face_size": self.preprocessor.min_face_size}

        return write_pipeline_folder(save_directory, fill)

    @classmethod
    def _load_folder(cls, folder: Path, preprocess: str | None = None) -> Portrait4DPipeline:
        meta = json.loads((folder / PIPELINE_FILE).read_text())
        if meta.get("format") != PIPELINE_FORMAT:
            raise ModelNotFoundError(f"{folder / PIPELINE_FILE} is not a Portrait4D pipeline description")
        saved_with = meta.get("preprocess", "official")
        backend = cls.check_preprocess(preprocess or saved_with)
        reconstructor = Portrait4D.from_pretrained(folder / "reconstructor")
        modules: dict[str, Any] = {}
        for name, net_cls in _COMPONENTS.items():
            sub = folder / name
            skip = backend == "mediapipe" and name in ("detector", "landmarker")
            modules[name] = net_cls.from_pretrained(sub) if sub.is_dir() and not skip else None
        optional = {"motion_encoder"} | ({"detector", "landmarker"} if backend == "mediapipe" else set())
        missing = [n for n, m in modules.items() if m is None and n not in optional]
        if missing:
            hint = (f"it was saved with the {saved_with} preprocessing; load it with preprocess={saved_with!r}"
                    if saved_with != backend else "save the pipeline again")
            raise ModelNotFoundError(f"{folder} lacks the networks {missing}; {hint}")
        detector = MediaPipeFaceBackend() if backend == "mediapipe" else modules["detector"]
        landmarker = None if backend == "mediapipe" else H3RLandmarker(modules["landmarker"])
        pre = FacePreprocessor(detector, landmarker, modules["landmarker_3d"],
                               modules["face_recon"], modules["bfm2flame"], modules["motion_encoder"],
                               min_face_size=float(meta.get("min_face_size", 40.0)))
        if meta.get("random_init"):
            reconstructor.is_random_init = True
        return cls(reconstructor, pre, random_init=bool(meta.get("random_init")))

    def load_avatar(self, path: str | Path) -> Avatar:
        """An avatar written by :meth:`Avatar.save`, on this pipeline's device."""
        avatar = Avatar.load(path, device=self.device)
        self._check_avatar(avatar)
        return avatar

    # ---- source ----------------------------------------------------------------------------------------
    def _motion_or_zeros(self, analyses: list[FaceAnalysis]) -> Tensor:
        motion = self.preprocessor.motion(analyses)
        if motion is None:
            return torch.zeros(len(analyses), self.reconstructor.config.encoders.motion_dim)
        return motion

    def analyze_photo(self, photo: PhotoLike, aligned: bool = False) -> FaceAnalysis:
        """Detect the largest face of a photo and run the official preprocessing on it.

        Raises:
            NoFaceError: no face found. FaceTooSmallError: the largest face is smaller than ``min_face_size``.
            ImageReadError: the photo cannot be read.
        """
        image = load_image(photo)
        name = str(photo) if isinstance(photo, str | Path) else "the photo"
        if aligned:
            if image.shape[:2] != (512, 512):
                raise InputError(f"{name} is {image.shape[1]}x{image.shape[0]}, but --aligned needs the 512x512 "
                                 "Portrait4D crop; drop --aligned to detect and crop the face")
            if self.preprocess == "official":  # H3R on the known face box of an aligned crop, as upstream
                box = np.array(ALIGNED_FACE_BOX, dtype=np.float32)
                return self.preprocessor.analyze([image], [DetectedFace(box, 1.0, np.zeros((5, 2), np.float32))],
                                                 aligned=True)[0]
        faces = self.preprocessor.detect([image])[0]
        if not faces:
            raise NoFaceError(f"no face found in {name}; use a photo with one clearly visible, roughly frontal face")
        if len(faces) > 1:
            logger.warning("%d faces found in %s; using the largest", len(faces), name)
        if faces[0].size < self.preprocessor.min_face_size:
            raise FaceTooSmallError(
                f"the face in {name} is only {faces[0].size:.0f} pixels across; use a photo where it is at least "
                f"{self.preprocessor.min_face_size:.0f} pixels (closer or higher resolution)")
        return self.preprocessor.analyze([image], [faces[0]], aligned=aligned)[0]

    @torch.no_grad()
    def create_avatar(self, photo: PhotoLike, aligned: bool = False) -> Avatar:
        """Build an avatar from one photo (path, PIL image or ``(H, W, 3)`` array).

        Args:
            aligned: the photo is already a 512x512 Portrait4D crop (skip detection and cropping).
        """
        analysis = self.analyze_photo(photo, aligned=aligned)
        motion = self._motion_or_zeros([analysis]).to(self.device)
        r = self.reconstructor.config.img_resolution
        x = crop_to_model_input(analysis.crop[None], r, self.device)
        label = analysis.label[None].to(self.device)
        state = self.reconstructor.encode(x, motion, FlameLabel.from_label(label).shape.float())
        return Avatar(state, analysis.crop, motion.cpu(), label.cpu(), analysis.align)

    def _check_avatar(self, avatar: Avatar) -> None:
        dim = self.reconstructor.config.encoders.motion_dim
        if avatar.source_motion.shape[-1] != dim:
            raise InputError(f"this avatar was made by a model with {avatar.source_motion.shape[-1]}-d motions, "
                             f"not by this one ({dim}-d); create it again with this model")

    # ---- novel views -----------------------------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, avatar: Avatar, cameras: Tensor, batch_size: int = 8,
                     progress: bool = False) -> np.ndarray:
        """The avatar with its own expression seen from ``cameras`` ``(N, 25)`` -> ``(N, r, r, 3)`` uint8."""
        self._check_avatar(avatar)
        if cameras.ndim != 2 or cameras.shape[1] != 25:
            raise ValueError(f"cameras must be (N, 25) labels, got {tuple(cameras.shape)}")
        state = avatar.state.to(self.device)
        frames = []
        for i in tqdm(range(0, cameras.shape[0], batch_size), disable=not progress, unit="batch", desc="render"):
            cam = cameras[i:i + batch_size].to(self.device)
            motion = avatar.source_motion.to(self.device).expand(cam.shape[0], -1)
            frames.append(to_uint8(self.reconstructor.render(state, motion, cam)["image"]))
        return np.concatenate(frames)

    # ---- reenactment -----------------------------------------------------------------------------------
    def _resolve_pose_mode(self, mode: HeadPoseMode) -> HeadPoseMode:
        """The head-pose mode this call can use (logged once per call when it differs from the one asked for)."""
        if mode not in ("neck", "camera", "fixed"):
            raise InputError(f"head_pose must be 'neck', 'camera' or 'fixed', got {mode!r}")
        if mode == "neck" and not self.reconstructor.deformer.available:
            logger.warning("this reconstructor has no FLAME deformer buffers, so the neck cannot rotate; "
                           "the head rotation moves the camera instead (head_pose='camera')")
            return "camera"
        return mode

    def _drive(self, avatar: Avatar, motion: Tensor, labels: Tensor, mode: HeadPoseMode) -> dict[str, Tensor]:
        """Render ``N`` frames from motions ``(N, D)`` and FLAME labels ``(N, 437)``."""
        n = motion.shape[0]
        fl = FlameLabel.from_label(labels.to(self.device))
        deform = self.reconstructor.deformer.available
        pose = fl.pose.clone()
        if mode == "camera":
            camera = camera_label_from_pose(fl.pose)
            pose[:, :3] = 0
        else:
            camera = inference_label(n, device=self.device)
            if mode == "fixed":
                pose[:, :3] = 0
        head = HeadPose(pose=pose, expression=fl.expression, eye_pose=fl.eye_pose) if deform else None
        state = avatar.state.to(self.device)
        return self.reconstructor.render(state, motion.to(self.device), camera, head)

    def iter_reenact(
        self,
        avatar: Avatar,
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
        """Drive the avatar with a video (path, or an iterable of ``(H, W, 3)`` uint8 frames).

        Returns a :class:`~avatar.pipelines.results.ReenactStream`: iterate it for the frames; its
        ``frames_without_face``, ``frames_done``, ``head_pose`` and ``fps`` belong to this call alone.

        Args:
            relative: apply the driving motion and pose as changes from the first driving frame with a face
                (default); ``False`` uses them as they are (absolute).
            head_pose: ``'neck'``, ``'camera'`` or ``'fixed'`` (module docstring).
            smooth: one-euro smoothing of the driving crops and head poses (against jitter).
            batch_size: driving frames preprocessed and rendered together.
            max_frames: stop after this many driving frames.
            progress: show a progress bar.
            prefetch: decode and preprocess the next batch in a background thread while this one renders. The
                frames are the same either way. Off by default: on an H200 the thread competes with the
                rendering for Python's GIL and the whole was slower (``python -m avatar.bench pipeline``); with
                slow preprocessing and a fast renderer it can help.

        Driving frames without a usable face hold the last good motion (the source's own before the first
        one); their count is logged at the end and their indices are in the stream's ``frames_without_face``.
        A video in which no frame has a face raises :class:`~avatar.errors.NoFaceError` once the stream ends (its
        frames have been yielded by then: a writer inside a ``with`` block discards its partial file).
        """
        self._check_avatar(avatar)
        mode = self._resolve_pose_mode(head_pose)
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

    @torch.no_grad()
    def _reenact_frames(self, avatar: Avatar, reader: Iterable[np.ndarray], total: int | None, *, relative: bool,
                        mode: HeadPoseMode, smooth: bool, batch_size: int, max_frames: int | None, progress: bool,
                        prefetch: bool) -> Iterator[ReenactedFrame]:
        crop_smoother = CropSmoother() if smooth else None
        pose_filter = OneEuroFilter.from_params(POSE_FILTER) if smooth else None
        src_motion, src_label = avatar.source_motion.float(), avatar.source_label.float()
        ref: tuple[Tensor, Tensor] | None = None
        last = (src_motion[0], src_label[0])
        missing = 0
        index = 0
        bar = tqdm(total=total, disable=not progress, unit="frame", desc="reenact")
        batches = self._preprocess_batches(reader, batch_size, max_frames, crop_smoother)
        if prefetch:
            batches = in_background(batches)
        try:
            for chunk, good, analyses, motions in batches:
                by_frame = {i: k for k, i in enumerate(good)}
                m_list, l_list, crops, found = [], [], [], []
                for i, frame in enumerate(chunk):
                    k = by_frame.get(i)
                    if k is None:
                        missing += 1
                        m, lab = last
                        crops.append(np.asarray(Image.fromarray(frame).resize((512, 512), Image.BILINEAR)))
                    else:
                        assert motions is not None
                        m, lab = motions[k], analyses[k].label.float().clone()
                        if pose_filter is not None:
                            lab[425:431] = torch.as_tensor(pose_filter(lab[425:431].numpy().astype(np.float64)),
                                                           dtype=torch.float32)
                        last = (m, lab)
                        crops.append(analyses[k].crop)
                        if ref is None:
                            ref = (m, lab)
                    m_list.append(m)
                    l_list.append(lab)
                    found.append(k is not None)
                motion, labels = torch.stack(m_list), torch.stack(l_list)
                if relative and ref is not None:  # before the first face the held values are the source's own
                    motion = relative_motion(motion, ref[0], src_motion)
                    labels = relative_flame_labels(labels, ref[1], src_label)
                images = to_uint8(self._drive(avatar, motion, labels, mode)["image"])
                for i in range(len(chunk)):
                    yield ReenactedFrame(index + i, images[i], crops[i], found[i])
                index += len(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
            batches.close()  # type: ignore[attr-defined]  # stops a prefetching thread, closes the video
        if index and ref is None:
            raise NoFaceError(f"no face found in any of the {index} driving frames; use a driving video that shows "
                              "one clearly visible face")
        if missing:
            logger.warning("no usable face in %d of %d driving frames; their motion was held from the last good "
                           "frame", missing, index)

    def _preprocess_batches(self, frames: Iterable[np.ndarray], batch_size: int, max_frames: int | None,
                            crop_smoother: CropSmoother | None,
                            ) -> Iterator[tuple[list[np.ndarray], list[int], list[FaceAnalysis], Tensor | None]]:
        """Driving frames in batches -> ``(frames, indices with a usable face, their analyses, their motions)``."""
        for chunk, good, analyses in self.preprocessor.analyze_batches(frames, batch_size, max_frames, crop_smoother):
            motions = self._motion_or_zeros(analyses).cpu() if analyses else None
            yield chunk, good, analyses, motions


_class_path = class_path
