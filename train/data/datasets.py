"""PyTorch datasets of the reconstructor's training data, with the official semantics.

* :class:`ClipPairDataset` - Portrait4D-v2's video data (official ``OneShotReconSegLmdbFolderDataset``,
  ``training/dataloader/dataset_recon.py``): one item per clip, a source and a driving frame drawn with
  replacement from the clip's frames, the clip's head poses rectified (:func:`rectify_head_pose`).
* :class:`GenHeadTripleDataset` - Portrait4D-v1's offline GenHead renders (official
  ``GenHeadReconSegLmdbFolderDatasetV2New``, same file; ``Datum_new`` LMDBs): one item per subject, a source, a
  driving and a target view (two frames, then three views, drawn with replacement) with v1's distillation
  targets (rendered matte, depth, features, background, triplane samples).
* :class:`ImageDataset` - the FFHQ / GenHead data (official ``PortraitSynthesisSegLmdbFolderDatasetV2``,
  ``training/dataloader/dataset.py``).
* :class:`StreamingClipPairs` - clip pairs from shards streamed one at a time (data too large to download).

The official sample order (``torch_utils/misc.py``), resumable at any position, is
:class:`train.core.sampling.InfiniteSampler` (also importable from :mod:`train.data`).

Items are dicts of numpy arrays (the default ``collate_fn`` stacks them into tensors); images stay uint8 CHW as
upstream (the loop maps them with ``x / 127.5 - 1``).

**Reproducible draws.** Upstream draws the frame pair (and the GenHead views) with the global ``np.random`` of
each DataLoader worker, so a resumed run sees other pairs. Here the draws are a pure function of ``(seed, key,
record index)`` (:func:`frame_pair`; :func:`frame_view_draw` for the GenHead triples, whose generator goes on from
the frames to the views): the key is the position in the sample stream when the sampler gives one
(``dataset[(index, position)]``: :class:`~train.core.sampling.InfiniteSampler` yields such pairs and
:func:`~train.core.sampling.make_loader` (so the trainer) passes them on, as ``takes_positions`` asks; resuming
at ``start = images seen so far`` gives exactly the items a run that never stopped would have seen), else the
epoch (``dataset[index]``, with :meth:`ClipPairDataset.set_epoch`). Nothing depends on global random state,
worker count or worker order.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar.errors import InputError
from train.data.errors import TrainDataError
from train.data.official_lmdb import OfficialLmdb
from train.data.parquet_format import ParquetTrainData, ShardStream
from train.data.records import (
    CAMERA,
    EXPRESSION,
    EYE_POSE,
    HEAD_ROTATION,
    JAW_POSE,
    POSE,
    SHAPE,
    TRIPLANE_CHANNELS,
    VIEWS_PER_FRAME,
    ClipRecord,
    GenHead4DRecord,
    ImageRecord,
)

__all__ = ["ClipPairDataset", "GenHeadTripleDataset", "ImageDataset", "StreamingClipPairs", "frame_pair",
           "frame_view_draw", "is_genhead4d", "open_train_data", "pair_item", "rectify_head_pose", "triple_item"]

TrainDataSource = OfficialLmdb | ParquetTrainData
_KEY_EPOCH, _KEY_POSITION, _KEY_STREAM = 0, 1, 2


def open_train_data(name_or_path: str | Path, revision: str | None = None) -> TrainDataSource:
    """An official LMDB folder (``data.mdb`` inside: VFHQ clips, FFHQ images or GenHead renders, told apart by
    :attr:`OfficialLmdb.kind`), one of our Parquet dataset folders, or a Hub dataset repo of ours (``owner/name``,
    downloaded once with ``snapshot_download``)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "data.mdb").is_file():
        return OfficialLmdb(path)
    return ParquetTrainData(name_or_path, revision=revision)


def _is_clips(source: Any) -> bool:
    return getattr(source, "kind", None) in ("vfhq", "clips")


def is_genhead4d(source: Any) -> bool:
    """Whether ``source`` (an opened data source) holds the official offline GenHead renders (``Datum_new``)."""
    return getattr(source, "kind", None) == "genhead4d"


def _name(source: Any) -> Any:
    return getattr(source, "path", None) or getattr(source, "root", source)


# ---------------------------------------------------------------------------------------------------------
# the official label operations


def rectify_head_pose(labels: np.ndarray) -> np.ndarray:
    """The official "rectify pose" of one clip (``OneShotReconSegLmdbFolderDataset._load_raw_labels``).

    For all N frames: the head rotations ``labels[:, 425:428]`` (rotation vectors) -> scipy ``Rotation`` ->
    Euler ``'xyz'`` angles, averaged over the frames; ``cam_rot`` = ``Rotation.from_euler('xyz', (0, mean_y,
    mean_z))`` (yaw and roll of the clip mean; pitch stays in the head); each frame's rotation becomes
    ``cam_rot^T @ R_head``, written back as a rotation vector. The camera ``labels[:, :25]`` and everything else
    are unchanged. ``labels``: ``(N, 437)``; returns a float32 copy (upstream computes in float64 and stores into
    its float32 array).
    """
    from scipy.spatial.transform import Rotation

    out = np.array(labels, dtype=np.float32, copy=True)
    if out.ndim != 2 or out.shape[1] < HEAD_ROTATION.stop:
        raise ValueError(f"expected (N, 437) labels, got {out.shape}")
    head = Rotation.from_rotvec(out[:, HEAD_ROTATION].astype(np.float64))
    with warnings.catch_warnings():  # as upstream, a gimbal-locked frame just gets scipy's convention
        warnings.filterwarnings("ignore", message="Gimbal lock detected", category=UserWarning)
        mean = head.as_euler("xyz").mean(axis=0)
    cam_rot = Rotation.from_euler("xyz", [0.0, mean[1], mean[2]]).as_matrix()
    rectified = np.matmul(cam_rot.T[None], head.as_matrix())
    out[:, HEAD_ROTATION] = Rotation.from_matrix(rectified).as_rotvec()
    return out


def frame_pair(num_frames: int, seed: int, *key: int) -> np.ndarray:
    """``[source, driving]`` frame indices, drawn uniformly **with replacement** from ``range(num_frames)`` as
    upstream's ``np.random.randint(num, size=2)`` (so both are the same frame with probability 1/num), by a
    generator seeded with ``(seed, *key)`` only (non-negative integers)."""
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    return _draw_rng(seed, key).integers(0, num_frames, size=2, dtype=np.int64)


def _draw_rng(seed: int, key: tuple[int, ...]) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, key)]))


def frame_view_draw(num_frames: int, seed: int, *key: int, static: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``([source frame, driving frame], [source view, driving view, target view])`` of a GenHead triple, in
    upstream's order: ``np.random.randint(num_frames, size=2)``, then (``static``: driving frame = source frame,
    no draw) ``np.random.randint(5, size=3)``; all with replacement, from one generator seeded with ``(seed,
    *key)`` (so the frames are :func:`frame_pair`'s)."""
    if num_frames < 1:
        raise ValueError(f"a record needs at least one frame, got {num_frames}")
    rng = _draw_rng(seed, key)
    frames = rng.integers(0, num_frames, size=2, dtype=np.int64)
    if static:
        frames[1] = frames[0]
    views = rng.integers(0, VIEWS_PER_FRAME, size=3, dtype=np.int64)
    return frames, views


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def _resolve_key(key: int | tuple[int, int], epoch: int, length: int) -> tuple[int, int | None, tuple[int, ...]]:
    """A map-style dataset key -> ``(record index, stream position or None, draw key)``: ``(index, position)``
    from the sampler draws by position, a plain index by epoch (module docstring); negative indices count from
    the end."""
    if isinstance(key, tuple | list):
        index, position = (int(k) for k in key)
        draw_key: tuple[int, ...] = (_KEY_POSITION, position, index)
    else:
        index, position = int(key), None
        draw_key = (_KEY_EPOCH, epoch, index)
    return (index + length if index < 0 else index), position, draw_key


def _tagged(item: dict[str, Any], index: int, position: int | None) -> dict[str, Any]:
    """``item`` with its record ``index`` (and stream ``position``) added, as the loop's bookkeeping reads them."""
    item["index"] = np.int64(index)
    if position is not None:
        item["position"] = np.int64(position)
    return item


def pair_item(record: ClipRecord, frames: np.ndarray, rectify_pose: bool = True,
              flame_motion: bool = False) -> dict[str, np.ndarray]:
    """The training item of a clip and its ``[source, driving]`` frames (the official ``__getitem__``).

    Returns:
        ``source_image``, ``driving_image`` (also the reconstruction target): ``(3, H, W)`` uint8 RGB;
        ``driving_seg``: ``(3, H, W)`` uint8 (a one-channel matte is tiled, as upstream);
        ``c``: ``(25,)`` the **driving** camera; ``shape``: ``(300,)`` from the **source** label; ``exp``
        ``(100,)``, ``pose`` ``(6,)`` (rectified head rotation + jaw) and ``eye`` ``(6,)`` from the **driving**
        label; ``source_motion``, ``driving_motion``: ``(D,)`` (``flame_motion``: upstream's ``use_flame_mot``,
        expression 100 + jaw 3 + eyes 6 = 109 floats from the labels instead); ``frames``: ``(2,)`` int64.
    """
    s, d = (int(i) for i in frames)
    labels = rectify_head_pose(record.labels) if rectify_pose else np.array(record.labels, np.float32)
    src, drv = labels[s], labels[d]
    if flame_motion:
        src_mot = np.concatenate([src[EXPRESSION], src[JAW_POSE], src[EYE_POSE]])
        drv_mot = np.concatenate([drv[EXPRESSION], drv[JAW_POSE], drv[EYE_POSE]])
    else:
        src_mot, drv_mot = record.motions[s], record.motions[d]
    return {
        "source_image": _chw(record.image(s)),
        "driving_image": _chw(record.image(d)),
        "driving_seg": _chw(record.seg(d)),
        "c": drv[CAMERA].copy(),
        "shape": src[SHAPE].copy(),
        "exp": drv[EXPRESSION].copy(),
        "pose": drv[POSE].copy(),
        "eye": drv[EYE_POSE].copy(),
        "source_motion": np.array(src_mot, dtype=np.float32),
        "driving_motion": np.array(drv_mot, dtype=np.float32),
        "frames": np.array([s, d], dtype=np.int64),
    }


def triple_item(record: GenHead4DRecord, frames: np.ndarray, views: np.ndarray, flame_motion: bool = False,
                triplane_channels: int = TRIPLANE_CHANNELS) -> dict[str, np.ndarray]:
    """The training item of a GenHead record for its draws (the official
    ``GenHeadReconSegLmdbFolderDatasetV2New.__getitem__``): with ``frames = [f0, f1]``, ``views = [v0, v1, v2]``,
    the source is view ``(f0, v0)``, the driving view ``(f1, v1)``, the target ``(f1, v2)``.

    Returns:
        ``source_image``, ``driving_image``, ``target_image``: ``(3, H, W)`` uint8 RGB; ``target_seg`` ``(3, H, W)``
        and ``seg_render`` ``(3, 64, 64)`` uint8 of the target (one channel tiled, as upstream); ``depth``
        ``(C, 64, 64)``, ``feature`` ``(C, 64, 64)`` of the target and ``feature_bg`` ``(C, 64, 64)`` of the
        record, float16 as stored; ``triplane`` ``(N, 3 + triplane_channels)`` float16 of the **driving frame**;
        ``c`` ``(25,)`` the **target** camera; ``shape`` ``(300,)`` from the **source** label; ``exp`` ``(100,)``,
        ``pose`` ``(6,)``, ``eye`` ``(6,)`` from the **driving** label (no pose rectification, as upstream's
        GenHead classes); ``source_motion``, ``driving_motion`` ``(D,)`` (``flame_motion``: upstream's
        ``use_flame_mot``, expression + jaw + eyes = 109 floats); ``frames`` ``(2,)`` and ``views`` ``(3,)`` int64.
    """
    (f0, f1), (v0, v1, v2) = (int(i) for i in frames), (int(i) for i in views)
    src, drv, tgt = record.labels[f0, v0], record.labels[f1, v1], record.labels[f1, v2]
    if flame_motion:
        src_mot = np.concatenate([src[EXPRESSION], src[JAW_POSE], src[EYE_POSE]])
        drv_mot = np.concatenate([drv[EXPRESSION], drv[JAW_POSE], drv[EYE_POSE]])
    else:
        src_mot, drv_mot = record.motions[f0, v0], record.motions[f1, v1]
    def chw(x: np.ndarray) -> np.ndarray:  # always a copy: a one-channel map would stay a view of the LMDB page
        return np.array(x.transpose(2, 0, 1), order="C")

    return {
        "source_image": chw(record.image(f0, v0)),
        "driving_image": chw(record.image(f1, v1)),
        "target_image": chw(record.image(f1, v2)),
        "target_seg": chw(record.seg(f1, v2)),
        "seg_render": chw(record.seg_render(f1, v2)),
        "depth": chw(record.depths[f1, v2]),
        "feature": chw(record.features[f1, v2]),
        "feature_bg": chw(record.background),
        "triplane": np.array(record.triplane(f1, triplane_channels)),
        "c": np.array(tgt[CAMERA]),
        "shape": np.array(src[SHAPE]),
        "exp": np.array(drv[EXPRESSION]),
        "pose": np.array(drv[POSE]),
        "eye": np.array(drv[EYE_POSE]),
        "source_motion": np.array(src_mot, dtype=np.float32),
        "driving_motion": np.array(drv_mot, dtype=np.float32),
        "frames": np.array([f0, f1], dtype=np.int64),
        "views": np.array([v0, v1, v2], dtype=np.int64),
    }


# ---------------------------------------------------------------------------------------------------------
# map-style datasets


class ClipPairDataset(torch.utils.data.Dataset):
    """Portrait4D-v2's clip dataset: one item per clip (see :func:`pair_item` for what an item holds).

    Args:
        source: an :class:`~train.data.OfficialLmdb` of ``Datum_vfhq`` clips, a :class:`ParquetTrainData` of kind
            ``'clips'``, or a path / Hub repo id for :func:`open_train_data`.
        seed: seed of the frame draws (module docstring: draws depend on ``(seed, key, index)`` only).
        rectify_pose: upstream's head-pose rectification (always on upstream).
        flame_motion: upstream's ``use_flame_mot`` (off in every released config).

    ``dataset[i]`` draws with the key ``(epoch, i)`` (:meth:`set_epoch`); ``dataset[(i, position)]`` with the
    key ``position`` (what :class:`~train.core.sampling.InfiniteSampler` yields), and adds ``index`` and
    ``position`` to the item. ``takes_positions`` tells :func:`~train.core.sampling.make_loader` (and so the
    trainer) to read it that way.
    """

    takes_positions = True

    def __init__(self, source: TrainDataSource | str | Path, seed: int = 0, rectify_pose: bool = True,
                 flame_motion: bool = False) -> None:
        self.source = open_train_data(source) if isinstance(source, str | Path) else source
        if is_genhead4d(self.source):
            raise InputError(f"{_name(self.source)} holds GenHead renders (Datum_new), not clips; use "
                             "GenHeadTripleDataset for it")
        if not _is_clips(self.source):
            raise InputError(f"{_name(self.source)} holds single images (FFHQ / GenHead data), not clips; use "
                             "ImageDataset for it")
        if seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed}")
        self.seed, self.rectify_pose, self.flame_motion = int(seed), rectify_pose, flame_motion
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draws of ``dataset[i]`` depend on the epoch (call it in the main process before each epoch's
        iterator is made; workers get a copy of the dataset when the iterator starts)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def _record(self, index: int) -> ClipRecord:
        record = self.source.read(int(index), copy=False)
        assert isinstance(record, ClipRecord)
        return record

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, position, draw_key = _resolve_key(key, self.epoch, len(self))
        record = self._record(index)
        item = pair_item(record, frame_pair(record.num_frames, self.seed, *draw_key), self.rectify_pose,
                         self.flame_motion)
        return _tagged(item, index, position)


class ImageDataset(torch.utils.data.Dataset):
    """The FFHQ / GenHead data: ``image`` ``(3, H, W)`` uint8 RGB, ``seg`` ``(3, H, W)`` uint8, ``c`` (25),
    ``shape`` (300), ``exp`` (100), ``pose`` (6), ``eye`` (6) of one record (official
    ``PortraitSynthesisSegLmdbFolderDatasetV2``; no random draw). ``dataset[(i, position)]`` is accepted too."""

    def __init__(self, source: TrainDataSource | str | Path) -> None:
        self.source = open_train_data(source) if isinstance(source, str | Path) else source
        if _is_clips(self.source):
            raise InputError("this data holds clips; use ClipPairDataset for it")
        if is_genhead4d(self.source):
            raise InputError("this data holds GenHead renders (Datum_new); use GenHeadTripleDataset for it")

    def __len__(self) -> int:
        return len(self.source)

    def _record(self, index: int) -> ImageRecord:
        record = self.source.read(int(index), copy=False)
        assert isinstance(record, ImageRecord)
        return record

    def label_all(self, index: int) -> dict[str, np.ndarray]:
        """``c, shape, exp, pose, eye`` of record ``index`` without decoding its images (upstream
        ``get_label_all``, used to sample generator conditions)."""
        label = self._record(index).label
        return {"c": label[CAMERA].copy(), "shape": label[SHAPE].copy(), "exp": label[EXPRESSION].copy(),
                "pose": label[POSE].copy(), "eye": label[EYE_POSE].copy()}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = int(key[0]) if isinstance(key, tuple | list) else int(key)
        if index < 0:
            index += len(self)
        record = self._record(index)
        label = record.label
        return {"image": _chw(record.decode_image()), "seg": _chw(record.decode_seg()),
                "c": label[CAMERA].copy(), "shape": label[SHAPE].copy(), "exp": label[EXPRESSION].copy(),
                "pose": label[POSE].copy(), "eye": label[EYE_POSE].copy(), "index": np.int64(index)}


class GenHeadTripleDataset(torch.utils.data.Dataset):
    """Portrait4D-v1's offline GenHead data (a ``Datum_new`` LMDB): one item per subject, see :func:`triple_item`.

    Provenance: the official ``GenHeadReconSegLmdbFolderDatasetV2New`` (``training/dataloader/dataset_recon.py``,
    the default dataset class of ``train_recon_v1.py``; the official v1 loop itself renders GenHead online and
    leaves it unused). Its item, with the draws of :func:`frame_view_draw`; what differs: the draws are
    reproducible (module docstring) instead of the worker's global ``np.random``, and the depth, feature,
    background and triplane maps stay float16 (``prepare`` makes them float32 on the device).

    Args:
        source: an :class:`~train.data.OfficialLmdb` of kind ``'genhead4d'``, or its path.
        seed: seed of the draws.
        static: upstream's ``static`` (the static recipe's data): the driving frame is the source frame.
        flame_motion: upstream's ``use_flame_mot`` (off in every released config).
        triplane_channels: plane features per triplane point (32 upstream: rows of 35); a reconstructor with
            other plane channels (the tiny test networks) needs data rendered for it.

    Keys as :class:`ClipPairDataset`: ``dataset[(i, position)]`` (what the trainer passes) draws with the key
    ``position``, ``dataset[i]`` with ``(epoch, i)``.
    """

    takes_positions = True

    def __init__(self, source: TrainDataSource | str | Path, seed: int = 0, static: bool = False,
                 flame_motion: bool = False, triplane_channels: int = TRIPLANE_CHANNELS) -> None:
        self.source = open_train_data(source) if isinstance(source, str | Path) else source
        if not is_genhead4d(self.source):
            raise InputError(f"{_name(self.source)} is not a GenHead render LMDB (official Datum_new records); its "
                             f"kind is {getattr(self.source, 'kind', None)!r}")
        if seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed}")
        self.seed, self.static, self.flame_motion = int(seed), bool(static), flame_motion
        self.triplane_channels = int(triplane_channels)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """As :meth:`ClipPairDataset.set_epoch`."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def motion_dim(self) -> int:
        """Width of the items' motions (read from record 0's motions, without drawing)."""
        return 109 if self.flame_motion else int(self._record(0).motions.shape[-1])

    def _record(self, index: int) -> GenHead4DRecord:
        record = self.source.read(int(index), copy=False)
        assert isinstance(record, GenHead4DRecord)
        return record

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, position, draw_key = _resolve_key(key, self.epoch, len(self))
        record = self._record(index)
        frames, views = frame_view_draw(record.num_frames, self.seed, *draw_key, static=self.static)
        return _tagged(triple_item(record, frames, views, self.flame_motion, self.triplane_channels), index,
                       position)


# ---------------------------------------------------------------------------------------------------------
# streaming


class StreamingClipPairs(torch.utils.data.IterableDataset):
    """Clip pairs read shard by shard (:class:`~train.data.parquet_format.ShardStream`: a local folder, or a Hub
    dataset repo whose shards are downloaded as they are reached) for data too large to download first.

    Each epoch the shards are shuffled with ``(seed, epoch)`` and dealt round-robin to the ``world_size x
    num_workers`` readers (rank ``rank``; DataLoader workers split further); every reader goes through its shards'
    clips in order. The frame pair of row ``r`` of shard ``s`` depends on ``(seed, epoch, s, r)`` only. Exact
    resumption inside an epoch needs the map-style :class:`ClipPairDataset` with
    :class:`~train.core.sampling.InfiniteSampler`.
    """

    def __init__(self, source: ShardStream | str | Path, seed: int = 0, epoch: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle_shards: bool = True, rectify_pose: bool = True,
                 flame_motion: bool = False) -> None:
        self.stream = source if isinstance(source, ShardStream) else ShardStream(source)
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"rank {rank} of {world_size} is impossible")
        self.seed, self.epoch, self.rank, self.world_size = int(seed), int(epoch), rank, world_size
        self.shuffle_shards, self.rectify_pose, self.flame_motion = shuffle_shards, rectify_pose, flame_motion

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shards_for(self, worker: int = 0, num_workers: int = 1) -> list[int]:
        """The shards one reader goes through this epoch."""
        order = np.arange(len(self.stream))
        if self.shuffle_shards:
            np.random.default_rng([self.seed, _KEY_STREAM, self.epoch]).shuffle(order)
        reader, readers = self.rank * num_workers + worker, self.world_size * num_workers
        return [int(s) for s in order[reader::readers]]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for shard in self.shards_for(worker, workers):
            for row, record in self.stream.iter_shard(shard):
                if not isinstance(record, ClipRecord):
                    raise TrainDataError(f"{self.stream.shards[shard]} holds images, not clips",
                                         self.stream.shards[shard])
                frames = frame_pair(record.num_frames, self.seed, _KEY_STREAM, self.epoch, shard, row)
                item: dict[str, Any] = pair_item(record, frames, self.rectify_pose, self.flame_motion)
                item["shard"], item["row"] = np.int64(shard), np.int64(row)
                yield item
