"""avatar.face.analysis (the batched face analysis) against the per-image reference chain of the preprocessing:
``RetinaFace.detect`` -> ``FAN3DLandmarker.landmarks_batch`` -> ``deep3d.align_image`` -> ``Deep3DReconNet``.

The same networks run both paths on the same images, so they must agree within what the module docstring
lists as the differences (detector resize, FAN crop warp, Deep3D crop resampling). Random landmark networks
jump between far-apart heatmap maxima on the slightest change of their input, so the landmark comparisons use a
stand-in FAN whose heatmaps follow the image (a bright blob, one fixed offset per landmark): it turns the crop
geometry into landmark positions, which both paths must then agree on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avatar.face.analysis import FaceAnalyzer, FaceBatch, FaceLandmarks
from avatar.face.deep3d import Deep3DReconNet, align_image, split_coefficients, to_input
from avatar.face.fan3d import FAN3DLandmarker, FANConfig, crop_face, crop_params_from_box
from avatar.face.retinaface import RetinaFace, rig_for_random_weights


def _smooth_image(size: int, seed: int, blob: tuple[float, float] | None = None) -> np.ndarray:
    """``(size, size, 3)`` uint8: a few broad coloured Gaussians (smooth, so sub-pixel shifts change little),
    plus, when ``blob`` is given, a small bright spot at ``(x, y)`` on a darkened background."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.zeros((size, size, 3))
    for _ in range(6):
        cy, cx, s = g.uniform(0, size), g.uniform(0, size), g.uniform(0.1, 0.3) * size
        img += g.uniform(0.2, 1.0, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[..., None]
    img = img / img.max()
    if blob is not None:
        spot = np.exp(-((xx - blob[0]) ** 2 + (yy - blob[1]) ** 2) / (2 * 5.0**2))
        img = 0.25 * img + 0.75 * spot[..., None]
    return (img * 255).round().astype(np.uint8)


def _batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


class BlobFAN(nn.Module):
    """A stand-in FAN: heatmap ``k`` is the crop's brightness pooled to ``resolution`` cells and moved by
    ``offsets[k]`` cells, so landmark ``k`` sits at the bright blob plus a fixed offset (68 distinct points)."""

    def __init__(self, resolution: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.config = FANConfig.tiny()
        self.resolution = resolution
        g = torch.Generator().manual_seed(seed)
        self.offsets = torch.randint(-2, 3, (self.config.num_landmarks, 2), generator=g).tolist()
        self.unused = nn.Parameter(torch.zeros(1))  # the callers read the device from a parameter

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(crops.float().mean(1, keepdim=True), self.resolution)
        return torch.cat([torch.roll(pooled, shifts=(dy, dx), dims=(2, 3)) for dx, dy in self.offsets], dim=1)


def _reference_landmarks(lm3d: FAN3DLandmarker, image: np.ndarray, box: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(lm3d.landmarks_batch([image], [[box]])[0][0, :, :2]).double()


# ---- detection ---------------------------------------------------------------------------------------------


def test_detection_equals_the_detector_when_no_resize_is_needed_and_is_close_otherwise() -> None:
    det = RetinaFace.tiny(0).with_thresholds(confidence=0.5)
    fa = FaceAnalyzer(det, BlobFAN(), Deep3DReconNet.tiny(0))
    size = det.config.target_height
    images = [_smooth_image(size, seed) for seed in range(3)]  # uint8 levels at the detector's size: same input
    boxes, found = fa.detect(_batch(images))
    assert found.all()
    for i, img in enumerate(images):  # float rounding of the 0..255 levels only
        np.testing.assert_allclose(boxes[i].numpy(), det.detect(img)[0].box, rtol=0, atol=1e-3)
    # 4x larger images: F.interpolate of floats instead of cv2.resize of uint8, same largest face within a pixel
    big = [_smooth_image(4 * size, seed) for seed in range(3)]
    boxes, found = fa.detect(_batch(big))
    for i, img in enumerate(big):
        faces = det.detect(img)
        assert bool(found[i]) == bool(faces)
        if faces:
            np.testing.assert_allclose(boxes[i].numpy(), faces[0].box, rtol=0, atol=1.0)


# ---- landmarks -----------------------------------------------------------------------------------------


def _centroid(crop: torch.Tensor) -> torch.Tensor:
    w = crop.sum(0)
    ys, xs = torch.meshgrid(torch.arange(w.shape[0], dtype=w.dtype), torch.arange(w.shape[1], dtype=w.dtype),
                            indexing="ij")
    return torch.stack([(w * xs).sum(), (w * ys).sum()]) / w.sum()


@pytest.mark.parametrize("box", [[70.3, 60.7, 190.2, 205.9], [100.0, 100.0, 150.0, 160.0]])
def test_fan_crop_is_crop_face_within_the_documented_offset(box: list[float]) -> None:
    """A small spot lands at the same crop position as in ``crop_face``'s crop, within ``side / 256 + 1`` source
    pixels (the window of integer corners that crop_face resizes vs. the exact square)."""
    fa = FaceAnalyzer(RetinaFace.tiny(0), BlobFAN(), Deep3DReconNet.tiny(0))
    boxes = torch.tensor([box], dtype=torch.float64)
    c, s = crop_params_from_box(boxes[0].numpy())
    side = 200.0 * s
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float64)
    for fx, fy in ((0.15, 0.2), (0.5, 0.5), (0.85, 0.8)):
        x0, y0 = c[0] - side / 2 + fx * side, c[1] - side / 2 + fy * side
        spot = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 3.0**2))
        img = np.repeat((255 * spot)[..., None], 3, -1).round().astype(np.uint8)
        crops, center, crop_side = fa.fan_crops(_batch([img]), boxes)
        np.testing.assert_array_equal(center[0].numpy(), c.astype(np.float64))
        assert float(crop_side[0]) == pytest.approx(side)
        ref = torch.from_numpy(crop_face(img, c, s, 256)).permute(2, 0, 1).float() / 255.0
        expected = torch.tensor([fx, fy]) * 256  # where the exact square puts the spot
        torch.testing.assert_close(_centroid(crops[0]), expected, rtol=0, atol=0.1)
        offset_src = (_centroid(crops[0]) - _centroid(ref)).abs().max() * side / 256
        assert offset_src < side / 256 + 1


def test_fan_landmarks_decode_like_the_reference_on_the_same_crops() -> None:
    """Random FAN: the vectorised inverse crop map gives heatmap_to_image's integers (same crops fed to both)."""
    lm3d = FAN3DLandmarker.tiny(0)
    fa = FaceAnalyzer(RetinaFace.tiny(0), lm3d.fan, Deep3DReconNet.tiny(0))
    images = _batch([_smooth_image(256, 3), _smooth_image(256, 4)])
    boxes = torch.tensor([[70.3, 60.7, 190.2, 205.9], [20.0, 41.5, 230.8, 250.1]], dtype=torch.float64)
    ours = fa.fan_landmarks(images, boxes)
    crops, center, side = fa.fan_crops(images, boxes)
    scales = [crop_params_from_box(b)[1] for b in boxes.numpy()]
    ref = lm3d.landmarks_from_crops(crops, center.numpy().astype(np.float32), scales)[..., :2].double()
    assert ours.shape == (2, 68, 2) and torch.equal(ours, ours.trunc())
    assert (ours - ref).abs().max() <= 1  # the pseudo-inverse's rounding may move a truncation by one
    assert (ours == ref).all(-1).float().mean() > 0.95


def test_fan_landmarks_match_the_3dfan_reference() -> None:
    """The whole landmark step (crop, FAN, decode, map back) against ``FAN3DLandmarker.landmarks_batch``."""
    lm3d = FAN3DLandmarker.tiny(0)
    lm3d.fan = BlobFAN()
    fa = FaceAnalyzer(RetinaFace.tiny(0), lm3d.fan, Deep3DReconNet.tiny(0))
    box = np.array([60.0, 50.0, 200.0, 210.0])
    c, s = crop_params_from_box(box)
    cell = 200.0 * s / 16  # source pixels per heatmap cell
    origin = c - 100.0 * s
    blob = origin + (np.array([7.0, 8.0]) + 0.5) * cell + 0.25 * cell  # off a cell centre: a clear quarter step
    img = _smooth_image(256, 5, blob=(float(blob[0]), float(blob[1])))
    ours = fa.fan_landmarks(_batch([img]), torch.from_numpy(box)[None])[0]
    ref = _reference_landmarks(lm3d, img, box)
    assert ref.std(0).min() > 5  # 68 distinct points around the blob
    assert (ours - ref).abs().max() <= 1


# ---- Deep3DFaceRecon -----------------------------------------------------------------------------------


def test_deep3d_crop_and_coefficients_match_align_image() -> None:
    recon = Deep3DReconNet.tiny(0)
    fa = FaceAnalyzer(RetinaFace.tiny(0), BlobFAN(), recon)
    img = _smooth_image(256, 6)
    g = torch.Generator().manual_seed(0)
    lm = torch.tensor([[128.0, 120.0]]) + 40 * (torch.rand(68, 2, generator=g) - 0.5)
    ours = fa.deep3d_crops(_batch([img]), lm[None].double())
    ref = to_input(align_image(img, lm.numpy()).image)
    assert (ours - ref).abs().mean() < 1 / 255 and (ours - ref).abs().max() < 8 / 255  # bilinear vs PIL bilinear
    coeffs = fa.deep3d(_batch([img]), lm[None].double())
    with torch.no_grad():
        expected = split_coefficients(recon(ref))
    for key, value in coeffs.items():
        assert value.shape == expected[key].shape and value.dtype == torch.float64
        torch.testing.assert_close(value.float(), expected[key], rtol=0, atol=1e-3 * float(expected[key].std()) + 1e-5)


# ---- the whole chain -------------------------------------------------------------------------------------


def test_whole_analysis_matches_the_per_image_chain() -> None:
    """Detector (rigged: its boxes do not depend on the pixels, so both paths get the same box even after their
    different resizes) -> stand-in FAN -> random Deep3DFaceRecon, image by image against the batch."""
    det = rig_for_random_weights(RetinaFace.tiny(0), level=0, anchor=1, top_k=1)
    lm3d = FAN3DLandmarker.tiny(0)
    lm3d.fan = BlobFAN()
    recon = Deep3DReconNet.tiny(0)
    fa = FaceAnalyzer(det, lm3d.fan, recon)
    size = 4 * det.config.target_height
    box = det.detect(_smooth_image(size, 0))[0].box
    c, s = crop_params_from_box(box)
    cell = 200.0 * s / 16
    blobs = [c - 100.0 * s + (np.array(xy) + 0.75) * cell for xy in ((7, 8), (9, 9))]
    images = [_smooth_image(size, 7 + i, blob=(float(b[0]), float(b[1]))) for i, b in enumerate(blobs)]
    out = fa(_batch(images))
    assert isinstance(out, FaceBatch) and isinstance(out.landmarks, FaceLandmarks) and out.found.all()
    for i, img in enumerate(images):
        ref_box = det.detect(img)[0].box
        np.testing.assert_allclose(out.boxes[i].numpy(), ref_box, rtol=0, atol=1e-4)
        ref_lm = _reference_landmarks(lm3d, img, ref_box)
        assert (out.landmarks.points[i] - ref_lm).abs().max() <= 1
        ref_crop = to_input(align_image(img, ref_lm.numpy()).image)
        crop = fa.deep3d_crops(_batch([img]), out.landmarks.points[i:i + 1])
        # the random network pools globally (it barely sees shifts): check its input is the reference's too
        one_pixel_shift = (ref_crop - torch.roll(ref_crop, 1, dims=3)).abs().mean()
        assert (crop - ref_crop).abs().mean() < 0.25 * one_pixel_shift
        with torch.no_grad():
            ref_coeffs = split_coefficients(recon(ref_crop))
        for key in ("exp", "angle", "trans"):
            spread = float(ref_coeffs[key].std())  # same landmarks, crops a few grey levels apart: close values
            torch.testing.assert_close(out.coeffs[key][i].float(), ref_coeffs[key][0], rtol=0, atol=2e-3 * spread)
    # the metric-facing callables are views of the same result
    torch.testing.assert_close(fa.landmarks(_batch(images)).points, out.landmarks.points)
    assert set(fa.coefficients(_batch(images))) == {"exp", "angle", "trans", "found"}
