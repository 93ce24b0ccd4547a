"""The interface every model family's pipeline implements: photo -> avatar; avatar + video -> frames;
avatar + cameras -> views; save and load.

A pipeline composes networks (each a :class:`avatar.modeling.ModelMixin`) and owns no weights of its own. Its
per-avatar state is an explicit object (the family's ``Avatar``: ``save(path)`` / ``pipeline.load_avatar(path)``),
and per-call facts come back in the call's result (:mod:`avatar.pipelines.results`), never on the pipeline, so
one pipeline can serve concurrent calls (the app caches one per model).

:func:`avatar.pipelines.auto.load_pipeline` resolves a model id or a folder to the right pipeline class; the
CLI, the app and ``eval`` use only this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from avatar.pipelines.results import ReenactResult, ReenactStream

if TYPE_CHECKING:
    from avatar.pipelines.live import LiveReenactor

__all__ = ["AvatarPipeline", "HeadPoseMode", "PhotoLike", "VideoLike"]

HeadPoseMode = Literal["neck", "camera", "fixed"]
PhotoLike = str | Path | np.ndarray | Image.Image
VideoLike = str | Path | Iterable[np.ndarray]


class AvatarPipeline(ABC):
    """One model family's end-to-end pipeline (see the module docstring).

    Class attributes:
        family: the model family name (as in :data:`avatar.hub.registry.MODELS`).
        pipeline_format: the ``format`` written into ``pipeline.json`` by :meth:`save_pretrained`.
        preprocess_backends: the face preprocessing backends the family accepts
            (:data:`avatar.pipelines.preprocess.PREPROCESS_BACKENDS`), its default first.
    """

    family: ClassVar[str]
    pipeline_format: ClassVar[str]
    preprocess_backends: ClassVar[tuple[str, ...]] = ("official",)
    random_init: bool = False
    """The weights are random (tests, benchmarks): pictures are meaningless and no number is comparable."""

    # ---- construction, saving ---------------------------------------------------------------------------
    @classmethod
    def check_preprocess(cls, preprocess: str | None) -> str:
        """The backend to use: ``preprocess``, or the family's default for ``None``.

        Raises:
            UnknownOptionValueError: the name is not a backend, or the family does not accept it.
        """
        from avatar.errors import UnknownOptionValueError
        from avatar.pipelines.preprocess import PREPROCESS_BACKENDS

        if preprocess is None:
            return cls.preprocess_backends[0]
        if preprocess not in PREPROCESS_BACKENDS:
            raise UnknownOptionValueError(f"preprocess must be one of {', '.join(PREPROCESS_BACKENDS)}, "
                                          f"got {preprocess!r}")
        if preprocess not in cls.preprocess_backends:
            raise UnknownOptionValueError(
                f"the {cls.family} models take the {' or '.join(cls.preprocess_backends)} face preprocessing, not "
                f"{preprocess!r}: their checkpoints were trained on those inputs")
        return preprocess

    @classmethod
    @abstractmethod
    def from_pretrained(cls, model_id_or_dir: str | Path, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None, preprocess: str | None = None) -> AvatarPipeline:
        """A registered model id (official weights from the cache) or a folder written by :meth:`save_pretrained`;
        ``preprocess`` picks the face backend (``None``: the family's default, or the one a folder was saved
        with)."""

    @classmethod
    @abstractmethod
    def tiny(cls, seed: int = 0, preprocess: str | None = None) -> AvatarPipeline:
        """A complete pipeline of tiny random networks (tests, offline work)."""

    @property
    def preprocess(self) -> str:
        """The face preprocessing backend this pipeline runs."""
        return self.preprocess_backends[0]

    @abstractmethod
    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write the whole pipeline into one folder that :meth:`from_pretrained` reads back."""

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def to(self, device: torch.device | str) -> AvatarPipeline: ...

    # ---- what it can do ---------------------------------------------------------------------------------
    @property
    def can_reenact(self) -> bool:
        """Whether the model follows a driving expression (a static model only renders new views)."""
        return True

    @property
    def output_resolution(self) -> int:
        """Side of the frames it renders."""
        return 512

    # ---- avatars ----------------------------------------------------------------------------------------
    @abstractmethod
    def create_avatar(self, photo: PhotoLike, aligned: bool = False) -> Any:
        """Build an avatar from one photo; raises :class:`~avatar.errors.InputError` subclasses for bad photos."""

    @abstractmethod
    def load_avatar(self, path: str | Path) -> Any:
        """An avatar written by ``avatar.save(path)``, on this pipeline's device."""

    # ---- rendering --------------------------------------------------------------------------------------
    @abstractmethod
    def render_views(self, avatar: Any, cameras: Tensor, batch_size: int = 8, progress: bool = False) -> np.ndarray:
        """The avatar with its own expression seen from ``cameras`` ``(N, 25)`` -> ``(N, r, r, 3)`` uint8."""

    def render_orbit(self, avatar: Any, num_frames: int = 60, batch_size: int = 8,
                     progress: bool = False) -> np.ndarray:
        """A closed camera orbit around the avatar (:func:`avatar.render.camera.orbit_labels`)."""
        from avatar.render.camera import orbit_labels

        return self.render_views(avatar, orbit_labels(num_frames), batch_size, progress)

    @abstractmethod
    def iter_reenact(self, avatar: Any, video: VideoLike, *, relative: bool = True, head_pose: HeadPoseMode = "neck",
                     smooth: bool = True, batch_size: int = 8, max_frames: int | None = None,
                     progress: bool = False, prefetch: bool = False) -> ReenactStream:
        """Drive the avatar with a video; the returned stream yields frames and carries this call's facts."""

    def reenact(self, avatar: Any, video: VideoLike, **kwargs: Any) -> ReenactResult:
        """All frames of :meth:`iter_reenact` at once (memory: all frames); same keyword arguments."""
        with self.iter_reenact(avatar, video, **kwargs) as stream:
            return stream.collect()

    def stream(self, avatar: Any, **kwargs: Any) -> LiveReenactor:
        """Live reenactment: a :class:`~avatar.pipelines.live.LiveReenactor` whose ``step(frame)`` takes one
        driving frame (a webcam frame) and returns the reenacted frame at once (batch 1; causal smoothing; on
        CUDA the per-frame rendering replays a CUDA graph). Keyword arguments: those of ``LiveReenactor``
        (``relative``, ``head_pose``, ``smooth``, ``calibration_seconds``...)."""
        from avatar.pipelines.live import LiveReenactor

        return LiveReenactor(self, avatar, **kwargs)
