"""Adaptive vs uniform allocation (``study.allocation``): judgments spent per prompt, and how often the prompt's
majority verdict is the true one, with synthetic clinicians run through the real store and queue.

    .venv/bin/python benchmarks/bench_allocation.py [--seeds 20] [--prompts 40] [--k 3,5] [--identical 0.1]

Each simulated study is a fresh SQLite store with a bank of ``--prompts`` prompts and a queue round of two
contestants (old, new) started with the allocation under test, ``store.annotators_per_prompt`` = k. Each prompt
has a true verdict: new better (60%), old better (30% of the others), or, for a share ``--identical`` of the
prompts, the two answers are the same text (truth: a tie). Six synthetic clinicians with known accuracies (0.90,
0.85, 0.85, 0.80, 0.75, and a careless 0.55) take turns in a random order per pass: each takes their next
assignment from the store (``next_assignment``), records the comparison as the arena does (``record_comparison``;
the store may resolve it as a tie without them) and votes (``submit_judgment``): the truth with their accuracy,
otherwise the wrong answer (80%) or a tie (20%); identical answers always get a tie. The study ends when a whole
pass hands nobody anything.

A prompt's verdict is the most frequent vote among its judgments (a tie between vote counts: undecided, counted
wrong), or a tie where the queue resolved it. The same seed gives both allocations the same truths and the same
clinicians; their votes are drawn per (prompt, clinician), so a clinician's vote on a prompt is the same under
both rules. Means over seeds with a normal 95% interval. The script asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from argon2 import PasswordHasher  # noqa: E402

from core.config import load_config  # noqa: E402
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn  # noqa: E402
from preference_store.repository import PreferenceStore, accounts  # noqa: E402

OLD, NEW = "old/dpo", "new/dpo"  # two runs' DPO stages
ACCURACY = (0.90, 0.85, 0.85, 0.80, 0.75, 0.55)
NEW_BETTER = 0.6
WRONG_IS_TIE = 0.2


def work_the_queue(store: PreferenceStore, clinicians: list[int], rng, take) -> None:
    """Scripted clinicians work the store's queue as the arena's annotators do: in a random order per pass
    (``rng.shuffle``), each takes their next assignment (``next_assignment``) and ``take(annotator, assignment)``
    records it, until a whole pass hands nobody anything."""
    order = list(clinicians)
    while True:
        handed = 0
        rng.shuffle(order)
        for annotator in order:
            assignment = store.next_assignment(annotator)
            if assignment is None:
                continue
            handed += 1
            take(annotator, assignment)
        if handed == 0:
            return


def vote(rng: random.Random, truth: str, accuracy: float) -> str:
    """A clinician's verdict (old | new | tie) on a prompt whose true verdict is ``truth``."""
    if truth == "tie":  # identical answers
        return "tie"
    if rng.random() < accuracy:
        return truth
    return "tie" if rng.random() < WRONG_IS_TIE else ({"old", "new"} - {truth}).pop()


def study(allocation: str, k: int, seed: int, n_prompts: int, identical: float, tmp: Path) -> dict:
    """One simulated study: judgments, prompts, prompts whose verdict is right, third-or-later judgments."""
    rng = random.Random(seed)
    truths = [
        "tie" if rng.random() < identical else ("new" if rng.random() < NEW_BETTER else "old") for _ in range(n_prompts)
    ]
    cfg = load_config("tiny")
    url = f"sqlite:///{tmp / f'{allocation}-{k}-{seed}.db'}"
    store = PreferenceStore(url, replace(cfg.store, annotators_per_prompt=k), replace(cfg.study, allocation=allocation))
    try:
        store.register_checkpoints("old", ["dpo"])
        store.register_checkpoints("new", ["dpo"])
        bank = tmp / f"bank-{seed}.jsonl"
        bank.write_text(
            "".join(
                json.dumps({"prompt": f"第{i}题：头痛三天怎么办？"}, ensure_ascii=False) + "\n"
                for i in range(n_prompts)
            ),
            encoding="utf-8",
        )
        store.import_bank(bank)
        index = {p.id: int(p.prompt[1 : p.prompt.index("题")]) for p in store.bank_prompts()}
        store.start_queue_round(None, [OLD, NEW], allocation=allocation)
        clinicians = [store.add_annotator(f"dr_{i}", "a-long-test-password").id for i in range(len(ACCURACY))]
        accuracy = dict(zip(clinicians, ACCURACY))
        votes: dict[int, list[str]] = {}
        resolved: set[int] = set()

        def take(annotator: int, assignment) -> None:
            i = index[assignment.bank_prompt.id]
            same = truths[i] == "tie"
            answers = [
                ResponseIn(OLD, f"第{i}题：多休息，观察病情。"),
                ResponseIn(NEW, f"第{i}题：多休息，观察病情。" if same else f"第{i}题：应及时就医，明确病因。"),
            ]
            comparison = store.record_comparison(
                ComparisonIn(
                    annotator,
                    assignment.bank_prompt.messages,
                    answers,
                    bank_prompt_id=assignment.bank_prompt.id,
                    assignment_id=assignment.id,
                )
            )
            if comparison.resolved is not None:
                resolved.add(i)
                return
            # a clinician's vote on a prompt depends on the seed, the prompt and the clinician only
            verdict = vote(random.Random(f"{seed}:{i}:{annotator}"), truths[i], accuracy[annotator])
            choice = {"old": "A", "new": "B", "tie": "tie"}[verdict]
            store.submit_judgment(JudgmentIn(comparison.id, annotator, choice=choice))
            votes.setdefault(i, []).append(verdict)

        work_the_queue(store, clinicians, rng, take)
        judgments = store.counts().judgments
    finally:
        store.close()
    assert judgments == sum(len(v) for v in votes.values())  # every vote the simulator made is in the store
    right = 0
    for i, truth in enumerate(truths):
        if i in resolved:
            right += truth == "tie"
            continue
        counts = Counter(votes.get(i, [])).most_common()
        if counts and (len(counts) == 1 or counts[0][1] > counts[1][1]):
            right += counts[0][0] == truth
    return {
        "judgments": judgments,
        "prompts": n_prompts,
        "right": right,
        "beyond_two": sum(max(0, len(v) - 2) for v in votes.values()),
        "resolved": len(resolved),
    }


def mean_ci(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {half:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--k", default="3,5", help="annotators per prompt (comma-separated)")
    parser.add_argument("--identical", type=float, default=0.1, help="share of prompts with identical answers")
    args = parser.parse_args()
    accounts._hasher = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)  # logins are not measured

    print(
        "| k | allocation | judgments / prompt | majority verdict right | judgments beyond the second / prompt "
        "| resolved without a clinician / prompt | wall s |"
    )
    print("|---|---|---|---|---|---|---|")
    for k in (int(x) for x in args.k.split(",")):
        for allocation in ("uniform", "adaptive"):
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                runs = [
                    study(allocation, k, seed, args.prompts, args.identical, Path(tmp)) for seed in range(args.seeds)
                ]
            wall = time.perf_counter() - start
            cells = [mean_ci([r[key] / r["prompts"] for r in runs]) for key in ("judgments", "right", "beyond_two")]
            resolved = mean_ci([r["resolved"] / r["prompts"] for r in runs])
            print(f"| {k} | {allocation} | {' | '.join(cells)} | {resolved} | {wall:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
