"""Training a run: the registered stages its config includes (base -> cpt -> sft -> [rm] -> the alignment
stage of ``align.method``: dpo, kto, orpo, simpo or grpo) into ``runs/<run_id>/``, then evaluation.

The orchestrator (this module, one process) decides which stages to run, keeps ``manifest.json`` and
``run_state.json`` up to date and, per stage, either runs the stage's recipe in this process (tiny/demo on
one device) or launches it through ``accelerate launch`` (``training/launch.py``): the launched processes run
``python -m training.pipeline --run-dir D --stage S`` (:func:`main`), read the run's saved config and train
the same recipe under DDP / DeepSpeed ZeRO. What a stage is comes from the stage registry
(``core/registry.py``); the base model's checks and conversion from ``training/base_model.py``.
The loop around it (exporting clinician pairs first, registering the run with the store after) is the
command line's (``chimed.py``).

Resuming: every stage trains in ``.partial/<stage>/`` with Trainer checkpoints and is renamed into place
when done. Rerunning the same command (same ``--run-id``, or none: the newest incomplete run with the same
profile and config is picked up) skips stages whose recorded fingerprint (config section, data hashes,
parent) still matches and continues an interrupted stage from its last checkpoint.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.config import Config, config_from_dict
from core.errors import UserError
from core.files import write_json_atomic
from core.registry import ALIGN, get_stage, is_stage, resolve_stage, run_stages, stage_names
from training import base_model
from training.data.build import build_chimed, data_is_built
from training.evaluation.reward import judge_run
from training.fingerprints import recorded_fingerprint, stage_fingerprint
from training.launch import launch_command, launch_env, print_dry_run
from training.manifest import (
    MANIFEST,
    RUN_STATE,
    data_hashes,
    interrupted_run,
    latest_run,
    list_runs,
    new_manifest,
    new_run_id,
    read_manifest_at,
    read_run_state,
    stage_entry,
    write_manifest,
)
from training.modeling import CHAT_TEMPLATE_POLICIES
from training.recipes import check_data, runner_for
from training.trainer.allocator import keep_freed_memory_for_training
from training.trainer.arguments import check_device_options, process_state, write_deepspeed_config
from training.trainer.lifecycle import prepare_work_dir
from training.trainer.pairs import PAIR_IDS
from training.trainer.paths import STAGE_INFO, read_stage_info, stage_paths

__all__ = ["train_all", "latest_run", "list_runs"]


def train_all(
    cfg: Config,
    from_stage: str | None = None,
    resume_run: str | None = None,
    stages: list[str] | None = None,
    dry_run: bool = False,
    run_id: str | None = None,
    before_data: Callable[[Config], None] | None = None,
    keep_in_training: bool = False,
) -> str:
    """Train a run and return its id (see the module docstring; docs/design.md for the run layout).

    ``from_stage`` + ``resume_run``: a new run reusing ``resume_run``'s stages before ``from_stage``.
    ``resume_run`` alone: continue that run. ``stages``: a subset to run. ``run_id``: name of the run;
    an existing one is resumed. ``dry_run``: print the resolved config and launch commands, train nothing.
    ``before_data(cfg)`` runs on the main machine once the setup is checked, before the data is built or
    checked (the loop exports new clinician pairs there, so that ChiMed-DPO is rebuilt with them).
    ``keep_in_training``: the run stays "in training" after a success (its caller registers it, then calls
    :func:`release_run`); a failure releases it at once.
    """
    plan, reuse = _plan(cfg, from_stage, resume_run, stages)
    problems = _check_setup(cfg, plan)
    if dry_run:
        run_id = run_id or (resume_run if resume_run and not reuse else new_run_id(cfg))
        print_dry_run(cfg, plan, reuse, run_id, problems)
        return run_id
    if problems:
        raise problems[0]
    # a checkpoint used where it lies is checked before anything is written (a converted one once converted)
    linked_base_check = base_model.preflight_linked_base(cfg) if "base" in plan and cfg.model.path else None
    is_main_machine = cfg.train.machine_rank == 0
    if cfg.train.num_machines > 1 and not run_id:
        raise UserError("train.num_machines > 1 needs --run-id NAME (the same on every machine)")
    if is_main_machine and before_data:
        before_data(cfg)
    _ensure_data(cfg, is_main_machine)

    for stage in plan:  # a method its data cannot feed stops here, before any stage trains
        check_data(cfg, stage)
    run_id, resuming = _choose_run(cfg, run_id, resume_run, from_stage, plan)
    if cfg.train.evaluate_after and cfg.eval.reward_judge.strip() not in ("", run_id):
        judge_run(cfg, run_id, {"stages": {}})  # a judge without an rm stage: one line now, not after training
    run_path = cfg.runs_dir / run_id
    hashes = data_hashes(cfg)
    if is_main_machine:
        _open_run(cfg, run_path, run_id, hashes, plan, reuse, resuming, parent_run=resume_run if reuse else None)
    print(f"run {run_id}: {run_path}" + (" (resuming)" if resuming else ""), flush=True)

    try:
        for i, stage in enumerate(plan, 1):
            print(f"stage {i}/{len(plan)} {stage}", flush=True)
            try:
                _run_or_skip_stage(cfg, run_path, stage, hashes, is_main_machine, linked_base_check)
            except Exception as err:  # the one-line error `status` and the Runs tab show (training/progress.py)
                if is_main_machine:
                    _record_error(run_path, stage, err)
                raise
            gc.collect()

        if is_main_machine:
            state = read_run_state(run_path)
            write_json_atomic(run_path / RUN_STATE, {**state, "complete": True})
            if cfg.train.evaluate_after:
                print(f"evaluation of run {run_id}", flush=True)
                # imported here: its metrics (rouge, sacrebleu, nltk, scipy) add ~45 MB a training process never uses
                from training.evaluation.evaluate import evaluate_run

                try:
                    evaluate_run(cfg, run_id)
                except Exception as err:
                    _record_error(run_path, "evaluation", err)
                    raise
    except BaseException:
        if is_main_machine:  # no process trains it any more (training/progress.py reads this pid)
            release_run(run_path)
        raise
    if is_main_machine and not keep_in_training:
        release_run(run_path)
    print(f"run {run_id} complete: {run_path / MANIFEST}", flush=True)
    return run_id


# --- planning -----------------------------------------------------------------------------------------


def _plan(cfg: Config, from_stage, resume_run, stages) -> tuple[list[str], dict[str, str]]:
    """Stages to train, in order, and ``{stage: source_run}`` of the earlier stages reused from another run."""
    STAGES = run_stages(cfg)  # noqa: N806 - the stages this config trains, in training order
    requested = list(STAGES) if not stages else [resolve_stage(cfg, s) for s in stages]
    choices = ", ".join((*STAGES, ALIGN))
    unknown = [s for s in requested if s not in STAGES]
    if unknown:
        raise UserError(
            f"unknown stage {unknown[0]!r} in --stages: {_not_in_run(cfg, unknown[0])}choose from {choices}"
        )
    from_stage = resolve_stage(cfg, from_stage) if from_stage else None
    if from_stage and from_stage not in STAGES:
        raise UserError(f"unknown stage {from_stage!r} for --from: {_not_in_run(cfg, from_stage)}choose from {choices}")
    reuse: dict[str, str] = {}
    if from_stage and from_stage != "base":
        if not resume_run:
            raise UserError(f"--from {from_stage} needs --resume-run ID: the run whose earlier stages are reused")
        reuse = {s: resume_run for s in STAGES[: STAGES.index(from_stage)]}
        requested = [s for s in requested if STAGES.index(s) >= STAGES.index(from_stage)]
    plan = [s for s in STAGES if s in requested]
    if not plan:
        raise UserError("nothing to train: --stages and --from leave no stage")
    return plan, reuse


def _not_in_run(cfg: Config, stage: str) -> str:
    """Why a registered stage is not one this config trains (empty for a name that is no stage)."""
    if not is_stage(stage):
        return ""
    if get_stage(stage).method:
        return f"this config aligns with align.method={cfg.align.method} (set align.method={stage} to train it); "
    return 'the config does not include it (see docs/training.md, "Alignment methods"); '


def _check_setup(cfg: Config, plan: list[str]) -> list[UserError]:
    """What would stop the run: GPU-only options without a GPU, a setting out of range, a base model that
    is not one."""
    problems = []
    try:
        check_device_options(cfg)
    except UserError as err:
        problems.append(err)
    if cfg.model.chat_template not in CHAT_TEMPLATE_POLICIES:
        problems.append(
            UserError(f"model.chat_template={cfg.model.chat_template!r}: choose {' or '.join(CHAT_TEMPLATE_POLICIES)}")
        )
    if cfg.cpt.medical_repeats < 1:
        problems.append(
            UserError(
                f"cpt.medical_repeats={cfg.cpt.medical_repeats}: it must be at least 1 "
                "(each medical record of ChiMed-CPT at least once per epoch)"
            )
        )
    if cfg.profile == "paper" or cfg.model.path:
        try:
            base_model.check_base_model_dir(cfg)
        except UserError as err:
            problems.append(err)
            return problems
    problems += base_model.check_lora_targets(cfg, plan)
    return problems


def _ensure_data(cfg: Config, is_main_machine: bool) -> None:
    """train-all builds ChiMed when it is missing (only the main machine builds)."""
    if data_is_built(cfg):
        return
    if not is_main_machine:
        raise UserError(
            f"no ChiMed data in {cfg.data_dir}: run ./launch.sh build-data on a filesystem all "
            "machines share before starting machine_rank > 0"
        )
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
        interrupted = interrupted_run(cfg, plan)
        if interrupted:
            print(f"resuming the interrupted run {interrupted} (same profile and config)", flush=True)
            return interrupted, True
    return new_run_id(cfg), False


def _open_run(
    cfg: Config,
    run_path: Path,
    run_id: str,
    hashes: dict,
    plan: list[str],
    reuse: dict,
    resuming: bool,
    parent_run: str | None,
) -> None:
    """Create (or reopen) the run dir: config.json, run_state.json, manifest.json, reused stages."""
    run_path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_path / "config.json", cfg.to_dict())
    write_deepspeed_config(cfg, run_path)
    if resuming:
        manifest = read_manifest_at(run_path)
        if manifest["profile"] != cfg.profile:
            raise UserError(
                f"run {run_id} was trained with --profile {manifest['profile']}, not {cfg.profile}: "
                "use that profile or a new --run-id"
            )
        manifest.update(config_sha256=cfg.sha256(), data_sha256=hashes)
        state = read_run_state(run_path)
        reuse = {**state.get("reused", {}), **reuse}
    else:
        manifest = new_manifest(cfg, run_id, hashes, parent_run=parent_run)
    for stage, source in reuse.items():
        if stage not in manifest["stages"]:
            manifest = _reuse_stage(cfg, source, run_path, stage, manifest)
    requested = sorted(set(plan) | set(reuse), key=stage_names().index)
    write_json_atomic(
        run_path / RUN_STATE,
        {"requested_stages": plan, "stages": requested, "reused": reuse, "complete": False, "pid": os.getpid()},
    )
    write_manifest(run_path, manifest)


def _reuse_stage(cfg: Config, source_run: str, run_path: Path, stage: str, manifest: dict) -> dict:
    """Bring a finished stage of another run into this one: hard links (no copy of the weights)."""
    source_path = cfg.runs_dir / source_run
    source = read_manifest_at(source_path)
    if stage not in source["stages"]:
        raise UserError(
            f"--resume-run {source_run} has no complete '{stage}' stage to reuse: "
            f"its stages are {', '.join(source['stages']) or 'none'}"
        )
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
    if (src / PAIR_IDS).is_file():
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


def _run_or_skip_stage(
    cfg: Config, run_path: Path, stage: str, hashes: dict, is_main_machine: bool, linked_base_check: dict | None = None
) -> None:
    paths = stage_paths(run_path, stage)
    if stage == "base" and cfg.model.path:
        if base_model.is_converted(cfg):
            base_model.convert_base(cfg, paths, is_main_machine)
        else:
            base_model.link_base(cfg, paths, is_main_machine, linked_base_check)
        return
    parent = get_stage(stage).parent
    parent_fp = recorded_fingerprint(run_path, parent) if parent else None
    if parent and parent_fp is None:
        raise UserError(
            f"stage {stage} needs a finished '{parent}' stage in run {run_path.name}: include "
            f"{parent} in --stages or reuse it with --from {stage} --resume-run ID"
        )
    reads = {s: recorded_fingerprint(run_path, s) for s in get_stage(stage).reads if s in run_stages(cfg)}
    fingerprint = stage_fingerprint(cfg, stage, hashes, parent_fp, reads)
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
            result = subprocess.run(command, env=launch_env(), check=False)
            if result.returncode != 0:
                raise UserError(
                    f"stage {stage} failed in its launched processes (exit {result.returncode}); "
                    "see their output above, then rerun the same command to resume"
                )
        else:
            train_stage_here(cfg, stage, paths, fingerprint)
        done = read_stage_info(paths.final)
        if is_main_machine:  # the stage's whole wall time: loading, data preparation, training, saving
            done["metrics"]["wall_s"] = round(time.time() - started, 1)
            if stage == "base":  # the base pretrained here passes the same pre-flight as one brought in
                done["metrics"]["preflight"] = base_model.preflight(paths.final, setting=f"runs/{run_path.name}/base")
            write_json_atomic(paths.final / STAGE_INFO, done)
    if is_main_machine:
        _record_stage(cfg, run_path, stage, done)


def release_run(run_path: Path) -> None:
    """The run is no longer in training: this process's id leaves its run_state.json."""
    state = read_run_state(run_path)
    if state.get("pid") == os.getpid():
        write_json_atomic(run_path / RUN_STATE, {k: v for k, v in state.items() if k != "pid"})


def _record_error(run_path: Path, stage: str, err: Exception) -> None:
    """Keep a failed stage's one-line error in run_state.json (``stage`` may be "evaluation")."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not isinstance(err, UserError):
        message = f"{type(err).__name__}: {message}"
    write_json_atomic(
        run_path / RUN_STATE,
        {**read_run_state(run_path), "error": f"{'stage ' if stage != 'evaluation' else ''}{stage}: {message}"},
    )


def train_stage_here(cfg: Config, stage: str, paths, fingerprint: str) -> None:
    """Train one stage in this process (train-all's own, or each process that accelerate launched)."""
    keep_freed_memory_for_training(cfg.train.keep_freed_memory)
    runner_for(stage)(cfg, paths, fingerprint)


def _record_stage(cfg: Config, run_path: Path, stage: str, info: dict) -> None:
    manifest = read_manifest_at(run_path)
    manifest["stages"][stage] = stage_entry(stage, info["kind"], info["parent"], info["metrics"])
    if get_stage(stage).method:  # the alignment method and its settings, as trained
        manifest["stages"][stage]["method"] = {
            "name": get_stage(stage).method,
            "settings": cfg.to_dict()[get_stage(stage).section],
        }
    if (run_path / stage / PAIR_IDS).is_file():  # a stage trained on preference pairs names them
        manifest["dpo_pair_ids"] = json.loads((run_path / stage / PAIR_IDS).read_text(encoding="utf-8"))
    write_manifest(run_path, manifest)


# --- the launched processes ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Entry point of each launched process: train one stage of a run from its saved config."""
    parser = argparse.ArgumentParser(description="one training stage (started by train-all through accelerate)")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--stage", required=True, choices=stage_names())
    args = parser.parse_args(argv)

    process_state()
    cfg = config_from_dict(json.loads((args.run_dir / "config.json").read_text(encoding="utf-8")))
    paths = stage_paths(args.run_dir, args.stage)
    fingerprint = (paths.work / "fingerprint").read_text()
    try:
        train_stage_here(cfg, args.stage, paths, fingerprint)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
