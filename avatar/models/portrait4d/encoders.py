"""Encoders and triplane decoder of Portrait4D's reconstructor Psi, in plain PyTorch.

The modules reproduce the upstream computation and carry the upstream parameter names, so a
converted upstream state dict loads with ``strict=True``:

* ``encoder_global.``: :class:`EncoderGlobal`, BN-free dilated ResNet-34 (stride 8) + ASPP -> 256 @ 64
* ``encoder_detail.``: :class:`EncoderDetail`, 5 convs -> 96 @ 256
* ``encoder_canonical.``: :class:`EncoderCanonical`, motion MLPs + 4 neutral + 4 motion cross-attention
  blocks + upsampling convs -> 256 @ 64 (low-res) and 96 @ 256
* ``generator_triplane.``: :class:`DecoderTriplane`, convs + 1 MiT block (sr 2) + convs -> 96 @ 256 = 3 x 32
* ``background.``: :class:`EncoderBG`, small U-Net -> 32 @ 512 (pre-sigmoid)

(sizes for a 512x512 input.)

:class:`Portrait4DEncoders` holds all five under exactly those attribute names.
Nothing here downloads weights; all constructors only allocate (and randomly initialise) tensors,
so ``with torch.device("meta"): Portrait4DEncoders()`` builds the full-size model for free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.nn.attention import (
    CrossTransformerBlock,
    OverlapPatchEmbed,
    TransformerBlock,
    init_mit_weights,
    tokens_to_map,
)

__all__ = [
    "ASPP",
    "AddCoord",
    "DecoderTriplane",
    "DeepLabV3Decoder",
    "DilatedResNetEncoder",
    "EncoderBG",
    "EncoderCanonical",
    "EncoderDetail",
    "EncoderGlobal",
    "Portrait4DEncoderConfig",
    "Portrait4DEncoders",
    "add_coord",
]


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class Portrait4DEncoderConfig(Config):
    """Sizes of Psi's encoders. Defaults are the released Portrait4D / Portrait4D-v2 checkpoints."""

    image_channels: int = 3
    """Channels of the input image (2 coordinate channels are appended inside each encoder)."""

    # E_global: ResNet (BasicBlock) without normalisation, dilated to output stride 8, + DeepLabV3 head
    resnet_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    resnet_widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    resnet_output_stride: int = 8
    global_channels: int = 256
    aspp_rates: tuple[int, int, int] = (12, 24, 36)

    # E_detail
    detail_stem_channels: int = 64
    detail_channels: int = 96
    detail_num_convs: int = 4

    # motion tokens
    motion_dim: int = 548
    motion_hidden_dim: int = 512
    motion_map_layers: int = 2
    motion_tokens_hw: tuple[int, int] = (8, 8)

    # canonicalisation / reenactment transformer
    canonical_embed_dim: int = 1024
    canonical_num_heads: int = 4
    canonical_mlp_ratio: float = 2.0
    canonical_sr_ratio: int = 1
    num_blocks_neutral: int = 4
    num_blocks_motion: int = 4
    canonical_conv_channels: int = 128
    canonical_out_channels: int = 96
    zero_init_cross_attn: bool = False
    """Zero the cross-attention output projections at init. Upstream's effective init is *not* zero
    (its block re-initialises them), so the default is ``False``."""

    # triplane decoder
    triplane_conv1_channels: tuple[int, int] = (256, 128)
    triplane_embed_dim: int = 1024
    triplane_num_heads: int = 2
    triplane_mlp_ratio: float = 2.0
    triplane_sr_ratio: int = 2
    triplane_num_blocks: int = 1
    triplane_conv2_channels: tuple[int, ...] = (256, 128, 128)
    num_planes: int = 3
    plane_channels: int = 32

    # background U-Net
    background_channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    background_out_channels: int = 32

    # shared transformer settings
    patch_size: int = 3
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        if self.canonical_embed_dim != 4 * self.global_channels:
            raise ValueError("canonical_embed_dim must be 4 * global_channels (PixelShuffle(2) back to it)")
        if self.triplane_embed_dim % 4 != 0:
            raise ValueError("triplane_embed_dim must be divisible by 4 (PixelShuffle(2))")

    @property
    def in_channels(self) -> int:
        """Encoder input channels: image plus the (x, y) coordinate map."""
        return self.image_channels + 2

    @property
    def triplane_channels(self) -> int:
        """Channels of the decoder output, ``num_planes * plane_channels``."""
        return self.num_planes * self.plane_channels

    @classmethod
    def tiny(cls) -> Portrait4DEncoderConfig:
        """A structurally identical, very small configuration for tests (a 64x64 input works)."""
        return replace(
            cls(),
            resnet_layers=(1, 1, 1, 1),
            resnet_widths=(8, 8, 16, 16),
            global_channels=8,
            detail_stem_channels=8,
            detail_channels=8,
            detail_num_convs=2,
            motion_dim=12,
            motion_hidden_dim=16,
            motion_tokens_hw=(2, 2),
            canonical_embed_dim=32,
            canonical_num_heads=2,
            num_blocks_neutral=1,
            num_blocks_motion=2,
            canonical_conv_channels=8,
            canonical_out_channels=8,
            triplane_conv1_channels=(16, 8),
            triplane_embed_dim=32,
            triplane_num_heads=2,
            triplane_conv2_channels=(16, 8, 8),
            plane_channels=4,
            background_channels=(8, 8, 16, 16),
            background_out_channels=4,
        )


# --------------------------------------------------------------------------------------------------
# shared pieces


def add_coord(im: Tensor) -> Tensor:
    """Append an ``(x, y)`` coordinate map in ``[-1, 1]`` (pixel centres at the ends, i.e.
    ``linspace(-1, 1, n)``): ``(B, C, H, W)`` -> ``(B, C + 2, H, W)``. Channel ``C`` is x (varies along
    W), channel ``C + 1`` is y (varies along H)."""
    B, _, H, W = im.shape
    ys = torch.linspace(-1.0, 1.0, H, dtype=torch.float32, device=im.device)
    xs = torch.linspace(-1.0, 1.0, W, dtype=torch.float32, device=im.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    xy = torch.stack([grid_x, grid_y], dim=0).to(im.dtype).expand(B, 2, H, W)
    return torch.cat([im, xy], dim=1)


class AddCoord(nn.Module):
    """Module form of :func:`add_coord` (no parameters)."""

    def forward(self, im: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C + 2, H, W)``."""
        return add_coord(im)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1)


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(negative_slope=0.01)


class _BilinearUp2x(nn.Module):
    """x2 bilinear upsampling with ``align_corners=True`` (what ``nn.UpsamplingBilinear2d`` does)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class _Downsample(nn.Module):
    """Strided 3x3 conv (``op``), halving the resolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class _Upsample(nn.Module):
    """Nearest x2 upsampling followed by a 3x3 conv (``conv``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# --------------------------------------------------------------------------------------------------
# E_global: dilated, normalisation-free ResNet + DeepLabV3 head


class _BasicBlock(nn.Module):
    """ResNet basic block without normalisation: ``relu(conv2(relu(conv1(x))) + shortcut(x))``."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, with_shortcut_conv: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=dilation, dilation=dilation, bias=False)
        self.downsample: nn.Sequential | None = None
        if with_shortcut_conv:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + identity)


class DilatedResNetEncoder(nn.Module):
    """ResNet (basic blocks) with every BatchNorm removed and the last stages dilated.

    Matches ``segmentation_models_pytorch``'s ``resnet34`` encoder after ``make_dilated``: in each
    dilated stage *every* conv (including the first block's and the 1x1 shortcut) gets stride 1 and
    the stage's dilation (output stride 8: ``layer3`` dilation 2, ``layer4`` dilation 4), with
    padding ``dilation`` for the 3x3 convs. The shortcut conv exists where the undilated net has one
    (stride 2 or a width change). Only the deepest feature map is returned.
    """

    def __init__(
        self,
        in_channels: int = 5,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        output_stride: int = 8,
    ) -> None:
        super().__init__()
        dilated = {32: 0, 16: 1, 8: 2}
        if output_stride not in dilated:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        n_dilated = dilated[output_stride]
        stem = widths[0]
        self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = stem
        for i, (width, n_blocks) in enumerate(zip(widths, layers, strict=True)):
            native_stride = 1 if i == 0 else 2
            stage_from_end = len(widths) - i  # 1 for layer4, 2 for layer3, ...
            if stage_from_end <= n_dilated:
                dilation, stride = 2 ** (n_dilated - stage_from_end + 1), 1
            else:
                dilation, stride = 1, native_stride
            blocks = []
            for j in range(n_blocks):
                shortcut = j == 0 and (native_stride != 1 or cin != width)
                blocks.append(_BasicBlock(cin, width, stride if j == 0 else 1, dilation, shortcut))
                cin = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = cin
        self.output_stride = output_stride
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` -> ``(B, widths[-1], H / output_stride, W / output_stride)``."""
        x = self.maxpool(self.relu(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


class _ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool, 1x1 conv, ReLU, bilinear resize back."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """DeepLabV3 atrous spatial pyramid pooling without BatchNorm and without dropout.

    Branches (``convs.0`` .. ``convs.4``): 1x1, three dilated 3x3 (``rates``) and image pooling,
    each followed by ReLU; concatenated and projected by a 1x1 conv + ReLU (``project``).
    """

    def __init__(self, cin: int, cout: int, rates: tuple[int, int, int] = (12, 24, 36)) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU())]
        for r in rates:
            branches.append(
                nn.Sequential(nn.Conv2d(cin, cout, 3, padding=r, dilation=r, bias=False), nn.ReLU())
            )
        branches.append(_ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(len(branches) * cout, cout, 1, bias=False), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        """``(B, cin, h, w)`` -> ``(B, cout, h, w)``."""
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3Decoder(nn.Sequential):
    """``ASPP`` -> 3x3 conv (no bias) -> ReLU (indices 0, 1, 2; no BatchNorm)."""

    def __init__(self, cin: int, cout: int = 256, rates: tuple[int, int, int] = (12, 24, 36)) -> None:
        super().__init__(ASPP(cin, cout, rates), nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.ReLU())
        self.out_channels = cout


class EncoderGlobal(nn.Module):
    """Global appearance encoder E_global.

    ``image (B, 3, H, W)`` -> add coords -> dilated BN-free ResNet-34 (stride 8) -> DeepLabV3 head
    -> ``(B, global_channels, H/8, W/8)`` (256 @ 64x64 for a 512 input).
    """

    def __init__(self, cfg: Portrait4DEncoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or Portrait4DEncoderConfig()
        self.encoder = DilatedResNetEncoder(
            cfg.in_channels, cfg.resnet_widths, cfg.resnet_layers, cfg.resnet_output_stride
        )
        self.decoder = DeepLabV3Decoder(self.encoder.out_channels, cfg.global_channels, cfg.aspp_rates)

    def forward(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, global_channels, H/8, W/8)``."""
        return self.decoder(self.encoder(add_coord(image)))


# --------------------------------------------------------------------------------------------------
# E_detail


class EncoderDetail(nn.Module):
    """Detail encoder E_detail: ``Conv7x7/2`` then ``detail_num_convs`` 3x3 convs, LeakyReLU(0.01) after each.

    ``(B, 3, H, W)`` -> ``(B, detail_channels, H/2, W/2)`` (96 @ 256x256 for a 512 input).
    """

    def __init__(self, cfg: Portrait4DEncoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or Portrait4DEncoderConfig()
        mods: list[nn.Module] = [
            nn.Conv2d(cfg.in_channels, cfg.detail_stem_channels, kernel_size=7, stride=2, padding=3),
            _lrelu(),
        ]
        cin = cfg.detail_stem_channels
        for _ in range(cfg.detail_num_convs):
            mods += [_conv3x3(cin, cfg.detail_channels), _lrelu()]
            cin = cfg.detail_channels
        self.encoder = nn.Sequential(*mods)
        for m in self.encoder.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, detail_channels, H/2, W/2)``."""
        return self.encoder(add_coord(image))


# --------------------------------------------------------------------------------------------------
# canonicalisation + reenactment transformer


class EncoderCanonical(nn.Module):
    """Canonicalisation ("neutral") and reenactment ("motion") transformer.

    1. Motion vectors ``(B, motion_dim)`` go through a LeakyReLU MLP (``maps`` for the driving motion,
       ``maps_neutral`` for the source motion) and a linear layer (``proj_y`` / ``proj_y_neutral``)
       into ``H_y*W_y`` tokens of width ``embed_dim`` (64 x 1024).
    2. ``patch_embed`` (3x3, stride 2) turns the E_global map into ``(H/2)*(W/2)`` tokens.
    3. ``trans_blocks_neutral`` cross-attend to the source-motion tokens, then ``trans_blocks_motion``
       cross-attend to the driving-motion tokens; ``scale`` multiplies every cross-attention update
       (0 = static model).
    4. Tokens -> map -> ``PixelShuffle(2)`` gives the low-res output (``global_channels`` @ H x W), and
       ``convs`` (bilinear x2 [align_corners], conv, ReLU, bilinear x2, conv, ReLU, conv) give the
       high-res output (``canonical_out_channels`` @ 4H x 4W).
    """

    def __init__(self, cfg: Portrait4DEncoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or Portrait4DEncoderConfig()
        self.H_y, self.W_y = cfg.motion_tokens_hw
        dim = cfg.canonical_embed_dim
        self.maps: nn.ModuleList | None = None
        self.maps_neutral: nn.ModuleList | None = None
        hidden = cfg.motion_dim
        if cfg.motion_map_layers > 0:
            hidden = cfg.motion_hidden_dim
            self.maps = self._mapping(cfg)
            self.maps_neutral = self._mapping(cfg)
        n_tok = self.H_y * self.W_y
        self.proj_y_neutral = nn.Linear(hidden, n_tok * dim)
        self.proj_y = nn.Linear(hidden, n_tok * dim)
        self.patch_embed = OverlapPatchEmbed(cfg.global_channels, dim, patch_size=cfg.patch_size, stride=2)

        def block() -> CrossTransformerBlock:
            return CrossTransformerBlock(
                dim,
                cfg.canonical_num_heads,
                context_hw=(self.H_y, self.W_y),
                mlp_ratio=cfg.canonical_mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                sr_ratio=cfg.canonical_sr_ratio,
            )

        self.trans_blocks_neutral = nn.ModuleList([block() for _ in range(cfg.num_blocks_neutral)])
        self.trans_blocks_motion = nn.ModuleList([block() for _ in range(cfg.num_blocks_motion)])
        self.pixelshuffle = nn.PixelShuffle(2)
        c = cfg.canonical_conv_channels
        self.convs = nn.Sequential(
            _BilinearUp2x(),
            _conv3x3(cfg.global_channels, c),
            nn.ReLU(),
            _BilinearUp2x(),
            _conv3x3(c, c),
            nn.ReLU(),
            _conv3x3(c, cfg.canonical_out_channels),
        )
        self.apply(init_mit_weights)
        if cfg.zero_init_cross_attn:
            for blk in [*self.trans_blocks_neutral, *self.trans_blocks_motion]:
                nn.init.zeros_(blk.attn2.proj.weight)
                nn.init.zeros_(blk.attn2.proj.bias)

    @staticmethod
    def _mapping(cfg: Portrait4DEncoderConfig) -> nn.ModuleList:
        layers: list[nn.Module] = []
        for i in range(cfg.motion_map_layers):
            cin = cfg.motion_dim if i == 0 else cfg.motion_hidden_dim
            layers += [nn.Linear(cin, cfg.motion_hidden_dim), _lrelu()]
        return nn.ModuleList(layers)

    def motion_tokens(self, motion: Tensor, neutral: bool = False) -> Tensor:
        """Motion vector ``(B, motion_dim)`` -> tokens ``(B, H_y*W_y, embed_dim)``.

        ``neutral=True`` uses the source-motion path (``maps_neutral``, ``proj_y_neutral``),
        otherwise the driving-motion path (``maps``, ``proj_y``).
        """
        maps, proj = (self.maps_neutral, self.proj_y_neutral) if neutral else (self.maps, self.proj_y)
        y = motion
        if maps is not None:
            for layer in maps:
                y = layer(y)
        return proj(y).reshape(motion.shape[0], self.H_y * self.W_y, -1)

    def neutralize(
        self, features_global: Tensor, motion_app: Tensor, scale: float | Tensor = 1.0
    ) -> tuple[Tensor, int, int]:
        """Patch-embed E_global features and run the neutral blocks (depends on the source only).

        Args:
            features_global: ``(B, global_channels, h, w)``.
            motion_app: source motion ``(B, motion_dim)``.
            scale: cross-attention scale.

        Returns:
            tokens ``(B, (h/2)*(w/2), embed_dim)``, ``h/2``, ``w/2``.
        """
        y_x = self.motion_tokens(motion_app, neutral=True)
        x, H, W = self.patch_embed(features_global)
        for blk in self.trans_blocks_neutral:
            x = blk(x, y_x, H, W, scale=scale)
        return x, H, W

    def reenact(
        self, tokens: Tensor, H: int, W: int, motion: Tensor, scale: float | Tensor = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Run the motion blocks on neutral tokens and decode them.

        Args:
            tokens: ``(B, H*W, embed_dim)`` from :meth:`neutralize`.
            motion: driving motion ``(B, motion_dim)``.

        Returns:
            ``(features_lr, features_sr)``: ``(B, embed_dim/4, 2H, 2W)`` and
            ``(B, canonical_out_channels, 8H, 8W)``.
        """
        y = self.motion_tokens(motion, neutral=False)
        x = tokens
        for blk in self.trans_blocks_motion:
            x = blk(x, y, H, W, scale=scale)
        lr = self.pixelshuffle(tokens_to_map(x, H, W))
        return lr, self.convs(lr)

    def forward(
        self, features_global: Tensor, motion: Tensor, motion_app: Tensor, scale: float | Tensor = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Upstream argument order: E_global features, **driving** motion, **source** motion.

        Args:
            features_global: ``(B, global_channels, h, w)`` (256 @ 64x64).
            motion: driving motion ``(B, motion_dim)``.
            motion_app: source-image motion ``(B, motion_dim)``.
            scale: motion scale for every cross-attention (0 disables motion and neutralisation).

        Returns:
            ``(features_lr (B, global_channels, h, w), features_sr (B, canonical_out_channels, 4h, 4w))``.
        """
        x, H, W = self.neutralize(features_global, motion_app, scale)
        return self.reenact(x, H, W, motion, scale)


# --------------------------------------------------------------------------------------------------
# triplane decoder


class DecoderTriplane(nn.Module):
    """Triplane decoder: fuse canonical (96) and detail (96) features into 3 x 32 triplane channels.

    ``cat -> convs1 (2 x conv3x3 + LeakyReLU) -> patch_embed (3x3/2) -> MiT block(s) (sr_ratio 2)
    -> PixelShuffle(2) -> cat canonical -> convs2 (3 x conv3x3 + LeakyReLU) -> conv_last``.
    """

    def __init__(self, cfg: Portrait4DEncoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or Portrait4DEncoderConfig()
        c1a, c1b = cfg.triplane_conv1_channels
        self.convs1 = nn.Sequential(
            _conv3x3(cfg.canonical_out_channels + cfg.detail_channels, c1a),
            _lrelu(),
            _conv3x3(c1a, c1b),
            _lrelu(),
        )
        dim = cfg.triplane_embed_dim
        self.patch_embed = OverlapPatchEmbed(c1b, dim, patch_size=cfg.patch_size, stride=2)
        self.trans_blocks = nn.ModuleList(
            [
                TransformerBlock(
                    dim,
                    cfg.triplane_num_heads,
                    mlp_ratio=cfg.triplane_mlp_ratio,
                    qkv_bias=cfg.qkv_bias,
                    sr_ratio=cfg.triplane_sr_ratio,
                )
                for _ in range(cfg.triplane_num_blocks)
            ]
        )
        self.pixelshuffle = nn.PixelShuffle(2)
        mods: list[nn.Module] = []
        cin = dim // 4 + cfg.canonical_out_channels
        for c in cfg.triplane_conv2_channels:
            mods += [_conv3x3(cin, c), _lrelu()]
            cin = c
        self.convs2 = nn.Sequential(*mods)
        self.conv_last = _conv3x3(cin, cfg.triplane_channels)
        self.apply(init_mit_weights)
        nn.init.normal_(self.conv_last.weight, 0.0, 0.15)
        nn.init.zeros_(self.conv_last.bias)

    def forward(self, x_global: Tensor, x_detail: Tensor) -> Tensor:
        """``x_global``: canonical high-res features ``(B, canonical_out_channels, S, S)``;
        ``x_detail``: E_detail features ``(B, detail_channels, S, S)`` -> ``(B, num_planes*plane_channels, S, S)``.
        """
        x = self.convs1(torch.cat([x_global, x_detail], dim=1))
        x, H, W = self.patch_embed(x)
        for blk in self.trans_blocks:
            x = blk(x, H, W)
        x = self.pixelshuffle(tokens_to_map(x, H, W))
        x = self.convs2(torch.cat([x, x_global], dim=1))
        return self.conv_last(x)


# --------------------------------------------------------------------------------------------------
# background


class EncoderBG(nn.Module):
    """Background U-Net: 4 downsamplings (first a strided conv, then strided-conv ``Downsample``),
    a middle conv, 4 ``conv + nearest-x2-then-conv`` upsamplings with skip concatenations, and a 3x3
    output conv. ``(B, 3, H, W)`` -> ``(B, background_out_channels, H, W)`` (pre-sigmoid).
    """

    def __init__(self, cfg: Portrait4DEncoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or Portrait4DEncoderConfig()
        c0, c1, c2, c3 = cfg.background_channels
        self.in_channels = cfg.in_channels
        self.out_channels = cfg.background_out_channels
        self.input_conv = nn.Sequential(nn.Conv2d(cfg.in_channels, c0, 3, stride=2, padding=1), _lrelu())
        self.down_conv_1 = nn.Sequential(_conv3x3(c0, c0), _lrelu(), _Downsample(c0, c1))
        self.down_conv_2 = nn.Sequential(_conv3x3(c1, c1), _lrelu(), _Downsample(c1, c2))
        self.down_conv_3 = nn.Sequential(_conv3x3(c2, c2), _lrelu(), _Downsample(c2, c3))
        self.middle = nn.Sequential(_conv3x3(c3, c3), _lrelu())
        self.up_conv_1 = nn.Sequential(_conv3x3(2 * c3, c2), _lrelu(), _Upsample(c2, c2))
        self.up_conv_2 = nn.Sequential(_conv3x3(2 * c2, c1), _lrelu(), _Upsample(c1, c1))
        self.up_conv_3 = nn.Sequential(_conv3x3(2 * c1, c0), _lrelu(), _Upsample(c0, c0))
        self.up_conv_4 = nn.Sequential(_conv3x3(2 * c0, c0), _lrelu(), _Upsample(c0, c0))
        self.out_conv = _conv3x3(c0, cfg.background_out_channels)
        self.apply(init_mit_weights)

    def forward(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` (H, W divisible by 16) -> ``(B, background_out_channels, H, W)``."""
        h1 = self.input_conv(add_coord(image))
        h2 = self.down_conv_1(h1)
        h3 = self.down_conv_2(h2)
        h4 = self.down_conv_3(h3)
        x = self.middle(h4)
        x = self.up_conv_1(torch.cat([x, h4], 1))
        x = self.up_conv_2(torch.cat([x, h3], 1))
        x = self.up_conv_3(torch.cat([x, h2], 1))
        x = self.up_conv_4(torch.cat([x, h1], 1))
        return self.out_conv(x)


# --------------------------------------------------------------------------------------------------
# container


class Portrait4DEncoders(nn.Module):
    """The five learned image-side modules of Psi under their upstream attribute names.

    Its ``state_dict`` keys equal the upstream keys with prefixes ``encoder_global.``,
    ``encoder_detail.``, ``encoder_canonical.``, ``generator_triplane.`` and ``background.``.
    The full reconstructor can subclass it (adding ``decoder``, ``superresolution``, ``w_avg``...).
    """

    def __init__(self, cfg: Portrait4DEncoderConfig | None = None, has_background: bool = True) -> None:
        super().__init__()
        cfg = cfg or Portrait4DEncoderConfig()
        self.plane_channels = cfg.plane_channels
        self.encoder_global = EncoderGlobal(cfg)
        self.encoder_detail = EncoderDetail(cfg)
        self.encoder_canonical = EncoderCanonical(cfg)
        self.generator_triplane = DecoderTriplane(cfg)
        self.background: EncoderBG | None = EncoderBG(cfg) if has_background else None

    def planes(
        self, image: Tensor, motion: Tensor, motion_app: Tensor, motion_scale: float | Tensor = 1.0
    ) -> Tensor:
        """Source image + motions -> triplanes.

        Args:
            image: source image ``(B, 3, H, W)`` in [-1, 1] (512x512 upstream).
            motion: driving motion embedding ``(B, motion_dim)``.
            motion_app: motion embedding of the source image ``(B, motion_dim)``.
            motion_scale: cross-attention scale (0 = static Psi).

        Returns:
            ``(B, num_planes, plane_channels, H/2, W/2)`` (``(B, 3, 32, 256, 256)`` upstream).
        """
        features_global = self.encoder_global(image)
        features_detail = self.encoder_detail(image)
        _, features_sr = self.encoder_canonical(features_global, motion, motion_app, scale=motion_scale)
        p = self.generator_triplane(features_sr, features_detail)
        return p.view(p.shape[0], -1, self.plane_channels, p.shape[-2], p.shape[-1])

    def background_image(self, image: Tensor, resolution: int | None = None) -> Tensor:
        """``sigmoid(background(image))``, bilinearly resized (``align_corners=False``, no antialias) to
        ``resolution`` if given and different: ``(B, 3, H, W)`` -> ``(B, background_out_channels, r, r)``."""
        if self.background is None:
            raise RuntimeError("built with has_background=False")
        bg = torch.sigmoid(self.background(image))
        if resolution is not None and bg.shape[-1] != resolution:
            bg = F.interpolate(bg, size=(resolution, resolution), mode="bilinear", align_corners=False)
        return bg

    def forward(
        self, image: Tensor, motion: Tensor, motion_app: Tensor, motion_scale: float | Tensor = 1.0
    ) -> Tensor:
        """Alias of :meth:`planes`."""
        return self.planes(image, motion, motion_app, motion_scale)
