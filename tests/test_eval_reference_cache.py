"""The reference-side cache of eval.run (eval/reference_cache.py): reuse across runs and methods, invalidation by
content and options, atomic writes, --no-reference-cache, and the metrics' target-side split. Offline, tiny
networks, 48x48 synthetic frames."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval.reference_cache as rc_mod
from eval.metrics import AED, AKD, APD, CSIM, FID
from eval.metrics.base import Metric
from eval.metrics.face import FaceLandmarks
from eval.reference_cache import ReferenceCache, fingerprint, module_fingerprint
from eval.run import run

SIZE = 48
METRICS = "psnr,csim,akd,aed,apd,fid"
CACHED = ("csim", "akd", "aed", "apd", "fid")  # the metrics with a target side


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _pixels(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def make_data(root: Path, videos: int = 2, frames: int = 4, seed: int = 0, noise: float = 10.0,
              names: tuple[str, ...] = ("vid0", "vid1")) -> tuple[Path, Path]:
    """HDTF-style DATA (``videos`` x ``frames``) and same-identity PREDICTIONS (noisy copies of frames >= 1)."""
    rng = np.random.default_rng(seed)
    data, pred = root / "data", root / "pred"
    for v in range(videos):
        base = rng.uniform(40, 215, (SIZE, SIZE, 3))
        for f in range(frames):
            gt = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            _save(data / names[v] / f"{f:06d}.png", gt)
            if f:
                _save(pred / names[v] / f"{f:06d}.png",
                      np.clip(gt + rng.normal(0, noise, gt.shape), 0, 255).astype(np.uint8))
    return data, pred


def other_method(data: Path, root: Path, noise: float = 25.0) -> Path:
    """Another method's frames for the same references."""
    rng = np.random.default_rng(7)
    for gt_path in sorted(data.glob("*/*.png")):
        if gt_path.name != "000000.png":
            gt = np.asarray(Image.open(gt_path)).astype(float)
            _save(root / gt_path.parent.name / gt_path.name,
                  np.clip(gt + rng.normal(0, noise, gt.shape), 0, 255).astype(np.uint8))
    return root


class CountingFace:
    """Deterministic face "networks" from image statistics that record every image they analyse (by pixels)."""

    comparable = False
    cache_fingerprint = "counting-face-v1"

    def __init__(self) -> None:
        grid = torch.stack(torch.meshgrid(torch.linspace(10, 38, 17), torch.linspace(12, 36, 4), indexing="ij"), -1)
        self.base = grid.reshape(68, 2).double()
        self.seen: list[str] = []

    def _see(self, images: torch.Tensor) -> None:
        u8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        self.seen += [_pixels(a) for a in u8]

    def landmarks(self, images: torch.Tensor) -> FaceLandmarks:
        self._see(images)
        m = images.mean(dim=(1, 2, 3)).double()
        return FaceLandmarks(self.base[None] + m[:, None, None] * 4, m > 0.05)

    def coefficients(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self._see(images)
        m = images.mean(dim=(2, 3)).double()
        return {"exp": m.repeat(1, 22)[:, :64], "angle": m, "trans": m * 2,
                "found": torch.ones(len(images), dtype=torch.bool)}


class Nets:
    """The tiny networks of one run, with counters: images through the FID network and crops through ArcFace."""

    def __init__(self, seed: int = 0) -> None:
        self.face = CountingFace()
        torch.manual_seed(seed)
        self.embedder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, 8), torch.nn.Flatten(),
                                            torch.nn.Linear(4 * 14 * 14, 16))
        self.fid = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 4), torch.nn.AdaptiveAvgPool2d(2),
                                       torch.nn.Flatten())
        self.fid_images: list[str] = []
        self.embedded = 0
        self.fid.register_forward_pre_hook(lambda _m, a: self.fid_images.extend(
            _pixels(x) for x in (a[0] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()))
        self.embedder.register_forward_pre_hook(lambda _m, a: setattr(self, "embedded", self.embedded + len(a[0])))

    def kwargs(self) -> dict:
        return {"face": self.face, "extra_kwargs": {"csim": {"embedder": self.embedder, "comparable": False},
                                                    "fid": {"network": self.fid}}}


def _args(data: Path, pred: Path, out: Path, *extra: str) -> list[str]:
    return ["--benchmark", "hdtf", "--protocol", "same-identity", "--data", str(data), "--predictions", str(pred),
            "--out", str(out), "--allow-random-weights", "--device", "cpu", "--batch-size", "4", "--no-progress",
            "--no-plots", "--metrics", METRICS, *extra]


def _values(summary: dict) -> dict[str, float]:
    return {n: m["value"] for n, m in summary["metrics"].items()}


def _facts(summary: dict) -> dict:
    return summary["cache"]["reference_cache"]


def _reference_pixels(data: Path) -> set[str]:
    return {_pixels(np.asarray(Image.open(p).convert("RGB"))) for p in data.glob("*/*.png")}


def _entries(root: Path, metric: str | None = None) -> list[Path]:
    return sorted(root.glob(f"v*/{metric or '*'}-*/*/*.safetensors"))


@pytest.fixture
def spy_target_features(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the metrics whose ``target_features`` ran (one entry per call)."""
    calls: list[str] = []
    for cls in (CSIM, AKD, AED, APD, FID):
        original = cls.target_features

        def spy(self: Metric, *a: object, _original=original, **k: object) -> object:  # noqa: ANN001
            calls.append(self.name)
            return _original(self, *a, **k)

        monkeypatch.setattr(cls, "target_features", spy)
    yield calls


# ---- eval.run end to end -----------------------------------------------------------------------------------


def test_second_run_reads_the_reference_side_and_gives_identical_numbers(tmp_path: Path,
                                                                         spy_target_features: list[str]) -> None:
    data, pred = make_data(tmp_path)
    refs = tmp_path / "refs"
    references = _reference_pixels(data)
    first_nets = Nets()
    first = run(_args(data, pred, tmp_path / "out1", "--reference-cache", str(refs)), scorer_kwargs=first_nets.kwargs())
    assert _facts(first)["rows_computed"] == 6 * len(CACHED) and _facts(first)["rows_read"] == 0
    assert set(spy_target_features) == set(CACHED)
    assert references & set(first_nets.face.seen) and references & set(first_nets.fid_images)
    assert len(_entries(refs)) == 6 * len(CACHED) and not list((refs / "tmp").iterdir())

    spy_target_features.clear()
    nets = Nets()
    again = run(_args(data, pred, tmp_path / "out2", "--reference-cache", str(refs)), scorer_kwargs=nets.kwargs())
    assert _values(again) == _values(first)
    assert _facts(again)["rows_read"] == 6 * len(CACHED) and _facts(again)["rows_computed"] == 0
    assert spy_target_features == []  # no reference-side work at all
    assert not references & set(nets.face.seen) and not references & set(nets.fid_images)
    assert len(nets.fid_images) == 6 and nets.embedded == 6  # the 6 predictions only
    assert len(_entries(refs)) == 6 * len(CACHED)

    # another method scored against the same references: no reference-side work either
    other = other_method(data, tmp_path / "other")
    nets = Nets()
    summary = run(_args(data, other, tmp_path / "out3", "--reference-cache", str(refs)), scorer_kwargs=nets.kwargs())
    assert spy_target_features == [] and not references & set(nets.face.seen)
    assert _facts(summary)["rows_computed"] == 0
    assert summary["metrics"]["psnr"]["value"] < first["metrics"]["psnr"]["value"]  # a worse method, really scored


def test_default_folder_is_under_the_avatar_cache(tmp_path: Path, _isolated_cache: Path) -> None:
    data, pred = make_data(tmp_path)
    summary = run(_args(data, pred, tmp_path / "out"), scorer_kwargs=Nets().kwargs())
    root = _isolated_cache / "eval-references"
    assert _facts(summary)["dir"] == str(root) and len(_entries(root)) == 6 * len(CACHED)


def test_a_changed_reference_file_invalidates_only_its_entries(tmp_path: Path,
                                                               spy_target_features: list[str]) -> None:
    data, pred = make_data(tmp_path)
    refs = tmp_path / "refs"
    first = run(_args(data, pred, tmp_path / "out1", "--reference-cache", str(refs)), scorer_kwargs=Nets().kwargs())
    changed = data / "vid1" / "000002.png"
    arr = np.asarray(Image.open(changed)).copy()
    arr[:24] = 255 - arr[:24]
    _save(changed, arr)
    spy_target_features.clear()
    nets = Nets()
    again = run(_args(data, pred, tmp_path / "out2", "--reference-cache", str(refs)), scorer_kwargs=nets.kwargs())
    assert _facts(again)["rows_computed"] == len(CACHED) and _facts(again)["rows_read"] == 5 * len(CACHED)
    assert sorted(spy_target_features) == sorted(CACHED)  # one call each, on the one changed image
    assert set(nets.face.seen) & _reference_pixels(data) == {_pixels(arr)}
    assert len(_entries(refs)) == 7 * len(CACHED)  # the old entries stay (keyed by the old content)
    js1 = json.loads((tmp_path / "out1" / "metrics.json").read_text())
    js2 = json.loads((tmp_path / "out2" / "metrics.json").read_text())
    assert js2["per_video"]["akd"]["vid0"] == js1["per_video"]["akd"]["vid0"]
    assert js2["per_video"]["akd"]["vid1"] != js1["per_video"]["akd"]["vid1"]
    assert _values(again)["fid"] != _values(first)["fid"]


def test_options_that_change_the_reference_side_invalidate_it(tmp_path: Path,
                                                             spy_target_features: list[str]) -> None:
    data, pred = make_data(tmp_path)
    refs = tmp_path / "refs"
    run(_args(data, pred, tmp_path / "out1", "--reference-cache", str(refs)), scorer_kwargs=Nets().kwargs())
    spy_target_features.clear()
    summary = run(_args(data, pred, tmp_path / "out2", "--reference-cache", str(refs),
                        "--metric-option", "csim.align=target", "--metric-option", "akd.distance=l2",
                        "--metric-option", "apd.include_translation=false"), scorer_kwargs=Nets().kwargs())
    # csim's alignment and apd's coefficients change the reference rows; akd's distance acts on the pair only
    assert set(spy_target_features) == {"apd", "csim"}
    assert _facts(summary)["rows_computed"] == 12 and _facts(summary)["rows_read"] == 18
    assert len(_entries(refs, "csim")) == 12 and len(_entries(refs, "akd")) == 6
    # other network weights are another spec too
    spy_target_features.clear()
    run(_args(data, pred, tmp_path / "out3", "--reference-cache", str(refs)), scorer_kwargs=Nets(seed=1).kwargs())
    assert set(spy_target_features) == {"csim", "fid"}


def test_the_key_is_the_content_not_the_path_or_name(tmp_path: Path) -> None:
    data, pred = make_data(tmp_path / "a")
    refs = tmp_path / "refs"
    first = run(_args(data, pred, tmp_path / "out1", "--reference-cache", str(refs)), scorer_kwargs=Nets().kwargs())
    # the same frames under other folders and video names
    data2, pred2 = make_data(tmp_path / "elsewhere", names=("clipA", "clipB"))
    nets = Nets()
    again = run(_args(data2, pred2, tmp_path / "out2", "--reference-cache", str(refs)), scorer_kwargs=nets.kwargs())
    assert _facts(again)["rows_computed"] == 0 and _facts(again)["rows_read"] == 6 * len(CACHED)
    assert _values(again) == _values(first) and not set(nets.face.seen) & _reference_pixels(data2)


def test_no_reference_cache_reads_and_writes_nothing(tmp_path: Path, _isolated_cache: Path,
                                                     spy_target_features: list[str]) -> None:
    data, pred = make_data(tmp_path)
    cached = run(_args(data, pred, tmp_path / "out1", "--reference-cache", str(tmp_path / "refs")),
                 scorer_kwargs=Nets().kwargs())
    spy_target_features.clear()
    nets = Nets()
    plain = run(_args(data, pred, tmp_path / "out2", "--no-reference-cache"), scorer_kwargs=nets.kwargs())
    assert _facts(plain) is None and not (_isolated_cache / "eval-references").exists()
    assert set(spy_target_features) == set(CACHED)  # computed inside update(), as before
    assert _reference_pixels(data) & set(nets.face.seen)
    for name, value in _values(cached).items():  # the same numbers, up to batched float rounding
        assert plain["metrics"][name]["value"] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    with pytest.raises(SystemExit):
        run(_args(data, pred, tmp_path / "out3", "--no-reference-cache", "--reference-cache", str(tmp_path / "x")))


def test_an_interrupted_write_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, pred = make_data(tmp_path)
    refs = tmp_path / "refs"
    real_replace = os.replace

    def killed(src: str | Path, dst: str | Path) -> None:
        if str(dst).endswith(".safetensors"):
            Path(src).write_bytes(Path(src).read_bytes()[:10])  # as if cut short
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(rc_mod.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        run(_args(data, pred, tmp_path / "out1", "--reference-cache", str(refs)), scorer_kwargs=Nets().kwargs())
    assert _entries(refs) == [] and list((refs / "tmp").iterdir()) == []
    monkeypatch.setattr(rc_mod.os, "replace", real_replace)
    # a part left by a killed process (dead pid) is removed when a cache is opened; a damaged entry is a miss
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (refs / "tmp" / f"{rc_mod.socket.gethostname()}-{dead.pid}-00ff.part").write_bytes(b"half")
    first = run(_args(data, pred, tmp_path / "out2", "--reference-cache", str(refs)), scorer_kwargs=Nets().kwargs())
    assert list((refs / "tmp").iterdir()) == [] and len(_entries(refs)) == 6 * len(CACHED)
    damaged = _entries(refs, "akd")[0]
    damaged.write_bytes(damaged.read_bytes()[:-7])
    again = run(_args(data, pred, tmp_path / "out3", "--reference-cache", str(refs)), scorer_kwargs=Nets().kwargs())
    assert _facts(again)["unreadable"] == 1 and _facts(again)["rows_computed"] == 1
    assert _values(again) == _values(first)


def test_concurrent_ranks_share_one_cache(tmp_path: Path) -> None:
    from eval.run import DistState

    data, pred = make_data(tmp_path)
    refs = tmp_path / "refs"
    out = tmp_path / "sharded"
    args = _args(data, pred, out, "--reference-cache", str(refs))
    assert run(args, state=DistState(1, 2, torch.device("cpu")), report=False, scorer_kwargs=Nets().kwargs()) is None
    summary = run(args, state=DistState(0, 2, torch.device("cpu")), scorer_kwargs=Nets().kwargs())
    single = run(_args(data, pred, tmp_path / "single", "--reference-cache", str(refs)), scorer_kwargs=Nets().kwargs())
    assert _values(single) == _values(summary) and _facts(single)["rows_computed"] == 0
    assert len(_entries(refs)) == 6 * len(CACHED)


def test_cross_identity_computes_each_distinct_reference_once(tmp_path: Path,
                                                               spy_target_features: list[str]) -> None:
    data, _ = make_data(tmp_path)  # HDTF cross-identity driven by vid1: sources are frame 0 of each video
    pred = tmp_path / "cross"
    rng = np.random.default_rng(3)
    for v in ("vid0", "vid1"):
        for f in range(4):
            _save(pred / v / f"{f:06d}.png", rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    refs = tmp_path / "refs"

    def args(out: str) -> list[str]:
        return ["--benchmark", "hdtf", "--protocol", "cross-identity", "--driver", "vid1", "--data", str(data),
                "--predictions", str(pred), "--out", str(tmp_path / out), "--allow-random-weights", "--device", "cpu",
                "--batch-size", "4", "--no-progress", "--no-plots", "--reference-cache", str(refs)]

    first = run(args("out1"), scorer_kwargs=Nets().kwargs())
    # 2 sources (csim, fid) and 4 driver frames (aed, apd); the second batch reuses the first's driver rows
    assert _facts(first)["rows_computed"] == 2 + 2 + 4 + 4 and _facts(first)["rows_read"] == 8
    assert len(_entries(refs)) == 12
    spy_target_features.clear()
    nets = Nets()
    again = run(args("out2"), scorer_kwargs=nets.kwargs())
    assert spy_target_features == [] and _facts(again)["rows_computed"] == 0
    assert _values(again) == _values(first) and not set(nets.face.seen) & _reference_pixels(data)


# ---- the cache and the metrics' split -----------------------------------------------------------------------


def _images(seed: int, b: int = 3, size: int = 112) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_update_is_target_features_then_the_pair() -> None:
    face = CountingFace()
    torch.manual_seed(0)
    emb = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, 8), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 16))
    pred, target = _images(0), _images(1)
    for make in (lambda: CSIM(embedder=emb, landmarks=face.landmarks), lambda: CSIM(embedder=emb, align="none"),
                 lambda: CSIM(embedder=emb, landmarks=face.landmarks, align="target"),
                 lambda: AKD(landmarks=face.landmarks), lambda: AED(extractor=face.coefficients),
                 lambda: APD(extractor=face.coefficients, include_translation=False)):
        a, b = make(), make()
        a.update(pred, target)
        b.update_with_target_features(pred, b.target_features(target))
        ra, rb = a.compute(), b.compute()
        torch.testing.assert_close(ra.values, rb.values, rtol=0, atol=0)
        assert ra.exclusions == rb.exclusions
    fid_net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 4), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    fid_a, fid_b = FID(network=fid_net), FID(network=fid_net)
    fid_a.update(pred, target)
    fid_b.update_with_target_features(pred, fid_b.target_features(target))
    for x, y in zip(fid_a.stored_features(), fid_b.stored_features(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_csim_rows_of_faceless_targets_keep_the_embedding_width(tmp_path: Path) -> None:
    face = CountingFace()
    emb = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, 8), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 16))
    metric = CSIM(embedder=emb, landmarks=face.landmarks)
    black = metric.target_features(torch.zeros(2, 3, 112, 112))  # mean 0: "no face"
    assert black["embedding"].shape == (2, 16) and not black["found"].any()
    cache = ReferenceCache(tmp_path / "c")
    keys = ["k0", "k1"]
    rows = cache.features({"csim": metric}, keys, lambda idx: torch.zeros(len(idx), 3, 112, 112))
    mixed = cache.features({"csim": metric}, ["k0", "k2"], lambda idx: _images(3, b=len(idx)))
    assert rows["csim"]["embedding"].shape == mixed["csim"]["embedding"].shape == (2, 16)
    values = metric.update_with_target_features(_images(4, b=2), mixed["csim"], ids=["a", "b"])
    assert torch.isnan(values[0]) and torch.isfinite(values[1])


def test_fingerprints_follow_the_weights_and_refuse_unknown_callables(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    fp = module_fingerprint(net)
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(net.state_dict())
    assert fp == fingerprint(net) == module_fingerprint(twin)
    with torch.no_grad():
        net.weight[0, 0] += 1e-6
    assert module_fingerprint(net) != fp
    assert fingerprint(lambda x: x) is None and fingerprint(None) == "none"
    face = CountingFace()
    assert fingerprint(face.landmarks) != fingerprint(face.coefficients)
    # a metric whose network cannot be fingerprinted is not cached (it still runs, as without a cache)
    cache = ReferenceCache(tmp_path / "c")
    assert not cache.cacheable(AKD(landmarks=lambda x: face.landmarks(x)))
    assert cache.stats.uncached_metrics == ["akd"]
    assert cache.cacheable(AKD(landmarks=face.landmarks))
    # the device type is part of the spec
    metric = AKD(landmarks=face.landmarks)
    assert ReferenceCache(tmp_path / "c", "cuda").spec(metric) != cache.spec(metric)


def test_the_cache_folder_holds_no_pickle(tmp_path: Path) -> None:
    data, pred = make_data(tmp_path)
    refs = tmp_path / "refs"
    run(_args(data, pred, tmp_path / "out", "--reference-cache", str(refs)), scorer_kwargs=Nets().kwargs())
    suffixes = {p.suffix for p in refs.rglob("*") if p.is_file()}
    assert suffixes == {".safetensors", ".json"}
    spec = json.loads(next(refs.glob("v*/csim-*/spec.json")).read_text())
    assert spec["dependencies"]["align"] == "each" and "fingerprint" in spec["dependencies"]["embedder"]
