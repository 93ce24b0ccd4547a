"""Side-by-side check of our Portrait4D training losses against the official ones (CPU, fp32, random weights).

    python scripts/compare_official_portrait4d_losses.py --official /path/to/Portrait-4D --extra-path DEPS
        [--cases v2 v1 v1-early] [--phases Gmain ...] [--show-grads 3] [--noise-floor]

Ours: :class:`train.recipes.portrait4d_loss.Portrait4DLoss` (phases ``g_main``, ``g_reg``, ``d_main``, ``d_reg``,
data preparation ``prepare``). Official: ``AnimatablePortraitReconLoss.accumulate_gradients`` of
``training/loss/loss_recon_v2.py`` and ``loss_recon_v1.py`` from a checkout of YuDeng/Portrait-4D (never part of
this repository; its root or its ``portrait4d/`` folder). Both run one fixed batch with the same networks:

* **G** - the official ``TriPlaneReconstructorNeutralize`` built with random weights (``--g-size tiny``: one
  neutral and one motion transformer block, one motion-mapping layer, 12 + 12 ray samples; the encoders,
  triplane decoder and super-resolution are the official ones, since the official loss needs the 512
  output; ``full``: the released ``init_kwargs``), pickled as an EG3D snapshot, converted with ``avatar
  convert`` and strictly loaded into :class:`~avatar.models.portrait4d.Portrait4D` (the helpers of
  ``scripts/compare_official_portrait4d.py``, which stub the pytorch3d modules and make the official FLAME
  deformer an identity stand-in). v2's frozen **G_fix** is a copy with other random weights, loaded by state
  dict. Our attention runs its explicit-softmax path (upstream's arithmetic; ``--sdpa`` keeps the fused kernel).
* **Head-pose deformation: the identity on both sides** - the official ``G._deformer`` is the stand-in, and
  ours is switched off by patching ``avatar.models.portrait4d.training._field`` to return ``None`` (so
  ``train_forward``, ``sample_density`` and ``plane_features`` warp nothing, whatever FLAME parameters they get).
* **D** - the official ``DualDiscriminatorDeform`` with the training loops' options (``--d-channel-base`` /
  ``--d-channel-max``: smaller widths, same 512 input), perturbed as in ``scripts/compare_official_
  discriminator.py`` and copied into :class:`~avatar.losses.discriminator.DualDiscriminator`.
* **Loss networks, full size, random weights** - LPIPS: the official ``models/lpips`` ``LPIPS(net='vgg')`` built
  with ``pnet_rand=True`` (torchvision's VGG16 at its random init: no ImageNet download) and random linear
  heads, copied into :class:`~avatar.losses.lpips.LPIPSNet`; ArcFace: ``models/arcface`` ``iresnet18`` ->
  :class:`~avatar.losses.arcface.IResNet`; PD-FGC: ``models/pdfgc`` ``FanEncoder`` ->
  :class:`~avatar.motion.pdfgc.PDFGCEncoder` (every BatchNorm's statistics and affine perturbed first).
* **FLAME** - a synthetic FLAME (:func:`avatar.flame.synthetic.synthetic_flame_assets`, with a face-like
  embedding of the 70 landmarks: :func:`face_like_flame_assets`) and our
  :class:`~avatar.flame.correspondence.FlameCorrespondenceRenderer`, which also replaces the official
  ``G.deformer.renderer`` / ``G_fix.deformer.renderer`` (pytorch3d): the same object on both sides.
* **Data** - one random batch (smooth images and masks, cameras near the front, FLAME parameters, PD-FGC
  motions; v1 adds GenHead-style seg / depth / feature / background / triplane targets) goes through our
  ``prepare``; its ``c_recon`` (:func:`avatar.flame.camera_pose.decompose_camera_pose`, which the official
  training loop calls outside the loss), ``c_compose``, ``uv`` and images are what the official loss gets.

Cases: ``v2`` (``G_fix_img`` regulariser, motion augmentation with ``mot_aug_prob`` 0.9 and
``g_fix_reg_img_aug``, at the resumed ``cur_nimg`` 10000 kimg), ``v1`` (``l1`` density regulariser,
``half_static``) at 1500 kimg (identity and adversarial losses on, rendering resolution half-way through its
fade) and ``v1-early`` at 0 kimg (GenHead distillation terms on, no identity or adversarial loss, D phases
idle). Every phase runs from the same ``torch.manual_seed`` on every side, with only the phase's module
requiring grad and its gradients zeroed first (as the training loops do), each backward pass recorded. Our loss
makes the same ``torch.rand`` / ``randn`` draws in the same order as the official code, so nothing random is
patched: a different order would show as different values (the per-term table tells which term), a different
number of draws in the ``draws`` column (the random generator's state after the phase, compared).

Two runs of ours per phase:

* **ours** - our loss on our networks (end to end). The values must agree to ``--tol``, the gradients of D to
  ``--grad-tol``; those of G only to ``--g-grad-tol`` (1e-2): two implementations of the generator differ by
  fp32 rounding in its backward pass, by up to about 1e-3 of a tensor's largest gradient in the first encoder
  layers, which is the size of the difference between our own two attention kernels (``--noise-floor``
  measures it) and was measured on the generator alone by ``scripts/compare_official_portrait4d_training.py``.
* **loss only** (``--modes``) - our loss code on the official networks: the official G and G_fix behind our
  ``train_forward`` / ``sample_density`` / ``plane_features`` (:func:`official_generators`), the official D,
  LPIPS, ArcFace and PD-FGC (through our crop). Both sides then do the same network arithmetic and differ only
  where the loss code does: the values, the gradients of G's and D's parameters and the gradients that the
  loss sends into G's outputs (dL/d(image_sr), dL/d(planes), ...; hooks on every output of a generator call
  with gradients) must all agree to ``--tol`` / ``--grad-tol``.

In the loss-only run our face crops (ArcFace alignment, the motion augmentation's PD-FGC crop) use upstream's
numerics (:func:`upstream_crop_numerics`: skimage similarity fits, kornia's warp) unless ``--native-crops``:
ours agree with them to about 1e-5, which is enough to move single values across the kinks behind the crops
(clamp, ReLUs) and so single pixels of the image gradients by much more than the rounding itself.

Printed: per case and phase the official loss value (the sum of the phase's backward passes divided by its
gain), ours and their relative difference, the worst relative gradient differences (``max |ours - official| /
max |official|`` per tensor, the worst tensor named); then every logged term (``Loss/G/lrecon_lpips``,
``Loss/D/reg``, ... averaged, as ``training_stats`` would).

Exit status 0 when everything agrees within its tolerance, 1 otherwise, 2 when no usable checkout is given
(nothing compared).

The official code needs ``segmentation-models-pytorch==0.3.3``, ``timm==0.9.2``, ``six``, ``pretrainedmodels``,
``efficientnet-pytorch``, ``einops``, ``kornia`` and ``scikit-image`` importable (``pip install --no-deps
--target DIR ...`` and ``--extra-path DIR``); ``requests`` is stubbed when missing.

Timing mode (``--time-steps N``, e.g. ``--device cuda --size full --time-steps 20``; it compares nothing): the
same networks (``--size full``: the official G and D, rendering resolution 128 for v2, 64 -> 128 for v1 unless
``--nr``),
losses and batch; each side runs the four phases ``N`` times after one warm-up round, each phase timed with the
device synchronised, optimizer steps excluded on both sides, nothing recorded (our crops are ours). Printed per
case: median milliseconds per phase, the full step (all four phases) and the amortised step (Greg and Dreg
divided by their lazy intervals), ours, official and ours / official; on CUDA also whether upstream's CUDA
extensions built (otherwise it ran its slower reference ops). Upstream's Dreg includes its motion augmentation
(a G_fix render and PD-FGC, unused there), which ours skips. Upstream's CUDA extensions are built and loaded
(``compare_official_portrait4d.official_cuda_ops``; where one fails upstream runs its reference op, and the output says so).
``--our-bf16`` times our side under bf16 autocast (``--mixed-precision bf16``) against upstream's fp32.

Curves mode (``--curve-steps N --curve-out FILE``, first case only): both sides *train* N steps from the same
weights (:func:`run_curves`): a new batch per step, the phases at their lazy intervals with the same seeds on both
sides, each followed by its Adam step (the official optimizer settings: lazy-regularisation correction, ``bn``
names left out, the ``G_cross`` group). Every logged term per step and side goes to the JSON (written as it goes);
the table printed at the end gives the relative differences per term and of the final weights.
``--plot FILE PNG`` draws such a file (no checkout needed).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import pickle
import statistics
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
for _p in (REPO_ROOT, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import compare_official_discriminator as disc_base  # noqa: E402  (the discriminator comparison's helpers)
import compare_official_portrait4d as base  # noqa: E402  (the inference comparison's helpers)

PHASES = ("Gmain", "Greg", "Dmain", "Dreg")
OUR_PHASES = {"Gmain": "g_main", "Greg": "g_reg", "Dmain": "d_main", "Dreg": "d_reg"}
D_REG_INTERVAL = 16  # EG3D's D_reg_interval (every Portrait4D launcher)
OFFICIAL_CUR_KIMG = {"v2": 10000.0, "v1": 1500.0, "v1-early": 0.0}
SIGN_TERMS = ("Loss/signs/",)  # signs of logits: not compared (a logit near 0 may flip on rounding)


# ----------------------------------------------------------------------------------------------------------
# the official code


def find_checkout(path: Path) -> Path | None:
    """The checkout root (the folder holding ``portrait4d/``) for a root or a ``portrait4d/`` folder."""
    for root in (path, path.parent):
        if (root / "portrait4d" / "training" / "loss" / "loss_recon_v2.py").is_file():
            return root
    return None


def import_official(root: Path) -> types.SimpleNamespace:
    """The official modules (generator class, losses, loss networks), pytorch3d and requests stubbed."""
    generator_cls = base.import_official(root)
    if not hasattr(np, "VisibleDeprecationWarning"):  # numpy 2 moved it; training/utils/preprocess.py uses it
        np.VisibleDeprecationWarning = np.exceptions.VisibleDeprecationWarning  # type: ignore[attr-defined]
    try:
        import dnnlib
        from models.arcface.iresnet import iresnet18
        from models.lpips.lpips import LPIPS
        from models.pdfgc.encoder import FanEncoder
        from training.loss import loss_recon_v1, loss_recon_v2
        from training.utils.preprocess import estimate_norm_torch, estimate_norm_torch_pdfgc
    except ImportError as exc:
        raise SystemExit(f"cannot import the official losses ({exc}); they need kornia and scikit-image "
                         "importable besides the generator's dependencies (--extra-path)") from exc
    return types.SimpleNamespace(G=generator_cls, dnnlib=dnnlib, loss={"v1": loss_recon_v1, "v2": loss_recon_v2},
                                 LPIPS=LPIPS, iresnet18=iresnet18, FanEncoder=FanEncoder,
                                 estimate_norm_torch=estimate_norm_torch,
                                 estimate_norm_torch_pdfgc=estimate_norm_torch_pdfgc)


def generator_kwargs(size: str) -> dict:
    """``init_kwargs`` of the official generator: the released ones (``full``) or fewer transformer blocks and
    ray samples (``tiny``: everything the 512 output needs stays official)."""
    kwargs = base.official_init_kwargs(512)
    if size == "tiny":
        kwargs.update(num_blocks_neutral=1, num_blocks_motion=1, motion_map_layers=1)
        kwargs["rendering_kwargs"].update(depth_resolution=12, depth_resolution_importance=12)
    return kwargs


def discriminator_options(channel_base: int, channel_max: int) -> dict:
    return {**disc_base.OFFICIAL_D_OPTIONS, "channel_base": channel_base, "channel_max": channel_max}


@torch.no_grad()
def perturb_norms(module: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (a fresh network's are 0 / 1: the layers would be
    near-identities and their mistakes invisible)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(1 + torch.rand(n, generator=gen) * 0.5)
            if m.affine:
                m.weight.copy_(1 + torch.randn(n, generator=gen) * 0.1)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return module


# ----------------------------------------------------------------------------------------------------------
# networks of both sides


@dataclass
class Networks:
    """One side's networks (``G_fix`` only for v2)."""

    G: nn.Module
    D: nn.Module
    G_fix: nn.Module
    lpips: nn.Module
    arcface: nn.Module
    pdfgc: nn.Module


def convert_generator(official: nn.Module) -> nn.Module:
    """Pickle as an EG3D snapshot, convert with ``avatar convert``'s code, strictly load (as the sibling scripts)."""
    from avatar.hub.convert import convert_file
    from avatar.models.portrait4d import Portrait4D

    with tempfile.TemporaryDirectory() as tmp:
        pkl = Path(tmp) / "portrait4d-random.pkl"
        with open(pkl, "wb") as f:
            pickle.dump({"G_ema": official, "training_set_kwargs": {"static": False}}, f)
        converted = convert_file(pkl, Path(tmp) / "converted")
        return Portrait4D.from_official(converted.weights)


def build_networks(off: types.SimpleNamespace, args: argparse.Namespace, renderer: nn.Module
                   ) -> tuple[Networks, Networks]:
    """The official networks (random weights) and ours with the same weights."""
    from avatar.losses.arcface import ArcFaceConfig, IResNet
    from avatar.losses.discriminator import DiscriminatorConfig, DualDiscriminator
    from avatar.losses.lpips import LPIPSConfig, LPIPSNet
    from avatar.models.portrait4d import Portrait4D
    from avatar.motion.pdfgc import PDFGCConfig, PDFGCEncoder
    from avatar.nn.attention import set_sdpa

    t = time.perf_counter()
    torch.manual_seed(args.seed)
    kwargs = generator_kwargs(args.g_size)
    with mock.patch("torch.utils.model_zoo.load_url", lambda *a, **k: {}):  # E_global's ImageNet weights
        off_G = off.G(**kwargs)
    base.randomize(off_G, args.seed)
    off_fix = copy.deepcopy(off_G)
    base.randomize(off_fix, args.seed + 1)
    G = convert_generator(off_G)
    G_fix = Portrait4D.from_official(off_fix.state_dict(), config=G.config)
    if not args.sdpa:
        set_sdpa(G, False)
        set_sdpa(G_fix, False)
    # the training loops: G in train mode with its BatchNorms in eval, G_fix in eval, nothing requiring grad
    off_G.train().requires_grad_(False)
    for m in off_G.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    off_fix.eval().requires_grad_(False)
    G.train().requires_grad_(False)
    G_fix.eval().requires_grad_(False)
    # the official FLAME renderer (pytorch3d) -> ours, the same object (kept out of the module tree)
    for g in (off_G, off_fix):
        object.__setattr__(g.deformer, "renderer", renderer)
    print(f"G: {sum(p.numel() for p in off_G.parameters()) / 1e6:.1f} M parameters ({args.g_size}), G_fix a copy "
          f"with other weights; converted and strictly loaded in {time.perf_counter() - t:.0f} s")

    options = discriminator_options(args.d_channel_base, args.d_channel_max)
    off_D = disc_base.build_official(types.SimpleNamespace(dnnlib=off.dnnlib), disc_base.OFFICIAL_COMMON, options,
                                     args.seed + 2).train().requires_grad_(False)
    config = DiscriminatorConfig.from_official({**options, **disc_base.OFFICIAL_COMMON})
    D = DualDiscriminator.from_official(off_D.state_dict(), config=config).train().requires_grad_(False)
    print(f"D: {sum(p.numel() for p in off_D.parameters()) / 1e6:.2f} M parameters (channel_base "
          f"{args.d_channel_base}, channel_max {args.d_channel_max})")

    torch.manual_seed(args.seed + 3)
    with warnings.catch_warnings():  # torchvision's notice about `pretrained=`
        warnings.simplefilter("ignore")
        off_lpips = off.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False).eval()
    lpips = LPIPSNet(LPIPSConfig(net="vgg"))
    lpips.load_official(off_lpips.state_dict())
    torch.manual_seed(args.seed + 4)
    off_arc = perturb_norms(off.iresnet18(), args.seed + 5).eval()
    arcface = IResNet(ArcFaceConfig())
    arcface.load_official(off_arc.state_dict())
    torch.manual_seed(args.seed + 6)
    off_pdfgc = perturb_norms(off.FanEncoder(), args.seed + 7).eval()
    pdfgc = PDFGCEncoder(PDFGCConfig())
    pdfgc.load_official(off_pdfgc.state_dict())
    frozen = [off_lpips, lpips, off_arc, arcface, off_pdfgc, pdfgc]
    for m in frozen:
        m.eval().requires_grad_(False)
    print("loss networks: LPIPS-VGG16, ArcFace iresnet18, PD-FGC FanEncoder (full size, random weights)")
    official = Networks(off_G, off_D, off_fix, off_lpips, off_arc, off_pdfgc)
    ours = Networks(G, D, G_fix, lpips, arcface, pdfgc)
    return official, ours


def to_device(nets: Networks, device: torch.device) -> Networks:
    return Networks(*(m.to(device) for m in (nets.G, nets.D, nets.G_fix, nets.lpips, nets.arcface, nets.pdfgc)))


# ----------------------------------------------------------------------------------------------------------
# data


def _face_layout() -> np.ndarray:
    """A rough iBUG-68 + two eye centres layout ``(70, 2)`` in the unit disk (x right, y up, as seen by a
    camera on +z): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67, eye centres 68, 69."""
    def arc(c: tuple[float, float], rx: float, ry: float, a0: float, a1: float, n: int) -> list[tuple[float, float]]:
        return [(c[0] + rx * math.cos(a), c[1] + ry * math.sin(a)) for a in np.linspace(a0, a1, n)]

    pts = arc((0.0, 0.2), 0.8, 1.0, math.pi * 1.0, math.pi * 2.0, 17)  # jaw, left to right through the chin
    pts += [(x, 0.48 + 0.05 * math.cos(3 * x)) for x in np.linspace(-0.65, -0.15, 5)]  # brows
    pts += [(x, 0.48 + 0.05 * math.cos(3 * x)) for x in np.linspace(0.15, 0.65, 5)]
    pts += [(0.0, y) for y in np.linspace(0.3, -0.02, 4)]  # nose bridge, then nostrils
    pts += [(x, -0.12) for x in np.linspace(-0.15, 0.15, 5)]
    for cx in (-0.33, 0.33):  # eyes: corner, two upper, corner, two lower (clockwise from the image-left corner)
        pts += arc((cx, 0.25), 0.12, 0.02, math.pi, 0.0, 4) + arc((cx, 0.25), 0.12, 0.02, -math.pi / 3, -2 * math.pi / 3, 2)
    mouth = (0.0, -0.4)
    pts += arc(mouth, 0.28, 0.12, math.pi, 0.0, 7) + arc(mouth, 0.28, 0.12, -math.pi / 6, -5 * math.pi / 6, 5)
    pts += arc(mouth, 0.2, 0.04, math.pi, 0.0, 5) + arc(mouth, 0.2, 0.04, -math.pi / 4, -3 * math.pi / 4, 3)
    pts += [(-0.33, 0.25), (0.33, 0.25)]
    out = np.asarray(pts, dtype=np.float64)
    assert out.shape == (70, 2), out.shape
    return out


def face_like_flame_assets(seed: int) -> dict:
    """:func:`~avatar.flame.synthetic.synthetic_flame_assets` (70 landmarks) with its random landmark embedding
    replaced by a face-like one on the front of the sphere head: the ArcFace and PD-FGC crops then frame the
    head as they frame a face (with random landmarks they sample a region tens of times the image)."""
    from avatar.flame.synthetic import synthetic_flame_assets

    assets = synthetic_flame_assets(seed, num_landmarks=70)
    verts = np.asarray(assets["generic_model"]["v_template"], dtype=np.float64)
    faces = np.asarray(assets["generic_model"]["f"], dtype=np.int64)
    centre = verts.mean(0)
    layout = _face_layout() * 0.85
    idx, bary = [], []
    for x, y in layout:
        direction = np.array([x, y, math.sqrt(max(1 - x * x - y * y, 1e-3))])
        for f, tri in enumerate(faces):  # the triangle the ray from the centre crosses (a convex polyhedron)
            coeffs = np.linalg.solve((verts[tri] - centre).T, direction)
            if (coeffs >= -1e-12).all():
                idx.append(f)
                bary.append(coeffs / coeffs.sum())
                break
        else:  # pragma: no cover - every direction crosses the closed surface
            raise RuntimeError("landmark ray missed the synthetic head")
    assets["landmarks"]["full_lmk_faces_idx"] = np.asarray([idx], dtype=np.int64)
    assets["landmarks"]["full_lmk_bary_coords"] = np.asarray([bary], dtype=np.float32)
    return assets


def make_batch(recipe: str, batch: int, nr: int, seed: int) -> dict[str, Tensor]:
    """A collated dataset batch as our ``prepare`` takes it (float images in [-1, 1] at 512)."""
    from avatar.render.camera import focal_from_fov, lookat_cam2world, make_intrinsics, make_label

    gen = torch.Generator().manual_seed(seed)

    def smooth(channels: int, size: int, cells: int = 16) -> Tensor:
        low = torch.rand(batch, channels, cells, cells, generator=gen) * 2 - 1
        x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
        return (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)

    def mask() -> Tensor:
        return torch.tanh(4 * (smooth(1, 512, 6) + 0.3)).repeat(1, 3, 1, 1)

    yaw = math.pi / 2 + (torch.rand(batch, generator=gen) - 0.5) * 0.6
    pitch = math.pi / 2 + (torch.rand(batch, generator=gen) - 0.5) * 0.3
    c2w = lookat_cam2world(yaw, pitch, (0.0, 0.0, 0.0), 4.0 + torch.rand(batch, generator=gen) * 0.4, batch_size=batch)
    pose = torch.cat([torch.randn(batch, 3, generator=gen) * 0.15, torch.rand(batch, 1, generator=gen) * 0.2,
                      torch.randn(batch, 2, generator=gen) * 0.02], dim=1)
    out = {
        "source_image": smooth(3, 512),
        "driving_image": smooth(3, 512),
        "driving_seg": mask(),
        "c": make_label(c2w, make_intrinsics(focal_from_fov(12.0), batch)),
        "shape": torch.randn(batch, 300, generator=gen) * 0.5,
        "exp": torch.randn(batch, 100, generator=gen) * 0.5,
        "pose": pose,
        "eye": torch.randn(batch, 6, generator=gen) * 0.05,
        "source_motion": torch.randn(batch, 548, generator=gen),
        "driving_motion": torch.randn(batch, 548, generator=gen),
    }
    if recipe == "v1":  # GenHead data: a third view as the target and the distillation targets
        out["target_image"] = smooth(3, 512)
        out["seg_render"] = out["driving_seg"]
        out["depth"] = 3.6 + 0.4 * smooth(1, nr, 4)
        out["feature"] = smooth(32, nr, 4)
        out["feature_bg"] = smooth(32, 64, 8)
        points = (torch.rand(batch, 4000, 3, generator=gen) * 2 - 1) * 0.6
        out["triplane"] = torch.cat([points, torch.randn(batch, 4000, 32, generator=gen)], dim=-1)
    return out


def official_arguments(rb: Any) -> dict[str, Any]:
    """``accumulate_gradients``'s data arguments from our prepared batch (clones: the official code may not
    touch ours)."""
    def c(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.clone()

    return {
        "real_img_app": c(rb.source_image), "real_img_mot": c(rb.driving_image), "real_img_recon": c(rb.target_image),
        "real_seg_recon": c(rb.target_seg), "real_seg_recon_render": c(rb.seg_render), "real_uv_recon": c(rb.uv),
        "real_c_recon": c(rb.c_recon), "real_c_compose_recon": c(rb.c_compose), "shape_params_app": c(rb.shape),
        "exp_params_mot": c(rb.exp), "pose_params_mot": c(rb.pose), "eye_pose_params_mot": c(rb.eye),
        "motions_app": c(rb.source_motion), "motions": c(rb.driving_motion), "real_depth_recon": c(rb.depth),
        "real_feature_recon": c(rb.feature), "real_feature_recon_bg": c(rb.feature_bg),
        "real_triplane_recon": c(rb.triplane),
    }


# ----------------------------------------------------------------------------------------------------------
# losses of both sides


def our_recipe(name: str, nr: int) -> Any:
    from train.recipes.portrait4d import recipe

    if name == "v2":
        return recipe("v2", nr_initial=nr, nr_final=None)
    return recipe("v1", nr_initial=nr, nr_final=2 * nr)


def official_loss(off: types.SimpleNamespace, name: str, nets: Networks, nr: int, device: torch.device) -> Any:
    """``AnimatablePortraitReconLoss`` with the launchers' arguments (train_recon_v{1,2}.py, configs/*.yaml)."""
    common = {
        "device": device, "G": nets.G, "D": nets.D, "lpips": nets.lpips, "facenet": nets.arcface, "gmain": 0.01,
        "r1_gamma": 1.0, "r1_gamma_uv": 10.0, "r1_gamma_seg": 1.0, "r1_gamma_patch": 10.0, "blur_init_sigma": 0,
        "blur_fade_kimg": 200 * 2 / 32, "discrimination_kimg": 1000, "dual_discrimination": True,
        "filter_mode": "antialiased", "patch_scale": 1.0, "patch_gan": 0, "use_D": True,
        "neural_rendering_resolution_initial": nr, "neural_rendering_resolution_fade_kimg": 1000,
    }
    rk = nets.G.rendering_kwargs
    rk["density_reg_p_dist"] = 0.004
    if name == "v2":
        rk.update(density_reg=1.0, reg_type="G_fix_img")
        return off.loss["v2"].AnimatablePortraitReconLoss(
            **common, G_fix=nets.G_fix, pd_fgc=nets.pdfgc, neural_rendering_resolution_final=None,
            mot_aug_prob=0.9, G_fix_reg_img_aug=True)
    rk.update(density_reg=0.25, reg_type="l1")
    return off.loss["v1"].AnimatablePortraitReconLoss(
        **common, G_syn=None, pd_fgc=None, neural_rendering_resolution_final=2 * nr, truncation_psi=0.95)


def our_loss(name: str, nets: Networks, renderer: nn.Module, nr: int, gradient_checkpointing: bool = False) -> Any:
    from train.recipes.portrait4d_loss import Portrait4DLoss

    v2 = name == "v2"
    extra = {"gradient_checkpointing": True} if gradient_checkpointing else {}
    return Portrait4DLoss(our_recipe(name, nr), nets.G, nets.D, renderer, nets.lpips, nets.arcface,
                          nets.G_fix if v2 else None, nets.pdfgc if v2 else None, motion_scale=1.0,
                          half_static=not v2, deterministic=False, **extra)


@contextlib.contextmanager
def identity_head_pose() -> Iterator[None]:
    """Our head-pose deformation off (the official deformer is the identity stand-in)."""
    import avatar.models.portrait4d.training as training

    with mock.patch.object(training, "_field", lambda model, head_pose, batch: None):
        yield


@contextlib.contextmanager
def official_generators(pairs: dict[int, nn.Module]) -> Iterator[None]:
    """Route our loss's generator calls (``train_forward``, ``sample_density``, ``plane_features``, as the loss
    module imported them) to the official G / G_fix standing for our ones (``pairs``: ``id(ours) -> official``),
    called as the official loss calls them."""
    import train.recipes.portrait4d_loss as ours

    identity = base._IdentityDeformer()

    def train_forward(model: nn.Module, source_image: Tensor, source_motion: Tensor, driving_motion: Tensor,
                      camera: Tensor, neural_rendering_resolution: int | None = None, head_pose: Any = None,
                      motion_scale: Any = None, deterministic: bool = False, box_warp_scale: Any = 1.0,
                      **_: Any) -> dict:  # (our memory options, e.g. gradient_checkpointing, change no number)
        g = pairs[id(model)]
        det = base.deterministic_official_renderer(g.renderer) if deterministic else contextlib.nullcontext()
        with det:
            return g.synthesis(source_image, source_image, source_motion, driving_motion, camera, _deformer=identity,
                               neural_rendering_resolution=neural_rendering_resolution,
                               motion_scale=1.0 if motion_scale is None else motion_scale,
                               box_warp_scale=box_warp_scale)

    def sample_density(model: nn.Module, source_image: Tensor, source_motion: Tensor, driving_motion: Tensor,
                       points: Tensor, head_pose: Any = None, motion_scale: Any = None,
                       directions: Tensor | None = None, **_: Any) -> dict:
        b = source_image.shape[0]
        flame = [torch.zeros(b, n, device=points.device) for n in (300, 100, 6, 6)]
        return pairs[id(model)].sample_mixed(source_image, source_image, source_motion, driving_motion, points,
                                             directions, *flame, motion_scale=1.0 if motion_scale is None else
                                             motion_scale)

    def plane_features(model: nn.Module, planes: Any, points: Tensor, head_pose: Any = None, **_: Any) -> Tensor:
        g = pairs[id(model)]
        return g.renderer.run_model(planes, None, points, torch.zeros_like(points), g.rendering_kwargs)[
            "triplane_feature"]

    with mock.patch.object(ours, "train_forward", train_forward), \
            mock.patch.object(ours, "sample_density", sample_density), \
            mock.patch.object(ours, "plane_features", plane_features):
        yield


class OfficialMotionEncoder(nn.Module):
    """The official ``FanEncoder`` behind our PD-FGC interface (``motion_from_image``: our crop, then
    ``cat(eye, emotion, mouth)`` as upstream's ``get_motion_feature``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def motion_from_image(self, images: Tensor, landmarks: Tensor, reverse_y: bool = False) -> Tensor:
        import avatar.face.geometry as geometry

        out = self.net(geometry.pdfgc_crop(images, landmarks[:, :68], reverse_y=reverse_y))
        return torch.cat([out[1], out[2], out[3]], dim=-1)


@contextlib.contextmanager
def upstream_crop_numerics(off: types.SimpleNamespace) -> Iterator[None]:
    """Our loss's face crops (ArcFace alignment, PD-FGC crop of the motion augmentation) with upstream's
    numerics: similarity fits by ``training/utils/preprocess.py`` (skimage, float64, cast to float32) and
    ``kornia.geometry.warp_affine`` (a float32 sampling grid). Ours fit in float64 with torch and build the
    grid in float64: the same maps to a few ulps (about 1e-8) and the same crops to about 1e-5 (kornia's
    rounding), which is enough to move single values across the kinks behind the crops (the clamp to [-1, 1],
    ArcFace's and PD-FGC's ReLUs): single pixels of dL/d(image_sr) then differ by far more than the rounding,
    and, through the motion augmentation, every input of G slightly. ``--native-crops`` keeps ours."""
    import kornia.geometry

    import avatar.face.geometry as geometry
    import train.recipes.portrait4d_loss as ours

    def alignment(landmarks70: Tensor, image_size: int, size: int = 112) -> Tensor:
        assert size == 112, size
        return off.estimate_norm_torch(landmarks70, image_size)

    def pdfgc_affine(landmarks68: Tensor, image_size: int, reverse_y: bool = False) -> Tensor:
        return off.estimate_norm_torch_pdfgc(landmarks68, image_size, reverse_y=reverse_y)

    with mock.patch.object(ours, "warp_affine", kornia.geometry.warp_affine), \
            mock.patch.object(ours, "flame_alignment_matrices", alignment), \
            mock.patch.object(geometry, "warp_affine", kornia.geometry.warp_affine), \
            mock.patch.object(geometry, "pdfgc_affine", pdfgc_affine):
        yield


@contextlib.contextmanager
def recorded_backward(values: list[float]) -> Iterator[None]:
    """Record the value of every ``Tensor.backward()`` call (the phase's scalar losses times the gain)."""
    original = torch.Tensor.backward

    def backward(self: Tensor, *args: Any, **kwargs: Any) -> Any:
        values.append(float(self.detach().double().sum()))
        return original(self, *args, **kwargs)

    with mock.patch.object(torch.Tensor, "backward", backward):
        yield


class OutputGrads:
    """dL/d(outputs) of every generator forward that builds a graph (``synthesis`` / ``sample_mixed`` upstream,
    ``train_forward`` / ``sample_density`` ours): the gradient the loss sends into G, free of G's own backward
    (whose fp32 rounding differs between the two implementations, see the module docstring)."""

    def __init__(self, enabled: bool = True) -> None:
        self.grads: dict[str, Tensor] = {}
        self.calls = 0
        self.enabled = enabled

    def watch(self, out: dict[str, Any]) -> dict[str, Any]:
        if not (self.enabled and torch.is_grad_enabled()):
            return out
        call = self.calls
        self.calls += 1
        for key, value in out.items():
            t = value[0] if isinstance(value, list) and value else value  # upstream's planes: a list of one
            if isinstance(t, Tensor) and t.requires_grad:
                def hook(g: Tensor, name: str = f"{call}.{key}") -> None:
                    self.grads[name] = self.grads[name] + g.detach() if name in self.grads else g.detach().clone()
                t.register_hook(hook)
        return out

    def wrap(self, fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def wrapped(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return self.watch(fn(*args, **kwargs))
        return wrapped


def _mean(value: Any) -> float:
    return float(value.detach().double().mean()) if isinstance(value, Tensor) else float(value)


@dataclass
class PhaseResult:
    values: list[float] = field(default_factory=list)  # backward values divided by the gain
    terms: dict[str, list[float]] = field(default_factory=dict)
    grads: dict[str, Tensor] = field(default_factory=dict)  # "G.<name>" / "D.<name>"
    out_grads: dict[str, Tensor] = field(default_factory=dict)  # "<call>.<output>": dL/d(G's outputs)
    seconds: float = 0.0
    rng: Tensor | None = None  # the CPU generator's state after the phase: the same draws leave the same state

    @property
    def total(self) -> float | None:
        return sum(self.values) if self.values else None


def _grads(nets: Networks) -> dict[str, Tensor]:
    out = {}
    for prefix, module in (("G", nets.G), ("D", nets.D)):
        for name, p in module.named_parameters():
            if p.grad is not None:
                out[f"{prefix}.{name}"] = p.grad.detach().clone()
    return out


def _zero(nets: Networks) -> None:
    for m in (nets.G, nets.D):
        m.zero_grad(set_to_none=True)


def run_phase(phase: str, nets: Networks, gain: int, seed: int,
              call: Callable[[Callable[[str, Any], None], OutputGrads], None], timing: bool = False,
              sync: Callable[[], None] = lambda: None) -> PhaseResult:
    """One phase as the training loops run it: gradients zeroed, only the phase's module requiring grad,
    the random state seeded; ``call(log, watcher)`` runs the side's loss. ``timing``: nothing recorded (no
    logged values, backward values, output hooks or gradients: no extra device synchronisation)."""
    module = nets.G if phase.startswith("G") else nets.D
    result = PhaseResult()
    _zero(nets)
    module.requires_grad_(True)
    raw: list[float] = []

    def log(name: str, value: Any) -> None:
        if not timing:
            result.terms.setdefault(name, []).append(_mean(value))

    watcher = OutputGrads(enabled=not timing)
    torch.manual_seed(seed)
    sync()
    t = time.perf_counter()
    try:
        with contextlib.nullcontext() if timing else recorded_backward(raw):
            call(log, watcher)
        sync()
    finally:
        module.requires_grad_(False)
    result.seconds = time.perf_counter() - t
    result.rng = torch.random.get_rng_state()
    result.values = [v / gain for v in raw]
    if not timing:
        result.grads = _grads(nets)
        result.out_grads = watcher.grads
    _zero(nets)
    return result


class _Accelerator:
    """What our ``PhaseContext`` uses of an Accelerator (plain backward, no autocast)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    autocast_dtype: torch.dtype | None = None  # timing mode's --our-bf16 (our --mixed-precision bf16)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def our_call(loss: Any, phase: str, rb: Any, gain: int, cur_nimg: float, device: torch.device,
             generators: dict[int, nn.Module] | None = None, crops: types.SimpleNamespace | None = None
             ) -> Callable[[Callable[[str, Any], None], OutputGrads], None]:
    """Our phase; with ``generators`` on the official G / G_fix (:func:`official_generators`); with ``crops``
    (the official modules) with upstream's crop numerics (:func:`upstream_crop_numerics`)."""
    import train.recipes.portrait4d_loss as ours
    from train.core.phases import PhaseContext
    from train.core.state import LoopState

    def call(log: Callable[[str, Any], None], watcher: OutputGrads) -> None:
        ctx = PhaseContext(phase=phase, gain=gain, state=LoopState(cur_nimg=int(cur_nimg)),
                           accelerator=_Accelerator(device), _log=log)  # type: ignore[arg-type]
        with contextlib.ExitStack() as stack:
            stack.enter_context(identity_head_pose())
            if generators is not None:
                stack.enter_context(official_generators(generators))
            if crops is not None:
                stack.enter_context(upstream_crop_numerics(crops))
            stack.enter_context(mock.patch.object(ours, "train_forward", watcher.wrap(ours.train_forward)))
            stack.enter_context(mock.patch.object(ours, "sample_density", watcher.wrap(ours.sample_density)))
            getattr(loss, OUR_PHASES[phase])(rb, ctx)

    return call


def official_call(loss: Any, module: types.ModuleType, phase: str, data: dict[str, Any], gain: int,
                  cur_nimg: float, half_static: bool) -> Callable[[Callable[[str, Any], None], OutputGrads], None]:
    def call(log: Callable[[str, Any], None], watcher: OutputGrads) -> None:
        def report(name: str, value: Any) -> Any:
            log(name, value)
            return value

        G = loss.G
        with mock.patch.object(module.training_stats, "report", report), \
                mock.patch.object(G, "synthesis", watcher.wrap(G.synthesis)), \
                mock.patch.object(G, "sample_mixed", watcher.wrap(G.sample_mixed)):
            loss.accumulate_gradients(phase=phase, gain=gain, cur_nimg=cur_nimg, motion_scale=1.0, swapping_prob=None,
                                      half_static=half_static, **data)

    return call


# ----------------------------------------------------------------------------------------------------------
# comparison


def rel(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    return abs(a - b) / max(abs(b), 1e-30) if a != b else 0.0


def grad_diffs(mine: dict[str, Tensor], ref: dict[str, Tensor]) -> tuple[list[tuple[float, str]], list[str]]:
    """``max |ours - official| / max |official|`` per tensor, worst first, and the tensors with a gradient on
    one side only (each counted as infinitely wrong)."""
    out, one_sided = [], []
    for name in sorted(set(mine) | set(ref)):
        if name not in mine or name not in ref:
            one_sided.append(name)
            out.append((math.inf, name))
            continue
        scale = ref[name].abs().max().item()
        diff = (mine[name] - ref[name]).abs().max().item()
        out.append(((0.0 if diff == 0 else math.inf) if scale == 0 else diff / scale, name))
    out.sort(key=lambda x: -x[0])
    return out, one_sided


@dataclass
class GradCheck:
    """One group of gradients (the loss's dL/d(G outputs), G's parameters, D's parameters)."""

    diffs: list[tuple[float, str]]
    one_sided: list[str]

    @property
    def worst(self) -> float:
        return self.diffs[0][0] if self.diffs else 0.0

    @property
    def name(self) -> str:
        return self.diffs[0][1] if self.diffs else "-"

    def cell(self) -> str:
        return f"{self.worst:9.2e}" if self.diffs else f"{'-':>9s}"


@dataclass
class Side:
    """One of our runs of a phase against the official run."""

    value: float | None
    value_rel: float
    backward_passes: int
    out: GradCheck
    g: GradCheck
    d: GradCheck
    seconds: float
    terms: dict[str, float]
    same_draws: bool  # the random generator ends the phase in the official run's state


def _terms(res: PhaseResult) -> dict[str, float]:
    return {k: statistics.fmean(v) for k, v in res.terms.items()}


def side(res: PhaseResult, ref: PhaseResult) -> Side:
    def split(r: PhaseResult, prefix: str) -> dict[str, Tensor]:
        return {k: v for k, v in r.grads.items() if k.startswith(prefix)}

    return Side(res.total, rel(res.total, ref.total), len(res.values),
                GradCheck(*grad_diffs(res.out_grads, ref.out_grads)),
                GradCheck(*grad_diffs(split(res, "G."), split(ref, "G."))),
                GradCheck(*grad_diffs(split(res, "D."), split(ref, "D."))), res.seconds, _terms(res),
                res.rng is not None and ref.rng is not None and torch.equal(res.rng, ref.rng))


@dataclass
class Row:
    case: str
    phase: str
    official: float | None
    official_passes: int
    official_seconds: float
    official_terms: dict[str, float]
    ours: Side  # our loss on our generators
    loss_only: Side | None  # our loss on the official generators
    floor: GradCheck | None = None


def compare_case(case: str, off: types.SimpleNamespace, official: Networks, ours: Networks, renderer: nn.Module,
                 args: argparse.Namespace) -> list[Row]:
    from avatar.nn.attention import set_sdpa

    recipe_name = "v2" if case == "v2" else "v1"
    cur_nimg = OFFICIAL_CUR_KIMG[case] * 1e3
    device = torch.device("cpu")
    off_loss = official_loss(off, recipe_name, official, args.nr, device)
    my_loss = our_loss(recipe_name, ours, renderer, args.nr, args.gradient_checkpointing)
    nr = my_loss.resolution(cur_nimg)
    case_index = list(OFFICIAL_CUR_KIMG).index(case)
    rb = my_loss.prepare(make_batch(recipe_name, args.batch, nr, args.seed + 10 + case_index))
    data = official_arguments(rb)
    rec = my_loss.recipe
    gains = {"Gmain": 1, "Greg": rec.g_reg_interval, "Dmain": 1, "Dreg": D_REG_INTERVAL}
    # our loss code on the official networks: every difference is then the losses' own
    pairs = {id(ours.G): official.G, id(ours.G_fix): official.G_fix}
    motion = OfficialMotionEncoder(official.pdfgc)
    hybrid = Networks(official.G, official.D, official.G_fix, official.lpips, official.arcface, motion)
    hyb_loss = our_loss(recipe_name, Networks(ours.G, official.D, ours.G_fix, official.lpips, official.arcface, motion),
                        renderer, args.nr, args.gradient_checkpointing)
    crops = None if args.native_crops else off
    print(f"\n== {case}: cur_nimg {cur_nimg / 1e3:g} kimg, rendering resolution {nr}, batch {args.batch}, gains "
          f"{gains}; adversarial {'on' if my_loss.adversarial(cur_nimg) else 'off'}, identity loss "
          f"{'on' if cur_nimg >= rec.id_start_kimg * 1e3 else 'off'}", flush=True)
    rows = []
    module = off.loss[recipe_name]
    for i, phase in enumerate(PHASES):
        if args.phases and phase not in args.phases:
            continue
        seed = args.seed * 1000 + 100 * case_index + i
        gain = gains[phase]
        res_off = run_phase(phase, official, gain, seed,
                            official_call(off_loss, module, phase, data, gain, cur_nimg, recipe_name == "v1"))
        res_mine = run_phase(phase, ours, gain, seed, our_call(my_loss, phase, rb, gain, cur_nimg, device))
        row = Row(case, phase, res_off.total, len(res_off.values), res_off.seconds, _terms(res_off),
                  side(res_mine, res_off), None)
        if "loss-only" in args.modes:
            res_hyb = run_phase(phase, hybrid, gain, seed,
                                our_call(hyb_loss, phase, rb, gain, cur_nimg, device, pairs, crops=crops))
            row.loss_only = side(res_hyb, res_off)
            del res_hyb
        if args.noise_floor and phase.startswith("G") and res_mine.grads:
            # the same phase of ours with the other attention kernel: fp32 rounding of G's backward alone
            set_sdpa(ours.G, not args.sdpa)
            set_sdpa(ours.G_fix, not args.sdpa)
            res_alt = run_phase(phase, ours, gain, seed, our_call(my_loss, phase, rb, gain, cur_nimg, device))
            set_sdpa(ours.G, args.sdpa)
            set_sdpa(ours.G_fix, args.sdpa)
            row.floor = GradCheck(*grad_diffs({k: v for k, v in res_alt.grads.items() if k.startswith("G.")},
                                              {k: v for k, v in res_mine.grads.items() if k.startswith("G.")}))
            del res_alt
        print(f"  {phase}: official {_fmt(row.official)} ({row.official_seconds:.0f} s)", flush=True)
        for label, sd in (("ours", row.ours), ("our loss on the official G", row.loss_only)):
            if sd is None:
                continue
            print(f"    {label}: {_fmt(sd.value)} ({sd.seconds:.0f} s), relative difference {sd.value_rel:.2e}, random "
                  f"state after the phase {'the same' if sd.same_draws else 'DIFFERENT'}; worst "
                  f"relative gradient difference: dL/d(G outputs) {sd.out.worst:.2e} ({sd.out.name}), G "
                  f"{sd.g.worst:.2e} ({sd.g.name}), D {sd.d.worst:.2e} ({sd.d.name})", flush=True)
            for what, check in (("dL/d(G outputs)", sd.out), ("G parameters", sd.g), ("D parameters", sd.d)):
                if args.show_grads and check.diffs:
                    print(f"      {what}, {len(check.diffs)} tensors, worst {args.show_grads}: " + ", ".join(
                        f"{n} {r:.2e}" for r, n in check.diffs[:args.show_grads]))
        if row.floor is not None:
            print(f"    noise floor (ours, SDPA vs explicit attention): G parameters {row.floor.worst:.2e} "
                  f"({row.floor.name})")
        rows.append(row)
        del res_off, res_mine
    return rows


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.9g}"


def _draws(sd: Side) -> str:
    return f"{'same' if sd.same_draws else 'diff':>5s}"


def _check(failures: list[str], where: str, sd: Side, official_passes: int, tol: float,
           limits: dict[str, float]) -> None:
    if not sd.value_rel <= tol:
        failures.append(f"{where}: values differ by {sd.value_rel:.3e} (relative)")
    if sd.backward_passes != official_passes:
        failures.append(f"{where}: {sd.backward_passes} backward passes, official {official_passes}")
    for label, check in (("dL/d(G outputs)", sd.out), ("G", sd.g), ("D", sd.d)):
        if check.one_sided:
            failures.append(f"{where}: {label} gradient on one side only: {', '.join(check.one_sided[:4])}")
        elif label in limits and not check.worst <= limits[label]:
            failures.append(f"{where}: {label} gradient of {check.name} differs by {check.worst:.3e} (relative)")


def print_table(rows: list[Row], args: argparse.Namespace) -> list[str]:
    failures: list[str] = []
    print("\nours = our loss with our G (end to end): G gradients carry the fp32 rounding of the two generators' "
          "backward passes")
    print(f"{'case':9s} {'phase':6s} {'ours':>16s} {'official':>16s} {'rel diff':>9s} {'G grad':>9s} {'D grad':>9s}"
          f" {'draws':>5s}  worst G / D tensor")
    for r in rows:
        o = r.ours
        print(f"{r.case:9s} {r.phase:6s} {_fmt(o.value):>16s} {_fmt(r.official):>16s} {o.value_rel:9.2e} "
              f"{o.g.cell()} {o.d.cell()} {_draws(o)}  {o.g.name} / {o.d.name}")
        _check(failures, f"{r.case} {r.phase} (ours)", o, r.official_passes, args.tol,
               {"G": args.g_grad_tol, "D": args.grad_tol})
    if any(r.loss_only for r in rows):
        print("\nour loss on the official G / G_fix (the same generator arithmetic on both sides): the losses alone")
        print(f"{'case':9s} {'phase':6s} {'ours':>16s} {'official':>16s} {'rel diff':>9s} {'dL/dGout':>9s} "
              f"{'G grad':>9s} {'D grad':>9s} {'draws':>5s}  worst G / D tensor")
        for r in rows:
            h = r.loss_only
            if h is None:
                continue
            print(f"{r.case:9s} {r.phase:6s} {_fmt(h.value):>16s} {_fmt(r.official):>16s} {h.value_rel:9.2e} "
                  f"{h.out.cell()} {h.g.cell()} {h.d.cell()} {_draws(h)}  {h.g.name} / {h.d.name}")
            _check(failures, f"{r.case} {r.phase} (loss only)", h, r.official_passes, args.tol,
                   {"dL/d(G outputs)": args.grad_tol, "G": args.grad_tol, "D": args.grad_tol})
    print("(draws: whether the random generator ends the phase in the same state as in the official run, i.e. the "
          "same number of draws; ours skips v2's motion augmentation in Dreg, where upstream renders G_fix for "
          "nothing, so there it differs by design)")
    floors = [r for r in rows if r.floor is not None]
    if floors:
        print("\nfp32 noise floor of G's gradients (ours with SDPA vs explicit-softmax attention, same seed):")
        for r in floors:
            assert r.floor is not None
            print(f"{r.case:9s} {r.phase:6s} {r.floor.worst:9.2e} ({r.floor.name})")
    print(f"\nlogged terms (mean over the batch, as training_stats averages them; {', '.join(SIGN_TERMS)}* not "
          "checked)")
    print(f"{'case':9s} {'phase':6s} {'term':28s} {'ours':>16s} {'official':>16s} {'rel diff':>9s} "
          f"{'loss only':>16s} {'rel diff':>9s}")
    for r in rows:
        for name in sorted(set(r.ours.terms) | set(r.official_terms) | set(r.loss_only.terms if r.loss_only else {})):
            b = r.official_terms.get(name, math.nan)
            line = f"{r.case:9s} {r.phase:6s} {name:28s}"
            for sd, label in ((r.ours, "ours"), (r.loss_only, "loss only")):
                if sd is None:
                    continue
                a = sd.terms.get(name, math.nan)
                d = rel(a, b) if not (math.isnan(a) or math.isnan(b)) else math.inf
                line += f" {a:16.9g}" + (f" {b:16.9g}" if label == "ours" else "") + f" {d:9.2e}"
                if not name.startswith(SIGN_TERMS) and not d <= args.tol:
                    failures.append(f"{r.case} {r.phase} ({label}): logged {name} differs by {d:.3e} (relative)")
            print(line)
    return failures


# ----------------------------------------------------------------------------------------------------------
# timing


def time_side(label: str, nets: Networks, calls: dict[str, Callable], gains: dict[str, int], steps: int,
              sync: Callable[[], None]) -> dict[str, float]:
    """Median seconds per phase over ``steps`` rounds (after one warm-up round)."""
    times: dict[str, list[float]] = {p: [] for p in calls}
    for step in range(steps + 1):
        for i, (phase, call) in enumerate(calls.items()):
            res = run_phase(phase, nets, gains[phase], 1000 + 10 * step + i, call, timing=True, sync=sync)
            if step:
                times[phase].append(res.seconds)
    med = {p: statistics.median(v) for p, v in times.items()}
    print(f"  {label}: " + ", ".join(f"{p} {1e3 * s:.1f} ms" for p, s in med.items()), flush=True)
    return med


def run_timing(off: types.SimpleNamespace, official: Networks, ours: Networks, renderer: nn.Module,
               args: argparse.Namespace, device: torch.device) -> int:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    built = base.official_cuda_ops(device)
    # the official loops turn TF32 off (so do our recipes: `tf32=False`)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    print(f"\ntiming on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"{args.time_steps} rounds after a warm-up, optimizer steps excluded on both sides")
    for case in args.cases:
        recipe_name = "v2" if case == "v2" else "v1"
        cur_nimg = OFFICIAL_CUR_KIMG[case] * 1e3
        nr0 = args.nr or (128 if recipe_name == "v2" else 64)
        off_loss = official_loss(off, recipe_name, official, nr0, device)
        my_loss = our_loss(recipe_name, ours, renderer, nr0, args.gradient_checkpointing)
        nr = my_loss.resolution(cur_nimg)
        batch = {k: v.to(device) for k, v in make_batch(recipe_name, args.batch, nr, args.seed + 10).items()}
        rb = my_loss.prepare(batch)
        data = official_arguments(rb)
        gains = {"Gmain": 1, "Greg": my_loss.recipe.g_reg_interval, "Dmain": 1, "Dreg": D_REG_INTERVAL}
        phases = [p for p in PHASES if not args.phases or p in args.phases]
        print(f"== {case}: cur_nimg {cur_nimg / 1e3:g} kimg, rendering resolution {nr}, batch {args.batch}")
        module = off.loss[recipe_name]
        med_off = time_side("official", official, {p: official_call(off_loss, module, p, data, gains[p], cur_nimg,
                                                                    recipe_name == "v1") for p in phases},
                            gains, args.time_steps, sync)
        med_mine = time_side("ours", ours, {p: our_call(my_loss, p, rb, gains[p], cur_nimg, device) for p in phases},
                             gains, args.time_steps, sync)
        print(f"  {'':14s} {'ours ms':>10s} {'official ms':>12s} {'ours/official':>14s}")
        for p in phases:
            print(f"  {p:14s} {1e3 * med_mine[p]:10.1f} {1e3 * med_off[p]:12.1f} {med_mine[p] / med_off[p]:14.3f}")
        full = (sum(med_mine.values()), sum(med_off.values()))
        amort = tuple(sum(m[p] / gains[p] for p in phases) for m in (med_mine, med_off))
        lazy = ", ".join(f"{p} / {gains[p]}" for p in phases if gains[p] > 1)
        print(f"  {'full step':14s} {1e3 * full[0]:10.1f} {1e3 * full[1]:12.1f} {full[0] / full[1]:14.3f}"
              f"   ({' + '.join(phases)})")
        print(f"  {'amortised step':14s} {1e3 * amort[0]:10.1f} {1e3 * amort[1]:12.1f} {amort[0] / amort[1]:14.3f}"
              f"   ({lazy or 'no lazy phase'})")
    if device.type == "cuda":
        print(f"official CUDA extensions built: {built} (a False means upstream ran its slower reference ops)")
    return 0


# ----------------------------------------------------------------------------------------------------------
# training curves


def curve_optimizers(nets: Networks, recipe: Any) -> dict[str, torch.optim.Optimizer]:
    """G's and D's Adam as the official loops build them: lazy-regularisation correction, names containing
    ``bn`` left out, G's cross-attention group at ``cross_lr_scale`` (the same rule serves both sides: our G
    keeps the official parameter names)."""
    from train.core.optim import AdamConfig, ParamGroupRule, build_adam
    from train.recipes.portrait4d_setup import is_cross_attention

    def no_bn(name: str) -> bool:
        return "bn" in name

    cross = (ParamGroupRule("G_cross", is_cross_attention, recipe.cross_lr_scale),)
    return {"G": build_adam(nets.G, AdamConfig(recipe.g_lr, recipe.betas, recipe.eps),
                            reg_interval=recipe.g_reg_interval, groups=cross, exclude=no_bn),
            "D": build_adam(nets.D, AdamConfig(recipe.d_lr, recipe.betas, recipe.eps),
                            reg_interval=recipe.d_reg_interval, exclude=no_bn)}


def train_phase(phase: str, nets: Networks, opt: torch.optim.Optimizer, seed: int,
                call: Callable[[Callable[[str, Any], None], OutputGrads], None]) -> dict[str, float]:
    """One phase and its optimizer step as the official loop runs them: gradients zeroed, only the phase's
    module requiring grad, the random state seeded (the same on both sides), gradients through
    ``nan_to_num(nan=0, posinf=1e5, neginf=-1e5)``, ``opt.step()``. Returns the logged terms (means)."""
    module = nets.G if phase.startswith("G") else nets.D
    terms: dict[str, float] = {}
    opt.zero_grad(set_to_none=True)
    module.requires_grad_(True)
    torch.manual_seed(seed)
    try:
        call(lambda name, value: terms.__setitem__(name, _mean(value)), OutputGrads(enabled=False))
    finally:
        module.requires_grad_(False)
    params = [p for p in module.parameters() if p.numel() > 0 and p.grad is not None]
    for p in params:
        p.grad.nan_to_num_(nan=0.0, posinf=1e5, neginf=-1e5)
    opt.step()
    return terms


def run_curves(off: types.SimpleNamespace, official: Networks, ours: Networks, renderer: nn.Module,
               args: argparse.Namespace, device: torch.device) -> int:
    """``--curve-steps N``: N training steps of each side from the same weights on the same batches (a new
    :func:`make_batch` per step), the phases at their lazy intervals, each with the same seed on both sides.
    Writes every logged term per step and side to ``--curve-out`` (JSON; ``--plot`` draws it) and prints how far
    the curves and the final weights drift apart."""
    import json

    case = args.cases[0]
    recipe_name = "v2" if case == "v2" else "v1"
    nr = args.nr or (128 if recipe_name == "v2" else 64)
    start_nimg = OFFICIAL_CUR_KIMG[case] * 1e3
    off_loss = official_loss(off, recipe_name, official, nr, device)
    my_loss = our_loss(recipe_name, ours, renderer, nr, args.gradient_checkpointing)
    recipe = my_loss.recipe
    opts = {"official": curve_optimizers(official, recipe), "ours": curve_optimizers(ours, recipe)}
    intervals = {"Gmain": 1, "Greg": recipe.g_reg_interval, "Dmain": 1, "Dreg": D_REG_INTERVAL}
    module = off.loss[recipe_name]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"official CUDA extensions built: {base.official_cuda_ops(device)}", flush=True)
    log: dict[str, list[dict[str, Any]]] = {"official": [], "ours": []}
    seconds = {"official": 0.0, "ours": 0.0}
    meta = {"case": case, "steps": args.curve_steps, "batch": args.batch, "nr": nr, "device": str(device),
            "g_size": args.g_size, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else "CPU"}
    print(f"== curves, {case}: {args.curve_steps} steps from {start_nimg / 1e3:g} kimg, batch {args.batch}, "
          f"rendering resolution {nr}, on {device}", flush=True)
    for step in range(args.curve_steps):
        cur_nimg = start_nimg + step * args.batch
        batch = {k: v.to(device) for k, v in make_batch(recipe_name, args.batch, nr, args.seed + 100 + step).items()}
        rb = my_loss.prepare(batch)
        data = official_arguments(rb)
        rows = {side: {"step": step} for side in log}
        for i, phase in enumerate(PHASES):
            if step % intervals[phase]:
                continue
            gain, seed = intervals[phase], 10_000 + 10 * step + i
            calls = {"official": official_call(off_loss, module, phase, data, gain, cur_nimg, recipe_name == "v1"),
                     "ours": our_call(my_loss, phase, rb, gain, cur_nimg, device)}
            for side, nets in (("official", official), ("ours", ours)):
                sync()
                t = time.perf_counter()
                terms = train_phase(phase, nets, opts[side][phase[0]], seed, calls[side])
                sync()
                seconds[side] += time.perf_counter() - t
                rows[side].update(terms)
        for side in log:
            log[side].append(rows[side])
        if step % max(1, args.curve_steps // 10) == 0 or step == args.curve_steps - 1:
            a, b = rows["official"].get("Loss/G/loss"), rows["ours"].get("Loss/G/loss")
            print(f"  step {step:4d}: Loss/G/loss official {a:.6f} ours {b:.6f} (rel {rel(b, a):.2e}); "
                  f"{seconds['official']:.0f} s / {seconds['ours']:.0f} s so far", flush=True)
            if args.curve_out is not None:  # what is done so far survives a stopped run
                args.curve_out.write_text(json.dumps({"meta": {**meta, "steps": step + 1, "seconds": seconds},
                                                      **log}))

    # how far apart: per term, the relative difference at each step; the weights at the end
    terms = sorted({k for r in log["official"] for k in r if k != "step" and not k.startswith(SIGN_TERMS)})
    print(f"\n  {'term':34s} {'steps':>6s} {'median rel':>11s} {'max rel':>10s} {'last rel':>10s}")
    for term in terms:
        pairs = [(o[term], m[term]) for o, m in zip(log["official"], log["ours"], strict=True) if term in o and term in m]
        rels = [rel(b, a) for a, b in pairs]
        if rels:
            print(f"  {term:34s} {len(rels):6d} {statistics.median(rels):11.2e} {max(rels):10.2e} {rels[-1]:10.2e}")
    from avatar.models.portrait4d import Portrait4D

    off_as_ours = Portrait4D.from_official(official.G.state_dict(), config=ours.G.config)
    drift = {}
    for prefix, a, b in (("G", off_as_ours, ours.G), ("D", official.D, ours.D)):
        sa, sb = a.state_dict(), b.state_dict()
        worst = max(((x - sb[k].to(x.device)).abs().max() / x.abs().max().clamp_min(1e-12)).item()
                    for k, x in sa.items() if x.is_floating_point() and x.numel())
        drift[prefix] = worst
    print(f"  weights after {args.curve_steps} steps: worst relative difference G {drift['G']:.2e}, "
          f"D {drift['D']:.2e}")
    print(f"  time: official {seconds['official']:.1f} s, ours {seconds['ours']:.1f} s "
          f"(ours / official {seconds['ours'] / seconds['official']:.3f}; per-term logging on both sides)")
    if args.curve_out is not None:
        meta.update(seconds=seconds, weight_drift=drift)
        args.curve_out.write_text(json.dumps({"meta": meta, **log}, indent=1))
        print(f"  wrote {args.curve_out}")
    return 0


def plot_curves(path: Path, out: Path, terms: tuple[str, ...] = (
        "Loss/G/loss", "Loss/G/lrecon_lpips", "Loss/G/lrecon_l1", "Loss/G/Regloss_G_fix_img", "Loss/D/loss",
        "Loss/r1_penalty")) -> Path:
    """The JSON of :func:`run_curves` -> one panel per term, official and ours on the same axes."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    present = [t for t in terms if any(t in r for r in data["official"])]
    fig, axes = plt.subplots(1, len(present), figsize=(3.6 * len(present), 3.2), squeeze=False)
    for ax, term in zip(axes[0], present, strict=True):
        for side, style in (("official", dict(color="black", lw=2.4, alpha=0.45)),
                            ("ours", dict(color="tab:red", lw=0.9, ls="--"))):
            pts = [(r["step"], r[term]) for r in data[side] if term in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=side, **style)
        ax.set_title(term.replace("Loss/", ""), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=8)
    m = data["meta"]
    fig.suptitle(f"Portrait4D {m['case']} training from the same random weights: official loss vs ours "
                 f"(batch {m['batch']}, NR {m['nr']}, G {m['g_size']}, {m['device_name']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="a YuDeng/Portrait-4D checkout (its root or portrait4d/)")
    parser.add_argument("--extra-path", action="append", default=[],
                        help="extra sys.path entry (a pip --target folder with the official code's dependencies)")
    parser.add_argument("--cases", nargs="+", default=["v2", "v1"], choices=["v2", "v1", "v1-early"],
                        help="v2 at 10000 kimg, v1 at 1500 kimg, v1-early at 0 kimg")
    parser.add_argument("--v1-early", action="store_true", help="add the v1-early case")
    parser.add_argument("--phases", nargs="*", default=[], choices=list(PHASES), help="only these phases")
    parser.add_argument("--batch", type=int, default=2, help="batch size (even: half-static, minibatch-std)")
    parser.add_argument("--nr", type=int, default=16,
                        help="neural rendering resolution: v2's, and v1's initial one (v1 fades to twice it; the "
                             "official 128 / 64 -> 128 cost minutes more on CPU)")
    parser.add_argument("--g-size", choices=["tiny", "full"], default="tiny", help="generator init_kwargs (see above)")
    parser.add_argument("--d-channel-base", type=int, default=2048, help="discriminator channel_base (official 32768)")
    parser.add_argument("--d-channel-max", type=int, default=64, help="discriminator channel_max (official 512)")
    parser.add_argument("--sdpa", action="store_true",
                        help="keep our fused SDPA attention (default: our explicit-softmax path, upstream's arithmetic)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="our loss with Portrait4DLoss(gradient_checkpointing=True) (recomputed activations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-5, help="relative tolerance of the loss values")
    parser.add_argument("--grad-tol", type=float, default=1e-4,
                        help="max abs gradient difference relative to the tensor's largest official gradient, of "
                             "dL/d(G outputs) and of D's parameters")
    parser.add_argument("--g-grad-tol", type=float, default=1e-2,
                        help="the same for G's parameters with our loss on our G (end to end): they carry the fp32 "
                             "rounding of the two generators' backward passes (see --noise-floor)")
    parser.add_argument("--modes", nargs="+", default=["ours", "loss-only"], choices=["ours", "loss-only"],
                        help="'ours' (always run): our loss on our G; 'loss-only': our loss on the official G")
    parser.add_argument("--native-crops", action="store_true",
                        help="loss-only run: keep our float64 similarity fits and warp grid in the ArcFace / PD-FGC "
                             "crops (default: upstream's skimage fits and kornia warp; see upstream_crop_numerics)")
    parser.add_argument("--noise-floor", action="store_true",
                        help="rerun our G phases with the other attention kernel: the fp32 noise floor of G's "
                             "gradients")
    parser.add_argument("--show-grads", type=int, default=0, metavar="N", help="list the N worst tensors per group")
    parser.add_argument("--time-steps", type=int, default=0, help="timing mode: rounds of the four phases per side")
    parser.add_argument("--device", default="cpu", help="device of the timing mode (the comparison runs on CPU)")
    parser.add_argument("--our-bf16", action="store_true",
                        help="timing mode: our side under bf16 autocast (train/portrait4d.py --mixed-precision bf16); "
                             "the official side stays in its fp32")
    parser.add_argument("--curve-steps", type=int, default=0,
                        help="curves mode: train each side this many steps from the same weights (first case only)")
    parser.add_argument("--curve-out", type=Path, default=None, help="curves mode: write the logged terms (JSON)")
    parser.add_argument("--plot", nargs=2, type=Path, metavar=("JSON", "PNG"),
                        help="draw a curves JSON (--curve-out) as a PNG and exit (no checkout needed)")
    parser.add_argument("--size", choices=["tiny", "full"], default=None,
                        help="timing mode: 'full' = the official G and D sizes, rendering resolution 128 (v2) / "
                             "64 (v1); 'tiny' = the comparison's sizes")
    args = parser.parse_args(argv)
    if args.plot:
        print(f"wrote {plot_curves(*args.plot)}")
        return 0
    if args.official is None:
        print("no official checkout given (--official PATH): comparison skipped")
        return 2
    root = find_checkout(args.official.expanduser().resolve())
    if root is None:
        print(f"{args.official} is not a Portrait-4D checkout (no portrait4d/training/loss/loss_recon_v2.py): "
              "comparison skipped")
        return 2
    if args.v1_early and "v1-early" not in args.cases:
        args.cases.append("v1-early")
    if args.size == "full":
        args.g_size, args.d_channel_base, args.d_channel_max = "full", 32768, 512
        if args.nr == parser.get_default("nr"):
            args.nr = 0  # per case: the official 128 (v2) / 64 (v1)
    for p in args.extra_path:
        sys.path.insert(0, p)
    off = import_official(root)

    from avatar.flame.correspondence import FlameCorrespondenceRenderer

    renderer = FlameCorrespondenceRenderer.from_assets(**face_like_flame_assets(args.seed)).eval()
    official, ours = build_networks(off, args, renderer)

    if args.curve_steps:
        device = torch.device(args.device)
        official, ours = to_device(official, device), to_device(ours, device)
        return run_curves(off, official, ours, renderer.to(device), args, device)
    if args.time_steps:
        if args.our_bf16:
            _Accelerator.autocast_dtype = torch.bfloat16
            print("our side under bf16 autocast; the official side in fp32")
        device = torch.device(args.device)
        official, ours = to_device(official, device), to_device(ours, device)
        return run_timing(off, official, ours, renderer.to(device), args, device)

    t = time.perf_counter()
    rows = []
    for case in args.cases:
        rows += compare_case(case, off, official, ours, renderer, args)
    failures = print_table(rows, args)

    def worst(values: Iterator[float]) -> float:
        return max(values, default=0.0)

    sides = [s for r in rows for s in (r.ours, r.loss_only) if s is not None]
    hybrid = [r.loss_only for r in rows if r.loss_only is not None]
    print(f"\ntotal {time.perf_counter() - t:.0f} s; worst relative difference: values "
          f"{worst(s.value_rel for s in sides):.3e} (tolerance {args.tol:g}); our loss on the official G: "
          f"dL/d(G outputs) {worst(h.out.worst for h in hybrid):.3e}, G gradients {worst(h.g.worst for h in hybrid):.3e}, "
          f"D gradients {worst(h.d.worst for h in hybrid):.3e} (tolerance {args.grad_tol:g}); ours end to end: D "
          f"gradients {worst(r.ours.d.worst for r in rows):.3e} (tolerance {args.grad_tol:g}), G gradients "
          f"{worst(r.ours.g.worst for r in rows):.3e} (tolerance {args.g_grad_tol:g})")
    for f in failures:
        print("FAIL:", f)
    ok = not failures
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
