"""A stage's life: prepare its work dir, train resuming from the last Trainer checkpoint, finish atomically.

A stage trains inside ``runs/<id>/.partial/<stage>/`` (Trainer checkpoints ``checkpoint-N`` land there),
saves its model to ``.partial/<stage>/final/`` with ``stage.json`` and ``loss.png``, and only then is
``final/`` renamed to ``runs/<id>/<stage>/``. A crash leaves no half checkpoint that looks whole, and the
next run of the same command resumes from the newest ``checkpoint-N``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from core.files import write_json_atomic
from training.trainer.allocator import freed_memory_kept
from training.trainer.callbacks import append_jsonl, check_training_loss
from training.trainer.paths import STAGE_INFO, StagePaths, loss_by_step


def prepare_work_dir(paths: StagePaths, fingerprint: str) -> None:
    """Keep a half-trained stage only if it was started from the same config and data."""
    marker = paths.work / "fingerprint"
    if paths.work.exists() and (not marker.is_file() or marker.read_text() != fingerprint):
        print(f"{paths.stage}: discarding checkpoints trained from another config or data")
        shutil.rmtree(paths.work)
    if paths.staging.exists():  # saved but not renamed: the save itself may have been cut short
        shutil.rmtree(paths.staging)
    paths.work.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)


def train_resumably(trainer, paths: StagePaths) -> dict:
    """``trainer.train()``, resuming from the newest ``checkpoint-N`` in the work dir; returns metrics.

    Metrics: train_loss, steps, train_runtime_s, train_tokens (non-padding input tokens over the
    whole stage, all processes) and tokens_per_s (of this session).
    """
    checkpoint = last_complete_checkpoint(paths.work)
    if checkpoint:
        print(f"{paths.stage}: resuming from {Path(checkpoint).name}")
        if trainer.is_world_process_zero():
            append_jsonl(
                paths.trainer_log, {"stage": paths.stage, "event": "resume", "from_checkpoint": Path(checkpoint).name}
            )
    tokens_before = _checkpoint_tokens(checkpoint)
    output = trainer.train(resume_from_checkpoint=checkpoint)
    state = trainer.state
    check_training_loss(paths.stage, float(output.training_loss))
    runtime = output.metrics.get("train_runtime", 0.0)
    tokens = int(state.num_input_tokens_seen)
    metrics = {
        "train_loss": round(float(output.training_loss), 6),
        "steps": int(state.global_step),
        "train_runtime_s": round(runtime, 2),
        "train_tokens": tokens,
        "tokens_per_s": round((tokens - tokens_before) / runtime, 1) if runtime else None,
        "world_size": trainer.args.world_size,
        "freed_memory_kept": freed_memory_kept(),  # train.keep_freed_memory, applied (CPU, glibc)
    }
    _record_process(trainer, paths, metrics)
    return metrics


def last_complete_checkpoint(work: Path) -> str | None:
    """The newest ``checkpoint-N`` of a work dir that was written to the end (its trainer_state.json, which the
    Trainer writes last, is there). One a stop cut short (Ctrl-C while saving) is removed: training resumes
    from the one before."""
    while Path(work).is_dir():
        checkpoint = get_last_checkpoint(str(work))
        if checkpoint is None or (Path(checkpoint) / "trainer_state.json").is_file():
            return checkpoint
        print(f"{Path(work).name}: {Path(checkpoint).name} was not saved to the end (interrupted): removed")
        shutil.rmtree(checkpoint)
    return None


def _checkpoint_tokens(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("num_input_tokens_seen", 0))


def _record_process(trainer, paths: StagePaths, metrics: dict) -> None:
    """One file per training process (logs/<stage>/process_<rank>.json): who trained, how far."""
    rank = trainer.args.process_index
    record = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "steps": metrics["steps"],
        "device": str(trainer.args.device),
        "finished": _now(),
    }
    write_json_atomic(paths.logs / f"process_{rank}.json", record)


def finish_stage(
    paths: StagePaths, save, *, kind: str, parent: str | None, fingerprint: str, metrics: dict, is_main: bool = True
) -> None:
    """Save the stage through ``save(staging_dir)``, add stage.json and loss.png, rename into place.

    Every process calls this (DeepSpeed gathers weights collectively inside ``save``); only the main
    process writes the files and renames. ``metrics["save_s"]``: the time from here to the renaming.
    """
    started = time.time()
    save(paths.staging)
    if not is_main:
        return
    plot_loss(paths.trainer_log, paths.staging / "loss.png", paths.stage)
    metrics = {**metrics, "save_s": round(time.time() - started, 2)}
    info = {
        "stage": paths.stage,
        "kind": kind,
        "parent": parent,
        "fingerprint": fingerprint,
        "metrics": metrics,
        "completed": _now(),
    }
    write_json_atomic(paths.staging / STAGE_INFO, info)
    if paths.final.exists():  # an older, stale version of this stage
        shutil.rmtree(paths.final)
    os.replace(paths.staging, paths.final)
    shutil.rmtree(paths.work, ignore_errors=True)
    if not any(paths.work.parent.iterdir()):  # no other stage half-trained
        paths.work.parent.rmdir()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def plot_loss(log_path: Path, png_path: Path, stage: str) -> None:
    """Training-loss curve of a stage from its trainer_log.jsonl (a resumed stage is drawn once)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_step = loss_by_step(log_path)  # after a resume, the later value wins
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    steps = sorted(by_step)
    ax.plot(steps, [by_step[s] for s in steps], marker="o", markersize=2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{stage}: training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
