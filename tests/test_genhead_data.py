"""Portrait4D v1's online GenHead data: the parameter pools (registry, files, synthetic), the engine's draws
(identity, driving / target motion, half-static, jaw, camera swap), one rendered batch against the loss's layout,
reproducibility by (seed, position), and one ``train/portrait4d.py --data genhead`` step.

Speed: GenHead's head-pose field (a closest-triangle search on a 24^3 and an 8^3 grid per image, ~10 s per image on
two CPU cores) is replaced by the identity warp in the rendering tests. v1's neck rotation is always zero, where
the field *is* the identity (to 1e-7, checked in ``test_the_head_pose_field_is_the_identity_without_neck``), so
this changes nothing measurable. The engine renders at 16 here (the official 64).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avatar.errors import InputError, InputNotFoundError
from avatar.flame.parts import FlamePartDeformer
from avatar.models.genhead import GenHead
from avatar.models.genhead.pools import POOL_FILES, FlameParameterPools
from avatar.motion.pdfgc import PDFGCConfig, PDFGCEncoder
from train.recipes.genhead_data import (
    BATCH_KEYS,
    GenHeadDataEngine,
    draw_flame_params,
    render_cameras,
)

NR = 16
POINTS = 64
_PRECOMPUTE = FlamePartDeformer.precompute  # the real head-pose field (the rendering tests replace it)


@pytest.fixture(scope="module")
def no_head_pose_field() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FlamePartDeformer, "precompute", lambda self, *args, **kwargs: None)
        yield


def _engine(**kwargs: Any) -> GenHeadDataEngine:
    genhead = GenHead.tiny(seed=0)
    torch.manual_seed(0)
    return GenHeadDataEngine(genhead, FlameParameterPools.synthetic(0), PDFGCEncoder(PDFGCConfig.tiny()),
                             neural_rendering_resolution=NR, triplane_points=POINTS, **kwargs)


@pytest.fixture(scope="module")
def rendered(no_head_pose_field: None) -> dict[str, Any]:
    """One B=2 batch, with the arguments GenHead's mapping and synthesis were called with."""
    engine = _engine()
    calls: dict[str, Any] = {}
    mapping, synthesis = engine.genhead.mapping, engine.genhead.synthesis

    def spy_mapping(z: torch.Tensor, camera: torch.Tensor, shape: torch.Tensor, **kw: Any) -> torch.Tensor:
        calls["mapping"] = (z, camera, shape, kw)
        return mapping(z, camera, shape, **kw)

    def spy_synthesis(ws: torch.Tensor, z_bg: torch.Tensor, camera: torch.Tensor, *flame: torch.Tensor, **kw: Any):
        calls["synthesis"] = (z_bg, camera, flame, kw)
        return synthesis(ws, z_bg, camera, *flame, **kw)

    engine.genhead.mapping, engine.genhead.synthesis = spy_mapping, spy_synthesis  # type: ignore[method-assign]
    g = engine.step_generator(0, 0)
    draw = engine.draw(2, g)
    batch = engine.render(draw, g)
    return {"engine": engine, "draw": draw, "batch": batch, "calls": calls}


# ----------------------------------------------------------------------------------------------------------
# pools


def test_pool_files_are_registered_and_read_through_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    import dataclasses

    from avatar.hub import registry

    for key, name in POOL_FILES.items():
        entry = registry.FILES[key]
        assert entry.path == f"data/{name}" and entry.fmt == "npy" and entry.source == "hub" and entry.size
        assert entry.licence == registry.LICENCE_PORTRAIT4D
        monkeypatch.setitem(registry.FILES, key, dataclasses.replace(entry, size=None))  # the toy files are small
    arrays = _official_like_arrays(np.random.default_rng(0))
    (tmp_path / "data").mkdir()
    for name, array in zip(POOL_FILES.values(), arrays, strict=True):
        np.save(tmp_path / "data" / name, array)
    pools = FlameParameterPools.from_registry(local_dir=tmp_path)  # npy -> safetensors in the cache -> tensors
    torch.testing.assert_close(pools.shape_n_c, torch.from_numpy(np.concatenate(
        [arrays[0].reshape(-1, 325), arrays[1].reshape(-1, 325)])))
    assert pools.dynamic_motion.shape == (3, 5, 112)


def _official_like_arrays(rng: np.random.Generator) -> list[np.ndarray]:
    """The four arrays with upstream's leading shapes (shape_n_c / FFHQ motion with an extra axis)."""
    return [rng.normal(size=(2, 3, 325)).astype(np.float32), rng.normal(size=(4, 325)).astype(np.float32),
            rng.normal(size=(2, 4, 112)).astype(np.float32), rng.normal(size=(3, 5, 112)).astype(np.float32)]


def test_pools_from_folder_concatenate_reshape_and_zero_the_neck(tmp_path: Path) -> None:
    arrays = _official_like_arrays(np.random.default_rng(1))
    for name, array in zip(POOL_FILES.values(), arrays, strict=True):
        np.save(tmp_path / name, array)
    pools = FlameParameterPools.from_folder(tmp_path)
    assert pools.shape_n_c.shape == (10, 325) and pools.static_motion.shape == (8, 112)
    assert pools.dynamic_motion.shape == (3, 5, 112) and pools.dynamic_eye.shape == (15, 6)
    torch.testing.assert_close(pools.cameras[:6], torch.from_numpy(arrays[0].reshape(-1, 325)[:, :25]))  # FFHQ first
    torch.testing.assert_close(pools.shapes[6:], torch.from_numpy(arrays[1][:, 25:]))
    for pool, raw in ((pools.static_motion, arrays[2].reshape(-1, 112)), (pools.dynamic_motion, arrays[3])):
        assert torch.count_nonzero(pool[..., 100:103]) == 0  # the neck rotation
        raw_t = torch.from_numpy(raw)
        torch.testing.assert_close(pool[..., :100], raw_t[..., :100])
        torch.testing.assert_close(pool[..., 103:], raw_t[..., 103:])  # jaw and eyes kept
    torch.testing.assert_close(pools.dynamic_eye, torch.from_numpy(arrays[3][..., 106:].reshape(-1, 6)))

    synthetic = FlameParameterPools.synthetic(0, identities=6, static=5, clips=2, frames=3)
    assert synthetic.shape_n_c.shape == (6, 325) and synthetic.dynamic_motion.shape == (2, 3, 112)
    assert torch.count_nonzero(synthetic.static_motion[:, 100:103]) == 0
    assert bool((synthetic.static_pose[:, 3] >= 0).all() and (synthetic.static_pose[:, 3] <= 0.2).all())

    (tmp_path / POOL_FILES["pools-vfhq-motion"]).unlink()
    with pytest.raises(InputNotFoundError, match="has no vfhq_all_motion_params.npy"):
        FlameParameterPools.from_folder(tmp_path)
    with pytest.raises(InputError, match="expected \\(clips, frames, 112\\)"):
        FlameParameterPools.from_arrays(arrays[0], arrays[1], arrays[2], arrays[3].reshape(-1, 112))
    with pytest.raises(InputError, match="rows of 325 numbers"):
        FlameParameterPools.from_arrays(arrays[0][..., :300], arrays[1], arrays[2], arrays[3])


# ----------------------------------------------------------------------------------------------------------
# draws


def _marked_pools() -> FlameParameterPools:
    """Pools whose rows say where they come from: static expressions are 10 + row, dynamic ones -(1 + row);
    every dynamic jaw is -1 (a randomised jaw is in [0, 0.2])."""
    base = FlameParameterPools.synthetic(0, identities=8, static=6, clips=5, frames=4)
    static, dynamic = base.static_motion.clone(), base.dynamic_motion.clone()
    static[:, :100] = 10 + torch.arange(6.0)[:, None]
    dynamic[..., :100] = -(1 + torch.arange(20.0).reshape(5, 4, 1))
    dynamic[..., 103] = -1
    return FlameParameterPools(base.shape_n_c, static, dynamic)


def test_views_share_the_identity_and_the_target_reuses_the_driving_motion() -> None:
    pools = _marked_pools()
    d = draw_flame_params(pools, 4, 7, torch.Generator().manual_seed(0), half_static=False)
    assert d.shape.shape == (4, 3, 300) and d.c.shape == (4, 3, 25) and d.z.shape == (4, 7)
    assert not d.static.any()
    torch.testing.assert_close(d.shape, pools.shapes[d.shape_index].unsqueeze(1).expand(-1, 3, -1))
    for key in ("exp", "pose", "eye"):
        t = getattr(d, key)
        torch.testing.assert_close(t[:, 2], t[:, 1])  # the target is the driving frame
    src, drv = -d.exp[:, 0, 0] - 1, -d.exp[:, 1, 0] - 1  # flat frame index in the dynamic pool
    assert bool(((src // 4) == (drv // 4)).all())  # two frames of one clip
    static = draw_flame_params(pools, 4, 7, torch.Generator().manual_seed(0), static_dataset=True)
    for key in ("exp", "pose", "eye"):
        t = getattr(static, key)
        torch.testing.assert_close(t, t[:, :1].expand_as(t))  # one motion, only the camera differs


def test_half_static_gives_the_second_half_one_static_motion() -> None:
    pools = _marked_pools()
    for b in (4, 3):
        d = draw_flame_params(pools, b, 7, torch.Generator().manual_seed(1), half_static=True)
        n = b // 2
        assert d.static.tolist() == [False] * n + [True] * (b - n)  # what the loss switches motion off for
        assert bool((d.exp[:n] < 0).all()) and bool((d.exp[n:] >= 10).all())
        rows = (d.exp[n:, 0, 0] - 10).long()
        for key, pool in (("exp", pools.static_expression), ("pose", pools.static_pose)):
            torch.testing.assert_close(getattr(d, key)[n:], pool[rows].unsqueeze(1).expand(-1, 3, -1))
        torch.testing.assert_close(d.eye[n:], d.eye[n:, :1].expand(-1, 3, -1))
        assert bool(((pools.static_eye[None] == d.eye[n:, :1]).all(-1).any(-1)).all())  # a static eye row
        assert torch.count_nonzero(d.pose[..., :3]) == 0


@pytest.mark.skipif(not os.environ.get("PORTRAIT4D_REPO"), reason="set PORTRAIT4D_REPO to an official checkout")
def test_draws_equal_the_official_fetch_random_params_on_the_cpu() -> None:
    """The official function (read from the checkout, run as it is) from the global generator against ours from a
    generator with the same seed: the same values, bit for bit, in every mode."""
    import ast

    path = Path(os.environ["PORTRAIT4D_REPO"]) / "portrait4d" / "training" / "training_loop_recon_v1.py"
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "fetch_random_params")
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(ast.Module([node], []), str(path), "exec"), namespace)  # noqa: S102 - the official code, read-only
    p = FlameParameterPools.synthetic(3, identities=50, static=40, clips=7, frames=9)
    for static_dataset, half_static in ((False, True), (True, False), (False, False)):
        torch.manual_seed(11)
        official = namespace["fetch_random_params"](
            p.shapes, p.static_expression, p.static_pose, p.static_eye, p.dynamic_expression, p.dynamic_pose,
            p.dynamic_eye, p.cameras, 4, static_dataset=static_dataset, half_static=half_static)
        z = torch.randn(4, 16)
        ours = draw_flame_params(p, 4, 16, torch.Generator().manual_seed(11), static_dataset=static_dataset,
                                 half_static=half_static)
        for theirs, mine in zip((*official, z), (ours.shape, ours.exp, ours.pose, ours.eye, ours.c, ours.z),
                                strict=True):
            assert torch.equal(theirs, mine)


def test_the_jaw_is_randomised_half_of_the_time() -> None:
    pools = _marked_pools()
    d = draw_flame_params(pools, 4000, 7, torch.Generator().manual_seed(2))
    jaw = d.pose[:, :2, 3]  # source and driving frames (all dynamic)
    replaced = jaw >= 0
    assert abs(float(replaced.float().mean()) - 0.5) < 0.02
    assert bool((jaw[~replaced] == -1).all()) and float(jaw[replaced].max()) <= 0.2
    assert abs(float(jaw[replaced].mean()) - 0.1) < 0.005  # U(0, 0.2)


def test_camera_swap_keeps_a_random_lookat_camera_half_of_the_time() -> None:
    from avatar.render.camera import view_label

    n = 20000
    c = view_label(10, -5).repeat(n, 1)
    out, random = render_cameras(c, torch.Generator().manual_seed(0))
    assert abs(float(random.float().mean()) - 0.5) < 0.015  # 4 standard deviations
    torch.testing.assert_close(out[~random], c[~random], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 16:], c[:, 16:], rtol=0, atol=0)  # the dataset intrinsics everywhere
    origin = out[random][:, :16].reshape(-1, 4, 4)[:, :3, 3]
    radius = origin.norm(dim=-1)  # pivots within 0.13 of the origin
    assert float(radius.min()) > 3.65 - 0.13 and float(radius.max()) < 4.45 + 0.13
    yaw = torch.atan2(origin[:, 0], origin[:, 2])
    assert 0.7 < float(yaw.abs().max()) < 0.78 + 0.05
    again, _ = render_cameras(c, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, out, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------
# one rendered batch


def _triple_item_layout() -> dict[str, tuple[int, ...]]:
    """Shapes of an offline GenHeadTripleDataset item (the official V2New item), for comparison."""
    from train.data import triple_item
    from train.data.records import GenHead4DRecord

    rng = np.random.default_rng(0)
    record = GenHead4DRecord(
        images=rng.integers(0, 256, (2, 5, 32, 32, 3), dtype=np.uint8),
        segs=rng.integers(0, 256, (2, 5, 32, 32, 1), dtype=np.uint8),
        segs_render=rng.integers(0, 256, (2, 5, NR, NR, 1), dtype=np.uint8),
        depths=rng.random((2, 5, NR, NR, 1)).astype(np.float16),
        features=rng.random((2, 5, NR, NR, 8)).astype(np.float16),
        triplanes=rng.random((2, POINTS * 11)).astype(np.float16),
        labels=rng.random((2, 5, 437)).astype(np.float32), motions=rng.random((2, 5, 60)).astype(np.float32),
        background=rng.random((NR, NR, 8)).astype(np.float16), height=32, width=32)
    item = triple_item(record, np.array([0, 1]), np.array([0, 1, 2]), triplane_channels=8)
    return {k: v.shape for k, v in item.items() if k not in ("frames", "views")}


def test_batch_has_the_keys_layouts_and_ranges_the_loss_reads(rendered: dict[str, Any]) -> None:
    batch, draw = rendered["batch"], rendered["draw"]
    layout = _triple_item_layout()
    assert set(batch) == set(BATCH_KEYS) == set(layout) | {"uv"}
    for key, shape in layout.items():  # same rank and channels; images are GenHead's 512, not the toy 32
        got = batch[key].shape
        assert got[0] == 2 and len(got) == len(shape) + 1, key
        if key.endswith("_image") or key == "target_seg":
            assert got[1] == shape[0], key
        else:
            assert got[1:] == shape, (key, got, shape)
        assert batch[key].dtype == torch.float32 and torch.isfinite(batch[key]).all(), key
    assert batch["target_image"].shape == (2, 3, 512, 512) and batch["uv"].shape == (2, 3, 512, 512)
    seg = batch["target_seg"]
    assert float(seg.min()) >= -1 and float(seg.max()) <= 1 and torch.equal(seg, batch["seg_render"])
    torch.testing.assert_close(seg, seg[:, :1].expand_as(seg))  # one matte tiled, as the dataset's
    assert float(batch["depth"].min()) > 0
    for key in ("feature", "feature_bg"):
        assert float(batch[key].abs().max()) <= 1.0 + 1e-5, key
    assert batch["triplane"].shape == (2, POINTS, 3 + 8)
    # the loss's FLAME inputs: the source identity, the driving motion (= the target's), the target camera
    torch.testing.assert_close(batch["shape"], draw.shape[:, 0])
    torch.testing.assert_close(batch["exp"], draw.exp[:, 1])
    torch.testing.assert_close(batch["pose"], draw.pose[:, 1])
    torch.testing.assert_close(batch["eye"], draw.eye[:, 1])
    torch.testing.assert_close(batch["c"][:, 16:], draw.c[:, 2, 16:])
    assert batch["source_motion"].shape == batch["driving_motion"].shape == (2, 60)


def test_genhead_renders_each_subject_once_per_view_with_its_identity(rendered: dict[str, Any]) -> None:
    draw, calls = rendered["draw"], rendered["calls"]
    z, camera, shape, kw = calls["mapping"]
    assert kw == {"truncation_psi": 0.95, "truncation_cutoff": 14}
    views = z.reshape(2, 3, -1)
    torch.testing.assert_close(views, draw.z.unsqueeze(1).expand(-1, 3, -1))  # one z per subject
    torch.testing.assert_close(camera.reshape(2, 3, -1), draw.c[:, :1].expand(-1, 3, -1))  # source dataset camera
    torch.testing.assert_close(shape.reshape(2, 3, -1), draw.shape)
    z_bg, render_camera, (r_shape, exp, pose, eye), kw = calls["synthesis"]
    assert kw == {"neural_rendering_resolution": NR, "noise_mode": "const", "deterministic": False}
    torch.testing.assert_close(z_bg, z)  # z is the background latent too
    torch.testing.assert_close(exp.reshape(2, 3, -1)[:, 2], exp.reshape(2, 3, -1)[:, 1])
    torch.testing.assert_close(eye.reshape(2, 3, -1)[:, 2], eye.reshape(2, 3, -1)[:, 1])
    assert torch.count_nonzero(pose[:, :3]) == 0
    torch.testing.assert_close(render_camera.reshape(2, 3, -1)[:, 2], rendered["batch"]["c"], atol=1e-5, rtol=0)


def test_batches_are_a_function_of_seed_and_position(no_head_pose_field: None) -> None:
    engine = _engine()
    stream = engine.batches(seed=3, batch_per_process=1, global_batch=1)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    run = stream(0)
    first = next(run)
    assert torch.equal(torch.rand(3), expected)  # the engine leaves the global random stream (the loss's) alone
    second = next(run)
    resumed = next(stream(1))  # a run resumed at data position 1 computes the same batch again
    for key in BATCH_KEYS:
        assert torch.equal(second[key], resumed[key]), key
    assert not torch.equal(first["target_image"], second["target_image"])
    draws = [engine.draw(1, engine.step_generator(seed, 0)) for seed in (3, 3, 4)]
    assert torch.equal(draws[0].z, draws[1].z) and not torch.equal(draws[0].z, draws[2].z)


def test_the_head_pose_field_is_the_identity_without_neck() -> None:
    """What lets the rendering tests skip the field (module docstring): one image, the real surface field (the
    smoothed variant blends it with a box-filtered coarse copy of the same zero offsets)."""
    deform = GenHead.tiny(seed=0).deformer.flame_deform
    assert deform is not None
    g = torch.Generator().manual_seed(0)
    pose = torch.zeros(1, 6)
    pose[:, 3] = 0.15
    field = _PRECOMPUTE(deform, torch.randn(1, 300, generator=g) * 0.3, torch.randn(1, 100, generator=g) * 0.3,
                        pose, torch.randn(1, 6, generator=g) * 0.05, smooth_headpose=False)  # the 16^3 surface field
    assert field is not None and float(field.offsets.abs().max()) < 1e-6
    points = (torch.rand(1, 2000, 3, generator=g) - 0.5) * 1.2
    torch.testing.assert_close(deform.warp(field, points), points, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# the script


def _argv(out: Path, *extra: str) -> list[str]:
    return ["--recipe", "v1", "--data", "genhead", "--size", "tiny", "--flame", "synthetic", "--loss-networks",
            "random", "--batch-size", "2", "--cpu", "--out-dir", str(out), "--log.trackers", "jsonl",
            "--no-log.progress-bar", "--set", "nr_initial=32", *extra]


def test_one_v1_step_on_online_genhead_data_logs_the_distillation_terms(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, no_head_pose_field: None) -> None:
    pytest.importorskip("lpips")
    from train.portrait4d import main

    caplog.set_level(logging.INFO, logger="train.portrait4d")
    out = tmp_path / "run"
    assert main(_argv(out, "--max-steps", "1")) == 0
    assert "training data: GenHead online (tiny, pools synthetic" in caplog.text
    (stats_path,) = out.glob("logs/*/stats.jsonl")
    stats: dict[str, float] = {}
    for line in stats_path.read_text().splitlines():
        stats.update(json.loads(line))
    for key in ("Loss/G/lrecon_depth", "Loss/G/lrecon_feature", "Loss/G/lrecon_triplane", "Loss/G/lrecon_l1",
                "Loss/G/lrecon_seg"):
        value = next((v for k, v in stats.items() if k.startswith(key)), None)
        assert value is not None and math.isfinite(float(value)), (key, sorted(stats))
    assert (out / "checkpoints" / "step-00000001").is_dir()


def test_online_data_options_fail_in_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from train.portrait4d import main

    assert main([*_argv(tmp_path / "a", "--max-steps", "1"), "--recipe", "v2"]) == 1
    assert "--data genhead is the data of recipes v1 and static" in capsys.readouterr().err
    assert main(_argv(tmp_path / "b", "--max-steps", "1", "--eval-every", "1")) == 1
    assert "--eval-every with --data genhead needs --eval-data" in capsys.readouterr().err
    argv = _argv(tmp_path / "c", "--max-steps", "1", "--pools", "synthetic")
    argv[argv.index("genhead")] = str(tmp_path)
    assert main(argv) == 1
    assert "--genhead and --pools choose the generator and the pools of --data genhead" in capsys.readouterr().err


def test_fresh_reconstructor_takes_genheads_flame(monkeypatch: pytest.MonkeyPatch) -> None:
    """--data genhead with --flame official and no --init: the fresh reconstructor's FLAME deformer is built from
    GenHead's buffers (the same official FLAME files) instead of failing."""
    import avatar.hub.weights as weights
    from avatar.flame.synthetic import synthetic_genhead_assets
    from avatar.models.genhead import GenHead
    from avatar.models.portrait4d import Portrait4D
    from train.recipes import portrait4d_setup

    masks = synthetic_genhead_assets(0)["masks"]
    monkeypatch.setattr(weights, "read_converted_weights", lambda key, local_dir=None: masks)
    G = Portrait4D.tiny(seed=0)
    G.deformer.flame_deform = None
    with pytest.raises(Exception, match="no FLAME deformer buffers"):
        portrait4d_setup._flame(G, "official", 0, None)
    donor = GenHead.tiny(seed=0).deformer.flame_deform.state_dict()
    renderer = portrait4d_setup._flame(G, "official", 0, None, donor)
    assert G.deformer.available and renderer is not None
    for k, v in G.deformer.flame_deform.state_dict().items():
        assert torch.equal(v, donor[k]), k
