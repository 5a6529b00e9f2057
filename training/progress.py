"""A run's live state, read from its files: the one reader for ``./launch.sh status`` and the app's Runs tab.

What a run in training writes, and what is read here:

- ``run_state.json`` (the pipeline's): the stages asked for, ``complete``, the id of the process that trains
  it (``pid``) and, when a stage failed, its one-line ``error``;
- ``manifest.json``: the finished stages and their metrics;
- ``logs/<stage>/trainer_log.jsonl``: a record per logged step (loss, learning rate, step of max_steps,
  remaining seconds) of the stage in training;
- ``eval/progress.json``: which stage the evaluation is measuring (``training/evaluation/evaluate.py``);
- ``train-all.log``: the output of a train-all started in the background (``training/background.py``).

Reading loads no training library; nothing here writes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Config
from core.registry import stage_names
from training.manifest import MANIFEST, list_runs, read_run_state, run_dir
from training.trainer.paths import last_step_record, loss_by_step, stage_paths

EVAL_PROGRESS = "progress.json"  # in runs/<id>/eval/: {"stage", "done", "total"} while the evaluation runs
TRAIN_LOG = "train-all.log"  # in runs/<id>/: the output of a train-all started in the background


def process_alive(pid: int | None) -> bool:
    """Whether a process with this id runs on this machine (a zombie counts as ended)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError, OverflowError):
        return False
    status = Path(f"/proc/{int(pid)}/stat")
    try:
        return status.read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class StageProgress:
    """One stage of a run: ``state`` is done, training, waiting or failed."""

    stage: str
    state: str
    step: int | None = None
    max_steps: int | None = None
    remaining_s: float | None = None
    loss: dict[int, float] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


@dataclass
class RunProgress:
    """A run as it stands: ``state`` is training, evaluating, complete, failed or interrupted."""

    run_id: str
    state: str
    stages: list[StageProgress]
    error: str | None = None
    evaluation: dict | None = None  # {"stage", "done", "total"} while the evaluation runs; None otherwise
    log: Path | None = None

    @property
    def current(self) -> StageProgress | None:
        """The stage in training (or the one that failed)."""
        return next((s for s in self.stages if s.state in ("training", "failed")), None)

    @property
    def in_training(self) -> bool:
        return self.state in ("training", "evaluating")


def run_progress(cfg: Config, run_id: str) -> RunProgress:
    """The live state of one run (see the module docstring for what is read)."""
    path = run_dir(cfg, run_id)
    state = read_run_state(path)
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8")) if (path / MANIFEST).is_file() else {}
    done = manifest.get("stages", {})
    alive = process_alive(state.get("pid"))
    error = state.get("error")
    if state.get("complete"):
        run_state = "evaluating" if alive else "complete"
    elif alive:
        run_state = "training"
    else:
        run_state = "failed" if error else "interrupted"
    wanted = state.get("stages") or [s for s in stage_names() if s in done]
    stages, current_found = [], False
    for stage in wanted:
        if stage in done:
            stages.append(StageProgress(stage, "done", metrics=done[stage].get("metrics", {})))
            continue
        log = stage_paths(path, stage).trainer_log
        if current_found or run_state in ("complete", "evaluating"):
            stages.append(StageProgress(stage, "waiting"))
            continue
        current_found = True
        last = last_step_record(log)
        stages.append(
            StageProgress(
                stage,
                "failed" if run_state == "failed" else "training" if alive else "waiting",
                step=last.get("step"),
                max_steps=last.get("max_steps"),
                remaining_s=last.get("remaining_s"),
                loss=loss_by_step(log),
            )
        )
    evaluation = None
    progress_file = path / "eval" / EVAL_PROGRESS
    if alive and progress_file.is_file():
        evaluation = json.loads(progress_file.read_text(encoding="utf-8"))
    log = path / TRAIN_LOG
    return RunProgress(run_id, run_state, stages, error, evaluation, log if log.is_file() else None)


def runs_in_training(cfg: Config) -> list[str]:
    """Ids of the runs a process on this machine is training or evaluating now, newest first."""
    return [m["run_id"] for m in list_runs(cfg) if process_alive(read_run_state(run_dir(cfg, m["run_id"])).get("pid"))]


def live_run(cfg: Config) -> str | None:
    """The run to watch: the newest one in training, else the newest that did not finish (failed or
    interrupted), else None."""
    training = runs_in_training(cfg)
    if training:
        return training[0]
    unfinished = [m["run_id"] for m in list_runs(cfg) if not m["complete"]]
    return unfinished[0] if unfinished else None


def watched_run(cfg: Config) -> str | None:
    """The run `status` and the API show by default: :func:`live_run`, else the newest run (None: no run yet)."""
    runs = list_runs(cfg)
    return live_run(cfg) or (runs[0]["run_id"] if runs else None)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _metric_line(metrics: dict) -> str:
    shown = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown[:6])


def format_progress(progress: RunProgress) -> str:
    """Plain-text lines (also valid Markdown) for the terminal and the Runs tab."""
    lines = [f"run {progress.run_id}: {progress.state}"]
    if progress.error:
        lines.append(f"error: {progress.error}")
    for s in progress.stages:
        if s.state == "done":
            lines.append(f"- {s.stage}: done ({_metric_line(s.metrics)})")
        elif s.state in ("training", "failed") or s.step is not None:
            counter = f"step {s.step}/{s.max_steps}" if s.step is not None else "starting (no step logged yet)"
            loss = f", loss {list(s.loss.values())[-1]:.4f}" if s.loss else ""
            left = f", about {format_duration(s.remaining_s)} left" if s.state == "training" and s.step else ""
            lines.append(f"- {s.stage}: {s.state}, {counter}{loss}{left}")
        else:
            lines.append(f"- {s.stage}: {s.state}")
    if progress.evaluation:
        e = progress.evaluation
        lines.append(f"- evaluation: stage {e.get('stage')} ({e.get('done', 0)}/{e.get('total', '?')} stages measured)")
    if progress.log is not None:
        lines.append(f"log: {progress.log}")
    return "\n".join(lines)
