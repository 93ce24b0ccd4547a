"""A fitted GPHM avatar driven by a video (avatar/fitting/driving.py, avatar/fitting/reenact.py, `avatar reenact
AVATAR_DIR`) and exported as a 3DGS PLY (avatar/export/gphm.py, `avatar export AVATAR_DIR --ply`): a tiny avatar
fitted in a few steps on a synthetic prepared folder, synthetic driving videos read by a fake face backend, one
run of MediaPipe on a few frames of ../shared/media (skipped without it), and the command-line errors."""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

from avatar.cli import main as cli_main
from avatar.errors import InputError, InputNotFoundError, NoFaceError
from avatar.export import read_gaussian_ply
from avatar.export.gphm import export_gphm_ply, gphm_gaussians
from avatar.face.mediapipe_face import canonical_face, mediapipe_available
from avatar.fitting import PreparedVideo, is_gphm_avatar_dir
from avatar.fitting import driving as drv
from avatar.fitting import video_data as vd
from avatar.fitting.driving import DrivingSignals, extract_driving_signals, map_to_avatar
from avatar.fitting.gphm_fit import (
    CANONICAL_ORIGIN_M,
    CANONICAL_SCALE_M,
    FitConfig,
    fit_gphm_avatar,
    load_gphm_avatar,
)
from avatar.fitting.reenact import reenact_video
from avatar.io.video import VideoWriter

SHARED_MEDIA = Path(os.environ.get("AVATAR_SHARED_MEDIA", Path(__file__).resolve().parents[2] / "shared" / "media"))
TALK = SHARED_MEDIA / "videos" / "talk3.mp4"
RES = 16


# ----------------------------------------------------------------------------------------------------------
# fixtures: a tiny fitted avatar, synthetic driving videos, a fake face backend


def _prepared(root: Path, frames: int = 4, res: int = RES) -> PreparedVideo:
    """A synthetic folder in prepare_video's format (a bright ellipse on grey, a little head motion)."""
    rng = np.random.default_rng(0)
    (root / vd.CHUNKS_DIR).mkdir(parents=True, exist_ok=True)
    template = vd._expression_template()
    yy, xx = np.mgrid[0:res, 0:res] + 0.5
    arrays: dict[str, np.ndarray] = {"frame_index": np.arange(frames), "skipped": np.zeros(0, np.int64)}
    rots, trans, points = [], [], []
    for j in range(frames):
        yaw = 0.05 * math.sin(j)
        c, s = math.cos(yaw), math.sin(yaw)
        rots.append(np.diag([1.0, -1.0, -1.0]) @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]))
        trans.append(np.array([0.002 * j, 0.0, 1.8]))
        inside = ((xx - res / 2) / (0.3 * res)) ** 2 + ((yy - res / 2) / (0.38 * res)) ** 2 < 1
        img = np.full((res, res, 3), 90, np.uint8)
        img[inside] = 200
        arrays[f"image_{j:04d}"] = img
        arrays[f"matte_{j:04d}"] = (inside * 255).astype(np.uint8)
        points.append(template + rng.normal(0, 0.05, template.shape))
    arrays.update(rotation=np.stack(rots).astype(np.float32), translation=np.stack(trans).astype(np.float32),
                  points=np.stack(points).astype(np.float32), landmarks=np.zeros((frames, 478, 3), np.float32),
                  pose_scale=np.ones(frames, np.float32), reprojection_px=np.zeros(frames, np.float32))
    name = f"{vd.CHUNKS_DIR}/chunk_00000.npz"
    np.savez_compressed(root / name, **arrays)
    manifest = {"format": vd.FORMAT_NAME, "version": vd.FORMAT_VERSION, "status": "complete",
                "settings": {"video": "fake.mp4"}, "video": {"name": "fake.mp4", "width": res, "height": res,
                                                              "fps": "25/1", "num_frames": frames},
                "crop": {"x0": 0, "y0": 0, "side": res}, "resolution": res, "K": vd.intrinsics(res).tolist(),
                "chunks": [{"index": 0, "file": name, "first": 0, "last": frames, "frames": frames}],
                "skipped": {}, "frames": frames}
    (root / vd.MANIFEST).write_text(json.dumps(manifest))
    return PreparedVideo(root)


@pytest.fixture(scope="module")
def avatar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gphm")
    config = FitConfig.tiny(resolution=RES, num_points=64, identity_steps=1, finetune_steps=2)
    fit_gphm_avatar(_prepared(root / "prepared"), root / "avatar", config=config, device="cpu", progress=False)
    return root / "avatar"


@pytest.fixture(scope="module")
def avatar(avatar_dir: Path):
    return load_gphm_avatar(avatar_dir)


def _write_video(path: Path, levels: list[int], size: int = 64, audio: bool = False) -> Path:
    """Uniform frames of the given grey levels at 25 fps (with a second of a 440 Hz tone when ``audio``)."""
    silent = path.with_name(path.stem + "-silent.mp4") if audio else path
    with VideoWriter(silent, Fraction(25)) as writer:
        for level in levels:
            writer.write(np.full((size, size, 3), level, dtype=np.uint8))
    if audio:
        with av.open(str(silent)) as src, av.open(str(path), "w") as out:
            v_in = src.streams.video[0]
            v_out = out.add_stream_from_template(v_in)
            a_out = out.add_stream("aac", rate=16000)
            for packet in src.demux(v_in):
                if packet.dts is not None:
                    packet.stream = v_out
                    out.mux(packet)
            t = np.arange(16000) / 16000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for i in range(0, 16000, 1024):
                frame = av.AudioFrame.from_ndarray(tone[:, i:i + 1024], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, i
                for packet in a_out.encode(frame):
                    out.mux(packet)
            for packet in a_out.encode(None):
                out.mux(packet)
    return path


class FakeFace:
    """Faces by frame brightness: below 60 none; otherwise the canonical face turned by a yaw that grows with
    the brightness, its mouth open by ``(level - 60) / 40`` cm."""

    name = "fake"

    def _face(self, image: np.ndarray) -> SimpleNamespace:
        h, w = image.shape[:2]
        level = float(image.mean())
        canon = canonical_face().vertices.astype(np.float64)
        yaw = math.radians((level - 128) / 8)
        c, s = math.cos(yaw), math.sin(yaw)
        posed = canon @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T
        posed[14:18, 1] -= (level - 60) / 40  # the lower lip
        mesh = np.zeros((478, 3))
        mesh[:468] = posed * (0.03 * w) * np.array([1.0, -1.0, -1.0]) + np.array([w / 2, h / 2, 0.0])
        mesh[468:473] = mesh[[33, 133]].mean(0)
        mesh[473:] = mesh[[263, 362]].mean(0)
        box = np.array([w * 0.35, h * 0.35, w * 0.65, h * 0.65])
        return SimpleNamespace(box=box, score=0.9, mesh=mesh.astype(np.float32))

    def detect_boxes(self, image: np.ndarray) -> list:
        return [] if float(image.mean()) < 60 else [self._face(image)]

    def detect(self, image: np.ndarray) -> list:
        return self.detect_boxes(image)


def _count_frames(path: Path) -> tuple[int, int, bool]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        n = sum(1 for _ in container.decode(stream))
        return n, stream.codec_context.width, bool(container.streams.audio)


# ----------------------------------------------------------------------------------------------------------
# the avatar folder


def test_predicate_tells_avatar_folders(avatar_dir: Path, tmp_path: Path) -> None:
    assert is_gphm_avatar_dir(avatar_dir) and is_gphm_avatar_dir(str(avatar_dir))
    assert not is_gphm_avatar_dir(tmp_path) and not is_gphm_avatar_dir(tmp_path / "missing")
    (tmp_path / "avatar.json").write_text("{not json")
    assert not is_gphm_avatar_dir(tmp_path)
    (tmp_path / "avatar.json").write_text(json.dumps({"format": "something-else"}))
    assert not is_gphm_avatar_dir(tmp_path)
    (tmp_path / "avatar.json").write_text("[1, 2]")
    assert not is_gphm_avatar_dir(tmp_path)
    assert not is_gphm_avatar_dir(avatar_dir / "avatar.json")  # a file, not the folder


# ----------------------------------------------------------------------------------------------------------
# driving signals and their mapping


def test_driving_signals_hold_the_last_face(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "d.mp4", [20, 128, 150, 20, 100])
    sig = extract_driving_signals(video, resolution=32, backend=FakeFace(), progress=False)
    assert len(sig) == 5 and sig.fps == 25 and sig.frames_without_face == [0, 3] and sig.reference_index == 1
    assert sig.expressions.shape == (5, vd.EXPRESSION_DIM) and sig.world_to_camera.shape == (5, 4, 4)
    torch.testing.assert_close(sig.expressions[0], sig.expressions[1])  # before the first face: the first face's
    torch.testing.assert_close(sig.world_to_camera[3], sig.world_to_camera[2])  # held
    assert not torch.allclose(sig.expressions[1], sig.expressions[2])  # the mouth opens
    rot = sig.world_to_camera[:, :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-4, rtol=0)
    assert (sig.world_to_camera[:, 2, 3] > 0).all()  # the head is in front of the camera
    with pytest.raises(NoFaceError, match="no face in any of its 3 frames"):
        extract_driving_signals(_write_video(tmp_path / "dark.mp4", [10] * 3), backend=FakeFace(), progress=False)
    with pytest.raises(InputError, match="detect_boxes and detect"):
        extract_driving_signals(video, backend=object(), progress=False)


def test_absolute_is_as_is_and_relative_starts_at_the_avatars_neutral(avatar) -> None:
    n = 4
    gen = torch.Generator().manual_seed(0)
    expr = torch.randn(n, vd.EXPRESSION_DIM, generator=gen)
    poses = torch.eye(4).repeat(n, 1, 1)
    for i in range(n):
        a = 0.1 * i
        poses[i, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        poses[i, :3, 3] = torch.tensor([0.01 * i, 0.0, 3.6])
    sig = DrivingSignals(expr, poses, np.array([False, True, True, True]), Fraction(25))
    e_abs, p_abs = map_to_avatar(sig, avatar, relative=False)
    torch.testing.assert_close(e_abs, expr)
    torch.testing.assert_close(p_abs, poses)
    e_rel, p_rel = map_to_avatar(sig, avatar, relative=True)
    enc = avatar.signals
    torch.testing.assert_close(e_rel[1], enc.neutral)  # the reference frame (first with a face) -> the neutral
    torch.testing.assert_close(e_rel[3] - e_rel[2], expr[3] - expr[2])  # changes are kept
    torch.testing.assert_close(p_rel[1], avatar.reference_pose())  # -> the avatar's mean pose
    rel = p_rel[3, :3, :3] @ p_rel[2, :3, :3].T
    torch.testing.assert_close(rel, poses[3, :3, :3] @ poses[2, :3, :3].T, atol=1e-5, rtol=0)
    ratio = float(enc.reference_translation[2]) / 3.6  # translation changes scaled by the depth ratio
    torch.testing.assert_close(p_rel[3, :3, 3] - p_rel[1, :3, 3], (poses[3, :3, 3] - poses[1, :3, 3]) * ratio)


# ----------------------------------------------------------------------------------------------------------
# reenactment


def test_reenact_video_writes_every_frame_with_the_audio(avatar_dir: Path, tmp_path: Path) -> None:
    levels = [128, 20, 140, 160, 100, 128, 90]
    video = _write_video(tmp_path / "drive.mp4", levels, audio=True)
    out = tmp_path / "out.mp4"
    result = reenact_video(avatar_dir, video, out, batch_size=3, device="cpu", backend=FakeFace(), progress=False)
    assert result.path == out and out.is_file() and result.frames == len(levels)
    assert result.frames_without_face == [1] and result.fps == 25 and result.resolution == RES
    assert result.audio_mode in ("copy", "aac") and result.render_fps > 0
    frames, width, has_audio = _count_frames(out)
    assert frames == len(levels) and width == RES and has_audio
    # absolute driving, the first frames only, no audio
    out2 = tmp_path / "abs.mp4"
    r2 = reenact_video(avatar_dir, video, out2, relative=False, max_frames=3, audio=False, device="cpu",
                       backend=FakeFace(), progress=False)
    assert r2.frames == 3 and r2.audio_mode is None and _count_frames(out2)[:1] == (3,)
    # a loaded avatar passed in keeps its own render setting (the fast path is on only during the call)
    from avatar.fitting.gphm_fit import load_gphm_avatar

    loaded = load_gphm_avatar(avatar_dir)
    r3 = reenact_video(loaded, video, tmp_path / "o3.mp4", max_frames=2, audio=False, device="cpu",
                       backend=FakeFace(), progress=False)
    assert r3.frames == 2 and loaded.avatar.fast_inference is None
    loaded.enable_fast_inference(None, cuda_graphs=True)  # a caller's own setting, graphs included, comes back
    reenact_video(loaded, video, tmp_path / "o4.mp4", max_frames=2, audio=False, device="cpu", backend=FakeFace(),
                  progress=False)
    assert loaded.avatar.fast_inference.cuda_graphs and loaded.avatar.fast_inference.dtype is None


def test_reenact_renders_what_render_frames_renders(avatar, tmp_path: Path) -> None:
    from avatar.fitting.gphm_fit import render_frames
    from avatar.fitting.reenact import iter_reenact_frames

    gen = torch.Generator().manual_seed(1)
    expr = avatar.signals.neutral + 0.1 * torch.randn(5, vd.EXPRESSION_DIM, generator=gen)
    poses = avatar.reference_pose().repeat(5, 1, 1)
    frames = np.stack(list(iter_reenact_frames(avatar, expr, poses, batch_size=2)))
    ref = render_frames(avatar, expr, poses, batch_size=5)
    assert frames.shape == (5, RES, RES, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(frames.astype(np.float64) / 255, ref.permute(0, 2, 3, 1).numpy(), atol=1.5 / 255)


def test_fast_path_frames_equal_the_reference_on_cpu(avatar) -> None:
    """reenact_video's default (fast=True) on the CPU: the cached first layers in float32 give the reference's
    frames."""
    from avatar.fitting.reenact import iter_reenact_frames

    gen = torch.Generator().manual_seed(2)
    expr = avatar.signals.neutral + 0.1 * torch.randn(3, vd.EXPRESSION_DIM, generator=gen)
    poses = avatar.reference_pose().repeat(3, 1, 1)
    try:
        avatar.avatar.disable_fast_inference()
        ref = np.stack(list(iter_reenact_frames(avatar, expr, poses, batch_size=3)))
        avatar.enable_fast_inference(None)
        fast = np.stack(list(iter_reenact_frames(avatar, expr, poses, batch_size=3)))
    finally:
        avatar.avatar.disable_fast_inference()
    assert np.abs(fast.astype(int) - ref.astype(int)).max() <= 1


def test_cli_reenact_with_an_avatar_folder(avatar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    video = _write_video(tmp_path / "drive.mp4", [128, 140, 150, 128])
    calls = {}

    def fake_extract(path, *, resolution, max_frames, backend, progress):  # noqa: ANN001, ANN202
        calls.update(resolution=resolution, max_frames=max_frames)
        return extract_driving_signals(path, resolution=resolution, max_frames=max_frames, backend=FakeFace(),
                                       progress=progress)

    monkeypatch.setattr(drv, "extract_driving_signals", fake_extract)
    out = tmp_path / "cli.mp4"
    code = cli_main(["-q", "reenact", str(avatar_dir), str(video), "-o", str(out), "--batch-size", "2",
                     "--device", "cpu", "--max-frames", "3", "--absolute"])
    assert code == 0 and _count_frames(out)[0] == 3
    assert calls == {"resolution": 256, "max_frames": 3}  # MIN_SIGNAL_RESOLUTION: the mesh needs pixels


@pytest.mark.parametrize("extra, message", [
    (["--side-by-side"], "--side-by-side: not for a fitted GPHM avatar folder"),
    (["--pose", "camera", "--paste-back"], "--pose, --paste-back: not for a fitted GPHM avatar folder"),
    (["--model", "goha"], "--model"),
    (["--dtype", "bfloat16"], "--dtype"),
    (["--preprocess", "official"], "--preprocess official"),
    (["--save-avatar", "x.safetensors"], "--save-avatar"),
])
def test_cli_reenact_refuses_options_of_other_models(avatar_dir: Path, tmp_path: Path, extra: list[str],
                                                     message: str, caplog: pytest.LogCaptureFixture) -> None:
    video = _write_video(tmp_path / "drive.mp4", [128, 128])
    code = cli_main(["reenact", str(avatar_dir), str(video), "-o", str(tmp_path / "o.mp4"), *extra])
    assert code == 1 and message in caplog.text and not (tmp_path / "o.mp4").exists()


def test_cli_reenact_bad_folders_and_outputs(avatar_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    video = _write_video(tmp_path / "drive.mp4", [128, 128])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["reenact", str(empty), str(video), "-o", str(tmp_path / "o.mp4")]) == 1
    assert "is a folder but not a fitted GPHM avatar" in caplog.text
    caplog.clear()
    assert cli_main(["reenact", str(avatar_dir), str(video), "-o", str(tmp_path / "o.gif")]) == 1
    assert "must end in one of" in caplog.text
    caplog.clear()
    assert cli_main(["reenact", str(avatar_dir), str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o.mp4"),
                     "--device", "cpu"]) == 1
    assert "missing.mp4" in caplog.text
    with pytest.raises(InputError, match="batch_size"):
        reenact_video(avatar_dir, video, tmp_path / "o.mp4", batch_size=0)
    with pytest.raises(InputNotFoundError, match="not a fitted GPHM avatar folder"):
        reenact_video(empty, video, tmp_path / "o.mp4", device="cpu")


@pytest.mark.media
@pytest.mark.skipif(not (TALK.is_file() and mediapipe_available()), reason="needs talk3.mp4 and mediapipe")
def test_real_driving_video_through_mediapipe(avatar_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "talk.mp4"
    result = reenact_video(avatar_dir, TALK, out, max_frames=4, batch_size=4, device="cpu", progress=False)
    assert result.frames == 4 and result.frames_without_face == [] and _count_frames(out)[0] == 4
    assert result.audio_mode in ("copy", "aac", None)
    # the signals-only path gives what the fitting preparation gives for the same frames
    sig = extract_driving_signals(TALK, resolution=512, max_frames=3, progress=False)
    prepared = vd.prepare_video(TALK, tmp_path / "prepared", resolution=512, max_frames=3, progress=False)
    assert sig.crop == tuple(prepared.manifest["crop"][k] for k in ("x0", "y0", "side"))
    torch.testing.assert_close(sig.expressions, prepared.expressions())
    torch.testing.assert_close(sig.world_to_camera, torch.stack([prepared[i]["world_to_camera"] for i in range(3)]))


# ----------------------------------------------------------------------------------------------------------
# the PLY export


def test_ply_round_trip_world_and_canonical(avatar, avatar_dir: Path, tmp_path: Path) -> None:
    n = int(avatar.avatar.means.shape[0])
    out = export_gphm_ply(avatar_dir, tmp_path / "a.ply")
    raw = out.read_bytes()
    header = raw[:raw.index(b"end_header\n") + len(b"end_header\n")].decode("ascii").splitlines()
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
             "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert header == ["ply", "format binary_little_endian 1.0", f"element vertex {n}",
                      *[f"property float {k}" for k in names], "end_header"]
    assert len(raw) == len("\n".join(header)) + 1 + n * len(names) * 4
    ply = read_gaussian_ply(out)
    g = gphm_gaussians(avatar, frame="canonical")
    assert ply.num_gaussians == n and ply.sh_degree == 0 and ply.extra_features is None
    np.testing.assert_allclose(ply.means, g["means"] * CANONICAL_SCALE_M + np.array(CANONICAL_ORIGIN_M), atol=1e-6)
    np.testing.assert_allclose(ply.scales, g["scales"] * CANONICAL_SCALE_M, rtol=1e-5)
    np.testing.assert_allclose(ply.quats, g["quats"], atol=1e-6)
    np.testing.assert_allclose(ply.opacities, g["opacities"], atol=1e-5)
    np.testing.assert_allclose(ply.colors, g["colors"], atol=1e-5)
    assert (ply.colors >= -1e-6).all() and (ply.colors <= 1 + 1e-6).all()
    # the colours are the raw image's: (features[:3] + 1) / 2 of the neutral Gaussians
    feats = avatar.neutral_gaussians().features[0, :, :3].double()
    np.testing.assert_allclose(ply.colors, ((feats + 1) / 2).clamp(0, 1).numpy(), atol=1e-5)
    # the head is about 25 cm tall in metres; the same Gaussians in canonical units with the extra channels
    assert 0.05 < float(np.ptp(ply.means[:, 1])) < 1.0
    canon = read_gaussian_ply(export_gphm_ply(avatar, tmp_path / "c.ply", frame="canonical", extra_features=True))
    np.testing.assert_allclose(canon.means, g["means"], atol=1e-6)
    c = avatar.avatar.config.fields.color_dim
    assert canon.extra_features is not None and canon.extra_features.shape == (n, c - 3)
    np.testing.assert_allclose(canon.extra_features, g["features"], atol=1e-5)
    with pytest.raises(InputError, match="frame"):
        gphm_gaussians(avatar, frame="camera")


def test_world_frame_gaussians_render_like_the_avatar(avatar) -> None:
    """The PLY's world-frame Gaussians, splatted with the camera alone, give the avatar's own raw feature map."""
    from avatar.render.gaussians import rasterize_gaussians

    g = gphm_gaussians(avatar, frame="world")
    neutral = avatar.neutral_gaussians()
    pose = avatar.reference_pose()[None]
    ks, size = avatar.feature_intrinsics(1)
    own = avatar.avatar.render(neutral, avatar.canonical_to_world()[None], ks, size, viewmats=pose,
                               backend="reference").feature_map

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).float()[None]

    world = rasterize_gaussians(t(g["means"]), t(g["quats"]), t(g["scales"]), t(g["opacities"]),
                                neutral.features, pose, ks, size, size, backend="reference").features
    assert own.abs().max() > 0.01
    torch.testing.assert_close(world, own, atol=1e-4, rtol=1e-4)


def _export(argv: list[str]) -> int:
    return cli_main(["export", *argv])


def test_cli_export_ply_and_its_errors(avatar_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = int(load_gphm_avatar(avatar_dir).avatar.means.shape[0])
    out = tmp_path / "head.ply"
    assert _export([str(avatar_dir), "--ply", str(out), "--device", "cpu"]) == 0
    assert read_gaussian_ply(out).num_gaussians == n
    assert _export([str(avatar_dir), "--ply", str(tmp_path / "x.ply"), "--extra-features", "--canonical"]) == 0
    assert read_gaussian_ply(tmp_path / "x.ply").extra_features is not None
    cases = [
        ([str(avatar_dir), "--mesh", str(tmp_path / "m.glb")], "export it with --ply"),
        ([str(avatar_dir), "--ply", str(tmp_path / "m.glb")], "must end in .ply"),
        ([str(avatar_dir), "--ply", str(tmp_path / "m.ply"), "--level", "3"], "--level applies to --mesh"),
        ([str(avatar_dir), "--ply", str(tmp_path / "m.ply"), "--metres", "--motion-from", "a"],
         "--motion-from, --metres apply to --mesh"),
        ([str(tmp_path), "--ply", str(tmp_path / "m.ply")], "is not a fitted GPHM avatar folder"),
        ([str(tmp_path / "me.safetensors"), "--ply", str(tmp_path / "m.ply")], "a saved one-shot avatar"),
        ([str(tmp_path / "me.safetensors"), "--mesh", str(tmp_path / "m.glb"), "--canonical"],
         "--canonical applies to --ply"),
    ]
    for argv, message in cases:
        caplog.clear()
        assert _export(argv) == 1, argv
        assert message in caplog.text, (argv, caplog.text)
    assert not (tmp_path / "m.ply").exists()
    with pytest.raises(SystemExit) as exc:  # one of --mesh / --ply is required, not both
        _export([str(avatar_dir), "--mesh", "a.glb", "--ply", "b.ply"])
    assert exc.value.code == 1


# ----------------------------------------------------------------------------------------------------------
# the app


def test_app_reenact_tab_drives_an_avatar_folder(avatar_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    gr = pytest.importorskip("gradio")
    import avatar.app as app

    def fake_extract(path, *, resolution, max_frames, backend, progress):  # noqa: ANN001, ANN202
        return extract_driving_signals(path, resolution=resolution, max_frames=max_frames, backend=FakeFace(),
                                       progress=progress)

    monkeypatch.setattr(drv, "extract_driving_signals", fake_extract)
    monkeypatch.setenv("AVATAR_DEVICE", "cpu")
    model = str(avatar_dir)
    video = _write_video(tmp_path / "drive.mp4", [128, 20, 140, 150, 128, 128])

    def no_progress(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        pass

    path, text, cache = app.reenact(None, video, model, "relative", True, False, 0.2, False, {"k": 1},
                                    progress=no_progress)
    assert _count_frames(Path(path))[0] == 5  # 0.2 s at 25 fps
    assert "fitted GPHM avatar" in text and "1 frames without a face" in text and cache == {"k": 1}
    assert "fitted GPHM avatar" in app._model_label(model) and "Reenact" in app.model_status(model)
    assert (model, model) in [(v, v) for _, v in app.model_choices(model, static=False)]
    with pytest.raises(gr.Error, match="Side by side and paste-back"):
        app.reenact(None, video, model, "relative", True, True, 1.0, False, None, progress=no_progress)
    with pytest.raises(gr.Error, match="driving video first"):
        app.reenact(None, None, model, "relative", True, False, 1.0, False, None, progress=no_progress)
    with pytest.raises(gr.Error, match="driven by a video in the Reenact tab"):
        app.reconstruct(str(video), model, 0, 0, 8, None, progress=no_progress)
    assert not app._is_gphm_avatar(str(tmp_path)) and not app._is_gphm_avatar(app.TINY)
