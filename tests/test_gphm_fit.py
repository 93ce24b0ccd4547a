"""GPHM monocular fitting (avatar/fitting/gphm_fit.py), the `avatar fit` command and the monocular benchmark
script (scripts/gphm_monocular_eval.py): tiny models on a synthetic prepared video at 16-32 pixels on the CPU;
one run on real frames of ../shared/media (skipped without it or mediapipe)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.cli import main as cli_main
from avatar.errors import ConfigError, InputError, InputNotFoundError
from avatar.fitting import PreparedVideo
from avatar.fitting import video_data as vd
from avatar.fitting.gphm_fit import (
    CHECKPOINT,
    FitConfig,
    fit_gphm_avatar,
    head_template,
    load_gphm_avatar,
    render_frames,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = Path(os.environ.get("AVATAR_SHARED_MEDIA", REPO.parent / "shared" / "media"))
VIDEO = SHARED_MEDIA / "videos" / "talk3.mp4"


def _load_script():
    spec = importlib.util.spec_from_file_location("gphm_monocular_eval", REPO / "scripts" / "gphm_monocular_eval.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gphm_monocular_eval"] = module
    spec.loader.exec_module(module)
    return module


evalscript = _load_script()


def make_prepared(root: Path, frames: int = 6, res: int = 32, seed: int = 0) -> PreparedVideo:
    """A synthetic folder in prepare_video's format: a lit ellipse (the head) on grey, moving a little."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / vd.CHUNKS_DIR).mkdir(exist_ok=True)
    k = vd.intrinsics(res)
    template = vd._expression_template()
    yy, xx = np.mgrid[0:res, 0:res] + 0.5
    arrays: dict[str, np.ndarray] = {"frame_index": np.arange(frames, dtype=np.int64), "skipped": np.zeros(0, np.int64)}
    rots, trans, points = [], [], []
    for j in range(frames):
        yaw = 0.05 * math.sin(j)
        c, s = math.cos(yaw), math.sin(yaw)
        r = np.diag([1.0, -1.0, -1.0]) @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        t = np.array([0.002 * j, 0.0, 1.8])
        cx, cy = res / 2 + 0.3 * j, res / 2
        inside = ((xx - cx) / (0.3 * res)) ** 2 + ((yy - cy) / (0.38 * res)) ** 2 < 1
        img = np.full((res, res, 3), 90, np.uint8)
        img[inside] = (np.stack([xx, yy, 255 - xx], -1)[inside] * [6, 5, 1]).clip(0, 255).astype(np.uint8)
        arrays[f"image_{j:04d}"] = img
        arrays[f"matte_{j:04d}"] = (inside * 255).astype(np.uint8)
        rots.append(r)
        trans.append(t)
        pts = template + rng.normal(0, 0.05, template.shape)
        pts[13:15, 1] += 0.3 * math.sin(j)  # the lips move
        points.append(pts)
    arrays["rotation"] = np.stack(rots).astype(np.float32)
    arrays["translation"] = np.stack(trans).astype(np.float32)
    arrays["points"] = np.stack(points).astype(np.float32)
    arrays["landmarks"] = np.zeros((frames, 478, 3), np.float32)
    arrays["pose_scale"] = np.ones(frames, np.float32)
    arrays["reprojection_px"] = np.zeros(frames, np.float32)
    name = f"{vd.CHUNKS_DIR}/chunk_00000.npz"
    np.savez_compressed(root / name, **arrays)
    manifest = {"format": vd.FORMAT_NAME, "version": vd.FORMAT_VERSION, "status": "complete",
                "settings": {"video": "fake.mp4"}, "video": {"name": "fake.mp4", "width": res, "height": res,
                                                              "fps": "25/1", "num_frames": frames},
                "crop": {"x0": 0, "y0": 0, "side": res}, "resolution": res, "K": k.tolist(),
                "chunks": [{"index": 0, "file": name, "first": 0, "last": frames, "frames": frames}],
                "skipped": {}, "frames": frames}
    (root / vd.MANIFEST).write_text(json.dumps(manifest))
    return PreparedVideo(root)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedVideo:
    return make_prepared(tmp_path_factory.mktemp("fake_prepared"))


def _tiny(**changes) -> FitConfig:
    return FitConfig.tiny(**{"resolution": 16, "num_points": 64, **changes})


def _state(avatar) -> dict[str, torch.Tensor]:
    return {**{f"a.{k}": v for k, v in avatar.avatar.state_dict().items()},
            **{f"s.{k}": v for k, v in avatar.signals.state_dict().items()}}


# ----------------------------------------------------------------------------------------------------------
# the template and the fit


def test_head_template_shapes_and_face_in_front():
    points, landmarks = head_template(2000, 68, generator=torch.Generator().manual_seed(0))
    assert points.shape == (2000, 3) and landmarks.shape == (68, 3)
    assert torch.isfinite(points).all()
    head = points[:900]  # the face part comes first
    assert head[:, 2].max() > 0.3 and 0.35 < head[:, 1].max() - head[:, 1].min() < 0.9  # a face ~17 cm tall
    assert (landmarks[:, 2] > -0.05).all() and landmarks[:, 2].max() > 0.3  # on the face, in front


def test_loss_decreases_on_a_fixed_batch(tmp_path, prepared):
    two = prepared.subset([0, 3])
    losses = []
    fit_gphm_avatar(two, tmp_path / "a", config=_tiny(identity_steps=4, finetune_steps=16, batch_size=2),
                    device="cpu", progress=False, on_step=lambda stage, step, loss: losses.append(loss))
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])


def test_interrupt_and_resume_matches_an_uninterrupted_fit(tmp_path, prepared):
    config = _tiny(identity_steps=3, finetune_steps=4, checkpoint_every=100)
    straight = fit_gphm_avatar(prepared, tmp_path / "a", config=config, device="cpu", progress=False)
    assert (straight.identity_steps, straight.finetune_steps, straight.resumed) == (3, 4, False)

    def stop_at(when):
        def hook(stage, step, loss):
            if (stage, step) == when:
                raise KeyboardInterrupt
        return hook

    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):  # in stage 1
        fit_gphm_avatar(prepared, out, config=config, device="cpu", progress=False, on_step=stop_at((1, 2)))
    assert (out / CHECKPOINT).is_file()
    with pytest.raises(KeyboardInterrupt):  # in stage 2
        fit_gphm_avatar(prepared, out, config=config, device="cpu", progress=False, on_step=stop_at((2, 1)))
    resumed = fit_gphm_avatar(prepared, out, config=config, device="cpu", progress=False)
    assert resumed.resumed and resumed.finetune_steps == 4
    a, b = _state(straight.avatar), _state(resumed.avatar)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    again = fit_gphm_avatar(prepared, out, config=config, device="cpu", progress=False)  # finished: returned
    assert again.stopped_by == "finished"
    # the learned training-frame pose corrections survive in the finished record
    assert resumed.pose_corrections.shape == (len(prepared), 6) and resumed.pose_corrections.abs().sum() > 0
    assert torch.equal(again.pose_corrections, resumed.pose_corrections)
    assert torch.equal(straight.pose_corrections, resumed.pose_corrections)
    with pytest.raises(InputError, match="other settings"):
        fit_gphm_avatar(prepared, out, config=config.replace(num_points=80), device="cpu", progress=False)

    # the saved avatar reloads and renders the same
    loaded = load_gphm_avatar(out)
    items = [prepared[i] for i in range(3)]
    ex = torch.stack([it["expression"] for it in items])
    poses = torch.stack([it["world_to_camera"] for it in items])
    first = render_frames(resumed.avatar, ex, poses, batch_size=2)
    second = render_frames(out, ex, poses, device="cpu")
    assert first.shape == (3, 3, 16, 16) and first.min() >= 0 and first.max() <= 1
    assert torch.allclose(first, second, atol=1e-6)
    assert torch.allclose(loaded.render_images(ex, poses), first, atol=1e-6)
    manifest = json.loads((out / "avatar.json").read_text())
    assert manifest["fit"]["finetune_steps"] == 4 and manifest["resolution"] == 16
    assert "D-SSIM" in manifest["fit"]["losses"] and not manifest["fit"]["perceptual"]


def test_time_budget_stops_the_fit(tmp_path, prepared):
    result = fit_gphm_avatar(prepared, tmp_path, config=_tiny(identity_steps=2, finetune_steps=10_000,
                                                              time_budget_s=0.5), device="cpu", progress=False)
    assert result.stopped_by == "time" and result.finetune_steps < 10_000
    assert (tmp_path / "avatar.json").is_file()


def test_bad_inputs(tmp_path, prepared):
    with pytest.raises(ConfigError, match="batch_size"):
        FitConfig(batch_size=0)
    with pytest.raises(ConfigError, match="time_budget_s"):
        FitConfig(time_budget_s=-1.0)
    with pytest.raises(ConfigError, match="perceptual"):
        FitConfig(perceptual="vgg")
    with pytest.raises(ConfigError, match="multiple of"):
        fit_gphm_avatar(prepared, tmp_path / "r", config=_tiny(resolution=18), device="cpu", progress=False)
    with pytest.raises(InputError, match="no frames"):
        fit_gphm_avatar(prepared.subset([]), tmp_path / "e", config=_tiny(), device="cpu", progress=False)
    with pytest.raises(InputNotFoundError):
        load_gphm_avatar(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        fit_gphm_avatar(prepared, tmp_path / "file", config=_tiny(), device="cpu", progress=False)


# ----------------------------------------------------------------------------------------------------------
# avatar fit


def test_cli_fit_errors(tmp_path, capsys):
    assert cli_main(["fit", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "out")]) == 1
    assert "does not exist" in capsys.readouterr().err
    fake = tmp_path / "clip.mp4"
    fake.write_bytes(b"not a video")
    assert cli_main(["fit", str(fake), "-o", str(tmp_path / "out"), "--resolution", "18"]) == 1
    assert "multiple of 4" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", str(fake), "-o", str(tmp_path / "out"), "--minutes", "0"])
    assert exc.value.code == 1
    assert cli_main(["fit", str(fake), "-o", str(tmp_path / "out"), "--from-model", str(tmp_path / "nope")]) == 1
    assert cli_main(["fit", str(fake), "-o", str(tmp_path / "out"), "--device", "cpu", "--steps", "2"]) == 1
    assert "clip.mp4" in capsys.readouterr().err  # unreadable video: one sentence, exit 1


# ----------------------------------------------------------------------------------------------------------
# the benchmark script


def test_pack_unpack_round_trip(tmp_path, prepared):
    pack = evalscript.pack_prepared(prepared.root, tmp_path / "v.npz")
    packed = evalscript.PackedVideo(pack)
    assert len(packed) == len(prepared) and packed.resolution == prepared.resolution
    for i in (0, len(prepared) - 1):
        a, b = prepared[i], packed[i]
        assert a.keys() == b.keys()
        assert (a["image"] - b["image"]).abs().mean() < 0.02  # JPEG quality 95
        assert torch.equal(a["mask"], b["mask"])  # PNG
        for key in ("R", "t", "world_to_camera", "K", "expression", "frame_index"):
            assert torch.equal(a[key], b[key]), key
    train, test = packed.split(0.8)
    ptrain, ptest = prepared.split(0.8)
    assert np.array_equal(train.frame_indices, ptrain.frame_indices)
    assert np.array_equal(test.frame_indices, ptest.frame_indices)
    assert torch.equal(packed.median_expression(), prepared.median_expression())
    folder = evalscript.unpack(pack, tmp_path / "unpacked")
    back = PreparedVideo(folder)
    assert len(back) == len(prepared)
    assert torch.equal(back[2]["image"], packed[2]["image"])
    assert evalscript.main(["unpack", str(tmp_path / "missing.npz"), "-o", str(tmp_path / "u2")]) == 1


def test_eval_script_tiny_run(tmp_path, prepared, capsys):
    packs = tmp_path / "packs"
    evalscript.pack_prepared(prepared.root, packs / "fake.npz")
    out = tmp_path / "results"
    rc = evalscript.main(["--tiny", "--steps", "3", "--max-frames", "10", "--prepared-dir", str(packs), "--out",
                          str(out), "--device", "cpu", "--speed-iters", "1", "-q", "--fit-option",
                          "lr_final_factor=0.5", "--test-pose-steps", "2"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["fit_config"]["lr_final_factor"] == 0.5
    row = results["videos"]["fake"]
    assert row["train_frames"] + row["test_frames"] == 6 and row["finetune_steps"] == 3
    assert 0 < row["psnr"] < 100 and -1 <= row["ssim"] <= 1
    assert row["lpips"] == "n/a" or isinstance(row["lpips"], float)
    assert [s["batch"] for s in row["speed"]] == [1, 8] and all(s["frames_per_s"] > 0 for s in row["speed"])
    assert Path(row["grid"]).is_file()
    refined = row["pose_refined"]
    assert refined["steps"] == 2 and 0 < refined["psnr"] < 100 and refined["mean_translation_cm"] > 0
    assert len(row["learned_corrections"]) == row["train_frames"] and len(refined["corrections"][0]) == 6
    carried = row["carried_correction"]  # the last training frames' mean correction, no held-out image used
    assert 0 < carried["psnr"] < 100 and len(carried["rotation_deg"]) == 3 and len(carried["translation_cm"]) == 3
    assert carried["gap_rotation_deg"] >= 0 and len(carried["refined_mean_translation_cm"]) == 3
    check = row["train_check"]  # the last training frames, scored as the held-out ones are
    assert check["frames"] == min(row["test_frames"], row["train_frames"])
    for key in ("prepared", "fitted", "refined"):
        assert 0 < check[key]["psnr"] < 100, key
    assert check["learned_mean_rotation_deg"] >= 0 and check["refined"]["mean_translation_cm"] > 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "held-out poses refined (2 steps" in printed
    assert "training frames: prepared poses PSNR" in printed
    assert "held-out with the last training frames' mean correction" in printed
    assert evalscript.main(["--prepared-dir", str(tmp_path / "none"), "--out", str(out), "-q"]) == 1
    assert evalscript.main(["--prepared-dir", str(packs), "--out", str(out), "-q", "--fit-option", "nope=1"]) == 1
    with pytest.raises(SystemExit):
        evalscript.main(["--minutes", "0", "--out", str(out)])


@pytest.mark.skipif(not VIDEO.is_file() or importlib.util.find_spec("mediapipe") is None,
                    reason="needs ../shared/media/videos/talk3.mp4 and mediapipe")
def test_eval_script_on_real_frames(tmp_path):
    out = tmp_path / "real"
    rc = evalscript.main([str(VIDEO), "--tiny", "--steps", "3", "--max-frames", "10", "--out", str(out),
                          "--device", "cpu", "--speed-iters", "1", "-q"])
    assert rc == 0
    row = json.loads((out / "results.json").read_text())["videos"]["talk3"]
    assert row["train_frames"] == 8 and row["test_frames"] == 2 and math.isfinite(row["psnr"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_driving_signal_reference_on_cuda() -> None:
    """set_reference on CUDA tensors (a device mismatch here stopped the first GPU fit)."""
    from avatar.models.gphm.signals import DrivingSignalConfig, DrivingSignalEncoder

    enc = DrivingSignalEncoder(DrivingSignalConfig.tiny()).cuda()
    n = 5
    poses = torch.eye(4, device="cuda").repeat(n, 1, 1)
    enc.set_reference(torch.randn(n, enc.config.input_dim, device="cuda"), poses)
    assert torch.allclose(enc.reference_rotation, torch.eye(3, device="cuda"), atol=1e-6)


def test_warm_up_inputs_render_on_the_reference_rasterizer():
    """The gsplat warm-up call (CUDA only) uses inputs the rasteriser accepts: checked here on the reference."""
    from avatar.fitting.gphm_fit import _warm_up_inputs
    from avatar.render.gaussians import rasterize_gaussians

    tensors, width, height = _warm_up_inputs(torch.device("cpu"))
    out = rasterize_gaussians(*tensors, width, height, backend="reference")
    assert out.features.shape == (1, 3, height, width)
    assert out.alpha[0, 0, height // 2, width // 2] > 0.5


def test_stage2_schedule_follows_steps_or_the_time_budget() -> None:
    """Stage-2 rates decay by the larger of the step fraction and the fraction of the stage's time budget spent, so
    a fit that the budget ends still reaches the final rates (positions: means_lr_final_factor; the rest:
    lr_final_factor)."""
    from types import SimpleNamespace

    from avatar.fitting.gphm_fit import FitConfig, _Fitter, _State

    config = FitConfig(finetune_steps=1000, time_budget_s=100.0, lr_final_factor=0.1)
    fitter = SimpleNamespace(config=config)
    state = _State(2, 0, 20.0, [], torch.zeros(0, dtype=torch.long), 0, stage2_start=20.0)
    assert _Fitter.stage2_progress(fitter, state) == 0.0
    state.step, state.elapsed = 100, 60.0  # 10 % of the steps, half of the stage's 80 s
    assert _Fitter.stage2_progress(fitter, state) == pytest.approx(0.5)
    state.step, state.elapsed = 900, 30.0  # steps ahead of time
    assert _Fitter.stage2_progress(fitter, state) == pytest.approx(0.9)
    state.elapsed = 500.0
    assert _Fitter.stage2_progress(fitter, state) == 1.0
    # the rates themselves
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.Adam([{"params": [params[0]], "lr": 1.6e-4}, {"params": [params[1]], "lr": 1e-3}])
    fitter = SimpleNamespace(config=config, optimizer=opt, base_lrs=[1.6e-4, 1e-3],
                             stage2_progress=lambda s: _Fitter.stage2_progress(fitter, s))
    state.step, state.elapsed = 100, 60.0
    _Fitter.set_stage2_lrs(fitter, state)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.6e-4 * 0.01**0.5)
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-3 * 0.1**0.5)
    no_budget = SimpleNamespace(config=config.replace(time_budget_s=None))
    assert _Fitter.stage2_progress(no_budget, state) == pytest.approx(0.1)


def test_refine_poses_recovers_a_known_pose_offset() -> None:
    """Frames rendered with known corrections: refining from zero moves the corrections towards them and the
    renders towards the frames (refine network replaced by the raw RGB upsampled, so the image follows the pose)."""
    import torch.nn.functional as F

    from avatar.bench.gphm import driving_signals, template_avatar
    from avatar.fitting.gphm_fit import refine_poses, render_frames

    av = template_avatar(800, 32, torch.device("cpu")).eval()
    up = av.avatar.config.refine.upsample
    with torch.no_grad():
        av.avatar.colors.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
        av.avatar.log_scales.add_(0.5)
    av.avatar._refine_image = lambda f: F.interpolate(f[:, :3], scale_factor=up, mode="bilinear")
    e, p = driving_signals(2, av.signals.config.input_dim)
    true = torch.tensor([[0.03, -0.02, 0.0, 0.8, -0.5, 0.3], [-0.02, 0.03, 0.01, -0.6, 0.4, 0.0]])
    target = render_frames(av, e, p, corrections=true)
    before = (render_frames(av, e, p) - target).abs().mean()
    corr = refine_poses(av, target, e, p, steps=30, pose_weight=0.0)
    after = (render_frames(av, e, p, corrections=corr) - target).abs().mean()
    assert after < 0.5 * before
    assert (corr - true).norm() < 0.7 * true.norm()
    assert all(q.requires_grad for q in av.avatar.parameters())  # the avatar's flags restored
    with pytest.raises(InputError, match="one F"):
        refine_poses(av, target[:1], e, p)
    with pytest.raises(InputError, match="corrections"):
        render_frames(av, e, p, corrections=true[:1])
