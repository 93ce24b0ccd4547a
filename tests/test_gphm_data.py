"""Readers of GPHM's multi-view training data (train/data/gphm.py) on tiny fake datasets: NeRSemble v1 and v2
layouts, and the synthetic GenHead clips of train.synthesize."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avatar.render.camera import view_label
from avatar.render.rays import sample_rays
from train.data.errors import TrainDataError
from train.data.gphm import (
    FLAME_EXPRESSION_DIM,
    NeRSembleDataset,
    SyntheticMultiViewDataset,
    gl_to_cv_world_to_camera,
    open_gphm_data,
)
from train.data.parquet_format import DATA_DIR, ParquetShardWriter, clip_row

SERIALS = ["222200037", "222200038", "220700191"]
CALIB = (400, 600)  # width, height of the "full resolution" images of the fake calibration
POINT = np.array([0.01, -0.02, 0.0])  # a world point every camera sees


def look_at_w2c(eye: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera of a camera at ``eye`` looking at the origin (y down)."""
    z = -eye / np.linalg.norm(eye)
    x = np.cross(np.array([0.0, -1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    rot = np.stack([x, y, z])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = rot, -rot @ eye
    return w2c


def project(k: np.ndarray, w2c: np.ndarray, point: np.ndarray) -> np.ndarray:
    cam = w2c[:3, :3] @ point + w2c[:3, 3]
    return (k @ (cam / cam[2]))[:2]


def calibration(per_serial: bool) -> tuple[dict[str, np.ndarray], dict | list]:
    w2c = {s: look_at_w2c(np.array([0.3 * (i - 1), 0.05 * i, 1.0])) for i, s in enumerate(SERIALS)}
    k = np.array([[900.0, 0, CALIB[0] / 2 + 3], [0, 900.0, CALIB[1] / 2 - 4], [0, 0, 1]])
    intr = {s: (k + np.diag([10.0 * i, 10.0 * i, 0])).tolist() for i, s in enumerate(SERIALS)} if per_serial \
        else k.tolist()
    return w2c, intr


def k_of(intr: dict | list, serial: str) -> np.ndarray:
    return np.asarray(intr[serial] if isinstance(intr, dict) else intr, dtype=np.float64)


def dot_image(k: np.ndarray, w2c: np.ndarray, scale: float, size: tuple[int, int]) -> np.ndarray:
    """A dark image (``size`` = width, height) with a white disc where the world point projects."""
    uv = project(k, w2c, POINT) * scale
    image = np.full((size[1], size[0], 3), 30, np.uint8)
    # pixel centres at i + 0.5: the disc centre in OpenCV's integer-centre coordinates is uv - 0.5
    cv2.circle(image, (int(round((uv[0] - 0.5) * 16)), int(round((uv[1] - 0.5) * 16))), 12 * 16, (255, 255, 255),
               -1, cv2.LINE_AA, shift=4)
    return image


def centroid(image: torch.Tensor) -> np.ndarray:
    grey = image.mean(0).numpy()
    w = np.clip(grey - grey.min(), 0, None)
    ys, xs = np.mgrid[0:grey.shape[0], 0:grey.shape[1]]
    return np.array([(w * (xs + 0.5)).sum() / w.sum(), (w * (ys + 0.5)).sum() / w.sum()])


def write_v1(root: Path, pid: int = 18, timesteps: tuple[int, ...] = (0, 1, 2), alpha_serials=("222200037",)):
    w2c, intr = calibration(per_serial=False)
    folder = root / f"{pid:03d}"
    folder.mkdir(parents=True)
    (folder / "camera_params.json").write_text(json.dumps({"world_2_cam": {s: m.tolist() for s, m in w2c.items()},
                                                            "intrinsics": intr}))
    half = (CALIB[0] // 2, CALIB[1] // 2)
    for t in timesteps:
        tdir = folder / "sequences" / "EXP-1-head" / f"frame_{t:05d}"
        (tdir / "images-2x").mkdir(parents=True)
        (tdir / "alpha_map").mkdir()
        for s in SERIALS:
            cv2.imwrite(str(tdir / "images-2x" / f"cam_{s}.png"), dot_image(k_of(intr, s), w2c[s], 0.5, half))
            if s in alpha_serials:
                alpha = np.zeros((half[1], half[0]), np.uint8)
                alpha[half[1] // 2:] = 255
                cv2.imwrite(str(tdir / "alpha_map" / f"cam_{s}.png"), alpha)
    return w2c, intr


def write_v2(root: Path, pid: int = 30, timesteps: tuple[int, ...] = (0, 1), tracking: bool = True,
             size: tuple[int, int] = CALIB):
    w2c, intr = calibration(per_serial=True)
    folder = root / f"{pid:03d}"
    (folder / "calibration").mkdir(parents=True)
    (folder / "calibration" / "camera_params.json").write_text(
        json.dumps({"world_2_cam": {s: m.tolist() for s, m in w2c.items()}, "intrinsics": intr}))
    seq = folder / "sequences" / "SEN-01-cramp_small_danger"
    for s in SERIALS[:2]:
        (seq / "images" / f"cam_{s}").mkdir(parents=True)
        (seq / "alpha_maps" / f"cam_{s}").mkdir(parents=True)
        for t in timesteps:
            image = dot_image(k_of(intr, s), w2c[s], size[0] / CALIB[0], size)
            cv2.imwrite(str(seq / "images" / f"cam_{s}" / f"frame_{t:05d}.jpg"), image,
                        [cv2.IMWRITE_JPEG_QUALITY, 98])
            cv2.imwrite(str(seq / "alpha_maps" / f"cam_{s}" / f"frame_{t:05d}.png"), np.full(size[::-1], 200, np.uint8))
    track = None
    if tracking:
        rng = np.random.default_rng(0)
        n = len(timesteps)
        rot = np.stack([cv2.Rodrigues(rng.normal(scale=0.1, size=3))[0] for _ in range(n)])
        track = {"shape": rng.normal(size=(1, 300)), "expression": rng.normal(size=(n, 100)),
                 "rotation": rng.normal(size=(n, 3)), "rotation_matrices": rot,
                 "translation": rng.normal(size=(n, 3)), "jaw": rng.normal(size=(n, 3)),
                 "frames": np.asarray(timesteps), "scale": np.array([[1.25]]), "neck": np.zeros((n, 3)),
                 "eyes": rng.normal(size=(n, 6))}
        (seq / "tracking").mkdir()
        np.savez(seq / "tracking" / "flame2023_tracking.npz", **track)
    return w2c, intr, track


# ----------------------------------------------------------------------------------------------------------
# NeRSemble


def test_nersemble_v1_layout(tmp_path):
    w2c, intr = write_v1(tmp_path)
    ds = NeRSembleDataset(tmp_path, resolution=100, calibration_size=CALIB)
    assert len(ds) == 9 and ds.identities == [18] and ds.expression_mode == "none"
    assert ds.cameras == sorted(SERIALS)
    item = ds[0]
    assert item["image"].shape == (3, 100, 100) and item["mask"].shape == (1, 100, 100)
    assert item["image"].dtype == torch.float32 and 0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1
    assert item["frame_id"] == "018/EXP-1-head/frame_00000/cam_220700191"
    assert int(item["identity"]) == 0 and item["expression"].shape == (0,)
    np.testing.assert_allclose(item["world_to_camera"], w2c["220700191"], atol=1e-6)
    np.testing.assert_allclose(item["head_pose"], np.eye(4))
    # K follows the half-size images, the centred square crop (200x300 -> 200x200 from row 50) and the resize
    k = k_of(intr, "220700191") * np.array([[0.5], [0.5], [1]])
    k[1, 2] -= 50
    k[:2] *= 0.5
    np.testing.assert_allclose(item["K"], k, rtol=1e-6)
    for i in range(3):  # the world point projects onto the disc drawn there
        it = ds[i]
        uv = project(it["K"].double().numpy(), it["world_to_camera"].double().numpy(), POINT)
        np.testing.assert_allclose(centroid(it["image"]), uv, atol=0.3)
    masked = [it for it in (ds[i] for i in range(3)) if bool(it["has_mask"])]
    assert len(masked) == 1 and masked[0]["frame_id"].endswith("cam_222200037")
    np.testing.assert_allclose(masked[0]["mask"][0, :, 0].numpy(), (np.arange(100) >= 50).astype(np.float32))  # rows 150.. of 300, crop from 50, halved
    unmasked = ds[2]
    assert not bool(unmasked["has_mask"]) and bool((unmasked["mask"] == 1).all())


def test_nersemble_selection_and_native_resolution(tmp_path):
    write_v1(tmp_path, timesteps=(0, 1, 2, 3))
    ds = NeRSembleDataset(tmp_path, cameras=["222200038"], frame_step=2, resolution=None, calibration_size=CALIB)
    assert [it.timestep for it in ds.items] == [0, 2] and ds.cameras == ["222200038"]
    assert ds[0]["image"].shape == (3, 300, 200)
    with pytest.raises(TrainDataError, match="calibration_size"):
        NeRSembleDataset(tmp_path, calibration_size=(400, 400))[0]
    with pytest.raises(TrainDataError, match="no NeRSemble images"):
        NeRSembleDataset(tmp_path, sequences=["FREE"])
    with pytest.raises(FileNotFoundError):
        NeRSembleDataset(tmp_path / "missing")


def test_nersemble_v2_layout_with_tracking(tmp_path):
    w2c, intr, track = write_v2(tmp_path, size=(200, 300))
    ds = NeRSembleDataset(tmp_path, resolution=64, calibration_size=CALIB)
    assert len(ds) == 4 and ds.identities == [30] and ds.expression_mode == "flame"
    item = ds[3]
    assert item["frame_id"] == "030/SEN-01-cramp_small_danger/frame_00001/cam_222200038"
    expected = np.concatenate([track["expression"][1], track["jaw"][1], track["eyes"][1]])
    assert item["expression"].shape == (FLAME_EXPRESSION_DIM,)
    np.testing.assert_allclose(item["expression"], expected, rtol=1e-6)
    head = np.eye(4)
    head[:3, :3], head[:3, 3] = 1.25 * track["rotation_matrices"][1], track["translation"][1]
    np.testing.assert_allclose(item["head_pose"], head, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(item["mask"], 200 / 255, atol=1e-6)
    uv = project(item["K"].double().numpy(), item["world_to_camera"].double().numpy(), POINT)
    np.testing.assert_allclose(centroid(item["image"]), uv, atol=0.3)  # per-camera intrinsics are used
    with pytest.raises(Exception, match="expression"):
        NeRSembleDataset(tmp_path, expression="maybe")


def test_nersemble_mixed_tracking(tmp_path, caplog):
    write_v1(tmp_path)
    write_v2(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = NeRSembleDataset(tmp_path, resolution=32, calibration_size=CALIB)
    assert ds.identities == [18, 30] and ds.expression_mode == "none" and "no FLAME tracking" in caplog.text
    assert {int(ds[i]["identity"]) for i in range(len(ds))} == {0, 1}
    with pytest.raises(TrainDataError, match="018/EXP-1-head"):
        NeRSembleDataset(tmp_path, expression="flame", calibration_size=CALIB)
    only = NeRSembleDataset(tmp_path, participants=[30], resolution=32, calibration_size=CALIB)
    assert only.expression_mode == "flame" and only.identities == [30]
    batch = next(iter(torch.utils.data.DataLoader(only, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["expression"].shape == (4, FLAME_EXPRESSION_DIM)
    assert len(batch["frame_id"]) == 4


# ----------------------------------------------------------------------------------------------------------
# synthetic GenHead data


def write_synthetic(root: Path, identities: int = 2, expressions: int = 2, views: int = 2, size: int = 32,
                    motion_dim: int = 6) -> list[np.ndarray]:
    """Shards as train.synthesize writes them: one row per identity, frames expression-major."""
    rng = np.random.default_rng(1)
    all_labels = []
    settings = {"generator": "genhead", "model": "tiny", "pools": "none", "expressions": expressions,
                "views": views, "truncation": 0.7, "image_format": "png", "motion": "tiny",
                "motion_dim": motion_dim}
    (root / DATA_DIR).mkdir(parents=True)
    for i in range(identities):
        clip_id = f"id-{i:010d}"
        n = expressions * views
        labels = np.zeros((n, 437), np.float32)
        cams = [view_label(float(rng.uniform(-20, 20)), float(rng.uniform(-10, 10)))[0].numpy() for _ in range(views)]
        for k in range(n):
            labels[k, :25] = cams[k % views]
            labels[k, 325:425] = rng.normal(size=100)
            labels[k, 425:431] = [0, 0, 0, 0.1 * (k // views), 0, 0]
            labels[k, 431:437] = rng.normal(size=6)
        images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
        segs = np.zeros((n, size, size), np.uint8)
        segs[:, :, size // 2:] = 255
        row = clip_row(images, segs, labels, rng.normal(size=(n, motion_dim)).astype(np.float32), clip_id,
                       source_frames=list(range(n)))
        writer = ParquetShardWriter(root / DATA_DIR / f"train-{clip_id}.parquet", "clips", motion_dim,
                                    {**settings, "identity": {"clip_id": clip_id, "seed": i, "frames": n}},
                                    rows_per_group=1)
        writer.add(row)
        writer.close()
        all_labels.append((labels, images))
    return all_labels


def test_synthetic_items(tmp_path):
    rows = write_synthetic(tmp_path)
    ds = SyntheticMultiViewDataset(tmp_path)
    assert len(ds) == 8 and ds.identities == ["id-0000000000", "id-0000000001"]
    item = ds[5]  # identity 1, frame 1: expression 0 from camera 1
    labels, images = rows[1]
    assert int(item["identity"]) == 1 and int(item["view"]) == 1 and int(item["expression_index"]) == 0
    assert item["frame_id"] == "id-0000000001/0001"
    np.testing.assert_array_equal((item["image"].permute(1, 2, 0) * 255).round().byte().numpy(), images[1])
    np.testing.assert_allclose(item["mask"][0, 0], (np.arange(32) >= 16).astype(np.float32))
    np.testing.assert_allclose(item["expression"],
                               np.concatenate([labels[1, 325:425], labels[1, 428:431], labels[1, 431:437]]))
    assert item["motion"].shape == (6,) and bool(item["has_mask"])
    np.testing.assert_allclose(item["head_pose"], np.eye(4))
    k = item["K"].double().numpy()
    np.testing.assert_allclose(k, np.diag([32, 32, 1.0]) @ labels[1, 16:25].reshape(3, 3), rtol=1e-6)


def test_synthetic_camera_matches_the_renderer(tmp_path):
    """A point on the renderer's ray through pixel (i, j) projects to (j + 0.5, i + 0.5) with K and the
    OpenCV world-to-camera; with world_scale the same holds for the scaled point."""
    rows = write_synthetic(tmp_path, identities=1)
    label = torch.from_numpy(rows[0][0][2:3, :25])
    origins, dirs = sample_rays(label[:, :16].reshape(1, 4, 4), label[:, 16:25].reshape(1, 3, 3), 32)
    third = SyntheticMultiViewDataset(tmp_path, world_scale=1 / 3)
    for scale, ds in ((1.0, SyntheticMultiViewDataset(tmp_path)), (1 / 3, third)):
        item = ds[2]
        k, w2c = item["K"].double().numpy(), item["world_to_camera"].double().numpy()
        for i, j in ((0, 0), (5, 20), (31, 7)):
            ray = i * 32 + j
            point = (origins[0, ray] + 4.2 * dirs[0, ray]).double().numpy() * scale
            np.testing.assert_allclose(project(k, w2c, point), [j + 0.5, i + 0.5], atol=1e-3)
            assert (w2c[:3, :3] @ point + w2c[:3, 3])[2] > 0  # in front of the camera
    resized = SyntheticMultiViewDataset(tmp_path, resolution=16)[2]
    assert resized["image"].shape == (3, 16, 16)
    np.testing.assert_allclose(resized["K"], item["K"] * torch.tensor([[0.5], [0.5], [1.0]]), rtol=1e-6)


def test_gl_to_cv():
    c2w = np.eye(4)
    c2w[2, 3] = 4.0  # the frontal Portrait4D camera: identity rotation at +z looking down -z
    w2c = gl_to_cv_world_to_camera(c2w)
    np.testing.assert_allclose(w2c[:3, :3] @ np.zeros(3) + w2c[:3, 3], [0, 0, 4.0])
    np.testing.assert_allclose(w2c[:3, :3] @ np.array([0, 1.0, 0]), [0, -1.0, 0])  # world up is image up


def test_open_gphm_data_picks_the_reader(tmp_path):
    write_synthetic(tmp_path / "synth", identities=1)
    write_v1(tmp_path / "ners")
    assert isinstance(open_gphm_data(tmp_path / "synth"), SyntheticMultiViewDataset)
    assert isinstance(open_gphm_data(tmp_path / "ners", calibration_size=CALIB), NeRSembleDataset)
    with pytest.raises(FileNotFoundError):
        open_gphm_data(tmp_path / "nothing")
    loader = torch.utils.data.DataLoader(open_gphm_data(tmp_path / "synth"), batch_size=2, num_workers=0)
    batch = next(iter(loader))
    assert batch["world_to_camera"].shape == (2, 4, 4) and batch["identity"].tolist() == [0, 0]
