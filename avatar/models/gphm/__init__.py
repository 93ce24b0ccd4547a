"""GPHM: the Gaussian Parametric Head Model (Xu et al., "GPHM: Gaussian Parametric Head Model for Monocular Head
Avatar Reconstruction", TPAMI 2025 / GPHMv2; ECCV 2024 "3D Gaussian Parametric Head Model"), from the paper's
text: no official code or weights exist. Choices the paper leaves open are written where they are made, as
"Paper silent: chose X because Y".

The paper's section 3 and where each piece lives:

* 3.1 Data preprocessing (matting, landmarks, BFM fits, face / non-face crops, LivePortrait expression images):
  not here - the data preparation of the training scripts.
* 3.2 Model representation
    - *Guiding geometry model* (Eq. 1-4): :class:`GuidingGeometryModel` (:mod:`.modeling`) - mean SDF MLP
      ``F_mean`` (:mod:`.geometry`), mesh extraction by marching tetrahedra (:mod:`.marching_tets`), the shared
      identity / expression / non-face deformation and colour fields with the face / non-face blend weights
      (:mod:`.fields`, :func:`region_weights`), differentiable mesh rendering (:mod:`.mesh_render`) and the refine
      U-Net ``Psi`` (:mod:`.refinement`); the motion encoders ``E_exp``, ``E_nf`` (:mod:`.encoders`).
    - *3D Gaussian parametric head model* (Eq. 5-11): :class:`GPHM` (:mod:`.modeling`) - mean point cloud with
      bound features and mean attributes (:class:`GaussianPoints`, :mod:`.gaussians`), the same fields, the
      attribute MLP ``F_attr``, canonical :class:`GaussianSet`, rendering through
      :func:`avatar.render.gaussians.rasterize_gaussians` into a :class:`GPHMOutput`; initialised from the
      guiding model (:meth:`GPHM.from_guiding`) or a template surface (:meth:`GPHM.initialise_from_template`).
* 3.3 Loss functions: :mod:`.losses` - :func:`guiding_losses` / :class:`GuidingLossConfig` (Eq. 12-18),
  :func:`gphm_losses` / :class:`GPHMLossConfig` (Eq. 19-20).
* 3.4 Training details: sizes in :mod:`.configuration`; identity codes with norms kept below 1 (:mod:`.codes`);
  learning-rate groups from ``parameter_groups()``. The training loop is ``train/gphm.py`` (not here).
* 3.5 Head avatar from a monocular video: identity fitting with :meth:`GPHM.new_identity_code` and
  :meth:`GPHMLossConfig.fitting`, then :meth:`GPHM.personalise` -> :class:`GPHMAvatar` (baked Gaussians plus the
  tiny dynamic MLP ``F_dyn``) and :meth:`GPHMAvatar.finetune_parameters`; the recipe is in the :class:`GPHM`
  docstring. Reenactment: :class:`GPHMAvatar` driven by encoded face / non-face images.

Monocular fitting without a pretrained GPHM (:mod:`avatar.fitting.gphm_fit`) drives the avatar with MediaPipe
mesh landmarks and the head pose instead of images: :class:`DrivingSignalEncoder` (:mod:`.signals`).

Helpers: head poses and quaternions (:mod:`.pose`), cameras from 25-number labels (:mod:`.cameras`,
:func:`label_to_viewmat_K`) or a frontal camera (:func:`front_camera`), point sampling (:mod:`.sampling`).
"""

from avatar.models.gphm.cameras import label_to_viewmat_K
from avatar.models.gphm.codes import IdentityCodebook, new_identity_code, project_to_unit_ball
from avatar.models.gphm.configuration import (
    FieldsConfig,
    GPHMAvatarConfig,
    GPHMConfig,
    GuidingGeometryConfig,
    MotionEncoderConfig,
    RefineConfig,
)
from avatar.models.gphm.encoders import MotionEncoder
from avatar.models.gphm.fields import DeformationFields, FieldsOutput, region_weights
from avatar.models.gphm.gaussians import GaussianPoints, GaussianSet, GPHMOutput, render_gaussian_set
from avatar.models.gphm.geometry import MeanMesh, MeanShapeSDF, extract_mean_mesh
from avatar.models.gphm.losses import (
    GPHMLossConfig,
    GuidingLossConfig,
    deformation_loss,
    eikonal_loss,
    gphm_losses,
    guiding_losses,
    landmark_loss,
    laplacian_loss,
    photometric_loss,
    silhouette_loss,
)
from avatar.models.gphm.marching_tets import ExtractedMesh, grid_points, grid_tetrahedra, marching_tetrahedra
from avatar.models.gphm.mesh_render import MeshFeatureRender, render_mesh_features
from avatar.models.gphm.modeling import (
    GPHM,
    GPHMAvatar,
    GPHMFastInference,
    GuidingGeometryModel,
    GuidingMesh,
    GuidingRenderOutput,
    front_camera,
)
from avatar.models.gphm.refinement import RefineNet
from avatar.models.gphm.signals import DrivingSignalConfig, DrivingSignalEncoder

__all__ = [
    "GPHM",
    "DeformationFields",
    "DrivingSignalConfig",
    "DrivingSignalEncoder",
    "ExtractedMesh",
    "FieldsConfig",
    "FieldsOutput",
    "GPHMAvatar",
    "GPHMFastInference",
    "GPHMAvatarConfig",
    "GPHMConfig",
    "GPHMLossConfig",
    "GPHMOutput",
    "GaussianPoints",
    "GaussianSet",
    "GuidingGeometryConfig",
    "GuidingGeometryModel",
    "GuidingLossConfig",
    "GuidingMesh",
    "GuidingRenderOutput",
    "IdentityCodebook",
    "MeanMesh",
    "MeanShapeSDF",
    "MeshFeatureRender",
    "MotionEncoder",
    "MotionEncoderConfig",
    "RefineConfig",
    "RefineNet",
    "deformation_loss",
    "eikonal_loss",
    "extract_mean_mesh",
    "front_camera",
    "gphm_losses",
    "grid_points",
    "grid_tetrahedra",
    "guiding_losses",
    "label_to_viewmat_K",
    "landmark_loss",
    "laplacian_loss",
    "marching_tetrahedra",
    "new_identity_code",
    "photometric_loss",
    "project_to_unit_ball",
    "region_weights",
    "render_gaussian_set",
    "render_mesh_features",
    "silhouette_loss",
]
