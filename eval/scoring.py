"""Scoring a batch of samples into cache records, and aggregating cached records into metric results.

Per batch, every requested metric runs on (prediction, its protocol reference: target, source or driver); the
per-sample values and exclusions become cache records (:mod:`eval.cache`). FID keeps per-sample Inception
features of the prediction and, once per reference image, of the reference; its pooled value is computed at the
end from all cached features. Aggregation feeds the cached values to fresh metrics in the protocol's canonical
sample order, so the result does not depend on how many processes scored which samples.

With a :class:`~eval.reference_cache.ReferenceCache`, what a metric computes from the reference alone
(``Metric.target_features``) is read from it, computed only for the images it lacks (each distinct image once per
batch), and the metric scores the pair from those rows (``Metric.update_with_target_features``): the same code
as ``Metric.update`` without a cache. Metrics without a target side (PSNR, SSIM, L1, LPIPS), or whose networks
cannot be fingerprinted, run as without a cache.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar.errors import InputError

from .cache import CachedResults, CacheMismatchError, encode_features
from .data import load_batch
from .metrics import METRICS, EmptyMetricError, Metric, MetricResult, build_metric
from .metrics.face import METRIC_BUILT_LANDMARK_MODELS
from .protocols import Protocol
from .protocols.pairs import Sample
from .reference_cache import ReferenceCache

__all__ = ["FACE_METRICS", "Scorer", "aggregate", "parse_metric_options", "reference_key"]

FACE_METRICS = ("csim", "akd", "aed", "apd")


def reference_key(path: Path) -> str:
    """Cache key of a reference image (its resolved path)."""
    return str(Path(path).resolve())


def parse_metric_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["ssim.preset=wang2004", "apd.include_translation=false"]`` -> ``{"ssim": {"preset": "wang2004"}, ...}``.
    Values are parsed as JSON when they can be (numbers, booleans, null), else kept as strings."""
    import json

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise InputError(f"metric option {item!r}: expected METRIC.OPTION=VALUE")
        key, raw = item.split("=", 1)
        metric, option = key.split(".", 1)
        try:
            value = json.loads(raw.lower() if raw.lower() in ("true", "false", "null") else raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(metric.lower(), {})[option] = value
    return out


def _accepts(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


class Scorer:
    """Builds the metrics of a protocol once and scores batches.

    Args:
        protocol: the protocol (which reference each metric uses).
        metrics: metric names (a subset of ``protocol.metrics``).
        options: per-metric options (see :func:`parse_metric_options`).
        device: where the networks run.
        allow_random_weights: random init for missing weights (results NOT COMPARABLE).
        face: face networks (:func:`eval.face_networks.build_face_networks` by default, built lazily).
        extra_kwargs: per-metric constructor arguments (tests plug in tiny networks here).
        reference_cache: where the reference side is kept between runs (``None``: computed every time).
    """

    def __init__(self, protocol: Protocol, metrics: Sequence[str], options: dict[str, dict[str, Any]] | None = None,
                 device: torch.device | str = "cpu", allow_random_weights: bool = False, face: Any = None,
                 extra_kwargs: dict[str, dict[str, Any]] | None = None,
                 reference_cache: ReferenceCache | None = None) -> None:
        self.protocol = protocol
        self.reference_cache = reference_cache
        self.metric_names = list(metrics)
        bad = [m for m in self.metric_names if m not in protocol.metrics]
        if bad:
            raise InputError(f"{', '.join(bad)} not part of {protocol.key} (its metrics: {', '.join(protocol.metrics)})")
        options = options or {}
        unknown = sorted(set(options) - set(self.metric_names))
        if unknown:
            raise InputError(f"options given for metric(s) not run: {', '.join(unknown)}")
        self.device = torch.device(device)
        self.allow_random_weights = allow_random_weights
        extra_kwargs = extra_kwargs or {}
        # AKD builds the landmark networks of some landmark_model options itself (face_alignment's SFD + 2D-FAN):
        # it then takes no landmarks from the shared analysis (whose networks are RetinaFace + 3DFAN)
        akd_model = options.get("akd", {}).get("landmark_model")
        self.akd_builds_landmarks = (
            "akd" in self.metric_names and akd_model in METRIC_BUILT_LANDMARK_MODELS
            and "landmarks" not in extra_kwargs.get("akd", {})
            and (face is None or getattr(face.landmarks, "landmark_model", None) != akd_model))
        face_users = [m for m in self.metric_names
                      if m in FACE_METRICS and not (m == "akd" and self.akd_builds_landmarks)]
        if face is None and face_users and not all(m in extra_kwargs for m in face_users):
            from .face_networks import build_face_networks

            face = build_face_networks(self.device, allow_random_weights,
                                       need_coefficients=any(m in ("aed", "apd") for m in self.metric_names))
        self.face = face
        self.metrics: dict[str, Metric] = {}
        for name in self.metric_names:
            cls = METRICS[name]
            kwargs: dict[str, Any] = dict(options.get(name, {}))
            if _accepts(cls, "allow_random_weights"):
                kwargs["allow_random_weights"] = allow_random_weights
            if _accepts(cls, "device"):
                kwargs["device"] = self.device
            if face is not None:
                if name == "csim" or (name == "akd" and not self.akd_builds_landmarks):
                    kwargs["landmarks"] = face.landmarks
                elif name in ("aed", "apd"):
                    kwargs["extractor"] = face.coefficients
            kwargs.update(extra_kwargs.get(name, {}))
            self.metrics[name] = build_metric(name, **kwargs)

    def manifest_metrics(self) -> dict[str, dict[str, Any]]:
        """Options (and network facts) of each metric, as JSON, for the cache manifest and the report."""
        import json

        return {n: json.loads(json.dumps(m.options, default=str)) for n, m in self.metrics.items()}

    def references_needed(self, names: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(self.protocol.reference_of(n) for n in names))

    def _cached(self, name: str) -> bool:
        return self.reference_cache is not None and self.reference_cache.cacheable(self.metrics[name])

    def _reference_features(self, samples: Sequence[Sample], names: Sequence[str], positions: Sequence[int],
                            decoded: Tensor | None) -> dict[str, dict[str, Tensor]]:
        """Target features ``{metric: {name: (len(positions), ...)}}`` of the references of ``samples[p]`` (one
        kind for all ``names``) from the reference cache; ``decoded``: that kind's whole batch when it is
        already decoded (else only the images the cache lacks are read)."""
        assert self.reference_cache is not None
        kind = self.protocol.reference_of(names[0])
        paths = [samples[p].reference(kind) for p in positions]

        def load(idx: list[int]) -> Tensor:
            if decoded is not None:
                return decoded[torch.tensor([positions[i] for i in idx], device=decoded.device)]
            return load_batch([paths[i] for i in idx]).to(self.device)

        keys = [self.reference_cache.key_of(p) for p in paths]
        return self.reference_cache.features({n: self.metrics[n] for n in names}, keys, load)

    @torch.no_grad()
    def score(self, samples: Sequence[Sample], pred: Tensor, todo: dict[str, list[int]],
              cache: CachedResults) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """Score ``pred`` (the predictions of ``samples``, ``(B, 3, H, W)`` in [0, 1]).

        ``todo[metric]`` lists the batch positions still to compute for that metric. Returns the sample records
        and the new reference features to cache.
        """
        if self.face is not None and hasattr(self.face, "clear"):
            self.face.clear()
        records: list[dict[str, Any]] = [{"id": s.id, "v": {}, "x": {}} for s in samples]
        new_refs: dict[str, np.ndarray] = {}
        pred = pred.to(self.device)
        active = {m: pos for m, pos in todo.items() if pos}
        paired = [m for m in active if m != "fid"]
        cached = [m for m in paired if self._cached(m)]
        refs: dict[str, Tensor] = {}  # decoded reference batches, for the metrics that need the pixels
        for kind in self.references_needed([m for m in paired if m not in cached]):
            refs[kind] = load_batch([s.reference(kind) for s in samples]).to(self.device)
        target_rows: dict[str, dict[str, Tensor]] = {}  # metric -> its features for every batch position
        for kind in self.references_needed(cached):
            names = [m for m in cached if self.protocol.reference_of(m) == kind]
            positions = sorted({p for m in names for p in active[m]})
            feats = self._reference_features(samples, names, positions, refs.get(kind))
            row_of = {p: i for i, p in enumerate(positions)}
            for m in names:
                take = torch.tensor([row_of[p] for p in active[m]])
                target_rows[m] = {k: v[take] for k, v in feats[m].items()}
        for name, positions in active.items():
            metric = self.metrics[name]
            idx = torch.tensor(positions)
            if name == "fid":
                new_refs.update(self._score_fid(samples, pred, positions, records, cache))
                continue
            metric.reset()
            kind = self.protocol.reference_of(name)
            whole = len(positions) == len(samples)
            sub = idx.to(pred.device)
            ids = [samples[p].id for p in positions]
            pred_sub = pred if whole else pred[sub]
            if name in target_rows:
                metric.update_with_target_features(pred_sub, target_rows[name], ids=ids)
            else:
                metric.update(pred_sub, refs[kind] if whole else refs[kind][sub], ids=ids)
            # the metric keeps this batch's values and exclusions (reset above)
            values = dict(zip(metric._ids, metric._values_tensor().tolist(), strict=True))
            for p, sid in zip(positions, ids, strict=True):
                if sid in values:
                    records[p]["v"][name] = values[sid]
                else:
                    records[p]["x"][name] = metric._exclusions.get(sid, "excluded")
            metric.reset()
        for r in records:
            if not r["x"]:
                del r["x"]
        return records, new_refs

    def _score_fid(self, samples: Sequence[Sample], pred: Tensor, positions: list[int],
                   records: list[dict[str, Any]], cache: CachedResults) -> dict[str, np.ndarray]:
        """FID features of the predictions at ``positions`` into ``records``; returns the reference features
        that RESULTS lacks (key: :func:`reference_key`), from the reference cache when there is one."""
        metric = self.metrics["fid"]
        idx = torch.tensor(positions)
        feats = metric.features(pred[idx.to(pred.device)]).numpy()
        for p, f in zip(positions, feats, strict=True):
            records[p]["f"] = encode_features(f)
        kind = self.protocol.reference_of("fid")
        missing = list(dict.fromkeys(
            reference_key(samples[p].reference(kind)) for p in positions
            if reference_key(samples[p].reference(kind)) not in cache.refs))
        if not missing:
            return {}
        first: dict[str, int] = {}
        for p in positions:
            first.setdefault(reference_key(samples[p].reference(kind)), p)
        if self._cached("fid"):
            rf = self._reference_features(samples, ["fid"], [first[k] for k in missing], None)["fid"]["features"]
        else:
            images = load_batch([samples[first[k]].reference(kind) for k in missing]).to(self.device)
            rf = metric.target_features(images)["features"]
        new_refs = dict(zip(missing, rf.numpy(), strict=True))
        cache.refs.update(new_refs)
        return new_refs


def aggregate(scorer: Scorer, samples: Sequence[Sample], cache: CachedResults) -> dict[str, MetricResult]:
    """Metric results from the cache, fed in the samples' canonical order (independent of sharding)."""
    results: dict[str, MetricResult] = {}
    ordered = sorted(samples, key=lambda s: s.index)
    for name in scorer.metric_names:
        metric = scorer.metrics[name]
        metric.reset()
        missing = [s.id for s in ordered if not cache.has(s.id, name)]
        if missing:
            raise CacheMismatchError(f"{name}: {len(missing)} sample(s) have no cached result, e.g. {missing[:5]}")
        if name == "fid":
            kind = scorer.protocol.reference_of("fid")
            pred = torch.from_numpy(np.stack([cache.features[s.id] for s in ordered]))
            ref = torch.from_numpy(np.stack([cache.refs[reference_key(s.reference(kind))] for s in ordered]))
            metric.add_features(pred, ref, ids=[s.id for s in ordered])
        else:
            kept = [(s.id, cache.values[s.id][name]) for s in ordered if name in cache.values.get(s.id, {})]
            if kept:
                metric.add_values(torch.tensor([v for _, v in kept], dtype=torch.float64), [i for i, _ in kept])
            by_reason: dict[str, list[str]] = {}
            for s in ordered:
                reason = cache.exclusions.get(s.id, {}).get(name)
                if reason is not None:
                    by_reason.setdefault(reason, []).append(s.id)
            for reason, ids in by_reason.items():
                metric.add_exclusions(ids, reason)
        try:
            results[name] = metric.compute()
        except EmptyMetricError as err:
            raise EmptyMetricError(f"{name}: {err}") from err
        metric.reset()
    return results
