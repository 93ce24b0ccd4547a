"""`python -m avatar.bench gphm` on the CPU: the per-stage table runs for every mode, the fast float32 path gives
the reference's image, bf16 a close one; a fitted-avatar folder is read with --avatar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avatar.bench import main


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(2)


def test_gphm_bench_rows_and_differences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    assert main(["gphm", "--device", "cpu", "--resolution", "32", "--num-points", "400", "--batch-sizes", "1", "2",
                 "--iters", "1", "--warmup", "0", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| fast-bf16 | 2 | 400 |" in text and "| fast-bf16-graphs | 2 | 400 |" in text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["batch"]) for r in rows] == [(m, b) for b in (1, 2)
                                                        for m in ("reference", "fast-fp32", "fast-bf16",
                                                                  "fast-bf16-graphs")]
    for r in rows:
        assert r["total_ms"] > 0 and r["fps"] == pytest.approx(r["batch"] / r["total_ms"] * 1e3)
        if r["mode"] == "reference":
            assert r["max_abs_diff"] is None
        elif r["mode"] == "fast-fp32":
            assert r["max_abs_diff"] < 1e-5
        else:
            assert 0 < r["max_abs_diff"] < 5e-2


def test_gphm_bench_reads_a_fitted_avatar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avatar.bench.gphm import template_avatar
    from avatar.fitting.gphm_fit import AVATAR_FORMAT, AVATAR_MANIFEST, AVATAR_MODEL_DIR, SIGNALS_DIR

    fitted = template_avatar(300, 32, torch.device("cpu"))
    fitted.avatar.save_pretrained(tmp_path / AVATAR_MODEL_DIR)
    fitted.signals.save_pretrained(tmp_path / SIGNALS_DIR)
    (tmp_path / AVATAR_MANIFEST).write_text(json.dumps({"format": AVATAR_FORMAT, "K": fitted.K.tolist(),
                                                        "resolution": 32}))
    assert main(["gphm", "--avatar", str(tmp_path), "--device", "cpu", "--resolution", "32", "--batch-sizes", "1",
                 "--modes", "reference", "fast-fp32", "--iters", "1", "--warmup", "0"]) == 0
    assert f"avatar {tmp_path}" in capsys.readouterr().out
