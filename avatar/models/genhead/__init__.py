"""GenHead (Deng et al., Portrait4D, CVPR 2024): the part-wise animatable 3D head generator.

* :mod:`.configuration` - :class:`GenHeadConfig` (and the map from the official ``init_kwargs``)
* :mod:`.rendering` - part-wise volume rendering (two triplanes, eye / mouth / face compositing)
* :mod:`.modeling` - :class:`GenHead` (``mapping`` / ``synthesis`` / ``sample``)
* :mod:`.convert` - reading a converted official checkpoint (imports no network)

Registered model id: ``genhead-ffhq512`` (:mod:`avatar.hub.registry`).
"""

from avatar.models.genhead.configuration import GenHeadConfig
from avatar.models.genhead.convert import official_to_model_state, read_official
from avatar.models.genhead.modeling import GenHead, GenHeadOutput, PartDeformerSlot
from avatar.models.genhead.rendering import PartRenderOutput, render_parts

__all__ = ["GenHead", "GenHeadConfig", "GenHeadOutput", "PartDeformerSlot", "PartRenderOutput",
           "official_to_model_state", "read_official", "render_parts"]
