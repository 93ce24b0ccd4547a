"""LPIPS: learned perceptual image patch similarity (Zhang et al. 2018), v0.1, AlexNet by default.

Formula: the images, mapped to [-1, 1] and shifted/scaled per channel (``(x - shift) / scale`` with
``shift = (-.030, -.088, -.188)``, ``scale = (.458, .448, .450)``), go through an ImageNet trunk; at 5 layers the
features are unit-normalised over channels (``f / (||f||_2 + 1e-10)``), their squared difference is weighted by a
learned 1x1 convolution (the v0.1 linear heads), averaged over space, and the 5 layers are summed. Reported
value: mean over frames. The network is the ``lpips`` package's (``lpips.LPIPS(net=...)``) as
:class:`avatar.losses.lpips.LPIPSNet`, the one training's LPIPS loss runs, without the package's download in
``__init__``.

Input: ``(B, 3, H, W)`` in [0, 1] (or uint8), mapped to [-1, 1] internally. ``feed_unit_range=True`` reproduces
the NeRFace script GOHA used, which fed [0, 1] images to LPIPS without mapping them (not the paper's definition).
Crop: none, no resize (frames as given, 512x512 in the protocols). Network: ``net="alex"`` (OTAvatar / GOHA) or
``"vgg"`` (VGG16). Weights: linear heads through the asset layer ``lpips-<net>`` (else the copy bundled with the
``lpips`` package); trunk: torchvision's ImageNet weights (``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``)
in the torch hub cache. Optional ``mask``: see ``ImageOptions``.

No target side is split off for the reference cache (:mod:`eval.reference_cache`): the target's five normalised
trunk activations at 512x512 are ~2.6 M floats (~10 MB per image in float32, AlexNet), far more to store and read
than one AlexNet forward costs to recompute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from avatar.losses.weights import TRUNKS

from .base import ImageMetric, ImageOptions, _check_choice
from .weights import fetch_weights, network_device, seeded

if TYPE_CHECKING:  # the lpips package (and torchvision) load when an LPIPS metric is built
    from avatar.losses.lpips import LPIPSNet

__all__ = ["LPIPS", "LPIPSOptions", "build_lpips_net"]


def build_lpips_net(net: str = "alex", allow_random_weights: bool = False) -> tuple[LPIPSNet, bool]:
    """An :class:`~avatar.losses.lpips.LPIPSNet` with official weights; returns ``(net, official)``.

    Missing weights raise :class:`~eval.metrics.weights.MissingWeightsError` unless ``allow_random_weights`` (then
    the missing part keeps a seeded random initialisation and ``official`` is ``False``).
    """
    from avatar.losses.lpips import LPIPSConfig, LPIPSNet, lpips_linear_state, lpips_trunk_state

    lins = fetch_weights(lambda: lpips_linear_state(net), allow_random_weights, f"LPIPS ({net}) linear heads")
    trunk = fetch_weights(lambda: lpips_trunk_state(net), allow_random_weights, f"LPIPS ({net}) trunk")
    with seeded():
        model = LPIPSNet(LPIPSConfig(net))
    if lins is not None:
        model.load_lins(lins)
    if trunk is not None:
        model.load_trunk(trunk)
    return model.eval(), lins is not None and trunk is not None


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
            if network.config.net != self.opts.net:
                raise ValueError(f"network is LPIPS-{network.config.net} but option net={self.opts.net!r}")
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
