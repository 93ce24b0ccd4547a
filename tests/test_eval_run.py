"""eval.run end to end on a tiny synthetic benchmark: scoring, resume, sharding, errors, generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_fakes import fake_scorer_kwargs
from PIL import Image

import eval.run as run_mod
from eval.data import PredictionCheckError
from eval.run import DistState, run

SIZE = 48


def _img(rng: np.random.Generator, base: np.ndarray | None = None, noise: float = 0.0) -> np.ndarray:
    x = rng.uniform(0, 255, (SIZE, SIZE, 3)) if base is None else base + rng.normal(0, noise, base.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_hdtf(root: Path, videos: int = 3, frames: int = 5, seed: int = 0) -> tuple[Path, Path]:
    """DATA with ``videos`` x ``frames`` and PREDICTIONS (noisy copies) for same-identity."""
    rng = np.random.default_rng(seed)
    data, pred = root / "data", root / "pred"
    for v in range(videos):
        base = _img(rng)
        for f in range(frames):
            gt = _img(rng, base.astype(float), 20)
            _save(data / f"vid{v}" / f"{f:06d}.png", gt)
            if f:
                _save(pred / f"vid{v}" / f"{f:06d}.png", _img(rng, gt.astype(float), 10 + 5 * v))
    return data, pred


ALL9 = "psnr,ssim,csim,aed,apd,akd,lpips,l1,fid"


def _args(data: Path, pred: Path, out: Path, *extra: str) -> list[str]:
    return ["--benchmark", "hdtf", "--protocol", "same-identity", "--data", str(data), "--predictions", str(pred),
            "--out", str(out), "--allow-random-weights", "--device", "cpu", "--batch-size", "4", "--no-progress",
            *extra, "--no-plots"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("bench")
    data, pred = make_hdtf(root)
    # module scope runs before the per-test throwaway $AVATAR_CACHE: keep the reference cache in tmp too
    summary = run(_args(data, pred, root / "full", "--metrics", ALL9, "--reference-cache", str(root / "refs"))[:-1],
                  scorer_kwargs=fake_scorer_kwargs())
    return data, pred, summary


def _values(summary: dict) -> dict[str, float]:
    return {n: m["value"] for n, m in summary["metrics"].items()}


def test_full_run_writes_report(bench: tuple[Path, Path, dict]) -> None:
    data, pred, summary = bench
    out = Path(summary["markdown_path"]).parent
    assert summary["samples"] == 12 and summary["groups"] == 3
    assert set(summary["metrics"]) == set(ALL9.split(","))
    assert summary["comparable"] is False and summary["stamp"] == "NOT COMPARABLE"
    js = json.loads((out / "metrics.json").read_text())
    assert js["metrics"]["psnr"]["count"] == 12 and js["references"]["csim"] == "target"
    assert set(js["per_video"]["psnr"]) == {"vid0", "vid1", "vid2"}
    # the noisier video has the lower PSNR
    assert js["per_video"]["psnr"]["vid0"]["mean"] > js["per_video"]["psnr"]["vid2"]["mean"]
    md = (out / "report.md").read_text()
    assert "NOT COMPARABLE" in md and "| GOHA | 22.15 |" in md and "OTAvatar" in md and "## Per video" in md
    assert (out / "plots" / "distributions.png").stat().st_size > 0
    assert (out / "plots" / "frames_vid1.png").exists()
    assert (out / "per_sample.csv").read_text().count("\n") == 13


def test_resume_after_crash_gives_the_same_numbers(bench: tuple[Path, Path, dict], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data, pred, full = bench
    out = tmp_path / "res"

    def crash(done: int) -> None:
        if done >= 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "_after_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        run(_args(data, pred, out, "--metrics", ALL9), scorer_kwargs=fake_scorer_kwargs())
    lines = (out / "cache" / "samples-r0.jsonl").read_text().splitlines()
    assert len(lines) == 2  # two batches of 4
    # a half-written line from the kill is dropped, its batch recomputed
    with open(out / "cache" / "samples-r0.jsonl", "a") as f:
        f.write('{"id": "vid2/0000')
    computed: list[int] = []
    monkeypatch.setattr(run_mod, "_after_batch", computed.append)
    summary = run(_args(data, pred, out, "--metrics", ALL9), scorer_kwargs=fake_scorer_kwargs())
    assert computed == [4]  # only the 4 remaining samples, in one batch
    lines = (out / "cache" / "samples-r0.jsonl").read_text().splitlines()
    ids = [r["id"] for x in lines for r in json.loads(x)["batch"]]
    assert len(lines) == 3 and len(ids) == 12 and len(set(ids)) == 12
    assert _values(summary) == _values(full)
    # a rerun with everything cached computes nothing
    computed.clear()
    again = run(_args(data, pred, out, "--metrics", ALL9), scorer_kwargs=fake_scorer_kwargs())
    assert computed == [] and _values(again) == _values(full)


def test_two_ranks_give_the_same_numbers(bench: tuple[Path, Path, dict], tmp_path: Path) -> None:
    data, pred, full = bench
    out = tmp_path / "sharded"
    assert run(_args(data, pred, out, "--metrics", ALL9), state=DistState(1, 2, torch.device("cpu")),
               report=False, scorer_kwargs=fake_scorer_kwargs()) is None
    summary = run(_args(data, pred, out, "--metrics", ALL9), state=DistState(0, 2, torch.device("cpu")),
                  scorer_kwargs=fake_scorer_kwargs())
    assert {p.name for p in (out / "cache").glob("samples-*")} == {"samples-r0.jsonl", "samples-r1.jsonl"}
    assert _values(summary) == _values(full)
    assert summary["options"]["processes"] == 2


def test_options_mismatch_is_refused(bench: tuple[Path, Path, dict], tmp_path: Path) -> None:
    data, pred, _ = bench
    out = tmp_path / "opts"
    run(_args(data, pred, out, "--metrics", "psnr,ssim"))
    with pytest.raises(RuntimeError, match="ssim was cached with options"):
        run(_args(data, pred, out, "--metrics", "psnr,ssim", "--metric-option", "ssim.preset=nerface"))
    # adding a metric to a cache is fine: only the new metric is computed
    summary = run(_args(data, pred, out, "--metrics", "psnr,ssim,l1", "--limit", "2"))
    assert summary["metrics"]["l1"]["count"] == 6


def test_missing_extra_missized_frames_are_listed(tmp_path: Path) -> None:
    data, pred = make_hdtf(tmp_path, videos=2, frames=4)
    (pred / "vid0" / "000002.png").unlink()
    _save(pred / "vid1" / "000009.png", np.zeros((SIZE, SIZE, 3), np.uint8))
    _save(pred / "vid1" / "000001.png", np.zeros((SIZE + 2, SIZE, 3), np.uint8))
    with pytest.raises(PredictionCheckError) as info:
        run(_args(data, pred, tmp_path / "out", "--metrics", "psnr"))
    err = info.value
    assert err.missing == ["vid0/000002"] and err.extra == ["vid1/000009"] and len(err.missized) == 1
    assert "1 missing: vid0/000002.png" in str(err) and "vid1/000009.png" in str(err)
    assert "expected 48x48" in str(err)
    assert (tmp_path / "out" / "prediction_errors.txt").read_text().count("\n") == 3
    assert run_mod.main(_args(data, pred, tmp_path / "out2", "--metrics", "psnr")) == 1  # the user's input: exit 1


class FakePipeline:
    """Duck-typed Portrait4DPipeline: the avatar is the source image, frames are the mean of source and driver."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def create_avatar(self, img: np.ndarray, aligned: bool = False) -> np.ndarray:
        assert aligned
        return img

    def iter_reenact(self, avatar: np.ndarray, frames, **kw):  # noqa: ANN001, ANN003
        from types import SimpleNamespace

        n = 0
        for i, f in enumerate(frames):
            n += 1
            img = ((avatar.astype(np.uint16) + f) // 2).astype(np.uint8)
            yield SimpleNamespace(index=i, image=np.asarray(Image.fromarray(img).resize((32, 32))))
        self.calls.append(n)


def test_model_generation_is_resumable(tmp_path: Path) -> None:
    data, _ = make_hdtf(tmp_path, videos=2, frames=3)
    args = ["--benchmark", "hdtf", "--protocol", "same-identity", "--data", str(data), "--model", "fake",
            "--out", str(tmp_path / "out"), "--metrics", "psnr,l1", "--device", "cpu", "--no-progress"]
    pipe = FakePipeline()
    summary = run(args, pipeline=pipe)
    assert pipe.calls == [3, 3]  # relative mode: the source frame leads each video and is dropped
    assert summary["metrics"]["psnr"]["count"] == 4
    assert any("resized" in n for n in summary["notes"])
    assert Image.open(tmp_path / "out" / "predictions" / "vid1" / "000002.png").size == (SIZE, SIZE)
    (tmp_path / "out" / "predictions" / "vid1" / "000002.png").unlink()
    pipe2 = FakePipeline()
    run(args, pipeline=pipe2)
    assert pipe2.calls == [3]  # only the unfinished video is generated again


@pytest.mark.media
def test_shared_portraits_as_celeba_cross_identity(shared_media: Path, tmp_path: Path) -> None:
    folder = shared_media / "portraits" / "aligned" / "align_images"
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:4]
    if len(photos) < 4:
        pytest.skip("fewer than 4 aligned portraits")
    data, pred = tmp_path / "data", tmp_path / "pred"
    for i, p in enumerate(photos):
        arr = np.asarray(Image.open(p).convert("RGB").resize((128, 128)))
        _save(data / f"img{i}" / "000000.png", arr)
        if i % 2 == 0:
            _save(pred / f"img{i}" / "000000.png", arr)  # a perfect identity keeper
    summary = run(["--benchmark", "celeba", "--protocol", "cross-identity", "--data", str(data), "--predictions",
                   str(pred), "--out", str(tmp_path / "out"), "--metrics", "csim,aed,apd", "--device", "cpu",
                   "--allow-random-weights", "--no-progress"], scorer_kwargs=fake_scorer_kwargs())
    assert summary["samples"] == 2
    assert summary["metrics"]["csim"]["value"] == pytest.approx(1.0)  # compared with its own source
    assert summary["references"] == {"csim": "source", "aed": "driver", "apd": "driver"}
