"""The same SFT aligned by each method (docs/training.md "Alignment methods"), evaluated the same way, in one table.

    CHIMED_HOME=DIR .venv/bin/python benchmarks/bench_align.py --run ID [--profile demo]
        [--methods dpo,kto,orpo,simpo,grpo] [--judgments 200] [--prefix align]

``ID`` is a run with a finished sft stage. First, optionally, ``--judgments`` scripted clinician judgments
(benchmarks/bench_loop.py's judge: the answer sharing more characters with ChiMed-SFT's answer wins) are
recorded and exported, so ChiMed-DPO has clinician train pairs and the evaluation a clinician held-out set.
Then a reward model is trained once on that SFT (run ``<prefix>-rm``, ``align.reward_model=true``) and
judges every method's answers (``eval.reward_judge``), and each method trains as a user would run it:
``train-all --from align --resume-run <prefix>-rm align.method=M`` (GRPO with the reward model as one of its
rewards), evaluation included. Prints one row per method, the SFT first, with the alignment stage's wall time
(loading, data preparation, training and saving; the evaluation is not in it). Writes runs into CHIMED_HOME: use a copy of a home for measuring.
"""

from __future__ import annotations

import argparse
import json
import time

from core.config import load_config
from core.registry import align_methods
from training.manifest import read_manifest_at, run_dir
from training.pipeline import train_all

COLUMNS = [
    ("exam acc", "exam_acc"),
    ("BLEU-1", "bleu1"),
    ("ROUGE-1", "rouge1"),
    ("pref acc", "pref_acc"),
    ("clinician pref acc", "pref_acc_clinician"),
    ("RM score", "reward_judge_mean"),
]


def percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def row(name: str, metrics: dict, stage_s) -> str:
    cells = [
        percent(metrics.get(k))
        if k != "reward_judge_mean"
        else ("—" if metrics.get(k) is None else f"{metrics[k]:+.3f}")
        for _, k in COLUMNS
    ]
    return f"| {name} | " + " | ".join([*cells, "—" if stage_s is None else f"{stage_s:.0f}"]) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run with a finished sft stage")
    parser.add_argument("--profile", default="demo", choices=("tiny", "demo", "paper"))
    parser.add_argument("--methods", default=",".join(align_methods()))
    parser.add_argument("--judgments", type=int, default=0, help="scripted clinician judgments recorded first")
    parser.add_argument("--prefix", default="align")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    if args.judgments:
        from bench_loop import record_judgments

        from chimed import export_clinician_pairs, register_run

        cfg = load_config(args.profile)
        register_run(cfg, args.run)  # its checkpoints become contestants of the store, as train-all leaves them
        print(f"{record_judgments(cfg, args.run, args.judgments)} scripted judgments recorded", flush=True)
        export_clinician_pairs(cfg)

    rm_run = f"{args.prefix}-rm"
    started = time.time()
    train_all(
        load_config(args.profile, ["align.reward_model=true", "train.evaluate_after=false"]),
        from_stage="rm",
        resume_run=args.run,
        stages=["rm"],
        run_id=rm_run,
    )
    print(f"reward model: run {rm_run} in {time.time() - started:.0f} s", flush=True)

    rows = []
    for method in methods:
        overrides = [f"align.method={method}", f"eval.reward_judge={rm_run}"]
        if method == "grpo":
            overrides.append("align.reward_model=true")  # the reward model's score is one of GRPO's rewards
        cfg = load_config(args.profile, overrides)
        run_id = train_all(cfg, from_stage="align", resume_run=rm_run, run_id=f"{args.prefix}-{method}")
        path = run_dir(cfg, run_id)
        results = json.loads((path / "eval" / "results.json").read_text(encoding="utf-8"))["stages"]
        if not rows:
            rows.append(row("sft (before alignment)", results["sft"], None))
        stage_s = read_manifest_at(path)["stages"][method]["metrics"].get("wall_s")
        rows.append(row(method, results[method], stage_s))
        print(rows[-1], flush=True)

    header = ["setting", *(name for name, _ in COLUMNS), "stage wall s"]
    print("\n| " + " | ".join(header) + " |\n|---|" + "---:|" * (len(header) - 1))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
