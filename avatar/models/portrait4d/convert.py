"""Official Portrait4D checkpoints -> the :class:`~avatar.models.portrait4d.Portrait4D` state and config.

Key map: our modules carry the official attribute names, so an official ``G_ema`` state dict maps onto
the model name for name (:func:`official_to_model_state` checks that and reports anything else).
The official state holds ``w_avg``, the five encoders, ``decoder.*``, ``superresolution.*`` and the FLAME
buffers of the deformer (``deformer.flame_deform.*``, not learned).

The upstream files are read here, never a pickle at run time: a folder written by ``avatar convert`` /
``avatar download`` holds ``<name>.safetensors`` + ``<name>.json`` whose metadata keeps the official
``init_kwargs``. This module imports no network; :meth:`Portrait4D.from_official` builds the model from what
:func:`read_official` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from avatar.errors import CheckpointMismatchError
from avatar.hub.weights import read_official_metadata, read_weights
from avatar.models.portrait4d.configuration import Portrait4DConfig

__all__ = [
    "OFFICIAL_PREFIXES",
    "OfficialCheckpoint",
    "official_to_model_state",
    "read_official",
]

OFFICIAL_CLASS = "TriPlaneReconstructorNeutralize"
OFFICIAL_PREFIXES = ("encoder_global.", "encoder_detail.", "encoder_canonical.", "generator_triplane.",
                     "background.", "decoder.", "superresolution.", "deformer.flame_deform.")
OFFICIAL_TOP_LEVEL = ("w_avg",)


def official_to_model_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map official ``TriPlaneReconstructorNeutralize`` keys to :class:`Portrait4D` keys.

    The names are identical by construction; this checks that every key belongs to a known official
    module and returns a plain dict. Raises :class:`CheckpointMismatchError` listing foreign keys.
    """
    foreign = [k for k in state if not (k in OFFICIAL_TOP_LEVEL or k.startswith(OFFICIAL_PREFIXES))]
    if foreign:
        raise CheckpointMismatchError(
            f"{len(foreign)} key(s) are not Portrait4D reconstructor keys (is this a G_ema state?): "
            + ", ".join(foreign[:8]) + (" ..." if len(foreign) > 8 else "")
        )
    return dict(state)


def _is_static(meta: Mapping[str, Any]) -> bool:
    """The static checkpoint is named ``*static*`` upstream; its training set has ``static=True``."""
    tsk = meta.get("training_set_kwargs") or {}
    if isinstance(tsk, Mapping) and tsk.get("static") is not None:
        return bool(tsk["static"])
    return "static" in str(meta.get("source_file", ""))


@dataclass
class OfficialCheckpoint:
    """A converted official checkpoint, read: its file, metadata, config and state (our names)."""

    weights: Path
    meta: dict[str, Any]
    config: Portrait4DConfig
    state: dict[str, Tensor]
    static: bool


def read_official(folder_or_file: str | Path, static: bool | None = None,
                  config: Portrait4DConfig | None = None) -> OfficialCheckpoint:
    """Read a converted official checkpoint (the folder of ``avatar convert`` output or its ``.safetensors``).

    Args:
        static: force the static mode (motion scale 0); ``None`` detects it from the metadata.
        config: use this config instead of the one derived from the checkpoint's ``init_kwargs``.
    """
    weights, meta = read_official_metadata(folder_or_file, OFFICIAL_CLASS, "a Portrait4D reconstructor")
    static = _is_static(meta) if static is None else static
    if config is None:
        config = Portrait4DConfig.from_official(meta.get("init_kwargs") or {}, static=static)
    state = official_to_model_state(read_weights(weights))
    return OfficialCheckpoint(weights, meta, config, state, static)
