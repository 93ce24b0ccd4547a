"""One way to turn a configuration dataclass into JSON and back, for every network and pipeline.

Subclass :class:`Config` with a frozen dataclass; fields may be numbers, strings, tuples, dicts, ``None`` or
other :class:`Config` dataclasses (nested configs are rebuilt from their type hints). Reading is strict: an
unknown field is a :class:`~avatar.errors.ConfigError` that names it, so a config written by a newer or
foreign version is never half-read. JSON lists become tuples (dataclass fields hold tuples, so that frozen
configs stay hashable and equal after a round trip).

Saved files carry ``_class`` (the config class name) and ``_version``; both are ignored when reading, so files
written before this module existed load unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from avatar.errors import ConfigError

__all__ = ["Config", "config_from_dict"]

C = TypeVar("C", bound="Config")
CONFIG_VERSION = 1
_META_KEYS = ("_class", "_version")


def _to_tuples(x: Any) -> Any:
    if isinstance(x, list | tuple):
        return tuple(_to_tuples(v) for v in x)
    return x


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass type named by a field's type hint (``X``, ``X | None``, ``Optional[X]``), or ``None``."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        found = [a for a in typing.get_args(hint) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def config_from_dict(cls: type[Any], values: Mapping[str, Any]) -> Any:
    """Build the dataclass ``cls`` from ``values``, rebuilding nested dataclasses; unknown keys are an error.

    Works for any dataclass (also ones that do not derive from :class:`Config`).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(values, Mapping):
        raise ConfigError(f"{cls.__name__} must be read from a JSON object, got {type(values).__name__}")
    values = {k: v for k, v in values.items() if k not in _META_KEYS}
    own = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(own))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)} (known: {', '.join(own)})")
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # a hint that cannot be resolved: no nested rebuild for it
        hints = {}
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        nested = _dataclass_in(hints.get(name))
        if nested is not None and isinstance(value, Mapping):
            kwargs[name] = config_from_dict(nested, value)
        elif isinstance(value, Mapping):
            kwargs[name] = {k: _to_tuples(v) for k, v in value.items()}
        else:
            kwargs[name] = _to_tuples(value)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc


class Config:
    """Mixin for configuration dataclasses: ``to_dict``/``from_dict``, ``save``/``load`` (JSON), ``replace``.

    Subclasses are ``@dataclass(frozen=True)`` and may define ``tiny()`` (a structurally identical, very small
    configuration for tests).
    """

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (nested configs as dicts, tuples as lists when written)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        """Inverse of :meth:`to_dict`; unknown fields raise :class:`~avatar.errors.ConfigError`."""
        return config_from_dict(cls, values)

    def to_json(self) -> str:
        data = {"_class": type(self).__name__, "_version": CONFIG_VERSION, **self.to_dict()}
        return json.dumps(data, indent=2, sort_keys=True)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); write it again with save_pretrained") from exc
        return cls.from_dict(values)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
