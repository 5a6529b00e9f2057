"""Read-only summaries: the leaderboard (ratings, win rates, scores, agreement) and what the store holds."""

from __future__ import annotations

from sqlalchemy import func, select

from preference_store.models import (
    AnnotatorRow,
    CheckpointRow,
    ComparisonRow,
    ConsumptionRow,
    ConversationRow,
    CriterionScoreRow,
    ExportedPairRow,
    JudgmentRow,
    PairRow,
    ResponseRow,
)
from preference_store.pairs import battle_outcomes
from preference_store.ratings import (
    Battle,
    criterion_means,
    inter_annotator_agreement,
    rate_checkpoints,
    win_rates,
)
from preference_store.records import JUDGMENT_KINDS, PANEL_LABELS, Leaderboard, StoreCounts
from preference_store.repository.sessions import StoreSessions


class LeaderboardQueries(StoreSessions):
    """What the Leaderboard and Data tabs show; these only read."""

    def counts(self) -> StoreCounts:
        with self._read() as session:
            def count(model, *where):
                return session.scalar(select(func.count()).select_from(model).where(*where))

            by_kind = dict(session.execute(select(JudgmentRow.kind, func.count()).group_by(JudgmentRow.kind)).all())
            return StoreCounts(
                annotators=count(AnnotatorRow),
                checkpoints=count(CheckpointRow),
                conversations=count(ConversationRow),
                comparisons=count(ComparisonRow),
                judgments=sum(by_kind.values()),
                judgments_by_kind={k: by_kind.get(k, 0) for k in JUDGMENT_KINDS},
                pairs=count(PairRow),
                exported_pairs=session.scalar(select(func.count(func.distinct(ExportedPairRow.pair_id)))
                                              .where(ExportedPairRow.duplicate_of.is_(None))),
                consumed_pairs=session.scalar(select(func.count(func.distinct(ConsumptionRow.pair_id)))),
            )

    def leaderboard(self, rounds: int | None = None, seed: int = 0) -> Leaderboard:
        """Bradley-Terry ratings with 95% bootstrap intervals (``rounds`` default store.bootstrap_rounds),
        win-rate matrix, per-criterion means and inter-annotator agreement."""
        rounds = self.settings.bootstrap_rounds if rounds is None else rounds
        with self._read() as session:
            judged = session.execute(
                select(JudgmentRow.comparison_id, JudgmentRow.annotator_id, JudgmentRow.kind,
                       JudgmentRow.choice, JudgmentRow.ranking)
                .where(JudgmentRow.kind != "correction").order_by(JudgmentRow.created)
            ).all()
            panels: dict[str, dict[str, tuple[str, str]]] = {}  # comparison -> label -> (response, checkpoint)
            for cid, panel, rid, ckpt in session.execute(
                select(ResponseRow.comparison_id, ResponseRow.panel, ResponseRow.id, ResponseRow.checkpoint_id)
                .join(JudgmentRow, JudgmentRow.comparison_id == ResponseRow.comparison_id).distinct()
            ):
                panels.setdefault(cid, {})[PANEL_LABELS[panel]] = (rid, ckpt)
            scored = session.execute(
                select(ResponseRow.checkpoint_id, CriterionScoreRow.criterion, CriterionScoreRow.value)
                .join(ResponseRow, ResponseRow.id == CriterionScoreRow.response_id)
            ).all()
            n_judgments = session.scalar(select(func.count()).select_from(JudgmentRow))

        battles, verdicts = [], []
        for cid, annotator_id, kind, choice, ranking in judged:
            panel = panels[cid]
            for x, y, score in battle_outcomes(kind, sorted(panel), choice, ranking):
                (rx, cx), (ry, cy) = panel[x], panel[y]
                battles.append(Battle(cx, cy, score))
                first, second, verdict = (rx, ry, score) if rx < ry else (ry, rx, 1.0 - score)
                verdicts.append((f"{cid}|{first}|{second}", str(annotator_id),
                                 {1.0: 1, 0.0: -1}.get(verdict, 0)))
        rates, met = win_rates(battles)
        means, n_scores = criterion_means(scored)
        return Leaderboard(
            ratings=rate_checkpoints(battles, rounds, seed), win_rate=rates, battles=met,
            criteria=means, criteria_n=n_scores, agreement=inter_annotator_agreement(verdicts),
            judgments=n_judgments,
        )
