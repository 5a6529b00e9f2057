"""The stage registry: one :class:`Stage` record per training stage, the one home of what a stage is.

The pipeline plans and fingerprints runs from it, the manifest orders stages by it, the evaluation picks a
stage's prompts and reference model from it, the model cards and the app name stages with it. Adding a stage
(a KTO or reward-model stage, say) is one :func:`register` call here plus its recipe module; nothing else
changes. The records are declarations only (the runner is named, imported when the stage trains), so the
store and the app may read them without loading any training code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage of a run."""

    name: str  # directory under runs/<id>/ and key of the manifest's "stages"
    parent: str | None  # the stage it starts from (None: the base)
    section: str  # its config section (training/config.py): what its fingerprint hashes
    data: tuple[str, ...]  # the ChiMed splits it trains on (their hashes enter its fingerprint)
    display_name: str  # in the app and the tables
    description: str  # "This checkpoint is ..." in the model cards
    runner: str  # "module:function" of its recipe, called as runner(cfg, paths, fingerprint)
    # trained on preference pairs: its parent is the reference of its implicit reward (evaluation), and the
    # manifest's dpo_pair_ids are the pairs it learned from
    preference: bool = False

    def run(self) -> Callable:
        """The recipe function (its module is imported now: torch, transformers, TRL)."""
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(module), function)


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


register(Stage(
    name="base", parent=None, section="model", data=("base", "cpt", "sft"), display_name="Base",
    description="the general base model (pretrained here on general Chinese text only, or the local checkpoint "
                "the paper profile starts from)",
    runner="training.stages.base:run_base_stage"))
register(Stage(
    name="cpt", parent="base", section="cpt", data=("cpt",), display_name="CPT",
    description="domain continued pre-training (next-token prediction on ChiMed-CPT) of the base model",
    runner="training.stages.cpt:run_cpt_stage"))
register(Stage(
    name="sft", parent="cpt", section="sft", data=("sft",), display_name="SFT",
    description="supervised fine-tuning (LoRA, loss on assistant tokens) of the CPT model on ChiMed-SFT",
    runner="training.stages.sft:run_sft_stage"))
register(Stage(
    name="dpo", parent="sft", section="dpo", data=("dpo",), display_name="DPO",
    preference=True,
    description="direct preference optimization (LoRA, reference = the SFT model) on ChiMed-DPO",
    runner="training.stages.dpo:run_dpo_stage"))
