"""`python -m avatar.bench psi` runs end to end on the CPU (tiny random model): its rows, breakdown and JSON."""

from __future__ import annotations

import argparse
import json

from avatar.bench import psi


def test_psi_bench_tiny_cpu(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    psi.add_arguments(parser)
    out = tmp_path / "rows.json"
    args = parser.parse_args(["--device", "cpu", "--tiny", "--frames", "100", "--batch-sizes", "1", "2",
                              "--renderers", "torch", "--breakdown", "--json", str(out)])
    assert psi.main(args) == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["path"] for r in rows] == ["reference fp32", "fast bf16 [torch]", "fast bf16 [torch]"]
    assert all(r["ms_per_frame"] > 0 and r["gflop_per_frame"] > 0 for r in rows)
    assert rows[1]["rel_l2_diff"] < 1e-2
    for stage in ("motion blocks + triplane decoder", "volume rendering + compositing", "super-resolution"):
        assert stage in text
