"""The app (:mod:`avatar.app`; ``app.py`` is the Space's launcher) builds without launching, starts on localhost,
is honest about missing weights, and - with the tiny random pipeline - reconstructs and reenacts real photos and
videos through its named API endpoints. The user's errors are one sentence; anything else is an internal error."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from avatar.io import VideoReader, probe_video  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_import_builds_demo_without_launching() -> None:
    import app  # the root launcher (Hugging Face Space): a module-level demo, not launched

    assert isinstance(app.demo, gr.Blocks)
    assert not getattr(app.demo, "is_running", False)
    names = {d.get("api_name") for d in app.demo.config["dependencies"]}
    assert {"reconstruct", "reenact", "status"} <= names


def test_the_package_app_builds_nothing_on_import_and_lists_pipeline_ids_only() -> None:
    import avatar.app as app
    from avatar.hub.registry import MODELS, pipeline_model_ids

    assert not hasattr(app, "demo")
    demo = app.build_demo("portrait4d-v2")
    dropdowns = [c for c in demo.config["components"] if c.get("props", {}).get("label") == "Model"]
    files_menu = dropdowns[-1]["props"]["choices"]  # the "Model files" menu
    values = [c[1] if isinstance(c, list | tuple) else c for c in files_menu]
    assert values == [*pipeline_model_ids(), app.TINY]
    assert set(MODELS) - set(values)  # the registry's network ids are not offered as models


def test_status_names_missing_files_and_the_command() -> None:
    import avatar.app as app

    text = app.model_status("portrait4d-v2")
    assert "Weights missing" in text and "portrait4d-v2-vfhq512.pkl" in text
    assert "avatar download portrait4d-v2" in text
    assert "Unknown model" in app.model_status("nope")
    assert "random weights" in app.model_status(app.TINY)


def test_status_line_labels_the_tiny_pipeline_and_missing_weights() -> None:
    import avatar.app as app

    assert "Development mode: tiny random pipeline" in app.runtime_status(app.TINY)
    line = app.runtime_status("portrait4d-v2")
    assert "Weights of `portrait4d-v2` are missing" in line and "device" in line and "dtype" in line


def test_a_model_without_weights_disables_its_button_and_says_why_once() -> None:
    import avatar.app as app
    from avatar.pipelines.cache import ModelUnavailableError, PipelineCache

    off = app.run_button("portrait4d-v2", "Reconstruct")
    assert off["interactive"] is False and "weights of Portrait4D-v2 missing: see Model files" in off["value"]
    on = app.run_button(app.TINY, "Reenact")
    assert on["interactive"] is True and on["value"] == "Reenact"
    # picking the tiny pipeline in a tab shows the random-weights warning at once, before any run
    status, button = app.pick_model(app.TINY)
    assert "Development mode: tiny random pipeline" in status and button["interactive"] is True
    status, button = app.pick_reenact_model("portrait4d-v1")
    assert "Weights of `portrait4d-v1` are missing" in status and button["interactive"] is False
    # the error (API callers still get one) gives the count and where the list is, never a list of 17 paths
    with pytest.raises(ModelUnavailableError) as info:
        PipelineCache(device="cpu").get("portrait4d-v2")
    message = str(info.value)
    n = len(app.missing_files("portrait4d-v2"))
    assert f"({n} files missing)" in message and "avatar models --files" in message
    assert ".pkl" not in message and message.count(",") <= 1


def test_download_before_start_prints_the_licences_then_fetches(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    import io

    import avatar.app as app
    import avatar.hub.download as download

    out = io.StringIO()
    with caplog.at_level("WARNING", logger="avatar.app"):  # offline (the tests' setting): today's behaviour
        assert app.fetch_missing_weights("portrait4d-v2", out) is False
    assert "offline mode is on" in caplog.text and "starting without them" in caplog.text and not out.getvalue()
    assert app.fetch_missing_weights(app.TINY, out) is True  # nothing to fetch

    calls = []
    monkeypatch.setattr(download, "is_offline", lambda: False)
    monkeypatch.setattr(download, "download_model", lambda model, **kw: calls.append(model))
    assert app.fetch_missing_weights("portrait4d-v2", out) is False  # the fake fetched nothing
    text = out.getvalue()
    assert calls == ["portrait4d-v2"]
    assert "files not in the cache" in text and "FLAME model licence" in text and "accepting those terms" in text

    def no_network(model: str, **kw: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(download, "download_model", no_network)
    caplog.clear()
    with caplog.at_level("WARNING", logger="avatar.app"):
        assert app.fetch_missing_weights("portrait4d-v2", io.StringIO()) is False
    assert "could not download the weights of portrait4d-v2 (Name or service not known)" in caplog.text


def test_view_label_frontal_is_the_inference_camera() -> None:
    import torch

    from avatar.render.camera import inference_label, view_label

    assert torch.allclose(view_label(0, 0), inference_label(1), atol=1e-2)
    right = view_label(30, 0)[0, :16].reshape(4, 4)
    above = view_label(0, 20)[0, :16].reshape(4, 4)
    assert right[0, 3] < -1.0 and abs(float(right[1, 3])) < 1e-4  # to the person's right (-x), at eye level
    assert above[1, 3] > 0.5  # above the head


def test_pipeline_errors_become_one_plain_sentence(caplog: pytest.LogCaptureFixture) -> None:
    import avatar.app as app
    from avatar.errors import AssetNotFoundError
    from avatar.io import NoFaceError

    upload = "/tmp/gradio/0123abcd/beach.jpg"
    with pytest.raises(gr.Error, match=r"no face found in beach\.jpg; use a photo"), app._user_errors(upload):
        raise NoFaceError(f"no face found in {upload}; use a photo with one clearly visible, roughly frontal face")
    with pytest.raises(gr.Error, match=r"portrait4d-v2\.pkl is not in the cache"), app._user_errors():
        raise AssetNotFoundError("portrait4d-v2.pkl is not in the cache")  # any AvatarError is the user's message
    assert not caplog.records  # the user's errors are not logged as failures
    # anything else is a bug: an internal error on the page, logged with its traceback
    with pytest.raises(gr.Error, match=r"Something went wrong on the server \(ZeroDivisionError.*internal error"), \
            app._user_errors():
        raise ZeroDivisionError("division by zero")
    assert caplog.records[-1].levelname == "ERROR" and caplog.records[-1].exc_info is not None
    with pytest.raises(gr.Error, match=r"internal error"), app._user_errors():  # not AvatarError: not the user's
        raise ValueError("cameras must be (N, 25) labels")


def test_model_unavailable_is_an_avatar_error_and_still_a_runtime_error() -> None:
    from avatar.errors import AvatarError
    from avatar.pipelines.cache import ModelUnavailableError, PipelineCache

    assert issubclass(ModelUnavailableError, AvatarError) and issubclass(ModelUnavailableError, RuntimeError)
    cache = PipelineCache(dtype="float8", settings_hint="set by AVATAR_DTYPE")
    with pytest.raises(ModelUnavailableError, match=r"float8.*\(set by AVATAR_DTYPE\)"):
        cache.get("portrait4d-v2")
    with pytest.raises(ModelUnavailableError, match=r"weights of portrait4d-v2 are not available.*avatar download"):
        PipelineCache(device="cpu").get("portrait4d-v2")  # an empty cache, offline


def test_launched_app_answers_on_localhost() -> None:
    import avatar.app as app

    demo = app.build_demo("portrait4d-static")
    port = _free_port()
    app.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            assert "avatar4d" in response.read().decode("utf-8", "replace")
        client = Client(url, verbose=False)
        text = client.predict("portrait4d-static", api_name="/status")
        assert "portrait4d-static-genhead512.pkl" in text and "Weights missing" in text
    finally:
        demo.close()


# ----------------------------------------------------------------------------------------------------------
# the tiny random pipeline behind the real endpoints


@pytest.fixture(scope="module")
def tiny_url() -> Iterator[str]:
    import avatar.app as app

    demo = app.build_demo(app.TINY)
    port = _free_port()
    app.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture
def photo(shared_media: Path) -> str:
    return str(shared_media / "portraits" / "wild" / "public_domain" / "obama.jpg")


@pytest.mark.media
@pytest.mark.slow
def test_reconstruct_and_reenact_return_playable_videos(tiny_url: str, photo: str, shared_media: Path) -> None:
    client = Client(tiny_url, verbose=False)
    orbit, crop, still, info = client.predict(handle_file(photo), frames=8, yaw=20, api_name="/reconstruct")
    assert probe_video(orbit).num_frames == 8
    frames = list(VideoReader(orbit))
    assert len(frames) == 8 and frames[0].dtype == np.uint8
    from PIL import Image

    assert Image.open(crop).size == (512, 512) and Image.open(still).size[0] > 0
    assert "Avatar built" in info and "tiny random pipeline" in info
    side_view = client.predict(handle_file(photo), yaw=-30, pitch=10, api_name="/view")  # same avatar, new camera
    assert Image.open(side_view).size == Image.open(still).size

    driving = shared_media / "videos" / "talk2.mp4"  # 25 fps, AAC audio
    video, text = client.predict(handle_file(photo), handle_file(str(driving)), seconds=0.2, side=True,
                                 api_name="/reenact")
    got = probe_video(video)
    assert got.num_frames == 5 and got.fps == 25 and got.has_audio
    assert got.width == 3 * got.height  # photo | result | driving
    assert "avatar reused from this session" in text and "driving audio kept" in text
    pasted, _ = client.predict(handle_file(photo), handle_file(str(driving)), seconds=0.2, paste_back=True,
                               api_name="/reenact")
    with Image.open(photo) as im:
        w, h = im.size
    assert (probe_video(pasted).width, probe_video(pasted).height) == (w + w % 2, h + h % 2)  # the photo's size

    again = Client(tiny_url, verbose=False)  # another session builds its own avatar
    *_, info2 = again.predict(handle_file(photo), frames=8, api_name="/reconstruct")
    assert "Avatar built" in info2


@pytest.mark.media
def test_bad_inputs_explain_themselves_and_the_app_keeps_working(
        tiny_url: str, photo: str, shared_media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import avatar.app as app

    client = Client(tiny_url, verbose=False)
    assert client.config["max_file_size"] == app.MAX_UPLOAD_MB * 1024 * 1024  # uploads are limited
    corrupt = tmp_path / "holiday.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG " * 20)
    with pytest.raises(AppError, match=r"holiday\.jpg (is not an image|cannot be decoded)"):
        client.predict(handle_file(str(corrupt)), frames=8, api_name="/reconstruct")

    not_video = tmp_path / "clip.mp4"
    not_video.write_bytes(b"\x00\x01 not a video " * 50)
    with pytest.raises(AppError, match=r"clip\.mp4 cannot be opened as a video"):
        client.predict(handle_file(photo), handle_file(str(not_video)), seconds=0.2, api_name="/reenact")

    monkeypatch.setattr(app, "MAX_VIDEO_SECONDS", 4.0)
    with pytest.raises(AppError, match=r"11\.8 s long; this app takes videos of at most 4 s"):
        client.predict(handle_file(photo), handle_file(str(shared_media / "videos" / "drive_d3.mp4")),
                       seconds=0.2, api_name="/reenact")

    with pytest.raises(AppError, match=r"weights of portrait4d-v2 are not available.*avatar download portrait4d-v2"):
        client.predict(handle_file(photo), model="portrait4d-v2", frames=8, api_name="/reconstruct")

    orbit, *_ = client.predict(handle_file(photo), frames=8, api_name="/reconstruct")  # the next good call works
    assert probe_video(orbit).num_frames == 8


def test_example_photo_comes_from_scikit_image_not_the_repository() -> None:
    import tempfile

    pytest.importorskip("skimage.data")
    import avatar.app as app

    photos = app.example_photos()
    assert len(photos) == 1 and Path(photos[0]).is_file()
    assert Path(photos[0]).resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())
    assert not (Path(app.__file__).parents[1] / "examples").exists()  # no media in the repository


@pytest.mark.media
def test_live_step_answers_every_webcam_frame_of_a_recorded_video(photo: str, shared_media: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import avatar.app as app
    from avatar.io import VideoReader

    monkeypatch.setenv("AVATAR_DEVICE", "cpu")
    request = SimpleNamespace(session_hash="live-test")
    frames = list(VideoReader(shared_media / "videos" / "talk1.mp4", max_frames=6))
    image, info, cache = app.live_step(frames[0], None, app.TINY, {}, request)
    assert image is None and "Upload a portrait photo" in info
    answers = []
    for frame in frames:  # the recorded video played as the webcam stream, one frame per call
        image, info, cache = app.live_step(frame, photo, app.TINY, cache, request)
        answers.append((image, info))
    assert len(answers) == len(frames) and all(img.dtype == np.uint8 and img.ndim == 3 for img, _ in answers)
    assert "hold still" in answers[0][1] and "ms per frame on `cpu`" in answers[-1][1]
    assert "live mode needs a GPU" in answers[-1][1] and "tiny random pipeline" in answers[-1][1]
    assert app._LIVE["live-test"][1]._index == len(frames)  # one session reenactor, every frame counted
    assert "Calibrating" in app.live_recalibrate(request)
    assert not app._LIVE["live-test"][1].calibrated
    app.live_end(request)
    assert "live-test" not in app._LIVE and "Start the webcam" in app.live_recalibrate(request)
