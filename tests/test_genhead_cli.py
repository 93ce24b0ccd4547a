"""`avatar genhead sample|animate` with a tiny random GenHead folder (and a tiny face pipeline for the driving
video); bad input gives one ERROR line and exit status 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avatar.cli import main
from avatar.face.geometry import FlameLabel
from avatar.io import VideoWriter, probe_video
from avatar.models.genhead import GenHead
from avatar.pipelines.genhead import animate, identity_from_seed, sample_grid


@pytest.fixture(scope="module")
def genhead_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return GenHead.tiny(seed=0).save_pretrained(tmp_path_factory.mktemp("genhead") / "tiny")


@pytest.fixture(scope="module")
def face_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("face") / "tiny"
    assert main(["-q", "tiny", str(folder)]) == 0
    return folder


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ERROR")]


def test_sample_writes_a_grid_of_seeds(genhead_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    assert main(["-q", "genhead", "sample", "--model", str(genhead_dir), "--n", "3", "--columns", "3", "--pools",
                 "none", "--seed", "5", "-o", str(out)]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (512, 3 * 512, 3)
    model = GenHead.from_pretrained(genhead_dir)
    again = sample_grid(model, [5, 6, 7])
    assert np.array_equal(grid[:, 512:1024], again[1])  # seed 6 is the middle tile, reproducibly
    assert not np.array_equal(again[0], again[1])


def test_animate_orbit_and_driving_video(genhead_dir: Path, face_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "orbit.mp4"
    assert main(["-q", "genhead", "animate", "--model", str(genhead_dir), "--orbit", "--frames", "3", "--pools",
                 "none", "-o", str(out)]) == 0
    assert probe_video(out).num_frames == 3
    driving = tmp_path / "drive.mp4"
    with VideoWriter(driving, 25) as writer:
        for i in range(3):
            writer.write(np.full((64, 64, 3), 60 + 50 * i, np.uint8))
    out2 = tmp_path / "driven.mp4"
    assert main(["-q", "genhead", "animate", "--model", str(genhead_dir), "--driving", str(driving), "--pools",
                 "none", "--face-pipeline", str(face_dir), "--pose", "camera", "-o", str(out2)]) == 0
    info = probe_video(out2)
    assert info.num_frames == 3 and (info.width, info.height) == (512, 512)


def test_animate_follows_the_driving_expression() -> None:
    model = GenHead.tiny(seed=0)
    ident = identity_from_seed(model, 3)
    neutral = FlameLabel(torch.zeros(25), torch.zeros(300), torch.zeros(100), torch.zeros(6), torch.zeros(6))
    jaw = torch.zeros(6)
    jaw[3] = 0.4
    opened = FlameLabel(neutral.camera, neutral.shape, torch.randn(100), jaw, torch.zeros(6))
    a, b = animate(model, ident, [neutral, opened], pose="fixed")
    assert a.shape == (512, 512, 3) and not np.array_equal(a, b)


@pytest.mark.parametrize("argv, message", [
    (["sample", "--n", "2", "-o", "grid.gif"], ".png or .jpg"),
    (["sample", "--truncation", "1.5", "-o", "g.png"], "--truncation"),
    (["animate", "-o", "v.mp4"], "--driving"),
    (["animate", "--driving", "missing.mp4", "-o", "v.mp4"], "does not exist"),
    (["sample", "--pools", "no_such_folder", "-o", "g.png"], "--pools"),
])
def test_bad_options_are_one_sentence(argv: list[str], message: str, genhead_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["genhead", argv[0], "--model", str(genhead_dir), *argv[1:]]) == 1
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and message in errors[0]
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".png", ".gif", ".mp4")]
