"""GPHM models: configs, the Gaussians' shapes and ranges, rendering on CPU with the reference rasteriser and its
gradients, the guiding -> Gaussian initialisation, the person-specific avatar, save / load, strict loading and
the official sizes on the meta device. Tiny configs, offline."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from avatar.errors import CheckpointMismatchError, ConfigError, InputError
from avatar.flame.synthetic import icosphere
from avatar.models.gphm import (
    GPHM,
    FieldsConfig,
    GPHMAvatar,
    GPHMAvatarConfig,
    GPHMConfig,
    GuidingGeometryConfig,
    GuidingGeometryModel,
    MotionEncoderConfig,
    RefineConfig,
    front_camera,
)

B, SIZE = 2, 16  # tiny: 16 x 16 feature maps, 32 x 32 images


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def guiding() -> GuidingGeometryModel:
    return GuidingGeometryModel.tiny()


@pytest.fixture(scope="module")
def gphm() -> GPHM:
    return GPHM.tiny()


def _inputs(model: GPHM | GuidingGeometryModel, batch: int = B) -> dict[str, torch.Tensor]:
    fc = model.config.fields
    g = torch.Generator().manual_seed(1)
    viewmats, ks = front_camera(batch, SIZE, distance=6.0)
    return {"identity": torch.arange(batch) % 3, "expression": torch.randn(batch, fc.expression_dim, generator=g),
            "non_face": torch.randn(batch, fc.non_face_dim, generator=g),
            "pose": torch.cat([torch.randn(batch, 3, generator=g) * 0.1, torch.zeros(batch, 3)], dim=1),
            "Ks": ks, "viewmats": viewmats,
            "face_images": torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1}


# ---- configs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [FieldsConfig, MotionEncoderConfig, RefineConfig, GuidingGeometryConfig, GPHMConfig,
                                 GPHMAvatarConfig])
def test_tiny_and_default_configs_are_valid_and_round_trip(cls: type) -> None:
    for config in (cls(), cls.tiny()):
        assert cls.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(("build", "field"), [
    (lambda: FieldsConfig(landmark_near=0.3, landmark_far=0.2), "landmark_far"),
    (lambda: FieldsConfig(color_dim=2), "color_dim"),
    (lambda: FieldsConfig(identity_dim=0), "identity_dim"),
    (lambda: MotionEncoderConfig(kernel_size=4), "kernel_size"),
    (lambda: RefineConfig(upsample=3), "upsample"),
    (lambda: GuidingGeometryConfig(sphere_radius=2.0), "sphere_radius"),
    (lambda: GuidingGeometryConfig(feature_resolution=18), "feature_resolution"),
    (lambda: GuidingGeometryConfig(refine=RefineConfig(in_channels=16)), "in_channels"),
    (lambda: GPHMConfig(initial_opacity=1.5), "initial_opacity"),
    (lambda: GPHMConfig(initial_semi_axes=(0.3, 0.0, 0.4)), "initial_semi_axes"),
    (lambda: GPHMAvatarConfig(dynamic_width=0), "dynamic_width"),
])
def test_invalid_configs_name_the_field(build, field: str) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match=field):
        build()


def test_unknown_config_key_is_named() -> None:
    with pytest.raises(ConfigError, match="num_gaussians"):
        GPHMConfig.from_dict({**GPHMConfig.tiny().to_dict(), "num_gaussians": 3})


# ---- Gaussians -----------------------------------------------------------------------------------------------


def test_gaussians_shapes_and_ranges(gphm: GPHM) -> None:
    x = _inputs(gphm)
    with torch.no_grad():
        gs = gphm.gaussians(x["identity"], x["expression"], x["non_face"])
    n, k = gphm.num_points, gphm.config.fields.num_landmarks
    assert gs.means.shape == gs.scales.shape == gs.expression_offsets.shape == (B, n, 3)
    assert gs.quats.shape == (B, n, 4) and gs.opacities.shape == (B, n)
    assert gs.features.shape == (B, n, 32) and gs.landmarks.shape == (B, k, 3)
    assert torch.allclose(gs.quats.norm(dim=-1), torch.ones(B, n), atol=1e-6)
    assert bool((gs.scales > 0).all())
    assert bool(((gs.opacities > 0) & (gs.opacities < 1)).all())
    assert all(torch.isfinite(t).all() for t in (gs.means, gs.features, gs.landmarks))
    # codes or images: the encoder turns face crops into codes
    with torch.no_grad():
        from_images = gphm.gaussians(x["identity"], x["face_images"], None)
        codes = gphm.encode_expression(x["face_images"])
        from_codes = gphm.gaussians(x["identity"], codes, torch.zeros(B, gphm.config.fields.non_face_dim))
    assert codes.shape == (B, gphm.config.fields.expression_dim)
    assert torch.allclose(from_images.means, from_codes.means)


def test_zero_initialised_heads_give_the_mean_cloud_for_every_code() -> None:
    """Fresh (not ``tiny()``-perturbed) models: the last layers of F_id, F_exp, F_nf, F_attr start at zero, so any
    code gives the canonical cloud with its 3DGS-initialised attributes; expression / non-face offsets are zero."""
    torch.manual_seed(0)
    model = GPHM(GPHMConfig.tiny()).eval()
    x = _inputs(model)
    with torch.no_grad():
        moved = model.gaussians(x["identity"], x["expression"], x["non_face"])
        still = model.gaussians(x["identity"], torch.zeros_like(x["expression"]), None)
    p = model.points
    for gs in (moved, still):
        assert torch.equal(gs.means, p.means.expand(B, -1, -1))
        assert torch.equal(gs.expression_offsets, torch.zeros_like(gs.means))
        assert torch.allclose(gs.opacities, torch.full_like(gs.opacities, model.config.initial_opacity))
        assert torch.allclose(gs.scales, p.log_scales.exp().expand(B, -1, -1))
    assert torch.equal(moved.features, still.features)  # colour never depends on the expression (paper)


def test_expression_moves_face_points_only(gphm: GPHM) -> None:
    """With the non-face code fixed, points further than ``landmark_far`` from every landmark ignore the expression."""
    x = _inputs(gphm)
    with torch.no_grad():
        a = gphm.gaussians(x["identity"], x["expression"], x["non_face"])
        b = gphm.gaussians(x["identity"], -x["expression"], x["non_face"])
        dist = torch.cdist(gphm.points.means, gphm.points.landmarks).min(-1).values
    far = dist > gphm.config.fields.landmark_far
    near = dist < gphm.config.fields.landmark_near
    assert bool(far.any()) and bool(near.any())
    assert torch.equal(a.means[:, far], b.means[:, far])
    assert not torch.allclose(a.means[:, near], b.means[:, near])


# ---- rendering and gradients ---------------------------------------------------------------------------------


def test_render_on_cpu_reference_and_gradients_reach_codes_points_and_mlps(gphm: GPHM) -> None:
    x = _inputs(gphm)
    code = gphm.new_identity_code(B)
    assert code.shape == (B, gphm.config.fields.identity_dim) and code.requires_grad and code.is_leaf
    gphm.zero_grad()
    out = gphm(code, x["expression"], x["non_face"], x["pose"], x["Ks"], viewmats=x["viewmats"], backend="reference")
    assert out.feature_map.shape == (B, 32, SIZE, SIZE)
    assert out.image_raw.shape == out.alpha.shape[:1] + (3, SIZE, SIZE)
    assert out.image.shape == (B, 3, 2 * SIZE, 2 * SIZE)  # tiny refine upsamples x2
    assert out.alpha.shape == out.depth.shape == (B, 1, SIZE, SIZE)
    assert out.landmarks.shape == (B, gphm.config.fields.num_landmarks, 3)
    assert all(torch.isfinite(t).all() for t in (out.feature_map, out.image, out.alpha, out.depth))
    assert float(out.alpha.detach().max()) > 0.2  # the head is in view
    covered = out.alpha > 0.5
    depth = out.depth.detach()[covered]
    assert float(depth.min()) > 5.0 and float(depth.max()) < 7.0  # camera at distance 6
    (out.image.square().mean() + out.image_raw.square().mean() + out.landmarks.square().mean()).backward()
    named = dict(gphm.named_parameters())
    for name in ("points.point_features", "points.means", "points.log_scales", "points.rotations",
                 "points.opacity_logits", "fields.injection.point_in.weight", "fields.identity_deform.out.weight",
                 "fields.expression_deform.rest.out.weight", "fields.non_face_deform.rest.out.weight",
                 "fields.color.out.weight", "attributes.out.weight", "refine.out.weight"):
        grad = named[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    assert code.grad is not None and float(code.grad.abs().sum()) > 0
    gphm.zero_grad()


def test_head_pose_moves_the_landmarks_rigidly(gphm: GPHM) -> None:
    x = _inputs(gphm, 1)
    with torch.no_grad():
        gs = gphm.gaussians(x["identity"], x["expression"], x["non_face"])
        rot = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])[None]
        trans = torch.tensor([[0.1, 0.2, 0.3]])
        a = gphm.render(gs, (rot, trans), x["Ks"], viewmats=x["viewmats"], backend="reference")
        matrix = torch.eye(4)[None].clone()
        matrix[:, :3, :3], matrix[:, :3, 3] = rot, trans
        b = gphm.render(gs, matrix, x["Ks"], viewmats=x["viewmats"], backend="reference")
    assert torch.allclose(a.landmarks, gs.landmarks @ rot.transpose(1, 2) + trans, atol=1e-6)
    assert torch.allclose(a.image, b.image, atol=1e-6)
    # a similarity [s R | t] renders as the Gaussians scaled by s would
    scaled = torch.eye(4)[None].clone()
    scaled[:, :3, :3] = 1.5 * rot
    scaled[:, :3, 3] = trans
    with torch.no_grad():
        c = gphm.render(gs, scaled, x["Ks"], viewmats=x["viewmats"], backend="reference")
        big = dataclasses.replace(gs, means=1.5 * gs.means, scales=1.5 * gs.scales)
        d = gphm.render(big, (rot, trans), x["Ks"], viewmats=x["viewmats"], backend="reference")
    assert torch.allclose(c.feature_map, d.feature_map, atol=1e-5)
    # the head pose can be optimised (paper 3.4): its gradient flows through the rasteriser's camera
    pose = torch.tensor([[0.05, -0.1, 0.02, 0.0, 0.0, 0.0]], requires_grad=True)
    out = gphm.render(gs, pose, x["Ks"], viewmats=x["viewmats"], backend="reference")
    (grad,) = torch.autograd.grad(out.image.square().mean() + out.landmarks.square().mean(), pose)
    assert bool((grad != 0).all())


def test_guiding_model_renders_and_trains_its_sdf(guiding: GuidingGeometryModel) -> None:
    x = _inputs(guiding)
    guiding.zero_grad()
    out = guiding(x["identity"], x["face_images"], x["non_face"], x["pose"], x["Ks"], viewmats=x["viewmats"])
    assert out.feature_map.shape == (B, 32, SIZE, SIZE) and out.image.shape == (B, 3, 2 * SIZE, 2 * SIZE)
    assert out.mask.shape == out.depth.shape == (B, 1, SIZE, SIZE)
    assert 0 < float(out.mask.detach().mean()) < 1
    assert out.landmarks.shape == (B, guiding.config.fields.num_landmarks, 3)
    (out.image.square().mean() + out.mask.mean() + out.landmarks.square().mean()).backward()
    for name, p in [("sdf", guiding.sdf.mlp.hidden[0].weight), ("injection", guiding.fields.injection.point_in.weight),
                    ("codes", guiding.identity_codes.weight), ("encoder", guiding.expression_encoder.mlp[0].weight),
                    ("landmarks", guiding.landmarks), ("refine", guiding.refine.out.weight)]:
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    guiding.zero_grad()


def test_bad_inputs_are_named(gphm: GPHM) -> None:
    x = _inputs(gphm)
    with pytest.raises(InputError, match="expression"):
        gphm.gaussians(x["identity"], x["expression"][:, :3], None)
    with pytest.raises(InputError, match="non-face"):
        gphm.gaussians(x["identity"], x["expression"], x["non_face"][:1])
    with pytest.raises(InputError, match="identity"):
        gphm.gaussians(torch.tensor([0, 7]), x["expression"], None)
    with pytest.raises(InputError, match="pose"):
        gphm(x["identity"], x["expression"], None, torch.zeros(B, 5), x["Ks"])


# ---- initialisation, the person-specific avatar ----------------------------------------------------------------


def test_from_guiding_starts_where_the_guiding_model_is(guiding: GuidingGeometryModel) -> None:
    x = _inputs(guiding)
    with torch.no_grad():
        mean_mesh = guiding.extract_mean_mesh()
        model = GPHM.from_guiding(guiding, mean_mesh=mean_mesh)
        mesh = guiding.mesh(x["identity"], x["expression"], x["non_face"], mean_mesh=mean_mesh)
        gs = model.gaussians(x["identity"], x["expression"], x["non_face"])
    assert model.num_points == model.config.num_points == mean_mesh.vertices.shape[0]
    assert torch.allclose(gs.means, mesh.vertices, atol=1e-5)
    assert torch.allclose(gs.features, mesh.colors, atol=1e-5)
    assert torch.allclose(gs.landmarks, mesh.landmarks, atol=1e-5)
    assert torch.allclose(gs.opacities, torch.full_like(gs.opacities, model.config.initial_opacity))


def test_template_initialisation_samples_the_surface() -> None:
    model = GPHM(GPHMConfig.tiny())
    v, f = icosphere(2)
    model.initialise_from_template(torch.tensor(v, dtype=torch.float32) * 0.4, torch.tensor(f), 50,
                                   generator=torch.Generator().manual_seed(0))
    assert model.num_points == model.config.num_points == 50
    assert torch.equal(model.points.point_features, torch.zeros(50, model.config.fields.point_feature_dim))
    radius = model.points.means.detach().norm(dim=-1)
    assert float(radius.max()) <= 0.4 + 1e-5 and float(radius.min()) > 0.35  # on the icosphere's faces


def test_personalised_avatar_renders_like_the_fitted_gphm(gphm: GPHM) -> None:
    x = _inputs(gphm, 1)
    code = gphm.new_identity_code(1, generator=torch.Generator().manual_seed(3)).detach()
    avatar = gphm.personalise(code)
    assert isinstance(avatar, GPHMAvatar) and avatar.config.num_points == gphm.num_points
    with torch.no_grad():
        a = gphm(code, x["expression"], x["non_face"], x["pose"], x["Ks"], viewmats=x["viewmats"],
                 backend="reference")
        b = avatar(x["expression"], x["non_face"], x["pose"], x["Ks"], viewmats=x["viewmats"], backend="reference")
    for name in ("means", "quats", "scales", "opacities", "features", "landmarks"):
        assert torch.allclose(getattr(a.gaussians, name), getattr(b.gaussians, name), atol=1e-5), name
    assert torch.allclose(a.image, b.image, atol=1e-5)
    groups = avatar.finetune_parameters()
    assert {id(avatar.means), id(avatar.colors)} <= {id(p) for p in groups["gaussians"]}
    assert {id(avatar.dynamic.rest.out.weight), id(avatar.refine.out.weight)} <= {id(p) for p in groups["networks"]}
    assert avatar.finetune_parameters(few_shot=True)["networks"] == []
    out = avatar(x["face_images"][:1], None, x["pose"], x["Ks"], viewmats=x["viewmats"], backend="reference")
    out.image.square().mean().backward()
    for p in (avatar.means, avatar.colors, avatar.dynamic.rest.out.weight, avatar.expression_deform.rest.out.weight):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    with pytest.raises(InputError, match="one identity"):
        gphm.personalise(torch.zeros(2, gphm.config.fields.identity_dim))


def _random_avatar(gphm: GPHM) -> GPHMAvatar:
    avatar = gphm.personalise(gphm.new_identity_code(1, generator=torch.Generator().manual_seed(3)).detach())
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-zero heads, so that every network moves the output
        for p in avatar.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return avatar.eval()


def test_fast_inference_matches_the_reference_and_tracks_weight_changes(gphm: GPHM) -> None:
    avatar = _random_avatar(gphm)
    with torch.no_grad():  # points purely in the face (w_exp = 1), purely outside it (0) and blended
        avatar.expression_weights[::3] = 0.0
        avatar.expression_weights[1::3] = 1.0
    x = _inputs(gphm)
    args = (x["expression"], x["non_face"], x["pose"], x["Ks"])

    def run() -> object:
        with torch.no_grad():
            return avatar(*args, viewmats=x["viewmats"], backend="reference")

    ref = run()
    avatar.enable_fast_inference(None)  # float32: only the cached first layer differs (rounding)
    fast = run()
    # F_exp ran only where w_exp > 0, F_nf only where w_exp < 1, and the displacements are the reference's
    w = avatar.expression_weights[:, 0].tolist()
    parts = avatar._point_parts()
    assert parts["exp_rows"].tolist() == [i for i, v in enumerate(w) if v > 0] and 0 not in parts["exp_rows"]
    assert parts["nf_rows"].tolist() == [i for i, v in enumerate(w) if v < 1] and 1 not in parts["nf_rows"]
    assert parts["exp"].shape[0] == len(parts["exp_rows"]) and parts["nf"].shape[0] == len(parts["nf_rows"])
    for name in ("expression_offsets", "non_face_offsets"):
        assert torch.allclose(getattr(ref.gaussians, name), getattr(fast.gaussians, name), atol=1e-6), name
    assert (fast.gaussians.expression_offsets[:, ::3] == 0).all()
    assert (fast.gaussians.non_face_offsets[:, 1::3] == 0).all()
    for name in ("means", "quats", "scales", "opacities", "features", "landmarks"):
        assert torch.allclose(getattr(ref.gaussians, name), getattr(fast.gaussians, name), atol=1e-5), name
    assert torch.allclose(ref.image, fast.image, atol=1e-5)
    assert avatar._point_cache is not None
    with torch.no_grad():  # an in-place weight change invalidates the cached first layer
        avatar.expression_deform.point_in.weight.mul_(1.5)
    changed_fast = run()
    avatar.disable_fast_inference()
    changed_ref = run()
    assert not torch.allclose(changed_ref.gaussians.means, ref.gaussians.means, atol=1e-4)
    assert torch.allclose(changed_fast.gaussians.means, changed_ref.gaussians.means, atol=1e-5)
    avatar.enable_fast_inference(torch.bfloat16)  # bf16 autocast: close, not equal
    low = run()
    assert low.image.dtype == torch.float32 and low.gaussians.means.dtype == torch.float32
    assert (low.gaussians.means - changed_ref.gaussians.means).abs().max() < 5e-3
    assert (low.image - changed_ref.image).abs().max() < 2e-2
    out = avatar(*args, viewmats=x["viewmats"], backend="reference")  # gradients: the reference path runs
    assert torch.allclose(out.image, changed_ref.image, atol=1e-5)
    with pytest.raises(ConfigError, match="dtype"):
        avatar.enable_fast_inference(torch.float64)


def test_cuda_graphs_option_is_eager_off_cuda(gphm: GPHM) -> None:
    avatar = _random_avatar(gphm)
    x = _inputs(gphm)
    with torch.no_grad():
        eager = avatar.enable_fast_inference(None)(x["expression"], x["non_face"], x["pose"], x["Ks"],
                                                   viewmats=x["viewmats"], backend="reference")
        graphed = avatar.enable_fast_inference(None, cuda_graphs=True)(x["expression"], x["non_face"], x["pose"],
                                                                        x["Ks"], viewmats=x["viewmats"],
                                                                        backend="reference")
    assert avatar.fast_inference.cuda_graphs and len(avatar._graphs) == 0  # nothing captured on the CPU
    assert torch.equal(eager.image, graphed.image)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_replay_the_eager_fast_path_on_cuda(gphm: GPHM) -> None:
    """Gaussians and refine network replayed from captured graphs (no fallback) give the eager fast path's
    output, take new inputs, and are captured again after an in-place weight change."""
    avatar = _random_avatar(gphm).cuda()
    x = {k: v.cuda() for k, v in _inputs(gphm).items()}

    def run(expression: torch.Tensor) -> object:
        with torch.no_grad():
            return avatar(expression, x["non_face"], x["pose"], x["Ks"], viewmats=x["viewmats"], backend="reference")

    avatar.enable_fast_inference(None)
    eager = run(x["expression"])
    other_eager = run(x["expression"].flip(0))
    avatar.enable_fast_inference(None, cuda_graphs=True)
    first, second = run(x["expression"]), run(x["expression"].flip(0))
    assert len(avatar._graphs) == 2 and not avatar._graphs.failed  # the Gaussians and the refine network
    torch.testing.assert_close(first.image, eager.image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second.image, other_eager.image, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        avatar.expression_deform.point_in.weight.mul_(1.5)  # the cached first layer changes: a new graph key
    changed = run(x["expression"])
    avatar.enable_fast_inference(None)
    torch.testing.assert_close(changed.image, run(x["expression"]).image, atol=1e-5, rtol=1e-5)


# ---- save / load -----------------------------------------------------------------------------------------------


def test_save_and_load_round_trip_with_another_point_count(tmp_path: Path, guiding: GuidingGeometryModel) -> None:
    model = GPHM.from_guiding(guiding).eval()
    assert model.num_points != GPHMConfig.tiny().num_points
    x = _inputs(model)
    model.save_pretrained(tmp_path / "gphm")
    again = GPHM.from_pretrained(tmp_path / "gphm")
    assert again.num_points == model.num_points and again.config == model.config
    with torch.no_grad():
        a = model(x["identity"], x["expression"], x["non_face"], x["pose"], x["Ks"], viewmats=x["viewmats"],
                  backend="reference")
        b = again(x["identity"], x["expression"], x["non_face"], x["pose"], x["Ks"], viewmats=x["viewmats"],
                  backend="reference")
    assert torch.equal(a.image, b.image) and torch.equal(a.alpha, b.alpha)


@pytest.mark.parametrize("cls", [GuidingGeometryModel, GPHMAvatar])
def test_other_models_round_trip(tmp_path: Path, cls: type) -> None:
    model = cls.tiny()
    model.save_pretrained(tmp_path / "m")
    again = cls.from_pretrained(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_strict_loading_names_the_bad_key(tmp_path: Path, gphm: GPHM) -> None:
    folder = gphm.save_pretrained(tmp_path / "gphm")
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    save_file({**state, "fields.bogus.weight": torch.zeros(1)}, str(weights))
    with pytest.raises(CheckpointMismatchError, match="fields.bogus.weight"):
        GPHM.from_pretrained(folder)
    del state["attributes.out.bias"]
    save_file(state, str(weights))
    with pytest.raises(CheckpointMismatchError, match="attributes.out.bias"):
        GPHM.from_pretrained(folder)


# ---- official sizes on the meta device ------------------------------------------------------------------------


def test_paper_sizes_on_meta() -> None:
    with torch.device("meta"):
        gphm = GPHM(GPHMConfig(num_identities=10))
        guiding = GuidingGeometryModel(GuidingGeometryConfig(num_identities=10))
    shapes = {k: tuple(v.shape) for k, v in gphm.state_dict().items()}
    assert shapes["identity_codes.weight"] == (10, 512)
    assert shapes["points.means"] == (100_000, 3) and shapes["points.point_features"] == (100_000, 128)
    assert shapes["attributes.out.weight"] == (8, 512)
    assert shapes["fields.color.out.weight"] == (32, 512)
    # the paper's depths: injection MLP 8 hidden layers of 512, the others 4
    assert len(gphm.fields.injection.rest.hidden) + 1 == 8
    assert len(gphm.fields.identity_deform.hidden) == len(gphm.attributes.hidden) == 4
    assert len(guiding.sdf.mlp.hidden) == 4 and guiding.sdf.mlp.out.weight.shape == (129, 512)
    shared = {k for k in guiding.state_dict() if k.startswith(("fields.", "expression_encoder.", "refine."))}
    assert shared and all(shapes[k] == tuple(guiding.state_dict()[k].shape) for k in shared)


def test_front_camera_sees_the_canonical_head_upright() -> None:
    viewmats, ks = front_camera(1, 64)
    points = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.5]])
    cam = points @ viewmats[0, :3, :3].T + viewmats[0, :3, 3]
    uv = (cam @ ks[0].T)[:, :2] / cam[:, 2:]
    assert torch.allclose(uv[0], torch.tensor([32.0, 32.0]))
    assert float(uv[1, 1]) < 32 and float(uv[1, 1]) > 0  # the crown (+y) is up in the image and in view
    assert float(cam[3, 2]) < float(cam[0, 2])  # the face (+z) is nearer the camera than the centre
    assert float(uv[2, 0]) > 32  # the head's +x (its left) is on the image's right: seen from the front


def test_label_cameras_convert_to_the_rasteriser_convention() -> None:
    """A Portrait4D label (OpenGL cam2world, normalised intrinsics) -> OpenCV world -> camera and pixel K: the
    frontal inference camera (at ``(0, 0.01, 4.2)``, looking down ``-z``) sees the point in front of it at the image
    centre, with ``+y`` up."""
    from avatar.models.gphm import label_to_viewmat_K
    from avatar.render.camera import inference_label

    viewmats, ks = label_to_viewmat_K(inference_label(2), 64)
    assert viewmats.shape == (2, 4, 4) and ks.shape == (2, 3, 3)
    points = torch.tensor([[0.0, 0.01, 0.0], [0.0, 0.2, 0.0]])
    cam = points @ viewmats[0, :3, :3].T + viewmats[0, :3, 3]
    uv = (cam @ ks[0].T)[:, :2] / cam[:, 2:]
    assert float(cam[0, 2]) > 0 and torch.allclose(uv[0], torch.tensor([32.0, 32.0]), atol=1e-4)
    assert float(uv[1, 1]) < 32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_refine_upsampling_keeps_the_autocast_dtype_with_the_same_result_on_cuda(monkeypatch: pytest.MonkeyPatch
                                                                                  ) -> None:
    """Under CUDA bf16 autocast the refine network's bilinear x2 runs in bf16 (autocast alone would run it and the
    skip concatenation in float32); the image equals the float32-upsampling composition."""
    from avatar.models.gphm.refinement import RefineNet

    torch.manual_seed(0)
    net = RefineNet(RefineConfig(width=16)).cuda().eval().to(memory_format=torch.channels_last)
    features = torch.randn(2, 32, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    seen: list[torch.dtype] = []
    interpolate = torch.nn.functional.interpolate

    def spy(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        out = interpolate(x, *args, **kwargs)
        seen.append(out.dtype)
        return out

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        monkeypatch.setattr("avatar.models.gphm.refinement.F.interpolate", spy)
        fast = net(features)
        monkeypatch.setattr(RefineNet, "_up", staticmethod(
            lambda x: spy(x, scale_factor=2.0, mode="bilinear", align_corners=False)))
        autocast_upsampling = net(features)
    assert seen == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    assert fast.dtype == autocast_upsampling.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), autocast_upsampling.float(), atol=1e-2, rtol=0)  # ~1 bf16 ulp at 1


def test_fused_hidden_layers_equal_linear_relu() -> None:
    """``MLP._hidden_fused`` (one GEMM + bias + ReLU epilogue a layer) gives ``relu(linear(x))`` layer by layer
    (float32 and bf16 on the CPU, where ``torch._addmm_activation`` is an addmm and a ReLU); ``fused=True`` off
    CUDA is the plain path."""
    from avatar.models.gphm.layers import MLP

    torch.manual_seed(0)
    mlp = MLP(16, 5, 32, 3)
    x = torch.randn(2, 7, 16)
    for dtype in (torch.float32, torch.bfloat16):
        m, h = mlp.to(dtype), x.to(dtype)
        ref = h
        for layer in m.hidden:
            ref = m.act(layer(ref))
        fused = m._hidden_fused(h)
        assert fused.shape == (2, 7, 32) and fused.dtype == dtype
        torch.testing.assert_close(fused, ref, atol=0, rtol=0)
        assert torch.equal(m(h, fused=True), m(h))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_hidden_layers_under_cuda_autocast() -> None:
    """On CUDA under bf16 autocast the fused hidden layers run in bf16 and stay within bf16 rounding of
    ``nn.Linear`` + ReLU."""
    from avatar.models.gphm.layers import MLP

    torch.manual_seed(0)
    mlp = MLP(64, 12, 128, 4).cuda()
    x = torch.randn(3, 1000, 64, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        fused, plain = mlp(x, fused=True), mlp(x)
        assert mlp._hidden_fused(x).dtype == torch.bfloat16
    assert fused.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), plain.float(), atol=2e-2, rtol=2e-2)
