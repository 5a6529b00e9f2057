"""Which checkpoints can be compared: every stage of every completed run under ``cfg.runs_dir``, every finished
stage of a run still in training (marked "run in training", its answers recording that state), and every
endpoint of ``app.endpoints`` (a model served by an OpenAI-compatible engine, :mod:`app.serving.endpoints`).

Read from the run manifests (``training.manifest.list_runs``) on every call, so a run that finishes
while the app is up is listed without a restart. A checkpoint id is ``"<run_id>/<stage>"`` for a run's
stage and ``"endpoint:<name>"`` for an endpoint (no '/' in it, so it is never a run's); anything else
sent to the app is refused with a one-line :class:`UserError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import Config, EndpointConfig
from core.errors import UserError
from core.registry import answering, get_stage, is_stage, stage_names
from preference_store.repository.checkpoints import ENDPOINT_STAGE, endpoint_checkpoint_id
from training.manifest import list_runs, read_manifest_at, run_dir
from training.progress import runs_in_training

IN_TRAINING = "训练中 run in training"


def stage_label(stage: str) -> str:
    """A stage's name as the app shows it (the registry's display name)."""
    return get_stage(stage).display_name if is_stage(stage) else stage


@dataclass(frozen=True)
class Contestant:
    """One stage of one run as the app serves it, or an endpoint (``endpoint`` set; ``run_id`` is then its
    checkpoint id, ``stage`` "endpoint" and ``run_dir`` None, as its record in the store has them)."""

    checkpoint_id: str  # "<run_id>/<stage>" or "endpoint:<name>"
    run_id: str
    stage: str
    run_dir: Path | None
    endpoint: EndpointConfig | None = None
    in_training: bool = False  # a finished stage of a run still in training (training/progress.py)

    @property
    def label(self) -> str:
        if self.endpoint is not None:
            return f"{self.endpoint.name} · endpoint ({self.endpoint.model})"
        return f"{self.run_id} · {stage_label(self.stage)}" + (f" · {IN_TRAINING}" if self.in_training else "")

    @property
    def provenance(self) -> dict:
        """What a stored answer records of its run's state (with how it was served): a run still in training
        says so, with the stages finished then; nothing is added for a completed run's stage or an endpoint."""
        if not self.in_training or self.run_dir is None:
            return {}
        done = list(read_manifest_at(self.run_dir).get("stages", {}))
        return {"run_state": {"state": "in training", "stages_complete": done}}


@dataclass(frozen=True)
class RunInfo:
    """A completed run and what the app needs to show it."""

    run_id: str
    created: str
    profile: str
    parent_run: str | None
    stages: tuple[str, ...]
    run_dir: Path


def completed_runs(cfg: Config) -> list[RunInfo]:
    """Runs that finished every stage they were asked for, newest first."""
    return [
        RunInfo(
            run_id=m["run_id"],
            created=m.get("created", ""),
            profile=m.get("profile", ""),
            parent_run=m.get("parent_run"),
            stages=tuple(answering(s for s in stage_names() if s in m.get("stages", {}))),
            run_dir=run_dir(cfg, m["run_id"]),
        )
        for m in list_runs(cfg, complete_only=True)
    ]


def endpoint_contestants(cfg: Config) -> list[Contestant]:
    """The endpoints of ``app.endpoints`` as contestants, in the order the config lists them."""
    return [
        Contestant(endpoint_checkpoint_id(e.name), endpoint_checkpoint_id(e.name), ENDPOINT_STAGE, None, e)
        for e in cfg.app.endpoints
    ]


def available_contestants(cfg: Config) -> list[Contestant]:
    """Every finished stage of every completed run and of every run in training, newest run first (stages in
    pipeline order; a run in training's marked "run in training"), then the endpoints."""
    training = set(runs_in_training(cfg))
    return [
        *(
            Contestant(
                f"{m['run_id']}/{stage}", m["run_id"], stage, run_dir(cfg, m["run_id"]), None, m["run_id"] in training
            )
            for m in list_runs(cfg)
            if m["complete"] or m["run_id"] in training
            for stage in answering(s for s in stage_names() if s in m.get("stages", {}))
        ),
        *endpoint_contestants(cfg),
    ]


def identifying_names(cfg: Config, checkpoint_ids: list[str]) -> list[str]:
    """Names besides the checkpoint ids that give these contestants away in an answer: an endpoint's name
    and the model it serves (checked like ``app.leak_terms``, :mod:`app.leaks`)."""
    return [
        name
        for c in endpoint_contestants(cfg)
        if c.checkpoint_id in checkpoint_ids
        for name in (c.endpoint.name, c.endpoint.model)
    ]


def default_checkpoints(cfg: Config) -> list[str]:
    """The newest completed run's stages (base, CPT, SFT, DPO): the default contestants."""
    runs = completed_runs(cfg)
    return [f"{runs[0].run_id}/{stage}" for stage in runs[0].stages] if runs else []


def run_checkpoints(cfg: Config, run_id: str) -> list[str]:
    """The stages of one completed run as checkpoint ids (empty when the run is unknown)."""
    return [f"{run.run_id}/{stage}" for run in completed_runs(cfg) if run.run_id == run_id for stage in run.stages]


def register_contestants(cfg: Config, store, checkpoint_ids: list[str]) -> list[Contestant]:
    """Resolve ``checkpoint_ids`` (refusing unknown ones) and make sure the store knows each of them.

    Training registers a run's checkpoints when it completes; a store opened later (another
    CHIMED_DATABASE_URL) learns them here, so a completed run can always be compared; an endpoint is
    registered when first used."""
    contestants = resolve_contestants(cfg, checkpoint_ids)
    for contestant in contestants:
        if store.is_known_checkpoint(contestant.checkpoint_id):
            continue
        if contestant.endpoint is not None:
            store.register_endpoints([contestant.endpoint.name])
        else:
            store.register_checkpoints(contestant.run_id, [contestant.stage])
    return contestants


def resolve_contestants(cfg: Config, checkpoint_ids: list[str]) -> list[Contestant]:
    """The contestants named by ``checkpoint_ids``, refusing any id that is not a finished stage of a completed run
    or of a run in training, or an endpoint."""
    known = {c.checkpoint_id: c for c in available_contestants(cfg)}
    out = []
    for cid in checkpoint_ids:
        if not isinstance(cid, str) or cid not in known:
            raise UserError(
                f"unknown checkpoint {cid!r}: choose one of the completed runs' stages or endpoints "
                f"({', '.join(sorted(known)[:8]) or 'none yet: train one with ./launch.sh train-all'}"
                f"{', ...' if len(known) > 8 else ''})"
            )
        out.append(known[cid])
    return out
