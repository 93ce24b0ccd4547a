"""The deformation and colour fields shared by the guiding geometry model and the Gaussian model.

Paper Eq. 2-4 (guiding) and 5-10 (Gaussians), for points with mean-space positions ``x`` and features ``f``:

* ``f_id = F_inj(z_id, f)`` (injection MLP), ``dx_id = F_id(f_id)``;
* ``dx_exp = F_exp(f_id, z_exp)``, ``dx_nf = F_nf(f_id, z_nf)``;
* ``x_can = x + dx_id + w_exp(x) dx_exp + w_nf(x) dx_nf``;
* ``c = F_col(f_id)`` (32 channels; no expression-dependent colour, as the paper says).

``w_exp = clamp((far - d) / (far - near), 0, 1)``, ``w_nf = 1 - w_exp``, ``d`` the distance from ``x`` to the
nearest canonical landmark (the paper's formula lost its symbols in our copy; this is the blend of the same
authors' Gaussian Head Avatar, which the text describes: near landmarks -> expression, far -> non-face motion).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avatar.models.gphm.configuration import FieldsConfig
from avatar.models.gphm.layers import MLP, ConditionedMLP

__all__ = ["DeformationFields", "FieldsOutput", "region_weights"]


def region_weights(points: Tensor, landmarks: Tensor, near: float, far: float) -> tuple[Tensor, Tensor]:
    """``points (B, N, 3)``, ``landmarks (B, K, 3)`` -> ``w_exp, w_nf`` of shape ``(B, N, 1)`` (sum 1)."""
    dist = torch.cdist(points, landmarks).min(dim=-1, keepdim=True).values  # (B, N, 1)
    w_exp = ((far - dist) / (far - near)).clamp(0.0, 1.0)
    return w_exp, 1.0 - w_exp


@dataclass
class FieldsOutput:
    """Per-point results of :class:`DeformationFields` (all ``(B, N, .)``)."""

    canonical: Tensor
    """``x_can (B, N, 3)``: mean position + identity, expression and non-face displacements."""
    identity_features: Tensor
    """``f_id (B, N, identity_feature_dim)``."""
    identity_offsets: Tensor
    """``dx_id (B, N, 3)``."""
    expression_offsets: Tensor
    """``w_exp dx_exp (B, N, 3)`` (weighted, as added)."""
    non_face_offsets: Tensor
    """``w_nf dx_nf (B, N, 3)`` (weighted, as added)."""
    colors: Tensor | None
    """``c (B, N, color_dim)``, or ``None`` when not asked for."""


class DeformationFields(nn.Module):
    """``F_inj``, ``F_id``, ``F_exp``, ``F_nf``, ``F_col`` (see the module docstring).

    ``forward(positions (B|1, N, 3), features (B|1, N, point_feature_dim), landmarks (B|1, K, 3), z_id (B, D_id),
    z_exp (B, D_exp), z_nf (B, D_nf), with_colors=True) -> FieldsOutput``.
    """

    def __init__(self, config: FieldsConfig, zero_init_deformations: bool = True) -> None:
        super().__init__()
        c = config
        self.config = c
        self.injection = ConditionedMLP(c.point_feature_dim, c.identity_dim, c.identity_feature_dim,
                                        c.injection_width, c.injection_hidden_layers)
        self.identity_deform = MLP(c.identity_feature_dim, 3, c.width, c.hidden_layers)
        self.expression_deform = ConditionedMLP(c.identity_feature_dim, c.expression_dim, 3, c.width, c.hidden_layers)
        self.non_face_deform = ConditionedMLP(c.identity_feature_dim, c.non_face_dim, 3, c.width, c.hidden_layers)
        self.color = MLP(c.identity_feature_dim, c.color_dim, c.width, c.hidden_layers)
        if zero_init_deformations:
            for head in self.deformation_heads():
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def deformation_heads(self) -> list[nn.Linear]:
        """The output layers of ``F_id``, ``F_exp``, ``F_nf``."""
        return [self.identity_deform.out, self.expression_deform.rest.out, self.non_face_deform.rest.out]

    def forward(self, positions: Tensor, features: Tensor, landmarks: Tensor, z_id: Tensor, z_exp: Tensor,
                z_nf: Tensor, with_colors: bool = True) -> FieldsOutput:
        batch = z_id.shape[0]
        features = features.expand(batch, -1, -1)
        f_id = self.injection(features, z_id)
        d_id = self.identity_deform(f_id)
        w_exp, w_nf = region_weights(positions.expand(batch, -1, -1), landmarks.expand(batch, -1, -1),
                                     self.config.landmark_near, self.config.landmark_far)
        d_exp = w_exp * self.expression_deform(f_id, z_exp)
        d_nf = w_nf * self.non_face_deform(f_id, z_nf)
        canonical = positions + d_id + d_exp + d_nf
        colors = self.color(f_id) if with_colors else None
        return FieldsOutput(canonical, f_id, d_id, d_exp, d_nf, colors)
