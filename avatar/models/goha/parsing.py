"""GOHA's face parser (BiSeNet, face-parsing.PyTorch) and the masks GOHA derives from it, in plain PyTorch.

GOHA holds a frozen 19-class CelebAMask-HQ BiSeNet (weights of face-parsing.PyTorch ``79999_iter.pth``, also
stored in GOHA's checkpoint) and uses it for two masks:

* :func:`parsing_mask` (official ``Model.get_parsing_mask``): 1 on brows, eyes (dilated), mouth and lips.
  The forward pass keeps the rest of the source image with ``src_mask = 1 - parsing_mask(...)``.
* :func:`appearance_blend_mask` (official ``get_apperance_plane``): the eroded union of "not a feature in the
  canonical render" and ``src_mask``; it blends the source image with the canonical render.

State-dict names
----------------
:class:`BiSeNet` carries the official parameter names. Inside GOHA's ``model_state_dict`` its keys sit under
``face_parsing_net.`` (``face_parsing_net.cp.resnet.conv1.weight``, ..., ``face_parsing_net.conv_out32.conv_out.weight``);
``79999_iter.pth`` holds the same keys without the prefix. Submodules: ``cp`` (context path: ``resnet`` =
ResNet-18 trunk ``conv1``/``bn1``/``layer1..4``, ``arm16``, ``arm32``, ``conv_head32``, ``conv_head16``,
``conv_avg``), ``ffm``, ``conv_out``, ``conv_out16``, ``conv_out32``. The spatial path of the paper does not
exist (``feat8`` of the ResNet stands in for it) and neither does the ResNet's ``fc``.

Nothing here downloads weights (the official ResNet-18 constructor fetches torchvision's ImageNet weights,
which any checkpoint load overwrites), so ``with torch.device("meta"): BiSeNet()`` builds the full net for free.

Morphology
----------
:func:`dilate` and :func:`erode` reproduce ``kornia.morphology.dilation``/``erosion`` with a flat all-ones
kernel and kornia's default ``border_type="geodesic"``, ``max_val=1e4``: the image is padded with ``-1e4``
(dilation) or ``+1e4`` (erosion), so pixels outside the image never win, i.e. the window is clipped to the
image. The origin is the kernel centre rounded down (``(k // 2)``), as in kornia. Like kornia they return a
floating tensor of dtype ``promote_types(x.dtype, float32)`` (integer masks come back as float32).
This is kornia 0.5.5, the version GOHA pins (its ``get_parsing_mask`` dilates an int64 mask, which recent
kornia refuses). Recent kornia (0.9) also anchors EVEN-sized dilation kernels at the reflected origin; for the
odd 7x7 kernels GOHA uses, both versions and these functions agree exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.configuration import Config

__all__ = [
    "BiSeNet",
    "BiSeNetConfig",
    "DILATED_CLASSES",
    "DROPPED_CLASS",
    "MASKED_CLASSES",
    "PARSING_MEAN",
    "PARSING_STD",
    "appearance_blend_mask",
    "dilate",
    "erode",
    "mask_from_labels",
    "normalize_for_parsing",
    "parsing_labels",
    "parsing_mask",
]

PARSING_MEAN = (0.485, 0.456, 0.406)
PARSING_STD = (0.229, 0.224, 0.225)

DROPPED_CLASS = 6
"""CelebAMask-HQ "eyeglasses"; removed from the logits before the argmax (and so is the last class, "hat")."""

MASKED_CLASSES = (2, 3, 4, 5, 10, 11, 12)
"""Labels that :func:`parsing_mask` sets, indexed AFTER removing channel 6: l/r brow, l/r eye, mouth, upper and
lower lip (original CelebAMask-HQ classes 2, 3, 4, 5, 11, 12, 13). The nose (original 10 = shifted 9) is kept."""

DILATED_CLASSES = (4, 5)
"""The eyes (shifted = original 4, 5): each dilated :data:`EYE_DILATIONS` times with a 7x7 ones kernel."""

EYE_DILATIONS = 2
MORPH_KERNEL = 7


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class BiSeNetConfig(Config):
    """Sizes of the face parser. Defaults are face-parsing.PyTorch's ``BiSeNet(n_classes=19)``."""

    n_classes: int = 19
    """CelebAMask-HQ classes; the mask logic needs the 19-class layout."""
    resnet_widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    """Widths of ResNet-18's four stages (2 BasicBlocks each; stem conv 7x7/2 to ``resnet_widths[0]``)."""
    context_channels: int = 128
    """Width of the attention-refinement modules and context heads."""
    fuse_channels: int = 256
    """Output width of the feature fusion module (input: ``resnet_widths[1] + context_channels``)."""
    head_channels: int = 256
    """Hidden width of the main classifier head ``conv_out``."""
    aux_head_channels: int = 64
    """Hidden width of the auxiliary heads ``conv_out16``/``conv_out32`` (unused by GOHA, in the state dict)."""

    @classmethod
    def tiny(cls) -> BiSeNetConfig:
        """A structurally identical, very small configuration for tests (inputs of 32x32 and up work)."""
        return cls(resnet_widths=(8, 8, 16, 16), context_channels=8, fuse_channels=16, head_channels=8,
                   aux_head_channels=4)


# --------------------------------------------------------------------------------------------------
# network


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU. Keys: ``conv.weight``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet BasicBlock; ``downsample`` (1x1 conv + BN) exists when the width or the stride changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Sequential | None = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class Resnet18(nn.Module):
    """ResNet-18 trunk without ``fc``; returns the stride-8, -16 and -32 features."""

    def __init__(self, widths: tuple[int, int, int, int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cins = (widths[0],) + tuple(widths[:3])
        for i, (cin, cout) in enumerate(zip(cins, widths, strict=True)):
            stride = 1 if i == 0 else 2
            self.add_module(f"layer{i + 1}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


def _global_avg(x: Tensor) -> Tensor:
    # avg_pool2d over the whole map (not mean()): the same reduction as upstream, bit for bit
    return F.avg_pool2d(x, x.shape[2:])


class AttentionRefinementModule(nn.Module):
    """``conv`` then channel attention ``sigmoid(bn_atten(conv_atten(global_avg)))``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3, 1, 1)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_avg(feat))))


class ContextPath(nn.Module):
    """ResNet-18 + ARMs + global context. Returns (feat8 [w1 @ /8], context @ /8, context @ /16)."""

    def __init__(self, cfg: BiSeNetConfig) -> None:
        super().__init__()
        w, c = cfg.resnet_widths, cfg.context_channels
        self.resnet = Resnet18(w)
        self.arm16 = AttentionRefinementModule(w[2], c)
        self.arm32 = AttentionRefinementModule(w[3], c)
        self.conv_head32 = ConvBNReLU(c, c, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(c, c, 3, 1, 1)
        self.conv_avg = ConvBNReLU(w[3], c, 1, 1, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = F.interpolate(self.conv_avg(_global_avg(feat32)), feat32.shape[2:], mode="nearest")
        up32 = F.interpolate(self.arm32(feat32) + avg, feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest")
        up16 = self.conv_head16(up16)
        return feat8, up16, up32


class FeatureFusionModule(nn.Module):
    """``convblk(cat)`` then ``feat * (1 + sigmoid(conv2(relu(conv1(global_avg)))))``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp: Tensor, fcp: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_avg(feat)))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    """Classifier head: ``conv`` (3x3 ConvBNReLU) then ``conv_out`` (1x1, no bias) to the classes."""

    def __init__(self, cin: int, mid: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3, 1, 1)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """face-parsing.PyTorch BiSeNet: (b, 3, H, W) ImageNet-normalised RGB -> (b, n_classes, H, W) logits.

    :meth:`forward` returns only the main output (all GOHA uses); :meth:`forward_all` also returns the two
    auxiliary outputs, as the upstream ``forward`` does. Logits are predicted at stride 8 and upsampled
    bilinearly (``align_corners=True``) to the input size. Use it in eval mode (BatchNorm running stats).
    """

    def __init__(self, config: BiSeNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or BiSeNetConfig()
        self.config = cfg
        self.cp = ContextPath(cfg)
        self.ffm = FeatureFusionModule(cfg.resnet_widths[1] + cfg.context_channels, cfg.fuse_channels)
        self.conv_out = BiSeNetOutput(cfg.fuse_channels, cfg.head_channels, cfg.n_classes)
        self.conv_out16 = BiSeNetOutput(cfg.context_channels, cfg.aux_head_channels, cfg.n_classes)
        self.conv_out32 = BiSeNetOutput(cfg.context_channels, cfg.aux_head_channels, cfg.n_classes)

    def _upsample(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(x, size, mode="bilinear", align_corners=True)

    def forward(self, x: Tensor) -> Tensor:
        feat8, cp8, _ = self.cp(x)
        return self._upsample(self.conv_out(self.ffm(feat8, cp8)), x.shape[2:])

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(main, aux from the /8 context, aux from the /16 context), each (b, n_classes, H, W)."""
        feat8, cp8, cp16 = self.cp(x)
        size = x.shape[2:]
        main = self._upsample(self.conv_out(self.ffm(feat8, cp8)), size)
        return main, self._upsample(self.conv_out16(cp8), size), self._upsample(self.conv_out32(cp16), size)


# --------------------------------------------------------------------------------------------------
# morphology (kornia.morphology with a flat ones kernel and its default geodesic border)


def _kernel_hw(kernel_size: int | tuple[int, int]) -> tuple[int, int]:
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel size must be positive, got {kernel_size}")
    return kh, kw


def _morph(x: Tensor, kernel_size: int | tuple[int, int], pad_value: float, sign: float) -> Tensor:
    if x.ndim != 4:
        raise ValueError(f"morphology needs a (b, c, h, w) tensor, got shape {tuple(x.shape)}")
    kh, kw = _kernel_hw(kernel_size)
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    oh, ow = kh // 2, kw // 2
    x = F.pad(x, (ow, kw - ow - 1, oh, kh - oh - 1), mode="constant", value=pad_value)
    if sign > 0:
        return F.max_pool2d(x, (kh, kw), stride=1)
    return -F.max_pool2d(-x, (kh, kw), stride=1)


def dilate(x: Tensor, kernel_size: int | tuple[int, int] = MORPH_KERNEL, max_val: float = 1e4) -> Tensor:
    """Grey dilation (window max) of (b, c, h, w) ``x``; = ``kornia.morphology.dilation(x, ones(k, k))``."""
    return _morph(x, kernel_size, -max_val, 1.0)


def erode(x: Tensor, kernel_size: int | tuple[int, int] = MORPH_KERNEL, max_val: float = 1e4) -> Tensor:
    """Grey erosion (window min) of (b, c, h, w) ``x``; = ``kornia.morphology.erosion(x, ones(k, k))``."""
    return _morph(x, kernel_size, max_val, -1.0)


# --------------------------------------------------------------------------------------------------
# GOHA's masks


def normalize_for_parsing(img: Tensor) -> Tensor:
    """(b, 3, H, W) in [-1, 1] -> ``((img + 1) / 2 - mean) / std`` with ImageNet mean/std."""
    mean = torch.tensor(PARSING_MEAN, dtype=img.dtype, device=img.device).view(-1, 1, 1)
    std = torch.tensor(PARSING_STD, dtype=img.dtype, device=img.device).view(-1, 1, 1)
    return ((img + 1) / 2.0 - mean) / std


def parsing_labels(logits: Tensor) -> Tensor:
    """(b, n, H, W) logits -> (b, 1, H, W) long labels in the SHIFTED class indexing.

    Channel :data:`DROPPED_CLASS` (eyeglasses) is removed, then the last channel (hat), then argmax (first
    index on ties). Shifted label ``j`` is original class ``j`` for ``j < 6`` and ``j + 1`` otherwise.
    """
    n = logits.shape[1]
    # two slices, not a list index: a list index is a host-to-device copy, which CUDA-graph capture refuses
    kept = torch.cat((logits[:, :DROPPED_CLASS], logits[:, DROPPED_CLASS + 1:n - 1]), dim=1)
    return kept.argmax(dim=1, keepdim=True)


def mask_from_labels(labels: Tensor) -> Tensor:
    """(b, 1, H, W) shifted labels -> (b, 1, H, W) long mask: 1 on :data:`MASKED_CLASSES`, eyes dilated."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for cls in MASKED_CLASSES:
        hit = labels == cls
        if cls in DILATED_CLASSES:
            grown = hit.float()
            for _ in range(EYE_DILATIONS):
                grown = dilate(grown, MORPH_KERNEL)
            hit = grown > 0
        mask |= hit
    return mask.long()


def parsing_mask(net: Callable[[Tensor], Tensor], img: Tensor,
                 normalize: Callable[[Tensor], Tensor] = normalize_for_parsing) -> Tensor:
    """Official ``get_parsing_mask``: (b, 3, H, W) in [-1, 1] -> (b, 1, H, W) long, 1 = brows/eyes/mouth/lips.

    ``net`` maps normalised images to (b, 19, H, W) logits (a :class:`BiSeNet` in eval mode). The parser runs at
    the input resolution (GOHA feeds 512x512 images). ``src_mask = 1 - parsing_mask``. ``normalize``: the
    ImageNet normalisation (:meth:`GOHA.normalize` passes its buffers, made once on the model's device, so that a
    CUDA graph of the forward pass has no host-to-device copy to capture).
    """
    return mask_from_labels(parsing_labels(net(normalize(img))))


def appearance_blend_mask(cano_mask: Tensor, src_mask: Tensor) -> Tensor:
    """Official blend weight of ``get_apperance_plane``: ``erode((1 - cano_mask) * src_mask, 7x7)``, float.

    ``cano_mask`` = :func:`parsing_mask` of the canonical render, ``src_mask`` = ``1 - parsing_mask(source)``,
    both (b, 1, H, W). The id-net input is then ``norm(src) * m + norm(cano) * (1 - m)`` with this ``m``.
    """
    return erode((1 - cano_mask.float()) * src_mask, MORPH_KERNEL)
