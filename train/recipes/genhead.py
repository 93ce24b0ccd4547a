"""GenHead's official training recipe (``genhead-ffhq512``) as a dataclass: the defaults are the official values.

Sources (YuDeng/Portrait-4D HEAD da5eec6, ``portrait4d/``; facts in ``shared/design/portrait4d-training.md``
sections 0, 2 and 5): ``configs/default.yaml`` merged with ``configs/genhead-ffhq512.yaml`` (``[yaml]`` below),
the values ``train_genhead.py`` derives from them (``[launcher]``), the defaults of
``training/training_loop_genhead.py::training_loop`` (``[loop]``) and the constants of
``training/loss/loss_genhead.py::PortraitSynthesisLoss`` (``[loss]``).

==================================  =========================================================================
value                               official source
==================================  =========================================================================
batch 32 over 4 GPUs: 8 per GPU      ``[yaml]`` ``gpus: 4``, ``batch: 32``; ``batch_gpu = batch // gpus`` ``[launcher]``
kimg 25000, tick 4 kimg              ``[yaml]`` ``kimg``, ``tick``
image / network snapshots 50 ticks   ``[yaml]`` ``snap: 50``; ``network_snapshot_ticks = 50`` ``[launcher]``
G Adam lr 0.0025, betas (0, 0.99)    ``glr: None`` -> 0.0025 (``cfg`` is not ``stylegan2``); ``G_opt_kwargs`` ``[launcher]``
D Adam lr 0.002, betas (0, 0.99)     ``[yaml]`` ``dlr``; ``D_opt_kwargs`` ``[launcher]``; eps 1e-8 for both
lazy regularisation G 4, D 16        ``[yaml]`` ``density_reg_every: 4``; ``D_reg_interval=16`` ``[loop]``
  (corrected: G lr 0.002, betas      ``lr * I/(I+1)``, ``beta ** (I/(I+1))`` ``[loop]``; the correction itself is
  (0, 0.99199); D lr 0.0018824,      :func:`train.core.optim.build_adam`'s)
  betas (0, 0.99059))
R1 gammas 1 / 10 / 1                 ``[yaml]`` ``gamma``, ``gamma_uv``, ``gamma_seg`` (interval 16 above)
blur sigma 10 -> 0 over 200 kimg     ``blur_init_sigma = 10``; ``blur_fade_kimg = batch * 200 / 32`` ``[launcher]``
GPC: swap prob 1 -> 0.5 over 1000    ``[yaml]`` ``gpc_reg_prob: 0.5``, ``gpc_reg_fade_kimg: 1000``,
  kimg                                ``gen_pose_cond: True``; the schedule ``[loss]``
density regulariser 0.25, p_dist     ``[yaml]`` ``density_reg``, ``density_reg_p_dist``, ``reg_type: l1``; 1000
  0.004 (x box_warp 1.3), 1000 pts    points in ``[-1, 1]^3`` ``[loss]``
part regularisers 10/100/100 (eye),  ``[loss]`` (Gmain: ``loss_face_eye``, ``loss_eye_density``, ``loss_eye_T``,
  10/100/100 (mouth)                  ``loss_face_mouth``, ``loss_mouth_density``, ``loss_mouth_T``)
NR 64, no fade                       ``[yaml]`` ``neural_rendering_resolution_initial: 64``, ``..._final: None``
EMA 10 kimg (batch * 10 / 32),       ``ema_kimg = batch * 10 / 32`` ``[launcher]``; ``ema_rampup=0.05`` ``[loop]``
  ramp-up 0.05
minibatch-std group 2                ``[yaml]`` ``mbstd_group`` (so at least 2 samples per GPU)
conditions drawn jointly             ``[yaml]`` ``g_random_combine: False``
no style mixing, no augmentation     ``[yaml]`` ``style_mixing_prob: 0.0``, ``aug: noaug``
==================================  =========================================================================

Starting from a trained snapshot (the official ``--resume``, our ``--init``) the launcher also turns the EMA ramp-up
off and, unless ``resume_blur``, the blur and the GPC fade (:meth:`GenHeadRecipe.resumed`). Thresholds are in
images (kimg x 1000), as in the official loop: at a global batch of 32, the 200 kimg blur fade is 6,250 steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from train.core.ema import ema_beta

__all__ = ["GENHEAD_RECIPE", "GenHeadRecipe", "PartRegularizerWeights", "recipe"]


@dataclass(frozen=True)
class PartRegularizerWeights:
    """Weights of GenHead's six part regularisers (``loss_genhead.py``, Gmain; each a per-sample mean)."""

    face_eye: float = 10.0
    """``softplus(face density inside the eye boxes) * eye_mask`` (the face field must stay out of the eyes)."""
    eye_density: float = 100.0
    """mip-NeRF 360 distortion loss of every ray's weights, times the eye mask (a thin eye surface)."""
    eye_t: float = 100.0
    """``T_bg * eye_mask`` (eye rays must be opaque)."""
    face_mouth: float = 10.0
    """As ``face_eye`` on the mouth rays."""
    mouth_density: float = 100.0
    """As ``eye_density`` with the mouth mask."""
    mouth_t: float = 100.0
    """As ``eye_t`` with the mouth mask."""


@dataclass(frozen=True)
class GenHeadRecipe:
    """GenHead's training recipe (every field is an official value; sources in the module docstring).

    Attributes:
        name: the official configuration (``ffhq512``).
        gpus: GPUs of the official run (documentation: the loop takes the global ``batch`` over any number).
        batch: global batch; ``kimg``: training length in thousands of images.
        g_lr, d_lr, betas, eps: Adam settings before the lazy-regularisation correction.
        g_reg_interval, d_reg_interval: lazy regularisation intervals (Greg: density TV; Dreg: R1).
        r1_gamma, r1_gamma_uv, r1_gamma_seg: R1 weights of the images (SR and raw), the uv map and the seg.
        blur_init_sigma, blur_fade_kimg: blur of D's SR input (and the real raw image and seg), fading out over
            ``batch * blur_fade_kimg / 32`` kimg.
        gpc_reg_prob, gpc_reg_fade_kimg: generator pose conditioning: the probability of rolling the conditioning
            ``[c, shape]`` by one sample falls from 1 to ``gpc_reg_prob`` over the fade (None: condition on zeros).
        density_reg, density_reg_p_dist, density_reg_points: Greg's density TV: weight, perturbation scale (times
            ``box_warp``) and number of random points.
        nr_initial, nr_final, nr_fade_kimg: neural rendering resolution (GenHead: 64, fixed).
        ema_kimg, ema_rampup: EMA half-life (``batch * 10 / 32``) and ramp-up (None when resuming).
        mbstd_group: minibatch-std group size of D.
        tick_kimg, snap_ticks, network_snapshot_ticks: logging tick; image and network snapshots every so many
            ticks.
        resume_blur: keep the blur and the GPC fade when starting from a trained snapshot.
        parts: the part regulariser weights.
    """

    name: str = "ffhq512"
    gpus: int = 4
    batch: int = 32
    kimg: int = 25000
    g_lr: float = 0.0025
    d_lr: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    g_reg_interval: int = 4
    d_reg_interval: int = 16
    r1_gamma: float = 1.0
    r1_gamma_uv: float = 10.0
    r1_gamma_seg: float = 1.0
    blur_init_sigma: float = 10.0
    blur_fade_kimg: float = 200.0
    gpc_reg_prob: float | None = 0.5
    gpc_reg_fade_kimg: float = 1000.0
    density_reg: float = 0.25
    density_reg_p_dist: float = 0.004
    density_reg_points: int = 1000
    nr_initial: int = 64
    nr_final: int | None = None
    nr_fade_kimg: float = 1000.0
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    mbstd_group: int = 2
    tick_kimg: float = 4.0
    snap_ticks: int = 50
    network_snapshot_ticks: int = 50
    resume_blur: bool = False
    parts: PartRegularizerWeights = field(default_factory=PartRegularizerWeights)

    # ---- derived quantities -----------------------------------------------------------------------------
    @property
    def batch_per_gpu(self) -> int:
        """``batch // gpus`` of the official launch (8)."""
        return self.batch // self.gpus

    def adam(self, which: str) -> tuple[float, tuple[float, float]]:
        """Effective ``(lr, betas)`` of ``"G"`` or ``"D"`` after the lazy-regularisation correction."""
        lr, interval = (self.g_lr, self.g_reg_interval) if which == "G" else (self.d_lr, self.d_reg_interval)
        ratio = interval / (interval + 1)
        return lr * ratio, (self.betas[0] ** ratio, self.betas[1] ** ratio)

    def swapping_prob(self, cur_nimg: float) -> float | None:
        """GPC's probability of conditioning a sample on its neighbour's ``[c, shape]``: ``(1 - a) + a p`` with
        ``a = min(cur_nimg / (fade * 1e3), 1)`` (``a = 1`` without a fade); None when GPC is off."""
        if self.gpc_reg_prob is None:
            return None
        alpha = min(cur_nimg / (self.gpc_reg_fade_kimg * 1e3), 1.0) if self.gpc_reg_fade_kimg > 0 else 1.0
        return (1 - alpha) * 1 + alpha * self.gpc_reg_prob

    def blur_sigma(self, cur_nimg: float) -> float:
        """``max(1 - cur_nimg / (batch * blur_fade_kimg / 32 * 1e3), 0) * blur_init_sigma`` (0 without a fade)."""
        fade = self.batch * self.blur_fade_kimg / 32
        if fade <= 0:
            return 0.0
        return max(1 - cur_nimg / (fade * 1e3), 0.0) * self.blur_init_sigma

    def neural_rendering_resolution(self, cur_nimg: float) -> int:
        """The raw rendering resolution at ``cur_nimg`` images (``np.rint`` of the linear fade, when there is one)."""
        if self.nr_final is None:
            return self.nr_initial
        alpha = min(cur_nimg / (self.nr_fade_kimg * 1e3), 1.0)
        return int(round(self.nr_initial * (1 - alpha) + self.nr_final * alpha))

    def ema_beta(self, cur_nimg: float, batch: int | None = None) -> float:
        """EMA decay per step at ``cur_nimg`` images: ``0.5 ** (batch / ema_nimg)`` with the ramp-up."""
        return ema_beta(batch or self.batch, cur_nimg, self.ema_kimg, self.ema_rampup)

    def snapshot_steps(self, ticks: int | None = None) -> int:
        """Steps between snapshots of ``ticks`` ticks (default ``snap_ticks``): 6,250 at batch 32."""
        ticks = self.snap_ticks if ticks is None else ticks
        return max(1, round(ticks * self.tick_kimg * 1000 / self.batch))

    def with_batch(self, batch: int) -> GenHeadRecipe:
        """The recipe at another global batch: ``ema_kimg`` follows the official ``batch * 10 / 32`` (the blur fade
        follows ``batch`` in :meth:`blur_sigma`)."""
        return replace(self, batch=batch, ema_kimg=batch * 10 / 32)

    def resumed(self) -> GenHeadRecipe:
        """Starting from a trained snapshot (the official ``--resume``): no EMA ramp-up and, unless
        ``resume_blur``, no blur and no GPC fade (``train_genhead.py``)."""
        if self.resume_blur:
            return replace(self, ema_rampup=None)
        return replace(self, ema_rampup=None, blur_init_sigma=0.0, gpc_reg_fade_kimg=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


GENHEAD_RECIPE = GenHeadRecipe()
"""The official ``genhead-ffhq512`` recipe."""


def recipe(**overrides: object) -> GenHeadRecipe:
    """The official recipe with ``overrides`` (field names of :class:`GenHeadRecipe`; ``parts`` takes a
    :class:`PartRegularizerWeights`)."""
    from avatar.errors import UnknownOptionValueError

    unknown = sorted(set(overrides) - set(GENHEAD_RECIPE.to_dict()))
    if unknown:
        raise UnknownOptionValueError(f"unknown GenHead recipe option(s) {', '.join(unknown)}")
    return replace(GENHEAD_RECIPE, **overrides)  # type: ignore[arg-type]
