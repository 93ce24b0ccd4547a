"""Training data of the Portrait4D reconstructor (and GenHead's image data), three ways in.

* The official LMDBs as they are (:class:`OfficialLmdb`, :class:`OfficialLmdbWriter`): ``Datum_vfhq`` clips and
  ``Datum_genhead`` images, decoded by a small proto2 codec (:mod:`train.data.protowire`) and checked record by
  record (:class:`TrainDataError` names the LMDB folder and key).
* Our default format (:mod:`train.data.parquet_format`): Parquet shards in a Hugging Face dataset layout, one row
  per clip, PNG frames; local folders or Hub dataset repos, random access (:class:`ParquetTrainData`) or shard by
  shard (:class:`ShardStream`). ``python -m train.data.convert LMDB --out DIR`` converts the official data;
  ``python -m train.prepare VIDEOS --out DIR`` makes it from talking-head videos with this toolkit's
  preprocessing.
* Datasets with the official semantics (:mod:`train.data.datasets`): :class:`ClipPairDataset` (Portrait4D-v2
  pairs, rectified head pose, reproducible draws), :class:`ImageDataset` (FFHQ / GenHead),
  :class:`StreamingClipPairs`; :class:`InfiniteSampler` (upstream order, resumable) is
  :class:`train.core.sampling.InfiniteSampler`, re-exported here.
"""

from train.core.sampling import InfiniteSampler
from train.data.datasets import (
    ClipPairDataset,
    ImageDataset,
    StreamingClipPairs,
    frame_pair,
    open_train_data,
    pair_item,
    rectify_head_pose,
)
from train.data.errors import TrainDataError
from train.data.official_lmdb import OfficialLmdb, OfficialLmdbWriter, official_folder_name
from train.data.parquet_format import ParquetTrainData, ShardStream, TrainDataWriter
from train.data.records import LABEL_DIM, MOTION_DIM, ClipRecord, ImageRecord

__all__ = [
    "LABEL_DIM",
    "MOTION_DIM",
    "ClipPairDataset",
    "ClipRecord",
    "ImageDataset",
    "ImageRecord",
    "InfiniteSampler",
    "OfficialLmdb",
    "OfficialLmdbWriter",
    "ParquetTrainData",
    "ShardStream",
    "StreamingClipPairs",
    "TrainDataError",
    "TrainDataWriter",
    "frame_pair",
    "official_folder_name",
    "open_train_data",
    "pair_item",
    "rectify_head_pose",
]
