"""Command-line flags from configuration dataclasses (nerfstudio / tyro style, with argparse only).

Every field of the dataclass tree becomes a flag: top-level fields ``--max-steps``, nested ones
``--checkpoint.every-steps``; the help text is the field's docstring (the string literal under it). Types:
``int``, ``float``, ``str``, ``bool`` (``--flag`` / ``--no-flag``), ``Literal`` (choices), ``X | None`` (``none``
gives None) and tuples (several values). A field's ``metadata={"aliases": ("--data",)}`` adds other spellings of its flag. ``--config FILE`` starts from a saved configuration (e.g. a run's
``training_options.json``); flags given on the command line override it. The result is validated by the
dataclasses themselves (a bad value is a :class:`~avatar.errors.ConfigError`).

::

    config = parse_config(Portrait4DTrainConfig, description="Train Portrait4D")
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import textwrap
import types
import typing
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

from avatar.cli import ArgumentParser
from avatar.configuration import config_from_dict
from avatar.errors import ConfigError

__all__ = ["apply_overrides", "build_parser", "field_docs", "parse_config"]

T = TypeVar("T")
_NONE = ("none", "None", "null")


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass and its bases (the string literal right under each field)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _scalar_parser(hint: Any, optional: bool) -> Any:
    def parse(text: str) -> Any:
        if optional and text in _NONE:
            return None
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        try:
            return hint(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected {hint.__name__}, got {text!r}") from exc

    parse.__name__ = getattr(hint, "__name__", "value")
    return parse


def _add_fields(parser: argparse.ArgumentParser, cls: type, prefix: str, defaults: Any) -> None:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser if not prefix else parser.add_argument_group(
        prefix.rstrip("."), (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        hint, optional = _strip_optional(hints[field.name])
        default = getattr(defaults, field.name)
        dest = f"{prefix}{field.name}"
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            _add_fields(parser, hint, f"{dest}.", default)
            continue
        flags = ["--" + dest.replace("_", "-"), *field.metadata.get("aliases", ())]
        help_text = f"{docs.get(field.name, '')} (default: {default!r})".strip()
        kwargs: dict[str, Any] = {"dest": dest, "help": help_text, "default": argparse.SUPPRESS}
        origin = typing.get_origin(hint)
        if hint is bool and not optional:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
        elif origin is typing.Literal:
            choices = list(typing.get_args(hint)) + ([None] if optional else [])
            group.add_argument(*flags, type=_literal_parser(choices), metavar="{" + ",".join(map(str, choices)) + "}",
                               **kwargs)
        elif origin is tuple:
            args = typing.get_args(hint)
            item = args[0] if args else str
            nargs: Any = "+" if len(args) == 2 and args[1] is Ellipsis else len(args)
            group.add_argument(*flags, type=_scalar_parser(item, False), nargs=nargs, metavar=item.__name__.upper(),
                               **kwargs)
        elif hint in (int, float, str, bool):
            group.add_argument(*flags, type=_scalar_parser(hint, optional), metavar=hint.__name__.upper(), **kwargs)
        else:  # anything else (dicts, callables) is set in code, not on the command line
            continue


def _literal_parser(choices: list[Any]) -> Any:
    by_text = {str(c): c for c in choices} | ({n: None for n in _NONE} if None in choices else {})

    def parse(text: str) -> Any:
        if text not in by_text:
            raise argparse.ArgumentTypeError(f"choose one of {', '.join(map(str, choices))}, got {text!r}")
        return by_text[text]

    return parse


def build_parser(cls: type, *, prog: str | None = None, description: str | None = None,
                 defaults: Any = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the dataclass ``cls`` (see the module docstring); flags that
    are not given are absent from the parsed namespace (so they do not override ``--config``)."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, default=None,
                        help="start from this saved configuration (JSON, e.g. a run's training_options.json)")
    _add_fields(parser, cls, "", defaults if defaults is not None else cls())
    return parser


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        tree = tree[name]
    tree[leaf] = list(value) if isinstance(value, list) else value


def parse_config(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None,
                 description: str | None = None, defaults: T | None = None) -> T:
    """Parse ``argv`` (default ``sys.argv[1:]``) into an instance of the dataclass ``cls``.

    ``defaults`` (an instance) replaces the class defaults, e.g. an official recipe's values. A rejected command
    line exits with status 1 (the toolkit's convention); invalid values raise :class:`~avatar.errors.ConfigError`.
    """
    parser = build_parser(cls, prog=prog, description=description, defaults=defaults)
    namespace = vars(parser.parse_args(argv))
    config_file = namespace.pop("config", None)
    if config_file is not None:
        try:
            base = json.loads(Path(config_file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read the configuration {config_file}: {exc}") from exc
        base = {k: v for k, v in base.items() if not k.startswith("_")}
        base = dataclasses.asdict(config_from_dict(cls, base))
    else:
        base = dataclasses.asdict(defaults if defaults is not None else cls())  # type: ignore[call-overload]
    for dotted, value in namespace.items():
        _set(base, dotted, value)
    return config_from_dict(cls, base)


def _leaf_fields(cls: type, prefix: str = "") -> dict[str, Any]:
    """``{dotted name: type hint}`` of every non-dataclass field of the dataclass ``cls`` (nested ones dotted)."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out.update(_leaf_fields(hint, f"{prefix}{field.name}."))
        else:
            out[f"{prefix}{field.name}"] = hint
    return out


def _override_value(hint: Any, text: str) -> Any:
    inner, optional = _strip_optional(hint)
    if optional and text in _NONE:
        return None
    origin = typing.get_origin(inner)
    if origin is typing.Literal:
        return _literal_parser(list(typing.get_args(inner)))(text)
    if origin is tuple:
        args = typing.get_args(inner)
        item = args[0] if args else str
        values = [_scalar_parser(item, False)(v.strip()) for v in text.split(",")]
        if args and args[-1] is not Ellipsis and len(values) != len(args):
            raise argparse.ArgumentTypeError(f"expected {len(args)} comma-separated values")
        return tuple(values)
    if inner in (int, float, str, bool):
        return _scalar_parser(inner, optional)(text)
    raise argparse.ArgumentTypeError(f"{hint} cannot be set from the command line")


def apply_overrides(base: T, items: Sequence[str], *, flag: str = "--set", exclude: Collection[str] = ()) -> T:
    """``base`` (a frozen dataclass, e.g. an official recipe) with ``KEY=VALUE`` overrides applied.

    Each value is parsed as the type of its field (``int``, ``float``, ``str``, ``bool``, ``Literal``, ``X | None``
    with ``none``, tuples as comma-separated values); nested dataclass fields are named with dots
    (``parts.eye_t=0``). Names in ``exclude`` cannot be set. A bad item raises :class:`ConfigError` naming ``flag``.
    """
    leaves = {k: v for k, v in _leaf_fields(type(base)).items() if k not in exclude and k.split(".")[0] not in exclude}
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in leaves:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(leaves))}")
        try:
            changes[key] = _override_value(leaves[key], text.strip())
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{flag} {item!r}: {text!r} is not a valid value for {key} ({exc})") from exc

    def rebuild(obj: Any, prefix: str) -> Any:
        values: dict[str, Any] = {}
        for field in dataclasses.fields(obj):
            name = f"{prefix}{field.name}"
            current = getattr(obj, field.name)
            if dataclasses.is_dataclass(current) and any(k.startswith(name + ".") for k in changes):
                values[field.name] = rebuild(current, name + ".")
            elif name in changes:
                values[field.name] = changes[name]
        return dataclasses.replace(obj, **values) if values else obj

    return rebuild(base, "")
