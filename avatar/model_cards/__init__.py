"""Model card templates (package data) and the one function that fills them.

A template is ``<name>.md`` in this package with ``{{ placeholder }}`` fields; :func:`render_model_card` fills
every placeholder from ``values`` (a placeholder without a value is an error) and returns the card's text, as
``push_to_hub(model_card=...)`` takes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["render_model_card", "template_text"]

_PLACEHOLDER = re.compile(r"{{\s*(\w+)\s*}}")


def template_text(name: str) -> str:
    """The text of the packaged template ``name`` (``portrait4d``, ...)."""
    entry = resources.files(__package__).joinpath(f"{name}.md")
    if not entry.is_file():
        known = sorted(p.name[:-3] for p in resources.files(__package__).iterdir() if p.name.endswith(".md"))
        raise FileNotFoundError(f"no model card template '{name}' (known: {', '.join(known)})")
    return entry.read_text(encoding="utf-8")


def render_model_card(values: Mapping[str, Any], template: str | Path = "portrait4d") -> str:
    """Fill ``{{ name }}`` placeholders of a template (a packaged template name or a file path).

    Raises:
        KeyError: a placeholder has no value (all such names are listed).
    """
    path = Path(template)
    text = path.read_text(encoding="utf-8") if path.suffix == ".md" and path.is_file() else template_text(str(template))
    names = set(_PLACEHOLDER.findall(text))
    missing = sorted(names - set(values))
    if missing:
        raise KeyError(f"model card values missing: {missing}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)
