"""Did a round of the loop help? A newer run against an older one on the shared bank prompts.

The battles are the clinicians' votes and rankings between the two runs' checkpoints of one stage on
bank prompts (optionally of one split: the held-out prompts no pair of the new run was trained on). The
measure is the new checkpoint's share of those battles won minus the old one's (ties half each), in
[-1, 1]. Its 95% interval comes from a bootstrap over prompts (a prompt's battles stay together, since
judgments of one prompt are not independent of each other), and so does P(new better), the share of
resamples in which the new checkpoint won more (``store.run_comparison_rounds``, at least 2000). The verdict: "better" or "worse" when the interval
excludes 0, "same" when it does not, "not enough judgments" below ``min_prompts`` prompts.

That verdict holds for one look at a study of a size fixed in advance (``study.decisions: fixed``, a preregistered
study). Read after every judgment and stopped when it looks clear, its error rate grows with each look. The default,
``study.decisions: anytime``, decides instead with a confidence sequence for the win rate over the prompts
(:mod:`preference_store.statistics.sequential`): better, worse, same within ``study.margin``, or undecided, at error
rate ``study.alpha`` however often it is read, with the number of judgments after which it was first reached.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from core.config.app import StudyConfig
from preference_store.records import PairwiseDecision, RunComparison
from preference_store.statistics.bradley_terry import JudgedComparison
from preference_store.statistics.sequential import SAME, UNDECIDED, decide, describe, prompt_units

NOT_ENOUGH = "not enough judgments"


def prompt_battles(
    judged: Iterable[JudgedComparison], new: str, old: str, split: str | None, exclude_leaked: bool
) -> list[tuple[str, float]]:
    """(bank prompt, the new checkpoint's score 1 / 0.5 / 0) of every battle of the two, in the order of
    ``judged`` (time order, as the store loads them)."""
    return battles_by_pair(judged, [new, old], split, exclude_leaked)[0].get((new, old), [])


def battles_by_pair(
    judged: Iterable[JudgedComparison], order: list[str], split: str | None, exclude_leaked: bool
) -> tuple[dict[tuple[str, str], list[tuple[str, float]]], dict[tuple[str, str], int]]:
    """(first, second) -> (bank prompt, the first's score 1 / 0.5 / 0) of every battle between two checkpoints of
    ``order`` on bank prompts (of ``split``), in the order of ``judged``; the first is the one earlier in
    ``order``. With ``exclude_leaked``, also (first, second) -> how many of their battles were left out because an
    answer names a model. One pass over the judgments for every pair."""
    rank = {c: i for i, c in enumerate(order)}
    pairs: dict[tuple[str, str], list[tuple[str, float]]] = defaultdict(list)
    left_out: dict[tuple[str, str], int] = defaultdict(int)
    for j in judged:
        if j.bank_prompt_id is None or (split is not None and j.split != split):
            continue
        for x, y, score in j.outcomes():
            first, second = x.checkpoint_id, y.checkpoint_id
            if first == second or first not in rank or second not in rank:
                continue
            if rank[first] > rank[second]:
                first, second, score = second, first, 1.0 - score
            if exclude_leaked and (x.leaked or y.leaked):
                left_out[(first, second)] += 1
                continue
            pairs[(first, second)].append((j.bank_prompt_id, score))
    return dict(pairs), dict(left_out)


def compare_checkpoints(
    judged: Iterable[JudgedComparison],
    new_run: str,
    old_run: str,
    stage: str,
    split: str | None = None,
    rounds: int = 2000,
    seed: int = 0,
    min_prompts: int = 5,
    exclude_leaked: bool = True,
    trained_on: Iterable[str] = (),
    decisions: str | None = None,
    alpha: float | None = None,
    margin: float | None = None,
    per_prompt: int = 1,
    settle_on_agreement: bool = False,
) -> RunComparison:
    """The verdict on ``new_run``'s ``stage`` against ``old_run``'s, from the judgments on bank prompts (``judged``
    in time order); ``trained_on``: the bank prompts whose pairs ``new_run`` trained on (counted in the result).
    ``decisions``, ``alpha``, ``margin``: the study section's (None: its defaults); ``per_prompt``: the battles
    that complete a prompt for the anytime test (``store.annotators_per_prompt``; ``settle_on_agreement``: two agreeing
    ones do, as under ``study.allocation: adaptive``)."""
    study = StudyConfig()
    decisions = study.decisions if decisions is None else decisions
    new, old = f"{new_run}/{stage}", f"{old_run}/{stage}"
    pairs, left_out = battles_by_pair(judged, [new, old], split, exclude_leaked)
    battles, leaked = pairs.get((new, old), []), left_out.get((new, old), 0)
    by_prompt: dict[str, list[float]] = defaultdict(list)  # bank prompt -> the new checkpoint's scores there
    for prompt, score in battles:
        by_prompt[prompt].append(score)
    flat = [score for _, score in battles]
    wins, losses = sum(s == 1.0 for s in flat), sum(s == 0.0 for s in flat)
    where = f"{split} bank prompts" if split else "bank prompts"
    if leaked:  # every summary says why fewer prompts or battles count than were judged
        where += f" ({leaked} battles left out: an answer names a model)"
    common = dict(
        new_run=new_run,
        old_run=old_run,
        stage=stage,
        new_checkpoint=new,
        old_checkpoint=old,
        split=split,
        prompts=len(by_prompt),
        battles=len(flat),
        wins=wins,
        losses=losses,
        ties=len(flat) - wins - losses,
        trained_on=len(by_prompt.keys() & set(trained_on)),
        leaked_battles=leaked,
    )
    if decisions == "anytime":
        return _anytime(
            battles,
            common,
            where,
            per_prompt,
            study.alpha if alpha is None else alpha,
            study.margin if margin is None else margin,
            settle_on_agreement,
        )
    if decisions != "fixed":
        raise ValueError(f"decisions={decisions!r}: choose anytime or fixed")
    if len(by_prompt) < max(min_prompts, 1):
        return RunComparison(
            **common,
            verdict=NOT_ENOUGH,
            difference=None,
            ci95=None,
            p_new_better=None,
            rounds=0,
            summary=(
                f"{NOT_ENOUGH}: {new} and {old} met in {len(flat)} battles on {len(by_prompt)} {where} "
                f"(a verdict needs {min_prompts}); judge them in the queue"
            ),
        )

    totals = np.array([sum(s) for s in by_prompt.values()])
    counts = np.array([len(s) for s in by_prompt.values()], dtype=float)
    difference = float(2 * totals.sum() / counts.sum() - 1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(totals), size=(rounds, len(totals)))
    resampled = 2 * totals[picks].sum(axis=1) / counts[picks].sum(axis=1) - 1 if rounds else np.array([difference])
    low, high = (float(v) for v in np.percentile(resampled, [2.5, 97.5]))
    p_better = float(np.mean(resampled > 0) + 0.5 * np.mean(resampled == 0))
    verdict = "better" if low > 0 else "worse" if high < 0 else "same"
    phrase = {"better": "better than", "worse": "worse than", "same": "not shown better or worse than"}
    summary = (
        f"{verdict}: {new} is {phrase[verdict]} {old} on {len(by_prompt)} {where}: it won {wins}, lost "
        f"{losses}, tied {common['ties']} of {len(flat)} battles (difference {difference:+.2f}, 95% interval "
        f"{low:+.2f} to {high:+.2f}, P(new better) {p_better:.2f})"
    )
    return RunComparison(
        **common,
        verdict=verdict,
        difference=difference,
        ci95=(low, high),
        p_new_better=p_better,
        rounds=rounds,
        summary=summary,
    )


def _anytime(
    battles: list[tuple[str, float]],
    common: dict,
    where: str,
    per_prompt: int,
    alpha: float,
    margin: float,
    settle_on_agreement: bool = False,
) -> RunComparison:
    """The verdict of the confidence sequence over the prompts (see :mod:`preference_store.statistics.sequential`)."""
    new, old = common["new_checkpoint"], common["old_checkpoint"]
    values, at, n = prompt_units(battles, per_prompt, settle_on_agreement)
    decision = decide(values, at, n, alpha, margin)
    flat = [score for _, score in battles]
    fields = dict(
        decisions="anytime",
        alpha=alpha,
        margin=margin,
        win_rate=decision.win_rate,
        interval=decision.interval if values else None,
        units=decision.units,
        decided_after=decision.decided_after,
        decided_interval=decision.decided_interval,
        ci95=None,
        p_new_better=None,
        rounds=0,
    )
    record = f"it won {common['wins']}, lost {common['losses']}, tied {common['ties']} of {len(flat)} battles"
    if not values:
        return RunComparison(
            **common,
            **fields,
            verdict=NOT_ENOUGH,
            difference=None,
            summary=(
                f"{NOT_ENOUGH}: {new} and {old} met in {len(flat)} battles on {common['prompts']} {where}, and no "
                f"prompt has its {per_prompt} battles of the two yet; judge them in the queue"
            ),
        )
    phrase = {
        "better": f"better: {new} is better than {old}",
        "worse": f"worse: {new} is worse than {old}",
        SAME: f"same: {new} and {old} are the same within ±{margin:.2f} in win rate",
        UNDECIDED: f"undecided: {new} against {old} is not decided yet",
    }
    summary = (
        f"{phrase[decision.verdict]} on {common['prompts']} {where}: {record} (win rate "
        f"{decision.win_rate:.2f} over {decision.units} complete prompts); {describe(decision)}"
    )
    return RunComparison(
        **common, **fields, verdict=decision.verdict, difference=float(2 * np.mean(flat) - 1), summary=summary
    )


def pairwise_decisions(
    judged: Iterable[JudgedComparison],
    order: list[str],
    exclude_leaked: bool,
    alpha: float,
    margin: float,
    per_prompt: int,
    settle_on_agreement: bool,
) -> list[PairwiseDecision]:
    """The leaderboard's pairwise comparisons by the anytime-valid test of ``compare-runs``: for every two
    checkpoints of ``order`` (the ratings, best first) that met on bank prompts, the first's win rate over the
    prompts (``per_prompt`` battles complete one; ``settle_on_agreement`` as in :func:`compare_checkpoints`) and
    its decision (:func:`~preference_store.statistics.sequential.decide`), in ``order``'s order of pairs."""
    by_pair, _ = battles_by_pair(judged, order, None, exclude_leaked)
    decisions = []
    for i, first in enumerate(order):
        for second in order[i + 1 :]:
            battles = by_pair.get((first, second))
            if not battles:
                continue
            values, at, n = prompt_units(battles, per_prompt, settle_on_agreement)
            decision = decide(values, at, n, alpha, margin)
            decisions.append(
                PairwiseDecision(
                    first=first,
                    second=second,
                    verdict=decision.verdict,
                    win_rate=decision.win_rate,
                    interval=decision.interval,
                    units=decision.units,
                    judgments=decision.judgments,
                    alpha=alpha,
                    margin=margin,
                    decided_after=decision.decided_after,
                    decided_interval=decision.decided_interval,
                    summary=f"{decision.verdict}: {first} against {second}, {describe(decision)}",
                )
            )
    return decisions
