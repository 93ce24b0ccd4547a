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

import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from avatar.errors import InputError
from avatar.pipelines.results import ReenactResult, ReenactStream

if TYPE_CHECKING:
    from avatar.pipelines.live import LiveReenactor

__all__ = ["AvatarLike", "AvatarPipeline", "HeadPoseMode", "PIPELINE_FILE", "PhotoLike", "VideoLike",
           "read_saved_tensors", "save_tensors_atomically", "write_pipeline_folder"]

HeadPoseMode = Literal["neck", "camera", "fixed"]
PhotoLike = str | Path | np.ndarray | Image.Image
VideoLike = str | Path | Iterable[np.ndarray]
PIPELINE_FILE = "pipeline.json"
"""The description every pipeline folder holds (its ``format`` and ``pipeline_class``)."""


@runtime_checkable
class AvatarLike(Protocol):
    """What every family's avatar offers to the CLI, the app and ``eval`` (the family's own fields come on top).

    Attributes:
        state: the model's cached source encoding; ``state.to(device)`` moves it (the app keeps it on the CPU
            between calls).
        source_crop: ``(512, 512, 3)`` uint8 crop of the photo the model saw.
        align: where that crop lies in the photo (:class:`~avatar.face.geometry.AlignParams`, for
            :class:`~avatar.pipelines.paste_back.PasteBack`), or ``None`` when the photo was given aligned.
    """

    state: Any
    source_crop: np.ndarray
    align: Any

    def save(self, path: str | Path) -> Path:
        """Write the avatar into one file that the pipeline's ``load_avatar`` reads back."""
        ...


def read_saved_tensors(path: str | Path, device: torch.device | str = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and string metadata of an avatar file written by :func:`save_tensors_atomically`; a missing or
    unreadable file is an :class:`~avatar.errors.InputError` saying so."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist; save an avatar first with create_avatar(...).save(path)")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise InputError(f"{path} is not a saved avatar ({exc})") from None
    return tensors, meta


def save_tensors_atomically(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> Path:
    """Write ``tensors`` into one ``.safetensors`` file with string ``metadata``, moved into place when complete
    (a kill never leaves a half-written avatar); the file gets the permissions ``open()`` would give."""
    from safetensors.torch import save_file

    from avatar.io.files import apply_umask

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    os.close(fd)
    try:
        save_file(dict(tensors), tmp, metadata=dict(metadata))
        apply_umask(tmp)  # mkstemp's 0600 -> what open() would give
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_pipeline_folder(save_directory: str | Path, fill: Callable[[Path], dict[str, Any]]) -> Path:
    """Write a pipeline folder atomically: ``fill(tmp)`` writes the networks into the temporary folder and returns
    the description, saved as :data:`PIPELINE_FILE`; the folder then replaces ``save_directory``."""
    from avatar.io.files import apply_umask

    out = Path(save_directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        meta = fill(tmp)
        (tmp / PIPELINE_FILE).write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        apply_umask(tmp)  # mkdtemp's 0700 -> what mkdir would give
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def class_path(cls: type) -> str:
    """``module:QualName`` of a class, as ``pipeline.json`` names it."""
    return f"{cls.__module__}:{cls.__qualname__}"


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
    aligned_crop: ClassVar[str] = "portrait4d"
    """The crop ``create_avatar(photo, aligned=True)`` takes as it is: ``'portrait4d'`` (the 512 crop of
    :mod:`avatar.pipelines.preprocess`, what ``eval.prepare`` writes) or ``'eg3d'`` (GOHA's EG3D in-the-wild
    crop). A caller holding crops of another kind passes ``aligned=False`` so that the family crops them its way."""

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
    def create_avatar(self, photo: PhotoLike, aligned: bool = False) -> AvatarLike:
        """Build an avatar from one photo; raises :class:`~avatar.errors.InputError` subclasses for bad photos."""

    @abstractmethod
    def load_avatar(self, path: str | Path) -> AvatarLike:
        """An avatar written by ``avatar.save(path)``, on this pipeline's device."""

    # ---- rendering --------------------------------------------------------------------------------------
    @abstractmethod
    def render_views(self, avatar: Any, cameras: Tensor, batch_size: int = 8, progress: bool = False) -> np.ndarray:
        """The avatar with its own expression seen from ``cameras`` ``(N, 25)`` -> ``(N, r, r, 3)`` uint8.

        The cameras are the toolkit's labels (:mod:`avatar.render.camera`: :func:`~avatar.render.camera.view_label`,
        :func:`~avatar.render.camera.orbit_labels`); a family whose model uses another camera convention maps them
        onto its own (same viewing direction)."""

    def render_angles(self, avatar: Any, angles: Sequence[tuple[float, float]], batch_size: int = 8,
                      progress: bool = False) -> np.ndarray:
        """The avatar seen from ``(yaw, pitch)`` pairs in degrees (:func:`avatar.render.camera.view_label`: yaw +
        from the person's right, pitch + from above; ``(0, 0)`` is the frontal view) -> ``(N, r, r, 3)`` uint8."""
        from avatar.errors import InputError
        from avatar.render.camera import view_label

        pairs = [tuple(a) for a in angles]
        if not pairs or any(len(a) != 2 for a in pairs):
            raise InputError(f"angles must be a non-empty list of (yaw, pitch) pairs in degrees, got {angles!r}")
        cameras = torch.cat([view_label(float(y), float(p)) for y, p in pairs])
        return self.render_views(avatar, cameras, batch_size, progress)

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
