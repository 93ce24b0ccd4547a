"""Upstream assets: registry, safe reading (no pickle code is ever run), conversion, download and cache."""

from .convert import ConvertedFile, convert_file
from .download import (
    AssetNotFoundError,
    AssetVerificationError,
    cache_root,
    converted_dir,
    download_model,
    ensure_file,
    is_converted,
)
from .formats import ExtractedWeights, FormatError, read_asset
from .registry import (
    DEFAULT_MODEL_ID,
    FILES,
    HUB_REPO,
    HUB_REVISION,
    MODELS,
    ModelSpec,
    UpstreamFile,
    get_model,
)
from .unpickle import UnsafePickleError, restricted_load

__all__ = [
    "AssetNotFoundError", "AssetVerificationError", "ConvertedFile", "DEFAULT_MODEL_ID", "ExtractedWeights",
    "FILES", "FormatError", "HUB_REPO", "HUB_REVISION", "MODELS", "ModelSpec", "UnsafePickleError", "UpstreamFile",
    "cache_root", "convert_file", "converted_dir", "download_model", "ensure_file", "get_model", "is_converted",
    "read_asset", "restricted_load",
]
