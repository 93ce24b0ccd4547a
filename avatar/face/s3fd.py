"""S3FD: the SFD face detector of the ``face-alignment`` package (its default detector), in plain PyTorch.

OTAvatar's landmark extraction (``theEricMa/OTAvatar_processing``, ``LmkDet/extract_kp_videos.py``), whose AKD
protocol GOHA follows, runs ``face_alignment.FaceAlignment(LandmarksType.TWO_D)``: this detector, then 2D-FAN on
the crop of each box (:mod:`avatar.face.fan2d`). Re-implemented from face_alignment 1.4.1
(``face_alignment/detection/sfd/``: ``net_s3fd.py``, ``detect.py``, ``bbox.py``, ``sfd_detector.py``; 1.3.x gives
the same detections for one image). The official weights, ``s3fd-619a316812.pth`` (a plain state dict, read with
``torch.load(weights_only=True)``), load with ``strict=True`` into :class:`S3FD`: the attribute names are the
official ones.

Network (:class:`S3FD`): VGG-16 (``conv1_1`` ... ``conv5_3``, 2x2 max pooling after each block), ``fc6`` (3x3,
padding 3 and no dilation: its map is 4 pixels wider and taller than its input), ``fc7`` (1x1), two extra blocks
(``conv6_1/2``, ``conv7_1/2``, the second conv of each with stride 2), :class:`L2Norm` on ``conv3_3``, ``conv4_3``
and ``conv5_3`` (learned per-channel scales), and a 3x3 class head and box head on each of the six maps (strides
4, 8, ..., 128). The first class head has four channels: the maximum of the first three is the background logit
("max-out"), the fourth the face logit.

Detection (:meth:`S3FD.detect_batch`) follows ``SFDDetector.detect_from_image`` on one image, at the image's own
size (no resizing):

1. RGB uint8 -> float32, channels reversed to BGR, the mean ``(104, 117, 123)`` subtracted (no scaling);
2. the network, then a softmax over the two class channels of each level;
3. :func:`decode_candidates`: every cell whose face probability is ``> 0.05``, level by level and row-major
   within a level, decoded against its prior ``(stride/2 + x * stride, stride/2 + y * stride, 4 * stride,
   4 * stride)`` with the variances ``(0.1, 0.2)``, in float64 with face_alignment's float32 intermediates;
4. :func:`nms`: greedy, IoU threshold 0.3, boxes counted with the "+1 pixel" convention, visited in the reverse
   of NumPy's default (unstable) ``argsort`` of the scores, exactly as upstream (ties included);
5. boxes with a score ``> 0.5`` are kept, in NMS order (highest score first).

Each detection is a float64 row ``(x1, y1, x2, y2, score)`` in image pixels, like upstream's. The landmark crop
uses :attr:`S3FDConfig.reference_scale` (195, ``SFDDetector.reference_scale``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.hub.weights import strip_key_prefixes
from avatar.modeling import ModelMixin

from ._detect_utils import as_uint8_rgb, greedy_nms_plus_one

__all__ = [
    "L2Norm",
    "S3FD",
    "S3FDConfig",
    "decode_candidates",
    "filter_detections",
    "nms",
    "rig_for_random_weights",
]

FILE_KEY = "s3fd"
"""Registered model id and upstream file key of the official weights (``s3fd-619a316812.pth``)."""

NUM_LEVELS = 6


@dataclass(frozen=True)
class S3FDConfig(Config):
    """Sizes and detection constants; the defaults are face_alignment's network and ``SFDDetector`` settings.

    Attributes:
        vgg_channels: output channels of the five VGG blocks (2, 2, 3, 3 and 3 convolutions).
        fc_channels: ``fc6`` / ``fc7`` channels.
        extra_channels: ``(conv6_1, conv6_2)`` and ``(conv7_1, conv7_2)`` channels.
        l2norm_scales: initial scales of the three :class:`L2Norm` layers (the checkpoint overwrites them).
        mean_bgr: subtracted from the BGR pixel values (0..255).
        score_threshold: a cell is a candidate when its face probability is above this (``get_predictions``).
        nms_threshold: IoU above which a lower-scored box is suppressed.
        filter_threshold: detections kept after NMS score above this (``SFDDetector(filter_threshold=0.5)``).
        variances: box decoding variances (centre, size).
        reference_scale: box size (``width + height``) of a landmark crop of scale 1 (``reference_scale``).
    """

    vgg_channels: tuple[int, int, int, int, int] = (64, 128, 256, 512, 512)
    fc_channels: int = 1024
    extra_channels: tuple[tuple[int, int], tuple[int, int]] = ((256, 512), (128, 256))
    l2norm_scales: tuple[float, float, float] = (10.0, 8.0, 5.0)
    mean_bgr: tuple[float, float, float] = (104.0, 117.0, 123.0)
    score_threshold: float = 0.05
    nms_threshold: float = 0.3
    filter_threshold: float = 0.5
    variances: tuple[float, float] = (0.1, 0.2)
    reference_scale: float = 195.0

    @classmethod
    def tiny(cls) -> S3FDConfig:
        """Same layers, strides and post-processing, a few channels wide."""
        return replace(cls(), vgg_channels=(4, 8, 8, 16, 16), fc_channels=16, extra_channels=((8, 16), (8, 8)))

    @property
    def strides(self) -> tuple[int, ...]:
        """Strides of the six detection levels (4 ... 128); each prior is four strides wide."""
        return tuple(2 ** (level + 2) for level in range(NUM_LEVELS))


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale ``weight``:
    ``x / (||x||_2 over channels + 1e-10) * weight``. ``(B, C, H, W)`` -> same."""

    eps = 1e-10

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, padding=padding)


# VGG-16 layer names per block (face_alignment's net_s3fd names)
_VGG_BLOCKS = (("conv1_1", "conv1_2"), ("conv2_1", "conv2_2"), ("conv3_1", "conv3_2", "conv3_3"),
               ("conv4_1", "conv4_2", "conv4_3"), ("conv5_1", "conv5_2", "conv5_3"))
# the six detection sources, in output order
_SOURCES = ("conv3_3_norm", "conv4_3_norm", "conv5_3_norm", "fc7", "conv6_2", "conv7_2")


def rig_for_random_weights(detector: S3FD, level: int = 3) -> S3FD:
    """Set a random-weight detector's heads so that every cell of ``level`` is a face with its prior as the box
    (in place; returns it): for tests and smoke runs with random networks. All class and box heads are zeroed; the
    face logit of ``level`` is +4 against -4, every other level's -4 against +4. With equal scores, the NMS keeps
    non-overlapping priors in upstream's tie order; the first detection is then deterministic."""
    with torch.no_grad():
        for i, source in enumerate(_SOURCES):
            conf = detector.get_submodule(f"{source}_mbox_conf")
            loc = detector.get_submodule(f"{source}_mbox_loc")
            conf.weight.zero_()
            loc.weight.zero_()
            loc.bias.zero_()
            face = 4.0 if i == level else -4.0
            conf.bias.fill_(-face)
            conf.bias[-1] = face
    return detector


class S3FD(ModelMixin):
    """The SFD detector (see the module docstring). ``forward``: ``(B, 3, H, W)`` float32 BGR minus the mean ->
    six ``(class logits (B, 2, h, w), box offsets (B, 4, h, w))`` pairs, strides 4 ... 128 (the first level's
    class logits already max-out). :meth:`detect` / :meth:`detect_batch` run the official pre- and
    post-processing on RGB images.

    Loading (:class:`~avatar.modeling.ModelMixin`): ``S3FD.from_pretrained()`` (model id ``s3fd``, the official
    ``s3fd-619a316812.pth`` through the asset cache; ``local_dir=DIR`` takes it from DIR),
    ``S3FD.from_official(path_or_state)``, ``S3FD.tiny(seed)``.
    """

    config_class = S3FDConfig
    default_model_id = FILE_KEY
    config: S3FDConfig

    def __init__(self, config: S3FDConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or S3FDConfig()
        cin = 3
        for block, cout in zip(_VGG_BLOCKS, cfg.vgg_channels, strict=True):
            for name in block:
                self.add_module(name, _conv(cin, cout))
                cin = cout
        c3, c4, c5 = cfg.vgg_channels[2:]
        fc = cfg.fc_channels
        (c61, c62), (c71, c72) = cfg.extra_channels
        self.fc6 = _conv(c5, fc, padding=3)
        self.fc7 = _conv(fc, fc, kernel=1, padding=0)
        self.conv6_1 = _conv(fc, c61, kernel=1, padding=0)
        self.conv6_2 = _conv(c61, c62, stride=2)
        self.conv7_1 = _conv(c62, c71, kernel=1, padding=0)
        self.conv7_2 = _conv(c71, c72, stride=2)
        s3, s4, s5 = cfg.l2norm_scales
        self.conv3_3_norm = L2Norm(c3, s3)
        self.conv4_3_norm = L2Norm(c4, s4)
        self.conv5_3_norm = L2Norm(c5, s5)
        for source, channels in zip(_SOURCES, (c3, c4, c5, fc, c62, c72), strict=True):
            classes = 4 if source == "conv3_3_norm" else 2  # 3 background logits (max-out) + face on the first
            self.add_module(f"{source}_mbox_conf", _conv(channels, classes))
            self.add_module(f"{source}_mbox_loc", _conv(channels, 4))
        self.eval()

    def load_official(self, state: Mapping[str, Any]) -> None:
        """Strictly load face_alignment's state dict (a ``module.`` prefix is dropped)."""
        self.load_state_dict_strict(strip_key_prefixes(state, ("module.",)), what="S3FD")

    # ---- network ------------------------------------------------------------------------------------
    def _block(self, names: Sequence[str], x: Tensor) -> Tensor:
        for name in names:
            x = F.relu(self.get_submodule(name)(x))
        return x

    def forward(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        h = F.max_pool2d(self._block(_VGG_BLOCKS[0], x), 2, 2)
        h = F.max_pool2d(self._block(_VGG_BLOCKS[1], h), 2, 2)
        f3 = self._block(_VGG_BLOCKS[2], h)
        f4 = self._block(_VGG_BLOCKS[3], F.max_pool2d(f3, 2, 2))
        f5 = self._block(_VGG_BLOCKS[4], F.max_pool2d(f4, 2, 2))
        f7 = self._block(("fc6", "fc7"), F.max_pool2d(f5, 2, 2))
        f6_2 = self._block(("conv6_1", "conv6_2"), f7)
        f7_2 = self._block(("conv7_1", "conv7_2"), f6_2)
        features = (self.conv3_3_norm(f3), self.conv4_3_norm(f4), self.conv5_3_norm(f5), f7, f6_2, f7_2)
        out: list[tuple[Tensor, Tensor]] = []
        for source, feature in zip(_SOURCES, features, strict=True):
            logits = self.get_submodule(f"{source}_mbox_conf")(feature)
            if logits.shape[1] == 4:  # max-out background
                logits = torch.cat([logits[:, :3].amax(dim=1, keepdim=True), logits[:, 3:]], dim=1)
            out.append((logits, self.get_submodule(f"{source}_mbox_loc")(feature)))
        return out

    # ---- pre- and post-processing -------------------------------------------------------------------
    def to_network_input(self, images: Tensor | np.ndarray) -> Tensor:
        """RGB ``(H, W, 3)`` or ``(B, H, W, 3)`` uint8 (array, or tensor on any device) -> ``(B, 3, H, W)``
        float32 BGR minus the mean, on the tensor's device, contiguous (channels first, as upstream's: a
        channels-last input would run other convolution kernels, with other rounding)."""
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x[None]
        mean = torch.tensor(self.config.mean_bgr, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return (x.permute(0, 3, 1, 2).float().flip(1) - mean).contiguous()

    def face_probabilities(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Network input -> per level ``(face probability (B, h, w), box offsets (B, 4, h, w))``, float32 (the
        softmax over the two class channels, computed where the network ran)."""
        return [(F.softmax(logits.float(), dim=1)[:, 1], loc.float()) for logits, loc in self(x)]

    def postprocess(self, levels: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """One image's per-level ``(face probability (h, w), offsets (4, h, w))`` float32 arrays -> detections
        ``(K, 5)`` float64, highest score first (:func:`decode_candidates`, :func:`nms`, score filter)."""
        c = self.config
        candidates = decode_candidates(levels, c.strides, c.score_threshold, c.variances)
        return filter_detections(candidates, c.nms_threshold, c.filter_threshold)

    @torch.inference_mode()
    def detect_batch(self, images: Sequence[np.ndarray | Tensor], batch_size: int = 8) -> list[np.ndarray]:
        """Detect faces in RGB images (``(H, W, 3)`` uint8, or tensors, see :func:`as_uint8_rgb`) at their own
        size; images of one size run as batches of up to ``batch_size``. One ``(K, 5)`` float64 array ``(x1, y1,
        x2, y2, score)`` per image, in upstream's order (the first is the highest-scored face)."""
        rgb = [as_uint8_rgb(im) for im in images]
        device = self.conv1_1.weight.device
        results: list[np.ndarray] = [np.zeros((0, 5))] * len(rgb)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(rgb):
            groups.setdefault(image.shape[:2], []).append(index)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                stacked = torch.from_numpy(np.stack([rgb[i] for i in chunk])).to(device)
                levels = [(p.cpu().numpy(), loc.cpu().numpy())
                          for p, loc in self.face_probabilities(self.to_network_input(stacked))]
                for row, index in enumerate(chunk):
                    results[index] = self.postprocess([(p[row], loc[row]) for p, loc in levels])
        return results

    def detect(self, image: np.ndarray | Tensor) -> np.ndarray:
        """:meth:`detect_batch` for one image: ``(K, 5)`` float64."""
        return self.detect_batch([image])[0]


def decode_candidates(levels: Sequence[tuple[np.ndarray, np.ndarray]], strides: Sequence[int],
                      score_threshold: float = 0.05, variances: Sequence[float] = (0.1, 0.2)) -> np.ndarray:
    """Candidate boxes of one image, as face_alignment's ``get_predictions``: ``(K, 5)`` float64 rows ``(x1, y1,
    x2, y2, score)``, level by level and row-major within a level.

    Args:
        levels: per level ``(face probability (h, w), offsets (4, h, w))`` float32.
        strides: per level; the prior of cell ``(x, y)`` is centred at ``stride/2 + (x, y) * stride`` and is
            ``4 * stride`` wide and tall.
        score_threshold: cells with a probability above it are candidates.
        variances: centre and size variances of the box encoding.
    """
    rows = []
    v_center, v_size = (float(v) for v in variances)
    for (prob, loc), stride in zip(levels, strides, strict=True):
        prob = np.asarray(prob, dtype=np.float32)
        ys, xs = np.nonzero(prob > score_threshold)
        if not len(ys):
            continue
        side = float(stride * 4)
        priors = np.empty((len(ys), 4), dtype=np.float64)
        priors[:, 0] = stride / 2 + xs * stride
        priors[:, 1] = stride / 2 + ys * stride
        priors[:, 2:] = side
        offsets = np.ascontiguousarray(np.asarray(loc, dtype=np.float32)[:, ys, xs].T)
        # float32 products first, then float64 with the priors (upstream's promotion order)
        centers = priors[:, :2] + offsets[:, :2] * v_center * priors[:, 2:]
        sizes = priors[:, 2:] * np.exp(offsets[:, 2:] * v_size)
        corners = np.concatenate([centers - sizes / 2, np.empty_like(sizes)], axis=1)
        corners[:, 2:] = sizes + corners[:, :2]
        rows.append(np.concatenate([corners, prob[ys, xs].astype(np.float64)[:, None]], axis=1))
    return np.concatenate(rows, axis=0) if rows else np.zeros((0, 5), dtype=np.float64)


def nms(detections: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression of ``(K, >=5)`` rows ``(x1, y1, x2, y2, score, ...)`` as face_alignment's
    ``bbox.nms``: boxes cover ``(x2 - x1 + 1) x (y2 - y1 + 1)`` pixels; they are visited in the reverse of
    ``np.argsort(scores)`` (NumPy's default sort, so ties go as upstream's); a box is dropped when its IoU with a
    kept one is above ``threshold``. Returns the kept row indices ``(M,)`` int64, in visiting order."""
    d = np.asarray(detections, dtype=np.float64)
    if len(d) == 0:
        return np.zeros(0, dtype=np.int64)
    return greedy_nms_plus_one(d[:, :4], np.argsort(d[:, 4])[::-1], threshold)


def filter_detections(candidates: np.ndarray, nms_threshold: float = 0.3,
                      filter_threshold: float = 0.5) -> np.ndarray:
    """``SFDDetector._filter_bboxes``: :func:`nms` over all candidates, then only scores ``> filter_threshold``
    (in NMS order). ``(K, 5)`` -> ``(M, 5)`` float64."""
    kept = candidates[nms(candidates, nms_threshold)] if len(candidates) else candidates.reshape(0, 5)
    return kept[kept[:, 4] > filter_threshold]
