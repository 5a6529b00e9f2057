"""Serving benchmark: memory of a run's four contestants in the app's model pool, and time to first
token of four panels answering at once against one panel alone.

    .venv/bin/python benchmarks/bench_serving.py [--profile demo] [--run ID] [--repeats 40] [--max-new-tokens 32]

Memory is measured in fresh child processes, one per set-up: the bytes of the distinct weight
tensors held (exact), and, after answering once, the growth of the resident set (VmRSS; CUDA bytes
allocated on a GPU) over the same process warmed up and emptied again before loading:

- one model: the run's cpt stage as one full model (what "one model" means in the targets);
- pool: the four contestants (base, cpt, sft, dpo) in the model pool, as the app serves them; the pool
  keeps each full model in a worker process of its own, forked from a server process that has the
  libraries loaded, so its growth is that of this process plus each worker's private memory (the pages
  it shares with no other process) plus the weight files the workers map (shared pages: counted once);
  the fork server's resident set, paid once per app whatever the number of models, is shown apart;
- four copies: the four stages loaded as four merged models, what the pool avoids.

Time to first token (from the request to the first generated token of a panel) is measured in this process
with the pool warm: each contestant alone, then the four together (the slowest panel counts).
Targets (issue 6): pool memory <= 1.6 x one model; four panels' time to first token <= 1.5 x one panel's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from app.contestants import resolve_contestants  # noqa: E402
from app.serving.memory import mapped_files, memory_of, weight_bytes  # noqa: E402
from app.serving.pool import ModelPool, PanelRequest  # noqa: E402
from app.serving.sampling import Decoding  # noqa: E402
from core.config import load_config  # noqa: E402
from core.errors import UserError  # noqa: E402
from core.registry import stage_names  # noqa: E402
from training.manifest import latest_run  # noqa: E402
from training.modeling import load_causal_lm, load_stage, load_tokenizer, stage_chain  # noqa: E402

STAGES = stage_names()

PROMPTS = [
    "高血压患者饮食上要注意什么？",
    "糖尿病有哪些常见症状？",
    "感冒了需要吃抗生素吗？",
    "头痛三天伴低热，应该怎么处理？",
]
MEMORY_SETUPS = ("one model", "pool", "four copies")


def load_setup(setup: str, profile: str, run_id: str) -> dict:
    """Load one set-up in this (fresh) process, answer once with it, and report its memory."""
    cfg = load_config(profile)
    contestants = resolve_contestants(cfg, [f"{run_id}/{s}" for s in STAGES])
    device = cfg.app.device or ("cuda" if torch.cuda.is_available() else "cpu")
    question = [{"role": "user", "content": PROMPTS[1]}]
    # warm-up: the first load and generate initialise libraries (lazy imports, kernels); freed again
    warm = ModelPool(cfg, device=device)
    warm.generate([PanelRequest(contestants[2], question)], Decoding(0.7, 0.9, 4, 0)).wait(timeout=600)
    warm.close()
    del warm
    load_stage(contestants[2].run_dir, "sft", device=device)  # the in-process set-ups' lazy imports, freed too
    gc.collect()
    before_rss = memory_of()["rss"]
    before_cuda = torch.cuda.memory_allocated() if device == "cuda" else 0

    pool, models, extra = ModelPool(cfg, device=device), [], {}
    if setup == "one model":
        cpt = stage_chain(contestants[1].run_dir, "cpt")[0]["abspath"]
        models.append((load_causal_lm(cpt).to(device).eval(), load_tokenizer(cpt)))
        extra["param_bytes"] = weight_bytes(models[0][0])
    elif setup == "pool":
        answers = pool.generate([PanelRequest(c, question) for c in contestants], Decoding(0.7, 0.9, 4, 0)).wait(
            timeout=600
        )
        if any(a.error for a in answers):
            raise SystemExit(f"the pool failed: {[a.error for a in answers]}")
        workers = pool.worker_memory()
        extra["param_bytes"] = pool.resident_bytes(workers)
        # the workers' own pages, plus the cache files they map (shared pages, in no worker's own) once
        extra["workers_private"] = sum(w["private"] for w in workers) + sum(mapped_files(workers).values())
        extra["workers_cuda"] = sum(w["cuda"] or 0 for w in workers)
        extra["fork_server"] = memory_of(fork_server_pid())
        extra["loaded"] = {Path(k).name: v for k, v in pool.loaded().items()}
    elif setup == "four copies":
        models += [load_stage(c.run_dir, c.stage, device=device) for c in contestants]
        extra["param_bytes"] = sum(weight_bytes(m) for m, _ in models)
    for model, tokenizer in models:  # answer once, so that every weight page is really resident
        ids = tokenizer.apply_chat_template(question, add_generation_prompt=True)["input_ids"]
        with torch.inference_mode():
            model(input_ids=torch.tensor([ids], device=device))
    gc.collect()
    rss = memory_of()["rss"] - before_rss + extra.pop("workers_private", 0)
    cuda = (torch.cuda.memory_allocated() - before_cuda + extra.pop("workers_cuda", 0)) if device == "cuda" else None
    pool.close()
    return {"setup": setup, "rss": rss, "cuda": cuda, **extra}


def fork_server_pid() -> int:
    from multiprocessing import forkserver

    return forkserver._forkserver._forkserver_pid  # (no public accessor; a benchmark may look inside)


def measure_memory(profile: str, run_id: str) -> dict[str, dict]:
    out = {}
    for setup in MEMORY_SETUPS:
        command = [sys.executable, __file__, "--profile", profile, "--run", run_id, "--memory-setup", setup]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        out[setup] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def time_to_first_token(profile: str, run_id: str, repeats: int, max_new_tokens: int) -> dict:
    """Median first-token times: each contestant alone, and the four at once (slowest and mean panel)."""
    cfg = load_config(profile)
    contestants = resolve_contestants(cfg, [f"{run_id}/{s}" for s in STAGES])
    pool = ModelPool(cfg)
    errors = pool.preload(contestants)
    if errors != [None] * 4:
        raise SystemExit(f"the pool failed to load: {errors}")

    def first_tokens(group, prompt, seed):
        decoding = Decoding(temperature=0.7, top_p=0.9, max_new_tokens=max_new_tokens, seed=seed)
        answers = pool.generate([PanelRequest(c, [{"role": "user", "content": prompt}]) for c in group], decoding).wait(
            timeout=600
        )
        if any(a.error for a in answers):
            raise SystemExit(f"generation failed: {[a.error for a in answers]}")
        return [a.first_token_s for a in answers], [a.latency_s for a in answers], [a.n_tokens for a in answers]

    first_tokens(contestants, PROMPTS[0], 0)  # warm-up: first calls allocate caches
    alone, together_max, together_mean, latency_alone, latency_together, tokens = [], [], [], [], [], []
    for r in range(repeats):
        prompt = PROMPTS[r % len(PROMPTS)]
        for c in contestants:
            ttft, lat, _ = first_tokens([c], prompt, r)
            alone += ttft
            latency_alone += lat
        ttft, lat, n = first_tokens(contestants, prompt, r)
        together_max.append(max(ttft))
        together_mean.append(statistics.mean(ttft))
        latency_together.append(max(lat))
        tokens += n
    pool.close()
    return {
        "alone": statistics.median(alone),
        "together_slowest": statistics.median(together_max),
        "together_mean": statistics.median(together_mean),
        "answer_alone": statistics.median(latency_alone),
        "answers_together": statistics.median(latency_together),
        "tokens": statistics.mean(tokens),
        "repeats": repeats,
    }


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--run", help="run id (default: the newest completed run)")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--memory-setup", choices=MEMORY_SETUPS, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    cfg = load_config(args.profile)
    run_id = args.run or latest_run(cfg)
    if run_id is None:
        raise UserError(f"no completed run under {cfg.runs_dir}: ./launch.sh train-all --profile {args.profile}")
    if args.memory_setup:
        print(json.dumps(load_setup(args.memory_setup, args.profile, run_id)))
        return 0

    device = cfg.app.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    machine = gpu or f"CPU, {os.cpu_count()} cores"
    print(
        f"run {run_id} (profile {args.profile}) on {machine}, torch {torch.__version__}, "
        f"{platform.python_version()}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    memory = measure_memory(args.profile, run_id)
    one = memory["one model"]
    print(
        "\n| set-up | weights held (distinct tensor bytes) | x one model | resident growth | CUDA allocated "
        "| worker processes |\n|---|---|---|---|---|---|"
    )
    for setup in MEMORY_SETUPS:
        m = memory[setup]
        workers = (
            (
                f"{len(m['loaded'])}; fork server {mib(m['fork_server']['rss'])} resident, "
                f"{mib(m['fork_server']['private'])} of it its own"
            )
            if "loaded" in m
            else "none"
        )
        print(
            f"| {setup} | {mib(m['param_bytes'])} | {m['param_bytes'] / one['param_bytes']:.2f}x | {mib(m['rss'])} "
            f"| {mib(m['cuda'])} | {workers} |"
        )
    print(f"\n(target: pool <= 1.6x one model.) The pool holds: {memory['pool']['loaded']}")

    t = time_to_first_token(args.profile, run_id, args.repeats, args.max_new_tokens)
    print(
        f"\ntime to first token (median of {t['repeats']} rounds, {args.max_new_tokens} new tokens max, "
        f"{t['tokens']:.0f} generated on average):"
    )
    print(
        "| one panel alone | four panels at once (slowest panel) | four at once (mean panel) | ratio |\n|---|---|---|---|"
    )
    print(
        f"| {t['alone'] * 1000:.1f} ms | {t['together_slowest'] * 1000:.1f} ms | {t['together_mean'] * 1000:.1f} ms "
        f"| {t['together_slowest'] / t['alone']:.2f}x (target <= 1.5x) |"
    )
    print(
        f"\nwhole answer: one panel alone {t['answer_alone'] * 1000:.0f} ms; four panels at once, until the last is "
        f"done, {t['answers_together'] * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
