"""SSIM: structural similarity (Wang et al. 2004) between a prediction and its ground truth.

Formula, per channel, with local statistics from a window ``w`` (weights sum to 1)::

    mu_x = w * x,  sigma_x^2 = c * (w * x^2 - mu_x^2),  sigma_xy = c * (w * xy - mu_x mu_y)
    S = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = data_range, c = N / (N - 1) with sample covariance else 1

``S`` is averaged over the pixels whose whole window lies inside the image (a border of ``(win_size - 1) // 2``
is left out, as in scikit-image), then over channels (``channels="rgb"``) or computed on the luma
``0.2989 R + 0.587 G + 0.114 B`` (``channels="gray"``: GAGAvatar's ``core/libs/utils.py::calc_ssim`` converts with
``torchvision.transforms.functional.rgb_to_grayscale``, whose weights these are, before torchmetrics' SSIM). Reported value: mean over frames. Computed in
float64 with separable convolutions (batched, any device); equal to ``skimage.metrics.structural_similarity``
with the matching settings.

Defaults follow the SSIM the papers name (Wang et al.): Gaussian window ``sigma=1.5`` (11 taps), population
covariance, ``data_range=1`` for images in [0, 1]. ``preset`` picks a published variant:

* ``"wang2004"`` (default): the above.
* ``"skimage"``: scikit-image's defaults with the right range: 7x7 uniform window, sample covariance.
* ``"nerface"``: the NeRFace ``metrics.py`` GOHA used (``compare_ssim(multichannel=True)`` on float [0, 1]
  images, which took the float dtype range, i.e. ``data_range=2``): 7x7 uniform, sample covariance,
  ``data_range=2``; inflates SSIM, reproduces GOHA's published numbers only.
* ``"gagavatar"``: GAGAvatar's ``calc_ssim`` (xg-chu/GAGAvatar ``core/libs/utils.py``): grayscale
  (``rgb_to_grayscale``) then torchmetrics ``structural_similarity_index_measure``, i.e. the Gaussian window of
  ``"wang2004"`` (11 taps, sigma 1.5, population covariance, its reflect-padded border cropped away = the valid
  region) on the luma, ``data_range=1`` (GAGAvatar's evaluation passes ``data_range=(0.0, 1.0)``, issue #43).

Explicit options override the preset. Input: ``(B, 3, H, W)`` in [0, 1] (or uint8), same size, at least
``win_size`` pixels each side. Crop: none. Network: none. Optional ``mask``: see ``ImageOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import ImageMetric, ImageOptions, _check_choice

__all__ = ["SSIM", "SSIMOptions", "SSIM_PRESETS", "ssim", "window_1d"]

K1, K2 = 0.01, 0.03
GAUSSIAN_TRUNCATE = 3.5  # scipy.ndimage's gaussian_filter truncation used by scikit-image
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

SSIM_PRESETS: dict[str, dict[str, Any]] = {
    "wang2004": {"window": "gaussian", "sigma": 1.5, "win_size": None, "use_sample_covariance": False,
                 "data_range": 1.0},
    "skimage": {"window": "uniform", "win_size": 7, "use_sample_covariance": True, "data_range": 1.0},
    "nerface": {"window": "uniform", "win_size": 7, "use_sample_covariance": True, "data_range": 2.0},
    "gagavatar": {"window": "gaussian", "sigma": 1.5, "win_size": None, "use_sample_covariance": False,
                  "data_range": 1.0, "channels": "gray"},
}


def window_1d(window: str, win_size: int | None, sigma: float, dtype: torch.dtype = torch.float64,
              device: torch.device | str | None = None) -> Tensor:
    """1-D window (sums to 1). Gaussian: ``2 * int(3.5 sigma + 0.5) + 1`` taps unless ``win_size`` is given."""
    if window == "gaussian":
        radius = (win_size - 1) // 2 if win_size else int(GAUSSIAN_TRUNCATE * sigma + 0.5)
        x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
        w = torch.exp(-0.5 * (x / sigma) ** 2)
    elif window == "uniform":
        if not win_size:
            raise ValueError("a uniform window needs win_size")
        w = torch.ones(win_size, dtype=dtype, device=device)
    else:
        raise ValueError(f"unknown window {window!r}")
    return w / w.sum()


def _band(n: int, w: Tensor) -> Tensor:
    """``(n, n - k + 1)`` banded matrix ``T`` with ``(x @ T)[j] = sum_i w[i] x[j + i]`` ('valid' correlation)."""
    k = w.numel()
    m = n - k + 1
    T = w.new_zeros(n, m)
    cols = torch.arange(m, device=w.device)
    for i in range(k):
        T[cols + i, cols] = w[i]
    return T


def _filter_valid(x: Tensor, w: Tensor) -> Tensor:
    """Separable 'valid' filtering of ``(..., H, W)`` with the 1-D window ``w``, as two matrix products
    (BLAS-fast in float64 on CPU and GPU, unlike float64 convolutions)."""
    H, W = x.shape[-2:]
    return _band(H, w).T @ x @ _band(W, w)


def ssim(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float = 1.0,
    window: str = "gaussian",
    win_size: int | None = None,
    sigma: float = 1.5,
    use_sample_covariance: bool = False,
    channels: str = "rgb",
) -> Tensor:
    """Per-image SSIM ``(B,)`` in float64 of ``(B, C, H, W)`` images (see the module docstring)."""
    x, y = pred.double(), target.double()
    if channels == "gray":
        g = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
        x, y = (x * g).sum(1, keepdim=True), (y * g).sum(1, keepdim=True)
    w = window_1d(window, win_size, sigma, x.dtype, x.device)
    k = w.numel()
    B, C, H, W = x.shape
    if min(H, W) < k:
        raise ValueError(f"SSIM window of {k} pixels does not fit images of {H}x{W}")
    n = k * k
    cov_norm = n / (n - 1) if use_sample_covariance else 1.0
    x, y = x.reshape(B * C, 1, H, W), y.reshape(B * C, 1, H, W)
    stats = _filter_valid(torch.cat([x, y, x * x, y * y, x * y]), w).reshape(5, B * C, -1)
    ux, uy, uxx, uyy, uxy = stats
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(-1).reshape(B, C).mean(1)


@dataclass(frozen=True)
class SSIMOptions(ImageOptions):
    """Attributes (``None`` = from ``preset``):
    preset: ``"wang2004"`` (default), ``"skimage"``, ``"nerface"`` or ``"gagavatar"`` (see the module docstring).
    window: ``"gaussian"`` or ``"uniform"``.
    win_size: window size (Gaussian: derived from ``sigma`` when ``None``; 11 for 1.5).
    sigma: Gaussian standard deviation.
    use_sample_covariance: ``N / (N - 1)`` normalisation of the local (co)variances.
    data_range: ``L`` in ``C1``, ``C2`` (1 for [0, 1] images; 2 reproduces the NeRFace/GOHA quirk).
    channels: ``"rgb"`` (mean of per-channel SSIM; every preset but ``"gagavatar"``) or ``"gray"`` (SSIM of the
        luma ``0.2989 R + 0.587 G + 0.114 B``, torchvision's ``rgb_to_grayscale`` as GAGAvatar's ``calc_ssim`` uses
        it): the grayscale-SSIM variant.
    """

    preset: str = "wang2004"
    window: str | None = None
    win_size: int | None = None
    sigma: float | None = None
    use_sample_covariance: bool | None = None
    data_range: float | None = None
    channels: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("preset", self.preset, SSIM_PRESETS)
        if self.channels is not None:
            _check_choice("channels", self.channels, ("rgb", "gray"))
        if self.window is not None:
            _check_choice("window", self.window, ("gaussian", "uniform"))

    def resolved(self) -> SSIMOptions:
        """The options with every ``None`` filled from the preset (and ``win_size`` made explicit)."""
        values = {"window": "gaussian", "sigma": 1.5, "channels": "rgb", **SSIM_PRESETS[self.preset]}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and f.name in values:
                values[f.name] = v
        if self.win_size is None and values["window"] != SSIM_PRESETS[self.preset]["window"]:
            values["win_size"] = None  # the preset's size belongs to the preset's window
        if values["window"] == "uniform" and not values.get("win_size"):
            values["win_size"] = 7
        values["win_size"] = window_1d(values["window"], values.get("win_size"), values["sigma"]).numel()
        return replace(self, **{k: values[k] for k in ("window", "win_size", "sigma", "use_sample_covariance",
                                                       "data_range", "channels")})


class SSIM(ImageMetric):
    name: ClassVar[str] = "ssim"
    higher_is_better: ClassVar[bool] = True
    Options: ClassVar[type] = SSIMOptions
    opts: SSIMOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.opts = self.opts.resolved()

    def _facts(self) -> dict[str, Any]:
        return {"input_range": "[0, 1]", "K1": K1, "K2": K2, "border": "valid (window inside the image)",
                "network": None}

    def per_sample(self, pred: Tensor, target: Tensor) -> Tensor:
        o = self.opts
        assert o.window is not None and o.sigma is not None and o.data_range is not None
        return ssim(pred, target, data_range=o.data_range, window=o.window, win_size=o.win_size, sigma=o.sigma,
                    use_sample_covariance=bool(o.use_sample_covariance), channels=o.channels or "rgb")

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(SSIMOptions().resolved())
