"""The app builds without launching, starts on localhost, and is honest about missing weights."""

from __future__ import annotations

import socket
import urllib.request

import pytest

gr = pytest.importorskip("gradio")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_import_builds_demo_without_launching() -> None:
    import app

    assert isinstance(app.demo, gr.Blocks)
    assert not getattr(app.demo, "is_running", False)


def test_status_names_missing_files_and_the_command() -> None:
    import app

    text = app.model_status("portrait4d-v2")
    assert "Weights missing" in text and "portrait4d-v2-vfhq512.pkl" in text
    assert "avatar download portrait4d-v2" in text
    assert "Unknown model" in app.model_status("nope")


def test_launched_app_answers_on_localhost() -> None:
    from gradio_client import Client

    import app

    demo = app.build_demo("portrait4d-static")
    port = _free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
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
