"""GPHM's two-stage training recipe (paper sections 3.3-3.4) as dataclasses: stage 1 trains the guiding geometry
model, stage 2 the Gaussian model initialised from it (:meth:`avatar.models.gphm.GPHM.from_guiding`).

What the paper gives and what it does not (``shared/design/papers/gphm-v2-paper.txt``; our copy lost its inline
numbers, so every learning rate, weight and length below is a choice, marked "Paper silent"):

==============================  ==========================================================================
value                           source
==============================  ==========================================================================
Adam, batch 8                   3.4 ("we use an Adam optimizer", "a batch size of 8") for both stages
learning-rate groups            3.4: identity codes / networks / 3D landmarks (stage 1), plus the mean
                                positions, per-point features, scales, rotations, opacities (stage 2); the
                                groups are the models' ``parameter_groups()``
loss terms                      3.3 Eq. 17-18 (stage 1) and 19-20 (stage 2): the weights of
                                :class:`~avatar.models.gphm.GuidingLossConfig` / ``GPHMLossConfig``
identity codes, norm below 1    3.4 (``IdentityCodebook`` projects on lookup), one per dataset identity
expression input                3.4: "the image of another view of the current frame" (see below)
==============================  ==========================================================================

Deviations a reader should know about (each also in the field's docstring):

* **3D landmarks**: the multi-view readers (:mod:`train.data.gphm`) give no 3D landmarks, so the landmark term
  (Eq. 15) is off (weight 0) and the canonical landmarks keep the model's initial front cap instead of the mean of
  the dataset's landmarks; they still move through the face / non-face blend weights.
* **Expression input**: the frontal-most view of the same frame (``expression_input="frontal"``), the same
  image when the dataset cannot say which views belong to one frame; the paper picks a random other view or a
  LivePortrait image of the same expression (LivePortrait is not run here).
* **Non-face input**: the paper's non-face image masks out the face region found from 2D landmarks, which the
  readers do not give; by default the non-face encoder reads the same image as the expression encoder
  (``non_face_input="image"``), or nothing (``"none"``: zero codes, the neck moves rigidly with the head).
* **Batches**: samples are drawn one image at a time by the training package's sampler (the paper's stage-1
  batches hold 4 views of one expression of one identity).
* **Head poses** are not optimised (the paper optimises them "with a very small learning rate"; they are data
  here, not parameters).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from avatar.errors import ConfigError
from avatar.models.gphm.losses import GPHMLossConfig, GuidingLossConfig

__all__ = ["GPHM_RECIPE", "STAGES", "GPHMRecipe", "GaussianStage", "GuidingStage", "Stage", "recipe"]

Stage = Literal["guiding", "gaussian"]
STAGES: tuple[str, ...] = ("guiding", "gaussian")


@dataclass(frozen=True)
class GuidingStage:
    """Stage 1: the guiding geometry model (paper 3.2 "Guiding Geometry Model", losses Eq. 17-18)."""

    kimg: float = 800.0
    """Training length in thousands of images. Paper silent (it says "about 1 day on 8 RTX4090"): chose 800 kimg,
    100,000 steps at batch 8."""
    lr_identity_codes: float = 1e-3
    """Paper silent (number lost): chose 1e-3, the auto-decoder rate of DeepSDF / NPHM whose initialisation the
    codes follow."""
    lr_networks: float = 1e-3
    """Paper silent: chose 1e-3, Gaussian Head Avatar's mesh-stage network rate (same authors, same SDF set-up)."""
    lr_landmarks: float = 1e-4
    """Paper silent: chose 1e-4, ten times below the networks (the landmarks only steer the region weights)."""
    loss: GuidingLossConfig = field(default_factory=lambda: GuidingLossConfig(weight_landmark=0.0))
    """Loss weights; the landmark term is 0 because the data has no 3D landmarks."""
    eikonal_points: int = 4096
    """Random points in the grid cube for the eikonal term (used only when ``loss.weight_eikonal > 0``)."""

    def learning_rates(self) -> dict[str, float]:
        """``{parameter group: lr}`` for :meth:`GuidingGeometryModel.parameter_groups`."""
        return {"identity_codes": self.lr_identity_codes, "networks": self.lr_networks,
                "landmarks": self.lr_landmarks}


@dataclass(frozen=True)
class GaussianStage:
    """Stage 2: the Gaussian parametric head model (paper 3.2 "3D Gaussian Parametric Head Model", Eq. 19-20)."""

    kimg: float = 3200.0
    """Paper silent ("7 days on 8 RTX4090 until convergence"): chose 3,200 kimg, 400,000 steps at batch 8."""
    lr_identity_codes: float = 1e-4
    """Paper silent: chose 1e-4, ten times below stage 1 (the codes start trained)."""
    lr_networks: float = 1e-4
    """Paper silent: chose 1e-4, ten times below stage 1 (the shared networks start trained; F_attr is new)."""
    lr_landmarks: float = 1e-5
    """Paper silent: chose 1e-5, ten times below stage 1."""
    lr_means: float = 1.6e-4
    """Paper silent: chose 3DGS's initial position rate (1.6e-4 for a scene about 1 unit across)."""
    lr_point_features: float = 1e-3
    """Paper silent: chose 1e-3 (between 3DGS's colour rate 2.5e-3 and the networks', as the features feed MLPs)."""
    lr_scales: float = 5e-3
    """Paper silent: chose 3DGS's 5e-3."""
    lr_rotations: float = 1e-3
    """Paper silent: chose 3DGS's 1e-3."""
    lr_opacities: float = 5e-2
    """Paper silent: chose 3DGS's 5e-2."""
    loss: GPHMLossConfig = field(default_factory=lambda: GPHMLossConfig(weight_landmark=0.0))
    """Loss weights; the landmark term is 0 because the data has no 3D landmarks."""

    def learning_rates(self) -> dict[str, float]:
        """``{parameter group: lr}`` for :meth:`GPHM.parameter_groups`."""
        return {"identity_codes": self.lr_identity_codes, "networks": self.lr_networks,
                "landmarks": self.lr_landmarks, "means": self.lr_means, "point_features": self.lr_point_features,
                "scales": self.lr_scales, "rotations": self.lr_rotations, "opacities": self.lr_opacities}


@dataclass(frozen=True)
class GPHMRecipe:
    """GPHM's training recipe (see the module docstring).

    Attributes:
        batch: global batch (paper: 8 for both stages): the default of ``--batch-size``.
        betas, eps: Adam's (paper: Adam, settings silent: chose PyTorch's defaults).
        expression_input: the expression encoder's image: ``"frontal"`` (the frontal-most view of the same
            frame, the same image when the dataset cannot tell) or ``"same"`` (the image itself).
        non_face_input: the non-face encoder's image: ``"image"`` (the expression encoder's image) or ``"none"``.
        composite_background: put the target images on the empty feature map's colour (0 in [-1, 1], mid-grey)
            where the data has a matte (paper: the foreground is matted). Without it the background stays.
        canonical_scale: world units per canonical unit (the canonical head is about 1 unit long), applied before
            the data's head pose; ``None``: 0.25 for NeRSemble (metres), 0.75 for GenHead's synthetic renders
            (Portrait4D's world, FLAME x 3).
        guiding, gaussian: the stages.
    """

    batch: int = 8
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    expression_input: Literal["frontal", "same"] = "frontal"
    non_face_input: Literal["image", "none"] = "image"
    composite_background: bool = True
    canonical_scale: float | None = None
    guiding: GuidingStage = field(default_factory=GuidingStage)
    gaussian: GaussianStage = field(default_factory=GaussianStage)

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"batch must be at least 1, got {self.batch}")
        if self.canonical_scale is not None and not self.canonical_scale > 0:
            raise ConfigError(f"canonical_scale must be above 0 (world units per canonical unit), got "
                              f"{self.canonical_scale}")
        for stage in ("guiding", "gaussian"):
            s = getattr(self, stage)
            for name, lr in s.learning_rates().items():
                if not lr >= 0:
                    raise ConfigError(f"{stage}.lr_{name} must be >= 0 (0 freezes the group), got {lr}")
            if not s.kimg > 0:
                raise ConfigError(f"{stage}.kimg must be above 0, got {s.kimg}")
            if s.loss.weight_landmark != 0:
                raise ConfigError(f"{stage}.loss.weight_landmark must be 0: the multi-view data has no 3D "
                                  "landmarks to supervise the landmark term with")
        if self.guiding.eikonal_points < 1:
            raise ConfigError(f"guiding.eikonal_points must be at least 1, got {self.guiding.eikonal_points}")

    def stage(self, name: str) -> GuidingStage | GaussianStage:
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}: choose one of {', '.join(STAGES)}")
        return self.guiding if name == "guiding" else self.gaussian

    def to_dict(self) -> dict:
        return asdict(self)


GPHM_RECIPE = GPHMRecipe()
"""The recipe's defaults (the paper's values where it gives them)."""


def recipe(**overrides: object) -> GPHMRecipe:
    """The default recipe with ``overrides`` (field names of :class:`GPHMRecipe`)."""
    from avatar.errors import UnknownOptionValueError

    unknown = sorted(set(overrides) - set(GPHM_RECIPE.to_dict()))
    if unknown:
        raise UnknownOptionValueError(f"unknown GPHM recipe option(s) {', '.join(unknown)}")
    return replace(GPHM_RECIPE, **overrides)  # type: ignore[arg-type]
