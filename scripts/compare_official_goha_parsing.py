"""Side-by-side check of GOHA's face parser and masks against the official code, on CPU, random weights.

    pip install --no-deps --target /tmp/kornia055 kornia==0.5.5      # GOHA's install.sh pins kornia 0.5.5
    python scripts/compare_official_goha_parsing.py --official /path/to/GOHA --kornia-path /tmp/kornia055

``--official`` is a checkout (or ``git archive`` extract) of NVlabs/GOHA holding ``src/``. What it does:

1. builds the official ``models.BiSeNet.BiSeNet(n_classes=19)`` with ``torch.utils.model_zoo.load_url`` stubbed
   (the official ResNet-18 init would download torchvision weights), perturbs every weight and BatchNorm
   statistic, copies its ``state_dict`` strictly into :class:`avatar.models.goha.parsing.BiSeNet` and compares
   all three outputs on the same random images (eval mode, float32);
2. imports the official ``models/model_s2.py`` (its SegFormer, renderer, 3DMM, GFPGAN imports are stubbed; kornia
   is the real one) and calls its ``Model.get_parsing_mask`` on a minimal object, once with the random BiSeNet
   and once with a stand-in parser that returns smooth random logits biased towards the masked classes (random
   weights give boring label maps); our :func:`parsing_mask` must give the identical mask;
3. calls the official ``Model.get_apperance_plane`` with its renderer/id-net/upsampler stubbed, records what
   ``kornia.morphology.erosion`` returns there and the id-net input, and compares them with
   :func:`appearance_blend_mask` (and the blend written out by hand);
4. compares :func:`dilate`/:func:`erode` with kornia's ``dilation``/``erosion`` (ones kernels of several sizes,
   float and integer inputs, content touching the image borders).

Exit status 0 when every difference is below ``--tol`` (1e-5; the masks and morphology must be exactly equal),
1 otherwise, 2 when the checkout or kornia is missing.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from compare_official_portrait4d import _stub  # noqa: E402  (one module stub for every comparison script)

from avatar.models.goha.parsing import (  # noqa: E402
    BiSeNet,
    appearance_blend_mask,
    dilate,
    erode,
    normalize_for_parsing,
    parsing_mask,
)


def import_official(checkout: Path) -> tuple[type, type]:
    """(official BiSeNet class, official model_s2.Model class) with unneeded imports stubbed."""
    src = checkout / "src"
    if not (src / "models" / "BiSeNet.py").is_file() or not (src / "models" / "model_s2.py").is_file():
        raise SystemExit(f"{checkout} is not a GOHA checkout (src/models/BiSeNet.py or model_s2.py missing)")
    sys.path.insert(0, str(src))
    # model_s2 imports these at module level; the methods compared here never touch them
    _stub("transformers", SegformerForSemanticSegmentation=object)
    _stub("losses")
    _stub("losses.threeDMM", ExpLoss=object)
    _stub("GFPGAN")
    _stub("GFPGAN.GFPUpsampler", GFPUpsampler=object)
    _stub("models.networks", OSGDecoder=object, Embed2Plane=object, IDUpsampler=object)
    _stub("models.volumetric_rendering")
    _stub("models.volumetric_rendering.renderer", ImportanceRenderer=object)
    _stub("models.volumetric_rendering.ray_sampler", RaySampler=object)
    from models.BiSeNet import BiSeNet as OfficialBiSeNet  # type: ignore[import-not-found]
    from models.model_s2 import Model  # type: ignore[import-not-found]

    return OfficialBiSeNet, Model


@torch.no_grad()
def perturb_(net: torch.nn.Module, gen: torch.Generator) -> None:
    """Random weights where every tensor matters: conv weights He-scaled, BN affine and stats non-trivial."""
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        elif isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.weight.copy_(0.5 + torch.rand(c, generator=gen))
            module.bias.copy_(0.1 * torch.randn(c, generator=gen))
            module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            module.num_batches_tracked.fill_(1234)


def smooth_logits(b: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """Blobby 19-class logits: low-res noise upsampled, biased towards background/skin and the dropped classes."""
    low = torch.randn(b, 19, max(h // 32, 2), max(w // 32, 2), generator=gen)
    bias = torch.zeros(19)
    bias[[0, 1]] = 0.8  # original indexing: background and skin, so that the masked classes are islands
    bias[[6, 18]] = 1.0  # eyeglasses and hat would often win if they were not dropped
    low = low + bias.view(1, -1, 1, 1)
    return F.interpolate(low, (h, w), mode="bilinear", align_corners=False)


class _LogitNet:
    """Stand-in parser returning fixed logits (whatever the image)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.logits[: x.shape[0]]]


def official_mask(model_cls: type, net: object, img: torch.Tensor) -> torch.Tensor:
    from torchvision import transforms

    fake = types.SimpleNamespace(
        face_parsing_net=net,
        face_parsing_normalize=transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    )
    return model_cls.get_parsing_mask(fake, img)


def check_appearance(model_cls: type, logits: torch.Tensor, img: torch.Tensor, gen: torch.Generator,
                     report: dict[str, float]) -> None:
    """Run the official get_apperance_plane with stubs; compare its eroded mask and id-net input with ours."""
    import models.model_s2 as official_module  # type: ignore[import-not-found]
    from torchvision import transforms

    b, _, h, w = img.shape
    res = h  # render at the image size, so the official bilinear resize of the render is the identity
    feature = torch.randn(b, res * res, 32, generator=gen).clamp(-1, 1)
    depth = torch.rand(b, res * res, 1, generator=gen)
    parser = _LogitNet(logits)
    seen: dict[str, torch.Tensor] = {}

    def get_parsing_mask(x: torch.Tensor) -> torch.Tensor:
        seen.setdefault("cano_render", x.clone())
        return model_cls.get_parsing_mask(fake, x)

    real_erosion = official_module.morph.erosion

    def erosion(t: torch.Tensor, kernel: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen["kernel"] = kernel.clone()
        seen["eroded"] = real_erosion(t, kernel, *args, **kwargs)
        return seen["eroded"]

    def id_net(**inputs: torch.Tensor) -> types.SimpleNamespace:
        seen["pixel_values"] = inputs["pixel_values"].clone()
        return types.SimpleNamespace(logits=torch.zeros(b, 1, 1, 1))

    fake = types.SimpleNamespace(
        face_parsing_net=parser,
        face_parsing_normalize=transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ray_sampler=lambda *a: (None, None),
        renderer=lambda *a: (feature, depth, None),
        decoder=None,
        rendering_kwargs={},
        cano_render_resolution=res,
        depth2pcd=lambda *a: None,
        construct_planes=lambda *a: None,
        id_upsampler=lambda x: x,
        id_net=id_net,
        image_mean=torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        image_std=torch.tensor([[0.229, 0.224, 0.225]]).view(1, 3, 1, 1),
    )
    fake.get_parsing_mask = get_parsing_mask
    # the source keep-mask as the official forward makes it: 1 - mask of the source (long)
    src_mask = 1 - official_mask(model_cls, _LogitNet(logits.flip(0)), img)
    with mock.patch.object(official_module.morph, "erosion", erosion):
        model_cls.get_apperance_plane(fake, img, None, None, None, src_mask)

    assert torch.equal(seen["kernel"], torch.ones(7, 7)), "the official erosion kernel is not 7x7 ones"
    cano_render = seen["cano_render"]
    ours = appearance_blend_mask(parsing_mask(lambda x: logits[: x.shape[0]], cano_render), src_mask)
    report["appearance eroded mask"] = (ours - seen["eroded"]).abs().max().item()
    report["appearance eroded mask dtype/shape"] = float(ours.dtype != seen["eroded"].dtype
                                                         or ours.shape != seen["eroded"].shape)
    cano_n, src_n = normalize_for_parsing(cano_render), normalize_for_parsing(img)
    pixel_values = torch.cat((src_n * ours + cano_n * (1 - ours), cano_n), dim=1)
    report["appearance id-net input"] = (pixel_values - seen["pixel_values"]).abs().max().item()
    frac = seen["eroded"].mean().item()
    print(f"  appearance blend mask: {frac:.3f} of pixels take the source")


def check_morphology(kornia_morph: types.ModuleType, gen: torch.Generator, report: dict[str, float]) -> None:
    worst = 0.0
    bad_dtype = 0
    cases = []
    x = torch.rand(2, 3, 23, 31, generator=gen) * 4 - 2
    cases.append(x)
    blobs = (torch.rand(2, 1, 40, 37, generator=gen) > 0.93).long()
    blobs[:, :, 0, 0] = 1  # corners and edges
    blobs[:, :, -1, 5] = 1
    blobs[:, :, 17, -1] = 1
    cases.append(blobs)
    cases.append(1 - blobs)
    cases.append(blobs.double())
    for t in cases:
        for k in ((7, 7), (3, 3), (4, 4), (3, 5), (1, 1), (9, 2)):
            kernel = torch.ones(k)
            for ours_fn, theirs_fn in ((dilate, kornia_morph.dilation), (erode, kornia_morph.erosion)):
                ref = theirs_fn(t, kernel)
                got = ours_fn(t, k)
                bad_dtype += int(ref.dtype != got.dtype or ref.shape != got.shape)
                worst = max(worst, (ref.double() - got.double()).abs().max().item())
    report["morphology vs kornia (max over cases)"] = worst
    report["morphology dtype/shape mismatches"] = float(bad_dtype)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, help="NVlabs/GOHA checkout (with src/)")
    parser.add_argument("--kornia-path", type=Path, help="directory prepended to sys.path to find kornia")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()
    if args.official is None:
        print("give --official /path/to/GOHA", file=sys.stderr)
        return 2
    if args.kornia_path is not None:
        sys.path.insert(0, str(args.kornia_path))
    try:
        import kornia
        from kornia import morphology as kornia_morph
    except ImportError:
        print("kornia is needed (pip install --no-deps --target DIR kornia==0.5.5; --kornia-path DIR)", file=sys.stderr)
        return 2
    official_bisenet, model_cls = import_official(args.official)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    b, s = args.batch, args.image_size
    print(f"kornia {kornia.__version__}, torch {torch.__version__}, batch {b}, image {s}x{s}, CPU float32")

    report: dict[str, float] = {}
    mismatches: dict[str, int] = {}
    with mock.patch("torch.utils.model_zoo.load_url", return_value={}):
        theirs = official_bisenet(n_classes=19)
    perturb_(theirs, gen)
    theirs.eval()
    ours = BiSeNet().eval()
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    print(f"  state dict: {len(theirs.state_dict())} tensors, "
          f"{sum(p.numel() for p in theirs.parameters()):,} parameters, keys equal")

    img = (torch.rand(b, 3, s, s, generator=gen) * 2 - 1)
    x = normalize_for_parsing(img)
    with torch.no_grad():
        ref = theirs(x)
        got = ours.forward_all(x)
        main_only = ours(x)
    for name, r, g in zip(("out", "out16", "out32"), ref, got, strict=True):
        report[f"BiSeNet {name}"] = (r - g).abs().max().item()
        print(f"  BiSeNet {name}: |ref| max {r.abs().max().item():.3g}")
    report["BiSeNet forward (main only)"] = (ref[0] - main_only).abs().max().item()

    with torch.no_grad():
        m_ref = official_mask(model_cls, theirs, img)
        m_got = parsing_mask(ours, img)
    mismatches["parsing mask, random BiSeNet"] = int((m_ref != m_got).sum())
    assert m_ref.dtype == m_got.dtype and m_ref.shape == m_got.shape, (m_ref.dtype, m_got.dtype)
    print(f"  parsing mask (random BiSeNet): {m_ref.float().mean().item():.3f} of pixels masked")

    logits = smooth_logits(b, s, s, gen)
    m_ref = official_mask(model_cls, _LogitNet(logits), img)
    m_got = parsing_mask(lambda t: logits[: t.shape[0]], img)
    mismatches["parsing mask, blobby logits"] = int((m_ref != m_got).sum())
    print(f"  parsing mask (blobby logits): {m_ref.float().mean().item():.3f} of pixels masked")

    check_appearance(model_cls, logits, img, gen, report)
    check_morphology(kornia_morph, gen, report)

    ok = True
    for name, value in report.items():
        exact = "mask" in name or "morphology" in name
        passed = value == 0.0 if exact else value < args.tol
        ok &= passed
        print(f"{name:45s} max abs diff {value:.3e}  {'ok' if passed else 'FAIL'}")
    for name, count in mismatches.items():
        ok &= count == 0
        print(f"{name:45s} differing pixels {count}  {'ok' if count == 0 else 'FAIL'}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
