"""Shared test setup: offline, a throwaway cache, and the optional ../shared/media folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network and never write into the user's cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("AVATAR_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MEDIA = Path(os.environ.get("AVATAR_SHARED_MEDIA", REPO_ROOT.parent / "shared" / "media"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path_factory.mktemp("avatar-cache")
    monkeypatch.setenv("AVATAR_CACHE", str(root))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    return root


@pytest.fixture
def shared_media() -> Path:
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"{SHARED_MEDIA} is absent")
    return SHARED_MEDIA


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


TRITON_KERNEL_MODULES = ("avatar.render.triton_kernels", "avatar.flame.triton_search", "avatar.models.goha.triton_lifting")


def _forget_triton_kernels() -> None:
    import sys

    for name in TRITON_KERNEL_MODULES:
        sys.modules.pop(name, None)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules and hasattr(sys.modules[parent], child):
            delattr(sys.modules[parent], child)
    from avatar.render import fused

    fused._kernels.cache_clear()


@pytest.fixture
def triton_interpreter(monkeypatch: pytest.MonkeyPatch):
    """The project's Triton kernels on CPU tensors through Triton's interpreter: the kernel modules are imported
    afresh with ``TRITON_INTERPRET=1`` for the test and dropped afterwards, so no other test sees interpreted
    kernels (and ``fused_available('cpu')`` is true only inside the test)."""
    import torch

    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _forget_triton_kernels()
    yield torch.device("cpu")
    _forget_triton_kernels()
