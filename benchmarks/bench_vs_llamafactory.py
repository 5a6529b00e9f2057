"""Training speed of this project against LLaMA-Factory on the same model, data and settings: CPT, SFT, DPO.

    .venv/bin/python benchmarks/bench_vs_llamafactory.py [--home DIR] [--lf-venv DIR] [--rounds 5]
        [--stages cpt,sft,dpo] [--steps N] [--threads N] [--sft-data ids|template|both] [--out FILE]
        [--base-overrides "model.max_steps=200 cpt.max_steps=200 sft.max_steps=100"]

    # a quick check of the whole thing (the bench home is reused: base/cpt/sft are trained only once)
    .venv/bin/python benchmarks/bench_vs_llamafactory.py --rounds 1 --steps 20

What it does
  1. LLaMA-Factory in its own venv (``--lf-venv``, default ``~/.cache/chimed-bench/llamafactory-venv``),
     installed when missing: ``pip install torch==<ours> llamafactory`` (the torch pin keeps pip on the
     local CPU build), the CUDA-built torchvision removed, torchaudio's native libraries moved aside if
     they do not load against that torch (LLaMA-Factory imports torchaudio at start).
  2. A bench home (``--home``, default ``~/.cache/chimed-bench/home-<profile>``; CHIMED_HOME of every run
     of ours): ChiMed data built once and one run ``bench-base`` trained once with base, cpt and sft (no
     evaluation), its SFT stage exported merged (``./launch.sh export``) for LLaMA-Factory's DPO. An existing
     home is reused as it is, so only the first invocation pays for that (~6 min on 2 cores for demo).
  3. Rounds: per round and stage, ours (``python -m chimed train-all --from STAGE --resume-run bench-base
     --stages STAGE train.evaluate_after=false``, a fresh run id) and LLaMA-Factory (``llamafactory-cli
     train config.yaml``) on the same parent checkpoint, alternately (the order flips every round).
     Each is a child process whose process tree's RSS is sampled (psutil) every 0.2 s.

Same inputs and settings on both sides (read from the project's config: ``--profile`` + overrides)
  model    CPT: runs/bench-base/base; SFT: runs/bench-base/cpt; DPO: bench-base's sft exported merged
           (float32): the model our DPO stage loads (cpt + sft adapter merged).
  data     CPT: cpt.jsonl as our CPT trains on it (``training_texts``: the medical records repeated
           ``cpt.medical_repeats`` times), LLaMA-Factory's ``pt`` stage with ``packing: true`` into blocks of
           ``cpt.block_size`` (cutoff_len = block_size + 1, as LLaMA-Factory subtracts one when packing) and
           one preprocessing batch for the whole corpus, so that the blocks are exactly ours (text + eos,
           concatenated, remainder dropped).
           SFT ``ids``: our exact token ids and labels (``training.recipes.sft.tokenize_conversation`` with the
           run's tokenizer and chat template, loss on assistant tokens only) saved as a tokenized dataset
           (``tokenized_path``). SFT ``template``: sft.jsonl as openai-style messages, LLaMA-Factory's own
           tokenization with the template it parses from our tokenizer's chat template (no ``template:``
           key), cutoff_len = max_source_length + max_target_length.
           DPO: dpo.jsonl as a sharegpt ranking dataset (prompt messages, chosen, rejected), the parsed template,
           cutoff_len = dpo.max_length.
  schedule lr, max_steps (``--steps`` overrides both sides), lr_scheduler_type, warmup (warmup_steps =
           warmup_ratio, a float below 1 = ratio in transformers 5), weight_decay, per-device batch,
           gradient accumulation, seed, the optimizer (transformers' default, which our stages use),
           fp32 (bf16/fp16 off), SDPA attention, no gradient checkpointing (LLaMA-Factory turns it on by
           default: ``disable_gradient_checkpointing: true``), logging_steps, save_steps and
           save_total_limit (both sides write checkpoints inside the loop), dataloader_num_workers.
  LoRA     SFT: sft.lora r/alpha/dropout/targets; DPO: dpo.lora (targets resolved to module names).
  DPO      pref_loss sigmoid, pref_beta = dpo.beta, pref_ftx = dpo.sft_weight (ours: TRL loss_type
           [sigmoid, sft] with weights [1, sft_weight]); reference = the policy with its adapter disabled.

Measurement
  tokens/s = the HF Trainer's ``num_input_tokens_seen`` (``include_num_input_tokens_seen: non_padding``:
  the attention mask's sum over every batch the loop saw, on both sides; for DPO chosen and rejected
  sequences both count) divided by the training loop's ``train_runtime`` (checkpoint saves inside the loop
  included on both sides; model loading, data preparation and the final save not). Our DPO computes the
  reference log-probabilities once before its loop (``dpo.precompute_reference``): that time
  (``reference_precompute_s`` in its stage.json) is added to its loop time, since LLaMA-Factory does that
  work inside its loop. Wall time of each child
  process and the peak RSS of its process tree are printed too. Losses: the first and last logged training
  loss of each side, with their steps.
  ``--threads N`` sets OMP_NUM_THREADS/MKL_NUM_THREADS of both sides (default: torch's default).

What is not the same (checked on the demo data)
  * The libraries: LLaMA-Factory 0.9.5 caps its own stack (transformers 5.6, trl 0.24, peft 0.18 in its venv;
    ours: transformers 5.23, trl 1.16, peft 0.21). Comparing those loops is the point.
  * CPT: the blocks are identical (same 7,590 blocks of 128 tokens) and the model gives the same loss on the
    same batch in both venvs, but the first logged losses differ a little: the batches come in another order.
  * SFT ``ids``: the same tokens and labels; tokens seen and losses agree (to ~1e-3). SFT ``template``: the
    template LLaMA-Factory parses from our chat template (user ``问：{content}\\n答：``, assistant
    ``{content}<|end|>``, system ``{content}\\n``) leaves out the ``\\n`` ours puts after an assistant turn that
    another turn follows (multi-turn conversations only), and LLaMA-Factory truncates by its own rule
    (cutoff_len split between source and target) instead of ours (source 128, target 96): more tokens/step.
  * DPO: the same tokens; LLaMA-Factory's SFT term is each sequence's mean NLL of the chosen answer averaged
    over the batch, TRL's is a mean over the batch's chosen tokens: logged losses differ slightly.
  * Ours logs to trainer_log.jsonl and TensorBoard and checks every gradient for NaN/inf before each
    optimizer step (NonFiniteGuard); LLaMA-Factory runs its own log callback. Both are in train_runtime.
  * Ours trains whatever training/recipes/*.py holds in the working tree (e.g. SFT/DPO's padding-free batches).

Duration on 2 cores: the demo profile's steps (cpt 1200, sft 400, dpo 200) take about 25-35 min per round,
mostly CPT (~0.6 s/step a side), so the default 5 rounds take 2-3 hours (SFT runs twice for LLaMA-Factory
with ``--sft-data both``); ``--rounds 1 --steps 20`` takes about 4 min once the bench home exists.

Output: one line per run, then a Markdown table per stage (median tokens/s and min-max of each side, peak
RSS, the ratio ours/theirs last), the load average, and the raw results as JSON (``--out``, default
HOME/bench_vs_llamafactory.json). Logs of every run: HOME/bench-logs/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CACHE = Path.home() / ".cache" / "chimed-bench"
BASE_RUN = "bench-base"
STAGES = ("cpt", "sft", "dpo")
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
    "DISABLE_VERSION_CHECK": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "WANDB_DISABLED": "true",
}


class BenchError(Exception):
    """A one-line error for the user."""


# --- child processes ------------------------------------------------------------------------------------


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_child(cmd: list[str], env: dict, log: Path, what: str, cwd: Path = REPO) -> dict:
    """Run ``cmd`` with its output in ``log``; wall time and peak RSS of its process tree. A failure is a
    BenchError naming the log and its last line."""
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    peak = 0
    started = time.time()
    with open(log, "w", encoding="utf-8") as out:
        out.write("$ " + shlex.join(cmd) + "\n")
        out.flush()
        try:
            child = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        except OSError as err:
            raise BenchError(f"{what}: cannot start {cmd[0]}: {err.strerror}") from None
        proc = psutil.Process(child.pid)
        stop = threading.Event()

        def sample():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _tree_rss(proc))
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            rc = child.wait()
        except KeyboardInterrupt:
            child.terminate()
            child.wait()
            raise
        finally:
            stop.set()
            sampler.join()
    wall = time.time() - started
    if rc != 0:
        raise BenchError(f"{what} failed (exit {rc}): {_last_line(log)} (full log: {log})")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak / 2**20, 1)}


def _last_line(log: Path) -> str:
    lines = [
        line.strip()
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
        if line.strip() and "it/s]" not in line and "s/it]" not in line
    ]
    for line in reversed(lines):  # the exception line of a traceback, else the last line
        if line.startswith(
            (
                "error:",
                "Error",
                "ValueError",
                "RuntimeError",
                "OSError",
                "KeyError",
                "TypeError",
                "ImportError",
                "ModuleNotFoundError",
                "AttributeError",
                "FileNotFoundError",
                "AssertionError",
                "torch.",
            )
        ):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def child_env(threads: int | None, extra: dict | None = None) -> dict:
    env = {**os.environ, **OFFLINE, **(extra or {})}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


# --- LLaMA-Factory's venv -------------------------------------------------------------------------------


def ensure_lf_venv(venv: Path, log_dir: Path) -> dict:
    """Install LLaMA-Factory into ``venv`` when it is missing; return its versions."""
    py = venv / "bin" / "python"
    if not (venv / "bin" / "llamafactory-cli").is_file():
        import torch

        pin = torch.__version__.split("+")[0]
        print(f"LLaMA-Factory: installing into {venv} (torch=={pin}, a few minutes) ...", flush=True)
        log = log_dir / "lf-install.log"
        env = child_env(None)
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            env.pop(k)
        if not py.is_file():
            python3 = shutil.which("python3") or sys.executable
            run_child([python3, "-m", "venv", str(venv)], env, log_dir / "lf-venv.log", "python3 -m venv")
        run_child(
            [str(venv / "bin" / "pip"), "install", f"torch=={pin}", "llamafactory"],
            env,
            log,
            "pip install llamafactory",
        )
        subprocess.run(
            [str(venv / "bin" / "pip"), "uninstall", "-y", "torchvision"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    _fix_torchaudio(venv)
    probe = (
        "import json, importlib.metadata as m\n"
        "import llamafactory, transformers, trl, peft, torch, accelerate, datasets\n"
        "print(json.dumps({k: m.version(k) for k in ('llamafactory', 'transformers', 'trl', 'peft', "
        "'torch', 'accelerate', 'datasets')}))\n"
    )
    if not py.is_file():
        raise BenchError(
            f"--lf-venv {venv}: no Python there (bin/python missing); remove the directory to "
            "reinstall or point --lf-venv at a LLaMA-Factory venv"
        )
    done = subprocess.run([str(py), "-c", probe], env=child_env(None), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"LLaMA-Factory in {venv} does not import: {last[:300]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fix_torchaudio(venv: Path) -> None:
    """torchaudio must import (LLaMA-Factory imports it at start); its CUDA-built native libraries may
    not load against the CPU torch: move them aside (nothing here uses them)."""
    py = venv / "bin" / "python"
    if not py.is_file():
        return
    ok = subprocess.run([str(py), "-c", "import torchaudio"], capture_output=True, text=True, check=False)
    if ok.returncode == 0:
        return
    if "No module named" in ok.stderr:  # installed without its dependencies: it must not replace torch
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--no-deps", "torchaudio"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        if subprocess.run([str(py), "-c", "import torchaudio"], capture_output=True, check=False).returncode == 0:
            return
    libs = list(venv.glob("lib/python3*/site-packages/torchaudio/lib/*.so"))
    aside = venv / "torchaudio-libs-aside"
    aside.mkdir(exist_ok=True)
    for lib in libs:
        shutil.move(str(lib), aside / lib.name)


# --- the bench home (ours) ------------------------------------------------------------------------------


def our_cmd(profile: str, args: list[str], overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "chimed", *args, "--profile", profile, *overrides]


def ensure_home(home: Path, profile: str, base_overrides: list[str], env: dict, log_dir: Path) -> Path:
    """Data, run bench-base (base, cpt, sft) and its merged SFT export; an existing one is reused."""
    from core.config import load_config

    cfg = load_config(profile, base_overrides)
    data = home / "data" / "chimed"
    if not all((data / f).is_file() for f in ("cpt.jsonl", "sft.jsonl", "dpo.jsonl")):
        print(f"bench home {home}: building data ...", flush=True)
        run_child(our_cmd(profile, ["build-data"], base_overrides), env, log_dir / "build-data.log", "build-data")
    manifest = home / "runs" / BASE_RUN / "manifest.json"
    have = json.loads(manifest.read_text(encoding="utf-8"))["stages"] if manifest.is_file() else {}
    if not all(s in have for s in ("base", "cpt", "sft")):
        print(f"bench home {home}: training {BASE_RUN} (base, cpt, sft; once) ...", flush=True)
        run_child(
            our_cmd(
                profile,
                ["train-all", "--run-id", BASE_RUN, "--stages", "base,cpt,sft"],
                ["train.evaluate_after=false", *base_overrides],
            ),
            env,
            log_dir / "bench-base.log",
            f"training {BASE_RUN}",
        )
    merged = home / "lf" / "sft-merged"
    if not (merged / "config.json").is_file():
        run_child(
            our_cmd(
                profile,
                ["export", "--run", BASE_RUN, "--stage", "sft", "--out", str(merged), "--dtype", "float32", "--force"],
                [],
            ),
            env,
            log_dir / "export-sft.log",
            "export of bench-base/sft",
        )
    del cfg
    return merged


# --- LLaMA-Factory's inputs -----------------------------------------------------------------------------


def lf_datasets(home: Path, cfg, lf_py: Path, env: dict, log_dir: Path) -> Path:
    """HOME/lf/data: dataset_info.json, the three datasets, and our SFT token ids as a tokenized dataset."""
    from core.files import read_jsonl
    from training.recipes.cpt import training_texts

    data = home / "data" / "chimed"
    out = home / "lf" / "data"
    stamp = out / "source.json"
    source = {f: (data / f).stat().st_mtime_ns for f in ("cpt.jsonl", "sft.jsonl", "dpo.jsonl")}
    source["medical_repeats"] = cfg.cpt.medical_repeats
    source["sft_lengths"] = [cfg.sft.max_source_length, cfg.sft.max_target_length]
    source["cpt_stage"] = (home / "runs" / BASE_RUN / "cpt" / "stage.json").stat().st_mtime_ns  # its tokenizer
    if stamp.is_file() and json.loads(stamp.read_text()) == source:
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    texts = training_texts(read_jsonl(data / "cpt.jsonl"), cfg.cpt.medical_repeats)
    _write_jsonl(out / "cpt.jsonl", ({"text": t} for t in texts))
    conversations = read_jsonl(data / "sft.jsonl")
    _write_jsonl(out / "sft.jsonl", ({"messages": r["messages"]} for r in conversations))
    pairs = read_jsonl(data / "dpo.jsonl")
    for p in pairs:
        if len(p["chosen"]) != 1 or len(p["rejected"]) != 1:
            raise BenchError(
                "dpo.jsonl: a pair whose chosen or rejected is not a single assistant message; "
                "LLaMA-Factory's ranking format takes one message each"
            )
    _write_jsonl(
        out / "dpo.jsonl",
        ({"messages": p["prompt"], "chosen": p["chosen"][0], "rejected": p["rejected"][0]} for p in pairs),
    )
    tags = {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "system_tag": "system",
    }
    info = {
        "chimed_cpt": {"file_name": "cpt.jsonl", "columns": {"prompt": "text"}},
        "chimed_sft": {
            "file_name": "sft.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": tags,
        },
        "chimed_dpo": {
            "file_name": "dpo.jsonl",
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
            "tags": tags,
        },
    }
    (out / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=1), encoding="utf-8")

    # our exact SFT token ids: input_ids, attention_mask, labels (-100 off the assistant's tokens)
    from training.modeling import stage_chain, stage_tokenizer
    from training.recipes.sft import tokenize_conversation

    run_dir = home / "runs" / BASE_RUN
    tokenizer = stage_tokenizer(run_dir, stage_chain(run_dir, "cpt"))
    rows = []
    for r in conversations:
        t = tokenize_conversation(tokenizer, r["messages"], cfg.sft.max_source_length, cfg.sft.max_target_length)
        rows.append(
            {
                "input_ids": t["input_ids"],
                "attention_mask": [1] * len(t["input_ids"]),
                "labels": [i if m else -100 for i, m in zip(t["input_ids"], t["assistant_masks"])],
            }
        )
    _write_jsonl(out / "sft_ids.jsonl", rows)
    save = (
        "import sys, datasets\n"
        "d = datasets.load_dataset('json', data_files=sys.argv[1], split='train')\n"
        "datasets.DatasetDict({'train': d}).save_to_disk(sys.argv[2])\n"
    )
    run_child(
        [str(lf_py), "-c", save, str(out / "sft_ids.jsonl"), str(out / "sft_tokenized")],
        env,
        log_dir / "lf-sft-tokenized.log",
        "saving the tokenized SFT dataset",
    )
    stamp.write_text(json.dumps(source))
    return out


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def default_optim() -> str:
    from transformers import TrainingArguments

    field = {f.name: f for f in dataclasses.fields(TrainingArguments)}["optim"]
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return getattr(value, "value", value)


def lora_targets(lora) -> str:
    targets = list(lora.target_modules)
    if targets == ["all-linear"]:  # what the project resolves it to on a LLaMA block (never lm_head)
        return "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    return ",".join(targets)


def lf_config(
    stage: str,
    cfg,
    home: Path,
    merged: Path,
    data_dir: Path,
    out_dir: Path,
    steps: int | None,
    sft_data: str,
    optim: str,
) -> dict:
    """LLaMA-Factory's train config for one stage, mirroring our stage's settings."""
    section = getattr(cfg, stage)
    run = home / "runs" / BASE_RUN
    common = {
        "do_train": True,
        "output_dir": str(out_dir),
        "overwrite_output_dir": True,
        "dataset_dir": str(data_dir),
        "learning_rate": section.learning_rate,
        "max_steps": steps or section.max_steps,
        "num_train_epochs": section.epochs,
        "lr_scheduler_type": section.lr_scheduler_type,
        "warmup_steps": section.warmup_ratio,
        "weight_decay": section.weight_decay,
        "per_device_train_batch_size": section.per_device_batch_size,
        "gradient_accumulation_steps": section.gradient_accumulation_steps,
        "optim": optim,
        "seed": cfg.train.seed,
        "bf16": False,
        "fp16": False,
        "flash_attn": "sdpa",
        "disable_gradient_checkpointing": not cfg.train.gradient_checkpointing,
        "logging_steps": cfg.train.logging_steps,
        "save_strategy": "steps",
        "save_steps": cfg.train.save_steps,
        "save_total_limit": cfg.train.save_total_limit,
        "dataloader_num_workers": cfg.train.dataloader_num_workers,
        "include_num_input_tokens_seen": "non_padding",
        "logging_nan_inf_filter": False,
        "report_to": "none",
        "plot_loss": False,
        "trust_remote_code": False,
    }
    if stage == "cpt":
        return {
            **common,
            "model_name_or_path": str(run / "base"),
            "stage": "pt",
            "finetuning_type": "full",
            "dataset": "chimed_cpt",
            "packing": True,
            "cutoff_len": cfg.cpt.block_size + 1,
            "preprocessing_batch_size": 10**9,
            "overwrite_cache": True,
        }
    lora = section.lora
    lora_keys = {
        "finetuning_type": "lora",
        "lora_rank": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "lora_target": lora_targets(lora),
    }
    if stage == "sft":
        conf = {
            **common,
            **lora_keys,
            "model_name_or_path": str(run / "cpt"),
            "stage": "sft",
            "dataset": "chimed_sft",
            "packing": False,
            "overwrite_cache": True,
            "cutoff_len": cfg.sft.max_source_length + cfg.sft.max_target_length,
        }
        if sft_data == "ids":
            conf["tokenized_path"] = str(data_dir / "sft_tokenized")
            conf.pop("overwrite_cache")
        return conf
    return {
        **common,
        **lora_keys,
        "model_name_or_path": str(merged),
        "stage": "dpo",
        "dataset": "chimed_dpo",
        "cutoff_len": cfg.dpo.max_length,
        "pref_loss": "sigmoid",
        "pref_beta": cfg.dpo.beta,
        "pref_ftx": cfg.dpo.sft_weight,
        "overwrite_cache": True,
    }


# --- one run of each tool -------------------------------------------------------------------------------


def run_ours(stage: str, home: Path, profile: str, steps: int | None, env: dict, log_dir: Path, tag: str) -> dict:
    run_id = f"bench-{stage}-{tag}"
    run_dir = home / "runs" / run_id
    if run_dir.exists():
        shutil.rmtree(run_dir)
    overrides = ["train.evaluate_after=false"] + ([f"{stage}.max_steps={steps}"] if steps else [])
    cmd = our_cmd(
        profile,
        ["train-all", "--run-id", run_id, "--from", stage, "--resume-run", BASE_RUN, "--stages", stage],
        overrides,
    )
    proc = run_child(cmd, env, log_dir / f"ours-{stage}-{tag}.log", f"ours {stage} ({run_id})")
    info = json.loads((run_dir / stage / "stage.json").read_text(encoding="utf-8"))
    m = info["metrics"]
    log = run_dir / "logs" / stage / "trainer_log.jsonl"
    losses = [
        (r["step"], r["loss"])
        for r in map(json.loads, log.read_text(encoding="utf-8").splitlines())
        if "loss" in r and "step" in r
    ]
    # dpo computes the reference log-probabilities once before its loop (dpo.precompute_reference): that
    # work is the loop's on LLaMA-Factory's side, so it is counted in ours too
    runtime = m["train_runtime_s"] + m.get("reference_precompute_s", 0.0)
    result = {
        "tool": "ours",
        "stage": stage,
        "run": run_id,
        "steps": m["steps"],
        "train_runtime_s": round(runtime, 2),
        "train_tokens": m["train_tokens"],
        "reference_precompute_s": m.get("reference_precompute_s", 0.0),
        "tokens_per_s": m["train_tokens"] / runtime if runtime else None,
        "losses": losses,
        **proc,
    }
    shutil.rmtree(run_dir, ignore_errors=True)  # keep the home small; the log stays in bench-logs
    return result


def run_lf(stage: str, conf: dict, lf_venv: Path, env: dict, log_dir: Path, tag: str, label: str) -> dict:
    out_dir = Path(conf["output_dir"])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    yaml_path = out_dir.parent / f"{out_dir.name}.yaml"
    yaml_path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in conf.items()) + "\n", encoding="utf-8")
    cmd = [str(lf_venv / "bin" / "llamafactory-cli"), "train", str(yaml_path)]
    proc = run_child(cmd, env, log_dir / f"lf-{label}-{tag}.log", f"LLaMA-Factory {label} ({yaml_path})")
    try:
        results = json.loads((out_dir / "train_results.json").read_text(encoding="utf-8"))
        state = json.loads((out_dir / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise BenchError(f"LLaMA-Factory {label}: no {Path(err.filename).name} in {out_dir}") from None
    runtime = float(results["train_runtime"])
    tokens = int(state.get("num_input_tokens_seen", 0))
    losses = [(r["step"], r["loss"]) for r in state["log_history"] if "loss" in r]
    result = {
        "tool": "llamafactory",
        "stage": stage,
        "variant": label,
        "steps": state["global_step"],
        "train_runtime_s": round(runtime, 2),
        "train_tokens": tokens,
        "tokens_per_s": tokens / runtime if runtime else None,
        "losses": losses,
        **proc,
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def describe(r: dict) -> str:
    losses = r["losses"]
    first = f"step {losses[0][0]} {losses[0][1]:.4f}" if losses else "-"
    last = f"step {losses[-1][0]} {losses[-1][1]:.4f}" if losses else "-"
    name = "ours" if r["tool"] == "ours" else f"LF/{r['variant']}"
    return (
        f"{r['stage']:>4} {name:<12} {r['steps']:>5} steps  {r['train_tokens']:>9,} tok  "
        f"{r['train_runtime_s']:>7.1f} s loop  {r['tokens_per_s']:>8,.0f} tok/s  wall {r['wall_s']:>6.1f} s  "
        f"peak RSS {r['peak_rss_mb']:>6.0f} MB  loss first {first}, last {last}"
    )


# --- report ---------------------------------------------------------------------------------------------


def summary(results: list[dict]) -> list[str]:
    lines = [
        (
            "| stage | ours tok/s median (min-max) | LLaMA-Factory tok/s median (min-max) | ours peak RSS MB | "
            "LF peak RSS MB | ours tok/step | LF tok/step | ratio ours/LF |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = []
    for r in results:
        key = (r["stage"], r.get("variant"))
        if r["tool"] == "llamafactory" and key not in keys:
            keys.append(key)
    for stage, variant in keys:
        ours = [r for r in results if r["tool"] == "ours" and r["stage"] == stage]
        lf = [r for r in results if r["tool"] == "llamafactory" and r["stage"] == stage and r["variant"] == variant]
        if not ours or not lf:
            continue
        o = [r["tokens_per_s"] for r in ours]
        t = [r["tokens_per_s"] for r in lf]
        label = stage if variant in (None, stage, "pt", "dpo") else f"{stage} ({variant})"
        lines.append(
            f"| {label} | {statistics.median(o):,.0f} ({min(o):,.0f}-{max(o):,.0f}) | "
            f"{statistics.median(t):,.0f} ({min(t):,.0f}-{max(t):,.0f}) | "
            f"{max(r['peak_rss_mb'] for r in ours):,.0f} | {max(r['peak_rss_mb'] for r in lf):,.0f} | "
            f"{statistics.median(r['train_tokens'] / max(r['steps'], 1) for r in ours):,.0f} | "
            f"{statistics.median(r['train_tokens'] / max(r['steps'], 1) for r in lf):,.0f} | "
            f"{statistics.median(o) / statistics.median(t):.2f} |"
        )
    return lines


def loss_lines(results: list[dict]) -> list[str]:
    """Our and their loss at the same logged steps (first and last common step) of each stage's last round."""
    out = []
    for stage in STAGES:
        ours = [r for r in results if r["tool"] == "ours" and r["stage"] == stage]
        for lf in [r for r in results if r["tool"] == "llamafactory" and r["stage"] == stage][-2:]:
            if not ours:
                continue
            a, b = dict(ours[-1]["losses"]), dict(lf["losses"])
            common = sorted(set(a) & set(b))
            if common:
                s0, s1 = common[0], common[-1]
                out.append(
                    f"  {stage} vs LF/{lf['variant']}: step {s0}: ours {a[s0]:.4f}, LF {b[s0]:.4f}; "
                    f"step {s1}: ours {a[s1]:.4f}, LF {b[s1]:.4f}"
                )
    seen, uniq = set(), []
    for line in out:
        if line not in seen:
            seen.add(line)
            uniq.append(line)
    return uniq


# --- main -----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", choices=("tiny", "demo"))
    parser.add_argument(
        "--home",
        type=Path,
        help="bench home (CHIMED_HOME of our runs; reused when it exists); default ~/.cache/chimed-bench/home-PROFILE",
    )
    parser.add_argument(
        "--lf-venv",
        type=Path,
        default=CACHE / "llamafactory-venv",
        help="LLaMA-Factory's venv (installed when missing); default %(default)s",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stages", default="cpt,sft,dpo")
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="optimizer steps per stage on both sides (default: the profile's max_steps)",
    )
    parser.add_argument("--threads", type=int, default=0, help="OMP/MKL threads of both sides (default: torch's)")
    parser.add_argument(
        "--sft-data",
        choices=("ids", "template", "both"),
        default="both",
        help="LLaMA-Factory's SFT input: our token ids, its own template rendering, or both",
    )
    parser.add_argument(
        "--base-overrides",
        default="",
        help="key=value overrides for the one-time bench-base run only (e.g. shorter base/cpt)",
    )
    parser.add_argument("--out", type=Path, help="raw results as JSON (default HOME/bench_vs_llamafactory.json)")
    args = parser.parse_args()

    try:
        return bench(args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if type(err).__name__ != "UserError":  # the project's one-line errors (e.g. a bad key=value)
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def bench(args) -> int:
    try:
        import psutil  # noqa: F401
    except ImportError:
        raise BenchError("psutil is not installed in this Python; run with the project's .venv/bin/python") from None
    try:
        from core.config import load_config
        from core.errors import UserError
    except ImportError as err:
        raise BenchError(f"cannot import the project ({err}); run from the repository with .venv/bin/python") from None

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise BenchError(f"--stages: {bad[0] if bad else 'nothing'} is not one of {', '.join(STAGES)}")
    if args.rounds < 1 or args.steps < 0:
        raise BenchError("--rounds must be at least 1 and --steps at least 0")
    home = (args.home or CACHE / f"home-{args.profile}").expanduser().resolve()
    if home.exists() and not home.is_dir():
        raise BenchError(f"--home {home} is not a directory")
    lf_venv = args.lf_venv.expanduser().resolve()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"--home {home}: {err.strerror}") from None
    log_dir = home / "bench-logs"
    log_dir.mkdir(exist_ok=True)
    base_overrides = shlex.split(args.base_overrides)
    try:
        cfg = load_config(args.profile, [])
        load_config(args.profile, base_overrides)  # checked before anything runs
    except UserError as err:
        raise BenchError(str(err)) from None
    env = child_env(args.threads, {"CHIMED_HOME": str(home)})

    versions = ensure_lf_venv(lf_venv, log_dir)
    print("LLaMA-Factory " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    merged = ensure_home(home, args.profile, base_overrides, env, log_dir)
    data_dir = lf_datasets(home, cfg, lf_venv / "bin" / "python", env, log_dir)
    optim = default_optim()
    sft_variants = ["ids", "template"] if args.sft_data == "both" else [args.sft_data]

    import peft
    import torch
    import transformers
    import trl

    ours_versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
    }
    print(
        f"ours: {', '.join(f'{k} {v}' for k, v in ours_versions.items())}; home {home}; optimizer {optim}; "
        f"threads {args.threads or 'default'}; {os.cpu_count()} CPUs",
        flush=True,
    )

    results: list[dict] = []
    out_path = args.out or home / "bench_vs_llamafactory.json"
    for rnd in range(1, args.rounds + 1):
        print(
            f"round {rnd}/{args.rounds} ({'ours first' if rnd % 2 else 'LLaMA-Factory first'}), load average "
            f"{os.getloadavg()[0]:.2f}",
            flush=True,
        )
        for stage in stages:
            tag = f"r{rnd}"
            variants = sft_variants if stage == "sft" else ["pt" if stage == "cpt" else "dpo"]
            jobs = [("ours", stage, None, tag)] + [("lf", stage, v, tag) for v in variants]
            for tool, stage_, variant, tag_ in jobs if rnd % 2 else jobs[1:] + jobs[:1]:
                if tool == "ours":
                    r = run_ours(stage_, home, args.profile, args.steps or None, env, log_dir, tag_)
                else:
                    out_dir = home / "lf" / "runs" / f"{stage_}-{variant}-{tag_}"
                    conf = lf_config(stage_, cfg, home, merged, data_dir, out_dir, args.steps or None, variant, optim)
                    r = run_lf(stage_, conf, lf_venv, env, log_dir, tag_, variant)
                r["round"] = rnd
                results.append(r)
                print(describe(r), flush=True)
            _save(out_path, args, home, versions, ours_versions, optim, results)

    print(
        f"\n{args.profile} profile, {args.rounds} round(s), stages {','.join(stages)}, "
        f"steps {args.steps or 'profile'}, threads {args.threads or 'default'}; LLaMA-Factory "
        f"{versions['llamafactory']} (transformers {versions['transformers']}, trl {versions['trl']}, "
        f"peft {versions['peft']}); ours transformers {ours_versions['transformers']}, trl "
        f"{ours_versions['trl']}, peft {ours_versions['peft']}\n"
    )
    print("\n".join(summary(results)))
    print("\nlosses at the same step (last round):")
    print("\n".join(loss_lines(results)) or "  (no common logged step)")
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; raw results: {out_path}")
    return 0


def _save(path: Path, args, home: Path, versions: dict, ours_versions: dict, optim: str, results: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "profile": args.profile,
                "home": str(home),
                "rounds": args.rounds,
                "steps": args.steps or None,
                "threads": args.threads or None,
                "optimizer": optim,
                "llamafactory": versions,
                "ours": ours_versions,
                "loadavg": os.getloadavg(),
                "results": results,
            },
            indent=1,
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    raise SystemExit(main())
