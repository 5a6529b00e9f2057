"""The recipes: one module per stage, each registering how its stage trains with :func:`recipe`.

A recipe module decorates its runner, ``runner(cfg, paths, fingerprint)``, with ``@recipe("<stage>")``, and may
name the stage's data check, ``check(cfg)``, with ``@data_check("<stage>")``: called once the data is built and before any stage of the run
trains, so that a method its data cannot feed is a one-line error then, not after hours of base, cpt and sft.
The stage itself (its settings section, parent, data) is its record in the registry (:mod:`core.registry`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

_RUNNERS: dict[str, Callable] = {}
_CHECKS: dict[str, Callable] = {}


def recipe(stage: str) -> Callable:
    """Decorator: the function trains ``stage`` (called as ``runner(cfg, paths, fingerprint)``)."""
    return _into(_RUNNERS, stage, "recipe")


def data_check(stage: str) -> Callable:
    """Decorator: the function (``check(cfg)``) raises a one-line error when the run's data cannot feed ``stage``."""
    return _into(_CHECKS, stage, "data check")


def _into(table: dict, stage: str, what: str) -> Callable:
    def register(function: Callable) -> Callable:
        known = table.get(stage, function)
        if (known.__module__, known.__qualname__) != (function.__module__, function.__qualname__):
            raise ValueError(f"stage {stage!r} has a {what} already ({table[stage].__module__})")
        table[stage] = function
        return function

    return register


def _load_recipes() -> None:
    """Import every recipe module of this folder (torch, transformers, TRL: only when a stage trains)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def runner_for(stage: str) -> Callable:
    """The function that trains ``stage``."""
    if stage not in _RUNNERS:
        _load_recipes()
    if stage not in _RUNNERS:
        raise KeyError(f"stage {stage!r} has no recipe (decorate its runner with @recipe({stage!r}))")
    return _RUNNERS[stage]


def check_data(cfg, stage: str) -> None:
    """Raise the stage's one-line error when the run's data cannot feed it (nothing when it has no check)."""
    runner_for(stage)
    if stage in _CHECKS:
        _CHECKS[stage](cfg)
