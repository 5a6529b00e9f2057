"""The study's figures as plain data and as text, for ``./launch.sh study status | leaderboard | agreement`` and the
API's ``/study_status``, ``/leaderboard``, ``/agreement`` and ``/compare_runs``: who has finished what (and whether
the round's question is decided), the Bradley-Terry ratings with their intervals, Krippendorff's alpha overall and
per annotator, the outlier screen and the position bias, and the run-vs-run verdict.

The numbers are the Leaderboard tab's: both read :meth:`PreferenceStore.leaderboard` (the same bootstrap
rounds and seed), this module only lays them out (``dataclasses.asdict`` of the store's records: nothing is
recomputed here). The text rounds as the tab does (ratings to 0.1, intervals to 1, alpha to 0.01).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict

from preference_store.records import Annotator, AnnotatorReliability, Leaderboard, RunComparison
from preference_store.repository import PreferenceStore

KINDS = ("pairwise", "ranking", "scores")
NOT_MEASURED = "—"


def _number(value: float | None, fmt: str = "{:.2f}") -> str:
    return NOT_MEASURED if value is None else fmt.format(value)


def status_figures(store: PreferenceStore, viewer: Annotator | None = None) -> dict:
    """The current queue round, the bank's size and each account's progress; ``viewer`` an annotator (not an
    admin): their own line only (None: the command line, every line)."""
    rows = store.study_progress()
    if viewer is not None and not viewer.is_admin:
        rows = [p for p in rows if p.annotator_id == viewer.id]
    defined = store.queue_round_definition()
    return {
        "round": defined.number,
        "decided": defined.decided,  # the round's question decided: its queue hands out nothing more
        "bank_prompts": len(store.bank_prompts()),
        "annotators": [asdict(p) | {"finished": p.finished} for p in rows],
    }


def leaderboard_figures(board: Leaderboard, rounds: int) -> dict:
    """The ratings (best first) with their 95% intervals, overall, per criterion and length-controlled; the
    anytime-valid pairwise decisions (``pairwise``: each with its verdict, interval and ``decided_after``); win
    rates, vote counts and mean scores; what was counted (``rounds``: the bootstrap resamples behind the
    intervals)."""
    lc = board.length_controlled
    return {
        "judgments": board.judgments,
        "bank_only": board.bank_only,
        "bootstrap_rounds": rounds,
        "provisional_battles": board.provisional_battles,
        "leaked_battles": board.leaked_battles,
        "leaked_excluded": board.leaked_excluded,
        "unblinded_judgments": board.unblinded_judgments,
        "unblinded_admitted": board.unblinded_admitted,
        "ratings": [asdict(r) for r in board.ratings],
        "criterion_ratings": {c: [asdict(r) for r in rs] for c, rs in board.criterion_ratings.items()},
        "length_controlled": asdict(lc) if lc is not None else None,
        "pairwise": [asdict(d) for d in board.pairwise],
        "win_rate": board.win_rate,
        "battles": board.battles,
        "criteria": {
            cid: {c: {"mean": mean, "n": board.criteria_n[cid][c]} for c, mean in by.items()}
            for cid, by in board.criteria.items()
        },
    }


def agreement_figures(board: Leaderboard, reliability: Iterable[AnnotatorReliability] = ()) -> dict:
    """Alpha and percent agreement per kind of verdict and per criterion, each annotator against the others
    (by name: for admins), the outlier screen, the position bias and, when given (admins: the command line), each
    annotator's Dawid-Skene reliability (:meth:`~preference_store.repository.PreferenceStore.annotator_reliability`)."""
    agreement = board.agreement
    return {
        "reliability": [asdict(r) for r in reliability],
        "by_kind": {kind: asdict(a) for kind, a in agreement.by_kind.items()},
        "criteria_alpha": agreement.criteria_alpha,
        "pairwise": {
            "comparisons": agreement.comparisons,
            "items": agreement.items,
            "percent": agreement.percent,
            "fleiss_kappa": agreement.fleiss_kappa,
        },
        "annotators": [asdict(a) for a in agreement.annotators],
        "screen": [asdict(s) for s in board.screen],
        "outliers": [s.name for s in board.outliers],
        "position_bias": asdict(board.position_bias) if board.position_bias is not None else None,
    }


def run_comparison_figures(result: RunComparison) -> dict:
    """The run-vs-run verdict as plain data (``compare-runs``' record): the verdict, how it was decided
    (``decisions``), with the anytime interval and ``decided_after`` (judgments when it was first reached), or the
    bootstrap interval of a fixed-sample study, and the one-line ``summary``."""
    return asdict(result)


def format_status(figures: dict) -> str:
    """``study status`` as text: one line per account."""
    lines = [
        f"queue round {figures['round']}, {figures['bank_prompts']} bank prompts",
        *([f"decided, the queue hands out nothing more: {figures['decided']}"] if figures.get("decided") else []),
        f"{'annotator':<20} {'role':<9} {'queue':>9} {'judgments':>9} {'ratings':>7}  state",
    ]
    for a in figures["annotators"]:
        state = (
            "disabled"
            if a["disabled"]
            else ("finished" if a["finished"] else ("not started" if not a["done"] else "in progress"))
        )
        lines.append(
            f"{a['name']:<20} {a['role']:<9} {a['done']:>4} / {a['total']:<2} {a['judgments']:>9} "
            f"{a['ratings']:>7}  {state}"
        )
    return "\n".join(lines)


def _ratings_lines(ratings: list[dict]) -> list[str]:
    lines = [f"{'rank':>4}  {'checkpoint':<28} {'rating':>7}  {'95% CI':<13} {'battles':>7} {'W':>4} {'L':>4} {'T':>4}"]
    for i, r in enumerate(ratings):
        ci = f"{r['ci95'][0]:.0f} – {r['ci95'][1]:.0f}" if r["ci95"] else NOT_MEASURED
        lines.append(
            f"{i + 1:>4}  {r['checkpoint_id']:<28} {r['rating']:>7.1f}  {ci:<13} {r['battles']:>7} "
            f"{r['wins']:>4} {r['losses']:>4} {r['ties']:>4}" + ("  provisional" if r["provisional"] else "")
        )
    return lines


def format_leaderboard(figures: dict) -> str:
    """``study leaderboard`` as text: the ratings with intervals, then length-controlled and per criterion."""
    scope = "bank prompts only" if figures["bank_only"] else "all comparisons"
    lines = [
        f"{figures['judgments']} judgments ({scope}); Bradley-Terry ratings, 95% intervals from "
        f"{figures['bootstrap_rounds']} bootstrap resamples; provisional: fewer than "
        f"{figures['provisional_battles']} battles"
    ]
    if figures["unblinded_judgments"]:
        lines.append(
            f"{figures['unblinded_judgments']} judgments made with the names shown: "
            + ("counted" if figures["unblinded_admitted"] else "left out (store.admit_unblinded admits them)")
        )
    lines += _ratings_lines(figures["ratings"]) if figures["ratings"] else ["no battles yet"]
    lc = figures["length_controlled"]
    if lc and lc["ratings"]:
        ci = lc["length_ci95"]
        lines += [
            "",
            f"length-controlled (coefficient {_number(lc['length_coefficient'], '{:+.2f}')}"
            + (f", 95% interval {ci[0]:+.2f} … {ci[1]:+.2f}" if ci else "")
            + f", {lc['battles']} battles):",
        ]
        lines += _ratings_lines(lc["ratings"])
    for criterion, ratings in figures["criterion_ratings"].items():
        lines += ["", f"criterion {criterion} (from the 1-5 scores):", *_ratings_lines(ratings)]
    if figures["pairwise"]:
        first = figures["pairwise"][0]
        lines += [
            "",
            f"pairwise decisions on the bank prompts (anytime-valid at alpha {first['alpha']}, same within "
            f"±{first['margin']} in win rate; valid however often they are read):",
            *(d["summary"] for d in figures["pairwise"]),
        ]
    return "\n".join(lines)


def format_agreement(figures: dict) -> str:
    """``study agreement`` as text: alpha per kind and criterion, per annotator, outliers, position bias."""
    measured = {kind: a for kind, a in figures["by_kind"].items() if a["units"]}
    if not measured:
        lines = ["agreement: no bank prompt judged by more than one annotator with the same contestants yet"]
    else:
        lines = [f"{'kind':<9} {'alpha':>6} {'level':<8} {'percent':>7} {'units':>6} {'annotators':>10}"]
        lines += [
            f"{kind:<9} {_number(a['alpha']):>6} {a['level']:<8} {_number(a['percent'], '{:.0%}'):>7} "
            f"{a['units']:>6} {a['annotators']:>10}"
            for kind, a in measured.items()
        ]
    scored = {c: v for c, v in figures["criteria_alpha"].items() if v is not None}
    if scored:
        lines.append("alpha per criterion (ordinal): " + ", ".join(f"{c} {v:.2f}" for c, v in scored.items()))
    if figures["annotators"]:
        lines += [
            "",
            "each annotator against the others:",
            f"{'annotator':<20} {'units':>5} {'percent':>7} " + " ".join(f"{'α ' + k:>10}" for k in KINDS),
        ]
        lines += [
            f"{a['name']:<20} {a['units']:>5} {_number(a['percent'], '{:.0%}'):>7} "
            + " ".join(f"{_number(a['alpha'].get(k)):>10}" for k in KINDS)
            for a in figures["annotators"]
        ]
    if figures["screen"]:
        lines += ["", "outlier screen (agreement with the leave-one-out consensus of the others):"]
        lines += [
            f"{s['name']:<20} {s['agreed']:>3} / {s['units']:<3} rate {_number(s['rate'], '{:.0%}')}, others "
            f"{_number(s['expected'], '{:.0%}')}, p {_number(s['p_value'], '{:.3g}')}"
            + ("  OUTLIER" if s["outlier"] else "")
            for s in figures["screen"]
        ]
    lines.append("outliers: " + (", ".join(figures["outliers"]) or "none"))
    if figures.get("reliability"):
        lines += ["", "reliability (Dawid-Skene 1979: probability that the annotator's pairwise verdict is right):"]
        lines += [
            f"{r['name']:<20} {r['reliability']:.0%} from {r['overlap_units']} overlap units"
            for r in figures["reliability"]
        ]
    bias = figures["position_bias"]
    if bias and bias["decided_votes"]:
        ci = bias["a_ci95"]
        lines.append(
            f"position bias: panel A wins {bias['a_share']:.0%}"
            + (f" (95% interval {ci[0]:.0%} – {ci[1]:.0%})" if ci else "")
            + f" of {bias['decided_votes']} decided votes (50% = no bias)"
        )
    if bias and bias["rankings"]:
        lines.append(
            f"first place by panel in {bias['rankings']} rankings: "
            + ", ".join(
                f"{label} {share:.0%} (expected {bias['first_place_expected'].get(label, 0):.0%})"
                for label, share in sorted(bias["first_place"].items())
            )
        )
    if not bias or not (bias["decided_votes"] or bias["rankings"]):
        lines.append("position bias: no decided vote or ranking yet")
    return "\n".join(lines)
