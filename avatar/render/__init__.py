"""Cameras, pixel rays and the triplane volume renderer (Portrait4D conventions).

* :mod:`avatar.render.camera` - 25-number camera labels, FOV/focal, LookAt poses, the inference camera
* :mod:`avatar.render.rays` - world-space rays through pixel centres
* :mod:`avatar.render.rasterize` - batched triangle rasteriser (pytorch3d ``MeshRasterizer`` semantics)
* :mod:`avatar.render.gaussians` - 3D Gaussian splatting of N-channel features (gsplat on CUDA, a PyTorch reference)
* :mod:`avatar.render.triplane` - triplane sampling, the NeRF decoder, the importance renderer
"""

from avatar.render.camera import (
    INFERENCE_TRANSLATION,
    PORTRAIT4D_FOV_DEG,
    cam2world_from_forward,
    camera_z,
    focal_from_fov,
    fov_from_focal,
    inference_cam2world,
    inference_label,
    invert_rigid,
    lookat_cam2world,
    make_intrinsics,
    make_label,
    orbit_labels,
    sample_lookat_cam2world,
    split_label,
)
from avatar.render.gaussians import (
    GaussianRenderOutput,
    gaussian_footprint,
    gsplat_available,
    rasterize_gaussians,
)
from avatar.render.rasterize import (
    Fragments,
    MeshRenderOutput,
    interpolate_face_attributes,
    interpolate_vertex_attributes,
    project_to_ndc,
    rasterize_mesh,
    rasterize_ndc,
    render_mesh,
)
from avatar.render.rays import sample_rays
from avatar.render.triplane import (
    ImportanceRenderer,
    RenderingOptions,
    RenderOutput,
    TriplaneNeRFDecoder,
    composite_background,
    rays_to_image,
    sample_from_planes,
)

__all__ = [
    "INFERENCE_TRANSLATION",
    "PORTRAIT4D_FOV_DEG",
    "Fragments",
    "GaussianRenderOutput",
    "ImportanceRenderer",
    "MeshRenderOutput",
    "RenderOutput",
    "RenderingOptions",
    "TriplaneNeRFDecoder",
    "cam2world_from_forward",
    "camera_z",
    "composite_background",
    "focal_from_fov",
    "fov_from_focal",
    "gaussian_footprint",
    "gsplat_available",
    "inference_cam2world",
    "inference_label",
    "interpolate_face_attributes",
    "interpolate_vertex_attributes",
    "invert_rigid",
    "lookat_cam2world",
    "make_intrinsics",
    "make_label",
    "orbit_labels",
    "project_to_ndc",
    "rasterize_gaussians",
    "rasterize_mesh",
    "rasterize_ndc",
    "rays_to_image",
    "render_mesh",
    "sample_from_planes",
    "sample_lookat_cam2world",
    "sample_rays",
    "split_label",
]
