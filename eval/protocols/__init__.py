"""The published protocols as data: which metrics, against what, which pairs.

:data:`PROTOCOLS` holds the five of GOHA (NeurIPS 2023, Tables 1-3); :data:`GAGAVATAR_PROTOCOLS` the four of
GAGAvatar (NeurIPS 2024) that later one-shot papers (LAM, FlexAvatar, OMG-Avatar ...) reuse: VFHQ self- and
cross-reenactment and GAGAvatar's HDTF self- and cross-reenactment (see :mod:`eval.protocols.pairs` for the rules
and their sources, :mod:`eval.protocols.crop` for GAGAvatar's evaluation crop). :data:`ALL_PROTOCOLS` is both;
:data:`BENCHMARKS`, :func:`get_protocol` and :func:`protocol_names` (what ``eval.run --benchmark/--protocol``
offer) are built from it, so a protocol added here is a choice of ``eval.run`` with no other change.

A :class:`Protocol` says, for one benchmark (``celeba`` or ``hdtf``) and one protocol name:

* ``metrics``: the metric names (as in :data:`eval.metrics.METRICS`), in the column order of the published table;
* ``reference``: for each metric, what the generated frame is compared with (:data:`TARGET` the ground-truth frame
  of the same id, :data:`SOURCE` the source image the avatar was made from, :data:`DRIVER` the driving frame).
  For FID (pooled) the reference is the *set* of those images, one per generated sample;
* ``pairing``: the rule that turns the prepared data into (source, driver, output) samples (see
  :mod:`eval.protocols.pairs` for the code);
* ``table``: the key of the published GOHA table the report puts our row beside
  (:mod:`eval.protocols.published`).

Facts and sources: ``../shared/design/eval-protocols.md`` (section A for the protocols and tables; section 1.9
for the per-metric reference of the cross-identity protocols: CSIM against the source, AED/APD against the
driver, FID between the source set and the generated set, as GOHA's ``fidelity --input1 source/ --input2 low_res/``).

This module imports nothing heavy (no torch) so that ``eval.bench`` and the CLI can read it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from avatar.errors import InputError, UnknownNameError

__all__ = [
    "ALL_PROTOCOLS", "BENCHMARKS", "DRIVER", "GAGAVATAR_CROSS_METRICS", "GAGAVATAR_FRAMES_PER_VIDEO",
    "GAGAVATAR_METRIC_OPTIONS", "GAGAVATAR_PROTOCOLS", "GAGAVATAR_SELF_METRICS", "HDTF_CROSS_ID_DRIVER",
    "HDTF_TO_CELEBA_FRAMES", "HDTF_TO_CELEBA_SOURCES", "PROTOCOLS", "Protocol", "REFERENCES", "SAME_IDENTITY_METRICS",
    "SOURCE", "TARGET", "VFHQ_TEST_CLIPS", "get_protocol", "protocol_names",
]

TARGET = "target"   # the ground-truth frame with the same id as the output (reconstruction, same identity)
SOURCE = "source"   # the source image the avatar was created from (identity reference in cross-identity)
DRIVER = "driver"   # the driving frame (expression / pose reference in cross-identity)
REFERENCES = (TARGET, SOURCE, DRIVER)

HDTF_CROSS_ID_DRIVER = "WRA_EricCantor_000"  # OTAvatar issue #11 / README --cross_id_target
HDTF_TO_CELEBA_FRAMES = 100                  # first 100 frames of each HDTF test video ...
HDTF_TO_CELEBA_SOURCES = 60                  # ... drive 60 CelebA sources (19 x 100 x 60 = 114,000)


@dataclass(frozen=True)
class Protocol:
    """One published protocol.

    Attributes:
        benchmark: ``"celeba"`` or ``"hdtf"``.
        name: protocol name (``"reconstruction"``, ``"cross-identity"``, ``"same-identity"``, ``"to-celeba"``).
        metrics: metric names in the column order of the published table.
        reference: metric name -> :data:`TARGET` | :data:`SOURCE` | :data:`DRIVER`.
        pairing: human-readable pairing rule (the code is :func:`eval.protocols.pairs.build_samples`).
        table: key of the published table in :mod:`eval.protocols.published`.
        published_count: number of generated images in the paper's protocol (for the report).
        has_ground_truth: whether every output has a ground-truth frame (reconstruction / same identity).
        description: one line for the report's title (what was actually scored is added to it by the report).
        notes: facts the report repeats.
        frames_per_video: frames sampled uniformly from each video (GAGAvatar's protocols; ``None``: all frames),
            see :func:`eval.protocols.pairs.uniform_positions`.
        crop: the crop every image (ground truth and results) must have before any metric (``None``: the prepared
            data as they are; ``"gagavatar-kps3"``: :mod:`eval.protocols.crop`, applied with
            ``python -m eval.prepare recrop``).
        metric_options: the metric options that reproduce the published metric variants
            (``{"ssim": {"channels": "gray"}, ...}``, the names of ``--metric-option METRIC.OPTION=VALUE``).
            Not applied automatically: :meth:`metric_option_args` lists them for the command line.
        sources: where each rule of the protocol comes from (repository @ commit, issue, paper).
    """

    benchmark: str
    name: str
    metrics: tuple[str, ...]
    reference: Mapping[str, str]
    pairing: str
    table: str
    published_count: int
    has_ground_truth: bool
    description: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    frames_per_video: int | None = None
    crop: str | None = None
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sources: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        missing = [m for m in self.metrics if m not in self.reference]
        bad = {m: r for m, r in self.reference.items() if r not in REFERENCES}
        if missing or bad or set(self.reference) - set(self.metrics):
            raise InputError(f"protocol {self.key}: inconsistent references (missing {missing}, bad {bad})")
        object.__setattr__(self, "reference", MappingProxyType(dict(self.reference)))
        stray = sorted(set(self.metric_options) - set(self.metrics))
        if stray:
            raise InputError(f"protocol {self.key}: metric options for metrics it does not score: {stray}")
        object.__setattr__(self, "metric_options", MappingProxyType(
            {m: MappingProxyType(dict(o)) for m, o in self.metric_options.items()}))

    def metric_option_args(self, metrics: list[str] | tuple[str, ...] | None = None) -> list[str]:
        """:attr:`metric_options` as ``--metric-option`` values (``["ssim.channels=gray", ...]``), for ``metrics``
        (default: all of the protocol's)."""
        import json

        wanted = self.metrics if metrics is None else metrics
        return [f"{m}.{k}={v if isinstance(v, str) else json.dumps(v)}"
                for m in wanted for k, v in self.metric_options.get(m, {}).items()]

    @property
    def key(self) -> str:
        return f"{self.benchmark}/{self.name}"

    def reference_of(self, metric: str) -> str:
        """What ``metric`` compares the output with (:data:`TARGET`, :data:`SOURCE` or :data:`DRIVER`)."""
        try:
            return self.reference[metric]
        except KeyError:
            raise UnknownNameError(f"metric '{metric}' is not part of protocol {self.key} "
                           f"(its metrics: {', '.join(self.metrics)})") from None


def _same(metrics: tuple[str, ...]) -> dict[str, str]:
    return {m: TARGET for m in metrics}


def _cross(metrics: tuple[str, ...]) -> dict[str, str]:
    ref = {"csim": SOURCE, "aed": DRIVER, "apd": DRIVER, "akd": DRIVER, "fid": SOURCE}
    return {m: ref[m] for m in metrics}


SAME_IDENTITY_METRICS: tuple[str, ...] = ("psnr", "ssim", "csim", "aed", "apd", "akd", "lpips", "l1", "fid")
CROSS_IDENTITY_METRICS: tuple[str, ...] = ("csim", "aed", "apd", "fid")
RECONSTRUCTION_METRICS: tuple[str, ...] = ("l1", "lpips", "psnr", "ssim", "fid")

PROTOCOLS: dict[str, Protocol] = {p.key: p for p in (
    Protocol(
        "celeba", "reconstruction", RECONSTRUCTION_METRICS, _same(RECONSTRUCTION_METRICS),
        pairing="every image is its own source and driver; the output is compared with the input image",
        table="goha-table1-celeba-reconstruction", published_count=29_954, has_ground_truth=True,
        description="CelebA 3D portrait reconstruction (render from the input view, compare with the input)",
    ),
    Protocol(
        "celeba", "cross-identity", CROSS_IDENTITY_METRICS, _cross(CROSS_IDENTITY_METRICS),
        pairing="images in natural sort order of their ids; image 2k is the source, image 2k+1 drives it "
                "(an odd last image is left out)",
        table="goha-table1-celeba-cross-identity", published_count=14_977, has_ground_truth=False,
        description="CelebA cross-identity reenactment (expression and pose of image 2k+1 transferred to image 2k)",
    ),
    Protocol(
        "hdtf", "same-identity", SAME_IDENTITY_METRICS, _same(SAME_IDENTITY_METRICS),
        pairing="each test video: frame 0 is the source, every other frame drives it and is the ground truth",
        table="goha-table2-hdtf-same-identity", published_count=37_860, has_ground_truth=True,
        description="HDTF same-identity reenactment",
        # GOHA's AKD follows OTAvatar's: face_alignment's SFD + 2D-FAN (OTAvatar issue #27,
        # OTAvatar_processing LmkDet/extract_kp_videos.py); listed, not applied (see Protocol.metric_options)
        metric_options={"akd": {"landmark_model": "face-alignment-2dfan"}},
    ),
    Protocol(
        "hdtf", "cross-identity", CROSS_IDENTITY_METRICS, _cross(CROSS_IDENTITY_METRICS),
        pairing=f"frame 0 of each test video (the driver's own included) is a source; every frame of "
                f"{HDTF_CROSS_ID_DRIVER} drives it",
        table="goha-table2-hdtf-cross-identity", published_count=67_203, has_ground_truth=False,
        description="HDTF cross-identity reenactment",
    ),
    Protocol(
        "hdtf", "to-celeba", CROSS_IDENTITY_METRICS, _cross(CROSS_IDENTITY_METRICS),
        pairing=f"the first {HDTF_TO_CELEBA_FRAMES} frames of each test video drive each of "
                f"{HDTF_TO_CELEBA_SOURCES} CelebA sources (the first {HDTF_TO_CELEBA_SOURCES} CelebA ids in natural "
                "sort order unless a list is given)",
        table="goha-table3-hdtf-to-celeba", published_count=114_000, has_ground_truth=False,
        description="HDTF -> CelebA cross-identity reenactment",
        notes=("GOHA does not say which 60 CelebA images were the sources",),
    ),
)}

# ---------------------------------------------------------------------------------------------------------
# GAGAvatar's protocols (Chu & Harada, "Generalizable and Animatable Gaussian Head Avatar", NeurIPS 2024), reused by
# LAM (aigc3d/LAM issue #7: "Yes, we use the same test set ... 50 clips"; issue #43: metrics "follow
# https://github.com/xg-chu/GAGAvatar"). Rules and sources: eval/protocols/pairs.py; the crop: eval/protocols/crop.py.

GAGAVATAR_FRAMES_PER_VIDEO = 100  # xg-chu/GAGAvatar issue #40 (HDTF): "we uniformly sample 100 frames from each video"
VFHQ_TEST_CLIPS = 50              # xg-chu/GAGAvatar issue #47: "I used 50 clips" (VFHQ's official test clips)

# self-reenactment: PSNR, SSIM, LPIPS, CSIM, AED, APD, AKD; cross-reenactment: CSIM, AED, APD. The metric set is the
# one of the metric code the author posted (issue #43: identity cosine, expression / pose L1, 68 landmarks) and
# issue #36 (AED / APD); the column order is ours (image metrics first, as LAM issue #43's question lists them).
GAGAVATAR_SELF_METRICS: tuple[str, ...] = ("psnr", "ssim", "lpips", "csim", "aed", "apd", "akd")
GAGAVATAR_CROSS_METRICS: tuple[str, ...] = ("csim", "aed", "apd")

# The metric variants GAGAvatar's numbers used, as ``--metric-option`` names. Sources: SSIM on grayscale
# (xg-chu/GAGAvatar core/libs/utils.py, torchmetrics SSIM after rgb_to_grayscale); APD on the three angles only
# (GAGAvatar issue #36: ``F.l1_loss(pred['pose'][:3], ...)``; LAM issue #11: "APD metric is only for angles");
# CSIM with MICA's ArcFace (IResNet-100; issue #43: ``deep3d_engine.mica_model.arcface``); AKD on InsightFace's 68
# landmarks (issue #43); a pair whose face is not detected scores 0 (issue #43: ``return 0, 0, 0, 0, 0``).
# The option names are those of eval/metrics (SSIMOptions, CSIMOptions, APDOptions, AKDOptions, CoefficientOptions).
GAGAVATAR_METRIC_OPTIONS: dict[str, dict[str, Any]] = {
    "ssim": {"channels": "gray"},
    "csim": {"arcface": "r100-mica", "five_points": "detector", "failed_face": "zero"},
    "aed": {"failed_face": "zero"},
    "apd": {"include_translation": False, "failed_face": "zero"},
    "akd": {"landmark_model": "insightface-3d68", "failed_face": "zero"},
}


def _gaga_options(metrics: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {m: o for m, o in GAGAVATAR_METRIC_OPTIONS.items() if m in metrics}


_GAGA_SOURCES = (
    "frames: xg-chu/GAGAvatar issue #40 (2025-03-05): 'we uniformly sample 100 frames from each video'; the "
    "formula floor(i*n/100) is ours",
    "source / targets: xg-chu/GAGAvatar core/data/loader_track.py @4eaeeb2 (TrackedData: the source is a video's "
    "lowest-numbered frame; the test frames exclude each video's first frame)",
    "cross: loader_track.py build_video_info / _choose_image: videos in sorted() order; a test frame of video i is "
    "rendered from the first frame of video i+1, the last video wrapping to the first (issue #45 points there)",
    "crop: xg-chu/GAGAvatar issue #39: InsightFace 5 keypoints, box enlarged 3x, resized to 512 (box formula ours, "
    "after GAGAvatar_track engines/engine_core.py expand_bbox)",
)
_CROSS_REF = {"csim": SOURCE, "aed": DRIVER, "apd": DRIVER}

GAGAVATAR_PROTOCOLS: dict[str, Protocol] = {p.key: p for p in (
    Protocol(
        "vfhq", "self-reenactment", GAGAVATAR_SELF_METRICS, _same(GAGAVATAR_SELF_METRICS),
        pairing=f"each VFHQ test clip: {GAGAVATAR_FRAMES_PER_VIDEO} frames sampled uniformly (frame floor(i*n/"
                f"{GAGAVATAR_FRAMES_PER_VIDEO})); the first is the source, the other "
                f"{GAGAVATAR_FRAMES_PER_VIDEO - 1} drive it and are the ground truth",
        table="gagavatar-vfhq-self", published_count=VFHQ_TEST_CLIPS * (GAGAVATAR_FRAMES_PER_VIDEO - 1),
        has_ground_truth=True, description="VFHQ self-reenactment (GAGAvatar protocol)",
        frames_per_video=GAGAVATAR_FRAMES_PER_VIDEO, crop="gagavatar-kps3",
        metric_options=_gaga_options(GAGAVATAR_SELF_METRICS),
        notes=("VFHQ test split: the 50 clips of VFHQ's official test download (GAGAvatar issue #47; LAM issue #7); "
               "their names are not in any repository: pass them with --video-list",
               "frames per clip: 100, our reading of GAGAvatar's '5,000 frames' (issue #47) as 50 clips x 100 frames, "
               "the HDTF rule of issue #40; not stated for VFHQ"),
        sources=_GAGA_SOURCES + ("VFHQ split: xg-chu/GAGAvatar issue #47, aigc3d/LAM issue #7",),
    ),
    Protocol(
        "vfhq", "cross-reenactment", GAGAVATAR_CROSS_METRICS, {m: _CROSS_REF[m] for m in GAGAVATAR_CROSS_METRICS},
        pairing="clips in sorted order; the sampled frames of clip i (its first excepted) drive the first sampled "
                "frame of clip i+1 (the last clip drives the first)",
        table="gagavatar-vfhq-cross", published_count=VFHQ_TEST_CLIPS * (GAGAVATAR_FRAMES_PER_VIDEO - 1),
        has_ground_truth=False, description="VFHQ cross-reenactment (GAGAvatar protocol)",
        frames_per_video=GAGAVATAR_FRAMES_PER_VIDEO, crop="gagavatar-kps3",
        metric_options=_gaga_options(GAGAVATAR_CROSS_METRICS),
        notes=("LAM's cross pairs (LAM issue #7: 'using the current one as the source and the next ID as the "
               "target') run the other way round from GAGAvatar's loader; this protocol follows the loader",),
        sources=_GAGA_SOURCES + ("VFHQ split: xg-chu/GAGAvatar issue #47, aigc3d/LAM issue #7",),
    ),
    Protocol(
        "hdtf", "gagavatar-self", GAGAVATAR_SELF_METRICS, _same(GAGAVATAR_SELF_METRICS),
        pairing=f"each of the 19 HDTF test videos: {GAGAVATAR_FRAMES_PER_VIDEO} frames sampled uniformly (frame "
                f"floor(i*n/{GAGAVATAR_FRAMES_PER_VIDEO})); the first is the source, the other "
                f"{GAGAVATAR_FRAMES_PER_VIDEO - 1} drive it and are the ground truth",
        table="gagavatar-hdtf-self", published_count=19 * (GAGAVATAR_FRAMES_PER_VIDEO - 1), has_ground_truth=True,
        description="HDTF self-reenactment (GAGAvatar protocol)",
        frames_per_video=GAGAVATAR_FRAMES_PER_VIDEO, crop="gagavatar-kps3",
        metric_options=_gaga_options(GAGAVATAR_SELF_METRICS),
        sources=_GAGA_SOURCES + ("videos: the 19 of xg-chu/GAGAvatar issue #40",),
    ),
    Protocol(
        "hdtf", "gagavatar-cross", GAGAVATAR_CROSS_METRICS, {m: _CROSS_REF[m] for m in GAGAVATAR_CROSS_METRICS},
        pairing="the 19 videos in sorted order; the sampled frames of video i (its first excepted) drive the first "
                "sampled frame of video i+1 (the last video drives the first)",
        table="gagavatar-hdtf-cross", published_count=19 * (GAGAVATAR_FRAMES_PER_VIDEO - 1), has_ground_truth=False,
        description="HDTF cross-reenactment (GAGAvatar protocol)",
        frames_per_video=GAGAVATAR_FRAMES_PER_VIDEO, crop="gagavatar-kps3",
        metric_options=_gaga_options(GAGAVATAR_CROSS_METRICS),
        sources=_GAGA_SOURCES + ("videos: the 19 of xg-chu/GAGAvatar issue #40",),
    ),
)}

ALL_PROTOCOLS: dict[str, Protocol] = {**PROTOCOLS, **GAGAVATAR_PROTOCOLS}

BENCHMARKS: dict[str, tuple[str, ...]] = {}
for _p in ALL_PROTOCOLS.values():
    BENCHMARKS.setdefault(_p.benchmark, ())
    BENCHMARKS[_p.benchmark] += (_p.name,)


def protocol_names(benchmark: str | None = None) -> list[str]:
    """``["celeba/reconstruction", ...]`` (every registered protocol), or the protocol names of one benchmark."""
    if benchmark is None:
        return list(ALL_PROTOCOLS)
    return list(BENCHMARKS.get(benchmark, ()))


def get_protocol(benchmark: str, protocol: str | None = None) -> Protocol:
    """``get_protocol("hdtf", "same-identity")`` or ``get_protocol("hdtf/same-identity")``."""
    key = benchmark if protocol is None else f"{benchmark}/{protocol}"
    try:
        return ALL_PROTOCOLS[key.lower()]
    except KeyError:
        raise UnknownNameError(f"unknown protocol '{key}'; known: {', '.join(ALL_PROTOCOLS)}") from None
