"""Simulated annotation studies through the real store and queue (issue 33): how many judgments a run-vs-run
question takes, and how often its verdict is wrong when it is watched continuously.

    nice -n 5 .venv/bin/python benchmarks/bench_study.py [--null-studies 200] [--null-judgments 600]
        [--studies 20] [--budget 3000] [--rates 0.5,0.55,0.6,0.7] [--seed 0]

The simulator (:class:`SimulatedStudy`, reusable for other measurements of the queue) drives a real
:class:`~preference_store.repository.PreferenceStore` on a throwaway SQLite file: it imports a bank
(``import_bank``), registers two runs' DPO checkpoints, starts a blind queue round of exactly those two
(``start_queue_round``), and then lets synthetic clinicians take turns: ``next_assignment``, ``record_comparison``
with the two answers in a random order, ``submit_judgment``. Nothing about the queue is re-implemented; when the
store stops handing out prompts (its question decided, or the bank used up), the study ends.

The clinicians (:class:`Clinicians`): each bank prompt has its own chance ``q`` that a careful, unbiased clinician
prefers the new answer (``0.5 + delta`` plus a uniform spread across prompts); each clinician misreads a prompt
with their own probability (evenly spread from 0 to ``max_noise``), ``careless`` of them vote at random, a clinician
calls a tie with probability ``ties``, and with probability ``position_bias`` just picks panel A. The true win rate
of a judgment is then ``0.5 + shrink * delta`` (:meth:`Clinicians.true_win_rate`); ``delta`` is chosen so it is the
rate asked for. Under no difference (0.5) every prompt's ``q`` is 0.5.

Two measurements:

- **Wrong verdicts under continuous monitoring** (``--null-studies`` studies at a true win rate of 0.5, each run
  with ``study.decisions: fixed`` so the queue does not stop, up to ``--null-judgments`` judgments). The store's
  judgments are read back in time order and each verdict is read after every completed prompt: the anytime-valid
  one (:mod:`preference_store.statistics.sequential`, what the store stops on) and the fixed-sample bootstrap
  (naive peeking: stop at the first look that says better or worse). Wrong = better or worse at any look.
- **Judgments to the correct verdict** (``--studies`` studies per true win rate, ``study.decisions: anytime``, so
  the queue stops itself at the decision, at most ``--budget`` judgments): the judgments after which the decision
  was reached (``decided_after``), for better at rates above 0.5 and same (within ``study.margin``) at 0.5.

Figures printed as markdown, with Wilson 95% intervals for rates and bootstrap 95% intervals for medians; nothing
asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import StoreConfig, StudyConfig  # noqa: E402
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn  # noqa: E402
from preference_store.repository import PreferenceStore  # noqa: E402
from preference_store.repository.leaderboard import load_judged  # noqa: E402
from preference_store.statistics.run_comparison import compare_checkpoints, prompt_battles  # noqa: E402
from preference_store.statistics.sequential import SAME, confidence_sequence, prompt_units, verdict_of  # noqa: E402

NEW_RUN, OLD_RUN, STAGE = "new", "old", "dpo"
NEW, OLD = f"{NEW_RUN}/{STAGE}", f"{OLD_RUN}/{STAGE}"


@dataclass(frozen=True)
class Clinicians:
    """The synthetic clinicians of a study (see the module docstring)."""

    count: int = 12
    max_noise: float = 0.2  # each misreads with a probability evenly spread over [0, max_noise]
    careless: float = 0.1  # share voting at random
    ties: float = 0.1
    position_bias: float = 0.1  # chance of just picking panel A
    prompt_spread: float = 0.15  # prompts' q: 0.5 + delta + uniform(-spread, spread), kept inside [0, 1]

    def noise(self) -> np.ndarray:
        """Each clinician's misreading probability; the careless ones are the last ``careless`` share."""
        return np.linspace(0.0, self.max_noise, self.count)

    def careless_ones(self) -> set[int]:
        return set(range(self.count - round(self.careless * self.count), self.count))

    def shrink(self) -> float:
        """How much of a careful clinician's preference reaches the average vote."""
        careful = [i for i in range(self.count) if i not in self.careless_ones()]
        signal = np.mean([(1 - 2 * self.noise()[i]) if i in careful else 0.0 for i in range(self.count)])
        return float((1 - self.position_bias) * (1 - self.ties) * signal)

    def delta_for(self, win_rate: float) -> float:
        """The careful clinicians' preference that makes the true win rate ``win_rate``."""
        return (win_rate - 0.5) / self.shrink()

    def true_win_rate(self, delta: float) -> float:
        return 0.5 + self.shrink() * delta


class SimulatedStudy:
    """One study of ``prompts`` bank prompts through a real store (a SQLite file in ``workdir``)."""

    def __init__(
        self,
        workdir: Path,
        seed: int,
        win_rate: float,
        prompts: int,
        clinicians: Clinicians = Clinicians(),
        settings: StoreConfig | None = None,
        study: StudyConfig | None = None,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.clinicians = clinicians
        delta = clinicians.delta_for(win_rate)
        spread = min(clinicians.prompt_spread, 0.5 - abs(delta))
        if spread < 0:
            raise ValueError(f"a true win rate of {win_rate} is out of reach with these clinicians")
        self.q = 0.5 + delta + self.rng.uniform(-spread, spread, size=prompts)
        self.noise, self.careless = clinicians.noise(), clinicians.careless_ones()
        name = f"study-{seed}-{win_rate:.3f}"  # one database per study (seeds repeat across win rates)
        self.store = PreferenceStore(f"sqlite:///{workdir / f'{name}.db'}", settings, study)
        self.store.register_checkpoints(OLD_RUN, [STAGE])
        self.store.register_checkpoints(NEW_RUN, [STAGE])
        bank = workdir / f"bank-{name}.jsonl"
        bank.write_text(
            "".join(
                json.dumps({"prompt": f"模拟问题 {seed}-{i}：该如何处理？", "split": "heldout"}, ensure_ascii=False)
                + "\n"
                for i in range(prompts)
            ),
            encoding="utf-8",
        )
        self.store.import_bank(bank)
        self.index = {p.id: i for i, p in enumerate(self.store.bank_prompts())}
        self.annotators = [self.store.add_annotator(f"clin{i:02d}", "a-long-password") for i in range(clinicians.count)]
        self.store.start_queue_round(None, [NEW, OLD], split="all", blind=True)

    def vote(self, who: int, prompt: int, new_first: bool) -> str:
        """What clinician ``who`` answers for ``prompt`` with the new answer in panel A when ``new_first``."""
        r = self.rng.random(4)
        if r[0] < self.clinicians.position_bias:
            return "A"
        if who in self.careless:
            return "A" if r[1] < 0.5 else "B"
        if r[2] < self.clinicians.ties:
            return "tie"
        prefers_new = (r[1] < self.q[prompt]) != (r[3] < self.noise[who])
        return "A" if prefers_new == new_first else "B"

    def run(self, max_judgments: int) -> int:
        """Clinicians take turns through their queues until the store hands out nothing more or ``max_judgments``;
        the judgments made."""
        made, idle = 0, 0
        while made < max_judgments and idle < len(self.annotators):
            who = int(self.rng.integers(len(self.annotators)))
            annotator = self.annotators[who]
            assignment = self.store.next_assignment(annotator.id)
            if assignment is None:
                idle += 1
                continue
            idle = 0
            new_first = bool(self.rng.random() < 0.5)
            panels = [NEW, OLD] if new_first else [OLD, NEW]
            comparison = self.store.record_comparison(
                ComparisonIn(
                    annotator.id,
                    assignment.bank_prompt.messages,
                    [ResponseIn(c, f"{c} 的回答") for c in panels],
                    bank_prompt_id=assignment.bank_prompt.id,
                    assignment_id=assignment.id,
                )
            )
            choice = self.vote(who, self.index[assignment.bank_prompt.id], new_first)
            self.store.submit_judgment(JudgmentIn(comparison.id, annotator.id, choice=choice))
            made += 1
        return made

    def judged(self):
        """The store's judgments, oldest first (as compare-runs reads them)."""
        with self.store._read() as session:
            return load_judged(session, bank_only=True, admit_unblinded=False)

    def close(self) -> None:
        self.store.close()


def wilson(hits: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    z, p = 1.96, hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def median_ci(values: list[float], rng: np.random.Generator) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=float)
    boot = np.median(rng.choice(v, size=(2000, v.size)), axis=1)
    return float(np.median(v)), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def monitored_errors(judged, k: int, study: StudyConfig, rounds: int) -> tuple[bool, bool]:
    """(anytime wrong, peeking wrong) for a null study read after every completed prompt."""
    values, at, _ = prompt_units(prompt_battles(judged, NEW, OLD, None, True), k)
    lower, upper = confidence_sequence(values, study.alpha)
    anytime = any(verdict_of(lo, hi, study.margin) in ("better", "worse") for lo, hi in zip(lower, upper, strict=True))
    peeking = False
    for n in at:  # a look after each prompt's k-th judgment: the fixed-sample verdict of the judgments so far
        verdict = compare_checkpoints(
            judged[:n], NEW_RUN, OLD_RUN, STAGE, rounds=rounds, seed=n, decisions="fixed", per_prompt=k
        ).verdict
        if verdict in ("better", "worse"):
            peeking = True
            break
    return anytime, peeking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--null-studies", type=int, default=200)
    parser.add_argument("--null-judgments", type=int, default=600)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--rates", default="0.5,0.55,0.6,0.7")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings, study = StoreConfig(), StudyConfig()
    k = settings.annotators_per_prompt
    rng = np.random.default_rng(args.seed)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        workdir = Path(tmp)
        wrong_any = wrong_peek = 0
        fixed = replace(study, decisions="fixed")
        for s in range(args.null_studies):
            sim = SimulatedStudy(workdir, args.seed + s, 0.5, args.null_judgments // k, settings=settings, study=fixed)
            sim.run(args.null_judgments)
            a, p = monitored_errors(sim.judged(), k, study, settings.run_comparison_rounds)
            wrong_any, wrong_peek = wrong_any + a, wrong_peek + p
            sim.close()
        null_s = time.perf_counter() - started
        rows = []
        for rate in (float(r) for r in args.rates.split(",")):
            needed, wrong, undecided, stopped = [], 0, 0, 0
            for s in range(args.studies):
                sim = SimulatedStudy(
                    workdir, 10_000 + args.seed + s, rate, args.budget // k, settings=settings, study=study
                )
                made = sim.run(args.budget)
                result = sim.store.compare_runs(NEW_RUN, OLD_RUN)
                correct = SAME if rate == 0.5 else "better"
                stopped += made < args.budget and sim.store.queue_round_definition().decided is not None
                if result.verdict == correct:
                    needed.append(result.decided_after)
                elif result.verdict in ("better", "worse", SAME):
                    wrong += 1
                else:
                    undecided += 1
                sim.close()
            rows.append((rate, needed, wrong, undecided, stopped))
    elapsed = time.perf_counter() - started
    clin = Clinicians()
    print(
        f"\n{args.null_studies} null studies of {args.null_judgments} judgments, {args.studies} studies per rate "
        f"(budget {args.budget}); k={k}, alpha={study.alpha}, margin={study.margin}; {clin.count} clinicians, "
        f"noise 0-{clin.max_noise}, {clin.careless:.0%} careless, {clin.ties:.0%} ties, position bias "
        f"{clin.position_bias:.0%}, prompt spread ±{clin.prompt_spread}; {elapsed:.0f} s ({null_s:.0f} s null)\n"
    )
    print("| test, read after every completed prompt | wrong verdicts (better/worse at 50%) | 95% interval |")
    print("|---|---|---|")
    for name, hits in (
        ("anytime-valid (confidence sequence)", wrong_any),
        ("fixed-sample bootstrap, peeking", wrong_peek),
    ):
        lo, hi = wilson(hits, args.null_studies)
        print(f"| {name} | {hits}/{args.null_studies} = {hits / args.null_studies:.1%} | {lo:.1%} – {hi:.1%} |")
    print(
        "\n| true win rate | correct verdict | reached in | judgments needed, median (95% CI) | mean | "
        "wrong | undecided at budget | queue stopped itself |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for rate, needed, wrong, undecided, stopped in rows:
        correct = f"same (±{study.margin})" if rate == 0.5 else "better"
        if needed:
            med, lo, hi = median_ci(needed, rng)
            cell, mean = f"{med:.0f} ({lo:.0f} – {hi:.0f})", f"{np.mean(needed):.0f}"
        else:
            cell, mean = "—", "—"
        print(
            f"| {rate:.0%} | {correct} | {len(needed)}/{args.studies} | {cell} | {mean} | {wrong} | {undecided} | "
            f"{stopped}/{args.studies} |"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
