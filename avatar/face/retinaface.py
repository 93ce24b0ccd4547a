"""RetinaFace (ResNet-50) face detector of the official Portrait4D preprocessing, in plain PyTorch.

The network carries the official parameter names (``body.*`` = torchvision ResNet-50 up to ``layer4``,
``fpn.*``, ``ssh1-3.*``, ``ClassHead/BboxHead/LandmarkHead.{0,1,2}.conv1x1.*``), so the upstream
``Resnet50_Final.pth`` loads strictly once its ``module.`` prefix is removed (:func:`official_key_map`).

Detection follows the official ``faceDetector`` (``data_preprocess/lib/models/fd/fd.py``) and its config
(``data_preprocess/configs/pipeline_config1.yaml``):

1. resize the image with OpenCV bilinear so that its height becomes 640 (same factor on both axes);
2. BGR order, subtract the per-channel mean (104, 117, 123), no scaling to [0, 1];
3. run the network; class scores are a softmax, the face score is channel 1;
4. decode boxes (and the 5 landmarks) from the anchors with variances (0.1, 0.2), scale to the input image;
5. keep scores > 0.8, sort by score, greedy NMS at IoU 0.4 with the "+1 pixel" box convention; no top-k.

Boxes of exactly equal score are visited in anchor order by the NMS here; upstream's order for ties is
whatever numpy's unstable ``argsort`` gives. Otherwise the detections are bit-identical to upstream's on CPU.

The official pipeline then keeps the box with the largest ``((x2 - x1) + (y2 - y1)) / 2``
(``face_detect_ldmk_pipeline.py``); :meth:`RetinaFace.detect` returns the faces sorted that way, largest first.

Shapes: network input ``(N, 3, H, W)`` float (BGR minus mean); outputs ``loc (N, A, 4)``,
``scores (N, A, 2)`` (softmax) and ``landmarks (N, A, 10)``, with ``A = sum_l 2 * ceil(H / s_l) * ceil(W / s_l)``
for strides ``s_l = 8, 16, 32``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.hub.weights import strip_key_prefixes
from avatar.modeling import ModelMixin

from ._detect_utils import Bottleneck, as_uint8_rgb, nms_plus_one

__all__ = [
    "FPN",
    "SSH",
    "DetectedFace",
    "ResNetBody",
    "RetinaFace",
    "RetinaFaceConfig",
    "decode_boxes",
    "decode_landmarks",
    "official_key_map",
    "prior_boxes",
]

HUB_FILE_KEY = "retinaface-r50"
"""The registered model id (and upstream file key) of the official detector."""


# --------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class RetinaFaceConfig(Config):
    """Sizes and detection constants. The defaults are the official ResNet-50 model and its settings.

    Attributes:
        base_width: ResNet stem width; the four stages have ``base_width * (1, 2, 4, 8)`` bottleneck planes
            and 4x as many output channels (64 -> 256/512/1024/2048 for ResNet-50).
        blocks: bottlenecks per ResNet stage.
        out_channels: FPN / SSH / head width.
        leaky: negative slope of the FPN and SSH activations; ``None`` applies the official rule
            (0.1 when ``out_channels <= 64``, else 0, i.e. a ReLU).
        min_sizes: anchor sizes (pixels of the resized image) for the three levels.
        steps: strides of the three levels.
        variances: box/landmark decoding variances (centre, size).
        clip: clamp the priors to [0, 1] (official: ``False``).
        target_height: the image is resized so that its height is this many pixels.
        mean_bgr: subtracted from the BGR pixel values (0..255).
        confidence_threshold: keep scores strictly above this.
        nms_threshold: IoU above which a lower-scoring box is suppressed.
        top_k: keep at most this many boxes (by score) before NMS; ``None`` as in the official code.
    """

    base_width: int = 64
    blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    out_channels: int = 256
    leaky: float | None = None
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variances: tuple[float, float] = (0.1, 0.2)
    clip: bool = False
    target_height: int = 640
    mean_bgr: tuple[float, float, float] = (104.0, 117.0, 123.0)
    confidence_threshold: float = 0.8
    nms_threshold: float = 0.4
    top_k: int | None = None

    @classmethod
    def resnet50(cls) -> RetinaFaceConfig:
        """The official detector (``Resnet50_Final.pth``)."""
        return cls()

    @classmethod
    def tiny(cls) -> RetinaFaceConfig:
        """A few-thousand-parameter model with the same code path, for tests (random weights)."""
        return cls(base_width=8, blocks=(1, 1, 1, 1), out_channels=16, leaky=0.0, target_height=64)

    @property
    def anchors_per_cell(self) -> int:
        return len(self.min_sizes[0])

    @property
    def stage_channels(self) -> tuple[int, int, int]:
        """Output channels of ResNet stages 2, 3, 4 (the FPN inputs)."""
        c = self.base_width * Bottleneck.expansion
        return (2 * c, 4 * c, 8 * c)

    @property
    def activation_slope(self) -> float:
        if self.leaky is not None:
            return float(self.leaky)
        return 0.1 if self.out_channels <= 64 else 0.0


# --------------------------------------------------------------------------------------------------------
# network


class ResNetBody(nn.Module):
    """torchvision-style ResNet (bottlenecks) without ``avgpool``/``fc``; returns stages 2, 3 and 4.

    ``(N, 3, H, W) -> [(N, 8w, H/8, W/8), (N, 16w, H/16, W/16), (N, 32w, H/32, W/32)]`` (ceil), ``w = base_width``.
    """

    def __init__(self, base_width: int = 64, blocks: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = base_width
        for index, (n, stride) in enumerate(zip(blocks, (1, 2, 2, 2), strict=True)):
            planes = base_width * 2**index
            self.add_module(f"layer{index + 1}", Bottleneck.make_layer(channels, planes, n, stride))
            channels = planes * Bottleneck.expansion

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        c2 = self.layer2(x)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c2, c3, c4]


def _conv_bn(in_ch: int, out_ch: int, kernel: int, slope: float | None) -> nn.Sequential:
    """Conv (no bias) + BN, then a LeakyReLU unless ``slope`` is ``None``. Keys ``0.weight``, ``1.*``."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(out_ch)]
    if slope is not None:
        layers.append(nn.LeakyReLU(negative_slope=slope, inplace=True))
    return nn.Sequential(*layers)


class FPN(nn.Module):
    """Three 1x1 lateral convs; top-down nearest upsampling + add + 3x3 merge conv on the two finer levels."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, slope: float) -> None:
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out_channels, 1, slope)
        self.output2 = _conv_bn(in_channels[1], out_channels, 1, slope)
        self.output3 = _conv_bn(in_channels[2], out_channels, 1, slope)
        self.merge1 = _conv_bn(out_channels, out_channels, 3, slope)
        self.merge2 = _conv_bn(out_channels, out_channels, 3, slope)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        p1, p2, p3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        return [p1, p2, p3]


class SSH(nn.Module):
    """Context module: a 3x3 branch (C/2) and 5x5- and 7x7-equivalent stacks of 3x3 convs (C/4 each),
    concatenated, then ReLU. Keeps ``(N, C, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, slope: float) -> None:
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"SSH needs out_channels divisible by 4, got {out_channels}")
        quarter = out_channels // 4
        self.conv3X3 = _conv_bn(in_channels, out_channels // 2, 3, None)
        self.conv5X5_1 = _conv_bn(in_channels, quarter, 3, slope)
        self.conv5X5_2 = _conv_bn(quarter, quarter, 3, None)
        self.conv7X7_2 = _conv_bn(quarter, quarter, 3, slope)
        self.conv7x7_3 = _conv_bn(quarter, quarter, 3, None)  # lower-case x: the official name

    def forward(self, x: Tensor) -> Tensor:
        branch3 = self.conv3X3(x)
        mid = self.conv5X5_1(x)
        branch5 = self.conv5X5_2(mid)
        branch7 = self.conv7x7_3(self.conv7X7_2(mid))
        return F.relu(torch.cat([branch3, branch5, branch7], dim=1))


class _Head(nn.Module):
    """1x1 conv predicting ``values`` numbers per anchor; ``(N, C, H, W) -> (N, H * W * anchors, values)``."""

    def __init__(self, in_channels: int, anchors: int, values: int) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_channels, anchors * values, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1x1(x).permute(0, 2, 3, 1)
        return y.reshape(y.shape[0], -1, self.values)


# --------------------------------------------------------------------------------------------------------
# anchors and decoding


def prior_boxes(
    height: int,
    width: int,
    min_sizes: Sequence[Sequence[int]] = ((16, 32), (64, 128), (256, 512)),
    steps: Sequence[int] = (8, 16, 32),
    clip: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """Anchors of an ``height x width`` network input as ``(A, 4)`` ``(cx, cy, w, h)``, normalised by the
    input size. Order: level, then row, then column, then anchor size (the order of the head outputs)."""
    out = []
    for sizes, step in zip(min_sizes, steps, strict=True):
        rows, cols = -(-height // step), -(-width // step)
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * step / height
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * step / width
        gy, gx = torch.meshgrid(cy, cx, indexing="ij")
        per_size = [
            torch.stack([gx, gy, torch.full_like(gx, s / width), torch.full_like(gy, s / height)], dim=-1)
            for s in sizes
        ]
        out.append(torch.stack(per_size, dim=2).reshape(-1, 4))
    priors = torch.cat(out).float()
    if clip:
        priors = priors.clamp(0.0, 1.0)
    return priors.to(device) if device is not None else priors


def decode_boxes(loc: Tensor, priors: Tensor, variances: Sequence[float] = (0.1, 0.2)) -> Tensor:
    """Box regressions ``(..., A, 4)`` -> corners ``(..., A, 4)`` ``x1, y1, x2, y2`` in prior units.

    Centre = prior centre + ``loc[:2] * v0 * prior size``; size = prior size * ``exp(loc[2:] * v1)``.
    """
    centre = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    top_left = centre - size / 2
    return torch.cat([top_left, top_left + size], dim=-1)


def decode_landmarks(pred: Tensor, priors: Tensor, variances: Sequence[float] = (0.1, 0.2)) -> Tensor:
    """Landmark regressions ``(..., A, 10)`` -> points ``(..., A, 5, 2)`` in prior units:
    prior centre + ``pred * v0 * prior size``."""
    offsets = pred.reshape(*pred.shape[:-1], 5, 2)
    return priors[..., None, :2] + offsets * variances[0] * priors[..., None, 2:]


# --------------------------------------------------------------------------------------------------------
# detector


def rig_for_random_weights(detector: RetinaFace, level: int, anchor: int, top_k: int | None = None) -> RetinaFace:
    """Set a random-weight detector's heads so that every anchor of one size is a face (in place; returns it).

    For tests and speed benchmarks with random networks: the class and box heads are zeroed, so each anchor of
    ``level`` and size slot ``anchor`` (``config.min_sizes[level][anchor]`` pixels of the resized image) gets a face
    score of ``softmax(-4, 4)`` and a box equal to the anchor. ``top_k`` bounds the candidates kept before NMS
    (a trained detector has a handful around one face, not every anchor of a level).
    """
    per_cell = detector.config.anchors_per_cell
    with torch.no_grad():
        for lvl in range(len(detector.config.steps)):
            detector.ClassHead[lvl].conv1x1.weight.zero_()
            detector.BboxHead[lvl].conv1x1.weight.zero_()
            detector.BboxHead[lvl].conv1x1.bias.zero_()
            detector.ClassHead[lvl].conv1x1.bias.copy_(torch.tensor([4.0, -4.0] * per_cell))
        detector.ClassHead[level].conv1x1.bias[2 * anchor:2 * anchor + 2] = torch.tensor([-4.0, 4.0])
    if top_k is not None:
        detector.config = replace(detector.config, top_k=top_k)
    return detector


@dataclass(frozen=True)
class DetectedFace:
    """One detection in input-image pixels.

    Attributes:
        box: ``(4,)`` float32 ``x1, y1, x2, y2``.
        score: face probability.
        landmarks: ``(5, 2)`` float32 ``x, y``: the two eyes, the nose tip and the two mouth corners, in the
            order of the RetinaFace training data (image-left eye first). The MediaPipe backend gives the same
            five points from its mesh (:mod:`avatar.face.mediapipe_face`), or its detector's six keypoints
            ``(6, 2)`` from ``detect_boxes``.
        mesh: ``(478, 3)`` float32 MediaPipe face mesh in image pixels (MediaPipe backend only).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    mesh: np.ndarray | None = None

    @property
    def size(self) -> float:
        """The official size measure: mean of the box width and height."""
        return float(((self.box[2] - self.box[0]) + (self.box[3] - self.box[1])) / 2)


def official_key_map(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Official checkpoint names -> this module's names, as the official ``load_model`` does it: use the
    ``state_dict`` entry when there is one (flattened: keys ``state_dict.*``), then drop a leading
    ``module.`` (``DataParallel``) from every key."""
    keys = list(state_dict)
    if any(k.startswith("state_dict.") for k in keys):
        state_dict = {k[len("state_dict."):]: v for k, v in state_dict.items() if k.startswith("state_dict.")}
    return strip_key_prefixes(state_dict, ("module.",))


class RetinaFace(ModelMixin):
    """RetinaFace detector; the network and the official pre-/post-processing (:meth:`detect`).

    The module is created in eval mode (BatchNorm uses its running statistics). Loading (:class:`ModelMixin`):
    ``RetinaFace.from_pretrained()`` (the official ``retinaface-r50`` through the asset cache;
    ``local_dir=DIR`` takes ``Resnet50_Final.pth`` from DIR), ``RetinaFace.from_official(path_or_state)``,
    ``RetinaFace.tiny(seed)``.
    """

    config_class = RetinaFaceConfig
    default_model_id = HUB_FILE_KEY
    config: RetinaFaceConfig

    def __init__(self, config: RetinaFaceConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or RetinaFaceConfig()
        slope = config.activation_slope
        width, anchors = config.out_channels, config.anchors_per_cell
        self.body = ResNetBody(config.base_width, config.blocks)
        self.fpn = FPN(config.stage_channels, width, slope)
        self.ssh1 = SSH(width, width, slope)
        self.ssh2 = SSH(width, width, slope)
        self.ssh3 = SSH(width, width, slope)
        self.ClassHead = nn.ModuleList(_Head(width, anchors, 2) for _ in config.steps)
        self.BboxHead = nn.ModuleList(_Head(width, anchors, 4) for _ in config.steps)
        self.LandmarkHead = nn.ModuleList(_Head(width, anchors, 10) for _ in config.steps)
        self._priors: dict[tuple[int, int, str], Tensor] = {}
        self.eval()

    def load_official(self, state: Mapping[str, Any]) -> None:
        """Strictly load an official state dict (``module.`` / ``state_dict.`` prefixes allowed, see
        :func:`official_key_map`; BatchNorm step counters may be absent)."""
        self.load_state_dict_strict(official_key_map(state), what="RetinaFace",
                                    optional_suffixes=("num_batches_tracked",))

    # ----------------------------------------------------------------------------------------------------
    # network

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(N, 3, H, W)`` BGR minus mean -> ``loc (N, A, 4)``, ``scores (N, A, 2)`` (softmax),
        ``landmarks (N, A, 10)``."""
        levels = self.fpn(self.body(x))
        features = [self.ssh1(levels[0]), self.ssh2(levels[1]), self.ssh3(levels[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, features, strict=True)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, features, strict=True)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features, strict=True)], dim=1)
        return loc, F.softmax(logits, dim=-1), landmarks

    def priors(self, height: int, width: int) -> Tensor:
        """Cached :func:`prior_boxes` for an ``height x width`` network input, on the model's device."""
        device = self.body.conv1.weight.device
        key = (height, width, str(device))
        if key not in self._priors:
            c = self.config
            self._priors[key] = prior_boxes(height, width, c.min_sizes, c.steps, c.clip, device=device)
        return self._priors[key]

    # ----------------------------------------------------------------------------------------------------
    # pre- and post-processing

    def resize(self, image: np.ndarray | Tensor) -> tuple[np.ndarray, float]:
        """RGB image -> ``(h, w, 3)`` uint8 resized so that ``h = target_height`` (``w = round(W * factor)``,
        OpenCV bilinear) and the factor ``target_height / H``."""
        rgb = as_uint8_rgb(image)
        ratio = self.config.target_height / rgb.shape[0]
        return cv2.resize(rgb, None, fx=ratio, fy=ratio, interpolation=cv2.INTER_LINEAR), ratio

    def to_network_input(self, resized: np.ndarray | Tensor) -> Tensor:
        """Resized RGB uint8 ``(h, w, 3)`` or ``(B, h, w, 3)`` (array, or tensor on any device) -> ``(B, 3, h, w)``
        float32 BGR minus the official mean, on the tensor's device (exact: the same values as on the CPU)."""
        x = torch.as_tensor(resized)
        if x.ndim == 3:
            x = x[None]
        mean = torch.tensor(self.config.mean_bgr, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return x.permute(0, 3, 1, 2).flip(1).float() - mean

    def preprocess(self, image: np.ndarray | Tensor) -> tuple[Tensor, float]:
        """RGB image -> ``(1, 3, h, w)`` float32 network input (on CPU) and the resize factor
        ``target_height / H`` (``h = target_height``, ``w = round(W * factor)``, OpenCV bilinear)."""
        resized, ratio = self.resize(image)
        return self.to_network_input(np.ascontiguousarray(resized)).contiguous(), ratio

    def postprocess(
        self, loc: Tensor, scores: Tensor, landmarks: Tensor, input_hw: tuple[int, int], ratio: float
    ) -> list[DetectedFace]:
        """One image's raw outputs ``(A, 4)``, ``(A, 2)``, ``(A, 10)`` -> faces, largest first.

        ``input_hw`` is the network input size and ``ratio`` the resize factor of :meth:`preprocess`.
        """
        return self.postprocess_batch(loc[None], scores[None], landmarks[None], input_hw, [ratio])[0]

    def postprocess_batch(
        self, loc: Tensor, scores: Tensor, landmarks: Tensor, input_hw: tuple[int, int], ratios: Sequence[float]
    ) -> list[list[DetectedFace]]:
        """Raw outputs of a batch ``(B, A, 4)``, ``(B, A, 2)``, ``(B, A, 10)`` -> faces per image, largest first.

        The official steps per image: decode, keep scores above the threshold, order by score, ``top_k``,
        NMS with the "+1" convention, then order by size. The candidates of all images are thresholded and
        decoded together on the device and copied to the CPU once.
        """
        c = self.config
        h, w = input_hw
        priors = self.priors(h, w)
        if priors.shape[0] != loc.shape[1]:
            raise ValueError(f"{loc.shape[1]} predictions for {priors.shape[0]} anchors of a {h}x{w} input")
        face_scores = scores[..., 1].float()
        bi, ai = torch.nonzero(face_scores > c.confidence_threshold, as_tuple=True)  # image-major, anchors ascending
        ratio = torch.tensor([float(r) for r in ratios], dtype=torch.float32, device=loc.device)[bi]
        boxes = decode_boxes(loc[bi, ai].float(), priors[ai], c.variances) * priors.new_tensor([w, h, w, h])
        points = decode_landmarks(landmarks[bi, ai].float(), priors[ai], c.variances) * priors.new_tensor([w, h])
        boxes, points = boxes / ratio[:, None], points / ratio[:, None, None]
        bi_np, boxes_np = bi.cpu().numpy(), boxes.cpu().numpy()
        points_np, scores_np = points.cpu().numpy(), face_scores[bi, ai].cpu().numpy()
        starts = np.searchsorted(bi_np, np.arange(loc.shape[0] + 1))
        results: list[list[DetectedFace]] = []
        for i in range(loc.shape[0]):
            sl = slice(starts[i], starts[i + 1])
            b, p, sc = boxes_np[sl], points_np[sl], scores_np[sl]
            order = np.argsort(-sc, kind="stable")
            if c.top_k is not None:
                order = order[: c.top_k]
            keep = order[nms_plus_one(b[order], sc[order], c.nms_threshold).numpy()] if len(order) else order
            sizes = ((b[keep, 2] - b[keep, 0]) + (b[keep, 3] - b[keep, 1])) / 2
            by_size = keep[np.argsort(-sizes, kind="stable")]
            results.append([DetectedFace(b[k], float(sc[k]), p[k]) for k in by_size])
        return results

    @torch.inference_mode()
    def detect_batch(self, images: Sequence[np.ndarray | Tensor]) -> list[list[DetectedFace]]:
        """Detect faces in several RGB images; images whose network inputs have the same size (e.g. video
        frames) run as one batch (resized on the CPU, sent to the device as uint8, post-processed together).
        Returns one list per image, largest face first."""
        resized = [self.resize(im) for im in images]
        device = self.body.conv1.weight.device
        results: list[list[DetectedFace]] = [[] for _ in resized]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, (x, _) in enumerate(resized):
            groups.setdefault(x.shape[:2], []).append(index)
        for hw, indices in groups.items():
            stacked = torch.from_numpy(np.stack([resized[i][0] for i in indices])).to(device, non_blocking=True)
            loc, scores, landmarks = self(self.to_network_input(stacked))
            faces = self.postprocess_batch(loc, scores, landmarks, hw, [resized[i][1] for i in indices])
            for index, found in zip(indices, faces, strict=True):
                results[index] = found
        return results

    def detect(self, image: np.ndarray | Tensor) -> list[DetectedFace]:
        """Detect faces in one RGB image (``(H, W, 3)`` uint8, or a tensor, see :func:`as_uint8_rgb`).

        Returns the faces sorted by the official size measure, largest first (the official pipeline uses
        the first one).
        """
        return self.detect_batch([image])[0]

    def with_thresholds(self, confidence: float | None = None, nms: float | None = None) -> RetinaFace:
        """Change the detection thresholds in place (the network is unchanged); returns ``self``."""
        updates: dict[str, float] = {}
        if confidence is not None:
            updates["confidence_threshold"] = confidence
        if nms is not None:
            updates["nms_threshold"] = nms
        self.config = replace(self.config, **updates)
        return self
