"""ArcFace IResNet (InsightFace ``arcface_torch`` backbone) and its face alignment: the identity network of the
identity loss (training) and of the CSIM metric (``eval``).

Network: the iresnet-18 of Portrait4D's ``models/arcface`` (``ms1mv3_arcface_r18_fp16/backbone.pth``, registered
model id and upstream file ``arcface-r18``). Input ``(B, 3, 112, 112)`` RGB crops aligned to the InsightFace
template, values in [-1, 1]; output ``(B, 512)`` embeddings (not normalised). Parameter names are the official
ones, so the upstream file loads strictly (:meth:`IResNet.load_official`; the fp16 file is cast to fp32). Runs in
fp32 (the official module autocasts to fp16 only when built with ``fp16=True``, which Portrait4D does not do).

Alignment (:func:`align_faces`): five points from 68 iBUG landmarks (eye centres as the mean of the eye corners
36/39 and 42/45, nose tip 30, mouth corners 48/54), a least-squares similarity to the InsightFace 112x112 template
(:data:`INSIGHTFACE_TEMPLATE_112`, scaled for other crop sizes) and a bilinear warp that is differentiable with
respect to the image. Pixel convention: ``x`` right, ``y`` down, integer coordinates at pixel centres (OpenCV,
scikit-image, face_alignment).

>>> net = IResNet.from_pretrained(device="cuda")                     # doctest: +SKIP
>>> emb = net(align_faces(images, landmarks68))      # images in [-1, 1]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.errors import ConfigError
from avatar.face.geometry import similarity_matrix, warp_affine
from avatar.hub.weights import strip_key_prefixes
from avatar.modeling import ModelMixin

__all__ = [
    "ARCFACE_MODEL_ID",
    "INSIGHTFACE_TEMPLATE_112",
    "FLAME_FIVE_POINTS",
    "ArcFaceConfig",
    "IResNet",
    "align_faces",
    "alignment_matrices",
    "flame_alignment_matrices",
    "arcface_template",
    "five_points_from_68",
    "similarity_transform",
    "warp_affine",
]

ARCFACE_MODEL_ID = "arcface-r18"
"""The registered model id (and upstream file key) of the official iresnet-18."""

# InsightFace / ArcFace 112x112 reference points: left eye, right eye, nose tip, left and right mouth corner
# (image left/right). Used by arcface_torch, Portrait4D's identity loss and OTAvatar's CSIM.
INSIGHTFACE_TEMPLATE_112 = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=torch.float64,
)


# ---------------------------------------------------------------------------------------------------------
# network


@dataclass(frozen=True)
class ArcFaceConfig(Config):
    """``layers``: blocks per stage; ``widths``: channels per stage; ``stem``: stem channels;
    ``num_features``: embedding size; ``input_size``: crop side (divisible by ``2 ** len(layers)``, 16 for the
    four stages of iresnet). Defaults: iresnet-18."""

    layers: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: int = 64
    num_features: int = 512
    input_size: int = 112

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.widths):
            raise ConfigError(f"ArcFaceConfig: {len(self.layers)} stage depths but {len(self.widths)} widths")
        if self.input_size % 2 ** len(self.layers):
            raise ConfigError(f"ArcFaceConfig.input_size must be divisible by {2 ** len(self.layers)}, "
                              f"got {self.input_size}")

    @classmethod
    def tiny(cls) -> ArcFaceConfig:
        """A small random-init configuration for tests (seconds on CPU)."""
        return cls(layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), stem=8, num_features=32)


ARCFACE_R18 = ArcFaceConfig()


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-5)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the (projected) input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = _bn(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = _bn(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(ModelMixin):
    """ArcFace iresnet: ``(B, 3, S, S)`` aligned crops in [-1, 1] -> ``(B, num_features)`` embeddings.

    Frozen (``requires_grad`` off: a loss and metric network; gradients still flow to the input) and built in
    eval mode. ``IResNet.from_pretrained()`` loads the official ``arcface-r18``; ``IResNet.tiny()`` is a small
    random network for tests.
    """

    config_class = ArcFaceConfig
    default_model_id = ARCFACE_MODEL_ID
    config: ArcFaceConfig

    def __init__(self, config: ArcFaceConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ArcFaceConfig()
        self.conv1 = nn.Conv2d(3, config.stem, 3, 1, 1, bias=False)
        self.bn1 = _bn(config.stem)
        self.prelu = nn.PReLU(config.stem)
        cin = config.stem
        for i, (n, w) in enumerate(zip(config.layers, config.widths, strict=True)):
            blocks = [IBasicBlock(cin, w, 2)] + [IBasicBlock(w, w, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.bn2 = _bn(cin)
        side = config.input_size // 2 ** len(config.layers)
        self.fc = nn.Linear(cin * side * side, config.num_features)
        self.features = nn.BatchNorm1d(config.num_features, eps=1e-5)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for i in range(len(self.config.layers)):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.features(self.fc(self.bn2(x).flatten(1)))

    def load_official(self, state: Mapping[str, Tensor]) -> None:
        """Load the upstream ``backbone.pth`` (fp16 tensors cast to fp32; a ``module.`` prefix is dropped)
        strictly: every tensor of the network must be there under its official name, and nothing else."""
        state = strip_key_prefixes(state, ("module.",))
        self.load_state_dict_strict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                                    what="ArcFace iresnet (arcface-r18)")


# ---------------------------------------------------------------------------------------------------------
# alignment


def five_points_from_68(lm: Tensor) -> Tensor:
    """``(B, 68, 2)`` iBUG-68 landmarks -> ``(B, 5, 2)``: the two eye centres (mean of each eye's corners,
    36/39 and 42/45), the nose tip (30) and the mouth corners (48, 54), in the template's order (the torch
    counterpart of :func:`avatar.face.geometry.five_points_from_68`, which works on numpy arrays)."""
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ValueError(f"expected (B, 68, 2) landmarks, got {tuple(lm.shape)}")
    return torch.stack([(lm[:, 36] + lm[:, 39]) / 2, (lm[:, 42] + lm[:, 45]) / 2, lm[:, 30], lm[:, 48], lm[:, 54]], 1)


def similarity_transform(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares similarity mapping ``src`` ``(B, N, 2)`` to ``dst`` as ``(B, 2, 3)`` float64 (Umeyama, the
    estimate of ``skimage.transform.SimilarityTransform``): :func:`avatar.face.geometry.similarity_matrix`."""
    return similarity_matrix(src, dst)[:, :2]


def arcface_template(size: int = 112, device: torch.device | str | None = None) -> Tensor:
    """The InsightFace five-point template ``(5, 2)`` float64 for a ``size`` x ``size`` crop."""
    return INSIGHTFACE_TEMPLATE_112.to(device) * (size / 112.0)


def alignment_matrices(landmarks68: Tensor, size: int = 112) -> Tensor:
    """Similarity transforms ``(B, 2, 3)`` float64 from image pixels to the ``size`` crop, fitted on the five
    points of ``landmarks68`` (pixels of the images)."""
    template = arcface_template(size, landmarks68.device)
    return similarity_transform(five_points_from_68(landmarks68.double()), template)


FLAME_FIVE_POINTS = (68, 69, 30, 48, 54)
"""Indices of the five ArcFace points among Portrait4D's 70 FLAME landmarks (``extract_5p_flame``): the two
eye centres (68, 69), the nose tip and the mouth corners."""


def flame_alignment_matrices(landmarks70: Tensor, image_size: int, size: int = 112) -> Tensor:
    """The training losses' ArcFace alignment (``training/utils/preprocess.py::estimate_norm``): similarity
    transforms ``(B, 2, 3)`` float32 from the pixels of ``image_size`` images to the ``size`` crop, fitted on the
    five :data:`FLAME_FIVE_POINTS` of the projected FLAME landmarks ``(B, 70, 2)`` (pixels, **y up**: flipped as
    ``image_size - 1 - y`` first). Upstream fits in float64 per sample with skimage and casts to float32; a
    singular fit (upstream: the identity) cannot occur for distinct points and is not special-cased."""
    five = landmarks70[:, list(FLAME_FIVE_POINTS), :2].double()
    five = torch.stack([five[..., 0], image_size - 1 - five[..., 1]], dim=-1)
    return similarity_transform(five, arcface_template(size, landmarks70.device)).float()


def align_faces(images: Tensor, landmarks68: Tensor, size: int = 112) -> Tensor:
    """ArcFace crops ``(B, C, size, size)``: similarity from the 5 points of ``landmarks68`` (pixels of
    ``images``) to the InsightFace template (scaled by ``size / 112``), then :func:`warp_affine` (bilinear,
    zeros outside; differentiable with respect to ``images``)."""
    return warp_affine(images, alignment_matrices(landmarks68, size), (size, size))
