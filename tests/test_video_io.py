"""Photo and video I/O at the edges: odd photos are read correctly, bad files fail with one clear error,
videos keep their frame rate and audio, and outputs appear only when complete."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from avatar.io import (
    ImageReadError,
    VideoReader,
    VideoReadError,
    VideoWriter,
    load_image,
    pick_video_codec,
    probe_video,
)
from avatar.io.video import upright

# ----------------------------------------------------------------------------------------------------------
# helpers


def _photo(shared_media: Path) -> Path:
    path = shared_media / "portraits" / "wild" / "public_domain" / "obama.jpg"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def _video(shared_media: Path, name: str) -> Path:
    path = shared_media / "videos" / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def make_video(path: Path, frames: int = 6, fps: int = 10, size: int = 32, audio: str | None = None,
               audio_seconds: float = 1.0) -> Path:
    """A small synthetic video; ``audio`` is an encoder name (``'pcm_s16le'``, ``'aac'``) or ``None``."""
    c = av.open(str(path), "w")
    v = c.add_stream("mpeg4", rate=fps)
    v.width = v.height = size
    v.pix_fmt = "yuv420p"
    a = None
    if audio:
        a = c.add_stream(audio, rate=16000)
        a.layout = "mono"
    for i in range(frames):
        f = av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 * i % 256, np.uint8), format="rgb24")
        f.pts, f.time_base = i, Fraction(1, fps)
        for p in v.encode(f):
            c.mux(p)
    if a is not None:
        n = int(16000 * audio_seconds)
        samples = (np.sin(np.arange(n) / 7.0) * 8000).astype(np.int16)[None]
        step = 1024
        for k in range(0, n, step):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, k:k + step]), format="s16", layout="mono")
            af.sample_rate, af.pts = 16000, k
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    for p in v.encode(None):
        c.mux(p)
    c.close()
    return path


def _streams(path: Path) -> dict[str, tuple[str, float]]:
    with av.open(str(path)) as c:
        return {s.type: (s.codec_context.name, float(s.duration * s.time_base) if s.duration else 0.0)
                for s in c.streams}


# ----------------------------------------------------------------------------------------------------------
# photos


def test_photo_modes_are_converted_to_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    gray = Image.fromarray(rgb[..., 0])
    gray.save(tmp_path / "gray.png")
    out = load_image(tmp_path / "gray.png")
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8 and np.array_equal(out[..., 0], out[..., 2])

    rgba = np.dstack([rgb, np.full((40, 30), 255, np.uint8)])
    rgba[:10, :, 3] = 0  # transparent rows become white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert out.shape == (40, 30, 3) and (out[:10] == 255).all() and np.array_equal(out[10:], rgb[10:])

    deep = (rgb[..., 1].astype(np.uint16) * 257)  # 16-bit grayscale PNG ("I;16")
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png")[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(load_image(np.dstack([deep] * 3))[..., 1], rgb[..., 1])  # 16-bit arrays too

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = load_image(tmp_path / "cmyk.jpg")
    assert out.shape == (40, 30, 3) and np.abs(out.astype(int) - rgb).mean() < 30


def test_exif_rotation_and_huge_photos(tmp_path: Path) -> None:
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, :10] = 255  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.shape == (60, 20, 3)  # upright: portrait
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # the band is now on top

    big = Image.new("RGB", (5000, 3000), (10, 120, 200))
    big.save(tmp_path / "big.jpg", quality=60)
    out = load_image(tmp_path / "big.jpg")
    assert out.shape == (2458, 4096, 3)
    assert load_image(tmp_path / "big.jpg", max_side=None).shape == (3000, 5000, 3)


def test_bad_photo_files(tmp_path: Path, shared_media: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    data = _photo(shared_media).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    for name, message in (("missing.jpg", "does not exist"), ("empty.jpg", "empty"), ("notes.jpg", "not an image"),
                          ("cut.jpg", "truncated")):
        with pytest.raises(ImageReadError, match=message) as info:
            load_image(tmp_path / name)
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# videos


def test_codec_available() -> None:
    assert pick_video_codec() in ("libx264", "h264", "mpeg4")


def test_copy_keeps_fps_and_audio_cut_to_length(tmp_path: Path, shared_media: Path) -> None:
    src = _video(shared_media, "talk1.mp4")  # 1350/61 fps, AAC audio
    reader = VideoReader(src, max_frames=12)
    assert reader.fps == Fraction(1350, 61) and reader.info.has_audio and len(reader) == 12
    out = tmp_path / "copy.mp4"
    with VideoWriter(out, reader.fps, audio_from=src) as writer:
        for frame in reader:
            writer.write(frame[::8, ::8])
    assert writer.audio_mode == "copy" and reader.frames_read == 12
    info = probe_video(out)
    assert info.fps == Fraction(1350, 61) and info.num_frames == 12 and info.audio_codec == "aac"
    streams = _streams(out)
    assert streams["video"][0] == ("h264" if writer.codec in ("libx264", "h264") else "mpeg4")
    assert abs(streams["audio"][1] - 12 * 61 / 1350) < 0.05  # cut at the end of the video
    assert [p.name for p in tmp_path.iterdir()] == ["copy.mp4"]  # no partial file left


def test_uncopyable_audio_is_reencoded_and_silent_input_gives_silent_output(tmp_path: Path) -> None:
    src = make_video(tmp_path / "pcm.mkv", frames=10, audio="pcm_s16le")
    with VideoWriter(tmp_path / "out.mp4", probe_video(src).fps, audio_from=src) as writer:
        for frame in VideoReader(src):
            writer.write(frame)
    assert writer.audio_mode == "aac"
    assert _streams(tmp_path / "out.mp4")["audio"][0] == "aac"

    silent = make_video(tmp_path / "silent.mp4", frames=4)
    with VideoWriter(tmp_path / "out2.mp4", 10, audio_from=silent) as writer:
        for frame in VideoReader(silent):
            writer.write(frame)
    assert writer.audio_mode is None and "audio" not in _streams(tmp_path / "out2.mp4")


def test_bad_video_files(tmp_path: Path, shared_media: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("not a video at all")
    Image.new("RGB", (16, 16)).save(tmp_path / "still.png")
    data = _video(shared_media, "talk3.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 4])
    audio_only = av.open(str(tmp_path / "voice.m4a"), "w")
    stream = audio_only.add_stream("aac", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    frame.sample_rate, frame.pts = 16000, 0
    for p in [*stream.encode(frame), *stream.encode(None)]:
        audio_only.mux(p)
    audio_only.close()
    no_frames = av.open(str(tmp_path / "noframes.avi"), "w")  # a video stream without any frame
    s = no_frames.add_stream("mpeg4", rate=10)
    s.width = s.height = 16
    s.pix_fmt = "yuv420p"
    no_frames.start_encoding()
    no_frames.close()

    cases = {"missing.mp4": "does not exist", "empty.mp4": "empty", "notes.mp4": "cannot be opened",
             "still.png": "still image", "voice.m4a": "no video stream", "noframes.avi": "no video frames"}
    for name, message in cases.items():
        with pytest.raises(VideoReadError, match=message) as info:
            list(VideoReader(tmp_path / name))
        assert "\n" not in str(info.value) and "Errno" not in str(info.value)  # FFmpeg's words are translated
    # a truncated file either cannot be opened or gives the frames before the damage
    try:
        frames = list(VideoReader(tmp_path / "cut.mp4"))
    except VideoReadError as exc:
        assert "truncated" in str(exc) or "corrupt" in str(exc)
    else:
        assert 0 < len(frames) < 125


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError), VideoWriter(out, 25) as writer:
        writer.write(np.zeros((16, 16, 3), np.uint8))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no frames"), VideoWriter(out, 25):
        pass
    assert list(tmp_path.iterdir()) == []
    with VideoWriter(out, 25) as writer:  # odd sizes are padded for yuv420p
        writer.write(np.zeros((15, 17, 3), np.uint8))
    assert probe_video(out).width == 18 and probe_video(out).height == 16


@pytest.mark.parametrize("degrees", [90, 180, -90])
def test_rotated_phone_video_comes_upright(tmp_path: Path, degrees: int) -> None:
    """A video stored sideways with a display-matrix rotation (as phones record) is read upright."""
    path = tmp_path / "phone.mp4"
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:8, :16] = 255  # a white block in the top-left corner of the stored frame
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(degrees)
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = probe_video(path)
    assert info.rotation == degrees % 360
    assert (info.width, info.height) == ((32, 64) if degrees % 180 else (64, 32))
    frames = list(VideoReader(path))
    assert len(frames) == 3
    expected = np.rot90(stored, degrees // 90)  # counter-clockwise quarter turns
    assert frames[0].shape == expected.shape
    # the block is where an upright player shows it (codec blur aside)
    bright = frames[0][..., 0] > 128
    assert bright.sum() > 0 and (bright == (expected[..., 0] > 128)).mean() > 0.97
    assert upright(stored, 0) is stored
