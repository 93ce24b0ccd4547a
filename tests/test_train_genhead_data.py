"""Portrait4D-v1's offline GenHead data: the ``Datum_new`` LMDB (writer, reader, validation), the GenHead triple
dataset (the official ``GenHeadReconSegLmdbFolderDatasetV2New`` item, reproducible draws in the official order)
and one tiny v1 training step on such data through ``train/portrait4d.py``."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.errors import ConfigError, InputError
from train.data import (
    ClipPairDataset,
    GenHeadTripleDataset,
    ImageDataset,
    OfficialLmdb,
    OfficialLmdbWriter,
    TrainDataError,
    frame_pair,
    frame_view_draw,
    open_train_data,
    triple_item,
)
from train.data.protowire import DATUM_NEW, DATUM_VFHQ, decode_message, encode_message
from train.recipes.portrait4d import recipe

sys.path.insert(0, str(Path(__file__).parent))

pytest.importorskip("lmdb")

R = 64  # the official depth / feature / matte / background side
SIZE = 32  # image side of the unit tests' toy records


def _subject(rng: np.random.Generator, frames: int = 2, size: int = SIZE, seg_channels: int = 1, feature_c: int = 32,
             bg_c: int = 32, plane_c: int = 32, points: int = 6, mot_dim: int = 548) -> dict[str, np.ndarray]:
    """One subject's arrays as ``OfficialLmdbWriter.add_views`` takes them; every view distinct."""
    seg_shape = (frames, 5, size, size) + (() if seg_channels == 1 else (seg_channels,))
    return {
        "images": rng.integers(0, 256, (frames, 5, size, size, 3), dtype=np.uint8),
        "segs": rng.integers(0, 256, seg_shape, dtype=np.uint8),
        "segs_render": rng.integers(0, 256, (frames, 5, R, R), dtype=np.uint8),
        "depths": (3.5 + rng.random((frames, 5, R, R, 1))).astype(np.float16),
        "features": rng.normal(size=(frames, 5, R, R, feature_c)).astype(np.float16),
        "triplanes": np.concatenate([rng.random((frames, points, 3)) - 0.5,
                                     rng.normal(size=(frames, points, plane_c))], -1).astype(np.float16),
        "labels": rng.normal(size=(frames, 5, 437)).astype(np.float32),
        "motions": rng.normal(size=(frames, 5, mot_dim)).astype(np.float32),
        "background": rng.normal(size=(R, R, bg_c)).astype(np.float16),
    }


def _write(path: Path, subjects: list[dict[str, np.ndarray]]) -> Path:
    with OfficialLmdbWriter(path, "genhead4d") as w:
        for s in subjects:
            w.add_views(**s)
    return path


@pytest.fixture
def genhead4d(tmp_path: Path) -> tuple[Path, list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    subjects = [_subject(rng), _subject(rng, frames=3, seg_channels=3, mot_dim=600)]
    return _write(tmp_path / "GenHead4D_32_2", subjects), subjects


def _official_item(s: dict[str, np.ndarray], frame_idx: np.ndarray, view_idx: np.ndarray) -> dict[str, np.ndarray]:
    """The official item, written from its steps on the flat bytes of one record (``num = frames * 5``): fields
    reshaped ``(num // 5, 5, -1)`` and indexed ``[frame, view]``; source ``(f0, v0)``, driving ``(f1, v1)``, target
    ``(f1, v2)``; maps HWC -> CHW, one-channel mattes tiled; triplanes ``(num // 5, -1)`` at the driving frame,
    rows of 35; the background one per record; labels cut into c / shape / exp / pose / eye; motions cut to 548."""
    num = s["images"].shape[0] * 5
    h, w = s["images"].shape[2:4]

    def flat(name: str, dtype: object) -> np.ndarray:
        return np.frombuffer(np.ascontiguousarray(s[name]).tobytes(), dtype=dtype).reshape(num // 5, 5, -1)

    def view(arr: np.ndarray, fv: tuple[int, int], hh: int, ww: int, tile: bool) -> np.ndarray:
        out = arr[fv].reshape(hh, ww, -1).transpose(2, 0, 1)
        return np.tile(out, (3, 1, 1)) if tile and out.shape[0] == 1 else out

    f0, f1 = (int(i) for i in frame_idx)
    v0, v1, v2 = (int(i) for i in view_idx)
    images, segs, segs_render = flat("images", np.uint8), flat("segs", np.uint8), flat("segs_render", np.uint8)
    depths, features = flat("depths", np.float16), flat("features", np.float16)
    labels, motions = flat("labels", np.float32), flat("motions", np.float32)[..., :548]
    triplanes = np.frombuffer(s["triplanes"].tobytes(), dtype=np.float16).reshape(num // 5, -1)
    bg = np.frombuffer(s["background"].tobytes(), dtype=np.float16).reshape(R, R, -1).transpose(2, 0, 1)
    src, drv, tgt = labels[f0, v0], labels[f1, v1], labels[f1, v2]
    return {
        "source_image": view(images, (f0, v0), h, w, False), "driving_image": view(images, (f1, v1), h, w, False),
        "target_image": view(images, (f1, v2), h, w, False), "target_seg": view(segs, (f1, v2), h, w, True),
        "seg_render": view(segs_render, (f1, v2), R, R, True), "depth": view(depths, (f1, v2), R, R, False),
        "feature": view(features, (f1, v2), R, R, False), "feature_bg": bg,
        "triplane": triplanes[f1].reshape(-1, 35), "c": tgt[:25], "shape": src[25:325], "exp": drv[325:425],
        "pose": drv[425:431], "eye": drv[431:437], "source_motion": motions[f0, v0], "driving_motion": motions[f1, v1],
    }


def _assert_item(item: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for key, value in want.items():
        assert item[key].dtype == value.dtype, key
        np.testing.assert_array_equal(item[key], value, err_msg=key)


# ---------------------------------------------------------------------------------------------------------
# the Datum_new LMDB


def test_datum_new_round_trip_is_bit_identical(genhead4d: tuple[Path, list[dict[str, np.ndarray]]]) -> None:
    path, subjects = genhead4d
    db = open_train_data(path)
    assert isinstance(db, OfficialLmdb) and db.kind == "genhead4d" and len(db) == 2
    for i, s in enumerate(subjects):
        rec = db.read(i)
        f = s["images"].shape[0]
        assert rec.num_frames == f and (rec.height, rec.width) == (SIZE, SIZE)
        for name, attr in (("images", "images"), ("segs_render", "segs_render"), ("depths", "depths"),
                           ("features", "features"), ("labels", "labels"), ("background", "background")):
            got = getattr(rec, attr)
            assert got.dtype == s[name].dtype, name
            assert got.reshape(s[name].shape).tobytes() == s[name].tobytes(), name  # bit for bit (float16 too)
        assert rec.segs.reshape(s["segs"].shape).tobytes() == s["segs"].tobytes()
        assert rec.triplanes.shape == (f, s["triplanes"][0].size) and rec.triplanes.tobytes() == s["triplanes"].tobytes()
        np.testing.assert_array_equal(rec.motions, s["motions"][..., :548])  # longer motions cut as upstream
        np.testing.assert_array_equal(rec.triplane(f - 1), s["triplanes"][f - 1])
        # the stored bytes are exactly the Datum_new message of the arrays
        raw = decode_message(DATUM_NEW, db.raw(i))
        assert (raw["num"], raw["height"], raw["width"], raw["channels"]) == (5 * f, SIZE, SIZE, 3)
        assert bytes(raw["bgs"]) == s["background"].tobytes() and bytes(raw["mots"]) == s["motions"].tobytes()
    assert db.check() == 2
    db.close()


def test_datum_new_field_numbers_match_the_official_proto() -> None:
    """Field numbers and types of ``datum_portrait_genhead_new.proto`` (``Datum_new``), both directions through a
    protobuf class built from them at run time."""
    expected = {"channels": 1, "height": 2, "width": 3, "num": 4, "images": 5, "segs": 6, "segs_render": 7,
                "features": 8, "depths": 9, "triplanes": 10, "labels": 11, "mots": 12, "bgs": 13}
    assert {n: num for n, (num, _) in DATUM_NEW.fields.items()} == expected
    assert {n for n, (_, kind) in DATUM_NEW.fields.items() if kind == "int32"} == {"channels", "height", "width", "num"}
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="avatar4d_test_datum_new.proto", syntax="proto2")
    msg = fdp.message_type.add(name="Datum_new")
    field = descriptor_pb2.FieldDescriptorProto
    for name, (number, kind) in DATUM_NEW.fields.items():
        msg.field.add(name=name, number=number, label=field.LABEL_OPTIONAL,
                      type=field.TYPE_INT32 if kind == "int32" else field.TYPE_BYTES)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("Datum_new"))
    rng = np.random.default_rng(1)
    values = {n: (int(rng.integers(0, 600)) if k == "int32" else rng.bytes(int(rng.integers(0, 300))))
              for n, (_, k) in DATUM_NEW.fields.items()}
    assert encode_message(DATUM_NEW, values) == cls(**values).SerializeToString()


# ---------------------------------------------------------------------------------------------------------
# the official item


def test_item_is_the_official_indexing_for_given_draws(genhead4d: tuple[Path, list[dict[str, np.ndarray]]]) -> None:
    path, subjects = genhead4d
    db = OfficialLmdb(path)
    for i, s in enumerate(subjects):
        rec = db.read(i, copy=False)
        f = s["images"].shape[0]
        for frames in ([0, f - 1], [f - 1, 0], [1, 1]):
            for views in ([0, 1, 2], [4, 4, 0], [3, 0, 4], [2, 2, 2]):
                item = triple_item(rec, np.array(frames), np.array(views))
                want = _official_item(s, np.array(frames), np.array(views))
                _assert_item(item, want)
                f0, f1 = frames
                v0, v1, v2 = views
                # spelled out: which frame and view each part comes from
                np.testing.assert_array_equal(item["source_image"], s["images"][f0, v0].transpose(2, 0, 1))
                np.testing.assert_array_equal(item["driving_image"], s["images"][f1, v1].transpose(2, 0, 1))
                np.testing.assert_array_equal(item["target_image"], s["images"][f1, v2].transpose(2, 0, 1))
                np.testing.assert_array_equal(item["c"], s["labels"][f1, v2, :25])
                np.testing.assert_array_equal(item["shape"], s["labels"][f0, v0, 25:325])
                np.testing.assert_array_equal(item["exp"], s["labels"][f1, v1, 325:425])
                np.testing.assert_array_equal(item["pose"], s["labels"][f1, v1, 425:431])  # not rectified
                np.testing.assert_array_equal(item["eye"], s["labels"][f1, v1, 431:437])
                np.testing.assert_array_equal(item["triplane"], s["triplanes"][f1])
                np.testing.assert_array_equal(item["feature_bg"], s["background"].transpose(2, 0, 1))
                np.testing.assert_array_equal(item["depth"], s["depths"][f1, v2].transpose(2, 0, 1))
                assert item["frames"].tolist() == frames and item["views"].tolist() == views
                assert all(v.flags.writeable and v.flags.owndata for v in item.values())  # copies, not LMDB pages
    # upstream's use_flame_mot: expression, jaw and eyes of the source / driving labels
    s = subjects[0]
    flame = triple_item(db.read(0), np.array([1, 0]), np.array([2, 3, 4]), flame_motion=True)
    lab = s["labels"][0, 3]
    np.testing.assert_array_equal(flame["driving_motion"], np.concatenate([lab[325:425], lab[428:431], lab[431:437]]))
    assert flame["source_motion"].shape == (109,)


def test_draws_are_reproducible_in_the_official_order(genhead4d: tuple[Path, list[dict[str, np.ndarray]]]) -> None:
    path, subjects = genhead4d
    ds = GenHeadTripleDataset(path, seed=7)
    np.random.seed(0)
    torch.manual_seed(0)
    first = [(ds[(1, p)]["frames"].tolist(), ds[(1, p)]["views"].tolist()) for p in range(40)]
    np.random.seed(99)
    again = GenHeadTripleDataset(OfficialLmdb(path), seed=7)
    assert [(again[(1, p)]["frames"].tolist(), again[(1, p)]["views"].tolist()) for p in range(40)] == first
    for position in range(40):
        for index, s in enumerate(subjects):
            f = s["images"].shape[0]
            item = ds[(index, position)]
            # one generator seeded with (seed, 1 = position key, position, index): 2 frames, then 3 views
            rng = np.random.default_rng(np.random.SeedSequence([7, 1, position, index]))
            frames, views = rng.integers(0, f, size=2), rng.integers(0, 5, size=3)
            assert item["frames"].tolist() == frames.tolist() and item["views"].tolist() == views.tolist()
            np.testing.assert_array_equal(item["frames"], frame_pair(f, 7, 1, position, index))
            _assert_item(item, _official_item(s, frames, views))
            assert item["index"] == index and item["position"] == position
    assert len({tuple(v) for _, v in first}) > 10 and len({tuple(f) for f, _ in first}) > 3
    assert any(f[0] == f[1] for f, _ in first)  # with replacement, as upstream
    # static: the same draws, the driving frame replaced by the source frame
    static = GenHeadTripleDataset(path, seed=7, static=True)
    for p in range(40):
        item = static[(1, p)]
        frames, views = first[p]
        assert item["frames"].tolist() == [frames[0], frames[0]] and item["views"].tolist() == views
    fs, vs = frame_view_draw(3, 7, 1, 5, 1, static=True)
    assert fs[0] == fs[1]
    # plain indices draw from (seed, epoch, index)
    e0 = ds[1]["views"].tolist()
    assert ds[1]["views"].tolist() == e0
    epochs = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        epochs.append((ds[1]["frames"].tolist(), ds[1]["views"].tolist()))
    assert epochs[0][1] == e0 and len({str(e) for e in epochs}) > 1
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["triplane"].dtype == torch.float16 and batch["depth"].shape == (2, 1, R, R)
    with pytest.raises(InputError, match="GenHeadTripleDataset"):
        ClipPairDataset(path)
    with pytest.raises(InputError, match="GenHeadTripleDataset"):
        ImageDataset(path)


# ---------------------------------------------------------------------------------------------------------
# damaged records


def _payload(s: dict[str, np.ndarray], **override: object) -> bytes:
    f, _, h, w, _ = s["images"].shape
    values: dict[str, object] = {
        "channels": 3, "height": h, "width": w, "num": 5 * f, "images": s["images"].tobytes(),
        "segs": s["segs"].tobytes(), "segs_render": s["segs_render"].tobytes(), "features": s["features"].tobytes(),
        "depths": s["depths"].tobytes(), "triplanes": s["triplanes"].tobytes(), "labels": s["labels"].tobytes(),
        "mots": s["motions"].tobytes(), "bgs": s["background"].tobytes()}
    values.update(override)
    return encode_message(DATUM_NEW, {k: v for k, v in values.items() if v is not None})


def test_damaged_records_name_the_lmdb_and_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    s = _subject(rng)
    good = _payload(s)
    cases = {
        "truncated": (good[: len(good) // 2], "key '00000001' is corrupt: .*truncated"),
        "num not a multiple of 5": (_payload(s, num=7), "num=7 is not a multiple of 5"),
        "no bgs": (_payload(s, bgs=None), "lacks 'bgs' \\(field 13\\) of Datum_new"),
        "no depths": (_payload(s, depths=None), "lacks 'depths' \\(field 9\\)"),
        "short images": (_payload(s, images=s["images"].tobytes()[:-1]), "'images' has .* bytes"),
        "odd depth bytes": (_payload(s, depths=s["depths"].tobytes()[:-2]), "'depths' has .* float16"),
        "features of 63 x 64": (_payload(s, features=s["features"][:, :, :63].tobytes()), "'features' has"),
        "segs_render of 32": (_payload(s, segs_render=s["segs_render"][:, :, :32].tobytes()), "'segs_render' has"),
        "triplanes not per frame": (_payload(s, triplanes=s["triplanes"].tobytes()[:-2]), "'triplanes' has"),
        "empty bgs": (_payload(s, bgs=b""), "'bgs' has 0 bytes"),
        "labels of 436": (_payload(s, labels=np.zeros((2, 5, 436), np.float32).tobytes()), "436 float32"),
        "nan label": (_payload(s, labels=np.full((2, 5, 437), np.nan, np.float32).tobytes()), "NaN"),
        "grey images": (_payload(s, channels=1), "channels=1"),
    }
    for i, (name, (payload, pattern)) in enumerate(cases.items()):
        folder = tmp_path / f"bad{i}"
        w = OfficialLmdbWriter(folder, "genhead4d")
        w.put_raw(good)
        w.put_raw(payload)
        w.close()
        ds = GenHeadTripleDataset(folder)
        ds[(0, 0)]
        with pytest.raises(TrainDataError, match=pattern) as err:
            ds[(1, 0)]
        assert str(folder) in str(err.value) and err.value.path == str(folder), name
        assert err.value.key == "00000001", name
    # triplane rows that do not fit the reconstructor's plane channels
    ds = GenHeadTripleDataset(_write(tmp_path / "ok", [s]), triplane_channels=5)  # 6 x 35 values: not rows of 8
    with pytest.raises(TrainDataError, match="key '00000000'.*not a whole number of rows of 8") as err:
        ds[(0, 0)]
    assert err.value.key == "00000000"
    # the older GenHead Datum (fields up to 11, no segs_render / bgs) is named, not misread as clips
    old = encode_message(DATUM_VFHQ, {"num": 5, "images": b"x"}) + bytes([9 << 3 | 2, 1, 0])
    w = OfficialLmdbWriter(tmp_path / "old", "genhead4d")
    w.put_raw(old)
    w.close()
    with pytest.raises(TrainDataError, match="older GenHead 'Datum' record"):
        _ = OfficialLmdb(tmp_path / "old").kind
    with pytest.raises(ValueError, match="images must be"):
        OfficialLmdbWriter(tmp_path / "w", "genhead4d").add_views(**{**s, "images": s["images"][:, :4]})


# ---------------------------------------------------------------------------------------------------------
# train/portrait4d.py


def _trainable_subjects(n: int, rng: np.random.Generator, plane_c: int, feature_c: int) -> list[dict[str, np.ndarray]]:
    """Subjects a tiny reconstructor can take: 64 images with a disc matte, cameras near the inference camera,
    small FLAME parameters, maps and triplane rows of the tiny network's widths."""
    from avatar.render.camera import view_label

    yy, xx = np.mgrid[0:64, 0:64] / 64
    disc = ((((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.12) * 255).astype(np.uint8)
    out = []
    for _ in range(n):
        s = _subject(rng, size=64, feature_c=feature_c, bg_c=feature_c, plane_c=plane_c, points=40)
        s["segs"][:] = disc
        s["segs_render"][:] = disc
        labels = np.zeros((2, 5, 437), np.float32)
        for f in range(2):
            for v in range(5):
                labels[f, v, :25] = view_label(float(rng.uniform(-15, 15)), float(rng.uniform(-5, 5)))[0].numpy()
        labels[..., 25:325] = rng.normal(scale=0.3, size=(2, 5, 300))
        labels[..., 325:425] = rng.normal(scale=0.3, size=(2, 5, 100))
        labels[..., 428] = rng.uniform(0, 0.2, (2, 5))
        s["labels"] = labels
        out.append(s)
    return out


def test_open_dataset_picks_the_dataset_and_says_which(tmp_path: Path, genhead4d: tuple[Path, list],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("pyarrow")
    from toy_train_data import write_toy_clips

    from train.portrait4d import open_dataset

    path, _ = genhead4d
    caplog.set_level(logging.INFO, logger="train.portrait4d")
    v1 = open_dataset(str(path), recipe("v1"), 3)
    assert isinstance(v1, GenHeadTripleDataset) and not v1.static and v1.seed == 3
    assert "GenHead renders" in caplog.text and "distillation targets until 400 kimg" in caplog.text
    static = open_dataset(str(path), recipe("static"), 3)
    assert isinstance(static, GenHeadTripleDataset) and static.static
    assert isinstance(open_dataset(str(path), recipe("v2"), 3), GenHeadTripleDataset)
    assert "no distillation in this recipe" in caplog.text
    caplog.clear()
    clips = write_toy_clips(tmp_path / "clips", clips=2, frames=2, size=16)
    assert isinstance(open_dataset(str(clips), recipe("v1"), 0), ClipPairDataset)
    assert "video clips" in caplog.text and "recipe v1 runs without GenHead's distillation targets" in caplog.text
    with pytest.raises(ConfigError, match="nr_initial=64"):  # 64 x 64 targets against a 32 render
        open_dataset(str(path), recipe("v1", nr_initial=32), 0)
    assert isinstance(open_dataset(str(path), recipe("v1", nr_initial=32, distill_end_kimg=0.0), 0),
                      GenHeadTripleDataset)


def test_one_tiny_v1_step_on_genhead_renders_logs_the_distillation_terms(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("lpips")
    from avatar.models.portrait4d.configuration import Portrait4DConfig
    from train.portrait4d import main

    tiny = Portrait4DConfig.tiny().encoders
    rng = np.random.default_rng(3)
    data = _write(tmp_path / "GenHead4D_64_2", _trainable_subjects(2, rng, tiny.plane_channels,
                                                                    tiny.background_out_channels))
    assert tiny.background_out_channels == 8  # the tiny feature images have the background's width too
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="train.portrait4d")
    argv = ["--recipe", "v1", "--data", str(data), "--size", "tiny", "--flame", "synthetic", "--loss-networks",
            "random", "--batch-size", "2", "--cpu", "--out-dir", str(out), "--data.num-workers", "0",
            "--log.trackers", "jsonl", "--no-log.progress-bar", "--max-steps", "1"]
    assert main(argv) == 0
    assert "training data: GenHead renders" in caplog.text
    (stats_path,) = out.glob("logs/*/stats.jsonl")
    stats: dict[str, float] = {}
    for line in stats_path.read_text().splitlines():
        stats.update(json.loads(line))
    for key in ("Loss/G/lrecon_depth", "Loss/G/lrecon_feature", "Loss/G/lrecon_triplane", "Loss/G/lrecon_l1"):
        value = next((v for k, v in stats.items() if k.startswith(key)), None)
        assert value is not None and math.isfinite(float(value)), (key, sorted(stats))


def test_convert_refuses_genhead_renders_in_one_sentence(genhead4d: tuple[Path, list[dict[str, np.ndarray]]],
                                                        tmp_path: Path) -> None:
    from avatar.errors import InputError
    from train.data.convert import convert

    path, _ = genhead4d
    with pytest.raises(InputError, match="train on the LMDB as it is"):
        convert(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
