"""Side-by-side check of GOHA's 3DMM pseudo-render against the official code (CPU, float32).

    python scripts/compare_official_goha_pseudo_render.py --official /path/to/GOHA

``--official`` is an extracted NVlabs/GOHA checkout (the folder holding ``src/``; never part of this repository).
The BFM files cannot be downloaded, so a synthetic ``BFM_model_front.mat`` (an icosphere with random bases, from
``tests/test_goha_pseudo_render.py``) is written to a temporary folder and read by both the official
``deep3d_modules.bfm.ParametricFaceModel`` (through ``scipy.io.loadmat``) and
:meth:`avatar.face.bfm.ParametricFaceModel.from_folder`. Compared:

* ``compute_for_render`` on random coefficients (batch 3): vertices, texture, colours, landmarks;
* ``ExpLoss.get_sudo`` end to end (batch 1, ``exp_transfer`` on and off) with the official ``ReconNetWrapper
  ('resnet50')`` and our :class:`avatar.face.deep3d.Deep3DReconNet` on the same random weights: the mixed coefficients,
  the vertices and colours handed to the renderer, and the returned ``pred_face * 2 - 1``. nvdiffrast cannot run
  here, so the official ``self.renderer`` is replaced by :func:`render_mesh_nvdiffrast` applied to *its* inputs; the
  rasteriser itself is checked against a brute-force reference in the tests.

Only ``deep3d_modules/bfm.py``, ``deep3d_modules/networks.py`` and ``losses/threeDMM.py`` are imported; the package
``__init__`` (model factory), kornia, nvdiffrast, imageio and pytorch3d are stubbed.

Exit status 0 when every difference is below ``--tol`` (1e-5), 1 otherwise, 2 when no checkout is given.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
for extra in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from compare_official_portrait4d import _stub  # noqa: E402  (one module stub for every comparison script)
from test_goha_pseudo_render import random_coeffs, synthetic_bfm  # noqa: E402

from avatar.face.bfm import ParametricFaceModel  # noqa: E402
from avatar.face.deep3d import Deep3DReconNet  # noqa: E402
from avatar.models.goha.pseudo_render import ExpressionPseudoRenderer, render_mesh_nvdiffrast  # noqa: E402


def import_official(checkout: Path) -> tuple[Any, Any, Any]:
    """``(ParametricFaceModel, ReconNetWrapper, ExpLoss)`` of the checkout, unneeded imports stubbed."""
    src = checkout / "src" if (checkout / "src").is_dir() else checkout
    pkg = src / "deep3d_modules"
    if not (pkg / "bfm.py").is_file() or not (src / "losses" / "threeDMM.py").is_file():
        raise SystemExit(f"{checkout} is not a GOHA checkout (src/deep3d_modules/bfm.py, losses/threeDMM.py missing)")
    sys.path.insert(0, str(src))
    # the package without its __init__ (which imports the whole Deep3D training model)
    _stub("deep3d_modules", __path__=[str(pkg)], create_model=None)
    _stub("deep3d_modules.util", __path__=[str(pkg / "util")])
    _stub("deep3d_modules.util.load_mats", transferBFM09=None)
    _stub("deep3d_modules.util.renderer", set_rasterizer=lambda *a, **k: None)
    _stub("deep3d_modules.render", MeshRenderer=None)
    _stub("kornia")
    _stub("kornia.geometry", warp_affine=None)
    _stub("kornia.morphology")
    sys.modules["kornia"].geometry = sys.modules["kornia.geometry"]  # type: ignore[attr-defined]
    sys.modules["kornia"].morphology = sys.modules["kornia.morphology"]  # type: ignore[attr-defined]
    _stub("imageio", imsave=None)
    from deep3d_modules.bfm import ParametricFaceModel as OfficialPFM
    from deep3d_modules.networks import ReconNetWrapper
    from losses.threeDMM import ExpLoss

    return OfficialPFM, ReconNetWrapper, ExpLoss


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, help="extracted NVlabs/GOHA checkout")
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()
    if args.official is None:
        print("--official is required (an extracted NVlabs/GOHA checkout)")
        return 2
    OfficialPFM, ReconNetWrapper, ExpLoss = import_official(args.official)
    from scipy.io import savemat

    torch.manual_seed(0)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        savemat(str(Path(tmp) / "BFM_model_front.mat"), synthetic_bfm(3, seed=1))
        official_bfm = OfficialPFM(bfm_folder=tmp, is_train=False)
        official_bfm.to("cpu")
        ours_bfm = ParametricFaceModel.from_folder(tmp)

    with torch.no_grad():
        coeffs = random_coeffs(3, seed=5)
        ref = official_bfm.compute_for_render(coeffs.clone())
        got = ours_bfm.compute_for_render(coeffs.clone())
        for name, r, g in zip(("vertex", "texture", "color", "landmark"), ref, got, strict=True):
            results[f"compute_for_render.{name}"] = maxdiff(r, g)

        # get_sudo end to end, same random ResNet-50 in both
        ours_net = Deep3DReconNet().eval()
        gen = torch.Generator().manual_seed(7)
        for layer in ours_net.final_layers:  # moderate coefficients: a visible, in-frustum face
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.02)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.05)
        official_net = ReconNetWrapper("resnet50", use_last_fc=False).eval()
        official_net.load_state_dict(ours_net.state_dict(), strict=True)

        recorded: dict[str, torch.Tensor] = {}

        def official_renderer(vertex: torch.Tensor, tri: torch.Tensor, feat: torch.Tensor) -> tuple[torch.Tensor, ...]:
            recorded["vertex"], recorded["feat"] = vertex.clone(), feat.clone()
            return render_mesh_nvdiffrast(vertex, tri, feat)

        compute = official_bfm.compute_for_render

        def recording_compute(c: torch.Tensor) -> Any:
            recorded["coeffs"] = c.clone()
            return compute(c)

        official_bfm.compute_for_render = recording_compute
        exp_loss = ExpLoss.__new__(ExpLoss)
        torch.nn.Module.__init__(exp_loss)
        exp_loss.deep3D = types.SimpleNamespace(net_recon=official_net, facemodel=official_bfm)
        exp_loss.renderer = official_renderer
        ours = ExpressionPseudoRenderer(ours_net, ours_bfm).eval()

        imgs = [torch.rand(1, 3, 256, 256, generator=gen) * 2 - 1 for _ in range(3)]
        for transfer in (True, False):
            ref_sudo = exp_loss.get_sudo(imgs[0], imgs[1], imgs[2], exp_transfer=transfer)
            mixed = ours.coefficients(imgs[0], imgs[1], imgs[2], exp_transfer=transfer)
            vertex, _, color, _ = ours_bfm.compute_for_render(mixed)
            got_sudo = ours.get_sudo(imgs[0], imgs[1], imgs[2], exp_transfer=transfer)
            tag = f"get_sudo[exp_transfer={transfer}]"
            results[f"{tag}.coeffs"] = maxdiff(recorded["coeffs"], mixed)
            results[f"{tag}.vertex"] = maxdiff(recorded["vertex"], vertex)
            results[f"{tag}.color"] = maxdiff(recorded["feat"], color)
            results[f"{tag}.image"] = maxdiff(ref_sudo, got_sudo)
            coverage = float((got_sudo > -1).any(1).float().mean())
            print(f"{tag}: coefficient range [{float(mixed.min()):.3f}, {float(mixed.max()):.3f}], "
                  f"face covers {coverage:.1%} of the 224 image")
        size = imgs[0].shape[-2:]  # Model.get_expr_plane resizes get_sudo's output to the source size
        results["get_expr_plane.resized_sudo"] = maxdiff(
            torch.nn.functional.interpolate(ref_sudo, size=size, mode="bilinear", align_corners=False),
            ours(imgs[0], imgs[1], imgs[2], exp_transfer=False))

    worst = 0.0
    for name, value in results.items():
        print(f"{name:45s} max abs diff {value:.3e}")
        worst = max(worst, value if math.isfinite(value) else math.inf)
    ok = worst < args.tol
    print(f"{'OK' if ok else 'FAIL'}: worst {worst:.3e} (tol {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
