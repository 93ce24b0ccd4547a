// Python bindings for a subset of pytorch3d's C++/CUDA kernels (knn, point_mesh, rasterize_meshes +
// rasterize_coarse, interp_face_attrs), under the names pytorch3d's own pytorch3d/csrc/ext.cpp gives them.
//
// Only this file is ours. The kernels are pytorch3d's unmodified sources (BSD licence), compiled in place from a
// pytorch3d source folder by p3d_shim.py; the headers included below hold pytorch3d's CPU/CUDA dispatch
// functions, as they do for ext.cpp (defined in the headers, so they may be included from one file only).
// WITH_CUDA is defined by p3d_shim.py when the CUDA sources are compiled.

#include <torch/extension.h>

#include "interp_face_attrs/interp_face_attrs.h"
#include "knn/knn.h"
#include "point_mesh/point_mesh_cuda.h"
#include "rasterize_meshes/rasterize_meshes.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("interp_face_attrs_forward", &InterpFaceAttrsForward);
  m.def("interp_face_attrs_backward", &InterpFaceAttrsBackward);
#ifdef WITH_CUDA
  m.def("knn_check_version", &KnnCheckVersion);
#endif
  m.def("knn_points_idx", &KNearestNeighborIdx);
  m.def("knn_points_backward", &KNearestNeighborBackward);
  m.def("rasterize_meshes_backward", &RasterizeMeshesBackward);
  m.def("rasterize_meshes", &RasterizeMeshes);
  // These are only visible for testing; users should not call them directly (as in ext.cpp)
  m.def("_rasterize_meshes_naive", &RasterizeMeshesNaive);
  m.def("_rasterize_meshes_coarse", &RasterizeMeshesCoarse);
  m.def("_rasterize_meshes_fine", &RasterizeMeshesFine);

  // PointEdge distance functions
  m.def("point_edge_dist_forward", &PointEdgeDistanceForward);
  m.def("point_edge_dist_backward", &PointEdgeDistanceBackward);
  m.def("edge_point_dist_forward", &EdgePointDistanceForward);
  m.def("edge_point_dist_backward", &EdgePointDistanceBackward);
  m.def("point_edge_array_dist_forward", &PointEdgeArrayDistanceForward);
  m.def("point_edge_array_dist_backward", &PointEdgeArrayDistanceBackward);

  // PointFace distance functions
  m.def("point_face_dist_forward", &PointFaceDistanceForward);
  m.def("point_face_dist_backward", &PointFaceDistanceBackward);
  m.def("face_point_dist_forward", &FacePointDistanceForward);
  m.def("face_point_dist_backward", &FacePointDistanceBackward);
  m.def("point_face_array_dist_forward", &PointFaceArrayDistanceForward);
  m.def("point_face_array_dist_backward", &PointFaceArrayDistanceBackward);

#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
}
