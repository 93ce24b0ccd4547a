"""Official GOHA checkpoints (``checkpoint825000.ckpt``) -> the :class:`avatar.models.goha.GOHA` state.

The official file is a plain ``torch.save`` dict ``{"iter": int, "model_state_dict": {...}}`` (stages s1_gan and
s2 add ``"discriminator_dict"``), keys without a ``module.`` prefix. It is read with ``torch.load(weights_only=True)``
(never unpickled otherwise) and flattened with dots (:func:`avatar.hub.formats.read_torch_checkpoint`), or
converted once to safetensors by ``avatar download goha``. Two renames make it load strictly into our modules:

* the SegFormer branches: transformers 4.x names -> ours (:func:`avatar.models.goha.segformer.official_to_native`,
  ``key`` + ``value`` merged into ``kv``);
* the OSG decoder: ``decoder.net.2`` (33 rows) -> ``decoder.out_sigma`` (row 0) + ``decoder.out_rgb``
  (:func:`avatar.models.goha.planes.osg_decoder_state_from_official`).

Every other key keeps its name. :func:`model_state_to_official` is the inverse (used by the comparison script and
the tests to write checkpoints in the official format).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from avatar.errors import CheckpointMismatchError
from avatar.models.goha.planes import osg_decoder_state_from_official, osg_decoder_state_to_official
from avatar.models.goha.segformer import native_to_official, official_to_native

__all__ = [
    "OFFICIAL_PREFIXES",
    "OfficialGOHAState",
    "model_state_to_official",
    "official_to_model_state",
]

OFFICIAL_PREFIXES = (
    "template_net.", "embedding2neutral.", "id_net.", "id_upsampler.", "expr_net.", "embedding2expr.",
    "expr_upsampler.", "decoder.", "face_parsing_net.", "neural_layers.", "cano_pose", "cano_exemplar",
    "image_mean", "image_std", "uv",
)
"""Names at the top of the official ``model_state_dict`` (modules end with a dot, buffers do not)."""

_MODEL = "model_state_dict."
_DISCRIMINATOR = "discriminator_dict."
_DEEP3D = "exp_loss_fn."


@dataclass
class OfficialGOHAState:
    """An official checkpoint split into what :class:`GOHA` loads and what it does not."""

    model_state: dict[str, Tensor]
    """Our names (converted), ready for a strict load (plus ``exp_loss_fn.net_recon.*`` from Deep3D)."""
    discriminator_state: dict[str, Tensor] = field(default_factory=dict)
    """The training discriminator (``discriminator_dict``), official names; not used by the generator."""


def _is_official_key(key: str) -> bool:
    return any(key == p or key.startswith(p) for p in OFFICIAL_PREFIXES if not p.endswith(".")) or \
        key.startswith(tuple(p for p in OFFICIAL_PREFIXES if p.endswith(".")))


def official_to_model_state(state: Mapping[str, Tensor]) -> OfficialGOHAState:
    """Convert a flattened official checkpoint (or its bare ``model_state_dict``) to our names.

    Keys under ``model_state_dict.`` are taken (the prefix stripped); without that prefix the whole mapping is the
    model state. ``discriminator_dict.*`` is returned apart. Any key that belongs to no GOHA module is a
    :class:`CheckpointMismatchError` naming it (a Portrait4D or GenHead state given by mistake, say).
    """
    if any(k.startswith(_MODEL) for k in state):
        model = {k[len(_MODEL):]: v for k, v in state.items() if k.startswith(_MODEL)}
        others = [k for k in state if not k.startswith((_MODEL, _DISCRIMINATOR))]
    else:
        model = {k: v for k, v in state.items() if not k.startswith(_DISCRIMINATOR)}
        others = []
    discriminator = {k[len(_DISCRIMINATOR):]: v for k, v in state.items() if k.startswith(_DISCRIMINATOR)}
    foreign = others + [k for k in model if not _is_official_key(k) and not k.startswith(_DEEP3D)]
    if foreign:
        raise CheckpointMismatchError(
            f"{len(foreign)} key(s) belong to no GOHA module (is this GOHA's checkpoint825000.ckpt?): "
            + ", ".join(sorted(foreign)[:8]) + (" ..." if len(foreign) > 8 else ""))
    converted = osg_decoder_state_from_official(official_to_native(model), prefix="decoder.")
    return OfficialGOHAState(converted, discriminator)


def model_state_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> the official ``model_state_dict`` (without the Deep3D ``exp_loss_fn.*`` keys)."""
    ours = {k: v for k, v in state.items() if not k.startswith(_DEEP3D)}
    return native_to_official(osg_decoder_state_to_official(ours, prefix="decoder."))
