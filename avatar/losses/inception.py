"""The FID Inception: pytorch-fid's port of the TensorFlow FID Inception v3, up to the 2048-d pool3 features.

Registered as ``fid-inception`` (weights ``pt_inception-2015-12-05-6726825d.pth``, a release asset of
``mseitzer/pytorch-fid``; ``avatar download fid-inception`` fetches it, or the metric reads torch hub's cache).
Built from torchvision's Inception v3 with pytorch-fid's patched blocks (1008 classes, no aux head), held as
``net``, so the upstream state dict loads under ``net.`` with its own names. Input ``(B, 3, H, W)`` in [0, 1];
output ``(B, 2048)``. The architecture has no size options: its config is empty and ``tiny()`` is the full
network (about 24 M parameters, built in a second).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from avatar.configuration import Config
from avatar.modeling import ModelMixin

__all__ = ["FEATURE_DIM", "FIDInception", "FIDInceptionConfig"]

FEATURE_DIM = 2048


@dataclass(frozen=True)
class FIDInceptionConfig(Config):
    """No options: the FID network is fixed by its definition."""

    @classmethod
    def tiny(cls) -> FIDInceptionConfig:
        return cls()


class FIDInception(ModelMixin):
    """pytorch-fid's FID Inception v3 up to the pool3 features: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 2048)``."""

    config_class: ClassVar[type] = FIDInceptionConfig
    default_model_id: ClassVar[str | None] = "fid-inception"

    def __init__(self, config: FIDInceptionConfig | None = None) -> None:
        super().__init__()
        from pytorch_fid import inception as pfi

        self.config = config or FIDInceptionConfig()
        net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = pfi.FIDInceptionE_1(1280)
        net.Mixed_7c = pfi.FIDInceptionE_2(2048)
        self.net = net
        self.requires_grad_(False)
        self.eval()

    def load_official(self, state: Mapping[str, Tensor]) -> None:
        """Strictly load ``pt_inception-2015-12-05-6726825d.pth`` (names without ``net.``; ours are accepted too)."""
        named = {k if k.startswith("net.") else f"net.{k}": v for k, v in state.items()}
        self.load_state_dict_strict(named, what="FID Inception")

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = n.maxpool1(n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x))))
        x = n.maxpool2(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)))
        for block in (n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e,
                      n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))
