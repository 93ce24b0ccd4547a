"""The benchmark's honesty: random weights stamp the report, the title says what was scored, one comparability
verdict everywhere (JSON, metric table, notes), and a rerun leaves only its own files in RESULTS."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import eval.run as run_mod
from eval.data import PredictionCheckError
from eval.generate import GENERATION_FILE, pipeline_random_weights
from eval.metrics.base import MetricResult
from eval.protocols import get_protocol
from eval.protocols.pairs import Sample, SampleSet
from eval.report import NOT_COMPARABLE, write_report
from eval.run import run

SIZE = 48


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_hdtf(root: Path, videos: int = 1, frames: int = 3, size: int = SIZE) -> tuple[Path, Path]:
    """DATA with ``videos`` x ``frames`` noise frames and PREDICTIONS (noisy copies) for same-identity."""
    rng = np.random.default_rng(0)
    data, pred = root / "data", root / "pred"
    for v in range(videos):
        for f in range(frames):
            gt = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            _save(data / f"vid{v}" / f"{f:06d}.png", gt)
            if f:
                noisy = np.clip(gt + rng.normal(0, 10, gt.shape), 0, 255).astype(np.uint8)
                _save(pred / f"vid{v}" / f"{f:06d}.png", noisy)
    return data, pred


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--benchmark", "hdtf", "--protocol", "same-identity", "--data", str(data), "--out", str(out),
            "--metrics", "psnr,l1", "--device", "cpu", "--no-progress", *extra]


def _metric_rows(md: str) -> dict[str, str]:
    """metric -> its ``comparable`` cell in the markdown metric table."""
    section = md.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    rows = [ln.strip("|").split(" | ") for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln]
    return {r[0].strip(): r[-1].strip() for r in rows[1:]}


def _assert_one_verdict(summary: dict) -> None:
    """JSON, the metric table, the notes and the title all give the run's one verdict."""
    out = Path(summary["markdown_path"]).parent
    js = json.loads((out / "metrics.json").read_text())
    md = (out / "report.md").read_text()
    comparable = js["comparable"]
    assert js["verdict"]["comparable"] is comparable and (js["stamp"] is None) is comparable
    assert bool(js["verdict"]["reasons"]) is not comparable
    assert all(m["comparable"] is comparable for m in js["metrics"].values())
    cells = _metric_rows(md)
    assert set(cells) == set(js["metrics"])
    title = md.splitlines()[0]
    if comparable:
        assert all(c == "yes" for c in cells.values())
        assert NOT_COMPARABLE not in md and not any("not comparable" in n.lower() for n in js["notes"])
    else:
        assert all(c.startswith("NO: ") for c in cells.values()), cells
        assert all(m["comparable_reasons"] for m in js["metrics"].values())
        assert NOT_COMPARABLE in title and js["notes"][0].startswith(NOT_COMPARABLE)
        assert NOT_COMPARABLE in summary["headline"]
        # our row is never printed (bold) among the published rows
        assert f"| **{js['method']}**" not in md


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from avatar.pipelines.portrait4d import Portrait4DPipeline

    folder = tmp_path_factory.mktemp("tiny") / "tiny-pipeline"
    Portrait4DPipeline.tiny().save_pretrained(folder)
    return folder


def test_tiny_random_pipeline_is_stamped_not_comparable(tiny_dir: Path, tmp_path: Path) -> None:
    assert json.loads((tiny_dir / "pipeline.json").read_text())["random_init"] is True
    data, _ = make_hdtf(tmp_path, frames=3, size=512)  # --model: DATA frames are 512 Portrait4D crops
    out = tmp_path / "out"
    summary = run(_args(data, out, "--model", str(tiny_dir), "--no-plots"))
    assert summary["comparable"] is False and summary["stamp"] == NOT_COMPARABLE
    reasons = [r["reason"] for r in summary["verdict"]["reasons"]]
    assert reasons[0] == "random weights"
    assert summary["options"]["generation"]["random_weights"]
    _assert_one_verdict(summary)
    md = (out / "report.md").read_text()
    assert all("random weights" in c for c in _metric_rows(md).values())
    assert "**random weights**" in md
    assert json.loads((out / "predictions" / GENERATION_FILE).read_text())["random_init"] is True

    # a resumed run (every folder reused) still knows, and so does scoring those frames with --predictions
    again = run(_args(data, out, "--model", str(tiny_dir), "--no-plots"))
    assert again["options"]["generation"]["folders_reused"] == 1
    assert [r["reason"] for r in again["verdict"]["reasons"]][0] == "random weights"
    rescored = run(_args(data, tmp_path / "out2", "--predictions", str(out / "predictions"), "--no-plots"))
    assert "random weights" in [r["reason"] for r in rescored["verdict"]["reasons"]]
    _assert_one_verdict(rescored)


class RandomDuckPipeline:
    """A duck-typed pipeline that says its weights are random and renders 32x32 frames (the mean of source and
    driver)."""

    random_init = True

    def create_avatar(self, img: np.ndarray, aligned: bool = False) -> np.ndarray:
        return img

    def iter_reenact(self, avatar: np.ndarray, frames, **kw):  # noqa: ANN001, ANN003
        for i, f in enumerate(frames):
            img = ((avatar.astype(np.uint16) + f) // 2).astype(np.uint8)
            yield SimpleNamespace(index=i, image=np.asarray(Image.fromarray(img).resize((32, 32))))


def test_resumed_generation_keeps_its_facts(tmp_path: Path) -> None:
    data, _ = make_hdtf(tmp_path, frames=3)
    args = _args(data, tmp_path / "out", "--model", "duck", "--no-plots")
    first = run(args, pipeline=RandomDuckPipeline())
    assert first["verdict"]["reasons"][0]["reason"] == "random weights"
    assert any("resized" in n for n in first["notes"])
    again = run(args, pipeline=RandomDuckPipeline())  # every folder reused: nothing generated now
    assert again["options"]["generation"]["folders_reused"] == 1
    assert again["verdict"]["reasons"][0]["reason"] == "random weights"
    assert any("resized" in n for n in again["notes"])  # the earlier run's resize is still reported


def test_random_weights_records() -> None:
    assert pipeline_random_weights(SimpleNamespace(random_init=True))
    assert pipeline_random_weights(SimpleNamespace(reconstructor=SimpleNamespace(is_random_init=True)))
    assert pipeline_random_weights(SimpleNamespace(random_init=False)) is None
    assert pipeline_random_weights(object()) is None  # a duck-typed pipeline without a record


def test_random_weights_from_pipeline_json(tmp_path: Path) -> None:
    (tmp_path / "pipeline.json").write_text(json.dumps({"format": "x", "random_init": True}))
    assert "random_init" in pipeline_random_weights(object(), tmp_path)
    (tmp_path / "pipeline.json").write_text(json.dumps({"format": "x", "random_init": False}))
    assert pipeline_random_weights(object(), tmp_path) is None


def test_title_says_what_was_scored(tmp_path: Path) -> None:
    data, pred = make_hdtf(tmp_path, videos=1, frames=4)
    summary = run(_args(data, tmp_path / "out", "--predictions", str(pred), "--no-plots"))
    md = (tmp_path / "out" / "report.md").read_text()
    title = md.splitlines()[0]
    assert "19 test videos" not in title and "3 frames of 1 video" in title
    assert summary["scored"]["summary"] == "3 frames of 1 video" and summary["scored"]["exclusions"] == "excluded: none"
    assert "3 frames of 1 video" in summary["headline"]
    # one video, not the published ones, 3 of 37,860 frames: not comparable, and every place says so
    reasons = {r["reason"] for r in summary["verdict"]["reasons"]}
    assert reasons == {"not the published videos", "subset of the protocol"}
    _assert_one_verdict(summary)


def test_limit_is_a_subset(tmp_path: Path) -> None:
    data, pred = make_hdtf(tmp_path, videos=2, frames=4)
    summary = run(_args(data, tmp_path / "out", "--predictions", str(pred), "--limit", "1", "--no-plots"))
    assert summary["scored"]["summary"] == "2 frames of 2 videos"
    assert "subset of the protocol" in {r["reason"] for r in summary["verdict"]["reasons"]}


def _celeba_set(n: int) -> SampleSet:
    protocol = get_protocol("celeba", "reconstruction")
    samples = [Sample(i, f"img{i}/000000", f"img{i}", Path(f"/d/img{i}/000000.png"), Path(f"/d/img{i}/000000.png"),
                      Path(f"/d/img{i}/000000.png")) for i in range(n)]
    return SampleSet(protocol, samples, [s.id for s in samples], [s.group for s in samples], [])


def _result(name: str, ids: list[str], comparable: bool = True, notes: tuple[str, ...] = ()) -> MetricResult:
    values = torch.linspace(0.1, 0.2, len(ids), dtype=torch.float64)
    return MetricResult(name=name, value=float(values.mean()), mean=float(values.mean()), count=len(ids),
                        excluded=0, options={}, comparable=comparable, higher_is_better=name == "psnr", ids=ids,
                        values=values, notes=list(notes))


def test_one_verdict_for_the_published_sample_set(tmp_path: Path) -> None:
    sset = _celeba_set(get_protocol("celeba", "reconstruction").published_count)  # all 29,954 images
    ids = [s.id for s in sset.samples]
    results = {"l1": _result("l1", ids), "psnr": _result("psnr", ids)}
    ok = write_report(tmp_path / "ok", sset, results, run_options={}, method="m", plots=False)
    assert ok["comparable"] is True and ok["verdict"]["reasons"] == []
    _assert_one_verdict(ok)
    assert "| **m** |" in (tmp_path / "ok" / "report.md").read_text()  # comparable: beside the published rows

    # one metric with an unofficial network: the run is not comparable, and every row says so with a reason
    results["l1"] = _result("l1", ids, comparable=False, notes=("l1: a random network: not comparable",))
    bad = write_report(tmp_path / "bad", sset, results, run_options={}, method="m", plots=False)
    _assert_one_verdict(bad)
    rows = _metric_rows((tmp_path / "bad" / "report.md").read_text())
    assert rows["l1"] == "NO: l1: random or unofficial network"
    assert rows["psnr"] == "NO: the run: l1: random or unofficial network"
    assert bad["metrics"]["psnr"]["networks_comparable"] is True  # the metric's own fact is kept, apart

    # random weights of the run apply to every row
    results["l1"] = _result("l1", ids)
    rnd = write_report(tmp_path / "rnd", sset, results, run_options={}, method="m", plots=False,
                       not_comparable=[("random weights", "pipeline.json says random_init")])
    _assert_one_verdict(rnd)
    assert set(_metric_rows((tmp_path / "rnd" / "report.md").read_text()).values()) == {"NO: random weights"}

    # a note saying "not comparable" can never sit beside a comparable verdict
    noted = write_report(tmp_path / "noted", sset, results, run_options={}, method="m", plots=False,
                         notes=["these frames are not comparable: hand-picked"])
    assert noted["comparable"] is False
    _assert_one_verdict(noted)


def test_rerun_leaves_only_its_own_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, pred = make_hdtf(tmp_path, videos=2, frames=4)
    out = tmp_path / "out"
    frame = pred / "vid0" / "000002.png"
    kept = frame.read_bytes()
    frame.unlink()
    with pytest.raises(PredictionCheckError):
        run(_args(data, out, "--predictions", str(pred), "--batch-size", "2"))
    assert (out / "prediction_errors.txt").is_file()

    frame.write_bytes(kept)
    first = run(_args(data, out, "--predictions", str(pred), "--batch-size", "2"))
    assert not (out / "prediction_errors.txt").exists()  # the successful rerun removed the stale list
    assert (out / "plots" / "distributions.png").is_file() and (out / "report.md").is_file()

    # a rerun without plots: no stale plots; the cache is still used (nothing recomputed)
    computed: list[int] = []
    monkeypatch.setattr(run_mod, "_after_batch", computed.append)
    second = run(_args(data, out, "--predictions", str(pred), "--batch-size", "2", "--no-plots"))
    assert computed == [] and not (out / "plots").exists()
    assert {n: m["value"] for n, m in second["metrics"].items()} == {n: m["value"] for n, m in first["metrics"].items()}

    # a failing rerun does not leave the previous run's report beside its error list
    frame.unlink()
    with pytest.raises(PredictionCheckError):
        run(_args(data, out, "--predictions", str(pred), "--batch-size", "2", "--no-plots"))
    assert (out / "prediction_errors.txt").is_file()
    assert not any((out / n).exists() for n in ("report.md", "metrics.json", "per_sample.csv", "per_video.csv"))
    assert (out / "cache" / "samples-r0.jsonl").is_file()  # what resuming needs stays

    # an interrupted run resumes from the cache after the report files were cleared
    frame.write_bytes(kept)
    monkeypatch.setattr(run_mod, "_after_batch", computed.append)
    run(_args(data, out, "--predictions", str(pred), "--batch-size", "2", "--no-plots", "--metrics", "psnr,l1,ssim"))
    assert computed == [2, 4, 6]  # only the new metric is computed, batch by batch
