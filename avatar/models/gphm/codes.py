"""Latent codes: the table of training identity codes, and resolving an ``identity`` argument to codes.

Paper 3.4: one 512-d code per training identity, initialised following NPHM, with norms kept below 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avatar.errors import InputError

__all__ = ["IdentityCodebook", "new_identity_code", "project_to_unit_ball", "resolve_identity"]

CODE_INIT_STD = 0.01
"""Paper: "initialised following NPHM", whose latent codes start from a zero-mean normal with a small deviation;
chose 0.01 (DeepSDF/NPHM-style auto-decoder init)."""


def project_to_unit_ball(codes: Tensor) -> Tensor:
    """``codes (..., D)`` scaled by ``min(1, 1 / ||code||)``: norms at most 1 (paper: "remains below 1")."""
    norm = codes.norm(dim=-1, keepdim=True)
    return codes / norm.clamp(min=1.0)


class IdentityCodebook(nn.Embedding):
    """``num_identities x dim`` learnable codes (an ``nn.Embedding``, state key ``weight``);
    ``forward(indices (B,)) -> (B, dim)`` projected into the unit ball.

    The projection is differentiable (applied on lookup, not written back), so the stored rows may drift past norm
    1 while every code the model sees has norm <= 1 (paper 3.4: "the norm of these codes remains below 1").
    """

    def __init__(self, num_identities: int, dim: int) -> None:
        super().__init__(num_identities, dim)
        with torch.no_grad():
            self.weight.normal_(0.0, CODE_INIT_STD)

    @property
    def num_identities(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, indices: Tensor) -> Tensor:  # type: ignore[override]
        if indices.dim() != 1:
            raise InputError(f"identity indices are (B,), got {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_identities):
            raise InputError(f"identity index out of range [0, {self.num_identities}): {indices.tolist()}")
        return project_to_unit_ball(super().forward(indices))


def new_identity_code(dim: int, batch_size: int = 1, *, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """A fresh ``(batch_size, dim)`` identity code, drawn like the training codes (``N(0, CODE_INIT_STD^2)``), a
    leaf tensor with ``requires_grad=True``, ready for an optimiser (paper 3.5: "we randomly initialise a global
    identity code and fit our GPHM to the input video by optimising the identity code")."""
    code = torch.randn(batch_size, dim, generator=generator, dtype=dtype) * CODE_INIT_STD
    return code.to(device).requires_grad_(True)


def resolve_identity(identity: Tensor, codebook: IdentityCodebook | None, dim: int) -> Tensor:
    """``identity``: codes ``(B, dim)`` (float, used as given) or indices ``(B,)`` (integer, looked up).

    Raises:
        InputError: wrong shape, indices without a codebook (``num_identities = 0``), or out-of-range indices.
    """
    if not torch.is_floating_point(identity):
        if codebook is None:
            raise InputError("identity indices need a model with identity codes (num_identities > 0); pass "
                             f"(B, {dim}) codes instead")
        return codebook(identity.long())
    if identity.dim() != 2 or identity.shape[1] != dim:
        raise InputError(f"identity codes are (B, {dim}), got {tuple(identity.shape)}")
    return identity
