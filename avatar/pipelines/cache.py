"""Pipelines loaded on first use and kept for reuse (a server such as the app loads each model once).

    cache = PipelineCache(max_loaded=2, device="auto", dtype="float32")
    pipe = cache.get("portrait4d-v2")      # loads it (thread-safe), or returns the loaded one
    cache.loaded()                          # {name: LoadedModel(pipeline, source, device, dtype, seconds)}

A name is a registered pipeline model id, a pipeline folder (``avatar tiny DIR``), or :data:`TINY`: a tiny
pipeline of random networks built in memory (development and tests; its pictures are meaningless), with
MediaPipe's real face detection and crops when ``mediapipe`` is installed (the ``[face]`` extra). A model
that cannot be loaded raises :class:`ModelUnavailableError` whose message says what to do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avatar.errors import AssetNotFoundError, AvatarError
from avatar.pipelines.base import AvatarPipeline

__all__ = ["TINY", "LoadedModel", "ModelUnavailableError", "PipelineCache"]

logger = logging.getLogger(__name__)

TINY = "tiny"
"""Name of the tiny random pipeline (built in memory; for development, its pictures are meaningless)."""


class ModelUnavailableError(AvatarError, RuntimeError):
    """The selected model cannot be loaded here (weights missing, device or dtype unusable); the message says
    what to do. Also a :class:`RuntimeError`, as it always was."""


@dataclass
class LoadedModel:
    """A loaded pipeline and where it came from (for status lines)."""

    pipeline: AvatarPipeline
    source: str
    device: str
    dtype: str
    seconds: float


Setting = str | Callable[[], str]


def _value(setting: Setting) -> str:
    return setting() if callable(setting) else setting


class PipelineCache:
    """Loads pipelines on first use (thread-safe) and keeps the ``max_loaded`` most recently used.

    Args:
        max_loaded: pipelines kept; the least recently used one is dropped (and CUDA's cache emptied).
        device: ``auto``, ``cpu``, ``cuda``, ... or a callable returning one, read at each load (the app reads
            its environment).
        dtype: ``float32``, ``bfloat16`` or ``float16`` (or a callable returning one): the reconstructor's
            precision (the tiny pipeline is always float32).
        settings_hint: appended to the message when ``device``/``dtype`` cannot be used here (say where they
            were set).
        weights_hint: appended to the message when a model's weights are missing (what else to do).
    """

    def __init__(self, max_loaded: int = 2, *, device: Setting = "auto", dtype: Setting = "float32",
                 settings_hint: str = "", weights_hint: str = "") -> None:
        self.max_loaded = max(1, int(max_loaded))
        self._device, self._dtype, self._hint = device, dtype, settings_hint
        self._weights_hint = weights_hint
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    # ---- settings ----------------------------------------------------------------------------------------
    def device(self) -> str:
        """The device a pipeline would load on now (``auto`` resolved); raises :class:`ModelUnavailableError`."""
        from avatar.runtime import resolve_device

        return self._resolve(resolve_device, self._device)

    def dtype(self) -> torch.dtype:
        """The reconstructor's dtype; raises :class:`ModelUnavailableError` for an unknown name."""
        from avatar.runtime import resolve_dtype

        return self._resolve(resolve_dtype, self._dtype)

    def _resolve(self, resolve: Callable[[str], Any], setting: Setting) -> Any:
        try:
            return resolve(_value(setting))
        except AvatarError as exc:
            hint = f" ({self._hint})" if self._hint else ""
            raise ModelUnavailableError(f"{exc}{hint}") from None

    # ---- the cache ---------------------------------------------------------------------------------------
    def loaded(self) -> dict[str, LoadedModel]:
        """The loaded pipelines by name, least recently used first."""
        return dict(self._loaded)

    def get(self, model: str) -> AvatarPipeline:
        """The pipeline of ``model``, loaded now if it is not loaded yet."""
        with self._lock:
            if model in self._loaded:
                self._loaded.move_to_end(model)
                return self._loaded[model].pipeline
            entry = self._load(model)
            self._loaded[model] = entry
            while len(self._loaded) > self.max_loaded:
                old, _ = self._loaded.popitem(last=False)
                logger.info("unloaded %s", old)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            return entry.pipeline

    def _load(self, model: str) -> LoadedModel:
        from avatar.hub.registry import MODELS, get_model

        device, dtype = self.device(), self.dtype()
        t0 = time.perf_counter()
        if model == TINY:  # the default family's tiny pipeline
            from avatar.face.mediapipe_face import mediapipe_available
            from avatar.hub.registry import DEFAULT_MODEL_ID, pipeline_class

            # MediaPipe's real detector and mesh when installed: faces are found and cropped for real, and a
            # photo without a face is refused; the random detector otherwise sees a face anywhere
            preprocess = "mediapipe" if mediapipe_available() else "official"
            pipe = pipeline_class(get_model(DEFAULT_MODEL_ID)).tiny(seed=0, preprocess=preprocess).to(device)
            source, dtype = f"memory (random weights, built at first use; {preprocess} face preprocessing)", torch.float32
        else:
            pipe = self._load_pipeline(model, device, dtype)
            if model in MODELS:
                from avatar.hub.download import converted_dir

                source = f"cache {converted_dir(get_model(model).files[0]).parent}"
            else:
                source = f"folder {Path(model).resolve()}"
        seconds = time.perf_counter() - t0
        name = str(dtype).replace("torch.", "")
        logger.info("loaded %s from %s on %s (%s) in %.1f s", model, source, device, name, seconds)
        return LoadedModel(pipe, source, device, name, seconds)

    def _load_pipeline(self, model: str, device: str, dtype: torch.dtype) -> AvatarPipeline:
        from avatar.hub.status import missing_files
        from avatar.pipelines.auto import load_pipeline

        missing = [f.path for f in missing_files(model)]
        try:
            return load_pipeline(model, device=device, dtype=dtype)
        except AssetNotFoundError as exc:
            # the count, never the list: `avatar models --files` and the app's *Model files* section list them
            what = f" ({len(missing)} file{'s' if len(missing) != 1 else ''} missing)" if missing else ""
            logger.warning("cannot load %s: %s", model, exc)
            hint = f" {self._weights_hint}" if self._weights_hint else ""
            raise ModelUnavailableError(
                f"The weights of {model} are not available here{what}. Fetch them with `avatar download "
                f"{model}` on a machine with network access (`avatar models --files` lists them).{hint}") from None
        except AvatarError as exc:  # unknown id, a folder that is not a pipeline, mismatching weights, ...
            logger.warning("cannot load %s: %s", model, exc)
            raise ModelUnavailableError(f"{model} cannot be loaded: {exc}") from None
