"""The entry points' error convention: an AvatarError is one plain ERROR line and exit 1 (``-v`` adds the
traceback); any other exception is a bug: traceback and exit 2; Ctrl-C is 130; a rejected command line is 1.
``avatar eval|prepare|bench|app`` hand their arguments to the same mains as the ``python -m`` forms."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from avatar import cli
from avatar.errors import NoFaceError
from avatar.logs import setup_logging

REPO = Path(__file__).resolve().parents[1]


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ERROR")]


def _failing_models(exc: BaseException):  # noqa: ANN202
    def command(args: argparse.Namespace) -> int:
        raise exc

    return command


def test_avatar_error_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_cmd_models", _failing_models(NoFaceError("no face found in beach.jpg; use a photo")))
    assert cli.main(["models"]) == cli.EXIT_ERROR == 1
    err = capsys.readouterr().err
    assert _errors(err) == ["ERROR avatar: no face found in beach.jpg; use a photo"]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # -v: the same line, then the traceback
    assert cli.main(["-v", "models"]) == 1
    err = capsys.readouterr().err
    assert _errors(err) == ["ERROR avatar: no face found in beach.jpg; use a photo"] and "Traceback" in err


def test_any_other_exception_is_a_bug_traceback_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    for exc in (ZeroDivisionError("division by zero"), ValueError("a bare ValueError is a bug now"),
                KeyError("key"), FileNotFoundError("a bare FileNotFoundError too")):
        monkeypatch.setattr(cli, "_cmd_models", _failing_models(exc))
        assert cli.main(["-q", "models"]) == cli.EXIT_BUG == 2, exc
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and type(exc).__name__ in err
        assert "this is a bug" in _errors(err)[0]


def test_interrupt_is_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_cmd_models", _failing_models(KeyboardInterrupt()))
    assert cli.main(["models"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_missing_optional_package_names_the_extra(capsys: pytest.CaptureFixture[str]) -> None:
    def needs_gradio() -> int:
        raise ModuleNotFoundError("No module named 'gradio'", name="gradio")

    def needs_nothing_we_know() -> int:
        raise ModuleNotFoundError("No module named 'avatar.nothing'", name="avatar.nothing")

    assert cli.run_guarded(needs_gradio, command="avatar app") == 1
    assert "pip install 'avatar4d[app]'" in _errors(capsys.readouterr().err)[0]
    assert cli.run_guarded(needs_nothing_we_know) == 2  # our own module missing: a bug
    assert "Traceback" in capsys.readouterr().err


def test_user_errors_of_the_real_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["download", "nope"], "unknown model id 'nope'"),
        (["download", "--file", "nope"], "unknown upstream file nope"),
        (["reconstruct", str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "out.gif")], "must end in"),
        (["reconstruct", str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "o.mp4"), "--model", "nope"],
         "does not exist"),  # the photo is checked before the model is looked up
        (["reenact", str(tmp_path / "p.jpg"), str(tmp_path / "d.mp4"), "-o", str(tmp_path / "o.mp4")],
         "does not exist"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 1, argv
        errors = _errors(capsys.readouterr().err)
        assert len(errors) == 1 and message in errors[0], (argv, errors)
    assert not list(tmp_path.iterdir())


def test_unknown_model_id_from_the_pipeline_loader_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), (90, 90, 90)).save(tmp_path / "photo.png")
    assert cli.main(["reconstruct", str(tmp_path / "photo.png"), "-o", str(tmp_path / "o.mp4"), "--model",
                     "portrait4d-v9", "--device", "cpu"]) == 1
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and "portrait4d-v9" in errors[0]


def test_rejected_command_line_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo, video, out = str(tmp_path / "photo.jpg"), str(tmp_path / "d.mp4"), str(tmp_path / "o.mp4")
    cases = [
        (["nope"], "invalid choice"), (["models", "--nope"], "unrecognized arguments"), (["reconstruct"], "required"),
        # numbers are checked when the command line is parsed, before any file or model is looked at
        (["reconstruct", photo, "-o", out, "--batch-size", "0"], "argument --batch-size: must be a whole number of "
                                                                 "at least 1, got 0"),
        (["reenact", photo, video, "-o", out, "--max-frames", "0"], "argument --max-frames: must be a whole number "
                                                                    "of at least 1, got 0"),
        (["reconstruct", photo, "-o", out, "--frames", "0"], "argument --frames: must be a whole number"),
        (["live", photo, "--fps", "-2"], "argument --fps: must be a number above 0"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 1, argv
        err = capsys.readouterr().err
        assert "error:" in err and message in err, (argv, err)
    assert not list(tmp_path.iterdir())


def test_console_script_exit_status_in_a_subprocess(tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "AVATAR_OFFLINE": "1", "AVATAR_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-c", "import sys; from avatar.cli import main; sys.exit(main(sys.argv[1:]))"]
    proc = subprocess.run([*run, "download", "nope"], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "unknown model id" in proc.stderr
    proc = subprocess.run([*run, "models", "--files"], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0 and "== pipeline model ids" in proc.stdout and "== network ids" in proc.stdout


def test_models_groups_pipeline_ids_and_network_ids(capsys: pytest.CaptureFixture[str]) -> None:
    from avatar.hub.registry import MODELS, pipeline_model_ids

    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    pipelines, networks = out.split("== network ids")
    for model_id in pipeline_model_ids():
        assert f"\n{model_id}" in pipelines
    for model_id in set(MODELS) - set(pipeline_model_ids()):
        assert f"\n{model_id}:" in networks and f"\n{model_id}:" not in pipelines


# ---------------------------------------------------------------------------------------------------------
# forwarded commands


@pytest.mark.parametrize(("command", "prog"), [("eval", "python -m eval.run"), ("prepare", "python -m eval.prepare"),
                                               ("bench", "python -m avatar.bench"), ("app", "avatar app")])
def test_forwarded_help_is_the_real_help(command: str, prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    if command == "app":
        pytest.importorskip("gradio")
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {prog}")


def test_forwarded_arguments_reach_the_same_main(monkeypatch: pytest.MonkeyPatch) -> None:
    import eval.run

    seen: list[list[str]] = []
    monkeypatch.setattr(eval.run, "main", lambda argv: seen.append(list(argv)) or 7)
    argv = ["--benchmark", "hdtf", "--protocol", "same-identity", "--data", "D", "--model", "m", "--out", "R", "--",
            "-v"]
    assert cli.main(["eval", *argv]) == 7
    assert cli.main(["-vv", "eval", *argv]) == 7  # the global verbosity is handed on
    assert cli.main(["-q", "eval", "--help"]) == 7
    assert seen == [argv, ["-v", "-v", *argv], ["-q", "--help"]]


def test_forwarded_user_error_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["eval", "--benchmark", "hdtf", "--protocol", "nope", "--data", str(tmp_path), "--predictions",
                     str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 1
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and "--protocol nope" in errors[0] and "unknown protocol" in errors[0]
    code = cli.main(["eval", "--benchmark", "hdtf", "--protocol", "same-identity", "--data", str(tmp_path / "no"),
                     "--predictions", str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 1 and "--data" in _errors(capsys.readouterr().err)[0]
    assert cli.main(["prepare", "hdtf", "--raw", str(tmp_path / "no"), "--out", str(tmp_path / "o"), "--lists",
                     str(tmp_path / "no-lists")]) == 1
    assert len(_errors(capsys.readouterr().err)) == 1
    import torch

    if not torch.cuda.is_available():
        assert cli.main(["bench", "psi", "--device", "cuda", "--tiny"]) == 1
        assert "no CUDA device" in _errors(capsys.readouterr().err)[0]


def test_app_without_gradio_says_which_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delitem(sys.modules, "avatar.app", raising=False)
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ModuleNotFoundError
    assert cli.main(["app", "--port", "1"]) == 1
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and "avatar4d[app]" in errors[0]


def test_setup_logging_is_one_idempotent_setup(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(0)
    setup_logging(1)
    for name in ("avatar", "eval"):
        assert logging.getLogger(name).level == logging.DEBUG
        assert len(logging.getLogger(name).handlers) == 1
    logging.getLogger("eval.run").debug("hello")
    assert capsys.readouterr().err == "DEBUG eval.run: hello\n"
    setup_logging(-1)
    logging.getLogger("avatar.x").info("quiet")
    assert capsys.readouterr().err == ""
    setup_logging(0)
