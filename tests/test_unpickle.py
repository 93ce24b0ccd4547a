"""The restricted unpickler and the format readers: real structure in, exact tensors out, no code run."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_upstream import EvilReduce, write_chumpy_pickle, write_persistence_pickle

from avatar.cli import main as cli_main
from avatar.hub.convert import convert_file
from avatar.hub.formats import (
    FormatError,
    guess_format,
    read_chumpy_pickle,
    read_npy,
    read_persistence_pickle,
    read_torch_checkpoint,
    read_torchscript_archive,
)
from avatar.hub.unpickle import PersistentRecord, UnsafePickleError, restricted_loads


def _assert_same_state(got: dict, expected: dict) -> None:
    assert list(got) == list(expected), "names and their order must match nn.Module.state_dict()"
    for name, tensor in expected.items():
        assert got[name].shape == tensor.shape, name
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


def test_persistence_pickle_extracts_exact_state_dict_without_running_source(tmp_path: Path) -> None:
    marker = tmp_path / "executed.txt"
    path = tmp_path / "network.pkl"
    expected = write_persistence_pickle(path, marker)

    extracted = read_persistence_pickle(path)  # G_ema by default
    _assert_same_state(extracted.tensors, expected["G_ema"])
    assert "scratch" not in extracted.tensors  # non-persistent buffer, as state_dict() does
    assert "encoder.1.num_batches_tracked" in extracted.tensors
    meta = extracted.metadata
    assert meta["class_name"] == "TriPlaneReconstructorNeutralize"
    assert meta["init_kwargs"] == {"img_resolution": 512, "mot_dims": 548, "rendering_kwargs": {"box_warp": 1.3},
                                   "sr": [1, 2]}
    assert meta["networks_in_file"] == ["G", "D", "G_ema", "augment_pipe", "training_set_kwargs"]
    assert meta["module_classes"]["encoder.0"] == "torch.nn.modules.conv.Conv2d"
    assert meta["module_classes"]["head"] == "<persistent>.SuperresolutionHead"
    assert meta["training_set_kwargs"] == {"path": "/data/vfhq", "resolution": 512}

    _assert_same_state(read_persistence_pickle(path, network="G").tensors, expected["G"])
    assert not marker.exists(), "embedded module source must never be executed"


def test_persistence_records_keep_source_as_text(tmp_path: Path) -> None:
    marker = tmp_path / "executed.txt"
    path = tmp_path / "network.pkl"
    write_persistence_pickle(path, marker)
    data = restricted_loads(path.read_bytes())
    g_ema = data["G_ema"]
    assert isinstance(g_ema, PersistentRecord)
    assert "write_text('executed')" in g_ema.module_src
    assert g_ema.version == 6
    assert not marker.exists()


def test_unknown_network_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "network.pkl"
    write_persistence_pickle(path, tmp_path / "m")
    with pytest.raises(FormatError, match="no network 'G_avg'.*G_ema"):
        read_persistence_pickle(path, network="G_avg")


def test_chumpy_pickle_is_read_into_arrays(tmp_path: Path) -> None:
    path = tmp_path / "generic_model.pkl"
    expected = write_chumpy_pickle(path)
    assert b"__builtin__" in path.read_bytes() or b"copy_reg" in path.read_bytes()  # Python 2 names
    extracted = read_chumpy_pickle(path)
    for name, array in expected.items():
        np.testing.assert_array_equal(extracted.tensors[name], array, err_msg=name)
    assert extracted.tensors["J_regressor"].shape == (5, 10)
    assert extracted.metadata["fields"] == {"bs_style": "lbs", "bs_type": "lrotmin"}
    assert guess_format(path) == "chumpy-pickle"


def test_chumpy_conversion_writes_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = tmp_path / "generic_model.pkl"
    expected = write_chumpy_pickle(path)
    result = convert_file(path, tmp_path / "out")
    loaded = load_file(str(result.weights))
    np.testing.assert_array_equal(loaded["shapedirs"].numpy(), expected["shapedirs"])
    assert loaded["f"].dtype == torch.int64 and torch.equal(loaded["f"], torch.from_numpy(expected["f"].astype(np.int64)))


@pytest.mark.parametrize("func", ["system", "popen", "exec"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, func: str) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"G_ema": EvilReduce(marker, func)})
    with pytest.raises(UnsafePickleError, match=r"refused .*(os|posix|subprocess|builtins)\.\w+"):
        restricted_loads(payload)
    assert not marker.exists()


def test_malicious_global_inside_a_network_state_is_refused(tmp_path: Path) -> None:
    # A valid-looking persistence pickle whose module state smuggles an os.system call.
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state": [torch.zeros(2), EvilReduce(marker)]})
    with pytest.raises(UnsafePickleError):
        restricted_loads(payload)
    assert not marker.exists()


@pytest.mark.parametrize("global_name", [b"builtins\ngetattr", b"builtins\neval", b"torch_utils.persistence\n_src_to_module",
                                         b"importlib\nimport_module", b"torch\nload"])
def test_dangerous_globals_are_refused_by_name(global_name: bytes) -> None:
    stream = b"\x80\x02c" + global_name + b"\n."
    with pytest.raises(UnsafePickleError) as info:
        restricted_loads(stream)
    assert global_name.replace(b"\n", b".").decode() in str(info.value)


def test_cli_convert_refuses_evil_pickle_and_creates_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": EvilReduce(marker)}))
    out = tmp_path / "converted"
    assert cli_main(["convert", str(evil), "--out", str(out)]) != 0
    assert not out.exists() and not marker.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["evil.pkl"], "no partial output may be left behind"
    # and through a real process, for the exit code
    proc = subprocess.run([sys.executable, "-m", "avatar.cli", "convert", str(evil), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "refused" in proc.stderr and "posix.system" in proc.stderr or "os.system" in proc.stderr
    assert not out.exists() and not marker.exists()


def test_cli_convert_persistence_pickle(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = tmp_path / "portrait4d-tiny.pkl"
    expected = write_persistence_pickle(path, tmp_path / "marker")
    out = tmp_path / "out"
    assert cli_main(["convert", str(path), "--out", str(out)]) == 0
    loaded = load_file(str(out / "portrait4d-tiny.safetensors"))
    _assert_same_state({k: loaded[k] for k in expected["G_ema"]}, expected["G_ema"])
    assert set(loaded) == set(expected["G_ema"])
    import json

    meta = json.loads((out / "portrait4d-tiny.json").read_text())
    assert meta["format"] == "persistence-pickle" and meta["network"] == "G_ema"
    assert meta["tensors"]["w_avg"] == [8]
    assert "module_src" not in json.dumps(meta)  # the embedded (NVIDIA-licensed) source is not redistributed


def test_torch_checkpoint_weights_only(tmp_path: Path) -> None:
    sd = {"net_recon": {"fc.weight": torch.randn(3, 2), "fc.bias": torch.randn(3)}, "epoch": 20}
    path = tmp_path / "epoch_20.pth"
    torch.save(sd, path)
    extracted = read_torch_checkpoint(path)
    assert torch.equal(extracted.tensors["net_recon.fc.weight"], sd["net_recon"]["fc.weight"])
    assert extracted.metadata["fields"] == {"epoch": 20}
    # a whole pickled module is not a plain state dict: refused, not executed
    whole = tmp_path / "whole.pth"
    torch.save(torch.nn.Linear(2, 2), whole)
    with pytest.raises(UnsafePickleError, match="weights_only"):
        read_torch_checkpoint(whole)


def test_torchscript_archive_tensors_without_running_code(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    path = tmp_path / "3DFAN4-tiny.zip"
    torch.jit.save(torch.jit.script(net), str(path))
    assert guess_format(path) == "torchscript"
    extracted = read_torchscript_archive(path)
    for name, tensor in net.state_dict().items():
        assert torch.equal(extracted.tensors[name], tensor), name


def test_object_npy_is_read_safely(tmp_path: Path) -> None:
    path = tmp_path / "simplify.npy"
    content = {"faces": np.arange(12).reshape(4, 3), "bary": np.random.rand(4, 3).astype(np.float32), "name": "x"}
    np.save(path, content, allow_pickle=True)
    extracted = read_npy(path)
    np.testing.assert_array_equal(extracted.tensors["faces"], content["faces"])
    np.testing.assert_array_equal(extracted.tensors["bary"], content["bary"])
    evil = tmp_path / "evil.npy"
    marker = tmp_path / "pwned"
    np.save(evil, np.array([EvilReduce(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafePickleError):
        read_npy(evil)
    assert not marker.exists()


def test_truncated_pickle_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "net.pkl"
    write_persistence_pickle(path, tmp_path / "m")
    data = path.read_bytes()
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert cli_main(["convert", str(broken), "--out", str(out), "--format", "persistence-pickle"]) != 0
    assert not out.exists()


def test_storage_streams_are_read_with_weights_only() -> None:
    # The storage bytes inside EG3D pickles are legacy torch.save streams; check the reader on one.
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)[:, 1:]
    got = restricted_loads(pickle.dumps(tensor))
    assert torch.equal(got, tensor) and got.stride() == tensor.stride()
    buf = io.BytesIO()
    pickle.dump(torch.nn.Parameter(torch.ones(2)), buf)
    assert torch.equal(restricted_loads(buf.getvalue()), torch.ones(2))
