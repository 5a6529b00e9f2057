"""The stage registry: one :class:`Stage` record per training stage, the one home of what a stage is.

The config's stage sections come from it (:func:`core.config.tree.config_class`), the pipeline plans and
fingerprints runs from it, the manifest orders stages by it, the evaluation picks a stage's prompts and reference
model from it, the model cards and the app name stages with it. Adding a stage is one record (with its settings
class) plus its recipe (``training/recipes/``, registered with ``@recipe``); nothing else changes
(docs/add-a-stage.md). The built-in records are in :mod:`core.stages`, registered when ``core`` is imported.
Which registered stages a run trains is the config's choice (:func:`run_stages`): the alignment stage is the one
named after ``align.method`` (dpo, kto, orpo, simpo, grpo), and the reward model (rm) trains only with
``align.reward_model``. The records are declarations only, so the store and the app read them without loading
any training code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage of a run."""

    name: str  # directory under runs/<id>/ and key of the manifest's "stages"
    parent: str | None  # the stage it starts from (None: the base)
    section: str  # its config section: what its fingerprint hashes
    settings: type  # the dataclass of that section (its defaults; the config tree takes the section from here)
    data: tuple[str, ...]  # the ChiMed splits it trains on (their hashes enter its fingerprint)
    display_name: str  # in the app and the tables
    description: str  # "This checkpoint is ..." in the model cards
    # trained on preference pairs: its parent is the reference of its implicit reward (evaluation), and the
    # manifest's dpo_pair_ids are the pairs it learned from
    preference: bool = False
    # an alignment method (align.method): a run trains exactly one of these after sft; `--from align` names it
    method: str | None = None
    generative: bool = True  # answers prompts (the evaluation generates with it, the app lists it)
    # prompted with the run's chat template (training, evaluation, serving alike); the others get plain 问：/答：
    # turns (core.prompting)
    chat: bool = False
    # whether a run with this config trains it (None: always; alignment stages: when align.method names them)
    include: Callable | None = None
    # stages it reads besides its parent when the run has them (grpo: the rm stage's scores are a reward); their
    # fingerprints enter its own
    reads: tuple[str, ...] = ()


_STAGES: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add ``stage`` after the stages registered so far (its parent must be one of them)."""
    if stage.name in _STAGES:
        raise ValueError(f"stage {stage.name!r} is registered already")
    if stage.parent is not None and stage.parent not in _STAGES:
        raise ValueError(f"stage {stage.name!r}: its parent {stage.parent!r} is not registered")
    _STAGES[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    """Remove a stage no other stage starts from (tests register throwaway stages)."""
    if any(s.parent == name for s in _STAGES.values()):
        raise ValueError(f"stage {name!r} is the parent of another stage")
    del _STAGES[name]


def stage_names() -> tuple[str, ...]:
    """Every registered stage, in training order."""
    return tuple(_STAGES)


def get_stage(name: str) -> Stage:
    return _STAGES[name]


def is_stage(name: str) -> bool:
    return name in _STAGES


ALIGN = "align"  # `--from align` / `--stages align`: the alignment stage of the config's align.method


def align_methods() -> tuple[str, ...]:
    """The registered alignment methods (align.method), in registration order."""
    return tuple(s.method for s in _STAGES.values() if s.method)


def run_stages(cfg) -> tuple[str, ...]:
    """The stages a run with ``cfg`` trains, in training order: every registered stage its config includes."""
    return tuple(
        s.name
        for s in _STAGES.values()
        if (s.include(cfg) if s.include else (s.method is None or cfg.align.method == s.method))
    )


def resolve_stage(cfg, name: str) -> str:
    """``align`` -> the stage of ``cfg.align.method``; any other name as given."""
    return cfg.align.method if name == ALIGN else name


def answering(stages) -> list[str]:
    """Those of ``stages`` that answer prompts (contestants, generation evaluation): the reward model does not."""
    return [s for s in stages if is_stage(s) and _STAGES[s].generative]


def is_chat_stage(name: str) -> bool:
    """Whether stage ``name`` is prompted with the run's chat template (its record's ``chat``)."""
    return is_stage(name) and _STAGES[name].chat


def chat_stage_names() -> tuple[str, ...]:
    """The stages prompted with the run's chat template, in training order."""
    return tuple(s.name for s in _STAGES.values() if s.chat)


def registered() -> tuple[Stage, ...]:
    """Every registered record, in training order."""
    return tuple(_STAGES.values())
