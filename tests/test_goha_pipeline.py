"""GOHAPipeline (avatar/pipelines/goha.py) end to end with tiny random networks: avatars, reenactment, views,
save/load, the registry entry, the CLI and ``eval.run --model``; bad inputs give clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_fakes import fake_scorer_kwargs
from PIL import Image

from avatar.cli import main
from avatar.errors import (
    AssetNotFoundError,
    ImageReadError,
    InputError,
    NoFaceError,
    UnknownOptionValueError,
)
from avatar.hub import registry
from avatar.io import probe_video
from avatar.pipelines import AvatarPipeline, Portrait4DPipeline
from avatar.pipelines.auto import load_pipeline, pipeline_class_for
from avatar.pipelines.base import AvatarLike
from avatar.pipelines.goha import GOHAAvatar, GOHAPipeline, goha_cameras, relative_camera
from avatar.render.camera import inference_label, orbit_labels, view_label


@pytest.fixture(scope="module")
def pipe() -> GOHAPipeline:
    return GOHAPipeline.tiny(seed=0)


@pytest.fixture
def media(shared_media: Path) -> dict[str, Path]:
    paths = {"photo": shared_media / "portraits" / "wild" / "public_domain" / "obama.jpg",
             "video": shared_media / "videos" / "talk3.mp4"}
    for p in paths.values():
        if not p.is_file():
            pytest.skip(f"{p} is absent")
    return paths


def _photo(seed: int = 0, size: int = 192) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


class _NoFaces:
    def detect_batch(self, images: list[np.ndarray]) -> list[list]:
        return [[] for _ in images]


# ---------------------------------------------------------------------------------------------------------
# the interface


def test_pipeline_and_avatar_share_the_interface(pipe: GOHAPipeline) -> None:
    assert issubclass(GOHAPipeline, AvatarPipeline) and issubclass(Portrait4DPipeline, AvatarPipeline)
    for cls in (GOHAPipeline, Portrait4DPipeline):
        for name in ("create_avatar", "load_avatar", "iter_reenact", "reenact", "render_views", "render_orbit",
                     "render_angles", "save_pretrained", "from_pretrained", "tiny", "to"):
            assert callable(getattr(cls, name)), (cls, name)
    avatar = pipe.create_avatar(_photo())
    assert isinstance(avatar, AvatarLike) and isinstance(avatar, GOHAAvatar)
    assert avatar.source_crop.shape == (512, 512, 3) and avatar.align is not None
    assert avatar.state.to("cpu").canonical_plane.shape == avatar.state.canonical_plane.shape
    assert pipe.random_init and pipe.can_reenact and pipe.output_resolution == 32
    assert GOHAPipeline.aligned_crop == "eg3d" and Portrait4DPipeline.aligned_crop == "portrait4d"


def test_fast_inference_options_reach_the_model() -> None:
    pipe = GOHAPipeline.tiny(seed=0)
    pipe.enable_fast_inference(None, None, cuda_graphs=True, sr_fused_modconv=False)
    m = pipe.model
    assert pipe.dtype is None and m.fast_inference_on and m.fused_rendering is None
    assert m.cuda_graphs and not m.sr_fused_modconv
    pipe.enable_fast_inference()  # the defaults: bf16, fused renderer, no graphs, upstream's SR convolutions
    assert pipe.dtype == torch.bfloat16 and m.fused_rendering == "ieee" and not m.cuda_graphs and m.sr_fused_modconv


def test_toolkit_cameras_map_to_goha_cameras() -> None:
    frontal = goha_cameras(inference_label(1))[0]
    pose = frontal[:16].view(4, 4)
    assert torch.allclose(pose[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0])), atol=5e-3)
    assert torch.linalg.norm(pose[:3, 3]).item() == pytest.approx(2.7, abs=1e-5)
    assert pose[2, 3].item() == pytest.approx(2.7, abs=1e-3)
    forward = pose[:3, 2]  # OpenCV: the camera looks down +z, at the pivot (0, 0, 0.2)
    target = torch.tensor([0.0, 0.0, 0.2]) - pose[:3, 3]
    assert torch.allclose(forward, target / target.norm(), atol=1e-5)
    assert torch.allclose(frontal[16:], torch.tensor([2985.29 / 700, 0, 0.5, 0, 2985.29 / 700, 0.5, 0, 0, 1]))
    # same direction from the origin as the toolkit's camera, for any view
    labels = torch.cat([view_label(25, -10), orbit_labels(5)])
    goha = goha_cameras(labels)
    d_toolkit = labels[:, [3, 7, 11]] / labels[:, [3, 7, 11]].norm(dim=-1, keepdim=True)
    assert torch.allclose(goha[:, [3, 7, 11]] / 2.7, d_toolkit, atol=1e-5)
    assert goha[0, 3] < 0  # yaw + (from the person's right) puts the camera at -x, as the toolkit's
    with pytest.raises(InputError, match=r"\(N, 25\)"):
        goha_cameras(torch.zeros(2, 16))
    # relative camera: no driving motion keeps the source's camera; the motion is carried over otherwise
    src, ref = goha_cameras(view_label(10, 5)), goha_cameras(view_label(0, 0))
    assert torch.allclose(relative_camera(src, ref, ref), src, atol=1e-5)
    moved = relative_camera(src, ref, goha_cameras(view_label(0, 20)))
    assert torch.linalg.norm(moved[0, [3, 7, 11]]).item() == pytest.approx(2.7, abs=1e-5)
    assert not torch.allclose(moved, src, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# end to end on the shared media


def test_end_to_end_on_shared_media(pipe: GOHAPipeline, media: dict[str, Path], tmp_path: Path) -> None:
    avatar = pipe.create_avatar(media["photo"])
    result = pipe.reenact(avatar, media["video"], max_frames=3, batch_size=2)
    assert result.frames.shape == (3, 32, 32, 3) and result.frames.dtype == np.uint8
    assert result.driving.shape == (3, 512, 512, 3)
    assert result.head_pose == "camera"  # GOHA has no neck: the head motion moves the camera
    assert float(result.fps) > 0 and result.frames_without_face == []
    views = pipe.render_views(avatar, orbit_labels(3), batch_size=2)
    assert views.shape == (3, 32, 32, 3)
    assert np.array_equal(pipe.render_angles(avatar, [(0, 0)]), pipe.render_views(avatar, view_label(0, 0)))
    # the avatar and the whole pipeline survive a round trip with equal outputs
    avatar.save(tmp_path / "a.safetensors")
    again = pipe.load_avatar(tmp_path / "a.safetensors")
    assert np.array_equal(pipe.render_views(again, orbit_labels(3), batch_size=2), views)
    folder = pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((folder / "pipeline.json").read_text())["format"] == "avatar4d-goha-pipeline"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert pipeline_class_for(folder) is GOHAPipeline
    loaded = load_pipeline(folder)
    assert type(loaded) is GOHAPipeline and loaded.random_init
    assert np.array_equal(loaded.render_views(loaded.load_avatar(tmp_path / "a.safetensors"), orbit_labels(3),
                                              batch_size=2), views)
    assert np.array_equal(loaded.reenact(again, media["video"], max_frames=3, batch_size=2).frames, result.frames)


def test_reenact_modes_and_frames_without_faces(pipe: GOHAPipeline) -> None:
    avatar = pipe.create_avatar(_photo(1))
    frames = [_photo(s, size) for s, size in ((2, 256), (3, 192), (4, 224))]
    relative = pipe.reenact(avatar, frames, smooth=False, batch_size=2)
    absolute = pipe.reenact(avatar, frames, relative=False, head_pose="camera", batch_size=2).frames
    fixed = pipe.reenact(avatar, frames, relative=False, head_pose="fixed", batch_size=2).frames
    assert relative.frames.shape == absolute.shape == fixed.shape == (3, 32, 32, 3)
    assert relative.head_pose == "camera" and relative.driving.shape == (3, 512, 512, 3)
    # relative: the first driving frame is the reference, so it shows the source as it is
    own = pipe.render_cameras(avatar, avatar.camera)[0]
    assert np.abs(relative.frames[0].astype(int) - own.astype(int)).max() <= 1
    # driving frames without a face hold the last good values; none at all is an error at the end
    blind = GOHAPipeline.tiny(seed=0)
    blind.preprocessor.detector = _NoFaces()
    stream = blind.iter_reenact(avatar, iter(frames))
    with pytest.raises(NoFaceError, match="no face found in any of the 3 driving frames"):
        list(stream)
    assert stream.frames_without_face == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs_give_clear_errors(pipe: GOHAPipeline, tmp_path: Path) -> None:
    blind = GOHAPipeline.tiny(seed=0)
    blind.preprocessor.detector = _NoFaces()
    with pytest.raises(NoFaceError, match="no face found"):
        blind.create_avatar(_photo())
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageReadError):
        pipe.create_avatar(corrupt)
    with pytest.raises(ImageReadError, match="does not exist"):
        pipe.create_avatar(tmp_path / "missing.jpg")
    with pytest.raises(InputError, match="square"):
        pipe.create_avatar(_photo()[:, :150], aligned=True)
    avatar = pipe.create_avatar(_photo())
    with pytest.raises(InputError, match="head_pose"):
        pipe.iter_reenact(avatar, [_photo()], head_pose="sideways")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="batch_size"):
        pipe.iter_reenact(avatar, [_photo()], batch_size=0)
    with pytest.raises(InputError, match=r"\(N, 25\)"):
        pipe.render_views(avatar, torch.zeros(2, 16))
    with pytest.raises(InputError, match="pairs"):
        pipe.render_angles(avatar, [(1.0, 2.0, 3.0)])  # type: ignore[list-item]
    with pytest.raises(UnknownOptionValueError, match="preprocess"):
        GOHAPipeline.tiny(preprocess="mtcnn")
    with pytest.raises(UnknownOptionValueError, match="matting"):
        GOHAPipeline.from_pretrained("goha", matting="grabcut")
    # avatars of another family or of another GOHA are refused, with the reason
    p4d = Portrait4DPipeline.tiny()
    p4d.create_avatar(_photo()).save(tmp_path / "p4d.safetensors")
    with pytest.raises(InputError, match="Portrait4D avatar"):
        pipe.load_avatar(tmp_path / "p4d.safetensors")
    with pytest.raises(InputError, match="not a GOHA avatar"):
        pipe.render_views(p4d.create_avatar(_photo()), orbit_labels(1))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a saved avatar"):
        pipe.load_avatar(tmp_path / "junk.safetensors")


# ---------------------------------------------------------------------------------------------------------
# registry and assets


def test_registry_entry() -> None:
    spec = registry.get_model("goha")
    assert spec.family == "goha" and spec.model_class == "avatar.models.goha:GOHA"
    assert spec.checkpoint == "goha-s3" and spec.pipeline_class == "avatar.pipelines.goha:GOHAPipeline"
    assert set(spec.requires) == {"deep3d-recon", "bfm-front", "retinaface-r50", "modnet-photographic"}
    assert "goha" in registry.pipeline_model_ids() and registry.pipeline_class(spec) is GOHAPipeline
    f = registry.FILES["goha-s3"]
    assert f.path == "src/logs/s3/checkpoint825000.ckpt" and f.fmt == "torch" and f.source == "gdrive"
    assert f.repo == "NVlabs/GOHA" and f.revision == "102abbf39cae76e0259b25412c1d2e8996e19192"
    assert f.url == "https://drive.google.com/file/d/1Fiz_AddgbAinh2ZsRn3MwAR0Qcl4o60V"
    assert "CC BY-NC-SA 4.0" in f.licence and "NVIDIA Source Code License" in f.licence
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "CC BY-NC-SA 4.0" in readme and "GOHA" in readme


def test_goha_is_offline_without_its_files() -> None:
    with pytest.raises(AssetNotFoundError, match="checkpoint825000.ckpt"):
        load_pipeline("goha")
    from avatar.hub.download import ensure_file

    with pytest.raises(AssetNotFoundError, match="Google Drive.*--from-dir"):
        ensure_file("goha-s3")


def test_official_checkpoint_from_dir_converts_and_loads(tmp_path: Path) -> None:
    """The Drive folder ``s3/`` (a tiny GOHA in the official format here) given with ``--from-dir``: found,
    converted without running code, the converted tensors load strictly; ``avatar download`` checks the names and
    shapes against the released GOHA."""
    from avatar.cli import _check_goha_checkpoint
    from avatar.hub.download import converted_dir, ensure_file
    from avatar.hub.weights import read_weights
    from avatar.models.goha import GOHA, GOHAConfig, model_state_to_official

    model = GOHA.tiny(seed=3)
    state = model.state_dict()
    official = model_state_to_official(state)
    deep3d = {f"net_recon.{k[len('exp_loss_fn.net_recon.'):]}": v for k, v in state.items()
              if k.startswith("exp_loss_fn.net_recon.")}
    (tmp_path / "drive" / "s3").mkdir(parents=True)
    torch.save({"iter": 825000, "model_state_dict": official}, tmp_path / "drive" / "s3" / "checkpoint825000.ckpt")
    folder = ensure_file("goha-s3", local_dir=tmp_path / "drive")  # found under s3/ (the Drive folder's layout)
    assert folder == converted_dir(registry.FILES["goha-s3"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["repo"] == "NVlabs/GOHA" and "CC BY-NC-SA" in manifest["licence"]
    again = GOHA.tiny(seed=4)
    again.load_official(read_weights(folder), deep3d)
    for k, v in again.state_dict().items():
        assert torch.equal(v, state[k]), k
    weights = next(folder.glob("*.safetensors"))
    assert "every tensor of GOHA" in _check_goha_checkpoint(weights, GOHAConfig.tiny())
    # `avatar download` checks names and shapes against the released GOHA: a tiny one is refused, not cached
    assert main(["-q", "download", "--file", "goha-s3", "--from-dir", str(tmp_path / "drive"), "--force"]) == 1
    assert not folder.exists()


# ---------------------------------------------------------------------------------------------------------
# the CLI


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("goha-cli") / "tiny"
    assert main(["-q", "tiny", str(folder), "--model", "goha"]) == 0
    return folder


def test_cli_with_the_tiny_model(tiny_dir: Path, media: dict[str, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert json.loads((tiny_dir / "pipeline.json").read_text())["pipeline_class"].endswith(":GOHAPipeline")
    out = tmp_path / "orbit.mp4"
    assert main(["reconstruct", str(media["photo"]), "-o", str(out), "--model", str(tiny_dir), "--frames", "3",
                 "--device", "cpu", "--save-avatar", str(tmp_path / "a.safetensors")]) == 0
    assert probe_video(out).num_frames == 3
    out2 = tmp_path / "reenact.mp4"
    assert main(["reenact", str(tmp_path / "a.safetensors"), str(media["video"]), "-o", str(out2), "--model",
                 str(tiny_dir), "--max-frames", "3", "--batch-size", "2", "--side-by-side", "--device", "cpu"]) == 0
    info = probe_video(out2)
    assert info.num_frames == 3 and info.width == 3 * info.height
    assert "random weights" in capsys.readouterr().err
    # bad option values and bad inputs: one ERROR line, exit 1, no output
    bad = tmp_path / "bad.mp4"
    with pytest.raises(SystemExit) as exit_info:  # argparse's one-line error, before anything is loaded
        main(["reconstruct", str(media["photo"]), "-o", str(bad), "--model", str(tiny_dir), "--preprocess", "mtcnn"])
    assert exit_info.value.code == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["reenact", str(tmp_path / "a.safetensors"), str(media["video"]), "-o", str(bad), "--model",
              str(tiny_dir), "--max-frames", "0"])
    assert exit_info.value.code == 1
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8 broken")
    assert main(["reconstruct", str(corrupt), "-o", str(bad), "--model", str(tiny_dir)]) == 1
    assert main(["-q", "reconstruct", str(media["photo"]), "-o", str(bad), "--model", "goha"]) == 1  # offline
    assert not bad.exists()
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "checkpoint825000.ckpt" in err


# ---------------------------------------------------------------------------------------------------------
# eval.run --model goha


def _celeba(root: Path, n: int = 2, size: int = 128) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        (root / f"img{i}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"img{i}" / "000000.png")
    return root


def test_eval_run_with_goha(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eval.run import run

    data = _celeba(tmp_path / "data")
    args = ["--benchmark", "celeba", "--protocol", "cross-identity", "--data", str(data), "--metrics", "csim,aed",
            "--device", "cpu", "--allow-random-weights", "--no-progress", "--batch-size", "2"]
    summary = run([*args, "--model", str(tiny_dir), "--out", str(tmp_path / "out")], scorer_kwargs=fake_scorer_kwargs())
    assert summary["samples"] == 1 and summary["metrics"]["csim"]["count"] == 1
    preds = sorted((tmp_path / "out" / "predictions").rglob("*.png"))
    assert len(preds) == 1 and Image.open(preds[0]).size == (128, 128)  # resized to the ground truth's size
    assert json.loads((tmp_path / "out" / "predictions" / ".generation.json").read_text())["random_init"]
    # the model id goes through the registry to GOHAPipeline.from_pretrained, as any family's
    asked = []
    original = GOHAPipeline.from_pretrained

    def fake_from_pretrained(cls, name, device="cpu", dtype=None, preprocess=None, **kw):  # noqa: ANN001, ANN202
        asked.append(str(name))
        return original(tiny_dir, device=device)

    monkeypatch.setattr(GOHAPipeline, "from_pretrained", classmethod(fake_from_pretrained))
    summary = run([*args, "--model", "goha", "--out", str(tmp_path / "out2")], scorer_kwargs=fake_scorer_kwargs())
    assert asked == ["goha"] and summary["metrics"]["csim"]["count"] == 1
    assert math.isfinite(summary["metrics"]["csim"]["value"])
