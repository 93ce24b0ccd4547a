"""GOHA (Li et al., NeurIPS 2023): one-shot generalizable head avatars, ported from NVlabs/GOHA.

:class:`GOHA` (:mod:`avatar.models.goha.modeling`, config :class:`GOHAConfig`) is the official ``Model`` of
``src/models/model_s2.py`` with its state-dict names: the official ``checkpoint825000.ckpt`` loads strictly
(:mod:`avatar.models.goha.convert`) and gives the official outputs (``scripts/compare_official_goha.py``). Its
parts, each checked side by side with the official code on random weights (``scripts/compare_official_goha_*.py``):

* :mod:`avatar.models.goha.segformer` - the three MiT-b0 SegFormer branches (``template_net``, ``id_net`` with its
  6-channel stem, ``expr_net``), on the Mix-Transformer blocks of :mod:`avatar.nn.attention`;
* :mod:`avatar.models.goha.parsing` - BiSeNet face parsing (``face_parsing_net``) and GOHA's mask logic;
* :mod:`avatar.models.goha.gfpgan` - the GFPGANv1Clean super-resolution (``neural_layers``);
* :mod:`avatar.models.goha.planes` - Embed2Plane, IDUpsampler (with its ``up_xy`` quirk), the OSG decoder's key
  conversion onto :class:`avatar.render.triplane.TriplaneNeRFDecoder`, and the nearest-point appearance lifting
  (chunked ``cdist``, no 16k x 16k matrix);
* :mod:`avatar.models.goha.pseudo_render` - the expression branch's 3DMM pseudo-render (``get_sudo``: Deep3D
  coefficients mixed, the BFM face of :mod:`avatar.face.bfm` rasterised with nvdiffrast's conventions by the
  plain-PyTorch rasteriser).
"""

from avatar.models.goha.configuration import GOHA_RENDERING, GOHAConfig
from avatar.models.goha.convert import OfficialGOHAState, model_state_to_official, official_to_model_state
from avatar.models.goha.gfpgan import GOHASuperResolution, GOHASuperResolutionConfig
from avatar.models.goha.modeling import GOHA, GOHAOutput, GOHASource
from avatar.models.goha.parsing import BiSeNet, BiSeNetConfig, appearance_blend_mask, parsing_mask
from avatar.models.goha.planes import (
    Embed2Plane,
    GOHAPlanesConfig,
    IDUpsampler,
    lift_features,
    make_osg_decoder,
    nearest_point_indices,
    osg_decoder_state_from_official,
    osg_decoder_state_to_official,
    plane_modules,
)
from avatar.models.goha.pseudo_render import (
    ExpressionPseudoRenderer,
    mix_coefficients,
    render_mesh_nvdiffrast,
)
from avatar.models.goha.segformer import (
    SegformerBranch,
    SegformerBranchConfig,
    native_to_official,
    official_to_native,
)

__all__ = [
    "GOHA",
    "GOHAConfig",
    "GOHAOutput",
    "GOHASource",
    "GOHA_RENDERING",
    "OfficialGOHAState",
    "model_state_to_official",
    "official_to_model_state",
    "BiSeNet",
    "Embed2Plane",
    "ExpressionPseudoRenderer",
    "GOHAPlanesConfig",
    "IDUpsampler",
    "lift_features",
    "make_osg_decoder",
    "mix_coefficients",
    "nearest_point_indices",
    "osg_decoder_state_from_official",
    "osg_decoder_state_to_official",
    "plane_modules",
    "render_mesh_nvdiffrast",
    "BiSeNetConfig",
    "GOHASuperResolution",
    "GOHASuperResolutionConfig",
    "SegformerBranch",
    "SegformerBranchConfig",
    "appearance_blend_mask",
    "native_to_official",
    "official_to_native",
    "parsing_mask",
]
