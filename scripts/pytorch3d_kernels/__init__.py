"""pytorch3d's own C++/CUDA kernels for the official Portrait-4D code, built in place from a pytorch3d source
folder (see :mod:`pytorch3d_kernels.p3d_shim`)."""
