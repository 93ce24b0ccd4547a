"""LPIPS: learned perceptual image patch similarity (Zhang et al. 2018), v0.1, AlexNet by default.

Formula: the images, mapped to [-1, 1] and shifted/scaled per channel (``(x - shift) / scale`` with
``shift = (-.030, -.088, -.188)``, ``scale = (.458, .448, .450)``), go through an ImageNet trunk; at 5 layers the
features are unit-normalised over channels (``f / (||f||_2 + 1e-10)``), their squared difference is weighted by a
learned 1x1 convolution (the v0.1 linear heads), averaged over space, and the 5 layers are summed. Reported
value: mean over frames. Same maths, weights and tap points as the ``lpips`` package (``lpips.LPIPS(net=...)``),
in plain PyTorch without the package's download in ``__init__``.

Input: ``(B, 3, H, W)`` in [0, 1] (or uint8), mapped to [-1, 1] internally. ``feed_unit_range=True`` reproduces
the NeRFace script GOHA used, which fed [0, 1] images to LPIPS without mapping them (not the paper's definition).
Crop: none, no resize (frames as given, 512x512 in the protocols). Network: ``net="alex"`` (OTAvatar / GOHA) or
``"vgg"`` (VGG16). Weights: linear heads from the ``lpips`` package (asset layer ``lpips-<net>`` without it);
trunk: torchvision's ImageNet weights (``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``) in the torch hub
cache. Optional ``mask``: see ``ImageOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .base import ImageMetric, ImageOptions, _check_choice
from .weights import (
    asset_state_dict,
    fetch_weights,
    lpips_package_weights,
    network_device,
    seeded,
    torch_hub_state_dict,
)

__all__ = ["LPIPS", "LPIPSNet", "LPIPSOptions", "TRUNKS"]


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(),
    )


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, 1, 1), nn.ReLU()]
            cin = int(v)
    return nn.Sequential(*layers)


TRUNKS: dict[str, dict[str, Any]] = {
    "alex": {"build": _alexnet_features, "taps": (1, 4, 7, 9, 11), "channels": (64, 192, 384, 256, 256),
             "filename": "alexnet-owt-7be5be79.pth", "url": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"},
    "vgg": {"build": _vgg16_features, "taps": (3, 8, 15, 22, 29), "channels": (64, 128, 256, 512, 512),
            "filename": "vgg16-397923af.pth", "url": "https://download.pytorch.org/models/vgg16-397923af.pth"},
}


class LPIPSNet(nn.Module):
    """LPIPS v0.1 network: ``forward(x, y)`` on ``(B, 3, H, W)`` images in [-1, 1] -> ``(B,)`` distances.

    Parameters: ``features.<i>.*`` (torchvision's trunk names, so its ImageNet file loads directly) and
    ``lins.<k>.weight`` (the lpips package's ``lin<k>.model.1.weight``).
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        _check_choice("net", net, TRUNKS)
        spec = TRUNKS[net]
        self.net_name = net
        self.features = spec["build"]()
        self.taps: tuple[int, ...] = spec["taps"]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in spec["channels"])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _taps(self, x: Tensor) -> list[Tensor]:
        out = []
        last = self.taps[-1]
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
            if i == last:
                break
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        n = x.shape[0]
        feats = self._taps((torch.cat([x, y]) - self.shift) / self.scale)
        total = x.new_zeros(n)
        for f, lin in zip(feats, self.lins, strict=True):
            f = f / (f.square().sum(1, keepdim=True).sqrt() + 1e-10)
            d = (f[:n] - f[n:]).square()
            total = total + lin(d).mean(dim=(1, 2, 3))
        return total

    # ---- weights ------------------------------------------------------------------------------------
    def load_trunk(self, state: dict[str, Tensor]) -> None:
        """Load torchvision's ``alexnet``/``vgg16`` state dict (only ``features.*`` is used)."""
        trunk = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        self.features.load_state_dict(trunk, strict=True)

    def load_lins(self, state: dict[str, Tensor]) -> None:
        """Load the lpips v0.1 heads (``lin<k>.model.1.weight``, or already ``lins.<k>.weight``)."""
        out = {}
        for k, v in state.items():
            if k.startswith("lins."):
                out[k[len("lins."):]] = v
            elif k.startswith("lin") and k.endswith(".weight"):
                out[f"{int(k[3:].split('.')[0])}.weight"] = v
        self.lins.load_state_dict(out, strict=True)


def _lin_state(net: str) -> dict[str, Tensor]:
    path = lpips_package_weights(net)
    if path is not None:
        return torch.load(path, map_location="cpu", weights_only=True)
    return asset_state_dict(f"lpips-{net}", f"LPIPS ({net}) linear heads")


def build_lpips_net(net: str = "alex", allow_random_weights: bool = False) -> tuple[LPIPSNet, bool]:
    """An :class:`LPIPSNet` with official weights; returns ``(net, official)``.

    Missing weights raise :class:`MissingWeightsError` unless ``allow_random_weights`` (then the missing part
    keeps a seeded random initialisation and ``official`` is ``False``).
    """
    spec = TRUNKS[net]
    lins = fetch_weights(lambda: _lin_state(net), allow_random_weights, f"LPIPS ({net}) linear heads")
    trunk = fetch_weights(lambda: torch_hub_state_dict(spec["filename"], spec["url"], f"LPIPS ({net})"),
                          allow_random_weights, f"LPIPS ({net}) trunk")
    with seeded():
        model = LPIPSNet(net)
    if lins is not None:
        model.load_lins(lins)
    if trunk is not None:
        model.load_trunk(trunk)
    return model, lins is not None and trunk is not None


@dataclass(frozen=True)
class LPIPSOptions(ImageOptions):
    """Attributes:
    net: ``"alex"`` (default; OTAvatar / GOHA) or ``"vgg"``.
    feed_unit_range: feed [0, 1] images to the network unmapped (the NeRFace/GOHA script's slip).
    """

    net: str = "alex"
    feed_unit_range: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("net", self.net, TRUNKS)


class LPIPS(ImageMetric):
    """LPIPS metric (see the module docstring). ``network`` may be given (an :class:`LPIPSNet` you loaded)."""

    name: ClassVar[str] = "lpips"
    higher_is_better: ClassVar[bool] = False
    Options: ClassVar[type] = LPIPSOptions
    opts: LPIPSOptions

    def __init__(
        self,
        *,
        network: LPIPSNet | None = None,
        allow_random_weights: bool = False,
        device: torch.device | str | None = None,
        batch_size: int = 32,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if network is None:
            network, official = build_lpips_net(self.opts.net, allow_random_weights)
            self.weights = "official" if official else "random"
        else:
            if network.net_name != self.opts.net:
                raise ValueError(f"network is LPIPS-{network.net_name} but option net={self.opts.net!r}")
            self.weights = "user"
        if self.weights == "random":
            self._not_comparable("LPIPS ran with random weights: not comparable to published numbers")
        self.device = torch.device(device) if device is not None else None
        self.network = network.to(self.device) if self.device is not None else network
        self.batch_size = batch_size

    def _facts(self) -> dict[str, Any]:
        return {"input_range": "[0, 1] (mapped to [-1, 1] for the network)", "version": "0.1",
                "network": f"LPIPS-{self.opts.net} v0.1", "weights": self.weights}

    def per_sample(self, pred: Tensor, target: Tensor) -> Tensor:
        device = network_device(self.network, self.device, pred.device)
        if not self.opts.feed_unit_range:
            pred, target = pred * 2 - 1, target * 2 - 1
        out = [
            self.network(pred[i:i + self.batch_size].to(device).float(), target[i:i + self.batch_size].to(device).float())
            for i in range(0, pred.shape[0], self.batch_size)
        ]
        return torch.cat(out)
