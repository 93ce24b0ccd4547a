"""GenHead training: the recipe's official constants, the loss pieces (GPC, distortion loss, part regularisers, the
condition draws), every phase on tiny networks, and ``train/genhead.py`` end to end (train, export, card, exact
resume) on tiny image data."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from avatar.errors import ConfigError
from train.core import apply_overrides
from train.core.phases import PhaseContext
from train.core.state import LoopState
from train.recipes.genhead import GENHEAD_RECIPE, PartRegularizerWeights, recipe
from train.recipes.genhead_loss import (
    PHASES,
    ConditionSampler,
    GenHeadLoss,
    gpc_conditioning,
    lossfun_distortion,
    part_regularizers,
)

pytest.importorskip("pyarrow")

NR = 16  # the tiny GenHead's training resolution (the released one renders at 64)


def write_toy_images(root: Path, n: int = 3, size: int = 64, seed: int = 0) -> Path:
    """``n`` smooth colour images with a disc matte, cameras a few degrees around the front, small FLAME parameters
    (with a neck rotation, which training zeroes); a Parquet dataset of kind ``images``."""
    from avatar.render.camera import view_label
    from train.data import TrainDataWriter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    disc = ((((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.12) * 255).astype(np.uint8)
    with TrainDataWriter(root, "images", 8) as writer:
        for i in range(n):
            image = (np.stack([np.sin(6 * xx + i), np.cos(5 * yy + i), xx * yy], -1) % 1 * 255).astype(np.uint8)
            label = np.zeros(437, np.float32)
            label[:25] = view_label(float(rng.uniform(-10, 10)), float(rng.uniform(-5, 5)))[0].numpy()
            label[25:325] = rng.normal(scale=0.3, size=300)
            label[325:425] = rng.normal(scale=0.3, size=100)
            label[425:428] = rng.normal(scale=0.1, size=3)
            label[428] = rng.uniform(0, 0.2)
            writer.add_image(image, disc, label, rng.normal(size=8).astype(np.float32))
    return root


@pytest.fixture(scope="module")
def toy_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_images(tmp_path_factory.mktemp("genhead") / "images")


# ----------------------------------------------------------------------------------------------------------
# the recipe


def test_recipe_holds_the_official_values() -> None:
    r = GENHEAD_RECIPE
    assert (r.gpus, r.batch, r.batch_per_gpu, r.kimg, r.nr_initial, r.nr_final) == (4, 32, 8, 25000, 64, None)
    lr, betas = r.adam("G")  # lazy regularisation every 4: x 4/5
    assert lr == pytest.approx(0.002) and betas == (0.0, pytest.approx(0.99 ** 0.8))
    lr, betas = r.adam("D")  # every 16: x 16/17
    assert lr == pytest.approx(0.002 * 16 / 17) and betas[1] == pytest.approx(0.99059, abs=1e-5)
    assert (r.r1_gamma, r.r1_gamma_uv, r.r1_gamma_seg, r.d_reg_interval) == (1.0, 10.0, 1.0, 16)
    assert (r.density_reg, r.density_reg_p_dist, r.g_reg_interval) == (0.25, 0.004, 4)
    assert (r.ema_kimg, r.ema_rampup, r.snapshot_steps()) == (10.0, 0.05, 6250)
    assert r.parts == PartRegularizerWeights(10, 100, 100, 10, 100, 100)
    # blur 10 -> 0 over 200 kimg at batch 32, over batch * 200 / 32 kimg at another batch
    assert [r.blur_sigma(n) for n in (0, 100_000, 200_000, 300_000)] == [10.0, 5.0, 0.0, 0.0]
    r8 = r.with_batch(8)
    assert r8.blur_sigma(25_000) == pytest.approx(5.0) and r8.ema_kimg == 2.5
    resumed = r.resumed()  # the official --resume: no EMA ramp-up, no blur, no GPC fade
    assert (resumed.ema_rampup, resumed.blur_sigma(0), resumed.swapping_prob(0)) == (None, 0.0, 0.5)
    assert recipe(resume_blur=True).resumed().blur_sigma(0) == 10.0


def test_gpc_schedule_and_roll() -> None:
    r = GENHEAD_RECIPE
    assert [r.swapping_prob(n) for n in (0, 500_000, 1_000_000, 5_000_000)] == [1.0, 0.75, 0.5, 0.5]
    assert recipe(gpc_reg_prob=None).swapping_prob(0) is None
    c, shape = torch.arange(3.0)[:, None].repeat(1, 25), torch.arange(3.0)[:, None].repeat(1, 300) + 10
    cam, shp = gpc_conditioning(c, shape, 1.0)  # always swapped: each sample takes its predecessor's [c, shape]
    assert torch.equal(cam[:, 0], torch.tensor([2.0, 0.0, 1.0])) and torch.equal(shp[:, 0], cam[:, 0] + 10)
    cam, shp = gpc_conditioning(c, shape, 0.0)
    assert torch.equal(cam, c) and torch.equal(shp, shape)
    cam, shp = gpc_conditioning(c, shape, None)  # GPC off: zeros
    assert not cam.any() and not shp.any()
    torch.manual_seed(0)
    gpc_conditioning(c, shape, 0.5, per_sample=False)  # Greg: one scalar draw for the batch
    after = torch.get_rng_state()
    torch.manual_seed(0)
    torch.rand([])
    assert torch.equal(after, torch.get_rng_state())
    torch.manual_seed(0)
    mixed, _ = gpc_conditioning(c, shape, 0.5)  # Gmain / Dmain: rand(B, 1), per sample
    torch.manual_seed(0)
    keep = torch.rand(3, 1) < 0.5
    assert torch.equal(mixed, torch.where(keep, torch.roll(c, 1, 0), c))


def test_overrides_are_typed_and_checked() -> None:
    r = apply_overrides(GENHEAD_RECIPE, ("parts.eye_t=0", "gpc_reg_prob=none", "betas=0.1,0.9", "nr_initial=32"))
    assert (r.parts.eye_t, r.parts.face_eye, r.gpc_reg_prob, r.betas, r.nr_initial) == (0.0, 10.0, None, (0.1, 0.9),
                                                                                           32)
    with pytest.raises(ConfigError, match="expected KEY=VALUE with KEY one of"):
        apply_overrides(GENHEAD_RECIPE, ("speed=11",))
    with pytest.raises(ConfigError, match="'many' is not a valid value for nr_initial"):
        apply_overrides(GENHEAD_RECIPE, ("nr_initial=many",))
    with pytest.raises(ConfigError, match="KEY one of"):
        apply_overrides(GENHEAD_RECIPE, ("name=x",), exclude=("name",))


# ----------------------------------------------------------------------------------------------------------
# loss pieces


def test_distortion_loss_is_the_double_integral() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.sort(torch.rand(3, 7, generator=g) * 4 + 2, dim=-1).values
    w = torch.rand(3, 6, generator=g)
    mid = (t[:, 1:] + t[:, :-1]) / 2
    ref = torch.stack([sum(w[b, i] * w[b, j] * (mid[b, i] - mid[b, j]).abs() for i in range(6) for j in range(6))
                       + sum(w[b, i] ** 2 * (t[b, i + 1] - t[b, i]) for i in range(6)) / 3 for b in range(3)])
    torch.testing.assert_close(lossfun_distortion(t, w), ref)


def _fake_output(eye: torch.Tensor, mouth: torch.Tensor, rays: int = 16, samples: int = 6) -> types.SimpleNamespace:
    g = torch.Generator().manual_seed(1)
    b = eye.shape[0]
    render = types.SimpleNamespace(
        all_depths=torch.sort(torch.rand(b, rays, samples, 1, generator=g), dim=2).values + 3,
        weights=torch.rand(b, rays, samples - 1, 1, generator=g),
        face_density_in_eye=torch.randn(b, rays, samples, 1, generator=g),
        face_density_in_mouth=torch.randn(b, rays, samples, 1, generator=g))
    return types.SimpleNamespace(t_bg=torch.rand(b, 1, 4, 4, generator=g) + 0.1, render=render,
                                 masks=types.SimpleNamespace(eye=eye, mouth=mouth))


def test_part_regularisers_vanish_where_their_masks_are_empty() -> None:
    eye = torch.zeros(2, 1, 4, 4)
    eye[1, 0, 1, 2] = 1.0  # sample 1 has one eye pixel, sample 0 none
    out = _fake_output(eye, torch.zeros(2, 1, 4, 4))
    terms = part_regularizers(out, PartRegularizerWeights())  # type: ignore[arg-type]
    assert set(terms) == {"loss_face_eye", "loss_eye_density", "loss_eye_T", "loss_face_mouth",
                          "loss_mouth_density", "loss_mouth_T"}
    for name, value in terms.items():
        assert value.shape == (2, 1), name
        if "mouth" in name:
            assert not value.any(), name  # empty mouth masks
        else:
            assert value[0, 0] == 0 and value[1, 0] > 0, name
    # the values: one pixel (ray 6) of 16, weights 10 / 100 / 100
    r = out.render
    torch.testing.assert_close(terms["loss_eye_T"][1, 0], out.t_bg[1, 0, 1, 2] / 16 * 100)
    torch.testing.assert_close(terms["loss_face_eye"][1, 0],
                               torch.nn.functional.softplus(r.face_density_in_eye[1, 6]).sum() / (16 * 6) * 10)
    dist = lossfun_distortion(r.all_depths[1, 6, :, 0], r.weights[1, 6, :, 0])
    torch.testing.assert_close(terms["loss_eye_density"][1, 0], dist / 16 * 100)


def test_condition_draws_follow_the_official_loop() -> None:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(7, 437)).astype(np.float32)
    sampler = ConditionSampler(lambda i: table[i], len(table), z_dim=5, batch_size=4, batch_per_process=2)
    torch.manual_seed(3)
    np.random.seed(3)
    draws = sampler("cpu")
    torch.manual_seed(3)
    np.random.seed(3)
    z = torch.randn(16, 5)  # 4 phases x the global batch, first
    indices = [np.random.randint(7) for _ in range(16)]  # then one randint per label
    assert list(draws) == list(PHASES)
    for k, phase in enumerate(PHASES):
        d = draws[phase]
        rows = table[indices[4 * k:4 * k + 2]]  # the first 2 of the phase's 4
        assert torch.equal(d.z, z[4 * k:4 * k + 2])
        assert torch.equal(d.c_compose, torch.from_numpy(rows[:, :25])) and torch.equal(d.c, d.c_compose)
        assert torch.equal(d.shape, torch.from_numpy(rows[:, 25:325]))
        assert torch.equal(d.exp, torch.from_numpy(rows[:, 325:425]))
        assert not d.pose[:, :3].any() and torch.equal(d.pose[:, 3:], torch.from_numpy(rows[:, 428:431]))
        assert torch.equal(d.eye, torch.from_numpy(rows[:, 431:437]))


# ----------------------------------------------------------------------------------------------------------
# every phase on tiny networks


def _run(fn, module: torch.nn.Module, batch, phase: str, cur_nimg: int) -> dict[str, float]:
    from accelerate import Accelerator

    logged: dict[str, float] = {}
    ctx = PhaseContext(phase, 1.0, LoopState(cur_nimg=cur_nimg), Accelerator(cpu=True),
                       lambda k, v: logged.__setitem__(k, float(torch.as_tensor(v).float().mean())))
    module.zero_grad(set_to_none=True)
    module.requires_grad_(True)
    try:
        fn(batch, ctx)
    finally:
        module.requires_grad_(False)
    logged["_backward_calls"] = ctx.backward_calls
    return logged


def _reached(module: torch.nn.Module) -> set[str]:
    """Top-level submodules whose parameters got a non-zero, finite gradient."""
    out = set()
    for name, p in module.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
            if p.grad.abs().sum() > 0:
                out.add(name.split(".")[0])
    return out


def test_every_phase_runs_and_trains_its_network(toy_images: Path) -> None:
    from train.genhead import build_networks, open_dataset, training_labels

    torch.manual_seed(0)
    G, D = build_networks(init=None, init_discriminator=None, size="tiny", flame="synthetic", mbstd_group=2,
                          device=torch.device("cpu"))
    dataset = open_dataset(str(toy_images))
    loss = GenHeadLoss(recipe(nr_initial=NR), G, D)
    sampler = ConditionSampler(training_labels(dataset), len(dataset), G.config.z_dim, 2, 2,
                               G.deformer.flame_deform.flame_model)
    batch = loss.prepare(default_collate([dataset[0], dataset[1]]), sampler("cpu"))
    assert batch.image.shape == (2, 3, 512, 512) and batch.uv.shape == (2, 3, 512, 512)  # resized to G's output
    assert not batch.pose[:, :3].any() and float(batch.uv.abs().sum()) > 0  # neck zeroed, head in view
    w_avg = G.backbone.mapping.w_avg.clone()
    cur = 50_000  # blur on (sigma 7.5), GPC fading (swap prob 0.975)

    g = _run(loss.g_main, G, batch, "Gmain", cur)
    assert g["_backward_calls"] == 1
    for key in ("Loss/G/loss", "Loss/scores/fake", "Loss/G/loss_face_eye", "Loss/G/loss_eye_density",
                "Loss/G/loss_eye_T", "Loss/G/loss_face_mouth", "Loss/G/loss_mouth_density", "Loss/G/loss_mouth_T"):
        assert math.isfinite(g[key]) and (key == "Loss/scores/fake" or g[key] > 0), key
    assert {"backbone", "background", "superresolution", "decoder"} <= _reached(G)
    assert not _reached(D)  # D is frozen in the G phases

    reg = _run(loss.g_reg, G, batch, "Greg", cur)
    assert math.isfinite(reg["Loss/G/TVloss"]) and reg["Loss/G/TVloss"] > 0
    assert _reached(G) == {"backbone", "decoder"}  # the density field only
    assert torch.equal(G.backbone.mapping.w_avg, w_avg)

    d = _run(loss.d_main, D, batch, "Dmain", cur)
    assert d["_backward_calls"] == 2 and math.isfinite(d["Loss/D/loss"])
    assert {"b512", "b4", "mapping"} <= _reached(D)
    assert not torch.equal(G.backbone.mapping.w_avg, w_avg)  # run_G with update_emas moves w_avg

    r1 = _run(loss.d_reg, D, batch, "Dreg", cur)
    assert r1["Loss/D/reg"] > 0 and math.isfinite(r1["Loss/r1_penalty"])
    assert {"b512", "b4"} <= _reached(D)


# ----------------------------------------------------------------------------------------------------------
# the script


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--size", "tiny", "--flame", "synthetic", "--batch-size", "1", "--set",
            "mbstd_group=1", "--cpu", "--out-dir", str(out), "--data.num-workers", "0", "--log.trackers", "jsonl",
            "--no-log.progress-bar", "--log.image-every-steps", "0", *extra]


def _g_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def test_script_trains_exports_and_resumes_exactly(toy_images: Path, tmp_path: Path) -> None:
    """One step end to end (losses logged, image grid, export with its card), and 2 steps straight == 1 step +
    ``--resume latest`` (the generator's weights, bit for bit)."""
    from avatar.models.genhead import GenHead
    from train.genhead import main

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(_args(toy_images, split, "--max-steps", "1", "--log.image-every-steps", "1", "--grid-samples",
                      "1")) == 0
    assert (split / "images" / "grid-00000001.png").is_file()
    logs = [json.loads(line) for p in (split / "logs").rglob("*.jsonl") for line in p.read_text().splitlines()]
    keys = set().union(*logs)
    for key in ("Loss/G/loss", "Loss/G/loss_eye_T", "Loss/G/loss_mouth_density", "Loss/G/TVloss", "Loss/D/loss",
                "Loss/D/reg", "LR/G/base", "LR/D/base"):
        assert key in keys, key
    lr = next(entry for entry in logs if "LR/G/base" in entry)
    assert lr["LR/G/base"] == pytest.approx(0.002) and lr["LR/D/base"] == pytest.approx(0.002 * 16 / 17)
    export = split / "export" / "step-00000001"
    model = GenHead.from_pretrained(export)
    assert model.can_render and model.config.neural_rendering_resolution == NR
    card = (export / "README.md").read_text()
    assert "smoke-test configuration" in card and f'GenHead.from_pretrained("{export}")' in card

    assert main(_args(toy_images, split, "--max-steps", "2", "--resume", "latest")) == 0
    assert main(_args(toy_images, straight, "--max-steps", "2")) == 0
    a, b = _g_weights(straight / "checkpoints" / "step-00000002"), _g_weights(split / "checkpoints" / "step-00000002")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs from the straight one"


def test_init_from_an_export_and_push_to_hub(toy_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``--init`` takes an export (official resume settings: no EMA ramp-up, no blur), ``--push-to-hub`` fails at
    the start when offline and otherwise uploads each export in the background."""
    import huggingface_hub

    from train.genhead import main

    assert main(_args(toy_images, tmp_path / "first", "--max-steps", "1")) == 0
    export = tmp_path / "first" / "export" / "step-00000001"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(_args(toy_images, tmp_path / "off", "--max-steps", "1", "--push-to-hub", "me/gh")) == 1
    assert "--push-to-hub me/gh: HF_HUB_OFFLINE is set" in capsys.readouterr().err
    calls: list[dict] = []

    class FakeApi:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def whoami(self) -> dict:
            return {"name": "me"}

        def create_repo(self, repo_id: str, **kwargs: object) -> None:
            pass

        def upload_folder(self, **kwargs: object) -> None:
            calls.append({**kwargs, "files": sorted(p.name for p in Path(str(kwargs["folder_path"])).iterdir())})

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "tuned"
    assert main(_args(toy_images, out, "--max-steps", "1", "--init", str(export), "--push-to-hub", "me/gh")) == 0
    options = json.loads((out / "training_options.json").read_text())
    assert options["init"] == str(export) and options["ema"]["rampup"] is None
    assert len(calls) == 1 and calls[0]["repo_id"] == "me/gh"
    assert {"README.md", "config.json", "model.safetensors", "training.json"} <= set(calls[0]["files"])
    facts = json.loads((out / "export" / "step-00000001" / "training.json").read_text())
    assert facts["recipe_values"]["blur_init_sigma"] == 0.0 and facts["recipe_values"]["gpc_reg_fade_kimg"] == 0.0


def test_bad_options_are_one_clear_sentence(toy_images: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from train.genhead import main

    assert main(_args(toy_images, tmp_path / "x", "--max-steps", "1", "--set", "speed=11")) == 1
    assert "expected KEY=VALUE with KEY one of" in capsys.readouterr().err
    assert main(["--out-dir", str(tmp_path / "y"), "--max-steps", "1", "--cpu"]) == 1
    assert "--data is required" in capsys.readouterr().err
    assert main(_args(toy_images, tmp_path / "z", "--max-steps", "1", "--batch-size", "3", "--set",
                      "mbstd_group=2")) == 1
    assert "minibatch-std groups need a multiple of 2" in capsys.readouterr().err
    assert not (tmp_path / "z" / "checkpoints").exists()
