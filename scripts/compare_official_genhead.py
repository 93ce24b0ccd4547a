"""Side-by-side check of our GenHead port against the official ``PartTriPlaneGeneratorDeform``, CPU, random weights.

    python scripts/compare_official_genhead.py --official /path/to/Portrait-4D --extra-path DEPS [--batch 2] \
        [--pytorch3d-src SRC [--pytorch3d-build DIR]]

``DEPS``: a ``pip install --target DEPS omegaconf`` folder (the official FLAME deformer reads its asset paths with
omegaconf). ``SRC``: a pytorch3d source checkout (see step 2).

What it does:

1. **FLAME stand-in.** The licensed FLAME files cannot be shipped, so the FLAME-shaped stand-in of
   :func:`avatar.flame.synthetic.synthetic_genhead_assets` (an icosphere head with eye sockets, two eyeballs on the
   eye joints and a jaw-driven mouth, in FLAME's vertex layout and the official file layouts: ``generic_model.pkl``, ``FLAME_masks.pkl``, the landmark embedding, the simplified mesh,
   the addition info, ``ca_*.txt``) is written to a temporary folder with a ``cfg.yaml`` pointing at it. The
   official deformer reads those files; ours reads the buffers the official module computed from them (they
   travel inside the converted checkpoint) and the same masks file.
2. **pytorch3d.** Not installable here (no wheel for current PyTorch). With ``--pytorch3d-src SRC`` the official
   side runs pytorch3d's *own* kernels: ``scripts/pytorch3d_kernels/p3d_shim.py`` compiles ``knn_points_idx``,
   ``point_face_dist_forward``, ``rasterize_meshes`` (+ coarse) and ``interp_face_attrs`` from the unmodified
   sources in ``SRC`` (JIT, into ``--pytorch3d-build`` or torch's extension cache; CPU, plus CUDA when available)
   and registers ``pytorch3d`` modules with pytorch3d's Python glue re-created around them (cameras, ``Meshes``,
   ``MeshRasterizer``, clipping by ``SRC``'s own ``clip.py``), so nothing of ours runs on the official side; the
   outputs then differ by float rounding only (the kernel's point-face squared distances and the rasteriser's
   depths / barycentrics differ from ours in the last bits: about 2e-5 on the outputs, the masks identical).
   Without it (the default) the four entry points the official GenHead calls are replaced by stand-ins written
   for this script: ``knn_points`` / ``knn_gather`` by brute force over all vertex pairs (an independent exact
   reference for our chunked :func:`avatar.flame.parts.nearest_vertex`); ``_C.point_face_dist_forward`` by
   :func:`avatar.flame.geometry.closest_triangles` and ``MeshRasterizer`` + ``FoVPerspectiveCameras`` +
   ``interpolate_face_attributes`` by :mod:`avatar.render.rasterize` (both checked against pytorch3d's own kernels
   by the tests that ship with them and by ``scripts/pytorch3d_kernels/check_shim.py``). Then the surface field
   and the rasterisation are the same code on both sides, and everything GenHead builds on them (the mesh
   selections, the camera transforms, the mask post-processing, the part deformation, the part compositing) is
   compared.
3. **Networks.** The official generator is built with the released ``init_kwargs`` (``genhead-ffhq512.yaml``;
   ``--small`` shrinks the triplane and channel widths for a quick run), every parameter is perturbed (so no
   zero-initialised layer hides a mistake), pickled as ``{'G_ema': G}`` exactly as EG3D's training loop does,
   converted with ``avatar convert`` (restricted unpickler, nothing executed) and loaded with
   :meth:`avatar.models.genhead.GenHead.from_official` (strict).
4. **Outputs.** Same ``z``, FLAME parameters (with neck, jaw and eye rotations) and cameras on both sides; the
   official renderer patched to deterministic sampling (no stratified jitter, ``det=True`` importance sampling);
   StyleGAN2 noise ``'const'``. Compared: SR image, raw image, depth, feature image, ``T_bg``, the eye / mouth /
   head masks, the uv map and the part-density regulariser inputs of ``synthesis`` at 64^2 (the training and
   official inference setting, the training compositing), and the renderer's fused compositing (``auto_fuse``,
   which upstream uses above 64^2) on the same triplanes, rays and masks.

Exit status 0 when every difference is below ``--tol`` (1e-4), 1 otherwise, 2 when no checkout is given.
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from compare_official_portrait4d import deterministic_official_renderer  # noqa: E402  (the same patch)

# ----------------------------------------------------------------------------------------------------------
# FLAME stand-in files


def write_flame_files(folder: Path, assets: dict) -> Path:
    """Write the stand-in FLAME assets in the official file layouts; returns the ``cfg.yaml`` path."""
    folder.mkdir(parents=True, exist_ok=True)

    def plain(value: object) -> object:
        if isinstance(value, torch.Tensor):
            return value.numpy()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    with open(folder / "generic_model.pkl", "wb") as f:
        pickle.dump(plain(assets["generic_model"]), f)
    with open(folder / "FLAME_masks.pkl", "wb") as f:
        pickle.dump(plain(assets["masks"]), f)
    np.save(folder / "landmark_embedding_with_eyes.npy", plain(assets["landmarks"]), allow_pickle=True)
    np.save(folder / "simplify_baricentric2.npy", plain(assets["simplify"]), allow_pickle=True)
    np.save(folder / "flame_addition_info.npy", plain(assets["addition"]), allow_pickle=True)
    np.savetxt(folder / "ca_shape.txt", np.zeros(100, dtype=np.float32))
    np.savetxt(folder / "ca_exp.txt", np.zeros(50, dtype=np.float32))
    np.savetxt(folder / "ca_pose.txt", np.array([0, 0, 0, 0.3, 0, 0], dtype=np.float32))
    cfg = folder / "cfg.yaml"
    cfg.write_text("\n".join([
        "coarse:", "  model:",
        f"    flame_model_path: {folder / 'generic_model.pkl'}",
        f"    flame_lmk_embedding_path: {folder / 'landmark_embedding_with_eyes.npy'}",
        f"    flame_mask_pkl: {folder / 'FLAME_masks.pkl'}",
        f"    ca_shape_param: {folder / 'ca_shape.txt'}",
        f"    ca_exp_param: {folder / 'ca_exp.txt'}",
        f"    ca_pose_param: {folder / 'ca_pose.txt'}",
        f"    simplify_baricentric: {folder / 'simplify_baricentric2.npy'}",
        f"    addition_info: {folder / 'flame_addition_info.npy'}",
        "    n_shape: 100", "    n_tex: 50", "    n_exp: 50", "    n_pose: 6", ""]))
    return cfg


# ----------------------------------------------------------------------------------------------------------
# pytorch3d stand-ins (see the module docstring)


def knn_points(p1: Tensor, p2: Tensor, K: int = 1, **_: object):  # noqa: N803 - pytorch3d's name
    d2 = ((p1[:, :, None, :] - p2[:, None, :, :]) ** 2).sum(-1)  # brute force, every pair
    dists, idx = d2.topk(K, dim=-1, largest=False, sorted=True)
    return dists, idx, None


def knn_gather(x: Tensor, idx: Tensor, lengths: object = None) -> Tensor:
    b, m, k = idx.shape
    return x[torch.arange(b)[:, None, None], idx.reshape(b, m, k)]


class _Meshes:
    def __init__(self, verts: Tensor, faces: Tensor) -> None:
        self.verts, self.faces = verts, faces

    def __len__(self) -> int:
        return self.verts.shape[0]

    def verts_packed(self) -> Tensor:
        return self.verts.reshape(-1, 3)

    def faces_packed(self) -> Tensor:
        offsets = torch.arange(len(self), device=self.faces.device)[:, None, None] * self.verts.shape[1]
        return (self.faces.long() + offsets).reshape(-1, 3)

    def mesh_to_faces_packed_first_idx(self) -> Tensor:
        return torch.arange(len(self)) * self.faces.shape[1]

    def num_faces_per_mesh(self) -> Tensor:
        return torch.full((len(self),), self.faces.shape[1])


class _Pointclouds:
    def __init__(self, points: Tensor) -> None:
        self.points = points

    def __len__(self) -> int:
        return self.points.shape[0]

    def points_packed(self) -> Tensor:
        return self.points.reshape(-1, 3)

    def cloud_to_packed_first_idx(self) -> Tensor:
        return torch.arange(len(self)) * self.points.shape[1]

    def num_points_per_cloud(self) -> Tensor:
        return torch.full((len(self),), self.points.shape[1])


def point_face_dist_forward(points, points_first_idx, tris, tris_first_idx, max_points, min_area):
    from avatar.flame.geometry import closest_triangles

    b = len(points_first_idx)
    p = points.reshape(b, -1, 3)
    t = tris.reshape(b, -1, 3, 3)
    verts = t.reshape(b, -1, 3)
    faces = torch.arange(verts.shape[1]).reshape(-1, 3)
    dists, idxs = closest_triangles(p, verts, faces, min_area)
    return dists.reshape(-1), (idxs + tris_first_idx[:, None]).reshape(-1)


class _Fragments(types.SimpleNamespace):
    pass


class _MeshRasterizer(nn.Module):
    def forward(self, meshes: _Meshes, cameras: types.SimpleNamespace, raster_settings: types.SimpleNamespace):
        from avatar.render.rasterize import project_to_ndc, rasterize_ndc

        view = meshes.verts  # pytorch3d view coordinates (X left, Y up, Z forward)
        opengl = torch.stack([-view[..., 0], view[..., 1], -view[..., 2]], dim=-1)
        ndc = project_to_ndc(opengl, raster_settings.image_size, fov_deg=cameras.fov, znear=cameras.znear)
        frag = rasterize_ndc(ndc, meshes.faces.long(), raster_settings.image_size,
                             cull_backfaces=raster_settings.cull_backfaces, z_clip=cameras.znear / 2)
        f = meshes.faces.shape[1]
        offset = torch.arange(len(meshes))[:, None, None] * f
        packed = torch.where(frag.pix_to_face >= 0, frag.pix_to_face + offset, frag.pix_to_face)
        return _Fragments(pix_to_face=packed.unsqueeze(-1), zbuf=frag.zbuf.unsqueeze(-1),
                          bary_coords=frag.bary_coords.unsqueeze(-2))


# pickled by reference under pytorch3d's name, as in the real checkpoints (an inert record when converted)
_MeshRasterizer.__module__ = "pytorch3d.renderer.mesh.rasterizer"
_MeshRasterizer.__qualname__ = _MeshRasterizer.__name__ = "MeshRasterizer"


def interpolate_face_attributes(pix_to_face: Tensor, bary_coords: Tensor, attributes: Tensor) -> Tensor:
    from avatar.render.rasterize import interpolate_face_attributes as ours

    out = ours(pix_to_face[..., 0], bary_coords[..., 0, :], attributes)
    return out.unsqueeze(-2)


def install_pytorch3d_kernels(source: Path, build: Path | None = None) -> None:
    """pytorch3d's own kernels, compiled from the source folder ``source`` (``scripts/pytorch3d_kernels``)."""
    scripts = str(Path(__file__).resolve().parent)
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    from pytorch3d_kernels import p3d_shim

    t = time.perf_counter()
    ext = p3d_shim.install(sys.modules, source=source, build=build)["pytorch3d._C"]
    print(f"pytorch3d {p3d_shim.VERSION} kernels from {source} ({ext.__name__}, CUDA kernels: {ext.WITH_CUDA}) "
          f"built/loaded in {time.perf_counter() - t:.1f} s")


def install_pytorch3d_stand_ins() -> None:
    def module(name: str, **attrs: object) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    c = module("pytorch3d._C", point_face_dist_forward=point_face_dist_forward)
    ops = module("pytorch3d.ops", knn_points=knn_points, knn_gather=knn_gather,
                 interpolate_face_attributes=interpolate_face_attributes)
    module("pytorch3d.ops.knn", knn_points=knn_points, knn_gather=knn_gather)
    structures = module("pytorch3d.structures", Meshes=_Meshes, Pointclouds=_Pointclouds)
    module("pytorch3d.io", load_obj=None, save_obj=None)
    renderer = module(
        "pytorch3d.renderer",
        FoVPerspectiveCameras=lambda device=None, fov=12, znear=0.1, zfar=10: types.SimpleNamespace(fov=fov, znear=znear),
        FoVOrthographicCameras=None, look_at_view_transform=None, DirectionalLights=None,
        RasterizationSettings=lambda cull_backfaces=True, image_size=256: types.SimpleNamespace(
            cull_backfaces=cull_backfaces, image_size=image_size),
        MeshRenderer=None, MeshRasterizer=_MeshRasterizer, SoftPhongShader=None, TexturesUV=None)
    module("pytorch3d.renderer.mesh", rasterizer=None)
    module("pytorch3d.renderer.mesh.rasterizer", MeshRasterizer=_MeshRasterizer)
    module("pytorch3d", _C=c, ops=ops, structures=structures, renderer=renderer)


# ----------------------------------------------------------------------------------------------------------
# The official generator


def official_init_kwargs(cfg_path: Path, small: bool) -> dict:
    """``train_genhead.py`` with ``configs/genhead-ffhq512.yaml`` (``--small``: narrower, 64^2 triplanes)."""
    rendering = {
        "image_resolution": 512, "disparity_space_sampling": False, "clamp_mode": "softplus",
        "superresolution_module": "models.stylegan.superresolution.SuperresolutionHybrid8XDC",
        "c_gen_conditioning_zero": False, "gpc_reg_prob": 0.5, "c_scale": 1.0, "superresolution_noise_mode": "none",
        "density_reg": 0.25, "density_reg_p_dist": 0.004, "reg_type": "l1", "decoder_lr_mul": 1.0,
        "sr_antialias": True, "depth_resolution": 48, "depth_resolution_importance": 48, "ray_start": "auto-plane",
        "ray_end": "auto-plane", "box_warp": 1.3, "avg_camera_radius": 1.0, "avg_camera_pivot": [0, 0, 0.2],
    }
    return {
        "z_dim": 512, "c_dim": 325, "w_dim": 512, "img_resolution": 512, "img_channels": 3,
        "triplane_channels": 192, "sr_num_fp16_res": 4, "mapping_kwargs": {"num_layers": 2},
        "rendering_kwargs": rendering,
        "deformation_kwargs": {"flame_cfg_path": str(cfg_path), "mapping_kwargs": {}, "box_warp": 1.3},
        "sr_kwargs": {"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only",
                      "use_ws_ones": True},
        "has_background": True, "has_superresolution": True, "flame_condition": True, "flame_full": True,
        "dynamic_texture": False, "random_combine": False, "add_block": False,
        "triplane_resolution": 64 if small else 256, "masked_sampling": 0.0,
        "channel_base": 4096 if small else 32768, "channel_max": 128 if small else 512,
        "fused_modconv_default": "inference_only", "num_fp16_res": 0, "conv_clamp": None,
    }


def import_official(checkout: Path, stand_ins: bool = True) -> type:
    """The official generator class; ``stand_ins=False``: pytorch3d is already registered (the kernels)."""
    code = checkout / "portrait4d"
    if not (code / "training" / "generator" / "triplane.py").is_file():
        raise SystemExit(f"{checkout} is not a Portrait-4D checkout (portrait4d/training/generator missing)")
    sys.path.insert(0, str(code))
    if "requests" not in sys.modules:
        try:
            import requests  # noqa: F401
        except ImportError:
            sys.modules["requests"] = types.ModuleType("requests")
    if stand_ins:
        install_pytorch3d_stand_ins()
    try:
        from training.generator.triplane import PartTriPlaneGeneratorDeform
    except ImportError as exc:
        raise SystemExit(f"cannot import the official generator ({exc}); omegaconf must be importable "
                         "(--extra-path)") from exc
    return PartTriPlaneGeneratorDeform


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> None:
    """Perturb every parameter and ``w_avg`` so that no layer is a no-op."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.startswith("deformer."):
            continue
        scale = 0.02 if p.ndim > 1 else 0.05
        if name.startswith("decoder.out_sigma"):
            scale = 0.5
        p.add_(torch.randn(p.shape, generator=gen) * scale)
    for name, buf in model.named_buffers():
        if name.endswith("w_avg"):
            buf.copy_(torch.randn(buf.shape, generator=gen) * 0.3)


def make_inputs(batch: int, seed: int) -> dict[str, Tensor]:
    from avatar.render.camera import focal_from_fov, lookat_cam2world, make_intrinsics, make_label

    gen = torch.Generator().manual_seed(seed)
    yaw = math.pi / 2 + torch.linspace(-0.35, 0.35, batch)
    pitch = math.pi / 2 + torch.linspace(0.1, -0.1, batch)
    c2w = lookat_cam2world(yaw, pitch, (0.0, 0.0, 0.0), 4.0, batch_size=batch)
    camera = make_label(c2w, make_intrinsics(focal_from_fov(12.0), batch))
    pose = torch.zeros(batch, 6)
    pose[:, :3] = torch.randn(batch, 3, generator=gen) * 0.15  # neck
    pose[:, 3] = torch.rand(batch, generator=gen) * 0.3  # jaw opening
    return {
        "z": torch.randn(batch, 512, generator=gen),
        "shape": torch.randn(batch, 300, generator=gen),
        "exp": torch.randn(batch, 100, generator=gen),
        "pose": pose,
        "eye": torch.randn(batch, 6, generator=gen) * 0.1,
        "camera": camera,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="path to a YuDeng/Portrait-4D checkout")
    parser.add_argument("--extra-path", action="append", default=[], help="extra sys.path entry (omegaconf)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subdivisions", type=int, default=3, help="icosphere level of the FLAME stand-in")
    parser.add_argument("--small", action="store_true", help="narrow networks, 64^2 triplanes (quick run)")
    parser.add_argument("--truncation-psi", type=float, default=0.7)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--pytorch3d-src", type=Path, default=None,
                        help="pytorch3d source folder: run its own kernels on the official side (else stand-ins)")
    parser.add_argument("--pytorch3d-build", type=Path, default=None,
                        help="build folder for those kernels (default: torch's extension cache)")
    args = parser.parse_args(argv)
    if args.official is None:
        print("no official checkout given (--official PATH): comparison skipped")
        return 2
    for p in args.extra_path:
        sys.path.insert(0, p)
    if args.pytorch3d_src is not None:
        install_pytorch3d_kernels(args.pytorch3d_src, args.pytorch3d_build)
    official_cls = import_official(args.official.resolve(), stand_ins=args.pytorch3d_src is None)

    from avatar.flame.synthetic import synthetic_genhead_assets
    from avatar.hub.convert import convert_file
    from avatar.models.genhead import GenHead

    assets = synthetic_genhead_assets(args.seed, head_subdivisions=args.subdivisions)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_flame_files(Path(tmp) / "flame", assets)
        torch.manual_seed(args.seed)
        official = official_cls(**official_init_kwargs(cfg, args.small)).eval().requires_grad_(False)
        randomize(official, args.seed)
        print(f"official generator: {sum(p.numel() for p in official.parameters()) / 1e6:.2f} M parameters, "
              f"{len(official.state_dict())} tensors")
        pkl = Path(tmp) / "genhead-random.pkl"
        t = time.perf_counter()
        with open(pkl, "wb") as f:  # EG3D's snapshot format
            pickle.dump({"G_ema": official, "training_set_kwargs": {}}, f)
        converted = convert_file(pkl, Path(tmp) / "converted")
        ours = GenHead.from_official(converted.weights, flame_masks=assets["masks"])
        print(f"pickled, converted ({converted.num_tensors} tensors) and strictly loaded in "
              f"{time.perf_counter() - t:.1f} s")

    x = make_inputs(args.batch, args.seed + 1)
    flame = (x["shape"], x["exp"], x["pose"], x["eye"])
    c_cond = torch.cat([x["camera"], x["shape"]], dim=-1)
    times = {}
    with torch.no_grad():
        with deterministic_official_renderer(official.renderer):
            t = time.perf_counter()
            ws_ref = official.mapping(x["z"], c_cond, truncation_psi=args.truncation_psi, truncation_cutoff=14)
            deformer = official._deformer(*flame)
            ref = official.synthesis(ws_ref, x["z"], x["camera"], deformer, neural_rendering_resolution=64,
                                     noise_mode="const", smpl_param=flame)
            uv_ref = official.deformer.renderer(*flame, x["camera"], half_size=256)[0]
            times["official"] = time.perf_counter() - t
        t = time.perf_counter()
        mine = ours.sample(x["z"], *flame, x["camera"], truncation_psi=args.truncation_psi, truncation_cutoff=14,
                           noise_mode="const", deterministic=True)
        uv = ours.uv_map(x["camera"], *flame).uv
        times["ours"] = time.perf_counter() - t

        # the fused compositing (upstream's inference form above 64^2) on the same planes, rays and masks
        from avatar.models.genhead.rendering import render_parts
        from avatar.render.camera import camera_z, split_label
        from avatar.render.rays import sample_rays

        planes = ours.triplanes(mine.ws)
        cam2world, intrinsics = split_label(x["camera"])
        origins, directions = sample_rays(cam2world, intrinsics, 64)
        eye = mine.masks.eye[:, 0].reshape(args.batch, -1, 1)
        mouth = mine.masks.mouth[:, 0].reshape(args.batch, -1, 1)
        with deterministic_official_renderer(official.renderer):
            fused_ref = official.renderer([planes], official.decoder, deformer, origins, directions,
                                          official.rendering_kwargs, eye_mask=eye, mouth_mask=mouth,
                                          mouth_dynamic=False, auto_fuse=True, cam_z=camera_z(cam2world))
        fused = render_parts(ours.renderer, planes, ours.decoder, ours.part_deformation(*flame), origins, directions,
                             camera_z(cam2world), eye, mouth, fuse=True, deterministic=True)

    pairs = {
        "fused render: features": (fused.features, fused_ref[0]),
        "fused render: depth": (fused.depth, fused_ref[1]),
        "fused render: T_bg": (fused.t_bg, fused_ref[4]),
        "ws": (mine.ws, ws_ref),
        "image (SR 512)": (mine.image, ref["image_sr"]),
        "image_raw (64)": (mine.image_raw, ref["image"]),
        "features": (mine.features, ref["image_feature"]),
        "depth": (mine.depth, ref["image_depth"]),
        "T_bg": (mine.t_bg, ref["T_bg"]),
        "eye_mask": (mine.masks.eye, ref["eye_mask"]),
        "mouth_mask": (mine.masks.mouth, ref["mouth_mask"]),
        "head_mask": (mine.masks.head, ref["head_mask"]),
        "mouth_mask_sr (eye + mouth)": (mine.masks.eye_sr + mine.masks.mouth_sr, ref["mouth_mask_sr"]),
        "face density in eye": (mine.render.face_density_in_eye, ref["densities_face_ineye"]),
        "face density in mouth": (mine.render.face_density_in_mouth, ref["densities_face_inmouth"]),
        "coarse face features": (mine.render.coarse_face_features, ref["coarse_triplane_features"]),
        "uv (512)": (uv, uv_ref),
    }
    worst = 0.0
    print(f"\n{'output':28s} {'shape':>22s} {'ref |max|':>10s} {'max |diff|':>11s}")
    for name, (a, b) in pairs.items():
        d = (a - b).abs().max().item()
        worst = max(worst, d)
        print(f"{name:28s} {str(tuple(b.shape)):>22s} {b.abs().max().item():10.4g} {d:11.3e}")
    print("\nCPU seconds for the batch of", args.batch, ":", ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    ok = worst < args.tol
    print(f"\nmax abs difference {worst:.3e} {'<' if ok else '>='} tolerance {args.tol:g}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
