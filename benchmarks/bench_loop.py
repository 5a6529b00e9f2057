"""The loop on a real run: judgments -> ``train-all --from dpo --resume-run ID`` -> ``eval --compare``, timed.

    CHIMED_HOME=DIR .venv/bin/python benchmarks/bench_loop.py --run ID [--profile demo] [--judgments 200]

Stands in for clinicians with a scripted judge so the figure is reproducible: for ChiMed-SFT's medical
questions the run's sft and dpo greedy answers are recorded as comparisons in the preference store and
the answer sharing more characters with the data's answer wins (a tie when equal). Then times the two commands a user runs (as subprocesses, start-up included) and prints the
comparison table. The store and the run folder of CHIMED_HOME are changed: use a copy for measuring.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from core.config import load_config
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.repository import PreferenceStore
from training.manifest import latest_run, run_dir

REPO = Path(__file__).resolve().parents[1]


def overlap(answer: str, reference: str) -> int:
    return len(set(answer) & set(reference))


def record_judgments(cfg, run_id: str, limit: int) -> int:
    """One comparison per question of ChiMed-SFT's medical QA (eval questions would be dropped from
    ChiMed-DPO as contamination): the run's sft and dpo greedy answers, judged against the SFT answer."""
    from training.evaluation.generation import qa_generations
    from training.modeling import load_stage

    records = [json.loads(line) for line in (cfg.data_dir / "sft.jsonl").read_text(encoding="utf-8").splitlines()]
    questions = [
        {"id": str(i), "messages": r["messages"][:-1], "reference": r["messages"][-1]["content"]}
        for i, r in enumerate(records)
        if r["source"] == "kg_qa" and len(r["messages"]) == 2
    ][:limit]
    answers = {}
    for stage in ("sft", "dpo"):
        model, tokenizer = load_stage(run_dir(cfg, run_id), stage)
        answers[stage] = qa_generations(
            model,
            tokenizer,
            questions,
            True,
            cfg.eval.max_new_tokens,
            cfg.eval.batch_size,
            cfg.eval.max_length,
            desc=stage,
        )
    made = 0
    with PreferenceStore(cfg.database_url) as store:
        judge = store.demo_annotator()
        for q, a, b in zip(questions, answers["sft"], answers["dpo"]):
            comparison = store.record_comparison(
                ComparisonIn(
                    judge.id,
                    q["messages"],
                    [ResponseIn(f"{run_id}/sft", a["answer"]), ResponseIn(f"{run_id}/dpo", b["answer"])],
                )
            )
            score_a, score_b = overlap(a["answer"], q["reference"]), overlap(b["answer"], q["reference"])
            choice = "A" if score_a > score_b else "B" if score_b > score_a else "tie"
            store.submit_judgment(JudgmentIn(comparison.id, judge.id, choice=choice))
            made += 1
    return made


def timed(args: list[str]) -> float:
    started = time.time()
    subprocess.run([sys.executable, "-m", "chimed", *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--profile", default="demo", choices=("tiny", "demo", "paper"))
    parser.add_argument("--judgments", type=int, default=200)
    args = parser.parse_args()
    cfg = load_config(args.profile)
    made = record_judgments(cfg, args.run, args.judgments)
    retrain = timed(["train-all", "--profile", args.profile, "--from", "dpo", "--resume-run", args.run])
    new_run = latest_run(cfg)
    compare = timed(["eval", "--profile", args.profile, "--run", new_run, "--compare", args.run])
    manifest = json.loads((run_dir(cfg, new_run) / "manifest.json").read_text(encoding="utf-8"))
    clinician = [p for p in manifest["dpo_pair_ids"] if p.startswith("clin-")]
    print(
        f"{made} judgments recorded; new run {new_run} (parent {manifest['parent_run']}) trained on "
        f"{len(clinician)} clinician pairs\n"
    )
    print(
        f"| command | wall s |\n|---|---:|\n| train-all --from dpo --resume-run {args.run} | {retrain:.1f} |\n"
        f"| eval --run {new_run} --compare {args.run} | {compare:.1f} |\n"
    )
    print((run_dir(cfg, new_run) / "eval" / f"compare_{args.run}.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
