"""Mesh export: grid, marching cubes, writers (GLB/OBJ/PLY parsed back here) and the `avatar export` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.cli import ArgumentParser, run_guarded
from avatar.errors import InputError, InputNotFoundError, MissingDependencyError, UnknownOptionValueError
from avatar.export import command, formats
from avatar.export.formats import srgb_to_linear, write_glb, write_mesh, write_obj, write_ply
from avatar.export.mesh import (
    EmptySurfaceError,
    Mesh,
    avatar_field,
    avatar_mesh,
    density_grid,
    field_colors,
    grid_axis,
    marching_cubes,
)
from avatar.pipelines import Avatar, Portrait4DPipeline, to_uint8
from avatar.pipelines.preprocess import crop_to_model_input
from avatar.render.triplane import sample_from_planes

pytest.importorskip("skimage")

BOX = 1.3
RADIUS = 0.3
CENTER = (0.12, -0.05, 0.2)  # off-centre: a swapped or flipped axis would show


def _sphere_field(points: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A :data:`~avatar.render.triplane.Field`: density ``20 (r - |p - c|)`` (level 0 = the sphere of radius r
    around c), colour from the position."""
    sigma = 20 * (RADIUS - (points - torch.tensor(CENTER)).norm(dim=-1, keepdim=True))
    rgb = (points / BOX + 0.5).clamp(0, 1)
    return torch.cat([rgb, torch.zeros_like(rgb)], dim=-1), sigma


def _edges(faces: np.ndarray) -> Counter:
    return Counter(map(tuple, np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])))


def _assert_watertight_outward(mesh: Mesh) -> float:
    directed = _edges(mesh.faces)
    assert max(directed.values()) == 1  # consistent orientation: each directed edge once...
    assert all((b, a) in directed for a, b in directed)  # ...and its reverse once: every edge in exactly 2 faces
    undirected = Counter(tuple(sorted(e)) for e in directed.elements())
    assert set(undirected.values()) == {2}
    assert set(np.unique(mesh.faces)) == set(range(mesh.num_vertices))  # no stray vertex
    a, b, c = (mesh.vertices[mesh.faces[:, i]].astype(np.float64) for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)  # > 0: counter-clockwise from outside


# ----------------------------------------------------------------------------------------------------------
# (a) analytic density


def test_sphere_marching_cubes_is_watertight_and_on_the_sphere() -> None:
    n = 48
    volume = density_grid(_sphere_field, n, BOX)
    assert volume.shape == (n, n, n) and volume.dtype == np.float32
    axis = grid_axis(n, BOX)
    assert axis[0] == -BOX / 2 and axis[-1] == BOX / 2  # EG3D's create_samples: both faces of the cube
    i, j, k = 5, 17, 40
    expected = 20 * (RADIUS - np.linalg.norm(np.array([axis[i], axis[j], axis[k]]) - CENTER))
    assert volume[i, j, k] == pytest.approx(expected, abs=1e-4)
    # the chunking (whole x slabs) does not change anything
    assert np.array_equal(density_grid(_sphere_field, n, BOX, chunk=1), volume)

    mesh = marching_cubes(volume, level=0.0, box_warp=BOX)
    voxel = BOX / (n - 1)
    assert mesh.num_faces > 1000
    assert np.abs(np.linalg.norm(mesh.vertices - CENTER, axis=1) - RADIUS).max() < voxel
    assert mesh.vertices.mean(0) == pytest.approx(CENTER, abs=voxel / 4)
    volume_enclosed = _assert_watertight_outward(mesh)
    assert volume_enclosed == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.02)

    colors = field_colors(_sphere_field, mesh.vertices)
    expected = np.clip((2 * (mesh.vertices / BOX + 0.5) - 1) * 127.5 + 128, 0, 255).astype(np.uint8)
    assert np.abs(colors.astype(int) - expected).max() <= 1


def test_border_closes_a_surface_that_leaves_the_box() -> None:
    big = 20 * (0.9 - np.linalg.norm(np.stack(np.meshgrid(*[grid_axis(24, BOX)] * 3, indexing="ij")), axis=0))
    mesh = marching_cubes(big.astype(np.float32), level=0.0, box_warp=BOX, border=1)
    assert _assert_watertight_outward(mesh) > 0
    assert np.abs(mesh.vertices).max() <= BOX / 2
    with pytest.raises(AssertionError):  # without the border it is open where it meets the box
        _assert_watertight_outward(marching_cubes(big.astype(np.float32), level=0.0, box_warp=BOX, border=0))


def test_empty_surface_and_bad_grids_say_what_to_do() -> None:
    volume = density_grid(_sphere_field, 16, BOX)
    with pytest.raises(EmptySurfaceError, match=r"below it everywhere.*pass a level between") as info:
        marching_cubes(volume, level=1e3, box_warp=BOX)
    assert isinstance(info.value, InputError)
    with pytest.raises(EmptySurfaceError, match="above it everywhere"):
        marching_cubes(volume, level=-1e3, box_warp=BOX)
    with pytest.raises(InputError, match="border"):
        marching_cubes(volume, level=0.0, box_warp=BOX, border=8)


def test_missing_scikit_image_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage -> ImportError
    with pytest.raises(MissingDependencyError, match=r"scikit-image.*avatar4d\[app\]"):
        marching_cubes(np.zeros((4, 4, 4), np.float32), level=0.5)


# ----------------------------------------------------------------------------------------------------------
# (b) writers, parsed back


@pytest.fixture(scope="module")
def sphere() -> Mesh:
    mesh = marching_cubes(density_grid(_sphere_field, 20, BOX), level=0.0, box_warp=BOX)
    mesh.colors = field_colors(_sphere_field, mesh.vertices)
    return mesh


def _read_glb(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_len % 4 == 0
    gltf = json.loads(data[20:20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_type == 0x004E4942 and bin_len % 4 == 0 and 28 + json_len + bin_len == len(data)
    binary = data[28 + json_len:28 + json_len + bin_len]
    assert gltf["buffers"][0]["byteLength"] <= bin_len
    kinds = {5126: "<f4", 5125: "<u4", 5121: "u1"}
    widths = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}
    prim = gltf["meshes"][0]["primitives"][0]
    arrays = {}
    for name, index in [*prim["attributes"].items(), ("indices", prim["indices"])]:
        acc = gltf["accessors"][index]
        view = gltf["bufferViews"][acc["bufferView"]]
        assert view["byteOffset"] % 4 == 0
        raw = binary[view["byteOffset"] + acc.get("byteOffset", 0):view["byteOffset"] + view["byteLength"]]
        values = np.frombuffer(raw, dtype=kinds[acc["componentType"]], count=acc["count"] * widths[acc["type"]])
        arrays[name] = values.reshape(acc["count"], widths[acc["type"]])
    return gltf, arrays


def _mode_ok(path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir() if ".partial-" in p.name] == []


def test_glb_parses_back(sphere: Mesh, tmp_path: Path) -> None:
    path = write_glb(sphere, tmp_path / "sub" / "head.glb")
    _mode_ok(path)
    gltf, arrays = _read_glb(path)
    assert gltf["asset"]["version"] == "2.0" and gltf["scenes"][gltf["scene"]]["nodes"] == [0]
    prim = gltf["meshes"][0]["primitives"][0]
    assert prim["mode"] == 4 and set(prim["attributes"]) == {"POSITION", "COLOR_0"}
    pos = gltf["accessors"][prim["attributes"]["POSITION"]]
    assert pos["componentType"] == 5126 and pos["type"] == "VEC3"
    assert pos["min"] == pytest.approx(sphere.vertices.min(0).tolist())
    assert pos["max"] == pytest.approx(sphere.vertices.max(0).tolist())
    assert gltf["accessors"][prim["indices"]]["componentType"] == 5125
    assert np.array_equal(arrays["POSITION"], sphere.vertices)
    assert np.array_equal(arrays["indices"].reshape(-1, 3), sphere.faces)
    assert np.allclose(arrays["COLOR_0"], srgb_to_linear(sphere.colors))
    assert gltf["materials"][0]["pbrMetallicRoughness"]["metallicFactor"] == 0.0
    # no colours: no COLOR_0
    _, plain = _read_glb(write_glb(Mesh(sphere.vertices, sphere.faces), tmp_path / "plain.glb"))
    assert "COLOR_0" not in plain


def test_srgb_to_linear_known_values() -> None:
    assert srgb_to_linear(np.array([0, 255, 188])) == pytest.approx([0.0, 1.0, 0.5029], abs=1e-4)


def test_obj_round_trip(sphere: Mesh, tmp_path: Path) -> None:
    path = write_obj(sphere, tmp_path / "head.obj")
    _mode_ok(path)
    verts, faces = [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:]])
        elif line.startswith("f "):
            faces.append([int(x) - 1 for x in line.split()[1:]])
    verts = np.array(verts)
    assert verts.shape == (sphere.num_vertices, 6)
    assert np.allclose(verts[:, :3], sphere.vertices, atol=1e-5)
    assert np.array_equal(np.round(verts[:, 3:] * 255).astype(np.uint8), sphere.colors)
    assert np.array_equal(np.array(faces), sphere.faces)


def test_ply_round_trip(sphere: Mesh, tmp_path: Path) -> None:
    path = write_ply(sphere, tmp_path / "head.ply")
    _mode_ok(path)
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    assert f"element vertex {sphere.num_vertices}" in header and f"element face {sphere.num_faces}" in header
    assert "property uchar red" in header and "property list uchar int vertex_indices" in header
    vdt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    fdt = np.dtype([("n", "u1"), ("i", "<i4", (3,))])
    v = np.frombuffer(data, vdt, sphere.num_vertices, end)
    f = np.frombuffer(data, fdt, sphere.num_faces, end + vdt.itemsize * sphere.num_vertices)
    assert len(data) == end + vdt.itemsize * sphere.num_vertices + fdt.itemsize * sphere.num_faces
    assert np.array_equal(np.stack([v["x"], v["y"], v["z"]], 1), sphere.vertices)
    assert np.array_equal(np.stack([v["r"], v["g"], v["b"]], 1), sphere.colors)
    assert (f["n"] == 3).all() and np.array_equal(f["i"], sphere.faces)


def test_writes_are_atomic_with_the_umask_mode(sphere: Mesh, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.umask(0o027)
    try:
        path = write_ply(sphere, tmp_path / "head.ply")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
    before = path.read_bytes()

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savetxt", broken)
    with pytest.raises(OSError, match="disk full"):
        write_obj(sphere, tmp_path / "head.obj")
    monkeypatch.setattr(formats.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_ply(sphere, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.ply"] and path.read_bytes() == before


def test_write_mesh_picks_the_format_and_refuses_others(sphere: Mesh, tmp_path: Path) -> None:
    assert write_mesh(sphere, tmp_path / "a.PLY").read_bytes().startswith(b"ply\n")
    assert write_mesh(sphere, tmp_path / "a.glb").read_bytes()[:4] == b"glTF"
    with pytest.raises(UnknownOptionValueError, match=r"must end in \.glb, \.obj, \.ply"):
        write_mesh(sphere, tmp_path / "a.stl")
    (tmp_path / "dir.glb").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        write_mesh(sphere, tmp_path / "dir.glb")
    assert not (tmp_path / "a.stl").exists()


# ----------------------------------------------------------------------------------------------------------
# (c) the avatar's density = the renderer's own sampling + decoder


@pytest.fixture(scope="module")
def pipe() -> Portrait4DPipeline:
    torch.set_num_threads(2)
    return Portrait4DPipeline.tiny(seed=0)


@pytest.fixture(scope="module")
def avatar(pipe: Portrait4DPipeline) -> Avatar:
    photo = (np.random.default_rng(0).random((384, 384, 3)) * 255).astype(np.uint8)  # the tiny detector sees a face
    return pipe.create_avatar(photo)


def test_grid_equals_the_renderer_density(pipe: Portrait4DPipeline, avatar: Avatar) -> None:
    model = pipe.reconstructor
    field, box = avatar_field(model, avatar.state, avatar.source_motion)
    assert box == model.config.rendering.box_warp == 1.3
    n = 24
    volume = density_grid(field, n, box, chunk=1000)
    # reference: planes recomputed from the source crop (the official order), then the renderer's sampler + decoder
    x = crop_to_model_input(avatar.source_crop[None], model.config.img_resolution, pipe.device)
    planes = model.planes(x, avatar.source_motion, avatar.source_motion, model.config.motion_scale)
    idx = np.random.default_rng(1).integers(0, n, size=(12, 3))
    axis = grid_axis(n, box)
    points = torch.tensor(axis[idx], dtype=torch.float32)[None]
    with torch.no_grad():
        feats = sample_from_planes(planes, points, box)
        out = model.decoder(feats, torch.zeros_like(points))
    torch.testing.assert_close(torch.from_numpy(volume[tuple(idx.T)]), out.sigma[0, :, 0], atol=1e-5, rtol=1e-5)
    # vertex colours: the raw image's mapping of the decoder's first 3 channels
    level = float(np.median(volume))
    mesh = avatar_mesh(pipe, avatar, resolution=n, level=level)
    some = mesh.vertices[:7]
    with torch.no_grad():
        rgb = model.decoder(sample_from_planes(planes, torch.from_numpy(some)[None], box), None).rgb
    expected = to_uint8((2 * rgb[0, :, :3] - 1).t().reshape(1, 3, -1, 1))[0, :, 0]
    assert np.abs(mesh.colors[:7].astype(int) - expected).max() <= 1
    _assert_watertight_outward(mesh)
    # another motion gives another surface; a motion of the wrong size is refused
    other = avatar_mesh(pipe, avatar, torch.randn_like(avatar.source_motion), resolution=n, level=level)
    assert other.num_vertices != mesh.num_vertices or not np.allclose(other.vertices, mesh.vertices)
    with pytest.raises(InputError, match="numbers"):
        avatar_mesh(pipe, avatar, torch.zeros(1, 3), resolution=n, level=level)


# ----------------------------------------------------------------------------------------------------------
# (d) the command


def _run(argv: list[str]) -> int:
    parser = ArgumentParser(prog="avatar export")
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: command.run(args), command="export")


@pytest.fixture(scope="module")
def saved(pipe: Portrait4DPipeline, avatar: Avatar, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    return pipe.save_pretrained(root / "tiny"), avatar.save(root / "me.avatar.safetensors")


def test_command_writes_a_mesh(pipe: Portrait4DPipeline, avatar: Avatar, saved: tuple[Path, Path],
                               tmp_path: Path) -> None:
    model_dir, avatar_file = saved
    field, box = avatar_field(pipe.reconstructor, avatar.state, avatar.source_motion)
    level = float(np.median(density_grid(field, 32, box)))
    out = tmp_path / "head.glb"
    code = _run([str(avatar_file), "--mesh", str(out), "--model", str(model_dir), "--resolution", "32",
                 "--level", str(level), "--device", "cpu"])
    assert code == 0
    gltf, arrays = _read_glb(out)
    assert arrays["POSITION"].shape[0] > 100 and np.abs(arrays["POSITION"]).max() <= box / 2
    same = tmp_path / "same.glb"  # the expression of another avatar: here the same one, so the same file
    assert _run([str(avatar_file), "--mesh", str(same), "--model", str(model_dir), "--resolution", "32",
                 "--level", str(level), "--device", "cpu", "--motion-from", str(avatar_file)]) == 0
    assert same.read_bytes() == out.read_bytes()
    assert _run([str(avatar_file), "--mesh", str(tmp_path / "m.obj"), "--model", str(model_dir), "--resolution",
                 "32", "--level", str(level), "--metres", "--device", "cpu"]) == 0
    metres = np.array([[float(x) for x in line.split()[1:4]] for line in
                       (tmp_path / "m.obj").read_text().splitlines() if line.startswith("v ")])
    assert np.allclose(metres, arrays["POSITION"] / 3, atol=1e-5)


def test_command_bad_inputs_exit_1(saved: tuple[Path, Path], tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    model_dir, avatar_file = saved
    common = ["--model", str(model_dir), "--resolution", "16", "--device", "cpu"]
    with caplog.at_level(logging.ERROR, logger="avatar"):
        assert _run([str(avatar_file), "--mesh", str(tmp_path / "head.stl"), *common]) == 1
    assert "must end in .glb, .obj, .ply" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="avatar"):
        assert _run([str(tmp_path / "nope.safetensors"), "--mesh", str(tmp_path / "h.glb"), *common]) == 1
    assert "does not exist; save an avatar first" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="avatar"):
        assert _run([str(avatar_file), "--mesh", str(tmp_path / "h.glb"), *common, "--level", "1e6"]) == 1
    assert "no surface at level 1e+06" in caplog.text and "pass a level between" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="avatar"):
        assert _run([str(avatar_file), "--mesh", str(tmp_path / "h.glb"), *common, "--border", "9"]) == 1
    assert "--resolution must leave samples" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
    with pytest.raises(InputNotFoundError):
        command.run(argparse.Namespace(avatar=str(tmp_path / "x"), mesh=str(tmp_path / "a.glb"), resolution=16,
                                       border=1, motion_from=None, device="cpu"))
