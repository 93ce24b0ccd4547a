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

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from avatar.face.bfm2flame import BFM2FLAMEMapper, MapperConfig
from avatar.face.deep3d import Deep3DConfig, Deep3DReconNet
from avatar.face.fan3d import DepthConfig, FAN3DLandmarker, FANConfig
from avatar.face.geometry import AlignParams, FlameLabel, camera_label_from_pose, matrix_to_axis_angle
from avatar.face.h3r import H3R, H3RConfig, H3RLandmarker
from avatar.face.retinaface import RetinaFace, RetinaFaceConfig, rig_for_random_weights
from avatar.face.smoothing import POSE_FILTER, OneEuroFilter
from avatar.flame.lbs import batch_rodrigues
from avatar.io.errors import FaceTooSmallError, InputError, NoFaceError
from avatar.io.image import load_image
from avatar.io.video import VideoReader
from avatar.models.portrait4d import AvatarState, HeadPose, Portrait4D, tiny_portrait4d
from avatar.models.portrait4d_config import Portrait4DConfig
from avatar.motion.pdfgc import PDFGCConfig, PDFGCEncoder
from avatar.pipelines.preprocess import (
    ALIGNED_FACE_BOX,
    CropSmoother,
    FaceAnalysis,
    FacePreprocessor,
    crop_to_model_input,
)
from avatar.render.camera import inference_label, orbit_labels

__all__ = ["Avatar", "HeadPoseMode", "Portrait4DPipeline", "ReenactResult", "ReenactedFrame", "side_by_side",
           "to_uint8"]

logger = logging.getLogger(__name__)

HeadPoseMode = Literal["neck", "camera", "fixed"]
PIPELINE_FILE = "pipeline.json"
PIPELINE_FORMAT = "avatar4d-portrait4d-pipeline"
AVATAR_FORMAT = "avatar4d-avatar"
RANDOM_WEIGHTS_WARNING = ("this pipeline has random weights (made by `avatar tiny` for tests): its pictures are "
                          "meaningless; use a real model id such as portrait4d-v2 for real results")

# component name -> (network class, config class); the reconstructor is saved with its own save_pretrained
_COMPONENTS: dict[str, tuple[type[nn.Module], tuple[type, ...]]] = {
    "detector": (RetinaFace, (RetinaFaceConfig,)),
    "landmarker": (H3R, (H3RConfig,)),
    "landmarker_3d": (FAN3DLandmarker, (FANConfig, DepthConfig)),
    "face_recon": (Deep3DReconNet, (Deep3DConfig,)),
    "bfm2flame": (BFM2FLAMEMapper, (MapperConfig,)),
    "motion_encoder": (PDFGCEncoder, (PDFGCConfig,)),
}


# ----------------------------------------------------------------------------------------------------------
# small helpers


def to_uint8(images: Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` in ``[-1, 1]`` -> ``(N, H, W, 3)`` uint8 (the official ``x * 127.5 + 128``, clamped)."""
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def side_by_side(*panels: np.ndarray) -> np.ndarray:
    """Concatenate ``(H, W, 3)`` uint8 images left to right, each resized to the height of the last one's size.

    The usual order is ``side_by_side(source, result, driving)``; panels are resized (Lanczos) to the size of
    ``panels[1]`` when there are several, else kept.
    """
    ref = panels[1] if len(panels) > 1 else panels[0]
    h, w = ref.shape[:2]
    out = [p if p.shape[:2] == (h, w) else np.asarray(Image.fromarray(p).resize((w, h), Image.LANCZOS))
           for p in panels]
    return np.concatenate(out, axis=1)


def _to_tuples(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_to_tuples(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_tuples(v) for k, v in x.items()}
    return x


def _config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; the pipeline folder is from another version")
    return cls(**{k: _to_tuples(v) for k, v in values.items()})


def _rotation_relative(neck_t: Tensor, neck_0: Tensor, neck_src: Tensor) -> Tensor:
    """Axis-angle ``(N, 3)`` of ``R_t R_0^T R_src``: the driving rotation change applied to the source pose."""
    r = batch_rodrigues(neck_t.float()) @ batch_rodrigues(neck_0.float()).transpose(1, 2) @ batch_rodrigues(
        neck_src.float())
    return matrix_to_axis_angle(r.double()).float()


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
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f"state.{k}": v.detach().cpu().clone() for k, v in self.state.tensors().items()}
        tensors["source_crop"] = torch.tensor(np.ascontiguousarray(self.source_crop, dtype=np.uint8)).contiguous()
        tensors["source_motion"] = self.source_motion.detach().float().cpu().clone()
        tensors["source_label"] = self.source_label.detach().float().cpu().clone()
        meta = {"format": AVATAR_FORMAT, "token_hw": json.dumps(list(self.state.token_hw)),
                "align": json.dumps(self.align.to_array().tolist() if self.align else None)}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Avatar:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path} does not exist; save an avatar first with create_avatar(...).save(path)")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise InputError(f"{path} is not a saved avatar ({exc})") from None
        if meta.get("format") != AVATAR_FORMAT:
            raise InputError(f"{path} is not a saved avatar (format {meta.get('format')!r})")
        state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
        h, w = json.loads(meta["token_hw"])
        align = json.loads(meta.get("align") or "null")
        return cls(AvatarState(token_hw=(h, w), **state), tensors["source_crop"].cpu().numpy(),
                   tensors["source_motion"], tensors["source_label"],
                   AlignParams.from_array(align) if align is not None else None)


@dataclass
class ReenactedFrame:
    """One output frame of :meth:`Portrait4DPipeline.iter_reenact`.

    Attributes:
        index: driving frame index.
        image: ``(r, r, 3)`` uint8 rendered frame (``r`` = the reconstructor's resolution, 512 officially).
        driving: ``(512, 512, 3)`` uint8 aligned crop of the driving frame (the raw frame, resized, without a face).
        face_found: whether the driving frame had a usable face (otherwise the last good motion was held).
    """

    index: int
    image: np.ndarray
    driving: np.ndarray
    face_found: bool


@dataclass
class ReenactResult:
    """All frames of :meth:`Portrait4DPipeline.reenact`.

    Attributes:
        frames: ``(N, r, r, 3)`` uint8.
        driving: ``(N, 512, 512, 3)`` uint8 driving crops.
        fps: the driving video's frame rate.
        frames_without_face: indices of driving frames whose motion was held from the last good one.
    """

    frames: np.ndarray
    driving: np.ndarray
    fps: Fraction
    frames_without_face: list[int]


# ----------------------------------------------------------------------------------------------------------
# the pipeline


class Portrait4DPipeline:
    """Photo -> 4D avatar -> reenacted or novel-view frames (see the module docstring).

    Args:
        reconstructor: the Portrait4D (v1, v2 or static) reconstructor.
        preprocessor: the preprocessing networks.
        random_init: the weights are random (tiny test pipeline); a warning is logged when it is used.
    """

    def __init__(self, reconstructor: Portrait4D, preprocessor: FacePreprocessor, random_init: bool = False) -> None:
        self.reconstructor = reconstructor.eval()
        self.preprocessor = preprocessor
        self.random_init = random_init or bool(getattr(reconstructor, "is_random_init", False))
        self._warned_neck = False
        if self.random_init:
            logger.warning(RANDOM_WEIGHTS_WARNING)
        if not reconstructor.config.is_static:
            enc = preprocessor.motion_encoder
            if enc is None:
                raise ValueError("a dynamic reconstructor needs the PD-FGC motion encoder")
            if enc.config.motion_dim != reconstructor.config.encoders.motion_dim:
                raise ValueError(f"the motion encoder gives {enc.config.motion_dim}-d motions but the reconstructor "
                                 f"expects {reconstructor.config.encoders.motion_dim}")

    # ---- construction ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.reconstructor.w_avg.device

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
        """``torch.compile`` the FLAME head-pose field's closest-triangle search (no-op without a deformer).

        Measured on an H200 at batch 32 (``python -m avatar.bench pipeline --compile-field``): the field takes
        0.9 instead of 10 ms per frame (max difference 1.3e-5), after about 16 s of compilation; each new batch
        shape compiles once.
        """
        deformer = self.reconstructor.deformer.flame_deform
        if deformer is not None:
            deformer.compile_search(mode)
        return self

    @classmethod
    def tiny(cls, seed: int = 0) -> Portrait4DPipeline:
        """A complete pipeline of tiny random networks (64x64 reconstructor) for tests and offline work.

        Pictures are meaningless. The random detector is biased to report face-sized boxes (one anchor
        size everywhere) so that every stage runs on any photo.
        """
        return cls.random("tiny", seed)

    @classmethod
    def random(cls, size: Literal["tiny", "official"] = "tiny", seed: int = 0,
               head_pose_field: bool = False) -> Portrait4DPipeline:
        """A complete pipeline of random networks: ``'tiny'`` configs (tests) or the ``'official'`` architectures
        (speed benchmarks: the work per frame does not depend on the weight values).

        Pictures are meaningless. The detector's heads are set so that every anchor of one size is a face, so
        every stage runs on any image (:func:`~avatar.face.retinaface.rig_for_random_weights`; official size:
        256-pixel faces and at most 5 candidates, as a trained detector has around one face). ``head_pose_field=True`` adds a FLAME head-pose deformer built on a
        synthetic sphere head (:mod:`avatar.flame.synthetic`, 1280 triangles, close to the official simplified
        mesh), so the ``'neck'`` head-pose mode runs as it does with real weights.
        """
        if size not in ("tiny", "official"):
            raise ValueError(f"size must be 'tiny' or 'official', got {size!r}")
        tiny = size == "tiny"
        torch.manual_seed(seed)
        motion_cfg = PDFGCConfig.tiny() if tiny else PDFGCConfig()
        p4d_cfg = Portrait4DConfig.tiny() if tiny else Portrait4DConfig()
        p4d_cfg = replace(p4d_cfg, encoders=replace(p4d_cfg.encoders, motion_dim=motion_cfg.motion_dim))
        if tiny:
            reconstructor = tiny_portrait4d(seed, encoders=p4d_cfg.encoders)
        else:
            reconstructor = Portrait4D(p4d_cfg).eval()
            with torch.no_grad():  # a non-trivial density, so the renderer does realistic work
                reconstructor.decoder.out_sigma.weight.normal_(0, 0.3)
        if head_pose_field:
            from avatar.flame.deformation import build_deformer_buffers
            from avatar.flame.synthetic import synthetic_flame_assets

            reconstructor.set_deformer_buffers(build_deformer_buffers(**synthetic_flame_assets(seed, subdivisions=3)))
        detector = RetinaFace.tiny(seed) if tiny else RetinaFace(RetinaFaceConfig())
        # tiny: every 64 px anchor of the middle level is a face; official: 256 px faces, 5 candidates at most
        rig_for_random_weights(detector, 1, 0) if tiny else rig_for_random_weights(detector, 2, 0, top_k=5)
        pre = FacePreprocessor(
            detector.eval(), H3RLandmarker((H3R.tiny(seed) if tiny else H3R(H3RConfig())).eval()),
            FAN3DLandmarker(*((FANConfig.tiny(), DepthConfig.tiny()) if tiny else (FANConfig(), DepthConfig()))).eval(),
            Deep3DReconNet(Deep3DConfig.tiny() if tiny else Deep3DConfig()).eval(),
            BFM2FLAMEMapper(MapperConfig.tiny() if tiny else MapperConfig()).eval(),
            PDFGCEncoder(motion_cfg).eval(),
        )
        return cls(reconstructor, pre, random_init=True)

    @classmethod
    def from_pretrained(cls, model_id_or_dir: str | Path = "portrait4d-v2", device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None) -> Portrait4DPipeline:
        """Load a pipeline folder (:meth:`save_pretrained`, ``avatar tiny``), or a model id / reconstructor folder
        plus the official preprocessing networks from the cache (``avatar download`` fetches them).

        Args:
            model_id_or_dir: ``portrait4d-v2`` (default), ``portrait4d-v1``, ``portrait4d-static``, a pipeline
                folder, or a reconstructor folder (``Portrait4D.save_pretrained`` / ``avatar convert``).
            device: where to run.
            dtype: ``torch.bfloat16`` / ``torch.float16`` run the reconstructor under autocast.
        """
        path = Path(model_id_or_dir)
        if path.is_dir() and (path / PIPELINE_FILE).is_file():
            pipe = cls._load_folder(path)
        else:
            reconstructor = Portrait4D.from_pretrained(model_id_or_dir)
            motion = None if reconstructor.config.is_static else PDFGCEncoder.from_pretrained()
            pre = FacePreprocessor(
                RetinaFace.from_pretrained(), H3RLandmarker.from_pretrained(), FAN3DLandmarker.from_pretrained(),
                Deep3DReconNet.from_pretrained(), BFM2FLAMEMapper.from_pretrained(), motion,
            )
            pipe = cls(reconstructor, pre)
        pipe.to(device)
        if dtype is not None and dtype != torch.float32:
            pipe.enable_fast_inference(dtype)
        return pipe

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write the whole pipeline into one folder (moved into place when complete) that
        :meth:`from_pretrained` loads back: ``pipeline.json``, ``reconstructor/`` and one folder per network
        (``config.json`` + ``model.safetensors``)."""
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            self.reconstructor.save_pretrained(tmp / "reconstructor")
            components = {}
            for name, module in self.preprocessor.modules().items():
                if module is None:
                    continue
                folder = tmp / name
                folder.mkdir()
                configs = ([module.fan.config, module.depth.config] if isinstance(module, FAN3DLandmarker)
                           else [module.config])
                assert all(is_dataclass(c) for c in configs)
                (folder / "config.json").write_text(json.dumps([asdict(c) for c in configs], indent=2))
                state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
                save_file(state, str(folder / "model.safetensors"))
                components[name] = type(module).__name__
            meta = {"format": PIPELINE_FORMAT, "version": 1, "random_init": self.random_init,
                    "components": components, "min_face_size": self.preprocessor.min_face_size}
            (tmp / PIPELINE_FILE).write_text(json.dumps(meta, indent=2))
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    @classmethod
    def _load_folder(cls, folder: Path) -> Portrait4DPipeline:
        from safetensors.torch import load_file

        meta = json.loads((folder / PIPELINE_FILE).read_text())
        if meta.get("format") != PIPELINE_FORMAT:
            raise ValueError(f"{folder / PIPELINE_FILE} is not a Portrait4D pipeline description")
        reconstructor = Portrait4D.from_pretrained(folder / "reconstructor")
        modules: dict[str, nn.Module | None] = {}
        for name, (net_cls, cfg_classes) in _COMPONENTS.items():
            sub = folder / name
            if not sub.is_dir():
                modules[name] = None
                continue
            configs = [_config_from_dict(c, v) for c, v in
                       zip(cfg_classes, json.loads((sub / "config.json").read_text()), strict=True)]
            module = net_cls(*configs)
            module.load_state_dict(load_file(str(sub / "model.safetensors")), strict=True)
            modules[name] = module.eval()
        missing = [n for n, m in modules.items() if m is None and n != "motion_encoder"]
        if missing:
            raise FileNotFoundError(f"{folder} lacks the networks {missing}; save the pipeline again")
        pre = FacePreprocessor(modules["detector"], H3RLandmarker(modules["landmarker"]),  # type: ignore[arg-type]
                               modules["landmarker_3d"], modules["face_recon"], modules["bfm2flame"],  # type: ignore[arg-type]
                               modules["motion_encoder"], min_face_size=float(meta.get("min_face_size", 40.0)))  # type: ignore[arg-type]
        if meta.get("random_init"):
            reconstructor.is_random_init = True
        return cls(reconstructor, pre, random_init=bool(meta.get("random_init")))

    # ---- source ----------------------------------------------------------------------------------------
    def _motion_or_zeros(self, analyses: list[FaceAnalysis]) -> Tensor:
        motion = self.preprocessor.motion(analyses)
        if motion is None:
            return torch.zeros(len(analyses), self.reconstructor.config.encoders.motion_dim)
        return motion

    def analyze_photo(self, photo: str | Path | np.ndarray | Image.Image, aligned: bool = False) -> FaceAnalysis:
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
            return self.preprocessor.analyze([image], [np.array(ALIGNED_FACE_BOX)], aligned=True)[0]
        faces = self.preprocessor.detect([image])[0]
        if not faces:
            raise NoFaceError(f"no face found in {name}; use a photo with one clearly visible, roughly frontal face")
        if len(faces) > 1:
            logger.warning("%d faces found in %s; using the largest", len(faces), name)
        if faces[0].size < self.preprocessor.min_face_size:
            raise FaceTooSmallError(
                f"the face in {name} is only {faces[0].size:.0f} pixels across; use a photo where it is at least "
                f"{self.preprocessor.min_face_size:.0f} pixels (closer or higher resolution)")
        return self.preprocessor.analyze([image], [faces[0].box])[0]

    @torch.no_grad()
    def create_avatar(self, photo: str | Path | np.ndarray | Image.Image, aligned: bool = False) -> Avatar:
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

    def render_orbit(self, avatar: Avatar, num_frames: int = 60, batch_size: int = 8,
                     progress: bool = False) -> np.ndarray:
        """A closed camera orbit around the avatar (:func:`avatar.render.camera.orbit_labels`)."""
        return self.render_views(avatar, orbit_labels(num_frames), batch_size, progress)

    # ---- reenactment -----------------------------------------------------------------------------------
    def _resolve_pose_mode(self, mode: HeadPoseMode) -> HeadPoseMode:
        if mode not in ("neck", "camera", "fixed"):
            raise ValueError(f"head_pose must be 'neck', 'camera' or 'fixed', got {mode!r}")
        if mode == "neck" and not self.reconstructor.deformer.available:
            if not self._warned_neck:
                logger.warning("this reconstructor has no FLAME deformer buffers, so the neck cannot rotate; "
                               "the head rotation moves the camera instead (head_pose='camera')")
                self._warned_neck = True
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

    @torch.no_grad()
    def iter_reenact(
        self,
        avatar: Avatar,
        video: str | Path | Iterable[np.ndarray],
        *,
        relative: bool = True,
        head_pose: HeadPoseMode = "neck",
        smooth: bool = True,
        batch_size: int = 8,
        max_frames: int | None = None,
        progress: bool = False,
        prefetch: bool = False,
    ) -> Iterator[ReenactedFrame]:
        """Drive the avatar with a video (path, or an iterable of ``(H, W, 3)`` uint8 frames); yields frames.

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
        one); their count is logged at the end and their indices are in :attr:`last_frames_without_face`.
        """
        self._check_avatar(avatar)
        mode = self._resolve_pose_mode(head_pose)
        if isinstance(video, str | Path):
            reader: Iterable[np.ndarray] = VideoReader(video, max_frames=max_frames)
            total = len(reader)  # type: ignore[arg-type]
        else:
            reader, total = video, None
        crop_smoother = CropSmoother() if smooth else None
        pose_filter = OneEuroFilter.from_params(POSE_FILTER) if smooth else None
        src_motion, src_label = avatar.source_motion.float(), avatar.source_label.float()
        ref: tuple[Tensor, Tensor] | None = None
        last = (src_motion[0], src_label[0])
        missing: list[int] = []
        self.last_frames_without_face = missing
        index = 0
        bar = tqdm(total=total, disable=not progress, unit="frame", desc="reenact")
        batches = self._preprocess_batches(reader, batch_size, max_frames, crop_smoother)
        if prefetch:
            batches = _in_background(batches)
        try:
            for chunk, good, analyses, motions in batches:
                by_frame = {i: k for k, i in enumerate(good)}
                m_list, l_list, crops, found = [], [], [], []
                for i, frame in enumerate(chunk):
                    k = by_frame.get(i)
                    if k is None:
                        missing.append(index + i)
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
                if relative:
                    motion, labels = self._relative(motion, labels, ref, src_motion, src_label)
                images = to_uint8(self._drive(avatar, motion, labels, mode)["image"])
                for i in range(len(chunk)):
                    yield ReenactedFrame(index + i, images[i], crops[i], found[i])
                index += len(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
            batches.close()  # type: ignore[attr-defined]  # stops a prefetching thread, closes the video
        if missing:
            logger.warning("no usable face in %d of %d driving frames; their motion was held from the last good "
                           "frame", len(missing), index)

    def _preprocess_batches(self, frames: Iterable[np.ndarray], batch_size: int, max_frames: int | None,
                            crop_smoother: CropSmoother | None,
                            ) -> Iterator[tuple[list[np.ndarray], list[int], list[FaceAnalysis], Tensor | None]]:
        """Driving frames in batches -> ``(frames, indices with a usable face, their analyses, their motions)``."""
        for chunk in _batched(frames, batch_size, max_frames):
            faces = self.preprocessor.detect(chunk)
            good = [i for i, f in enumerate(faces) if f and f[0].size >= self.preprocessor.min_face_size]
            analyses = self.preprocessor.analyze([chunk[i] for i in good], [faces[i][0].box for i in good],
                                                 crop_smoother)
            motions = self._motion_or_zeros(analyses).cpu() if analyses else None
            yield chunk, good, analyses, motions

    @staticmethod
    def _relative(motion: Tensor, labels: Tensor, ref: tuple[Tensor, Tensor] | None, src_motion: Tensor,
                  src_label: Tensor) -> tuple[Tensor, Tensor]:
        """Motion and pose changes from ``ref`` (first good driving frame) applied to the source."""
        if ref is None:  # no face yet: the held values are the source's own
            return motion, labels
        m0, l0 = ref
        n = motion.shape[0]
        out_motion = src_motion + (motion - m0)
        out = labels.clone()
        src = src_label.expand(n, -1)
        ref_l = l0[None].expand(n, -1)
        out[:, 425:428] = _rotation_relative(labels[:, 425:428], ref_l[:, 425:428], src[:, 425:428])
        for sl in (slice(325, 425), slice(428, 431), slice(431, 437)):  # expression, jaw, eyes
            out[:, sl] = src[:, sl] + labels[:, sl] - ref_l[:, sl]
        out[:, 25:325] = src[:, 25:325]
        return out_motion, out

    def reenact(self, avatar: Avatar, video: str | Path | Iterable[np.ndarray], **kwargs: Any) -> ReenactResult:
        """All frames of :meth:`iter_reenact` at once (memory: ``N`` frames); same keyword arguments."""
        fps = VideoReader(video).fps if isinstance(video, str | Path) else Fraction(25)
        frames, driving = [], []
        for f in self.iter_reenact(avatar, video, **kwargs):
            frames.append(f.image)
            driving.append(f.driving)
        return ReenactResult(np.stack(frames), np.stack(driving), fps, list(self.last_frames_without_face))


def _batched(frames: Iterable[np.ndarray], size: int, limit: int | None) -> Iterator[list[np.ndarray]]:
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    chunk: list[np.ndarray] = []
    for n, frame in enumerate(frames):
        if limit is not None and n >= limit:
            break
        chunk.append(np.ascontiguousarray(frame))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk





def _in_background(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run a generator in a daemon thread, ``depth`` items ahead; its exceptions are raised here, in order.
    Closing the returned generator stops the thread after its current item."""
    import queue
    import threading

    buffer: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            with torch.no_grad():  # grad mode is per thread
                for item in items:
                    while not stop.is_set():
                        try:
                            buffer.put(("item", item), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            buffer.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            buffer.put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="avatar-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                buffer.get(timeout=0.1)
