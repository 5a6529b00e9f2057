"""The loop's next round, as the command line (``./launch.sh next-round``) and the Runs tab's "train the next
round" both run it: what it will retrain and how many new clinician pairs go in (:func:`round_plan`), and, from
the app, starting it in the background (:func:`start_next_round`, one training at a time per home).

The round itself is ``chimed.py``'s (``next-round``: export the new judgments, the loop's train-all reusing the
parent run's unchanged stages, evaluation, registration, then the comparison round queued); the app starts
that command, so both run the same code.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.config import Config
from core.errors import UserError
from core.registry import answering, get_stage, run_stages
from preference_store.exports.pairs import export_pairs
from preference_store.exports.ratings import export_ratings
from preference_store.records import Annotator
from preference_store.repository import PreferenceStore
from training.background import BackgroundTraining, TrainingRunning, start_training
from training.manifest import data_hashes, latest_run, new_run_id, read_manifest_at
from training.progress import runs_in_training

# the training splits the store's exports feed: clinician pairs join ChiMed-DPO, single-answer ratings ChiMed-KTO
FED_BY_PAIRS, FED_BY_RATINGS = "dpo", "kto"
ADMINS_ONLY = "only admins may start a training: ask an admin to train the next round"


@dataclass(frozen=True)
class RoundPlan:
    """What the next round trains: stages of ``parent_run`` reused, the ones retrained (from ``from_stage``),
    the new clinician pairs (train / held out) and ratings that go in, and the stage the comparison round pits
    against the parent's."""

    parent_run: str
    from_stage: str
    reused: tuple[str, ...]
    retrained: tuple[str, ...]
    pairs_train: int
    pairs_heldout: int
    ratings: int
    compare_stage: str

    @property
    def new_pairs(self) -> int:
        return self.pairs_train + self.pairs_heldout

    def summary(self) -> str:
        reused = ", ".join(self.reused) or "none"
        return (
            f"next round from run {self.parent_run}: retrains {', '.join(self.retrained)}; reuses {reused}; "
            f"{self.new_pairs} new clinician pairs go in ({self.pairs_train} train, {self.pairs_heldout} held out)"
            f", {self.ratings} new single-answer ratings; then a blind comparison round of "
            f"NEW/{self.compare_stage} against {self.parent_run}/{self.compare_stage} on the held-out bank prompts"
        )


def round_plan(cfg: Config, store: PreferenceStore) -> RoundPlan:
    """The next round's plan, from the newest completed run and the judgments not yet exported (counted by an
    export that marks nothing). A stage is retrained when its config section or its data changed since the parent
    trained it, or new clinician data feeds it; every stage after the first retrained one is retrained too."""
    parent = latest_run(cfg)
    if parent is None:
        raise UserError("no completed run to start the next round from: train one first (./launch.sh)")
    with tempfile.TemporaryDirectory() as tmp:
        pairs = export_pairs(cfg, out=Path(tmp) / "pairs.jsonl", store=store, mark=False)
        ratings = export_ratings(cfg, out=Path(tmp) / "ratings.jsonl", store=store, mark=False)
    fed = {FED_BY_PAIRS} if pairs.pair_ids else set()
    if ratings.rating_ids:
        fed.add(FED_BY_RATINGS)
    parent_path = cfg.runs_dir / parent
    manifest = read_manifest_at(parent_path)
    saved = parent_path / "config.json"
    parent_cfg = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
    hashes = data_hashes(cfg) if cfg.data_dir.is_dir() else {}
    now = cfg.to_dict()
    stages = run_stages(cfg)

    def changed(stage: str) -> bool:
        record = get_stage(stage)
        return (
            stage not in manifest["stages"]
            or parent_cfg.get(record.section) != now[record.section]
            or any(hashes.get(split) != manifest.get("data_sha256", {}).get(split) for split in record.data)
            or bool(fed & set(record.data))
        )

    first = next((s for s in stages if changed(s)), None)
    if first is None:
        raise UserError(
            f"nothing new to train on since run {parent}: no new clinician pairs or ratings and no changed "
            "stage (judge more comparisons first)"
        )
    at = stages.index(first)
    return RoundPlan(
        parent_run=parent,
        from_stage=first,
        reused=tuple(stages[:at]),
        retrained=tuple(stages[at:]),
        pairs_train=pairs.train,
        pairs_heldout=pairs.heldout,
        ratings=len(ratings.rating_ids),
        compare_stage=answering(stages)[-1],
    )


def start_next_round(
    cfg: Config, store: PreferenceStore, annotator: Annotator | None, overrides: list[str]
) -> tuple[BackgroundTraining, RoundPlan]:
    """Start ``chimed next-round`` in the background for an admin (anyone else is refused), after checking that
    there is something to train; refused while a training of this home runs, with the running one's id."""
    if annotator is None or not annotator.is_admin:
        raise UserError(ADMINS_ONLY)
    training = runs_in_training(cfg)
    if training:
        raise TrainingRunning(training[0])
    plan = round_plan(cfg, store)
    run_id = new_run_id(cfg)
    argv = ["next-round", "--profile", cfg.profile, "--run-id", run_id, "--actor", annotator.name, *overrides]
    return start_training(cfg, run_id, argv), plan
