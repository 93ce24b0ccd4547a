"""ArcFace IResNet (InsightFace ``arcface_torch`` backbone) for CSIM: the iresnet-18 of Portrait4D's
``models/arcface`` (``ms1mv3_arcface_r18_fp16/backbone.pth``, asset key ``arcface-r18``).

Input: ``(B, 3, 112, 112)`` RGB crops aligned to the InsightFace template, values in [-1, 1]. Output: ``(B, 512)``
embeddings (not normalised). Parameter names follow the official state dict, so it loads strictly. Runs in fp32
(the official module autocasts to fp16 only when built with ``fp16=True``, which Portrait4D does not do).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .weights import asset_state_dict, fetch_weights, seeded

__all__ = ["ArcFaceConfig", "IResNet", "ARCFACE_R18", "build_arcface"]

ARCFACE_ASSET = "arcface-r18"


@dataclass(frozen=True)
class ArcFaceConfig:
    """``layers``: blocks per stage; ``widths``: channels per stage; ``stem``: stem channels;
    ``num_features``: embedding size; ``input_size``: crop side (divisible by 16)."""

    layers: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: int = 64
    num_features: int = 512
    input_size: int = 112

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


class IResNet(nn.Module):
    def __init__(self, config: ArcFaceConfig = ARCFACE_R18) -> None:
        super().__init__()
        if config.input_size % 16:
            raise ValueError("input_size must be divisible by 16")
        self.config = config
        self.conv1 = nn.Conv2d(3, config.stem, 3, 1, 1, bias=False)
        self.bn1 = _bn(config.stem)
        self.prelu = nn.PReLU(config.stem)
        cin = config.stem
        for i, (n, w) in enumerate(zip(config.layers, config.widths, strict=True)):
            blocks = [IBasicBlock(cin, w, 2)] + [IBasicBlock(w, w, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.bn2 = _bn(cin)
        side = config.input_size // 16
        self.fc = nn.Linear(cin * side * side, config.num_features)
        self.features = nn.BatchNorm1d(config.num_features, eps=1e-5)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for i in range(len(self.config.layers)):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.features(self.fc(self.bn2(x).flatten(1)))


def build_arcface(allow_random_weights: bool = False) -> tuple[IResNet, bool]:
    """The official iresnet-18 from the asset layer; returns ``(model, official)``. Missing weights raise
    :class:`~eval.metrics.weights.MissingWeightsError` unless ``allow_random_weights`` (seeded random init)."""
    state = fetch_weights(lambda: asset_state_dict(ARCFACE_ASSET, "ArcFace iresnet-18 (CSIM)"), allow_random_weights,
                          "ArcFace iresnet-18")
    with seeded():
        model = IResNet(ARCFACE_R18)
    if state is not None:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval(), state is not None
