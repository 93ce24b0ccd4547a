"""Side-by-side check of :mod:`avatar.face.insightface_onnx` against insightface 0.7.3's own classes (CPU).

    git --git-dir=INSIGHTFACE_MIRROR archive 668e8d47 python-package/insightface | tar -x -C /tmp/if073
    python scripts/compare_official_insightface.py --insightface /tmp/if073/python-package/insightface

``--insightface`` is the ``insightface`` package folder of release 0.7.3 (a checkout of deepinsight/insightface at
``668e8d47`` "add v0.7.3", or the unpacked sdist), never part of this repository. Nothing is compiled or installed:
only ``model_zoo/scrfd.py``, ``model_zoo/landmark.py``, ``utils/face_align.py``, ``utils/transform.py``,
``app/common.py`` and ``app/face_analysis.py`` are imported, by path, into a stand-in ``insightface`` package whose
other modules are stubs (``data.get_object`` gives a random mean shape: it only feeds the head pose, which is not
compared; ``face_analysis``'s model-zoo and download helpers are never called). Needs onnx, onnxruntime, opencv and
scikit-image.

1. builds tiny random ONNX graphs with the signatures of ``det_10g.onnx`` (9 outputs) and ``1k3d68.onnx``
   (3309 outputs) (``tests/fake_insightface.py``), written to a temporary folder;
2. upstream: ``SCRFD(model_file)`` + ``prepare(-1, input_size=(640, 640), det_thresh=0.5)``, ``Landmark(model_file)``
   + ``prepare(-1)``, and ``FaceAnalysis.get`` (the unbound method on an instance holding those two models) on BGR
   images; ours: :class:`InsightFaceAnalysis` on the same images in RGB;
3. compares, for several image sizes / aspect ratios and score levels (a few to a few hundred faces) and
   ``max_num`` 0 and 1: the number of faces, boxes + scores, five keypoints, ``landmark_3d_68`` (x, y, z).

Prints max absolute differences (pixels); exit status 0 when the face counts agree and all differences are below
``--tol`` (1e-3 px), 1 otherwise, 2 when the insightface folder is unusable.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_official(folder: Path) -> dict[str, types.ModuleType]:
    """Import the six upstream files into a stand-in ``insightface`` package (see the module docstring)."""
    for f in ("model_zoo/scrfd.py", "model_zoo/landmark.py", "utils/face_align.py", "utils/transform.py",
              "app/common.py", "app/face_analysis.py"):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder / f} not found: --insightface must be insightface 0.7.3's package folder")
    for pkg in ("insightface", "insightface.model_zoo", "insightface.utils", "insightface.app", "insightface.data"):
        module = types.ModuleType(pkg)
        module.__path__ = []  # a package: submodules are registered by hand
        sys.modules[pkg] = module
    rng = np.random.default_rng(123)
    sys.modules["insightface.data"].get_object = lambda name: rng.normal(0, 50, size=(68, 3))
    stub_zoo = types.ModuleType("insightface.model_zoo.model_zoo")
    stub_zoo.get_model = None
    sys.modules["insightface.model_zoo.model_zoo"] = stub_zoo
    sys.modules["insightface.model_zoo"].model_zoo = stub_zoo
    utils = sys.modules["insightface.utils"]
    utils.DEFAULT_MP_NAME = "buffalo_l"
    utils.ensure_available = None
    out = {}
    for name, rel in (("utils.face_align", "utils/face_align.py"), ("utils.transform", "utils/transform.py"),
                      ("model_zoo.scrfd", "model_zoo/scrfd.py"), ("model_zoo.landmark", "model_zoo/landmark.py"),
                      ("app.common", "app/common.py"), ("app.face_analysis", "app/face_analysis.py")):
        module = _load(f"insightface.{name}", folder / rel)
        parent, _, leaf = f"insightface.{name}".rpartition(".")
        setattr(sys.modules[parent], leaf, module)
        out[name] = module
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--insightface", required=True, type=Path, help="insightface 0.7.3's package folder")
    parser.add_argument("--tol", type=float, default=1e-3)
    args = parser.parse_args(argv)
    try:
        official = load_official(args.insightface)
    except (FileNotFoundError, ImportError) as exc:
        print(f"cannot import insightface 0.7.3 from {args.insightface}: {exc}")
        return 2

    from fake_insightface import face_image, landmark_graph, scrfd_graph

    from avatar.face.insightface_onnx import SCRFD, InsightFaceAnalysis, Landmark3D68

    Face = official["app.common"].Face
    FaceAnalysis = official["app.face_analysis"].FaceAnalysis
    worst = {"boxes+scores": 0.0, "kps": 0.0, "landmark_3d_68 xy": 0.0, "landmark_3d_68 z": 0.0}
    ok = True
    total_faces = 0
    with tempfile.TemporaryDirectory() as tmp:
        lmk_path = Path(tmp) / "1k3d68.onnx"
        lmk_path.write_bytes(landmark_graph(seed=1))
        up_lmk = official["model_zoo.landmark"].Landmark(model_file=str(lmk_path))
        up_lmk.prepare(-1)
        ours_lmk = Landmark3D68(lmk_path)
        assert (ours_lmk.input_mean, ours_lmk.input_std) == (up_lmk.input_mean, up_lmk.input_std)
        for bias in (-5.0, -4.0, -3.0, -2.0):
            det_path = Path(tmp) / f"det_10g_{bias}.onnx"
            det_path.write_bytes(scrfd_graph(seed=2, score_bias=bias, score_gain=3.0))
            up_det = official["model_zoo.scrfd"].SCRFD(model_file=str(det_path))
            up_det.prepare(-1, input_size=(640, 640), det_thresh=0.5)
            app = object.__new__(FaceAnalysis)
            app.models = {"detection": up_det, up_lmk.taskname: up_lmk}
            app.det_model = up_det
            ours = InsightFaceAnalysis(SCRFD(det_path), ours_lmk)
            for h, w, seed in ((360, 480, 0), (512, 512, 1), (700, 300, 2), (240, 1000, 3)):
                rgb = face_image(h, w, seed)
                for max_num in (0, 1):
                    theirs = FaceAnalysis.get(app, np.ascontiguousarray(rgb[..., ::-1]), max_num=max_num)
                    mine = ours.get(rgb, max_num=max_num)
                    if len(theirs) != len(mine):
                        print(f"bias {bias} {h}x{w} max_num={max_num}: {len(mine)} faces, upstream {len(theirs)}")
                        ok = False
                        continue
                    total_faces += len(mine)
                    for a, b in zip(mine, theirs, strict=True):
                        assert isinstance(b, Face)
                        up_box = np.append(b.bbox, b.det_score)
                        worst["boxes+scores"] = max(worst["boxes+scores"], float(np.abs(
                            np.append(a.bbox, a.det_score) - up_box).max()))
                        worst["kps"] = max(worst["kps"], float(np.abs(a.kps - b.kps).max()))
                        d = np.abs(a.landmark_3d_68 - b.landmark_3d_68)
                        worst["landmark_3d_68 xy"] = max(worst["landmark_3d_68 xy"], float(d[:, :2].max()))
                        worst["landmark_3d_68 z"] = max(worst["landmark_3d_68 z"], float(d[:, 2].max()))
    print(f"faces compared: {total_faces} (4 score levels x 4 image sizes x max_num 0/1)")
    for k, v in worst.items():
        print(f"max |ours - insightface 0.7.3| {k}: {v:.3g}")
        ok = ok and v <= args.tol
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
