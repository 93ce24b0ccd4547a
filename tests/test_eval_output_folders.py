"""eval.run takes a method's output folder as it comes (source frame included, odd frame names, JPEG/PNG mixed,
other sizes with --resize), lists its protocols (--list, --help), and eval.compare puts several results side by side.
Tiny synthetic HDTF benchmark and tiny random networks, as in test_eval_run.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from eval_fakes import fake_scorer_kwargs
from PIL import Image

import eval.compare as compare_mod
import eval.run as run_mod
from eval.data import (
    SOURCE_FRAME_REASON,
    UNSAMPLED_REASON,
    PredictionCheckError,
    parse_prediction_frame,
    unscored_source_frames,
)
from eval.metrics import METRICS
from eval.protocols import get_protocol, protocol_names
from eval.protocols.published import TABLES
from eval.run import run

SIZE = 48
ALL9 = "psnr,ssim,csim,aed,apd,akd,lpips,l1,fid"


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90) if path.suffix == ".jpg" else Image.fromarray(arr).save(path)
    return path


def make_data(root: Path, videos: int = 2, frames: int = 4, seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """DATA (``videos`` x ``frames``) and, per frame id ``vid/000123``, a noisy prediction (frame 0 included)."""
    rng = np.random.default_rng(seed)
    data = root / "data"
    preds: dict[str, np.ndarray] = {}
    for v in range(videos):
        base = rng.uniform(0, 255, (SIZE, SIZE, 3))
        for f in range(frames):
            gt = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            _save(data / f"vid{v}" / f"{f:06d}.png", gt)
            preds[f"vid{v}/{f:06d}"] = np.clip(gt + rng.normal(0, 10 + 5 * v, gt.shape), 0, 255).astype(np.uint8)
    return data, preds


def write_clean(folder: Path, preds: dict[str, np.ndarray]) -> Path:
    """The canonical layout: <video>/<frame:06d>.png for the scored frames only (frame 0, the source, left out)."""
    for sid, arr in preds.items():
        if not sid.endswith("/000000"):
            _save(folder / f"{sid}.png", arr)
    return folder


def _args(data: Path, pred: Path, out: Path, refs: Path, *extra: str) -> list[str]:
    return ["--benchmark", "hdtf", "--protocol", "same-identity", "--data", str(data), "--predictions", str(pred),
            "--out", str(out), "--allow-random-weights", "--device", "cpu", "--batch-size", "4", "--no-progress",
            "--no-plots", "--reference-cache", str(refs), *extra]


def _per_sample(out: Path) -> str:
    return (out / "per_sample.csv").read_text()


def test_frame_names_are_matched_by_their_number() -> None:
    assert parse_prediction_frame("000123.png") == 123
    assert parse_prediction_frame("123.png") == 123
    assert parse_prediction_frame("frame_123.jpg") == 123
    assert parse_prediction_frame("out-0123.JPEG") == 123
    assert parse_prediction_frame("v2_frame_7.png") == 7  # the last number
    assert parse_prediction_frame("preview.png") is None and parse_prediction_frame("123.txt") is None


def test_unscored_frames_come_from_the_samples(tmp_path: Path) -> None:
    data, _ = make_data(tmp_path, videos=1, frames=6)
    src = data / "vid0" / "000000.png"
    # a protocol that samples frames 2 and 4 of the video (frame 0 is the source)
    samples = [SimpleNamespace(output_id="vid0", source=src, target=data / "vid0" / f"{f:06d}.png") for f in (2, 4)]
    assert unscored_source_frames(samples, ["vid0/000002", "vid0/000004"]) == {
        "vid0/000000": SOURCE_FRAME_REASON, "vid0/000001": UNSAMPLED_REASON, "vid0/000003": UNSAMPLED_REASON,
        "vid0/000005": UNSAMPLED_REASON}
    # cross-identity: the source is another folder's frame; nothing is dropped
    cross = [SimpleNamespace(output_id="other", source=src, target=None)]
    assert unscored_source_frames(cross, ["other/000000"]) == {}


def test_source_frame_and_odd_names_score_like_a_clean_folder(tmp_path: Path) -> None:
    data, preds = make_data(tmp_path)
    odd = tmp_path / "odd"
    # the source frame is written too (most methods write every driving frame); names and formats are mixed
    names = {"vid0/000000": "000000.png", "vid0/000001": "1.jpg", "vid0/000002": "frame_2.png",
             "vid0/000003": "000003.png", "vid1/000000": "frame_0.jpg", "vid1/000001": "000001.png",
             "vid1/000002": "2.jpg", "vid1/000003": "frame_000003.png"}
    decoded = {}
    for sid, name in names.items():
        path = _save(odd / sid.split("/")[0] / name, preds[sid])
        decoded[sid] = np.asarray(Image.open(path).convert("RGB"))  # what the scorer reads (JPEG is lossy)
    (odd / "vid0" / "notes.txt").write_text("a method's log, not an image: ignored")
    clean = write_clean(tmp_path / "clean", decoded)
    refs = tmp_path / "refs"

    a = run(_args(data, clean, tmp_path / "res_clean", refs, "--metrics", ALL9), scorer_kwargs=fake_scorer_kwargs())
    b = run(_args(data, odd, tmp_path / "res_odd", refs, "--metrics", ALL9), scorer_kwargs=fake_scorer_kwargs())

    assert b["samples"] == a["samples"] == 6
    assert {n: m["value"] for n, m in b["metrics"].items()} == {n: m["value"] for n, m in a["metrics"].items()}
    assert _per_sample(tmp_path / "res_odd") == _per_sample(tmp_path / "res_clean")
    # the report says what was dropped and why
    assert a["scored"]["dropped_count"] == 0 and a["predictions"]["dropped"] == []
    assert b["scored"]["dropped"] == [{"reason": SOURCE_FRAME_REASON, "count": 2}]
    js = json.loads((tmp_path / "res_odd" / "metrics.json").read_text())
    assert js["predictions"]["dropped"][0]["files"] == ["vid0/000000.png", "vid1/frame_0.jpg"]
    assert js["predictions"]["renamed"] == 4 and js["predictions"]["formats"] == {".jpg": 2, ".png": 4}
    assert js["predictions"]["other_files_ignored"] == 1
    md = (tmp_path / "res_odd" / "report.md").read_text()
    assert "## Predictions folder" in md and "not scored: 2 files, the source frame" in md
    assert "not scored from the predictions folder: 2 files, the source frame" in md
    assert any("2 files of the predictions folder not scored" in n for n in b["notes"])
    assert any("JPEG" in n for n in b["notes"])


def test_ambiguous_frame_names_are_an_error(tmp_path: Path) -> None:
    data, preds = make_data(tmp_path, videos=1, frames=3)
    pred = write_clean(tmp_path / "pred", preds)
    _save(pred / "vid0" / "frame_1.jpg", preds["vid0/000001"])  # a second file for frame 1
    args = _args(data, pred, tmp_path / "out", tmp_path / "refs", "--metrics", "psnr")
    with pytest.raises(PredictionCheckError) as info:
        run(args)
    err = info.value
    assert err.ambiguous == ["vid0/000001: vid0/000001.png, vid0/frame_1.jpg"]
    assert "ambiguous" in str(err) and "vid0/000001.png, vid0/frame_1.jpg" in str(err)
    assert "ambiguous vid0/000001" in (tmp_path / "out" / "prediction_errors.txt").read_text()
    assert run_mod.main(args) == 1  # the user's input: exit 1


def test_other_sizes_need_resize(tmp_path: Path) -> None:
    data, preds = make_data(tmp_path, videos=1, frames=4)
    pred = write_clean(tmp_path / "pred", preds)
    small = np.asarray(Image.fromarray(preds["vid0/000002"]).resize((40, 36), Image.BICUBIC))
    _save(pred / "vid0" / "000002.png", small)
    _save(pred / "vid0" / "000003.png", np.zeros((SIZE + 2, SIZE, 3), np.uint8))
    refs = tmp_path / "refs"
    with pytest.raises(PredictionCheckError) as info:
        run(_args(data, pred, tmp_path / "out", refs, "--metrics", "psnr,l1"))
    msg = str(info.value)
    assert "2 mis-sized" in msg and "vid0/000002.png (40x36, expected 48x48)" in msg
    assert "vid0/000003.png (48x50, expected 48x48)" in msg and "--resize" in msg

    summary = run(_args(data, pred, tmp_path / "out", refs, "--metrics", "psnr,l1", "--resize"))
    assert summary["metrics"]["psnr"]["count"] == 3
    assert summary["predictions"]["resized"] == {"40x36 -> 48x48": 1, "48x50 -> 48x48": 1}
    assert any("resized 40x36 -> 48x48" in n for n in summary["notes"])
    # the same numbers as the frames resized beforehand (bicubic, as generated frames are)
    fixed = write_clean(tmp_path / "fixed", {
        **preds, "vid0/000002": np.asarray(Image.fromarray(small).resize((SIZE, SIZE), Image.BICUBIC)),
        "vid0/000003": np.asarray(Image.fromarray(np.zeros((SIZE + 2, SIZE, 3), np.uint8)).resize((SIZE, SIZE)))})
    expected = run(_args(data, fixed, tmp_path / "out_fixed", refs, "--metrics", "psnr,l1"))
    assert summary["metrics"]["psnr"]["value"] == expected["metrics"]["psnr"]["value"]
    assert summary["metrics"]["l1"]["value"] == expected["metrics"]["l1"]["value"]


def test_list_and_help_name_every_protocol_and_metric(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run_mod.main(["--list"])
    assert info.value.code == 0
    listing = capsys.readouterr().out
    assert listing == run_mod.list_protocols()
    protocols = [get_protocol(key) for key in protocol_names()]  # every registered protocol, whatever is added
    assert len(protocols) >= 5
    sections = listing.split("\n  --protocol ")
    for protocol in protocols:
        assert f"\n{protocol.benchmark}\n" in listing
        section = next(s for s in sections[1:] if s.startswith(f"{protocol.name}: {protocol.description}"))
        metrics = section.split("\n    metrics:  ")[1].split("\n")[0]
        assert [m.split(" ")[0] for m in metrics.split(", ")] == list(protocol.metrics)
        assert "layout:   PREDICTIONS/" in section
        assert f"frames:   {protocol.published_count:,} outputs" in section
        assert f"compared with: {TABLES[protocol.table].title} [{protocol.table}]" in section
    with pytest.raises(SystemExit):
        run_mod.main(["--help"])
    helptext = capsys.readouterr().out
    assert all(m in helptext for m in METRICS) and all(p.name in helptext for p in protocols)
    assert "--list" in helptext and "--resize" in helptext


@pytest.fixture()
def two_results(tmp_path: Path) -> tuple[Path, Path]:
    data, preds = make_data(tmp_path, videos=2, frames=3)
    a = write_clean(tmp_path / "pred_a", preds)
    b = write_clean(tmp_path / "pred_b", {k: np.clip(v.astype(int) + 30, 0, 255).astype(np.uint8)
                                          for k, v in preds.items()})
    refs = tmp_path / "refs"
    run(_args(data, a, tmp_path / "res_a", refs, "--metrics", "psnr,l1,fid", "--method-name", "A"),
        scorer_kwargs=fake_scorer_kwargs())
    run(_args(data, b, tmp_path / "res_b", refs, "--metrics", "psnr,l1,fid", "--method-name", "B"),
        scorer_kwargs=fake_scorer_kwargs())
    return tmp_path / "res_a", tmp_path / "res_b"


def test_compare_two_results(two_results: tuple[Path, Path], tmp_path: Path) -> None:
    res_a, res_b = two_results
    out = tmp_path / "cmp"
    table = compare_mod.run([str(res_a), str(res_b), "--out", str(out)])
    ja, jb = (json.loads((r / "metrics.json").read_text()) for r in (res_a, res_b))
    assert table["protocols"] == ["hdtf/same-identity"] and table["metrics"] == ["psnr", "l1", "fid"]
    for label, js in (("A", ja), ("B", jb)):
        for m in ("psnr", "l1", "fid"):
            assert table["values"][label][m] == pytest.approx(js["metrics"][m]["value"], rel=0, abs=0)
        for g in ("vid0", "vid1"):
            assert table["per_video"]["psnr"][g][label] == js["per_video"]["psnr"][g]["mean"]
    assert "fid" not in table["per_video"]  # pooled: no per-video value
    md = (out / "compare.md").read_text()
    pa, pb = ja["metrics"]["psnr"]["value"], jb["metrics"]["psnr"]["value"]
    assert pa > pb  # B's frames are shifted: worse
    assert f"| A | **{pa:.2f}** |" in md and f"| B | {pb:.2f} |" in md
    assert "### PSNR ↑" in md and f"| vid0 | **{ja['per_video']['psnr']['vid0']['mean']:.2f}** |" in md
    assert "NOT COMPARABLE" in md  # each row keeps its own verdict
    assert json.loads((out / "compare.json").read_text())["values"]["B"]["psnr"] == pb
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    # without --out: the Markdown on stdout, no files
    assert compare_mod.run([str(res_a), str(res_b)])["markdown"] == md


def test_compare_refuses_what_is_not_a_result_or_mixed(two_results: tuple[Path, Path], tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    res_a, res_b = two_results
    with pytest.raises(compare_mod.NotAResultsFolderError, match="not an eval.run result: it has no metrics.json"):
        compare_mod.run([str(res_a), str(tmp_path / "pred_a")])
    assert compare_mod.main([str(res_a), str(tmp_path / "nowhere")]) == 1
    # a result of another protocol
    js = json.loads((res_b / "metrics.json").read_text())
    js["protocol"] = "cross-identity"
    (res_b / "metrics.json").write_text(json.dumps(js))
    with pytest.raises(compare_mod.MixedResultsError, match="--allow-mixed"):
        compare_mod.run([str(res_a), str(res_b)])
    assert compare_mod.main([str(res_a), str(res_b)]) == 1
    with caplog.at_level("WARNING", logger="eval.compare"):
        table = compare_mod.run([str(res_a), str(res_b), "--allow-mixed"])
    assert table["notes"][0].startswith("MIXED") and "MIXED" in table["markdown"]
    assert any("MIXED" in r.getMessage() for r in caplog.records)
    (res_b / "metrics.json").write_text("{}")
    with pytest.raises(compare_mod.NotAResultsFolderError, match="missing benchmark, protocol, metrics"):
        compare_mod.run([str(res_a), str(res_b)])
