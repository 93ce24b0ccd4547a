"""Face-alignment geometry and one-euro smoothing against the official Portrait4D preprocessing.

Media tests read ``../shared/media/portraits`` (official aligned examples with their landmarks and FLAME
labels, and unaligned photos with 5-point detections) and skip when it is absent.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from avatar.face import geometry as geo
from avatar.face import smoothing as sm
from avatar.render.camera import inference_label

# ----------------------------------------------------------------------------------------------------------
# helpers


def _aligned_dir(shared_media: Path) -> Path:
    root = shared_media / "portraits" / "aligned"
    if not (root / "2dldmks_align").is_dir():
        pytest.skip(f"{root} is absent")
    return root


def _aligned_names(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "2dldmks_align").glob("*.npy"))


def _wild_examples(shared_media: Path) -> list[tuple[str, Path, np.ndarray]]:
    root = shared_media / "portraits" / "wild" / "deep3d"
    if not (root / "detections").is_dir():
        pytest.skip(f"{root} is absent")
    out = []
    for img in sorted([*root.glob("*.jpg"), *root.glob("*.png")]):
        det = root / "detections" / f"{img.stem}.txt"
        if det.is_file():
            out.append((img.stem, img, np.loadtxt(det)))
    return out


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _official_crop_literal(img: np.ndarray, p: geo.AlignParams) -> np.ndarray:
    """The official resize / pad / crop steps, written out literally."""
    pil = Image.fromarray(img)
    w, h = int(p.width * p.scale), int(p.height * p.scale)
    pil = pil.resize((w, h), resample=Image.LANCZOS)
    left = int(w / 2 - p.target_size / 2 + (p.tx - p.width / 2) * p.scale)
    up = int(h / 2 - p.target_size / 2 + (p.height / 2 - p.ty) * p.scale)
    right, below = left + p.target_size, up + p.target_size
    pad = max(abs(min(0, left)), abs(min(0, up)), max(right - w, 0), max(below - h, 0))
    if pad > 0:
        pil = Image.fromarray(np.pad(np.asarray(pil), ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    return np.asarray(pil.crop((left + pad, up + pad, right + pad, below + pad)))


def _pos_lstsq_literal(xp: np.ndarray, x3: np.ndarray) -> tuple[np.ndarray, float]:
    """Deep3DFaceRecon POS with its 8-column interleaved design matrix and lstsq."""
    n = xp.shape[0]
    a = np.zeros([2 * n, 8])
    a[0::2, 0:3] = x3
    a[0::2, 3] = 1
    a[1::2, 4:7] = x3
    a[1::2, 7] = 1
    k = np.linalg.lstsq(a, xp.reshape(2 * n, 1), rcond=None)[0][:, 0]
    return np.array([k[3], k[7]]), 0.5 * (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7]))


# ----------------------------------------------------------------------------------------------------------
# 512 crop


def test_five_points_from_landmarks() -> None:
    lm98 = np.arange(98 * 2, dtype=np.float64).reshape(98, 2)
    five = geo.five_points_from_wflw98(lm98)
    assert five.shape == (5, 2)
    np.testing.assert_array_equal(five, lm98[[96, 97, 54, 76, 82]])
    assert geo.five_points_from_wflw98(np.stack([lm98, lm98 + 1])).shape == (2, 5, 2)

    lm68 = np.random.default_rng(0).normal(size=(68, 2))
    five68 = geo.five_points_from_68(lm68)
    np.testing.assert_allclose(five68[0], lm68[[36, 39]].mean(0))
    np.testing.assert_allclose(five68[1], lm68[[42, 45]].mean(0))
    np.testing.assert_allclose(five68[2:], lm68[[30, 48, 54]])
    with pytest.raises(ValueError):
        geo.five_points_from_wflw98(lm68)


def test_pos_fit_matches_lstsq() -> None:
    rng = np.random.default_rng(1)
    template = geo.alignment_template()
    np.testing.assert_allclose(template[:, 1:] - geo.BFM_FIVE_POINTS_3D[:, 1:], [[0.1, 0.4]] * 5)
    pts = rng.normal(size=(6, 5, 2)) * 30 + 200
    t, s = geo.pos_fit(pts)
    assert t.shape == (6, 2) and s.shape == (6,)
    for i in range(6):
        t_ref, s_ref = _pos_lstsq_literal(pts[i], template)
        np.testing.assert_allclose(t[i], t_ref, rtol=0, atol=1e-9)
        assert s[i] == pytest.approx(s_ref, rel=1e-12)
    # a similarity of the points scales / shifts the fit accordingly
    t2, s2 = geo.pos_fit(pts[0] * 2.5 + np.array([7.0, -3.0]))
    assert s2 == pytest.approx(2.5 * s[0], rel=1e-12)
    np.testing.assert_allclose(t2, 2.5 * t[0] + [7.0, -3.0], atol=1e-9)


def test_align_params_geometry() -> None:
    p = geo.AlignParams(width=400, height=300, scale=1.5, tx=180.3, ty=140.7)
    assert p.resized_size == (600, 450)
    left, top, right, bottom = p.crop_box
    assert (right - left, bottom - top) == (512, 512)
    assert left == int(300 - 256 + (180.3 - 200) * 1.5)
    assert top == int(225 - 256 + (150 - 140.7) * 1.5)
    assert geo.AlignParams.from_array(p.to_array()) == p
    # truncation toward zero, as numpy astype(int32), for negative offsets
    q = geo.AlignParams(width=100, height=100, scale=1.0, tx=10.6, ty=50.0)
    assert q.crop_box[0] == int(50 - 256 + (10.6 - 50)) == -245
    # landmark maps invert each other
    pts = np.random.default_rng(2).uniform(0, 300, size=(3, 68, 3))
    back = geo.inverse_transform_landmarks(geo.transform_landmarks(pts, p), p)
    np.testing.assert_allclose(back, pts[..., :2], atol=1e-9)


@pytest.mark.media
def test_official_aligned_landmarks_fit_the_crop(shared_media: Path) -> None:
    """On the 32 official aligned photos, the stored 2D landmarks re-fit to scale 180 and a centred crop.

    The official landmark map is affine, so re-fitting the template to the stored five points must give
    exactly ``rescale_factor`` and a translation ``256 + frac(size * s) / 2`` in ``[256, 256.5)`` on both axes.
    A different template (e.g. without its +0.1 y / +0.4 z shift), index list or y convention does not.
    """
    root = _aligned_dir(shared_media)
    names = _aligned_names(root)
    assert len(names) == 32
    five = np.stack(
        [geo.five_points_from_wflw98(np.load(root / "2dldmks_align" / f"{n}.npy")) for n in names]
    )
    five_yup = np.stack([five[..., 0], 512 - five[..., 1]], axis=-1)  # official output flip: 512 - y
    t, s = geo.pos_fit(five_yup)
    np.testing.assert_allclose(s, 180.0, rtol=1e-12)  # measured: 4.5e-13 absolute
    assert t.min() >= 256.0 - 1e-6 and t.max() < 256.5  # measured: [256.0009, 256.488]
    t_plain, _ = geo.pos_fit(five_yup, geo.BFM_FIVE_POINTS_3D)
    assert np.abs(t_plain - 256.25).max() > 10  # the template shift matters


@pytest.mark.media
def test_realigning_an_aligned_photo_is_the_identity(shared_media: Path) -> None:
    """The whole pipeline on an official crop with its own landmarks gives back the crop (s = 1).

    When ``512 s`` truncates to 511 (s a hair below 1, 1 of 32 photos) the official code resamples; that
    case is only checked to stay close.
    """
    root = _aligned_dir(shared_media)
    identical = 0
    for name in _aligned_names(root)[:8]:
        lm = np.load(root / "2dldmks_align" / f"{name}.npy")
        img = _rgb(root / "align_images" / f"{name}.jpg")
        crop, p, lm_crop = geo.align_face(img, lm)
        assert p.scale == pytest.approx(1.0, abs=1e-12)
        assert np.abs(lm_crop - lm).max() < 0.5  # measured <= 0.47 px
        if p.resized_size == (512, 512):
            assert p.crop_box == (0, 0, 512, 512)
            np.testing.assert_array_equal(crop, img)
            identical += 1
        else:
            assert np.abs(crop.astype(np.int64) - img).mean() < 5
    assert identical >= 6


@pytest.mark.media
def test_warp_matches_official_steps_on_wild_photos(shared_media: Path) -> None:
    """Unaligned photos with 5-point detections: bit-identical to the literal official resize/pad/crop."""
    examples = _wild_examples(shared_media)
    assert len(examples) >= 20
    for _name, path, five in examples[::3]:
        img = _rgb(path)
        crop, p, five_crop = geo.align_face(img, five)
        assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
        np.testing.assert_array_equal(crop, _official_crop_literal(img, p))
        # the landmark map, written as in the official resize_n_crop_img
        w, h = p.resized_size
        x = (five[:, 0] - p.tx + p.width / 2) * p.scale - (w / 2 - 256)
        y_up = ((p.height - 1 - five[:, 1]) - p.ty + p.height / 2) * p.scale - (h / 2 - 256)
        np.testing.assert_allclose(five_crop, np.stack([x, 512 - y_up], -1), atol=1e-9)
    # the region-only resampling used for huge resized images: at most one grey level off
    img = _rgb(examples[0][1])
    p = geo.estimate_align_params(examples[0][2], (img.shape[1], img.shape[0]))
    full = geo.warp_to_aligned(img, p)
    part = geo.warp_to_aligned(img, p, max_full_resize_pixels=0)
    assert np.abs(full.astype(np.int64) - part).max() <= 1


@pytest.mark.media
def test_wild_crops_look_like_official_crops(shared_media: Path) -> None:
    """The five points of our crops of other photos sit where the official crops put them (mean over photos)."""
    root = _aligned_dir(shared_media)
    official = np.stack(
        [
            geo.five_points_from_wflw98(np.load(root / "2dldmks_align" / f"{n}.npy"))
            for n in _aligned_names(root)
        ]
    )
    ours = []
    for _name, path, five in _wild_examples(shared_media):
        with Image.open(path) as im:
            size = im.size
        ours.append(geo.transform_landmarks(five, geo.estimate_align_params(five, size)))
    diff = np.abs(np.mean(ours, 0) - official.mean(0))
    assert diff.max() < 10  # measured 5.3 px (different photo sets and detectors)


@pytest.mark.media
def test_torch_warp_close_to_pil(shared_media: Path) -> None:
    """Torch path (bicubic, antialiased when shrinking): same geometry, small resampling differences."""
    examples = _wild_examples(shared_media)
    chosen = [examples[i] for i in (0, 13)]  # one enlarged (s = 1.29), one shrunk (s = 0.39)
    for _name, path, five in chosen:
        img = _rgb(path)
        p = geo.estimate_align_params(five, (img.shape[1], img.shape[0]))
        ref = geo.warp_to_aligned(img, p).astype(np.float64)
        chw = torch.from_numpy(img.copy()).permute(2, 0, 1)
        out = geo.warp_to_aligned(chw.float(), p).permute(1, 2, 0).numpy()
        assert np.abs(out - ref).mean() < 1.0  # measured 0.2-0.6 grey levels
        batch = geo.warp_to_aligned(torch.stack([chw, chw]), [p, p])
        assert batch.shape == (2, 3, 512, 512) and batch.dtype == torch.uint8


# ----------------------------------------------------------------------------------------------------------
# PD-FGC crop


def _bilinear_reference(img: np.ndarray, coords_x: np.ndarray, coords_y: np.ndarray) -> np.ndarray:
    """(C, H, W) image sampled at pixel-index coordinates, zero outside (grid_sample align_corners=True)."""
    c, h, w = img.shape
    x0, y0 = np.floor(coords_x).astype(int), np.floor(coords_y).astype(int)
    fx, fy = coords_x - x0, coords_y - y0
    out = np.zeros((c, *coords_x.shape))
    for dx, dy, wgt in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        out += np.where(ok, img[:, yi.clip(0, h - 1), xi.clip(0, w - 1)], 0.0) * wgt
    return out


def _resize_reference(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (torch ``align_corners=False``)."""
    _, h, w = img.shape
    sy = np.maximum((np.arange(size) + 0.5) * h / size - 0.5, 0)
    sx = np.maximum((np.arange(size) + 0.5) * w / size - 0.5, 0)
    gy, gx = np.meshgrid(sy, sx, indexing="ij")
    return _bilinear_reference(np.pad(img, ((0, 0), (0, 1), (0, 1)), mode="edge"), gx, gy)


@pytest.mark.media
def test_pdfgc_crop_against_skimage_and_reference_sampling(shared_media: Path) -> None:
    transform = pytest.importorskip("skimage.transform")
    root = _aligned_dir(shared_media)
    names = _aligned_names(root)[::8]  # 4 photos
    lms = torch.from_numpy(np.stack([np.load(root / "3dldmks_align" / f"{n}.npy") for n in names]))
    imgs = np.stack([_rgb(root / "align_images" / f"{n}.jpg") for n in names]).astype(np.float32) / 127.5 - 1
    imgs_t = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()

    mats = geo.pdfgc_affine(lms, 512)
    assert mats.shape == (len(names), 2, 3) and mats.dtype == torch.float32
    template = np.array(geo.PDFGC_TEMPLATE)
    for i in range(len(names)):
        lm = lms[i].numpy()
        kp = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[60:68].mean(0)])
        if hasattr(transform.SimilarityTransform, "from_estimate"):  # skimage >= 0.26
            tf = transform.SimilarityTransform.from_estimate(kp, template)
        else:  # the official 0.19 API
            tf = transform.SimilarityTransform()
            tf.estimate(kp, template)
        # measured: bit-identical after the official float32 cast on all 32 photos
        np.testing.assert_allclose(mats[i].numpy(), tf.params[:2].astype(np.float32), rtol=0, atol=1e-6)
        mapped = kp @ mats[i, :, :2].double().numpy().T + mats[i, :, 2].double().numpy()
        assert np.abs(mapped - template).max() < 6  # 3-point similarity residual, a few 224-pixels

    crops = geo.pdfgc_crop(imgs_t, lms)
    assert crops.shape == (len(names), 3, 224, 224)
    assert crops.min() >= -1 and crops.max() <= 1
    for i in range(len(names)):
        inv = np.linalg.inv(np.vstack([mats[i].double().numpy(), [0, 0, 1]]))
        gy, gx = np.meshgrid(np.arange(224.0), np.arange(224.0), indexing="ij")
        sx = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
        sy = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
        warped = _bilinear_reference(imgs[i].transpose(2, 0, 1).astype(np.float64), sx, sy)
        ref = np.clip(_resize_reference(warped[:, :192, 16:208], 224), -1, 1)
        err = np.abs(crops[i].double().numpy() - ref).max()
        assert err < 2e-4, err  # measured <= 4.2e-5 (float32 sampling grid)

    # reverse_y flips the landmarks about the image size - 1
    flipped = lms.clone()
    flipped[..., 1] = 511 - flipped[..., 1]
    torch.testing.assert_close(geo.pdfgc_affine(flipped, 512, reverse_y=True), mats)


def test_pdfgc_crop_synthetic_square() -> None:
    """A frontal synthetic face whose keypoints sit on the template: the warp is the identity."""
    lm = torch.zeros(1, 68, 2, dtype=torch.float64)
    for sl, (x, y) in zip((slice(36, 42), slice(42, 48), slice(60, 68)), geo.PDFGC_TEMPLATE, strict=True):
        lm[0, sl] = torch.tensor([x, y], dtype=torch.float64)
    mat = geo.pdfgc_affine(lm, 224)
    torch.testing.assert_close(mat[0], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), atol=1e-5, rtol=0)
    img = torch.rand(1, 3, 224, 224) * 2 - 1
    torch.testing.assert_close(geo.warp_affine(img, mat, (224, 224)), img, atol=1e-4, rtol=0)
    out = geo.pdfgc_crop(img, lm)
    ref = F.interpolate(img[:, :, :192, 16:208], size=(224, 224), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref.clamp(-1, 1), atol=1e-4, rtol=0)
    # degenerate keypoints give the identity, as the official det == 0 fallback
    assert torch.equal(
        geo.similarity_matrix(torch.zeros(1, 3, 2), torch.ones(3, 2))[0], torch.eye(3).double()
    )


# ----------------------------------------------------------------------------------------------------------
# Head pose and camera label


def test_bfm_angles_to_flame_pose_matches_scipy() -> None:
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    rng = np.random.default_rng(3)
    angles = rng.uniform(-0.8, 0.8, size=(64, 3))
    ours_rot = geo.bfm_angles_to_rotation(torch.from_numpy(angles)).numpy()
    for i in (0, 1):  # Rz Ry Rx written out
        a, b, c = angles[i]
        rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
        ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
        rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
        np.testing.assert_allclose(ours_rot[i], rz @ ry @ rx, atol=1e-14)
    plain = rotation.from_matrix(ours_rot).as_rotvec()
    np.testing.assert_allclose(
        geo.bfm_angles_to_flame_pose(torch.from_numpy(angles), rectify=False), plain, atol=1e-12
    )
    diff = rotation.from_euler("xyz", np.array(geo.BFM_TO_FLAME_EULER)).as_matrix()
    rectified = rotation.from_matrix(diff @ ours_rot).as_rotvec()
    np.testing.assert_allclose(geo.bfm_angles_to_flame_pose(torch.from_numpy(angles)), rectified, atol=1e-12)


def test_matrix_to_axis_angle_round_trip() -> None:
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    rng = np.random.default_rng(4)
    axes = rng.normal(size=(200, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate(
        [rng.uniform(0, math.pi - 1e-3, 194), [0.0, 1e-9, 1e-5, math.pi - 1e-6, 3.0, 0.5]]
    )
    vecs = axes * angles[:, None]
    mats = torch.from_numpy(rotation.from_rotvec(vecs).as_matrix())
    back = geo.matrix_to_axis_angle(mats).numpy()
    np.testing.assert_allclose(back, vecs, atol=2e-9)
    np.testing.assert_allclose(back, rotation.from_matrix(mats.numpy()).as_rotvec(), atol=2e-9)


def test_flame_label_layout() -> None:
    label = torch.arange(2 * 437, dtype=torch.float32).reshape(2, 437)
    fl = geo.FlameLabel.from_label(label)
    assert fl.camera.shape == (2, 25) and fl.shape.shape == (2, 300) and fl.expression.shape == (2, 100)
    assert fl.pose.shape == (2, 6) and fl.eye_pose.shape == (2, 6)
    assert fl.cam2world.shape == (2, 4, 4) and fl.intrinsics.shape == (2, 3, 3)
    assert fl.shape[0, 0] == 25 and fl.expression[0, 0] == 325 and fl.neck_pose[0, 0] == 425
    assert fl.jaw_pose[0, 0] == 428 and fl.eye_pose[0, 0] == 431
    assert torch.equal(fl.to_label(), label)
    with pytest.raises(ValueError):
        geo.FlameLabel.from_label(torch.zeros(436))
    # zero pose: the camera is the fixed inference camera
    cam = geo.camera_label_from_pose(torch.zeros(3, 6))
    torch.testing.assert_close(cam, inference_label(3), atol=1e-7, rtol=0)


@pytest.mark.media
def test_label_cameras_from_poses(shared_media: Path) -> None:
    """Camera of every official label recomputed from its pose.

    ``bfm2flame_params_simplified``: the whole 25-number camera (measured: bit-identical, max diff 0).
    ``flame_optim_params``: rotation and intrinsics (the translation is optimised; measured 6e-8).
    """
    root = _aligned_dir(shared_media)
    names = _aligned_names(root)
    simple = np.stack([np.load(root / "bfm2flame_params_simplified" / f"{n}.npy") for n in names])
    optim = np.stack([np.load(root / "flame_optim_params" / f"{n}.npy") for n in names])
    assert simple.shape == optim.shape == (32, 437) and simple.dtype == np.float32

    fl = geo.FlameLabel.from_label(simple)
    assert torch.equal(fl.to_label(), torch.from_numpy(simple))
    recomputed = fl.with_camera_from_pose()
    assert (recomputed.camera - fl.camera).abs().max().item() <= 1e-6
    assert torch.equal(fl.eye_pose, torch.zeros_like(fl.eye_pose))  # simplified path: eyes at rest

    fo = geo.FlameLabel.from_label(optim)
    cam = geo.camera_label_from_pose(fo.pose)
    rot_ours = cam[:, :16].reshape(-1, 4, 4)[:, :3, :3]
    assert (rot_ours - fo.cam2world[:, :3, :3]).abs().max().item() < 1e-6
    assert (fo.intrinsics - fl.intrinsics).abs().max().item() == 0
    torch.testing.assert_close(fo.intrinsics[:, 0, 0], torch.full((32,), 1 / (2 * math.tan(math.radians(6)))))


# ----------------------------------------------------------------------------------------------------------
# One-euro smoothing


def _scalar_one_euro(xs: list[float], min_cutoff: float, beta: float, d_cutoff: float) -> list[float]:
    """Plain scalar one-euro filter with unit time steps (first sample passes through)."""

    def alpha(cutoff: float) -> float:
        r = 2 * math.pi * cutoff
        return r / (r + 1)

    out = [xs[0]]
    x_prev, dx_prev = xs[0], 0.0
    for x in xs[1:]:
        dx = alpha(d_cutoff) * (x - x_prev) + (1 - alpha(d_cutoff)) * dx_prev
        a = alpha(min_cutoff + beta * abs(dx))
        x_prev, dx_prev = a * x + (1 - a) * x_prev, dx
        out.append(x_prev)
    return out


def test_one_euro_constant_and_step() -> None:
    const = np.full((50, 3), 7.25)
    np.testing.assert_array_equal(sm.one_euro_filter(const, sm.CROP_TRANSLATION_FILTER), const)

    step = np.concatenate([np.zeros(10), np.ones(40)])
    out = sm.one_euro_filter(step, sm.OneEuroParams(min_cutoff=0.05, beta=1.0))
    np.testing.assert_array_equal(out[:10], 0.0)
    assert 0 < out[10] < 1  # lag on the step
    assert np.all(np.diff(out[10:]) > 0) and np.all(out <= 1)  # monotone approach, no overshoot
    assert out[-1] > 0.95


def test_one_euro_matches_scalar_reference() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(120)
    signal = np.stack(
        [np.sin(t / 9.0) * 20 + rng.normal(0, 1, t.size), np.cumsum(rng.normal(0, 2, t.size))], -1
    )
    for params in (
        sm.CROP_TRANSLATION_FILTER,
        sm.CROP_SCALE_FILTER,
        sm.POSE_FILTER,
        sm.OneEuroParams(0.5, 0.3, 2.0),
    ):
        ours = sm.one_euro_filter(signal, params)
        for c in range(2):  # channels are independent
            ref = _scalar_one_euro(list(signal[:, c]), params.min_cutoff, params.beta, params.d_cutoff)
            np.testing.assert_allclose(ours[:, c], ref, rtol=1e-12, atol=1e-12)
        torch_out = sm.one_euro_filter(torch.from_numpy(signal), params)
        np.testing.assert_allclose(torch_out.numpy(), ours, rtol=1e-12, atol=1e-12)


def test_one_euro_timestamps_and_reset() -> None:
    f = sm.OneEuroFilter(min_cutoff=0.1, beta=0.0)
    assert f(np.array(1.0)) == 1.0
    y = f(np.array(2.0), t=2.0)  # a step of 2 time units
    a = sm.smoothing_factor(2.0, 0.1)
    assert y == pytest.approx(a * 2 + (1 - a) * 1)
    with pytest.raises(ValueError):
        f(np.array(3.0), t=1.0)
    f.reset()
    assert f(np.array(5.0)) == 5.0


def test_smooth_align_params_uses_official_filters() -> None:
    rng = np.random.default_rng(6)
    params = [
        geo.AlignParams(640, 480, 1.2 + 0.01 * rng.normal(), 320 + rng.normal(), 250 + rng.normal())
        for _ in range(30)
    ]
    out = sm.smooth_align_params(params)
    assert out[0] == params[0] and len(out) == 30
    t_ref = _scalar_one_euro([p.tx for p in params], 0.001, 0.05, 1.0)
    s_ref = _scalar_one_euro([p.scale for p in params], 0.0001, 0.005, 1.0)
    np.testing.assert_allclose([p.tx for p in out], t_ref, rtol=1e-12)
    np.testing.assert_allclose([p.scale for p in out], s_ref, rtol=1e-12)
    assert np.std([p.tx for p in out]) < np.std([p.tx for p in params])
    assert all((p.width, p.height) == (640, 480) for p in out)
    assert sm.smooth_align_params([]) == []
    poses = torch.zeros(10, 6)
    assert torch.equal(sm.smooth_poses(poses), poses)
