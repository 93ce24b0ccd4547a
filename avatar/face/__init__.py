"""Face preprocessing: the official Portrait4D networks (detection, landmarks, 3DMM, alignment, smoothing) and
the mediapipe backend.

* :mod:`avatar.face.geometry` - the one home of the alignment geometry: the 512 crop (POS fit of five points),
  the PD-FGC 224 crop, BFM angles -> FLAME pose, the camera label and the 437-float FLAME label
* :mod:`avatar.face.retinaface` - RetinaFace R50 face detector
* :mod:`avatar.face.h3r` - H3R HRNet-W18 98 WFLW landmarks
* :mod:`avatar.face.fan3d` - 3DFAN 68 3D landmarks
* :mod:`avatar.face.s3fd`, :mod:`avatar.face.fan2d` - face_alignment's SFD detector and 2-D landmarks (2DFAN4, the
  same FAN network), OTAvatar's / GOHA's AKD landmarks (evaluation)
* :mod:`avatar.face.deep3d` - Deep3DFaceRecon 257 BFM coefficients (and its own 224 crop)
* :mod:`avatar.face.bfm2flame` - the BFM -> FLAME mapper and the fast FLAME label
* :mod:`avatar.face.smoothing` - one-euro filtering of crops and poses for video
* :mod:`avatar.face.mediapipe_face` - the ``mediapipe`` backend (the ``[face]`` extra, real weights inside the
  mediapipe wheel): detection, the 478-point mesh, its five alignment points, head pose, the selfie matte;
  imported on its own (``from avatar.face.mediapipe_face import ...``) so that mediapipe stays optional
"""

from avatar.face.bfm2flame import BFM2FLAMEMapper, MapperConfig, flame_label
from avatar.face.deep3d import Deep3DConfig, Deep3DReconNet, align_image, split_coefficients
from avatar.face.fan3d import FAN3DConfig, FAN3DLandmarker
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
    pos_fit,
    transform_landmarks,
    warp_to_aligned,
)
from avatar.face.h3r import H3R, H3RLandmarker
from avatar.face.retinaface import DetectedFace, RetinaFace
from avatar.face.smoothing import OneEuroFilter, OneEuroParams, smooth_align_params, smooth_poses

__all__ = [
    "H3R",
    "AlignParams",
    "BFM2FLAMEMapper",
    "Deep3DConfig",
    "Deep3DReconNet",
    "DetectedFace",
    "FAN3DConfig",
    "FAN3DLandmarker",
    "FlameLabel",
    "H3RLandmarker",
    "MapperConfig",
    "OneEuroFilter",
    "OneEuroParams",
    "RetinaFace",
    "align_face",
    "align_image",
    "bfm_angles_to_flame_pose",
    "camera_label_from_pose",
    "estimate_align_params",
    "five_points_from_68",
    "five_points_from_wflw98",
    "flame_label",
    "inverse_transform_landmarks",
    "pdfgc_affine",
    "pdfgc_crop",
    "pos_fit",
    "smooth_align_params",
    "smooth_poses",
    "split_coefficients",
    "transform_landmarks",
    "warp_to_aligned",
]
