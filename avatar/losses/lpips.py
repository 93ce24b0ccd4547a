"""LPIPS (Zhang et al. 2018, v0.1): the ``lpips`` package's network as a :class:`~avatar.modeling.ModelMixin`.

:class:`LPIPSNet` *is* ``lpips.LPIPS`` (a subclass; its ``forward`` is the package's), built without the download
the package does in ``__init__`` (``pnet_rand=True``, ``pretrained=False``); the weights come from the toolkit:

* linear heads (v0.1 ``lin<k>.model.1.weight``): the asset layer (``lpips-alex`` / ``lpips-vgg``: Portrait4D's
  ``models/lpips/weights/v0.1/<net>.pth``), or, when that is not cached and cannot be fetched, the same file
  bundled with the ``lpips`` package;
* trunk (AlexNet / VGG16 ImageNet weights): torchvision's file (``alexnet-owt-7be5be79.pth`` /
  ``vgg16-397923af.pth``) in ``local_dir`` or the torch hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded
  by torch when online.

Formula (the package's): images in [-1, 1] are shifted/scaled per channel (``(x - shift) / scale`` with ``shift =
(-.030, -.088, -.188)``, ``scale = (.458, .448, .450)``), go through the trunk; at 5 layers the features are
unit-normalised over channels (``f / (||f||_2 + 1e-10)``), their squared difference is weighted by the linear
heads (1x1 convolutions), averaged over space, and the 5 layers are summed.

The toolkit's earlier plain-PyTorch rewrite was removed: with the same weights copied into both it gave the same
values as this network to the last bit on CPU (float32 and float64, AlexNet and VGG16, random and official heads).

State-dict names are the package's (``net.slice<k>.<torchvision index>.*``, ``lin<k>.model.1.weight``,
``scaling_layer.shift/scale``); the package's ``lins`` list is kept as a plain list so no tensor has two names.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avatar.configuration import Config
from avatar.errors import AssetNotFoundError, ConfigError
from avatar.losses.weights import TRUNKS, torch_hub_state_dict

try:  # the network is the package's (extras [eval] / [train])
    import lpips as _lpips_package
except ImportError:  # pragma: no cover - exercised only without the extras
    _lpips_package = None

from avatar.modeling import ModelMixin

__all__ = [
    "LPIPSConfig",
    "LPIPSNet",
    "TRUNKS",
    "lpips_linear_state",
    "lpips_trunk_state",
]


def _require_package() -> Any:
    if _lpips_package is None:
        raise ImportError("LPIPS needs the 'lpips' package: pip install 'avatar4d[eval]' (or [train])")
    return _lpips_package


@dataclass(frozen=True)
class LPIPSConfig(Config):
    """``net``: the trunk, ``"alex"`` (the metric's default) or ``"vgg"`` (``lpips-vgg``, the training loss)."""

    net: str = "alex"

    def __post_init__(self) -> None:
        if self.net not in TRUNKS:
            raise ConfigError(f"LPIPSConfig.net={self.net!r} is not one of {', '.join(map(repr, TRUNKS))}")

    @classmethod
    def tiny(cls) -> LPIPSConfig:
        """AlexNet: the smallest trunk the package has (LPIPS has no narrower variant)."""
        return cls("alex")


# ---------------------------------------------------------------------------------------------------------
# weights


def lpips_trunk_state(net: str, local_dir: str | Path | None = None) -> dict[str, Tensor]:
    """torchvision's ImageNet state dict of the ``net`` trunk (:func:`avatar.losses.weights.torch_hub_state_dict`)."""
    spec = TRUNKS[net]
    return torch_hub_state_dict(spec["filename"], spec["url"], f"LPIPS ({net}) trunk", local_dir)


def _package_linear_file(net: str) -> Path | None:
    if _lpips_package is None:
        return None
    path = Path(_lpips_package.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    return path if path.is_file() else None


def lpips_linear_state(net: str, local_dir: str | Path | None = None) -> dict[str, Tensor]:
    """The v0.1 linear heads of ``net`` (``lin<k>.model.1.weight``): the asset ``lpips-<net>`` (cached, fetched,
    or from ``local_dir``), else the copy bundled with the ``lpips`` package. Neither:
    :class:`~avatar.errors.AssetNotFoundError`."""
    from avatar.hub.weights import read_converted_weights

    try:
        return read_converted_weights(f"lpips-{net}", local_dir)
    except (AssetNotFoundError, FileNotFoundError) as exc:
        bundled = _package_linear_file(net)
        if bundled is None:
            raise AssetNotFoundError(f"LPIPS ({net}) linear heads: {exc}") from exc
        return torch.load(bundled, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------------
# network


_LPIPSBase: type = _lpips_package.LPIPS if _lpips_package is not None else torch.nn.Module


class LPIPSNet(ModelMixin, _LPIPSBase):  # type: ignore[misc,valid-type]
    """The ``lpips`` package's LPIPS v0.1 network (see the module docstring), frozen, in eval mode.

    ``forward(x, y, normalize=False)`` -> ``(B,)`` distances of ``(B, 3, H, W)`` images in [-1, 1] (``normalize``:
    in [0, 1], mapped to [-1, 1] first); differentiable with respect to the images.

    Loading: ``LPIPSNet.from_pretrained("lpips-vgg")`` (default ``lpips-alex``), ``LPIPSNet.from_official(state,
    config=...)`` with a state holding both parts (:meth:`load_official`), or the parts one at a time
    (:meth:`load_trunk`, :meth:`load_lins`).
    """

    config_class = LPIPSConfig
    default_model_id = "lpips-alex"
    config: LPIPSConfig

    def __init__(self, config: LPIPSConfig | None = None) -> None:
        package = _require_package()
        config = config or LPIPSConfig()
        with warnings.catch_warnings():  # torchvision's notice about the package's ``pretrained=`` argument
            warnings.simplefilter("ignore", UserWarning)
            package.LPIPS.__init__(self, pretrained=False, net=config.net, version="0.1", lpips=True, spatial=False,
                                   pnet_rand=True, pnet_tune=False, use_dropout=True, eval_mode=True, verbose=False)
        self.config = config
        # ``lins`` holds the modules registered as ``lin0..lin4`` too: keep it as a plain list (forward uses it)
        # so that every tensor has one name (safetensors refuses shared tensors).
        lins = list(self.lins)
        del self.lins
        self.lins = lins
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor, y: Tensor, normalize: bool = False) -> Tensor:  # type: ignore[override]
        return _require_package().LPIPS.forward(self, x, y, normalize=normalize).reshape(x.shape[0])

    # ---- names ----------------------------------------------------------------------------------------
    def _trunk_names(self) -> dict[str, str]:
        """torchvision ``features.<i>.`` prefix -> our ``net.slice<k>.<i>.`` prefix, for the layers LPIPS uses."""
        out = {}
        for k in range(1, self.net.N_slices + 1):
            for name, _ in getattr(self.net, f"slice{k}").named_children():
                out[f"features.{name}."] = f"net.slice{k}.{name}."
        return out

    def _to_own_names(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        names = self._trunk_names()
        out = {}
        for key, value in state.items():
            if key.startswith("features."):
                prefix = ".".join(key.split(".")[:2]) + "."
                if prefix not in names:  # layers after the last tap (no parameters in AlexNet / VGG16)
                    continue
                out[names[prefix] + key[len(prefix):]] = value
            elif key.startswith("lins."):  # an older toolkit name of the heads
                k = key.split(".")[1]
                out[f"lin{k}.model.1.weight"] = value
            elif key.startswith("classifier."):  # torchvision's classifier: not part of LPIPS
                continue
            else:
                out[key] = value
        return out

    # ---- weights --------------------------------------------------------------------------------------
    def load_official(self, state: Mapping[str, Tensor]) -> None:
        """Load the linear heads (``lin<k>.model.1.weight``, the v0.1 file) and the trunk (torchvision's
        ``features.<i>.*`` or the package's ``net.slice<k>.<i>.*``) from one state dict, strictly (the constant
        ``scaling_layer`` buffers may be absent)."""
        self.load_state_dict_strict(self._to_own_names(state), what=f"LPIPS ({self.config.net})",
                                    optional_suffixes=("scaling_layer.shift", "scaling_layer.scale"))

    def load_trunk(self, state: Mapping[str, Tensor]) -> None:
        """Load torchvision's ``alexnet`` / ``vgg16`` state dict (only ``features.*`` is used) strictly into the trunk."""
        own = {k: v for k, v in self._to_own_names({k: v for k, v in state.items() if k.startswith("features.")}).items()}
        from avatar.hub.weights import load_state_dict_strict

        load_state_dict_strict(self.net, {k[len("net."):]: v for k, v in own.items()},
                               what=f"LPIPS ({self.config.net}) trunk")

    def load_lins(self, state: Mapping[str, Tensor]) -> None:
        """Load the v0.1 linear heads (``lin<k>.model.1.weight``) strictly."""
        from avatar.hub.weights import load_state_dict_strict

        own = self._to_own_names({k: v for k, v in state.items() if k.startswith(("lin", "lins."))})
        heads = torch.nn.ModuleDict({f"lin{k}": m for k, m in enumerate(self.lins)})
        load_state_dict_strict(heads, own, what=f"LPIPS ({self.config.net}) linear heads")

    def trunk_state_dict(self) -> dict[str, Tensor]:
        """The trunk's tensors under torchvision's names (``features.<i>.*``), as :meth:`load_trunk` takes them."""
        inverse = {v: k for k, v in self._trunk_names().items()}
        out = {}
        for key, value in self.state_dict().items():
            if key.startswith("net."):
                prefix = ".".join(key.split(".")[:3]) + "."
                out[inverse[prefix] + key[len(prefix):]] = value
        return out

    @classmethod
    def from_registry(cls, spec: Any, *, local_dir: str | Path | None = None, **kwargs: Any) -> LPIPSNet:
        """The linear heads of ``spec.checkpoint`` (asset layer, else the package's copy) and the torchvision trunk
        (``local_dir`` or the torch hub cache), joined and loaded strictly."""
        config = kwargs.pop("config", None) or LPIPSConfig(**spec.option_dict)
        state = {**lpips_linear_state(config.net, local_dir), **lpips_trunk_state(config.net, local_dir)}
        return cls.from_official(state, config=config, **kwargs)
