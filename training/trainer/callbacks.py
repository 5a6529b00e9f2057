"""What watches a stage while it trains: trainer_log.jsonl, the non-finite guard, no checkpoint after the
last step, TensorBoard under ``logs/<stage>`` and, for the resume tests, fault injection."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from core.config import Config
from core.errors import UserError
from training.trainer.paths import StagePaths

FAULT_ENV = "CHIMED_FAULT_AFTER_STEPS"  # "cpt:12" kills the process (SIGKILL) after step 12 of cpt


class TrainerLogCallback(TrainerCallback):
    """Appends every Trainer log (loss, lr, tokens seen, elapsed and remaining time) to trainer_log.jsonl."""

    def __init__(self, path: Path, stage: str):
        self.path, self.stage = Path(path), stage
        self.start = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self.start_step = state.global_step
        self.start_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        elapsed = time.time() - self.start
        done = state.global_step - self.start_step
        remaining = (state.max_steps - state.global_step) * elapsed / done if done else None
        record = {
            "stage": self.stage,
            "step": state.global_step,
            "max_steps": state.max_steps,
            **{k: v for k, v in logs.items() if isinstance(v, (int, float))},
            "elapsed_s": round(elapsed, 2),
            "remaining_s": round(remaining, 2) if remaining is not None else None,
        }
        append_jsonl(self.path, record)


class NoFinalCheckpoint(TrainerCallback):
    """The Trainer writes a whole checkpoint (weights, optimizer, scheduler) after the last step, which the
    stage then saves again as its model and deletes: skip it, so that the stage is saved once. The
    checkpoints every ``train.save_steps`` before it stay, for resuming."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False
        return control


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")


class NonFiniteError(UserError):
    """A NaN or infinite loss or gradient: the stage stops and is not marked complete."""


class NonFiniteGuard(TrainerCallback):
    """Stops a stage at the first non-finite gradient (checked before every optimizer step, so no update is
    ever made from it and the last saved checkpoint stays good) and at a non-finite logged loss or gradient
    norm (what DeepSpeed, which keeps the gradients itself, still shows)."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
        # one fused norm per gradient (a NaN or infinity anywhere in one makes its norm non-finite), checked
        # with a single synchronisation: cheaper than a check per tensor at every step
        if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            raise self.error(f"a non-finite gradient at step {state.global_step + 1}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise self.error(f"{key} {value} at step {state.global_step}")

    def error(self, what: str) -> NonFiniteError:
        return NonFiniteError(
            f"{self.stage}: {what}; the stage stopped and is not complete (its last checkpoint "
            "is kept): lower the stage's learning_rate, check the data, or run the pre-flight "
            "on the model, then rerun the same command to resume"
        )


def check_training_loss(stage: str, loss: float) -> None:
    """A finished stage's mean loss must be a real number: NaN, infinite or exactly 0.0 cannot be right."""
    if not math.isfinite(loss) or loss == 0.0:
        raise NonFiniteError(
            f"{stage}: training loss {loss} cannot be right (NaN, infinite or exactly 0.0); the "
            "stage is not marked complete: check the model with the pre-flight and the data"
        )


class FaultInjectionCallback(TrainerCallback):
    """Kill this process (SIGKILL, as ``kill -9``) after step N of a stage: ``CHIMED_FAULT_AFTER_STEPS=cpt:N``.

    Exists so the resume path can be tested against a real crash rather than a polite exception.
    """

    def __init__(self, stage: str, after_steps: int):
        self.stage, self.after_steps = stage, after_steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.after_steps:
            print(f"fault injection: killing {self.stage} after step {state.global_step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def fault_injection(stage: str) -> FaultInjectionCallback | None:
    spec = os.environ.get(FAULT_ENV, "")
    if ":" not in spec:
        return None
    target, steps = spec.split(":", 1)
    return FaultInjectionCallback(stage, int(steps)) if target == stage else None


def stage_callbacks(cfg: Config, paths: StagePaths) -> list[TrainerCallback]:
    """trainer_log.jsonl, the non-finite guard, TensorBoard under logs/<stage> and, when asked for, fault
    injection."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    callbacks: list[TrainerCallback] = [
        TrainerLogCallback(paths.trainer_log, paths.stage),
        NonFiniteGuard(paths.stage),
        NoFinalCheckpoint(),
    ]
    if "tensorboard" in cfg.train.report_to:
        tensorboard = TensorBoardCallback()
        tensorboard.logging_dir = str(paths.logs / "tensorboard")
        callbacks.append(tensorboard)
    fault = fault_injection(paths.stage)
    if fault:
        callbacks.append(fault)
    return callbacks
