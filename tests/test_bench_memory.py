"""The benchmarks' memory tools: the device-independent live-tensor counter (:mod:`avatar.bench.live_memory`) and
the cuDNN engine choice under a memory cap (:mod:`avatar.bench.memory_cap`, on a stand-in CUDA allocator)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avatar.bench.live_memory import LiveTensorBytes, module_peaks
from avatar.bench.memory_cap import engines_under_cap, memory_cap


def test_counts_storages_once_until_their_last_tensor_dies():
    with LiveTensorBytes() as live:
        a = torch.zeros(1000)  # 4,000 bytes
        b = torch.zeros(2000)  # 8,000
        view = b[:10]
        del b
        assert live.live == 12_000  # the view keeps b's storage
        del view
        assert live.live == 4_000
        same = a.add_(1)  # in place: no new storage
        assert live.live == 4_000 and same is a
        c = torch.ones(500) * 2  # ones (2,000) lives until the product (2,000) exists
        assert live.live == 6_000
        assert live.peak_bytes == 12_000
        del a, same, c
        assert live.live == 0


def test_external_storages_are_not_counted():
    weight = torch.randn(256, 256)
    with LiveTensorBytes([weight]) as live:
        t = weight.t()  # a view of the weight
        y = t @ torch.ones(256)  # ones (1,024) + product (1,024)
        assert live.live == 1_024 and live.peak_bytes == 2_048
        del t, y


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Linear(8, 512, bias=False)
        self.narrow = nn.Linear(512, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.narrow(torch.relu(self.wide(x)))


def test_module_peaks_name_the_module_that_holds_the_peak():
    model = nn.Sequential(_Twice(), nn.Linear(8, 8, bias=False))
    x = torch.randn(100, 8)
    live, added = module_peaks(model, lambda: model(x), [x], record_tensors=True)
    peak, stack = live.peak_bytes, live.peak_stack
    wide = 100 * 512 * 4
    # the wide output and its ReLU are alive together in block 0, between its leaves; the wide output is
    # freed before `narrow` runs, which holds the ReLU and its own output
    assert peak == 2 * wide
    assert stack == ("0",)
    assert added["0.wide"] == wide
    assert added["0.narrow"] == 100 * 8 * 4
    assert added["0"] == 2 * wide
    assert added["1"] == 100 * 8 * 4
    # the two wide tensors alive at the peak, named by their operator and module
    assert sorted((b, what.split(" @ ")[1]) for b, what in live.peak_tensors) == [(wide, "0"), (wide, "0.wide")]
    assert any(what.startswith("relu.default (100, 512) float32 @ 0") for _, what in live.peak_tensors)


@pytest.fixture
def fractions(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The memory fractions set on a stand-in 80 GiB CUDA device."""
    set_to: list[float] = []

    class Properties:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Properties())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: set_to.append(f))
    return set_to


def test_engines_are_chosen_under_the_cap_and_the_cap_is_lifted(fractions: list[float]) -> None:
    cuda = torch.device("cuda")
    assert engines_under_cap(lambda: 7, cuda, 2.0) == 7
    assert fractions == [2.0 / 80, 1.0]

    def too_big() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    assert engines_under_cap(too_big, cuda, 2.0) is None  # the call does not fit: no result, cap lifted
    assert fractions[-1] == 1.0
    fractions.clear()
    assert engines_under_cap(lambda: 3, cuda, None) == 3 and fractions == []  # no cap, nothing set
    with memory_cap(cuda, 500.0):  # more than the device: the whole device
        assert fractions == [1.0]
    with pytest.raises(ValueError, match="positive"), memory_cap(cuda, 0):
        pass
    with pytest.raises(ValueError, match="CUDA device"), memory_cap(torch.device("cpu"), 1.0):
        pass
