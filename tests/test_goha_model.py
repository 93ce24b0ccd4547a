"""The whole GOHA model (tiny config): official checkpoint format, strict loading, the branches together,
determinism, batching, saving, bad inputs. The side-by-side check against the official ``Model`` is
``scripts/compare_official_goha.py`` (needs the official checkout)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from avatar.errors import AssetNotFoundError, CheckpointMismatchError, ConfigError, InputError
from avatar.face.bfm import ParametricFaceModel
from avatar.hub.weights import read_weights
from avatar.models.goha import GOHA, GOHAConfig, model_state_to_official, official_to_model_state

sys.path.insert(0, str(Path(__file__).parent))
from fake_upstream import synthetic_bfm  # noqa: E402

# an OpenCV camera on +z at the EG3D radius looking at the origin, EG3D's normalised intrinsics
FRONT = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1.0]


def camera(batch: int = 1, x_shift: float = 0.0) -> torch.Tensor:
    cam = torch.tensor([FRONT]).repeat(batch, 1)
    cam[:, 3] = x_shift
    return cam


@pytest.fixture(scope="module")
def model() -> GOHA:
    torch.manual_seed(0)
    m = GOHA.tiny().eval()
    m.set_face_model(ParametricFaceModel(synthetic_bfm(1)))
    return m


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    s = GOHAConfig.tiny().image_size
    return torch.rand(2, 3, s, s, generator=g) * 2 - 1


def deep3d_state(model: GOHA) -> dict[str, torch.Tensor]:
    return {f"net_recon.{k}": v for k, v in model.exp_loss_fn.net_recon.state_dict().items()}


def test_official_size_parameter_count_and_names() -> None:
    """116,124,669 parameters without the Deep3D regressor (the official Model built by
    scripts/compare_official_goha.py counts the same), official top-level names."""
    with torch.device("meta"):
        full = GOHA(GOHAConfig())
    n = sum(p.numel() for name, p in full.named_parameters() if not name.startswith("exp_loss_fn."))
    assert n == 116_124_669
    tops = {name.split(".")[0] for name, _ in full.named_children()}
    assert {"template_net", "embedding2neutral", "id_net", "id_upsampler", "expr_net", "embedding2expr",
            "expr_upsampler", "decoder", "face_parsing_net", "neural_layers", "exp_loss_fn"} <= tops
    buffers = dict(full.named_buffers())
    assert buffers["uv"].shape == (1, 128 * 128, 2) and buffers["cano_exemplar"].shape == (1, 3, 512, 512)
    assert buffers["cano_pose"].shape == (1, 25)


def test_official_checkpoint_file_loads_strictly_and_reproduces(model: GOHA, images: torch.Tensor,
                                                                 tmp_path: Path) -> None:
    official = model_state_to_official(model.state_dict())
    assert not any(k.startswith("exp_loss_fn.net_recon") for k in official)  # not part of GOHA's checkpoint
    disc = {"b4.out.weight": torch.randn(1, 4)}
    path = tmp_path / "checkpoint825000.ckpt"
    torch.save({"iter": 825000, "model_state_dict": official, "discriminator_dict": disc}, path)
    loaded = GOHA.from_official(path, config=GOHAConfig.tiny(), deep3d=deep3d_state(model),
                                face_model=ParametricFaceModel(synthetic_bfm(1)))
    assert not loaded.is_random_init
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    converted = official_to_model_state(read_weights(path))  # torch.load(weights_only=True), flattened
    assert set(converted.discriminator_state) == set(disc)
    with torch.no_grad():
        a = model(images[:1], camera(), images[1:], camera(x_shift=0.1))
        b = loaded(images[:1], camera(), images[1:], camera(x_shift=0.1))
    assert torch.equal(a.image, b.image) and torch.equal(a.depth, b.depth)


def test_strict_loading_names_the_bad_key(model: GOHA) -> None:
    official = model_state_to_official(model.state_dict())
    renamed = dict(official)
    renamed["decoder.net.0.weightx"] = renamed.pop("decoder.net.0.weight")
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.net\.0\.weight"):
        GOHA(GOHAConfig.tiny()).load_official(renamed, deep3d_state(model))
    shaped = dict(official)
    shaped["uv"] = torch.zeros(1, 3, 2)
    with pytest.raises(CheckpointMismatchError, match="uv"):
        GOHA(GOHAConfig.tiny()).load_official(shaped, deep3d_state(model))
    with pytest.raises(CheckpointMismatchError, match="net_recon"):  # no Deep3D regressor anywhere
        GOHA(GOHAConfig.tiny()).load_official(official)


def test_reenact_shapes_and_ranges(model: GOHA, images: torch.Tensor) -> None:
    c = model.config
    with torch.no_grad():
        src = model.encode_source(images, camera(2))
        out = model.reenact(src, camera(2, 0.05), images.flip(0))
    r, p = c.render_resolution, c.plane_resolution
    assert out.image.shape == (2, 3, c.superresolution.out_size, c.superresolution.out_size)
    assert out.image_raw.shape == (2, 3, r, r) and out.depth.shape == (2, 1, r, r)
    assert out.features.shape[:2] == (2, c.planes.plane_channels)
    assert out.plane.shape == (2, 3, c.planes.plane_channels, p, p)
    assert out.pseudo_render.shape == images.shape
    lo, hi = c.rendering.ray_start, c.rendering.ray_end
    assert lo - 1e-4 <= out.depth.min() and out.depth.max() <= hi + 1e-4
    assert torch.allclose(out.plane, src.canonical_plane + out.expression_plane + out.appearance_plane, atol=1e-6)
    assert out["image"] is out.image  # official key access


def test_fast_inference_renders_through_the_kernels_and_matches(model: GOHA, images: torch.Tensor,
                                                                 triton_interpreter: torch.device) -> None:
    """GOHA's EG3D planes through the fused Triton renderer (Triton's interpreter on CPU) and another lifting
    chunk give the reference output; off again, the reference path runs."""
    from avatar.render import fused

    with torch.no_grad():
        src = model.encode_source(images, camera(2))
        ref = model.reenact(src, camera(2, 0.05), images.flip(0))
        calls = []
        original = fused.fused_ray_march

        def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append(1)
            return original(*args, **kwargs)

        fused.fused_ray_march = counting
        try:
            model.enable_fast_inference("ieee", lift_chunk=7)
            out = model.reenact(src, camera(2, 0.05), images.flip(0))
            n_fast = len(calls)
            model.enable_fast_inference(None, sr_fused_modconv=False)  # SR modulation on the inputs
            input_modulated = model.reenact(src, camera(2, 0.05), images.flip(0))
            assert not model.sr_fused_modconv
            model.disable_fast_inference()
            again = model.reenact(src, camera(2, 0.05), images.flip(0))
        finally:
            fused.fused_ray_march = original
            model.disable_fast_inference()
    assert n_fast > 0 and len(calls) == n_fast  # the kernels ran only while the fast path was on
    for name in ("image", "image_raw", "depth", "appearance_plane"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-4, rtol=0, msg=name)
    assert torch.equal(again.image, ref.image) and model.sr_fused_modconv
    torch.testing.assert_close(input_modulated.image, ref.image, atol=1e-4, rtol=1e-4)
    # the fast path's IDUpsampler resizes after its 1x1 skip convolution: equal up to rounding
    torch.testing.assert_close(input_modulated.image_raw, ref.image_raw, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="fused_rendering"):
        model.enable_fast_inference("fp8")


def test_super_resolution_by_groups_of_frames(model: GOHA, images: torch.Tensor) -> None:
    """``sr_frames``: deterministic frames super-resolved a few at a time equal one call over the batch; a random
    draw stays one call (the official's draw); bad values are refused by name."""
    with torch.no_grad():
        src = model.encode_source(images[:1], camera(1)).expand(3)
        cams = torch.cat([camera(2, 0.05), camera(1, -0.05)])
        pseudo = torch.rand(3, 3, model.config.image_size, model.config.image_size)
        try:
            model.enable_fast_inference(None)
            ref = model.reenact(src, cams, pseudo_render=pseudo)
            calls: list[int] = []
            hook = model.neural_layers.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
            model.enable_fast_inference(None, sr_frames=2)
            grouped = model.reenact(src, cams, pseudo_render=pseudo)
            assert calls == [2, 1]
            calls.clear()
            torch.manual_seed(0)
            drawn = model.reenact(src, cams, pseudo_render=pseudo, deterministic=False)
            assert calls == [3]
            hook.remove()
            model.enable_fast_inference(None)  # the same draw as without sr_frames
            torch.manual_seed(0)
            assert torch.equal(model.reenact(src, cams, pseudo_render=pseudo, deterministic=False).image, drawn.image)
            for bad in (0, -1, 1.5, True):
                with pytest.raises(ConfigError, match="sr_frames"):
                    model.enable_fast_inference(None, sr_frames=bad)  # type: ignore[arg-type]
        finally:
            model.disable_fast_inference()
        assert model.sr_frames is None
    torch.testing.assert_close(grouped.image, ref.image, atol=1e-5, rtol=0)
    assert torch.equal(grouped.image_raw, ref.image_raw)


def test_graphed_reenact_plumbing_gives_the_eager_output(model: GOHA, images: torch.Tensor) -> None:
    """The CUDA-graph path's inputs and outputs (checked on CPU with a stand-in cache that runs the captured
    function on copies of its inputs, as a replay does); a failed capture falls back to the eager result."""
    from avatar.nn.cuda_graphs import GraphCache, GraphCaptureError

    class CopyingCache(GraphCache):
        def __init__(self) -> None:
            super().__init__()
            self.keys: list = []

        def __call__(self, key, fn, inputs):  # noqa: ANN001, ANN204
            self.keys.append(key)
            return fn(**{k: v.clone() for k, v in inputs.items()})

    with torch.no_grad():
        src = model.encode_source(images[:1], camera(1)).expand(2)
        pseudo = images.flip(0)
        ref = model.reenact(src, camera(2, 0.05), pseudo_render=pseudo)
        saved = model._graphs
        try:
            model._graphs = cache = CopyingCache()
            out = model._reenact_graphed(src, camera(2, 0.05), pseudo)
            model._reenact_graphed(src, camera(2, 0.05), pseudo)

            class FailingCache(CopyingCache):
                def __call__(self, key, fn, inputs):  # noqa: ANN001, ANN204
                    self.failed[key] = "stand-in failure"
                    raise GraphCaptureError("stand-in failure")

            model._graphs = FailingCache()
            fallback = model._reenact_graphed(src, camera(2, 0.05), pseudo)
        finally:
            model._graphs = saved
    assert len(cache.keys) == 2 and cache.keys[0] == cache.keys[1]  # one key per shape / options / weights
    for name in ("image", "image_raw", "depth", "features", "pseudo_render", "plane", "expression_plane",
                 "appearance_plane"):
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
        assert torch.equal(getattr(fallback, name), getattr(ref, name)), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_reenact_matches_eager_on_cuda(model: GOHA, images: torch.Tensor) -> None:
    """On CUDA the fast path replays reenact() from a captured graph (no fallback) and gives the eager output."""
    gpu = GOHA.tiny().eval().cuda()
    gpu.load_state_dict(model.state_dict())
    x = images.cuda()
    with torch.no_grad():
        src = gpu.encode_source(x[:1], camera(1).cuda()).expand(2)
        eager = gpu.enable_fast_inference("ieee", cuda_graphs=False).reenact(src, camera(2, 0.05).cuda(),
                                                                               pseudo_render=x.flip(0))
        gpu.enable_fast_inference("ieee", cuda_graphs=True)
        first = gpu.reenact(src, camera(2, 0.05).cuda(), pseudo_render=x.flip(0))
        second = gpu.reenact(src, camera(2, 0.05).cuda(), pseudo_render=x)
    assert len(gpu._graphs) == 1 and not gpu._graphs.failed
    torch.testing.assert_close(first.image, eager.image, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(first.depth, eager.depth, atol=1e-4, rtol=1e-4)
    assert not torch.equal(second.image, first.image)  # the new input was copied in, not the captured one


def test_deterministic_by_default_and_official_noise_on_request(model: GOHA, images: torch.Tensor) -> None:
    with torch.no_grad():
        src = model.encode_source(images[:1], camera())
        a = model.reenact(src, camera(), images[1:])
        b = model.reenact(src, camera(), images[1:])
        torch.manual_seed(3)
        c = model.reenact(src, camera(), images[1:], deterministic=False)
    assert torch.equal(a.image, b.image) and torch.equal(a.depth, b.depth)
    assert not torch.equal(a.depth, c.depth) and not torch.equal(a.image, c.image)


def test_batch_pairs_each_source_with_its_driving_frame(model: GOHA, images: torch.Tensor) -> None:
    """The official get_sudo indexes rows 0, 1, 2 (correct only for batch 1); here the batch is per pair."""
    drive = images.flip(0)
    with torch.no_grad():
        both = model.reenact(model.encode_source(images, camera(2)), camera(2), drive)
        one = model.reenact(model.encode_source(images[1:], camera()), camera(), drive[1:])
    assert torch.allclose(both.image[1:], one.image, atol=1e-4)
    assert torch.allclose(both.pseudo_render[1:], one.pseudo_render, atol=1e-5)


def test_forward_is_encode_then_reenact(model: GOHA, images: torch.Tensor) -> None:
    with torch.no_grad():
        a = model(images[:1], camera(), images[1:], camera(x_shift=-0.1))
        b = model.reenact(model.encode_source(images[:1], camera()), camera(x_shift=-0.1), images[1:])
    assert torch.equal(a.image, b.image)


def test_expression_follows_the_driving_frame(model: GOHA, images: torch.Tensor) -> None:
    with torch.no_grad():
        src = model.encode_source(images[:1], camera())
        own = model.reenact(src, camera())  # no driving input: the source's own expression
        kept = model.reenact(src, camera(), images[1:], exp_transfer=False)
        wide = src.coefficients.clone()
        wide[:, 80:144] += 5.0  # a strong driving expression (Deep3D's 64 expression coefficients)
        driven = model.reenact(src, camera(), driving_coefficients=wide)
    assert torch.allclose(own.pseudo_render, kept.pseudo_render, atol=1e-6)
    assert not torch.allclose(own.pseudo_render, driven.pseudo_render, atol=1e-2)
    assert not torch.allclose(own.expression_plane, driven.expression_plane, atol=1e-4)


def test_save_and_load_pretrained_round_trip(model: GOHA, images: torch.Tensor, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path / "goha")
    loaded = GOHA.from_pretrained(tmp_path / "goha")
    loaded.set_face_model(ParametricFaceModel(synthetic_bfm(1)))
    with torch.no_grad():
        a = model(images[:1], camera(), images[1:], camera())
        b = loaded.eval()(images[:1], camera(), images[1:], camera())
    assert torch.equal(a.image, b.image)


def test_bad_inputs_are_named(model: GOHA, images: torch.Tensor) -> None:
    s = model.config.image_size
    with pytest.raises(InputError, match=f"{s}, {s}"):
        model.encode_source(torch.zeros(1, 3, s + 1, s), camera())
    with pytest.raises(InputError, match="25"):
        model.encode_source(images[:1], torch.zeros(1, 16))
    with pytest.raises(InputError, match="B = 1"):
        model.encode_source(images[:1], camera(2))
    src = model.encode_source(images[:1], camera(), with_coefficients=False)
    with pytest.raises(InputError, match="pseudo_render"):
        model.reenact(src, camera(), images[1:])
    with pytest.raises(InputError, match="cameras"):
        model.reenact(src, camera(3), pseudo_render=images[:1])
    bare = GOHA.tiny().eval()
    with pytest.raises(AssetNotFoundError, match="BFM"):
        bare.reenact(bare.encode_source(images[:1], camera()), camera(), images[1:])


def test_triton_lifting_gives_the_reenactment_of_the_cdist_lifting(triton_interpreter, images: torch.Tensor) -> None:
    m = GOHA.tiny().eval()
    with torch.no_grad():
        src = m.encode_source(images[:1], camera(), with_coefficients=False).expand(2)
        m.enable_fast_inference(None, fused_lifting=False)
        ref = m.reenact(src, camera(2, 0.05), pseudo_render=images.flip(0))
        assert not m._lift_fused(images.device)
        m.enable_fast_inference(None, fused_lifting=True)
        assert m._lift_fused(images.device)
        out = m.reenact(src, camera(2, 0.05), pseudo_render=images.flip(0))
        m.disable_fast_inference()
    assert not m.fused_lifting
    torch.testing.assert_close(out.appearance_plane, ref.appearance_plane, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.image, ref.image, atol=1e-5, rtol=1e-5)
