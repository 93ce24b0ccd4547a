"""FLAME head model, Portrait4D's head-pose deformation field and the FLAME correspondence map, in plain PyTorch
(no pytorch3d)."""

from __future__ import annotations

from .correspondence import CorrespondenceMap, FlameCorrespondenceRenderer, correspondence_vertex_sets
from .deformation import (
    DEFORMER_BUFFERS,
    FlameHeadPoseDeformer,
    HeadPoseField,
    build_deformer_buffers,
    get_face_tri,
    grid_points,
    sample_grid,
)
from .flame import FLAME_CORE_BUFFERS, FLAME_LANDMARK_BUFFERS, Flame, FlameOutput, flame_buffers_from_generic
from .geometry import (
    closest_point_barycentric,
    closest_triangles,
    plane_barycentric,
    point_to_face_coord,
    point_triangle_sq_dist,
)
from .lbs import (
    batch_rigid_transform,
    batch_rodrigues,
    blend_shapes,
    lbs,
    vertices2joints,
    vertices2landmarks,
)

__all__ = [
    "DEFORMER_BUFFERS",
    "FLAME_CORE_BUFFERS",
    "FLAME_LANDMARK_BUFFERS",
    "CorrespondenceMap",
    "Flame",
    "FlameCorrespondenceRenderer",
    "FlameHeadPoseDeformer",
    "FlameOutput",
    "HeadPoseField",
    "batch_rigid_transform",
    "batch_rodrigues",
    "blend_shapes",
    "build_deformer_buffers",
    "closest_point_barycentric",
    "closest_triangles",
    "correspondence_vertex_sets",
    "flame_buffers_from_generic",
    "get_face_tri",
    "grid_points",
    "lbs",
    "plane_barycentric",
    "point_to_face_coord",
    "point_triangle_sq_dist",
    "sample_grid",
    "vertices2joints",
    "vertices2landmarks",
]
