"""face_alignment's 2-D landmarks (``LandmarksType.TWO_D``): the SFD detector + 2D-FAN (``2DFAN4``).

OTAvatar's AKD landmarks (``theEricMa/OTAvatar_processing``, ``LmkDet/extract_kp_videos.py``; GOHA follows
OTAvatar's protocol) are ``face_alignment.FaceAlignment(LandmarksType.TWO_D).get_landmarks_from_image(frame)[0]``:
the 68 points of the *first* face the detector returns (the highest-scored one after NMS; a frame without a face
gives ``None``). :class:`FaceAlignment2D` re-implements that call (face_alignment 1.4.1, ``api.py``):

* detector: :class:`avatar.face.s3fd.S3FD` (``detector.``), on the RGB image at its own size;
* landmarks: the FAN of :mod:`avatar.face.fan3d` (``fan.``; 4 stacked hourglasses, 68 heatmaps of 64x64), the
  network of the TorchScript archive ``2DFAN4-cd938726ad.zip`` (face_alignment's default for PyTorch >= 1.7),
  whose tensors :func:`avatar.hub.formats.read_torchscript_archive` reads without running its code;
* per box (float64 row, as SFD gives it): :func:`~avatar.face.fan3d.crop_params_from_box` with the SFD reference
  scale 195 and a float64 centre (``torch.tensor`` of NumPy float64 values), the 256 crop
  (:func:`~avatar.face.fan3d.crop_face`), RGB / 255, the FAN, :func:`~avatar.face.fan3d.decode_heatmaps`
  (arg-max, quarter-pixel step, minus 0.5) and :func:`~avatar.face.fan3d.heatmap_to_image` (inverse crop in
  float64, truncated to integers): ``(68, 2)`` float32 image pixels holding integers.

Differences: a box whose crop lies wholly outside the image (random weights give such boxes; a trained detector
hardly) gets a black crop here, where upstream's ``crop`` raises ``ValueError``; no face gives ``(0, 68, 2)``
where upstream returns ``None``. Not reproduced: ``flip_input`` (off by default and in OTAvatar) and the
half-precision ``dtype`` option. ``scripts/compare_official_face_alignment.py`` checks detections, crops,
heatmaps and landmarks against face_alignment 1.4.1 (identical on CPU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar.configuration import Config
from avatar.hub.weights import strip_key_prefixes
from avatar.modeling import ModelMixin

from ._detect_utils import as_uint8_rgb
from .fan3d import FAN, FANConfig, crop_face, crop_params_from_box, decode_heatmaps, heatmap_to_image
from .s3fd import FILE_KEY as DETECTOR_FILE_KEY
from .s3fd import S3FD, S3FDConfig

__all__ = ["FaceAlignment2D", "FaceAlignment2DConfig", "official_state"]

MODEL_ID = "face-alignment-2dfan"
"""Registered model id (the 2DFAN4 archive is its checkpoint, the SFD weights its second file)."""


@dataclass(frozen=True)
class FaceAlignment2DConfig(Config):
    """The two networks; defaults are face_alignment's SFD and ``2DFAN4``."""

    detector: S3FDConfig = field(default_factory=S3FDConfig)
    fan: FANConfig = field(default_factory=FANConfig)

    @classmethod
    def tiny(cls) -> FaceAlignment2DConfig:
        return cls(detector=S3FDConfig.tiny(), fan=FANConfig.tiny())


def official_state(fan_state: Mapping[str, Tensor], detector_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The 2DFAN4 archive's tensors (as :func:`read_torchscript_archive` names them) and the SFD state dict as one
    state dict of :class:`FaceAlignment2D` (keys ``fan.*``, ``detector.*``; a ``module.`` prefix is dropped)."""
    return {
        **{f"fan.{k}": v for k, v in strip_key_prefixes(fan_state, ("module.",)).items()},
        **{f"detector.{k}": v for k, v in strip_key_prefixes(detector_state, ("module.",)).items()},
    }


class FaceAlignment2D(ModelMixin):
    """face_alignment's ``LandmarksType.TWO_D`` pipeline (see the module docstring): ``detector`` (S3FD) and
    ``fan`` (2DFAN4).

    Loading: ``FaceAlignment2D.from_pretrained()`` (model id ``face-alignment-2dfan``: the files ``fan2d-landmarks``
    and ``s3fd`` through the asset cache; ``local_dir=DIR`` takes ``2DFAN4-cd938726ad.zip`` and
    ``s3fd-619a316812.pth`` from DIR, e.g. torch's hub cache ``~/.cache/torch/hub/checkpoints``),
    :meth:`from_official` with :func:`official_state`, ``FaceAlignment2D.tiny(seed)``.
    """

    config_class = FaceAlignment2DConfig
    default_model_id = MODEL_ID
    config: FaceAlignment2DConfig

    def __init__(self, config: FaceAlignment2DConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FaceAlignment2DConfig()
        self.detector = S3FD(config.detector)
        self.fan = FAN(config.fan)
        self.eval()

    # ---- weights ------------------------------------------------------------------------------------
    def load_official(self, state: Mapping[str, Tensor]) -> None:
        """Strictly load one state dict with keys ``fan.*`` and ``detector.*`` (:func:`official_state`; a
        ``module.`` prefix after them is dropped)."""
        fan = {k[len("fan."):]: v for k, v in state.items() if k.startswith("fan.")}
        det = {k[len("detector."):]: v for k, v in state.items() if k.startswith("detector.")}
        rest = {k: v for k, v in state.items() if not k.startswith(("fan.", "detector."))}
        self.load_state_dict_strict({**official_state(fan, det), **rest}, what="FaceAlignment2D")

    @classmethod
    def from_registry(cls, spec: Any, *, local_dir: str | Path | None = None, **kwargs: Any) -> FaceAlignment2D:
        """The 2DFAN4 archive (the spec's checkpoint) and the SFD weights, fetched into the cache or taken from
        ``local_dir``."""
        from avatar.hub.weights import read_converted_weights

        state = official_state(read_converted_weights(spec.checkpoint, local_dir),
                               read_converted_weights(DETECTOR_FILE_KEY, local_dir))
        return cls.from_official(state, **kwargs)

    # ---- inference ----------------------------------------------------------------------------------
    def detect_batch(self, images: Sequence[np.ndarray | Tensor], batch_size: int = 8) -> list[np.ndarray]:
        """SFD detections per RGB image: ``(K, 5)`` float64 ``(x1, y1, x2, y2, score)``, first = highest score."""
        return self.detector.detect_batch(images, batch_size=batch_size)

    @torch.inference_mode()
    def landmarks_from_boxes(self, images: Sequence[np.ndarray | Tensor], boxes: Sequence[np.ndarray],
                             batch_size: int = 32) -> list[np.ndarray]:
        """68 points of each box: ``images`` RGB (as :func:`as_uint8_rgb` takes them), ``boxes[i]`` ``(K_i, >=4)``
        -> one ``(K_i, 68, 2)`` float32 array per image (image pixels, integer values, as upstream). Crops run
        through the FAN in batches of ``batch_size``."""
        device = self.fan.conv1.weight.device
        size = self.fan.config.input_size
        reference = self.detector.config.reference_scale
        crops, params, counts = [], [], []
        for image, image_boxes in zip(images, boxes, strict=True):
            rgb = as_uint8_rgb(image)
            counts.append(len(image_boxes))
            for box in image_boxes:
                center, scale = crop_params_from_box(box, reference, dtype=torch.float64)
                crop = crop_face(rgb, center, scale, resolution=size)
                crops.append(torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))))
                params.append((center, scale))
        n = self.fan.config.num_landmarks
        points = np.zeros((len(crops), n, 2), dtype=np.float32)
        for start in range(0, len(crops), batch_size):
            x = torch.stack(crops[start:start + batch_size]).to(device).float().div(255.0)
            heatmaps = self.fan(x).float().cpu()
            decoded, _ = decode_heatmaps(heatmaps)
            for j in range(heatmaps.shape[0]):
                center, scale = params[start + j]
                points[start + j] = heatmap_to_image(decoded[j], center, scale, resolution=heatmaps.shape[-1])
        out, start = [], 0
        for count in counts:
            out.append(points[start:start + count])
            start += count
        return out

    def forward(self, image: np.ndarray | Tensor) -> np.ndarray:
        """``get_landmarks_from_image``: one RGB image -> ``(K, 68, 2)`` float32, one row per detected face in
        the detector's order (``K = 0``: no face, where upstream returns ``None``)."""
        return self.landmarks_from_boxes([image], self.detect_batch([image]))[0]

    def first_face(self, images: Sequence[np.ndarray | Tensor], batch_size: int = 8) -> tuple[Tensor, Tensor]:
        """OTAvatar's ``get_landmarks_from_image(frame)[0]`` for a list of RGB images: ``points (B, 68, 2)``
        float64 (NaN where no face) and ``found (B,)`` bool."""
        detections = self.detect_batch(images, batch_size=batch_size)
        n = self.fan.config.num_landmarks
        points = torch.full((len(images), n, 2), float("nan"), dtype=torch.float64)
        found = torch.tensor([len(d) > 0 for d in detections], dtype=torch.bool)
        hits = [i for i, d in enumerate(detections) if len(d)]
        if hits:
            firsts = self.landmarks_from_boxes([images[i] for i in hits], [detections[i][:1] for i in hits])
            for i, p in zip(hits, firsts, strict=True):
                points[i] = torch.from_numpy(p[0].astype(np.float64))
        return points, found
