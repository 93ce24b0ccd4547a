"""The Portrait4D pipeline end to end with tiny random networks on the shared photos and videos."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avatar.flame import build_deformer_buffers
from avatar.flame.synthetic import synthetic_flame_assets
from avatar.io import FaceTooSmallError, InputError, NoFaceError
from avatar.pipelines import Avatar, Portrait4DPipeline, side_by_side
from avatar.pipelines.relative import relative_flame_labels, relative_motion
from avatar.render.camera import orbit_labels


@pytest.fixture(scope="module")
def pipe() -> Portrait4DPipeline:
    torch.set_num_threads(2)
    return Portrait4DPipeline.tiny()


@pytest.fixture
def photo(shared_media: Path) -> Path:
    path = shared_media / "portraits" / "wild" / "public_domain" / "biden.jpg"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture
def talk(shared_media: Path) -> Path:
    path = shared_media / "videos" / "talk1.mp4"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def test_create_avatar_and_views(pipe: Portrait4DPipeline, photo: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="avatar"):
        avatar = pipe.create_avatar(photo)
    assert "using the largest" in caplog.text  # the tiny detector reports several equal faces
    assert avatar.source_crop.shape == (512, 512, 3) and avatar.source_crop.dtype == np.uint8
    assert avatar.source_motion.shape == (1, pipe.reconstructor.config.encoders.motion_dim)
    assert avatar.source_label.shape == (1, 437) and avatar.align is not None
    assert torch.equal(avatar.state.flame_shape, avatar.source_label[:, 25:325])
    views = pipe.render_views(avatar, orbit_labels(3), batch_size=2)
    assert views.shape[0] == 3 and views.shape[-1] == 3 and views.dtype == np.uint8
    assert not np.array_equal(views[0], views[1])  # the camera moves


def test_avatar_and_pipeline_round_trip(pipe: Portrait4DPipeline, photo: Path, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    avatar = pipe.create_avatar(photo)
    loaded = Avatar.load(avatar.save(tmp_path / "a.safetensors"))
    assert np.array_equal(loaded.source_crop, avatar.source_crop) and loaded.align == avatar.align
    cams = orbit_labels(2)
    assert np.array_equal(pipe.render_views(loaded, cams), pipe.render_views(avatar, cams))

    folder = pipe.save_pretrained(tmp_path / "tiny")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["pipeline.json", "reconstructor", "detector", "landmarker", "landmarker_3d", "face_recon", "bfm2flame",
         "motion_encoder"])
    with caplog.at_level(logging.WARNING, logger="avatar"):
        again = Portrait4DPipeline.from_pretrained(folder)
    assert again.random_init and "random weights" in caplog.text
    other = again.create_avatar(photo)
    for k, v in avatar.state.tensors().items():
        torch.testing.assert_close(other.state.tensors()[k], v)
    with pytest.raises(InputError, match="not a saved avatar"):
        Avatar.load(folder / "reconstructor" / "model.safetensors")


def test_reenact_video_frames_fps_and_modes(pipe: Portrait4DPipeline, photo: Path, talk: Path) -> None:
    avatar = pipe.create_avatar(photo)
    result = pipe.reenact(avatar, talk, max_frames=5, batch_size=3)
    assert result.frames.shape[0] == 5 and result.driving.shape == (5, 512, 512, 3)
    assert str(result.fps) == "1350/61" and result.frames_without_face == []
    absolute = pipe.reenact(avatar, talk, max_frames=3, relative=False, head_pose="fixed", smooth=False)
    assert absolute.frames.shape[0] == 3
    assert not np.array_equal(absolute.frames[0], result.frames[0])
    panel = side_by_side(avatar.source_crop, result.frames[0], result.driving[0])
    h, w = result.frames[0].shape[:2]
    assert panel.shape == (h, 3 * w, 3)
    with pytest.raises(ValueError, match="head_pose"):
        next(pipe.iter_reenact(avatar, talk, head_pose="sideways"))  # type: ignore[arg-type]


def test_relative_motion_starts_from_the_source() -> None:
    torch.manual_seed(0)
    src_m, src_l = torch.randn(1, 60), torch.randn(1, 437) * 0.1
    m, lab = torch.randn(3, 60), torch.randn(3, 437) * 0.1
    out_m, out_l = relative_motion(m, m[0], src_m), relative_flame_labels(lab, lab[0], src_l)
    torch.testing.assert_close(out_m[0], src_m[0])
    torch.testing.assert_close(out_m[2] - out_m[1], m[2] - m[1])
    torch.testing.assert_close(out_l[0, 325:], src_l[0, 325:], atol=1e-5, rtol=0)  # neck via rotations
    torch.testing.assert_close(out_l[:, 25:325], src_l.expand(3, -1)[:, 25:325])


def test_frames_without_face_hold_the_last_motion(pipe: Portrait4DPipeline, photo: Path, talk: Path,
                                                  caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from avatar.io import VideoReader

    frames = list(VideoReader(talk, max_frames=5))
    frames[0] = np.zeros_like(frames[0])
    frames[3] = np.zeros_like(frames[3])
    detect = pipe.preprocessor.detect
    monkeypatch.setattr(pipe.preprocessor, "detect",
                        lambda images: [[] if im.max() == 0 else f for im, f in zip(images, detect(images), strict=True)])
    avatar = pipe.create_avatar(photo)
    with caplog.at_level(logging.WARNING, logger="avatar"):
        result = pipe.reenact(avatar, frames, relative=False, smooth=False, head_pose="fixed")
    assert result.frames_without_face == [0, 3] and result.frames.shape[0] == 5
    assert "no usable face in 2 of 5 driving frames" in caplog.text
    assert np.array_equal(result.frames[3], result.frames[2])  # held


def test_bad_photos(pipe: Portrait4DPipeline, photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gray = tmp_path / "gray.png"
    Image.open(photo).convert("LA").reduce(4).save(gray)  # grayscale with alpha is accepted
    assert pipe.create_avatar(gray).source_crop.shape == (512, 512, 3)
    monkeypatch.setattr(pipe.preprocessor, "min_face_size", 1e6)
    with pytest.raises(FaceTooSmallError, match="pixels across"):
        pipe.create_avatar(photo)
    monkeypatch.undo()
    monkeypatch.setattr(pipe.preprocessor, "detect", lambda images: [[] for _ in images])
    with pytest.raises(NoFaceError, match="no face found"):
        pipe.create_avatar(photo)
    with pytest.raises(InputError, match="512x512"):
        pipe.create_avatar(photo, aligned=True)


def test_aligned_photo_skips_detection(pipe: Portrait4DPipeline, shared_media: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    crops = sorted((shared_media / "portraits" / "aligned" / "align_images").glob("*.jpg"))
    if not crops:
        pytest.skip("official aligned examples are absent")
    monkeypatch.setattr(pipe.preprocessor, "detect", lambda images: pytest.fail("detector called"))
    avatar = pipe.create_avatar(crops[0], aligned=True)
    assert avatar.align is None
    assert np.array_equal(avatar.source_crop, np.asarray(Image.open(crops[0]).convert("RGB")))


def test_neck_rotation_through_the_flame_deformer(photo: Path, talk: Path) -> None:
    pipe = Portrait4DPipeline.tiny()
    model = pipe.reconstructor
    buffers = build_deformer_buffers(**synthetic_flame_assets())
    model.load_state_dict({**model.state_dict(), **{f"deformer.flame_deform.{k}": v for k, v in buffers.items()}})
    avatar = pipe.create_avatar(photo)
    neck = pipe.reenact(avatar, talk, max_frames=1, relative=False, smooth=False, head_pose="neck")
    fixed = pipe.reenact(avatar, talk, max_frames=1, relative=False, smooth=False, head_pose="fixed")
    assert neck.frames.shape == fixed.frames.shape
    assert not np.array_equal(neck.frames, fixed.frames)  # the neck rotation moves the head


def test_prefetching_gives_the_same_frames_and_passes_errors(pipe: Portrait4DPipeline, photo: Path,
                                                            talk: Path) -> None:
    """Preprocessing the next batch in a background thread changes nothing in the result; an error raised while
    reading the video reaches the caller; stopping early stops the thread."""
    import threading

    from avatar.io import VideoReader

    avatar = pipe.create_avatar(photo)
    plain = pipe.reenact(avatar, talk, max_frames=5, batch_size=2, prefetch=False)
    ahead = pipe.reenact(avatar, talk, max_frames=5, batch_size=2, prefetch=True)
    np.testing.assert_array_equal(plain.frames, ahead.frames)
    np.testing.assert_array_equal(plain.driving, ahead.driving)

    def broken() -> Iterator[np.ndarray]:
        yield from VideoReader(talk, max_frames=3)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(pipe.iter_reenact(avatar, broken(), batch_size=2, prefetch=True))
    frames = pipe.iter_reenact(avatar, talk, batch_size=1, prefetch=True)
    next(frames)
    frames.close()
    assert not any(t.name == "avatar-prefetch" and t.is_alive() for t in threading.enumerate())


def test_two_interleaved_reenactments_keep_their_own_facts(pipe: Portrait4DPipeline,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-call facts live on each call's stream: two jobs on one (cached) pipeline, advanced in turns, each
    count only their own frames without a face (the app runs concurrent jobs on one pipeline)."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    faces = [rng.integers(1, 255, (96, 96, 3), dtype=np.uint8) for _ in range(4)]
    blanks = [f if i % 2 else np.zeros_like(f) for i, f in enumerate(faces)]  # frames 0 and 2 have no face
    detect = pipe.preprocessor.detect
    monkeypatch.setattr(pipe.preprocessor, "detect",
                        lambda images: [[] if im.max() == 0 else f for im, f in zip(images, detect(images), strict=True)])
    avatar = pipe.create_avatar(photo)
    a = pipe.iter_reenact(avatar, blanks, batch_size=1, smooth=False, head_pose="fixed")
    b = pipe.iter_reenact(avatar, faces, batch_size=1, smooth=False, head_pose="fixed")
    for _ in range(4):
        next(a)
        next(b)
    assert a.frames_without_face == [0, 2] and b.frames_without_face == []
    assert a.frames_done == b.frames_done == 4 and a.head_pose == b.head_pose == "fixed"
    assert not hasattr(pipe, "last_frames_without_face")
