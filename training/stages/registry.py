"""The stage registry: one :class:`Stage` record per training stage, the one home of what a stage is.

The pipeline plans and fingerprints runs from it, the manifest orders stages by it, the evaluation picks a
stage's prompts and reference model from it, the model cards and the app name stages with it. Adding a stage
is one :func:`register` call here plus its recipe module; nothing else changes. Which registered stages a
run trains is the config's choice (:func:`run_stages`): the alignment stage is the one named after
``align.method`` (dpo, kto, orpo, simpo, grpo), and the reward model (rm) trains only with
``align.reward_model``. The records are declarations only (the runner is named, imported when the stage trains), so the
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
    # an alignment method (align.method): a run trains exactly one of these after sft; `--from align` names it
    method: str | None = None
    generative: bool = True  # answers prompts (the evaluation generates with it, the app lists it)
    # whether a run with this config trains it (None: always; alignment stages: when align.method names them)
    include: Callable | None = None
    # stages it reads besides its parent when the run has them (grpo: the rm stage's scores are a reward); their
    # fingerprints enter its own
    reads: tuple[str, ...] = ()
    # "module:function" called as check(cfg) once the data is built, before any stage of the run trains: a
    # method its data cannot feed is a one-line error then, not after hours of base, cpt and sft
    check: str | None = None

    def run(self) -> Callable:
        """The recipe function (its module is imported now: torch, transformers, TRL)."""
        return _resolve(self.runner)

    def check_data(self, cfg) -> None:
        """Raise the stage's one-line error when the run's data cannot feed it (nothing when it has no check)."""
        if self.check:
            _resolve(self.check)(cfg)


def _resolve(name: str) -> Callable:
    module, function = name.split(":")
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
    """Whether stage ``name`` is prompted with the run's chat template (training, evaluation, serving alike);
    the others get plain 问：/答： turns. The registry decides: :func:`chat_stage_names`."""
    return name in chat_stage_names()


def chat_stage_names() -> tuple[str, ...]:
    """The generative stages that descend from sft (prompted with the run's chat template)."""
    out = []
    for s in _STAGES.values():
        parent = s
        while parent.parent is not None and parent.name != "sft":
            parent = _STAGES[parent.parent]
        if parent.name == "sft" and s.generative:
            out.append(s.name)
    return tuple(out)


register(
    Stage(
        name="base",
        parent=None,
        section="model",
        data=("base", "cpt", "sft"),
        display_name="Base",
        description="the general base model (pretrained here on general Chinese text only, or the local checkpoint "
        "the paper profile starts from)",
        runner="training.stages.base:run_base_stage",
    )
)
register(
    Stage(
        name="cpt",
        parent="base",
        section="cpt",
        data=("cpt",),
        display_name="CPT",
        description="domain continued pre-training (next-token prediction on ChiMed-CPT) of the base model",
        runner="training.stages.cpt:run_cpt_stage",
    )
)
register(
    Stage(
        name="sft",
        parent="cpt",
        section="sft",
        data=("sft",),
        display_name="SFT",
        description="supervised fine-tuning (LoRA, loss on assistant tokens) of the CPT model on ChiMed-SFT",
        runner="training.stages.sft:run_sft_stage",
    )
)
register(
    Stage(
        name="rm",
        parent="sft",
        section="rm",
        data=("dpo",),
        display_name="RM",
        generative=False,
        include=lambda cfg: cfg.align.reward_model,
        description="a reward model (the SFT model with a scalar value head, LoRA) trained on ChiMed-DPO and the "
        "clinicians' pairs: GRPO's reward for open prompts and the evaluation's judge",
        runner="training.stages.rm:run_rm_stage",
        check="training.stages.pairs:check_pairs",
    )
)
register(
    Stage(
        name="dpo",
        parent="sft",
        section="dpo",
        data=("dpo",),
        display_name="DPO",
        preference=True,
        description="direct preference optimization (LoRA, reference = the SFT model) on ChiMed-DPO",
        runner="training.stages.dpo:run_dpo_stage",
        method="dpo",
        check="training.stages.dpo:check_dpo_data",
    )
)
register(
    Stage(
        name="kto",
        parent="sft",
        section="kto",
        data=("kto",),
        display_name="KTO",
        preference=True,
        method="kto",
        description="Kahneman-Tversky optimization (LoRA, reference = the SFT model) on single answers marked "
        "desirable or not: ChiMed-DPO's pairs split in two, plus the clinicians' thumbs",
        runner="training.stages.kto:run_kto_stage",
        check="training.data.kto:check_kto_data",
    )
)
register(
    Stage(
        name="orpo",
        parent="sft",
        section="orpo",
        data=("dpo",),
        display_name="ORPO",
        preference=True,
        method="orpo",
        description="odds-ratio preference optimization (LoRA, no reference model) of the SFT model on ChiMed-DPO",
        runner="training.stages.orpo:run_orpo_stage",
        check="training.stages.pairs:check_pairs",
    )
)
register(
    Stage(
        name="simpo",
        parent="sft",
        section="simpo",
        data=("dpo",),
        display_name="SimPO",
        preference=True,
        method="simpo",
        description="simple preference optimization (LoRA, length-normalized reward, no reference model) of the "
        "SFT model on ChiMed-DPO",
        runner="training.stages.simpo:run_simpo_stage",
        check="training.stages.pairs:check_pairs",
    )
)
register(
    Stage(
        name="grpo",
        parent="sft",
        section="grpo",
        data=("grpo",),
        display_name="GRPO",
        method="grpo",
        reads=("rm",),
        description="group relative policy optimization (LoRA, KL to the SFT model) of the SFT model with "
        "verifiable exam rewards, a format reward and, with an rm stage, the reward model's score",
        runner="training.stages.grpo:run_grpo_stage",
        check="training.stages.grpo:check_grpo_data",
    )
)
