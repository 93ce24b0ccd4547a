"""`python -m avatar.bench goha --tiny` on the CPU: one row per dtype / renderer / CUDA-graph setting and the
encode + reenact row; the official side needs an NVlabs/GOHA checkout (run on a GPU, see docs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avatar.bench import main


def test_goha_bench_tiny_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(2)
    out = tmp_path / "rows.json"
    assert main(["goha", "--tiny", "--device", "cpu", "--frames", "1", "--warmup", "0", "--batch-sizes", "1", "2",
                 "--dtypes", "fp32", "--fused", "off", "--cuda-graphs", "off", "on", "--breakdown", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    # on the CPU the graphs are never used, so the 'on' rows carry no graph label
    assert [(r["path"], r["batch"]) for r in rows] == [
        ("ours fp32, source cached", 1), ("ours fp32, source cached", 2),
        ("ours fp32, source cached", 1), ("ours fp32, source cached", 2),
        ("ours fp32, encode + reenact per frame", 1)]
    assert all(r["ms_per_frame"] > 0 and r["sr_max_abs_diff"] is None for r in rows)
    printed = capsys.readouterr().out
    assert "| ours fp32, source cached | 2 |" in printed
    # --breakdown: one line per stage of the per-frame work, at the largest batch
    assert "stage breakdown (fp32, renderer off, batch 2)" in printed
    for stage in ("expression branch", "nearest-point lifting", "super-resolution", "all of reenact"):
        assert f"| {stage}" in printed
    assert torch.is_grad_enabled()  # the bench leaves the process's settings as it found them
    with pytest.raises(SystemExit):
        main(["goha", "--tiny", "--cuda-graphs", "maybe"])
    for bad in ("0", "some"):
        with pytest.raises(SystemExit):
            main(["goha", "--tiny", "--sr-frames", bad])


def test_goha_bench_sr_frames_rows(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    out = tmp_path / "rows.json"
    assert main(["goha", "--tiny", "--device", "cpu", "--frames", "1", "--warmup", "0", "--batch-sizes", "2",
                 "--dtypes", "fp32", "--fused", "off", "--sr-frames", "all", "1", "--memory-cap-gib", "2",
                 "--json", str(out)]) == 0  # the cap applies on CUDA only
    assert [r["path"] for r in json.loads(out.read_text())][:2] == [
        "ours fp32, source cached", "ours fp32 + SR 1 frame a call, source cached"]


def test_goha_bench_triton_lifting_rows(triton_interpreter, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    out = tmp_path / "rows.json"
    assert main(["goha", "--tiny", "--device", "cpu", "--frames", "1", "--warmup", "0", "--batch-sizes", "1",
                 "--dtypes", "fp32", "--fused", "off", "--cuda-graphs", "on", "--lifting", "cdist", "triton",
                 "--json", str(out)]) == 0
    paths = [r["path"] for r in json.loads(out.read_text())]
    assert paths[:2] == ["ours fp32, source cached", "ours fp32 + Triton lifting, source cached"]
