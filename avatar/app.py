"""The avatar4d Gradio app: ``avatar app``, ``python -m avatar.app`` or ``python app.py`` (the Hugging Face Space).

Importing this module builds nothing; :func:`build_demo` builds the ``gr.Blocks`` and :func:`main` (``avatar app
[--model ID] [--port N] [--share]``) launches it. The model also comes from the ``AVATAR_MODEL`` environment
variable: ``portrait4d-v2`` (default), ``portrait4d-v1``, ``portrait4d-static``, ``goha``, a pipeline folder (``avatar tiny
DIR``) or ``tiny`` (a tiny random pipeline built in memory, for development; its pictures are meaningless).

Two tabs, each also an API endpoint that scripts can call with ``gradio_client``:

* **Reconstruct** (``api_name="reconstruct"``): photo -> orbit video of the 3D avatar, the aligned crop, and a
  still from the yaw/pitch of the sliders (``api_name="view"`` re-renders only the still).
* **Reenact** (``api_name="reenact"``): photo + driving video (upload or webcam) -> reenacted video with the
  driving audio. With a fitted GPHM avatar folder as the model (``avatar app --model AVATAR_DIR``, from ``avatar
  fit``) no photo is needed: the driving video's MediaPipe face mesh and head pose drive that avatar
  (:func:`avatar.fitting.reenact.reenact_video`). Reconstruct and Live need a one-shot model and say so.

The avatar of a photo is built once per browser session (and per model) and reused by every later call.
The user's own problems (an :class:`~avatar.errors.AvatarError`: bad input, missing weights; or the GPU running
out of memory) end in a ``gr.Error`` with one plain sentence; anything else is logged with its traceback and
shown as an internal error. Outputs are written only to temporary folders. The library work lives in the
library: cameras in :mod:`avatar.render.camera`, the cache report in :mod:`avatar.hub.status`, the loaded
pipelines in :mod:`avatar.pipelines.cache`.

Settings (environment): ``AVATAR_MODEL``, ``AVATAR_DEVICE`` (auto, cpu, cuda, ...), ``AVATAR_DTYPE`` (float32,
bfloat16, float16), ``AVATAR_MAX_VIDEO_SECONDS`` (longest driving video accepted, default 30),
``AVATAR_MAX_UPLOAD_MB`` (default 50), ``AVATAR_CONCURRENCY`` (jobs run at once, default 1).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from the app

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from avatar.errors import AvatarError, InputError  # noqa: E402
from avatar.hub.registry import DEFAULT_MODEL_ID, MODELS, pipeline_model_ids  # noqa: E402
from avatar.hub.status import missing_files as _missing_files  # noqa: E402
from avatar.hub.status import model_status as _model_status  # noqa: E402
from avatar.io import VideoReader, VideoWriter, load_image, probe_video  # noqa: E402
from avatar.pipelines import AvatarPipeline, side_by_side  # noqa: E402
from avatar.pipelines.cache import TINY, LoadedModel, ModelUnavailableError, PipelineCache  # noqa: E402
from avatar.render.camera import orbit_labels, view_label  # noqa: E402
from avatar.runtime import DTYPES  # noqa: E402

__all__ = ["TINY", "LoadedModel", "ModelUnavailableError", "PipelineCache", "build_demo", "launch", "main",
           "live_recalibrate", "live_step", "model_status", "missing_files", "pick_model", "pick_reenact_model",
           "reconstruct", "reenact",
           "render_view", "run_button", "runtime_status", "view_label"]

try:  # Hugging Face ZeroGPU: a GPU is attached only while a decorated function runs
    import spaces

    _on_gpu = spaces.GPU(duration=120)
except ImportError:  # anywhere else: run as is

    def _on_gpu(fn):  # noqa: ANN001, ANN202
        return fn


logger = logging.getLogger("avatar.app")

ORBIT_FPS = 25
RENDER_BATCH = 8
MAX_AVATARS_PER_SESSION = 4
MAX_LOADED_PIPELINES = 2


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        logger.warning("%s=%r is not a number; using %s", name, os.environ.get(name), default)
        return default


MAX_VIDEO_SECONDS = _env_float("AVATAR_MAX_VIDEO_SECONDS", 30.0)
MAX_UPLOAD_MB = int(_env_float("AVATAR_MAX_UPLOAD_MB", 50))
CONCURRENCY = max(1, int(_env_float("AVATAR_CONCURRENCY", 1)))
QUEUE_SIZE = 32


# ----------------------------------------------------------------------------------------------------------
# models: what is selectable, what is loaded


def _is_gphm_avatar(model: str) -> bool:
    """Whether the model is a fitted GPHM avatar folder (``avatar fit``) rather than a model id or pipeline."""
    from avatar.fitting.gphm_fit import is_gphm_avatar_dir

    return model != TINY and model not in MODELS and is_gphm_avatar_dir(model)


def _model_label(model: str) -> str:
    if model == TINY:
        return "tiny random pipeline (development only)"
    if _is_gphm_avatar(model):
        return f"{Path(model).name} (fitted GPHM avatar)"
    if model in MODELS:
        return {"portrait4d-v2": "Portrait4D-v2", "portrait4d-v1": "Portrait4D (v1)",
                "portrait4d-static": "Portrait4D static 3D",
                "goha": "GOHA (NVIDIA, non-commercial weights)"}.get(model, model)
    return f"{Path(model).name} (folder)"


def model_choices(selected: str, static: bool) -> list[tuple[str, str]]:
    """Dropdown choices ``(label, value)``: the official models, the tiny one, and ``selected`` if it is a folder."""
    names = ["portrait4d-v2", "portrait4d-v1"] + (["portrait4d-static"] if static else []) + ["goha", TINY]
    if selected not in names and selected not in MODELS:
        names.insert(0, selected)
    return [(_model_label(n), n) for n in names]


def missing_files(model: str) -> list[str]:
    """Upstream paths of a registry model id that are not converted in the cache (``[]`` otherwise)."""
    return [f.path for f in _missing_files(model)]


def model_status(model_id: str) -> str:
    """A Markdown report: the model, where its files come from, which are cached, what to run."""
    if _is_gphm_avatar(model_id):
        return (f"### Fitted GPHM avatar `{model_id}`\nA person's Gaussian head avatar fitted with `avatar fit`: pick "
                "it in the **Reenact** tab and give a driving video (no photo needed). Reconstruct and Live need a "
                "one-shot model.")
    if model_id == TINY:
        from avatar.face.mediapipe_face import mediapipe_available

        faces = ("Faces are found and cropped for real by MediaPipe (weights inside the `mediapipe` wheel): the "
                 "aligned crop is a real one and a photo without a face is refused." if mediapipe_available() else
                 "Install the `[face]` extra (mediapipe) to find and crop faces for real; without it the random "
                 "detector sees a face anywhere.")
        return ("### Model `tiny`\nA tiny pipeline with **random weights**, built in memory for development and "
                f"tests: every stage runs, but the rendered pictures are meaningless. {faces}")
    return _model_status(model_id)


PIPELINES = PipelineCache(
    MAX_LOADED_PIPELINES,
    device=lambda: os.environ.get("AVATAR_DEVICE", "auto"),
    dtype=lambda: os.environ.get("AVATAR_DTYPE", "float32"),
    settings_hint="set by AVATAR_DEVICE / AVATAR_DTYPE or --device / --dtype",
    weights_hint="The *Model files* section below lists them. Then restart the app, or pick the tiny random "
                 "pipeline in the Model menu to try the app (its pictures are meaningless).",
)


def runtime_status(selected: str) -> str:
    """One Markdown line per loaded model: which, from where, device and dtype; or what loads on first use."""
    loaded = PIPELINES.loaded()
    lines = [f"**Loaded:** `{name}` from {e.source} · device `{e.device}` · dtype `{e.dtype}`"
             for name, e in loaded.items()]
    if not loaded:
        try:
            dtype = str(PIPELINES.dtype() if selected != TINY else torch.float32).replace("torch.", "")
            lines.append(f"**Model:** `{selected}` loads on first use · device `{PIPELINES.device()}` · dtype "
                         f"`{dtype}`")
        except ModelUnavailableError as exc:
            lines.append(f"**Model:** `{selected}` cannot load here: {exc}")
    if selected == TINY or any(e.pipeline.random_init for e in loaded.values()):
        lines.append("⚠️ **Development mode: tiny random pipeline.** Every stage runs, but the reconstructor's "
                     "weights are random, so the rendered pictures are meaningless.")
    elif missing_files(selected):
        lines.append(f"⚠️ **Weights of `{selected}` are missing** ({len(missing_files(selected))} files; see "
                     "*Model files* below for the list and the command that fetches them). Pick the tiny random "
                     "pipeline in the Model menu to try the app without them.")
    return "\n\n".join(lines)


def run_button(model: str, label: str) -> dict:
    """The update of a tab's run button for the model picked in that tab: disabled, saying why, when the model's
    weights are missing (the status line above says it once; no failed run, no error on every output panel)."""
    if missing_files(model):
        return gr.update(interactive=False, value=f"{label} (weights of {_model_label(model)} missing: see "
                                                  "Model files)")
    return gr.update(interactive=True, value=label)


def pick_model(model: str) -> tuple[str, dict]:
    """A tab's Model menu changed: the status line for that model (the random-weights warning at once when it is
    the tiny pipeline) and its run button."""
    return runtime_status(model), run_button(model, "Reconstruct")


def pick_reenact_model(model: str) -> tuple[str, dict]:
    """As :func:`pick_model`, for the Reenact tab's button."""
    return runtime_status(model), run_button(model, "Reenact")


# ----------------------------------------------------------------------------------------------------------
# helpers: temporary outputs, errors


_OUT_DIR: Path | None = None


def example_photos() -> list[str]:
    """Public-domain example photos, taken from scikit-image's bundled data (``astronaut.png``: Eileen Collins,
    NASA) when it is installed (``[app]`` extra); none are shipped in this repository. Copied into this process's
    temporary folder, where Gradio may serve files from."""
    try:
        import skimage.data
    except ImportError:
        return []
    source = Path(skimage.data.__file__).parent / "astronaut.png"
    if not source.is_file():
        return []
    target = _output_path("astronaut.png")
    shutil.copyfile(source, target)
    return [str(target)]


def _output_path(name: str) -> Path:
    """A fresh file in this process's temporary folder (removed at exit; files older than 2 h are pruned)."""
    global _OUT_DIR
    if _OUT_DIR is None or not _OUT_DIR.is_dir():
        _OUT_DIR = Path(tempfile.mkdtemp(prefix="avatar4d-app-"))
        atexit.register(shutil.rmtree, _OUT_DIR, True)
    now = time.time()
    for old in _OUT_DIR.iterdir():
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > 7200:
                old.unlink()
    fd, path = tempfile.mkstemp(prefix=Path(name).stem + "-", suffix=Path(name).suffix, dir=_OUT_DIR)
    os.close(fd)
    return Path(path)


@contextlib.contextmanager
def _user_errors(*uploads: str | None) -> Iterator[None]:
    """The user's problems (:class:`~avatar.errors.AvatarError`, CUDA out of memory) become ``gr.Error`` with one
    plain sentence, upload paths shortened to their file names; anything else is a bug: logged with its traceback
    and shown as an internal error."""

    def clean(message: str) -> str:
        for path in uploads:
            if path:
                message = message.replace(str(path), Path(path).name)
        return message

    try:
        yield
    except gr.Error:
        raise
    except AvatarError as exc:
        raise gr.Error(clean(str(exc)), print_exception=False) from None
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise gr.Error("The server ran out of GPU memory; try a shorter video or try again in a minute.",
                       print_exception=False) from None
    except Exception as exc:
        logger.exception("internal error (a bug)")
        raise gr.Error(f"Something went wrong on the server ({type(exc).__name__}: {clean(str(exc))}). This is an "
                       "internal error, not a problem with your input: please try again, and if it happens again, "
                       "report it with the input that caused it.") from None


def _need(value: Any, message: str) -> Any:
    if value is None or value == "":
        raise gr.Error(message, print_exception=False)
    return value


def _file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _get_avatar(photo: str, model: str, cache: dict | None,
                progress: gr.Progress) -> tuple[AvatarPipeline, Any, dict, bool]:
    """The session's avatar of ``photo`` for ``model`` (built once, then reused); returns it and the new cache."""
    if _is_gphm_avatar(model):
        raise InputError(f"{Path(model).name} is a fitted GPHM avatar: it is driven by a video in the Reenact tab "
                         "(no photo needed). Reconstruct and Live build an avatar from a photo: pick a one-shot "
                         "model (portrait4d-v2, ...) for them.")
    cache = OrderedDict(cache or {})
    key = f"{model}:{_file_digest(photo)}"
    progress(0.0, desc=f"loading {model}")
    pipe = PIPELINES.get(model)
    if key in cache:
        cache.move_to_end(key)
        return pipe, cache[key], cache, False
    load_image(photo)  # a clear error for unreadable files before any network runs
    progress(0.05, desc="building the avatar")
    avatar = pipe.create_avatar(photo)
    avatar.state = avatar.state.to("cpu")  # kept between calls: CPU memory only
    cache[key] = avatar
    while len(cache) > MAX_AVATARS_PER_SESSION:
        cache.popitem(last=False)
    return pipe, avatar, cache, True


def _write_video(frames: Iterator[np.ndarray], path: Path, fps: Any, total: int, progress: gr.Progress,
                 what: str, audio_from: str | None = None) -> tuple[VideoWriter, float]:
    """Encode frames while reporting frames/s; returns the closed writer and the frame rate achieved."""
    t0 = time.perf_counter()
    with VideoWriter(path, fps, audio_from=audio_from) as writer:
        for frame in frames:
            writer.write(frame)
            n = writer.frames_written
            rate = n / max(time.perf_counter() - t0, 1e-6)
            progress((n, max(total, n)), desc=f"{what}: {rate:.1f} frames/s", unit="frames")
    return writer, writer.frames_written / max(time.perf_counter() - t0, 1e-6)


# ----------------------------------------------------------------------------------------------------------
# the two jobs


@_on_gpu
def reconstruct(photo: str | None, model: str, yaw: float, pitch: float, frames: float, cache: dict | None,
                progress: gr.Progress = gr.Progress()) -> tuple[str, np.ndarray, np.ndarray, str, dict]:  # noqa: B008
    """Photo -> (orbit video, aligned crop, still from yaw/pitch, info, session cache)."""
    photo = _need(photo, "Upload a portrait photo first (JPEG or PNG with one clearly visible face).")
    n = int(frames)
    with _user_errors(photo):
        t0 = time.perf_counter()
        pipe, avatar, cache, built = _get_avatar(photo, model, cache, progress)
        t_avatar = time.perf_counter() - t0
        labels = orbit_labels(n)

        def orbit() -> Iterator[np.ndarray]:
            for i in range(0, n, RENDER_BATCH):
                yield from pipe.render_views(avatar, labels[i:i + RENDER_BATCH], batch_size=RENDER_BATCH)

        path = _output_path("orbit.mp4")
        _, rate = _write_video(orbit(), path, ORBIT_FPS, n, progress, "rendering the orbit")
        still = pipe.render_views(avatar, view_label(yaw, pitch))[0]
    info = (f"Avatar {'built' if built else 'reused from this session'} in {t_avatar:.1f} s · orbit of {n} frames "
            f"rendered at {rate:.1f} frames/s on `{pipe.device}`")
    if pipe.random_init:
        info += " · **tiny random pipeline: the pictures are meaningless**"
    return str(path), avatar.source_crop, still, info, cache


@_on_gpu
def render_view(photo: str | None, model: str, yaw: float, pitch: float, cache: dict | None,
                progress: gr.Progress = gr.Progress()) -> tuple[np.ndarray | None, dict | None]:  # noqa: B008
    """A still of the session's avatar from (yaw, pitch); builds the avatar if this photo has none yet."""
    if not photo:
        return None, cache
    with _user_errors(photo):
        pipe, avatar, cache, _ = _get_avatar(photo, model, cache, progress)
        return pipe.render_views(avatar, view_label(yaw, pitch))[0], cache


@_on_gpu
def reenact(photo: str | None, video: str | None, model: str, motion: str, smooth: bool, side: bool,
            seconds: float, paste_back: bool, cache: dict | None,
            progress: gr.Progress = gr.Progress()) -> tuple[str, str, dict]:  # noqa: B008
    """Photo + driving video -> (reenacted video with the driving audio, info, session cache). ``paste_back``:
    the result composited back into the full photo (:mod:`avatar.pipelines.paste_back`). When ``model`` is a
    fitted GPHM avatar folder the photo is not used (:func:`_reenact_gphm`)."""
    if _is_gphm_avatar(model):
        return _reenact_gphm(video, model, motion, side, seconds, paste_back, cache, progress)
    photo = _need(photo, "Upload a portrait photo first (JPEG or PNG with one clearly visible face).")
    video = _need(video, "Upload or record a driving video first (MP4, MOV, MKV or WebM).")
    with _user_errors(photo, video):
        load_image(photo)
        info = probe_video(video)
        if info.duration > MAX_VIDEO_SECONDS + 0.05:
            raise InputError(f"The driving video is {info.duration:.1f} s long; this app takes videos of at most "
                             f"{MAX_VIDEO_SECONDS:.0f} s. Trim it first, or run `avatar reenact` on your own "
                             "machine, which has no limit.")
        use_seconds = min(float(seconds), MAX_VIDEO_SECONDS)
        max_frames = max(1, math.ceil(use_seconds * float(info.fps)))
        total = min(len(VideoReader(video, max_frames=max_frames)), max_frames) or max_frames
        if paste_back and side:
            raise InputError("Pick either side by side or paste-back: the pasted result has the photo's size.")
        pipe, avatar, cache, built = _get_avatar(photo, model, cache, progress)
        paste = None
        if paste_back:
            from avatar.pipelines.paste_back import PasteBack

            paste = PasteBack(load_image(photo), avatar.align)
        with pipe.iter_reenact(avatar, video, relative=motion != "absolute", smooth=bool(smooth),
                               batch_size=RENDER_BATCH, max_frames=max_frames) as stream:
            images = (paste(f.image) if paste is not None else
                      side_by_side(avatar.source_crop, f.image, f.driving) if side else f.image for f in stream)
            path = _output_path("reenacted.mp4")
            writer, rate = _write_video(images, path, info.fps, total, progress, "reenacting", audio_from=video)
    missing = len(stream.frames_without_face)  # this job's own count: concurrent jobs share the pipeline
    audio = {"copy": "driving audio kept", "aac": "driving audio kept (re-encoded to AAC)", None: "no audio"}[
        writer.audio_mode]
    text = (f"{writer.frames_written} frames at {float(info.fps):.2f} fps ({audio}) · {rate:.1f} frames/s on "
            f"`{pipe.device}` · avatar {'built' if built else 'reused from this session'}")
    if info.duration and info.duration > use_seconds + 0.05:
        text += f" · used the first {use_seconds:.1f} s of {info.duration:.1f} s"
    if missing:
        text += f" · {missing} frames without a face held the last motion"
    if pipe.random_init:
        text += " · **tiny random pipeline: the pictures are meaningless**"
    return str(path), text, cache


def _reenact_gphm(video: str | None, avatar_dir: str, motion: str, side: bool, seconds: float, paste_back: bool,
                  cache: dict | None, progress: Any) -> tuple[str, str, dict | None]:
    """The Reenact tab with a fitted GPHM avatar folder as the model: the driving video's face mesh and head pose
    drive it (:func:`avatar.fitting.reenact.reenact_video`), with the driving audio."""
    from avatar.fitting.reenact import reenact_video

    video = _need(video, "Upload or record a driving video first (MP4, MOV, MKV or WebM).")
    with _user_errors(video):
        if side or paste_back:
            raise InputError("Side by side and paste-back show the photo: a fitted GPHM avatar has none; untick them.")
        info = probe_video(video)
        if info.duration > MAX_VIDEO_SECONDS + 0.05:
            raise InputError(f"The driving video is {info.duration:.1f} s long; this app takes videos of at most "
                             f"{MAX_VIDEO_SECONDS:.0f} s. Trim it first, or run `avatar reenact` on your own "
                             "machine, which has no limit.")
        use_seconds = min(float(seconds), MAX_VIDEO_SECONDS)
        max_frames = max(1, math.ceil(use_seconds * float(info.fps)))
        progress(0.0, desc="reading the driving face (MediaPipe) and rendering")
        path = _output_path("reenacted.mp4")
        result = reenact_video(avatar_dir, video, path, relative=motion != "absolute", batch_size=RENDER_BATCH,
                               device=PIPELINES.device(), max_frames=max_frames, progress=False)
    audio = {"copy": "driving audio kept", "aac": "driving audio kept (re-encoded to AAC)", None: "no audio"}[
        result.audio_mode]
    text = (f"{result.frames} frames at {float(result.fps):.2f} fps ({audio}) · rendered at {result.render_fps:.1f} "
            f"frames/s on `{result.device}` (face mesh: {result.signal_seconds:.1f} s) · fitted GPHM avatar "
            f"`{Path(avatar_dir).name}`")
    if info.duration and info.duration > use_seconds + 0.05:
        text += f" · used the first {use_seconds:.1f} s of {info.duration:.1f} s"
    if result.frames_without_face:
        text += f" · {len(result.frames_without_face)} frames without a face held the last motion"
    return str(path), text, cache


# ----------------------------------------------------------------------------------------------------------
# the page


# ----------------------------------------------------------------------------------------------------------
# live: the webcam drives the avatar


LIVE_STREAM_EVERY = _env_float("AVATAR_LIVE_STREAM_EVERY", 0.04)  # seconds between webcam frames sent (25/s)
LIVE_TIME_LIMIT = _env_float("AVATAR_LIVE_TIME_LIMIT", 300.0)  # seconds one live stream may last
_LIVE: dict[str, tuple[str, Any]] = {}  # browser session -> (model:photo key, its LiveReenactor)
_LIVE_LOCK = threading.Lock()


def _no_progress(*args: Any, **kwargs: Any) -> None:
    """A stand-in for ``gr.Progress`` in streaming events (they show no progress bar)."""


def live_step(frame: np.ndarray | None, photo: str | None, model: str, cache: dict | None,
              request: gr.Request | None = None) -> tuple[Any, str, dict | None]:
    """One webcam frame -> (avatar frame, status line, session cache). The session's :class:`LiveReenactor` is
    kept between frames (same photo and model) and starts with a one-second "hold still" calibration."""
    from avatar.pipelines.live import LiveReenactor

    if frame is None:
        return gr.skip(), gr.skip(), cache
    if not photo:
        return None, "Upload a portrait photo above first; the webcam then drives its avatar.", cache
    session = getattr(request, "session_hash", None) or "local"
    key = f"{model}:{photo}"  # an upload is a new temporary path: the avatar is looked up once per photo, not per frame
    with _user_errors(photo):
        with _LIVE_LOCK:
            current = _LIVE.get(session)
        if current is None or current[0] != key:
            pipe, avatar, cache, _ = _get_avatar(photo, model, cache, _no_progress)
            with _LIVE_LOCK:
                if session in _LIVE:
                    _LIVE[session][1].close()
                current = _LIVE[session] = (key, LiveReenactor(pipe, avatar))
        pipe = current[1].pipeline
        out = current[1].step(np.ascontiguousarray(frame[..., :3]).astype(np.uint8, copy=False))
    parts = [f"{out.fps:.1f} frames/s · {out.latency_ms:.0f} ms per frame on `{pipe.device}`"]
    if out.calibrating and not out.face_found:
        parts.append("**no face yet: look at the camera** (the one-second calibration starts with a face)")
    elif out.calibrating:
        parts.append("**hold still and look at the camera** (calibrating the neutral pose)")
    elif not out.face_found:
        parts.append("no face in this frame: holding the last motion")
    if torch.device(pipe.device).type == "cpu":
        parts.append("live mode needs a GPU to keep up; on this CPU it runs at whatever rate it gets")
    if pipe.random_init:
        parts.append("**tiny random pipeline: the pictures are meaningless**")
    return out.image, " · ".join(parts), cache


def live_recalibrate(request: gr.Request | None = None) -> str:
    """Start a new neutral-pose calibration for this session's live stream."""
    with _LIVE_LOCK:
        current = _LIVE.get(getattr(request, "session_hash", None) or "local")
    if current is None:
        return "Start the webcam first."
    current[1].recalibrate()
    return "Calibrating: hold still and look at the camera for a second."


def live_end(request: gr.Request | None = None) -> None:
    """The browser session ended: drop its live reenactor."""
    with _LIVE_LOCK:
        current = _LIVE.pop(getattr(request, "session_hash", None) or "local", None)
    if current is not None:
        current[1].close()


def photo_input(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` (file path) that hands an unreadable upload to the app, which explains what is wrong with
    it, instead of failing inside Gradio's preprocessing with a bare exception. (An instance-level wrapper: a
    subclass would make Gradio write a ``.pyi`` file next to this one.)"""
    image = gr.Image(type="filepath", **kwargs)
    gradio_preprocess = image.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return gradio_preprocess(payload)
        except Exception:  # noqa: BLE001 - the app reads the file and says what is wrong with it
            path = getattr(payload, "path", None)
            if not path:
                raise
            return str(path)

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


INTRO = """# avatar4d — one-shot 4D head avatars
Upload **one portrait photo**: the app builds an animatable 3D head from it (Portrait4D / Portrait4D-v2).
**Reconstruct** turns the camera around that head; **Reenact** makes it copy the expressions, head motion and
sound of a driving video (upload one, or record yourself with the webcam). The photo works best with one
clearly visible, roughly frontal face; the app finds it and crops it the way the model was trained."""


def _button_kwargs(update: dict) -> dict:
    """A ``gr.update`` of a button as constructor arguments (the initial state equals a later update)."""
    return {k: v for k, v in update.items() if k in ("value", "interactive")}


def build_demo(model_id: str | None = None) -> gr.Blocks:
    """Build the app's Blocks for ``model_id`` (default: ``$AVATAR_MODEL`` or ``portrait4d-v2``)."""
    selected = model_id or os.environ.get("AVATAR_MODEL") or DEFAULT_MODEL_ID
    examples = example_photos()
    reenact_default = selected if selected not in ("portrait4d-static",) else DEFAULT_MODEL_ID
    with gr.Blocks(title="avatar4d: one-shot 4D head avatars", delete_cache=(3600, 7200)) as demo:
        avatars = gr.State({})  # this session's avatars: {model:photo-digest -> avatar}
        gr.Markdown(INTRO)
        status = gr.Markdown(runtime_status(selected), elem_id="model-status")

        with gr.Tab("Reconstruct", id="reconstruct"), gr.Row():
            with gr.Column(scale=1):
                photo = photo_input(label="Portrait photo", sources=["upload", "webcam",
                                   "clipboard"], height=320, elem_id="photo")
                rec_model = gr.Dropdown(model_choices(selected, static=True), value=selected, label="Model")
                orbit_frames = gr.Slider(8, 120, value=48, step=1, label="Frames in the orbit video",
                                         elem_id="orbit-frames")
                rec_button = gr.Button(variant="primary", elem_id="reconstruct-button",
                                       **_button_kwargs(run_button(selected, "Reconstruct")))
                if examples:
                    gr.Examples(examples, inputs=photo, label="Public-domain example photos")
            with gr.Column(scale=2):
                with gr.Row():
                    orbit = gr.Video(label="Orbit around the 3D avatar", autoplay=True, loop=True,
                                     elem_id="orbit-video", format=None, height=300)
                    crop = gr.Image(label="Aligned crop (what the model sees)", type="numpy",
                                    interactive=False, elem_id="crop", height=300)
                with gr.Row():
                    with gr.Column():
                        yaw = gr.Slider(-60, 60, value=0, step=1, label="Yaw (degrees; + from the person's right)",
                                        elem_id="yaw")
                        pitch = gr.Slider(-30, 30, value=0, step=1, label="Pitch (degrees; + from above)",
                                          elem_id="pitch")
                    still = gr.Image(label="Still from this view", type="numpy", interactive=False,
                                     elem_id="still", height=300)
                rec_info = gr.Markdown(elem_id="reconstruct-info")

        with gr.Tab("Reenact", id="reenact"), gr.Row():
            with gr.Column(scale=1):
                re_photo = photo_input(label="Portrait photo",
                                      sources=["upload", "webcam", "clipboard"], height=260, elem_id="re-photo")
                driving = gr.Video(label="Driving video (upload, or record with the webcam)",
                                   sources=["upload", "webcam"], format=None, include_audio=True,
                                   elem_id="driving")
                re_model = gr.Dropdown(model_choices(reenact_default, static=False), value=reenact_default,
                                       label="Model")
                motion = gr.Radio(["relative", "absolute"], value="relative", label="Motion",
                                  info="relative: the driving changes are applied to the photo's own expression "
                                       "and pose; absolute: they are copied as they are")
                with gr.Row():
                    smooth = gr.Checkbox(True, label="Smooth (less jitter)")
                    side = gr.Checkbox(False, label="Side by side (photo | result | driving)")
                    paste = gr.Checkbox(False, label="Paste back into the full photo")
                seconds = gr.Slider(0.2, MAX_VIDEO_SECONDS, value=min(10.0, MAX_VIDEO_SECONDS), step=0.1,
                                    label="Use the first … seconds of the driving video",
                                    elem_id="seconds")
                re_button = gr.Button(variant="primary", elem_id="reenact-button",
                                      **_button_kwargs(run_button(reenact_default, "Reenact")))
                if examples:
                    gr.Examples(examples, inputs=re_photo, label="Public-domain example photos")
            with gr.Column(scale=2):
                result = gr.Video(label="Reenacted video", autoplay=True, format=None, elem_id="reenacted",
                                  height=480)
                re_info = gr.Markdown(elem_id="reenact-info")

        with gr.Tab("Live", id="live"), gr.Row():
            with gr.Column(scale=1):
                live_photo = photo_input(label="Portrait photo", sources=["upload", "clipboard"], height=220,
                                         elem_id="live-photo")
                live_model = gr.Dropdown(model_choices(reenact_default, static=False), value=reenact_default,
                                         label="Model")
                webcam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam",
                                  elem_id="webcam", height=260)
                recalibrate = gr.Button("Recalibrate (hold still)", variant="secondary")
            with gr.Column(scale=2):
                live_out = gr.Image(label="The avatar, live", type="numpy", interactive=False, elem_id="live-out",
                                    height=480, streaming=True)
                live_info = gr.Markdown("Start the webcam: the avatar follows your face in real time after a "
                                        "one-second calibration (hold still, look at the camera). It needs a GPU "
                                        "to keep up.", elem_id="live-info")

        with gr.Accordion("Model files", open=bool(missing_files(selected))):
            with gr.Row():
                pipeline_ids = pipeline_model_ids()
                shown = selected if selected in pipeline_ids else DEFAULT_MODEL_ID
                model = gr.Dropdown(choices=[*pipeline_ids, TINY], value=shown, label="Model")
                refresh = gr.Button("Check model files", variant="secondary")
            files = gr.Markdown(model_status(shown),
                                elem_id="model-files")
        gr.Markdown(
            f"Limits: uploads up to {MAX_UPLOAD_MB} MB, driving videos up to {MAX_VIDEO_SECONDS:.0f} s; "
            f"{CONCURRENCY} job{'s' if CONCURRENCY > 1 else ''} at a time, the others wait in the queue. "
            "Photos and videos are used only for your request and kept in temporary folders. "
            "Scripts: `gradio_client.Client(url).predict(handle_file('photo.jpg'), api_name='/reconstruct')`."
        )

        def refresh_status() -> str:
            return runtime_status(selected)

        rec_button.click(reconstruct, inputs=[photo, rec_model, yaw, pitch, orbit_frames, avatars],
                         outputs=[orbit, crop, still, rec_info, avatars], api_name="reconstruct",
                         concurrency_id="gpu").then(runtime_status, inputs=rec_model, outputs=status, api_name=False)
        for slider in (yaw, pitch):
            # `input` fires on a drag and on a value typed into the slider's box (`release` only on a drag);
            # always_last: while one still renders, only the latest of the values that arrived meanwhile follows
            slider.input(render_view, inputs=[photo, rec_model, yaw, pitch, avatars], outputs=[still, avatars],
                         api_name="view" if slider is yaw else False, concurrency_id="gpu",
                         show_progress="minimal", trigger_mode="always_last")
        rec_model.change(pick_model, inputs=rec_model, outputs=[status, rec_button], api_name=False, queue=False)
        re_model.change(pick_reenact_model, inputs=re_model, outputs=[status, re_button], api_name=False,
                        queue=False)
        re_button.click(reenact, inputs=[re_photo, driving, re_model, motion, smooth, side, seconds, paste, avatars],
                        outputs=[result, re_info, avatars], api_name="reenact",
                        concurrency_id="gpu").then(runtime_status, inputs=re_model, outputs=status, api_name=False)
        photo.change(lambda p: (p, p), inputs=photo, outputs=[re_photo, live_photo], api_name=False, queue=False)
        webcam.stream(live_step, inputs=[webcam, live_photo, live_model, avatars],
                      outputs=[live_out, live_info, avatars], stream_every=LIVE_STREAM_EVERY,
                      time_limit=LIVE_TIME_LIMIT, concurrency_id="gpu", api_name="live", show_progress="hidden")
        recalibrate.click(live_recalibrate, outputs=live_info, api_name=False, queue=False)
        live_model.change(runtime_status, inputs=live_model, outputs=status, api_name=False, queue=False)
        demo.unload(live_end)
        refresh.click(model_status, inputs=model, outputs=files, api_name="status")
        model.change(model_status, inputs=model, outputs=files, api_name=False)
        demo.load(refresh_status, outputs=status, api_name=False)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return demo


def launch(app: gr.Blocks, **kwargs: Any) -> Any:
    """Launch ``app`` with the upload limit (keyword arguments go to ``gr.Blocks.launch``)."""
    kwargs.setdefault("max_file_size", f"{MAX_UPLOAD_MB}mb")
    kwargs.setdefault("show_error", True)
    return app.launch(**kwargs)


def fetch_missing_weights(model: str, out: Any = None) -> bool:
    """``--download`` (what ``make demo`` passes): print the licences of the files ``model`` still needs, then
    fetch, verify and convert them (Hugging Face's progress bars show each download). Returns whether every file
    is in the cache afterwards. Offline, or when a file cannot be fetched, it says so in one warning and returns
    ``False``: the app then starts as it does without weights (status line, *Model files*, the tiny pipeline)."""
    from avatar.errors import AssetNotFoundError
    from avatar.hub.download import download_model
    from avatar.hub.download import is_offline as hub_offline

    out = out or sys.stderr
    missing = _missing_files(model)
    if not missing:
        return True
    if hub_offline():
        logger.warning("%s: %d files are not in the cache and offline mode is on (HF_HUB_OFFLINE / AVATAR_OFFLINE); "
                       "starting without them", model, len(missing))
        return False
    known = [f.size for f in missing if f.size]
    size = (f", {sum(known) / 1e6:.0f} MB for the {len(known)} of known size" if known else "")
    print(f"{model} needs {len(missing)} files not in the cache{size}. Their licences:", file=out)
    for licence in dict.fromkeys(f.licence for f in missing):
        paths = ", ".join(Path(f.path).name for f in missing if f.licence == licence)
        print(f"  - {licence}\n    ({paths})", file=out)
    print("Downloading them implies accepting those terms. Ctrl-C stops here; the app is not started then.",
          file=out, flush=True)
    try:
        download_model(model, on_file=lambda file, status: logger.info("%-8s %s", status, file.path))
    except (AssetNotFoundError, OSError) as exc:  # no network, a file that cannot be fetched
        logger.warning("could not download the weights of %s (%s); starting without them", model,
                       str(exc).splitlines()[0])
        return False
    return not _missing_files(model)


def build_parser() -> argparse.ArgumentParser:
    from avatar.cli import PORT, ArgumentParser

    parser = ArgumentParser(prog="avatar app", description="Start the avatar4d Gradio app on localhost.")
    parser.add_argument("--model", default=None,
                        help=f"model id, pipeline folder or 'tiny' (default $AVATAR_MODEL or {DEFAULT_MODEL_ID})")
    parser.add_argument("--port", type=PORT, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--device", default=None, help="auto (default, $AVATAR_DEVICE), cpu, cuda, ...")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES),
                        help="precision of the reconstructor (default float32, $AVATAR_DTYPE)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    parser.add_argument("--download", action="store_true",
                        help="before starting, fetch the model's missing files (after printing their licences); "
                             "offline or on failure the app starts without them (what `make demo` does)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


def main(argv: Sequence[str] | None = None, *, demo: gr.Blocks | None = None) -> int:
    """``avatar app [options]``: build the app (or launch ``demo`` when given and no --model) and serve it until
    interrupted. Returns the exit status (see :mod:`avatar.cli`)."""
    from avatar.cli import run_guarded
    from avatar.logs import setup_logging

    args = build_parser().parse_args(argv)
    verbosity = -1 if args.quiet else args.verbose
    setup_logging(verbosity)

    def serve() -> None:
        if args.device:
            os.environ["AVATAR_DEVICE"] = args.device
        if args.dtype:
            os.environ["AVATAR_DTYPE"] = args.dtype
        if args.download:
            fetch_missing_weights(args.model or os.environ.get("AVATAR_MODEL") or DEFAULT_MODEL_ID)
        app = demo if demo is not None and not args.model else build_demo(args.model)
        logger.info("starting on http://%s:%d", args.host, args.port)
        try:
            launch(app, server_name=args.host, server_port=args.port, share=args.share)
        except OSError as exc:  # port taken, host not an address of this machine
            raise InputError(f"cannot serve the app on {args.host}:{args.port}; pick another --port or --host "
                             f"({exc})") from None

    return run_guarded(serve, verbosity=verbosity, log=logger, command="app")


if __name__ == "__main__":
    sys.exit(main())
