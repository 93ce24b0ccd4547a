"""The MediaPipe face backend: real weights from the ``mediapipe`` wheel, on the real photos and videos of
``../shared/media`` (skipped when either is absent), plus the head-pose geometry against analytic cases."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from avatar.errors import NoFaceError, UnknownOptionValueError
from avatar.face.geometry import estimate_align_params, five_points_from_wflw98, transform_landmarks
from avatar.face.mediapipe_face import (
    MediaPipeFaceBackend,
    canonical_face,
    five_points_from_mesh,
    head_pose_from_mesh,
    mediapipe_available,
    rotation_from_angles,
)

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
ALIGNED = MEDIA / "portraits" / "aligned"
WILD = MEDIA / "portraits" / "wild"

needs_mediapipe = pytest.mark.skipif(not mediapipe_available(), reason="mediapipe is not installed ([face] extra)")
needs_media = pytest.mark.skipif(not MEDIA.is_dir(), reason="../shared/media is absent")


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def backend() -> MediaPipeFaceBackend:
    return MediaPipeFaceBackend()


# ---- geometry (no MediaPipe) -------------------------------------------------------------------------------


def _posed_mesh(yaw: float, pitch: float, roll: float, scale: float, shift: np.ndarray) -> np.ndarray:
    """The canonical face rotated, scaled and shifted, in MediaPipe's pixel axes (y down, z away), 478 points."""
    canon = canonical_face().vertices
    cam = scale * canon @ rotation_from_angles(yaw, pitch, roll).T + shift
    mesh = np.zeros((478, 3))
    mesh[:468] = cam * np.array([1.0, -1.0, -1.0])
    return mesh


@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (25.0, -10.0, 15.0), (-40.0, 20.0, -30.0), (5.0, 35.0, 0.0)])
def test_head_pose_recovers_a_known_pose_of_the_canonical_face(angles: tuple[float, float, float]) -> None:
    mesh = _posed_mesh(*angles, scale=13.5, shift=np.array([300.0, -200.0, 40.0]))
    pose = head_pose_from_mesh(mesh)
    np.testing.assert_allclose(pose.angles, angles, atol=1e-6)
    assert pose.scale == pytest.approx(13.5, rel=1e-9) and pose.residual < 1e-6
    np.testing.assert_allclose(pose.rotation, rotation_from_angles(*angles), atol=1e-9)


def test_head_pose_signs_follow_the_documented_conventions() -> None:
    """yaw > 0: the nose moves to the image's right; pitch > 0: it moves down; roll > 0: counter-clockwise."""
    nose = 4

    def nose_xy(yaw: float, pitch: float, roll: float) -> np.ndarray:
        return _posed_mesh(yaw, pitch, roll, 10.0, np.zeros(3))[nose, :2]

    base = nose_xy(0, 0, 0)
    assert nose_xy(20, 0, 0)[0] > base[0] + 1  # image x grows to the right
    assert nose_xy(0, 20, 0)[1] > base[1] + 1  # image y grows downwards
    top = 10  # forehead: counter-clockwise on screen moves it to the image's left
    assert _posed_mesh(0, 0, 20, 10.0, np.zeros(3))[top, 0] < _posed_mesh(0, 0, 0, 10.0, np.zeros(3))[top, 0] - 1


def test_five_points_average_the_documented_vertices() -> None:
    mesh = np.random.default_rng(0).normal(size=(478, 3))
    five = five_points_from_mesh(mesh)
    np.testing.assert_allclose(five[0], mesh[468, :2])
    np.testing.assert_allclose(five[2], (mesh[1, :2] + mesh[4, :2]) / 2)
    np.testing.assert_allclose(five[4], mesh[291, :2])
    with pytest.raises(ValueError, match="478-point mesh"):
        five_points_from_mesh(mesh[:468])


# ---- real weights on real media ------------------------------------------------------------------------------


@needs_mediapipe
@needs_media
def test_aligned_examples_give_the_official_five_points_within_a_few_pixels(backend: MediaPipeFaceBackend) -> None:
    """The official 512 crops: one face each; our five points against the official ones (from H3R's 98 WFLW
    points), and where the official points land in our crop against the official crop."""
    errors, shifts = [], []
    photos = sorted((ALIGNED / "align_images").iterdir())
    assert len(photos) == 32
    for photo in photos:
        faces = backend.detect(_read(photo))
        assert len(faces) == 1, photo.name
        official = five_points_from_wflw98(np.load(ALIGNED / "2dldmks_align" / f"{photo.stem}.npy"))
        errors.append(np.linalg.norm(faces[0].landmarks - official, axis=1))
        ours, theirs = (estimate_align_params(p, (512, 512)) for p in (faces[0].landmarks, official))
        shifts.append(np.linalg.norm(transform_landmarks(official, ours) - transform_landmarks(official, theirs),
                                     axis=1).mean())
    mean = np.mean(errors, axis=0)  # measured: 1.7 1.6 4.4 3.8 2.6 pixels of 512
    assert mean[0] < 2.5 and mean[1] < 2.5, mean
    assert mean[2] < 6 and mean[3] < 5 and mean[4] < 4, mean
    assert np.max(errors) < 15, np.max(errors, axis=0)
    assert np.mean(shifts) < 9, np.mean(shifts)  # measured: 7.1 pixels of 512 on average (1.4 %)


@needs_mediapipe
@needs_media
def test_wild_portraits_give_one_face_near_their_reference_points(backend: MediaPipeFaceBackend) -> None:
    """Deep3DFaceRecon's 25 unaligned examples come with five reference points (same order as ours)."""
    folder = WILD / "deep3d"
    photos = sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(photos) == 25
    for photo in photos:
        faces = backend.detect(_read(photo))
        assert len(faces) >= 1, photo.name
        reference = np.loadtxt(folder / "detections" / f"{photo.stem}.txt")
        error = np.linalg.norm(faces[0].landmarks - reference, axis=1) / faces[0].size
        assert error.max() < 0.07, (photo.name, error)  # measured: 2 % of the face size on average, 5.4 % at most
    for photo in sorted((WILD / "public_domain").iterdir()):
        assert len(backend.detect(_read(photo))) == 1, photo.name


@needs_mediapipe
@needs_media
def test_talking_head_videos_give_a_face_on_every_frame_and_a_smooth_pose(backend: MediaPipeFaceBackend) -> None:
    from avatar.io.video import VideoReader

    for video in sorted((MEDIA / "videos").glob("*.mp4")):
        angles = []
        for frame in VideoReader(video, max_frames=40):
            faces = backend.detect(frame)
            assert len(faces) == 1, video.name
            angles.append(head_pose_from_mesh(faces[0].mesh).angles)
        steps = np.abs(np.diff(np.array(angles), axis=0))
        assert steps.max() < 6.0, (video.name, steps.max(0))  # measured: at most 4.9 degrees between frames
        assert np.median(steps) < 1.0, (video.name, np.median(steps, 0))


def _sky(h: int = 480, w: int = 640) -> np.ndarray:
    rng = np.random.default_rng(1)
    sky = np.empty((h, w, 3), np.float32)
    sky[..., 0] = np.linspace(90, 170, h)[:, None]
    sky[..., 1] = np.linspace(150, 210, h)[:, None]
    sky[..., 2] = 235
    clouds = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 25)
    sky += (np.clip(clouds / clouds.std(), 0, None) * 30)[..., None]
    return np.clip(sky, 0, 255).astype(np.uint8)


def _wall(h: int = 480, w: int = 640) -> np.ndarray:
    rng = np.random.default_rng(2)
    wall = np.full((h, w, 3), (182, 170, 150), np.float32) + rng.normal(0, 6, (h, w, 1))
    wall[::60] -= 60  # mortar lines
    return np.clip(wall, 0, 255).astype(np.uint8)


@needs_mediapipe
@pytest.mark.parametrize("name", ["sky", "noise", "wall", "black"])
def test_pictures_without_a_face_have_none(backend: MediaPipeFaceBackend, name: str) -> None:
    image = {"sky": _sky, "wall": _wall,
             "noise": lambda: np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8),
             "black": lambda: np.zeros((480, 640, 3), np.uint8)}[name]()
    assert backend.detect(image) == []


@needs_mediapipe
@needs_media
def test_two_people_give_two_faces_largest_first(backend: MediaPipeFaceBackend) -> None:
    small = cv2.resize(_read(WILD / "public_domain" / "obama.jpg"), (455, 568), interpolation=cv2.INTER_AREA)
    big = cv2.resize(_read(WILD / "public_domain" / "biden.jpg"), (700, 700), interpolation=cv2.INTER_AREA)
    canvas = np.full((700, 1200, 3), 128, np.uint8)
    canvas[:, :700] = big
    canvas[66:634, 740:1195] = small
    faces = backend.detect(canvas)
    assert len(faces) == 2
    assert faces[0].size > faces[1].size and faces[0].box[2] <= 700  # the larger face is Biden's, on the left


@needs_mediapipe
@needs_media
def test_head_pose_of_mirrored_rotated_and_scaled_copies(backend: MediaPipeFaceBackend) -> None:
    """One real frame with a turned head (frame 36 of talk1.mp4, yaw about 19 degrees): mirroring flips yaw and
    roll, an in-plane rotation adds to roll, resizing scales ``scale``."""
    from avatar.io.video import VideoReader

    frame = list(VideoReader(MEDIA / "videos" / "talk1.mp4", max_frames=37))[36]

    def pose(image: np.ndarray):  # noqa: ANN202
        faces = backend.detect(image)
        assert len(faces) == 1
        return head_pose_from_mesh(faces[0].mesh)

    base = pose(frame)
    assert abs(base.yaw) > 12, base.angles  # a clearly turned head, so the sign test means something
    mirrored = pose(np.ascontiguousarray(frame[:, ::-1]))
    assert np.sign(mirrored.yaw) == -np.sign(base.yaw)
    assert mirrored.yaw == pytest.approx(-base.yaw, abs=4) and mirrored.roll == pytest.approx(-base.roll, abs=3)
    assert mirrored.pitch == pytest.approx(base.pitch, abs=4)
    h, w = frame.shape[:2]
    for degrees in (20.0, -20.0):  # counter-clockwise on screen for positive angles (OpenCV's convention)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
        rotated = pose(cv2.warpAffine(frame, m, (w, h), borderMode=cv2.BORDER_REPLICATE))
        assert rotated.roll - base.roll == pytest.approx(degrees, abs=3)
        assert rotated.yaw == pytest.approx(base.yaw, abs=4)
    half = pose(cv2.resize(frame, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    assert half.scale / base.scale == pytest.approx(0.5, rel=0.05)
    np.testing.assert_allclose(half.angles, base.angles, atol=3)


@needs_mediapipe
@needs_media
def test_matte_separates_the_person_from_the_background(backend: MediaPipeFaceBackend) -> None:
    image = _read(WILD / "public_domain" / "obama.jpg")
    face = backend.detect(image)[0]
    matte = backend.matte(image)
    assert matte.shape == image.shape[:2] and matte.dtype == np.float32
    x1, y1, x2, y2 = face.box
    dx, dy = (x2 - x1) / 4, (y2 - y1) / 4  # the middle of the face box (the box itself reaches past the cheeks)
    assert matte[int(y1 + dy):int(y2 - dy), int(x1 + dx):int(x2 - dx)].mean() > 0.9  # the face is the person
    assert matte[:40, :40].mean() < 0.1 and matte[:40, -40:].mean() < 0.1  # the top corners are background


# ---- the backend inside the pipeline, the CLI and eval.prepare -------------------------------------------------


@needs_mediapipe
@needs_media
def test_tiny_pipeline_with_mediapipe_crops_real_faces_and_refuses_none(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    from avatar.pipelines import Portrait4DPipeline

    pipe = Portrait4DPipeline.tiny(preprocess="mediapipe")
    assert pipe.preprocess == "mediapipe" and pipe.preprocessor.landmarker is None
    photo = ALIGNED / "align_images" / sorted(p.name for p in (ALIGNED / "align_images").iterdir())[0]
    analysis = pipe.analyze_photo(photo)
    official = five_points_from_wflw98(np.load(ALIGNED / "2dldmks_align" / f"{photo.stem}.npy"))
    # an aligned photo cropped again lands where it was: the five points stay within a few pixels
    ours = five_points_from_mesh(np.concatenate([analysis.landmarks, np.zeros((478, 1), np.float32)], 1))
    assert np.linalg.norm(ours - official, axis=1).mean() < 8
    with pytest.raises(NoFaceError, match="no face found"):
        pipe.create_avatar(_sky())
    canvas = np.full((700, 1400, 3), 128, np.uint8)
    canvas[:, :700] = cv2.resize(_read(WILD / "public_domain" / "biden.jpg"), (700, 700))
    canvas[100:600, 800:1300] = cv2.resize(_read(WILD / "public_domain" / "obama.jpg"), (500, 500))
    with caplog.at_level(logging.WARNING):
        pipe.create_avatar(canvas)
    assert "2 faces found" in caplog.text and "using the largest" in caplog.text
    # a driving video with no face at all is refused once the stream ends
    avatar = pipe.create_avatar(photo)
    with pytest.raises(NoFaceError, match="no face found in any of the 3 driving frames"):
        list(pipe.iter_reenact(avatar, [_sky(), _wall(), _sky()], batch_size=2))
    # saved and loaded, the pipeline keeps its backend; official networks are not in the folder
    folder = pipe.save_pretrained(tmp_path / "pipe")
    assert not (folder / "detector").exists() and not (folder / "landmarker").exists()
    from avatar.pipelines.auto import load_pipeline

    assert load_pipeline(folder).preprocess == "mediapipe"
    with pytest.raises(Exception, match="saved with the mediapipe preprocessing"):
        load_pipeline(folder, preprocess="official")


def test_unknown_backends_are_refused_with_the_accepted_ones() -> None:
    from avatar.pipelines import Portrait4DPipeline
    from avatar.pipelines.base import AvatarPipeline

    with pytest.raises(UnknownOptionValueError, match="official, mediapipe"):
        Portrait4DPipeline.tiny(preprocess="dlib")

    class OnlyMediaPipe(Portrait4DPipeline):  # a family that defines its own inputs (e.g. a Gaussian head)
        family = "gaussian-test"
        preprocess_backends = ("mediapipe",)

    assert OnlyMediaPipe.check_preprocess(None) == "mediapipe"
    with pytest.raises(UnknownOptionValueError, match="gaussian-test models take the mediapipe"):
        OnlyMediaPipe.check_preprocess("official")
    assert AvatarPipeline.preprocess_backends == ("official",)


@needs_mediapipe
@needs_media
def test_cli_reenact_with_mediapipe_and_a_faceless_photo(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from avatar.cli import main

    folder = tmp_path / "tiny"
    assert main(["tiny", str(folder), "--preprocess", "mediapipe"]) == 0
    sky = tmp_path / "sky.png"
    Image.fromarray(_sky()).save(sky)
    out = tmp_path / "out.mp4"
    video = MEDIA / "videos" / "talk1.mp4"
    assert main(["reenact", str(sky), str(video), "-o", str(out), "--model", str(folder), "--max-frames", "4",
                 "--device", "cpu"]) == 1
    assert "no face found" in capsys.readouterr().err and not out.exists()
    photo = WILD / "public_domain" / "obama.jpg"
    assert main(["reenact", str(photo), str(video), "-o", str(out), "--model", str(folder), "--max-frames", "4",
                 "--device", "cpu"]) == 0
    assert out.is_file()


@needs_mediapipe
@needs_media
def test_eval_prepare_crops_with_mediapipe_and_removes_the_background(tmp_path: Path) -> None:
    from eval.prepare import CropPreprocessor, FaceCropper, MediaPipeMatting

    cropper = FaceCropper(CropPreprocessor("mediapipe"), crop="aligned")
    photo = ALIGNED / "align_images" / sorted(p.name for p in (ALIGNED / "align_images").iterdir())[3]
    image = _read(photo)
    [(crop, reason)] = cropper.crop([image])
    assert reason is None and crop.shape == (512, 512, 3)
    # the aligned example comes back nearly as it was
    assert np.abs(crop.astype(np.float32) - image.astype(np.float32)).mean() < 40
    [(none, why)] = cropper.crop([_sky()])
    assert none is None and why == "no face detected"
    import torch

    matte = MediaPipeMatting().matte(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255)
    assert matte.shape == (1, 1, 512, 512) and 0.2 < float(matte.mean()) < 0.95


@needs_mediapipe
def test_face_bench_prints_and_writes_the_mediapipe_rows(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    import json

    from avatar.bench import main

    out = tmp_path / "face.json"
    assert main(["face", "--frames", "3", "--repeats", "1", "--skip-official", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["backend"] for r in rows] == ["mediapipe"] * 5
    assert all(r["frames"] == 3 and r["ms_per_frame"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "| mediapipe | detect() as the pipeline calls it |" in printed and "official" not in printed.split("|---")[-1]


@needs_mediapipe
def test_face_bench_refuses_a_video_without_a_face(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from avatar.bench import main
    from avatar.io import VideoWriter

    video = tmp_path / "sky.mp4"
    with VideoWriter(video, 25) as writer:
        for _ in range(3):
            writer.write(_sky())
    assert main(["face", "--video", str(video), "--frames", "3", "--repeats", "1", "--skip-official"]) == 1
    assert "found no face" in capsys.readouterr().err
