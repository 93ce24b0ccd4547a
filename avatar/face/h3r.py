"""H3R 98-point (WFLW) landmark network of the official Portrait4D preprocessing, in plain PyTorch.

The network is an HRNet-W18 backbone and a binary-heatmap head, with the official parameter names
(``backbone.*``, ``heatmap_head.head.layers.*``; ``data_preprocess/lib/models/ldmk/hrnet.py``), so the
upstream ``hrnet_w18_wflw/h3r/model.pth`` loads strictly as it is (the official code loads it with
``strict=True`` and no prefix handling).

Landmarks of a face (official ``FaceLdmkDetector.ldmk_detect`` + ``ldmkDetector``):

1. the detection box is made square around its centre with side ``sqrt((w + 1) * (h + 1)) * 1.5``
   (1.8 when the box comes from the previous frame's landmarks), see :func:`expand_boxes`;
2. its corners are truncated to integers and the image is cropped, zero-padded outside the image;
3. the crop is resized to 256 x 256 (PIL bilinear), scaled to [0, 1] and normalised with the ImageNet
   mean/std (RGB);
4. the head gives 98 heatmaps at 64 x 64; each point is the softmax(top-9 scores)-weighted mean of the
   top-9 cell indices (x = index mod W, y = index div W), times the stride 4 (:func:`decode_heatmaps`);
5. points are scaled by ``crop size / 256`` and shifted by the crop's top-left corner.

Shapes: network ``(N, 3, S, S) -> heatmaps (N, 98, S/4, S/4), points (N, 98, 2)`` in input pixels.

Differences from upstream, on purpose: all crops of an image run as one batch (upstream: one at a time; equal
up to float rounding), and each box is independent (upstream averages the landmarks of index-neighbouring
boxes when it is given three or more, ``ldmks_smooth``; its pipeline only ever passes one box).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.errors import InputError
from avatar.modeling import ModelMixin

from ._detect_utils import Bottleneck, as_uint8_rgb

__all__ = [
    "H3R",
    "BasicBlock",
    "H3RConfig",
    "H3RLandmarker",
    "HRNetBackbone",
    "HighResolutionModule",
    "box_from_landmarks",
    "crop_from_box",
    "crop_to_image",
    "decode_heatmaps",
    "expand_boxes",
    "image_to_crop",
    "integer_crop_box",
]

HUB_FILE_KEY = "h3r-hrnet-w18-wflw"
"""The registered model id (and upstream file key) of the official landmark network."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class H3RConfig(Config):
    """Sizes of the network and the crop. The defaults are the official HRNet-W18 WFLW model.

    Attributes:
        stem_channels: width of the two stride-2 stem convs.
        layer1_planes / layer1_blocks: the bottleneck stage (output ``4 * layer1_planes`` channels).
        stage_modules: HR modules in stages 2, 3, 4 (2, 3, 4 branches).
        stage_blocks: basic blocks per branch in every HR module.
        widths: channels of the four resolution branches.
        num_points: landmarks (98 for WFLW).
        topk: heatmap cells averaged per point.
        input_size: side of the square network input.
        box_ratio: side of the square crop relative to the detection box (:func:`expand_boxes`).
    """

    stem_channels: int = 64
    layer1_planes: int = 64
    layer1_blocks: int = 4
    stage_modules: tuple[int, int, int] = (1, 4, 3)
    stage_blocks: int = 4
    widths: tuple[int, int, int, int] = (18, 36, 72, 144)
    num_points: int = 98
    topk: int = 9
    input_size: int = 256
    box_ratio: float = 1.5

    def __post_init__(self) -> None:
        if self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32 (four resolutions), got {self.input_size}")

    @classmethod
    def hrnet_w18(cls) -> H3RConfig:
        return cls()

    @classmethod
    def tiny(cls) -> H3RConfig:
        """A small model with the same code path, for tests (random weights, 64 x 64 input)."""
        return cls(stem_channels=8, layer1_planes=4, layer1_blocks=1, stage_modules=(1, 1, 1), stage_blocks=1,
                   widths=(4, 8, 16, 32), input_size=64)

    @property
    def stride(self) -> int:
        """Input pixels per heatmap cell (two stride-2 stem convs)."""
        return 4

    @property
    def head_channels(self) -> int:
        return sum(self.widths)


# --------------------------------------------------------------------------------------------------------
# HRNet


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with a residual and ReLUs; ``(N, C_in, H, W) -> (N, planes, H, W)``."""

    def __init__(self, in_channels: int, planes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if in_channels != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, planes, 1, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + shortcut)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks, then every output resolution sums all branches.

    Lower-resolution inputs are brought up with a 1x1 conv + BN + nearest upsampling; higher-resolution ones
    go down through stride-2 3x3 conv + BN steps (ReLU between steps, none after the last); the sums go through
    a ReLU. ``[(N, widths[b], H / 2^b, W / 2^b)] -> same shapes``.
    """

    def __init__(self, widths: Sequence[int], blocks: int) -> None:
        super().__init__()
        n = len(widths)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(w, w) for _ in range(blocks)]) for w in widths
        )
        fuse: list[nn.ModuleList] = []
        for i in range(n):
            row: list[nn.Module | None] = []
            for j in range(n):
                if j > i:
                    up = _conv_bn(widths[j], widths[i], 1, 1, relu=False)
                    up.append(nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"))
                    row.append(up)
                elif j == i:
                    row.append(None)
                else:
                    steps = [_conv_bn(widths[j], widths[j], 3, 2, relu=True) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(widths[j], widths[i], 3, 2, relu=False))
                    row.append(nn.Sequential(*steps))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse) if n > 1 else None
        self.relu = nn.ReLU(inplace=False)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, len(xs)):
                y = y + (xs[j] if i == j else row[j](xs[j]))
            out.append(self.relu(y))
        return out


class HRNetBackbone(nn.Module):
    """HRNet: stride-4 stem, a bottleneck stage, then stages of 2, 3 and 4 branches joined by transitions.

    ``(N, 3, S, S) -> (N, sum(widths), S/4, S/4)``: the four branch outputs bilinearly upsampled to the
    finest one and concatenated.
    """

    def __init__(self, config: H3RConfig) -> None:
        super().__init__()
        c = config
        self.conv1 = nn.Conv2d(3, c.stem_channels, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c.stem_channels)
        self.conv2 = nn.Conv2d(c.stem_channels, c.stem_channels, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c.stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = Bottleneck.make_layer(c.stem_channels, c.layer1_planes, c.layer1_blocks)
        self.num_stages = len(c.stage_modules)
        previous = [c.layer1_planes * Bottleneck.expansion]
        for stage, modules in enumerate(c.stage_modules, start=2):
            current = list(c.widths[:stage])
            self.add_module(f"transition{stage - 1}", self._transition(previous, current))
            self.add_module(f"stage{stage}", nn.Sequential(*[HighResolutionModule(current, c.stage_blocks)
                                                              for _ in range(modules)]))
            previous = current

    @staticmethod
    def _transition(previous: Sequence[int], current: Sequence[int]) -> nn.ModuleList:
        """Per new branch: a 3x3 conv + BN + ReLU where an existing branch changes width (``None`` when it
        does not); new branches come from the coarsest previous one through stride-2 conv + BN + ReLU steps."""
        layers: list[nn.Module | None] = []
        for i, width in enumerate(current):
            if i < len(previous):
                layers.append(None if previous[i] == width else _conv_bn(previous[i], width, 3, 1, relu=True))
            else:
                last = previous[-1]
                n_steps = i + 1 - len(previous)
                layers.append(nn.Sequential(*[
                    _conv_bn(last, width if k == n_steps - 1 else last, 3, 2, relu=True) for k in range(n_steps)
                ]))
        return nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for stage in range(2, 2 + self.num_stages):
            transition: nn.ModuleList = getattr(self, f"transition{stage - 1}")
            xs = []
            for i, layer in enumerate(transition):
                if i < len(ys):
                    xs.append(ys[i] if layer is None else layer(ys[i]))
                else:
                    xs.append(layer(ys[-1]))
            ys = getattr(self, f"stage{stage}")(xs)
        size = ys[0].shape[-2:]
        return torch.cat([F.interpolate(y, size=size, mode="bilinear", align_corners=False) for y in ys], dim=1)


# --------------------------------------------------------------------------------------------------------
# head and decoding


def decode_heatmaps(heatmaps: Tensor, topk: int = 9, stride: float = 4.0) -> Tensor:
    """Official H3R decoding: for each ``(N, P, H, W)`` map take the ``topk`` highest cells, weight their
    integer positions ``(col, row)`` by the softmax of their scores, multiply by ``stride``.

    Returns ``(N, P, 2)`` ``x, y`` in network-input pixels (cell ``(r, c)`` maps to ``(stride * c, stride * r)``).
    """
    n, p, h, w = heatmaps.shape
    scores, index = heatmaps.reshape(n, p, h * w).topk(topk, dim=-1)
    cells = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], dim=2)  # (N, P, 2, k)
    return stride * (cells * torch.softmax(scores, dim=-1)[:, :, None]).sum(dim=-1)


class _BinaryHead(nn.Module):
    """1x1 conv + BN + ReLU + 1x1 conv to ``2 * P`` maps, read as ``(N, 2, P, H, W)``; channel 1 is kept."""

    def __init__(self, in_channels: int, num_points: int) -> None:
        super().__init__()
        self.num_points = num_points
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, 2 * num_points, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.layers(x)
        return y.reshape(y.shape[0], 2, self.num_points, *y.shape[-2:])[:, 1]


class _HeatmapHead(nn.Module):
    def __init__(self, in_channels: int, num_points: int) -> None:
        super().__init__()
        self.head = _BinaryHead(in_channels, num_points)


class H3R(ModelMixin):
    """HRNet-W18 + binary heatmap head. Created in eval mode.

    ``forward``: ``(N, 3, S, S)`` normalised RGB -> ``heatmaps (N, P, S/4, S/4)``, ``points (N, P, 2)`` in
    input pixels. Loading (:class:`ModelMixin`): ``H3R.from_pretrained()`` (the official
    ``h3r-hrnet-w18-wflw`` through the asset cache; ``local_dir=DIR`` takes ``model.pth`` from DIR),
    ``H3R.from_official(path_or_state)``, ``H3R.tiny(seed)``.
    """

    config_class = H3RConfig
    default_model_id = HUB_FILE_KEY
    config: H3RConfig

    def __init__(self, config: H3RConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or H3RConfig()
        self.backbone = HRNetBackbone(config)
        self.heatmap_head = _HeatmapHead(config.head_channels, config.num_points)
        self.eval()

    def load_official(self, state: Mapping[str, Any]) -> None:
        """Load the official names strictly (no prefix is removed, as upstream; BatchNorm step counters may be
        absent)."""
        self.load_state_dict_strict(state, what="H3R", optional_suffixes=("num_batches_tracked",))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        heatmaps = self.heatmap_head.head(self.backbone(x))
        return heatmaps, decode_heatmaps(heatmaps, self.config.topk, float(self.config.stride))


# --------------------------------------------------------------------------------------------------------
# crops


def expand_boxes(boxes: np.ndarray, ratio: float = 1.5) -> np.ndarray:
    """``(N, 4)`` boxes -> ``(N, 4)`` squares with the same centre and side ``sqrt((w + 1)(h + 1)) * ratio``
    (``w = x2 - x1``, ``h = y2 - y1``): the official ``extend_box``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centre = (b[:, :2] + b[:, 2:]) / 2
    side = np.sqrt((b[:, 3] - b[:, 1] + 1) * (b[:, 2] - b[:, 0] + 1)) * ratio
    return np.concatenate([centre - side[:, None] / 2, centre + side[:, None] / 2], axis=1)


def box_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """``(N, P, 2)`` points -> ``(N, 4)`` tight boxes (used with ratio 1.8 to track from the last frame)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    return np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1)


def integer_crop_box(box: Sequence[float]) -> tuple[int, int, int, int]:
    """Corners truncated toward zero (Python ``int``), as the official crop does."""
    x0, y0, x1, y1 = (int(float(v)) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"empty crop box {box}")
    return x0, y0, x1, y1


def crop_from_box(image: np.ndarray, crop_box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Cut ``image[y0:y1, x0:x1]`` (zeros outside the image) and resize it to ``size x size`` with PIL
    bilinear. ``(H, W, 3)`` uint8 -> ``(size, size, 3)`` uint8."""
    x0, y0, x1, y1 = crop_box
    h, w = image.shape[:2]
    patch = np.zeros((y1 - y0, x1 - x0, image.shape[2]), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        patch[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return np.asarray(Image.fromarray(patch).resize((size, size), Image.BILINEAR))


def crop_to_image(points: np.ndarray, crop_box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """``(..., 2)`` points in the ``size x size`` crop -> image pixels: ``p / (size / crop w, h) + (x0, y0)``
    (the division in float32, as upstream)."""
    x0, y0, x1, y1 = crop_box
    per_pixel = np.array([size / (x1 - x0), size / (y1 - y0)], dtype=np.float32)
    return (np.asarray(points, dtype=np.float32) / per_pixel).astype(np.float64) + np.array([x0, y0])


def image_to_crop(points: np.ndarray, crop_box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Inverse of :func:`crop_to_image`."""
    x0, y0, x1, y1 = crop_box
    scale = np.array([(x1 - x0) / size, (y1 - y0) / size])
    return (np.asarray(points, dtype=np.float64) - np.array([x0, y0])) / scale


class H3RLandmarker:
    """``landmarker(image, boxes) -> (N, 98, 2)``: the official crop, the network and the mapping back.

    Args:
        net: an :class:`H3R` (eval mode), or any module with a ``config`` (:class:`H3RConfig`) whose
            forward maps ``(N, 3, S, S)`` crops to ``(heatmaps, points)``.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, **kwargs: Any) -> H3RLandmarker:
        """``H3RLandmarker(H3R.from_pretrained(name_or_path, **kwargs))`` (same arguments, e.g. ``device=``,
        ``local_dir=``)."""
        return cls(H3R.from_pretrained(name_or_path, **kwargs))

    @property
    def config(self) -> H3RConfig:
        config = self.net.config
        assert isinstance(config, H3RConfig)
        return config

    def prepare(self, image: np.ndarray | Tensor, boxes: np.ndarray | Sequence[Sequence[float]],
                box_ratio: float | None = None) -> tuple[Tensor, list[tuple[int, int, int, int]]]:
        """Crops as a normalised ``(N, 3, S, S)`` float32 batch (CPU) and their integer crop boxes."""
        rgb = as_uint8_rgb(image)
        ratio = self.config.box_ratio if box_ratio is None else box_ratio
        size = self.config.input_size
        crop_boxes = [integer_crop_box(b) for b in expand_boxes(np.asarray(boxes, dtype=np.float64), ratio)]
        if not crop_boxes:
            return torch.zeros(0, 3, size, size), []
        crops = np.stack([crop_from_box(rgb, b, size) for b in crop_boxes])
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous().float().div(255)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return x.sub(mean).div(std), crop_boxes

    @torch.inference_mode()
    def __call__(self, image: np.ndarray | Tensor, boxes: np.ndarray | Sequence[Sequence[float]],
                 box_ratio: float | None = None) -> np.ndarray:
        """98 landmarks per box, ``(N, 98, 2)`` float64 ``x, y`` in image pixels.

        Args:
            image: RGB ``(H, W, 3)`` uint8 (or a tensor, see :func:`~avatar.face._detect_utils.as_uint8_rgb`).
            boxes: ``(N, 4)`` face boxes ``x1, y1, x2, y2`` (detector output, or :func:`box_from_landmarks`
                with ``box_ratio=1.8`` when tracking).
            box_ratio: crop side relative to the box; default :attr:`H3RConfig.box_ratio` (1.5).
        """
        return self.landmarks_batch([image], [boxes], box_ratio)[0]

    @torch.inference_mode()
    def landmarks_batch(self, images: Sequence[np.ndarray | Tensor],
                        boxes: Sequence[np.ndarray | Sequence[Sequence[float]]],
                        box_ratio: float | None = None) -> list[np.ndarray]:
        """:meth:`__call__` for several images in one network batch (e.g. video frames): one ``(N_i, 98, 2)``
        array per image."""
        prepared = [self.prepare(image, b, box_ratio) for image, b in zip(images, boxes, strict=True)]
        crop_boxes = [cb for _, cbs in prepared for cb in cbs]
        empty = np.zeros((0, self.config.num_points, 2), dtype=np.float32)
        if not crop_boxes:
            return [empty for _ in prepared]
        device = next(self.net.parameters(), torch.empty(0)).device
        _, points = self.net(torch.cat([x for x, cbs in prepared if cbs]).to(device))
        points_np = points.float().cpu().numpy()
        mapped = [crop_to_image(p, b, self.config.input_size) for p, b in zip(points_np, crop_boxes, strict=True)]
        out, start = [], 0
        for _, cbs in prepared:
            out.append(np.stack(mapped[start:start + len(cbs)]) if cbs else empty)
            start += len(cbs)
        return out

