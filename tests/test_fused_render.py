"""The fused Triton renderer (avatar.render.fused) against the PyTorch reference renderer.

On CPU the kernels run under Triton's interpreter (the ``triton_interpreter`` fixture of conftest.py); the
``gpu`` tests run the compiled kernels at the official sampling density.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from avatar.render import fused  # noqa: E402
from avatar.render.camera import camera_z, orbit_labels, split_label  # noqa: E402
from avatar.render.fused import FusedRenderingUnsupportedError, render_triplanes_fused  # noqa: E402
from avatar.render.rays import sample_rays  # noqa: E402
from avatar.render.triplane import ImportanceRenderer, RenderingOptions, RenderOutput, TriplaneNeRFDecoder  # noqa: E402

FIELDS = ("features", "depth", "all_depths", "weights", "t_bg")


def _decoder(c_in: int, c_out: int, seed: int = 0) -> TriplaneNeRFDecoder:
    torch.manual_seed(seed)
    dec = TriplaneNeRFDecoder(c_in, c_out)
    with torch.no_grad():  # non-zero density (the official init zeroes it)
        dec.out_sigma.weight.normal_(0, 0.5)
        dec.out_sigma.bias.fill_(1.0)
    return dec


def _scene(batch: int, res: int, channels: int, plane: int, device: torch.device, radius: float | None = None):
    gen = torch.Generator().manual_seed(1)
    planes = torch.randn(batch, 3, channels, plane, plane, generator=gen).to(device)
    cam = orbit_labels(batch, radius=radius) if radius is not None else orbit_labels(batch)
    c2w, intrinsics = split_label(cam.to(device))
    origins, directions = sample_rays(c2w, intrinsics, res)
    return planes, origins, directions, camera_z(c2w)


def _assert_close(out: RenderOutput, ref: RenderOutput, atol: float) -> None:
    for name in FIELDS:
        a, b = getattr(out, name), getattr(ref, name)
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(
    ("channels", "c_out", "n_coarse", "n_fine", "deterministic", "axes"),
    [(32, 32, 10, 10, True, "xy-yz-zx"), (4, 8, 9, 7, True, "xy-yz-zx"), (32, 32, 12, 0, True, "xy-yz-zx"),
     (8, 16, 8, 8, False, "xy-yz-zx"), (32, 32, 10, 10, True, "xy-xz-zy"), (8, 16, 8, 8, False, "xy-xz-zy")],
)
@torch.no_grad()
def test_matches_reference(triton_interpreter, channels, c_out, n_coarse, n_fine, deterministic, axes):
    """Both projections (Portrait4D's and EG3D's / GOHA's) against the PyTorch renderer."""
    planes, o, d, cam_z = _scene(2, 6, channels, 12, triton_interpreter)
    dec = _decoder(channels, c_out)
    renderer = ImportanceRenderer(RenderingOptions(depth_resolution=n_coarse, depth_resolution_importance=n_fine,
                                                   plane_axes=axes))
    torch.manual_seed(5)  # the stochastic case draws the same jitter and importance samples on both sides
    ref = renderer(planes, dec, o, d, cam_z=cam_z, deterministic=deterministic)
    torch.manual_seed(5)
    out = renderer(planes, dec, o, d, cam_z=cam_z, deterministic=deterministic, fused="ieee")
    _assert_close(out, ref, atol=2e-6)
    assert float(ref.weights.sum(2).max()) > 0.1  # the scene is not empty


@torch.no_grad()
def test_deformer_chunks_and_zero_padding(triton_interpreter):
    """A deformer that pushes points out of the box (zero padding) and chunked rays give the reference's
    result."""
    planes, o, d, cam_z = _scene(2, 6, 32, 10, triton_interpreter)
    dec = _decoder(32, 32, seed=2)
    renderer = ImportanceRenderer(RenderingOptions(depth_resolution=8, depth_resolution_importance=8))

    def deformer(points: torch.Tensor) -> torch.Tensor:
        return points * 1.6 + torch.tensor([0.1, -0.2, 0.05])

    ref = renderer(planes, dec, o, d, cam_z=cam_z, deformer=deformer, deterministic=True)
    out = renderer(planes, dec, o, d, cam_z=cam_z, deformer=deformer, deterministic=True, fused="ieee", chunk=10)
    _assert_close(out, ref, atol=2e-6)


@pytest.mark.parametrize(("n_fine", "empty"), [(8, False), (0, False), (8, True)])
@torch.no_grad()
def test_memory_chunks_give_the_one_chunk_result(triton_interpreter, n_fine, empty):
    """A per-chunk memory budget splits the rays (several chunks here) and changes no value; in an empty scene
    (no density anywhere: every depth is 0/0) each ray's depth is still the largest sample depth of the whole
    batch, not of its chunk."""
    planes, o, d, cam_z = _scene(2, 6, 16, 10, triton_interpreter)
    dec = _decoder(16, 16, seed=3)
    if empty:
        dec.out_sigma.weight.zero_()
        dec.out_sigma.bias.fill_(-200.0)  # softplus underflows to 0
    ranges = {"ray_start": "auto", "ray_end": "auto"} if empty else {}  # each ray's own depth range
    renderer = ImportanceRenderer(RenderingOptions(depth_resolution=8, depth_resolution_importance=n_fine, **ranges))
    whole = render_triplanes_fused(renderer, planes, dec, o, d, cam_z, deterministic=True, chunk_bytes=0)
    per_ray = 2 * (8 + n_fine) * (16 + 5) * 4
    assert fused.rays_per_chunk(2, 36, 8 + n_fine, 16, 5 * per_ray) == 5
    assert fused.rays_per_chunk(2, 36, 8 + n_fine, 16, None) == 36
    calls = []
    original = fused.fused_ray_march

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    fused.fused_ray_march = counting
    try:
        chunked = render_triplanes_fused(renderer, planes, dec, o, d, cam_z, deterministic=True,
                                         chunk_bytes=5 * per_ray)
    finally:
        fused.fused_ray_march = original
    assert len(calls) == 8 * (2 if n_fine else 1)  # 36 rays in chunks of 5
    for name in FIELDS:
        assert torch.equal(getattr(chunked, name), getattr(whole, name)), name
    if empty:
        assert float(whole.t_bg.min()) == 1.0
        assert torch.equal(whole.depth, torch.full_like(whole.depth, float(whole.all_depths.max())))
        chunk_max = [float(whole.all_depths[:, i:i + 5].max()) for i in range(0, 36, 5)]
        assert min(chunk_max) < float(whole.all_depths.max())  # a per-chunk clamp would differ
    else:
        assert float(whole.t_bg.min()) < 0.9


@pytest.mark.parametrize("empty", [False, True])
@torch.no_grad()
def test_without_per_sample_outputs_the_other_fields_are_the_same(triton_interpreter, empty):
    """per_sample=False (GOHA): all_depths and weights come back without samples, in one chunk and in several,
    and features, depth (clamped to all rays' samples) and t_bg are those of the full output."""
    planes, o, d, cam_z = _scene(2, 6, 16, 10, triton_interpreter)
    dec = _decoder(16, 16, seed=3)
    if empty:
        dec.out_sigma.weight.zero_()
        dec.out_sigma.bias.fill_(-200.0)
    ranges = {"ray_start": "auto", "ray_end": "auto"} if empty else {}
    renderer = ImportanceRenderer(RenderingOptions(depth_resolution=8, depth_resolution_importance=8, **ranges))
    per_ray = 2 * 16 * (16 + 5) * 4
    for chunk_bytes in (0, 5 * per_ray):
        full = render_triplanes_fused(renderer, planes, dec, o, d, cam_z, deterministic=True, chunk_bytes=chunk_bytes)
        lean = render_triplanes_fused(renderer, planes, dec, o, d, cam_z, deterministic=True, chunk_bytes=chunk_bytes,
                                      per_sample=False)
        assert lean.all_depths.shape == lean.weights.shape == (2, 36, 0, 1)
        for name in ("features", "depth", "t_bg"):
            assert torch.equal(getattr(lean, name), getattr(full, name)), (chunk_bytes, name)
    via_renderer = renderer(planes, dec, o, d, cam_z, deterministic=True, fused="ieee", per_sample=False)
    assert via_renderer.weights.shape[2] == 0 and torch.equal(via_renderer.features, full.features)


@torch.no_grad()
def test_memory_chunks_bound_the_live_tensors(triton_interpreter):
    """What the chunking is for, counted by the tensors alive at once (avatar.bench.live_memory): one chunk holds
    every sample's buffers for the whole batch; chunked, the per-sample buffers stay within the budget and the
    rest is the per-ray output (twice: the chunks' parts and their concatenation), the coarse depths and the
    channels-last copy of the planes."""
    from avatar.bench.live_memory import LiveTensorBytes

    planes, o, d, cam_z = _scene(2, 16, 16, 10, triton_interpreter)
    dec = _decoder(16, 16, seed=3)
    renderer = ImportanceRenderer(RenderingOptions(depth_resolution=8, depth_resolution_importance=8))
    held = [planes, o, d, cam_z, *dec.parameters()]
    per_sample = 2 * 256 * 16 * (16 + 5) * 4  # the whole batch's per-sample buffers: 688 KiB
    with LiveTensorBytes(held) as whole:
        out = render_triplanes_fused(renderer, planes, dec, o, d, cam_z, deterministic=True, chunk_bytes=0)
    budget = per_sample // 8
    with LiveTensorBytes(held) as chunked:
        render_triplanes_fused(renderer, planes, dec, o, d, cam_z, deterministic=True, chunk_bytes=budget)
    outputs = sum(getattr(out, name).numel() * 4 for name in FIELDS)
    rest = 2 * outputs + 2 * 256 * 8 * 4 + planes.numel() * 4
    assert whole.peak_bytes > per_sample
    assert chunked.peak_bytes <= budget + rest < whole.peak_bytes


@torch.no_grad()
def test_unsupported_calls_say_why(triton_interpreter):
    planes, o, d, cam_z = _scene(1, 4, 16, 8, triton_interpreter)
    dec = _decoder(16, 16)
    renderer = ImportanceRenderer(RenderingOptions(depth_resolution=4, depth_resolution_importance=4))
    with pytest.raises(FusedRenderingUnsupportedError, match="one .* triplane tensor"):
        render_triplanes_fused(renderer, [planes, planes], dec, o, d, cam_z)  # type: ignore[arg-type]
    with pytest.raises(FusedRenderingUnsupportedError, match="TriplaneNeRFDecoder"):
        render_triplanes_fused(renderer, planes, lambda f, x: f, o, d, cam_z)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision"):
        render_triplanes_fused(renderer, planes, dec, o, d, cam_z, precision="fp8")
    white = ImportanceRenderer(RenderingOptions(depth_resolution=4, depth_resolution_importance=4, white_back=True))
    with pytest.raises(FusedRenderingUnsupportedError, match="white_back"):
        render_triplanes_fused(white, planes, dec, o, d, cam_z)
    with pytest.raises(FusedRenderingUnsupportedError, match="plane_axes"):
        fused.fused_triplane_field(planes, o, fused.decoder_weights(dec), 1.0, torch.zeros(1, 1, 1, 16),
                                   torch.zeros(1, 1, 1), 0, plane_axes="yx-zy-xz")


def test_not_available_on_cpu_without_interpreter(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not fused.fused_available("cpu")


@torch.no_grad()
def test_portrait4d_fast_path_uses_the_kernels(triton_interpreter):
    """Portrait4D's fast path renders through the kernels where they run and matches its reference path."""
    from avatar.models.portrait4d import Portrait4D, Portrait4DConfig

    torch.manual_seed(0)
    model = Portrait4D(Portrait4DConfig.tiny()).eval()
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    motion = torch.randn(2, model.config.encoders.motion_dim)
    camera = orbit_labels(2)
    motion_app = torch.randn(1, motion.shape[1])
    ref = model.reference_forward(image, motion_app, motion[:1], camera[:1])
    model.enable_fast_inference(dtype=None, channels_last=False)
    calls = []
    original = fused.fused_ray_march

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    state = model.encode(image, motion_app)
    fused.fused_ray_march = counting
    try:
        out = model.render(state, motion, camera)
    finally:
        fused.fused_ray_march = original
    assert calls, "the fused renderer was not used"
    assert out["image"].shape == (2, *ref["image"].shape[1:])
    torch.testing.assert_close(out["image"][:1], ref["image"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["depth"][:1], ref["depth"], atol=1e-4, rtol=0)


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_matches_reference_at_official_density():
    """Compiled kernels, 48 + 48 samples, 32 channels, 64x64 rays of 2 frames, 128^2 planes."""
    dev = torch.device("cuda")
    planes, o, d, cam_z = _scene(2, 64, 32, 128, dev)
    dec = _decoder(32, 32).to(dev)
    renderer = ImportanceRenderer(RenderingOptions())
    ref = renderer(planes, dec, o, d, cam_z=cam_z, deterministic=True)
    out = renderer(planes, dec, o, d, cam_z=cam_z, deterministic=True, fused="ieee")
    _assert_close(out, ref, atol=5e-5)
    tf32 = renderer(planes, dec, o, d, cam_z=cam_z, deterministic=True, fused="tf32")
    rel = (tf32.features - ref.features).norm() / ref.features.norm()
    assert float(rel) < 1e-2
