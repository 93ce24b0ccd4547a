"""The Portrait4D training forward (official ``synthesis()`` / ``sample_mixed`` with gradients), tiny config."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from avatar.flame import build_deformer_buffers
from avatar.flame.synthetic import synthetic_flame_assets
from avatar.models.portrait4d import HeadPose, Portrait4D
from avatar.models.portrait4d.training import (
    TRAIN_OUTPUTS,
    half_static_motion_scale,
    motion_scale_tensor,
    plane_features,
    training_conditioning,
    zero_head_pose,
)
from avatar.render.camera import orbit_labels

NR = 16
BOX_HALF = 1.3 / 2


def _inputs(batch: int = 2, seed: int = 0, motion_dim: int = 12, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
        "motion_app": torch.randn(batch, motion_dim, generator=g),
        "motion": torch.randn(batch, motion_dim, generator=g),
        "camera": orbit_labels(max(batch, 2))[:batch],
    }


def _forward(model: Portrait4D, x: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
    kwargs.setdefault("neural_rendering_resolution", NR)
    return model.train_forward(x["image"], x["motion_app"], x["motion"], x["camera"], **kwargs)


@pytest.fixture(scope="module")
def model() -> Portrait4D:
    return Portrait4D.tiny()


@pytest.fixture(scope="module")
def flame_buffers() -> dict[str, torch.Tensor]:
    return build_deformer_buffers(**synthetic_flame_assets())


def _with_deformer(flame_buffers: dict[str, torch.Tensor]) -> Portrait4D:
    model = Portrait4D.tiny()
    model.load_state_dict({**model.state_dict(), **{f"deformer.flame_deform.{k}": v for k, v in flame_buffers.items()}})
    return model


# ----------------------------------------------------------------------------------------------------------
# outputs


@pytest.mark.parametrize("nr", [8, NR])
def test_outputs_shapes_ranges_and_relations(model: Portrait4D, nr: int) -> None:
    x = _inputs()
    out = _forward(model, x, neural_rendering_resolution=nr)
    assert set(out) == set(TRAIN_OUTPUTS)
    b, c, s = 2, model.config.feature_channels, 24  # tiny: 12 stratified + 12 importance samples
    shapes = {
        "image": (b, 3, nr, nr), "image_wobg": (b, 3, nr, nr), "rgb_bg": (b, 3, nr, nr),
        "image_sr": (b, 3, 512, 512), "image_feature": (b, c, nr, nr), "image_feature_wobg": (b, c, nr, nr),
        "background_feature": (b, c, nr, nr), "image_depth": (b, 1, nr, nr), "T_bg": (b, 1, nr, nr),
        "seg": (b, 1, nr, nr), "planes": (b, 3, 4, 32, 32), "interval": (b, nr * nr, s),
        "all_weights": (b, nr * nr, s - 1),
    }
    for k, shape in shapes.items():
        assert out[k].shape == shape, k
        assert torch.isfinite(out[k]).all(), k
    out = {k: v.detach() for k, v in out.items()}
    t_bg = out["T_bg"]
    assert float(t_bg.min()) >= 0 and float(t_bg.max()) <= 1
    torch.testing.assert_close(out["seg"], (1 - t_bg) * 2 - 1)  # seg/alpha relation
    assert float(out["seg"].min()) >= -1 and float(out["seg"].max()) <= 1
    weights_sum = out["all_weights"].sum(-1).reshape(b, 1, nr, nr)
    torch.testing.assert_close(weights_sum, 1 - t_bg, atol=1e-6, rtol=0)
    # features in (-0.001, 1.001) composited with weights summing to 1 - T_bg, the background sigmoid in (0, 1)
    for k in ("image_wobg", "image_feature_wobg"):
        assert float(out[k].min()) >= -1.002 and float(out[k].max()) <= 1.002, k
    for k in ("rgb_bg", "background_feature"):
        assert float(out[k].min()) >= -1 and float(out[k].max()) <= 1, k
    assert torch.equal(out["image"], out["image_feature"][:, :3])
    assert torch.equal(out["image_wobg"], out["image_feature_wobg"][:, :3])
    assert torch.equal(out["rgb_bg"], out["background_feature"][:, :3])
    composited = ((out["image_feature_wobg"] + 1) / 2 + t_bg * (out["background_feature"] + 1) / 2) * 2 - 1
    torch.testing.assert_close(out["image_feature"], composited, atol=1e-6, rtol=1e-6)
    # sorted sample depths in the jittered 'auto-plane' range (the jitter may pass the end by one spacing)
    z = 4.2
    spacing = 2 * BOX_HALF / (12 - 1)
    assert bool((out["interval"].diff(dim=-1) >= 0).all())
    assert float(out["interval"].min()) >= z - BOX_HALF - 0.05
    assert float(out["interval"].max()) <= z + BOX_HALF + spacing + 0.05
    assert float(out["image_depth"].min()) >= float(out["interval"].min()) - 1e-5
    assert float(out["image_depth"].max()) <= float(out["interval"].max()) + 1e-5


def test_deterministic_mode_equals_the_inference_reference(model: Portrait4D) -> None:
    x = _inputs()
    out = _forward(model, x, deterministic=True)
    ref = model.reference_forward(x["image"], x["motion_app"], x["motion"], x["camera"])
    pairs = {"image_sr": "image", "image": "image_raw", "image_depth": "depth", "image_feature": "features"}
    for mine, theirs in pairs.items():
        torch.testing.assert_close(out[mine].detach(), ref[theirs], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(1 - out["T_bg"].detach(), ref["alpha"], atol=1e-6, rtol=1e-6)


def test_deterministic_is_repeatable_and_stochastic_differs(model: Portrait4D) -> None:
    x = _inputs()
    a, b = _forward(model, x, deterministic=True), _forward(model, x, deterministic=True)
    for k in TRAIN_OUTPUTS:
        assert torch.equal(a[k], b[k]), k
    torch.manual_seed(1)
    s1 = _forward(model, x)
    s2 = _forward(model, x)
    torch.manual_seed(1)
    s1_again = _forward(model, x)
    assert not torch.equal(s1["interval"], s2["interval"])
    assert (s1["image"] - s2["image"]).abs().max() > 1e-6
    assert not torch.equal(s1["interval"], a["interval"])
    for k in TRAIN_OUTPUTS:  # the same seed gives the same samples
        assert torch.equal(s1[k], s1_again[k]), k
    # stochastic and deterministic render the same scene: close on average
    assert (s1["image"] - a["image"]).abs().mean() < 0.05


# ----------------------------------------------------------------------------------------------------------
# motion scale: static path, half-static batches, conditioning


def test_motion_scale_zero_is_the_static_path(model: Portrait4D) -> None:
    static = Portrait4D.tiny(motion_scale=0.0)
    static.load_state_dict(model.state_dict())
    x = _inputs()
    out = _forward(model, x, motion_scale=0.0, deterministic=True)
    ref = static.reference_forward(x["image"], x["motion_app"], x["motion"], x["camera"])
    torch.testing.assert_close(out["image_sr"].detach(), ref["image"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out["image"].detach(), ref["image_raw"], atol=1e-6, rtol=1e-6)
    default = _forward(static, x, deterministic=True)  # motion_scale=None: the config's (0)
    other_motions = model.train_forward(x["image"], torch.randn_like(x["motion_app"]), torch.randn_like(x["motion"]),
                                        x["camera"], NR, motion_scale=0.0, deterministic=True)
    moving = _forward(model, x, deterministic=True)
    for k in TRAIN_OUTPUTS:
        torch.testing.assert_close(default[k], out[k], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(other_motions[k], out[k], atol=1e-6, rtol=1e-6)
    assert (moving["image"] - out["image"]).abs().max() > 1e-3  # the motion blocks do act at scale 1


def test_half_static_batch_renders_each_half_with_its_scale(model: Portrait4D) -> None:
    x = _inputs()
    scale = half_static_motion_scale(2)
    assert scale.flatten().tolist() == [1.0, 0.0]
    assert half_static_motion_scale(4, 0.5).flatten().tolist() == [0.5, 0.5, 0.0, 0.0]
    mixed = _forward(model, x, motion_scale=scale, deterministic=True)
    moving = _forward(model, x, motion_scale=1.0, deterministic=True)
    static = _forward(model, x, motion_scale=torch.tensor([0.0]), deterministic=True)
    for k in ("image_sr", "image", "image_depth", "seg", "planes"):
        torch.testing.assert_close(mixed[k][:1], moving[k][:1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mixed[k][1:], static[k][1:], atol=1e-5, rtol=1e-5)


def test_motion_scale_tensor_and_conditioning() -> None:
    assert motion_scale_tensor(0.5, 3).shape == (3, 1, 1)
    assert motion_scale_tensor(torch.tensor([1.0, 0.0, 2.0]), 3).flatten().tolist() == [1.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="motion_scale"):
        motion_scale_tensor(torch.ones(2), 3)
    x, y = _inputs(batch=4, seed=1), _inputs(batch=4, seed=2)
    src, drv, m_src, m_drv = x["image"], y["image"], x["motion_app"], y["motion"]
    img, mot, scale = training_conditioning(src, drv, m_src, m_drv)
    assert img is src and mot is m_src and scale.flatten().tolist() == [1.0] * 4
    img, mot, scale = training_conditioning(src, drv, m_src, m_drv, half_static=True)
    assert img is src and scale.flatten().tolist() == [1.0, 1.0, 0.0, 0.0]
    img, mot, scale = training_conditioning(src, drv, m_src, m_drv, swapping_prob=1.0)  # always swapped
    assert torch.equal(img, drv) and torch.equal(mot, m_drv) and scale.flatten().tolist() == [0.0] * 4
    img, mot, scale = training_conditioning(src, drv, m_src, m_drv, swapping_prob=0.0, half_static=True)
    assert torch.equal(img, src) and scale.flatten().tolist() == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="even batch"):
        training_conditioning(src[:3], drv[:3], m_src[:3], m_drv[:3], swapping_prob=0.5, half_static=True)


# ----------------------------------------------------------------------------------------------------------
# densities at points


def _renderer_samples(model: Portrait4D, x: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch,
                      **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(points, raw sigma) of every pass the renderer evaluates during one training forward."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    evaluate = model.renderer._evaluate

    def spy(field, origins, directions, depths, deterministic):
        b = depths.shape[0]
        points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(b, -1, 3)
        rgb, sigma = evaluate(field, origins, directions, depths, deterministic)
        seen.append((points.detach(), sigma.detach().reshape(b, -1, 1)))
        return rgb, sigma

    monkeypatch.setattr(model.renderer, "_evaluate", spy)
    _forward(model, x, **kwargs)
    monkeypatch.undo()
    return seen


def test_sample_density_equals_the_renderer_density(model: Portrait4D, monkeypatch: pytest.MonkeyPatch) -> None:
    x = _inputs()
    scale = half_static_motion_scale(2)
    samples = _renderer_samples(model, x, monkeypatch, motion_scale=scale)
    assert len(samples) == 2  # coarse and fine pass
    for points, sigma in samples:
        out = model.sample_density(x["image"], x["motion_app"], x["motion"], points, motion_scale=scale)
        assert out["sigma"].shape == sigma.shape and out["rgb"].shape[:2] == sigma.shape[:2]
        torch.testing.assert_close(out["sigma"].detach(), sigma, atol=1e-6, rtol=1e-5)
        assert torch.equal(out["canonical"], points)
    planes = _forward(model, x, motion_scale=scale, deterministic=True)["planes"]
    points = samples[0][0]
    out = model.sample_density(x["image"], x["motion_app"], x["motion"], points, motion_scale=scale)
    torch.testing.assert_close(plane_features(model, planes, points), out["triplane_feature"], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="points"):
        model.sample_density(x["image"], x["motion_app"], x["motion"], points[..., :2])


def test_sample_density_with_head_pose_deformation(flame_buffers: dict[str, torch.Tensor],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = _with_deformer(flame_buffers)
    x = _inputs()
    pose = HeadPose(torch.tensor([[0.0, 0.4, 0.0, 0, 0, 0], [0.2, -0.3, 0.1, 0, 0, 0]]), shape=torch.randn(2, 300) * 0.5)
    samples = _renderer_samples(model, x, monkeypatch, head_pose=pose)
    for points, sigma in samples:
        out = model.sample_density(x["image"], x["motion_app"], x["motion"], points, head_pose=pose)
        torch.testing.assert_close(out["sigma"].detach(), sigma, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(out["canonical"], points)


# ----------------------------------------------------------------------------------------------------------
# deformation and box scale


def test_head_pose_in_the_training_forward(flame_buffers: dict[str, torch.Tensor]) -> None:
    model = _with_deformer(flame_buffers)
    x = _inputs()
    plain = _forward(model, x, deterministic=True)
    zeros = _forward(model, x, head_pose=zero_head_pose(2), deterministic=True)
    for k in ("image", "image_depth", "seg"):  # the official zero-parameter deformer: identity up to rounding
        torch.testing.assert_close(zeros[k], plain[k], atol=2e-3, rtol=1e-3)
    pose = HeadPose(torch.tensor([[0.0, 0.5, 0.0, 0, 0, 0]] * 2))
    turned = _forward(model, x, head_pose=pose, deterministic=True)
    assert (turned["image"] - plain["image"]).abs().max() > 1e-2
    field = model.head_pose_field(pose, None, 2)
    again = _forward(model, x, head_pose=field, deterministic=True)
    for k in TRAIN_OUTPUTS:
        assert torch.equal(again[k], turned[k]), k


def test_per_sample_box_warp_scale(model: Portrait4D) -> None:
    x = _inputs()
    plain = _forward(model, x, deterministic=True)
    scaled = _forward(model, x, deterministic=True, box_warp_scale=torch.tensor([0.97, 1.0]))
    torch.testing.assert_close(scaled["image"][1:], plain["image"][1:], atol=1e-5, rtol=1e-5)
    assert (scaled["image"][:1] - plain["image"][:1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="box_warp_scale"):
        _forward(model, x, box_warp_scale=torch.ones(3))


# ----------------------------------------------------------------------------------------------------------
# gradients


def test_gradients_flow_to_every_module() -> None:
    model = Portrait4D.tiny().train()
    x = _inputs()
    out = _forward(model, x)
    loss = sum(out[k].mean() for k in TRAIN_OUTPUTS if k != "interval")
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None and "noise_strength" not in n]
    assert not missing  # noise_strength: noise_mode 'none', unused (as upstream)
    for prefix in ("encoder_global.", "encoder_detail.", "encoder_canonical.maps.", "encoder_canonical.maps_neutral.",
                   "encoder_canonical.trans_blocks_motion.0.attn2.", "generator_triplane.", "background.",
                   "decoder.out_sigma.", "superresolution."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix) and "noise_strength" not in n]
        assert grads and all(torch.isfinite(g).all() for g in grads), prefix
        assert any(g.abs().max() > 0 for g in grads), prefix
    model.zero_grad(set_to_none=True)

    # motion scale 0: the cross-attention still runs and gets zero (not missing) gradients, as upstream
    out = _forward(model, x, motion_scale=0.0)
    sum(out[k].mean() for k in ("image_sr", "image", "seg")).backward()
    attn2 = [p.grad for n, p in model.named_parameters() if ".attn2." in n or "proj_y" in n or ".maps" in n]
    assert attn2 and all(g is not None and not g.any() for g in attn2)
    assert model.encoder_global.encoder.conv1.weight.grad.abs().max() > 0
    model.zero_grad(set_to_none=True)

    # the v1 density regulariser through sample_density
    pts = torch.rand(2, 100, 3) * 1.3 - 0.65
    pts = torch.cat([pts, pts + torch.randn_like(pts) * 0.004 * 1.3], 1)
    sigma = model.sample_density(x["image"], x["motion_app"], x["motion"], pts,
                                 motion_scale=half_static_motion_scale(2))["sigma"]
    torch.nn.functional.l1_loss(sigma[:, :100], sigma[:, 100:]).backward()
    for p in (model.decoder.out_sigma.weight, model.encoder_global.encoder.conv1.weight,
              model.generator_triplane.conv_last.weight):
        assert p.grad is not None and p.grad.abs().max() > 0


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients() -> None:
    """Recomputed activations (random ray samples included: the random state is restored) give the numbers of
    the plain pass."""
    from avatar.models.portrait4d.training import train_forward

    model = Portrait4D.tiny().train()
    x = _inputs()
    results = []
    for checkpointing in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        out = train_forward(model, x["image"], x["motion_app"], x["motion"], x["camera"], NR,
                            gradient_checkpointing=checkpointing)
        sum(out[k].float().mean() for k in ("image_sr", "image", "seg", "image_depth")).backward()
        results.append(({k: v.detach() for k, v in out.items()},
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (out_a, grad_a), (out_b, grad_b) = results
    for k in out_a:
        torch.testing.assert_close(out_b[k], out_a[k], rtol=0, atol=0, msg=k)
    assert grad_a.keys() == grad_b.keys() and len(grad_a) > 50
    for n in grad_a:
        torch.testing.assert_close(grad_b[n], grad_a[n], rtol=1e-5, atol=1e-7, msg=n)


# ----------------------------------------------------------------------------------------------------------
# errors and the comparison script


def test_bad_arguments_raise_value_error(model: Portrait4D) -> None:
    x = _inputs()
    for nr in (0, 256):
        with pytest.raises(ValueError, match="neural_rendering_resolution"):
            _forward(model, x, neural_rendering_resolution=nr)
    with pytest.raises(ValueError, match="driving_motion"):
        model.train_forward(x["image"], x["motion_app"], None, x["camera"])
    with pytest.raises(ValueError, match="camera"):
        model.train_forward(x["image"], x["motion_app"], x["motion"], x["camera"][:, :16])


def _comparison_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "compare_official_portrait4d_training.py"
    spec = importlib.util.spec_from_file_location("compare_official_portrait4d_training", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_comparison_script_skips_without_a_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    assert _comparison_script().main([]) == 2
    assert "comparison skipped" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PORTRAIT4D_REPO"), reason="set PORTRAIT4D_REPO to an official checkout")
def test_matches_the_official_training_forward() -> None:
    args = ["--official", os.environ["PORTRAIT4D_REPO"], "--resolutions", "64", "--skip", "g_fix"]
    if os.environ.get("PORTRAIT4D_EXTRA_PATH"):
        args += ["--extra-path", os.environ["PORTRAIT4D_EXTRA_PATH"]]
    assert _comparison_script().main(args) == 0
