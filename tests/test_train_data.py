"""train.data and train.prepare: the official LMDB formats, our Parquet format, the datasets' official semantics
(pairing, labels, rectified head pose, reproducible draws) and the video preprocessing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avatar.errors import InputError, InputNotFoundError
from train.core import sampling
from train.data import (
    ClipPairDataset,
    ImageDataset,
    InfiniteSampler,
    OfficialLmdb,
    OfficialLmdbWriter,
    ParquetTrainData,
    ShardStream,
    StreamingClipPairs,
    TrainDataError,
    TrainDataWriter,
    frame_pair,
    open_train_data,
    rectify_head_pose,
)
from train.data import convert as convert_mod
from train.data.protowire import DATUM_GENHEAD, DATUM_VFHQ, WireError, decode_message, encode_message

pytest.importorskip("lmdb")
pytest.importorskip("pyarrow")

H, W = 12, 10


# ---------------------------------------------------------------------------------------------------------
# toy data


def _clip(rng: np.random.Generator, n: int, seg_channels: int = 1, mot_dim: int = 548) -> dict[str, np.ndarray]:
    """Frame k is filled with the value 10 k + 1 (its pixels say which frame it is), labels and motions random."""
    images = np.stack([np.full((H, W, 3), 10 * k + 1, np.uint8) for k in range(n)])
    images[:, 0, 0] = rng.integers(0, 255, (n, 3), dtype=np.uint8)  # some colour detail
    segs = rng.integers(0, 255, (n, H, W) if seg_channels == 1 else (n, H, W, seg_channels), dtype=np.uint8)
    labels = rng.normal(size=(n, 437)).astype(np.float32)
    labels[:, 425:428] = rng.normal(scale=0.4, size=(n, 3))
    return {"images": images, "segs": segs, "labels": labels, "motions": rng.normal(size=(n, mot_dim)).astype(np.float32)}


def _write_vfhq(path: Path, clips: list[dict[str, np.ndarray]]) -> Path:
    with OfficialLmdbWriter(path, "vfhq") as w:
        for c in clips:
            w.add_clip(c["images"], c["segs"], c["labels"], c["motions"])
    return path


def _png(arr: np.ndarray) -> bytes:
    return cv2.imencode(".png", arr)[1].tobytes()


@pytest.fixture
def vfhq(tmp_path: Path) -> tuple[Path, list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    clips = [_clip(rng, 4), _clip(rng, 7, seg_channels=3, mot_dim=600), _clip(rng, 1)]
    return _write_vfhq(tmp_path / "VFHQ_sub50_12_3", clips), clips


@pytest.fixture
def genhead(tmp_path: Path) -> tuple[Path, list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(1)
    items = []
    with OfficialLmdbWriter(tmp_path / "FFHQ_12_3", "genhead") as w:
        for _ in range(3):
            rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            seg = rng.integers(0, 255, (H, W), dtype=np.uint8)
            label, mot = rng.normal(size=437).astype(np.float32), rng.normal(size=548).astype(np.float32)
            w.add_image(_png(rgb[:, :, ::-1]), _png(seg), label, mot, H, W)  # files hold BGR as cv2 writes them
            items.append({"rgb": rgb, "seg": seg, "label": label, "motion": mot})
    return tmp_path / "FFHQ_12_3", items


# ---------------------------------------------------------------------------------------------------------
# proto2 records


def test_wire_codec_round_trip_and_errors() -> None:
    values = {"channels": 3, "height": 512, "width": -7, "num": 2, "images": b"\x00\x01" * 300, "segs": b"",
              "labels": b"abcd", "mots": bytes(range(256))}
    data = encode_message(DATUM_VFHQ, values)
    back = decode_message(DATUM_VFHQ, data)
    assert {k: (bytes(v) if isinstance(v, memoryview) else v) for k, v in back.items()} == values
    with pytest.raises(WireError, match="truncated"):
        decode_message(DATUM_VFHQ, data[:-5])
    with pytest.raises(WireError, match="not a Datum_genhead"):  # field 4 is the num varint, not image bytes
        decode_message(DATUM_GENHEAD, data)


def test_wire_codec_matches_protobuf() -> None:
    """Both directions against message classes built at run time from the official field numbers."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="avatar4d_test_datum.proto", syntax="proto2")
    field = descriptor_pb2.FieldDescriptorProto
    for schema in (DATUM_VFHQ, DATUM_GENHEAD):
        msg = fdp.message_type.add(name=schema.name)
        for name, (number, kind) in schema.fields.items():
            msg.field.add(name=name, number=number, label=field.LABEL_OPTIONAL,
                          type=field.TYPE_INT32 if kind == "int32" else field.TYPE_BYTES)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    rng = np.random.default_rng(0)
    for schema in (DATUM_VFHQ, DATUM_GENHEAD):
        cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(schema.name))
        values = {n: (int(rng.integers(-5, 600)) if k == "int32" else rng.bytes(int(rng.integers(0, 999))))
                  for n, (_, k) in schema.fields.items()}
        assert encode_message(schema, values) == cls(**values).SerializeToString()
        parsed = cls()
        parsed.ParseFromString(encode_message(schema, values))
        assert {n: getattr(parsed, n) for n in schema.fields} == values


# ---------------------------------------------------------------------------------------------------------
# official LMDB


def test_vfhq_lmdb_round_trip(vfhq: tuple[Path, list[dict[str, np.ndarray]]]) -> None:
    path, clips = vfhq
    db = OfficialLmdb(path)
    assert len(db) == 3 and db.kind == "vfhq"
    for i, c in enumerate(clips):
        rec = db.read(i)
        n = len(c["labels"])
        assert rec.num_frames == n and (rec.height, rec.width) == (H, W)
        np.testing.assert_array_equal(rec.images, c["images"])
        np.testing.assert_array_equal(rec.segs.reshape(c["segs"].shape), c["segs"])
        np.testing.assert_array_equal(rec.labels, c["labels"])
        np.testing.assert_array_equal(rec.motions, c["motions"][:, :548])  # longer motions cut as upstream
        assert rec.seg(0).shape == (H, W, 3)
        np.testing.assert_array_equal(rec.image(n - 1), c["images"][n - 1])
    with pytest.raises(IndexError):
        db.read(3)
    db.close()


def test_genhead_lmdb_round_trip(genhead: tuple[Path, list[dict[str, np.ndarray]]]) -> None:
    path, items = genhead
    db = OfficialLmdb(path)
    assert len(db) == 3 and db.kind == "genhead"
    ds = ImageDataset(db)
    for i, it in enumerate(items):
        item = ds[i]
        np.testing.assert_array_equal(item["image"], it["rgb"].transpose(2, 0, 1))  # decoded BGR -> RGB
        np.testing.assert_array_equal(item["seg"], np.repeat(it["seg"][None], 3, 0))
        np.testing.assert_array_equal(item["c"], it["label"][:25])
        np.testing.assert_array_equal(item["shape"], it["label"][25:325])
        np.testing.assert_array_equal(item["exp"], it["label"][325:425])
        np.testing.assert_array_equal(item["pose"], it["label"][425:431])
        np.testing.assert_array_equal(item["eye"], it["label"][431:437])
        np.testing.assert_array_equal(db.read(i).motion, it["motion"])
        np.testing.assert_array_equal(ds.label_all(i)["pose"], it["label"][425:431])
    with pytest.raises(InputError, match="ImageDataset"):
        ClipPairDataset(db)


def _bad_lmdb(path: Path, payloads: list[bytes], count: int | None = None) -> OfficialLmdb:
    w = OfficialLmdbWriter(path, "vfhq")
    for p in payloads:
        w.put_raw(p)
    if count is not None:
        w.count = count  # num_samples says more than there are
    w.close()
    return OfficialLmdb(path)


def _vfhq_payload(clip: dict[str, np.ndarray], **override: object) -> bytes:
    n, h, w = clip["images"].shape[:3]
    values = {"channels": 3, "height": h, "width": w, "num": n, "images": clip["images"].tobytes(),
              "segs": clip["segs"].tobytes(), "labels": clip["labels"].tobytes(), "mots": clip["motions"].tobytes()}
    values.update(override)
    return encode_message(DATUM_VFHQ, {k: v for k, v in values.items() if v is not None})


def test_corrupt_records_and_missing_keys_name_the_lmdb_and_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    clip = _clip(rng, 3)
    good = _vfhq_payload(clip)
    cases = {
        "truncated": (good[: len(good) // 2], "key '00000001' is corrupt: .*truncated"),
        "no segs": (_vfhq_payload(clip, segs=None), "key '00000001' lacks 'segs' \\(field 6\\)"),
        "short images": (_vfhq_payload(clip, images=clip["images"].tobytes()[:-1]), "'images' has .* bytes"),
        "labels of 436": (_vfhq_payload(clip, labels=np.zeros((3, 436), np.float32).tobytes()), "436 float32"),
        "nan label": (_vfhq_payload(clip, labels=np.full((3, 437), np.nan, np.float32).tobytes()), "NaN"),
        "genhead record": (encode_message(DATUM_GENHEAD, {"image": b"x"}), "not a Datum_vfhq"),
    }
    for i, (name, (payload, pattern)) in enumerate(cases.items()):
        db = _bad_lmdb(tmp_path / f"bad{i}", [good, payload])
        db.read(0)
        with pytest.raises(TrainDataError, match=pattern) as err:
            db.read(1)
        assert str(tmp_path / f"bad{i}") in str(err.value), name
        assert err.value.key == "00000001" and isinstance(err.value, InputError) and isinstance(err.value, ValueError)
    # a key missing although num_samples counts it
    db = _bad_lmdb(tmp_path / "missing", [good], count=2)
    with pytest.raises(TrainDataError, match="key '00000001' is missing although num_samples is 2"):
        db.read(1)
    # no num_samples: an interrupted writer
    w = OfficialLmdbWriter(tmp_path / "unfinished", "vfhq")
    w.put_raw(good)
    w.close(write_count=False)
    with pytest.raises(TrainDataError, match="no 'num_samples' key") as err:
        len(OfficialLmdb(tmp_path / "unfinished"))
    assert err.value.key == "num_samples"
    # a corrupt encoded image of a genhead record, and folders that are no LMDB
    with OfficialLmdbWriter(tmp_path / "ffhq", "genhead") as gw:
        gw.add_image(b"\x89PNG not really", _png(np.zeros((4, 4), np.uint8)), np.zeros(437), np.zeros(548))
    with pytest.raises(TrainDataError, match="key '00000000'.*not an image file") as err:
        ImageDataset(tmp_path / "ffhq")[0]
    assert err.value.key == "00000000" and err.value.path == str(tmp_path / "ffhq")
    with pytest.raises(TrainDataError, match="no data.mdb"):
        OfficialLmdb(tmp_path)
    with pytest.raises(InputNotFoundError):
        OfficialLmdb(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------------
# the official semantics


def test_rectify_pose_matches_scipy_and_keeps_the_camera() -> None:
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(3)
    labels = rng.normal(size=(50, 437)).astype(np.float32)
    labels[:, 425:428] = Rotation.random(50, random_state=4).as_rotvec()
    out = rectify_head_pose(labels)
    # the official steps, written out frame by frame
    eulers = np.stack([Rotation.from_rotvec(r).as_euler("xyz") for r in labels[:, 425:428]])
    cam = Rotation.from_euler("xyz", [0.0, eulers[:, 1].mean(), eulers[:, 2].mean()]).as_matrix()
    for k in range(50):
        want = Rotation.from_matrix(cam.T @ Rotation.from_rotvec(labels[k, 425:428]).as_matrix()).as_rotvec()
        np.testing.assert_allclose(out[k, 425:428], want, atol=2e-6)
    np.testing.assert_array_equal(out[:, :425], labels[:, :425])  # camera 0:25 and everything before the pose
    np.testing.assert_array_equal(out[:, 428:], labels[:, 428:])  # jaw and eyes
    assert out.dtype == np.float32 and not np.shares_memory(out, labels)
    # a clip that only turns (yaw, roll) by a constant: the camera takes it all, the head is left unrotated
    const = np.zeros((5, 437), np.float32)
    const[:, 425:428] = Rotation.from_euler("xyz", [0.0, 0.3, -0.2]).as_rotvec()
    np.testing.assert_allclose(rectify_head_pose(const)[:, 425:428], 0, atol=1e-6)
    # ... while pitch stays in the head
    pitch = np.zeros((5, 437), np.float32)
    pitch[:, 425:428] = Rotation.from_euler("xyz", [0.25, 0.0, 0.0]).as_rotvec()
    np.testing.assert_allclose(rectify_head_pose(pitch)[:, 425:428], pitch[:, 425:428], atol=1e-6)


def test_clip_pairs_and_label_assembly(vfhq: tuple[Path, list[dict[str, np.ndarray]]]) -> None:
    path, clips = vfhq
    ds = ClipPairDataset(OfficialLmdb(path), seed=5)
    assert len(ds) == 3
    seen_same = False
    for position in range(40):
        for index in range(3):
            item = ds[(index, position)]
            c = clips[index]
            s, d = item["frames"]
            np.testing.assert_array_equal(item["frames"], frame_pair(len(c["labels"]), 5, 1, position, index))
            assert item["source_image"].shape == (3, H, W) and item["source_image"].dtype == np.uint8
            np.testing.assert_array_equal(item["source_image"], c["images"][s].transpose(2, 0, 1))
            np.testing.assert_array_equal(item["driving_image"], c["images"][d].transpose(2, 0, 1))
            seg = c["segs"][d] if c["segs"].ndim == 4 else np.repeat(c["segs"][d][..., None], 3, 2)
            np.testing.assert_array_equal(item["driving_seg"], seg.transpose(2, 0, 1))
            rect = rectify_head_pose(c["labels"])
            np.testing.assert_array_equal(item["c"], c["labels"][d, :25])  # driving camera, unchanged
            np.testing.assert_array_equal(item["shape"], c["labels"][s, 25:325])  # source shape
            np.testing.assert_array_equal(item["exp"], c["labels"][d, 325:425])
            np.testing.assert_array_equal(item["pose"], rect[d, 425:431])  # rectified head rotation + jaw
            np.testing.assert_array_equal(item["eye"], c["labels"][d, 431:437])
            np.testing.assert_array_equal(item["source_motion"], c["motions"][s, :548])
            np.testing.assert_array_equal(item["driving_motion"], c["motions"][d, :548])
            assert item["index"] == index and item["position"] == position
            seen_same |= bool(s == d) and len(c["labels"]) > 1
    assert seen_same  # drawn with replacement: source = driving happens
    assert (ds[(2, 0)]["frames"] == 0).all()  # a one-frame clip
    raw = ClipPairDataset(OfficialLmdb(path), seed=5, rectify_pose=False)[(1, 3)]
    s, d = raw["frames"]
    np.testing.assert_array_equal(raw["pose"], clips[1]["labels"][d, 425:431])
    flame = ClipPairDataset(OfficialLmdb(path), seed=5, flame_motion=True)[(1, 3)]
    lab = rectify_head_pose(clips[1]["labels"])[d]
    np.testing.assert_array_equal(flame["driving_motion"], np.concatenate([lab[325:425], lab[428:431], lab[431:437]]))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["source_image"].shape == (2, 3, H, W) and batch["c"].shape == (2, 25)


def test_draws_are_reproducible_and_ignore_global_random_state(vfhq: tuple[Path, list[dict[str, np.ndarray]]]) -> None:
    path, _ = vfhq
    a, b = ClipPairDataset(path, seed=11), ClipPairDataset(OfficialLmdb(path), seed=11)
    np.random.seed(0)
    first = [a[(1, p)]["frames"].tolist() for p in range(30)]
    np.random.seed(123)
    torch.manual_seed(7)
    assert [b[(1, p)]["frames"].tolist() for p in range(30)] == first
    assert len({tuple(f) for f in first}) > 5  # positions give different pairs
    assert [ClipPairDataset(path, seed=12)[(1, p)]["frames"].tolist() for p in range(30)] != first
    # plain indices: drawn from (seed, epoch, index)
    e0 = [a[1]["frames"].tolist() for _ in range(3)]
    assert e0[0] == e0[1] == e0[2]
    epochs = []
    for epoch in range(6):
        a.set_epoch(epoch)
        epochs.append(a[1]["frames"].tolist())
    assert epochs[0] == e0[0] and len({tuple(e) for e in epochs}) > 1


def test_dataloader_workers_open_the_lmdb_themselves(vfhq: tuple[Path, list[dict[str, np.ndarray]]]) -> None:
    path, _ = vfhq
    ds = ClipPairDataset(path, seed=2)
    assert InfiniteSampler is sampling.InfiniteSampler  # one sampler, re-exported by train.data
    sampler = InfiniteSampler(ds, seed=1, start=5)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=2)
    got = []
    for batch, _ in zip(loader, range(4), strict=False):
        got += list(zip(batch["index"].tolist(), batch["position"].tolist(), map(tuple, batch["frames"].tolist()),
                        strict=True))
    assert [p for _, p, _ in got] == list(range(5, 13))
    # the trainer's loader reads it with the sampler's positions too: the same items
    via = []
    for batch, _ in zip(sampling.make_loader(ds, 2, start=5, seed=1, num_workers=2), range(4), strict=False):
        via += list(zip(batch["index"].tolist(), batch["position"].tolist(), map(tuple, batch["frames"].tolist()),
                        strict=True))
    assert via == got
    assert all(tuple(ds[(i, p)]["frames"].tolist()) == f for i, p, f in got)  # same draws in the main process
    assert ds.source._env is not None  # opened by the main process only now, by the direct reads above


# ---------------------------------------------------------------------------------------------------------
# Parquet


def test_parquet_round_trip_shards_and_metadata(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    rng = np.random.default_rng(4)
    clips = [_clip(rng, n, mot_dim=60) for n in (3, 5, 2, 4)]
    with TrainDataWriter(tmp_path / "ds", "clips", 60, shard_size_mb=0.0005, meta={"note": "toy"}) as w:
        for i, c in enumerate(clips):
            w.add_clip(c["images"], c["segs"], c["labels"], c["motions"], f"clip{i}", source_frames=range(len(c["labels"])))
    data = ParquetTrainData(tmp_path / "ds")
    assert len(data.shards) > 1 and len(data) == 4 and data.kind == "clips" and data.motion_dim == 60
    assert all(p.name.startswith("train-") and "-of-" in p.name for p in data.shards)
    for i, c in enumerate(clips):
        rec = data.read(i)
        assert rec.clip_id == f"clip{i}" and rec.num_frames == len(c["labels"])
        for k in range(rec.num_frames):
            np.testing.assert_array_equal(rec.image(k), c["images"][k])  # PNG: lossless
            np.testing.assert_array_equal(rec.seg(k), np.repeat(c["segs"][k][..., None], 3, 2))
        np.testing.assert_array_equal(rec.labels, c["labels"])
        np.testing.assert_array_equal(rec.motions, c["motions"])
        np.testing.assert_array_equal(rec.source_frames, np.arange(len(c["labels"])))
    meta = pq.read_schema(data.shards[0]).metadata
    assert json.loads(meta[b"avatar4d"])["note"] == "toy"
    assert json.loads(meta[b"huggingface"])["info"]["features"]["frames"]["feature"]["_type"] == "Image"
    card = (tmp_path / "ds" / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "data/**/*.parquet" in card
    # streamed shard by shard: the same records in the same order
    assert [r.clip_id for r in ShardStream(tmp_path / "ds").iter_records()] == [f"clip{i}" for i in range(4)]
    # JPEG frames: smaller, close
    with TrainDataWriter(tmp_path / "jpg", "clips", 60, image_format="jpeg") as w:
        w.add_clip(clips[0]["images"], clips[0]["segs"], clips[0]["labels"], clips[0]["motions"])
    rec = ParquetTrainData(tmp_path / "jpg").read(0)
    assert np.abs(rec.image(1).astype(int) - clips[0]["images"][1]).mean() < 8
    # a damaged shard and a foreign Parquet file are named
    bad = tmp_path / "bad" / "data"
    bad.mkdir(parents=True)
    (bad / "train-0.parquet").write_bytes(data.shards[0].read_bytes()[:-100])
    with pytest.raises(TrainDataError, match="train-0.parquet is not a readable Parquet file"):
        ParquetTrainData(tmp_path / "bad")
    import pyarrow as pa

    pq.write_table(pa.table({"x": [1]}), bad / "train-0.parquet")
    with pytest.raises(TrainDataError, match="without avatar4d training-data metadata"):
        ParquetTrainData(tmp_path / "bad")
    with pytest.raises(InputError, match="already holds Parquet shards"):
        TrainDataWriter(tmp_path / "ds", "clips", 60)


def test_lmdb_to_parquet_converter(vfhq: tuple[Path, list[dict[str, np.ndarray]]],
                                   genhead: tuple[Path, list[dict[str, np.ndarray]]], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    path, clips = vfhq
    out = tmp_path / "vfhq-parquet"
    assert convert_mod.main([str(path), "--out", str(out), "--no-progress", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 3 and summary["frames"] == 12 and summary["kind"] == "clips"
    lm, pq_ = ClipPairDataset(path, seed=3), ClipPairDataset(out, seed=3)
    assert isinstance(pq_.source, ParquetTrainData) and len(pq_) == 3
    for index in range(3):
        for position in range(5):
            a, b = lm[(index, position)], pq_[(index, position)]
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert ParquetTrainData(out).read(1).clip_id == "00000001"
    # FFHQ images: the encoded files are copied as they are
    gpath, items = genhead
    gout = tmp_path / "ffhq-parquet"
    summary = convert_mod.convert(gpath, gout, show_progress=False)
    assert summary["kind"] == "images" and summary["rows"] == 3
    a, b = ImageDataset(gpath), ImageDataset(gout)
    for i in range(3):
        for key in a[i]:
            np.testing.assert_array_equal(a[i][key], b[i][key])
    assert ParquetTrainData(gout).read(0).image == OfficialLmdb(gpath).read(0).image
    # re-sharding one of our datasets, and refusing to overwrite
    assert convert_mod.convert(out, tmp_path / "resharded", shard_size_mb=0.001, show_progress=False)["shards"] == 3
    assert convert_mod.main([str(path), "--out", str(out), "--no-progress", "-q"]) == 1
    assert "exists" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left behind


def test_hub_repo_and_streaming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                vfhq: tuple[Path, list[dict[str, np.ndarray]]]) -> None:
    import huggingface_hub

    path, clips = vfhq
    local = tmp_path / "hub-copy"
    convert_mod.convert(path, local, shard_size_mb=0.001, show_progress=False)  # one clip per shard
    calls = []

    def fake_snapshot(repo_id: str, repo_type: str, revision: str | None = None, **kw: object) -> str:
        calls.append((repo_id, repo_type, revision))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    data = open_train_data("someone/portrait-clips")
    assert calls == [("someone/portrait-clips", "dataset", None)] and len(data) == 3
    monkeypatch.setattr(huggingface_hub, "list_repo_files",
                        lambda repo, repo_type, revision=None: [str(p.relative_to(local)) for p in local.rglob("*")
                                                                if p.is_file()])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, filename, repo_type, revision=None: str(local / filename))
    stream = ShardStream("someone/portrait-clips")
    assert stream.repo_id == "someone/portrait-clips" and len(stream) == 3
    # two ranks see every clip once per epoch; the draws are reproducible
    per_rank = [list(StreamingClipPairs(stream, seed=1, epoch=2, rank=r, world_size=2)) for r in range(2)]
    assert sorted(int(i["shard"]) for items in per_rank for i in items) == [0, 1, 2]
    again = list(StreamingClipPairs(stream, seed=1, epoch=2, rank=0, world_size=2))
    assert [i["frames"].tolist() for i in again] == [i["frames"].tolist() for i in per_rank[0]]
    monkeypatch.undo()
    with pytest.raises(InputNotFoundError, match="could not be fetched"):  # offline (HF_HUB_OFFLINE=1 in tests)
        open_train_data("someone/not-cached-anywhere")
    with pytest.raises(InputNotFoundError, match="neither a folder nor a Hub dataset repo"):
        open_train_data(tmp_path / "no" / "such" / "folder")


# ---------------------------------------------------------------------------------------------------------
# train.prepare on real videos


def _has_mediapipe() -> bool:
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random pipeline with MediaPipe's real face detection (else the official tiny one, whose rigged
    detector sees a face everywhere) and a tiny MODNet in ``modnet/``."""
    from avatar.face.modnet import MODNet
    from avatar.pipelines.portrait4d import Portrait4DPipeline

    backend = "mediapipe" if _has_mediapipe() else "official"
    folder = Portrait4DPipeline.tiny(preprocess=backend).save_pretrained(tmp_path_factory.mktemp("tp") / "tiny")
    MODNet.tiny().save_pretrained(folder / "modnet")
    return folder


def _video_with_blank_frames(src: Path, dst: Path, blank: set[int], n: int) -> None:
    from avatar.io.video import VideoReader, VideoWriter

    with VideoWriter(dst, fps=25) as writer:
        for k, frame in enumerate(VideoReader(src, max_frames=n)):
            writer.write(np.zeros_like(frame) if k in blank else frame)


@pytest.mark.media
@pytest.mark.slow
def test_prepare_videos_resume_and_faceless_frames(shared_media: Path, tiny_pipeline: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from train import prepare as P

    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    shutil.copy(shared_media / "videos" / "talk1.mp4", videos / "talk1.mp4")
    shutil.copy(shared_media / "videos" / "drive_d0.mp4", videos / "sub" / "drive d0.mp4")
    out = tmp_path / "data"
    argv = [str(videos), "--out", str(out), "--model", str(tiny_pipeline), "--frames-per-clip", "2", "--no-progress",
            "-q"]
    assert P.main(argv) == 0
    capsys.readouterr()
    report = json.loads((out / "prepare_report.json").read_text())
    assert sorted(report["written"]) == ["sub--drive_d0", "talk1"] and not report["failed"]
    assert report["frames_written"] == 4 and report["faceless_frames"] == 0
    assert report["clips"]["talk1"]["source_frames"] == [0, report["clips"]["talk1"]["frames_in_video"] - 1]
    assert report["settings"]["preprocess"] == ("mediapipe" if _has_mediapipe() else "official")
    assert report["settings"]["random_weights"] is True and report["settings"]["matting_source"].endswith("modnet")
    data = ParquetTrainData(out)
    assert len(data) == 2 and data.motion_dim == 60
    item = ClipPairDataset(data, seed=0)[(1, 0)]
    assert item["source_image"].shape == (3, 512, 512) and item["driving_seg"].shape == (3, 512, 512)
    assert np.isfinite(item["pose"]).all() and item["source_motion"].shape == (60,)
    # resume: the deleted video is done again, the other one is kept as it is
    kept = out / "data" / "train-talk1.parquet"
    mtime = kept.stat().st_mtime_ns
    (out / "data" / "train-sub--drive_d0.parquet").unlink()
    assert P.main(argv) == 0
    capsys.readouterr()
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["written"] == ["sub--drive_d0"] and report["skipped"] == ["talk1"]
    assert report["frames_written"] == 4 and kept.stat().st_mtime_ns == mtime and len(ParquetTrainData(out)) == 2

    # blank frames are skipped and counted; an unreadable video fails alone, with the reason
    if not _has_mediapipe():
        pytest.skip("face-less frames need a real face detector (mediapipe); the tiny official one sees faces anywhere")
    more = tmp_path / "more"
    more.mkdir()
    _video_with_blank_frames(shared_media / "videos" / "talk2.mp4", more / "blanks.mp4", {1, 3}, 5)
    (more / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    out2 = tmp_path / "data2"
    rep = P.prepare(more, out2, model=str(tiny_pipeline), frames_per_clip=5, sampling="first", matting="mediapipe",
                    show_progress=False)
    assert rep.written == ["blanks"] and list(rep.failed) == ["broken"]
    assert "broken.mp4" in rep.failed["broken"] and "cannot be" in rep.failed["broken"]
    assert rep.faceless == {"blanks": [1, 3]} and rep.faceless_frames == 2 and rep.frames_written == 3
    saved = json.loads((out2 / "prepare_report.json").read_text())
    assert saved["faceless"] == {"blanks": [1, 3]} and saved["clips"]["blanks"]["source_frames"] == [0, 2, 4]
    rec = ParquetTrainData(out2).read(0)
    assert rec.num_frames == 3 and rec.source_frames.tolist() == [0, 2, 4]
    assert P.main([str(more), "--out", str(out2), "--model", str(tiny_pipeline), "--frames-per-clip", "5",
                   "--sampling", "first", "--matting", "mediapipe", "--no-progress", "-q"]) == 1  # broken still fails
    assert "broken" in capsys.readouterr().err
    assert not [p for p in (out2 / "data").iterdir() if p.name.startswith(".")]


def test_prepare_refuses_bad_inputs_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from train import prepare as P

    assert P.main([str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert P.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "no video" in capsys.readouterr().err
    assert P.sample_indices(100, 5) == [0, 25, 50, 74, 99]
    assert P.sample_indices(3, 50) == [0, 1, 2]
    assert P.sample_indices(100, 4, "first") == [0, 1, 2, 3]
    r = P.sample_indices(100, 10, "random", seed=1, clip_id="a")
    assert r == sorted(set(r)) and len(r) == 10 and r == P.sample_indices(100, 10, "random", seed=1, clip_id="a")
