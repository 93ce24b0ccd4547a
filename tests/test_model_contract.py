"""The one contract every registered network keeps (timm-style: one parametrised test over the registry).

For each model class in :data:`avatar.hub.registry.MODELS`: a tiny build runs; the configuration round-trips
through JSON and refuses unknown keys; ``save_pretrained`` -> ``from_pretrained`` gives the same weights and
config; a missing or foreign tensor is an error that names it; the official-size network builds on the meta
device, its state passes the official loader by name and shape, and equals the official table where we have
one. Adding a model family = its package + one registry entry; this file then covers it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from avatar.configuration import Config
from avatar.errors import CheckpointMismatchError, ConfigError, ModelNotFoundError
from avatar.hub import registry
from avatar.modeling import CONFIG_NAME, WEIGHTS_NAME, ModelMixin
from avatar.pipelines.base import AvatarPipeline

SHARED = Path(__file__).resolve().parents[2] / "shared" / "design"
# official state-dict tables (name -> shape) we hold, per model class
OFFICIAL_TABLES = {"Portrait4D": SHARED / "portrait4d_psi_state_dict.json"}

_by_class: dict[str, registry.ModelSpec] = {}
for _spec in registry.MODELS.values():
    _by_class.setdefault(_spec.model_class, _spec)
CLASS_SPECS = list(_by_class.values())
IDS = [s.model_class.rsplit(":", 1)[1] for s in CLASS_SPECS]


@pytest.fixture(params=CLASS_SPECS, ids=IDS)
def spec(request: pytest.FixtureRequest) -> registry.ModelSpec:
    return request.param


def _cls(spec: registry.ModelSpec) -> type[ModelMixin]:
    return registry.model_class(spec)


def test_registry_entries_are_consistent() -> None:
    for spec in registry.MODELS.values():
        cls = registry.model_class(spec)
        assert issubclass(cls, ModelMixin), spec.model_id
        assert spec.checkpoint in registry.FILES and all(k in registry.FILES for k in spec.requires)
        assert cls.default_model_id is not None and registry.MODELS[cls.default_model_id].model_class == spec.model_class
        if spec.pipeline_class is not None:
            assert issubclass(registry.pipeline_class(spec), AvatarPipeline)
    assert registry.DEFAULT_MODEL_ID in registry.pipeline_model_ids()


def test_config_class_round_trips_and_refuses_unknown_keys(spec: registry.ModelSpec, tmp_path: Path) -> None:
    config_class = _cls(spec).config_class
    assert issubclass(config_class, Config) and dataclasses.is_dataclass(config_class)
    for config in (config_class(), config_class.tiny()):
        assert config_class.from_dict(json.loads(json.dumps(config.to_dict()))) == config
        assert config_class.load(config.save(tmp_path / "c.json")) == config
    with pytest.raises(ConfigError, match="no_such_field"):
        config_class.from_dict({**config_class.tiny().to_dict(), "no_such_field": 1})


def test_tiny_save_load_round_trip(spec: registry.ModelSpec, tmp_path: Path) -> None:
    cls = _cls(spec)
    model = cls.tiny(seed=3)
    assert not model.training
    folder = model.save_pretrained(tmp_path / "m")
    assert (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing partial left behind
    again = cls.from_pretrained(folder)
    assert type(again) is cls and again.config == model.config and not again.training
    want, got = model.state_dict(), again.state_dict()
    assert set(want) == set(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    # whether the weights are random travels with them (a benchmark given this folder must be able to tell)
    assert getattr(again, "is_random_init", False) == getattr(model, "is_random_init", False)


def test_strict_loading_names_the_bad_keys(spec: registry.ModelSpec, tmp_path: Path) -> None:
    cls = _cls(spec)
    folder = cls.tiny(seed=1).save_pretrained(tmp_path / "m")
    state = load_file(str(folder / WEIGHTS_NAME))
    dropped = sorted(state)[0]
    del state[dropped]
    state["no_such_module.weight"] = torch.zeros(1)
    save_file(state, str(folder / WEIGHTS_NAME))
    with pytest.raises(CheckpointMismatchError, match="no_such_module.weight") as info:
        cls.from_pretrained(folder)
    assert dropped in str(info.value)
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "bogus_option": 1}))
    with pytest.raises(ConfigError, match="bogus_option"):
        cls.from_pretrained(folder)


def test_official_size_on_meta_passes_the_official_loader(spec: registry.ModelSpec) -> None:
    cls = _cls(spec)
    with torch.device("meta"):
        full = cls(cls.config_class())
        own = full.state_dict()
        assert own  # (a few packaged constants, e.g. LPIPS's scaling layer, ignore the default device)
        cls.from_official(dict(own), config=cls.config_class())  # the official loader accepts our names/shapes
    table = OFFICIAL_TABLES.get(cls.__name__)
    if table is not None and table.is_file():
        official = json.loads(table.read_text())
        assert {k: list(v.shape) for k, v in own.items()} == official


def test_model_id_of_another_class_is_refused(spec: registry.ModelSpec) -> None:
    cls = _cls(spec)
    other = next(s for s in registry.MODELS.values() if not issubclass(registry.model_class(s), cls))
    with pytest.raises(ModelNotFoundError, match=f"'{other.model_id}' is a"):
        cls.from_pretrained(other.model_id)


def test_hub_repo_id_loads_our_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    cls = _cls(CLASS_SPECS[0])
    folder = cls.tiny(seed=2).save_pretrained(tmp_path / "repo")
    calls = []

    def fake_snapshot(repo_id: str, **kwargs: object) -> str:
        calls.append((repo_id, kwargs.get("allow_patterns")))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    loaded = cls.from_pretrained("someone/tiny-model")
    assert calls == [("someone/tiny-model", [CONFIG_NAME, WEIGHTS_NAME, "README.md"])]
    assert loaded.config == cls.tiny(seed=2).config


def test_unknown_name_lists_the_known_ids() -> None:
    cls = _cls(CLASS_SPECS[0])
    with pytest.raises(ModelNotFoundError, match=CLASS_SPECS[0].model_id):
        cls.from_pretrained("no-such-model")


def test_random_weights_stay_marked_random_after_a_save_and_trained_ones_do_not(tmp_path: Path) -> None:
    from avatar.models.portrait4d import Portrait4D

    model = Portrait4D.tiny(seed=0)
    assert model.is_random_init
    assert Portrait4D.from_pretrained(model.save_pretrained(tmp_path / "random")).is_random_init
    model.load_state_dict(model.state_dict())  # as after loading weights
    assert not model.is_random_init
    assert not Portrait4D.from_pretrained(model.save_pretrained(tmp_path / "trained")).is_random_init
