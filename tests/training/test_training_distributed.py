"""The distributed path on CPU: one tiny stage launched by train-all through `accelerate launch` on two
processes (gloo DDP). Both processes train; one checkpoint is written."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from core.config import load_config
from training.manifest import read_manifest
from training.modeling import load_stage

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cpt_on_two_cpu_processes(tiny_run, tmp_path, use_home):
    source_home, source_id = tiny_run
    home = use_home(tmp_path / "home")
    shutil.copytree(source_home / "data", home / "data")
    shutil.copytree(source_home / "runs" / source_id / "base", home / "runs" / source_id / "base")
    shutil.copy(source_home / "runs" / source_id / "manifest.json", home / "runs" / source_id / "manifest.json")

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chimed",
            "train-all",
            "--profile",
            "tiny",
            "--from",
            "cpt",
            "--resume-run",
            source_id,
            "--stages",
            "cpt",
            "--run-id",
            "ddp",
            "train.num_processes=2",
            f"train.main_process_port={_free_port()}",
            "train.evaluate_after=false",
        ],
        cwd=REPO,
        env={**os.environ, "CHIMED_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accelerate launch" in result.stdout and "--num_processes 2" in result.stdout

    cfg = load_config("tiny")
    run_dir = cfg.runs_dir / "ddp"
    processes = [json.loads(p.read_text()) for p in sorted((run_dir / "logs" / "cpt").glob("process_*.json"))]
    assert [p["rank"] for p in processes] == [0, 1]
    assert all(p["world_size"] == 2 and p["steps"] == cfg.cpt.max_steps for p in processes)

    metrics = read_manifest(cfg, "ddp")["stages"]["cpt"]["metrics"]
    assert metrics["world_size"] == 2
    # each optimizer step consumed one block batch per process
    assert metrics["train_tokens"] == 2 * cfg.cpt.max_steps * cfg.cpt.per_device_batch_size * cfg.cpt.block_size
    assert len(list((run_dir / "cpt").glob("*.safetensors"))) == 1
    assert not list((run_dir / "cpt").glob("checkpoint-*")) and not (run_dir / ".partial").exists()
    model, _ = load_stage(run_dir, "cpt", device="cpu")
    assert model.num_parameters() > 0
