"""avatar.face.insightface_onnx (InsightFace SCRFD + 1k3d68 in onnxruntime) on tiny random graphs with the real
models' signatures (tests/fake_insightface.py), checked against hand-written re-derivations of insightface 0.7.3's
steps; eval's ``insightface-3d68`` landmark callable and AKD wiring. The comparison with insightface's own classes
is scripts/compare_official_insightface.py (it needs insightface's source)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

sys.path.insert(0, str(Path(__file__).parent))
from fake_insightface import face_image, landmark_graph, scrfd_graph  # noqa: E402

from avatar.errors import InputError, MissingDependencyError  # noqa: E402
from avatar.face import insightface_onnx as ifo  # noqa: E402
from eval.metrics import AKD, MissingWeightsError  # noqa: E402


@pytest.fixture(scope="module")
def det() -> ifo.SCRFD:
    return ifo.SCRFD(scrfd_graph(seed=3, score_bias=-3.0, score_gain=3.0))


@pytest.fixture(scope="module")
def lmk() -> ifo.Landmark3D68:
    return ifo.Landmark3D68(landmark_graph(seed=4))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = w * h
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


def test_scrfd_layout_and_canvas(det: ifo.SCRFD) -> None:
    assert (det.fmc, det.num_anchors, det.use_kps, det.strides) == (3, 2, True, [8, 16, 32])
    assert det.input_size == (640, 640) and not det.batched
    assert det.det_thresh == 0.5 and det.nms_thresh == 0.4
    img = face_image(300, 500, seed=1)  # wide: the width fills the canvas
    canvas, scale = det.canvas(img)
    new_h = int(640 * 300 / 500)
    assert canvas.shape == (640, 640, 3) and scale == pytest.approx(new_h / 300)
    assert canvas[new_h:].max() == 0 and canvas[:new_h].any()
    tall, scale = det.canvas(face_image(500, 200, seed=1))
    assert tall[:, int(640 / 2.5):].max() == 0 and scale == pytest.approx(640 / 500)


def test_scrfd_detect_matches_a_hand_rederivation(det: ifo.SCRFD) -> None:
    img = face_image(360, 480, seed=0)
    canvas, scale = det.canvas(img)
    # the blob: (x - 127.5) / 128 of the RGB canvas (upstream swaps its BGR to RGB)
    blob = ((canvas.astype(np.float64) - 127.5) / 128.0).transpose(2, 0, 1)[None].astype(np.float32)
    outs = det.session.run(None, {"input.1": blob})
    cands = []
    for i, s in enumerate((8, 16, 32)):
        h, w = 640 // s, 640 // s
        for y in range(h):
            for x in range(w):
                for a in range(2):
                    r = (y * w + x) * 2 + a
                    score = float(outs[i][r, 0])
                    if score < 0.5:
                        continue
                    d = outs[3 + i][r].astype(np.float64) * s
                    k = outs[6 + i][r].astype(np.float64) * s
                    cx, cy = x * s, y * s
                    box = np.array([cx - d[0], cy - d[1], cx + d[2], cy + d[3]]) / scale
                    kps = np.stack([cx + k[0::2], cy + k[1::2]], axis=1) / scale
                    cands.append((score, box, kps))
    cands.sort(key=lambda c: -c[0])
    kept: list = []
    for c in cands:
        if all(_iou(c[1], k[1]) <= 0.4 for k in kept):
            kept.append(c)
    boxes, kps = det.detect(img)
    assert len(kept) >= 3 and boxes.shape == (len(kept), 5) and kps.shape == (len(kept), 5, 2)
    np.testing.assert_allclose(boxes[:, :4], np.stack([c[1] for c in kept]), atol=2e-3)
    np.testing.assert_allclose(boxes[:, 4], [c[0] for c in kept], atol=1e-6)
    np.testing.assert_allclose(kps, np.stack([c[2] for c in kept]), atol=2e-3)
    # max_num: FaceAnalysis's "default" metric, area - 2 * squared offset from the image centre (H // 2, W // 2)
    value = [(b[2] - b[0]) * (b[3] - b[1]) - 2 * (((b[0] + b[2]) / 2 - 240) ** 2 + ((b[1] + b[3]) / 2 - 180) ** 2)
             for b in boxes]
    top2, top_kps = det.detect(img, max_num=2)
    np.testing.assert_array_equal(top2, boxes[np.argsort(value)[::-1][:2]])
    np.testing.assert_array_equal(top_kps, kps[np.argsort(value)[::-1][:2]])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    np.testing.assert_array_equal(det.detect(img, max_num=1, metric="max")[0], boxes[[np.argmax(area)]])


def test_scrfd_without_faces_and_bad_graphs() -> None:
    quiet = ifo.SCRFD(scrfd_graph(seed=0, score_bias=-20.0))
    boxes, kps = quiet.detect(face_image(100, 120))
    assert boxes.shape == (0, 5) and kps.shape == (0, 5, 2)
    with pytest.raises(InputError, match="outputs"):
        ifo.SCRFD(landmark_graph())
    with pytest.raises(InputError, match="RGB uint8"):
        quiet.detect(np.zeros((10, 10, 3), dtype=np.float32))


def test_landmark_normalisation_shape_and_decode(lmk: ifo.Landmark3D68) -> None:
    assert (lmk.input_mean, lmk.input_std, lmk.input_size) == (0.0, 1.0, (192, 192))
    assert (lmk.lmk_dim, lmk.lmk_num, lmk.taskname) == (3, 68, "landmark_3d_68")
    plain = ifo.Landmark3D68(landmark_graph(normalised_inside=False, outputs=212))
    assert (plain.input_mean, plain.input_std, plain.taskname) == (127.5, 128.0, "landmark_2d_106")
    raw = np.random.default_rng(0).uniform(-1, 1, 3309).astype(np.float32)
    pts = lmk.decode(raw)
    expected = raw.reshape(-1, 3)[-68:].astype(np.float64)
    expected[:, :2] = (expected[:, :2] + 1) * 96
    expected[:, 2] *= 96
    np.testing.assert_allclose(pts, expected, rtol=1e-6)


def test_landmarks_match_a_hand_rederivation(lmk: ifo.Landmark3D68) -> None:
    import cv2

    img = face_image(400, 300, seed=5)
    bbox = np.array([80.3, 120.7, 190.2, 260.9], dtype=np.float32)
    w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    s = 192 / (max(w, h) * 1.5)
    M = np.array([[s, 0, 96 - cx * s], [0, s, 96 - cy * s]], dtype=np.float64)
    crop = cv2.warpAffine(img, M, (192, 192), borderValue=0.0)
    raw = lmk.session.run(None, {"data": crop.astype(np.float32).transpose(2, 0, 1)[None]})[0][0]
    p = raw.reshape(-1, 3)[-68:].astype(np.float64)
    xy = (p[:, :2] + 1) * 96
    expected = np.column_stack([(xy[:, 0] - (96 - cx * s)) / s, (xy[:, 1] - (96 - cy * s)) / s, p[:, 2] * 96 / s])
    np.testing.assert_allclose(lmk.crop(img, bbox)[1], M, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(lmk.get(img, bbox), expected, atol=2e-3)


def test_transform_matrix_with_rotation_is_skimages_composition() -> None:
    trans = pytest.importorskip("skimage.transform")
    center, size, scale, rot = (123.4, 87.6), 192, 0.73, 17.0
    t = (trans.SimilarityTransform(scale=scale)
         + trans.SimilarityTransform(translation=(-center[0] * scale, -center[1] * scale))
         + trans.SimilarityTransform(rotation=rot * math.pi / 180)
         + trans.SimilarityTransform(translation=(size / 2, size / 2)))
    np.testing.assert_allclose(ifo.landmark_crop_matrix(center, size, scale, rot), t.params[:2], atol=1e-12)
    pts = np.array([[1.0, 2.0, 3.0], [40.0, -5.0, 0.5]], dtype=np.float32)
    out = ifo.trans_points(pts, t.params[:2])
    np.testing.assert_allclose(out[:, :2], pts[:, :2] @ t.params[:2, :2].T + t.params[:2, 2], rtol=1e-6)
    np.testing.assert_allclose(out[:, 2], pts[:, 2] * scale, rtol=1e-6)


def test_face_analysis_and_five_points_for_the_recrop(det: ifo.SCRFD, lmk: ifo.Landmark3D68) -> None:
    from eval.protocols.crop import KeypointRecropper, keypoint_box

    analysis = ifo.InsightFaceAnalysis(det, lmk)
    img = face_image(360, 480, seed=0)
    faces = analysis.get(img, max_num=0)
    boxes, kps = det.detect(img)
    assert len(faces) == len(boxes)
    np.testing.assert_array_equal(faces[0].bbox, boxes[0, :4])
    np.testing.assert_array_equal(faces[0].landmarks, kps[0])
    np.testing.assert_array_equal(faces[0].landmark_3d_68, lmk.get(img, boxes[0, :4]))
    assert len(analysis.get(img, max_num=1)) == 1
    # eval.protocols.crop takes detect(images) -> faces with .box / .landmarks and keeps the largest box
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    box = KeypointRecropper(analysis.detect).boxes([img])[0]
    np.testing.assert_allclose(box, keypoint_box(kps[np.argmax(area)]))


def test_insightface_landmark_callable_and_akd(det: ifo.SCRFD, lmk: ifo.Landmark3D68) -> None:
    from eval.face_networks import InsightFaceLandmarks

    analysis = ifo.InsightFaceAnalysis(det, lmk)
    fn = InsightFaceLandmarks(analysis, official=True, max_num=1)
    imgs = np.stack([face_image(240, 320, seed=s) for s in range(2)])
    images = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    out = fn(images)
    assert out.points.shape == (2, 68, 2) and out.points.dtype == torch.float64 and out.found.all()
    face = analysis.get(imgs[1], max_num=1)[0]
    np.testing.assert_allclose(out.points[1].numpy(), face.landmark_3d_68[:, :2])
    np.testing.assert_allclose(fn.five_points(images).points[1].numpy(), face.kps)
    akd = AKD(landmarks=fn, landmark_model="insightface-3d68")
    assert akd.comparable
    v = akd.update(images, images.flip(0))
    expected = (out.points[0] - out.points[1]).abs().mean().item()
    torch.testing.assert_close(v, torch.tensor([expected, expected], dtype=torch.float64))
    # no face: NaN points, found False
    blank = InsightFaceLandmarks(ifo.InsightFaceAnalysis(ifo.SCRFD(scrfd_graph(score_bias=-20.0)), lmk))
    none = blank(images)
    assert not none.found.any() and torch.isnan(none.points).all()


def test_akd_builds_insightface_or_says_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AVATAR_CACHE", str(tmp_path))
    monkeypatch.setenv("AVATAR_OFFLINE", "1")
    for allow in (False, True):
        with pytest.raises(MissingWeightsError, match="insightface-det-10g"):
            AKD(landmark_model="insightface-3d68", allow_random_weights=allow)
    # with the two files in a local folder (as ~/.insightface/models/buffalo_l holds them), AKD builds it
    from eval.face_networks import build_insightface_landmarks

    (tmp_path / "buffalo_l").mkdir()
    (tmp_path / "buffalo_l" / "det_10g.onnx").write_bytes(scrfd_graph(seed=3, score_bias=-3.0, score_gain=3.0))
    (tmp_path / "buffalo_l" / "1k3d68.onnx").write_bytes(landmark_graph(seed=4))
    fn = build_insightface_landmarks(local_dir=str(tmp_path / "buffalo_l"))
    assert fn.landmark_model == "insightface-3d68" and fn.cache_fingerprint().startswith("insightface-3d68/")
    akd = AKD(landmark_model="insightface-3d68")  # now from the cache
    assert akd.landmark_fn.landmark_model == "insightface-3d68"


def test_missing_onnxruntime_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"avatar4d\[insightface\]"):
        ifo.SCRFD(b"not used")


def test_registry_entries_point_into_buffalo_l(tmp_path: Path) -> None:
    import zipfile

    from avatar.hub.download import extract_member
    from avatar.hub.registry import FILES

    for key, name in (("insightface-det-10g", "det_10g.onnx"), ("insightface-1k3d68", "1k3d68.onnx")):
        f = FILES[key]
        assert f.member == name and f.path == name and f.source == "url"
        assert f.url == "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
        assert "non-commercial" in f.licence and len(f.revision) == 40
    archive = tmp_path / "buffalo_l.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("1k3d68.onnx", b"a")
        zf.writestr("det_10g.onnx", b"b")
    assert extract_member(archive, "det_10g.onnx", tmp_path / "out" / "det_10g.onnx").read_bytes() == b"b"


def test_prepare_recrop_with_insightface_keypoints(tmp_path: Path) -> None:
    """`python -m eval.prepare recrop SRC --out DST --preprocess insightface --model BUFFALO_L`: SCRFD's
    keypoints give the GAGAvatar crop; the backend is refused for the other datasets."""
    from PIL import Image

    from eval import prepare as P

    folder = tmp_path / "buffalo_l"
    folder.mkdir()
    (folder / "det_10g.onnx").write_bytes(scrfd_graph(seed=3, score_bias=-3.0, score_gain=3.0))
    src = tmp_path / "frames" / "v"
    src.mkdir(parents=True)
    Image.fromarray(face_image(360, 480, seed=0)).save(src / "000000.png")
    assert P.main(["recrop", str(src.parent), "--out", str(tmp_path / "out"), "--preprocess", "insightface",
                   "--model", str(folder), "--no-progress"]) == 0
    assert Image.open(tmp_path / "out" / "v" / "000000.png").size == (512, 512)
    marker = (tmp_path / "out" / "recrop.json").read_text()
    assert "SCRFD" in marker
    assert P.main(["hdtf", str(src.parent), "--out", str(tmp_path / "o2"), "--preprocess", "insightface"]) != 0
