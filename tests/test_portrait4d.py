"""The assembled Portrait4D reconstructor: API, caching, static mode, deformation, loading and saving."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fake_upstream import fake_modules, make_persistent
from safetensors.torch import load_file, save_file

from avatar.errors import CheckpointMismatchError
from avatar.flame import build_deformer_buffers
from avatar.flame.synthetic import synthetic_flame_assets
from avatar.hub.convert import convert_file
from avatar.hub.download import AssetNotFoundError
from avatar.model_cards import render_model_card
from avatar.models.portrait4d import (
    AvatarState,
    HeadPose,
    Portrait4D,
    Portrait4DConfig,
    official_to_model_state,
)
from avatar.render.camera import inference_label, orbit_labels

STATE_DICT_JSON = Path(__file__).resolve().parents[2] / "shared" / "design" / "portrait4d_psi_state_dict.json"
OUTPUTS = ("image", "image_raw", "depth", "alpha")


def _inputs(batch: int = 2, seed: int = 0, motion_dim: int = 12, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
        "motion_app": torch.randn(batch, motion_dim, generator=g),
        "motion": torch.randn(batch, motion_dim, generator=g),
        "camera": orbit_labels(max(batch, 2))[:batch],
    }


@pytest.fixture(scope="module")
def model() -> Portrait4D:
    return Portrait4D.tiny()


@pytest.fixture(scope="module")
def flame_buffers() -> dict[str, torch.Tensor]:
    return build_deformer_buffers(**synthetic_flame_assets())


# ----------------------------------------------------------------------------------------------------------
# shapes, names and configs


def test_render_outputs_shapes_and_ranges(model: Portrait4D) -> None:
    x = _inputs()
    out = model.render(model.encode(x["image"], x["motion_app"]), x["motion"], x["camera"])
    assert out["image"].shape == (2, 3, 512, 512)
    assert out["image_raw"].shape == (2, 3, 16, 16)
    assert out["depth"].shape == out["alpha"].shape == (2, 1, 16, 16)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert float(out["alpha"].min()) >= 0 and float(out["alpha"].max()) <= 1
    # depths lie inside the auto-plane range |cam_z| -/+ box/2 where the ray hits something
    assert float(out["depth"].min()) >= 4.2 - 0.65 - 1e-4 and float(out["depth"].max()) <= 4.2 + 0.65 + 1e-4
    # raw image = 2 * (features + T_bg * background) - 1 with features and background in (0, 1)
    assert float(out["image_raw"].min()) >= -1.01 and float(out["image_raw"].max()) <= 3.01


def test_official_config_state_dict_matches_official_names_and_shapes() -> None:
    official = json.loads(STATE_DICT_JSON.read_text()) if STATE_DICT_JSON.is_file() else None
    if official is None:
        pytest.skip("../shared/design/portrait4d_psi_state_dict.json not found")
    with torch.device("meta"):
        full = Portrait4D(Portrait4DConfig())
    ours = {k: list(v.shape) for k, v in full.state_dict().items()}
    mapped = official_to_model_state({k: torch.empty(0) for k in official})
    assert set(mapped) == set(official) == set(ours)
    assert {k: official[k] for k in mapped} == ours
    assert len(ours) == 382
    n_params = sum(p.numel() for p in full.parameters())
    assert abs(n_params / 1e6 - 224.77) < 0.01  # the official total (and what the official build prints)


def test_config_from_official_init_kwargs_and_json_round_trip(tmp_path: Path) -> None:
    kwargs = {
        "img_resolution": 512, "mot_dims": 548, "w_dim": 512, "sr_num_fp16_res": 4, "has_background": True,
        "has_superresolution": True, "flame_full": True, "num_blocks_neutral": 4, "num_blocks_motion": 4,
        "motion_map_layers": 2, "neural_rendering_resolution": 64, "masked_sampling": False,
        "deformation_kwargs": {"flame_cfg_path": "models/FLAME/cfg.yaml", "box_warp": 1.3},
        "rendering_kwargs": {"depth_resolution": 48, "depth_resolution_importance": 48, "ray_start": "auto-plane",
                             "ray_end": "auto-plane", "box_warp": 1.3, "clamp_mode": "softplus",
                             "superresolution_noise_mode": "none", "sr_antialias": True, "density_reg": 0.25,
                             "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC"},
        "sr_kwargs": {"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only",
                      "use_ws_ones": False},
    }
    cfg = Portrait4DConfig.from_official(kwargs)
    assert cfg == Portrait4DConfig()  # the released checkpoints are the defaults, rendered at 128
    assert Portrait4DConfig.from_official(kwargs, static=True).is_static
    with pytest.raises(ValueError, match="flame_full"):
        Portrait4DConfig.from_official({**kwargs, "flame_full": False})
    cfg.save(tmp_path / "c.json")
    assert Portrait4DConfig.load(tmp_path / "c.json") == cfg
    tiny = Portrait4DConfig.tiny()
    tiny.save(tmp_path / "t.json")
    assert Portrait4DConfig.load(tmp_path / "t.json") == tiny


# ----------------------------------------------------------------------------------------------------------
# caching, batching, static mode


def test_cached_render_equals_reference_forward(model: Portrait4D) -> None:
    x = _inputs()
    ref = model.reference_forward(x["image"], x["motion_app"], x["motion"], x["camera"])
    out = model.render(model.encode(x["image"], x["motion_app"]), x["motion"], x["camera"])
    for k in OUTPUTS:
        assert torch.equal(out[k], ref[k]), k


def test_one_avatar_many_driving_frames_equals_frame_by_frame(model: Portrait4D) -> None:
    x = _inputs(batch=1)
    motions = torch.randn(3, 12, generator=torch.Generator().manual_seed(5))
    cams = orbit_labels(3)
    state = model.encode(x["image"], x["motion_app"])
    batched = model.render(state, motions, cams)
    for i in range(3):
        single = model.render(state, motions[i:i + 1], cams[i:i + 1])
        for k in OUTPUTS:
            torch.testing.assert_close(batched[k][i:i + 1], single[k], atol=1e-5, rtol=1e-5)
    # the driving motion matters for the 4D model
    other = model.render(state, -motions, cams)
    assert (other["image"] - batched["image"]).abs().max() > 1e-3


def test_static_model_ignores_driving_motion_and_caches_planes() -> None:
    static = Portrait4D.tiny(motion_scale=0.0)
    x = _inputs()
    state = static.encode(x["image"])  # no source motion needed
    assert state.planes is not None and state.planes.shape == (2, 3, 4, 32, 32)
    a = static.render(state, None, x["camera"])
    b = static.render(state, x["motion"], x["camera"])
    ref = static.reference_forward(x["image"], x["motion_app"], torch.randn_like(x["motion"]), x["camera"])
    for k in OUTPUTS:
        assert torch.equal(a[k], b[k])
        torch.testing.assert_close(a[k], ref[k], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="driving_motion is required"):
        Portrait4D.tiny().render(Portrait4D.tiny().encode(x["image"], x["motion_app"]), None, x["camera"])


def test_bf16_fast_path_matches_fp32_reference() -> None:
    model = Portrait4D.tiny()
    x = _inputs()
    ref = model.reference_forward(x["image"], x["motion_app"], x["motion"], x["camera"])
    model.enable_fast_inference(torch.bfloat16)
    try:
        out = model.render(model.encode(x["image"], x["motion_app"]), x["motion"], x["camera"])
    finally:
        model.enable_fast_inference(None)
    for k in ("image", "image_raw"):
        rel = float((out[k] - ref[k]).norm() / ref[k].norm())
        assert 0 < rel < 1e-2, (k, rel)  # > 0: bf16 really ran


def test_avatar_state_save_load(model: Portrait4D, tmp_path: Path) -> None:
    x = _inputs(batch=1)
    state = model.encode(x["image"], x["motion_app"], flame_shape=torch.randn(1, 300))
    state.save(tmp_path / "avatar.safetensors")
    again = AvatarState.load(tmp_path / "avatar.safetensors")
    assert again.token_hw == state.token_hw
    for k, v in state.tensors().items():
        assert torch.equal(v, again.tensors()[k])
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a saved Portrait4D avatar state"):
        AvatarState.load(tmp_path / "other.safetensors")


# ----------------------------------------------------------------------------------------------------------
# head-pose deformation


def test_head_pose_deformation(flame_buffers: dict[str, torch.Tensor]) -> None:
    model = Portrait4D.tiny()
    with pytest.raises(RuntimeError, match="no FLAME deformer"):
        model.head_pose_field(HeadPose(torch.zeros(1, 6)), None, 1)
    model.load_state_dict({**model.state_dict(), **{f"deformer.flame_deform.{k}": v for k, v in flame_buffers.items()}})
    x = _inputs(batch=1)
    state = model.encode(x["image"], x["motion_app"], flame_shape=torch.zeros(1, 300))
    plain = model.render(state, x["motion"], x["camera"])
    zero_pose = model.render(state, x["motion"], x["camera"], HeadPose(torch.zeros(1, 6)))
    for k in OUTPUTS:  # target and canonical meshes coincide: the field is the identity up to rounding
        torch.testing.assert_close(zero_pose[k], plain[k], atol=2e-3, rtol=1e-3)
    turned = model.render(state, x["motion"], x["camera"], HeadPose(torch.tensor([[0.0, 0.5, 0.0, 0, 0, 0]])))
    assert (turned["image_raw"] - plain["image_raw"]).abs().max() > 1e-2
    label = torch.cat([inference_label(1), torch.zeros(1, 300), torch.zeros(1, 100),
                       torch.tensor([[0.0, 0.5, 0.0, 0, 0, 0]]), torch.zeros(1, 6)], 1)
    from_label = model.render(state, x["motion"], x["camera"], HeadPose.from_label(label))
    assert torch.equal(from_label["image"], turned["image"])
    with pytest.raises(ValueError, match="head_pose.pose"):
        model.render(state, x["motion"], x["camera"], HeadPose(torch.zeros(1, 3)))


# ----------------------------------------------------------------------------------------------------------
# loading, saving, conversion


def test_save_pretrained_round_trip(flame_buffers: dict[str, torch.Tensor], tmp_path: Path) -> None:
    model = Portrait4D.tiny(seed=3)
    model.load_state_dict({**model.state_dict(), **{f"deformer.flame_deform.{k}": v for k, v in flame_buffers.items()}})
    folder = model.save_pretrained(tmp_path / "tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    again = Portrait4D.from_pretrained(folder)
    assert again.config == model.config and again.deformer.available and not again.is_random_init
    x = _inputs()
    a = model.render(model.encode(x["image"], x["motion_app"]), x["motion"], x["camera"])
    b = again.render(again.encode(x["image"], x["motion_app"]), x["motion"], x["camera"])
    for k in OUTPUTS:
        assert torch.equal(a[k], b[k])


def _official_pickle(model: Portrait4D, path: Path, static: bool = False) -> None:
    """Pickle ``{'G_ema': model}`` the way EG3D's training loop does (persistent class with init kwargs)."""
    with fake_modules() as mods:
        make_persistent(model, "TriPlaneReconstructorNeutralize", "# source text, never executed\n",
                        mods.EasyDict(img_resolution=64, mot_dims=12), mods.reconstruct)
        with open(path, "wb") as f:
            pickle.dump({"G_ema": model, "training_set_kwargs": mods.EasyDict(static=static)}, f)


def test_convert_official_pickle_then_strict_load(flame_buffers: dict[str, torch.Tensor], tmp_path: Path) -> None:
    source = Portrait4D.tiny(seed=7)
    source.load_state_dict({**source.state_dict(), **{f"deformer.flame_deform.{k}": v for k, v in flame_buffers.items()}})
    expected = {k: v.clone() for k, v in source.state_dict().items()}
    x = _inputs()
    want = source.render(source.encode(x["image"], x["motion_app"]), x["motion"], x["camera"])
    _official_pickle(source, tmp_path / "ckpt.pkl")
    converted = convert_file(tmp_path / "ckpt.pkl", tmp_path / "converted")
    loaded = Portrait4D.from_official(tmp_path / "converted", config=Portrait4DConfig.tiny())
    assert set(loaded.state_dict()) == set(expected)
    got = loaded.render(loaded.encode(x["image"], x["motion_app"]), x["motion"], x["camera"])
    for k in OUTPUTS:
        assert torch.equal(got[k], want[k])
    # strictness: a missing tensor and a foreign tensor are both reported by name
    tensors = load_file(str(converted.weights))
    del tensors["decoder.net.0.weight"]
    save_file(tensors, str(converted.weights))
    with pytest.raises(CheckpointMismatchError, match=r"(?i)missing 1: decoder\.net\.0\.weight"):
        Portrait4D.from_official(tmp_path / "converted", config=Portrait4DConfig.tiny())
    tensors["decoder.net.0.weight"] = torch.zeros(1)
    save_file(tensors, str(converted.weights))
    with pytest.raises(CheckpointMismatchError, match="(?i)wrong shape"):
        Portrait4D.from_official(tmp_path / "converted", config=Portrait4DConfig.tiny())
    with pytest.raises(CheckpointMismatchError, match="not Portrait4D reconstructor keys"):
        official_to_model_state({"mapping.fc0.weight": torch.zeros(1)})


def test_static_flag_is_read_from_the_checkpoint(tmp_path: Path) -> None:
    _official_pickle(Portrait4D.tiny(seed=1), tmp_path / "static.pkl", static=True)
    convert_file(tmp_path / "static.pkl", tmp_path / "conv")
    cfg = Portrait4DConfig.tiny()
    meta = json.loads((tmp_path / "conv" / "static.json").read_text())
    assert meta["training_set_kwargs"]["static"] is True
    loaded = Portrait4D.from_official(tmp_path / "conv", config=replace(cfg, motion_scale=0.0))
    assert loaded.config.is_static


def test_from_pretrained_model_id_offline_says_what_to_do() -> None:
    with pytest.raises(AssetNotFoundError, match="avatar download portrait4d-v2"):
        Portrait4D.from_pretrained("portrait4d-v2")
    with pytest.raises(FileNotFoundError, match="neither a folder nor a known model id"):
        Portrait4D.from_pretrained("no-such-model")


def test_push_to_hub_uploads_weights_config_and_card(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: dict[str, object] = {}

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            calls["token"] = token

        def create_repo(self, repo_id: str, private: bool = False, exist_ok: bool = False) -> None:
            calls["repo"] = (repo_id, private)

        def upload_folder(self, repo_id: str, folder_path: str, commit_message: str) -> str:
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["card"] = (Path(folder_path) / "README.md").read_text()
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    card = render_model_card({"license": "mit", "model_id": "me/tiny", "description": "Tiny test model.",
                              "source_file": "none", "revision": "0", "source_sha256": "0", "eval_table": "-"})
    url = Portrait4D.tiny().push_to_hub("me/tiny", token="t", model_card=card)
    assert url.endswith("/commit/0")
    assert calls["files"] == ["README.md", "config.json", "model.safetensors"]
    assert "# me/tiny" in str(calls["card"]) and "{{" not in str(calls["card"])
    with pytest.raises(KeyError, match="model card values missing"):
        render_model_card({"license": "mit"})


# ----------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.zeros(1, 3, 32, 32), r"shape \(B, 3, 64, 64\)"),
        (torch.zeros(1, 4, 64, 64), r"shape \(B, 3, 64, 64\)"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float tensor in"),
        (torch.full((1, 3, 64, 64), 200.0), r"in \[-1, 1\]"),
    ],
)
def test_bad_source_images_raise_value_error(model: Portrait4D, image: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model.encode(image, torch.zeros(1, 12))


def test_bad_motion_and_camera_raise_value_error(model: Portrait4D) -> None:
    x = _inputs(batch=1)
    with pytest.raises(ValueError, match=r"source_motion must have shape \(B, 12\)"):
        model.encode(x["image"], torch.zeros(1, 548))
    state = model.encode(x["image"], x["motion_app"])
    with pytest.raises(ValueError, match=r"driving_motion must have shape \(B, 12\)"):
        model.render(state, torch.zeros(12), x["camera"])
    with pytest.raises(ValueError, match=r"camera must be \(B, 25\)"):
        model.render(state, x["motion"], torch.zeros(1, 16))
    with pytest.raises(ValueError, match="camera has batch 2"):
        model.render(state, torch.zeros(3, 12), orbit_labels(2))
    two = model.encode(torch.zeros(2, 3, 64, 64), torch.zeros(2, 12))
    with pytest.raises(ValueError, match="holds 2 avatars but 3 driving frames"):
        model.render(two, torch.zeros(3, 12), inference_label(1))


# ----------------------------------------------------------------------------------------------------------
# the side-by-side comparison with the official code


def _comparison_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "compare_official_portrait4d.py"
    spec = importlib.util.spec_from_file_location("compare_official_portrait4d", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_comparison_script_skips_without_a_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    assert _comparison_script().main([]) == 2
    assert "comparison skipped" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PORTRAIT4D_REPO"), reason="set PORTRAIT4D_REPO to an official checkout")
def test_matches_the_official_reconstructor() -> None:
    args = ["--official", os.environ["PORTRAIT4D_REPO"], "--batch", "1"]
    if os.environ.get("PORTRAIT4D_EXTRA_PATH"):
        args += ["--extra-path", os.environ["PORTRAIT4D_EXTRA_PATH"]]
    assert _comparison_script().main(args) == 0


def test_fast_path_settings_are_not_changed_by_the_reference() -> None:
    """reference_forward runs float32 without flipping the model's fast-path settings, and compiling the fast
    path registers no module (the state dict keeps its official names)."""
    model = Portrait4D.tiny(seed=3)
    keys = set(model.state_dict())
    x = _inputs()
    want = model.reference_forward(x["image"], x["motion_app"], x["motion"], x["camera"])
    model.enable_fast_inference(torch.bfloat16, channels_last=False)
    fast = model.fast
    got = model.reference_forward(x["image"], x["motion_app"], x["motion"], x["camera"])
    assert model.fast is fast and fast.dtype == torch.bfloat16
    for k in OUTPUTS:
        assert torch.equal(got[k], want[k])
    model.compile_fast_path()
    assert set(model.state_dict()) == keys and set(model.compiled) == {"planes", "decoder", "superresolution"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_and_compiled_paths_match_the_reference_on_cuda() -> None:
    model = Portrait4D.tiny(seed=5).cuda()
    x = {k: v.cuda() for k, v in _inputs().items()}
    ref = model.reference_forward(x["image"], x["motion_app"], x["motion"], x["camera"])
    state = model.encode(x["image"], x["motion_app"])
    eager = model.render(state, x["motion"], x["camera"])
    for k in OUTPUTS:
        torch.testing.assert_close(eager[k], ref[k], atol=1e-4, rtol=1e-4)
    model.enable_fast_inference(torch.bfloat16).compile_fast_path()
    state = model.encode(x["image"], x["motion_app"])
    fast = model.render(state, x["motion"], x["camera"])
    again = model.reference_forward(x["image"], x["motion_app"], x["motion"], x["camera"])
    # the reference stays float32 (no autocast): only the fused attention kernels and NHWC convolutions that
    # enable_fast_inference switched on module-wide differ, at float32 rounding level (seen: 1.3e-3 max on an H100)
    for k in OUTPUTS:
        torch.testing.assert_close(again[k], ref[k], atol=5e-3, rtol=0)
    assert (fast["image"] - ref["image"]).abs().mean() < 0.05  # bf16 tolerance
