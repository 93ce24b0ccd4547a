"""The 3D Gaussian Splatting PLY writer and reader (avatar/export/ply.py)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from avatar.errors import FormatError, InputError
from avatar.export import read_gaussian_ply, write_gaussian_ply
from avatar.export.ply import OPACITY_EPS, SH_C0, colors_to_sh_dc, gaussian_ply_header, sh_dc_to_colors

BASE_PROPS = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
              "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def random_gaussians(n: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    return {"means": rng.normal(size=(n, 3)).astype(np.float32), "quats": quats.astype(np.float32),
            "scales": rng.uniform(0.001, 0.1, (n, 3)).astype(np.float32),
            "opacities": rng.uniform(0.05, 0.95, n).astype(np.float32),
            "colors": rng.uniform(0, 1, (n, 3)).astype(np.float32)}


def test_header_text_exactly(tmp_path):
    g = random_gaussians(5)
    path = write_gaussian_ply(tmp_path / "a.ply", **g)
    raw = path.read_bytes()
    expected = ("ply\nformat binary_little_endian 1.0\nelement vertex 5\n"
                + "".join(f"property float {p}\n" for p in BASE_PROPS) + "end_header\n")
    assert raw[:len(expected)].decode("ascii") == expected
    assert len(raw) == len(expected) + 5 * 17 * 4  # nothing else: 17 float32 per Gaussian, no padding
    assert gaussian_ply_header(5) == expected


def test_header_with_sh_rest_and_extras():
    text = gaussian_ply_header(2, num_rest=9, num_extra=2)
    props = [line.split()[-1] for line in text.splitlines() if line.startswith("property")]
    assert props == (BASE_PROPS[:9] + [f"f_rest_{i}" for i in range(9)] + BASE_PROPS[9:]
                     + ["f_extra_0", "f_extra_1"])
    assert all(line.startswith("property float ") for line in text.splitlines() if line.startswith("property"))


def test_bytes_layout_and_conversions(tmp_path):
    means = np.array([[1.0, -2.0, 3.5]])
    quats = np.array([[2.0, 0.0, 0.0, 0.0]])  # not unit: normalised to (1, 0, 0, 0)
    scales = np.array([[0.5, 1.0, 2.0]])
    opacity = np.array([0.25])
    color = np.array([[0.0, 0.5, 1.0]])
    path = write_gaussian_ply(tmp_path / "one.ply", means, quats, scales, opacity, color)
    raw = path.read_bytes()
    body = raw[raw.index(b"end_header\n") + len(b"end_header\n"):]
    values = struct.unpack("<17f", body)
    np.testing.assert_allclose(values[0:3], [1.0, -2.0, 3.5])
    assert values[3:6] == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(values[6:9], [-0.5 / SH_C0, 0.0, 0.5 / SH_C0], rtol=1e-6)
    np.testing.assert_allclose(values[9], np.log(0.25 / 0.75), rtol=1e-6)  # logit
    np.testing.assert_allclose(values[10:13], np.log([0.5, 1.0, 2.0]), rtol=1e-6, atol=1e-7)  # log
    assert values[13:17] == (1.0, 0.0, 0.0, 0.0)  # w first


def test_round_trip(tmp_path):
    g = random_gaussians(50, seed=3)
    extra = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    path = write_gaussian_ply(tmp_path / "sub" / "g.ply", extra_features=extra, **g)
    back = read_gaussian_ply(path)
    assert back.num_gaussians == 50 and back.sh_degree == 0 and back.sh_rest.shape == (50, 0, 3)
    np.testing.assert_allclose(back.means, g["means"], rtol=1e-6)
    np.testing.assert_allclose(back.quats, g["quats"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(back.scales, g["scales"], rtol=1e-5)
    np.testing.assert_allclose(back.opacities, g["opacities"], rtol=1e-5)
    np.testing.assert_allclose(back.colors, g["colors"], atol=1e-6)
    np.testing.assert_allclose(back.extra_features, extra)
    assert set(back.extra) == {"f_extra_0", "f_extra_1", "f_extra_2", "f_extra_3"}


def test_sh_rest_channel_major_and_padding(tmp_path):
    g = random_gaussians(4)
    rest = np.random.default_rng(2).normal(size=(4, 3, 3)).astype(np.float32)  # degree 1
    path = write_gaussian_ply(tmp_path / "sh.ply", **g, sh_rest=rest)
    back = read_gaussian_ply(path)
    assert back.sh_degree == 1
    np.testing.assert_allclose(back.sh_rest, rest)
    raw = path.read_bytes()
    body = np.frombuffer(raw[raw.index(b"end_header\n") + 11:], dtype="<f4").reshape(4, 17 + 9)
    # f_rest_{c K + k} = coefficient k of channel c (the original code's transpose)
    np.testing.assert_allclose(body[:, 9:18], rest.transpose(0, 2, 1).reshape(4, 9))
    padded = read_gaussian_ply(write_gaussian_ply(tmp_path / "sibr.ply", **g, sh_rest=rest, sh_degree=3))
    assert padded.sh_degree == 3 and padded.sh_rest.shape == (4, 15, 3)
    np.testing.assert_allclose(padded.sh_rest[:, :3], rest)
    assert not padded.sh_rest[:, 3:].any()
    assert (tmp_path / "sibr.ply").stat().st_size - len(gaussian_ply_header(4, 45)) == 4 * 62 * 4


def test_sh_dc_given_directly_and_colour_helpers(tmp_path):
    g = random_gaussians(3)
    dc = colors_to_sh_dc(g.pop("colors"))
    back = read_gaussian_ply(write_gaussian_ply(tmp_path / "dc.ply", **g, sh_dc=dc))
    np.testing.assert_allclose(back.sh_dc, dc)
    np.testing.assert_allclose(sh_dc_to_colors(colors_to_sh_dc(np.array([0.0, 0.3, 1.0]))), [0.0, 0.3, 1.0],
                               atol=1e-6)


def test_opacity_extremes_stay_finite(tmp_path):
    g = random_gaussians(2)
    g["opacities"] = np.array([0.0, 1.0])
    back = read_gaussian_ply(write_gaussian_ply(tmp_path / "o.ply", **g))
    np.testing.assert_allclose(back.opacities, [OPACITY_EPS, 1 - OPACITY_EPS], atol=1e-7)
    raw = (tmp_path / "o.ply").read_bytes()
    assert np.isfinite(np.frombuffer(raw[raw.index(b"end_header\n") + 11:], dtype="<f4")).all()


@pytest.mark.parametrize(("change", "message"), [
    ({"scales": np.zeros((3, 3))}, "positive"),
    ({"opacities": np.full(3, 1.5)}, r"\[0, 1\]"),
    ({"quats": np.zeros((3, 4))}, "zero"),
    ({"means": np.zeros((3, 2))}, "shape"),
    ({"colors": None}, "exactly one"),
    ({"means": np.full((3, 3), np.nan)}, "NaN"),
])
def test_bad_input(tmp_path, change, message):
    g = random_gaussians(3)
    g.update(change)
    with pytest.raises(InputError, match=message):
        write_gaussian_ply(tmp_path / "bad.ply", **g)
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_reader_errors(tmp_path):
    (tmp_path / "ascii.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nend_header\n")
    with pytest.raises(FormatError, match="ascii"):
        read_gaussian_ply(tmp_path / "ascii.ply")
    (tmp_path / "mesh.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n"
                                        b"property float y\nproperty float z\nend_header\n" + bytes(12))
    with pytest.raises(FormatError, match="lacks"):
        read_gaussian_ply(tmp_path / "mesh.ply")
    g = random_gaussians(3)
    path = write_gaussian_ply(tmp_path / "cut.ply", **g)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FormatError, match="truncated"):
        read_gaussian_ply(path)
    with pytest.raises(FileNotFoundError):
        read_gaussian_ply(tmp_path / "none.ply")


def test_reads_foreign_property_order_and_doubles(tmp_path):
    names = ["x", "y", "z", "opacity", "f_dc_0", "f_dc_1", "f_dc_2", "scale_0", "scale_1", "scale_2", "rot_0",
             "rot_1", "rot_2", "rot_3", "red"]
    header = ("ply\nformat binary_little_endian 1.0\ncomment foreign\nelement vertex 1\n"
              + "".join(f"property {'uchar' if n == 'red' else 'double'} {n}\n" for n in names) + "end_header\n")
    rec = struct.pack("<14dB", 1, 2, 3, 0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 200)
    (tmp_path / "f.ply").write_bytes(header.encode() + rec)
    back = read_gaussian_ply(tmp_path / "f.ply")
    np.testing.assert_allclose(back.means, [[1, 2, 3]])
    np.testing.assert_allclose(back.opacities, [0.5])
    np.testing.assert_allclose(back.scales, np.ones((1, 3)))
    np.testing.assert_allclose(back.quats, [[0, 0, 0, 1]])
    assert back.extra["red"][0] == 200
