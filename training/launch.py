"""Scale-out: each stage on every process through ``accelerate launch`` (DDP, DeepSpeed ZeRO, several machines).

Launched when DeepSpeed is on or more than one process takes part (several GPUs, several machines, or several
CPU processes over gloo); the launched processes run ``python -m training.pipeline --run-dir D --stage S``,
read the run's saved config and train the same stage module. ``--dry-run`` prints these commands.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import yaml

from core.config import Config
from training.data.build import data_is_built
from training.trainer.arguments import deepspeed_config_path


def processes_per_machine(cfg: Config) -> int:
    """``train.num_processes`` (0 = one per visible GPU, 1 on a CPU machine)."""
    import torch

    return cfg.train.num_processes or max(torch.cuda.device_count(), 1)


def launch_command(cfg: Config, run_path: Path, stage: str) -> list[str] | None:
    """The ``accelerate launch`` command that trains ``stage`` on every process, or None to train in-process.

    Launched when DeepSpeed is on or more than one process takes part (several GPUs, several machines,
    or several CPU processes over gloo). Multi-node: every machine runs the same train-all with its own
    ``train.machine_rank``; ``train.main_process_ip``/``main_process_port`` name machine 0.
    """
    per_machine = processes_per_machine(cfg)
    total = per_machine * cfg.train.num_machines
    zero = cfg.train.deepspeed_zero_stage
    if not zero and total == 1:
        return None
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate) if accelerate.exists() else "accelerate", "launch"]
    if zero:
        # precision, accumulation and clipping live in the DeepSpeed config ("auto": the Trainer fills them)
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(deepspeed_config_path(run_path))]
        if cfg.train.num_machines > 1:
            cmd += ["--deepspeed_multinode_launcher", "standard"]
    else:
        # accelerate's multi-process launcher (torchrun) is called --multi_gpu; without CUDA the stages
        # ask for CPU and the processes use gloo
        cmd += ["--multi_gpu", "--mixed_precision", "bf16" if cfg.train.bf16 else "no"]
    cmd += [
        "--num_processes",
        str(total),
        "--num_machines",
        str(cfg.train.num_machines),
        "--machine_rank",
        str(cfg.train.machine_rank),
        "--main_process_ip",
        cfg.train.main_process_ip,
        "--main_process_port",
        str(cfg.train.main_process_port),
        "--dynamo_backend",
        "no",
        "-m",
        "training.pipeline",
        "--run-dir",
        str(run_path),
        "--stage",
        stage,
    ]
    return cmd


def launch_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def print_dry_run(cfg: Config, plan: list[str], reuse: dict[str, str], run_id: str, problems: list) -> None:
    """The resolved config, the stages and the exact launch command of each; nothing is written."""
    run_path = cfg.runs_dir / run_id
    print("# resolved config")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True).rstrip())
    print(f"# run {run_id}: {run_path}")
    print(f"# data: {cfg.data_dir}" + ("" if data_is_built(cfg) else " (missing: train-all builds it first)"))
    for stage, source in reuse.items():
        print(f"# reuse {stage} from run {source}")
    if cfg.train.deepspeed_zero_stage:
        print(
            f"# DeepSpeed ZeRO-{cfg.train.deepspeed_zero_stage} config: "
            f"{run_path / 'deepspeed_zero2.json'} (written when the run starts)"
        )
    for i, stage in enumerate(plan, 1):
        if stage == "base" and cfg.model.path:
            how = f"link {run_path / 'base'} -> {cfg.model.path}"
        else:
            command = launch_command(cfg, run_path, stage)
            how = shlex.join(command) if command else "in this process (one device)"
        print(f"stage {i}/{len(plan)} {stage}: {how}")
    for problem in problems:
        print(f"# warning: {problem}")
