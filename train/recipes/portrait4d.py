"""The three official Portrait4D reconstructor recipes as dataclasses: defaults equal the official yaml values.

Source: YuDeng/Portrait-4D ``portrait4d/configs/default.yaml`` merged with ``portrait4d-genhead512.yaml`` (v1),
``portrait4d-static-genhead512.yaml`` (static) and ``portrait4d-v2-vfhq512.yaml`` (v2), and the constants of
``training/training_loop_recon_v{1,2}.py`` / ``training/loss/loss_recon_v{1,2}.py`` (collected in
``shared/design/portrait4d-training.md`` sections 0-1; that table is what :data:`RECIPES` reproduces).

Thresholds are in images (kimg x 1000), as in the official loop: with a global batch of 32, 400 kimg is 12,500
steps. ``batch`` is the global batch (the official 8 GPUs x 4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from train.core.ema import ema_beta

__all__ = ["RECIPES", "LossWeights", "Portrait4DRecipe", "RecipeName", "recipe"]

RecipeName = Literal["v1", "static", "v2"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the Gmain terms (design note 1.4) and of the regularisers (1.5, 1.6)."""

    lpips: float = 1.0  # each of the four LPIPS pairs (sr, raw, raw without background, background)
    l1: float = 1.0  # each of the same four pairs with mean |.|
    seg: float = 0.3
    identity: float = 1.0  # 1 - cos(ArcFace) on 112 crops, from id_start_kimg on
    depth: float = 1.0  # v1 distillation terms, before distill_end_kimg
    feature: float = 1.0
    triplane: float = 0.1
    adversarial: float = 0.01  # `gmain`: softplus(-D(fake))
    density_reg: float = 0.25  # `density_reg`: l1 (v1/static) or the G_fix_img LPIPS (v2, weight 1)
    r1_gamma: float = 1.0  # sr and raw images
    r1_gamma_uv: float = 10.0
    r1_gamma_seg: float = 1.0


@dataclass(frozen=True)
class Portrait4DRecipe:
    """One training recipe of Portrait4D's reconstructor (every field is an official value unless noted).

    Attributes:
        name: ``v1`` (GenHead synthetic data), ``static`` (the 3D model without motion cross-attention, on
            GenHead data) or ``v2`` (VFHQ clips, initialised from the static model, G_fix regulariser).
        batch: global batch (clips or subjects per step); the official runs use 8 GPUs x 4.
        kimg: training length in thousands of images; ``resume_kimg``: where the official v2 run starts counting.
        g_lr, d_lr, betas, eps: Adam settings before the lazy-regularisation correction.
        g_reg_interval, d_reg_interval: lazy regularisation intervals (``density_reg_every``; D: 16).
        cross_lr_scale: learning-rate factor of the motion cross-attention group (``G_cross``).
        reg_type: ``l1`` density regulariser (v1, static) or ``G_fix_img`` multi-view regulariser (v2).
        density_reg_p_dist: perturbation scale of the l1 density regulariser (times box_warp 1.3).
        nr_initial, nr_final: neural rendering resolution at the start and after the fade (None: fixed).
        nr_fade_start_kimg, nr_fade_kimg: the resolution fades linearly over ``nr_fade_kimg`` from the start.
        discrimination_kimg: adversarial loss and D training start here (v1: 1000; v2: from the start).
        id_start_kimg: the ArcFace identity loss starts here (v1: 400).
        distill_end_kimg: v1's depth / feature / triplane distillation stops here.
        ema_kimg, ema_rampup: EMA half-life in kimg (batch x 10 / 32) and its ramp-up (None when resuming).
        mbstd_group: minibatch-std group size of D (so at least 2 samples per process).
        mot_aug_prob: v2's probability of replacing the driving motion by the one of a G_fix novel view.
        g_fix_reg_img_aug: v2's eye-closure box shrink of the G_fix render in the regulariser.
        truncation_psi: v1's GenHead truncation.
        static: the static model (no motion cross-attention).
        blur_init_sigma, blur_fade_kimg: blur of D's SR input (0: off for every reconstructor recipe).
        snap_ticks, tick_kimg: image snapshots every ``snap_ticks`` ticks of ``tick_kimg``.
        tf32: the official loop disables TF32 (a deviation when True).
        losses: the loss weights.
    """

    name: RecipeName
    batch: int = 32
    kimg: int = 15000
    resume_kimg: int = 0
    g_lr: float = 1e-4
    d_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-5
    g_reg_interval: int = 16
    d_reg_interval: int = 16
    cross_lr_scale: float = 1.0
    reg_type: Literal["l1", "G_fix_img"] = "l1"
    density_reg_p_dist: float = 0.004
    nr_initial: int = 64
    nr_final: int | None = 128
    nr_fade_start_kimg: float = 1000.0
    nr_fade_kimg: float = 1000.0
    discrimination_kimg: float = 1000.0
    id_start_kimg: float = 400.0
    distill_end_kimg: float = 400.0
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    mbstd_group: int = 2
    mot_aug_prob: float = 0.0
    g_fix_reg_img_aug: bool = False
    truncation_psi: float = 0.95
    static: bool = False
    blur_init_sigma: float = 0.0
    blur_fade_kimg: float = 200.0
    snap_ticks: int = 10
    tick_kimg: float = 4.0
    tf32: bool = False
    losses: LossWeights = field(default_factory=LossWeights)

    # ---- derived quantities -----------------------------------------------------------------------------
    def lazy_ratio(self, interval: int) -> float:
        """``I / (I + 1)``: the lazy-regularisation correction of a phase pair with interval ``I``."""
        return interval / (interval + 1)

    def adam(self, which: Literal["G", "D"]) -> tuple[float, tuple[float, float]]:
        """Effective (lr, betas) of G or D after the lazy-regularisation correction (before ``cross_lr_scale``)."""
        lr, interval = (self.g_lr, self.g_reg_interval) if which == "G" else (self.d_lr, self.d_reg_interval)
        ratio = self.lazy_ratio(interval)
        return lr * ratio, (self.betas[0] ** ratio, self.betas[1] ** ratio)

    def neural_rendering_resolution(self, cur_nimg: float) -> int:
        """The raw rendering resolution at ``cur_nimg`` images (design note 1.3)."""
        if self.nr_final is None:
            return self.nr_initial
        alpha = min(max((cur_nimg - self.nr_fade_start_kimg * 1e3) / (self.nr_fade_kimg * 1e3), 0.0), 1.0)
        return int(round(self.nr_initial * (1 - alpha) + self.nr_final * alpha))

    def ema_beta(self, cur_nimg: float, batch: int | None = None) -> float:
        """EMA decay per step at ``cur_nimg`` images: ``0.5 ** (batch / ema_nimg)`` with the ramp-up."""
        return ema_beta(batch or self.batch, cur_nimg, self.ema_kimg, self.ema_rampup)

    def with_batch(self, batch: int) -> Portrait4DRecipe:
        """The recipe at another global batch: ``ema_kimg`` follows the official ``batch * 10 / 32``."""
        return replace(self, batch=batch, ema_kimg=batch * 10 / 32)

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Portrait4DRecipe] = {
    "v1": Portrait4DRecipe(name="v1"),
    "static": Portrait4DRecipe(name="static", static=True),
    "v2": Portrait4DRecipe(
        name="v2", kimg=18000, resume_kimg=10000, g_reg_interval=4, cross_lr_scale=2.5, reg_type="G_fix_img",
        nr_initial=128, nr_final=None, discrimination_kimg=0.0, id_start_kimg=0.0, distill_end_kimg=0.0,
        ema_rampup=None, mot_aug_prob=0.9, g_fix_reg_img_aug=True,
        losses=LossWeights(density_reg=1.0)),
}


def recipe(name: str, **overrides: object) -> Portrait4DRecipe:
    """The official recipe ``name`` with ``overrides`` (field names of :class:`Portrait4DRecipe`)."""
    from avatar.errors import UnknownOptionValueError

    if name not in RECIPES:
        raise UnknownOptionValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    base = RECIPES[name]
    unknown = sorted(set(overrides) - set(base.to_dict()))
    if unknown:
        raise UnknownOptionValueError(f"unknown recipe option(s) {', '.join(unknown)}")
    return replace(base, **overrides)  # type: ignore[arg-type]
