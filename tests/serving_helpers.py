"""What only the tests need around serving: a running model pool's processes and a contestant's logits, and a
``python -m chimed serve`` process to talk to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from openai import OpenAI

from app.contestants import Contestant
from app.openai_server import READY
from app.serving.pool import ModelPool, prompt_ids

REPO = Path(__file__).resolve().parents[1]


def worker_pids(pool: ModelPool) -> list[int]:
    """Process ids of the loaded models' worker processes."""
    return [root.worker.process.pid for root in pool._loaded_roots()]


def next_token_logits(pool: ModelPool, contestant: Contestant, messages: list[dict]) -> torch.Tensor:
    """The contestant's logits for the token after ``messages``, as the pool serves it (adapters and all)."""
    root, chain = pool._root_for(contestant)
    with root.lock:
        prepared = pool._prepare(root, chain, contestant)
        ids = prompt_ids(prepared.tokenizer, messages)
        return root.worker.request("logits", prepared.adapters, ids)


@contextmanager
def chimed_serve(home: Path, run_id: str, log_path: Path, *overrides: str, timeout_s: float = 180):
    """``python -m chimed serve --profile tiny --run RUN --port 0 [section.key=value ...]`` in ``home``; yields
    its base URL (from the line it prints once it listens) and stops it afterwards."""
    env = dict(os.environ, CHIMED_HOME=str(home))
    env.pop("CHIMED_DATABASE_URL", None)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chimed", "serve", "--profile", "tiny", "--run", run_id, "--port", "0", *overrides],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while not (ready := READY.search(log_path.read_text(encoding="utf-8", errors="replace"))):
                if proc.poll() is not None:
                    pytest.fail(f"serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"serve did not listen within {timeout_s} s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            yield ready.group(2)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def serve_copy_of(tiny_run: tuple[Path, str], folder: Path, *overrides: str):
    """``serve`` on a private copy of the tiny run (``folder``/home, its log ``folder``/serve.log), without
    accounts; yields (base URL, home, run id)."""
    source, run_id = tiny_run
    home = folder / "home"
    shutil.copytree(source, home, symlinks=True)
    with chimed_serve(home, run_id, folder / "serve.log", *overrides) as url:
        yield url, home, run_id


def no_account_client(url: str) -> OpenAI:
    """The official client for a server without accounts (any key does)."""
    return OpenAI(base_url=url, api_key="no accounts: any key", max_retries=0, timeout=120)


def stage_loader(home: Path, run_id: str):
    """``load(stage)``: (model, tokenizer) of the run's stage loaded with transformers in this process (LoRA
    merged, float32), each stage once."""
    from training.modeling import load_stage

    loaded = {}

    def load(stage: str):
        if stage not in loaded:
            loaded[stage] = load_stage(home / "runs" / run_id, stage, device="cpu", dtype=torch.float32)
        return loaded[stage]

    return load


def write_lm_eval_task(folder: Path, task: str, rows: list[dict], spec: str) -> Path:
    """An lm-eval task directory: ``rows`` as a local jsonl (its test split) and ``task``.yaml reading it, with
    ``spec`` (YAML lines: output type, prompts, metrics) after the dataset's lines; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{task}.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    (folder / f"{task}.yaml").write_text(
        f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n{spec}",
        encoding="utf-8",
    )
    return folder
