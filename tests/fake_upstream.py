"""Build small pickles in the upstream formats, inside the tests.

* ``write_persistence_pickle``: fake ``torch_utils.persistence`` and ``dnnlib.util`` modules make
  ``pickle`` write the same records as EG3D: ``_reconstruct_persistent_obj(meta)`` with the module source,
  class name and ``__dict__`` state, nested ``torch.nn`` modules by class path, ``EasyDict`` kwargs.
* ``write_chumpy_pickle``: fake ``chumpy.ch.Ch`` and ``scipy.sparse.csc.csc_matrix`` classes whose pickled
  state has the same fields as the real ones, written with protocol 2 (Python 2 names, as FLAME's file).

The fake modules live in ``sys.modules`` only while writing; reading never imports them.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Source text that would create MARKER if anyone executed it (it must never be executed).
EVIL_SOURCE_TEMPLATE = "import pathlib\npathlib.Path({marker!r}).write_text('executed')\nclass Net: pass\n"


@contextlib.contextmanager
def installed_modules(modules: dict[str, types.ModuleType]) -> Iterator[None]:
    """Put ``modules`` into ``sys.modules`` for the duration, then restore what was there."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@contextlib.contextmanager
def fake_modules() -> Iterator[types.SimpleNamespace]:
    persistence = types.ModuleType("torch_utils.persistence")
    torch_utils = types.ModuleType("torch_utils")
    dnnlib = types.ModuleType("dnnlib")
    dnnlib_util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called: reading must not import it
        raise AssertionError("the fake persistence hook was called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    dnnlib_util.EasyDict = EasyDict
    torch_utils.persistence = persistence
    dnnlib.util = dnnlib_util
    with installed_modules({"torch_utils": torch_utils, "torch_utils.persistence": persistence, "dnnlib": dnnlib,
                            "dnnlib.util": dnnlib_util}):
        yield types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)


def make_persistent(module: nn.Module, class_name: str, module_src: str, init_kwargs: dict, hook) -> nn.Module:
    """Give ``module`` EG3D's persistent ``__reduce__`` (and its ``_init_args``/``_init_kwargs``)."""

    module._init_args = ()
    module._init_kwargs = init_kwargs

    def __reduce__(self):  # noqa: N807 - installed as the class's __reduce__
        state = dict(self.__dict__)
        meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)
        return (hook, (meta,), None)

    cls = type(class_name, (type(module),), {"__reduce__": __reduce__})
    module.__class__ = cls
    return module


class TinyReconstructor(nn.Module):
    """A small network with the features the real one has: convs, a BN with buffers, a non-persistent
    buffer, a constant buffer (``w_avg``), nested Sequential and ModuleList, a nested persistent child."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w_avg", torch.randn(8))
        self.encoder = nn.Sequential(nn.Conv2d(5, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.LayerNorm(4)])
        self.head = nn.Linear(4, 2, bias=False)
        self.register_buffer("scratch", torch.zeros(3), persistent=False)


def build_tiny_network(mods: types.SimpleNamespace, marker: Path) -> nn.Module:
    net = TinyReconstructor()
    src = EVIL_SOURCE_TEMPLATE.format(marker=str(marker))
    make_persistent(net.head, "SuperresolutionHead", src, mods.EasyDict(channels=4), mods.reconstruct)
    kwargs = mods.EasyDict(img_resolution=512, mot_dims=548, rendering_kwargs=mods.EasyDict(box_warp=1.3), sr=(1, 2))
    return make_persistent(net, "TriPlaneReconstructorNeutralize", src, kwargs, mods.reconstruct)


def write_persistence_pickle(path: Path, marker: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Write ``{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}`` like EG3D. Returns the expected
    state dicts of G and G_ema."""
    torch.manual_seed(0)
    with fake_modules() as mods:
        g, g_ema = build_tiny_network(mods, marker), build_tiny_network(mods, marker)
        with torch.no_grad():
            for p in g_ema.parameters():
                p.add_(1.0)
        d = build_tiny_network(mods, marker)
        data = {"G": g, "D": d, "G_ema": g_ema, "augment_pipe": None,
                "training_set_kwargs": mods.EasyDict(path="/data/vfhq", resolution=512)}
        with open(path, "wb") as f:
            pickle.dump(data, f)
        return {"G": dict(g.state_dict()), "G_ema": dict(g_ema.state_dict())}


# ------------------------------------------------------------------------------------------------ chumpy


@contextlib.contextmanager
def fake_chumpy_modules() -> Iterator[types.SimpleNamespace]:
    ch_mod = types.ModuleType("chumpy.ch")
    sparse_mod = types.ModuleType("scipy.sparse.csc")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x, np.float64)
            self._dirty_vars = {"x"}
            self._itr = None
            self._depends_on_deps = {}

        def __getstate__(self):
            return dict(self.__dict__)

    class csc_matrix:  # noqa: N801 - mirrors scipy's name
        def __init__(self, dense):
            dense = np.asarray(dense)
            data, indices, indptr = [], [], [0]
            for j in range(dense.shape[1]):
                rows = np.nonzero(dense[:, j])[0]
                indices.extend(rows.tolist())
                data.extend(dense[rows, j].tolist())
                indptr.append(len(indices))
            self.data = np.asarray(data, np.float64)
            self.indices = np.asarray(indices, np.int32)
            self.indptr = np.asarray(indptr, np.int32)
            self._shape = dense.shape
            self.maxprint = 50
            self.format = "csc"

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    csc_matrix.__module__, csc_matrix.__qualname__ = "scipy.sparse.csc", "csc_matrix"
    ch_mod.Ch = Ch
    sparse_mod.csc_matrix = csc_matrix
    chumpy_pkg = types.ModuleType("chumpy")
    chumpy_pkg.ch = ch_mod
    modules = {"chumpy": chumpy_pkg, "chumpy.ch": ch_mod, "scipy.sparse.csc": sparse_mod}
    for parent in ("scipy", "scipy.sparse"):  # keep a real scipy if there is one
        modules[parent] = sys.modules.get(parent) or types.ModuleType(parent)
    with installed_modules(modules):
        yield types.SimpleNamespace(Ch=Ch, csc_matrix=csc_matrix)


def write_chumpy_pickle(path: Path) -> dict[str, np.ndarray]:
    """A FLAME-like ``generic_model.pkl`` (tiny sizes). Returns the expected arrays."""
    rng = np.random.default_rng(0)
    expected = {
        "v_template": rng.normal(size=(10, 3)),
        "shapedirs": rng.normal(size=(10, 3, 6)),
        "posedirs": rng.normal(size=(10, 3, 9)),
        "J_regressor": np.where(rng.random((5, 10)) > 0.6, rng.random((5, 10)), 0.0),
        "weights": rng.random((10, 5)),
        "f": rng.integers(0, 10, size=(7, 3)).astype(np.uint32),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
    }
    with fake_chumpy_modules() as mods:
        data = {
            "v_template": expected["v_template"],
            "shapedirs": mods.Ch(expected["shapedirs"]),
            "posedirs": expected["posedirs"],
            "J_regressor": mods.csc_matrix(expected["J_regressor"]),
            "weights": mods.Ch(expected["weights"]),
            "f": expected["f"],
            "kintree_table": expected["kintree_table"],
            "bs_style": "lbs",
            "bs_type": "lrotmin",
            "J": mods.Ch(rng.normal(size=(5, 3))),
        }
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=2)
    return expected


class EvilReduce:
    """Pickles as a call to ``os.system`` that would create ``marker``."""

    def __init__(self, marker: Path, func: str = "system") -> None:
        self.marker = marker
        self.func = func

    def __reduce__(self):
        import os
        import subprocess

        if self.func == "system":
            return (os.system, (f"touch {self.marker}",))
        if self.func == "popen":
            return (subprocess.Popen, (["touch", str(self.marker)],))
        if self.func == "exec":
            return (exec, (f"open({str(self.marker)!r}, 'w').write('x')",))
        raise ValueError(self.func)


def synthetic_bfm(subdivisions: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`avatar.flame.synthetic.synthetic_bfm_assets` with the mean shape moved off the origin (so that the
    BFM's recentring is exercised): a BFM_model_front.mat-like dict, 1-based indices, icosphere of radius 0.9."""
    from avatar.flame.synthetic import synthetic_bfm_assets

    arrays = synthetic_bfm_assets(seed=seed, subdivisions=subdivisions)
    shape = arrays["meanshape"].reshape(-1, 3) + np.array([0.1, -0.2, 0.3], dtype=np.float32)
    return {**arrays, "meanshape": shape.reshape(1, -1).astype(np.float32)}
