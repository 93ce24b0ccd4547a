"""MICA's ArcFace: the InsightFace ``arcface_torch`` iresnet-100 that GAGAvatar's CSIM runs.

Network: :class:`avatar.losses.arcface.IResNet` with the iresnet-100 stage depths ``(3, 13, 30, 3)`` (widths 64,
128, 256, 512; 512-d output), i.e. ``Arcface`` of Zielon/MICA ``models/arcface.py`` (itself InsightFace's
``recognition/arcface_torch/backbones/iresnet.py``), initialised by MICA from the Glint360K CosFace r100 backbone
(``glint360k_cosface_r100_fp16_0.1/backbone.pth``, MICA README / ``configs/config.py``) and then fine-tuned inside
MICA (layer4, bn2, fc and features train; ``micalib/models/mica.py`` puts the ArcFace in the optimiser). The
weights GAGAvatar uses are therefore MICA's, the ``arcface`` entry of ``data/pretrained/mica.tar`` (downloaded by
MICA's ``install.sh`` from ``keeper.mpdl.mpg.de``), read through GAGAvatar_track's
``engines/emica_encoder/MicaEncoder.py`` (the same module names) and used by GAGAvatar's metric code (issue
xg-chu/GAGAvatar#43: ``self.arcface = self.deep3d_engine.mica_model.arcface``).

Input (MICA ``datasets/creation/util.py::get_arcface_input``): InsightFace ``face_align.norm_crop`` 112x112 crop
from the detector's five keypoints (antelopev2's SCRFD in MICA's ``utils/landmark_detector.py``), RGB,
``(x - 127.5) / 127.5``, i.e. a crop in [0, 1] mapped to [-1, 1] as for :class:`~avatar.losses.arcface.IResNet`.
Output ``(B, 512)`` (MICA normalises it; cosine similarity does not care).

Parameter names are the official ones (``conv1``, ``bn1``, ``prelu``, ``layer1.0.bn1`` ... ``fc``, ``features``), so
the ``arcface.*`` tensors of ``mica.tar`` (or a bare iresnet-100 ``backbone.pth``) load strictly; the
``flameModel.*`` tensors of ``mica.tar`` (MICA's shape regressor) are not part of this network and are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from avatar.hub.weights import strip_key_prefixes

from .arcface import ArcFaceConfig, IResNet

__all__ = ["MICA_ARCFACE_MODEL_ID", "MICAArcFace", "MICAArcFaceConfig"]

MICA_ARCFACE_MODEL_ID = "arcface-r100-mica"
"""The registered model id of MICA's ArcFace (checkpoint file ``mica-checkpoint``)."""


@dataclass(frozen=True)
class MICAArcFaceConfig(ArcFaceConfig):
    """:class:`ArcFaceConfig` with iresnet-100's defaults (``layers=(3, 13, 30, 3)``)."""

    layers: tuple[int, ...] = (3, 13, 30, 3)

    @classmethod
    def tiny(cls) -> MICAArcFaceConfig:
        """A small random-init configuration for tests (four stages, tiny widths)."""
        return cls(layers=(1, 2, 1, 1), widths=(8, 8, 16, 16), stem=8, num_features=32)


class MICAArcFace(IResNet):
    """MICA's ArcFace iresnet-100 (see the module docstring): ``(B, 3, 112, 112)`` in [-1, 1] -> ``(B, 512)``.

    ``MICAArcFace.from_pretrained()`` loads the registered ``arcface-r100-mica`` (the ``arcface`` part of MICA's
    ``mica.tar``); ``MICAArcFace.tiny()`` is a small random network for tests.
    """

    config_class = MICAArcFaceConfig
    default_model_id = MICA_ARCFACE_MODEL_ID
    config: MICAArcFaceConfig

    def __init__(self, config: MICAArcFaceConfig | None = None) -> None:
        super().__init__(config or MICAArcFaceConfig())

    def load_official(self, state: Mapping[str, Tensor]) -> None:
        """Load MICA's checkpoint (flattened: ``arcface.*`` and ``flameModel.*`` keys; only ``arcface.*`` is
        taken) or a bare iresnet-100 state dict, strictly; fp16 tensors are cast to fp32, ``module.`` dropped."""
        if any(k.startswith("arcface.") for k in state):
            state = {k[len("arcface."):]: v for k, v in state.items() if k.startswith("arcface.")}
        state = strip_key_prefixes(state, ("module.",))
        self.load_state_dict_strict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                                    what="MICA ArcFace iresnet-100 (arcface-r100-mica)")
