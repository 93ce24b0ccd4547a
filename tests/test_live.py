"""Live reenactment (avatar.pipelines.live) with a recorded video played as the stream: every frame answered, in
order, with its latency; the same frames as the offline path; the neutral-pose calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar.errors import InputError
from avatar.pipelines import Portrait4DPipeline
from avatar.pipelines.live import LiveReenactor


@pytest.fixture(scope="module")
def pipe() -> Portrait4DPipeline:
    torch.set_num_threads(2)
    return Portrait4DPipeline.tiny()  # the official backend with random weights: a "face" in every frame


@pytest.fixture(scope="module")
def avatar(pipe: Portrait4DPipeline):  # noqa: ANN201
    rng = np.random.default_rng(0)
    return pipe.create_avatar(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """A recorded 'webcam': a moving gradient with noise, 12 frames of 160x192."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:160, 0:192]
    out = []
    for t in range(12):
        base = np.stack([(xx + 7 * t) % 256, (yy + 3 * t) % 256, (xx + yy) % 256], -1)
        out.append(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    return out


def test_absolute_live_frames_equal_the_offline_stream(pipe: Portrait4DPipeline, avatar, frames) -> None:  # noqa: ANN001
    offline = pipe.reenact(avatar, frames, relative=False, batch_size=1)
    with LiveReenactor(pipe, avatar, relative=False) as live:
        answers = [live.step(f, timestamp=i / 25) for i, f in enumerate(frames)]
    assert [a.index for a in answers] == list(range(len(frames)))  # one answer per frame, in order
    assert not any(a.calibrating for a in answers)  # absolute motion needs no neutral frame
    for answer, image in zip(answers, offline.frames, strict=True):
        np.testing.assert_array_equal(answer.image, image)
    assert all(a.latency_ms > 0 for a in answers)
    assert answers[-1].fps == pytest.approx(25.0)  # from the frames' own timestamps


def test_pipeline_stream_is_the_live_reenactor(pipe: Portrait4DPipeline, avatar, frames) -> None:  # noqa: ANN001
    """``pipeline.stream(avatar)`` (the live-mode entry point) answers frame by frame like ``LiveReenactor``."""
    with pipe.stream(avatar, relative=False) as live, LiveReenactor(pipe, avatar, relative=False) as direct:
        assert isinstance(live, LiveReenactor)
        for i, f in enumerate(frames[:3]):
            np.testing.assert_array_equal(live.step(f, timestamp=i / 25).image, direct.step(f, timestamp=i / 25).image)


def test_calibration_takes_the_last_still_frame_as_the_neutral_reference(pipe: Portrait4DPipeline, avatar,  # noqa: ANN001
                                                                         frames) -> None:
    live = LiveReenactor(pipe, avatar, relative=True, calibration_seconds=0.2)
    answers = [live.step(f, timestamp=i / 25) for i, f in enumerate(frames)]
    # frames at t = 0, 0.04, ..., 0.2: calibrating; the frame at t = 0.2 (index 5) ends the calibration
    assert [a.calibrating for a in answers] == [True] * 6 + [False] * 6
    assert live.calibrated
    # during calibration the output already follows the face, relative to the first frame
    during = pipe.reenact(avatar, frames[:6], relative=True, batch_size=1)
    for answer, image in zip(answers[:6], during.frames, strict=True):
        np.testing.assert_array_equal(answer.image, image)
    # afterwards: the offline relative stream whose reference is the neutral frame (frame 5)
    after = pipe.reenact(avatar, [frames[5], *frames[6:]], relative=True, batch_size=1)
    for answer, image in zip(answers[6:], after.frames[1:], strict=True):
        np.testing.assert_array_equal(answer.image, image)
    assert not np.array_equal(answers[7].image, during.frames[0])  # not a frozen picture

    live.recalibrate()
    again = [live.step(f, timestamp=1 + i / 25) for i, f in enumerate(frames[:7])]
    assert [a.calibrating for a in again] == [True] * 6 + [False]
    assert [a.index for a in again] == list(range(12, 19))  # the session's numbering goes on
    live.close()


def test_without_calibration_relative_live_equals_the_offline_stream(pipe: Portrait4DPipeline, avatar,  # noqa: ANN001
                                                                     frames) -> None:
    offline = pipe.reenact(avatar, frames[:5], relative=True, batch_size=1)
    live = LiveReenactor(pipe, avatar, calibration_seconds=0)
    for i, frame in enumerate(frames[:5]):
        np.testing.assert_array_equal(live.step(frame).image, offline.frames[i])


def test_bad_frames_and_options_are_refused(pipe: Portrait4DPipeline, avatar) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match=r"calibration_seconds must be >= 0"):
        LiveReenactor(pipe, avatar, calibration_seconds=-1)
    live = LiveReenactor(pipe, avatar)
    with pytest.raises(InputError, match=r"\(H, W, 3\) uint8 RGB, got \(4, 4\) uint8"):
        live.step(np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match=r"float32"):
        live.step(np.zeros((8, 8, 3), np.float32))


def test_cli_live_plays_a_video_as_the_camera_and_reports_latency(tmp_path, shared_media, capsys) -> None:  # noqa: ANN001
    from avatar.cli import main
    from avatar.io import VideoReader

    folder = tmp_path / "tiny"
    assert main(["tiny", str(folder)]) == 0
    photo = shared_media / "portraits" / "wild" / "public_domain" / "obama.jpg"
    video = shared_media / "videos" / "talk1.mp4"
    out = tmp_path / "live.mp4"
    assert main(["live", str(photo), "--camera", str(video), "--output", str(out), "--max-frames", "5",
                 "--model", str(folder), "--device", "cpu", "--no-window"]) == 0
    printed = capsys.readouterr().out
    assert "5 frames in" in printed and "latency per frame: median" in printed and str(out) in printed
    assert len(list(VideoReader(out))) == 5  # every camera frame answered
    # nowhere to show the avatar, a camera that is not there, a missing package: one line each, exit 1
    assert main(["live", str(photo), "--camera", str(video), "--model", str(folder), "--no-window"]) == 1
    assert "nothing to show the avatar on" in capsys.readouterr().err
    assert main(["live", str(photo), "--camera", str(tmp_path / "nope.mp4"), "-o", str(out), "--model",
                 str(folder)]) == 1
    assert "no such camera index or video file" in capsys.readouterr().err
    try:
        import pyvirtualcam  # noqa: F401
    except ImportError:
        assert main(["live", str(photo), "--camera", str(video), "--virtual-camera", "--max-frames", "1",
                     "--model", str(folder), "--device", "cpu", "--no-window"]) == 1
        assert "needs the pyvirtualcam package" in capsys.readouterr().err


def test_pipeline_bench_times_live_reenactment(tmp_path, capsys) -> None:  # noqa: ANN001
    import json

    from avatar.bench import main

    out = tmp_path / "rows.json"
    assert main(["pipeline", "--tiny", "--device", "cpu", "--frames", "4", "--batch-sizes", "2", "--passes", "1",
                 "--repeats", "1", "--prefetch", "off", "--live", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    [live] = [r for r in rows if r["what"].startswith("live: one frame at a time")]
    assert live["batch"] == 1 and live["runs"] == 4 and live["ms"] > 0
    assert "| live: one frame at a time, latency (95th percentile" in capsys.readouterr().out


class _FaceWhenBright:
    """A stand-in pipeline: a frame 'has a face' when it is not black; the output is the frame itself."""

    def __init__(self) -> None:
        self.streams = 0

    def iter_reenact(self, avatar, frames, **kwargs):  # noqa: ANN001, ANN003, ANN201
        from avatar.pipelines.results import ReenactedFrame, ReenactStream

        self.streams += 1
        return ReenactStream(ReenactedFrame(i, f, f, bool(f.any())) for i, f in enumerate(frames))


def test_calibration_starts_with_the_first_face_and_waits_for_one() -> None:
    stub = _FaceWhenBright()
    live = LiveReenactor(stub, avatar=None, calibration_seconds=0.2)  # type: ignore[arg-type]
    dark, face = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 200, np.uint8)
    answers = [live.step(dark, timestamp=i / 25) for i in range(10)]  # 0.4 s without a face
    assert all(a.calibrating and not a.face_found for a in answers)
    answers = [live.step(face, timestamp=(10 + i) / 25) for i in range(7)]  # a face from t = 0.4 s
    # the second of holding still counts from the first face: t = 0.4 .. 0.6 s calibrate, then the reference
    assert [a.calibrating for a in answers] == [True] * 6 + [False]
    assert stub.streams == 2  # the stream restarted from the neutral frame
