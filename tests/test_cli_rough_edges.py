"""A person's first hour with the ``avatar`` command: the rough edges, each checked.

* every number on the command line is checked when it is parsed (argparse's one-line error, exit 1);
* missing weights of a model are all counted and listed, not only the checkpoint;
* ``avatar download --from-dir`` says when the folder does not exist;
* outputs get the user's umask, not tempfile's 0o600;
* partial files of killed runs are removed by the next writer of the same output, never a live writer's;
* a bad driving video (or photo) fails before any model work, in plain words, never FFmpeg's ``[Errno ...]``;
* log lines do not land on a progress bar's line; ``avatar --version``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import avatar
from avatar import cli
from avatar.errors import InputError, VideoReadError
from avatar.io import UnreadableVideoError, VideoReader, VideoWriter, probe_video
from avatar.io.files import create_partial, partial_path, remove_stale_partials
from avatar.logs import setup_logging

REPO = Path(__file__).resolve().parents[1]


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ERROR")]


def _video(path: Path, frames: int = 5, size: int = 32) -> Path:
    with VideoWriter(path, 25) as writer:
        for i in range(frames):
            writer.write(np.full((size, size, 3), 40 * i % 256, np.uint8))
    return path


def _garbled(tmp_path: Path) -> Path:
    """An MP4 whose container is intact (it opens) but whose video data is noise: no frame decodes."""
    data = bytearray(_video(tmp_path / "good.mp4").read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    assert 0 < start < end
    rng = random.Random(0)
    data[start:end] = bytes(rng.randrange(256) for _ in range(end - start))
    path = tmp_path / "garbled.mp4"
    path.write_bytes(bytes(data))
    return path


def _photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# 1. numbers are checked when the command line is parsed


@pytest.mark.parametrize(("argv", "message"), [
    (["reenact", "p.jpg", "d.mp4", "-o", "o.mp4", "--max-frames", "-3"],
     "argument --max-frames: must be a whole number of at least 1, got -3"),
    (["reenact", "p.jpg", "d.mp4", "-o", "o.mp4", "--max-frames", "0"],
     "argument --max-frames: must be a whole number of at least 1, got 0"),
    (["reenact", "p.jpg", "d.mp4", "-o", "o.mp4", "--batch-size", "0"],
     "argument --batch-size: must be a whole number of at least 1, got 0"),
    (["reenact", "p.jpg", "d.mp4", "-o", "o.mp4", "--max-frames", "2.5"],
     "argument --max-frames: must be a whole number of at least 1, got '2.5'"),
    (["reconstruct", "p.jpg", "-o", "o.mp4", "--batch-size", "-1"], "argument --batch-size: must be a whole number"),
    (["reconstruct", "p.jpg", "-o", "o.mp4", "--frames", "0"], "argument --frames: must be a whole number of at "
                                                               "least 1, got 0"),
    (["reconstruct", "p.jpg", "-o", "o.mp4", "--fps", "0"], "argument --fps: must be a number above 0 and at most "
                                                            "1000, got 0"),
    (["reconstruct", "p.jpg", "-o", "o.mp4", "--fps", "-25"], "argument --fps: must be a number above 0"),
    (["reconstruct", "p.jpg", "-o", "o.mp4", "--fps", "nan"], "argument --fps: must be a number above 0"),
    (["reconstruct", "p.jpg", "-o", "o.mp4", "--fps", "inf"], "argument --fps: must be a number above 0"),
    (["reconstruct", "p.jpg", "-o", "o.mp4", "--fps", "1e6"], "at most 1000"),
    (["tiny", "dir", "--seed", "-1"], "argument --seed: must be a whole number from 0 to 4294967295, got -1"),
])
def test_numbers_are_checked_when_the_command_line_is_parsed(argv: list[str], message: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("_cmd_reenact", "_cmd_reconstruct", "_cmd_tiny"):  # nothing may run: parsing stops it
        monkeypatch.setattr(cli, name, lambda args: pytest.fail("the command ran"))
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == cli.EXIT_ERROR == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"avatar {argv[0]}: error: ") and message in last, err
    assert "__len__" not in err and "range()" not in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_good_numbers_are_parsed() -> None:
    args = cli.build_parser().parse_args(["reconstruct", "p.jpg", "-o", "o.mp4", "--frames", "1", "--fps", "29.97",
                                          "--batch-size", "3"])
    assert (args.frames, args.fps, args.batch_size) == (1, 29.97, 3)
    args = cli.build_parser().parse_args(["reenact", "p.jpg", "d.mp4", "-o", "o.mp4"])
    assert args.max_frames is None and args.batch_size == 8
    assert cli.build_parser().parse_args(["tiny", "d", "--seed", "0"]).seed == 0


def test_video_reader_refuses_a_max_frames_below_1(tmp_path: Path) -> None:
    video = _video(tmp_path / "d.mp4")
    for bad in (0, -3, 1.5, True):
        with pytest.raises(InputError, match="max_frames must be a whole number of at least 1") as info:
            VideoReader(video, max_frames=bad)  # type: ignore[arg-type]
        assert "no video frames" not in str(info.value)  # the video is fine: never blame it
    assert len(VideoReader(video, max_frames=np.int64(2))) == 2


# ----------------------------------------------------------------------------------------------------------
# 2. every missing file of the model is counted


def test_missing_weights_count_every_file_of_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avatar.hub.registry import DEFAULT_MODEL_ID, get_model

    files = get_model(DEFAULT_MODEL_ID).files
    assert len(files) > 1
    code = cli.main(["reconstruct", str(_photo(tmp_path)), "-o", str(tmp_path / "o.mp4"), "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err
    errors = _errors(err)
    assert len(errors) == 1, err
    assert f"{DEFAULT_MODEL_ID}: {len(files)} of its {len(files)} files are missing" in errors[0]
    for file in files:
        assert f"  - {file.path} ({file.repo})" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------------------------------------
# 3. download --from-dir names a folder that is not there


def test_download_from_a_folder_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avatar.hub.download import download_model

    missing = tmp_path / "no" / "such" / "folder"
    for argv in (["download", "--from-dir", str(missing)],
                 ["download", "portrait4d-v2-vfhq512", "--from-dir", str(missing)],
                 ["download", "--file", "portrait4d-v2-vfhq512", "--from-dir", str(missing)]):
        assert cli.main(argv) == 1, argv
        errors = _errors(capsys.readouterr().err)
        assert len(errors) == 1 and f"--from-dir {missing}: the folder does not exist" in errors[0], errors
    (tmp_path / "file.txt").write_text("x")
    assert cli.main(["download", "--from-dir", str(tmp_path / "file.txt")]) == 1
    assert "is a file, not a folder" in _errors(capsys.readouterr().err)[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):  # the library says so too
        download_model("portrait4d-v2", local_dir=missing)


# ----------------------------------------------------------------------------------------------------------
# 4. outputs get the user's umask


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_outputs_get_the_users_umask(umask: int, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        out = _video(tmp_path / "out.mp4")
        partial = create_partial(tmp_path / "other.mp4")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert partial.stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------------------------------------
# 5. partial files of killed runs


_WRITER = """
import os, signal, sys
import numpy as np
from avatar.io import VideoWriter
writer = VideoWriter(sys.argv[1], 25)
writer.write(np.zeros((16, 16, 3), np.uint8))
print(writer._tmp, flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()  # a live writer, busy until the test lets it go
"""


def test_partial_files_of_killed_runs_are_removed_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", _WRITER, str(out), "kill"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    dead = Path(killed.stdout.strip())
    assert dead.is_file() and dead.name.startswith(".out.partial-") and dead.suffix == ".mp4"
    live = subprocess.Popen([sys.executable, "-c", _WRITER, str(out), "live"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        busy = Path(live.stdout.readline().strip())  # type: ignore[union-attr]
        assert busy.is_file() and f".partial-{live.pid}-" in busy.name
        old = tmp_path / ".out.partial-abcd1234.mp4"  # a name without a pid, written before this run started
        old.write_bytes(b"x")
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        other = tmp_path / ".other.partial-999999999-abcd.mp4"  # another output's: not ours to judge
        other.write_bytes(b"x")
        _video(out)  # the next writer of out.mp4
        assert not dead.exists() and not old.exists()
        assert busy.exists() and other.exists()  # a live writer's partial file is never removed
        assert out.is_file()
    finally:
        live.stdin.close()  # type: ignore[union-attr]
        live.wait(timeout=60)
    assert remove_stale_partials(out) == [busy]  # its process is gone now
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-999999999-abcd.mp4", "out.mp4"]


def test_partial_name_holds_the_pid_and_a_reused_pid_is_seen(tmp_path: Path) -> None:
    target = tmp_path / "clip.mov"
    name = partial_path(target).name
    assert re.fullmatch(rf"\.clip\.partial-{os.getpid()}-[0-9a-f]{{8}}\.mov", name)
    mine = create_partial(target)
    assert remove_stale_partials(target) == [] and mine.exists()  # this process's own: kept
    if Path("/proc/1/stat").is_file():  # pid 1 is alive; a file written before it started is not its own
        reused = tmp_path / ".clip.partial-1-deadbeef.mov"
        reused.write_bytes(b"x")
        os.utime(reused, (1000.0, 1000.0))
        assert remove_stale_partials(target) == [reused]


# ----------------------------------------------------------------------------------------------------------
# 6. and 7. bad inputs fail before any model work, in plain words


def test_reenact_checks_the_driving_video_before_any_model_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    def no_model_work(args):  # noqa: ANN001, ANN202
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(cli, "_load_pipeline", no_model_work)
    photo, garbled, out = str(_photo(tmp_path)), str(_garbled(tmp_path)), str(tmp_path / "out.mp4")
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "bad.png").write_text("not a photo")
    cases = [
        ([photo, garbled], "cannot be decoded"),
        ([photo, str(tmp_path / "notes.mp4")], "not a video file PyAV/FFmpeg can read (invalid data)"),
        ([photo, str(tmp_path / "folder")], "does not exist"),
        ([str(tmp_path / "bad.png"), garbled], "not an image"),
        ([str(tmp_path / "saved.safetensors"), garbled], "saved.safetensors does not exist"),
    ]
    for inputs, message in cases:
        assert cli.main(["reenact", *inputs, "-o", out, "--device", "cpu"]) == 1, inputs
        err = capsys.readouterr().err
        errors = _errors(err)
        assert len(errors) == 1 and message in errors[0], (inputs, err)
        assert "Errno" not in err and "Traceback" not in err
    assert not (tmp_path / "out.mp4").exists()


def test_ffmpeg_errors_in_plain_words(tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("not a video at all")
    garbled = _garbled(tmp_path)
    for path, words in ((tmp_path / "notes.mp4", "is not a video file PyAV/FFmpeg can read (invalid data)"),
                        (garbled, "its first video frame is unreadable (invalid data)")):
        for read in (probe_video, VideoReader):
            with pytest.raises(UnreadableVideoError) as info:
                read(path)
            message = str(info.value)
            assert isinstance(info.value, VideoReadError) and isinstance(info.value, InputError)
            assert words in message and f"ffmpeg -i {path} out.mp4" in message, message
            assert "Errno" not in message and "\n" not in message and info.value.reason == "invalid data"


# ----------------------------------------------------------------------------------------------------------
# 8. log lines and progress bars; --version


def test_log_lines_do_not_land_on_a_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    from tqdm.auto import tqdm

    setup_logging(0)
    bar = tqdm(total=3, desc="work", file=sys.stderr, mininterval=0)
    bar.update(1)
    logging.getLogger("avatar.test").warning("a line of its own")
    bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "WARNING avatar.test: a line of its own" in re.split(r"[\r\n]", err), repr(err)
    assert err.count("WARNING avatar.test: a line of its own\n") == 1
    # without a bar, records are written as before
    logging.getLogger("avatar.test").info("plain")
    assert capsys.readouterr().err == "INFO avatar.test: plain\n"


def test_version(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"avatar {importlib.metadata.version('avatar4d')}\n"

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli.version() == avatar.__version__


def test_saved_avatars_and_pipelines_get_the_users_umask(tmp_path: Path) -> None:
    import numpy as np

    from avatar.pipelines import Portrait4DPipeline

    pipe = Portrait4DPipeline.tiny(seed=0)
    avatar = pipe.create_avatar(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    old = os.umask(0o027)
    try:
        folder = pipe.save_pretrained(tmp_path / "pipe")
        saved = avatar.save(tmp_path / "me.avatar.safetensors")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o750  # not mkdtemp's 0o700
    assert (folder / "reconstructor").stat().st_mode & 0o777 == 0o750
    assert saved.stat().st_mode & 0o777 == 0o640  # not mkstemp's 0o600


@pytest.mark.parametrize("argv, message", [
    (["bench", "psi", "--frames", "-3"], "argument --frames: must be a whole number of at least 1, got -3"),
    (["bench", "pipeline", "--batch-sizes", "8", "0"], "argument --batch-sizes: must be a whole number"),
    (["bench", "face", "--repeats", "0"], "argument --repeats: must be a whole number"),
    (["app", "--port", "-5"], "argument --port: must be a whole number from 1 to 65535, got -5"),
    (["eval", "--batch-size", "0"], "argument --batch-size: must be a whole number"),
    (["prepare", "hdtf", "--fps", "0"], "argument --fps: must be a number above 0"),
])
def test_forwarded_commands_check_their_numbers_when_parsing(argv: list[str], message: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from avatar.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1
    assert message in capsys.readouterr().err
