"""The config tree: the fixed sections, and one section per registered stage.

A stage's section is named by its :class:`core.registry.Stage` record (``section``) and typed by its settings
class (``settings``), so the registry is the one list of stages: :func:`config_class` makes the ``Config``
dataclass of the stages registered now, with the stage sections between ``align`` and ``eval`` in registration
order. Every default lives in the section classes, once.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import field
from pathlib import Path

from core import stages as _builtin_stages  # noqa: F401 - registers the built-in stages and their sections
from core.config.app import AppConfig, StudyConfig
from core.config.data import DataConfig
from core.config.evaluation import EvalConfig
from core.config.store import StoreConfig
from core.files import sha256_json
from core.registry import registered
from core.stages import AlignConfig, TrainConfig

# the sections every config has, before and after the stages' own
FIXED_BEFORE = (("data", DataConfig), ("train", TrainConfig), ("align", AlignConfig))
FIXED_AFTER = (("eval", EvalConfig), ("store", StoreConfig), ("app", AppConfig), ("study", StudyConfig))


class Config:
    """The whole config: ``Config(...)`` and :func:`core.config.load_config` give an instance of
    :func:`config_class` (a dataclass with one field per section); this class holds what every such config
    offers besides its sections."""

    def __new__(cls, *args, **kwargs):
        if cls is Config:  # the config of the stages registered now
            return config_class()(*args, **kwargs)
        return super().__new__(cls)

    def __reduce__(self):  # pickled by its sections (the class is made at run time)
        return _config_of, ({f.name: getattr(self, f.name) for f in dataclasses.fields(self)},)

    # --- where state lives (docs/design.md) -------------------------------------------------------
    @property
    def home(self) -> Path:
        return Path(os.environ.get("CHIMED_HOME", "workdir")).resolve()

    @property
    def data_dir(self) -> Path:
        return self.home / "data" / "chimed"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def blocks_cache_dir(self) -> Path:
        """Packed pretraining blocks, cached by the content they were packed from (training/trainer/packing.py)."""
        return self.home / "cache" / "blocks"

    @property
    def collected_pairs_dir(self) -> Path:
        return self.home / self.data.collected_pairs_dir

    @property
    def collected_ratings_dir(self) -> Path:
        return self.home / self.data.collected_ratings_dir

    @property
    def database_url(self) -> str:
        return (
            os.environ.get("CHIMED_DATABASE_URL")
            or self.store.database_url
            or f"sqlite:///{self.home / 'preferences.db'}"
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sha256(self, section: str | None = None) -> str:
        """Stable hash of the whole config or one section (used to tell whether a stage is stale)."""
        payload = self.to_dict() if section is None else self.to_dict()[section]
        return sha256_json(payload)


_CLASSES: dict[tuple, type] = {}


def _config_of(sections: dict) -> Config:
    return config_class()(**sections)


def config_class() -> type[Config]:
    """The ``Config`` dataclass of the stages registered now (one class per set of stage sections)."""
    stage_sections = tuple((s.section, s.settings) for s in registered())
    if stage_sections not in _CLASSES:
        sections = FIXED_BEFORE + stage_sections + FIXED_AFTER
        taken = [name for name, _ in sections]
        clash = sorted({name for name in taken if taken.count(name) > 1})
        if clash:
            raise ValueError(f"config section {clash[0]!r} is named twice (a stage's section must be its own)")
        profile = field(
            default="demo", metadata={"help": "what ./launch.sh and every command use when --profile is not given"}
        )
        fields = [("profile", str, profile)]
        fields += [(name, settings, field(default_factory=settings)) for name, settings in sections]
        made = dataclasses.make_dataclass("Config", fields, bases=(Config,))
        made.__module__, made.__qualname__ = __name__, "config_class.<locals>.Config"
        _CLASSES[stage_sections] = made
    return _CLASSES[stage_sections]
