"""Training data of the Portrait4D reconstructor (and GenHead's image data), three ways in.

* The official LMDBs as they are (:class:`OfficialLmdb`, :class:`OfficialLmdbWriter`): ``Datum_vfhq`` clips,
  ``Datum_genhead`` images and ``Datum_new`` GenHead renders (v1's offline data), decoded by a small proto2 codec
  (:mod:`train.data.protowire`) and checked record by record (:class:`TrainDataError` names the LMDB folder and
  key).
* Our default format (:mod:`train.data.parquet_format`): Parquet shards in a Hugging Face dataset layout, one row
  per clip, PNG frames; local folders or Hub dataset repos, random access (:class:`ParquetTrainData`) or shard by
  shard (:class:`ShardStream`). ``python -m train.data.convert LMDB --out DIR`` converts the official data;
  ``python -m train.prepare VIDEOS --out DIR`` makes it from talking-head videos with this toolkit's
  preprocessing.
* Datasets with the official semantics (:mod:`train.data.datasets`): :class:`ClipPairDataset` (Portrait4D-v2
  pairs, rectified head pose, reproducible draws), :class:`GenHeadTripleDataset` (Portrait4D-v1's GenHead
  source / driving / target views with the distillation targets), :class:`ImageDataset` (FFHQ / GenHead),
  :class:`StreamingClipPairs`; :class:`InfiniteSampler` (upstream order, resumable) is
  :class:`train.core.sampling.InfiniteSampler`, re-exported here.
"""

from train.core.sampling import InfiniteSampler
from train.data.datasets import (
    ClipPairDataset,
    GenHeadTripleDataset,
    ImageDataset,
    StreamingClipPairs,
    frame_pair,
    frame_view_draw,
    is_genhead4d,
    open_train_data,
    pair_item,
    rectify_head_pose,
    triple_item,
)
from train.data.errors import TrainDataError
from train.data.official_lmdb import OfficialLmdb, OfficialLmdbWriter, official_folder_name
from train.data.parquet_format import ParquetTrainData, ShardStream, TrainDataWriter
from train.data.records import LABEL_DIM, MOTION_DIM, ClipRecord, GenHead4DRecord, ImageRecord

__all__ = [
    "LABEL_DIM",
    "MOTION_DIM",
    "ClipPairDataset",
    "ClipRecord",
    "GenHead4DRecord",
    "GenHeadTripleDataset",
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
    "frame_view_draw",
    "is_genhead4d",
    "official_folder_name",
    "open_train_data",
    "pair_item",
    "rectify_head_pose",
    "triple_item",
]
