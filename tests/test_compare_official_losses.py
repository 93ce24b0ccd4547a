"""``scripts/compare_official_portrait4d_losses.py``: our Portrait4D training losses against the official ones.

The comparison itself needs a checkout of YuDeng/Portrait-4D and the official code's dependencies; it runs
when ``PORTRAIT4D_OFFICIAL`` (the checkout) and ``PORTRAIT4D_OFFICIAL_DEPS`` (a ``pip install --target`` folder
with segmentation-models-pytorch 0.3.3, timm 0.9.2, six, pretrainedmodels, efficientnet-pytorch, einops,
kornia) are set, and is skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_official_portrait4d_losses.py"


def _script():
    spec = importlib.util.spec_from_file_location("compare_official_portrait4d_losses", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_skips_without_a_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    assert _script().main([]) == 2
    assert "no official checkout given (--official PATH): comparison skipped" in capsys.readouterr().out


def test_skips_with_a_folder_that_is_not_a_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _script().main(["--official", str(tmp_path)]) == 2
    assert "is not a Portrait-4D checkout" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.skipif(not (os.environ.get("PORTRAIT4D_OFFICIAL") and os.environ.get("PORTRAIT4D_OFFICIAL_DEPS")),
                    reason="set PORTRAIT4D_OFFICIAL to an official checkout and PORTRAIT4D_OFFICIAL_DEPS to its "
                           "dependencies' pip --target folder")
def test_matches_the_official_losses() -> None:
    args = ["--official", os.environ["PORTRAIT4D_OFFICIAL"], "--extra-path", os.environ["PORTRAIT4D_OFFICIAL_DEPS"],
            "--cases", "v2", "v1", "v1-early"]
    assert _script().main(args) == 0


def test_plot_draws_both_sides_of_a_curves_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--plot JSON PNG`` (no checkout needed): one panel per logged term, official and ours."""
    import json

    from PIL import Image

    rows = [{"step": s, "Loss/G/loss": 1.0 / (s + 1), "Loss/D/loss": 1.4 - 0.01 * s} for s in range(5)]
    meta = {"case": "v2", "steps": 5, "batch": 4, "nr": 64, "g_size": "tiny", "device_name": "CPU"}
    (tmp_path / "c.json").write_text(json.dumps({"meta": meta, "official": rows, "ours": rows}))
    assert _script().main(["--plot", str(tmp_path / "c.json"), str(tmp_path / "c.png")]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(tmp_path / "c.png") as im:
        assert im.width > 2 * im.height  # two panels side by side
