"""Default export settings, importable without torch (the CLI's parser reads them; see :mod:`avatar.export.mesh`)."""

from __future__ import annotations

__all__ = ["DEFAULT_BORDER", "DEFAULT_RESOLUTION", "EG3D_LEVEL", "WORLD_UNITS_PER_METRE"]

EG3D_LEVEL = 10.0
"""Iso level on the raw decoder density: EG3D's shape extraction (NVlabs/eg3d ``eg3d/gen_samples.py`` calls
``shape_utils.convert_sdf_samples_to_ply(..., level=10)``, i.e. ``skimage.measure.marching_cubes`` at 10)."""
DEFAULT_RESOLUTION = 256
"""Grid samples per axis (EG3D's ``--shape-res`` default is 512)."""
DEFAULT_BORDER = 1
"""Grid layers at each face of the box forced empty so the surface closes there (EG3D: ``30 N / 256``)."""
WORLD_UNITS_PER_METRE = 3.0
"""The Portrait4D world is FLAME (metres) scaled by 3."""
