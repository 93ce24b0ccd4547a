"""InsightFace's SCRFD detector and 68-point 3-D landmarks, run from their ONNX graphs as the insightface package does.

GAGAvatar's metrics (xg-chu/GAGAvatar issue #43) take AKD's landmarks from InsightFace's ``FaceAnalysis``
(``landmark_3d_68``, x and y) and its evaluation crop's five keypoints from the same SCRFD (issue #39). The two
networks are ONNX graphs of the ``buffalo_l`` pack (``det_10g.onnx``, ``1k3d68.onnx``; registry keys
``insightface-det-10g`` and ``insightface-1k3d68``, non-commercial research weights); they run in ``onnxruntime``
(optional: ``pip install 'avatar4d[insightface]'``, imported on first use). Everything around them is re-implemented
here from insightface 0.7.3 (``deepinsight/insightface`` at ``668e8d47``, ``python-package/insightface/``), step by
step:

Detection, :class:`SCRFD` (``model_zoo/scrfd.py``, class ``SCRFD``):

1. ``_init_vars``: the output count gives the layout: 9 outputs = strides 8, 16, 32, two anchors per location,
   with keypoints; outputs ordered scores (3), boxes (3), keypoints (3); outputs of rank 3 carry a batch axis
   (``batched``). A graph with a fixed input size uses it; otherwise the detection size is ``(640, 640)``
   (``FaceAnalysis.prepare(det_size=(640, 640))``). Thresholds: ``det_thresh = 0.5``, ``nms_thresh = 0.4``.
2. ``detect``: the image is resized keeping its aspect ratio (``cv2.resize``, bilinear) so that it fits the
   detection size (``new_height = H_det`` when ``H/W > H_det/W_det``, else ``new_width = W_det``, the other side
   ``int(...)``) and pasted at the top-left of a black canvas; ``det_scale = new_height / H``.
3. ``forward``: ``cv2.dnn.blobFromImage(img, 1/128, size, (127.5,)*3, swapRB=True)``: upstream's images are BGR and
   the network sees RGB; ours are RGB, so the blob is the same with ``swapRB=False``: ``(x - 127.5) / 128``.
4. ``forward``, per stride: anchor centres ``(x * stride, y * stride)`` row-major, each repeated twice (two
   anchors); candidates with ``score >= det_thresh``; ``distance2bbox`` (``x1 = cx - l * stride``, ...) and
   ``distance2kps`` (``cx + dx * stride``, ``cy + dy * stride``) on the stride-scaled predictions.
5. ``detect``: all strides stacked, divided by ``det_scale``, sorted by score (descending), greedy NMS (``nms``:
   "+1 pixel" areas, IoU ``> 0.4`` suppressed); with ``max_num > 0`` and more faces than that, the faces are
   ranked by ``area - 2 * squared offset of the box centre from the image centre (H // 2, W // 2)``
   (``metric='default'``, what ``FaceAnalysis.get(img, max_num)`` asks for) and the first ``max_num`` kept.

Landmarks, :class:`Landmark3D68` (``model_zoo/landmark.py``, class ``Landmark``; ``utils/face_align.py``):

1. ``__init__``: an output of 3309 values means 68 points of 3 coordinates (``lmk_dim = 3``, ``lmk_num = 68``;
   ``1k3d68``: ``landmark_3d_68``); otherwise ``lmk_num = outputs // 2`` 2-D points. The input normalisation is read
   from the graph: ``(0, 1)`` when one of its first 8 nodes is named ``Sub*``/``_minus*`` and one ``Mul*``/``_mul*``
   (or ``bn_data`` among the first 3), else ``(127.5, 128)`` (``1k3d68`` has its normalisation inside: ``(0, 1)``).
   Reading node names needs the ``onnx`` package (the ``insightface`` extra brings it); pass ``input_mean`` /
   ``input_std`` to skip it.
2. ``get``: box ``(x1, y1, x2, y2)`` -> centre ``((x1 + x2) / 2, (y1 + y2) / 2)``, ``scale = 192 / (max(w, h) * 1.5)``,
   rotation 0; ``face_align.transform``: ``M = [[s, 0, 96 - cx s], [0, s, 96 - cy s]]`` (skimage similarity
   transforms composed: scale, translation, rotation, translation; the same matrix here in float64), then
   ``cv2.warpAffine(img, M, (192, 192), borderValue=0)`` (bilinear).
3. the blob as in detection with the landmark model's mean/std; the output reshaped to ``(-1, 3)`` (3000 values or
   more) or ``(-1, 2)``, its last ``lmk_num`` rows kept; ``pred[:, :2] = (pred[:, :2] + 1) * (192 // 2)``,
   ``pred[:, 2] *= 192 // 2``.
4. ``cv2.invertAffineTransform(M)``, then ``face_align.trans_points`` (``trans_points3d``: x, y through the inverse
   affine, z times its scale ``sqrt(IM[0,0]^2 + IM[0,1]^2)``; float32 results like upstream's).

``landmark.py`` also fits a head pose to ``meanshape_68.pkl`` (``face.pose``); it is not needed for AKD and not
reproduced. :class:`InsightFaceAnalysis` is ``app/face_analysis.py``'s ``FaceAnalysis.get`` restricted to these two
models: detect (``max_num``), then the landmarks of each face's box; each :class:`InsightFace` carries ``bbox``,
``kps``, ``det_score``, ``landmark_3d_68`` and, for :class:`eval.protocols.crop.KeypointRecropper`, ``box`` and
``landmarks`` (the five keypoints). Images are RGB uint8 ``(H, W, 3)`` (upstream's are BGR: see above).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatar.errors import InputError, MissingDependencyError
from avatar.face._detect_utils import greedy_nms_plus_one

__all__ = [
    "DET_SIZE", "INSTALL_HINT", "InsightFace", "InsightFaceAnalysis", "Landmark3D68", "SCRFD", "anchor_centers",
    "distance2bbox", "distance2kps", "landmark_crop_matrix", "load_onnxruntime", "nms", "trans_points",
]

INSTALL_HINT = "pip install 'avatar4d[insightface]' (onnxruntime and onnx)"
DET_SIZE = (640, 640)  # FaceAnalysis.prepare(det_size=(640, 640)); (width, height)
DET_THRESH = 0.5
NMS_THRESH = 0.4
DET_MEAN, DET_STD = 127.5, 128.0


def load_onnxruntime() -> Any:
    """``import onnxruntime``, or :class:`~avatar.errors.MissingDependencyError` naming the extra."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(f"InsightFace's ONNX networks need onnxruntime: {INSTALL_HINT} ({exc})") from None
    return onnxruntime


def _session(model: Any, providers: Sequence[str] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` of a path, serialized bytes, or a session given as is."""
    if hasattr(model, "run") and hasattr(model, "get_outputs"):
        return model
    ort = load_onnxruntime()
    if isinstance(model, (str, Path)):
        if not Path(model).is_file():
            raise InputError(f"no such ONNX file: {model}")
        model = str(model)
    return ort.InferenceSession(model, providers=list(providers or ["CPUExecutionProvider"]))


def _blob(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``cv2.dnn.blobFromImage(img, 1/std, size, (mean,)*3, swapRB=...)`` of an RGB image: ``(1, 3, H, W)`` float32.
    Upstream swaps BGR to RGB; ours is RGB already."""
    import cv2

    size = (image.shape[1], image.shape[0])
    return cv2.dnn.blobFromImage(image, 1.0 / std, size, (mean, mean, mean), swapRB=False)


def _check_image(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {tuple(image.shape)}")
    return np.ascontiguousarray(image)


# ---------------------------------------------------------------------------------------------------------
# SCRFD (model_zoo/scrfd.py)


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """``scrfd.distance2bbox`` (no clipping): ``(x - l, y - t, x + r, y + b)``."""
    x1 = points[:, 0] - distance[:, 0]
    y1 = points[:, 1] - distance[:, 1]
    x2 = points[:, 0] + distance[:, 2]
    y2 = points[:, 1] + distance[:, 3]
    return np.stack([x1, y1, x2, y2], axis=-1)


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """``scrfd.distance2kps`` (no clipping): ``(x + dx_k, y + dy_k)`` per keypoint, flattened ``(N, 2K)``."""
    preds = []
    for i in range(0, distance.shape[1], 2):
        preds.append(points[:, i % 2] + distance[:, i])
        preds.append(points[:, i % 2 + 1] + distance[:, i + 1])
    return np.stack(preds, axis=-1)


def anchor_centers(height: int, width: int, stride: int, num_anchors: int) -> np.ndarray:
    """``SCRFD.forward``'s anchor centres ``(height * width * num_anchors, 2)`` float32, row-major, ``(x, y) * stride``,
    each repeated ``num_anchors`` times."""
    centers = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
    centers = (centers * stride).reshape((-1, 2))
    if num_anchors > 1:
        centers = np.stack([centers] * num_anchors, axis=1).reshape((-1, 2))
    return centers


def nms(dets: np.ndarray, thresh: float = NMS_THRESH) -> list[int]:
    """``SCRFD.nms``: greedy, "+1 pixel" areas, boxes whose IoU with a kept one is ``> thresh`` dropped."""
    return greedy_nms_plus_one(dets[:, :4], dets[:, 4].argsort()[::-1], thresh).tolist()


class SCRFD:
    """SCRFD face detector (``det_10g.onnx``) as ``insightface.model_zoo.scrfd.SCRFD`` runs it after
    ``FaceAnalysis.prepare(ctx_id, det_thresh=0.5, det_size=(640, 640))``.

    ``model``: an ONNX file, its bytes or an ``onnxruntime.InferenceSession``. :meth:`detect` takes one RGB uint8
    image and returns ``(det, kps)``: ``(N, 5)`` float32 rows ``(x1, y1, x2, y2, score)`` in image pixels and
    ``(N, 5, 2)`` keypoints (``None`` for a graph without keypoints).
    """

    def __init__(self, model: Any, det_thresh: float = DET_THRESH, nms_thresh: float = NMS_THRESH,
                 det_size: tuple[int, int] = DET_SIZE, providers: Sequence[str] | None = None) -> None:
        self.session = _session(model, providers)
        self.det_thresh = det_thresh
        self.nms_thresh = nms_thresh
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        static = None if isinstance(shape[2], str) or shape[2] is None else tuple(shape[2:4][::-1])
        self.input_size: tuple[int, int] = tuple(static) if static is not None else tuple(det_size)  # (w, h)
        outputs = self.session.get_outputs()
        self.output_names = [o.name for o in outputs]
        self.batched = len(outputs[0].shape) == 3
        layouts = {6: (3, 2, False), 9: (3, 2, True), 10: (5, 1, False), 15: (5, 1, True)}
        if len(outputs) not in layouts:
            raise InputError(f"not an SCRFD graph: {len(outputs)} outputs (expected 6, 9, 10 or 15)")
        self.fmc, self.num_anchors, self.use_kps = layouts[len(outputs)]
        self.strides = [8, 16, 32, 64, 128][: self.fmc]

    @classmethod
    def from_pretrained(cls, local_dir: str | Path | None = None, **kwargs: Any) -> SCRFD:
        """``det_10g.onnx`` from the asset cache (registry key ``insightface-det-10g``; missing:
        :class:`~avatar.errors.AssetNotFoundError`)."""
        return cls(_asset_path("insightface-det-10g", local_dir), **kwargs)

    def forward(self, det_img: np.ndarray, threshold: float) -> tuple[list, list, list]:
        """``SCRFD.forward`` on the canvas: per stride, the scores, boxes and keypoints of the candidates."""
        blob = _blob(det_img, DET_MEAN, DET_STD)
        outs = self.session.run(self.output_names, {self.input_name: blob})
        height_in, width_in = blob.shape[2], blob.shape[3]
        scores_list, bboxes_list, kpss_list = [], [], []
        fmc = self.fmc
        for idx, stride in enumerate(self.strides):
            take = (lambda a: a[0]) if self.batched else (lambda a: a)  # noqa: E731
            scores = take(outs[idx])
            bbox_preds = take(outs[idx + fmc]) * stride
            centers = anchor_centers(height_in // stride, width_in // stride, stride, self.num_anchors)
            pos = np.where(scores >= threshold)[0]
            scores_list.append(scores[pos])
            bboxes_list.append(distance2bbox(centers, bbox_preds)[pos])
            if self.use_kps:
                kps = distance2kps(centers, take(outs[idx + fmc * 2]) * stride)
                kpss_list.append(kps.reshape((kps.shape[0], -1, 2))[pos])
        return scores_list, bboxes_list, kpss_list

    def canvas(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """``SCRFD.detect``'s input: the image resized into the detection size, top-left, on black; ``det_scale``."""
        import cv2

        w_in, h_in = self.input_size
        im_ratio = float(image.shape[0]) / image.shape[1]
        if im_ratio > float(h_in) / w_in:
            new_height = h_in
            new_width = int(new_height / im_ratio)
        else:
            new_width = w_in
            new_height = int(new_width * im_ratio)
        det_scale = float(new_height) / image.shape[0]
        det_img = np.zeros((h_in, w_in, 3), dtype=np.uint8)
        det_img[:new_height, :new_width, :] = cv2.resize(image, (new_width, new_height))
        return det_img, det_scale

    def detect(self, image: np.ndarray, max_num: int = 0, metric: str = "default"
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """``SCRFD.detect``: faces after NMS, highest score first; ``max_num > 0`` keeps that many, ranked by
        ``metric`` (``"default"``: area minus twice the squared offset from the image centre; ``"max"``: area)."""
        image = _check_image(image)
        det_img, det_scale = self.canvas(image)
        scores_list, bboxes_list, kpss_list = self.forward(det_img, self.det_thresh)
        scores = np.vstack(scores_list)
        order = scores.ravel().argsort()[::-1]
        bboxes = np.vstack(bboxes_list) / det_scale
        pre_det = np.hstack((bboxes, scores)).astype(np.float32, copy=False)[order, :]
        keep = nms(pre_det, self.nms_thresh)
        det = pre_det[keep, :]
        kpss = None
        if self.use_kps:
            kpss = (np.vstack(kpss_list) / det_scale)[order, :, :][keep, :, :]
        if max_num > 0 and det.shape[0] > max_num:
            area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
            img_center = image.shape[0] // 2, image.shape[1] // 2
            offsets = np.vstack([(det[:, 0] + det[:, 2]) / 2 - img_center[1],
                                 (det[:, 1] + det[:, 3]) / 2 - img_center[0]])
            offset_dist_squared = np.sum(np.power(offsets, 2.0), 0)
            values = area if metric == "max" else area - offset_dist_squared * 2.0
            bindex = np.argsort(values)[::-1][0:max_num]
            det = det[bindex, :]
            if kpss is not None:
                kpss = kpss[bindex, :]
        return det, kpss


# ---------------------------------------------------------------------------------------------------------
# 68-point landmarks (model_zoo/landmark.py, utils/face_align.py)


def landmark_crop_matrix(center: Sequence[float], output_size: int, scale: float,
                         rotation: float = 0.0) -> np.ndarray:
    """``face_align.transform``'s ``M`` (2x3 float64): scale, move the centre to the origin, rotate (degrees),
    move to the crop centre (skimage's ``t1 + t2 + t3 + t4`` = ``T4 @ R @ T2 @ S``)."""
    rot = float(rotation) * np.pi / 180.0
    S = np.diag([scale, scale, 1.0])
    T2 = np.array([[1.0, 0.0, -center[0] * scale], [0.0, 1.0, -center[1] * scale], [0.0, 0.0, 1.0]])
    R = np.array([[np.cos(rot), -np.sin(rot), 0.0], [np.sin(rot), np.cos(rot), 0.0], [0.0, 0.0, 1.0]])
    T4 = np.array([[1.0, 0.0, output_size / 2], [0.0, 1.0, output_size / 2], [0.0, 0.0, 1.0]])
    return (T4 @ (R @ (T2 @ S)))[0:2]


def trans_points(pts: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``face_align.trans_points``: ``(N, 2)`` or ``(N, 3)`` points through the 2x3 ``M`` (z times ``M``'s scale),
    float32 like upstream."""
    pts = np.asarray(pts, dtype=np.float32)
    homog = np.concatenate([pts[:, :2], np.ones((len(pts), 1), dtype=np.float32)], axis=1)
    out = np.zeros(pts.shape, dtype=np.float32)
    out[:, 0:2] = np.einsum("ij,nj->ni", M, homog)
    if pts.shape[1] == 3:
        scale = np.sqrt(M[0][0] * M[0][0] + M[0][1] * M[0][1])
        out[:, 2] = pts[:, 2] * scale
    return out


def _graph_normalisation(model: Any) -> tuple[float, float]:
    """``Landmark.__init__``'s rule on the first nodes of the graph (needs the ``onnx`` package)."""
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError("reading the landmark graph's input normalisation needs onnx: "
                                     f"{INSTALL_HINT} ({exc}); or pass input_mean / input_std") from None
    proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    find_sub = find_mul = False
    for nid, node in enumerate(proto.graph.node[:8]):
        if node.name.startswith("Sub") or node.name.startswith("_minus"):
            find_sub = True
        if node.name.startswith("Mul") or node.name.startswith("_mul"):
            find_mul = True
        if nid < 3 and node.name == "bn_data":
            find_sub = find_mul = True
    return (0.0, 1.0) if find_sub and find_mul else (127.5, 128.0)


class Landmark3D68:
    """InsightFace's landmark network (``1k3d68.onnx``) as ``insightface.model_zoo.landmark.Landmark.get`` runs it.

    ``model``: an ONNX file or its bytes (or a session, then ``input_mean`` / ``input_std`` are needed).
    :meth:`get` takes an RGB uint8 image and a box and returns ``(lmk_num, lmk_dim)`` float32 points in image pixels
    (``landmark_3d_68``: x, y, and z at the image's scale).
    """

    def __init__(self, model: Any, input_mean: float | None = None, input_std: float | None = None,
                 providers: Sequence[str] | None = None) -> None:
        if input_mean is None or input_std is None:
            if hasattr(model, "run"):
                raise InputError("Landmark3D68 given a session needs input_mean and input_std")
            input_mean, input_std = _graph_normalisation(model)
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        self.session = _session(model, providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_size = tuple(inp.shape[2:4][::-1])
        outputs = self.session.get_outputs()
        if len(outputs) != 1:
            raise InputError(f"not an InsightFace landmark graph: {len(outputs)} outputs (expected 1)")
        self.output_names = [outputs[0].name]
        if outputs[0].shape[1] == 3309:
            self.lmk_dim, self.lmk_num = 3, 68
        else:
            self.lmk_dim, self.lmk_num = 2, outputs[0].shape[1] // 2
        self.taskname = f"landmark_{self.lmk_dim}d_{self.lmk_num}"

    @classmethod
    def from_pretrained(cls, local_dir: str | Path | None = None, **kwargs: Any) -> Landmark3D68:
        """``1k3d68.onnx`` from the asset cache (registry key ``insightface-1k3d68``)."""
        return cls(_asset_path("insightface-1k3d68", local_dir), **kwargs)

    def crop(self, image: np.ndarray, bbox: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """The network's input crop of ``bbox`` and its 2x3 matrix ``M`` (``Landmark.get`` + ``face_align.transform``)."""
        import cv2

        w, h = (bbox[2] - bbox[0]), (bbox[3] - bbox[1])
        center = (bbox[2] + bbox[0]) / 2, (bbox[3] + bbox[1]) / 2
        size = self.input_size[0]
        M = landmark_crop_matrix(center, size, size / (max(w, h) * 1.5), 0)
        return cv2.warpAffine(image, M, (size, size), borderValue=0.0), M

    def decode(self, pred: np.ndarray) -> np.ndarray:
        """The raw output row -> points in crop pixels (``Landmark.get``)."""
        pred = np.array(pred, dtype=np.float32).reshape(-1)
        pred = pred.reshape((-1, 3)) if pred.shape[0] >= 3000 else pred.reshape((-1, 2))
        if self.lmk_num < pred.shape[0]:
            pred = pred[self.lmk_num * -1:, :]
        half = self.input_size[0] // 2
        pred[:, 0:2] += 1
        pred[:, 0:2] *= half
        if pred.shape[1] == 3:
            pred[:, 2] *= half
        return pred

    def get(self, image: np.ndarray, bbox: Sequence[float]) -> np.ndarray:
        import cv2

        image = _check_image(image)
        aimg, M = self.crop(image, bbox)
        blob = _blob(aimg, self.input_mean, self.input_std)
        pred = self.decode(self.session.run(self.output_names, {self.input_name: blob})[0][0])
        return trans_points(pred, cv2.invertAffineTransform(M))


# ---------------------------------------------------------------------------------------------------------
# FaceAnalysis (app/face_analysis.py), detection + 68 landmarks


@dataclass
class InsightFace:
    """One face of :meth:`InsightFaceAnalysis.get` (``insightface.app.common.Face``'s fields used here)."""

    bbox: np.ndarray          # (4,) float32 x1, y1, x2, y2
    kps: np.ndarray | None    # (5, 2) float32: eyes, nose tip, mouth corners
    det_score: float
    landmark_3d_68: np.ndarray | None = None  # (68, 3) float32

    @property
    def box(self) -> np.ndarray:
        """``bbox`` (the name :class:`eval.protocols.crop.KeypointRecropper` reads)."""
        return self.bbox

    @property
    def landmarks(self) -> np.ndarray | None:
        """The five keypoints (the name :class:`eval.protocols.crop.KeypointRecropper` reads)."""
        return self.kps


class InsightFaceAnalysis:
    """``FaceAnalysis(name="buffalo_l", allowed_modules=["detection", "landmark_3d_68"])`` after
    ``prepare(ctx_id, det_size=(640, 640))``: :meth:`get` = ``FaceAnalysis.get(img, max_num)`` on an RGB image."""

    def __init__(self, detector: SCRFD, landmark: Landmark3D68 | None) -> None:
        self.detector = detector
        self.landmark = landmark
        self.fingerprint: str | None = None  # set by whoever knows the files (the reference cache's key)

    @classmethod
    def from_pretrained(cls, local_dir: str | Path | None = None, landmarks: bool = True,
                        providers: Sequence[str] | None = None) -> InsightFaceAnalysis:
        return cls(SCRFD.from_pretrained(local_dir, providers=providers),
                   Landmark3D68.from_pretrained(local_dir, providers=providers) if landmarks else None)

    def get(self, image: np.ndarray, max_num: int = 0) -> list[InsightFace]:
        image = _check_image(image)
        bboxes, kpss = self.detector.detect(image, max_num=max_num, metric="default")
        faces = []
        for i in range(bboxes.shape[0]):
            face = InsightFace(bboxes[i, 0:4], None if kpss is None else kpss[i], float(bboxes[i, 4]))
            if self.landmark is not None:
                face.landmark_3d_68 = self.landmark.get(image, face.bbox)
            faces.append(face)
        return faces

    def detect(self, images: Sequence[np.ndarray]) -> list[list[InsightFace]]:
        """Faces (no landmarks) of each image: the ``detect`` :class:`eval.protocols.crop.KeypointRecropper`
        takes (it keeps the largest box)."""
        out = []
        for image in images:
            det, kpss = self.detector.detect(_check_image(image))
            out.append([InsightFace(det[i, 0:4], None if kpss is None else kpss[i], float(det[i, 4]))
                        for i in range(det.shape[0])])
        return out


def _asset_path(key: str, local_dir: str | Path | None) -> Path:
    from avatar.hub.download import ensure_file
    from avatar.hub.registry import FILES

    return ensure_file(key, local_dir=local_dir) / Path(FILES[key].path).name
