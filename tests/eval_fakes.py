"""Stand-ins for the benchmark's networks, shared by the eval.run tests: deterministic fake face networks and tiny
random CSIM / FID networks (the numbers mean nothing; the plumbing is what is tested)."""

from __future__ import annotations

import torch

from eval.metrics.face import FaceLandmarks


class FakeFace:
    """Deterministic stand-ins for the face networks (landmarks and coefficients from image statistics)."""

    comparable = False

    def __init__(self) -> None:
        grid = torch.stack(torch.meshgrid(torch.linspace(10, 38, 17), torch.linspace(12, 36, 4), indexing="ij"), -1)
        self.base = grid.reshape(68, 2).double()

    def landmarks(self, images: torch.Tensor) -> FaceLandmarks:
        shift = images.mean(dim=(1, 2, 3)).double()[:, None, None] * 4
        found = images.mean(dim=(1, 2, 3)) > 0.05
        return FaceLandmarks(self.base[None] + shift, found)

    def coefficients(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        m = images.mean(dim=(2, 3)).double()
        return {"exp": m.repeat(1, 22)[:, :64], "angle": m, "trans": m * 2, "found": torch.ones(len(images), dtype=bool)}


def fake_scorer_kwargs() -> dict:
    face = FakeFace()
    torch.manual_seed(0)
    embedder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, 8), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 16))
    fid_net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 4), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    return {"face": face, "extra_kwargs": {"csim": {"embedder": embedder, "comparable": False},
                                           "fid": {"network": fid_net}}}
