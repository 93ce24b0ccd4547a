"""Registry, download, verification and cache: offline, with files the tests make."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fake_upstream import write_chumpy_pickle, write_persistence_pickle

from avatar.cli import main as cli_main
from avatar.hub import download as dl
from avatar.hub import registry
from avatar.hub.download import AssetNotFoundError, AssetVerificationError, download_model, ensure_file
from avatar.hub.registry import FILES, MODELS, UpstreamFile, get_model

OFFICIAL_PICKLES = {"portrait4d-v2-vfhq512.pkl", "portrait4d-genhead512.pkl", "portrait4d-static-genhead512.pkl",
                    "genhead-ffhq512.pkl"}


def test_registry_lists_the_official_files() -> None:
    hub_paths = {f.path for f in FILES.values() if f.source == "hub"}
    assert hub_paths >= OFFICIAL_PICKLES
    for needed in ("models/FLAME/geometry/generic_model.pkl", "models/pdfgc/weights/motion_model.pth",
                   "models/arcface/ms1mv3_arcface_r18_fp16/backbone.pth", "models/lpips/weights/v0.1/alex.pth",
                   "data_preprocess/assets/facedetect/retinaface/Resnet50_Final.pth",
                   "data_preprocess/assets/hrnet_w18_wflw/h3r/model.pth",
                   "data_preprocess/assets/landmark3d/3DFAN4-4a694010b9.zip",
                   "data_preprocess/assets/facerecon/deep3d_2023/epoch_20.pth"):
        assert needed in hub_paths, needed
    for f in FILES.values():
        assert f.licence and f.description
        if f.source == "release":  # another project's release asset: pinned by its tag and digest prefix
            assert f.revision in f.url and f.sha256 and f.sha256 in f.path
        else:
            assert len(f.revision) == 40
        if f.source == "github":
            assert f.size_exact and f.sha256 and len(f.sha256) == 64
        assert f.url.startswith("https://")


def test_model_ids_resolve() -> None:
    assert registry.DEFAULT_MODEL_ID == "portrait4d-v2"
    assert get_model("portrait4d-v2").checkpoint == "portrait4d-v2-vfhq512"
    assert get_model("portrait4d-v1").checkpoint == "portrait4d-genhead512"
    static = get_model("portrait4d-static")
    assert static.option_dict["static"] and static.checkpoint == "portrait4d-static-genhead512"
    assert "pdfgc-motion" not in static.requires  # the static model takes no motion
    for spec in MODELS.values():
        assert spec.checkpoint in FILES and all(k in FILES for k in spec.requires)
        if spec.family == "portrait4d":
            assert FILES[spec.checkpoint].fmt == "persistence-pickle"
            assert "flame-generic-model" in spec.requires
    with pytest.raises(KeyError, match="known ids: portrait4d-v2"):
        get_model("portrait4d-v3")


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A model id whose files live in a local folder laid out like the Hub repo."""
    hub = tmp_path / "hub"
    (hub / "models" / "FLAME" / "geometry").mkdir(parents=True)
    write_persistence_pickle(hub / "tiny-recon.pkl", tmp_path / "marker")
    write_chumpy_pickle(hub / "models" / "FLAME" / "geometry" / "generic_model.pkl")
    (hub / "notes.txt").write_text("0.1 0.2\n")
    torch.save({"w": torch.ones(2)}, hub / "mapper.pth")

    def entry(key: str, path: str, fmt: str, **kw: object) -> UpstreamFile:
        data = (hub / path).read_bytes()
        return UpstreamFile(key=key, path=path, fmt=fmt, size=len(data), size_exact=True,
                            sha256=hashlib.sha256(data).hexdigest(), licence="test", description="test", **kw)

    files = {
        "tiny-recon": entry("tiny-recon", "tiny-recon.pkl", "persistence-pickle", network="G_ema"),
        "tiny-flame": entry("tiny-flame", "models/FLAME/geometry/generic_model.pkl", "chumpy-pickle"),
        "tiny-notes": entry("tiny-notes", "notes.txt", "text"),
        "tiny-mapper": entry("tiny-mapper", "mapper.pth", "torch"),
    }
    monkeypatch.setattr(registry, "FILES", {**registry.FILES, **files})
    monkeypatch.setattr(dl, "FILES", registry.FILES)
    spec = registry.ModelSpec("tiny-test", "test model", "portrait4d", "avatar.models.portrait4d:Portrait4D",
                              "tiny-recon", ("tiny-flame", "tiny-notes", "tiny-mapper"))
    monkeypatch.setitem(registry.MODELS, "tiny-test", spec)
    return "tiny-test", hub


def test_download_from_local_dir_converts_then_caches(fake_model: tuple[str, Path], monkeypatch) -> None:
    model_id, hub = fake_model
    report = download_model(model_id, local_dir=hub)
    assert sorted(report.fetched) == ["tiny-flame", "tiny-mapper", "tiny-notes", "tiny-recon"]
    recon = report.folders["tiny-recon"]
    assert (recon / "tiny-recon.safetensors").is_file() and (recon / "manifest.json").is_file()
    manifest = json.loads((recon / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256((hub / "tiny-recon.pkl").read_bytes()).hexdigest()
    assert (report.folders["tiny-notes"] / "notes.txt").read_text() == "0.1 0.2\n"
    assert (report.folders["tiny-flame"] / "generic_model.safetensors").is_file()
    stamp = (recon / "manifest.json").stat().st_mtime_ns

    # Second call: nothing is fetched, read or converted.
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached file was fetched again")

    monkeypatch.setattr(dl, "_fetch_from_hub", boom)
    monkeypatch.setattr(dl, "convert_file", boom)
    again = download_model(model_id)
    assert again.fetched == [] and sorted(again.cached) == sorted(report.fetched)
    assert (recon / "manifest.json").stat().st_mtime_ns == stamp


def test_corrupted_file_fails_verification_and_caches_nothing(fake_model: tuple[str, Path]) -> None:
    model_id, hub = fake_model
    path = hub / "tiny-recon.pkl"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AssetVerificationError, match="SHA-256"):
        ensure_file("tiny-recon", local_dir=hub)
    assert not dl.converted_dir(registry.FILES["tiny-recon"]).exists()


def test_offline_missing_files_fail_fast_with_one_clear_error() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    start = time.perf_counter()
    with pytest.raises(AssetNotFoundError) as info:
        download_model("portrait4d-v2")
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert "portrait4d-v2-vfhq512.pkl" in message and "bEijuuu/Portrait4D" in message
    assert "avatar download portrait4d-v2" in message
    assert elapsed < 10, f"offline failure took {elapsed:.1f}s"


def test_single_hub_file_offline_names_file_repo_and_command() -> None:
    with pytest.raises(AssetNotFoundError) as info:
        ensure_file("portrait4d-static-genhead512", model_id="portrait4d-static")
    message = str(info.value)
    assert "'portrait4d-static-genhead512.pkl' from Hub repo bEijuuu/Portrait4D" in message
    assert "`avatar download portrait4d-static`" in message


def test_cli_download_offline_exits_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["download", "portrait4d-v1"]) == 1
    err = capsys.readouterr().err
    assert "portrait4d-genhead512.pkl" in err and "avatar download portrait4d-v1" in err


def test_cli_download_from_dir_then_noop(fake_model: tuple[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    model_id, hub = fake_model
    assert cli_main(["download", model_id, "--from-dir", str(hub)]) == 0
    caplog.clear()
    assert cli_main(["download", model_id]) == 0
    assert "already in the cache" in caplog.text


def test_cli_help_explains_each_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "avatar.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("models", "download", "convert"):
        assert command in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "avatar.cli", "download", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert "--from-dir" in proc.stdout and "portrait4d-v2" in proc.stdout


def test_cli_models_lists_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["models", "--files"]) == 0
    out = capsys.readouterr().out
    assert "portrait4d-v2 (default)" in out and "portrait4d-static" in out and "genhead-ffhq512" in out


@pytest.mark.skipif(not os.environ.get("PORTRAIT4D_REPO"), reason="set PORTRAIT4D_REPO to an official checkout")
def test_github_files_match_an_official_checkout() -> None:
    root = Path(os.environ["PORTRAIT4D_REPO"])
    for f in FILES.values():
        if f.source == "github":
            dl.verify(f, root / f.path)
            ensure_file(f, local_dir=root)


def test_unreachable_hub_is_probed_once_without_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("AVATAR_OFFLINE", "0")
    calls: list[str] = []

    def unreachable(repo: str) -> str:
        calls.append(repo)
        return "cannot reach https://huggingface.co: Name or service not known"

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("hf_hub_download must not be tried when the Hub is unreachable")

    monkeypatch.setattr(dl, "_hub_unreachable_reason", unreachable)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(dl, "_fetch_from_github", no_download)
    with pytest.raises(AssetNotFoundError, match="Name or service not known") as info:
        download_model("portrait4d-v2")
    assert calls == ["bEijuuu/Portrait4D"]
    assert "portrait4d-v2-vfhq512.pkl" in str(info.value)


def test_google_drive_file_is_never_fetched_and_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """MODNet's checkpoint lives only in a Google Drive folder: no network request is made (the page is HTML),
    and the error names the folder and the --from-dir command."""
    def no_network(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a Google Drive file must not be fetched")

    monkeypatch.setattr(dl, "_fetch_from_github", no_network)
    monkeypatch.setattr(dl, "_fetch_from_hub", no_network)
    with pytest.raises(AssetNotFoundError) as info:
        ensure_file("modnet-photographic")
    message = str(info.value)
    assert "Google Drive" in message and FILES["modnet-photographic"].url in message
    assert "avatar download --file modnet-photographic --from-dir DIR" in message
