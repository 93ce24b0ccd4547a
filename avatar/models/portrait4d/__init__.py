"""Portrait4D / Portrait4D-v2 (Deng et al., CVPR 2024 / ECCV 2024): the reconstructor Psi.

* :mod:`.configuration` - :class:`Portrait4DConfig` (and the map from the official ``init_kwargs``)
* :mod:`.encoders` - the five image-side modules with the official names
* :mod:`.modeling` - :class:`Portrait4D` (encode once per avatar, render per frame; the official order as
  ``reference_forward``)
* :mod:`.convert` - reading a converted official checkpoint (imports no network)

Registered model ids: ``portrait4d-v2``, ``portrait4d-v1``, ``portrait4d-static`` (:mod:`avatar.hub.registry`).
"""

from avatar.models.portrait4d.configuration import OFFICIAL_IGNORED_KWARGS, Portrait4DConfig
from avatar.models.portrait4d.convert import OFFICIAL_PREFIXES, official_to_model_state, read_official
from avatar.models.portrait4d.encoders import Portrait4DEncoderConfig, Portrait4DEncoders
from avatar.models.portrait4d.modeling import (
    AvatarState,
    FastInference,
    HeadPose,
    HeadPoseDeformerSlot,
    Portrait4D,
)

__all__ = [
    "OFFICIAL_IGNORED_KWARGS",
    "OFFICIAL_PREFIXES",
    "AvatarState",
    "FastInference",
    "HeadPose",
    "HeadPoseDeformerSlot",
    "Portrait4D",
    "Portrait4DConfig",
    "Portrait4DEncoderConfig",
    "Portrait4DEncoders",
    "official_to_model_state",
    "read_official",
]
