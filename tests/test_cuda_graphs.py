"""CUDA-graph replay (avatar.nn.cuda_graphs) and Portrait4D's graphed render path."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from avatar.flame import build_deformer_buffers
from avatar.flame.synthetic import synthetic_flame_assets
from avatar.models.portrait4d import HeadPose, Portrait4D, Portrait4DConfig
from avatar.nn.cuda_graphs import GraphCache, GraphedFunction, tensor_addresses
from avatar.render.camera import orbit_labels


def test_cache_copies_and_pickles_empty():
    cache = GraphCache(3)
    cache.graphs["k"] = object()  # type: ignore[assignment]
    assert len(copy.deepcopy(cache)) == 0 and copy.deepcopy(cache).max_graphs == 3
    assert len(pickle.loads(pickle.dumps(cache))) == 0


def test_addresses_follow_the_weights():
    layer = torch.nn.Linear(3, 3)
    before = tensor_addresses(layer)
    assert tensor_addresses(layer) == before
    layer.weight.data = layer.weight.data.clone()
    assert tensor_addresses(layer) != before


@torch.no_grad()
def test_cpu_render_ignores_the_graph_switch():
    torch.manual_seed(0)
    model = Portrait4D(Portrait4DConfig.tiny()).eval().enable_fast_inference(dtype=None, cuda_graphs=True)
    dim = model.config.encoders.motion_dim
    state = model.encode(torch.rand(1, 3, 64, 64) * 2 - 1, torch.randn(1, dim))
    out = model.render(state, torch.randn(2, dim), orbit_labels(2))
    assert out["image"].shape[0] == 2 and len(model._graphs) == 0


@pytest.mark.gpu
def test_gpu_graphed_function_replays_new_inputs():
    dev = torch.device("cuda")
    w = torch.randn(8, 8, device=dev)

    def fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": torch.relu(x @ w) + 1}

    graphed = GraphedFunction(fn, {"x": torch.randn(4, 8, device=dev)})
    outs = []
    for seed in range(3):
        x = torch.randn(4, 8, device=dev, generator=torch.Generator(dev).manual_seed(seed))
        outs.append((graphed(x=x)["y"], fn(x)["y"]))
    for got, want in outs:  # earlier results are not overwritten by later replays
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="captured with"):
        graphed(z=torch.zeros(4, 8, device=dev))


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_graphed_render_matches_eager_with_head_pose_field():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = Portrait4D(Portrait4DConfig.tiny()).to(dev).eval()
    model.set_deformer_buffers(build_deformer_buffers(**synthetic_flame_assets(0, subdivisions=2)))
    model.enable_fast_inference(dtype=torch.bfloat16, cuda_graphs=False)
    dim = model.config.encoders.motion_dim
    state = model.encode(torch.rand(1, 3, 64, 64, device=dev) * 2 - 1, torch.randn(1, dim, device=dev))
    gen = torch.Generator().manual_seed(3)
    calls = []
    for _ in range(3):
        pose = torch.zeros(2, 6)
        pose[:, :3] = torch.randn(2, 3, generator=gen) * 0.2
        calls.append((torch.randn(2, dim, generator=gen).to(dev), orbit_labels(2).to(dev), HeadPose(pose=pose.to(dev))))
    eager = [model.render(state, m, c, h) for m, c, h in calls]
    model.enable_fast_inference(dtype=torch.bfloat16, cuda_graphs=True)
    graphed = [model.render(state, m, c, h) for m, c, h in calls]
    assert len(model._graphs) == 1  # one capture, replayed for the later calls
    for a, b in zip(graphed, eager, strict=True):
        for key in ("image", "depth", "alpha"):
            torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=0)
    model.render(state, calls[0][0][:1], calls[0][1][:1])  # another batch size, no head pose: a second graph
    assert len(model._graphs) == 2
    model.to("cpu").to(dev)  # moved weights: the old graphs are never replayed
    again = model.render(state, *calls[0])
    torch.testing.assert_close(again["image"], eager[0]["image"], atol=1e-4, rtol=0)


def test_a_failed_capture_is_remembered_and_reported(monkeypatch):
    """A capture that raises is not tried again for that key: the cache raises GraphCaptureError at once (the
    model then renders eagerly)."""
    from avatar.nn import cuda_graphs

    attempts = []

    class Failing:
        def __init__(self, fn, inputs):
            attempts.append(1)
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graphs, "GraphedFunction", Failing)
    cache = GraphCache()
    for _ in range(3):
        with pytest.raises(cuda_graphs.GraphCaptureError, match="not permitted"):
            cache("k", lambda: {}, {})
    assert len(attempts) == 1 and "k" in cache.failed and len(cache) == 0
    cache.clear()
    assert not cache.failed


def test_replay_or_none_warns_once_per_failed_key(caplog: pytest.LogCaptureFixture) -> None:
    from avatar.nn import cuda_graphs
    """A failed capture gives ``None`` (the caller runs eagerly) and one warning per key, naming what failed."""

    class Failing(cuda_graphs.GraphCache):
        def __call__(self, key, fn, inputs):  # noqa: ANN001, ANN204
            self.failed[key] = "RuntimeError: stand-in"
            raise cuda_graphs.GraphCaptureError(self.failed[key])

    cache = Failing()
    with caplog.at_level("WARNING", logger="avatar.nn.cuda_graphs"):
        assert cache.replay_or_none("a", dict, {}, "Thing.render") is None
        assert cache.replay_or_none("a", dict, {}, "Thing.render") is None
        assert cache.replay_or_none("b", dict, {}, "Thing.render") is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("CUDA graph capture of Thing.render failed" in w for w in warnings)
