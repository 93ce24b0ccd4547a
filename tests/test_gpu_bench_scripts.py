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
