"""FID: Frechet Inception distance between the set of predictions and a reference set (pooled, not per frame).

Formula: with ``mu``, ``Sigma`` the mean and unbiased covariance (``N - 1``) of the 2048-d pool3 features of each
set, ``FID = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^(1/2))``. The matrix square root is
scipy's ``sqrtm`` of ``Sigma_1 Sigma_2`` with pytorch-fid's safeguards (``1e-6`` added to both diagonals if the
product is singular; an imaginary part above ``1e-3`` on the diagonal raises), or with ``sqrtm="eigh"`` the
symmetric form ``Tr((Sigma_1^(1/2) Sigma_2 Sigma_1^(1/2))^(1/2))`` by eigendecompositions in torch (float64, GPU).
Features are accumulated over all ``update`` calls; the distance is computed once in :meth:`FID.compute`.

Network: pytorch-fid's port of the TensorFlow FID Inception (``pt_inception-2015-12-05-6726825d.pth``, loaded from
the torch hub cache where pytorch-fid puts it). Input: ``(B, 3, H, W)`` in [0, 1] (or uint8), resized to 299x299
with ``F.interpolate(bilinear, align_corners=False)`` (no antialias) and mapped to [-1, 1], exactly as pytorch-fid.
Crop: none. Caveats (see eval-protocols.md): GOHA used torch-fidelity (TF1-style resize of uint8 images), which gives
slightly different values; FID is biased upward for small N and rank-deficient below 2048 samples: compare only at
equal N.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from avatar.losses.inception import FEATURE_DIM, FIDInception

from .base import EmptyMetricError, Metric, MetricResult, _check_choice, to_unit_images
from .weights import fetch_weights, network_device, seeded, torch_hub_state_dict

__all__ = ["FID", "FIDInception", "FIDOptions", "frechet_distance", "gaussian_statistics"]

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE}"


def gaussian_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of ``(N, D)`` features, ``N >= 2``."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features for a covariance, got {tuple(features.shape)}")
    f = features.double()
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _trace_sqrt_product_scipy(s1: np.ndarray, s2: np.ndarray, eps: float) -> float:
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on singular input; handled below
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular covariance product; adding {eps} to the diagonals", stacklevel=3)
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise ValueError(f"FID: matrix square root has an imaginary component of {imag:.3g}")
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eigh(s1: Tensor, s2: Tensor) -> float:
    ev1, q1 = torch.linalg.eigh(s1)
    root1 = (q1 * ev1.clamp_min(0).sqrt()) @ q1.T
    m = root1 @ s2 @ root1
    ev = torch.linalg.eigvalsh((m + m.T) / 2)
    return float(ev.clamp_min(0).sqrt().sum())


def frechet_distance(
    mu1: Tensor | np.ndarray, sigma1: Tensor | np.ndarray, mu2: Tensor | np.ndarray, sigma2: Tensor | np.ndarray,
    *, sqrtm: str = "scipy", eps: float = 1e-6,
) -> float:
    """Frechet distance of two Gaussians ``N(mu1, sigma1)``, ``N(mu2, sigma2)`` (see the module docstring)."""
    _check_choice("sqrtm", sqrtm, ("scipy", "eigh"))
    m1, m2 = torch.as_tensor(mu1, dtype=torch.float64), torch.as_tensor(mu2, dtype=torch.float64)
    s1, s2 = torch.as_tensor(sigma1, dtype=torch.float64), torch.as_tensor(sigma2, dtype=torch.float64)
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != (m1.numel(), m1.numel()):
        raise ValueError(f"shape mismatch: mu {tuple(m1.shape)}/{tuple(m2.shape)}, sigma {tuple(s1.shape)}/{tuple(s2.shape)}")
    diff = m1 - m2
    if sqrtm == "scipy":
        tr = _trace_sqrt_product_scipy(s1.cpu().numpy(), s2.to(s1.device).cpu().numpy(), eps)
    else:
        tr = _trace_sqrt_product_eigh(s1, s2.to(s1.device))
    return float(diff.dot(diff)) + float(torch.trace(s1)) + float(torch.trace(s2)) - 2 * tr


@dataclass(frozen=True)
class FIDOptions:
    """Attributes:
    sqrtm: ``"scipy"`` (default; pytorch-fid's algorithm) or ``"eigh"`` (torch, symmetric form).
    min_samples: fewer samples in either set adds a note (the covariance is rank-deficient below 2048).
    """

    sqrtm: str = "scipy"
    min_samples: int = FEATURE_DIM

    def __post_init__(self) -> None:
        _check_choice("sqrtm", self.sqrtm, ("scipy", "eigh"))


class FID(Metric):
    """Pooled FID. ``update(pred, target=None)`` adds ``pred`` to the generated set and ``target`` (when given)
    to the reference set; the two sets may have different sizes. :meth:`add_features` feeds cached features."""

    name: ClassVar[str] = "fid"
    higher_is_better: ClassVar[bool] = False
    Options: ClassVar[type] = FIDOptions
    has_target_features: ClassVar[bool] = True
    opts: FIDOptions

    def __init__(
        self,
        *,
        network: nn.Module | None = None,
        allow_random_weights: bool = False,
        device: torch.device | str | None = None,
        batch_size: int = 32,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if network is None:
            state = fetch_weights(lambda: torch_hub_state_dict(FID_WEIGHTS_FILE, FID_WEIGHTS_URL,
                                                               "FID (pytorch-fid Inception)"),
                                  allow_random_weights, "FID Inception")
            with seeded():
                network = FIDInception()
            if state is not None:
                network.load_official(state)
            self.weights = "official" if state is not None else "random"
        else:
            self.weights = "user"
        if self.weights == "random":
            self._not_comparable("FID ran with a random Inception: not comparable to published numbers")
        self.device = torch.device(device) if device is not None else None
        self.network = network.to(self.device) if self.device is not None else network
        self.batch_size = batch_size

    def reset(self) -> None:
        super().reset()
        self._pred_feats: list[Tensor] = []
        self._target_feats: list[Tensor] = []

    def _facts(self) -> dict[str, Any]:
        return {"input_range": "[0, 1]", "resize": "bilinear to 299x299, align_corners=False, no antialias",
                "network": "pytorch-fid FID Inception v3 (pool3, 2048-d)", "weights": self.weights,
                "covariance": "unbiased (N - 1)"}

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Pool3 features ``(B, 2048)`` (float32, CPU) of ``(B, 3, H, W)`` images in [0, 1]."""
        images = to_unit_images(images, "fid images")
        device = network_device(self.network, self.device, images.device)
        out = [self.network(images[i:i + self.batch_size].to(device).float()).float().cpu()
               for i in range(0, images.shape[0], self.batch_size)]
        return torch.cat(out)

    def target_dependencies(self) -> dict[str, Any]:
        return {"network": self.network}  # sqrtm and min_samples act on the pooled sets only

    def target_features(self, target: Tensor) -> dict[str, Tensor]:
        """``features`` ``(B, 2048)`` float32 (CPU): the reference images' pool3 features (:meth:`features`)."""
        return {"features": self.features(target)}

    def update_with_target_features(self, pred: Tensor | None, target_features: Mapping[str, Tensor],
                                    ids: Sequence[Hashable] | None = None) -> None:
        """Add generated images ``pred`` (when given) and the reference rows of :meth:`target_features`."""
        self.add_features(self.features(pred) if pred is not None else None, target_features["features"], ids)

    def update(self, pred: Tensor | None, target: Tensor | None = None,
               ids: Sequence[Hashable] | None = None) -> None:
        """Add generated images ``pred`` and/or reference images ``target`` (``ids`` label ``pred``)."""
        if target is None:
            self.add_features(self.features(pred) if pred is not None else None, None, ids)
        else:
            self.update_with_target_features(pred, self.target_features(target), ids)

    def add_features(self, pred: Tensor | None = None, target: Tensor | None = None,
                     ids: Sequence[Hashable] | None = None) -> None:
        """Add features computed earlier (``(N, D)``) to the generated and/or reference set."""
        if pred is not None:
            self._take_ids(ids, pred.shape[0])
            self._pred_feats.append(pred.detach().float().cpu())
        if target is not None:
            self._target_feats.append(target.detach().float().cpu())

    def stored_features(self) -> tuple[Tensor, Tensor]:
        """The accumulated ``(generated, reference)`` features (for caching)."""
        def cat(fs: list[Tensor]) -> Tensor:
            return torch.cat(fs) if fs else torch.zeros(0, FEATURE_DIM)
        return cat(self._pred_feats), cat(self._target_feats)

    @property
    def count(self) -> int:
        return sum(f.shape[0] for f in self._pred_feats)

    def compute(self) -> MetricResult:
        pred, target = self.stored_features()
        n1, n2 = pred.shape[0], target.shape[0]
        if n1 < 2 or n2 < 2:
            raise EmptyMetricError(f"fid: need at least 2 samples in each set, have {n1} generated and {n2} reference")
        mu1, s1 = gaussian_statistics(pred)
        mu2, s2 = gaussian_statistics(target)
        value = frechet_distance(mu1, s1, mu2, s2, sqrtm=self.opts.sqrtm)
        notes = list(self.notes)
        if min(n1, n2) < self.opts.min_samples:
            notes.append(f"FID from {n1} generated / {n2} reference samples (< {self.opts.min_samples}): biased and "
                         "rank-deficient; compare only at equal N")
        return MetricResult(
            name=self.name, value=value, mean=None, count=n1, excluded=0, options=self.options,
            comparable=self.comparable, higher_is_better=False, aggregation="pooled", ids=[],
            notes=notes, extra={"n_pred": n1, "n_target": n2, "feature_dim": pred.shape[1]},
        )
