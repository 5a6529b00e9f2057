"""Where one stage of one run reads and writes, and the ``stage.json`` that marks it finished.

A stage trains inside ``runs/<id>/.partial/<stage>/``, saves its model to ``.partial/<stage>/final/`` and is
renamed to ``runs/<id>/<stage>/`` only when complete (``training/trainer/lifecycle.py``). Reading these paths
loads no training library, so the pipeline's planning and fingerprints stay light.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.registry import get_stage

STAGE_INFO = "stage.json"  # inside every finished stage dir: kind, parent, fingerprint, metrics


@dataclass(frozen=True)
class StagePaths:
    """Where one stage of one run reads and writes."""

    run_dir: Path
    stage: str

    @property
    def parent(self) -> str | None:
        """The stage this one starts from (the stage registry's)."""
        return get_stage(self.stage).parent

    @property
    def final(self) -> Path:
        """The finished checkpoint, ``runs/<id>/<stage>``: exists only once complete."""
        return self.run_dir / self.stage

    @property
    def work(self) -> Path:
        """Trainer output dir while training: holds ``checkpoint-N`` for resuming."""
        return self.run_dir / ".partial" / self.stage

    @property
    def staging(self) -> Path:
        """The finished model before it is renamed into place."""
        return self.work / "final"

    @property
    def logs(self) -> Path:
        """TensorBoard events, trainer_log.jsonl and per-process records of this stage."""
        return self.run_dir / "logs" / self.stage

    @property
    def trainer_log(self) -> Path:
        return self.logs / "trainer_log.jsonl"


def stage_paths(run_dir: Path, stage: str) -> StagePaths:
    return StagePaths(Path(run_dir), stage)


def read_stage_info(path: Path) -> dict | None:
    """``stage.json`` of a finished stage dir, or None when the stage is not complete."""
    info = Path(path) / STAGE_INFO
    return json.loads(info.read_text(encoding="utf-8")) if info.is_file() else None


def loss_by_step(log_path: Path) -> dict[int, float]:
    """``{step: training loss}`` from a stage's trainer_log.jsonl (after a resume, the later value wins)."""
    by_step: dict[int, float] = {}
    path = Path(log_path)
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the line being written
                continue
            if "loss" in record and "step" in record:
                by_step[int(record["step"])] = float(record["loss"])
    return dict(sorted(by_step.items()))


def last_step_record(log_path: Path) -> dict:
    """The newest record of a stage's trainer_log.jsonl that has a step counter ({} when none)."""
    path = Path(log_path)
    if not path.is_file():
        return {}
    for line in reversed(path.read_text(encoding="utf-8").splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "step" in record and "max_steps" in record:
            return record
    return {}
