"""``python -m train.synthesize``: GenHead renders -> a multi-view clips dataset (tiny GenHead, synthetic pools, a
tiny PD-FGC, CPU): the shards and their labels, the segs, reading back through the v2 dataset, resuming, errors.

Speed: GenHead's head-pose field (a closest-triangle search, ~10 s per image on two CPU cores) is replaced by the
identity warp, the trick of ``tests/test_genhead_data.py``: every neck rotation here is zero, where the field is the
identity to 1e-7 (checked there), so this changes nothing measurable (and ``GenHead.part_deformation`` may skip the
field itself when the neck is zero). One 2 identities x 2 expressions x 2 views dataset is rendered once per module
(about 2 s).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avatar.errors import InputError
from avatar.flame.parts import FlamePartDeformer
from avatar.models.genhead import GenHead
from avatar.models.genhead.pools import FlameParameterPools
from train import synthesize as S
from train.data import ClipPairDataset, ParquetTrainData, open_train_data
from train.data.records import CAMERA, EXPRESSION, EYE_POSE, POSE, SHAPE

OPTIONS: dict[str, Any] = {"model": "tiny", "pools": "synthetic", "expressions": 2, "views": 2, "batch_size": 4,
                           "show_progress": False}


@pytest.fixture(scope="module")
def no_head_pose_field() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FlamePartDeformer, "precompute", lambda self, *args, **kwargs: None)
        yield


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory, no_head_pose_field: None) -> dict[str, Any]:
    """2 identities x 2 expressions x 2 views, with GenHead.synthesis's cameras and transmittances recorded."""
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    synthesis = GenHead.synthesis

    def spy(self: GenHead, ws: torch.Tensor, z_bg: torch.Tensor, camera: torch.Tensor, *flame: torch.Tensor,
            **kw: Any) -> Any:
        out = synthesis(self, ws, z_bg, camera, *flame, **kw)
        calls.append((camera.clone(), flame[2].clone(), out.t_bg.clone()))
        assert kw == {"noise_mode": "const", "deterministic": True} and not self.training
        return out

    out = tmp_path_factory.mktemp("synth") / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GenHead, "synthesis", spy)
        report = S.synthesize(out, 2, **OPTIONS)
    return {"out": out, "report": report, "calls": calls}


def _stale_partial(shard: Path) -> Path:
    """A partial file of ``shard`` as a killed writer leaves it (its process gone)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    path = shard.with_name(f".{shard.stem}.partial-{int(child.stdout)}-deadbeef.parquet")
    path.write_bytes(b"PAR1 half a shard")
    return path


# ----------------------------------------------------------------------------------------------------------
# what is written


def test_one_clip_shard_per_identity_with_every_expression_and_view(synth: dict[str, Any]) -> None:
    out, report = synth["out"], synth["report"]
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-id-0000000000.parquet",
                                                                 "train-id-0000000001.parquet"]
    assert report.written == ["id-0000000000", "id-0000000001"] and not report.skipped
    assert report.frames_written == 8 and report.settings["motion_dim"] == 60
    saved = json.loads((out / S.REPORT_FILE).read_text())
    assert saved["clips"]["id-0000000001"]["seed"] == 1 and len(saved["clips"]["id-0000000001"]["pool_frames"]) == 2
    data = ParquetTrainData(out)
    assert len(data) == 2 and data.kind == "clips" and data.motion_dim == 60 and data.meta["random_weights"] is True
    for i in range(2):
        rec = data.read(i)
        assert rec.clip_id == S.clip_id_of(i) and rec.num_frames == 4 and (rec.height, rec.width) == (512, 512)
        assert rec.source_frames.tolist() == [0, 1, 2, 3] and rec.motions.shape == (4, 60)
        assert np.isfinite(rec.motions).all() and rec.image(3).shape == (512, 512, 3)
    card = (out / "README.md").read_text()
    assert "Synthetic data made by `python -m train.synthesize`" in card and "pictures are meaningless" in card


def test_labels_carry_the_render_camera_the_identity_and_a_zero_neck(synth: dict[str, Any]) -> None:
    data, calls = ParquetTrainData(synth["out"]), synth["calls"]
    assert len(calls) == 2  # one batch of 4 frames per identity
    pools = FlameParameterPools.synthetic(0)
    for i in range(2):
        labels = data.read(i).labels
        camera, pose, _ = calls[i]
        np.testing.assert_array_equal(labels[:, CAMERA], camera.numpy())  # frame k was rendered with its camera
        np.testing.assert_array_equal(labels[:, POSE], pose.numpy())
        np.testing.assert_allclose(labels[:, SHAPE], np.repeat(pools.shapes[i : i + 1].numpy(), 4, axis=0))
        assert not labels[:, 425:428].any()  # neck zero
        np.testing.assert_array_equal(labels[0, CAMERA], labels[2, CAMERA])  # e * V + v: cameras repeat per exp
        assert not np.array_equal(labels[0, CAMERA], labels[1, CAMERA])
        np.testing.assert_array_equal(labels[0, EXPRESSION], labels[1, EXPRESSION])
        np.testing.assert_array_equal(labels[0, EYE_POSE], labels[1, EYE_POSE])
        info = synth["report"].clips[S.clip_id_of(i)]
        clip = pools.dynamic_motion[info["pool_clip"], info["pool_frames"]].numpy()
        np.testing.assert_array_equal(labels[::2, EXPRESSION], clip[:, :100])
        for e, randomised in enumerate(info["jaw_randomised"]):
            jaw = labels[2 * e, 428]
            assert (0 <= jaw <= 0.2) if randomised else jaw == clip[e, 103]
    assert not np.array_equal(data.read(0).labels[:, CAMERA], data.read(1).labels[:, CAMERA])


def test_segs_are_the_rendered_opacity_upsampled_to_512(synth: dict[str, Any]) -> None:
    rec = ParquetTrainData(synth["out"]).read(0)
    t_bg = synth["calls"][0][2]
    expected = S.opacity_uint8(t_bg, 512)
    for k in range(4):
        seg = rec.seg(k)
        assert seg.shape == (512, 512, 3) and seg.dtype == np.uint8
        np.testing.assert_array_equal(seg[..., 0], expected[k])
    assert expected.min() < expected.max()  # not a constant matte


def test_the_dataset_reads_back_as_v2_training_data(synth: dict[str, Any]) -> None:
    source = open_train_data(synth["out"])
    assert isinstance(source, ParquetTrainData)
    item = ClipPairDataset(synth["out"], seed=0)[(1, 0)]
    assert item["source_image"].shape == (3, 512, 512) and item["driving_image"].dtype == np.uint8
    assert item["driving_seg"].shape == (3, 512, 512) and item["c"].shape == (25,) and item["shape"].shape == (300,)
    assert item["source_motion"].shape == (60,) and not item["pose"][:3].any()


# ----------------------------------------------------------------------------------------------------------
# resuming


def test_a_rerun_writes_nothing_new(synth: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    shutil.copytree(synth["out"], out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".parquet", ".md")}

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing should be loaded when every identity is done")

    monkeypatch.setattr(S, "load_genhead", no_loading)
    report = S.synthesize(out, 2, **OPTIONS)
    assert report.written == [] and report.skipped == ["id-0000000000", "id-0000000001"]
    assert report.frames_written == 8 and report.clips == synth["report"].clips
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_killed_run_is_cleaned_and_redone_with_the_same_content(synth: dict[str, Any], tmp_path: Path,
                                                                  no_head_pose_field: None) -> None:
    out = tmp_path / "data"
    shutil.copytree(synth["out"], out)
    shard = out / "data" / "train-id-0000000001.parquet"
    shard.unlink()
    partial = _stale_partial(shard)
    kept = out / "data" / "train-id-0000000000.parquet"
    mtime = kept.stat().st_mtime_ns
    report = S.synthesize(out, 2, **OPTIONS)
    assert report.written == ["id-0000000001"] and report.skipped == ["id-0000000000"]
    assert not partial.exists() and kept.stat().st_mtime_ns == mtime
    assert not [p for p in (out / "data").iterdir() if p.name.startswith(".")]
    new, old = ParquetTrainData(out).read(1), ParquetTrainData(synth["out"]).read(1)
    np.testing.assert_array_equal(new.labels, old.labels)  # deterministic per identity
    np.testing.assert_array_equal(new.motions, old.motions)
    assert list(new.images) == list(old.images) and list(new.segs) == list(old.segs)


# ----------------------------------------------------------------------------------------------------------
# the command line


def test_the_command_line_with_no_pools(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        no_head_pose_field: None) -> None:
    out = tmp_path / "data"
    argv = ["--n", "1", "--out", str(out), "--model", "tiny", "--pools", "none", "--expressions", "1", "--views", "2",
            "--seed", "7", "--image-format", "jpeg", "--no-progress", "-q"]
    assert S.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 2
    rec = ParquetTrainData(out).read(0)
    assert rec.clip_id == "id-0000000007" and bytes(rec.images[0][:2]) == b"\xff\xd8"  # JPEG
    assert not rec.labels[:, SHAPE].any() and not rec.labels[:, EXPRESSION].any()  # mean shape, neutral
    assert S.main(argv) == 0 and json.loads(capsys.readouterr().out)["skipped"] == 1


@pytest.mark.parametrize(("extra", "message"), [
    (["--n", "0"], "argument --n: must be a whole number of at least 1, got 0"),
    (["--motion", "none"], "--motion none is impossible: the clips format stores a motion of at least one float"),
    (["--truncation", "1.5"], "--truncation must be in [0, 1]"),
    (["--seed", str(2**32 - 1), "--n", "2"], "the identity seeds --seed .. --seed + --n - 1 must lie in"),
    (["--pools", "/no/such/pools"], "the pools folder /no/such/pools does not exist"),
    (["--device", "nonsense"], "--device 'nonsense' is not a torch device"),
])
def test_bad_options_fail_in_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                          message: str) -> None:
    argv = ["--n", "1", "--out", str(tmp_path / "data"), "--model", "tiny", "--no-progress", *extra]
    try:
        code = S.main(argv)
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    assert code == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("data/data/*.parquet"))


def test_motions_of_another_width_are_refused(synth: dict[str, Any], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from avatar.motion.pdfgc import PDFGCConfig, PDFGCEncoder

    out = tmp_path / "data"
    shutil.copytree(synth["out"], out)
    monkeypatch.setattr(S, "load_motion_encoder", lambda motion, device: PDFGCEncoder(PDFGCConfig()).eval())
    with pytest.raises(InputError, match="holds 60-d motions .* which one dataset cannot mix"):
        S.synthesize(out, 3, **{**OPTIONS, "motion": "pdfgc"})
    assert len(list((out / "data").iterdir())) == 2
