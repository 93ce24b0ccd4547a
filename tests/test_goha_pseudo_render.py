"""GOHA's 3DMM pseudo-render: BFM maths, coefficient mixing, nvdiffrast-style rasterisation (synthetic BFM)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fake_upstream import synthetic_bfm

from avatar.errors import AssetNotFoundError
from avatar.face.bfm import ParametricFaceModel, sh_basis
from avatar.face.deep3d import Deep3DConfig, Deep3DReconNet
from avatar.models.goha.pseudo_render import (
    PSEUDO_RENDER_FOV_DEG,
    ExpressionPseudoRenderer,
    clip_coordinates,
    mix_coefficients,
    rasterize_nvdiffrast,
    render_mesh_nvdiffrast,
)

REPO = Path(__file__).resolve().parents[1]


def random_coeffs(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(b, 257, generator=g) * 0.5
    c[:, 224:227] *= 0.6
    c[:, 227:254] *= 0.3
    c[:, 254:256] *= 0.3
    return c


# ------------------------------------------------------------------ brute-force nvdiffrast reference (float64)


def brute_force_nvdiffrast(clip: np.ndarray, faces: np.ndarray, feat: np.ndarray, size: int) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """Per pixel, per triangle: NDC pixel centres, screen-space inside test (both windings), depth test on z/w within
    [-1, 1], perspective-correct barycentric interpolation. ``clip (N, 4)``, ``feat (N, C)`` -> face map, image."""
    ndc = clip[:, :3] / clip[:, 3:]
    face_map = np.full((size, size), -1, dtype=np.int64)
    image = np.zeros((size, size, feat.shape[1]))
    for i in range(size):
        for j in range(size):
            px, py = (j + 0.5) * 2 / size - 1, (i + 0.5) * 2 / size - 1
            best = math.inf
            for fi, (a, b, c) in enumerate(faces):
                (xa, ya), (xb, yb), (xc, yc) = ndc[a, :2], ndc[b, :2], ndc[c, :2]
                area = (xb - xa) * (yc - ya) - (yb - ya) * (xc - xa)
                if abs(area) < 1e-12:
                    continue
                la = ((xb - px) * (yc - py) - (yb - py) * (xc - px)) / area
                lb = ((xc - px) * (ya - py) - (yc - py) * (xa - px)) / area
                lc = 1 - la - lb
                if min(la, lb, lc) < 0:
                    continue
                zn = la * ndc[a, 2] + lb * ndc[b, 2] + lc * ndc[c, 2]
                if zn < -1 or zn > 1 or zn >= best:
                    continue
                best = zn
                pa, pb, pc = la / clip[a, 3], lb / clip[b, 3], lc / clip[c, 3]
                s = pa + pb + pc
                face_map[i, j] = fi
                image[i, j] = (pa * feat[a] + pb * feat[b] + pc * feat[c]) / s
    return face_map, image


def test_rasteriser_matches_brute_force_reference() -> None:
    data = synthetic_bfm(1)
    model = ParametricFaceModel(data)
    coeffs = random_coeffs(2, seed=3)
    vertex, _, color, _ = model.compute_for_render(coeffs)
    size = 40
    # a wider field of view than the official so that the 40 px image shows the whole sphere
    fov = 2 * math.degrees(math.atan(0.12))
    mask, depth, image = render_mesh_nvdiffrast(vertex, model.face_buf, color, size=size, fov_deg=fov)
    pix_to_face, _, _ = rasterize_nvdiffrast(vertex, model.face_buf, size=size, fov_deg=fov)
    faces = model.face_buf.numpy()
    for b in range(2):
        clip = clip_coordinates(vertex[b:b + 1].double(), fov_deg=fov)[0].numpy()
        ref_faces, ref_image = brute_force_nvdiffrast(clip, faces, color[b].double().numpy(), size)
        assert 0.2 < (ref_faces >= 0).mean() < 0.9
        same = ref_faces == pix_to_face[b].numpy()
        assert same.mean() > 0.995  # only pixel centres within float rounding of an edge may differ
        ok = torch.from_numpy(same)
        diff = (image[b].permute(1, 2, 0).double() - torch.from_numpy(ref_image)).abs()[ok]
        assert diff.max() < 1e-5
        assert torch.equal(mask[b, 0] > 0, pix_to_face[b] >= 0)
        assert (depth[b, 0][pix_to_face[b] >= 0] > 5).all()


def test_rasteriser_orientation_and_clipping() -> None:
    # one triangle above the optical axis (y up): it must land in the upper rows; then push it past zfar
    vertex = torch.tensor([[[-0.5, 0.2, 10.0], [0.5, 0.2, 10.0], [0.0, 0.8, 10.0]]])
    faces = torch.tensor([[0, 1, 2]])
    feat = torch.ones(1, 3, 1)
    mask, _, _ = render_mesh_nvdiffrast(vertex, faces, feat, size=224)
    rows = torch.nonzero(mask[0, 0])[:, 0]
    assert rows.max() < 112 and rows.min() >= 112 - int(1015 * 0.8 / 10) - 1
    # both windings are drawn (no culling)
    mask2, _, _ = render_mesh_nvdiffrast(vertex, faces.flip(1), feat, size=224)
    assert torch.equal(mask, mask2)
    far = vertex.clone()
    far[..., 2] = 16.0
    assert render_mesh_nvdiffrast(far, faces, feat, size=224)[0].sum() == 0
    assert abs(PSEUDO_RENDER_FOV_DEG - 2 * math.degrees(math.atan(112 / 1015))) < 1e-12


def test_bfm_hand_checks() -> None:
    data = synthetic_bfm(0)
    model = ParametricFaceModel(data)
    coeffs = torch.zeros(1, 257)
    coeffs[0, 254:] = torch.tensor([0.1, -0.2, 0.5])
    vertex, texture, color, landmark = model.compute_for_render(coeffs)
    mean = data["meanshape"].reshape(-1, 3)
    centred = mean - mean.mean(0)
    expected = centred + np.array([0.1, -0.2, 0.5])
    expected[:, 2] = 10 - expected[:, 2]
    assert np.allclose(vertex[0].numpy(), expected, atol=1e-6)
    assert np.allclose(texture[0].numpy(), data["meantex"].reshape(-1, 3) / 255, atol=1e-6)
    # init_lit only: colour = 0.8 * pi / sqrt(4 pi) * texture
    assert torch.allclose(color, texture * 0.8 * math.pi / math.sqrt(4 * math.pi), atol=1e-6)
    uv = 1015 * vertex[0, :, :2] / vertex[0, :, 2:] + 112
    assert torch.allclose(landmark[0], uv[model.keypoints], atol=1e-4)
    # normals of the centred icosahedron point outwards
    n = model.compute_norm(torch.from_numpy(centred).float()[None])
    assert torch.allclose(n[0], F.normalize(torch.from_numpy(centred).float(), dim=-1), atol=1e-5)
    # SH basis: the constant band and l = 1 signs
    y = sh_basis(torch.tensor([[0.0, 0.0, 1.0]]))
    assert abs(float(y[0, 0]) - math.pi / math.sqrt(4 * math.pi)) < 1e-6 and float(y[0, 2]) > 0


def test_rotation_convention() -> None:
    # yaw (angle y) of +90 deg turns the model's +z (towards the camera) into +x
    model = ParametricFaceModel(synthetic_bfm(0))
    r = model.rotation(torch.tensor([[0.0, math.pi / 2, 0.0]]))
    assert torch.allclose(r[0] @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)


def test_missing_bfm_file(tmp_path: Path) -> None:
    with pytest.raises(AssetNotFoundError, match="BFM_model_front.mat"):
        ParametricFaceModel.from_folder(tmp_path)


def test_from_folder_roundtrip(tmp_path: Path) -> None:
    from scipy.io import savemat

    data = synthetic_bfm(0)
    savemat(str(tmp_path / "BFM_model_front.mat"), data)
    model = ParametricFaceModel.from_folder(tmp_path)
    assert model.num_vertices == 12 and model.face_buf.shape == (20, 3) and model.keypoints.shape == (68,)
    assert model.state_dict() == {}


def test_mix_coefficients() -> None:
    src, ex, drv = random_coeffs(2, 0), random_coeffs(1, 1), random_coeffs(2, 2)
    out = mix_coefficients(src, ex, drv)
    assert torch.equal(out[:, :80], src[:, :80]) and torch.equal(out[:, 80:144], drv[:, 80:144])
    assert torch.equal(out[:, 144:224], src[:, 144:224]) and torch.equal(out[:, 227:254], src[:, 227:254])
    assert torch.equal(out[:, 224:227], ex[:, 224:227].expand(2, 3))
    assert torch.equal(out[:, 254:], ex[:, 254:].expand(2, 3))
    assert torch.equal(mix_coefficients(src, ex, drv, exp_transfer=False)[:, 80:144], src[:, 80:144])


def test_pseudo_renderer_shapes_and_keys() -> None:
    torch.manual_seed(0)
    net = Deep3DReconNet(Deep3DConfig.tiny()).eval()
    renderer = ExpressionPseudoRenderer(net, ParametricFaceModel(synthetic_bfm(1)))
    assert all(k.startswith("net_recon.") for k in renderer.state_dict())
    src, drv = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    ex = torch.rand(1, 3, 64, 64) * 2 - 1
    sudo = renderer.get_sudo(src, ex, drv)
    assert sudo.shape == (1, 3, 224, 224) and sudo.min() >= -1
    out = renderer(src, ex, drv)
    assert out.shape == (1, 3, 64, 64)
    assert torch.allclose(out, F.interpolate(sudo, size=(64, 64), mode="bilinear", align_corners=False))


@pytest.mark.skipif(not os.environ.get("GOHA_OFFICIAL"), reason="GOHA_OFFICIAL (an extracted NVlabs/GOHA) not set")
def test_side_by_side_official() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_official_goha_pseudo_render.py"),
                           "--official", os.environ["GOHA_OFFICIAL"]], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
