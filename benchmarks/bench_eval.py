"""Wall time of evaluating every stage of a run, per stage and per part, without the cache.

    CHIMED_HOME=DIR .venv/bin/python benchmarks/bench_eval.py --run ID [--profile demo] [key=value ...]

Evaluates the run in this process with ``eval.use_cache=false`` (everything is measured again; the reports
are rewritten with the same numbers) and prints one Markdown row per stage from ``results.json``'s
``timing_s``: exam (k-shot and 0-shot), generation, perplexity, preference pairs, and the stage's wall time
including model loading.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from core.config import load_config
from training.evaluation.evaluate import evaluate_run

PARTS = ("exam", "generation", "perplexity", "preference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--profile", default="demo", choices=("tiny", "demo", "paper"))
    args, overrides = parser.parse_known_args()
    cfg = load_config(args.profile, [*overrides, "eval.use_cache=false"])
    started = time.perf_counter()
    results = evaluate_run(cfg, args.run)
    total = time.perf_counter() - started
    print(
        f"\nrun {args.run} ({args.profile}), {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}; sets {results['settings']['sets']}"
    )
    print("\n| stage | " + " | ".join(f"{p} s" for p in PARTS) + " | stage wall s |")
    print("|---|" + "---:|" * (len(PARTS) + 1))
    for stage, timing in results["timing_s"].items():
        parts = " | ".join(f"{timing['measured'].get(p, 0.0):.1f}" for p in PARTS)
        print(f"| {stage} | {parts} | {timing['wall']:.1f} |")
    print(f"\nevaluate_run total (loading, measuring, reports): {total:.1f} s")


if __name__ == "__main__":
    main()
