"""Read-only summaries: the leaderboard (ratings, win rates, scores, agreement, integrity), the run-vs-run
verdict, the agreement and weight of each pair on a bank prompt, the annotators' reliabilities, and what the
store holds.

Every summary reads live judgments only (a revised one is history), and only judgments of blind comparisons
unless ``store.admit_unblinded``: a judge who saw which run answered is not a blind judge."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.registry import stage_names
from preference_store.models import (
    AnnotatorRow,
    BankPromptRow,
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
from preference_store.records import (
    JUDGMENT_KINDS,
    PANEL_LABELS,
    SPLITS,
    AnnotatorReliability,
    Leaderboard,
    RunComparison,
    StoreCounts,
)
from preference_store.repository.sessions import StoreSessions
from preference_store.statistics.agreement import agreement_values, measure_agreement, pair_agreement
from preference_store.statistics.bradley_terry import (
    JudgedComparison,
    Panel,
    criterion_battles,
    criterion_means,
    judged_battles,
    rate_checkpoints,
    rate_length_controlled,
    win_rates,
)
from preference_store.statistics.integrity import position_bias, screen_annotators
from preference_store.statistics.reliability import annotator_reliability, pair_weights
from preference_store.statistics.run_comparison import compare_checkpoints, pairwise_decisions
from preference_store.validation import NotFoundError, PreferenceStoreError


class LeaderboardQueries(StoreSessions):
    """What the Leaderboard and Data tabs show; these only read."""

    def counts(self) -> StoreCounts:
        with self._read() as session:

            def count(model, *where):
                return session.scalar(select(func.count()).select_from(model).where(*where))

            by_kind = dict(
                session.execute(select(JudgmentRow.kind, func.count()).where(LIVE).group_by(JudgmentRow.kind)).all()
            )
            return StoreCounts(
                annotators=count(AnnotatorRow),
                checkpoints=count(CheckpointRow),
                conversations=count(ConversationRow),
                comparisons=count(ComparisonRow),
                judgments=sum(by_kind.values()),
                judgments_by_kind={k: by_kind.get(k, 0) for k in JUDGMENT_KINDS},
                pairs=session.scalar(
                    select(func.count())
                    .select_from(PairRow)
                    .join(JudgmentRow, JudgmentRow.id == PairRow.judgment_id)
                    .where(LIVE)
                ),
                exported_pairs=session.scalar(
                    select(func.count(func.distinct(ExportedPairRow.pair_id))).where(
                        ExportedPairRow.duplicate_of.is_(None)
                    )
                ),
                consumed_pairs=session.scalar(select(func.count(func.distinct(ConsumptionRow.pair_id)))),
            )

    def leaderboard(
        self, rounds: int | None = None, seed: int = 0, bank_only: bool = False, exclude_leaked: bool | None = None
    ) -> Leaderboard:
        """Everything the Leaderboard tab shows, freshly computed.

        Bradley-Terry ratings with 95% bootstrap intervals (``rounds`` default store.bootstrap_rounds), overall
        and per criterion, and controlled for answer length; for every two checkpoints that met on bank prompts the
        anytime-valid decision of ``compare-runs`` (better / worse / same within study.margin / undecided, "decided
        after N judgments", at study.alpha); win rates; mean scores; the agreement among
        annotators on the shared bank prompts; the outlier screen and the position bias. ``bank_only``: only
        comparisons on bank prompts. ``exclude_leaked`` (default store.exclude_leaked_battles): leave battles
        whose answers name a model out of the ratings and win rates. Judgments of unblinded comparisons count
        only with store.admit_unblinded (``unblinded_judgments`` says how many there are either way).
        """
        rounds = self.settings.bootstrap_rounds if rounds is None else rounds
        exclude_leaked = self.settings.exclude_leaked_battles if exclude_leaked is None else exclude_leaked
        provisional, admit_unblinded = self.settings.provisional_battles, self.settings.admit_unblinded
        with self._read() as session:
            judged = load_judged(session, bank_only=bank_only, admit_unblinded=admit_unblinded)
            scored = (
                select(ResponseRow.checkpoint_id, CriterionScoreRow.criterion, CriterionScoreRow.value)
                .join(ResponseRow, ResponseRow.id == CriterionScoreRow.response_id)
                .join(JudgmentRow, JudgmentRow.id == CriterionScoreRow.judgment_id)
                .join(ComparisonRow, ComparisonRow.id == JudgmentRow.comparison_id)
                .where(*counted(bank_only, admit_unblinded))
            )
            scored = session.execute(scored).all()
            unblinded = session.scalar(
                select(func.count())
                .select_from(JudgmentRow)
                .join(ComparisonRow, ComparisonRow.id == JudgmentRow.comparison_id)
                .where(*counted(bank_only, True), ComparisonRow.blind.is_(False))
            )
            names = dict(session.execute(select(AnnotatorRow.id, AnnotatorRow.name)).all())
            warnings = answer_warnings(session, bank_only)

        battles, leaked = judged_battles(judged, exclude_leaked)
        rates, met = win_rates(battles)
        means, n_scores = criterion_means(scored)
        values = agreement_values(judged)
        ratings = rate_checkpoints(battles, rounds, seed, provisional)
        return Leaderboard(
            ratings=ratings,
            pairwise=pairwise_decisions(
                judged,
                [r.checkpoint_id for r in ratings],
                exclude_leaked,
                self.study.alpha,
                self.study.margin,
                self.settings.annotators_per_prompt,
                settle_on_agreement=self.study.allocation == "adaptive",
            ),
            win_rate=rates,
            battles=met,
            criteria=means,
            criteria_n=n_scores,
            agreement=measure_agreement(values, names),
            judgments=len(judged),
            criterion_ratings={
                c: rate_checkpoints(b, rounds, seed, provisional)
                for c, b in sorted(criterion_battles(judged, exclude_leaked).items())
            },
            length_controlled=rate_length_controlled(battles, provisional),
            position_bias=position_bias(judged),
            screen=screen_annotators(values, names, self.settings.outlier_p_value),
            leaked_battles=leaked,
            leaked_excluded=exclude_leaked,
            bank_only=bank_only,
            provisional_battles=provisional,
            unblinded_judgments=unblinded,
            unblinded_admitted=admit_unblinded,
            warnings=warnings,
        )

    def compare_runs(
        self,
        new_run: str,
        old_run: str,
        split: str | None = None,
        stage: str | None = None,
        rounds: int | None = None,
        seed: int = 0,
        reused: frozenset[str] = frozenset(),
    ) -> RunComparison:
        """Is ``new_run`` better than ``old_run``? The clinicians' battles between the two runs' checkpoints of
        ``stage`` on the bank prompts of ``split`` (train | heldout | None = all), decided as study.decisions says:
        anytime (a confidence sequence over the prompts, "decided after N judgments") or fixed (a bootstrap over
        prompts, ``rounds`` default store.run_comparison_rounds). See :mod:`preference_store.statistics.run_comparison`
        for the verdict rule; the result counts the prompts whose pairs ``new_run`` trained on (``trained_on``).

        ``stage`` None = the last stage of both runs, refused as ambiguous when the runs end in different
        stages (their last common one may be one the new run only reused). ``reused``: the stages ``new_run``
        took over from ``old_run`` unchanged (``train-all --from``), registered under new ids but the same
        weights: comparing one of them is refused."""
        if new_run == old_run:
            raise PreferenceStoreError(f"compare run {new_run!r} with another run, not with itself")
        if split is not None and split not in SPLITS:
            raise PreferenceStoreError(f"unknown split {split!r}: choose train, heldout or all")
        with self._read() as session:
            stages: dict[str, set[str]] = {new_run: set(), old_run: set()}
            for run_id, run_stage in session.execute(
                select(CheckpointRow.run_id, CheckpointRow.stage).where(CheckpointRow.run_id.in_(stages))
            ):
                stages[run_id].add(run_stage)
            for run_id, have in stages.items():
                if not have:
                    raise NotFoundError(
                        f"run {run_id!r} has no registered checkpoints: give the id of a trained "
                        "run (./launch.sh train-all registers its checkpoints)"
                    )
            shared = stages[new_run] & stages[old_run]
            trained = sorted(shared - set(reused), key=_stage_order)
            if stage is None:
                if not shared:
                    raise NotFoundError(f"runs {new_run!r} and {old_run!r} have no stage in common to compare")
                last_new, last_old = (max(stages[r], key=_stage_order) for r in (new_run, old_run))
                if last_new != last_old:
                    raise PreferenceStoreError(
                        f"ambiguous: {new_run} ends in {last_new}, {old_run} in {last_old}; name the stage both "
                        f"have to compare with --stage ({', '.join(trained) or 'none that the new run trained'})"
                    )
                stage = last_new
            elif stage not in shared:
                raise NotFoundError(
                    f"stage {stage!r} is not registered for both {new_run!r} and {old_run!r} "
                    f"(both have: {', '.join(sorted(shared)) or 'none'})"
                )
            if stage in reused:
                raise PreferenceStoreError(
                    f"{new_run}/{stage} is {old_run}/{stage} reused (the same weights): compare a stage {new_run} "
                    f"trained itself with --stage ({', '.join(trained) or 'none in common'})"
                )
            judged = load_judged(session, bank_only=True, admit_unblinded=self.settings.admit_unblinded)
            trained_on = set(
                session.scalars(
                    select(ComparisonRow.bank_prompt_id)
                    .join(PairRow, PairRow.comparison_id == ComparisonRow.id)
                    .join(ConsumptionRow, ConsumptionRow.pair_id == PairRow.id)
                    .where(ConsumptionRow.run_id == new_run, ComparisonRow.bank_prompt_id.is_not(None))
                )
            )
        rounds = self.settings.run_comparison_rounds if rounds is None else rounds
        return compare_checkpoints(
            judged,
            new_run,
            old_run,
            stage,
            split=split,
            rounds=rounds,
            seed=seed,
            min_prompts=self.settings.run_comparison_min_prompts,
            exclude_leaked=self.settings.exclude_leaked_battles,
            trained_on=trained_on,
            decisions=self.study.decisions,
            alpha=self.study.alpha,
            margin=self.study.margin,
            per_prompt=self.settings.annotators_per_prompt,
            settle_on_agreement=self.study.allocation == "adaptive",
        )

    def pair_agreement(self) -> dict[str, tuple[float | None, int]]:
        """pair id -> (share of the annotators of its bank prompt who judged the same two checkpoints and agree
        with it, how many they are), for every pair on a bank prompt; (None, 1) when only one annotator judged
        them. Pairs not on a bank prompt are absent. See :func:`preference_store.statistics.agreement.pair_agreement`."""
        return pair_agreement(*self._bank_pairs())

    def pair_weights(self) -> dict[str, float | None]:
        """pair id -> its weight, the Dawid-Skene posterior probability that its direction is right (None: a
        correction, or no annotator overlaps another), for every pair on a bank prompt. See
        :func:`preference_store.statistics.reliability.pair_weights`."""
        return pair_weights(*self._bank_pairs())

    def annotator_reliability(self) -> list[AnnotatorReliability]:
        """Each annotator's Dawid-Skene reliability on the pairwise verdicts on bank prompts (admins: the study
        figures and ``/reliability``), most reliable first; empty when no two annotators judged the same unit."""
        with self._read() as session:
            judged = load_judged(session, bank_only=True, admit_unblinded=self.settings.admit_unblinded)
            names = dict(session.execute(select(AnnotatorRow.id, AnnotatorRow.name)).all())
        fit, overlap = annotator_reliability(judged)
        if fit is None:
            return []
        rows = [
            AnnotatorReliability(
                annotator_id=a,
                name=names.get(a, str(a)),
                overlap_units=overlap.get(a, 0),
                reliability=fit.reliability(a),
                confusion=tuple(tuple(float(x) for x in row) for row in fit.confusion[a]),
            )
            for a in fit.confusion
        ]
        return sorted(rows, key=lambda r: (-r.reliability, r.annotator_id))

    def _bank_pairs(self) -> tuple[list, list[JudgedComparison]]:
        """(pair id, bank prompt, chosen checkpoint or None, rejected checkpoint) of every live pair on a bank
        prompt, and the judgments on bank prompts."""
        with self._read() as session:
            judged = load_judged(session, bank_only=True, admit_unblinded=self.settings.admit_unblinded)
            chosen, rejected = ResponseRow.__table__.alias("chosen"), ResponseRow.__table__.alias("rejected")
            pairs = session.execute(
                select(PairRow.id, ComparisonRow.bank_prompt_id, chosen.c.checkpoint_id, rejected.c.checkpoint_id)
                .join(ComparisonRow, ComparisonRow.id == PairRow.comparison_id)
                .outerjoin(chosen, chosen.c.id == PairRow.chosen_response_id)
                .join(rejected, rejected.c.id == PairRow.rejected_response_id)
                .join(JudgmentRow, JudgmentRow.id == PairRow.judgment_id)
                .where(ComparisonRow.bank_prompt_id.is_not(None), LIVE)
            ).all()
        return pairs, judged


def answer_warnings(session: Session, bank_only: bool) -> dict[str, tuple[int, int]]:
    """checkpoint -> (answers shown with a contraindication warning, answers checked for one), over every
    recorded answer (judged or not: a warning is about the answer, not the verdict; docs/safety.md)."""
    query = select(ResponseRow.checkpoint_id, ResponseRow.warnings).where(ResponseRow.warnings.is_not(None))
    if bank_only:
        query = query.join(ComparisonRow, ComparisonRow.id == ResponseRow.comparison_id).where(
            ComparisonRow.bank_prompt_id.is_not(None)
        )
    out: dict[str, list[int]] = {}
    for checkpoint, found in session.execute(query):
        counts = out.setdefault(checkpoint, [0, 0])
        counts[0] += bool(found)
        counts[1] += 1
    return {c: (warned, checked) for c, (warned, checked) in sorted(out.items())}


def _stage_order(stage: str) -> tuple[int, str]:
    """Training order (base, cpt, sft, then the alignment stages); unknown stages last."""
    order = list(stage_names())
    return (order.index(stage) if stage in order else len(order), stage)


LIVE = JudgmentRow.superseded_by.is_(None)  # a revised (or resolved duplicate) judgment is history


def counted(bank_only: bool, admit_unblinded: bool) -> list:
    """The conditions on (JudgmentRow, ComparisonRow) of a judgment the summaries count."""
    return [
        LIVE,
        *([ComparisonRow.bank_prompt_id.is_not(None)] if bank_only else []),
        *([] if admit_unblinded else [ComparisonRow.blind.is_(True)]),
    ]


def load_judged(session: Session, bank_only: bool = False, admit_unblinded: bool = True) -> list[JudgedComparison]:
    """Every live judgment (oldest first) with the answers it judged and its scores; ``bank_only``: on bank
    prompts; ``admit_unblinded`` False: on blind comparisons only."""
    query = (
        select(
            JudgmentRow.id,
            JudgmentRow.comparison_id,
            JudgmentRow.annotator_id,
            JudgmentRow.kind,
            JudgmentRow.choice,
            JudgmentRow.ranking,
            ComparisonRow.bank_prompt_id,
            BankPromptRow.split,
        )
        .join(ComparisonRow, ComparisonRow.id == JudgmentRow.comparison_id)
        .outerjoin(BankPromptRow, BankPromptRow.id == ComparisonRow.bank_prompt_id)
        .where(*counted(bank_only, admit_unblinded))
        .order_by(JudgmentRow.created, JudgmentRow.id)
    )
    answers = select(
        ResponseRow.comparison_id,
        ResponseRow.panel,
        ResponseRow.id,
        ResponseRow.checkpoint_id,
        func.length(ResponseRow.text),
        ResponseRow.leaks,
    ).where(ResponseRow.comparison_id.in_(select(JudgmentRow.comparison_id)))
    scores = select(
        CriterionScoreRow.judgment_id,
        CriterionScoreRow.response_id,
        CriterionScoreRow.criterion,
        CriterionScoreRow.value,
    )
    if bank_only:
        on_bank = select(ComparisonRow.id).where(ComparisonRow.bank_prompt_id.is_not(None))
        answers = answers.where(ResponseRow.comparison_id.in_(on_bank))
        scores = scores.join(JudgmentRow, JudgmentRow.id == CriterionScoreRow.judgment_id).where(
            JudgmentRow.comparison_id.in_(on_bank)
        )
    panels: dict[str, dict[str, Panel]] = {}  # comparison -> label -> answer
    label_of: dict[str, str] = {}  # response id -> its panel label
    for cid, panel, rid, ckpt, length, leaks in session.execute(answers):
        label_of[rid] = PANEL_LABELS[panel]
        panels.setdefault(cid, {})[PANEL_LABELS[panel]] = Panel(rid, ckpt, length or 0, bool(leaks))
    given: dict[str, dict[str, dict[str, int]]] = {}  # judgment -> label -> criterion -> value
    for jid, rid, criterion, value in session.execute(scores):
        given.setdefault(jid, {}).setdefault(label_of[rid], {})[criterion] = value
    return [
        JudgedComparison(
            judgment_id=jid,
            comparison_id=cid,
            annotator_id=annotator,
            kind=kind,
            choice=choice,
            ranking=dict(ranking) if ranking is not None else None,
            panels=panels[cid],
            scores=given.get(jid, {}),
            bank_prompt_id=bank_prompt_id,
            split=split,
        )
        for jid, cid, annotator, kind, choice, ranking, bank_prompt_id, split in session.execute(query)
    ]
