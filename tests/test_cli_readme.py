"""Every ``avatar ...`` command line in the README's code blocks is accepted by the real parsers (the forwarded
commands by the parser of the main they hand their arguments to); nothing is run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from avatar.cli import FORWARDED, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[str]:
    blocks = [body for lang, body in re.findall(r"```([a-z]*)\n(.*?)```", README.read_text(), flags=re.S)
              if lang != "python"]
    lines = [line.split("  #")[0].split(" # ")[0].strip() for block in blocks for line in block.splitlines()]
    return [re.sub(r"\s*\[[^\]]*\]", "", line) for line in lines if line.startswith("avatar ")]


def _forwarded_parser(command: str):  # noqa: ANN202 - argparse.ArgumentParser
    if command == "app":
        pytest.importorskip("gradio")
    module = {"eval": "eval.run", "prepare": "eval.prepare", "bench": "avatar.bench", "app": "avatar.app"}[command]
    assert FORWARDED[command].target == f"{module}:main"
    return __import__(module, fromlist=["build_parser"]).build_parser()


def test_readme_has_the_commands() -> None:
    commands = " ".join(_commands())
    for sub in ("models", "download", "convert", "reconstruct", "reenact", "tiny", "eval", "prepare", "bench", "app"):
        assert f"avatar {sub}" in commands or f"`avatar {sub}" in README.read_text(), sub
    assert "| 2 | a bug" in README.read_text() and "| 1 | the input cannot be used" in README.read_text()


@pytest.mark.parametrize("line", _commands())
def test_readme_command_parses(line: str) -> None:
    argv = shlex.split(line)[1:]
    args, rest = build_parser().parse_known_args(argv)
    if args.command in FORWARDED:
        _forwarded_parser(args.command).parse_args(rest)
    else:
        assert not rest, rest
        assert callable(args.func)
