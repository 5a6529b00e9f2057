"""Issue 35: the live state of a run (training/progress.py) as `status`, the Runs tab and the arena read it, from the
files a run in training writes: the pipeline's run_state.json (the training process, a failed stage's error),
the manifest's finished stages and the stage's trainer_log.jsonl. A run in training here is one whose recorded
process lives: this test's own process."""

from __future__ import annotations

import json
import os

from app.contestants import IN_TRAINING, available_contestants, resolve_contestants
from chimed import main
from core.config import load_config
from training.manifest import new_manifest, stage_entry, write_manifest
from training.progress import format_progress, live_run, run_progress, runs_in_training


def _run_in_training(cfg, run_id: str, pid: int | None, error: str | None = None) -> None:
    """A run whose base is finished and whose cpt has logged 10 of 30 steps."""
    path = cfg.runs_dir / run_id
    (path / "logs" / "cpt").mkdir(parents=True)
    manifest = new_manifest(cfg, run_id, {})
    manifest["stages"]["base"] = stage_entry("base", "full", None, {"train_loss": 6.5, "steps": 30})
    write_manifest(path, manifest)
    state = {"requested_stages": ["base", "cpt", "sft", "dpo"], "stages": ["base", "cpt", "sft", "dpo"]}
    state.update(complete=False, **({"pid": pid} if pid else {}), **({"error": error} if error else {}))
    (path / "run_state.json").write_text(json.dumps(state), encoding="utf-8")
    records = [
        {"stage": "cpt", "step": 5, "max_steps": 30, "loss": 6.9, "remaining_s": 50.0},
        {"stage": "cpt", "event": "resume", "from_checkpoint": "checkpoint-5"},
        {"stage": "cpt", "step": 10, "max_steps": 30, "loss": 6.7, "remaining_s": 40.0},
    ]
    (path / "logs" / "cpt" / "trainer_log.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records) + '{"stage": "cpt", "st', encoding="utf-8"
    )


def test_a_run_in_training_its_stage_steps_loss_and_finished_stages(chimed_home, capsys):
    cfg = load_config("tiny")
    _run_in_training(cfg, "r-live", os.getpid())
    progress = run_progress(cfg, "r-live")
    assert progress.state == "training" and progress.current.stage == "cpt"
    assert (progress.current.step, progress.current.max_steps, progress.current.remaining_s) == (10, 30, 40.0)
    assert progress.current.loss == {5: 6.9, 10: 6.7}  # the half-written last line is skipped
    assert [s.state for s in progress.stages] == ["done", "training", "waiting", "waiting"]
    assert runs_in_training(cfg) == ["r-live"] and live_run(cfg) == "r-live"
    text = format_progress(progress)
    assert "- base: done (train_loss 6.5, steps 30)" in text
    assert "- cpt: training, step 10/30, loss 6.7000, about 0m40s left" in text

    assert main(["status", "--profile", "tiny"]) == 0
    assert "run r-live: training" in capsys.readouterr().out

    # its finished stage is a contestant, marked, and its answers record the run's state
    (base,) = [c for c in available_contestants(cfg) if c.run_id == "r-live"]
    assert base.checkpoint_id == "r-live/base" and base.label.endswith(IN_TRAINING)
    assert base.provenance == {"run_state": {"state": "in training", "stages_complete": ["base"]}}
    assert resolve_contestants(cfg, ["r-live/base"]) == [base]


def test_a_failed_stage_shows_its_error_and_leaves_the_arena(chimed_home, capsys):
    cfg = load_config("tiny")
    error = "stage cpt: cpt: the training loss is nan at step 10 (a non-finite loss): lower cpt.learning_rate"
    _run_in_training(cfg, "r-failed", None, error)
    progress = run_progress(cfg, "r-failed")
    assert progress.state == "failed" and progress.error == error
    assert progress.current.stage == "cpt" and progress.current.state == "failed"
    assert runs_in_training(cfg) == [] and live_run(cfg) == "r-failed"
    assert not [c for c in available_contestants(cfg) if c.run_id == "r-failed"]  # neither complete nor training
    assert main(["status", "--profile", "tiny", "--run", "r-failed"]) == 0
    out = capsys.readouterr().out
    assert "run r-failed: failed" in out and f"error: {error}" in out
    assert main(["status", "--profile", "tiny", "--run", "nope"]) == 2
