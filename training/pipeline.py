"""``./launch.sh train-all``: base -> cpt -> sft -> dpo into ``runs/<run_id>/``, then evaluation and registration.

The orchestrator (this module, one process) decides which stages to run, keeps ``manifest.json`` and
``run_state.json`` up to date and, per stage, either runs the stage module in this process (tiny/demo on
one device) or launches it through ``accelerate launch`` (several processes or machines, DeepSpeed): the
launched processes run ``python -m training.pipeline --run-dir D --stage S``, read the run's saved config
and train the same stage module under DDP / DeepSpeed ZeRO.

Resuming: every stage trains in ``.partial/<stage>/`` with Trainer checkpoints and is renamed into place
when done. Rerunning the same command (same ``--run-id``, or none: the newest incomplete run with the same
profile and config is picked up) skips stages whose recorded fingerprint (config section, data hashes,
parent) still matches and continues an interrupted stage from its last checkpoint.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

from training.config import STAGES, Config, config_from_dict
from training.data.files import sha256_json, write_json_atomic
from training.errors import UserError
from training.model_import import CONVERTIBLE, convert_checkpoint, detect_layout
from training.modeling import CHAT_TEMPLATE_POLICIES
from training.preflight import preflight
from training.manifest import (
    MANIFEST,
    RUN_STATE,
    data_hashes,
    latest_run,
    list_runs,
    new_manifest,
    read_manifest_at,
    read_run_state,
    stage_entry,
    write_manifest,
)

__all__ = ["train_all", "latest_run", "list_runs", "launch_command"]

PARENT = {"base": None, "cpt": "base", "sft": "cpt", "dpo": "sft"}
# the data each stage trains from (base: its tokenizer also reads cpt.jsonl and sft.jsonl)
STAGE_DATA = {"base": ("base", "cpt", "sft"), "cpt": ("cpt",), "sft": ("sft",), "dpo": ("dpo",)}
STAGE_SECTION = {"base": "model", "cpt": "cpt", "sft": "sft", "dpo": "dpo"}


def train_all(cfg: Config, from_stage: str | None = None, resume_run: str | None = None,
              stages: list[str] | None = None, dry_run: bool = False, run_id: str | None = None) -> str:
    """Train a run and return its id (see the module docstring; DESIGN.md for the run layout).

    ``from_stage`` + ``resume_run``: a new run reusing ``resume_run``'s stages before ``from_stage``.
    ``resume_run`` alone: continue that run. ``stages``: a subset to run. ``run_id``: name of the run;
    an existing one is resumed. ``dry_run``: print the resolved config and launch commands, train nothing.
    """
    plan, reuse = _plan(cfg, from_stage, resume_run, stages)
    problems = _check_setup(cfg, plan)
    if dry_run:
        return _print_dry_run(cfg, plan, reuse, resume_run, run_id, problems)
    if problems:
        raise problems[0]
    # a checkpoint used where it lies is checked before anything is written (a converted one once converted)
    linked_base_check = _preflight_linked_base(cfg) if "base" in plan and cfg.model.path else None
    is_main_machine = cfg.train.machine_rank == 0
    if cfg.train.num_machines > 1 and not run_id:
        raise UserError("train.num_machines > 1 needs --run-id NAME (the same on every machine)")
    if is_main_machine:
        _export_clinician_pairs(cfg)
    _ensure_data(cfg, is_main_machine)

    run_id, resuming = _choose_run(cfg, run_id, resume_run, from_stage, plan)
    run_path = cfg.runs_dir / run_id
    hashes = data_hashes(cfg)
    if is_main_machine:
        _open_run(cfg, run_path, run_id, hashes, plan, reuse, resuming, parent_run=resume_run if reuse else None)
    print(f"run {run_id}: {run_path}" + (" (resuming)" if resuming else ""), flush=True)

    for i, stage in enumerate(plan, 1):
        print(f"stage {i}/{len(plan)} {stage}", flush=True)
        _run_or_skip_stage(cfg, run_path, stage, hashes, is_main_machine, linked_base_check)
        gc.collect()

    if is_main_machine:
        state = read_run_state(run_path)
        write_json_atomic(run_path / RUN_STATE, {**state, "complete": True})
        _evaluate_and_register(cfg, run_id)
    print(f"run {run_id} complete: {run_path / MANIFEST}", flush=True)
    return run_id


# --- planning -----------------------------------------------------------------------------------------


def _plan(cfg: Config, from_stage, resume_run, stages) -> tuple[list[str], dict[str, str]]:
    """Stages to train, in order, and ``{stage: source_run}`` of the earlier stages reused from another run."""
    requested = list(STAGES) if not stages else list(stages)
    unknown = [s for s in requested if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r} in --stages: choose from {', '.join(STAGES)}")
    if from_stage and from_stage not in STAGES:
        raise UserError(f"unknown stage {from_stage!r} for --from: choose from {', '.join(STAGES)}")
    reuse: dict[str, str] = {}
    if from_stage and from_stage != "base":
        if not resume_run:
            raise UserError(f"--from {from_stage} needs --resume-run ID: the run whose earlier stages are reused")
        reuse = {s: resume_run for s in STAGES[:STAGES.index(from_stage)]}
        requested = [s for s in requested if STAGES.index(s) >= STAGES.index(from_stage)]
    plan = [s for s in STAGES if s in requested]
    if not plan:
        raise UserError("nothing to train: --stages and --from leave no stage")
    return plan, reuse


def _check_setup(cfg: Config, plan: list[str]) -> list[UserError]:
    """What would stop the run: GPU-only options without a GPU, a setting out of range, a base model that
    is not one."""
    from training.stages.common import check_device_options

    problems = []
    try:
        check_device_options(cfg)
    except UserError as err:
        problems.append(err)
    if cfg.model.chat_template not in CHAT_TEMPLATE_POLICIES:
        problems.append(UserError(f"model.chat_template={cfg.model.chat_template!r}: choose "
                                  f"{' or '.join(CHAT_TEMPLATE_POLICIES)}"))
    if cfg.cpt.medical_repeats < 1:
        problems.append(UserError(f"cpt.medical_repeats={cfg.cpt.medical_repeats}: it must be at least 1 "
                                  "(each medical record of ChiMed-CPT at least once per epoch)"))
    if cfg.profile == "paper" or cfg.model.path:
        try:
            check_base_model_dir(cfg)
        except UserError as err:
            problems.append(err)
            return problems
    problems += _check_lora_targets(cfg, plan)
    return problems


def _check_lora_targets(cfg: Config, plan: list[str]) -> list[UserError]:
    """Each LoRA stage's ``target_modules`` against the linear layers the base really has, before anything
    trains (on a weightless copy of the architecture; remote code is checked when its stage loads it)."""
    from training.stages.lora import resolve_lora_targets

    sections = [(s, getattr(cfg, s).lora) for s in ("cpt", "sft", "dpo")
                if s in plan and (s != "cpt" or cfg.cpt.use_lora)]
    skeleton = _weightless_base(cfg) if sections else None
    problems = []
    for stage, lora in sections if skeleton is not None else []:
        try:
            resolve_lora_targets(skeleton, list(lora.target_modules), f"{stage}.lora.target_modules")
        except UserError as err:
            problems.append(err)
    return problems


def _weightless_base(cfg: Config):
    """The base architecture on the meta device (no memory, no weights read), or None for remote code."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    path = Path(cfg.model.path).expanduser() if cfg.model.path else None
    layout = detect_layout(path) if path else "pretrained here"
    with torch.device("meta"):
        if layout == "native":
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(path)))
        if layout in ("remote", "baichuan-alibi"):
            return None
        # pretrained here, or converted: LLaMA, whose layer names do not depend on its size
        return LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=16,
                                            num_hidden_layers=2, num_attention_heads=2))


def check_base_model_dir(cfg: Config) -> None:
    """``model.path`` must be a local Hugging Face causal-LM directory (checked from its config alone)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not cfg.model.path:
        raise UserError("model.path is empty: the paper profile starts from a local Hugging Face causal-LM "
                        "directory; pass model.path=/models/Baichuan-7B")
    path = Path(cfg.model.path).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"model.path={path} is not a Hugging Face model directory (no config.json there); "
                        "set it to a local causal-LM checkpoint such as /models/Baichuan-7B")
    layout = detect_layout(path)
    if layout in CONVERTIBLE.values():
        return  # converted to its native architecture: its own modelling code never runs
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if layout in ("remote", "baichuan-alibi") and "AutoModelForCausalLM" in raw.get("auto_map", {}):
        if not cfg.model.trust_remote_code:
            raise UserError(f"model.path={path} ships its own modelling code ({layout} layout, which cannot be "
                            "converted to a native architecture): set model.trust_remote_code=true if you trust "
                            "it; it is used only if it passes the pre-flight")
        return
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"model.path={path}: its config.json does not load ({str(err).splitlines()[0]})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"model.path={path} is a {config.model_type!r} model, not a causal language model: "
                        "point it at a decoder-only LM (LLaMA, Baichuan, Qwen, ...)")


def _export_clinician_pairs(cfg: Config) -> None:
    """The loop: judgments not yet exported become a new file in the collected-pairs folder, so the data
    fingerprint changes and ChiMed-DPO is rebuilt with them (held-out comparisons go to the eval set)."""
    from preference_store.export import export_pairs

    url = cfg.database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return  # no store yet: nobody has judged anything
    summary = export_pairs(cfg)
    if summary.path is not None:
        print(f"preferences: exported {len(summary.pair_ids)} new clinician pairs ({summary.train} train, "
              f"{summary.heldout} held out) to {summary.path}", flush=True)


def _ensure_data(cfg: Config, is_main_machine: bool) -> None:
    """train-all builds ChiMed when it is missing (only the main machine builds)."""
    from training.data.build import build_chimed, data_is_built

    if data_is_built(cfg):
        return
    if not is_main_machine:
        raise UserError(f"no ChiMed data in {cfg.data_dir}: run ./launch.sh build-data on a filesystem all "
                        "machines share before starting machine_rank > 0")
    print(f"data: {cfg.data_dir} is missing, building it first (./launch.sh build-data)", flush=True)
    build_chimed(cfg, strict=cfg.data.strict)


def _choose_run(cfg: Config, run_id, resume_run, from_stage, plan) -> tuple[str, bool]:
    """(run id, whether it resumes an existing run)."""
    if run_id:
        return run_id, (cfg.runs_dir / run_id / MANIFEST).is_file()
    if resume_run and not (from_stage and from_stage != "base"):
        if not (cfg.runs_dir / resume_run / MANIFEST).is_file():
            raise UserError(f"--resume-run {resume_run}: no such run under {cfg.runs_dir}")
        return resume_run, True
    if not resume_run:
        for run in list_runs(cfg):
            state = read_run_state(cfg.runs_dir / run["run_id"])
            if (not run["complete"] and run["profile"] == cfg.profile and run["config_sha256"] == cfg.sha256()
                    and state.get("requested_stages") == plan and not run["parent_run"]):
                print(f"resuming the interrupted run {run['run_id']} (same profile and config)", flush=True)
                return run["run_id"], True
    return _new_run_id(cfg), False


def _new_run_id(cfg: Config) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id, n = stamp, 1
    while (cfg.runs_dir / run_id).exists():
        n += 1
        run_id = f"{stamp}-{n}"
    return run_id


def _open_run(cfg: Config, run_path: Path, run_id: str, hashes: dict, plan: list[str], reuse: dict,
              resuming: bool, parent_run: str | None) -> None:
    """Create (or reopen) the run dir: config.json, run_state.json, manifest.json, reused stages."""
    run_path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_path / "config.json", cfg.to_dict())
    from training.stages.common import write_deepspeed_config

    write_deepspeed_config(cfg, run_path)
    if resuming:
        manifest = read_manifest_at(run_path)
        if manifest["profile"] != cfg.profile:
            raise UserError(f"run {run_id} was trained with --profile {manifest['profile']}, not {cfg.profile}: "
                            "use that profile or a new --run-id")
        manifest.update(config_sha256=cfg.sha256(), data_sha256=hashes)
        state = read_run_state(run_path)
        reuse = {**state.get("reused", {}), **reuse}
    else:
        manifest = new_manifest(cfg, run_id, hashes, parent_run=parent_run)
    for stage, source in reuse.items():
        if stage not in manifest["stages"]:
            manifest = _reuse_stage(cfg, source, run_path, stage, manifest)
    requested = sorted(set(plan) | set(reuse), key=STAGES.index)
    write_json_atomic(run_path / RUN_STATE, {"requested_stages": plan, "stages": requested, "reused": reuse,
                                             "complete": False})
    write_manifest(run_path, manifest)


def _reuse_stage(cfg: Config, source_run: str, run_path: Path, stage: str, manifest: dict) -> dict:
    """Bring a finished stage of another run into this one: hard links (no copy of the weights)."""
    source_path = cfg.runs_dir / source_run
    source = read_manifest_at(source_path)
    if stage not in source["stages"]:
        raise UserError(f"--resume-run {source_run} has no complete '{stage}' stage to reuse: "
                        f"its stages are {', '.join(source['stages']) or 'none'}")
    src = source_path / source["stages"][stage]["path"]
    dst = run_path / stage
    if dst.is_symlink() or dst.exists():
        shutil.rmtree(dst) if not dst.is_symlink() else dst.unlink()
    if src.is_symlink():  # paper base: a link to the user's model directory
        os.symlink(os.readlink(src), dst, target_is_directory=True)
    else:
        shutil.copytree(src, dst, copy_function=_link_or_copy)
    entry = dict(source["stages"][stage], path=stage)
    manifest["stages"][stage] = entry
    if stage == "dpo":
        manifest["dpo_pair_ids"] = source.get("dpo_pair_ids", [])
    print(f"{stage}: reused from run {source_run}", flush=True)
    return manifest


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)
    return dst


# --- running one stage ---------------------------------------------------------------------------------


def stage_fingerprint(cfg: Config, stage: str, hashes: dict, parent_fingerprint: str | None) -> str:
    """Hash of what a stage's weights depend on: its config section, seed/precision, data, parent."""
    payload = {
        "stage": stage,
        "config": cfg.to_dict()[STAGE_SECTION[stage]],
        "seed": cfg.train.seed,
        "bf16": cfg.train.bf16,
        "data": {split: hashes[split] for split in STAGE_DATA[stage]},
        "parent": parent_fingerprint,
    }
    return sha256_json(payload)


def recorded_fingerprint(run_path: Path, stage: str) -> str | None:
    """The fingerprint a finished stage was trained with (a linked paper base: its target path)."""
    from training.stages.common import read_stage_info

    path = run_path / stage
    if path.is_symlink() and stage == "base":
        return hashlib.sha256(f"link:{os.readlink(path)}".encode()).hexdigest()
    info = read_stage_info(path)
    return info["fingerprint"] if info else None


def _run_or_skip_stage(cfg: Config, run_path: Path, stage: str, hashes: dict, is_main_machine: bool,
                       linked_base_check: dict | None = None) -> None:
    from training.stages.common import STAGE_INFO, prepare_work_dir, read_stage_info, stage_paths

    paths = stage_paths(run_path, stage)
    if stage == "base" and cfg.model.path:
        if detect_layout(Path(cfg.model.path).expanduser()) in CONVERTIBLE.values():
            _convert_base(cfg, paths, is_main_machine)
        else:
            _link_base(cfg, paths, is_main_machine, linked_base_check)
        return
    parent = PARENT[stage]
    parent_fp = recorded_fingerprint(run_path, parent) if parent else None
    if parent and parent_fp is None:
        raise UserError(f"stage {stage} needs a finished '{parent}' stage in run {run_path.name}: include "
                        f"{parent} in --stages or reuse it with --from {stage} --resume-run ID")
    fingerprint = stage_fingerprint(cfg, stage, hashes, parent_fp)
    reused = read_run_state(run_path).get("reused", {})
    done = read_stage_info(paths.final)
    if done and (done["fingerprint"] == fingerprint or stage in reused):
        print(f"{stage}: complete, skipped", flush=True)
    else:
        if done:
            print(f"{stage}: trained from another config or data, retraining", flush=True)
        if is_main_machine:
            prepare_work_dir(paths, fingerprint)
        started = time.time()
        command = launch_command(cfg, run_path, stage)
        if command:
            print("launch: " + shlex.join(command), flush=True)
            result = subprocess.run(command, env=_launch_env(), check=False)
            if result.returncode != 0:
                raise UserError(f"stage {stage} failed in its launched processes (exit {result.returncode}); "
                                "see their output above, then rerun the same command to resume")
        else:
            stage_runners()[stage](cfg, paths, fingerprint)
        done = read_stage_info(paths.final)
        if is_main_machine:  # the stage's whole wall time: loading, data preparation, training, saving
            done["metrics"]["wall_s"] = round(time.time() - started, 1)
            if stage == "base":  # the base pretrained here passes the same pre-flight as one brought in
                done["metrics"]["preflight"] = preflight(paths.final, setting=f"runs/{run_path.name}/base")
            write_json_atomic(paths.final / STAGE_INFO, done)
    if is_main_machine:
        _record_stage(run_path, stage, done)


def _record_stage(run_path: Path, stage: str, info: dict) -> None:
    manifest = read_manifest_at(run_path)
    manifest["stages"][stage] = stage_entry(stage, info["kind"], info["parent"], info["metrics"])
    if stage == "dpo":
        manifest["dpo_pair_ids"] = json.loads((run_path / stage / "pair_ids.json").read_text(encoding="utf-8"))
    write_manifest(run_path, manifest)


def _preflight_linked_base(cfg: Config) -> dict | None:
    """The pre-flight of ``model.path`` when it is used where it lies (a native architecture, or remote code
    the user trusts); a legacy layout is checked after its conversion instead."""
    path = Path(cfg.model.path).expanduser()
    if detect_layout(path) in CONVERTIBLE.values():
        return None
    print(f"pre-flight: {path}", flush=True)
    record = preflight(path, trust_remote_code=cfg.model.trust_remote_code)
    print(f"pre-flight: passed ({record['device']}, {record['dtype']})", flush=True)
    return record


def _link_base(cfg: Config, paths, is_main_machine: bool, check: dict | None) -> None:
    from training.stages.base import link_base_model

    if not is_main_machine:
        return
    link_base_model(cfg, paths)
    manifest = read_manifest_at(paths.run_dir)
    source = str(Path(cfg.model.path).expanduser().resolve())
    metrics = {"source": source, "layout": detect_layout(Path(source)), "preflight": check}
    previous = manifest["stages"].get("base", {}).get("metrics", {})
    if check is None and previous.get("source") == source:  # resumed past the base: keep its record
        metrics = previous
    manifest["stages"]["base"] = stage_entry("base", "full", None, metrics)
    write_manifest(paths.run_dir, manifest)
    print(f"base: {cfg.model.path} (linked, not trained here)", flush=True)


def _convert_base(cfg: Config, paths, is_main_machine: bool) -> None:
    """A legacy-layout ``model.path`` becomes ``runs/<id>/base`` in its native architecture (converted once,
    checked by the pre-flight before it is renamed into place)."""
    from training.stages.common import STAGE_INFO, read_stage_info

    source = Path(cfg.model.path).expanduser().resolve()
    fingerprint = hashlib.sha256(f"convert:{source}".encode()).hexdigest()
    done = read_stage_info(paths.final)
    if not is_main_machine or (done and done["fingerprint"] == fingerprint):
        if is_main_machine:
            print(f"base: converted from {source}, complete, skipped", flush=True)
        return
    staging = paths.work / "converted"
    print(f"base: converting {source} ({detect_layout(source)} layout) to its native architecture", flush=True)
    conversion = convert_checkpoint(source, staging, force=True)
    check = preflight(staging, setting=f"base converted from {source}")
    print(f"pre-flight: passed ({check['device']}, {check['dtype']})", flush=True)
    metrics = {"source": str(source), "layout": conversion["source_layout"], "conversion": conversion,
               "preflight": check}
    write_json_atomic(staging / STAGE_INFO, {"stage": "base", "kind": "full", "parent": None,
                                             "fingerprint": fingerprint, "metrics": metrics})
    if paths.final.is_symlink():
        paths.final.unlink()
    elif paths.final.exists():
        shutil.rmtree(paths.final)
    os.replace(staging, paths.final)
    shutil.rmtree(paths.work, ignore_errors=True)
    _record_stage(paths.run_dir, "base", read_stage_info(paths.final))


def stage_runners() -> dict:
    """The stage modules, imported when needed (they pull in torch, transformers, TRL)."""
    from training.stages.base import run_base_stage
    from training.stages.cpt import run_cpt_stage
    from training.stages.dpo import run_dpo_stage
    from training.stages.sft import run_sft_stage

    return {"base": run_base_stage, "cpt": run_cpt_stage, "sft": run_sft_stage, "dpo": run_dpo_stage}


# --- scale-out: accelerate launch -------------------------------------------------------------------


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
        from training.stages.common import deepspeed_config_path

        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(deepspeed_config_path(run_path))]
        if cfg.train.num_machines > 1:
            cmd += ["--deepspeed_multinode_launcher", "standard"]
    else:
        # accelerate's multi-process launcher (torchrun) is called --multi_gpu; without CUDA the stages
        # ask for CPU and the processes use gloo
        cmd += ["--multi_gpu", "--mixed_precision", "bf16" if cfg.train.bf16 else "no"]
    cmd += ["--num_processes", str(total), "--num_machines", str(cfg.train.num_machines),
            "--machine_rank", str(cfg.train.machine_rank), "--main_process_ip", cfg.train.main_process_ip,
            "--main_process_port", str(cfg.train.main_process_port), "--dynamo_backend", "no",
            "-m", "training.pipeline", "--run-dir", str(run_path), "--stage", stage]
    return cmd


def _launch_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _print_dry_run(cfg: Config, plan, reuse, resume_run, run_id, problems) -> str:
    """The resolved config, the stages and the exact launch command of each; nothing is written."""
    run_id = run_id or (resume_run if resume_run and not reuse else _new_run_id(cfg))
    run_path = cfg.runs_dir / run_id
    print("# resolved config")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True).rstrip())
    print(f"# run {run_id}: {run_path}")
    from training.data.build import data_is_built

    print(f"# data: {cfg.data_dir}" + ("" if data_is_built(cfg) else " (missing: train-all builds it first)"))
    for stage, source in reuse.items():
        print(f"# reuse {stage} from run {source}")
    if cfg.train.deepspeed_zero_stage:
        print(f"# DeepSpeed ZeRO-{cfg.train.deepspeed_zero_stage} config: "
              f"{run_path / 'deepspeed_zero2.json'} (written when the run starts)")
    for i, stage in enumerate(plan, 1):
        if stage == "base" and cfg.model.path:
            how = f"link {run_path / 'base'} -> {cfg.model.path}"
        else:
            command = launch_command(cfg, run_path, stage)
            how = shlex.join(command) if command else "in this process (one device)"
        print(f"stage {i}/{len(plan)} {stage}: {how}")
    for problem in problems:
        print(f"# warning: {problem}")
    return run_id


# --- after training ------------------------------------------------------------------------------------


def _evaluate_and_register(cfg: Config, run_id: str) -> None:
    """Evaluate every stage, register the run's checkpoints with the preference store and record which
    clinician pairs the run trained on."""
    if cfg.train.evaluate_after:
        from training.evaluation.evaluate import evaluate_run

        print(f"evaluation of run {run_id}", flush=True)
        evaluate_run(cfg, run_id)
    from preference_store.repository import PreferenceStore

    manifest = read_manifest_at(cfg.runs_dir / run_id)
    stages = list(manifest["stages"])
    with PreferenceStore(cfg.database_url) as store:
        store.register_checkpoints(run_id, stages)
        consumed = store.mark_consumed(manifest.get("dpo_pair_ids", []), run_id)
    print(f"registered {', '.join(f'{run_id}/{s}' for s in stages)} in the preference store"
          + (f"; {consumed} clinician pairs marked as consumed by this run" if consumed else ""), flush=True)


# --- the launched processes ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Entry point of each launched process: train one stage of a run from its saved config."""
    parser = argparse.ArgumentParser(description="one training stage (started by train-all through accelerate)")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--stage", required=True, choices=STAGES)
    args = parser.parse_args(argv)
    from training.stages.common import process_state, stage_paths

    process_state()
    cfg = config_from_dict(json.loads((args.run_dir / "config.json").read_text(encoding="utf-8")))
    paths = stage_paths(args.run_dir, args.stage)
    fingerprint = (paths.work / "fingerprint").read_text()
    try:
        stage_runners()[args.stage](cfg, paths, fingerprint)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
