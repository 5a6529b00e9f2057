"""A training in the background: one at a time per home, its output in the run's folder, stopped with the
process that started it.

``./launch.sh`` (``chimed.py demo``) starts the demo run's train-all this way and then the app at once; the
Runs tab's "train the next round" starts the loop's round (``chimed.py next-round``) the same way. The home's
``training.json`` names the process and its run; a second start while it lives is refused with the running
one's id. The process runs in a session of its own, so the terminal's Ctrl-C reaches the starter only, which
stops it (:meth:`BackgroundTraining.stop`: SIGINT, as Ctrl-C in front of train-all would, so that a rerun
resumes it from its last checkpoint).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.config import Config
from core.errors import UserError
from core.files import write_json_atomic
from training.progress import TRAIN_LOG, process_alive

TRAINING_FILE = "training.json"  # in CHIMED_HOME: {"pid", "run_id", "command", "started", "log"[, "exit_code"]}
REPO = Path(__file__).resolve().parents[1]
STOP_WAIT_S = 60  # how long a stopped training may take to leave (it saves nothing more: resuming needs no save)


class TrainingRunning(UserError):
    """A training already runs in this home (the message names its run)."""

    def __init__(self, run_id: str):
        super().__init__(
            f"a training is already running in this home: run {run_id}; wait for it to finish "
            "(./launch.sh status shows it)"
        )


def running_training(cfg: Config) -> dict | None:
    """The home's background training while its process lives (None otherwise)."""
    path = cfg.home / TRAINING_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return record if "exit_code" not in record and process_alive(record.get("pid")) else None


@dataclass
class BackgroundTraining:
    """A training this process started (:func:`start_training`)."""

    run_id: str
    process: subprocess.Popen
    log: Path

    def stop(self, wait_s: float = STOP_WAIT_S) -> int | None:
        """Interrupt the training (its whole process group) and wait for it; killed when it does not leave."""
        if self.process.poll() is None:
            print(f"stopping the training of run {self.run_id} (rerun the same command to resume it)", flush=True)
            for sig, wait in ((signal.SIGINT, wait_s), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        return self.process.poll()


def start_training(cfg: Config, run_id: str, argv: list[str]) -> BackgroundTraining:
    """Start ``python -m chimed ARGV`` for run ``run_id`` in the background, its output in the run's
    ``train-all.log``; refused (:class:`TrainingRunning`) while another training of this home runs."""
    cfg.home.mkdir(parents=True, exist_ok=True)
    with open(cfg.home / ".training.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two starts at once: the second sees the first's record
        running = running_training(cfg)
        if running:
            raise TrainingRunning(running["run_id"])
        log_path = cfg.runs_dir / run_id / TRAIN_LOG
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "chimed", *argv]
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')} {' '.join(argv)}\n")
            log.flush()
            process = subprocess.Popen(
                command,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # Ctrl-C's own meaning (KeyboardInterrupt) even when the starter runs with SIGINT ignored (nohup, &)
                preexec_fn=_default_sigint,
            )
        record = {
            "pid": process.pid,
            "run_id": run_id,
            "command": argv,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "log": str(log_path),
        }
        write_json_atomic(cfg.home / TRAINING_FILE, record)
    training = BackgroundTraining(run_id, process, log_path)
    threading.Thread(target=_reap, args=(cfg, training, record), daemon=True, name=f"train-{run_id}").start()
    atexit.register(training.stop)  # a starter that leaves takes its training with it
    return training


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_on_sigterm() -> None:
    """SIGTERM in the starter means what Ctrl-C does (KeyboardInterrupt), so its training is stopped too."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _reap(cfg: Config, training: BackgroundTraining, record: dict) -> None:
    """Wait for the training and record how it ended (the process is not left a zombie)."""
    code = training.process.wait()
    path = cfg.home / TRAINING_FILE
    current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if current.get("pid") == record["pid"]:
        write_json_atomic(path, {**record, "exit_code": code, "ended": datetime.now(UTC).isoformat(timespec="seconds")})
