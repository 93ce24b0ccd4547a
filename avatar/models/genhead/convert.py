"""Official GenHead checkpoints (``genhead-ffhq512.pkl``'s ``G_ema`` / ``G``) -> the :class:`GenHead` state and config.

Our modules carry the official attribute names, so the official state maps name for name
(:func:`official_to_model_state` checks that every key belongs to a known module). The pickle is never executed:
``avatar convert`` (or the asset cache) turns it into ``<name>.safetensors`` + ``<name>.json``, whose metadata keeps
the official ``init_kwargs``; :func:`read_official` reads those. This module imports no network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from avatar.errors import CheckpointMismatchError
from avatar.hub.weights import read_official_metadata, read_weights
from avatar.models.genhead.configuration import GenHeadConfig

__all__ = ["OFFICIAL_CLASS", "OFFICIAL_PREFIXES", "OfficialCheckpoint", "official_to_model_state", "read_official"]

OFFICIAL_CLASS = "PartTriPlaneGeneratorDeform"
OFFICIAL_PREFIXES = ("backbone.", "background.", "superresolution.", "decoder.", "deformer.flame_deform.")


def official_to_model_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Check that every key of an official ``PartTriPlaneGeneratorDeform`` state belongs to a known module;
    :class:`CheckpointMismatchError` lists the foreign ones (a reconstructor or a discriminator state, say)."""
    foreign = [k for k in state if not k.startswith(OFFICIAL_PREFIXES)]
    if foreign:
        raise CheckpointMismatchError(
            f"{len(foreign)} key(s) are not GenHead generator keys (is this a GenHead G_ema state?): "
            + ", ".join(foreign[:8]) + (" ..." if len(foreign) > 8 else ""))
    return dict(state)


@dataclass
class OfficialCheckpoint:
    """A converted official checkpoint, read: its file, metadata, config and state."""

    weights: Path
    meta: dict[str, Any]
    config: GenHeadConfig
    state: dict[str, Tensor]


def read_official(folder_or_file: str | Path, config: GenHeadConfig | None = None) -> OfficialCheckpoint:
    """Read a converted official GenHead checkpoint (the folder of ``avatar convert`` output or its ``.safetensors``)."""
    weights, meta = read_official_metadata(folder_or_file, OFFICIAL_CLASS, "a GenHead generator")
    if config is None:
        config = GenHeadConfig.from_official(meta.get("init_kwargs") or {})
    return OfficialCheckpoint(weights, meta, config, official_to_model_state(read_weights(weights)))
