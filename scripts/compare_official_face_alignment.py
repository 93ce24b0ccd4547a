"""Side-by-side check of :mod:`avatar.face.s3fd` + :mod:`avatar.face.fan2d` against face_alignment's
``LandmarksType.TWO_D`` (SFD + 2DFAN4), on CPU, random weights, real photos.

    pip install --no-deps --target /tmp/fa_target face-alignment==1.4.1
    pip install --target /tmp/fa_deps numba          # face_alignment's other dependencies, if missing
    git -C FACE_ALIGNMENT_CHECKOUT show v1.2.0:face_alignment/models/fan.py > /tmp/fan.py
    PYTHONPATH=/tmp/fa_target:/tmp/fa_deps python scripts/compare_official_face_alignment.py --fan-source /tmp/fan.py

The script installs nothing. face_alignment must be importable; its FAN class (``face_alignment/models/fan.py``,
from which the released TorchScript archives were made) is not shipped in the 1.4.x wheels, so it is imported from
``face_alignment.models.fan`` when present (1.2.x, 1.5.x) or from ``--fan-source`` (that file from a checkout).

1. builds the official ``s3fd`` with random weights (default init, then per level the class heads are rescaled so
   that the face logit has a chosen mean and spread on the first image: a few hundred candidates and a handful of
   faces, and the box heads so that the offsets spread by about 0.5), saves its ``state_dict`` with ``torch.save``
   as ``s3fd-619a316812.pth``;
2. builds the official ``FAN(4)`` with random weights and perturbed BatchNorm statistics and saves it, traced to
   return the last stack as the released archive does, as the TorchScript archive ``2DFAN4-cd938726ad.zip``;
3. loads both into ours through the asset layer (``FaceAlignment2D.from_pretrained(local_dir=...)``: the
   restricted readers, conversion to safetensors, strict loading) in a throwaway cache;
4. runs the official ``FaceAlignment(LandmarksType.TWO_D, device='cpu')`` (the archive found in a throwaway
   ``TORCH_HOME``, the detector from ``path_to_detector``) and ours on photos of ``--media``, and compares the raw
   S3FD outputs, the detections (``detect_from_image``; ours one image at a time and batched), the FAN heatmaps of
   every crop, the landmarks of every face (``get_landmarks_from_image``) and OTAvatar's first face
   (``get_landmarks_from_image(frame)[0]``).

Exit status 0 when the network outputs and detections match within ``--tol`` (``--batched-tol`` for boxes of
images detected as one batch), the face counts agree and every crop and landmark is identical; 1 otherwise; 2 when
face_alignment, the FAN source or an image is missing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from avatar.face.fan2d import FaceAlignment2D  # noqa: E402
from avatar.face.fan3d import crop_face, crop_params_from_box, decode_heatmaps, heatmap_to_image  # noqa: E402

DEFAULT_IMAGES = (
    "portraits/aligned/align_images/GettyImages.jpg",
    "portraits/aligned/align_images/tom-hanks.jpg",
    "portraits/wild/public_domain/astronaut.png",
    "portraits/wild/deep3d/000033.jpg",
    "portraits/wild/deep3d/000037.jpg",
    "portraits/wild/deep3d/vd034.png",
)
# per level: (mean, standard deviation) of the face-minus-background logit on the first image
LOGIT_TARGETS = ((-7.0, 2.0), (-7.0, 2.0), (-3.5, 2.0), (-4.0, 2.0), (-4.0, 2.0), (-4.0, 2.0))
OFFSET_SPREAD = 0.5


def _missing(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def import_official(fan_source: Path | None) -> tuple[Any, type]:
    """(the ``face_alignment`` module, the official FAN class)."""
    try:
        fa = importlib.import_module("face_alignment")
    except ImportError as err:
        _missing(f"face_alignment is not importable ({err}); see this script's docstring")
    try:
        return fa, importlib.import_module("face_alignment.models.fan").FAN
    except ImportError:
        pass
    if fan_source is None or not fan_source.is_file():
        _missing("face_alignment.models.fan is not installed (1.4.x wheels lack it): pass --fan-source, "
                 "face_alignment/models/fan.py of a face-alignment checkout")
    spec = importlib.util.spec_from_file_location("official_fan", fan_source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return fa, module.FAN


def read_rgb(path: Path) -> np.ndarray:
    """OTAvatar's frames: OpenCV BGR -> RGB uint8."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        _missing(f"cannot read {path}")
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


def official_input(image: np.ndarray) -> torch.Tensor:
    """What face_alignment's ``batch_detect`` feeds its network (RGB -> BGR, minus the mean)."""
    x = torch.from_numpy(image.transpose(2, 0, 1)[None].copy()).float().flip(-3)
    return x - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)


@torch.no_grad()
def random_s3fd(s3fd_cls: type, calibration: np.ndarray, seed: int) -> torch.nn.Module:
    """The official s3fd with seeded random weights whose heads give a few faces (see the docstring)."""
    torch.manual_seed(seed)
    net = s3fd_cls().eval()
    for name in ("conv3_3_norm", "conv4_3_norm", "conv5_3_norm"):
        norm = getattr(net, name)
        norm.weight.mul_(1.0 + 0.2 * torch.randn_like(norm.weight))
    out = net(official_input(calibration))
    sources = ("conv3_3_norm", "conv4_3_norm", "conv5_3_norm", "fc7", "conv6_2", "conv7_2")
    for level, (source, (mean, spread)) in enumerate(zip(sources, LOGIT_TARGETS, strict=True)):
        conf, loc = getattr(net, f"{source}_mbox_conf"), getattr(net, f"{source}_mbox_loc")
        logits = out[2 * level]
        diff = logits[:, 1] - logits[:, 0]
        gain = spread / float(diff.std())
        conf.weight.mul_(gain)
        conf.bias.mul_(gain)
        conf.bias[-1] += mean - gain * float(diff.mean())
        gain_loc = OFFSET_SPREAD / float(out[2 * level + 1].std())
        loc.weight.mul_(gain_loc)
        loc.bias.mul_(gain_loc)
    return net


@torch.no_grad()
def random_fan(fan_cls: type, seed: int) -> torch.nn.Module:
    """The official FAN(4), seeded random weights and BatchNorm statistics, returning the last stack."""

    class LastStack(fan_cls):  # type: ignore[misc, valid-type]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)[-1]

    torch.manual_seed(seed)
    net = LastStack(4).eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.normal_(1.0, 0.1)
            module.bias.normal_(0.0, 0.1)
    return net


def _croppable(image: np.ndarray, box: np.ndarray) -> bool:
    """Whether face_alignment's ``crop`` can cut the crop of ``box`` (its window overlaps the image)."""
    from face_alignment.utils import crop

    center = torch.tensor([box[2] - (box[2] - box[0]) / 2.0, box[3] - (box[3] - box[1]) / 2.0])
    center[1] = center[1] - (box[3] - box[1]) * 0.12
    try:
        crop(image, center, (box[2] - box[0] + box[3] - box[1]) / 195)
    except ValueError:
        return False
    return True


def max_diff(a: object, b: object) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max()) if a.size else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fan-source", type=Path, default=None,
                        help="face_alignment/models/fan.py of a face-alignment checkout (when not importable)")
    parser.add_argument("--media", type=Path, default=REPO_ROOT.parent / "shared" / "media")
    parser.add_argument("--images", nargs="*", default=list(DEFAULT_IMAGES), help="paths relative to --media")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-5, help="for boxes, scores and network outputs")
    parser.add_argument("--batched-tol", type=float, default=1e-3,
                        help="for boxes of images detected in one batch (pixels; batched convolutions round "
                             "differently)")
    args = parser.parse_args(argv)

    fa, fan_cls = import_official(args.fan_source)
    torch.set_grad_enabled(False)
    images = [read_rgb(args.media / p) for p in args.images]
    with tempfile.TemporaryDirectory(prefix="compare-face-alignment-") as tmp:  # ~0.4 GB of official-size files
        return compare(args, fa, fan_cls, images, Path(tmp))


def compare(args: argparse.Namespace, fa: Any, fan_cls: type, images: list[np.ndarray], work: Path) -> int:
    from face_alignment.detection.sfd.detect import detect
    from face_alignment.detection.sfd.net_s3fd import s3fd as s3fd_cls
    from face_alignment.utils import crop, get_preds_fromhm

    files = work / "official"
    (files / "hub" / "checkpoints").mkdir(parents=True)
    os.environ["TORCH_HOME"] = str(files)  # face_alignment looks for the archive in $TORCH_HOME/hub/checkpoints
    os.environ["AVATAR_CACHE"] = str(work / "cache")
    os.environ["AVATAR_OFFLINE"] = "1"

    official_s3fd = random_s3fd(s3fd_cls, images[0], args.seed)
    s3fd_path = files / "s3fd-619a316812.pth"
    torch.save(official_s3fd.state_dict(), s3fd_path)
    official_fan = random_fan(fan_cls, args.seed + 1)
    archive = files / "hub" / "checkpoints" / "2DFAN4-cd938726ad.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(official_fan, torch.rand(1, 3, 256, 256), check_trace=False).save(str(archive))
    (files / archive.name).symlink_to(archive)

    ours = FaceAlignment2D.from_pretrained(local_dir=files)  # through the asset cache: read, convert, strict load
    official = fa.FaceAlignment(fa.LandmarksType.TWO_D, device="cpu",
                                face_detector_kwargs={"path_to_detector": str(s3fd_path)})
    scripted = official.face_alignment_net  # the archive as face_alignment loaded it (torch.jit.load)

    figures: dict[str, float] = {"s3fd outputs": 0.0, "boxes": 0.0, "scores": 0.0, "boxes (batched)": 0.0,
                                 "crops": 0.0, "heatmaps": 0.0, "decoded points": 0.0, "landmarks": 0.0,
                                 "first face": 0.0, "first face (batched)": 0.0}
    counts_ok = True
    total_faces = total_candidates = outside_boxes = whole_calls = first_faces = 0
    ours_batched = ours.detect_batch(images, batch_size=8)
    first_batched, found_batched = ours.first_face(images, batch_size=8)
    for index, (path, image, batched) in enumerate(zip(args.images, images, ours_batched, strict=True)):
        raw_official = official_s3fd(official_input(image))
        raw_ours = [t for pair in ours.detector(ours.detector.to_network_input(image)) for t in pair]
        figures["s3fd outputs"] = max(figures["s3fd outputs"],
                                      max(max_diff(a, b) for a, b in zip(raw_official, raw_ours, strict=True)))
        total_candidates += len(detect(official_s3fd, image, device="cpu")[0])
        det_official = official.face_detector.detect_from_image(image.copy())
        det_official = np.asarray(det_official, dtype=np.float64).reshape(-1, 5)
        det_ours = ours.detector.detect_batch([image], batch_size=1)[0]
        same_count = len(det_official) == len(det_ours) == len(batched)
        counts_ok &= same_count
        if same_count:
            figures["boxes"] = max(figures["boxes"], max_diff(det_official[:, :4], det_ours[:, :4]))
            figures["scores"] = max(figures["scores"], max_diff(det_official[:, 4], det_ours[:, 4]))
            figures["boxes (batched)"] = max(figures["boxes (batched)"], max_diff(det_official, batched))
        total_faces += len(det_official)

        # face_alignment's crop fails (ValueError) on a box whose crop lies wholly outside the image, which random
        # weights produce; ours gives a black crop there. Landmarks are compared on the boxes upstream can crop.
        inside = np.asarray([d for d in det_official if _croppable(image, d)], dtype=np.float64).reshape(-1, 5)
        outside_boxes += len(det_official) - len(inside)
        if len(inside) == len(det_official):  # the whole call: detection + every face
            lm_official = official.get_landmarks_from_image(image)
            lm_official = np.zeros((0, 68, 2), np.float32) if lm_official is None else np.stack(lm_official)
            lm_ours = ours(image)
            counts_ok &= lm_official.shape == lm_ours.shape
            figures["landmarks"] = max(figures["landmarks"], max_diff(lm_official, lm_ours))
            whole_calls += 1
        elif len(inside):
            lm_official = np.stack(official.get_landmarks_from_image(image, detected_faces=list(inside)))
            lm_ours = ours.landmarks_from_boxes([image], [inside])[0]
            figures["landmarks"] = max(figures["landmarks"], max_diff(lm_official, lm_ours))
        first, found = ours.first_face([image])
        counts_ok &= bool(found[0]) == bool(found_batched[index]) == bool(len(det_official))
        if len(det_official) and _croppable(image, det_official[0]):  # OTAvatar: get_landmarks_from_image(...)[0]
            first_official = official.get_landmarks_from_image(image, detected_faces=[det_official[0]])[0]
            figures["first face"] = max(figures["first face"], max_diff(first_official, first[0].numpy()))
            figures["first face (batched)"] = max(figures["first face (batched)"],
                                                  max_diff(first_official, first_batched[index].numpy()))
            first_faces += 1

        # the steps in between, on the official boxes
        for d in inside[:4]:
            center = torch.tensor([d[2] - (d[2] - d[0]) / 2.0, d[3] - (d[3] - d[1]) / 2.0])
            center[1] = center[1] - (d[3] - d[1]) * 0.12
            scale = (d[2] - d[0] + d[3] - d[1]) / official.face_detector.reference_scale
            crop_official = crop(image, center, scale)
            c, s = crop_params_from_box(d, ours.detector.config.reference_scale, dtype=torch.float64)
            crop_ours = crop_face(image, c, s)
            figures["crops"] = max(figures["crops"], max_diff(crop_official, crop_ours), max_diff(center, c))
            x = torch.from_numpy(crop_official.transpose(2, 0, 1)).float().div(255.0)[None]
            hm_official, hm_ours = scripted(x), ours.fan(x)
            figures["heatmaps"] = max(figures["heatmaps"], max_diff(hm_official, hm_ours))
            _, pts_official, _ = get_preds_fromhm(hm_official.numpy(), center.numpy(), scale)
            pts, _ = decode_heatmaps(hm_official)
            pts_ours = heatmap_to_image(pts[0], c, s, resolution=hm_official.shape[-1])
            figures["decoded points"] = max(figures["decoded points"], max_diff(pts_official[0], pts_ours))
        print(f"{path}: {image.shape[1]}x{image.shape[0]}, {len(det_official)} faces (ours {len(det_ours)}, "
              f"batched {len(batched)})")

    print(f"\n{len(images)} images, {total_candidates} S3FD candidates (> 0.05), {total_faces} faces after NMS and the "
          f"0.5 filter ({outside_boxes} whose crop lies outside the image, which face_alignment cannot crop); "
          f"{whole_calls} images compared through the whole get_landmarks_from_image call, {first_faces} first faces")
    for name, value in figures.items():
        print(f"max |official - ours| {name:21s}: {value:.3g}")
    exact = ("landmarks", "first face", "first face (batched)", "decoded points", "crops")
    ok = counts_ok and all(figures[k] == 0.0 for k in exact) and figures["boxes (batched)"] <= args.batched_tol and all(
        figures[k] <= args.tol for k in figures if k not in (*exact, "boxes (batched)"))
    print("face counts agree" if counts_ok else "FACE COUNTS DIFFER")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
