"""The face networks the CSIM / AKD / AED / APD metrics need in ``eval.run``: one :class:`FaceAnalyzer` per run.

:class:`avatar.face.analysis.FaceAnalyzer` runs RetinaFace (largest face), the 68-point FAN from its box and
Deep3DFaceRecon on the official 224 crop fitted to five of those points, batched on one device; this module loads
its networks from the cache (``avatar download``) and hands the metrics two callables that share one analysis per
image tensor:

* ``landmarks(images) -> FaceLandmarks`` (CSIM's alignment, AKD); it declares ``landmark_model =
  "retinaface-3dfan"`` (AKD's option) and has ``landmarks.five_points(images)``: RetinaFace's own five keypoints of
  the same largest face (CSIM's ``five_points="detector"``, the keypoints InsightFace ``norm_crop`` takes in
  MICA / GAGAvatar, there from SCRFD);
* ``coefficients(images) -> {"exp", "angle", "trans", "found"}`` (AED, APD).

The FAN is 3DFAN's 2D part, not face_alignment's 2D-FAN with the SFD detector used by OTAvatar/GOHA for AKD, so
the landmarks are flagged not comparable (``comparable = False``); AKD's ``landmark_model="face-alignment-2dfan"``
runs that pair instead: :func:`build_face_alignment_landmarks` (:class:`FaceAlignmentLandmarks`, OTAvatar's first
face of :class:`avatar.face.fan2d.FaceAlignment2D`; AKD builds it itself). The coefficients are declared comparable only
with the official RetinaFace, 3DFAN and Deep3DFaceRecon weights. Missing weights raise
:class:`eval.metrics.MissingWeightsError` unless ``allow_random_weights`` (seeded random networks; the detector
is then set to report 256-pixel faces, see :func:`avatar.face.retinaface.rig_for_random_weights`; everything is
flagged not comparable). This is the same analysis ``python -m eval.bench`` times.

Within a batch the same image tensor is analysed once: call :meth:`FaceNetworks.clear` between batches. Both
callables carry ``cache_fingerprint`` (the analyzer's weights and settings), so the reference cache
(:mod:`eval.reference_cache`) keeps the references' landmarks and coefficients between runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from avatar.face.analysis import FaceAnalyzer, FaceBatch, FaceLandmarks

from .metrics import MissingWeightsError

__all__ = ["FaceAlignmentLandmarks", "FaceNetworks", "InsightFaceLandmarks", "build_face_alignment_landmarks",
           "build_face_networks", "build_insightface_landmarks"]


class _SharedAnalysis:
    """:class:`FaceAnalyzer` results memoised per image tensor (CSIM, AKD, AED and APD ask for the same batch)."""

    def __init__(self, analyzer: FaceAnalyzer) -> None:
        self.analyzer = analyzer
        self._memo: dict[tuple, tuple[Tensor, FaceBatch]] = {}
        self._kps_memo: dict[tuple, tuple[Tensor, FaceLandmarks]] = {}
        self._fingerprint: str | None = None

    def fingerprint(self) -> str | None:
        """The analyzer's :func:`eval.reference_cache.fingerprint` (hashed once: its weights do not change)."""
        if self._fingerprint is None:
            from .reference_cache import fingerprint

            self._fingerprint = fingerprint(self.analyzer)
        return self._fingerprint

    def clear(self) -> None:
        self._memo.clear()
        self._kps_memo.clear()

    @torch.no_grad()
    def keypoints(self, images: Tensor) -> FaceLandmarks:
        """The detector's five keypoints ``(B, 5, 2)`` float64 (input pixels; NaN where no face) of the largest
        face, the face :class:`FaceAnalyzer` keeps (same detector input, post-processing and ``min_face_size``)."""
        key = (id(images), images.data_ptr(), tuple(images.shape))
        if key not in self._kps_memo:
            a = self.analyzer
            x, ratio = a.detector_input(images)
            with a._autocast(x.device):
                loc, scores, lms = a.detector(x)
            faces = a.detector.postprocess_batch(loc, scores, lms, (x.shape[-2], x.shape[-1]), [ratio] * x.shape[0])
            points = torch.full((images.shape[0], 5, 2), float("nan"), dtype=torch.float64)
            found = torch.zeros(images.shape[0], dtype=torch.bool)
            for i, image_faces in enumerate(faces):
                if image_faces and image_faces[0].size >= a.min_face_size:
                    points[i] = torch.as_tensor(image_faces[0].landmarks[:5], dtype=torch.float64)
                    found[i] = True
            self._kps_memo[key] = (images, FaceLandmarks(points, found))
        return self._kps_memo[key][1]

    def __call__(self, images: Tensor) -> FaceBatch:
        key = (id(images), images.data_ptr(), tuple(images.shape))
        if key not in self._memo:
            self._memo[key] = (images, self.analyzer(images))  # keep images alive: its id is not reused
        return self._memo[key][1]


class _Landmarks:
    comparable = False  # 3DFAN's FAN, not face_alignment's 2D-FAN + SFD (see the module docstring)
    landmark_model = "retinaface-3dfan"  # eval.metrics.face.LANDMARK_MODELS

    def __init__(self, shared: _SharedAnalysis, weights: str) -> None:
        self.shared = shared
        self.name = f"RetinaFace + 3DFAN's FAN (x, y), {weights} weights"

    def cache_fingerprint(self) -> str | None:
        """The analyzer's networks and settings (:func:`eval.reference_cache.fingerprint`)."""
        return self.shared.fingerprint()

    def __call__(self, images: Tensor) -> FaceLandmarks:
        lm = self.shared(images).landmarks
        return FaceLandmarks(lm.points.cpu(), lm.found.cpu())

    def five_points(self, images: Tensor) -> FaceLandmarks:
        """RetinaFace's five keypoints ``(B, 5, 2)`` of the largest face (CSIM ``five_points="detector"``)."""
        return self.shared.keypoints(images)


class _Coefficients:
    def __init__(self, shared: _SharedAnalysis, official: bool) -> None:
        self.shared = shared
        self.comparable = official
        self.name = (f"Deep3DFaceRecon ({'official deep3d-recon' if official else 'random'} weights), 224 crop "
                     "from five of the 68 landmarks")

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        return {k: v.cpu() for k, v in self.shared(images).coefficients().items()}

    def cache_fingerprint(self) -> str | None:
        """The analyzer's networks and settings (:func:`eval.reference_cache.fingerprint`)."""
        return self.shared.fingerprint()


@dataclass
class FaceNetworks:
    """The two callables of one shared analysis (``shared``; call :meth:`clear` between batches)."""

    landmarks: Any
    coefficients: Any
    shared: _SharedAnalysis | None = None

    def clear(self) -> None:
        if self.shared is not None:
            self.shared.clear()

    @classmethod
    def from_analyzer(cls, analyzer: FaceAnalyzer, official: bool = False, weights: str = "random",
                      coefficients: bool = True) -> FaceNetworks:
        """``landmarks`` and ``coefficients`` callables sharing one analysis per image tensor of ``analyzer``;
        ``official``: the coefficients are declared comparable; ``weights`` names the detector + FAN weights."""
        shared = _SharedAnalysis(analyzer)
        return cls(_Landmarks(shared, weights), _Coefficients(shared, official) if coefficients else None, shared)


def _load(builder: Any, fallback: Any, allow_random_weights: bool, what: str) -> tuple[nn.Module, bool]:
    try:
        return builder(), True
    except Exception as err:  # missing asset: AssetNotFoundError / FileNotFoundError from avatar.hub
        if not allow_random_weights:
            raise MissingWeightsError(f"{what}: official weights not found ({err}); install them or pass "
                                      "--allow-random-weights (results are then NOT COMPARABLE)") from err
        torch.manual_seed(0)
        return fallback().eval(), False


def build_face_networks(device: torch.device | str = "cpu", allow_random_weights: bool = False,
                        need_coefficients: bool = True) -> FaceNetworks:
    """RetinaFace, 3DFAN's FAN and Deep3DFaceRecon on ``device`` as one shared :class:`FaceAnalyzer`
    (``need_coefficients`` is accepted for callers that only need landmarks; the analysis is shared anyway)."""
    from avatar.face.deep3d import Deep3DReconNet
    from avatar.face.fan3d import FAN3DLandmarker
    from avatar.face.retinaface import RetinaFace, rig_for_random_weights

    detector, det_ok = _load(lambda: RetinaFace.from_pretrained(device=device),
                             lambda: rig_for_random_weights(RetinaFace(), level=2, anchor=0, top_k=5),
                             allow_random_weights, "RetinaFace detector")
    fan, fan_ok = _load(lambda: FAN3DLandmarker.from_pretrained(device=device), FAN3DLandmarker,
                        allow_random_weights, "3DFAN landmarks")
    recon, recon_ok = (Deep3DReconNet(), False)
    if need_coefficients:
        recon, recon_ok = _load(lambda: Deep3DReconNet.from_pretrained(device=device), Deep3DReconNet,
                                allow_random_weights, "Deep3DFaceRecon")
    official = det_ok and fan_ok and recon_ok
    analyzer = FaceAnalyzer(detector, fan.fan, recon, comparable=official).to(device)
    return FaceNetworks.from_analyzer(analyzer, official, "official" if det_ok and fan_ok else "random",
                                      coefficients=need_coefficients)


# --------------------------------------------------------------------------------------------------------
# face_alignment's 2-D landmarks (AKD's landmark_model="face-alignment-2dfan")


class FaceAlignmentLandmarks:
    """face_alignment's ``LandmarksType.TWO_D`` as OTAvatar's AKD extraction calls it
    (``get_landmarks_from_image(frame)[0]``): SFD, then 2DFAN4 on the first (highest-scored) face.

    ``(B, 3, H, W)`` images in [0, 1] (or uint8) -> :class:`FaceLandmarks` ``(B, 68, 2)`` float64 in input pixels
    (integer values, as upstream), ``found`` False (points NaN) where SFD finds no face. Images become uint8 RGB
    first (``round(255 x)``: the detector and the crop work on 8-bit pixels, as on video frames). Detection runs
    in batches of ``batch_size`` images of one size (batched convolutions may round a box differently in its last
    float bits; ``batch_size=1`` is upstream's one image at a time).
    """

    landmark_model = "face-alignment-2dfan"  # eval.metrics.face.LANDMARK_MODELS

    def __init__(self, model: Any, official: bool, batch_size: int = 8) -> None:
        self.model = model
        self.comparable = official
        self.batch_size = batch_size
        self.name = f"face_alignment SFD + 2DFAN4 (first face), {'official' if official else 'random'} weights"
        self._fingerprint: str | None = None

    def cache_fingerprint(self) -> str | None:
        """The two networks' weights and the first-face rule (:func:`eval.reference_cache.fingerprint`)."""
        if self._fingerprint is None:
            from .reference_cache import fingerprint

            base = fingerprint(self.model)
            self._fingerprint = None if base is None else f"{self.landmark_model}/first-face/{base}"
        return self._fingerprint

    @torch.no_grad()
    def __call__(self, images: Tensor) -> FaceLandmarks:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
        if images.is_floating_point():
            images = images.float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
        elif images.dtype != torch.uint8:
            raise TypeError(f"integer images must be uint8, got {images.dtype}")
        frames = list(images.permute(0, 2, 3, 1).contiguous().cpu().numpy())
        points, found = self.model.first_face(frames, batch_size=self.batch_size)
        return FaceLandmarks(points, found)


def build_face_alignment_landmarks(device: torch.device | str = "cpu", allow_random_weights: bool = False,
                                   batch_size: int = 8) -> FaceAlignmentLandmarks:
    """face_alignment's SFD + 2DFAN4 (model id ``face-alignment-2dfan``: ``avatar download face-alignment-2dfan``)
    on ``device`` as a landmark callable. Missing weights raise :class:`eval.metrics.MissingWeightsError` unless
    ``allow_random_weights`` (seeded random networks, the detector set to report its 128-pixel priors as faces, see
    :func:`avatar.face.s3fd.rig_for_random_weights`; flagged not comparable)."""
    from avatar.face.fan2d import FaceAlignment2D
    from avatar.face.s3fd import rig_for_random_weights

    def random_model() -> FaceAlignment2D:
        model = FaceAlignment2D()
        rig_for_random_weights(model.detector)
        return model

    model, official = _load(lambda: FaceAlignment2D.from_pretrained(device=device), random_model,
                            allow_random_weights, "face_alignment SFD + 2DFAN4 landmarks")
    return FaceAlignmentLandmarks(model.to(device).eval(), official, batch_size=batch_size)


# --------------------------------------------------------------------------------------------------------
# InsightFace's 68 landmarks (AKD's landmark_model="insightface-3d68", GAGAvatar)


class InsightFaceLandmarks:
    """InsightFace's ``FaceAnalysis`` (buffalo_l: SCRFD ``det_10g`` + ``1k3d68``) as GAGAvatar's metric code uses it
    (issue #43): the x, y of ``landmark_3d_68`` of the first face :meth:`avatar.face.insightface_onnx.
    InsightFaceAnalysis.get` returns (``max_num``: 0 = every face, highest detection score first; 1 = the one face
    FaceAnalysis keeps by box area minus twice its squared offset from the image centre).

    ``(B, 3, H, W)`` images in [0, 1] (or uint8) -> :class:`FaceLandmarks` ``(B, 68, 2)`` float64 in input pixels,
    ``found`` False (NaN) where SCRFD finds no face. Images become uint8 RGB first (``round(255 x)``), as video
    frames are. :meth:`five_points` gives SCRFD's five keypoints of the same face (CSIM ``five_points="detector"``,
    GAGAvatar's ``norm_crop`` input). One analysis per image tensor is kept until :meth:`clear`.
    """

    landmark_model = "insightface-3d68"  # eval.metrics.face.LANDMARK_MODELS

    def __init__(self, analysis: Any, official: bool = True, max_num: int = 1) -> None:
        self.analysis = analysis
        self.comparable = official
        self.max_num = max_num
        self.name = (f"InsightFace SCRFD det_10g + 1k3d68 (x, y; FaceAnalysis max_num={max_num}, first face), "
                     f"{'official buffalo_l' if official else 'unofficial'} ONNX graphs")
        self._memo: dict[tuple, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def cache_fingerprint(self) -> str | None:
        """The two ONNX files' digests and the face rule (the reference cache key)."""
        digests = getattr(self.analysis, "fingerprint", None)
        return None if digests is None else f"{self.landmark_model}/max_num={self.max_num}/{digests}"

    def clear(self) -> None:
        self._memo.clear()

    def _analyse(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
        key = (id(images), images.data_ptr(), tuple(images.shape))
        if key not in self._memo:
            frames = images
            if frames.is_floating_point():
                frames = frames.float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
            elif frames.dtype != torch.uint8:
                raise TypeError(f"integer images must be uint8, got {frames.dtype}")
            b = images.shape[0]
            points = torch.full((b, 68, 2), float("nan"), dtype=torch.float64)
            kps = torch.full((b, 5, 2), float("nan"), dtype=torch.float64)
            found = torch.zeros(b, dtype=torch.bool)
            for i, frame in enumerate(frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()):
                faces = self.analysis.get(frame, max_num=self.max_num)
                if faces and faces[0].landmark_3d_68 is not None:
                    points[i] = torch.as_tensor(faces[0].landmark_3d_68[:, :2], dtype=torch.float64)
                    if faces[0].kps is not None:
                        kps[i] = torch.as_tensor(faces[0].kps, dtype=torch.float64)
                    found[i] = True
            self._memo[key] = (images, points, kps, found)  # keep images alive: its id is not reused
        _, points, kps, found = self._memo[key]
        return points, kps, found

    @torch.no_grad()
    def __call__(self, images: Tensor) -> FaceLandmarks:
        points, _, found = self._analyse(images)
        return FaceLandmarks(points.clone(), found.clone())

    @torch.no_grad()
    def five_points(self, images: Tensor) -> FaceLandmarks:
        """SCRFD's five keypoints ``(B, 5, 2)`` of the face whose landmarks :meth:`__call__` gives."""
        _, kps, found = self._analyse(images)
        return FaceLandmarks(kps.clone(), found.clone())


def build_insightface_landmarks(device: torch.device | str = "cpu", allow_random_weights: bool = False,
                                max_num: int = 1, local_dir: str | None = None) -> InsightFaceLandmarks:
    """InsightFace's SCRFD ``det_10g.onnx`` + ``1k3d68.onnx`` (registry keys ``insightface-det-10g`` and
    ``insightface-1k3d68``: ``avatar download --file insightface-det-10g --file insightface-1k3d68``, or
    ``--from-dir ~/.insightface/models/buffalo_l``) in onnxruntime (``pip install 'avatar4d[insightface]'``; CUDA
    when ``device`` is CUDA and onnxruntime has it). Missing files raise :class:`eval.metrics.MissingWeightsError`,
    also with ``allow_random_weights``: there is no random stand-in for these ONNX graphs."""
    from avatar.face.insightface_onnx import SCRFD, InsightFaceAnalysis, Landmark3D68, load_onnxruntime
    from avatar.hub.download import ensure_file
    from avatar.hub.registry import FILES

    ort = load_onnxruntime()  # MissingDependencyError before looking for the files
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    paths = {}
    for key in ("insightface-det-10g", "insightface-1k3d68"):
        try:
            folder = ensure_file(key, local_dir=local_dir)
        except Exception as err:  # AssetNotFoundError / FileNotFoundError from avatar.hub
            hint = " (allow_random_weights does not apply: there is no random stand-in)" if allow_random_weights \
                else ""
            raise MissingWeightsError(
                f"InsightFace {FILES[key].path} (AKD landmark_model='insightface-3d68'): not found ({err}); run "
                f"`avatar download --file {key}` or take it from InsightFace's buffalo_l pack with `avatar download "
                f"--file {key} --from-dir ~/.insightface/models/buffalo_l`{hint}") from err
        paths[key] = folder / FILES[key].path
    analysis = InsightFaceAnalysis(SCRFD(paths["insightface-det-10g"], providers=providers),
                                   Landmark3D68(paths["insightface-1k3d68"], providers=providers))
    analysis.fingerprint = "/".join(_manifest_digest(p.parent) for p in paths.values())
    return InsightFaceLandmarks(analysis, official=True, max_num=max_num)


def _manifest_digest(folder: Any) -> str:
    import json

    try:
        return str(json.loads((folder / "manifest.json").read_text())["sha256"])[:16]
    except (OSError, ValueError, KeyError):
        return "unknown"
