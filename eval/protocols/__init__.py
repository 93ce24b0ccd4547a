"""The five published protocols (GOHA, NeurIPS 2023, Tables 1-3) as data: which metrics, against what, which pairs.

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

from avatar.errors import InputError, UnknownNameError

__all__ = [
    "BENCHMARKS", "DRIVER", "HDTF_CROSS_ID_DRIVER", "HDTF_TO_CELEBA_FRAMES", "HDTF_TO_CELEBA_SOURCES", "PROTOCOLS",
    "Protocol", "REFERENCES", "SAME_IDENTITY_METRICS", "SOURCE", "TARGET", "get_protocol", "protocol_names",
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

    def __post_init__(self) -> None:
        missing = [m for m in self.metrics if m not in self.reference]
        bad = {m: r for m, r in self.reference.items() if r not in REFERENCES}
        if missing or bad or set(self.reference) - set(self.metrics):
            raise InputError(f"protocol {self.key}: inconsistent references (missing {missing}, bad {bad})")
        object.__setattr__(self, "reference", MappingProxyType(dict(self.reference)))

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

BENCHMARKS: dict[str, tuple[str, ...]] = {}
for _p in PROTOCOLS.values():
    BENCHMARKS.setdefault(_p.benchmark, ())
    BENCHMARKS[_p.benchmark] += (_p.name,)


def protocol_names(benchmark: str | None = None) -> list[str]:
    """``["celeba/reconstruction", ...]``, or the protocol names of one benchmark."""
    if benchmark is None:
        return list(PROTOCOLS)
    return list(BENCHMARKS.get(benchmark, ()))


def get_protocol(benchmark: str, protocol: str | None = None) -> Protocol:
    """``get_protocol("hdtf", "same-identity")`` or ``get_protocol("hdtf/same-identity")``."""
    key = benchmark if protocol is None else f"{benchmark}/{protocol}"
    try:
        return PROTOCOLS[key.lower()]
    except KeyError:
        raise UnknownNameError(f"unknown protocol '{key}'; known: {', '.join(PROTOCOLS)}") from None
