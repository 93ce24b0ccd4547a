"""A real browser (Debian's headless Chromium driven by Playwright) opens the app started with
``python app.py --model tiny``, uploads a photo, clicks Reconstruct and sees the orbit video; it saves a
screenshot (under the test's tmp dir, and copied to ``$AVATAR_SCREENSHOT_DIR`` when that is set)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("AVATAR_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
REPO = Path(__file__).resolve().parents[1]
SKIMAGE = pytest.importorskip("skimage.data")
PHOTO = Path(SKIMAGE.__file__).parent / "astronaut.png"  # public domain (NASA), bundled with scikit-image
DRIVING = Path(os.environ.get("AVATAR_SHARED_MEDIA", REPO.parent / "shared" / "media")) / "videos" / "talk2.mp4"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent (Debian: apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    """``python app.py --model tiny`` in a subprocess on a free port; stopped (by its pid) at the end."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AVATAR_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "AVATAR_DEVICE": "cpu"}
    log = (tmp_path / "app.log").open("w")
    proc = subprocess.Popen([sys.executable, "app.py", "--model", "tiny", "--port", str(port)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the app did not start: {(tmp_path / 'app.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def test_browser_uploads_a_photo_and_sees_the_orbit_video(app_url: str, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    shot = tmp_path / "app-reconstruct.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(60_000)
            page.goto(app_url, wait_until="domcontentloaded")
            page.get_by_text("Development mode: tiny random pipeline").first.wait_for()

            page.locator("#photo input[type=file]").set_input_files(str(PHOTO))
            page.locator("#photo img").first.wait_for()  # the upload is shown
            frames = page.locator("#orbit-frames input[type=number]")
            frames.fill("8")
            frames.press("Enter")
            page.locator("#reconstruct-button").click()

            video = page.locator("#orbit-video video")
            video.wait_for(timeout=120_000)
            page.wait_for_function(
                "() => { const v = document.querySelector('#orbit-video video');"
                " return v && v.src && v.readyState >= 1 && v.duration > 0; }", timeout=60_000)
            duration = page.evaluate("() => document.querySelector('#orbit-video video').duration")
            page.locator("#crop img").first.wait_for()
            page.locator("#still img").first.wait_for()
            info = page.locator("#reconstruct-info").inner_text()
            # a value typed into the yaw box (not only a slider drag) re-renders the still
            before = page.locator("#still img").first.get_attribute("src")
            yaw = page.locator("#yaw input[type=number]")
            yaw.fill("40")
            yaw.press("Enter")
            page.wait_for_function(
                "(old) => { const i = document.querySelector('#still img'); return i && i.src && i.src !== old; }",
                arg=before, timeout=60_000)
            page.wait_for_timeout(500)  # let the first frame paint
            page.screenshot(path=str(shot), full_page=True)

            page.get_by_role("tab", name="Reenact").click()
            page.locator("#re-photo img").first.wait_for()  # the photo came along from the first tab
            if DRIVING.is_file():  # real media only when ../shared/media is there
                page.locator("#driving input[type=file]").set_input_files(str(DRIVING))
                page.locator("#driving video").first.wait_for()
                secs = page.locator("#seconds input[type=number]")
                secs.fill("0.2")
                secs.press("Enter")
                page.locator("#reenact-button").click()
                page.wait_for_function(
                    "() => { const v = document.querySelector('#reenacted video');"
                    " return v && v.src && v.readyState >= 1 && v.duration > 0; }", timeout=120_000)
                reenact_info = page.locator("#reenact-info").inner_text()
                assert "5 frames at 25.00 fps" in reenact_info and "avatar reused" in reenact_info
                page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "app-reenact.png"), full_page=True)
        finally:
            browser.close()
    assert abs(duration - 8 / 25) < 0.05  # 8 frames at 25 fps, decoded by the browser
    assert "Avatar built" in info and "tiny random pipeline" in info
    assert shot.stat().st_size > 10_000
    if os.environ.get("AVATAR_SCREENSHOT_DIR"):
        out = Path(os.environ["AVATAR_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        for png in tmp_path.glob("app-*.png"):
            shutil.copy2(png, out / png.name)


def _write_y4m(video: Path, out: Path, max_frames: int = 50) -> Path:
    """A video as a YUV4MPEG2 file: what Chromium's fake camera plays (``--use-file-for-fake-video-capture``)."""
    import cv2

    from avatar.io import VideoReader

    frames = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in VideoReader(video, max_frames=max_frames)]
    h, w = frames[0].shape[:2]
    with out.open("wb") as fh:
        fh.write(f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            fh.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    return out


def test_browser_live_tab_streams_a_camera_into_the_avatar(app_url: str, tmp_path: Path) -> None:
    """Chromium's fake camera plays a talking-head video; the Live tab answers its frames, calibrates and shows
    frames/s and latency."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not DRIVING.is_file():
        pytest.skip(f"{DRIVING} is absent")
    camera = _write_y4m(DRIVING, tmp_path / "camera.y4m")
    args = [*CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1100}, permissions=["camera"]).new_page()
            page.set_default_timeout(60_000)
            page.goto(app_url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Live").click()
            page.locator("#live-photo input[type=file]").set_input_files(str(PHOTO))
            page.locator("#live-photo img").first.wait_for()
            page.get_by_text("Click to Access Webcam").click()
            page.locator("#webcam button[aria-label='capture photo']").click()  # Gradio's "Record": start streaming
            page.wait_for_function(
                "() => { const t = document.querySelector('#live-info').innerText;"
                " return t.includes('frames/s') && !t.includes('hold still') && !t.includes('no face yet'); }",
                timeout=120_000)  # calibrated: a face was found and held for a second
            info = page.locator("#live-info").inner_text()
            page.locator("#live-out img").first.wait_for()
            page.screenshot(path=str(tmp_path / "app-live.png"), full_page=True)
        finally:
            browser.close()
    assert "ms per frame on cpu" in info and "live mode needs a GPU" in info  # innerText: no backticks
    if os.environ.get("AVATAR_SCREENSHOT_DIR"):
        Path(os.environ["AVATAR_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy2(tmp_path / "app-live.png", Path(os.environ["AVATAR_SCREENSHOT_DIR"]) / "app-live.png")
