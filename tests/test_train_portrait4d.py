"""Portrait4D training: the recipe's losses (every phase of every recipe), the camera decomposition, the ArcFace
alignment, and ``train/portrait4d.py`` end to end (train, export, card, resume, Hub push) on tiny networks."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from avatar.flame import FlameCorrespondenceRenderer
from avatar.flame.camera_pose import decompose_camera_pose
from avatar.flame.synthetic import synthetic_flame_assets
from avatar.losses.arcface import FLAME_FIVE_POINTS, arcface_template, flame_alignment_matrices
from avatar.render.camera import invert_rigid, view_label
from train.core.phases import PhaseContext
from train.core.state import LoopState
from train.recipes.portrait4d import recipe
from train.recipes.portrait4d_loss import Portrait4DLoss, eye_closure_box_scale, regularizer_cameras

sys.path.insert(0, str(Path(__file__).parent))
from toy_train_data import write_toy_clips  # noqa: E402

pytest.importorskip("pyarrow")
pytest.importorskip("lpips")

NR = 32  # the tiny runs render at 32 (LPIPS-Alex needs 32 pixels); the official v2 renders at 128


@pytest.fixture(scope="module")
def renderer() -> FlameCorrespondenceRenderer:
    return FlameCorrespondenceRenderer.from_assets(**synthetic_flame_assets(0, num_landmarks=70))


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_clips(tmp_path_factory.mktemp("toy") / "clips", clips=3, frames=4)


# ----------------------------------------------------------------------------------------------------------
# geometry


def test_decompose_camera_pose_moves_the_neck_rotation_out_of_the_camera(renderer: FlameCorrespondenceRenderer
                                                                         ) -> None:
    flame = renderer.flame
    g = torch.Generator().manual_seed(0)
    b = 3
    c = torch.cat([view_label(10, -5), view_label(-20, 3), view_label(0, 0)])
    shape, exp = torch.randn(b, 300, generator=g) * 0.3, torch.randn(b, 100, generator=g) * 0.3
    pose = torch.zeros(b, 6)
    pose[:, 3] = 0.1
    # no neck rotation: the camera is unchanged
    torch.testing.assert_close(decompose_camera_pose(flame, c, shape, exp, pose), c, atol=1e-5, rtol=0)
    pose[:, :3] = torch.randn(b, 3, generator=g) * 0.3
    out = decompose_camera_pose(flame, c, shape, exp, pose)
    torch.testing.assert_close(out[:, 16:], c[:, 16:])
    # world->camera rotation loses the neck rotation: R' = R_w2c R_neck^T
    from avatar.flame.lbs import batch_rodrigues

    w2c, w2c_new = invert_rigid(c[:, :16].reshape(-1, 4, 4)), invert_rigid(out[:, :16].reshape(-1, 4, 4))
    rot = batch_rodrigues(pose[:, :3])
    torch.testing.assert_close(w2c_new[:, :3, :3], w2c[:, :3, :3] @ rot.transpose(1, 2), atol=1e-5, rtol=0)
    # the posed neck joint seen by the new camera is where the un-posed one was seen by the old camera
    eyes = torch.zeros(b, 6)
    rest = flame(shape, exp, torch.cat([torch.zeros(b, 3), pose[:, 3:]], 1), eyes, with_landmarks=False).joints[:, 1]
    posed = flame(shape, exp, pose, eyes, with_landmarks=False).joints[:, 1]

    def cam(m: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return (m[:, :3, :3] @ p.unsqueeze(-1)).squeeze(-1) + m[:, :3, 3]

    torch.testing.assert_close(cam(w2c_new, posed), cam(w2c, rest), atol=1e-5, rtol=0)


def test_flame_arcface_alignment_maps_the_five_points_to_the_template() -> None:
    g = torch.Generator().manual_seed(1)
    template = arcface_template(112)
    landmarks = torch.rand(2, 70, 2, generator=g) * 400 + 50
    # put the five points on a rotated, scaled, shifted template (y up, as projected FLAME landmarks)
    angle, scale, shift = 0.3, 3.1, torch.tensor([120.0, 80.0])
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    five_down = (template @ rot.T) * scale + shift.double()
    five_up = torch.stack([five_down[:, 0], 511 - five_down[:, 1]], -1)
    landmarks[:, list(FLAME_FIVE_POINTS)] = five_up.float()
    m = flame_alignment_matrices(landmarks, 512)
    assert m.dtype == torch.float32 and m.shape == (2, 2, 3)
    mapped = five_down.float() @ m[0, :, :2].T + m[0, :, 2]
    torch.testing.assert_close(mapped, template.float(), atol=1e-3, rtol=0)


def test_eye_closure_box_scale() -> None:
    lm = torch.zeros(2, 70, 2)
    for left, right in ((36, 39), (42, 45)):  # eye widths 10
        lm[:, left] = torch.tensor([0.0, 0.0])
        lm[:, right] = torch.tensor([10.0, 0.0])
    for up, down in ((37, 41), (38, 40), (43, 47), (44, 46)):
        lm[0, up], lm[0, down] = torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0])  # opening 2 -> ratio 0.2
    scale = eye_closure_box_scale(lm).flatten()
    torch.testing.assert_close(scale, torch.tensor([0.97 + 0.2 * 0.1, 0.97]), atol=1e-4, rtol=0)


def test_regularizer_cameras_follow_the_official_distribution() -> None:
    c = view_label(0, 0).repeat(64, 1)
    torch.manual_seed(3)
    a = regularizer_cameras(c)
    torch.manual_seed(3)
    torch.testing.assert_close(regularizer_cameras(c), a)
    torch.testing.assert_close(a[:, 16:], c[:, 16:])
    cam2world = a[:, :16].reshape(-1, 4, 4)
    origin = cam2world[:, :3, 3]
    radius = origin.norm(dim=-1)  # pivots are within 0.12 of the origin
    assert bool((radius > 3.65 - 0.15).all() and (radius < 4.45 + 0.15).all())
    yaw = torch.atan2(origin[:, 0], origin[:, 2])
    assert float(yaw.abs().max()) < 0.78 + 0.05 and float(yaw.abs().max()) > 0.3


# ----------------------------------------------------------------------------------------------------------
# every phase of every recipe


def _loss(name: str, renderer: FlameCorrespondenceRenderer, **overrides: object) -> tuple[Portrait4DLoss, object]:
    from train.recipes.portrait4d_setup import build_networks

    r = recipe(name, nr_initial=NR, nr_final=None if name == "v2" else NR * 2, **overrides)
    nets = build_networks(recipe_name=name, init=None, init_discriminator=None, g_fix=None, size="tiny",
                          motion_dim=60, loss_networks="random", flame="synthetic", device=torch.device("cpu"))
    loss = Portrait4DLoss(r, nets.G, nets.D, nets.renderer, nets.lpips, nets.arcface, nets.G_fix, nets.pdfgc,
                          motion_scale=0.0 if r.static else 1.0, half_static=name == "v1")
    return loss, nets


def _run(loss: Portrait4DLoss, fn, module: torch.nn.Module, batch, cur_nimg: float) -> dict[str, float]:
    from accelerate import Accelerator

    logged: dict[str, float] = {}
    ctx = PhaseContext("phase", 1.0, LoopState(cur_nimg=int(cur_nimg)), Accelerator(cpu=True),
                       lambda k, v: logged.__setitem__(k, float(torch.as_tensor(v).float().mean())))
    module.zero_grad(set_to_none=True)
    module.requires_grad_(True)
    try:
        fn(batch, ctx)
    finally:
        module.requires_grad_(False)
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    logged["_grad_norm"] = float(sum(g.norm() ** 2 for g in grads) ** 0.5) if grads else 0.0
    logged["_backward_calls"] = ctx.backward_calls
    return logged


@pytest.mark.parametrize("name", ["v2", "static", "v1"])
def test_every_phase_of_every_recipe(name: str, renderer: FlameCorrespondenceRenderer, toy_data: Path) -> None:
    from train.data import ClipPairDataset

    torch.manual_seed(0)
    loss, nets = _loss(name, renderer)
    ds = ClipPairDataset(toy_data)
    batch = loss.prepare(default_collate([ds[0], ds[1]]))
    assert batch.target_image.shape[-1] == 512 and batch.source_image.shape[-1] == 64
    assert batch.uv.shape == (2, 3, 512, 512) and batch.landmarks.shape == (2, 70, 2)
    late = 2e6  # past v1's 1000 kimg: identity, adversarial term and D on
    out = _run(loss, loss.g_main, nets.G, batch, late)
    assert out["_grad_norm"] > 0 and out["_backward_calls"] == 1
    for key in ("Loss/G/lrecon_lpips", "Loss/G/lrecon_l1", "Loss/G/lrecon_seg", "Loss/G/l_id", "Loss/G/loss"):
        assert math.isfinite(out[key]), key
    reg = _run(loss, loss.g_reg, nets.G, batch, late)
    assert reg["_grad_norm"] > 0
    assert ("Loss/G/Regloss_G_fix_img" if name == "v2" else "Loss/G/TVloss") in reg
    d = _run(loss, loss.d_main, nets.D, batch, late)
    assert d["_grad_norm"] > 0 and d["_backward_calls"] == 2 and math.isfinite(d["Loss/D/loss"])
    r1 = _run(loss, loss.d_reg, nets.D, batch, late)
    assert r1["_grad_norm"] > 0 and r1["Loss/D/reg"] >= 0
    if name == "v1":  # before 1000 kimg: no adversarial term, D idle
        early = _run(loss, loss.g_main, nets.G, batch, 0)
        assert "Loss/G/loss" not in early and early["_grad_norm"] > 0
        assert _run(loss, loss.d_main, nets.D, batch, 0)["_backward_calls"] == 0
        # v1's GenHead distillation targets, before 400 kimg
        from avatar.models.portrait4d.training import train_forward

        ref = train_forward(nets.G, batch.source_image, batch.source_motion, batch.driving_motion, batch.c_recon,
                            NR, deterministic=True)
        feats, plane_c = ref["image_feature"].shape[1], ref["planes"].shape[2]
        batch.depth = torch.rand(2, 1, NR, NR) + 3.5
        batch.feature = torch.rand(2, feats, NR, NR) * 2 - 1
        batch.feature_bg = torch.rand(2, feats, NR, NR) * 2 - 1
        batch.triplane = torch.cat([torch.rand(2, 50, 3) - 0.5, torch.rand(2, 50, plane_c)], -1)
        distill = _run(loss, loss.g_main, nets.G, batch, 0)
        for key in ("Loss/G/lrecon_depth", "Loss/G/lrecon_feature", "Loss/G/lrecon_triplane"):
            assert math.isfinite(distill[key]), key


def test_the_reconstruction_loss_falls_when_overfitting_one_pair(renderer: FlameCorrespondenceRenderer,
                                                                 toy_data: Path) -> None:
    """A tiny model fitted to one (source, driving) pair with Gmain alone: the L1 term falls by 1.5x or more."""
    from train.data import ClipPairDataset

    torch.manual_seed(0)
    loss, nets = _loss("v2", renderer, mot_aug_prob=0.0)
    loss.deterministic = True
    batch = loss.prepare(default_collate([ClipPairDataset(toy_data)[0]]))
    opt = torch.optim.Adam(nets.G.parameters(), lr=3e-3)
    first = last = 0.0
    for step in range(12):
        opt.zero_grad(set_to_none=True)
        out = _run(loss, loss.g_main, nets.G, batch, 0)
        opt.step()
        first, last = (out["Loss/G/lrecon_l1"], out["Loss/G/lrecon_l1"]) if step == 0 else (first, out["Loss/G/lrecon_l1"])
    assert last < first / 1.5, (first, last)


# ----------------------------------------------------------------------------------------------------------
# the script


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--recipe", "v2", "--data", str(data), "--size", "tiny", "--flame", "synthetic", "--loss-networks",
            "random", "--batch-size", "2", "--cpu", "--out-dir", str(out), "--data.num-workers", "0",
            "--set", f"nr_initial={NR}", "--log.trackers", "jsonl", "--no-log.progress-bar", *extra]


def _g_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def test_script_trains_exports_and_resumes_exactly(toy_data: Path, tmp_path: Path) -> None:
    from avatar.models.portrait4d import Portrait4D
    from train.portrait4d import main

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(_args(toy_data, straight, "--max-steps", "2", "--eval-every", "2", "--eval-clips", "1")) == 0
    assert main(_args(toy_data, split, "--max-steps", "1", "--eval-every", "2", "--eval-clips", "1")) == 0
    assert main(_args(toy_data, split, "--max-steps", "2", "--eval-every", "2", "--eval-clips", "1",
                      "--resume", "latest")) == 0
    a, b = _g_weights(straight / "checkpoints" / "step-00000002"), _g_weights(split / "checkpoints" / "step-00000002")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs from the straight one"
    export = straight / "export" / "step-00000002"
    model = Portrait4D.from_pretrained(export)
    assert model.config.encoders.motion_dim == 60
    card = (export / "README.md").read_text()
    assert "recipe\n`v2`" in card or "recipe `v2`" in card.replace("\n", " ")
    assert "model-index" in card and "psnr" in card and "random weights in this run" in card


def test_eval_benchmark_runs_eval_run_on_each_export(toy_data: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``--eval-benchmark``: python -m eval.run on the exported G_ema (driven by ``--eval-pipeline``'s
    preprocessing), its report beside the run and its metrics in the model card's model-index; bad eval.run
    arguments fail before any training."""
    import json

    import numpy as np
    from PIL import Image

    from avatar.pipelines.portrait4d import Portrait4DPipeline
    from train.portrait4d import main

    data = tmp_path / "bench"  # eval.prepare's layout: DATA/<video>/<frame>.png, aligned 512 crops
    (data / "vid0").mkdir(parents=True)
    yy, xx = np.mgrid[0:512, 0:512] / 512
    for f in range(3):
        frame = np.stack([np.sin(6 * xx + f), np.cos(5 * yy), xx * yy], -1) % 1 * 255
        Image.fromarray(frame.astype(np.uint8)).save(data / "vid0" / f"{f:06d}.png")
    pipe = Portrait4DPipeline.tiny().save_pretrained(tmp_path / "pipe")
    bench = f"--eval-benchmark=--benchmark hdtf --protocol same-identity --data {data} --metrics psnr,l1 --no-plots"
    out = tmp_path / "run"
    assert main(_args(toy_data, out, "--max-steps", "1", bench, "--eval-pipeline", str(pipe))) == 0
    report = json.loads((out / "eval" / "step-00000001" / "metrics.json").read_text())
    assert report["benchmark"] == "hdtf" and report["metrics"]["psnr"]["count"] == 2
    assert not report["comparable"]  # random loss networks: a smoke run, stamped as such
    card = (out / "export" / "step-00000001" / "README.md").read_text()
    assert "hdtf same-identity: psnr (NOT COMPARABLE" in card and "(same-identity, eval.run)" in card
    assert f"{report['metrics']['psnr']['value']:.4f}" in card
    assert f"from_pretrained(\"{out / 'export' / 'step-00000001'}\")" in card and ".partial" not in card

    assert main(_args(toy_data, tmp_path / "bad", "--max-steps", "1", "--eval-benchmark=--benchmark nope")) == 1
    assert "--eval-benchmark --benchmark nope: not valid eval.run arguments" in capsys.readouterr().err
    assert main(_args(toy_data, tmp_path / "bad", "--max-steps", "1",
                      f"--eval-benchmark=--benchmark hdtf --protocol same-identity --data {data} --out x")) == 1
    assert "remove --out" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_push_to_hub_fails_at_start_offline_and_uploads_in_the_background(toy_data: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from train.portrait4d import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(_args(toy_data, tmp_path / "off", "--max-steps", "1", "--push-to-hub", "me/p4d")) == 1
    err = capsys.readouterr().err
    assert "--push-to-hub me/p4d: HF_HUB_OFFLINE is set" in err and not (tmp_path / "off" / "checkpoints").exists()

    import huggingface_hub

    calls: list[tuple[str, dict]] = []

    class FakeApi:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def whoami(self) -> dict:
            calls.append(("whoami", {}))
            return {"name": "me"}

        def create_repo(self, repo_id: str, **kwargs: object) -> None:
            calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

        def upload_folder(self, **kwargs: object) -> None:
            folder = Path(str(kwargs["folder_path"]))
            calls.append(("upload_folder", {**kwargs, "files": sorted(p.name for p in folder.iterdir())}))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(_args(toy_data, tmp_path / "on", "--max-steps", "1", "--push-to-hub", "me/p4d")) == 0
    uploads = [kw for name, kw in calls if name == "upload_folder"]
    assert len(uploads) == 1 and uploads[0]["repo_id"] == "me/p4d"
    assert {"README.md", "config.json", "model.safetensors"} <= set(uploads[0]["files"])


def test_bad_options_are_one_clear_sentence(toy_data: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from train.portrait4d import main

    assert main(_args(toy_data, tmp_path / "x", "--max-steps", "1", "--set", "nr_initial=many")) == 1
    assert "'many' is not a valid value for nr_initial" in capsys.readouterr().err
    assert main(_args(toy_data, tmp_path / "x", "--max-steps", "1", "--set", "speed=11")) == 1
    assert "expected KEY=VALUE with KEY one of" in capsys.readouterr().err
    assert main(["--recipe", "v2", "--out-dir", str(tmp_path / "y"), "--max-steps", "1", "--cpu"]) == 1
    assert "--data is required" in capsys.readouterr().err
    assert main(_args(tmp_path / "missing", tmp_path / "z", "--max-steps", "1")) == 1
    assert "missing" in capsys.readouterr().err


def test_readme_training_commands_parse() -> None:
    """The README's training command lines are accepted by the real parsers (nothing is run)."""
    import re
    import shlex

    from train.core.cli import build_parser
    from train.portrait4d import Portrait4DTrainConfig, default_config

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [body for lang, body in re.findall(r"```([a-z]*)\n(.*?)```", text, flags=re.S) if lang == "bash"]
    lines = [line.split("  #")[0].split(" # ")[0].strip() for b in blocks for line in b.replace("\\\n", " ").splitlines()]
    lines = [re.sub(r"\s*\[[^\]]*\]", "", line).replace(" ...", "") for line in lines]
    train_lines = [line for line in lines if "train/portrait4d.py" in line]
    assert len(train_lines) >= 2
    for line in train_lines:
        argv = shlex.split(line.split("train/portrait4d.py", 1)[1])
        build_parser(Portrait4DTrainConfig, defaults=default_config("v2")).parse_args(argv)
    import train.data.convert as convert
    import train.prepare as prepare

    for module, marker in ((prepare, "-m train.prepare"), (convert, "-m train.data.convert")):
        for line in (line for line in lines if marker in line):
            module.build_parser().parse_args(shlex.split(line.split(marker, 1)[1]))
