"""Official Portrait4D checkpoints <-> :class:`~avatar.models.portrait4d.Portrait4D`; save, load, push.

Key map: our modules carry the official attribute names, so an official ``G_ema`` state dict maps onto
the model name for name (:func:`official_to_model_state` checks that and reports anything else).
The official state holds ``w_avg``, the five encoders, ``decoder.*``, ``superresolution.*`` and the FLAME
buffers of the deformer (``deformer.flame_deform.*``, not learned).

Formats read here (never a pickle at run time):

* a folder written by :meth:`Portrait4D.save_pretrained`: ``config.json`` + ``model.safetensors``;
* a folder written by ``avatar convert`` / ``avatar download``: ``<name>.safetensors`` + ``<name>.json``
  whose metadata holds the official ``init_kwargs``;
* a model id from :data:`avatar.hub.registry.MODELS`, resolved through the download cache.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avatar.hub.weights import StateDictMismatchError, load_state_dict_strict, read_weights
from avatar.models.portrait4d import Portrait4D
from avatar.models.portrait4d_config import Portrait4DConfig

__all__ = [
    "OFFICIAL_PREFIXES",
    "CheckpointMismatchError",
    "official_to_model_state",
    "load_official",
    "load_portrait4d",
    "save_portrait4d",
    "push_portrait4d",
    "render_model_card",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
OFFICIAL_PREFIXES = ("encoder_global.", "encoder_detail.", "encoder_canonical.", "generator_triplane.",
                     "background.", "decoder.", "superresolution.", "deformer.flame_deform.")
OFFICIAL_TOP_LEVEL = ("w_avg",)


class CheckpointMismatchError(StateDictMismatchError, ValueError):
    """A checkpoint's names or shapes do not match the model (strict loading)."""


def official_to_model_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map official ``TriPlaneReconstructorNeutralize`` keys to :class:`Portrait4D` keys.

    The names are identical by construction; this checks that every key belongs to a known official
    module and returns a plain dict. Raises :class:`CheckpointMismatchError` listing foreign keys.
    """
    foreign = [k for k in state if not (k in OFFICIAL_TOP_LEVEL or k.startswith(OFFICIAL_PREFIXES))]
    if foreign:
        raise CheckpointMismatchError(
            f"{len(foreign)} key(s) are not Portrait4D reconstructor keys (is this a G_ema state?): "
            + ", ".join(foreign[:8]) + (" ..." if len(foreign) > 8 else "")
        )
    return dict(state)


def _strict_load(model: Portrait4D, state: Mapping[str, Tensor], source: str) -> None:
    """Strict load; FLAME deformer buffers in ``state`` first (re)build the deformer with their shapes."""
    prefix = "deformer.flame_deform."
    buffers = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if buffers:
        model.set_deformer_buffers(buffers)
    load_state_dict_strict(model, state, what=source, optional_suffixes=(), error=CheckpointMismatchError)


def _find_official_weights(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The ``<name>.safetensors`` whose JSON sidecar holds official ``init_kwargs``."""
    for meta_path in sorted(folder.glob("*.json")):
        if meta_path.name in (CONFIG_NAME, "manifest.json"):
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        weights = meta_path.with_suffix(".safetensors")
        if isinstance(meta, dict) and "init_kwargs" in meta and weights.is_file():
            return weights, meta
    raise FileNotFoundError(
        f"{folder} holds neither {CONFIG_NAME} + {WEIGHTS_NAME} (from save_pretrained) nor a converted official "
        "checkpoint (<name>.safetensors + <name>.json from `avatar convert`)"
    )


def _is_static(meta: Mapping[str, Any]) -> bool:
    """The static checkpoint is named ``*static*`` upstream; its training set has ``static=True``."""
    tsk = meta.get("training_set_kwargs") or {}
    if isinstance(tsk, Mapping) and tsk.get("static") is not None:
        return bool(tsk["static"])
    return "static" in str(meta.get("source_file", ""))


def load_official(folder_or_file: str | Path, static: bool | None = None,
                  device: torch.device | str = "cpu", config: Portrait4DConfig | None = None) -> Portrait4D:
    """Build and strictly load a model from a converted official checkpoint.

    Args:
        folder_or_file: the folder of ``avatar convert`` output or its ``.safetensors`` file.
        static: force the static mode (motion scale 0); ``None`` detects it from the metadata.
        config: use this config instead of the one derived from the checkpoint's ``init_kwargs``.
    """
    path = Path(folder_or_file)
    if path.is_file():
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} (the metadata written by `avatar convert`) is missing")
        weights, meta = path, json.loads(meta_path.read_text())
    else:
        weights, meta = _find_official_weights(path)
    cls_name = str(meta.get("class_name", ""))
    if cls_name and not cls_name.endswith("TriPlaneReconstructorNeutralize"):
        raise CheckpointMismatchError(f"{weights} holds a {cls_name}, not a Portrait4D reconstructor "
                                      "(TriPlaneReconstructorNeutralize)")
    static = _is_static(meta) if static is None else static
    if config is None:
        config = Portrait4DConfig.from_official(meta.get("init_kwargs") or {}, static=static)
    state = official_to_model_state(read_weights(weights))
    model = Portrait4D(config)
    _strict_load(model, state, str(weights))
    logger.info("loaded %s (%s, static=%s)", weights.name, cls_name or "Portrait4D", static)
    return model.to(device).eval()


def _load_saved(folder: Path, device: torch.device | str) -> Portrait4D:
    config = Portrait4DConfig.load(folder / CONFIG_NAME)
    model = Portrait4D(config)
    _strict_load(model, read_weights(folder / WEIGHTS_NAME), str(folder / WEIGHTS_NAME))
    return model.to(device).eval()


def load_portrait4d(model_id_or_dir: str | Path, device: torch.device | str = "cpu",
                    local_dir: str | Path | None = None) -> Portrait4D:
    """See :meth:`Portrait4D.from_pretrained`.

    Args:
        model_id_or_dir: folder (ours or converted official) or model id.
        local_dir: for a model id, take the official files from this folder instead of the Hub.
    """
    path = Path(model_id_or_dir)
    if path.is_dir():
        if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
            return _load_saved(path, device)
        return load_official(path, device=device)
    if path.suffix == ".safetensors" and path.is_file():
        return load_official(path, device=device)
    from avatar.hub.download import download_model
    from avatar.hub.registry import MODELS

    model_id = str(model_id_or_dir)
    if model_id not in MODELS:
        raise FileNotFoundError(f"'{model_id}' is neither a folder nor a known model id ({', '.join(MODELS)})")
    spec = MODELS[model_id]
    report = download_model(model_id, local_dir=local_dir, only=[spec.reconstructor])
    return load_official(report.folders[spec.reconstructor], static=spec.static, device=device)


def save_portrait4d(model: Portrait4D, save_directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically (temporary folder, then moved into place)."""
    from avatar.hub.convert import save_tensors

    out = Path(save_directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model.config.save(tmp / CONFIG_NAME)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_tensors(state, tmp / WEIGHTS_NAME, {"format": "avatar4d-portrait4d"})
        out.mkdir(parents=True, exist_ok=True)
        for entry in tmp.iterdir():
            entry.replace(out / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


_CARD = Path(__file__).resolve().parents[2] / "model_cards" / "portrait4d.md"


def render_model_card(values: Mapping[str, Any], template: str | Path | None = None) -> str:
    """Fill ``{{ name }}`` placeholders of the model-card template; a placeholder without a value is an error."""
    path = Path(template) if template is not None else _CARD
    if not path.is_file():
        raise FileNotFoundError(f"model card template {path} not found; pass model_card= text instead")
    text = path.read_text()
    names = set(re.findall(r"{{\s*(\w+)\s*}}", text))
    missing = sorted(names - set(values))
    if missing:
        raise KeyError(f"model card values missing: {missing}")
    return re.sub(r"{{\s*(\w+)\s*}}", lambda m: str(values[m.group(1)]), text)


def push_portrait4d(model: Portrait4D, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload Portrait4D", model_card: str | None = None) -> str:
    """Upload ``save_pretrained`` output plus ``README.md`` (the model card) to ``repo_id``; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_portrait4d(model, Path(tmp) / "model")
        if model_card is not None:
            (folder / "README.md").write_text(model_card)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
