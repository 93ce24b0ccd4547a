"""Face preprocessing: alignment geometry of the official Portrait4D pipeline and temporal smoothing.

* :mod:`avatar.face.geometry` - the 512 crop, the PD-FGC 224 crop, BFM angles -> FLAME pose, the camera label
* :mod:`avatar.face.smoothing` - one-euro filtering of crops and poses for video
"""

from avatar.face.geometry import (
    AlignParams,
    FlameLabel,
    align_face,
    bfm_angles_to_flame_pose,
    camera_label_from_pose,
    estimate_align_params,
    five_points_from_68,
    five_points_from_wflw98,
    inverse_transform_landmarks,
    pdfgc_affine,
    pdfgc_crop,
    transform_landmarks,
    warp_to_aligned,
)
from avatar.face.smoothing import OneEuroFilter, OneEuroParams, smooth_align_params, smooth_poses

__all__ = [
    "AlignParams",
    "FlameLabel",
    "OneEuroFilter",
    "OneEuroParams",
    "align_face",
    "bfm_angles_to_flame_pose",
    "camera_label_from_pose",
    "estimate_align_params",
    "five_points_from_68",
    "five_points_from_wflw98",
    "inverse_transform_landmarks",
    "pdfgc_affine",
    "pdfgc_crop",
    "smooth_align_params",
    "smooth_poses",
    "transform_landmarks",
    "warp_to_aligned",
]
