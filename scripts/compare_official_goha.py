"""Side-by-side check of the whole GOHA model against the official ``Model`` (``src/models/model_s2.py``), on CPU.

    pip install --target /tmp/tfsite "transformers==4.36.2"          # GOHA's SegFormer names are transformers 4.x
    pip install --no-deps --target /tmp/kornia055 kornia==0.5.5     # GOHA's install.sh pins kornia 0.5.5
    python scripts/compare_official_goha.py --official /path/to/GOHA --extra-path /tmp/tfsite \
        --extra-path /tmp/kornia055 [--seed 0] [--fast]

What it does:

1. builds the official ``Model(cfg, test=True)`` from an extracted NVlabs/GOHA checkout (never part of this
   repository) as written, except for what cannot run offline or without a GPU: ``from_pretrained`` of the three
   SegFormer branches builds MiT-b0 from its config; the BiSeNet, GFPGAN and ResNet-18 weight files it
   ``torch.load``s at construction are replaced by random weights; ``basicsr`` is stubbed (the "clean" GFPGAN
   needs only its registry); ``losses.threeDMM.ExpLoss`` (Deep3D + nvdiffrast) is a stand-in whose ``get_sudo``
   returns one fixed pseudo-render, the same one our model is given (``reenact(pseudo_render=...)``); our
   rasteriser and Deep3D chain are checked apart by ``compare_official_goha_pseudo_render.py``;
2. perturbs every official parameter (random weights of unit-ish scale), saves the model in the official checkpoint
   format (``{"iter", "model_state_dict"}`` through ``torch.save``) and loads that file with
   ``GOHA.from_official`` (our reader, the key conversion and a strict load);
3. fixes the randomness on both sides: the official renderer's stratified jitter is zero and its importance
   sampling uses ``det=True`` (our deterministic mode), and the official GFPGAN gets the stored noise buffers
   (our ``noise_mode='const'``);
4. runs ``forward(data, mode='full_rec_tar', iteration=825000)`` against our ``GOHA.forward`` on the same source,
   driving frame and cameras, and prints the max abs difference of the SR image, the 224 render, the depth, the
   summed tri-plane and the appearance tri-plane.

Exit status 0 when every difference is below ``--tol`` (1e-4), 1 otherwise, 2 when no checkout is given.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from compare_official_goha_gfpgan import import_official as import_official_gfpgan  # noqa: E402
from compare_official_goha_segformer import B0_CONFIG, MODEL_ID  # noqa: E402
from compare_official_portrait4d import _stub  # noqa: E402  (one module stub for every comparison script)

ITERATION = 825000


class FixedPseudoRender(nn.Module):
    """Stand-in for the official ``ExpLoss``: ``get_sudo`` returns one fixed (1, 3, 224, 224) render in [-1, 1]."""

    sudo: Tensor = torch.zeros(1, 3, 224, 224)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()

    def get_sudo(self, id_img: Tensor, pose_img: Tensor, tar_img: Tensor, exp_transfer: bool = True) -> Tensor:
        return type(self).sudo.to(id_img)

    def get_neutral_render(self, img: Tensor) -> tuple[Tensor, Tensor]:  # result unused upstream
        return torch.zeros_like(img), torch.zeros_like(img[:, :1])


def smooth_image(gen: torch.Generator, size: int, cells: int = 9) -> Tensor:
    """A (1, 3, size, size) image in [-1, 1] with structure at several scales (random blobs, bicubic-upsampled)."""
    coarse = torch.rand(1, 3, cells, cells, generator=gen) * 2 - 1
    fine = torch.rand(1, 3, 4 * cells, 4 * cells, generator=gen) * 2 - 1
    img = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    img = img + 0.3 * F.interpolate(fine, size=size, mode="bilinear", align_corners=False)
    return img.clamp(-1, 1)


def eg3d_camera(yaw: float, pitch: float, radius: float = 2.7, fov_deg: float = 18.837) -> Tensor:
    """A (1, 25) EG3D label as ``LookAtPoseSampler.sample(yaw, pitch, (0, 0, 0.2), radius)`` and
    ``FOV_to_intrinsics(fov_deg)`` build it (OpenCV camera: columns right, up (pointing down), forward)."""
    offset = radius * torch.tensor([math.sin(pitch) * math.cos(math.pi - yaw), math.cos(pitch),
                                    math.sin(pitch) * math.sin(math.pi - yaw)])
    forward = F.normalize(-offset, dim=0)
    right = -F.normalize(torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), forward), dim=0)
    up = F.normalize(torch.linalg.cross(forward, right), dim=0)
    cam2world = torch.eye(4)
    cam2world[:3, 0], cam2world[:3, 1], cam2world[:3, 2] = right, up, forward
    cam2world[:3, 3] = offset + torch.tensor([0.0, 0.0, 0.2])
    focal = 1 / (2 * math.tan(math.radians(fov_deg) / 2))
    intrinsics = torch.tensor([[focal, 0, 0.5], [0, focal, 0.5], [0, 0, 1]])
    return torch.cat([cam2world.reshape(-1), intrinsics.reshape(-1)]).unsqueeze(0)


@contextlib.contextmanager
def official_imports(checkout: Path) -> Iterator[types.ModuleType]:
    """Import ``models.model_s2`` from the checkout with the stand-ins described in the module docstring."""
    src = checkout / "src" if (checkout / "src").is_dir() else checkout
    if not (src / "models" / "model_s2.py").is_file():
        raise SystemExit(f"{checkout} is not a GOHA checkout (src/models/model_s2.py missing)")
    import_official_gfpgan(checkout if (checkout / "src").is_dir() else checkout.parent)  # basicsr stubs + GFPGAN
    if "requests" not in sys.modules:
        try:
            import requests  # noqa: F401
        except ImportError:
            _stub("requests")
    _stub("losses")
    _stub("losses.threeDMM", ExpLoss=FixedPseudoRender)
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    import transformers
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    if int(transformers.__version__.split(".")[0]) >= 5:
        raise SystemExit(f"transformers {transformers.__version__}: GOHA's module names need transformers 4.x")

    def offline_from_pretrained(name: str, *args: object, **kwargs: object) -> nn.Module:
        if name != MODEL_ID:
            raise SystemExit(f"unexpected pretrained id {name!r}")
        return SegformerForSemanticSegmentation(SegformerConfig(**B0_CONFIG))

    with mock.patch.object(SegformerForSemanticSegmentation, "from_pretrained", offline_from_pretrained):
        yield __import__("models.model_s2", fromlist=["Model"])


def build_official(checkout: Path, gen: torch.Generator) -> nn.Module:
    """The official ``Model(cfg, test=True)`` with random weights (see the module docstring)."""
    src = checkout / "src" if (checkout / "src").is_dir() else checkout
    with official_imports(checkout) as model_s2:
        from GFPGAN.gfpganv1_clean_arch import GFPGANv1Clean  # type: ignore[import-not-found]
        from models.BiSeNet import BiSeNet  # type: ignore[import-not-found]

        with mock.patch("torch.utils.model_zoo.load_url", return_value={}):
            parsing_state = BiSeNet(n_classes=19).state_dict()
        gfpgan_state = GFPGANv1Clean(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                                     fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True,
                                     narrow=1, sft_half=True).state_dict()
        real_load = torch.load

        def fake_load(path: Any, *args: object, **kwargs: object) -> Any:
            if path == "<parsing>":
                return parsing_state
            if path == "<gfpgan>":
                return {"params_ema": gfpgan_state}
            return real_load(path, *args, **kwargs)

        cfg = types.SimpleNamespace(
            device="cpu",
            experiment=types.SimpleNamespace(freeze_cano=0, parsing_path="<parsing>", GFP_path="<gfpgan>",
                                             add_expr_plane=120000, add_id_plane=240000),
            models=types.SimpleNamespace(render_resolution=224),
        )
        cwd = os.getcwd()
        os.chdir(src)  # the constructor reads dataset/cano_exemplar.png relative to src/
        try:
            with mock.patch("torch.utils.model_zoo.load_url", return_value={}), \
                    mock.patch.object(torch, "load", fake_load):
                official = model_s2.Model(cfg, test=True)
        finally:
            os.chdir(cwd)
    with torch.no_grad():
        for name, p in official.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            noise = torch.randn(p.shape, generator=gen)
            if name.startswith("decoder.") and p.dim() > 1:
                p.copy_(noise)  # FullyConnectedLayer applies its own 1/sqrt(fan_in) gain
            elif p.dim() > 1:
                p.copy_(noise / math.sqrt(fan_in))
            elif name.endswith("weight") and ("norm" in name or "bn" in name):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
        # a visible head: a positive density bias so that the depth follows the planes (not the far bound)
        official.decoder.net[-1].bias[0] += 1.0
        for name, b in official.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
            elif name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
    return official.eval()


def make_deterministic(official: nn.Module) -> None:
    """Zero stratified jitter, ``det=True`` importance sampling and the stored GFPGAN noise, on the official model."""
    renderer = official.renderer
    stratified, pdf = renderer.sample_stratified, renderer.sample_pdf

    def sample_stratified(*args: Any, **kwargs: Any) -> Tensor:
        with mock.patch.object(torch, "rand_like", torch.zeros_like):
            return stratified(*args, **kwargs)

    renderer.sample_stratified = sample_stratified
    renderer.sample_pdf = lambda bins, weights, n, det=False, eps=1e-5: pdf(bins, weights, n, det=True, eps=eps)
    layers = official.neural_layers
    forward = layers.forward
    noises = [getattr(layers.gfpgan.stylegan_decoder.noises, f"noise{i}")
              for i in range(layers.gfpgan.stylegan_decoder.num_layers)]
    # the stored noises are plain attributes (not moved by ``.to``): follow the input's device
    layers.forward = lambda img, *a, **k: forward(img, noise=[n.to(img.device) for n in noises])


def max_diff(a: Tensor, b: Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def compare_outputs(out: Any, ref: dict[str, Tensor]) -> dict[str, float]:
    return {
        "SR image 512 (high_res)": max_diff(out.image, ref["high_res"]),
        "render 224 (rgb_low_res)": max_diff(out.image_raw, ref["rgb_low_res"]),
        "depth 224 (depth_image)": max_diff(out.depth, ref["depth_image"]),
        "tri-plane (target_plane)": max_diff(out.plane, ref["target_plane"]),
        "appearance tri-plane (id_planes)": max_diff(out.appearance_plane, ref["id_planes"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, default=os.environ.get("GOHA_OFFICIAL"),
                        help="extracted NVlabs/GOHA checkout (default: $GOHA_OFFICIAL)")
    parser.add_argument("--extra-path", type=Path, action="append", default=[],
                        help="put DIR first on sys.path (pip --target folders with transformers 4.x, kornia 0.5.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--fast", action="store_true",
                        help="our side with enable_fast_inference(None) (the fast path's operation order; the "
                             "fused renderer and lifting need CUDA or Triton's interpreter)")
    args = parser.parse_args(argv)
    if args.official is None:
        print("no official checkout: pass --official or set GOHA_OFFICIAL", file=sys.stderr)
        return 2
    for extra in reversed(args.extra_path):
        sys.path.insert(0, str(extra))
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    from avatar.models.goha import GOHA, GOHAConfig
    from avatar.models.goha.convert import model_state_to_official
    from avatar.models.goha.planes import nearest_point_indices, project_to_plane

    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    official = build_official(args.official, gen)
    make_deterministic(official)
    print(f"official Model: {sum(p.numel() for p in official.parameters()):,} parameters, "
          f"{len(official.state_dict())} tensors ({time.perf_counter() - t0:.1f} s)")

    ours_random = GOHA(GOHAConfig())
    deep3d_state = {f"net_recon.{k}": v for k, v in ours_random.exp_loss_fn.net_recon.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint825000.ckpt"
        torch.save({"iter": ITERATION, "model_state_dict": official.state_dict()}, path)
        ours = GOHA.from_official(path, deep3d=deep3d_state)
    if args.fast:
        ours.enable_fast_inference(None)
        print("ours: fast inference path (enable_fast_inference(None))")
    back = model_state_to_official(ours.state_dict())
    reference = official.state_dict()
    same = set(back) == set(reference) and all(torch.equal(back[k], reference[k]) for k in reference)
    print(f"ours: strict load of the official checkpoint file, {len(ours.state_dict())} tensors; converted back "
          f"to official names: {'identical' if same else 'DIFFERENT'}")

    size = 512
    img_src, img_tgt = smooth_image(gen, size), smooth_image(gen, size)
    for img in (img_src, img_tgt):  # a matted crop: background at -1 outside an ellipse
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        img.masked_fill_(((xx / 0.75) ** 2 + (yy / 0.9) ** 2 > 1).expand_as(img), -1.0)
    pose_src, pose_tgt = eg3d_camera(math.pi / 2, math.pi / 2 - 0.05), eg3d_camera(math.pi / 2 + 0.3, math.pi / 2 + 0.1)
    sudo = smooth_image(gen, 224)
    FixedPseudoRender.sudo = sudo
    data = {"img_src": img_src, "pose_src": pose_src, "img_target": img_tgt, "pose_target": pose_tgt}

    official_points: list[Tensor] = []
    depth2pcd = official.depth2pcd
    official.depth2pcd = lambda *a: official_points.append(depth2pcd(*a)) or official_points[-1]
    t0 = time.perf_counter()
    ref = official(data, mode="full_rec_tar", iteration=ITERATION, exp_transfer=True)
    t_official = time.perf_counter() - t0

    import avatar.models.goha.modeling as modeling

    our_points: list[Tensor] = []
    to_points = modeling.depth_to_points

    def run_ours(shared_points: bool) -> Any:
        def points(*a: Tensor) -> Tensor:
            our_points.append(to_points(*a))
            return official_points[0] if shared_points else our_points[-1]

        with mock.patch.object(modeling, "depth_to_points", points):
            source = ours.encode_source(img_src, pose_src, with_coefficients=False)
            pseudo = F.interpolate(sudo, size=(size, size), mode="bilinear", align_corners=False)
            return ours.reenact(source, pose_tgt, pseudo_render=pseudo)

    t0 = time.perf_counter()
    out = run_ours(shared_points=False)
    t_ours = time.perf_counter() - t0
    shared = run_ours(shared_points=True)

    print(f"forward: official {t_official:.1f} s, ours {t_ours:.1f} s (CPU, {args.threads} threads); "
          f"max |official SR| {ref['high_res'].abs().max().item():.3f}, "
          f"render range [{ref['rgb_low_res'].min().item():.3f}, {ref['rgb_low_res'].max().item():.3f}], "
          f"depth range [{ref['depth_image'].min().item():.3f}, {ref['depth_image'].max().item():.3f}]")
    points_diff = max_diff(our_points[0], official_points[0])
    grid = ours.uv
    flipped = sum(int((nearest_point_indices(grid, project_to_plane(our_points[0], p))
                       != nearest_point_indices(grid, project_to_plane(official_points[0], p))).sum())
                  for p in range(3))
    cells = 3 * grid.shape[1] * our_points[0].shape[0]
    print(f"appearance lifting: our points vs official depth2pcd max abs diff {points_diff:.3e}; lifting cells "
          f"whose nearest point differs: {flipped} of {cells} (ties broken by float rounding)")
    sr_same_input = max_diff(ours.neural_layers(ref["rgb_low_res"], noise_mode="const"), ref["high_res"])
    sr_scale = ref["high_res"].abs().max().item()
    print(f"super-resolution of the official's own 224 render: max abs diff {sr_same_input:.3e} (random GFPGAN "
          f"weights give outputs up to {sr_scale:.1f}, so render differences of ~1e-6 grow ~{sr_scale:.0f}x in it)")
    ok = same and points_diff < 1e-5 and flipped <= cells // 1000 and sr_same_input < args.tol
    for title, ours_out in (("as computed", out), ("sharing the official's lifting points", shared)):
        print(f"{title}:")
        for name, diff in compare_outputs(ours_out, ref).items():
            limit = args.tol * max(1.0, sr_scale) if name.startswith("SR") else args.tol  # relative for the SR
            good = math.isfinite(diff) and diff < limit
            if ours_out is shared:
                ok &= good
            print(f"  {name:36s} max abs diff {diff:.3e}  {'ok' if good else ('FAIL' if ours_out is shared else '')}")
    print("PASS" if ok else f"FAIL (tol {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
