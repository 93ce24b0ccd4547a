"""GAGAvatar's protocols (VFHQ self / cross, HDTF gagavatar-self / -cross): registry, pairing rules against
hand-written lists, the 5-keypoint x3 crop against a hand-computed box, eval.prepare vfhq / recrop, and the
published tables in the report. Synthetic data only, offline."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.metrics import METRICS
from eval.protocols import (
    BENCHMARKS,
    GAGAVATAR_PROTOCOLS,
    PROTOCOLS,
    SOURCE,
    TARGET,
    get_protocol,
    protocol_names,
)
from eval.protocols.crop import (
    RECROP_MARKER,
    KeypointRecropper,
    crop_to_box,
    keypoint_box,
    recrop_folder,
)
from eval.protocols.pairs import HDTF_TEST_19, build_samples, next_in_sorted_order, uniform_positions
from eval.protocols.published import TABLES

CLIPS = ("Clip+b2+P0+C0+F10-20", "Clip+a1+P0+C0+F5-9", "Clip+C3+P1+C0+F1-7")  # sorted(): C3 < a1 < b2


def _frames(root: Path, item: str, numbers: list[int], size: int = 24) -> None:
    (root / item).mkdir(parents=True, exist_ok=True)
    for f in numbers:
        Image.new("RGB", (size, size), (f % 256, 0, 0)).save(root / item / f"{f:06d}.png")


def _vfhq(root: Path, recropped: bool = True) -> Path:
    """A VFHQ-layout DATA: clip b2 has 7 frames, a1 has 5 (frames 3..7), C3 has 4 (frames 0, 2, 4, 6)."""
    data = root / "vfhq"
    _frames(data, CLIPS[0], list(range(7)))
    _frames(data, CLIPS[1], [3, 4, 5, 6, 7])
    _frames(data, CLIPS[2], [0, 2, 4, 6])
    if recropped:
        (data / RECROP_MARKER).write_text(json.dumps({"crop": "gagavatar-kps3"}))
    return data


def _k(key: str, k: int):
    """The protocol with ``k`` sampled frames per video (the rules, small enough to write out by hand)."""
    return dataclasses.replace(get_protocol(key), frames_per_video=k)


def _rows(sset) -> list[tuple[str, str, str, str | None]]:
    def rel(p: Path | None) -> str | None:
        return None if p is None else f"{p.parent.name}/{p.name[:-4]}"

    return [(s.id, rel(s.source), rel(s.driver), rel(s.target)) for s in sset.samples]


# ---------------------------------------------------------------------------------------------------------
# registry


def test_registry_adds_vfhq_and_gagavatar_hdtf_without_changing_goha() -> None:
    assert len(PROTOCOLS) == 5 and not set(PROTOCOLS) & set(GAGAVATAR_PROTOCOLS)
    assert BENCHMARKS["vfhq"] == ("self-reenactment", "cross-reenactment")
    assert BENCHMARKS["hdtf"][-2:] == ("gagavatar-self", "gagavatar-cross")
    assert "vfhq/cross-reenactment" in protocol_names() and protocol_names("vfhq") == list(BENCHMARKS["vfhq"])
    for p in GAGAVATAR_PROTOCOLS.values():
        assert all(m in METRICS for m in p.metrics)
        assert TABLES[p.table].metrics == p.metrics
        assert p.frames_per_video == 100 and p.crop == "gagavatar-kps3" and p.sources
    self_ = get_protocol("vfhq", "self-reenactment")
    assert self_.metrics == ("psnr", "ssim", "lpips", "csim", "aed", "apd", "akd")
    assert set(self_.reference.values()) == {TARGET} and self_.published_count == 50 * 99
    cross = get_protocol("hdtf/gagavatar-cross")
    assert cross.reference == {"csim": SOURCE, "aed": "driver", "apd": "driver"} and cross.published_count == 19 * 99
    assert "ssim.channels=gray" in self_.metric_option_args()
    assert "apd.include_translation=false" in cross.metric_option_args()
    assert cross.metric_option_args(["csim"]) == ["csim.arcface=r100-mica", "csim.five_points=detector",
                                                  "csim.failed_face=zero"]
    from eval.scoring import parse_metric_options

    for p in GAGAVATAR_PROTOCOLS.values():  # every option is a real option of its metric
        for name, opts in parse_metric_options(p.metric_option_args()).items():
            METRICS[name].Options(**opts)


def test_eval_run_offers_the_new_choices() -> None:
    from eval.run import build_parser

    args = build_parser().parse_args(["--benchmark", "vfhq", "--protocol", "self-reenactment", "--data", "d",
                                      "--predictions", "p", "--out", "o"])
    assert get_protocol(args.benchmark, args.protocol).key == "vfhq/self-reenactment"


# ---------------------------------------------------------------------------------------------------------
# pairing rules


def test_uniform_positions_formula() -> None:
    assert uniform_positions(250, 100)[:10] == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22]  # floor(i * 250 / 100)
    assert uniform_positions(250, 100)[-1] == 247 and len(set(uniform_positions(250, 100))) == 100
    assert uniform_positions(100, 100) == list(range(100)) and uniform_positions(7, 100) == list(range(7))
    assert uniform_positions(7, 3) == [0, 2, 4]


def test_next_in_sorted_order_is_code_point_and_circular() -> None:
    assert next_in_sorted_order(["b", "a10", "a2", "B"]) == {"B": "a10", "a10": "a2", "a2": "b", "b": "B"}


def test_vfhq_self_reenactment_pairs(tmp_path: Path) -> None:
    data = _vfhq(tmp_path)
    lst = tmp_path / "clips.txt"
    lst.write_text("\n".join(CLIPS) + "\n")
    s = build_samples(_k("vfhq/self-reenactment", 3), data, video_list=lst)
    b, a, c = CLIPS
    assert _rows(s) == [  # b2: 7 frames -> positions 0, 2, 4; a1: frames 3..7 -> 3, 4, 6; C3: 0, 2, 4, 6 -> 0, 2, 4
        (f"{b}/000002", f"{b}/000000", f"{b}/000002", f"{b}/000002"),
        (f"{b}/000004", f"{b}/000000", f"{b}/000004", f"{b}/000004"),
        (f"{a}/000004", f"{a}/000003", f"{a}/000004", f"{a}/000004"),
        (f"{a}/000006", f"{a}/000003", f"{a}/000006", f"{a}/000006"),
        (f"{c}/000002", f"{c}/000000", f"{c}/000002", f"{c}/000002"),
        (f"{c}/000004", f"{c}/000000", f"{c}/000004", f"{c}/000004"),
    ]
    assert s.groups == list(CLIPS)
    assert any("3 clips from" in n and "not comparable" in n for n in s.notes)  # not the 50 of VFHQ-Test
    assert not any("re-cropped" in n and "not comparable" in n for n in s.notes)


def test_vfhq_cross_reenactment_pairs(tmp_path: Path) -> None:
    data = _vfhq(tmp_path)
    s = build_samples(_k("vfhq/cross-reenactment", 3), data)
    b, a, c = CLIPS
    # sorted(): C3, a1, b2. Clip i's sampled frames (its first excepted) drive the first sampled frame of clip i+1,
    # filed under that source clip and named by the driver frame's number; b2 (last) drives C3 (first).
    assert _rows(s) == [
        (f"{a}/000002", f"{a}/000003", f"{c}/000002", None),
        (f"{a}/000004", f"{a}/000003", f"{c}/000004", None),
        (f"{b}/000004", f"{b}/000000", f"{a}/000004", None),
        (f"{b}/000006", f"{b}/000000", f"{a}/000006", None),
        (f"{c}/000002", f"{c}/000000", f"{b}/000002", None),
        (f"{c}/000004", f"{c}/000000", f"{b}/000004", None),
    ]
    assert any("no --video-list" in n for n in s.notes)
    limited = build_samples(_k("vfhq/cross-reenactment", 3), data, limit=1)
    assert [x.id for x in limited.samples] == [f"{a}/000002", f"{b}/000004", f"{c}/000002"]
    assert len(limited.all_ids) == 6


def test_vfhq_errors_and_crop_note(tmp_path: Path) -> None:
    data = _vfhq(tmp_path, recropped=False)
    s = build_samples(get_protocol("vfhq", "self-reenactment"), data)  # 100 per clip: all frames of each
    assert len(s.samples) == 6 + 4 + 3
    assert any("recrop.json" in n and "not comparable" in n for n in s.notes)
    assert any("only 4 frames" in n for n in s.notes)
    lst = tmp_path / "clips.txt"
    lst.write_text(f"{CLIPS[0]}\nClip+missing\n")
    with pytest.raises(FileNotFoundError, match="Clip\\+missing"):
        build_samples(get_protocol("vfhq", "self-reenactment"), data, video_list=lst)


def test_hdtf_gagavatar_pairs(tmp_path: Path) -> None:
    data = tmp_path / "hdtf"
    for i, v in enumerate(HDTF_TEST_19):
        _frames(data, v, list(range(5 + i % 2)))  # 5 or 6 frames
    (data / RECROP_MARKER).write_text(json.dumps({"crop": "gagavatar-kps3"}))
    self_ = build_samples(_k("hdtf/gagavatar-self", 2), data)
    # 5 frames -> positions 0, 2; 6 frames -> 0, 3
    assert _rows(self_)[:2] == [
        ("WRA_ReneeEllmers_000/000002", "WRA_ReneeEllmers_000/000000", "WRA_ReneeEllmers_000/000002",
         "WRA_ReneeEllmers_000/000002"),
        ("WRA_GeoffDavis_000/000003", "WRA_GeoffDavis_000/000000", "WRA_GeoffDavis_000/000003",
         "WRA_GeoffDavis_000/000003"),
    ]
    assert len(self_.samples) == 19 and not any("not comparable" in n for n in self_.notes)
    cross = build_samples(_k("hdtf/gagavatar-cross", 2), data)
    order = sorted(HDTF_TEST_19)  # WDA_CatherineCortezMasto_000, WDA_MartinHeinrich_000, WDA_MikeDoyle_000, ...
    assert order[:3] == ["WDA_CatherineCortezMasto_000", "WDA_MartinHeinrich_000", "WDA_MikeDoyle_000"]
    by_source = {x.output_id: x.driver.parent.name for x in cross.samples}
    assert by_source["WDA_MartinHeinrich_000"] == "WDA_CatherineCortezMasto_000"
    assert by_source["WDA_MikeDoyle_000"] == "WDA_MartinHeinrich_000"
    assert by_source[order[0]] == order[-1] == "WRA_VickyHartzler_000"  # circular
    first = next(x for x in cross.samples if x.output_id == "WDA_MartinHeinrich_000")
    # CatherineCortezMasto is index 8 of the 19 (5 frames -> positions 0, 2): its frame 2 drives MartinHeinrich
    assert (first.id, first.source.name, first.driver.name) == (
        "WDA_MartinHeinrich_000/000002", "000000.png", "000002.png")
    assert len(cross.samples) == 19


# ---------------------------------------------------------------------------------------------------------
# the crop


def test_keypoint_box_hand_computed() -> None:
    # eyes (100,100) (140,100), nose (120,120), mouth (104,140) (136,140): the keypoints' box is 40 x 40 around
    # (120, 120); side = 3 * sqrt(40 * 40) = 120 -> (60, 60, 180, 180)
    kps = [(100, 100), (140, 100), (120, 120), (104, 140), (136, 140)]
    np.testing.assert_allclose(keypoint_box(kps), [60, 60, 180, 180])
    # a 50 x 32 keypoint box around (125, 116): side = 3 * sqrt(1600) = 120 -> (65, 56, 185, 176)
    kps2 = [(100, 100), (150, 100), (125, 110), (110, 132), (140, 132)]
    np.testing.assert_allclose(keypoint_box(kps2), [65, 56, 185, 176])
    np.testing.assert_allclose(keypoint_box(kps2, ratio=2.0), [85, 76, 165, 156])
    with pytest.raises(ValueError, match="degenerate"):
        keypoint_box([(1, 1), (5, 1)])


def test_crop_to_box_pixels_and_padding() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    crop = crop_to_box(image, [60, 60, 180, 180], size=120)  # same size: a plain cut
    np.testing.assert_array_equal(crop, image[60:180, 60:180])
    crop = crop_to_box(image, [-20.4, 150.3, 79.6, 250.3], size=100)  # left -20, top 150, side 100
    np.testing.assert_array_equal(crop[:50, 20:], image[150:200, 0:80])
    assert crop[:, :20].max() == 0 and crop[50:].max() == 0  # outside the image: black
    assert crop_to_box(image, [60, 60, 180, 180]).shape == (512, 512, 3)


class _Face:
    def __init__(self, box, landmarks) -> None:
        self.box, self.landmarks = np.asarray(box, float), np.asarray(landmarks, float)


def _fake_detect(images: list[np.ndarray]) -> list[list[_Face]]:
    """A big face with the keypoints of the hand-computed box, a smaller decoy; none in an all-black image."""
    kps = [(100, 100), (140, 100), (120, 120), (104, 140), (136, 140)]
    return [[] if im.max() == 0 else [_Face([0, 0, 10, 10], [(1, 1)] * 5), _Face([90, 90, 150, 150], kps)]
            for im in images]


def test_recropper_and_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "v").mkdir(parents=True)
    frames = [rng.integers(1, 256, (240, 240, 3), dtype=np.uint8) for _ in range(3)]
    frames[1][:] = 0  # no face: takes frame 0's box
    for i, f in enumerate(frames):
        Image.fromarray(f).save(src / "v" / f"{i}.png")
    boxes = KeypointRecropper(_fake_detect).boxes(frames)
    np.testing.assert_allclose(boxes[0], [60, 60, 180, 180])  # the largest face's keypoints, not the decoy's
    assert boxes[1] is None
    res = recrop_folder(src, dst, KeypointRecropper(_fake_detect, size=120), detector_name="fake")
    assert (res.folders, res.frames) == (1, 3) and list(res.fallback) == ["v/000001"]
    out = np.asarray(Image.open(dst / "v" / "000002.png"))
    np.testing.assert_array_equal(out, frames[2][60:180, 60:180])
    marker = json.loads((dst / RECROP_MARKER).read_text())
    assert marker["crop"] == "gagavatar-kps3" and marker["ratio"] == 3.0 and marker["fallback"]


# ---------------------------------------------------------------------------------------------------------
# eval.prepare vfhq / recrop


@pytest.fixture(scope="module")
def pre():
    from avatar.pipelines.portrait4d import Portrait4DPipeline

    return Portrait4DPipeline.tiny().preprocessor


def test_prepare_vfhq_layout(tmp_path: Path, pre) -> None:
    from eval import prepare as P

    raw = tmp_path / "raw"
    rng = np.random.default_rng(2)
    for clip, n in ((CLIPS[0], 3), (CLIPS[1], 2)):
        (raw / clip).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(40, 255, (96, 96, 3), dtype=np.uint8)).save(raw / clip / f"{i:08d}.png")
    with pytest.raises(P.InputError, match="50 clips of VFHQ's official test download"):
        P.prepare("vfhq", raw, tmp_path / "data", preprocessor=pre, show_progress=False)
    lst = tmp_path / "clips.txt"
    lst.write_text(f"{CLIPS[0]}\nClip+absent\n")
    with pytest.raises(P.MissingRawFilesError, match="Clip\\+absent"):
        P.prepare("vfhq", raw, tmp_path / "data", ids=str(lst), preprocessor=pre, show_progress=False)
    res = P.prepare("vfhq", raw, tmp_path / "data", ids="all", preprocessor=pre, show_progress=False)
    assert sorted(res.written) == sorted(CLIPS[:2]) and res.frames == 5
    frames = sorted(p.name for p in (tmp_path / "data" / CLIPS[0]).glob("*.png"))
    assert frames == ["000000.png", "000001.png", "000002.png"]
    assert Image.open(tmp_path / "data" / CLIPS[0] / "000000.png").size == (512, 512)
    info = json.loads((tmp_path / "data" / CLIPS[0] / "prepare.json").read_text())
    assert info["dataset"] == "vfhq" and info["frames_written"] == 3


def test_prepare_recrop_command(tmp_path: Path) -> None:
    from eval import prepare as P

    data = tmp_path / "data"
    (data / "v").mkdir(parents=True)
    Image.fromarray(np.full((240, 240, 3), 90, np.uint8)).save(data / "v" / "000000.png")

    class Pre:
        backend = "fake"
        detect = staticmethod(_fake_detect)

    res = P.recrop(data, tmp_path / "out", preprocessor=Pre(), show_progress=False)
    assert res.frames == 1 and Image.open(tmp_path / "out" / "v" / "000000.png").size == (512, 512)
    with pytest.raises(P.InputError, match="another folder"):
        P.recrop(data, data, preprocessor=Pre(), show_progress=False)


# ---------------------------------------------------------------------------------------------------------
# published tables in the report


def test_published_tables_load_and_render(tmp_path: Path) -> None:
    from eval.run import run

    for p in GAGAVATAR_PROTOCOLS.values():
        table = TABLES[p.table]
        assert table.citation and "GAGAvatar" in table.citation and table.note
        for method, values in table.as_dicts():  # every row has its source and the protocol's columns
            assert set(values) == set(p.metrics) and table.source_of(method)
    data = _vfhq(tmp_path)
    pred = tmp_path / "pred"
    rng = np.random.default_rng(3)
    for clip in CLIPS:
        for f in sorted((data / clip).glob("*.png"))[1:]:
            (pred / clip).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(pred / clip / f.name)
    summary = run(["--benchmark", "vfhq", "--protocol", "self-reenactment", "--data", str(data), "--predictions",
                   str(pred), "--out", str(tmp_path / "res"), "--metrics", "psnr,ssim", "--no-plots",
                   "--no-progress", "--no-reference-cache"])
    assert summary is not None and summary["published_table"] == "gagavatar-vfhq-self"
    md = (tmp_path / "res" / "report.md").read_text()
    assert "VFHQ self-reenactment (GAGAvatar protocol)" in md and "NOT COMPARABLE" in md
    assert "no published row verified yet" in md
