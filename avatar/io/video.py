"""Video in and out with PyAV: frames as ``(H, W, 3)`` uint8 RGB, frame rate kept, audio copied, atomic writes.

* :func:`probe_video` / :class:`VideoReader`: frame rate (exact fraction), size, frame count, audio; clear
  errors for missing, empty, truncated or non-video files and for videos without frames, raised at once (the
  first frame is decoded when the file is opened); FFmpeg's own errors are put in plain words
  (:class:`~avatar.io.errors.UnreadableVideoError`). Frames come upright:
  the display matrix (phone videos are often stored sideways with a 90 degree rotation) is applied, as video
  players do.
* :class:`VideoWriter`: H.264 (``libx264``) when this PyAV build can encode it, else MPEG-4 Part 2; writes to a
  partial name next to the target (``.out.partial-<pid>-<random>.mp4``, the user's umask applies) and moves it
  into place only when everything succeeded; partial files that killed runs left behind for the same output
  are removed (:mod:`avatar.io.files`). The audio of
  another file (the driving video) is muxed in as the frames are written: copied packet by packet when
  the codec fits an MP4 (AAC, MP3, ALAC, AC-3), otherwise re-encoded to AAC; it is cut at the end of the video.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from avatar.errors import InputError
from avatar.io.errors import UnreadableVideoError, VideoReadError
from avatar.io.files import create_partial, remove_stale_partials

__all__ = ["VideoInfo", "VideoReader", "VideoWriter", "pick_video_codec", "probe_video", "upright"]

logger = logging.getLogger(__name__)

DEFAULT_FPS = Fraction(25)
COPYABLE_AUDIO = frozenset({"aac", "mp3", "alac", "ac3", "eac3"})
_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif")


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` finds.

    Attributes:
        fps: frame rate as an exact fraction (``average_rate``; 25 when the file has none).
        num_frames: frame count from the container (0 when unknown; then estimated from the duration).
        width, height: frame size in pixels.
        duration: seconds (0 when unknown).
        audio_codec: name of the first audio stream's codec, or ``None`` without audio.
        rotation: degrees (0, 90, 180 or 270, counter-clockwise) by which the stored frames are turned to be
            shown upright; ``width``/``height`` are those of the upright frames.
    """

    fps: Fraction
    num_frames: int
    width: int
    height: int
    duration: float
    audio_codec: str | None
    rotation: int = 0

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


def ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's error in a few plain words, without its ``[Errno ...]`` number or the file name."""
    if isinstance(exc, av.error.InvalidDataError):
        return "invalid data"
    if isinstance(exc, av.error.DecoderNotFoundError):
        return "its video codec has no decoder in this FFmpeg build"
    if isinstance(exc, av.error.DemuxerNotFoundError):
        return "a container format this FFmpeg build does not know"
    if isinstance(exc, av.error.EOFError):
        return "the file ends too early"
    if isinstance(exc, PermissionError):
        return "permission denied"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.rstrip(".").lower() if text[:1].isupper() and not text[1:2].isupper() else text.rstrip(".")


def _convert_hint(path: Path) -> str:
    return f"convert it with `ffmpeg -i {shlex.quote(str(path))} out.mp4` and give out.mp4"


def unreadable_video(path: Path, exc: BaseException, stage: str = "open") -> UnreadableVideoError:
    """The :class:`UnreadableVideoError` for FFmpeg's ``exc`` while opening (``stage='open'``) or decoding
    (``'decode'``) ``path``: what is wrong in plain words, and how to convert the file."""
    reason = ffmpeg_reason(exc)
    if isinstance(exc, PermissionError):
        return UnreadableVideoError(f"{path} cannot be read (permission denied); check the file's permissions",
                                    reason)
    if stage == "open":
        message = (f"{path} cannot be opened as a video: it is not a video file PyAV/FFmpeg can read ({reason}); "
                   f"it may be truncated, damaged or not a video at all. If a video player opens it, "
                   f"{_convert_hint(path)}")
    else:
        message = (f"{path} cannot be decoded: its first video frame is unreadable ({reason}); the file may be "
                   f"corrupt or use a codec this FFmpeg build cannot decode. If a video player plays it, "
                   f"{_convert_hint(path)}")
    return UnreadableVideoError(message, reason)


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoReadError(f"{path} does not exist; check the path")
    if not path.is_file():
        raise VideoReadError(f"{path} is not a file (a folder?); give a video file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path} is empty (0 bytes); give an MP4, MOV, MKV or WebM video")
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        raise unreadable_video(path, exc, "open") from None
    if container.format.name in _IMAGE_FORMATS or any(n in _IMAGE_FORMATS for n in container.format.name.split(",")):
        container.close()
        raise VideoReadError(f"{path} is a still image, not a video; give a driving video (MP4, MOV, MKV, WebM)")
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path} has no video stream; give a video file, not an audio-only file")
    return container


def probe_video(path: str | Path) -> VideoInfo:
    """Inspect a video (see :class:`VideoInfo`); only its first frame is decoded.

    Raises:
        VideoReadError: the file is missing, empty, not a video, has no video stream or no frame, or its first
            frame cannot be decoded (:class:`~avatar.io.errors.UnreadableVideoError` for FFmpeg's refusals).
    """
    path = Path(path)
    with _open(path) as container:
        return _info(container, path)


def _info(container: av.container.InputContainer, path: Path) -> VideoInfo:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = Fraction(rate) if rate else DEFAULT_FPS
    duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
    if not duration and container.duration:
        duration = container.duration / av.time_base
    frames = int(stream.frames or 0) or int(round(duration * fps))
    audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
    width, height = stream.codec_context.width, stream.codec_context.height
    rotation = _first_frame_rotation(container, path)
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(fps, frames, width, height, duration, audio, rotation)


def _rotation_degrees(frame: av.VideoFrame) -> int:
    """The display-matrix rotation of a decoded frame as 0/90/180/270 (counter-clockwise); other angles are
    rounded to the nearest quarter turn."""
    try:
        angle = float(frame.rotation or 0)
    except (AttributeError, ValueError, TypeError):  # older PyAV, or no display matrix
        return 0
    return int(round(angle / 90.0)) % 4 * 90


def _first_frame_rotation(container: av.container.InputContainer, path: Path) -> int:
    """Rotation of the first frame, which is decoded: a video whose first frame cannot be decoded, or without
    any frame, fails here, when it is opened, rather than after the work that would use its frames. Leaves the
    container past that frame: callers only probe and close it."""
    try:
        for frame in container.decode(container.streams.video[0]):
            return _rotation_degrees(frame)
    except av.FFmpegError as exc:
        raise unreadable_video(path, exc, "decode") from None
    raise VideoReadError(f"{path} has no video frames; give a video with at least one frame")


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored ``(H, W, C)`` frame by ``rotation`` degrees counter-clockwise (its display matrix)."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


class VideoReader:
    """Iterate over the frames of a video as ``(H, W, 3)`` uint8 RGB arrays.

    Args:
        path: the video.
        max_frames: stop after this many frames (``None``: all); at least 1.

    The file is checked when the reader is made (its first frame is decoded): a missing, empty, non-video or
    undecodable file, or one without frames, raises :class:`VideoReadError` at once. A file that stops decoding
    part way (truncated) yields the frames before the damage and logs a warning.
    """

    def __init__(self, path: str | Path, max_frames: int | None = None) -> None:
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, numbers.Integral)
                                       or max_frames < 1):
            raise InputError(f"max_frames must be a whole number of at least 1 (or None for every frame), "
                             f"got {max_frames!r}")
        self.path = Path(path)
        self.max_frames = max_frames
        with _open(self.path) as container:  # decodes the first frame: a bad file fails now, not mid-way
            self.info = _info(container, self.path)
        self.frames_read = 0

    @property
    def fps(self) -> Fraction:
        return self.info.fps

    def __len__(self) -> int:
        """Expected number of frames (from the container; the actual count may differ slightly)."""
        n = self.info.num_frames
        return min(n, self.max_frames) if self.max_frames is not None else n

    def __iter__(self) -> Iterator[np.ndarray]:
        self.frames_read = 0
        with _open(self.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            try:
                for frame in container.decode(stream):
                    if self.max_frames is not None and self.frames_read >= self.max_frames:
                        break
                    self.frames_read += 1
                    yield upright(frame.to_ndarray(format="rgb24"), _rotation_degrees(frame))
            except av.FFmpegError as exc:
                if not self.frames_read:
                    raise unreadable_video(self.path, exc, "decode") from None
                logger.warning("%s stops decoding after %d frames (%s: the rest of the file is damaged or "
                               "missing); using those", self.path, self.frames_read, ffmpeg_reason(exc))
        if not self.frames_read:
            raise VideoReadError(f"{self.path} has no video frames; give a video with at least one frame")


@lru_cache(maxsize=1)
def pick_video_codec() -> str:
    """``libx264`` (H.264) when this PyAV/FFmpeg build can encode it, else ``mpeg4``."""
    for name in ("libx264", "h264", "mpeg4"):
        try:
            ctx = av.CodecContext.create(name, "w")
            ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 64, 64, "yuv420p", Fraction(1, 25)
            ctx.open()
            return name
        except Exception:  # noqa: BLE001 - any failure means "not usable here"
            continue
    raise RuntimeError("this PyAV build can encode neither H.264 nor MPEG-4 video; install PyAV wheels from PyPI")


class VideoWriter:
    """Write RGB frames to an MP4 (or any container FFmpeg infers from the suffix), atomically.

    Args:
        path: the output file; it appears only when :meth:`close` succeeds.
        fps: frame rate (kept exactly, e.g. ``Fraction(30000, 1001)``).
        audio_from: copy the first audio stream of this file (the driving video) into the output, cut at the
            end of the video; ``None`` or a file without audio gives a silent video.
        codec: ``'auto'`` (:func:`pick_video_codec`) or an FFmpeg encoder name.
        crf: H.264 constant-rate factor (lower is better quality; 18 is visually lossless for most content).

    Use as a context manager: an exception inside the block removes the partial file.
    """

    def __init__(
        self,
        path: str | Path,
        fps: Fraction | float,
        audio_from: str | Path | None = None,
        codec: str = "auto",
        crf: int = 18,
    ) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        if self.fps <= 0:
            raise InputError(f"fps must be positive, got {fps}")
        self.codec = pick_video_codec() if codec == "auto" else codec
        self.crf = crf
        self.audio_from = Path(audio_from) if audio_from is not None else None
        self.frames_written = 0
        self.audio_mode: str | None = None  # 'copy', 'aac' or None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._audio: _AudioMuxer | None = None
        suffix = self.path.suffix or ".mp4"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_partials(self.path, suffix)  # left by runs that were killed before they could clean up
            self._tmp = create_partial(self.path, suffix)  # mode 0o666 & ~umask, like any new file
        except PermissionError:
            raise InputError(f"cannot write {self.path}: permission denied in {self.path.parent}; choose an "
                             "output in a folder you can write to") from None

    # ---- lifecycle --------------------------------------------------------------------------------------
    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _start(self, width: int, height: int) -> None:
        try:
            container = av.open(str(self._tmp), mode="w", format=None if self.path.suffix else "mp4")
        except av.FFmpegError:
            container = av.open(str(self._tmp), mode="w", format="mp4")
        stream = container.add_stream(self.codec, rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = 1 / self.fps
        if self.codec in ("libx264", "h264"):
            stream.options = {"crf": str(self.crf), "preset": "medium"}
        else:
            stream.codec_context.bit_rate = max(2_000_000, width * height * 8)
        self._container, self._stream = container, stream
        if self.audio_from is not None:
            self._audio = _AudioMuxer.create(self.audio_from, container)
            self.audio_mode = self._audio.mode if self._audio else None
        logger.debug("writing %s: %s %dx%d at %s fps, audio %s", self.path, self.codec, width, height, self.fps,
                     self.audio_mode)

    def write(self, frame: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 RGB frame (every frame must have the size of the first)."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
        h, w = frame.shape[:2]
        if (h % 2) or (w % 2):  # yuv420p needs even sizes: repeat the last row / column
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            h, w = frame.shape[:2]
        if self._container is None:
            self._start(w, h)
        assert self._container is not None and self._stream is not None
        if (w, h) != (self._stream.width, self._stream.height):
            raise ValueError(f"frame {self.frames_written} is {w}x{h}, the video is "
                             f"{self._stream.width}x{self._stream.height}")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.frames_written
        vf.time_base = 1 / self.fps
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames_written += 1
        if self._audio is not None:
            self._audio.mux_until(float(self.frames_written / self.fps))

    def close(self) -> Path:
        """Flush, add the rest of the audio, and move the file into place; returns the final path."""
        if self._container is None:
            self.abort()
            raise InputError(f"no frames were written; {self.path} was not created")
        try:
            assert self._stream is not None
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.finish(float(self.frames_written / self.fps))
            self._container.close()
            self._container = None
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the partial output."""
        if self._audio is not None:
            self._audio.close()
            self._audio = None
        if self._container is not None:
            with contextlib.suppress(Exception):  # the file is discarded anyway
                self._container.close()
            self._container = None
        self._tmp.unlink(missing_ok=True)


class _AudioMuxer:
    """Feeds the audio of a source file into an output container, up to a given time."""

    def __init__(self, source: av.container.InputContainer, in_stream: av.AudioStream,
                 out: av.container.OutputContainer, mode: str) -> None:
        self.source, self.in_stream, self.out, self.mode = source, in_stream, out, mode
        self.start = float((in_stream.start_time or 0) * in_stream.time_base) if in_stream.time_base else 0.0
        if mode == "copy":
            self.out_stream = out.add_stream_from_template(in_stream)
        else:
            rate = in_stream.codec_context.sample_rate or 44100
            self.out_stream = out.add_stream("aac", rate=rate)
            channels = len(in_stream.codec_context.layout.channels)
            self.out_stream.codec_context.layout = "mono" if channels == 1 else "stereo"  # AAC wants a named layout
            self.out_stream.codec_context.open()  # before the header is written
            self.resampler = av.AudioResampler(format="fltp", layout=self.out_stream.codec_context.layout.name,
                                               rate=rate, frame_size=self.out_stream.codec_context.frame_size or 1024)
        self.packets = source.demux(in_stream)
        self.pending: av.Packet | None = None
        self.done = False

    @classmethod
    def create(cls, path: Path, out: av.container.OutputContainer) -> _AudioMuxer | None:
        try:
            source = av.open(str(path), mode="r")
        except av.FFmpegError as exc:
            logger.warning("cannot read the audio of %s (%s); the output is silent", path, exc)
            return None
        if not source.streams.audio:
            logger.info("%s has no audio; the output is silent", path)
            source.close()
            return None
        stream = source.streams.audio[0]
        mode = "copy" if stream.codec_context.name in COPYABLE_AUDIO else "aac"
        if mode == "aac":
            logger.info("re-encoding the %s audio of %s to AAC", stream.codec_context.name, path)
        return cls(source, stream, out, mode)

    def _time(self, packet: av.Packet) -> float:
        ts = packet.pts if packet.pts is not None else packet.dts
        return float(ts * packet.time_base) - self.start if ts is not None else 0.0

    def _next(self) -> av.Packet | None:
        if self.pending is not None:
            p, self.pending = self.pending, None
            return p
        if self.done:
            return None
        try:
            for packet in self.packets:
                if packet.size == 0 and packet.dts is None:
                    continue  # demuxer flush packet
                return packet
        except av.FFmpegError as exc:
            logger.warning("audio of %s stops early (%s)", self.source.name, exc)
        self.done = True
        return None

    def mux_until(self, seconds: float) -> None:
        while (packet := self._next()) is not None:
            if self._time(packet) >= seconds:
                self.pending = packet
                return
            self._mux(packet)

    def _mux(self, packet: av.Packet) -> None:
        if self.mode == "copy":
            packet.stream = self.out_stream
            self.out.mux(packet)
            return
        for frame in packet.decode():
            for rframe in self.resampler.resample(frame):
                for p in self.out_stream.encode(rframe):
                    self.out.mux(p)

    def finish(self, seconds: float) -> None:
        self.mux_until(seconds)
        if self.mode != "copy":
            for rframe in self.resampler.resample(None):
                for p in self.out_stream.encode(rframe):
                    self.out.mux(p)
            for p in self.out_stream.encode(None):
                self.out.mux(p)
        self.close()

    def close(self) -> None:
        self.source.close()
