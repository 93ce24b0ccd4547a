"""Sample lists of the protocols: which source, driver and ground truth make each output.

Output ids (the names under ``PREDICTIONS/``; ``<frame>`` is ``%06d``):

=========================  ==================================  =========================================
protocol                   output ``<id>/<frame>.png``           source / driver / ground truth
=========================  ==================================  =========================================
celeba/reconstruction      ``<image>/000000``                   the image itself (all three)
celeba/cross-identity      ``<image 2k>/000000``                image 2k / image 2k+1 / none
hdtf/same-identity         ``<video>/<frame>`` (frame >= 1)     frame 0 / the frame / the frame
hdtf/cross-identity        ``<video>/<driver frame>``           frame 0 of ``<video>`` / the driver frame / none
hdtf/to-celeba             ``<celeba image>__<video>/<frame>``  the CelebA image / the HDTF frame / none
hdtf/gagavatar-self        ``<video>/<frame>`` (sampled, not    first sampled frame / the frame / the frame
vfhq/self-reenactment      the first sampled one)
hdtf/gagavatar-cross       ``<video>/<driver frame>``           first sampled frame of ``<video>`` / a
vfhq/cross-reenactment                                          sampled frame of the previous video in sorted
                                                                order (``<video>``'s driver) / none
=========================  ==================================  =========================================

GAGAvatar's protocols (``hdtf/gagavatar-*``, ``vfhq/*``; Chu & Harada, NeurIPS 2024), rule by rule:

* **Frames**: ``k = 100`` per video, "uniformly sampled" (xg-chu/GAGAvatar issue #40, for HDTF). The formula is
  ours (no code or text gives one): of the ``n`` frames present in ``DATA/<video>/`` (sorted by number), the ones at
  positions ``floor(i * n / k)``, ``i = 0 .. k-1`` (:func:`uniform_positions`): evenly spaced, starting with the
  first frame; all ``n`` when ``n < k`` (noted). VFHQ: 100 per clip is our reading (see
  :data:`eval.protocols.VFHQ_TEST_CLIPS`).
* **Source**: the first sampled frame (GAGAvatar's ``TrackedData._choose_image`` takes a video's lowest-numbered
  frame, ``core/data/loader_track.py`` @4eaeeb2; with our formula it is frame ``n``'s first). **Targets**: the
  other ``k - 1`` sampled frames (the loader removes each video's first frame from the test frames).
* **Cross-identity**: the videos in Python ``sorted()`` order (code-point order, as ``build_video_info`` does; not
  natural order); the ``k - 1`` target frames of video ``i`` drive the source of video ``i + 1``, the last video's
  drive the first's (:func:`next_in_sorted_order`). The output is filed under the *source* video (one avatar per
  folder), named by the driver frame's number: ``<video i+1>/<frame of video i>``. LAM's released pairs go the
  other way (aigc3d/LAM issue #7: "the current one as the source and the next ID as the target"); we follow
  GAGAvatar's loader.
* **Videos**: HDTF: the 19 of issue #40 (:data:`HDTF_TEST_19`). VFHQ: the 50 clips of VFHQ's official test set
  (GAGAvatar issue #47, LAM issue #7), whose names are not published in any repository: ``--video-list FILE`` names
  them, else every clip in DATA is used (a note says so; the count check of the report flags anything but 50).
* **Crop**: every image re-cropped by :mod:`eval.protocols.crop` (``python -m eval.prepare recrop``); DATA without
  its ``recrop.json`` gets a "not comparable" note.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from avatar.errors import InputError, InputNotFoundError

from ..data import frame_name, list_frames, list_ids, natural_key
from . import (
    DRIVER,
    HDTF_CROSS_ID_DRIVER,
    HDTF_TO_CELEBA_FRAMES,
    HDTF_TO_CELEBA_SOURCES,
    SOURCE,
    TARGET,
    VFHQ_TEST_CLIPS,
    Protocol,
)

__all__ = ["HDTF_TEST_19", "Sample", "SampleSet", "build_samples", "next_in_sorted_order", "resolve_hdtf_videos",
           "resolve_vfhq_clips", "uniform_positions"]

logger = logging.getLogger(__name__)

HDTF_TEST_19: tuple[str, ...] = (
    # the HDTF test split of OTAvatar / StyleHEAT / GOHA, as listed by the GAGAvatar author (issue #40);
    # also ../shared/media/lists/hdtf/hdtf_test_19.txt
    "WRA_ReneeEllmers_000", "WRA_GeoffDavis_000", "WDA_MikeDoyle_000", "WRA_JoePitts_000", "WRA_TimScott_000",
    "WRA_JohnThune_000", "WRA_ToddYoung_000", "WRA_RoyBlunt_000", "WDA_CatherineCortezMasto_000",
    "WRA_ErikPaulsen_000", "WRA_TomPrice_000", "WRA_TomCotton_000", "WRA_EricCantor_000", "WRA_RichardShelby_000",
    "WRA_RobPortman_000", "WDA_MartinHeinrich_000", "WRA_DeanHeller_000", "WRA_VickyHartzler_000",
    "WRA_ReincePriebus_000",
)
TO_CELEBA_SEPARATOR = "__"


@dataclass(frozen=True)
class Sample:
    """One output to score.

    Attributes:
        index: position in the protocol's canonical order (sharding and aggregation follow it).
        id: ``<output_id>/<frame:06d>`` (the file ``PREDICTIONS/<id>.png`` without the extension).
        group: the video (or image) the per-video breakdown puts it under.
        source: the image the avatar is made from. driver: the driving frame. target: the ground truth or None.
    """

    index: int
    id: str
    group: str
    source: Path
    driver: Path
    target: Path | None

    def reference(self, kind: str) -> Path:
        path = {TARGET: self.target, SOURCE: self.source, DRIVER: self.driver}[kind]
        if path is None:
            raise ValueError(f"sample {self.id} has no {kind} image")
        return path

    @property
    def output_id(self) -> str:
        return self.id.rsplit("/", 1)[0]

    @property
    def frame(self) -> int:
        return int(self.id.rsplit("/", 1)[1])


@dataclass
class SampleSet:
    """The samples to score now (``samples``, after ``--limit``) and every id of the full protocol."""

    protocol: Protocol
    samples: list[Sample]
    all_ids: list[str]
    groups: list[str]
    notes: list[str]


def resolve_hdtf_videos(data: Path, video_list: str | Path | None = None) -> tuple[list[str], list[str]]:
    """The HDTF test videos: from ``video_list`` (one id per line) if given, else the published 19 when DATA has
    them all, else every id in DATA (with a note: not the published split). Returns ``(videos, notes)``."""
    present = list_ids(data)
    if video_list is not None:
        videos = [ln.strip() for ln in Path(video_list).read_text().splitlines() if ln.strip()]
        missing = [v for v in videos if v not in present]
        if missing:
            raise InputNotFoundError(f"{data}: {len(missing)} video(s) of {video_list} are missing: "
                                    + ", ".join(missing))
        return videos, ([] if sorted(videos) == sorted(HDTF_TEST_19) else
                        [f"videos from {video_list} ({len(videos)}), not the published 19-video test split"])
    if all(v in present for v in HDTF_TEST_19):
        return list(HDTF_TEST_19), []
    return present, [f"DATA does not hold the 19 published HDTF test videos; all {len(present)} videos in it were "
                     "used: not comparable to the published split"]


def resolve_vfhq_clips(data: Path, video_list: str | Path | None = None) -> tuple[list[str], list[str]]:
    """The VFHQ test clips: from ``video_list`` (one clip name per line) if given, else every clip in DATA.
    VFHQ's official test split is 50 clips (GAGAvatar issue #47, LAM issue #7), distributed as a download; their
    names are in no repository, so without a list nothing checks that DATA holds those 50. Returns
    ``(clips, notes)``."""
    present = list_ids(data)
    if video_list is not None:
        clips = [ln.strip() for ln in Path(video_list).read_text().splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
        missing = [c for c in clips if c not in present]
        if missing:
            raise InputNotFoundError(f"{data}: {len(missing)} clip(s) of {video_list} are missing: "
                                     + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
        notes = [] if len(clips) == VFHQ_TEST_CLIPS else [
            f"{len(clips)} clips from {video_list}; VFHQ's test split has {VFHQ_TEST_CLIPS}: not comparable"]
        return clips, notes
    notes = [f"no --video-list: every clip in DATA ({len(present)}) is scored; VFHQ's official test split is "
             f"{VFHQ_TEST_CLIPS} clips (the VFHQ-Test download; no repository lists their names)"]
    if len(present) != VFHQ_TEST_CLIPS:
        notes[0] += ": not comparable"
    return present, notes


def uniform_positions(n: int, k: int) -> list[int]:
    """Positions of ``k`` frames sampled uniformly from ``n``: ``floor(i * n / k)`` for ``i = 0 .. k-1`` (the
    first is 0); every position when ``n <= k``. Our formula for GAGAvatar's "uniformly sample 100 frames"."""
    if n <= k:
        return list(range(n))
    return [i * n // k for i in range(k)]


def next_in_sorted_order(ids: Sequence[str]) -> dict[str, str]:
    """``{id: the next id}`` in Python ``sorted()`` order, the last mapped to the first (GAGAvatar's
    ``build_video_info(cross_video=True)``)."""
    order = sorted(ids)
    return {v: order[(i + 1) % len(order)] for i, v in enumerate(order)}


def _frames(data: Path, item: str) -> list[int]:
    frames = list_frames(data, item)
    if not frames:
        raise InputNotFoundError(f"{data / item}: no <frame:06d>.png frames")
    return frames


def build_samples(
    protocol: Protocol,
    data: str | Path,
    *,
    sources: str | Path | None = None,
    video_list: str | Path | None = None,
    source_list: str | Path | None = None,
    driver: str = HDTF_CROSS_ID_DRIVER,
    limit: int | None = None,
) -> SampleSet:
    """All samples of ``protocol`` on the prepared ``data`` (see the module docstring).

    Args:
        sources: the prepared CelebA folder (``hdtf/to-celeba`` only).
        video_list: HDTF videos, one per line (default: the published 19, see :func:`resolve_hdtf_videos`).
        source_list: CelebA ids used as sources in ``hdtf/to-celeba`` (default: the first 60 in natural order).
        driver: the HDTF cross-identity driving video.
        limit: score at most ``limit`` outputs per video (HDTF) or in all (CelebA); ``all_ids`` still holds the
            whole protocol so that the frames beyond the limit are not reported as extra.
    """
    data = Path(data)
    notes: list[str] = []
    rows: list[tuple[str, str, Path, Path, Path | None]] = []  # id, group, source, driver, target
    key = protocol.key
    if key == "celeba/reconstruction":
        for image in list_ids(data):
            p = data / image / frame_name(_frames(data, image)[0])
            rows.append((f"{image}/{frame_name(0)[:-4]}", image, p, p, p))
    elif key == "celeba/cross-identity":
        images = list_ids(data)
        if len(images) % 2:
            notes.append(f"odd number of images ({len(images)}): the last one, {images[-1]}, has no partner")
        for k in range(len(images) // 2):
            src, drv = images[2 * k], images[2 * k + 1]
            ps = data / src / frame_name(_frames(data, src)[0])
            pd = data / drv / frame_name(_frames(data, drv)[0])
            rows.append((f"{src}/{frame_name(0)[:-4]}", src, ps, pd, None))
    elif protocol.frames_per_video is not None:  # GAGAvatar's protocols (module docstring)
        if protocol.benchmark == "vfhq":
            videos, vnotes = resolve_vfhq_clips(data, video_list)
        else:
            videos, vnotes = resolve_hdtf_videos(data, video_list)
        notes += vnotes + _crop_notes(protocol, data)
        rows += _gagavatar_rows(protocol, data, videos, notes)
    elif key.startswith("hdtf/"):
        videos, vnotes = resolve_hdtf_videos(data, video_list)
        notes += vnotes
        if key == "hdtf/same-identity":
            for v in videos:
                frames = _frames(data, v)
                src = data / v / frame_name(frames[0])
                rows += [(f"{v}/{f:06d}", v, src, data / v / frame_name(f), data / v / frame_name(f))
                         for f in frames[1:]]
        elif key == "hdtf/cross-identity":
            if driver not in list_ids(data):
                raise InputNotFoundError(f"{data}: the cross-identity driver video {driver} is missing")
            dframes = _frames(data, driver)
            for v in videos:
                src = data / v / frame_name(_frames(data, v)[0])
                rows += [(f"{v}/{f:06d}", v, src, data / driver / frame_name(f), None) for f in dframes]
        elif key == "hdtf/to-celeba":
            if sources is None:
                raise InputError("hdtf/to-celeba needs --sources, the prepared CelebA folder")
            sources = Path(sources)
            celeba = list_ids(sources)
            if source_list is not None:
                chosen = [ln.strip() for ln in Path(source_list).read_text().splitlines() if ln.strip()]
                missing = [c for c in chosen if c not in celeba]
                if missing:
                    raise InputNotFoundError(f"{sources}: sources of {source_list} missing: {', '.join(missing)}")
            else:
                chosen = celeba[:HDTF_TO_CELEBA_SOURCES]
                if len(chosen) < HDTF_TO_CELEBA_SOURCES:
                    notes.append(f"only {len(chosen)} CelebA sources (the protocol uses {HDTF_TO_CELEBA_SOURCES})")
            for v in videos:
                frames = _frames(data, v)[:HDTF_TO_CELEBA_FRAMES]
                if len(frames) < HDTF_TO_CELEBA_FRAMES:
                    notes.append(f"{v} has only {len(frames)} frames (< {HDTF_TO_CELEBA_FRAMES})")
                for c in chosen:
                    src = sources / c / frame_name(_frames(sources, c)[0])
                    rows += [(f"{c}{TO_CELEBA_SEPARATOR}{v}/{f:06d}", v, src, data / v / frame_name(f), None)
                             for f in frames]
        else:  # pragma: no cover - the registry and this function list the same protocols
            raise KeyError(key)
    else:  # pragma: no cover
        raise KeyError(key)
    if not rows:
        raise InputNotFoundError(f"{data}: no sample for {key}")
    all_ids = [r[0] for r in rows]
    if len(set(all_ids)) != len(all_ids):
        raise InputError(f"{key}: duplicate output ids (an id containing '{TO_CELEBA_SEPARATOR}'?)")
    if limit is not None:
        per: dict[str, int] = {}
        kept = []
        per_video = protocol.benchmark in ("hdtf", "vfhq")
        for r in rows:
            g = r[1] if per_video else ""
            if per.get(g, 0) < limit:
                kept.append(r)
                per[g] = per.get(g, 0) + 1
        rows = kept
        notes.append(f"--limit {limit}: " + ("at most that many frames per video" if per_video
                                             else "the first that many samples"))
    samples = [Sample(i, sid, g, s, d, t) for i, (sid, g, s, d, t) in enumerate(rows)]
    groups = list(dict.fromkeys(s.group for s in samples))
    return SampleSet(protocol, samples, all_ids, groups, notes)


def _crop_notes(protocol: Protocol, data: Path) -> list[str]:
    """A "not comparable" note when the protocol needs a re-crop that DATA does not have (``recrop.json``)."""
    if protocol.crop is None:
        return []
    from .crop import read_recrop_marker

    marker = read_recrop_marker(data)
    how = "python -m eval.prepare recrop DATA --out DATA_RECROPPED (and the same for the predictions)"
    if marker is None or marker.get("crop") != protocol.crop:
        return [f"DATA is not re-cropped with {protocol.crop} (no {data.name}/recrop.json): run {how}; "
                "not comparable"]
    return [f"DATA re-cropped with {protocol.crop}; the predictions must be re-cropped the same way ({how})"]


def _gagavatar_rows(protocol: Protocol, data: Path, videos: list[str],
                    notes: list[str]) -> list[tuple[str, str, Path, Path, Path | None]]:
    """(id, group, source, driver, target) of GAGAvatar's self / cross protocols (module docstring)."""
    k = protocol.frames_per_video
    assert k is not None
    sampled: dict[str, list[int]] = {}
    for v in videos:
        frames = _frames(data, v)
        if len(frames) < k:
            notes.append(f"{v} has only {len(frames)} frames (< {k}): all of them are used")
        sampled[v] = [frames[p] for p in uniform_positions(len(frames), k)]
        if len(sampled[v]) < 2:
            raise InputNotFoundError(f"{data / v}: {protocol.key} needs at least 2 frames (a source and a driver)")
    rows: list[tuple[str, str, Path, Path, Path | None]] = []
    if protocol.has_ground_truth:  # self-reenactment
        for v in videos:
            src = data / v / frame_name(sampled[v][0])
            rows += [(f"{v}/{f:06d}", v, src, data / v / frame_name(f), data / v / frame_name(f))
                     for f in sampled[v][1:]]
        return rows
    if len(videos) < 2:
        raise InputError(f"{protocol.key} needs at least 2 videos (video i drives video i+1)")
    nxt = next_in_sorted_order(videos)
    for driver in sorted(videos):
        target_video = nxt[driver]
        src = data / target_video / frame_name(sampled[target_video][0])
        rows += [(f"{target_video}/{f:06d}", target_video, src, data / driver / frame_name(f), None)
                 for f in sampled[driver][1:]]
    return rows


def group_order(groups: Sequence[str]) -> list[str]:
    return sorted(groups, key=natural_key)
