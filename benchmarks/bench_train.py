"""Wall time of `./launch.sh train-all --profile P` and, per stage, its wall time and training tokens/s.

    .venv/bin/python benchmarks/bench_train.py --profile demo [--home DIR] [key=value ...]

Runs in a fresh work directory (``--home``, default a temporary one): build-data, train-all without the
evaluation, and eval, each timed as its own command, then prints a Markdown table from the run's manifest.
train-all itself (which builds, trains and evaluates in one process) takes the sum minus two Python start-ups.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(args: list[str], env: dict) -> float:
    started = time.time()
    subprocess.run([sys.executable, "-m", "chimed", *args], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", choices=("tiny", "demo"))
    parser.add_argument("--home", type=Path, help="work directory (default: a new temporary one)")
    parser.add_argument("--skip-eval", action="store_true", help="time build-data and training only")
    args, overrides = parser.parse_known_args()
    home = args.home or Path(tempfile.mkdtemp(prefix=f"bench_train_{args.profile}_"))
    env = {**os.environ, "CHIMED_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
    common = ["--profile", args.profile, *overrides]

    build_s = timed(["build-data", *common], env)
    run_id = f"bench-{int(time.time())}"
    train_s = timed(["train-all", *common, "--run-id", run_id, "train.evaluate_after=false"], env)
    eval_s = 0.0 if args.skip_eval else timed(["eval", *common, "--run", run_id], env)
    manifest = json.loads((home / "runs" / run_id / "manifest.json").read_text(encoding="utf-8"))

    print(
        f"profile {args.profile}, run {run_id} in {home}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print("\n| stage | wall s | train s | steps | train tokens | tokens/s | final loss |")
    print("|---|---|---|---|---|---|---|")
    for stage, entry in manifest["stages"].items():
        m = entry["metrics"]
        log = home / "runs" / run_id / "logs" / stage / "trainer_log.jsonl"
        losses = [json.loads(line)["loss"] for line in log.open() if '"loss"' in line]
        print(
            f"| {stage} | {m.get('wall_s', '')} | {m['train_runtime_s']} | {m['steps']} | {m['train_tokens']:,} | "
            f"{m['tokens_per_s']:,.0f} | {losses[-1]:.3f} |"
        )
    print(
        f"\nbuild-data {build_s:.0f} s, train-all (no eval) {train_s:.0f} s, eval {eval_s:.0f} s, "
        f"total {build_s + train_s + eval_s:.0f} s"
    )


if __name__ == "__main__":
    main()
