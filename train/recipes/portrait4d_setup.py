"""The networks of a Portrait4D training run: G, D, G_fix and the frozen loss networks, built once.

Official counterpart: the network block of ``training_loop_recon_v{1,2}.py`` (design note 1.1). What is loaded:

* **G** (the reconstructor): ``--init`` (a model id, ``save_pretrained`` folder, official checkpoint or Hub repo,
  as :meth:`Portrait4D.from_pretrained` takes) or a fresh network (``--size full``: the official architecture,
  ``tiny``: the test configuration) whose motion width follows the data.
* **D** (:class:`~avatar.losses.discriminator.DualDiscriminator`): ``--init-discriminator`` or fresh (v2 resumes
  the static run's D upstream: pass it here).
* **G_fix** (v2): the frozen static model (``--g-fix``; default: ``--init``, which for v2 is the static model).
* **LPIPS-VGG, ArcFace r18, PD-FGC**: the official weights through the asset cache (``--loss-networks
  pretrained``), or random tiny networks for tests and smoke runs (``random``: every number then says nothing
  about quality).
* **FLAME**: G's deformer buffers (official checkpoints carry them) and the FLAME masks for the correspondence
  renderer; with ``--flame synthetic`` a synthetic FLAME (tests, smoke runs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from avatar.errors import ConfigError
from avatar.flame.correspondence import FlameCorrespondenceRenderer
from avatar.flame.deformation import build_deformer_buffers
from avatar.models.portrait4d import Portrait4D, Portrait4DConfig
from train.recipes.portrait4d_loss import SR_RESOLUTION

__all__ = ["Portrait4DNetworks", "build_networks", "is_cross_attention"]

logger = logging.getLogger(__name__)

_CROSS_PARTS = ("maps", "maps_neutral", "proj_y", "proj_y_neutral", "norm2", "attn2")


def is_cross_attention(name: str) -> bool:
    """The official ``G_cross`` group: motion MLPs, token projections and cross-attention of the canonical
    encoder (``encoder_canonical`` and one of ``maps``, ``proj_y``, ``norm2``, ``attn2``, ...)."""
    return "encoder_canonical" in name and any(part in name for part in _CROSS_PARTS)


@dataclass
class Portrait4DNetworks:
    """Everything a run trains or consults. ``G``, ``D`` train; the rest are frozen (eval, no grad)."""

    G: Portrait4D
    D: nn.Module
    renderer: FlameCorrespondenceRenderer
    lpips: nn.Module
    arcface: nn.Module | None
    pdfgc: nn.Module | None
    G_fix: Portrait4D | None
    random_loss_networks: bool


def _frozen(module: nn.Module | None, device: torch.device) -> Any:
    if module is None:
        return None
    return module.to(device).eval().requires_grad_(False)


def _generator(init: str | None, size: Literal["full", "tiny"], motion_dim: int, seed: int,
               local_dir: str | None) -> Portrait4D:
    if init is not None:
        model = Portrait4D.from_pretrained(init, local_dir=local_dir)
        if model.config.encoders.motion_dim != motion_dim:
            raise ConfigError(f"{init} takes {model.config.encoders.motion_dim}-d motions, the data has "
                              f"{motion_dim}-d ones (PD-FGC: 548)")
        return model
    base = Portrait4DConfig.tiny() if size == "tiny" else Portrait4DConfig()
    config = replace(base, encoders=replace(base.encoders, motion_dim=motion_dim))
    torch.manual_seed(seed)
    return Portrait4D.tiny(seed, encoders=config.encoders) if size == "tiny" else Portrait4D(config)


def _flame(G: Portrait4D, flame: Literal["official", "synthetic"], seed: int, local_dir: str | None,
           flame_buffers: Any = None) -> FlameCorrespondenceRenderer:
    if flame == "synthetic":
        from avatar.flame.synthetic import synthetic_flame_assets

        assets = synthetic_flame_assets(seed, num_landmarks=70)
        if not G.deformer.available:
            G.set_deformer_buffers(build_deformer_buffers(**assets))
        return FlameCorrespondenceRenderer.from_assets(**assets)
    from avatar.hub.weights import read_converted_weights

    masks = read_converted_weights("flame-masks", local_dir=local_dir)
    if not G.deformer.available and flame_buffers is not None:
        G.set_deformer_buffers(flame_buffers)  # the same official FLAME files, e.g. from GenHead's deformer
    if not G.deformer.available:
        raise ConfigError("the generator has no FLAME deformer buffers: start from an official checkpoint "
                          "(--init portrait4d-static-genhead512) or use --flame synthetic for a smoke run")
    assert G.deformer.flame_deform is not None
    return FlameCorrespondenceRenderer.from_deformer(G.deformer.flame_deform, masks)


def discriminator_source(init: str | None, init_discriminator: str | None) -> str | None:
    """Where D starts: ``init_discriminator`` as given (``"fresh"``: a new D); by default the discriminator of the
    same released snapshot when ``init`` is a released model id (``portrait4d-static`` ->
    ``portrait4d-static-D``, as the official v2 run resumes G and D from the static pickle), else a new D."""
    from avatar.hub import registry

    if init_discriminator == "fresh":
        return None
    if init_discriminator is None and init is not None and f"{init}-D" in registry.MODELS:
        logger.info("D starts from %s-D, the discriminator of the same released snapshot", init)
        return f"{init}-D"
    return init_discriminator


def build_networks(*, recipe_name: str, init: str | None, init_discriminator: str | None, g_fix: str | None,
                   size: Literal["full", "tiny"], motion_dim: int, loss_networks: Literal["pretrained", "random"],
                   flame: Literal["official", "synthetic"], device: torch.device, seed: int = 0,
                   local_dir: str | None = None, flame_buffers: Any = None) -> Portrait4DNetworks:
    """Build (or load) every network of a run on ``device`` (see the module docstring). ``flame_buffers``: official
    FLAME deformer buffers for a fresh generator (``--init`` not given) with ``--flame official``; GenHead's
    (``--data genhead``) are those of the same FLAME files."""
    from avatar.losses.arcface import ArcFaceConfig, IResNet
    from avatar.losses.discriminator import DiscriminatorConfig, DualDiscriminator
    from avatar.losses.lpips import LPIPSConfig, LPIPSNet
    from avatar.motion.pdfgc import PDFGCConfig, PDFGCEncoder

    G = _generator(init, size, motion_dim, seed, local_dir)
    renderer = _flame(G, flame, seed, local_dir, flame_buffers)
    init_discriminator = discriminator_source(init, init_discriminator)
    if init_discriminator is not None:
        D = DualDiscriminator.from_pretrained(init_discriminator, local_dir=local_dir)
    else:
        d_config = (replace(DiscriminatorConfig.tiny(), channel_base=4096) if size == "tiny"
                    else DiscriminatorConfig())
        D = DualDiscriminator(replace(d_config, img_resolution=SR_RESOLUTION))
    if D.config.img_resolution != SR_RESOLUTION:
        raise ConfigError(f"the discriminator sees {D.config.img_resolution} images, G makes {SR_RESOLUTION}")
    G_fix = None
    if recipe_name == "v2":
        source = g_fix or init
        if source is None:
            logger.warning("v2 without --g-fix/--init: G_fix is a copy of the fresh G (the official run uses the "
                           "trained static model)")
            G_fix = _generator(None, size, motion_dim, seed, local_dir)
            G_fix.load_state_dict(G.state_dict())
        else:
            G_fix = _generator(source, size, motion_dim, seed, local_dir)
    random_nets = loss_networks == "random"
    if random_nets:
        lpips: nn.Module = LPIPSNet(LPIPSConfig.tiny() if size == "tiny" else LPIPSConfig(net="vgg"))
        arcface: nn.Module = IResNet(ArcFaceConfig.tiny() if size == "tiny" else ArcFaceConfig())
        pd_config = PDFGCConfig.tiny() if size == "tiny" else PDFGCConfig()
        pdfgc: nn.Module = PDFGCEncoder(pd_config)
    else:
        lpips = LPIPSNet.from_pretrained("lpips-vgg", local_dir=local_dir)
        arcface = IResNet.from_pretrained("arcface-r18", local_dir=local_dir)
        pdfgc = PDFGCEncoder.from_pretrained("pdfgc-motion", local_dir=local_dir)
    if recipe_name == "v2" and pdfgc.config.motion_dim != motion_dim:  # type: ignore[union-attr]
        if random_nets:  # the random encoder whose width matches the data (tiny: 60, official: 548)
            pdfgc = next((PDFGCEncoder(c) for c in (PDFGCConfig(), PDFGCConfig.tiny()) if c.motion_dim == motion_dim),
                         pdfgc)
        if pdfgc.config.motion_dim != motion_dim:  # type: ignore[union-attr]
            raise ConfigError(f"PD-FGC gives {pdfgc.config.motion_dim}-d motions, the data has "  # type: ignore[union-attr]
                              f"{motion_dim}-d ones")
    if G_fix is not None and not G_fix.deformer.available:
        G_fix.set_deformer_buffers(dict(_deformer_buffers(G)))
    return Portrait4DNetworks(
        G=G.to(device).train().requires_grad_(False), D=D.to(device).train().requires_grad_(False),
        renderer=_frozen(renderer, device), lpips=_frozen(lpips, device), arcface=_frozen(arcface, device),
        pdfgc=_frozen(pdfgc if recipe_name == "v2" else None, device), G_fix=_frozen(G_fix, device),
        random_loss_networks=random_nets)


def _deformer_buffers(G: Portrait4D) -> dict[str, torch.Tensor]:
    prefix = "deformer.flame_deform."
    return {k[len(prefix):]: v for k, v in G.state_dict().items() if k.startswith(prefix)}
