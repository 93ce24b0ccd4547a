"""GPHM training (``train/gphm.py``, ``train/recipes/gphm*.py``) on a tiny NeRSemble-layout dataset written into
``tmp_path``: the frontal-view choice of the expression input, both stages' losses on a fixed batch, the script end
to end (export with its card, stage 2 from stage 1's run, exact resume, Hub push to a fake API), ``--help`` and the
errors of bad options."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from avatar.errors import ConfigError
from train.core import apply_overrides
from train.recipes.gphm import GPHM_RECIPE, recipe
from train.recipes.gphm_data import ExpressionViews, frontal_index

REPO = Path(__file__).resolve().parent.parent
SIZE = (64, 96)  # width, height of the stored images (= the calibration size of the fake rig)
SERIALS = ("220700191", "222200037", "222200038")  # left, middle (frontal), right
FOCAL = 128.0  # at 64 px: a 0.125 m head radius 1 m away covers about a quarter of the 32 px crop


def _look_at(eye: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera of a camera at ``eye`` looking at the origin, ``y`` down (world ``y`` up)."""
    z = -eye / np.linalg.norm(eye)
    x = np.cross(np.array([0.0, -1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([x, y, z])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    return w2c


def write_rig(root: Path, participants: tuple[int, ...] = (17, 18), timesteps: tuple[int, ...] = (0, 1)) -> Path:
    """NeRSemble v1 layout: per participant a calibration of 3 cameras on an arc in front of the face (+z), and per
    timestep one image per camera with a matte: a disc where the head is, its colour the participant's, shifted a
    little with the timestep (an "expression")."""
    eyes = {s: np.array([np.sin(a), 0.05, np.cos(a)]) for s, a in zip(SERIALS, (-0.5, 0.0, 0.5), strict=True)}
    w2c = {s: _look_at(e) for s, e in eyes.items()}
    k = np.array([[FOCAL, 0, SIZE[0] / 2], [0, FOCAL, SIZE[1] / 2], [0, 0, 1]])
    for p, pid in enumerate(participants):
        folder = root / f"{pid:03d}"
        folder.mkdir(parents=True)
        (folder / "camera_params.json").write_text(json.dumps(
            {"world_2_cam": {s: m.tolist() for s, m in w2c.items()}, "intrinsics": k.tolist()}))
        for t in timesteps:
            tdir = folder / "sequences" / "EXP-1-head" / f"frame_{t:05d}"
            (tdir / "images").mkdir(parents=True)
            (tdir / "alpha_map").mkdir()
            for i, s in enumerate(SERIALS):
                image = np.full((SIZE[1], SIZE[0], 3), 40, np.uint8)
                alpha = np.zeros((SIZE[1], SIZE[0]), np.uint8)
                centre = (SIZE[0] // 2 + 2 * t, SIZE[1] // 2)
                colour = (60 + 120 * p, 200 - 40 * i, 90 + 50 * t)  # BGR
                cv2.circle(image, centre, 16, colour, -1)
                cv2.circle(alpha, centre, 16, 255, -1)
                cv2.imwrite(str(tdir / "images" / f"cam_{s}.png"), image)
                cv2.imwrite(str(tdir / "alpha_map" / f"cam_{s}.png"), alpha)
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread: with several, a few CPU kernels of stage 2's backward pass (the reference rasteriser's
    gathers, LPIPS) sum gradients in a thread-dependent order, so that two identical runs differ by ~1e-8 (and tiny
    networks gain nothing from threads on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rig(tmp_path_factory.mktemp("gphm") / "nersemble")


def _dataset(root: Path, mode: str = "frontal") -> ExpressionViews:
    from train.data.gphm import NeRSembleDataset

    return ExpressionViews(NeRSembleDataset(root, resolution=32, calibration_size=SIZE), mode)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# the recipe and the expression input


def test_recipe_overrides_and_checks() -> None:
    r = apply_overrides(GPHM_RECIPE, ("guiding.lr_networks=5e-4", "gaussian.loss.weight_perceptual=0",
                                      "expression_input=same", "canonical_scale=0.3"))
    assert (r.guiding.lr_networks, r.gaussian.loss.weight_perceptual, r.expression_input, r.canonical_scale) == (
        5e-4, 0.0, "same", 0.3)
    assert GPHM_RECIPE.batch == 8 and GPHM_RECIPE.guiding.loss.weight_landmark == 0
    assert set(GPHM_RECIPE.gaussian.learning_rates()) == {"identity_codes", "networks", "landmarks", "means",
                                                          "point_features", "scales", "rotations", "opacities"}
    with pytest.raises(ConfigError, match="no 3D landmarks"):
        apply_overrides(GPHM_RECIPE, ("guiding.loss.weight_landmark=1",))
    with pytest.raises(ConfigError, match="choose one of frontal, same"):
        apply_overrides(GPHM_RECIPE, ("expression_input=left",))
    with pytest.raises(ConfigError, match="canonical_scale must be above 0"):
        recipe(canonical_scale=-1.0)


def test_frontal_index_follows_the_head() -> None:
    centres = np.array([[-1.0, 0, 1], [0, 0, 1.2], [1, 0, 1]])
    assert frontal_index(centres, np.zeros(3), np.array([0, 0, 1.0])) == 1
    assert frontal_index(centres, np.zeros(3), np.array([1.0, 0, 0.3])) == 2  # the head turned to its left


def test_expression_input_is_the_frontal_view_of_the_same_frame(rig: Path) -> None:
    ds = _dataset(rig)
    base = ds.dataset
    assert ds.kind == "nersemble" and len(ds) == 12 and len(ds.identities) == 2
    for i in range(len(ds)):
        j = ds.expression_source(i)
        a, b = base.items[i], base.items[j]  # type: ignore[attr-defined]
        assert (a.participant, a.sequence, a.timestep) == (b.participant, b.sequence, b.timestep)
        assert b.serial == SERIALS[1]  # the middle camera of the arc
    item = ds[0]
    assert base.items[0].serial != SERIALS[1]  # type: ignore[attr-defined]
    assert torch.equal(item["expression_image"], base[int(item["expression_index"])]["image"])
    assert not torch.equal(item["expression_image"], item["image"])
    same = _dataset(rig, "same")
    assert same.kind == "same" and torch.equal(same[0]["expression_image"], same[0]["image"])


def write_synthetic(root: Path, yaws: tuple[float, ...] = (-30.0, 25.0, 2.0), expressions: int = 2) -> Path:
    """Two clips as ``train.synthesize`` writes them (one row per identity, frames expression-major, ``V`` views
    at ``yaws`` degrees, the third almost frontal)."""
    from avatar.render.camera import view_label
    from train.data.parquet_format import DATA_DIR, ParquetShardWriter, clip_row

    rng = np.random.default_rng(0)
    views, size = len(yaws), 32
    (root / DATA_DIR).mkdir(parents=True)
    settings = {"generator": "genhead", "model": "tiny", "pools": "none", "expressions": expressions,
                "views": views, "truncation": 0.7, "image_format": "png", "motion": "tiny", "motion_dim": 4}
    for i in range(2):
        clip_id = f"id-{i:010d}"
        n = expressions * views
        labels = np.zeros((n, 437), np.float32)
        for k in range(n):
            labels[k, :25] = view_label(yaws[k % views], 0.0)[0].numpy()
        images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
        segs = np.full((n, size, size), 255, np.uint8)
        row = clip_row(images, segs, labels, rng.normal(size=(n, 4)).astype(np.float32), clip_id,
                       source_frames=list(range(n)))
        writer = ParquetShardWriter(root / DATA_DIR / f"train-{clip_id}.parquet", "clips", 4,
                                    {**settings, "identity": {"clip_id": clip_id, "seed": i, "frames": n}},
                                    rows_per_group=1)
        writer.add(row)
        writer.close()
    return root


def test_synthetic_data_reads_the_frontal_view_and_trains(tmp_path: Path) -> None:
    from train.data.gphm import SyntheticMultiViewDataset
    from train.gphm import main

    root = write_synthetic(tmp_path / "synthetic")
    ds = ExpressionViews(SyntheticMultiViewDataset(root))
    assert ds.kind == "synthetic" and len(ds) == 12 and len(ds.identities) == 2
    assert [ds.expression_source(i) for i in range(len(ds))] == [2, 2, 2, 5, 5, 5, 8, 8, 8, 11, 11, 11]
    assert torch.equal(ds[0]["expression_image"], ds.dataset[2]["image"])
    assert main(_args(root, tmp_path / "run", "--max-steps", "1")) == 0
    assert (tmp_path / "run" / "export" / "step-00000001" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------------------
# both stages on a fixed batch


def _fixed_batch(rig: Path, n: int = 2):
    from train.recipes.gphm_loss import prepare_batch

    ds = _dataset(rig)
    raw = default_collate([ds[i] for i in range(0, len(ds), len(ds) // n)][:n])
    return prepare_batch(raw, feature_resolution=16, canonical_scale=0.25, composite_background=True,
                         non_face_input="image"), len(ds.identities)


def _train(loss, model, optimizer, batch, steps: int) -> list[float]:
    from accelerate import Accelerator

    from train.core.phases import PhaseContext
    from train.core.state import LoopState

    logged: dict[str, float] = {}
    ctx = PhaseContext("stage", 1.0, LoopState(), Accelerator(cpu=True),
                       lambda k, v: logged.__setitem__(k, float(torch.as_tensor(v).float().mean())))
    model.requires_grad_(True)
    totals = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        total = loss(batch, ctx)
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert all(math.isfinite(v) for v in logged.values()), logged
    return totals


def test_both_stages_learn_a_fixed_batch(rig: Path) -> None:
    from avatar.models.gphm import GPHM, GPHMConfig, GuidingGeometryModel
    from train.gphm import build_optimizer
    from train.recipes.gphm_loss import GaussianLoss, GuidingLoss

    batch, identities = _fixed_batch(rig)
    assert batch.image.shape == (2, 3, 32, 32) and batch.Ks[0, 0, 0] == pytest.approx(FOCAL / 2 / 2)
    assert float(batch.image.abs().sum()) > 0 and batch.non_face is batch.expression
    r = recipe()
    guiding = GuidingGeometryModel.tiny(0, num_identities=identities).train()
    stage = replace(replace_stage(r.guiding, weight_eikonal=0.1), eikonal_points=64)
    totals = _train(GuidingLoss(guiding, stage), guiding, build_optimizer(guiding, stage.learning_rates(), r),
                    batch, 6)
    assert all(math.isfinite(t) for t in totals) and totals[-1] < totals[0], totals

    tiny = GPHMConfig.tiny()
    gphm = GPHM.from_guiding(guiding, attribute_width=tiny.attribute_width,
                             attribute_hidden_layers=tiny.attribute_hidden_layers).train()
    assert gphm.config.num_identities == identities
    stage2 = replace_stage(r.gaussian, weight_perceptual=0.0, weight_silhouette=0.1)
    totals = _train(GaussianLoss(gphm, stage2, None, backend="reference"), gphm,
                    build_optimizer(gphm, stage2.learning_rates(), r), batch, 6)
    assert all(math.isfinite(t) for t in totals) and totals[-1] < totals[0], totals


def replace_stage(stage, **weights: float):
    return replace(stage, loss=replace(stage.loss, **weights))


# ----------------------------------------------------------------------------------------------------------
# the script


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--size", "tiny", "--batch-size", "1", "--cpu", "--out-dir", str(out),
            "--calibration-size", str(SIZE[0]), str(SIZE[1]), "--data.num-workers", "0", "--log.trackers", "jsonl",
            "--no-log.progress-bar", "--log.image-every-steps", "0", "--loss-networks", "random", "--backend",
            "reference", *extra]


def _same_checkpoints(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    for name in ("model.safetensors", "model_1.safetensors"):  # the model, then its moving average
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{name}: the resumed run differs from the straight one"


def test_both_stages_train_export_and_resume_exactly(rig: Path, tmp_path: Path) -> None:
    """Stage 1 for 2 steps straight == 1 step + ``--resume latest`` (weights, average, bit for bit), with logs, an
    image grid and an export with its card; stage 2 from stage 1's run folder, the same."""
    from avatar.models.gphm import GPHM, GuidingGeometryModel
    from train.gphm import main

    one, split = tmp_path / "one", tmp_path / "one-split"
    assert main(_args(rig, one, "--max-steps", "2", "--log.image-every-steps", "2", "--grid-samples", "2")) == 0
    assert (one / "images" / "grid-00000002.png").is_file()
    logs = [json.loads(line) for p in (one / "logs").rglob("*.jsonl") for line in p.read_text().splitlines()]
    keys = set().union(*logs)
    for key in ("Loss/guiding", "Loss/guiding/rgb", "Loss/guiding/silhouette", "Loss/guiding/raw",
                "Loss/guiding/laplacian", "LR/guiding/networks", "LR/guiding/identity_codes", "EMA/beta"):
        assert key in keys, key
    export = one / "export" / "step-00000002"
    model = GuidingGeometryModel.from_pretrained(export)
    assert model.config.num_identities == 2
    card = (export / "README.md").read_text()
    assert "smoke-test configuration" in card and "--stage gaussian --guiding" in card
    assert json.loads((export / "training.json").read_text())["identities"] == 2

    assert main(_args(rig, split, "--max-steps", "1")) == 0
    assert main(_args(rig, split, "--max-steps", "2", "--resume", "latest")) == 0
    _same_checkpoints(one / "checkpoints" / "step-00000002", split / "checkpoints" / "step-00000002")

    two, split2 = tmp_path / "two", tmp_path / "two-split"
    stage2 = ("--stage", "gaussian", "--guiding", str(one))
    assert main(_args(rig, two, *stage2, "--max-steps", "2")) == 0
    gphm = GPHM.from_pretrained(two / "export" / "step-00000002")
    assert gphm.num_points == GPHM.from_guiding(model).num_points
    logs = [json.loads(line) for p in (two / "logs").rglob("*.jsonl") for line in p.read_text().splitlines()]
    keys = set().union(*logs)
    for key in ("Loss/gaussian/rgb", "Loss/gaussian/perceptual", "LR/gaussian/means", "LR/gaussian/opacities"):
        assert key in keys, key
    assert main(_args(rig, split2, *stage2, "--max-steps", "1")) == 0
    assert main(_args(rig, split2, *stage2, "--max-steps", "2", "--resume", "latest")) == 0
    _same_checkpoints(two / "checkpoints" / "step-00000002", split2 / "checkpoints" / "step-00000002")


def test_stage_2_resumes_with_the_checkpoint_point_count(tmp_path: Path) -> None:
    """A stage-1 mesh re-extracted with other kernels may have a few vertices more or less: the resumed model takes
    the checkpoint's count, so that the checkpoint loads."""
    import types

    from safetensors.torch import save_file

    from avatar.models.gphm import GPHM, GuidingGeometryModel
    from train.core.checkpoint import STATE_FILE, CheckpointManager
    from train.gphm import _match_checkpoint_points

    model = GPHM.from_guiding(GuidingGeometryModel.tiny(0, num_identities=2))
    before = model.num_points
    checkpoint = tmp_path / "checkpoints" / "step-00000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / STATE_FILE).write_text("{}")
    save_file({"points.means": torch.zeros(model.num_points + 3, 3)}, str(checkpoint / "model.safetensors"))
    trainer = types.SimpleNamespace(checkpoints=CheckpointManager(None, tmp_path / "checkpoints"))  # type: ignore[arg-type]
    _match_checkpoint_points(model, trainer, None)  # type: ignore[arg-type]
    assert model.num_points == before  # a new run keeps the mesh's count
    _match_checkpoint_points(model, trainer, "latest")  # type: ignore[arg-type]
    assert model.num_points == model.config.num_points == model.points.point_features.shape[0] == before + 3


def test_push_to_hub_uploads_each_export(rig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub

    from train.gphm import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(_args(rig, tmp_path / "off", "--max-steps", "1", "--push-to-hub", "me/gphm")) == 1
    assert "--push-to-hub me/gphm: HF_HUB_OFFLINE is set" in capsys.readouterr().err
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
    assert main(_args(rig, tmp_path / "pushed", "--max-steps", "1", "--push-to-hub", "me/gphm")) == 0
    assert len(calls) == 1 and calls[0]["repo_id"] == "me/gphm"
    assert {"README.md", "config.json", "model.safetensors", "training.json"} <= set(calls[0]["files"])
    card = (tmp_path / "pushed" / "export" / "step-00000001" / "README.md").read_text()
    assert 'GuidingGeometryModel.from_pretrained("me/gphm")' in card


def test_help_runs_as_a_script() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "train" / "gphm.py"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--data", "--stage", "--guiding", "--resume", "--push-to-hub", "--set", "frontal-most"):
        assert flag in proc.stdout, flag


def test_bad_options_are_one_clear_sentence(rig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from train.gphm import main

    with pytest.raises(SystemExit) as exc:
        main(_args(rig, tmp_path / "a", "--stage", "mesh"))
    assert exc.value.code == 1 and "choose one of guiding, gaussian" in capsys.readouterr().err
    assert main(["--out-dir", str(tmp_path / "b"), "--max-steps", "1", "--cpu"]) == 1
    assert "--data is required" in capsys.readouterr().err
    assert main(_args(rig, tmp_path / "c", "--stage", "gaussian", "--max-steps", "1")) == 1
    assert "pass --guiding" in capsys.readouterr().err
    assert main(_args(rig, tmp_path / "d", "--stage", "gaussian", "--guiding", str(tmp_path), "--max-steps", "1")) == 1
    assert "train stage 1 first" in capsys.readouterr().err
    assert main(_args(rig, tmp_path / "e", "--max-steps", "1", "--set", "speed=11")) == 1
    assert "expected KEY=VALUE with KEY one of" in capsys.readouterr().err
    assert main(_args(rig, tmp_path / "f", "--max-steps", "1", "--set", "gaussian.loss.weight_landmark=10")) == 1
    assert "no 3D landmarks" in capsys.readouterr().err
    assert main(_args(rig, tmp_path / "g", "--max-steps", "1", "--resolution", "30")) == 1
    assert "multiple of 4" in capsys.readouterr().err
    assert not (tmp_path / "c" / "checkpoints").exists()
