"""PyTorch datasets of the reconstructor's training data, with the official semantics.

* :class:`ClipPairDataset` - Portrait4D-v2's video data (official ``OneShotReconSegLmdbFolderDataset``,
  ``training/dataloader/dataset_recon.py``): one item per clip, a source and a driving frame drawn with
  replacement from the clip's frames, the clip's head poses rectified (:func:`rectify_head_pose`).
* :class:`ImageDataset` - the FFHQ / GenHead data (official ``PortraitSynthesisSegLmdbFolderDatasetV2``,
  ``training/dataloader/dataset.py``).
* :class:`StreamingClipPairs` - clip pairs from shards streamed one at a time (data too large to download).

The official sample order (``torch_utils/misc.py``), resumable at any position, is
:class:`train.core.sampling.InfiniteSampler` (also importable from :mod:`train.data`).

Items are dicts of numpy arrays (the default ``collate_fn`` stacks them into tensors); images stay uint8 CHW as
upstream (the loop maps them with ``x / 127.5 - 1``).

**Reproducible draws.** Upstream draws the frame pair with the global ``np.random`` of each DataLoader worker,
so a resumed run sees other pairs. Here the pair is a pure function of ``(seed, key, clip index)``
(:func:`frame_pair`): the key is the position in the sample stream when the sampler gives one (``dataset[(index,
position)]``: :class:`~train.core.sampling.InfiniteSampler` yields such pairs and
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
    ClipRecord,
    ImageRecord,
)

__all__ = ["ClipPairDataset", "ImageDataset", "StreamingClipPairs", "frame_pair", "open_train_data", "pair_item",
           "rectify_head_pose"]

TrainDataSource = OfficialLmdb | ParquetTrainData
_KEY_EPOCH, _KEY_POSITION, _KEY_STREAM = 0, 1, 2


def open_train_data(name_or_path: str | Path, revision: str | None = None) -> TrainDataSource:
    """An official LMDB folder (``data.mdb`` inside), one of our Parquet dataset folders, or a Hub dataset repo
    of ours (``owner/name``, downloaded once with ``snapshot_download``)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "data.mdb").is_file():
        return OfficialLmdb(path)
    return ParquetTrainData(name_or_path, revision=revision)


def _is_clips(source: Any) -> bool:
    return getattr(source, "kind", None) in ("vfhq", "clips")


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
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, key)]))
    return rng.integers(0, num_frames, size=2, dtype=np.int64)


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1))


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
        if not _is_clips(self.source):
            raise InputError(f"{getattr(self.source, 'path', None) or getattr(self.source, 'root', self.source)} holds "
                             "single images (FFHQ / GenHead data), not clips; use ImageDataset for it")
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
        if isinstance(key, tuple | list):
            index, position = (int(k) for k in key)
            draw_key = (_KEY_POSITION, position, index)
        else:
            index, position = int(key), None
            draw_key = (_KEY_EPOCH, self.epoch, index)
        if index < 0:
            index += len(self)
        record = self._record(index)
        item: dict[str, Any] = pair_item(record, frame_pair(record.num_frames, self.seed, *draw_key),
                                         self.rectify_pose, self.flame_motion)
        item["index"] = np.int64(index)
        if position is not None:
            item["position"] = np.int64(position)
        return item


class ImageDataset(torch.utils.data.Dataset):
    """The FFHQ / GenHead data: ``image`` ``(3, H, W)`` uint8 RGB, ``seg`` ``(3, H, W)`` uint8, ``c`` (25),
    ``shape`` (300), ``exp`` (100), ``pose`` (6), ``eye`` (6) of one record (official
    ``PortraitSynthesisSegLmdbFolderDatasetV2``; no random draw). ``dataset[(i, position)]`` is accepted too."""

    def __init__(self, source: TrainDataSource | str | Path) -> None:
        self.source = open_train_data(source) if isinstance(source, str | Path) else source
        if _is_clips(self.source):
            raise InputError("this data holds clips; use ClipPairDataset for it")

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
