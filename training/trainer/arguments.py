"""How a stage trains on this machine: the process and device checks, precision, the DeepSpeed ZeRO config
and the TrainingArguments built from the stage's schedule (``core.config.TrainingSchedule``) and
``cfg.train``."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainingArguments

from core.config import Config, TrainingSchedule
from core.errors import UserError
from core.files import write_json_atomic
from training.trainer.paths import StagePaths


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
        raise UserError(
            "train.bf16=true needs a CUDA GPU with bf16 and none is visible: "
            "set train.bf16=false to train in float32 on this machine"
        )
    if cfg.train.deepspeed_zero_stage and not torch.cuda.is_available():
        raise UserError(
            f"train.deepspeed_zero_stage={cfg.train.deepspeed_zero_stage} needs CUDA GPUs and none "
            "is visible: set train.deepspeed_zero_stage=0 to train without DeepSpeed"
        )


def training_dtype(cfg: Config) -> torch.dtype:
    """Weights in bf16 under DeepSpeed bf16 (it keeps fp32 master weights itself); float32 otherwise,
    where the Trainer's bf16 flag adds autocast on top."""
    return torch.bfloat16 if cfg.train.bf16 and cfg.train.deepspeed_zero_stage else torch.float32


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


def training_arguments(cfg: Config, section: TrainingSchedule, paths: StagePaths, args_cls=TrainingArguments, **extra):
    """TrainingArguments (or TRL's SFTConfig/DPOConfig via ``args_cls``) for one stage.

    ``section`` is the stage's config (cfg.model for base, cfg.cpt, cfg.sft, cfg.dpo): its schedule (learning
    rate and scheduler, epochs/max_steps, warmup, weight decay, batch sizes) comes from it; precision,
    logging, saving and DeepSpeed from ``cfg.train``.
    """
    return args_cls(
        output_dir=str(paths.work),
        learning_rate=section.learning_rate,
        num_train_epochs=section.epochs,
        max_steps=section.max_steps,
        warmup_steps=section.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=section.weight_decay,
        lr_scheduler_type=section.lr_scheduler_type,
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
        # DeepSpeed comes from `accelerate launch --deepspeed_config_file` (see training.launch); on a
        # machine without CUDA the processes (if several) talk over gloo
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        **extra,
    )
