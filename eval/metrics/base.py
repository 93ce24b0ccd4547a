"""The common interface of every metric: per-sample accumulation, exclusions, options and the result.

A metric is fed batches with :meth:`Metric.update` (``pred``, ``target``, optional ``ids``) and keeps one value
per sample on the CPU in float64, so a caller can cache values per sample and a report can break them down per
video. :meth:`Metric.compute` returns a :class:`MetricResult`: the reported value, the mean of the per-sample
values, how many samples were counted and how many were excluded (with a reason each), the options, and a
``comparable`` flag that is ``False`` whenever a network ran with random weights (or a plugged-in network did not
declare itself official).

No metric returns a silent 0 or NaN: a sample without a face is an explicit, counted exclusion; non-finite
per-sample values raise; an empty metric raises :class:`EmptyMetricError`.

Images: float tensors ``(B, 3, H, W)`` in [0, 1] (uint8 ``[0, 255]`` is accepted and divided by 255), on any
device. Values outside [0, 1] by more than 1e-3 raise (a [-1, 1] image is a common mistake); tinier excursions are
clamped.

Target side: a metric that computes something from the target image alone (a network's features, landmarks,
coefficients) sets ``has_target_features`` and splits :meth:`Metric.update` into :meth:`Metric.target_features`
(the target alone: one row per image, named tensors with a leading batch dimension) and
:meth:`Metric.update_with_target_features` (the pair); ``update(pred, target)`` is exactly the two in a row, so the
same code runs whether the rows were just computed or read from a cache (:mod:`eval.reference_cache`).
:meth:`Metric.target_dependencies` names what the rows depend on besides the image (options, networks).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from avatar.errors import AvatarError, InputError, UnknownOptionError

__all__ = [
    "EmptyMetricError",
    "ImageMetric",
    "ImageOptions",
    "Metric",
    "MetricResult",
    "NoOptions",
    "TargetFeatures",
    "composite_background",
    "to_unit_images",
]

RANGE_TOLERANCE = 1e-3
TargetFeatures = dict[str, Tensor]
"""What :meth:`Metric.target_features` returns: name -> tensor ``(B, ...)``, row ``i`` computed from target ``i``
alone (so rows can be cached per image and stacked again in any order)."""
BACKGROUNDS = {"black": 0.0, "white": 1.0}


class EmptyMetricError(AvatarError, RuntimeError):
    """``compute()`` was called on a metric that counted no sample."""


@dataclass(frozen=True)
class NoOptions:
    """A metric without options."""


def _check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise InputError(f"option {name}={value!r} is not one of {', '.join(map(repr, choices))}")


@dataclass
class MetricResult:
    """What :meth:`Metric.compute` returns.

    Attributes:
        name: metric name (``psnr``, ``fid`` ...).
        value: the reported figure (the mean of per-sample values, or a pooled value where ``aggregation`` says so).
        mean: mean of the per-sample values; ``None`` for a pooled-only metric (FID).
        count: samples counted in ``value``.
        excluded: samples excluded (e.g. no face found); each has a reason in ``exclusions``.
        options: the options the value was computed with (JSON-able), including the network and weights.
        comparable: ``False`` when a network ran with random weights or was not declared official.
        higher_is_better: direction of the metric.
        aggregation: ``"mean"`` (mean of per-sample values) or ``"pooled"``.
        ids: sample ids, in order, aligned with ``values``.
        values: per-sample values ``(count,)`` float64 on the CPU (empty for FID).
        exclusions: id -> reason, for every excluded sample.
        notes: caveats a report should print (random weights, small-N FID ...).
        extra: metric-specific figures (FID set sizes, PSNR infinite frames ...).
    """

    name: str
    value: float
    mean: float | None
    count: int
    excluded: int
    options: dict[str, Any]
    comparable: bool
    higher_is_better: bool
    aggregation: str = "mean"
    ids: list[Hashable] = field(default_factory=list)
    values: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    exclusions: dict[Hashable, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def per_sample(self) -> dict[Hashable, float]:
        """id -> value of every counted sample."""
        return dict(zip(self.ids, self.values.tolist(), strict=True))

    def breakdown(self, key: Callable[[Hashable], Hashable]) -> dict[Hashable, dict[str, float | int | None]]:
        """Per-group mean, count and exclusions; ``key`` maps a sample id to its group (e.g. its video).

        Returns ``{group: {"mean": ..., "count": ..., "excluded": ...}}``; a group whose samples were all excluded
        has ``mean`` ``None`` and ``count`` 0 (its exclusions are listed, so nothing is hidden).
        """
        sums: dict[Hashable, float] = {}
        counts: dict[Hashable, int] = {}
        excl: dict[Hashable, int] = {}
        for sid, v in zip(self.ids, self.values.tolist(), strict=True):
            g = key(sid)
            sums[g] = sums.get(g, 0.0) + v
            counts[g] = counts.get(g, 0) + 1
        for sid in self.exclusions:
            g = key(sid)
            excl[g] = excl.get(g, 0) + 1
        groups = list(dict.fromkeys([*counts, *excl]))
        return {
            g: {"mean": sums[g] / counts[g] if counts.get(g) else None, "count": counts.get(g, 0),
                "excluded": excl.get(g, 0)}
            for g in groups
        }

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-able summary (per-sample values and exclusions only when ``per_sample``)."""
        out: dict[str, Any] = {
            "name": self.name, "value": self.value, "mean": self.mean, "count": self.count,
            "excluded": self.excluded, "aggregation": self.aggregation, "comparable": self.comparable,
            "higher_is_better": self.higher_is_better, "options": dict(self.options), "notes": list(self.notes),
            "extra": dict(self.extra),
        }
        if per_sample:
            out["per_sample"] = {str(k): v for k, v in self.per_sample().items()}
            out["exclusions"] = {str(k): v for k, v in self.exclusions.items()}
        return out


class Metric:
    """Base class: options, per-sample accumulation with ids, exclusions and :class:`MetricResult`.

    Subclasses set ``name``, ``higher_is_better``, ``Options`` (a frozen dataclass of the options and their
    defaults) and implement :meth:`update`; they call :meth:`_record` with per-sample values.
    """

    name: ClassVar[str] = "metric"
    higher_is_better: ClassVar[bool] = True
    Options: ClassVar[type] = NoOptions
    has_target_features: ClassVar[bool] = False
    """``True``: :meth:`target_features` / :meth:`update_with_target_features` split :meth:`update`."""

    def __init__(self, **options: Any) -> None:
        known = [f.name for f in dataclasses.fields(self.Options)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise UnknownOptionError(f"{self.name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known) or 'none'}")
        self.opts = self.Options(**options)
        self.comparable = True
        self.notes: list[str] = []
        self.reset()

    # ---- options -------------------------------------------------------------------------------------
    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return dataclasses.asdict(cls.Options())

    @property
    def options(self) -> dict[str, Any]:
        """The configured options plus the fixed facts (network, weights, input range) as a JSON-able dict."""
        return {**dataclasses.asdict(self.opts), **self._facts()}

    def _facts(self) -> dict[str, Any]:
        return {}

    def _not_comparable(self, why: str) -> None:
        self.comparable = False
        if why not in self.notes:
            self.notes.append(why)

    # ---- accumulation --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every accumulated sample (options and networks are kept)."""
        self._ids: list[Hashable] = []
        self._values: list[Tensor] = []
        self._exclusions: dict[Hashable, str] = {}
        self._seen: set[Hashable] = set()
        self._next_id = 0

    def update(self, pred: Tensor, target: Tensor, ids: Sequence[Hashable] | None = None) -> None:
        raise NotImplementedError

    # ---- the target side (metrics with ``has_target_features``) -------------------------------------------
    def target_features(self, target: Tensor) -> TargetFeatures:
        """What the metric computes from ``target`` ``(B, 3, H, W)`` alone: name -> ``(B, ...)`` (see
        :data:`TargetFeatures`). Accumulates nothing."""
        raise NotImplementedError(f"{self.name} computes nothing from the target alone")

    def update_with_target_features(self, pred: Tensor, target_features: Mapping[str, Tensor],
                                    ids: Sequence[Hashable] | None = None) -> Tensor | None:
        """Add a batch from ``pred`` ``(B, 3, H, W)`` and the rows :meth:`target_features` gave for its targets
        (on any device); returns what :meth:`update` returns."""
        raise NotImplementedError(f"{self.name} computes nothing from the target alone")

    def target_dependencies(self) -> dict[str, Any]:
        """Everything :meth:`target_features` depends on besides the image: option values (JSON-able) and the
        networks it runs (modules or callables; a cache fingerprints them). Pair-only options are left out."""
        return {}

    def _take_ids(self, ids: Sequence[Hashable] | None, n: int) -> list[Hashable]:
        if ids is None:
            out: list[Hashable] = list(range(self._next_id, self._next_id + n))
            self._next_id += n
        else:
            out = list(ids)
            if len(out) != n:
                raise ValueError(f"{self.name}: {len(out)} ids for a batch of {n}")
        dup = [i for i in out if i in self._seen]
        if dup or len(set(out)) != len(out):
            raise ValueError(f"{self.name}: duplicate sample id(s) {dup[:5] or out[:5]}; every sample needs its own id")
        self._seen.update(out)
        return out

    def _record(
        self,
        values: Tensor,
        ids: Sequence[Hashable] | None,
        keep: Tensor | None = None,
        reasons: Sequence[str | None] | None = None,
    ) -> None:
        """Store per-sample ``values`` ``(B,)``; samples with ``keep`` False are excluded with ``reasons[i]``."""
        values = values.detach().reshape(-1).to("cpu", torch.float64)
        n = values.numel()
        keep_list = [True] * n if keep is None else keep.reshape(-1).to("cpu").tolist()
        if len(keep_list) != n:
            raise ValueError(f"{self.name}: keep mask of {len(keep_list)} for {n} values")
        kept = torch.tensor(keep_list, dtype=torch.bool)
        kept_values = values[kept]
        if torch.isnan(kept_values).any():
            bad = torch.nonzero(kept & torch.isnan(values)).flatten().tolist()
            raise FloatingPointError(f"{self.name}: NaN value for batch position(s) {bad[:5]}; refusing to average it")
        sample_ids = self._take_ids(ids, n)
        for i, k in enumerate(keep_list):
            if k:
                self._ids.append(sample_ids[i])
            else:
                reason = reasons[i] if reasons is not None and reasons[i] else "excluded"
                self._exclusions[sample_ids[i]] = reason
        self._values.append(kept_values)

    def add_values(self, values: Tensor | Sequence[float], ids: Sequence[Hashable]) -> None:
        """Feed per-sample values computed earlier with the same options (e.g. from a cache)."""
        self._record(torch.as_tensor(values, dtype=torch.float64), ids)

    def add_exclusions(self, ids: Sequence[Hashable], reason: str) -> None:
        """Count samples as excluded (e.g. frames the caller knows are missing)."""
        ids = list(ids)
        self._record(torch.zeros(len(ids), dtype=torch.float64), ids, torch.zeros(len(ids), dtype=torch.bool),
                     [reason] * len(ids))

    @property
    def count(self) -> int:
        return len(self._ids)

    # ---- result --------------------------------------------------------------------------------------
    def _values_tensor(self) -> Tensor:
        return torch.cat(self._values) if self._values else torch.zeros(0, dtype=torch.float64)

    def _check_not_empty(self) -> None:
        if not self._ids:
            raise EmptyMetricError(
                f"{self.name}: no sample was counted ({len(self._exclusions)} excluded"
                + (f", e.g. {next(iter(self._exclusions.values()))!r}" if self._exclusions else "")
                + "); there is no value to report"
            )

    def _aggregate(self, values: Tensor) -> tuple[float, str, dict[str, Any]]:
        """The reported value from the per-sample values: the mean unless a subclass pools."""
        return float(values.mean()), "mean", {}

    def compute(self) -> MetricResult:
        self._check_not_empty()
        values = self._values_tensor()
        value, aggregation, extra = self._aggregate(values)
        return MetricResult(
            name=self.name, value=value, mean=float(values.mean()), count=len(self._ids),
            excluded=len(self._exclusions), options=self.options, comparable=self.comparable,
            higher_is_better=self.higher_is_better, aggregation=aggregation, ids=list(self._ids), values=values,
            exclusions=dict(self._exclusions), notes=list(self.notes), extra=extra,
        )

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.opts).items())
        return f"{type(self).__name__}({opts})"


# ---------------------------------------------------------------------------------------------------------
# image helpers


def to_unit_images(x: Tensor, name: str = "image") -> Tensor:
    """Check a ``(B, 3, H, W)`` batch and return it as float in [0, 1] (uint8 is divided by 255).

    Raises ``ValueError`` for a wrong shape or for values outside [0, 1] by more than 1e-3.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected shape (B, 3, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected float in [0, 1] or uint8, got {x.dtype}")
    if x.numel():
        lo, hi = torch.aminmax(x.detach())
        lo_f, hi_f = float(lo), float(hi)
        if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
            raise ValueError(f"{name}: non-finite pixel values")
        if lo_f < -RANGE_TOLERANCE or hi_f > 1 + RANGE_TOLERANCE:
            hint = " (it looks like [-1, 1]: pass (x + 1) / 2)" if lo_f < -RANGE_TOLERANCE else ""
            raise ValueError(f"{name}: values span [{lo_f:.4g}, {hi_f:.4g}], expected [0, 1]{hint}")
        if lo_f < 0 or hi_f > 1:
            x = x.clamp(0, 1)
    return x


def composite_background(x: Tensor, mask: Tensor, background: str) -> Tensor:
    """``x * mask + bg * (1 - mask)`` with ``mask`` ``(B, 1, H, W)`` in [0, 1] (1 = foreground)."""
    _check_choice("background", background, BACKGROUNDS)
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0] or mask.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"mask: expected shape ({x.shape[0]}, 1, {x.shape[2]}, {x.shape[3]}), got {tuple(mask.shape)}")
    mask = mask.to(x.device, x.dtype) if mask.dtype != torch.uint8 else mask.to(x.device).to(x.dtype) / 255.0
    bg = BACKGROUNDS[background]
    return x * mask + bg * (1 - mask)


@dataclass(frozen=True)
class ImageOptions:
    """Options shared by the paired image metrics.

    Attributes:
        background: colour outside the mask when ``update(..., mask=...)`` is given: ``"black"`` (GOHA: MODNet
            matte, ``image * matte``) or ``"white"`` (OTAvatar's HDTF processing). Without a mask the frames are
            used as given (composited by the protocol, or not at all).
        mask_applies_to: ``"both"`` (pred and target are composited with the same matte, so the background does
            not count) or ``"target"`` (only the ground truth is composited; the prediction is used as rendered).
    """

    background: str = "black"
    mask_applies_to: str = "both"

    def __post_init__(self) -> None:
        _check_choice("background", self.background, BACKGROUNDS)
        _check_choice("mask_applies_to", self.mask_applies_to, ("both", "target"))


class ImageMetric(Metric):
    """A paired full-reference image metric: ``update(pred, target, ids=None, mask=None)``.

    ``pred`` and ``target`` are ``(B, 3, H, W)`` in [0, 1] (or uint8) of the same size; ``mask`` (optional,
    ``(B, 1, H, W)`` in [0, 1]) composites them on the ``background`` colour (see :class:`ImageOptions`).
    Subclasses implement :meth:`per_sample` returning ``(B,)`` values.
    """

    Options: ClassVar[type] = ImageOptions

    def reset(self) -> None:
        super().reset()
        self._n_masked = 0

    def _prepare(self, pred: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        pred = to_unit_images(pred, f"{self.name} pred")
        target = to_unit_images(target, f"{self.name} target")
        if pred.shape != target.shape:
            raise ValueError(f"{self.name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        target = target.to(pred.device)
        if mask is not None:
            opts: ImageOptions = self.opts  # type: ignore[assignment]
            target = composite_background(target, mask, opts.background)
            if opts.mask_applies_to == "both":
                pred = composite_background(pred, mask, opts.background)
            self._n_masked += pred.shape[0]
        return pred, target

    def per_sample(self, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def update(
        self,
        pred: Tensor,
        target: Tensor,
        ids: Sequence[Hashable] | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Add a batch; returns its per-sample values ``(B,)`` (float64, CPU)."""
        pred, target = self._prepare(pred, target, mask)
        values = self.per_sample(pred, target).detach().to("cpu", torch.float64)
        self._record(values, ids)
        return values

    def _aggregate(self, values: Tensor) -> tuple[float, str, dict[str, Any]]:
        value, aggregation, extra = super()._aggregate(values)
        return value, aggregation, {**extra, "n_masked": self._n_masked}
