"""scripts/gpu_bench: the bundle builder and the GPU run script parse, refuse a folder that is not a GOHA checkout,
and the kernel profile says it needs CUDA instead of failing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "gpu_bench"


@pytest.mark.parametrize("name", ["prepare.sh", "run.sh"])
def test_shell_scripts_parse(name: str) -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPTS / name)], capture_output=True).returncode == 0


def test_prepare_refuses_a_folder_without_goha(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPTS / "prepare.sh"), str(tmp_path), str(tmp_path / "bundle")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "not an NVlabs/GOHA checkout" in done.stderr
    assert not (tmp_path / "bundle").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
@pytest.mark.parametrize("script", ["profile_gphm.py", "profile_goha.py"])
def test_profile_needs_cuda(script: str) -> None:
    done = subprocess.run([sys.executable, str(SCRIPTS / script), "2"], capture_output=True, text=True,
                          cwd=ROOT, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "needs a CUDA device" in done.stderr


def test_memory_probe_keeps_each_enclosing_module_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """memory_goha.allocator_peaks on a stand-in allocator: the one CUDA peak counter is reset at every module
    boundary, yet an enclosing module still gets the peak of a child that ran before."""
    from torch import nn

    sys.path.insert(0, str(SCRIPTS))
    import memory_goha

    gib = 2**30
    state = {"now": 0, "peak": 0}

    def alloc(n: int) -> None:
        state["now"] += n * gib
        state["peak"] = max(state["peak"], state["now"])

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: state.update(peak=state["now"]))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)

    class Leaf(nn.Module):
        def __init__(self, temporary: int, kept: int) -> None:
            super().__init__()
            self.temporary, self.kept = temporary, kept

        def forward(self) -> None:
            alloc(self.temporary + self.kept)
            alloc(-self.temporary)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = Leaf(4, 1), Leaf(2, 1)

        def forward(self) -> None:
            self.a()
            alloc(3)  # 1 + 3 = 4 between the children
            alloc(-3)
            self.b()

    model = nn.ModuleDict({"0": Outer()})
    added = memory_goha.allocator_peaks(model, lambda: model["0"](), torch.device("cuda"))
    assert added == {"0": 5.0, "0.a": 5.0, "0.b": 3.0}


def test_memory_probe_runs_the_fused_renderer_code_without_its_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """memory_goha's CPU estimate: the fused renderer's own code and allocations run, its launches are skipped."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    sys.path.insert(0, str(SCRIPTS))
    import memory_goha

    from avatar.bench.live_memory import LiveTensorBytes
    from avatar.render import fused
    from avatar.render.camera import camera_z, orbit_labels, split_label
    from avatar.render.rays import sample_rays
    from avatar.render.triplane import ImportanceRenderer, RenderingOptions, TriplaneNeRFDecoder

    planes = torch.randn(2, 3, 8, 6, 6)
    c2w, intrinsics = split_label(orbit_labels(2))
    origins, directions = sample_rays(c2w, intrinsics, 4)
    renderer = ImportanceRenderer(RenderingOptions(depth_resolution=4, depth_resolution_importance=4))
    decoder = TriplaneNeRFDecoder(8, 8)
    assert not fused.fused_available("cpu")
    with torch.no_grad(), memory_goha.skipped_kernels(), LiveTensorBytes([planes]) as live:
        out = fused.render_triplanes_fused(renderer, planes, decoder, origins, directions, camera_z(c2w),
                                           deterministic=True)
    assert out.features.shape == (2, 16, 8) and out.all_depths.shape == (2, 16, 8, 1)
    assert live.peak_bytes >= 2 * 16 * 8 * (8 + 2) * 4  # the per-sample buffers were allocated
    assert not fused.fused_available("cpu")  # restored
