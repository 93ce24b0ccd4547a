"""Video -> fitting data (avatar/fitting/video_data.py): a real talking-head video through the mediapipe backend
(first 12 frames; skipped without ../shared/media or mediapipe), resumption after an interruption, and the
errors, some with a fake face backend on synthetic videos."""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from avatar.errors import InputError, NoFaceError, UnknownOptionValueError, VideoReadError
from avatar.face.mediapipe_face import canonical_face, mediapipe_available
from avatar.fitting import PreparedVideo, prepare_video
from avatar.fitting import video_data as vd
from avatar.io.video import VideoWriter

SHARED_MEDIA = Path(os.environ.get("AVATAR_SHARED_MEDIA", Path(__file__).resolve().parents[2] / "shared" / "media"))
VIDEO = SHARED_MEDIA / "videos" / "talk3.mp4"
_skip_real = pytest.mark.skipif(not (VIDEO.is_file() and mediapipe_available()),
                                reason="needs ../shared/media/videos/talk3.mp4 and mediapipe ([face] extra)")


def needs_real(test):
    return pytest.mark.media(_skip_real(test))
FRAMES = 12
CHUNK = 4


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedVideo:
    if not (VIDEO.is_file() and mediapipe_available()):
        pytest.skip("needs ../shared/media/videos/talk3.mp4 and mediapipe")
    out = tmp_path_factory.mktemp("prepared")
    return prepare_video(VIDEO, out, max_frames=FRAMES, chunk_size=CHUNK, progress=False)


# ----------------------------------------------------------------------------------------------------------
# the real video


@needs_real
def test_real_video_items(prepared):
    assert len(prepared) == FRAMES and prepared.resolution == 512
    assert prepared.fps == 25.0 and prepared.num_source_frames == FRAMES
    man = prepared.manifest
    assert man["status"] == "complete" and man["skipped"] == {} and len(man["chunks"]) == 3
    crop = man["crop"]
    assert crop["x0"] >= 0 and crop["y0"] >= 0 and crop["side"] <= 590
    assert crop["x0"] + crop["side"] <= 590 and crop["y0"] + crop["side"] <= 590
    item = prepared[5]
    assert item["image"].shape == (3, 512, 512) and item["image"].dtype == torch.float32
    assert item["image"].min() >= 0 and item["image"].max() <= 1
    assert item["mask"].shape == (1, 512, 512)
    assert 0.1 < item["mask"].mean() < 0.9  # a person, and background
    assert item["landmarks"].shape == (478, 3) and item["expression"].shape == (vd.EXPRESSION_DIM,)
    assert int(item["frame_index"]) == 5 and math.isclose(float(item["time"]), 5 / 25, abs_tol=1e-6)
    k = item["K"].double().numpy()
    np.testing.assert_allclose(k, vd.intrinsics(512))
    np.testing.assert_allclose(k[0, 0], 512 * 0.5 / math.tan(math.radians(6)), rtol=1e-6)
    rot, t = item["R"].double().numpy(), item["t"].double().numpy()
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-5)
    assert np.linalg.det(rot) > 0.99 and 1.0 < t[2] < 4.0  # metres in front of the camera
    np.testing.assert_allclose(item["world_to_camera"][:3, :3], item["R"])
    # the pose projects the canonical face onto the mesh: a few pixels (the canonical face is not this face)
    canon = canonical_face().vertices / 100.0
    cam = canon @ rot.T + t
    uv = cam[:, :2] / cam[:, 2:] * k[0, 0] + k[:2, 2]
    err = np.linalg.norm(uv - item["landmarks"][:468, :2].double().numpy(), axis=1)
    assert np.median(err) < 8.0
    assert prepared.reprojection_px.shape == (FRAMES,) and prepared.reprojection_px.max() < 10.0
    # the face is roughly frontal: the camera looks at the face (world +z points to the camera)
    assert (rot @ np.array([0, 0, 1.0]))[2] < -0.8
    # expression input: small numbers, centred on the canonical face
    expr = prepared.expressions()
    assert expr.shape == (FRAMES, vd.EXPRESSION_DIM) and expr.abs().mean() < 1.0
    assert prepared.median_expression().shape == (vd.EXPRESSION_DIM,)


@needs_real
def test_split_is_time_ordered(prepared):
    train, test = prepared.split(0.8)
    assert list(train.frame_indices) == list(range(9)) and list(test.frame_indices) == [9, 10, 11]
    assert int(test[0]["frame_index"]) == 9 and len(train) + len(test) == len(prepared)
    with pytest.raises(InputError):
        prepared.split(1.0)
    loader = torch.utils.data.DataLoader(test, batch_size=3)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 512, 512) and batch["K"].shape == (3, 3, 3)


@needs_real
def test_finished_folder_is_reused(prepared, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a finished folder must not be prepared again")

    monkeypatch.setattr(vd, "_detect_all", fail)
    monkeypatch.setattr(vd, "_process_frame", fail)
    again = prepare_video(VIDEO, prepared.root, max_frames=FRAMES, chunk_size=CHUNK, progress=False)
    assert len(again) == FRAMES
    with pytest.raises(InputError, match="another video or other settings"):
        prepare_video(VIDEO, prepared.root, max_frames=FRAMES, chunk_size=CHUNK, resolution=256, progress=False)


@needs_real
def test_interrupted_then_resumed_is_identical(prepared, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real = vd._process_frame
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # in the second chunk
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(vd, "_process_frame", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_video(VIDEO, out, max_frames=FRAMES, chunk_size=CHUNK, progress=False)
    manifest = json.loads((out / vd.MANIFEST).read_text())
    assert manifest["status"] == "processing" and [c["index"] for c in manifest["chunks"]] == [0]
    assert not [p for p in out.rglob("*") if ".partial-" in p.name]

    def no_detection(*args, **kwargs):
        raise AssertionError("the detections of the first run must be reused")

    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(vd, "_detect_all", no_detection)
    monkeypatch.setattr(vd, "_process_frame", counting)
    resumed = prepare_video(VIDEO, out, max_frames=FRAMES, chunk_size=CHUNK, progress=False)
    assert counted["n"] == FRAMES - CHUNK  # the first chunk was not done again
    assert resumed.manifest == prepared.manifest
    for name in sorted(p.name for p in (prepared.root / vd.CHUNKS_DIR).iterdir()):
        with np.load(prepared.root / vd.CHUNKS_DIR / name) as a, np.load(out / vd.CHUNKS_DIR / name) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")


# ----------------------------------------------------------------------------------------------------------
# errors


def test_corrupt_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    with pytest.raises(VideoReadError, match="broken.mp4"):
        prepare_video(bad, tmp_path / "out", backend=FakeBackend(), progress=False)
    with pytest.raises(VideoReadError, match="does not exist"):
        prepare_video(tmp_path / "missing.mp4", tmp_path / "out", backend=FakeBackend(), progress=False)


def write_video(path: Path, levels: list[int], size: int = 96) -> Path:
    with VideoWriter(path, Fraction(25)) as writer:
        for level in levels:
            writer.write(np.full((size, size, 3), level, dtype=np.uint8))
    return path


@pytest.mark.skipif(not mediapipe_available(), reason="mediapipe is not installed ([face] extra)")
def test_blank_video_has_no_face(tmp_path):
    video = write_video(tmp_path / "blank.mp4", [128] * 12, size=160)
    with pytest.raises(NoFaceError, match="no face in any of its 12 frames"):
        prepare_video(video, tmp_path / "out", progress=False)


class FakeBackend:
    """Faces by frame brightness: dark (< 60) none, mid one, bright (> 190) two of the same size."""

    name = "fake"

    def _face(self, image: np.ndarray) -> SimpleNamespace:
        h, w = image.shape[:2]
        canon = canonical_face().vertices
        s = 0.03 * w  # pixels per centimetre
        mesh = np.zeros((478, 3))
        mesh[:468] = canon * s * np.array([1.0, -1.0, -1.0]) + np.array([w / 2, h / 2, 0.0])
        mesh[468:473] = mesh[[33, 133]].mean(0)
        mesh[473:] = mesh[[263, 362]].mean(0)
        box = np.array([w * 0.35, h * 0.35, w * 0.65, h * 0.65])
        return SimpleNamespace(box=box, score=0.9, mesh=mesh.astype(np.float32))

    def detect_boxes(self, image: np.ndarray) -> list:
        level = float(image.mean())
        if level < 60:
            return []
        face = self._face(image)
        return [face, face] if level > 190 else [face]

    def detect(self, image: np.ndarray) -> list:
        return [self._face(image)]

    def matte(self, image: np.ndarray) -> np.ndarray:
        return np.full(image.shape[:2], 0.5, dtype=np.float32)


def test_mostly_no_face_says_how_many(tmp_path):
    video = write_video(tmp_path / "dark.mp4", [20] * 7 + [128] * 3)
    with pytest.raises(NoFaceError, match="no face in 7 of its 10 frames"):
        prepare_video(video, tmp_path / "out", backend=FakeBackend(), progress=False)


def test_several_faces(tmp_path):
    video = write_video(tmp_path / "two.mp4", [230] * 6 + [128] * 2)
    with pytest.raises(InputError, match="several faces"):
        prepare_video(video, tmp_path / "out", backend=FakeBackend(), progress=False)


def test_frames_without_face_are_skipped_and_recorded(tmp_path):
    levels = [128] * 5 + [20, 20] + [128] * 3
    video = write_video(tmp_path / "gaps.mp4", levels)
    pv = prepare_video(video, tmp_path / "out", backend=FakeBackend(), progress=False, resolution=64, chunk_size=3)
    assert len(pv) == 8 and list(pv.frame_indices) == [0, 1, 2, 3, 4, 7, 8, 9]
    assert pv.skipped == {5: "no face detected", 6: "no face detected"}
    assert pv.manifest["frames"] == 8 and pv.manifest["video"]["num_frames"] == 10
    item = pv[5]
    assert int(item["frame_index"]) == 7 and item["image"].shape == (3, 64, 64)
    np.testing.assert_allclose(item["mask"], 128 / 255, atol=1e-6)
    # the synthetic mesh is the canonical face seen frontally: the pose says so
    np.testing.assert_allclose(item["R"], np.diag([1.0, -1.0, -1.0]), atol=2e-3)
    np.testing.assert_allclose(item["expression"].reshape(478, 3)[:468], 0.0, atol=1e-3)
    train, test = pv.split(0.8)  # cut at source frame 8
    assert list(test.frame_indices) == [8, 9] and len(train) == 6
    # a chunk file removed by hand is made again (with a progress bar this time)
    before = np.load(pv.root / vd.CHUNKS_DIR / "chunk_00001.npz")["frame_index"]
    (pv.root / vd.CHUNKS_DIR / "chunk_00001.npz").unlink()
    redone = prepare_video(video, tmp_path / "out", backend=FakeBackend(), progress=True, resolution=64,
                           chunk_size=3)
    assert len(redone) == 8 and redone.manifest == pv.manifest
    np.testing.assert_array_equal(np.load(pv.root / vd.CHUNKS_DIR / "chunk_00001.npz")["frame_index"], before)
    # another resolution in the same folder is refused, unless overwrite
    with pytest.raises(InputError, match="overwrite=True"):
        prepare_video(video, tmp_path / "out", backend=FakeBackend(), progress=False, resolution=32)
    again = prepare_video(video, tmp_path / "out", backend=FakeBackend(), progress=False, resolution=32,
                          overwrite=True)
    assert again.resolution == 32 and again[0]["image"].shape == (3, 32, 32)


def test_options_and_unprepared_folder(tmp_path):
    video = write_video(tmp_path / "v.mp4", [128] * 3)
    with pytest.raises(UnknownOptionValueError, match="mediapipe"):
        prepare_video(video, tmp_path / "out", backend="dlib", progress=False)
    with pytest.raises(InputError, match="resolution"):
        prepare_video(video, tmp_path / "out", resolution=4, backend=FakeBackend(), progress=False)
    with pytest.raises(InputError, match="prepare_video"):
        PreparedVideo(tmp_path / "nothing")


def test_crop_box_geometry():
    boxes = np.array([[100, 100, 200, 200], [110, 100, 210, 200], [90, 100, 190, 200.0]])
    x0, y0, side = vd.crop_box(boxes, 640, 480)
    assert side == 240  # 2.4 x the median size (100) beats 1.15 x the union (120)
    assert (x0 + side / 2, y0 + side / 2) == (150, 135)  # median centre, 0.15 box sizes up
    x0, y0, side = vd.crop_box(np.array([[0, 0, 300, 300.0]]), 400, 320)
    assert side == 320 and x0 >= 0 and y0 == 0  # at most the shorter side, moved inside the frame
