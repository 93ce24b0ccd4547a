"""The base class of every network in the toolkit: one way to build, load, save and publish a model.

Every network (the model families under :mod:`avatar.models`, the face networks, PD-FGC, MODNet, the
perceptual networks) derives from :class:`ModelMixin` and declares:

* ``config_class``: a frozen dataclass deriving from :class:`avatar.configuration.Config`, with ``tiny()``;
* ``__init__(config)``: builds the network from its config and downloads nothing;
* ``load_official(state)`` when its upstream checkpoint has other names or extra entries (the default
  loads strictly as it is);
* optionally ``from_registry`` when a model id needs more than one upstream file.

It then has, with one implementation for all:

* :meth:`ModelMixin.tiny`: a tiny random network for tests;
* :meth:`ModelMixin.from_pretrained`: a registered model id (official weights through the asset cache), a
  folder written by :meth:`~ModelMixin.save_pretrained`, an upstream checkpoint file or folder, or a Hugging
  Face Hub repo holding ``config.json`` + ``model.safetensors``;
* :meth:`ModelMixin.save_pretrained` (``config.json`` + ``model.safetensors``, written atomically) and
  :meth:`ModelMixin.push_to_hub`;
* strict loading: a missing, unexpected or mis-shaped tensor is a
  :class:`~avatar.errors.CheckpointMismatchError` that names it.

This covers what ``huggingface_hub.PyTorchModelHubMixin`` leaves open: nested dataclass configs are rebuilt
(:func:`avatar.configuration.config_from_dict`), an unknown config key is an error, loading is strict by
default, and registered model ids resolve to the official checkpoints.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from avatar.errors import CheckpointMismatchError, ConfigError, ModelNotFoundError

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "ModelMixin", "atomic_directory"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_FORMAT = "avatar4d"

M = TypeVar("M", bound="ModelMixin")


class atomic_directory:  # noqa: N801 - used as a context manager like tempfile.TemporaryDirectory
    """Write a folder's entries into a hidden temporary sibling, then move them into ``target`` on success.

    ``with atomic_directory(out) as tmp: ...`` - nothing of a failed or interrupted write reaches ``out``;
    entries of ``out`` that are not rewritten are kept.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self.target.mkdir(parents=True, exist_ok=True)  # a new folder gets the umask's mode (not mkdtemp's)
                for entry in self.tmp.iterdir():
                    dest = self.target / entry.name
                    if dest.is_dir() and not dest.is_symlink():
                        shutil.rmtree(dest)
                    entry.replace(dest)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _is_hub_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


class ModelMixin(nn.Module):
    """Base class of the toolkit's networks (see the module docstring for the contract).

    Class attributes:
        config_class: the configuration dataclass (a :class:`avatar.configuration.Config`).
        default_model_id: the registered model id :meth:`from_pretrained` loads when given no name.
    """

    config_class: ClassVar[type]
    default_model_id: ClassVar[str | None] = None
    config: Any

    # ---- construction ----------------------------------------------------------------------------------

    @classmethod
    def from_config(cls: type[M], config: Any) -> M:
        """Random weights from a config (a config object or a dict as in ``config.json``)."""
        if isinstance(config, Mapping):
            config = cls.config_class.from_dict(config)
        if not isinstance(config, cls.config_class):
            raise ConfigError(f"{cls.__name__} needs a {cls.config_class.__name__}, got {type(config).__name__}")
        return cls(config)

    @classmethod
    def tiny(cls: type[M], seed: int | None = 0, **overrides: Any) -> M:
        """A structurally identical, very small random network (``config_class.tiny()``) for tests; in eval mode.

        ``overrides`` replace fields of the tiny config. Subclasses may refine :meth:`_init_tiny` so that the
        random network's outputs are not degenerate.
        """
        if seed is not None:
            torch.manual_seed(seed)
        config = cls.config_class.tiny()
        if overrides:
            config = config.replace(**overrides)
        model = cls(config)
        model._init_tiny()
        return model.eval()

    def _init_tiny(self) -> None:
        """Hook: adjust a freshly built tiny network (default: nothing)."""

    # ---- strict loading --------------------------------------------------------------------------------

    def _prepare_load(self, state: Mapping[str, Tensor]) -> None:
        """Hook run before a strict load (e.g. to rebuild buffers whose shapes the checkpoint decides)."""

    def _state_to_save(self) -> dict[str, Tensor]:
        """The tensors :meth:`save_pretrained` writes (default: the whole ``state_dict``)."""
        return self.state_dict()

    def _state_from_saved(self, state: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """Inverse of :meth:`_state_to_save` (default: unchanged)."""
        return state

    def load_state_dict_strict(self, state: Mapping[str, Any], *, what: str | None = None,
                               optional_suffixes: tuple[str, ...] = ()) -> None:
        """Copy ``state`` into the network; every missing, unexpected or mis-shaped tensor is a
        :class:`~avatar.errors.CheckpointMismatchError` that names them."""
        from avatar.hub.weights import load_state_dict_strict

        self._prepare_load(state)
        load_state_dict_strict(self, state, what=what or type(self).__name__, optional_suffixes=optional_suffixes,
                               error=CheckpointMismatchError)

    def load_official(self, state: Mapping[str, Tensor]) -> Any:
        """Load an upstream (official) state dict. Default: strictly, names as they are; networks whose upstream
        names differ (prefixes, aliases, extra entries) override this."""
        self.load_state_dict_strict(state)

    @classmethod
    def from_official(cls: type[M], source: str | Path | Mapping[str, Tensor], *, config: Any = None,
                      **kwargs: Any) -> M:
        """Build from an upstream checkpoint: a state dict, a ``.pth``/``.safetensors`` file, or a folder holding
        one converted file (``avatar convert``). ``config`` defaults to the official configuration. In eval mode."""
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_official got unexpected options: {', '.join(kwargs)}")
        from avatar.hub.weights import read_weights

        state = source if isinstance(source, Mapping) else read_weights(source)
        model = cls(config if config is not None else cls.config_class())
        model.load_official(state)
        return model.eval()

    @classmethod
    def from_registry(cls: type[M], spec: Any, *, local_dir: str | Path | None = None, **kwargs: Any) -> M:
        """Build a registered model id from its upstream files (fetched into the cache, or taken from
        ``local_dir``). Default: the one checkpoint file through :meth:`from_official`."""
        from avatar.hub.weights import read_converted_weights

        return cls.from_official(read_converted_weights(spec.checkpoint, local_dir), **kwargs)

    # ---- from_pretrained / save_pretrained / push_to_hub -----------------------------------------------

    @classmethod
    def from_pretrained(cls: type[M], name_or_path: str | Path | None = None, *,
                        device: torch.device | str = "cpu", local_dir: str | Path | None = None,
                        revision: str | None = None, token: str | None = None, **kwargs: Any) -> M:
        """Load a network, in eval mode on ``device``.

        Args:
            name_or_path: one of
                * a registered model id (``avatar models`` lists them; ``None``: :attr:`default_model_id`):
                  the official weights through the asset cache (``avatar download`` fetches them);
                * a folder written by :meth:`save_pretrained`;
                * an upstream checkpoint file, or a folder written by ``avatar convert`` (:meth:`from_official`);
                * a Hugging Face Hub repo id ``owner/name`` holding ``config.json`` + ``model.safetensors``.
            local_dir: for a model id, take the upstream files from this folder instead of the network.
            revision, token: for a Hub repo.
            kwargs: passed to :meth:`from_registry` / :meth:`from_official`.

        Raises:
            ModelNotFoundError: the name is none of the above.
            CheckpointMismatchError: the weights do not match the network (the error names the tensors).
        """
        name = name_or_path if name_or_path is not None else cls.default_model_id
        if name is None:
            raise ModelNotFoundError(f"{cls.__name__}.from_pretrained needs a model id, a folder or a Hub repo id")
        model = cls._resolve(name, local_dir=local_dir, revision=revision, token=token, **kwargs)
        return model.to(device).eval()

    @classmethod
    def _resolve(cls: type[M], name: str | Path, *, local_dir: str | Path | None, revision: str | None,
                 token: str | None, **kwargs: Any) -> M:
        path = Path(name).expanduser()
        if path.is_dir():
            if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
                return cls._load_saved(path)
            return cls.from_official(path, **kwargs)
        if path.is_file():
            return cls.from_official(path, **kwargs)
        from avatar.hub import registry

        key = str(name)
        if key in registry.MODELS:
            spec = registry.MODELS[key]
            model_cls = registry.model_class(spec)
            if not issubclass(model_cls, cls):
                raise ModelNotFoundError(f"'{key}' is a {model_cls.__name__} ({spec.family}), not a {cls.__name__}; "
                                         f"load it with {model_cls.__name__}.from_pretrained")
            return model_cls.from_registry(spec, local_dir=local_dir, **kwargs)  # type: ignore[return-value]
        if _is_hub_repo_id(key):
            return cls._load_saved(cls._download_from_hub(key, revision=revision, token=token))
        known = [s.model_id for s in registry.MODELS.values() if issubclass(registry.model_class(s), cls)]
        raise ModelNotFoundError(
            f"'{key}' is neither a folder nor a known model id of {cls.__name__} "
            f"({', '.join(known) or 'none registered'}), nor a checkpoint file, nor a Hub repo id (owner/name)")

    @classmethod
    def _download_from_hub(cls, repo_id: str, *, revision: str | None, token: str | None) -> Path:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id, revision=revision, token=token,
                                          allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"]))
        except Exception as exc:  # noqa: BLE001 - offline, unknown repo, no access: one message for all
            raise ModelNotFoundError(
                f"could not fetch {CONFIG_NAME} + {WEIGHTS_NAME} of the Hub repo '{repo_id}' ({type(exc).__name__}: "
                f"{exc}); check the name and your connection, or pass a local folder") from exc

    @classmethod
    def _config_from_saved(cls, values: Any) -> Any:
        # folders written before one config class per network held a one-element list
        if isinstance(values, list) and len(values) == 1:
            values = values[0]
        return cls.config_class.from_dict(values)

    @classmethod
    def _load_saved(cls: type[M], folder: Path) -> M:
        from avatar.hub.weights import read_weights

        try:
            values = json.loads((folder / CONFIG_NAME).read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{folder / CONFIG_NAME} is not valid JSON ({exc})") from exc
        model = cls(cls._config_from_saved(values))
        state = model._state_from_saved(read_weights(folder / WEIGHTS_NAME))
        model.load_state_dict_strict(state, what=str(folder / WEIGHTS_NAME))
        if _saved_metadata(folder / WEIGHTS_NAME).get("random_init") == "true":
            model.is_random_init = True  # saved from random weights (tiny(), tests): the record travels with them
        model._after_load_saved(folder)
        return model

    def _after_load_saved(self, folder: Path) -> None:
        """Hook run after :meth:`from_pretrained` read one of our folders (default: nothing)."""

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``save_directory`` (moved into place when complete);
        :meth:`from_pretrained` reads it back."""
        from safetensors.torch import save_file

        with atomic_directory(save_directory) as tmp:
            self.config.save(tmp / CONFIG_NAME)
            state = {k: v.detach().cpu().contiguous() for k, v in self._state_to_save().items()}
            # random_init: whether these are random weights (``is_random_init``), so that a benchmark or an app
            # given this folder can say so (a reloaded network would otherwise look trained)
            random = "true" if getattr(self, "is_random_init", False) else "false"
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": WEIGHTS_FORMAT, "class": type(self).__name__,
                                                                "random_init": random})
        return Path(save_directory)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str | None = None, model_card: str | None = None) -> str:
        """Save to a temporary folder and upload it, with ``model_card`` as ``README.md``, to the Hub repo
        ``repo_id`` (created when missing). Returns the commit URL."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "model")
            if model_card is not None:
                (folder / "README.md").write_text(model_card)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                     commit_message=commit_message or f"Upload {type(self).__name__}")
        return str(getattr(info, "commit_url", info))


def _saved_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a ``model.safetensors`` header (``{}`` when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
