"""One entry from a model id or a folder to the right pipeline: what the CLI, the app and ``eval`` call.

``load_pipeline(name)`` accepts:

* a registered model id with a pipeline (``portrait4d-v2``, ...; ``avatar models`` lists them): the pipeline
  class named by its :class:`~avatar.hub.registry.ModelSpec` loads it (official weights from the cache);
* a pipeline folder written by ``save_pretrained`` (or ``avatar tiny``): ``pipeline.json`` names its class;
* a folder of one model family's network (``save_pretrained`` or ``avatar convert`` output): the family whose
  network class reads it (:func:`family_of_folder`), with that family's official preprocessing.

Only classes named in the registry are ever imported, whatever a ``pipeline.json`` says.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from avatar.errors import ModelNotFoundError, UnknownModelIdError
from avatar.hub import registry
from avatar.pipelines.base import AvatarPipeline

__all__ = ["family_of_folder", "load_pipeline", "pipeline_class_for"]

PIPELINE_FILE = "pipeline.json"


def _pipeline_classes() -> dict[str, type[AvatarPipeline]]:
    """``module:Class`` -> class of every registered pipeline."""
    out: dict[str, type[AvatarPipeline]] = {}
    for spec in registry.MODELS.values():
        if spec.pipeline_class is not None and spec.pipeline_class not in out:
            out[spec.pipeline_class] = registry.pipeline_class(spec)
    return out


def family_of_folder(folder: Path) -> registry.ModelSpec | None:
    """The first registered pipeline spec whose network reads ``folder`` (``config.json`` of its config class,
    or, for a folder without ``config.json``, the family of the first registered pipeline)."""
    specs = [s for s in registry.MODELS.values() if s.pipeline_class is not None]
    config = folder / "config.json"
    if not config.is_file():
        return specs[0] if specs else None
    try:
        name = json.loads(config.read_text()).get("_class")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    for spec in specs:
        model_cls = registry.model_class(spec)
        if name in (model_cls.config_class.__name__, model_cls.__name__):
            return spec
    return None


def pipeline_class_for(name_or_path: str | Path) -> type[AvatarPipeline]:
    """The pipeline class that loads ``name_or_path`` (see the module docstring)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        meta_file = path / PIPELINE_FILE
        if meta_file.is_file():
            try:
                meta = json.loads(meta_file.read_text())
            except json.JSONDecodeError as exc:
                raise ModelNotFoundError(f"{meta_file} is not valid JSON ({exc}); save the pipeline again") from exc
            classes = _pipeline_classes()
            named = meta.get("pipeline_class")
            if named in classes:
                return classes[named]
            for cls in classes.values():  # folders written before pipeline.json named its class
                if meta.get("format") == cls.pipeline_format:
                    return cls
            raise ModelNotFoundError(f"{meta_file} names no registered pipeline (format {meta.get('format')!r}, "
                                     f"class {named!r})")
        spec = family_of_folder(path)
        if spec is None:
            raise ModelNotFoundError(f"{path} is neither a pipeline folder ({PIPELINE_FILE}) nor a network folder of "
                                     "a registered model family")
        return registry.pipeline_class(spec)
    name = str(name_or_path)
    if name not in registry.MODELS:
        raise UnknownModelIdError(f"'{name}' is neither a folder nor a known model id; pipeline model ids: "
                                  f"{', '.join(registry.pipeline_model_ids())} (`avatar models` lists them)")
    return registry.pipeline_class(registry.MODELS[name])


def load_pipeline(name_or_path: str | Path, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype | None = None, preprocess: str | None = None) -> AvatarPipeline:
    """Load the pipeline of a registered model id or a folder (module docstring), on ``device``; ``dtype``
    (bfloat16, float16) runs the family's rendering networks under autocast; ``preprocess`` picks the face
    backend (``'official'``, ``'mediapipe'``; ``None``: the family's default or the folder's own).

    Raises:
        ModelNotFoundError: not a known id nor a readable folder (:class:`~avatar.errors.UnknownModelIdError`
            for an unknown id: the message lists the known ones).
        AssetNotFoundError: the official weights are not in the cache and cannot be fetched now.
        UnknownOptionValueError: ``preprocess`` is not a backend the family accepts.
    """
    cls = pipeline_class_for(name_or_path)
    if preprocess is not None:
        cls.check_preprocess(preprocess)
    return cls.from_pretrained(name_or_path, device=device, dtype=dtype, preprocess=preprocess)
