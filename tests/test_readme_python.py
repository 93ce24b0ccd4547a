"""Every ```python block of the README runs, on a tiny random pipeline, a synthetic photo and video, on CPU.

Only names that need real weights, files or a GPU are substituted (the model id by a tiny pipeline folder, the
device, the file names); the code itself runs as printed. A block that cannot run here must be listed in
``NOT_RUN`` with the reason, so a new snippet is never silently untested.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = {"gradio_client": "needs a running app server (the app's own tests call the same endpoints)"}


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _runnable() -> list[str]:
    return [b for b in _blocks() if not any(marker in b for marker in NOT_RUN)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from avatar.io import VideoWriter
    from avatar.pipelines import Portrait4DPipeline

    root = tmp_path_factory.mktemp("readme")
    Portrait4DPipeline.tiny(seed=0).save_pretrained(root / "tiny")
    from avatar.models.genhead import GenHead

    GenHead.tiny(seed=0).save_pretrained(root / "genhead")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(root / "photo.jpg")
    with VideoWriter(root / "driving.mp4", 25) as writer:
        for _ in range(4):
            writer.write(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    return root


def test_every_python_block_is_run_or_excused() -> None:
    blocks = _blocks()
    assert len(_runnable()) >= 2
    for block in blocks:
        assert block in _runnable() or any(marker in block for marker in NOT_RUN)


@pytest.mark.parametrize("index", range(len(_runnable())))
def test_readme_python_block_runs(index: int, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _runnable()[index]
    if "mediapipe_face" in code:
        from avatar.face.mediapipe_face import mediapipe_available

        if not mediapipe_available():
            pytest.skip("the [face] extra (mediapipe 0.10.14, Python 3.9-3.12) is not installed")
    tiny = workspace / "tiny"
    for old, new in (
        ('load_pipeline("portrait4d-v2"', f'load_pipeline({str(tiny)!r}'),
        ('Portrait4D.from_pretrained("portrait4d-v2")', f'Portrait4D.from_pretrained({str(tiny / "reconstructor")!r})'),
        ('GenHead.from_pretrained("genhead-ffhq512")', f'GenHead.from_pretrained({str(workspace / "genhead")!r})'),
        ('device="cuda"', 'device="cpu"'),
    ):
        code = code.replace(old, new)
    monkeypatch.chdir(workspace)  # photo.jpg, driving.mp4 and what the snippets write live here
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})  # noqa: S102
