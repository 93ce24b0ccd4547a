"""Synthetic FLAME-like assets: a sphere head skinned to the neck, for tests and speed benchmarks.

No FLAME licence is needed: nothing here comes from the FLAME model. :func:`synthetic_flame_assets` returns the
upstream asset dicts (``generic_model``, ``simplify``, ``masks``, ``addition``, ``landmarks``) with the official
key names and field layouts (400 shape+expression directions, 36 pose correctives, 5 joints) on an icosphere; the
``subdivisions`` argument sets the mesh size (3: 642 vertices and 1280 triangles, close to the 1394-triangle
simplified mesh that Portrait4D's head-pose field uses, so a benchmark does the same amount of work).
"""

from __future__ import annotations

__all__ = ["icosphere", "synthetic_bfm_assets", "synthetic_flame_assets", "synthetic_genhead_assets"]

import numpy as np
import torch


def icosphere(subdivisions: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere: vertices ``(V, 3)`` float64 and triangles ``(F, 3)`` int (``F = 20 * 4**subdivisions``)."""
    t = (1 + 5**0.5) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    v = [np.array(p, dtype=np.float64) / np.linalg.norm(p) for p in verts]

    def mid(cache: dict[tuple[int, int], int], a: int, b: int) -> int:
        key = (min(a, b), max(a, b))
        if key not in cache:
            m = v[a] + v[b]
            v.append(m / np.linalg.norm(m))
            cache[key] = len(v) - 1
        return cache[key]

    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}
        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(cache, a, b), mid(cache, b, c), mid(cache, c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new
    return np.stack(v), np.array(faces)


def synthetic_flame_assets(seed: int = 0, neck_correctives: bool = False, subdivisions: int = 1,
                           num_landmarks: int = 8) -> dict:
    """Generic-model-like fields: a sphere head (radius 0.05, FLAME units) skinned to the neck subtree.

    Args:
        seed: random skinning weights, joint regressor and blend shapes.
        neck_correctives: keep the neck-rotation pose correctives (they make the head non-rigid).
        subdivisions: icosphere level: 1 gives 42 vertices and 80 triangles, each level 4x the triangles.
        num_landmarks: number of "full" landmarks (Portrait4D's training losses index 70: iBUG 68 + eye centres).
    """
    rng = np.random.default_rng(seed)
    unit, faces = icosphere(subdivisions)
    nv = len(unit)
    v_template = unit * 0.05 + np.array([0.0, 0.02, 0.0])
    j_reg = rng.random((5, nv))
    j_reg /= j_reg.sum(1, keepdims=True)
    weights = np.zeros((nv, 5))
    weights[:, 1:] = rng.random((nv, 4))
    weights /= weights.sum(1, keepdims=True)
    posedirs = rng.normal(size=(nv, 3, 36)) * 1e-3
    if not neck_correctives:
        posedirs[..., :9] = 0.0  # neck-rotation correctives would break rigidity
    model = {
        "f": faces.astype(np.uint32),
        "v_template": v_template,
        "shapedirs": rng.normal(size=(nv, 3, 400)) * 1e-4,
        "posedirs": posedirs,
        "J_regressor": j_reg,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "weights": weights,
    }
    nbr = np.array([faces[np.nonzero((faces == i).any(1))[0][0]] for i in range(nv)])
    idxs = np.stack([np.arange(nv), *[np.where(nbr[:, k] == np.arange(nv), nbr[:, (k + 1) % 3], nbr[:, k])
                                      for k in (0, 1)]], 1)
    simplify = {
        "idxs": idxs.astype(np.int64),
        "baris": np.tile(np.array([[0.8, 0.1, 0.1]], dtype=np.float32), (nv, 1)),
        "faces": faces.astype(np.int64),
        "coarse_face_region_idxs": rng.integers(0, nv + 1, size=(len(faces), 50)).astype(np.int64),
    }
    masks = {"face": np.arange(0, 30), "right_eyeball": np.arange(30, 36), "left_eyeball": np.arange(36, 42),
             "lips": np.array([3, 1, 2, 5, 7, 9, 11, 12, 13, 14]), "noinmouth": np.arange(0, 40)}
    addition = {
        "dynamic_idxs": np.arange(5, 15), "eye_idxs": np.arange(30, 42), "eyelids_idxs": np.arange(20, 32),
        "smallface_idxs": np.arange(0, 25), "face_idxs": np.arange(0, 30),
        "eye_mask": (np.arange(nv) >= 30).astype(np.float32),
        "vertices_region_idxs": rng.integers(0, nv + 1, size=(nv, 10)),
    }
    landmarks = {
        "static_lmk_faces_idx": rng.integers(0, len(faces), 6), "static_lmk_bary_coords": rng.random((6, 3)),
        "dynamic_lmk_faces_idx": torch.as_tensor(rng.integers(0, len(faces), (79, 17))),
        "dynamic_lmk_bary_coords": torch.as_tensor(rng.random((79, 17, 3)), dtype=torch.float32),
        "full_lmk_faces_idx": rng.integers(0, len(faces), (1, num_landmarks)),
        "full_lmk_bary_coords": rng.random((1, num_landmarks, 3)),
    }
    return {"generic_model": model, "simplify": simplify, "masks": masks, "addition": addition,
            "landmarks": landmarks}


def synthetic_genhead_assets(seed: int = 0, head_subdivisions: int = 3, eye_subdivisions: int = 1,
                             num_landmarks: int = 70) -> dict:
    """FLAME-like assets with GenHead's parts: a sphere head with two eyeballs and a mouth, FLAME's vertex layout.

    Vertices are ordered as FLAME's: the head (``face_idxs``, 0..H-1) first, then the right and the left eyeball
    (``eye_idxs``, contiguous, each half one eye). The eyeballs (radius 0.012) sit in front of the head sphere
    (radius 0.05), half sunk into it, and are skinned to FLAME's eye joints (3, 4) whose regressor rows are the
    eyeball centres, so the eye pose rolls them in place; the lower front of the head (the chin and the ``lips``) is
    skinned to the jaw joint (2), hinged at the back of the head, the rest to the neck (1). ``noinmouth`` leaves out a cap at the lips, so the mouth mask is a
    visible hole; the head has holes where the eyeballs show (as FLAME's eye openings); the simplified mesh (the
    head-pose field's and the head mask's) is the level-1 icosphere of the head (42 vertices, 80 triangles;
    barycentrics ``[1, 0, 0]`` on its own vertices). ``vertices_region_idxs`` holds
    each vertex's 10 nearest vertices of its own part. Nothing comes from the FLAME model; for tests and the
    side-by-side comparison with the official GenHead.
    """
    rng = np.random.default_rng(seed)
    head_unit, head_faces = icosphere(head_subdivisions)
    eye_unit, eye_faces = icosphere(eye_subdivisions)
    nh, ne = len(head_unit), len(eye_unit)
    centre = np.array([0.0, 0.02, 0.0])
    head = head_unit * 0.05 + centre
    eye_centres = [centre + np.array([-0.018, 0.012, 0.045]), centre + np.array([0.018, 0.012, 0.045])]
    eyes = [eye_unit * 0.012 + c for c in eye_centres]
    socket = np.min([np.linalg.norm(head[head_faces].mean(1) - c, axis=-1) for c in eye_centres], axis=0)
    head_faces = head_faces[socket > 0.011]  # eye sockets: holes the eyeballs show through, as in FLAME
    verts = np.concatenate([head, *eyes])
    faces = np.concatenate([head_faces, eye_faces + nh, eye_faces + nh + ne])
    nv = len(verts)
    lips = np.nonzero((head_unit[:, 2] > 0.75) & (head_unit[:, 1] < -0.2) & (head_unit[:, 1] > -0.55))[0]
    chin = np.nonzero((head_unit[:, 2] > 0.3) & (head_unit[:, 1] < -0.2))[0]  # lips and below: on the jaw
    back = np.nonzero(head_unit[:, 2] < -0.9)[0]
    j_reg = np.zeros((5, nv))
    j_reg[0, :nh] = j_reg[1, :nh] = 1.0 / nh
    j_reg[2, back] = 1.0 / len(back)  # the jaw hinges at the back, so opening it drops the chin and the lips
    j_reg[3, nh:nh + ne] = j_reg[4, nh + ne:] = 1.0 / ne
    weights = np.zeros((nv, 5))
    weights[:nh, 1] = 1.0
    weights[chin] = 0.0
    weights[chin, 2] = 1.0
    weights[nh:nh + ne, 3] = weights[nh + ne:, 4] = 1.0
    model = {
        "f": faces.astype(np.uint32), "v_template": verts, "shapedirs": rng.normal(size=(nv, 3, 400)) * 1e-4,
        "posedirs": np.zeros((nv, 3, 36)), "J_regressor": j_reg,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64), "weights": weights,
    }
    model["shapedirs"][nh:] = 0.0  # rigid eyeballs

    def regions(idx: np.ndarray) -> np.ndarray:
        d = ((verts[idx, None] - verts[None, idx]) ** 2).sum(-1)
        return idx[np.argsort(d, axis=1, kind="stable")[:, :10]]

    region = np.full((nv, 10), nv, dtype=np.int64)
    for part in (np.arange(nh), np.arange(nh, nh + ne), np.arange(nh + ne, nv)):
        region[part, : min(10, len(part))] = regions(part)[:, :10]
    eye_idx = np.arange(nh, nv)
    masks = {"face": np.arange(nh), "right_eyeball": np.arange(nh, nh + ne), "left_eyeball": np.arange(nh + ne, nv),
             "lips": lips, "noinmouth": np.setdiff1d(np.arange(nh), lips)}
    coarse_unit, coarse_faces = icosphere(1)  # its vertices are the first ones of every finer icosphere
    ns = len(coarse_unit)
    simplify = {"idxs": np.stack([np.arange(ns)] * 3, 1).astype(np.int64),
                "baris": np.tile(np.array([[1.0, 0.0, 0.0]], dtype=np.float32), (ns, 1)),
                "faces": coarse_faces.astype(np.int64),
                "coarse_face_region_idxs": rng.integers(0, nv + 1, size=(len(coarse_faces), 50)).astype(np.int64)}
    addition = {"dynamic_idxs": lips, "eye_idxs": eye_idx, "eyelids_idxs": np.arange(0, 20),
                "smallface_idxs": np.arange(nh), "face_idxs": np.arange(nh),
                "eye_mask": (np.arange(nv) >= nh).astype(np.float32), "vertices_region_idxs": region}
    landmarks = {
        "static_lmk_faces_idx": rng.integers(0, len(head_faces), 51), "static_lmk_bary_coords": rng.random((51, 3)),
        "dynamic_lmk_faces_idx": rng.integers(0, len(head_faces), (79, 17)),
        "dynamic_lmk_bary_coords": rng.random((79, 17, 3)).astype(np.float32),
        "full_lmk_faces_idx": rng.integers(0, len(head_faces), (1, num_landmarks)),
        "full_lmk_bary_coords": rng.random((1, num_landmarks, 3)),
    }
    return {"generic_model": model, "simplify": simplify, "masks": masks, "addition": addition,
            "landmarks": landmarks}


def synthetic_bfm_assets(seed: int = 0, subdivisions: int = 1) -> dict[str, np.ndarray]:
    """The arrays of a ``BFM_model_front.mat``-like face model (key names, shapes and 1-based indices of the
    file; :class:`avatar.face.bfm.ParametricFaceModel` reads them) on an icosphere of radius 0.9: small random
    identity, expression and texture bases, 68 keypoints picked among the vertices. No BFM licence is needed
    (nothing comes from the Basel Face Model); for tests and tiny pipelines."""
    rng = np.random.default_rng(seed)
    verts, tris = icosphere(subdivisions)
    n, f = verts.shape[0], tris.shape[0]
    # each vertex's adjacent triangles, padded with the index one past the last triangle (Deep3D's convention)
    adjacent = np.full((n, 8), f + 1, dtype=np.int64)
    for vertex in range(n):
        around = np.flatnonzero((tris == vertex).any(axis=1))[:8]
        adjacent[vertex, :len(around)] = around + 1
    return {
        "meanshape": (verts * 0.9).reshape(1, -1).astype(np.float32),
        "idBase": rng.normal(0, 0.01, (3 * n, 80)).astype(np.float32),
        "exBase": rng.normal(0, 0.01, (3 * n, 64)).astype(np.float32),
        "meantex": rng.uniform(80, 200, (1, 3 * n)).astype(np.float32),
        "texBase": rng.normal(0, 2, (3 * n, 80)).astype(np.float32),
        "point_buf": adjacent,
        "tri": (tris + 1).astype(np.int64),
        "keypoints": (rng.choice(n, 68, replace=n < 68) + 1).reshape(1, 68).astype(np.int64),
    }
