"""What of a model id is in the cache: the files that are missing, and a Markdown report for people.

Used by ``avatar models`` and the app's "Model files" panel; nothing here touches the network.
"""

from __future__ import annotations

from pathlib import Path

from .download import cache_root, is_converted
from .registry import MODELS, UpstreamFile, get_model

__all__ = ["missing_files", "model_status"]

LICENCE_NOTE = ("Licences: the Portrait4D Hub repo is tagged MIT; FLAME, BFM and ArcFace weights have their own "
                "non-commercial terms (see `avatar models --files` and the README).")


def missing_files(model_id: str) -> list[UpstreamFile]:
    """The upstream files of a registered model id that are not converted in the cache yet; ``[]`` when all are
    there, and for a name that is not a registered id (a pipeline folder, say)."""
    if model_id not in MODELS:
        return []
    return [f for f in get_model(model_id).files if not is_converted(f)]


def model_status(model_id: str) -> str:
    """A Markdown report on ``model_id``: what it is, how many of its files are cached, which are missing and the
    command that fetches them. A pipeline folder and an unknown name get one line each."""
    if model_id not in MODELS and Path(model_id).is_dir():
        return f"### Model folder `{model_id}`\nA pipeline folder (`save_pretrained` / `avatar tiny`)."
    try:
        spec = get_model(model_id)
    except KeyError as exc:  # UnknownModelIdError: the message lists the known ids
        return f"**Unknown model** `{model_id}`: {exc}"
    missing = missing_files(model_id)
    lines = [
        f"### Model `{spec.model_id}`",
        spec.description,
        "",
        f"Cache: `{cache_root()}` · files present: **{len(spec.files) - len(missing)}/{len(spec.files)}**",
    ]
    if missing:
        lines += [
            "",
            "**Weights missing.** These upstream files are not in the cache yet:",
            "",
            *[f"- `{f.path}` ({f.repo}) — {f.description}" for f in missing],
            "",
            f"Fetch them with `avatar download {spec.model_id}` on a machine with network access, or "
            f"`avatar download {spec.model_id} --from-dir DIR` with a folder holding the official files "
            "(then restart the app). Until then, pick the **tiny random pipeline** to try the app (its pictures "
            "are meaningless).",
        ]
    else:
        lines += ["", "All files are present and converted."]
    lines += ["", LICENCE_NOTE]
    return "\n".join(lines)
