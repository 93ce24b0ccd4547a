"""Portrait4D's fast BFM -> FLAME conversion (``data_preprocess/bfm2flame_simplified.py``), in plain PyTorch.

* :class:`BFM2FLAMEMapper`: the MLP ``Mapper(in 144, hidden 512, out 403, layers 2)`` =
  ``Linear(144, 512) -> LeakyReLU(0.01) -> Linear(512, 403)``, parameters ``maps.0.*`` and ``maps.2.*``
  (checkpoint ``data_preprocess/assets/bfm2flame_mapper/model-iter200000.pth``, a plain state dict).
  Input ``cat(id (80), exp (64))`` of Deep3DFaceRecon, raw (no normalisation); output
  ``shape (300) | exp (100) | jaw pose (3)``, raw.
* :func:`flame_label`: the 437-d label of ``bfm2flame_params_simplified/*.npy``: camera (25) | shape (300) |
  exp (100) | global pose (3) | jaw (3) | eye pose (6, zeros). The head pose and camera come from
  :mod:`avatar.face.geometry` (:func:`~avatar.face.geometry.bfm_angles_to_flame_pose`,
  :func:`~avatar.face.geometry.camera_label_from_pose`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.face.geometry import FlameLabel, bfm_angles_to_flame_pose, camera_label_from_pose
from avatar.modeling import ModelMixin

__all__ = ["BFM2FLAMEMapper", "MapperConfig", "flame_label"]


@dataclass(frozen=True)
class MapperConfig(Config):
    """Sizes of the mapper MLP. Defaults are the released checkpoint (``layers=2``, hidden 512)."""

    id_dim: int = 80
    exp_dim: int = 64
    hidden_dim: int = 512
    shape_dim: int = 300
    flame_exp_dim: int = 100
    jaw_dim: int = 3
    layers: int = 2

    @property
    def in_dim(self) -> int:
        return self.id_dim + self.exp_dim

    @property
    def out_dim(self) -> int:
        return self.shape_dim + self.flame_exp_dim + self.jaw_dim

    @classmethod
    def tiny(cls) -> MapperConfig:
        """Same layout (144 -> 403), small hidden layer."""
        return replace(cls(), hidden_dim=16)


class BFM2FLAMEMapper(ModelMixin):
    """``cat(id, exp) (B, 144)`` -> ``cat(shape, exp, jaw) (B, 403)``. Hidden layers use LeakyReLU(0.01).

    The official ``model-iter200000.pth`` is a plain state dict with these names (``maps.0.*``, ``maps.2.*``), so
    :meth:`load_official` is the base class's strict load; ``BFM2FLAMEMapper.from_pretrained()`` loads it
    (registry id ``bfm2flame-mapper``).
    """

    config_class = MapperConfig
    default_model_id = "bfm2flame-mapper"
    config: MapperConfig

    def __init__(self, config: MapperConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or MapperConfig()
        self.maps = nn.ModuleList()
        for i in range(cfg.layers):
            cin = cfg.in_dim if i == 0 else cfg.hidden_dim
            cout = cfg.out_dim if i == cfg.layers - 1 else cfg.hidden_dim
            self.maps.append(nn.Linear(cin, cout))
            if i < cfg.layers - 1:
                self.maps.append(nn.LeakyReLU(negative_slope=0.01))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.maps:
            x = layer(x)
        return x

    def map(self, bfm_id: Tensor, bfm_exp: Tensor) -> dict[str, Tensor]:
        """``id (B, 80)``, ``exp (B, 64)`` -> ``shape (B, 300)``, ``exp (B, 100)``, ``jaw (B, 3)``."""
        cfg = self.config
        out = self(torch.cat([bfm_id, bfm_exp], dim=-1))
        shape, exp, jaw = torch.split(out, [cfg.shape_dim, cfg.flame_exp_dim, cfg.jaw_dim], dim=-1)
        return {"shape": shape, "exp": exp, "jaw": jaw}


# --------------------------------------------------------------------------------------------------------
# the label


def flame_label(
    mapper: BFM2FLAMEMapper | None, bfm_id: Tensor, bfm_exp: Tensor, bfm_angle: Tensor
) -> Tensor:
    """Deep3D ``id (B, 80)``, ``exp (B, 64)``, ``angle (B, 3)`` -> the 437-d FLAME label ``(B, 437)`` float32.

    ``mapper=None`` reproduces ``--use_mapper False`` (zero shape, expression and jaw).
    """
    b = bfm_id.shape[0]
    neck = bfm_angles_to_flame_pose(bfm_angle.double()).float()
    if mapper is not None:
        with torch.no_grad():
            mapped = mapper.map(bfm_id.float(), bfm_exp.float())
        shape, exp, jaw = mapped["shape"], mapped["exp"], mapped["jaw"]
    else:
        shape, exp, jaw = (torch.zeros(b, n, device=bfm_id.device) for n in (300, 100, 3))
    pose = torch.cat([neck, jaw.float()], dim=1)
    eye = torch.zeros(b, 6, device=bfm_id.device)
    return FlameLabel(camera_label_from_pose(pose), shape.float(), exp.float(), pose, eye).to_label()
