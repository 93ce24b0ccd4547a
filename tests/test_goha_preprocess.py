"""GOHA's preprocessing (avatar/models/goha/preprocess.py): EG3D's in-the-wild crop and its photo <-> crop map, the
25-number camera label, the matte, and the whole chain on tiny random networks.

Hand-computed numbers follow EG3D's ``crop_images_in_the_wild.py`` (align_img 1024 / 300, centre 700 at 162,
LANCZOS to 512), ``3dface2idr_mat.py`` (R = compute_rotation(angle) = (Rz Ry Rx)^T, trans z - 10, c = -R t * 0.27,
R diag(1, -1, -1)) and ``preprocess_face_cameras.py`` (radius 2.7, focal 2985.29 / 700).
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avatar.errors import FaceTooSmallError, ImageReadError, InputError, NoFaceError
from avatar.face.deep3d import Deep3DReconNet
from avatar.face.geometry import AlignParams
from avatar.face.modnet import MODNet
from avatar.face.retinaface import DetectedFace, RetinaFace, rig_for_random_weights
from avatar.models.goha.preprocess import (
    DEEP3D_LM3D_FIVE_POINTS,
    EG3D_FOCAL,
    GOHACropTransform,
    GOHAPreprocessor,
    eg3d_cam2world,
    eg3d_camera_label,
    eg3d_crop,
    fix_pose_orig,
    mask_image,
    quantize_matte,
)

K = 512 / 700


# ---------------------------------------------------------------------------------------------------------
# the crop


def test_crop_transform_hand_computed() -> None:
    # photo 1000x800 resized by 0.5 to 500x400; fitted centre at the photo centre (tx = 500, ty = 400 y-up)
    params = AlignParams(1000, 800, 0.5, 500.0, 400.0, 1024)
    assert params.resized_size == (500, 400)
    assert params.crop_box == (-262, -312, 762, 712)  # int(250 - 512), int(200 - 512)
    t = GOHACropTransform(params)
    assert t.center_crop_box == (162, 162, 862, 862)
    m = t.photo_to_crop()
    assert m[0, 0] == pytest.approx(0.5 * K) and m[1, 1] == pytest.approx(0.5 * K)
    assert m[0, 1] == 0 and m[1, 0] == 0
    # pixel-edge x = 0 of the photo -> 262 in the 1024 crop -> 100 in the centre crop -> 100 * 512 / 700
    assert m[0, 2] == pytest.approx((0.25 + 262 - 162) * K - 0.5)
    assert m[1, 2] == pytest.approx((0.25 + 312 - 162) * K - 0.5)
    # the photo's centre lands on the crop's centre
    centre = t.to_crop(np.array([[499.5, 399.5]]))
    assert np.allclose(centre, [[255.5, 255.5]])
    assert np.allclose(t.to_crop([[-0.5, -0.5]]), [[100 * K - 0.5, 150 * K - 0.5]])
    # inverse, any leading shape
    pts = np.random.default_rng(0).uniform(-50, 1050, (3, 7, 2))
    assert np.allclose(t.to_photo(t.to_crop(pts)), pts)
    assert np.allclose(t.to_crop(t.to_photo(pts)), pts)
    # the paste-back parameters agree with the exact map to a small fraction of a pixel
    ap = t.as_align_params()
    assert ap.target_size == 512 and ap.scale == pytest.approx(0.5 * K)


def _exact_five_points(size: int, fitted_scale: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    """Five photo points (y down) that Deep3D's POS fits exactly with scale ``fitted_scale`` and translation
    ``centre`` (y-up; default the photo centre): the template's x, y scaled, shifted, flipped back from y-up."""
    up = DEEP3D_LM3D_FIVE_POINTS[:, :2] * fitted_scale + np.asarray(centre or (size / 2, size / 2))
    return np.stack([up[:, 0], size - 1 - up[:, 1]], axis=1)


def test_eg3d_crop_of_a_centred_face_is_a_padded_resize() -> None:
    # resize factor 300 / fitted scale just above 1: the photo keeps its size (600); fitted centre (300.5, 299.5)
    # y-up, so the 1024 crop starts at int(300 - 512 + 0.5) = int(-211.5) = -211 (truncation toward zero, as
    # numpy's astype(int32)) on both axes; the centre 700 crop (at 162) starts 49 px before the photo: black
    # borders of 49 px, then 700 -> 512 with PIL's LANCZOS
    size = 600
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    five = _exact_five_points(size, 300 / 1.0000001, (300.5, 299.5))
    crop, t = eg3d_crop(photo, five)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    assert t.align.resized_size == (600, 600)
    assert t.align.crop_box[:2] == (-211, -211)
    assert t.align.scale == pytest.approx(1.0000001, rel=1e-9)
    assert t.align.tx == pytest.approx(300.5) and t.align.ty == pytest.approx(299.5)  # y flipped back: H - 1 - y
    padded = np.zeros((700, 700, 3), np.uint8)
    padded[49:649, 49:649] = photo
    expected = np.asarray(Image.fromarray(padded).resize((512, 512), Image.LANCZOS))
    assert np.array_equal(crop, expected)
    # the photo's first pixel centre: edge 0.5 -> 211.5 in the 1024 crop -> 49.5 in the 700 crop -> * 512 / 700
    assert np.allclose(t.to_crop([[0.0, 0.0]]), [[49.5 * K - 0.5] * 2], atol=1e-4)
    assert np.allclose(t.to_crop(five), (five + 49.5) * K - 0.5, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# the camera


def test_camera_label_layout_frontal() -> None:
    label = eg3d_camera_label(torch.zeros(1, 3), torch.zeros(1, 3))
    assert label.shape == (1, 25) and label.dtype == torch.float32
    pose = label[0, :16].view(4, 4)
    expected = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]])
    assert torch.allclose(pose, expected, atol=1e-6)
    intr = label[0, 16:].view(3, 3)
    f = 2985.29 / 700
    assert pytest.approx(4.2647, abs=1e-4) == EG3D_FOCAL and f == EG3D_FOCAL
    assert torch.allclose(intr, torch.tensor([[f, 0, 0.5], [0, f, 0.5], [0, 0, 1.0]]), atol=1e-6)


def test_camera_label_yaw_and_radius() -> None:
    theta = 0.3
    angle = torch.tensor([[0.0, theta, 0.0]], dtype=torch.float64)
    trans = torch.tensor([[0.1, -0.2, 0.5]], dtype=torch.float64)
    pose = eg3d_cam2world(angle, trans)
    # R = Ry^T; t = (0.1, -0.2, -9.5); c = -R t * 0.27
    ry = torch.tensor([[math.cos(theta), 0, math.sin(theta)], [0, 1, 0], [-math.sin(theta), 0, math.cos(theta)]],
                      dtype=torch.float64)
    c = -(ry.T @ torch.tensor([0.1, -0.2, -9.5], dtype=torch.float64)) * 0.27
    assert torch.allclose(pose[0, :3, 3], c)
    assert torch.allclose(pose[0, :3, :3], ry.T @ torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)))
    fixed = fix_pose_orig(pose)
    assert torch.linalg.norm(fixed[0, :3, 3]).item() == pytest.approx(2.7)
    assert torch.allclose(fixed[0, :3, 3] / 2.7, c / c.norm())
    label = eg3d_camera_label(angle, trans)
    assert torch.allclose(label[0, :16].double().view(4, 4), fixed[0], atol=1e-6)
    # the yaw moves the camera to -x for a positive angle (camera position 2.7 (-sin, 0, cos) at zero translation)
    zero = eg3d_camera_label(angle, torch.zeros(1, 3))
    assert torch.allclose(zero[0, [3, 7, 11]].double(),
                          2.7 * torch.tensor([-math.sin(theta), 0, math.cos(theta)], dtype=torch.float64), atol=1e-6)


def test_submission_offsets_are_off_by_default() -> None:
    for fn in (eg3d_cam2world, eg3d_camera_label):
        assert inspect.signature(fn).parameters["submission_offsets"].default is False
    angle, trans = torch.zeros(1, 3), torch.zeros(1, 3)
    plain = eg3d_cam2world(angle, trans)
    eg3d = eg3d_cam2world(angle, trans, submission_offsets=True)
    assert torch.allclose(eg3d[0, :3, 3] - plain[0, :3, 3], torch.tensor([0, 0.006, 0.161], dtype=torch.float64))
    with_offsets = eg3d_camera_label(angle, trans, submission_offsets=True)[0, :16].view(4, 4)
    expected = torch.tensor([0.0, 0.006, 2.861]) / math.hypot(0.006, 2.861) * 2.7
    assert torch.allclose(with_offsets[:3, 3], expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# the matte


def test_matte_quantisation_truncates_like_the_saved_png() -> None:
    matte = torch.tensor([0.0, 0.5, 0.999, 1.0, 1.2, -0.1, 0.00392]).view(1, 1, 1, 7)
    q = quantize_matte(matte)
    expected = torch.tensor([0, 127, 254, 255, 255, 0, 0]) / 255
    assert torch.allclose(q.flatten(), expected.float())
    assert q.dtype == torch.float32


def test_mask_image_multiplies_the_uint8_crop() -> None:
    crop = np.full((2, 3, 3), 200, np.uint8)
    crop[0, 0] = (10, 20, 30)
    matte = torch.tensor([[[1.0, 0.0, 127 / 255], [1.0, 1.0, 1.0]]])
    img = mask_image(crop, matte)
    assert img.shape == (3, 2, 3) and img.dtype == torch.float32
    assert torch.allclose(img[:, 0, 0], torch.tensor([10, 20, 30]) / 127.5 - 1)
    assert torch.all(img[:, 0, 1] == -1)  # background is exactly -1
    assert torch.allclose(img[:, 0, 2], torch.tensor(200 * 127 / 255 / 127.5 - 1), atol=1e-6)
    assert torch.allclose(img[:, 1], torch.tensor(200 / 127.5 - 1), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# the chain on tiny random networks


def _tiny_preprocessor() -> GOHAPreprocessor:
    detector = RetinaFace.tiny(0).eval()
    rig_for_random_weights(detector, 1, 0)  # every 64 px anchor of the middle level is a face
    return GOHAPreprocessor(detector, Deep3DReconNet.tiny(0), MODNet.tiny(0))


def _photo(shared_media: Path) -> Path:
    folder = shared_media / "portraits" / "wild" / "public_domain"
    photos = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        pytest.skip(f"no photo in {folder}")
    return photos[0]


def test_full_chain_on_a_real_photo(shared_media: Path, caplog: pytest.LogCaptureFixture) -> None:
    from avatar.io.image import load_image

    photo = _photo(shared_media)
    pre = _tiny_preprocessor()
    with caplog.at_level(logging.WARNING):
        out = pre(photo)
    rgb = load_image(photo, max_side=None)
    faces = pre.detect([rgb])[0]
    five = np.asarray(faces[0].landmarks, dtype=np.float64)
    crop, transform = eg3d_crop(rgb, five)
    assert np.array_equal(out.crop, crop)
    assert out.transform == transform
    assert out.image.shape == (3, 512, 512) and out.image.dtype == torch.float32
    assert out.matte.shape == (1, 512, 512)
    assert torch.allclose(out.matte * 255, (out.matte * 255).round(), atol=1e-4)  # k / 255
    assert out.image.min() >= -1 and out.image.max() <= 1
    assert torch.all(out.image[:, out.matte[0] == 0] == -1)
    assert torch.allclose(out.image, mask_image(crop, out.matte))
    assert out.camera.shape == (25,)
    assert torch.linalg.norm(out.camera[[3, 7, 11]]).item() == pytest.approx(2.7, abs=1e-5)
    assert torch.allclose(out.camera[16:], torch.tensor([EG3D_FOCAL, 0, 0.5, 0, EG3D_FOCAL, 0.5, 0, 0, 1]))
    angle_trans = torch.cat([out.coefficients[224:227], out.coefficients[254:257]])
    assert torch.allclose(out.camera, eg3d_camera_label(angle_trans[None, :3], angle_trans[None, 3:])[0])
    assert out.coefficients.shape == (257,)
    assert np.allclose(out.landmarks5, transform.to_crop(five), atol=1e-3)
    assert np.allclose(transform.to_photo(out.landmarks5), five, atol=1e-2)
    assert out.align is not None and out.align.target_size == 512
    # the rigged random detector sees many faces: the largest is used, with a warning
    if len(faces) > 1:
        assert any("faces found" in r.getMessage() and "largest" in r.getMessage() for r in caplog.records)


class _Detector:
    def __init__(self, faces: list[DetectedFace]) -> None:
        self.faces = faces

    def detect_batch(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        return [list(self.faces) for _ in images]


def _face(x: float, y: float, side: float) -> DetectedFace:
    box = np.array([x, y, x + side, y + side], np.float32)
    pts = _exact_five_points(int(side), side * 0.6)  # a face-shaped five-point set inside the box
    return DetectedFace(box, 0.99, (pts + [x, y]).astype(np.float32))


def test_bad_inputs_give_clear_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    photo = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    recon, matting = Deep3DReconNet.tiny(0), MODNet.tiny(0)
    with pytest.raises(NoFaceError, match="no face found"):
        GOHAPreprocessor(_Detector([]), recon, matting)(photo)
    with pytest.raises(FaceTooSmallError, match="pixels across"):
        GOHAPreprocessor(_Detector([_face(10, 10, 20)]), recon, matting)(photo)
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ImageReadError):
        GOHAPreprocessor(_Detector([]), recon, matting)(corrupt)
    with pytest.raises(ImageReadError, match="does not exist"):
        GOHAPreprocessor(_Detector([]), recon, matting)(tmp_path / "missing.png")
    # several faces: the largest (first) is used, and the user is told
    pre = GOHAPreprocessor(_Detector([_face(20, 20, 120), _face(150, 150, 45)]), recon, matting)
    with caplog.at_level(logging.WARNING):
        out = pre(photo)
    assert any("2 faces found" in r.getMessage() for r in caplog.records)
    assert np.allclose(out.box, [20, 20, 140, 140])
    # five points that are not five points
    bad = DetectedFace(np.array([0, 0, 100, 100], np.float32), 0.9, np.zeros((3, 2), np.float32))
    with pytest.raises(InputError, match="five alignment points"):
        pre.process([photo], [bad])
    with pytest.raises(InputError, match="512x512"):
        pre.process_aligned([photo], [_face(20, 20, 120)])
    with pytest.raises(InputError, match="must be one of"):
        GOHAPreprocessor.from_pretrained(preprocess="mtcnn")
    with pytest.raises(InputError, match="must be one of"):
        GOHAPreprocessor.from_pretrained(matting="grabcut")


def test_aligned_crop_keeps_the_crop(tmp_path: Path) -> None:
    crop = np.random.default_rng(2).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    face = _face(156, 156, 200)
    pre = GOHAPreprocessor(_Detector([face]), Deep3DReconNet.tiny(0), MODNet.tiny(0))
    out = pre.process_aligned([crop], [face])[0]
    assert np.array_equal(out.crop, crop) and out.transform is None and out.align is None
    assert np.allclose(out.landmarks5, face.landmarks)
    assert torch.linalg.norm(out.camera[[3, 7, 11]]).item() == pytest.approx(2.7, abs=1e-5)
