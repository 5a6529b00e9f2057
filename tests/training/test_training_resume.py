"""A train-all killed with SIGKILL in the middle of a stage resumes from that stage's last checkpoint when the
same command runs again, skips the stages that were complete, and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from core.config import load_config
from training.manifest import latest_run, list_runs, read_manifest

REPO = Path(__file__).resolve().parents[2]


def _train_all(home: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHIMED_HOME": str(home)}
    env.pop("CHIMED_FAULT_AFTER_STEPS", None)
    if fault:
        env["CHIMED_FAULT_AFTER_STEPS"] = fault
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "chimed",
            "train-all",
            "--profile",
            "tiny",
            "--stages",
            "base,cpt",
            "train.evaluate_after=false",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _logged_losses(run_dir: Path, stage: str) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "logs" / stage / "trainer_log.jsonl").open()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_killed_run_resumes_from_its_last_checkpoint(tiny_run, tmp_path, use_home):
    reference_home, reference_id = tiny_run
    home = use_home(tmp_path / "home")
    shutil.copytree(reference_home / "data", home / "data")
    cfg = load_config("tiny")
    save_steps = cfg.train.save_steps
    assert cfg.cpt.max_steps > save_steps + 2

    crashed = _train_all(home, fault=f"cpt:{save_steps + 2}")
    assert crashed.returncode == -9, crashed.stderr[-2000:]  # killed like kill -9, mid-stage
    (run,) = list_runs(cfg)
    run_dir = cfg.runs_dir / run["run_id"]
    assert not run["complete"] and latest_run(cfg) is None  # the app would not offer it yet
    assert list(run["stages"]) == ["base"]  # cpt is not in the manifest: it never finished
    assert not (run_dir / "cpt").exists() and (run_dir / ".partial" / "cpt" / f"checkpoint-{save_steps}").is_dir()
    base_finished = json.loads((run_dir / "base" / "stage.json").read_text())["completed"]

    resumed = _train_all(home)  # the very same command
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming the interrupted run {run['run_id']}" in resumed.stdout
    assert "base: complete, skipped" in resumed.stdout
    assert f"cpt: resuming from checkpoint-{save_steps}" in resumed.stdout
    assert json.loads((run_dir / "base" / "stage.json").read_text())["completed"] == base_finished

    manifest = read_manifest(cfg, run["run_id"])
    reference = json.loads((reference_home / "runs" / reference_id / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["base", "cpt"] and latest_run(cfg) == run["run_id"]
    assert manifest["data_sha256"] == reference["data_sha256"]
    assert manifest["stages"]["cpt"]["metrics"]["steps"] == reference["stages"]["cpt"]["metrics"]["steps"]
    assert not (run_dir / ".partial").exists()
    # the resumed stage continued the same optimisation: its logged losses after the checkpoint match the
    # uninterrupted tiny run's, step for step
    ours, theirs = _logged_losses(run_dir, "cpt"), _logged_losses(reference_home / "runs" / reference_id, "cpt")
    later = [s for s in ours if s > save_steps]
    assert later and all(abs(ours[s] - theirs[s]) < 1e-3 * abs(theirs[s]) for s in later)
