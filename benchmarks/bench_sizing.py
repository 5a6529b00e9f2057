"""Sample size for ``compare-runs`` (issue 30): how many bank prompts x annotators a study needs before the
verdict says "better" for a newer run that truly wins 60% or 70% of its battles. About a minute on 2 cores.

    .venv/bin/python benchmarks/bench_sizing.py [--studies 300] [--prompts 5,10,20,30,50] [--annotators 1,2,3,5]

Each simulated study is what the verdict sees: ``prompts`` (held-out) bank prompts, each judged once by each of
``annotators`` annotators as a pairwise vote between the new and the old checkpoint (no ties). Prompts differ:
each has its own win probability, drawn from a Beta distribution with mean ``win_rate`` and concentration
``--concentration`` (default 8: a standard deviation of about 0.16 across prompts), so more annotators on the same
prompts help less than more prompts, as in a real bank. The verdict is the project's own
:func:`preference_store.statistics.run_comparison.compare_checkpoints` at the default settings (``store.run_comparison_rounds``
bootstrap resamples over prompts, ``store.run_comparison_min_prompts``). Power is the share of studies whose verdict
is "better"; its Monte-Carlo standard error is at most 0.5/sqrt(studies) (0.029 for 300). The share wrongly
"better" when the runs are equal (win rate 50%) is printed too: the false-positive rate, about 2.5% by design.
Figures printed as markdown; nothing asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import StoreConfig  # noqa: E402
from preference_store.statistics.bradley_terry import JudgedComparison, Panel  # noqa: E402
from preference_store.statistics.run_comparison import compare_checkpoints  # noqa: E402

NEW, OLD, STAGE = "new", "old", "dpo"
PANELS = {"A": Panel("a", f"{NEW}/{STAGE}", 100, False), "B": Panel("b", f"{OLD}/{STAGE}", 100, False)}


def simulated_study(
    rng: np.random.Generator, prompts: int, annotators: int, win_rate: float, concentration: float
) -> list[JudgedComparison]:
    """One study's held-out pairwise votes: prompt i's votes for the new checkpoint are Bernoulli(p_i)."""
    per_prompt = (
        rng.beta(win_rate * concentration, (1 - win_rate) * concentration, size=prompts)
        if win_rate not in (0.0, 1.0)
        else np.full(prompts, win_rate)
    )
    wins = rng.random((prompts, annotators)) < per_prompt[:, None]
    return [
        JudgedComparison(
            f"j{i}-{a}",
            f"c{i}-{a}",
            a,
            "pairwise",
            "A" if wins[i, a] else "B",
            None,
            PANELS,
            bank_prompt_id=f"p{i}",
            split="heldout",
        )
        for i in range(prompts)
        for a in range(annotators)
    ]


def power(
    rng: np.random.Generator,
    settings: StoreConfig,
    studies: int,
    prompts: int,
    annotators: int,
    win_rate: float,
    concentration: float,
) -> float:
    """Share of simulated studies whose verdict is "better"."""
    better = 0
    for _ in range(studies):
        verdict = compare_checkpoints(
            simulated_study(rng, prompts, annotators, win_rate, concentration),
            NEW,
            OLD,
            STAGE,
            split="heldout",
            rounds=settings.run_comparison_rounds,
            seed=int(rng.integers(2**31)),
            min_prompts=settings.run_comparison_min_prompts,
        )
        better += verdict.verdict == "better"
    return better / studies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300, help="simulated studies per cell")
    parser.add_argument("--prompts", default="5,10,20,30,50", help="held-out bank prompts")
    parser.add_argument("--annotators", default="1,2,3,5", help="annotators judging every prompt")
    parser.add_argument("--win-rates", default="0.6,0.7", help="the new checkpoint's true share of battles won")
    parser.add_argument("--concentration", type=float, default=8.0, help="Beta concentration of per-prompt win rates")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = StoreConfig()
    rng = np.random.default_rng(args.seed)
    prompts = [int(p) for p in args.prompts.split(",")]
    annotators = [int(a) for a in args.annotators.split(",")]
    start = time.perf_counter()
    print(
        f"compare-runs power: share of {args.studies} simulated studies per cell with verdict 'better' "
        f"({settings.run_comparison_rounds} bootstrap resamples, verdict from {settings.run_comparison_min_prompts} "
        f"prompts; Monte-Carlo s.e. <= {0.5 / args.studies**0.5:.3f}; per-prompt win rates Beta, "
        f"concentration {args.concentration:g})\n"
    )
    for win_rate in (float(w) for w in args.win_rates.split(",")):
        print(f"true win rate {win_rate:.0%}\n")
        print("| held-out prompts | " + " | ".join(f"{a} annotator{'s' * (a > 1)}" for a in annotators) + " |")
        print("|---" * (len(annotators) + 1) + "|")
        for p in prompts:
            cells = [power(rng, settings, args.studies, p, a, win_rate, args.concentration) for a in annotators]
            print(f"| {p} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
        print()
    false_positive = power(rng, settings, args.studies, max(prompts), max(annotators), 0.5, args.concentration)
    print(
        f"equal runs (win rate 50%), {max(prompts)} prompts x {max(annotators)} annotators: 'better' in "
        f"{false_positive:.3f} of studies\n"
    )
    print(f"elapsed {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
