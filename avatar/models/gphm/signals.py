"""Driving signals of a fitted GPHM avatar from face-mesh tracking instead of images (monocular fitting, paper 3.5).

GPHMv2 drives its Gaussians with codes from two image encoders: the facial expression encoder (face crops) and
the non-face motion encoder (the image with the face masked out, for neck and shoulders). Without a pretrained
GPHM those encoders know nothing, so the monocular fitting (:mod:`avatar.fitting.gphm_fit`) uses the signals the
mediapipe preparation (:mod:`avatar.fitting.video_data`) gives for every frame and fits a small MLP for each:

* **expression** - *the mesh landmarks as the expression input*: the ``(1434,)`` vector of MediaPipe's 478
  mesh points with the head pose removed (centimetres, minus the canonical face), minus the person's neutral
  (the median over the training frames, stored here as ``neutral``), through an MLP -> ``(B, D_exp)``.
  Paper silent (it uses images): chose an MLP of width 256 with 2 hidden layers, small next to the 1434 inputs,
  so that it interpolates between the training expressions rather than memorising frames.
* **non-face motion** - the head pose relative to the training frames' reference pose (``reference_rotation``,
  ``reference_translation``: the chordal mean rotation and mean translation), as the rotation's first two
  columns (6 numbers, minus the identity's) and the translation change in decimetres, through an MLP ->
  ``(B, D_nf)``. Why the pose: in a monocular talking-head video the shoulders barely move in the camera, so
  in the head's canonical frame their motion is the inverse of the head motion - a function of the pose, which
  is what the paper's non-face image encodes. Paper silent: chose width 64, 2 hidden layers.

Both MLPs are small and fitted together with the avatar; they are saved with it (:meth:`save_pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avatar.configuration import Config
from avatar.errors import ConfigError, InputError
from avatar.modeling import ModelMixin
from avatar.models.gphm.layers import MLP

__all__ = ["DrivingSignalConfig", "DrivingSignalEncoder", "pose_signal"]

EXPRESSION_INPUT_DIM = 478 * 3


@dataclass(frozen=True)
class DrivingSignalConfig(Config):
    """Sizes of :class:`DrivingSignalEncoder`."""

    input_dim: int = EXPRESSION_INPUT_DIM
    """The expression input: 478 mesh points x 3 (:mod:`avatar.fitting.video_data`)."""
    expression_dim: int = 128
    """Output: the avatar's expression code size (``FieldsConfig.expression_dim``)."""
    non_face_dim: int = 128
    """Output: the avatar's non-face code size (``FieldsConfig.non_face_dim``)."""
    width: int = 256
    """Width of the expression MLP (module docstring)."""
    hidden_layers: int = 2
    """Hidden layers of the expression MLP."""
    pose_width: int = 64
    """Width of the pose MLP."""
    pose_hidden_layers: int = 2
    """Hidden layers of the pose MLP."""

    def __post_init__(self) -> None:
        for name in ("input_dim", "expression_dim", "non_face_dim", "width", "hidden_layers", "pose_width",
                     "pose_hidden_layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"DrivingSignalConfig.{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def tiny(cls) -> DrivingSignalConfig:
        return cls(expression_dim=6, non_face_dim=5, width=16, hidden_layers=1, pose_width=8, pose_hidden_layers=1)


def pose_signal(world_to_camera: Tensor, reference_rotation: Tensor, reference_translation: Tensor) -> Tensor:
    """``(B, 9)``: the first two columns of ``R R_ref^T`` minus the identity's (6) and ``(t - t_ref)`` in
    decimetres (3), from ``world_to_camera (B, 4, 4)``."""
    rot = world_to_camera[:, :3, :3] @ reference_rotation.to(world_to_camera).T
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    cols = (rot - eye)[:, :, :2].transpose(1, 2).reshape(-1, 6)
    trans = (world_to_camera[:, :3, 3] - reference_translation.to(world_to_camera)) * 10.0
    return torch.cat([cols, trans], dim=-1)


class DrivingSignalEncoder(ModelMixin):
    """Mesh landmarks -> expression codes, head pose -> non-face codes (module docstring).

    ``encode_expression(expression_input (B, 1434)) -> (B, D_exp)``;
    ``encode_non_face(world_to_camera (B, 4, 4)) -> (B, D_nf)``.
    """

    config_class = DrivingSignalConfig
    config: DrivingSignalConfig
    neutral: Tensor
    reference_rotation: Tensor
    reference_translation: Tensor

    def __init__(self, config: DrivingSignalConfig) -> None:
        super().__init__()
        self.config = config
        self.expression = MLP(config.input_dim, config.expression_dim, config.width, config.hidden_layers)
        self.pose = MLP(9, config.non_face_dim, config.pose_width, config.pose_hidden_layers)
        self.register_buffer("neutral", torch.zeros(config.input_dim))
        self.register_buffer("reference_rotation", torch.eye(3))
        self.register_buffer("reference_translation", torch.zeros(3))

    @torch.no_grad()
    def set_reference(self, expressions: Tensor, world_to_camera: Tensor) -> None:
        """Store the neutral expression (median of ``expressions (N, 1434)``) and the reference pose (chordal
        mean rotation and mean translation of ``world_to_camera (N, 4, 4)``) of the training frames."""
        if expressions.dim() != 2 or expressions.shape[1] != self.config.input_dim or not len(expressions):
            raise InputError(f"expressions are (N, {self.config.input_dim}) with N >= 1, got "
                             f"{tuple(expressions.shape)}")
        self.neutral.copy_(expressions.to(self.neutral).median(dim=0).values)
        mean = world_to_camera[:, :3, :3].double().mean(0)
        u, _, vt = torch.linalg.svd(mean)
        d = torch.ones(3, dtype=mean.dtype, device=mean.device)
        d[2] = torch.sign(torch.linalg.det(u @ vt))
        self.reference_rotation.copy_((u @ torch.diag(d) @ vt).to(self.reference_rotation))
        self.reference_translation.copy_(world_to_camera[:, :3, 3].mean(0).to(self.reference_translation))

    def encode_expression(self, expression_input: Tensor) -> Tensor:
        if expression_input.dim() != 2 or expression_input.shape[1] != self.config.input_dim:
            raise InputError(f"the expression input is (B, {self.config.input_dim}) (the unposed mesh landmarks), "
                             f"got {tuple(expression_input.shape)}")
        return self.expression(expression_input.to(self.neutral) - self.neutral)

    def encode_non_face(self, world_to_camera: Tensor) -> Tensor:
        if world_to_camera.dim() != 3 or world_to_camera.shape[1:] != (4, 4):
            raise InputError(f"head poses are (B, 4, 4) world -> camera matrices, got {tuple(world_to_camera.shape)}")
        signal = pose_signal(world_to_camera.to(self.neutral), self.reference_rotation, self.reference_translation)
        return self.pose(signal)

    def forward(self, expression_input: Tensor, world_to_camera: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_expression(expression_input), self.encode_non_face(world_to_camera)

