"""What the four stages share: where a stage writes, its TrainingArguments, its callbacks (trainer_log.jsonl,
TensorBoard, fault injection), resuming from the last Trainer checkpoint, and the atomic finish.

A stage trains inside ``runs/<id>/.partial/<stage>/`` (Trainer checkpoints ``checkpoint-N`` land there),
saves its model to ``.partial/<stage>/final/`` with ``stage.json`` and ``loss.png``, and only then is
``final/`` renamed to ``runs/<id>/<stage>/``. A crash leaves no half checkpoint that looks whole, and the
next run of the same command resumes from the newest ``checkpoint-N``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import get_last_checkpoint

from training.config import Config
from training.data.files import write_json_atomic
from training.errors import UserError

STAGE_INFO = "stage.json"  # inside every finished stage dir: kind, parent, fingerprint, metrics
FAULT_ENV = "CHIMED_FAULT_AFTER_STEPS"  # "cpt:12" kills the process (SIGKILL) after step 12 of cpt


@dataclass(frozen=True)
class StagePaths:
    """Where one stage of one run reads and writes."""

    run_dir: Path
    stage: str

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


# --- device and precision --------------------------------------------------------------------


def process_state():
    """accelerate's view of this process (rank, world size); CPU-only machines use gloo between processes.

    Created here first, with ``cpu`` set on machines without CUDA, because accelerate keeps the first
    settings it was created with for the whole process.
    """
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def has_bf16_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def check_device_options(cfg: Config) -> None:
    """GPU-only settings on a machine without the GPU: one line naming the setting and the fix."""
    if cfg.train.bf16 and not has_bf16_gpu():
        raise UserError("train.bf16=true needs a CUDA GPU with bf16 and none is visible: "
                        "set train.bf16=false to train in float32 on this machine")
    if cfg.train.deepspeed_zero_stage and not torch.cuda.is_available():
        raise UserError(f"train.deepspeed_zero_stage={cfg.train.deepspeed_zero_stage} needs CUDA GPUs and none "
                        "is visible: set train.deepspeed_zero_stage=0 to train without DeepSpeed")


def deepspeed_config_path(run_dir: Path) -> Path:
    return Path(run_dir) / "deepspeed_zero2.json"


def write_deepspeed_config(cfg: Config, run_dir: Path) -> Path | None:
    """Write the run's DeepSpeed ZeRO config (stage from ``train.deepspeed_zero_stage``); None when off.

    Batch sizes, accumulation, clipping and precision are "auto": the Trainer fills them from the same
    TrainingArguments it uses itself, so the config tree stays the one source of those numbers.
    """
    stage = cfg.train.deepspeed_zero_stage
    if not stage:
        return None
    ds = {
        "zero_optimization": {
            "stage": stage,
            "allgather_partitions": True,
            "allgather_bucket_size": 2e8,
            "overlap_comm": True,
            "reduce_scatter": True,
            "reduce_bucket_size": 2e8,
            "contiguous_gradients": True,
        },
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
    }
    path = deepspeed_config_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, ds)
    return path


def training_arguments(cfg: Config, section, paths: StagePaths, args_cls=TrainingArguments, **extra):
    """TrainingArguments (or TRL's SFTConfig/DPOConfig via ``args_cls``) for one stage.

    ``section`` is the stage's config (cfg.model for base, cfg.cpt, cfg.sft, cfg.dpo): learning rate,
    epochs/max_steps, warmup, weight decay and batch sizes come from it; precision, logging, saving and
    DeepSpeed from ``cfg.train``.
    """
    return args_cls(
        output_dir=str(paths.work),
        learning_rate=section.learning_rate,
        num_train_epochs=section.epochs,
        max_steps=section.max_steps,
        warmup_steps=section.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=section.weight_decay,
        lr_scheduler_type="cosine",
        per_device_train_batch_size=section.per_device_batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        seed=cfg.train.seed,
        bf16=cfg.train.bf16,
        activation_checkpointing=cfg.train.gradient_checkpointing,
        dataloader_num_workers=cfg.train.dataloader_num_workers,
        logging_steps=cfg.train.logging_steps,
        save_strategy="steps",
        save_steps=cfg.train.save_steps,
        save_total_limit=cfg.train.save_total_limit,
        # TensorBoard is attached by stage_callbacks so that its events land under logs/<stage>
        report_to=[r for r in cfg.train.report_to if r != "tensorboard"] or "none",
        include_num_input_tokens_seen="non_padding",
        # a NaN or infinite loss must stop the stage (NonFiniteGuard), not be averaged away in the logs
        logging_nan_inf_filter=False,
        disable_tqdm=False,
        # DeepSpeed comes from `accelerate launch --deepspeed_config_file` (see training.pipeline); on a
        # machine without CUDA the processes (if several) talk over gloo
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        **extra,
    )


# --- callbacks ---------------------------------------------------------------------------------


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
        record = {"stage": self.stage, "step": state.global_step, "max_steps": state.max_steps,
                  **{k: v for k, v in logs.items() if isinstance(v, (int, float))},
                  "elapsed_s": round(elapsed, 2),
                  "remaining_s": round(remaining, 2) if remaining is not None else None}
        append_jsonl(self.path, record)


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
        if grads and not torch.stack([torch.isfinite(g).all() for g in grads]).all():
            raise self.error(f"a non-finite gradient at step {state.global_step + 1}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise self.error(f"{key} {value} at step {state.global_step}")

    def error(self, what: str) -> NonFiniteError:
        return NonFiniteError(f"{self.stage}: {what}; the stage stopped and is not complete (its last checkpoint "
                              "is kept): lower the stage's learning_rate, check the data, or run the pre-flight "
                              "on the model, then rerun the same command to resume")


def check_training_loss(stage: str, loss: float) -> None:
    """A finished stage's mean loss must be a real number: NaN, infinite or exactly 0.0 cannot be right."""
    if not math.isfinite(loss) or loss == 0.0:
        raise NonFiniteError(f"{stage}: training loss {loss} cannot be right (NaN, infinite or exactly 0.0); the "
                             "stage is not marked complete: check the model with the pre-flight and the data")


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
    callbacks: list[TrainerCallback] = [TrainerLogCallback(paths.trainer_log, paths.stage),
                                        NonFiniteGuard(paths.stage)]
    if "tensorboard" in cfg.train.report_to:
        tensorboard = TensorBoardCallback()
        tensorboard.logging_dir = str(paths.logs / "tensorboard")
        callbacks.append(tensorboard)
    fault = fault_injection(paths.stage)
    if fault:
        callbacks.append(fault)
    return callbacks


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")


# --- train, resume, finish ----------------------------------------------------------------------


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
    checkpoint = get_last_checkpoint(str(paths.work)) if paths.work.is_dir() else None
    if checkpoint:
        print(f"{paths.stage}: resuming from {Path(checkpoint).name}")
        if trainer.is_world_process_zero():
            append_jsonl(paths.trainer_log, {"stage": paths.stage, "event": "resume",
                                             "from_checkpoint": Path(checkpoint).name})
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
    }
    _record_process(trainer, paths, metrics)
    return metrics


def _checkpoint_tokens(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("num_input_tokens_seen", 0))


def _record_process(trainer, paths: StagePaths, metrics: dict) -> None:
    """One file per training process (logs/<stage>/process_<rank>.json): who trained, how far."""
    rank = trainer.args.process_index
    record = {"rank": rank, "world_size": trainer.args.world_size, "steps": metrics["steps"],
              "device": str(trainer.args.device), "finished": _now()}
    write_json_atomic(paths.logs / f"process_{rank}.json", record)


def finish_stage(paths: StagePaths, save, *, kind: str, parent: str | None, fingerprint: str,
                 metrics: dict, is_main: bool = True) -> None:
    """Save the stage through ``save(staging_dir)``, add stage.json and loss.png, rename into place.

    Every process calls this (DeepSpeed gathers weights collectively inside ``save``); only the main
    process writes the files and renames.
    """
    save(paths.staging)
    if not is_main:
        return
    plot_loss(paths.trainer_log, paths.staging / "loss.png", paths.stage)
    info = {"stage": paths.stage, "kind": kind, "parent": parent, "fingerprint": fingerprint,
            "metrics": metrics, "completed": _now()}
    write_json_atomic(paths.staging / STAGE_INFO, info)
    if paths.final.exists():  # an older, stale version of this stage
        shutil.rmtree(paths.final)
    os.replace(paths.staging, paths.final)
    shutil.rmtree(paths.work, ignore_errors=True)
    if not any(paths.work.parent.iterdir()):  # no other stage half-trained
        paths.work.parent.rmdir()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def plot_loss(log_path: Path, png_path: Path, stage: str) -> None:
    """Training-loss curve of a stage from its trainer_log.jsonl (a resumed stage is drawn once)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_step: dict[int, float] = {}
    if Path(log_path).is_file():
        for line in Path(log_path).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "loss" in record:
                by_step[record["step"]] = record["loss"]  # after a resume, the later value wins
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


# --- data ------------------------------------------------------------------------------------------


def pack_into_blocks(texts: list[str], tokenizer, block_size: int):
    """Tokenize documents (each closed by the eos token), concatenate and cut into ``block_size`` blocks.

    Next-token prediction on packed blocks, as in the paper's DCPT; the remainder shorter than a block
    is dropped. Returns a ``datasets.Dataset`` with ``input_ids``.
    """
    from datasets import Dataset

    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for start in range(0, len(texts), 1000):
        batch = tokenizer(texts[start:start + 1000], add_special_tokens=False)["input_ids"]
        for ids in batch:
            stream.extend(ids)
            stream.append(eos)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise UserError(f"the corpus has {len(stream)} tokens, fewer than one block of {block_size}: "
                        "add text or lower the stage's block_size")
    blocks = [stream[i * block_size:(i + 1) * block_size] for i in range(n_blocks)]
    return Dataset.from_dict({"input_ids": blocks})


def causal_lm_collator(tokenizer):
    """Labels = input ids (the model shifts them); blocks are full, so nothing is padded."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer, mlm=False)


def next_token_trainer(cfg: Config, section, paths: StagePaths, model, tokenizer, texts: list[str]):
    """The Trainer of base pretraining and CPT: next-token prediction on packed blocks of
    ``section.block_size`` tokens, with the section's schedule and the stage's callbacks."""
    from transformers import Trainer

    return Trainer(
        model=model,
        args=training_arguments(cfg, section, paths),
        train_dataset=pack_into_blocks(texts, tokenizer, section.block_size),
        data_collator=causal_lm_collator(tokenizer),
        processing_class=tokenizer,
        callbacks=stage_callbacks(cfg, paths),
    )


def training_dtype(cfg: Config) -> torch.dtype:
    """Weights in bf16 under DeepSpeed bf16 (it keeps fp32 master weights itself); float32 otherwise,
    where the Trainer's bf16 flag adds autocast on top."""
    return torch.bfloat16 if cfg.train.bf16 and cfg.train.deepspeed_zero_stage else torch.float32
