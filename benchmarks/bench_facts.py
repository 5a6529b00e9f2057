"""The factual-precision checker on answers whose truth is known: the build's own held-out answers.

    CHIMED_HOME=DIR .venv/bin/python benchmarks/bench_facts.py [--profile demo]

Reads ``data/chimed/eval/`` of the build and checks (``training/evaluation/facts.py``), each against its question:
- the QA references (the house-style answers, every fact CMeKG's): every claim should be confirmed;
- the held-out preference pairs' chosen answers (CMeKG's facts) and rejected answers (other entities' values for the
  same relation, or the chosen facts without the advice): the rejected ones' wrong values should be contradicted.
Prints one Markdown row per set (claims, answers with a claim, the three shares, precision with its interval) and
the time the checker took to build and to read them.
"""

from __future__ import annotations

import argparse
import time

from core.config import load_config
from core.files import read_jsonl
from training.evaluation.facts import annotate, fact_checker, fact_metrics, last_question
from training.evaluation.report import format_value


def _row(name: str, answers: list[str], questions: list[str]) -> str:
    m = fact_metrics(annotate(fact_checker(), [{"answer": a} for a in answers], questions))
    cells = [str(len(answers)), str(m["fact_claims_n"]), str(m["fact_answers_with_claims"])]
    cells += [format_value(k, m[k]) for k in ("fact_confirmed_share", "fact_contradicted_share")]
    cells += [format_value(k, m[k]) for k in ("fact_uncheckable_share", "fact_precision", "fact_precision_ci95")]
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", choices=("tiny", "demo", "paper"))
    args, overrides = parser.parse_known_args()
    folder = load_config(args.profile, overrides).data_dir / "eval"
    started = time.perf_counter()
    fact_checker()
    built = time.perf_counter() - started
    qa, pref = read_jsonl(folder / "qa.jsonl"), read_jsonl(folder / "pref.jsonl")
    started = time.perf_counter()
    rows = [_row("QA references", [r["reference"] for r in qa], [last_question(r["messages"]) for r in qa])]
    pref_questions = [last_question(r["prompt"]) for r in pref]
    for side in ("chosen", "rejected"):
        rows.append(_row(f"pairs, {side}", [r[side][-1]["content"] for r in pref], pref_questions))
    read = time.perf_counter() - started
    print("| answers | n | claims | with a claim | confirmed | contradicted | uncheckable | fact prec | 95% CI |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\nchecker built from CMeKG in {built:.1f} s; {len(qa) + 2 * len(pref)} answers read in {read:.1f} s")


if __name__ == "__main__":
    main()
