"""Simulated annotation studies through the real store and queue (issue 33): how many judgments a run-vs-run
question takes under uniform and adaptive allocation, how often its verdict is wrong when it is watched
continuously, and how narrow the leaderboard's intervals are after N judgments with and without active sampling.

    nice -n 5 .venv/bin/python benchmarks/bench_study.py [--null-studies 200] [--null-judgments 600]
        [--studies 20] [--budget 3000] [--rates 0.5,0.55,0.6,0.7] [--allocations uniform,adaptive]
        [--board-studies 20] [--board-judgments 100,200,400] [--board-elo 0,40,80,200] [--seed 0]

The simulator (:class:`SimulatedStudy`, reusable for other measurements of the queue) drives a real
:class:`~preference_store.repository.PreferenceStore` on a throwaway SQLite file: it imports a bank
(``import_bank``), registers the contestants, starts a blind queue round of them (``start_queue_round``), and
then lets synthetic clinicians take turns: ``next_assignment``, ``record_comparison`` with the two answers in a
random order, ``submit_judgment``. Nothing about the queue is re-implemented; when the store stops handing out
prompts (its question decided, or the bank used up), the study ends. The queue hands prompts out breadth-first
(fewest live assignments first), so with a bank of B prompts a prompt's k-th judgment comes only after about
(k - 1) B judgments: the bank size (``--budget`` / k prompts) matters to "judgments needed".

The clinicians (:class:`Clinicians`): each bank prompt has its own chance ``q`` that a careful, unbiased clinician
prefers the new answer (``0.5 + delta`` plus a uniform spread across prompts); each clinician misreads a prompt
with their own probability (evenly spread from 0 to ``max_noise``), ``careless`` of them vote at random, a clinician
calls a tie with probability ``ties``, and with probability ``position_bias`` just picks panel A. The true win rate
of a judgment is then ``0.5 + shrink * delta`` (:meth:`Clinicians.true_win_rate`); ``delta`` is chosen so it is the
rate asked for. Under no difference (0.5) every prompt's ``q`` is 0.5.

Three measurements, the first two for each of ``--allocations`` (``study.allocation``):

- **Wrong verdicts under continuous monitoring** (``--null-studies`` studies at a true win rate of 0.5, each run
  with ``study.decisions: fixed`` so the queue does not stop, up to ``--null-judgments`` judgments). The store's
  judgments are read back in time order and each verdict is read after every completed prompt: the anytime-valid
  one (:mod:`preference_store.statistics.sequential`, what the store stops on) and the fixed-sample bootstrap
  (naive peeking: stop at the first look that says better or worse). Wrong = better or worse at any look.
- **Judgments to the correct verdict** (``--studies`` studies per true win rate, ``study.decisions: anytime``, so
  the queue stops itself at the decision, at most ``--budget`` judgments): the judgments after which the decision
  was reached (``decided_after``), for better at rates above 0.5 and same (within ``study.margin``) at 0.5, and
  the saving of adaptive over uniform allocation, 1 - mean(adaptive) / mean(uniform).
- **The leaderboard** (:class:`LeaderboardStudy`: ``--board-studies`` studies per arm, contestants with true
  Bradley-Terry strengths ``--board-elo``, adaptive allocation): after each of ``--board-judgments`` judgments, the
  mean width of the contestants' 95% bootstrap rating intervals, how many adjacent pairs of the true order are
  resolved (Wald order uncertainty below 2.5%, the right way round) and whether the fitted order is the true one;
  with the store's active sampling (``study.pair_floor`` as configured) against uniform pairs (``pair_floor`` 1).

Figures printed as markdown, with Wilson 95% intervals for rates and bootstrap 95% intervals for medians and means;
nothing asserted.
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
from preference_store.statistics.active import order_uncertainty  # noqa: E402
from preference_store.statistics.bradley_terry import ELO_SCALE, judged_battles, rate_checkpoints  # noqa: E402
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
    """One study of ``prompts`` bank prompts through a real store (a SQLite file in ``workdir``): the new run against
    the old one."""

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
        # one database per study (seeds repeat across win rates and allocations)
        name = f"study-{seed}-{win_rate:.3f}-{(study or StudyConfig()).allocation}"
        self.open_store(workdir, name, prompts, [OLD, NEW], seed, settings, study)

    def open_store(
        self,
        workdir: Path,
        name: str,
        prompts: int,
        contestants: list[str],
        seed: int,
        settings: StoreConfig | None,
        study: StudyConfig | None,
    ) -> None:
        """A fresh store with ``contestants`` registered in that order (the later, the newer), a bank of ``prompts``,
        the clinicians' accounts and a blind queue round of the contestants."""
        self.store = PreferenceStore(f"sqlite:///{workdir / f'{name}.db'}", settings, study)
        for checkpoint in contestants:
            run, stage = checkpoint.split("/")
            self.store.register_checkpoints(run, [stage])
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
        count = self.clinicians.count
        self.annotators = [self.store.add_annotator(f"clin{i:02d}", "a-long-password") for i in range(count)]
        self.store.start_queue_round(None, contestants[::-1], split="all", blind=True)

    def vote(self, who: int, q: float, first_in_a: bool) -> str:
        """What clinician ``who`` answers when a careful one prefers the first of the two contestants with
        probability ``q``, the first in panel A when ``first_in_a``."""
        r = self.rng.random(4)
        if r[0] < self.clinicians.position_bias:
            return "A"
        if who in self.careless:
            return "A" if r[1] < 0.5 else "B"
        if r[2] < self.clinicians.ties:
            return "tie"
        prefers_first = (r[1] < q) != (r[3] < self.noise[who])
        return "A" if prefers_first == first_in_a else "B"

    def preference(self, assignment) -> tuple[tuple[str, str], float]:
        """The two contestants of ``assignment`` and the chance a careful clinician prefers the first."""
        return (NEW, OLD), float(self.q[self.index[assignment.bank_prompt.id]])

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
            (first, second), q = self.preference(assignment)
            first_in_a = bool(self.rng.random() < 0.5)
            panels = [first, second] if first_in_a else [second, first]
            comparison = self.store.record_comparison(
                ComparisonIn(
                    annotator.id,
                    assignment.bank_prompt.messages,
                    [ResponseIn(c, f"{c} 的回答") for c in panels],
                    bank_prompt_id=assignment.bank_prompt.id,
                    assignment_id=assignment.id,
                )
            )
            choice = self.vote(who, q, first_in_a)
            self.store.submit_judgment(JudgmentIn(comparison.id, annotator.id, choice=choice))
            made += 1
        return made

    def judged(self):
        """The store's judgments, oldest first (as compare-runs reads them)."""
        with self.store._read() as session:
            return load_judged(session, bank_only=True, admit_unblinded=False)

    def close(self) -> None:
        self.store.close()


class LeaderboardStudy(SimulatedStudy):
    """A leaderboard round of several contestants with true Bradley-Terry strengths (Elo points), adaptive allocation:
    each prompt shows the pair the store's active sampling chooses (``study.pair_floor`` 1: uniform pairs)."""

    def __init__(self, workdir: Path, seed: int, elo: tuple[float, ...], prompts: int, study: StudyConfig) -> None:
        self.rng = np.random.default_rng(seed)
        self.clinicians = Clinicians()
        self.noise, self.careless = self.clinicians.noise(), self.clinicians.careless_ones()
        self.contestants = [f"m{i}/{STAGE}" for i in range(len(elo))]
        self.strength = dict(zip(self.contestants, np.asarray(elo) / ELO_SCALE, strict=True))
        name = f"board-{seed}-{study.pair_floor}"
        self.open_store(workdir, name, prompts, self.contestants, seed, StoreConfig(), study)

    def preference(self, assignment) -> tuple[tuple[str, str], float]:
        first, second = assignment.contestants
        return (first, second), float(1 / (1 + np.exp(self.strength[second] - self.strength[first])))


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


def monitored_errors(judged, k: int, study: StudyConfig, rounds: int, settle: bool) -> tuple[bool, bool]:
    """(anytime wrong, peeking wrong) for a null study read after every completed prompt (``settle``: adaptive
    allocation, where two agreeing judgments complete a prompt)."""
    values, at, _ = prompt_units(prompt_battles(judged, NEW, OLD, None, True), k, settle)
    lower, upper = confidence_sequence(values, study.alpha)
    anytime = any(verdict_of(lo, hi, study.margin) in ("better", "worse") for lo, hi in zip(lower, upper, strict=True))
    peeking = False
    for n in at:  # a look after each completed prompt: the fixed-sample verdict of the judgments so far
        verdict = compare_checkpoints(
            judged[:n], NEW_RUN, OLD_RUN, STAGE, rounds=rounds, seed=n, decisions="fixed", per_prompt=k
        ).verdict
        if verdict in ("better", "worse"):
            peeking = True
            break
    return anytime, peeking


def board_figures(
    judged, contestants: list[str], elo: tuple[float, ...], n: int, rounds: int
) -> tuple[float, int, bool]:
    """After the first ``n`` judgments: the mean width of the contestants' 95% bootstrap rating intervals (Elo
    points), how many adjacent pairs of the true order are resolved (their Wald order uncertainty below 2.5%, the
    right way round), and whether the fitted order is the true one."""
    battles, _ = judged_battles(judged[:n], True)
    ratings = rate_checkpoints(battles, rounds, seed=n)
    width = float(np.mean([r.ci95[1] - r.ci95[0] for r in ratings])) if ratings else float("nan")
    truth = [c for _, c in sorted(zip(elo, contestants, strict=True), reverse=True)]
    fitted = {r.checkpoint_id: r.rating for r in ratings}
    u = order_uncertainty(battles, tuple(contestants))
    resolved = sum(
        u.get((b, a), u.get((a, b), 1.0)) < 0.025 and fitted.get(a, 0) > fitted.get(b, 0)
        for a, b in zip(truth, truth[1:])
    )
    return width, resolved, [r.checkpoint_id for r in ratings] == truth


def mean_interval(values, rng: np.random.Generator) -> str:
    v = np.asarray(values, dtype=float)
    boot = np.mean(rng.choice(v, size=(2000, v.size)), axis=1)
    return f"{v.mean():.1f} ({np.percentile(boot, 2.5):.1f} – {np.percentile(boot, 97.5):.1f})"


def saving(uniform: list[float], adaptive: list[float], rng: np.random.Generator) -> str:
    """1 - mean(adaptive) / mean(uniform) with a bootstrap 95% interval (studies resampled in each arm)."""
    u, a = np.asarray(uniform, dtype=float), np.asarray(adaptive, dtype=float)
    boot = 1 - np.mean(rng.choice(a, size=(2000, a.size)), axis=1) / np.mean(rng.choice(u, size=(2000, u.size)), axis=1)
    return f"{1 - a.mean() / u.mean():.0%} ({np.percentile(boot, 2.5):.0%} – {np.percentile(boot, 97.5):.0%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--null-studies", type=int, default=200)
    parser.add_argument("--null-judgments", type=int, default=600)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--rates", default="0.5,0.55,0.6,0.7")
    parser.add_argument("--allocations", default="uniform,adaptive")
    parser.add_argument("--board-studies", type=int, default=20)
    parser.add_argument("--board-judgments", default="100,200,400", help="leaderboard figures after these many")
    parser.add_argument("--board-elo", default="0,40,80,200", help="the contestants' true strengths, Elo points")
    parser.add_argument("--board-rounds", type=int, default=300, help="bootstrap resamples of the ratings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings, study = StoreConfig(), StudyConfig()
    k = settings.annotators_per_prompt
    allocations = args.allocations.split(",")
    rng = np.random.default_rng(args.seed)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        workdir = Path(tmp)
        null = {}
        for allocation in allocations:
            wrong_any = wrong_peek = 0
            fixed = replace(study, decisions="fixed", allocation=allocation)
            for s in range(args.null_studies):
                sim = SimulatedStudy(
                    workdir, args.seed + s, 0.5, args.null_judgments // k, settings=settings, study=fixed
                )
                sim.run(args.null_judgments)
                settle = allocation == "adaptive"
                a, p = monitored_errors(sim.judged(), k, study, settings.run_comparison_rounds, settle)
                wrong_any, wrong_peek = wrong_any + a, wrong_peek + p
                sim.close()
            null[allocation] = (wrong_any, wrong_peek)
            print(f"null studies, {allocation}: {time.perf_counter() - started:.0f} s", flush=True)
        null_s = time.perf_counter() - started
        rows = []
        for rate in (float(r) for r in args.rates.split(",")):
            for allocation in allocations:
                needed, wrong, undecided, stopped = [], 0, 0, 0
                for s in range(args.studies):
                    sim = SimulatedStudy(
                        workdir,
                        10_000 + args.seed + s,
                        rate,
                        args.budget // k,
                        settings=settings,
                        study=replace(study, allocation=allocation),
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
                rows.append((rate, allocation, needed, wrong, undecided, stopped))
                print(f"rate {rate}, {allocation}: {time.perf_counter() - started:.0f} s", flush=True)
        verdict_s = time.perf_counter() - started - null_s
        elo = tuple(float(x) for x in args.board_elo.split(","))
        sizes = [int(x) for x in args.board_judgments.split(",")]
        arms = {
            "uniform pairs (pair_floor 1)": 1.0,
            f"active sampling (pair_floor {study.pair_floor})": study.pair_floor,
        }
        board: dict[str, dict[int, list]] = {arm: {n: [] for n in sizes} for arm in arms}
        for arm, floor in arms.items():
            for s in range(args.board_studies):
                arm_study = replace(study, allocation="adaptive", pair_floor=floor)
                sim = LeaderboardStudy(workdir, 20_000 + args.seed + s, elo, max(sizes), arm_study)
                sim.run(max(sizes))
                judged = sim.judged()
                for n in sizes:
                    board[arm][n].append(board_figures(judged, sim.contestants, elo, n, args.board_rounds))
                sim.close()
            print(f"leaderboard, {arm}: {time.perf_counter() - started:.0f} s", flush=True)
    elapsed = time.perf_counter() - started
    clin = Clinicians()
    print(
        f"\n{args.null_studies} null studies of {args.null_judgments} judgments and {args.studies} studies per rate "
        f"(budget {args.budget}) per allocation; k={k}, alpha={study.alpha}, margin={study.margin}; {clin.count} "
        f"clinicians, noise 0-{clin.max_noise}, {clin.careless:.0%} careless, {clin.ties:.0%} ties, position bias "
        f"{clin.position_bias:.0%}, prompt spread ±{clin.prompt_spread}; {elapsed:.0f} s ({null_s:.0f} s null, "
        f"{verdict_s:.0f} s verdicts)\n"
    )
    if args.null_studies:
        print_null_table(null, args.null_studies)
    if args.studies:
        print_verdict_tables(rows, args.studies, allocations, study, rng)
    if args.board_studies:
        print_board_table(board, arms, sizes, elo, k, args.board_studies, args.board_rounds, rng)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


def print_null_table(null: dict, studies: int) -> None:
    print(
        "| allocation | test, read after every completed prompt | wrong verdicts (better/worse at 50%) | 95% interval |"
    )
    print("|---|---|---|---|")
    for allocation, (wrong_any, wrong_peek) in null.items():
        for name, hits in (
            ("anytime-valid (confidence sequence)", wrong_any),
            ("fixed-sample bootstrap, peeking", wrong_peek),
        ):
            lo, hi = wilson(hits, studies)
            print(f"| {allocation} | {name} | {hits}/{studies} = {hits / studies:.1%} | {lo:.1%} – {hi:.1%} |")


def print_verdict_tables(rows: list, studies: int, allocations: list[str], study: StudyConfig, rng) -> None:
    print(
        "\n| true win rate | allocation | correct verdict | reached in | judgments needed, median (95% CI) | mean "
        "(95% CI) | wrong | undecided at budget | queue stopped itself |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rate, allocation, needed, wrong, undecided, stopped in rows:
        correct = f"same (±{study.margin})" if rate == 0.5 else "better"
        if needed:
            med, lo, hi = median_ci(needed, rng)
            cell, mean = f"{med:.0f} ({lo:.0f} – {hi:.0f})", mean_interval(needed, rng)
        else:
            cell, mean = "—", "—"
        print(
            f"| {rate:.0%} | {allocation} | {correct} | {len(needed)}/{studies} | {cell} | {mean} | {wrong} | "
            f"{undecided} | {stopped}/{studies} |"
        )
    if set(allocations) == {"uniform", "adaptive"}:
        print("\n| true win rate | fewer judgments with adaptive, 1 - mean(adaptive) / mean(uniform) (95% CI) |")
        print("|---|---|")
        for rate in sorted({r[0] for r in rows}):
            by = {r[1]: r[2] for r in rows if r[0] == rate}
            if by["uniform"] and by["adaptive"]:
                print(f"| {rate:.0%} | {saving(by['uniform'], by['adaptive'], rng)} |")


def print_board_table(board: dict, arms: dict, sizes: list[int], elo, k: int, studies: int, rounds: int, rng) -> None:
    print(
        f"\nLeaderboard: {len(elo)} contestants at Elo {', '.join(f'{e:g}' for e in elo)}, {studies} "
        f"studies per arm, adaptive allocation (k={k}), {rounds} bootstrap resamples\n"
    )
    print(
        "| pairs shown | judgments | mean 95% interval width, Elo (95% CI) | adjacent orders resolved (of "
        f"{len(elo) - 1}) | fitted order right |"
    )
    print("|---|---|---|---|---|")
    for arm in arms:
        for n in sizes:
            figures = board[arm][n]
            widths = [w for w, _, _ in figures]
            resolved = [r for _, r, _ in figures]
            right = sum(o for _, _, o in figures)
            print(
                f"| {arm} | {n} | {mean_interval(widths, rng)} | {mean_interval(resolved, rng)} | "
                f"{right}/{len(figures)} |"
            )


if __name__ == "__main__":
    main()
