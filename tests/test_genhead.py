"""GenHead (avatar.models.genhead): tiny random networks on the synthetic FLAME stand-in, CPU.

The side-by-side check against the official generator is ``scripts/compare_official_genhead.py`` (needs a
Portrait-4D checkout); these tests pin the parts that can be checked without it: the part compositing against
the plain renderer where it must reduce to it, identity holding, loading, saving and the configuration map.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avatar.errors import CheckpointMismatchError, ConfigError, InputError
from avatar.flame.parts import PartDeformation
from avatar.models.genhead import GenHead, GenHeadConfig, official_to_model_state, render_parts
from avatar.render.camera import camera_z, inference_label, split_label, view_label
from avatar.render.rays import sample_rays
from avatar.render.triplane import ImportanceRenderer, RenderingOptions, triplane_field

B = 2


@pytest.fixture(scope="module")
def model() -> GenHead:
    return GenHead.tiny(seed=0)


def _flame(seed: int = 1, batch: int = B) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    shape, exp = torch.randn(batch, 300, generator=g), torch.randn(batch, 100, generator=g)
    pose = 0.1 * torch.randn(batch, 6, generator=g)
    pose[:, 3] = 0.25  # open jaw: the mouth mask is not empty
    return shape, exp, pose, 0.1 * torch.randn(batch, 6, generator=g)


@pytest.fixture(scope="module")
def sampled(model: GenHead):
    z = torch.randn(B, model.config.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return z, model.sample(z, *_flame(), inference_label(B))


def test_sample_shapes_and_ranges(model: GenHead, sampled) -> None:
    _, out = sampled
    nr = model.config.neural_rendering_resolution
    assert out.image.shape == (B, 3, 512, 512)
    assert out.image_raw.shape == (B, 3, nr, nr) and out.features.shape == (B, model.config.feature_channels, nr, nr)
    assert out.depth.shape == out.t_bg.shape == out.seg.shape == (B, 1, nr, nr)
    assert torch.isfinite(out.image).all() and torch.isfinite(out.depth).all()
    assert out.t_bg.min() >= 0 and out.t_bg.max() <= 1 and out.t_bg.min() < 0.99  # something is rendered
    torch.testing.assert_close(out.seg, 2 * (1 - out.t_bg) - 1)
    assert out.features.min() >= -1.01 and out.features.max() <= 1.01
    for m in (out.masks.eye, out.masks.mouth, out.masks.head):
        assert m.shape == (B, 1, nr, nr) and m.min() >= 0 and m.max() <= 1
    assert out.masks.eye.sum() > 0 and out.masks.mouth.sum() > 0  # the synthetic head has eyes and a mouth
    assert out.masks.eye_sr.shape == out.masks.mouth_sr.shape == (B, 1, 512, 512)


def test_eval_sampling_is_deterministic_and_mapping_synthesis_split_is_sample(model: GenHead, sampled) -> None:
    z, out = sampled
    flame, cam = _flame(), inference_label(B)
    with torch.no_grad():
        ws = model.mapping(z, cam, flame[0])
        again = model.synthesis(ws, z, cam, *flame)
    assert torch.equal(again.image, out.image) and torch.equal(again.depth, out.depth)


def test_fixed_identity_animates_with_expression_and_camera(model: GenHead) -> None:
    """One identity (ws, z_bg held): a new jaw / expression moves the mouth, a new camera moves everything."""
    z = torch.randn(1, model.config.z_dim, generator=torch.Generator().manual_seed(5))
    shape, exp, pose, eye = _flame(2, 1)
    cam = inference_label(1)
    with torch.no_grad():
        ws = model.mapping(z, cam, shape)
        a = model.synthesis(ws, z, cam, shape, exp, pose, eye)
        closed = pose.clone()
        closed[:, 3] = 0.0
        b = model.synthesis(ws, z, cam, shape, exp, closed, eye)
        c = model.synthesis(ws, z, view_label(25.0, 0.0), shape, exp, pose, eye)
    assert not torch.equal(a.masks.mouth, b.masks.mouth)
    assert (a.image_raw - b.image_raw).abs().max() > 1e-4
    assert (a.image_raw - c.image_raw).abs().max() > 1e-3
    assert torch.equal(a.ws, b.ws)


def _identity_deform(points: torch.Tensor) -> PartDeformation:
    zero = torch.zeros(points.shape[:2])
    return PartDeformation(points, points, points, zero, zero, zero, zero)


def test_part_rendering_without_part_masks_is_the_plain_renderer_of_the_face_planes() -> None:
    """No eye box, no eye or mouth mask: only the face triplane is seen, exactly as the Portrait4D renderer."""
    torch.manual_seed(0)
    renderer = ImportanceRenderer(RenderingOptions(depth_resolution=8, depth_resolution_importance=8))
    planes = torch.randn(1, 6, 8, 16, 16)
    decoder = GenHead.tiny().decoder
    cam = inference_label(1)
    cam2world, k = split_label(cam)
    origins, dirs = sample_rays(cam2world, k, 8)
    zeros = torch.zeros(1, 64, 1)
    for fuse in (False, True):
        out = render_parts(renderer, planes, decoder, _identity_deform, origins, dirs, camera_z(cam2world), zeros,
                           zeros, fuse=fuse, deterministic=True)
        field = triplane_field(planes[:, 3:6], decoder, renderer.options.box_warp)
        ref = renderer.render_field(field, origins, dirs, camera_z(cam2world), deterministic=True)
        torch.testing.assert_close(out.features, ref.features, rtol=0, atol=0)
        torch.testing.assert_close(out.t_bg, ref.t_bg, rtol=0, atol=0)
        assert out.face_density_in_mouth.abs().max() == 0


def test_part_rendering_on_mouth_rays_uses_the_part_planes() -> None:
    """Mouth mask 1 on every ray (training form): density = part density x (box + 1) with the box empty, i.e. the
    part triplane alone; the fused form adds the face density and blends the colours by softmax."""
    torch.manual_seed(1)
    renderer = ImportanceRenderer(RenderingOptions(depth_resolution=8, depth_resolution_importance=0))
    planes = torch.randn(1, 6, 8, 16, 16)
    decoder = GenHead.tiny().decoder
    cam2world, k = split_label(inference_label(1))
    origins, dirs = sample_rays(cam2world, k, 4)
    ones, zeros = torch.ones(1, 16, 1), torch.zeros(1, 16, 1)
    out = render_parts(renderer, planes, decoder, _identity_deform, origins, dirs, camera_z(cam2world), zeros, ones,
                       fuse=False, deterministic=True)
    part = triplane_field(planes[:, 0:3], decoder, renderer.options.box_warp)
    ref = renderer.render_field(part, origins, dirs, camera_z(cam2world), deterministic=True)
    torch.testing.assert_close(out.features, ref.features, rtol=0, atol=0)

    face = triplane_field(planes[:, 3:6], decoder, renderer.options.box_warp)

    def fused_field(p: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (cp, sp), (cf, sf) = part(p, d), face(p, d)
        w = torch.softmax(torch.stack([sp, sf], -1), -1)
        return w[..., 0] * cp + w[..., 1] * cf, sp + sf

    fused = render_parts(renderer, planes, decoder, _identity_deform, origins, dirs, camera_z(cam2world), zeros,
                         ones, fuse=True, deterministic=True)
    ref = renderer.render_field(fused_field, origins, dirs, camera_z(cam2world), deterministic=True)
    torch.testing.assert_close(fused.features, ref.features, rtol=1e-6, atol=1e-6)


def test_save_load_round_trip_renders_the_same(model: GenHead, sampled, tmp_path: Path) -> None:
    z, out = sampled
    folder = model.save_pretrained(tmp_path / "g")
    again = GenHead.from_pretrained(folder)
    assert again.can_render
    with torch.no_grad():
        out2 = again.sample(z, *_flame(), inference_label(B))
    assert torch.equal(out2.image, out.image)


def test_official_state_loads_strictly_and_foreign_keys_are_named(model: GenHead) -> None:
    official = {k: v for k, v in model.state_dict().items() if not k.startswith("part_masks.")}
    assert all(k.startswith(("backbone.", "background.", "superresolution.", "decoder.", "deformer.flame_deform."))
               for k in official)
    masks = {"face": model.part_masks.face_wo_eye_vertex_idx, "right_eyeball": model.part_masks.eye_vertex_idx,
             "left_eyeball": model.part_masks.eye_vertex_idx[:0]}
    loaded = GenHead.from_official(official, config=model.config, flame_masks=masks)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(CheckpointMismatchError, match="encoder_global.x"):
        official_to_model_state({**official, "encoder_global.x": torch.zeros(1)})


def test_config_from_official_init_kwargs() -> None:
    kwargs = {"z_dim": 512, "c_dim": 325, "w_dim": 512, "triplane_channels": 192, "triplane_resolution": 256,
              "mapping_kwargs": {"num_layers": 2}, "sr_kwargs": {"use_ws_ones": True},
              "deformation_kwargs": {"box_warp": 1.3},
              "rendering_kwargs": {"depth_resolution": 48, "depth_resolution_importance": 48, "box_warp": 1.3,
                                   "ray_start": "auto-plane", "ray_end": "auto-plane", "c_scale": 1.0,
                                   "superresolution_module": "models.stylegan.superresolution.SuperresolutionHybrid8XDC"}}
    assert GenHeadConfig.from_official(kwargs) == GenHeadConfig()
    with pytest.raises(ConfigError, match="has_patch_sr"):
        GenHeadConfig.from_official({**kwargs, "has_patch_sr": True})
    with pytest.raises(ConfigError, match="6 planes"):
        GenHeadConfig.from_official({**kwargs, "triplane_channels": 100})


def test_official_size_parameter_count() -> None:
    """55.0 M parameters (design notes: mapping 0.95, synthesis 28.49, background 23.89, SR 1.65, decoder 4 k)."""
    with torch.device("meta"):
        full = GenHead(GenHeadConfig())
    n = sum(p.numel() for p in full.parameters())
    assert abs(n / 1e6 - 54.99) < 0.01


def test_bad_inputs_are_named(model: GenHead) -> None:
    z = torch.randn(1, model.config.z_dim)
    shape, exp, pose, eye = _flame(3, 1)
    with pytest.raises(InputError, match="expression"):
        model.sample(z, shape, exp[:, :50], pose, eye, inference_label(1))
    with pytest.raises(InputError, match="neural_rendering_resolution"):
        model.sample(z, shape, exp, pose, eye, inference_label(1), neural_rendering_resolution=256)
    with pytest.raises(InputError, match="FLAME"):
        GenHead(GenHeadConfig.tiny()).render_masks(inference_label(1), shape, exp, pose, eye)


def test_zero_neck_skips_the_head_pose_field_within_rounding(model: GenHead) -> None:
    """With the neck at zero the field is the identity up to rounding, so skipping it changes nothing measurable."""
    deform = model.deformer.flame_deform
    shape, exp, pose, eye = _flame(4, 1)
    pose[:, :3] = 0
    points = 0.2 * torch.randn(1, 500, 3, generator=torch.Generator().manual_seed(1))
    field = deform.precompute(shape, exp, pose, eye)
    assert field is not None
    warped = deform.warp(field, points)
    assert (warped - points).abs().max() < 1e-6
    skipped = model.part_deformation(shape, exp, pose, eye)(points)
    exact = deform.parts_from_meshes(warped, deform.part_meshes(shape, exp, pose, eye))
    for a, b in zip(skipped, exact, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


@pytest.mark.gpu
def test_gpu_sample_matches_cpu(model: GenHead, sampled) -> None:
    """The same tiny model and inputs on CUDA (float32; the background's fp16 blocks run in fp16 there, as
    upstream) give the CPU result within half-precision rounding."""
    z, out = sampled
    gpu = GenHead.tiny(seed=0).cuda()
    with torch.no_grad():
        got = gpu.sample(z.cuda(), *(t.cuda() for t in _flame()), inference_label(B).cuda())
    torch.testing.assert_close(got.masks.mouth.cpu(), out.masks.mouth, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.depth.cpu(), out.depth, rtol=0, atol=2e-3)
    torch.testing.assert_close(got.image.cpu(), out.image, rtol=0, atol=2e-2)


@pytest.mark.gpu
def test_gpu_fast_inference_matches_the_reference_on_cuda(sampled) -> None:
    """On CUDA the fused-field path gives the PyTorch path's render (float32 products)."""
    z = sampled[0].cuda()
    gpu = GenHead.tiny(seed=0).cuda()
    args = (z, *(t.cuda() for t in _flame()), inference_label(B).cuda())
    with torch.no_grad():
        ref = gpu.sample(*args, neural_rendering_resolution=24)
        out = gpu.enable_fast_inference("ieee").sample(*args, neural_rendering_resolution=24)
    for name in ("image_raw", "features", "depth", "t_bg"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-4, rtol=0, msg=name)


def _part_deform(points: torch.Tensor) -> PartDeformation:
    """Distinct eye / face / mouth points and an eye box covering the points with x < 0."""
    zero = torch.zeros(points.shape[:2])
    shift = torch.tensor([0.02, -0.01, 0.03])
    return PartDeformation(points + shift, points - shift, points * 0.9, zero, zero, zero,
                           (points[..., 0] < 0).to(points.dtype))


@pytest.mark.parametrize("fuse", [False, True])
def test_fused_fields_give_the_reference_part_rendering(fuse: bool, triton_interpreter: torch.device) -> None:
    """``render_parts(fused='ieee')``: the part and face fields through the fused Triton field kernel (Triton's
    interpreter on the CPU) give every output of the PyTorch path, with eye, mouth and eye-box samples present,
    in the training and the fused compositing."""
    torch.manual_seed(2)
    renderer = ImportanceRenderer(RenderingOptions(depth_resolution=4, depth_resolution_importance=4))
    planes = torch.randn(1, 6, 8, 16, 16)
    decoder = GenHead.tiny().decoder
    with torch.no_grad():  # a visible density
        decoder.out_sigma.bias.fill_(1.0)
        decoder.out_sigma.weight.normal_(0.0, 0.5)
    cam2world, k = split_label(inference_label(1))
    origins, dirs = sample_rays(cam2world, k, 4)
    eye = (torch.arange(16) % 3 == 0).float().reshape(1, 16, 1)
    mouth = (torch.arange(16) % 4 == 1).float().reshape(1, 16, 1)
    args = (renderer, planes, decoder, _part_deform, origins, dirs, camera_z(cam2world), eye, mouth)
    with torch.no_grad():
        ref = render_parts(*args, fuse=fuse, deterministic=True)
        out = render_parts(*args, fuse=fuse, deterministic=True, fused="ieee")
    assert ref.face_density_in_eye.abs().max() > 0 and ref.face_density_in_mouth.abs().max() > 0
    for name in ref._fields:
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=2e-5, rtol=1e-5, msg=name)


def test_fast_inference_hands_the_fused_option_to_the_part_renderer(model: GenHead,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``enable_fast_inference`` asks :func:`render_parts` for the fused fields only without gradients and where
    the kernels can run; ``disable_fast_inference`` and bad values."""
    from avatar.models.genhead import modeling

    asked: list[str | None] = []
    original = modeling.render_parts

    def recording(*a, fused=None, **k):  # noqa: ANN002, ANN003, ANN202
        asked.append(fused)
        return original(*a, **k)

    monkeypatch.setattr(modeling, "render_parts", recording)
    monkeypatch.setattr(modeling, "fused_available", lambda device: True)
    z = torch.randn(1, model.config.z_dim, generator=torch.Generator().manual_seed(3))
    args = (z, *_flame(seed=4, batch=1), inference_label(1))
    try:
        with torch.no_grad():
            model.sample(*args)
            model.enable_fast_inference("tf32").sample(*args)
        model.sample(*args)  # gradients recorded: the reference path
        with torch.no_grad():
            model.disable_fast_inference().sample(*args)
    finally:
        model.disable_fast_inference()
    assert asked == [None, "tf32", None, None]
    with pytest.raises(ConfigError, match="fused_rendering"):
        model.enable_fast_inference("fp8")
