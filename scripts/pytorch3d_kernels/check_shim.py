"""Check :mod:`p3d_shim` (pytorch3d's own kernels) on random inputs against independent references.

    python scripts/pytorch3d_kernels/check_shim.py --pytorch3d-src SRC [--pytorch3d-build DIR] [--no-upstream]

References:

* **brute force / ours**: the Python stand-ins of ``scripts/compare_official_genhead.py`` (``knn_points`` by brute
  force over all pairs, ``point_face_dist_forward`` by :func:`avatar.flame.geometry.closest_triangles`,
  ``MeshRasterizer`` + ``interpolate_face_attributes`` by :mod:`avatar.render.rasterize`);
* **upstream glue** (unless ``--no-upstream``): pytorch3d's *own* Python package imported from the same source
  folder, its ``_C`` replaced by the shim's compiled kernels (so only the Python glue differs from the shim's: the
  outputs must be bit-identical);
* **CUDA** (when the shim was built with CUDA and a GPU is visible): the CUDA kernels (binned rasteriser) on the
  same inputs against the CPU kernels.

Exit status 0 when the shim matches the upstream glue exactly and the other references within the tolerances
printed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for p in (str(HERE.parent), str(REPO_ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from pytorch3d_kernels import p3d_shim  # noqa: E402

FOV, ZNEAR, ZFAR = 12.0, 0.1, 10.0  # the official MeshRenderer camera
FAILURES: list[str] = []


def stand_ins() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("_genhead_compare", HERE.parent / "compare_official_genhead.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def import_upstream(src: Path, ext: types.ModuleType) -> types.ModuleType:
    """pytorch3d's own Python package from ``src`` with ``_C`` = the shim's kernels (+ ext.cpp's constants)."""
    pkg = p3d_shim.package_dir(src)
    c = types.ModuleType("pytorch3d._C")
    c.__dict__.update({k: getattr(ext, k) for k in dir(ext) if not k.startswith("__")})
    c.__dict__.update(EPS=1e-6, MAX_FLOAT=3.4e38, MAX_INT=2**31 - 1, MAX_UINT=2**32 - 1, MAX_USHORT=2**16 - 1,
                      PULSAR_MAX_GRAD_SPHERES=128)  # read at import time by pulsar, never used here
    sys.path.insert(0, str(pkg.parent))
    sys.modules["pytorch3d._C"] = c
    import pytorch3d

    pytorch3d._C = c
    import pytorch3d.loss
    import pytorch3d.ops
    import pytorch3d.renderer
    import pytorch3d.structures

    if Path(pytorch3d.__file__).resolve().parent != pkg:
        raise SystemExit(f"imported {pytorch3d.__file__}, not {pkg}")
    return pytorch3d


def check(name: str, diff: float, tol: float, extra: str = "") -> None:
    ok = diff <= tol
    if not ok:
        FAILURES.append(name)
    print(f"  {name:58s} {diff:10.3e} {'<=' if ok else '> '} {tol:<8.1e} {extra}")


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


# ----------------------------------------------------------------------------------------------------------


def check_knn(ref, up, gen: torch.Generator, device: str) -> dict:
    print("knn_points / knn_gather (B=2, 4000 queries, 2500 points; K=1 and K=3 as the official deformer)")
    p1 = torch.randn(2, 4000, 3, generator=gen) * 0.3
    p2 = torch.randn(2, 2500, 3, generator=gen) * 0.3
    feats = torch.randn(2, 2500, 5, generator=gen)
    out = {}
    for k in (1, 3):
        t = time.perf_counter()
        d, i, _ = p3d_shim.knn_points(p1.to(device), p2.to(device), K=k)
        dt = time.perf_counter() - t
        d, i = d.cpu(), i.cpu()
        out[k] = (d, i)
        bd, bi, _ = ref.knn_points(p1, p2, K=k)
        mismatch = i != bi
        # a differing index must be a tie: same squared distance to both candidates
        tie_gap = 0.0
        if mismatch.any():
            other = ((p1[:, :, None] - p2[torch.arange(2)[:, None, None], bi]) ** 2).sum(-1)
            mine = ((p1[:, :, None] - p2[torch.arange(2)[:, None, None], i]) ** 2).sum(-1)
            tie_gap = max_abs(other[mismatch], mine[mismatch])
        check(f"K={k} [{device}] dists vs brute force", max_abs(d, bd), 1e-6,
              f"({int(mismatch.sum())} index differences, tie gap {tie_gap:.1e}; {dt * 1e3:.0f} ms)")
        g = p3d_shim.knn_gather(feats, i)
        check(f"K={k} [{device}] knn_gather vs indexing", max_abs(g, ref.knn_gather(feats, i)), 0.0)
        if up is not None:
            ud, ui, _ = up.ops.knn_points(p1.to(device), p2.to(device), K=k)
            check(f"K={k} [{device}] vs upstream glue (dists, idx)",
                  max(max_abs(d, ud.cpu()), float((i != ui.cpu()).sum())), 0.0)
            check(f"K={k} [{device}] knn_gather vs upstream", max_abs(g, up.ops.knn_gather(feats, i)), 0.0)
    return out


def random_tris(gen: torch.Generator, b: int, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Triangle soups (separate vertices): sizes over two decades, so that some fall below the kernel's
    5e-3 minimum area and are treated as segments/points."""
    centers = torch.rand(b, f, 1, 3, generator=gen) * 2 - 1
    scale = 10 ** (torch.rand(b, f, 1, 1, generator=gen) * 2 - 2.3)
    verts = (centers + torch.randn(b, f, 3, 3, generator=gen) * scale).reshape(b, 3 * f, 3)
    faces = torch.arange(3 * f).reshape(f, 3).expand(b, f, 3)
    return verts, faces


def check_point_face(ref, up, gen: torch.Generator, device: str) -> None:
    from avatar.flame.geometry import closest_triangles

    print("point_face_dist_forward (B=2, 3000 points, 1500 triangles, min area 5e-3, as deform_utils calls it)")
    verts, faces = random_tris(gen, 2, 1500)
    pts = torch.rand(2, 3000, 3, generator=gen) * 2.4 - 1.2
    meshes = p3d_shim.Meshes(verts.to(device), faces.to(device))
    pcls = p3d_shim.Pointclouds(pts.to(device))
    tris = meshes.verts_packed()[meshes.faces_packed()]
    args = (pcls.points_packed(), pcls.cloud_to_packed_first_idx(), tris, meshes.mesh_to_faces_packed_first_idx(),
            int(pcls.num_points_per_cloud().max()), 5e-3)
    t = time.perf_counter()
    d, i = p3d_shim.point_face_dist_forward(*args)
    dt = time.perf_counter() - t
    d, i = d.cpu().reshape(2, -1), i.cpu().reshape(2, -1) - torch.tensor([[0], [1500]])
    od, oi = closest_triangles(pts, verts, faces[0], 5e-3)
    mismatch = i != oi
    check(f"[{device}] dists vs avatar closest_triangles", max_abs(d, od), 1e-6,
          f"(max rel {((d - od).abs() / od.clamp_min(1e-12)).max().item():.1e}; {int(mismatch.sum())} index "
          f"differences; {dt * 1e3:.0f} ms)")
    if mismatch.any():
        print(f"    differing indices: distance gap {max_abs(d[mismatch], od[mismatch]):.1e} (ties/near ties)")
    sd, si = ref.point_face_dist_forward(*[a.cpu() if torch.is_tensor(a) else a for a in args])
    check(f"[{device}] vs stand-in (closest_triangles, packed)", max_abs(d.reshape(-1), sd), 1e-6,
          f"({int((si != i.reshape(-1) + torch.tensor([0, 1500]).repeat_interleave(3000)).sum())} index differences)")
    if up is not None:
        uref = up.loss.point_mesh_distance._PointFaceDistance.apply(*args)  # pytorch3d's own wrapper (dists only)
        check(f"[{device}] vs pytorch3d _PointFaceDistance", max_abs(d.reshape(-1), uref.cpu()), 0.0)


def sphere_meshes(b: int, sub: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    from avatar.flame.synthetic import icosphere

    v, f = icosphere(sub)
    v = torch.tensor(v, dtype=torch.float32)
    f = torch.tensor(f, dtype=torch.int64)
    out = []
    for _ in range(b):
        bumpy = v * (1 + 0.15 * torch.randn(v.shape[0], 1, generator=gen))
        center = torch.tensor([0.0, 0.0, 4.0]) + torch.randn(3, generator=gen) * torch.tensor([0.1, 0.1, 0.5])
        out.append(bumpy * 0.35 + center)
    return torch.stack(out), f.expand(b, -1, -1)


def soup_meshes(b: int, f: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping triangles of both orientations in front of the camera (view coords, Z forward)."""
    z = 3 + 2 * torch.rand(b, f, 1, 1, generator=gen)
    xy = (torch.rand(b, f, 1, 2, generator=gen) * 2 - 1) * z * math.tan(math.radians(FOV / 2))
    centers = torch.cat([xy, z], -1)
    verts = (centers + torch.randn(b, f, 3, 3, generator=gen) * 0.08).reshape(b, 3 * f, 3)
    return verts, torch.arange(3 * f).reshape(f, 3).expand(b, f, 3)


def rasterize_all(ref, up, verts, faces, size, cull, device, with_ours=True):
    """The official MeshRenderer call (pytorch3d view coordinates in, fragments out) through each path."""
    shim = p3d_shim.MeshRasterizer()(
        p3d_shim.Meshes(verts.to(device), faces.to(torch.int32).to(device)),
        cameras=p3d_shim.FoVPerspectiveCameras(device=torch.device(device), fov=FOV, znear=ZNEAR, zfar=ZFAR),
        raster_settings=p3d_shim.RasterizationSettings(cull_backfaces=cull, image_size=size))
    ours = None
    if with_ours:
        ours = ref._MeshRasterizer()(ref._Meshes(verts, faces.to(torch.int32)),
                                     types.SimpleNamespace(fov=FOV, znear=ZNEAR),
                                     types.SimpleNamespace(cull_backfaces=cull, image_size=size))
    upstream = None
    if up is not None:
        upstream = up.renderer.MeshRasterizer()(
            up.structures.Meshes(verts.to(device), faces.to(torch.int32).to(device)),
            cameras=up.renderer.FoVPerspectiveCameras(device=torch.device(device), fov=FOV, znear=ZNEAR, zfar=ZFAR),
            raster_settings=up.renderer.RasterizationSettings(cull_backfaces=cull, image_size=size))
    return shim, ours, upstream


def compare_fragments(tag: str, a, b, exact: bool) -> None:
    """``exact``: every output bit-identical. Else zbuf / bary within float rounding on the pixels that pick the
    same face, and a pixel may pick another face only on a depth tie within rounding (two faces meeting at the
    pixel centre, whose depths there differ by an ulp or two between the two computations)."""
    pa, pb = a.pix_to_face.cpu(), b.pix_to_face.cpu()
    za, zb = a.zbuf.cpu(), b.zbuf.cpu()
    same = (pa == pb) & (pa >= 0)
    diff = pa != pb
    ties = diff & (pa >= 0) & (pb >= 0) & ((za - zb).abs() <= 4 * torch.finfo(torch.float32).eps * za.abs())
    zd = max_abs(za[same], zb[same])
    bd = max_abs(a.bary_coords.cpu()[same], b.bary_coords.cpu()[same])
    bg = (pa < 0) & (pb < 0)
    bgd = max(max_abs(za[bg], zb[bg]), max_abs(a.bary_coords.cpu()[bg], b.bary_coords.cpu()[bg]))
    covered = f"of {pa.numel()} px, {int((pa >= 0).sum())} covered"
    if exact:
        check(f"{tag}: pix_to_face differences", int(diff.sum()), 0, f"({covered})")
    else:
        check(f"{tag}: pix_to_face differences (not depth ties)", int((diff & ~ties).sum()), 0,
              f"({int(ties.sum())} depth-tie pixels, {covered})")
    check(f"{tag}: zbuf / bary on common pixels", max(zd, bd), 0.0 if exact else 2e-6,
          f"(zbuf {zd:.1e}, bary {bd:.1e}, background {bgd:.1e})")


def check_rasterizer(ref, up, gen: torch.Generator, device: str, cpu_frags: dict | None) -> dict:
    print("MeshRasterizer + FoVPerspectiveCameras(fov=12, znear=0.1, zfar=10) + interpolate_face_attributes")
    cases = {"sphere 1280f": sphere_meshes(2, 3, gen), "sphere 5120f": sphere_meshes(2, 4, gen),
             "soup 2000f": soup_meshes(2, 2000, gen)}
    frags = {}
    for name, (verts, faces) in cases.items():
        for size in (64, 128, 512):
            for cull in (True, False):
                tag = f"{name} {size}^2 cull={int(cull)} [{device}]"
                t = time.perf_counter()
                shim, ours, upstream = rasterize_all(ref, up, verts, faces, size, cull, device, device == "cpu")
                frags[(name, size, cull)] = shim
                if ours is not None:
                    compare_fragments(f"{tag} vs avatar.render", shim, ours, exact=False)
                if upstream is not None:
                    compare_fragments(f"{tag} vs upstream glue", shim, upstream, exact=True)
                if cpu_frags is not None:  # CUDA (coarse-to-fine: bin_size 8 at 64^2, 16 at 128^2, 32 at 512^2)
                    compare_fragments(f"{tag} vs CPU kernel", shim, cpu_frags[(name, size, cull)], exact=False)
                if size == 512 and not cull:
                    attrs = torch.randn(faces.shape[0] * faces.shape[1], 3, 4, generator=gen).to(device)
                    img = p3d_shim.interpolate_face_attributes(shim.pix_to_face, shim.bary_coords, attrs)
                    mine = ref.interpolate_face_attributes(shim.pix_to_face.cpu(), shim.bary_coords.cpu(),
                                                           attrs.cpu())
                    check(f"{name} [{device}] interpolate_face_attributes vs avatar.render", max_abs(img.cpu(), mine),
                          1e-5)
                    if up is not None:
                        uimg = up.ops.interpolate_face_attributes(shim.pix_to_face, shim.bary_coords, attrs)
                        check(f"{name} [{device}] interpolate_face_attributes vs upstream", max_abs(img, uimg), 0.0)
                print(f"    ({tag}: {time.perf_counter() - t:.2f} s for all paths)")
    return frags


def check_clipping(ref, up, gen: torch.Generator, device: str) -> None:
    print("z clipping (faces crossing z_clip = znear / 2 = 0.05; pytorch3d clips, the stand-in drops them)")
    f = 300  # triangles near the camera (centres at Z 0.04-0.4, on screen), vertices spread 0.04 in Z
    z = 0.04 + 0.36 * torch.rand(1, f, 1, 1, generator=gen)
    xy = (torch.rand(1, f, 1, 2, generator=gen) * 1.6 - 0.8) * z * math.tan(math.radians(FOV / 2))
    offsets = torch.randn(1, f, 3, 3, generator=gen) * torch.cat([0.03 * z.expand(-1, -1, -1, 2),
                                                                    torch.full_like(z, 0.04)], -1)
    verts = (torch.cat([xy, z], -1) + offsets).reshape(1, 3 * f, 3)
    faces = torch.arange(3 * f).reshape(1, f, 3)
    crossing = int(((verts.reshape(f, 3, 3)[..., 2] < ZNEAR / 2).sum(1) % 3 != 0).sum())
    shim, ours, upstream = rasterize_all(ref, up, verts, faces, 128, False, device, device == "cpu")
    if upstream is not None:
        compare_fragments(f"clipped soup 128^2 [{device}] vs upstream glue", shim, upstream, exact=True)
    if ours is not None:
        n = int((shim.pix_to_face.cpu() != ours.pix_to_face).sum())
        print(f"    {crossing} of {f} faces cross z_clip; vs avatar.render (drops them, by design): {n} of "
              f"{int((shim.pix_to_face >= 0).sum())} covered pixels differ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pytorch3d-src", type=Path, required=True, help="pytorch3d source folder")
    parser.add_argument("--pytorch3d-build", type=Path, default=None, help="build folder (default: torch's cache)")
    parser.add_argument("--no-upstream", action="store_true", help="skip the upstream-glue comparison")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t = time.perf_counter()
    ext = p3d_shim.load(args.pytorch3d_src, args.pytorch3d_build)
    print(f"pytorch3d {p3d_shim.VERSION} kernels loaded in {time.perf_counter() - t:.1f} s "
          f"({ext.__name__}, CUDA kernels: {ext.WITH_CUDA}); torch {torch.__version__}")
    ref = stand_ins()
    up = None if args.no_upstream else import_upstream(args.pytorch3d_src, ext)
    torch.manual_seed(args.seed)
    devices = ["cpu"] + (["cuda"] if ext.WITH_CUDA and torch.cuda.is_available() else [])
    cpu_frags = None
    for device in devices:
        gen = torch.Generator().manual_seed(args.seed)
        check_knn(ref, up, gen, device)
        check_point_face(ref, up, gen, device)
        frags = check_rasterizer(ref, up, gen, device, cpu_frags)
        cpu_frags = frags if device == "cpu" else cpu_frags
        check_clipping(ref, up, gen, device)
    print(f"\n{'FAIL: ' + ', '.join(FAILURES) if FAILURES else 'PASS'}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
