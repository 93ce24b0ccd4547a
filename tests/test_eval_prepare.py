"""eval.prepare: raw HDTF clips / CelebA images -> DATA/<id>/<frame:06d>.png with tiny random networks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.errors import AvatarError
from avatar.io.video import VideoWriter
from avatar.pipelines.portrait4d import Portrait4DPipeline
from eval import prepare as P

FPS = 5


def _frames(n: int, size: int = 96, dark: tuple[int, ...] = ()) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        f = np.zeros((size, size, 3), np.uint8) if i in dark else rng.integers(40, 255, (size, size, 3), np.uint8)
        out.append(f)
    return out


def _video(path: Path, frames: list[np.ndarray]) -> None:
    with VideoWriter(path, fps=FPS) as w:
        for f in frames:
            w.write(f)


def _lists(root: Path) -> Path:
    """HDTF-style lists: Foo (full video, clip 1 = 1 s .. 2 s), Bar (one clip), Baz (never downloaded)."""
    d = root / "lists" / "hdtf"
    d.mkdir(parents=True)
    (d / "WRA_video_url.txt").write_text("Foo https://example.org/foo\nBar https://example.org/bar\n"
                                         "Baz https://example.org/baz\n")
    (d / "WRA_annotion_time.txt").write_text("Foo.mp4 00:00-00:01 00:01-00:02\nBar.mp4 00:00-00:05\n"
                                             "Baz.mp4 00:03-00:09\n")
    (d / "WRA_resolution.txt").write_text("Foo.mp4 720\nBar.mp4 1080\n")
    (d / "hdtf_test_19.txt").write_text("WRA_Bar_000\nWRA_Foo_001\n")
    c = root / "lists" / "celeba"
    c.mkdir()
    (c / "CelebA-HQ-to-CelebA-mapping.txt").write_text("idx orig_idx orig_file\n0 10 000011.jpg\n1 20 000021.jpg\n"
                                                       "2 30 000031.jpg\n")
    (c / "celebahq_test_2824_hq_indices.txt").write_text("1\n2\n")
    return root / "lists"


class _DarkIsFaceless:
    """The tiny preprocessor, except that an all-dark frame has no face (the tiny detector sees one anywhere)."""

    def __init__(self, pre) -> None:
        self.pre = pre
        self.landmarker = pre.landmarker
        self.min_face_size = 0.0

    def detect(self, images):
        faces = self.pre.detect(images)
        return [[] if img.max() < 10 else f for img, f in zip(images, faces, strict=True)]

    def alignment_points(self, images, faces):
        return self.pre.alignment_points(images, faces)


@pytest.fixture(scope="module")
def pre():
    return _DarkIsFaceless(Portrait4DPipeline.tiny().preprocessor)


def test_hdtf_layout_cut_faceless_and_resume(tmp_path: Path, pre) -> None:
    lists = _lists(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    _video(raw / "WRA_Bar_000.mp4", _frames(4, dark=(2,)))       # an already cut clip
    _video(raw / "Foo.mp4", _frames(3 * FPS))                     # a full video, cut here to 1 s .. 2 s
    out = tmp_path / "data"
    res = P.prepare("hdtf", raw, out, ids="test", preprocessor=pre, lists=lists, batch_size=3, show_progress=False)
    assert sorted(res.written) == ["WRA_Bar_000", "WRA_Foo_001"] and not res.failed
    bar = sorted(p.name for p in (out / "WRA_Bar_000").iterdir())
    assert bar == ["000000.png", "000001.png", "000003.png", "prepare.json"]  # frame 2 had no face: a gap
    meta = json.loads((out / "WRA_Bar_000" / "prepare.json").read_text())
    assert meta["no_face"] == [2] and meta["frames_written"] == 3 and "no face" in meta["no_face_reasons"]["2"]
    assert res.no_face == {"WRA_Bar_000": [2]}
    assert len(list((out / "WRA_Foo_001").glob("*.png"))) == FPS  # one second of the full video
    from PIL import Image

    with Image.open(out / "WRA_Bar_000" / "000000.png") as im:
        assert im.size == (512, 512) and im.mode == "RGB"

    # resume: finished ids are skipped, a stale partial folder is cleaned, --overwrite redoes
    (out / ".WRA_Foo_001.partial-abc").mkdir()
    again = P.prepare("hdtf", raw, out, ids="test", preprocessor=pre, lists=lists, show_progress=False)
    assert sorted(again.skipped) == ["WRA_Bar_000", "WRA_Foo_001"] and not again.written
    assert not list(out.glob(".*partial*"))
    redo = P.prepare("hdtf", raw, out, ids="WRA_Bar_000", preprocessor=pre, lists=lists, overwrite=True,
                     crop="tube", show_progress=False)
    assert redo.written == ["WRA_Bar_000"]
    assert json.loads((out / "WRA_Bar_000" / "prepare.json").read_text())["crop"] == "tube"


def test_missing_raw_files_are_listed_before_any_work(tmp_path: Path, capsys) -> None:
    lists = _lists(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    _video(raw / "WRA_Bar_000.mp4", _frames(2))
    with pytest.raises(P.MissingRawFilesError) as err:
        P.prepare("hdtf", raw, tmp_path / "data", ids="WRA_Bar_000,WRA_Foo_001,WRA_Baz_000", lists=lists)
    assert sorted(err.value.missing) == ["WRA_Baz_000", "WRA_Foo_001"]
    msg = str(err.value)
    assert "WRA_Baz_000.mp4" in msg and "Baz.mp4" in msg and "https://example.org/baz" in msg and "00:03-00:09" in msg
    assert not (tmp_path / "data").exists()  # nothing was started
    code = P.main(["hdtf", "--raw", str(raw), "--out", str(tmp_path / "data"), "--ids", "WRA_Baz_000",
                   "--lists", str(lists)])
    err_text = capsys.readouterr().err
    assert code == 1 and "WRA_Baz_000" in err_text and "Traceback" not in err_text  # the user's input: exit 1
    assert isinstance(err.value, AvatarError)


def test_background_removal_without_weights_stops_before_any_work(tmp_path: Path, pre) -> None:
    lists = _lists(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    _video(raw / "WRA_Bar_000.mp4", _frames(2))
    with pytest.raises(P.MattingUnavailableError, match="Google Drive") as err:
        P.prepare("hdtf", raw, tmp_path / "data", ids="WRA_Bar_000", preprocessor=pre, lists=lists,
                  background="remove", show_progress=False)
    assert "--from-dir" in str(err.value) and "--matting-checkpoint" in str(err.value)
    assert not (tmp_path / "data" / "WRA_Bar_000").exists()
    with pytest.raises(ValueError, match="background_color"):
        P.prepare("hdtf", raw, tmp_path / "data", background="remove", background_color="green")


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Portrait4DPipeline.tiny().save_pretrained(tmp_path_factory.mktemp("prep") / "tiny")


def _saturated_modnet(folder: Path, logit: float) -> None:
    """A tiny MODNet whose fusion head outputs the constant ``logit``: matte sigmoid(logit) everywhere."""
    from avatar.face.modnet import MODNet

    net = MODNet.tiny()
    head = net.f_branch.conv_f[1].layers[0]
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.constant_(head.bias, logit)
    net.save_pretrained(folder / "modnet")


def test_background_removal_composites_with_the_matte(tmp_path: Path, tiny_pipeline_dir: Path) -> None:
    from PIL import Image

    lists = _lists(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    _video(raw / "WRA_Bar_000.mp4", _frames(3))
    common = ["hdtf", "--raw", str(raw), "--ids", "WRA_Bar_000", "--lists", str(lists), "--no-progress"]

    def frames(out: Path) -> list[np.ndarray]:
        return [np.asarray(Image.open(p)) for p in sorted((out / "WRA_Bar_000").glob("*.png"))]

    # matte 0 everywhere -> every pixel is the background colour (white here, OTAvatar's)
    background = tmp_path / "model-bg"
    shutil.copytree(tiny_pipeline_dir, background)
    _saturated_modnet(background, -40.0)
    assert P.main([*common, "--out", str(tmp_path / "white"), "--model", str(background),
                   "--background", "remove", "--background-color", "white"]) == 0
    white = frames(tmp_path / "white")
    assert len(white) == 3 and all(f.shape == (512, 512, 3) and (f == 255).all() for f in white)
    meta = json.loads((tmp_path / "white" / "WRA_Bar_000" / "prepare.json").read_text())
    assert meta["background"] == "remove" and meta["background_color"] == "white"
    assert meta["matting"].endswith("modnet")

    # matte 1 everywhere -> the crops unchanged (compare with --background keep)
    foreground = tmp_path / "model-fg"
    shutil.copytree(tiny_pipeline_dir, foreground)
    _saturated_modnet(foreground, 40.0)
    assert P.main([*common, "--out", str(tmp_path / "kept"), "--model", str(foreground),
                   "--background", "remove"]) == 0
    assert P.main([*common, "--out", str(tmp_path / "keep"), "--model", str(foreground)]) == 0
    kept, keep = frames(tmp_path / "kept"), frames(tmp_path / "keep")
    assert len(kept) == 3 and all(np.array_equal(a, b) for a, b in zip(kept, keep, strict=True))
    assert any(f.std() > 0 for f in keep)

    # a random tiny matte through the API: black background = the crop multiplied by the matte
    from avatar.face.modnet import MODNet

    net = MODNet.tiny()
    res = P.prepare("hdtf", raw, tmp_path / "black", ids="WRA_Bar_000", model=str(tiny_pipeline_dir), lists=lists,
                    background="remove", matting=net, show_progress=False)
    assert res.written == ["WRA_Bar_000"]
    black = frames(tmp_path / "black")
    crop = torch.from_numpy(np.array(keep[0])).permute(2, 0, 1)[None].float() / 255
    expected = (crop * net.matte(crop) * 255).round()[0].permute(1, 2, 0).numpy()
    assert np.abs(black[0].astype(float) - expected).max() <= 1


def test_list_sources_and_unknown_ids(tmp_path: Path, capsys) -> None:
    lists = _lists(tmp_path)
    assert P.main(["hdtf", "--list-sources", "--lists", str(lists)]) == 0
    out = capsys.readouterr().out
    assert "WRA_Foo_001\thttps://example.org/foo\t00:01-00:02\t720" in out
    with pytest.raises(KeyError, match="WRA_Nobody_000") as err:
        P.hdtf_clips("WRA_Nobody_000", lists)
    assert isinstance(err.value, AvatarError) and str(err.value).startswith("unknown HDTF id(s) WRA_Nobody_000")
    assert P.main(["hdtf", "--list-sources", "--ids", "WRA_Nobody_000", "--lists", str(lists)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "unknown HDTF id(s) WRA_Nobody_000" in errors[0]


def test_shared_hdtf_lists_hold_the_19_test_clips() -> None:
    if not (P.DEFAULT_LISTS / "hdtf" / "hdtf_test_19.txt").is_file():
        pytest.skip("shared media lists absent")
    clips = P.hdtf_clips("test")
    assert len(clips) == 19 and all(c.url and c.start is not None for c in clips)
    cantor = next(c for c in clips if c.id == "WRA_EricCantor_000")
    assert (cantor.start, cantor.end, cantor.resolution) == (2.0, 120.0, 1080)
    assert len(P.celeba_sources("test")) == 2824


def test_celeba_images_from_hq_or_original_names(tmp_path: Path, pre) -> None:
    from PIL import Image

    lists = _lists(tmp_path)
    raw = tmp_path / "raw"
    (raw / "img_celeba").mkdir(parents=True)
    Image.fromarray(_frames(1, 128)[0]).save(raw / "1.jpg")                       # CelebA-HQ name
    Image.fromarray(_frames(1, 128)[0]).save(raw / "img_celeba" / "000031.jpg")   # original CelebA file of HQ 2
    res = P.prepare("celeba", raw, tmp_path / "data", preprocessor=pre, lists=lists, show_progress=False)
    assert sorted(res.written) == ["hq00001", "hq00002"]
    assert sorted(p.name for p in (tmp_path / "data" / "hq00002").iterdir()) == ["000000.png", "prepare.json"]
    with pytest.raises(P.MissingRawFilesError, match="hq00000"):
        P.prepare("celeba", raw, tmp_path / "data2", ids="0,1", preprocessor=pre, lists=lists)
