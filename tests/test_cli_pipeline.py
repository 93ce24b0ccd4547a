"""`avatar tiny`, `avatar reconstruct` and `avatar reenact` end to end with a tiny random pipeline folder;
bad input gives one ERROR line, exit status 1 and no output file."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from avatar.cli import main
from avatar.io import probe_video
from avatar.pipelines import Portrait4DPipeline


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["-q", "tiny", str(folder)]) == 0
    return folder


@pytest.fixture
def media(shared_media: Path) -> dict[str, Path]:
    paths = {"photo": shared_media / "portraits" / "wild" / "public_domain" / "obama.jpg",
             "talk": shared_media / "videos" / "talk3.mp4", "silent": shared_media / "videos" / "drive_d0.mp4"}
    for p in paths.values():
        if not p.is_file():
            pytest.skip(f"{p} is absent")
    return paths


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ERROR")]


def test_tiny_folder_loads_everywhere(tiny_dir: Path) -> None:
    assert (tiny_dir / "pipeline.json").is_file()
    assert Portrait4DPipeline.from_pretrained(tiny_dir).random_init


def test_reenact_keeps_fps_audio_and_frame_count(tiny_dir: Path, media: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.mp4"
    code = main(["reenact", str(media["photo"]), str(media["talk"]), "-o", str(out), "--model", str(tiny_dir),
                 "--max-frames", "6", "--side-by-side", "--batch-size", "4", "--save-avatar",
                 str(tmp_path / "a.safetensors")])
    assert code == 0
    info = probe_video(out)
    assert info.num_frames == 6 and info.fps == Fraction(25) and info.audio_codec == "aac"
    assert info.width == 3 * info.height  # source | result | driving
    err = capsys.readouterr().err
    assert "random weights" in err and "audio copied" in err
    # the saved avatar replaces the photo; a driving video without audio gives a silent result
    out2 = tmp_path / "out2.mp4"
    assert main(["reenact", str(tmp_path / "a.safetensors"), str(media["silent"]), "-o", str(out2), "--model",
                 str(tiny_dir), "--max-frames", "3", "--absolute", "--pose", "camera", "--no-smooth"]) == 0
    info = probe_video(out2)
    assert info.num_frames == 3 and not info.has_audio
    assert "no audio" in capsys.readouterr().err


def test_reconstruct_orbit(tiny_dir: Path, media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "orbit.mp4"
    assert main(["-q", "reconstruct", str(media["photo"]), "-o", str(out), "--model", str(tiny_dir),
                 "--frames", "4", "--fps", "12"]) == 0
    info = probe_video(out)
    assert info.num_frames == 4 and info.fps == Fraction(12) and not info.has_audio


def test_bad_inputs_one_line_exit_1_nothing_written(tiny_dir: Path, media: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("hello")
    Image.new("RGB", (600, 400), (90, 90, 90)).save(tmp_path / "flat.png")
    noface = tmp_path / "noface"
    pipe = Portrait4DPipeline.from_pretrained(tiny_dir)
    pipe.preprocessor.detector.with_thresholds(confidence=1.0)  # nothing passes: "no face"
    pipe.save_pretrained(noface)
    out = tmp_path / "out.mp4"
    photo, talk = str(media["photo"]), str(media["talk"])
    cases = [
        (["reenact", str(tmp_path / "empty.jpg"), talk], "empty"),
        (["reenact", photo, str(tmp_path / "notes.mp4")], "cannot be opened"),
        (["reenact", photo, str(tmp_path / "missing.mp4")], "does not exist"),
        (["reenact", str(tmp_path / "flat.png"), talk, "--model", str(noface)], "no face found"),
        (["reenact", photo, talk, "--aligned"], "512x512"),
    ]
    for argv, message in cases:
        argv = [*argv, "-o", str(out)]
        if "--model" not in argv:
            argv += ["--model", str(tiny_dir)]
        assert main(argv) == 1, argv
        errors = _error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and message in errors[0], (argv, errors)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jpg", "flat.png", "noface", "notes.mp4"]
    assert main(["reenact", photo, talk, "-o", str(tmp_path / "out.gif"), "--model", str(tiny_dir)]) == 1
    assert "must end in" in _error_lines(capsys.readouterr().err)[0]
