"""The Leaderboard tab: Bradley-Terry ratings with 95% intervals (overall, per criterion and with the
answers' length controlled), win rates, vote counts, the per-criterion means, the agreement among
annotators on the shared bank prompts, the position bias, and the run-versus-run decision; all
computed by the preference store.

Who sees what: agreement is shown overall to everyone; per annotator an admin sees every annotator
by name, an annotator sees only their own line ("你 you"): never another annotator's name or
numbers, and no judgment of anyone. The outlier screen and each annotator's Dawid-Skene reliability
(:meth:`~preference_store.repository.PreferenceStore.annotator_reliability`) are shown to admins only.

The pairwise decisions: for every two checkpoints that met on bank prompts, the anytime-valid test of
``compare-runs`` (better / worse / same / undecided, "decided after N judgments" with the win rate's interval).

While a study round is open (``queue-round`` until ``queue-round --close``) and ``study.interim_results`` is
admins (the default), an annotator sees only their own progress in this tab: no ratings, win rates, agreement
or run-vs-run verdict, which would tell them which stage tends to win (:func:`interim_withheld`), and no chart.
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

import gradio as gr

from app.arena import ArenaSession
from app.tabs.ratings_chart import save_ratings_chart
from core.errors import UserError
from preference_store.records import (
    Agreement,
    Annotator,
    CheckpointRating,
    Leaderboard,
    LengthControlledRatings,
    PositionBias,
    QueueRound,
    RunComparison,
)
from preference_store.repository import PreferenceStore

PROVISIONAL = "暂定 provisional"
RATING_COLUMNS = [
    "排名 rank",
    "检查点 checkpoint",
    "BT rating",
    "95% CI",
    "对局 battles",
    "胜 wins",
    "负 losses",
    "平 ties",
    PROVISIONAL,
]
LENGTH_COLUMNS = [
    "排名 rank",
    "检查点 checkpoint",
    "长度控制 length-controlled rating",
    "95% CI",
    "原始 raw rating",
    PROVISIONAL,
]
AGREEMENT_COLUMNS = [
    "标注者 annotator",
    "共同单元 shared units",
    "一致率 percent agreement",
    "α pairwise",
    "α ranking",
    "α scores",
]
SCREEN_COLUMNS = [
    "标注者 annotator",
    "有共识的单元 units with a consensus",
    "同意 agreed",
    "同意率 rate",
    "他人同意率 others' rate",
    "p",
    "离群 outlier",
]
PAIRWISE_COLUMNS = [
    "较高 higher-rated",
    "较低 lower-rated",
    "结论 verdict",
    "决定于 decided after",
    "胜率 win rate",
    "当前区间 interval now",
    "完整题目 complete prompts",
    "对局 battles",
]
PAIRWISE_VERDICTS = {
    "better": "更好 higher-rated better",
    "worse": "更差 higher-rated worse",
    "same": "持平 same",
    "undecided": "尚未决定 undecided",
}
RELIABILITY_COLUMNS = ["标注者 annotator", "可靠性 reliability", "重叠单元 overlap units"]
KINDS = {"pairwise": "两两投票 pairwise votes", "ranking": "排序 rankings", "scores": "1-5 评分 scores"}
SPLITS = {"heldout": "heldout", "train": "train", "全部 all": None}
VERDICTS = {
    "better": "更好 newer run better",
    "same": "持平 same",
    "worse": "更差 newer run worse",
    "undecided": "尚未决定 undecided",
}
NOT_ENOUGH = "数据不足 not enough judgments"
NOT_MEASURED = "—"
YOU = "你 you"


def _number(value: float | None, fmt: str = "{:.2f}") -> str:
    return NOT_MEASURED if value is None else fmt.format(value)


def _ci(ci: tuple[float, float] | None) -> str:
    return NOT_MEASURED if ci is None else f"{ci[0]:.0f} – {ci[1]:.0f}"


def ratings_table(board: Leaderboard) -> list[list]:
    """One row per checkpoint, best first; a rating with too few battles is marked provisional."""
    return [
        [
            i + 1,
            r.checkpoint_id,
            round(r.rating, 1),
            _ci(r.ci95),
            r.battles,
            r.wins,
            r.losses,
            r.ties,
            PROVISIONAL if r.provisional else "",
        ]
        for i, r in enumerate(board.ratings)
    ]


def length_table(board: Leaderboard) -> list[list]:
    """The length-controlled ratings beside the raw ones."""
    lc = board.length_controlled
    if lc is None:
        return []
    raw = {r.checkpoint_id: r.rating for r in board.ratings}
    return [
        [
            i + 1,
            r.checkpoint_id,
            round(r.rating, 1),
            _ci(r.ci95),
            round(raw[r.checkpoint_id], 1) if r.checkpoint_id in raw else NOT_MEASURED,
            PROVISIONAL if r.provisional else "",
        ]
        for i, r in enumerate(lc.ratings)
    ]


def length_line(lc: LengthControlledRatings | None) -> str:
    if lc is None or lc.length_coefficient is None:
        return "长度系数 length coefficient: no battles yet."
    ci = f" (95% interval {lc.length_ci95[0]:+.2f} … {lc.length_ci95[1]:+.2f})" if lc.length_ci95 else ""
    return (
        f"长度系数 length coefficient {lc.length_coefficient:+.2f}{ci} on {lc.battles} battles: the change in "
        "log-odds of winning per standard deviation of the normalised length difference (> 0: longer answers "
        "win more often). The ratings above are what each checkpoint would rate at equal length."
    )


def criteria_order(in_force: tuple[str, ...], found) -> list[str]:
    """The guideline's criteria in its priority order, then any other criterion scored under an older version."""
    return list(in_force) + sorted(set(found) - set(in_force))


def criterion_ratings_table(board: Leaderboard, in_force: tuple[str, ...]) -> tuple[list[str], list[list]]:
    """Checkpoint x criterion Bradley-Terry ratings from the 1-5 scores (provisional ones marked)."""
    criteria = [c for c in criteria_order(in_force, board.criterion_ratings) if c in board.criterion_ratings]
    per: dict[str, dict[str, CheckpointRating]] = {}
    for criterion in criteria:
        for r in board.criterion_ratings[criterion]:
            per.setdefault(r.checkpoint_id, {})[criterion] = r
    order = [r.checkpoint_id for r in board.ratings] + sorted(set(per) - {r.checkpoint_id for r in board.ratings})

    def cell(r: CheckpointRating | None) -> str:
        if r is None:
            return ""
        return f"{r.rating:.0f} ({r.battles} battles{', ' + PROVISIONAL if r.provisional else ''})"

    rows = [[cid] + [cell(per[cid].get(c)) for c in criteria] for cid in order if cid in per]
    return ["检查点 checkpoint", *criteria], rows


def matrix_table(board: Leaderboard, values: dict[str, dict], fmt) -> tuple[list[str], list[list]]:
    """A checkpoint x checkpoint table (row against column); '' where the two never met."""
    names = [r.checkpoint_id for r in board.ratings]
    rows = [[row] + [fmt(values[row][col]) if col in values.get(row, {}) else "" for col in names] for row in names]
    return ["行 vs 列 row vs column"] + names, rows


def criteria_table(board: Leaderboard, criteria: list[str]) -> list[list]:
    """Mean 1-5 score per criterion (with the number of scores) for every scored checkpoint."""
    return [
        [cid]
        + [
            f"{board.criteria[cid][c]:.2f} (n={board.criteria_n[cid][c]})" if c in board.criteria[cid] else ""
            for c in criteria
        ]
        for cid in sorted(board.criteria)
    ]


def summary_line(board: Leaderboard) -> str:
    scope = "只看题库 bank prompts only" if board.bank_only else "全部比较 all comparisons"
    provisional = sum(r.provisional for r in board.ratings)
    lines = [f"共 {board.judgments} 次评判 judgments ({scope}; ties and both-bad count half a win each)."]
    if provisional:
        lines.append(
            f"{provisional} 个评分为暂定 rating(s) marked {PROVISIONAL}: fewer than "
            f"{board.provisional_battles} battles, they may still move a lot."
        )
    if board.leaked_battles:
        fate = "left out of the ratings" if board.leaked_excluded else "counted in the ratings"
        lines.append(
            f"{board.leaked_battles} 场对局的回答泄露了模型名称 battles where an answer names a model: {fate}."
        )
    if board.warnings:  # the arena's contraindication warnings, per checkpoint (docs/safety.md)
        shares = ", ".join(
            f"{cid} {warned}/{checked} ({warned / checked:.0%})" for cid, (warned, checked) in board.warnings.items()
        )
        lines.append(f"用药警示 contraindication warnings (answers warned / checked): {shares}.")
    if board.unblinded_judgments:
        fate = (
            "counted (store.admit_unblinded)"
            if board.unblinded_admitted
            else "left out (store.admit_unblinded admits them)"
        )
        lines.append(
            f"{board.unblinded_judgments} 次评判在名称可见时做出 judgments made with the names shown "
            f"(not blind): {fate}."
        )
    return "  \n".join(lines)


def agreement_markdown(agreement: Agreement) -> str:
    """Krippendorff's alpha and the percent agreement per kind of verdict, on the shared bank prompts."""
    measured = {kind: a for kind, a in agreement.by_kind.items() if a.units}
    if not measured:
        return (
            "标注者一致性 agreement: no bank prompt has been judged by more than one annotator with the same "
            "contestants yet (Krippendorff's alpha needs at least two annotators on the same prompt)."
        )
    lines = [
        "标注者一致性 agreement on the shared bank prompts (same prompt, same contestants):",
        "",
        "| 类型 kind | Krippendorff's α | 一致率 percent agreement | 单元 units | 标注者 annotators |",
        "|---|---|---|---|---|",
    ]
    for kind, a in measured.items():
        lines.append(
            f"| {KINDS.get(kind, kind)} | α = {_number(a.alpha)} ({a.level}) | {_number(a.percent, '{:.0%}')} "
            f"| {a.units} | {a.annotators} |"
        )
    scored = {c: v for c, v in agreement.criteria_alpha.items() if v is not None}
    if scored:
        lines += ["", "各维度评分 α per criterion (ordinal): " + ", ".join(f"{c} {v:.2f}" for c, v in scored.items())]
    return "\n".join(lines)


def annotator_agreement_table(agreement: Agreement, viewer: Annotator | None) -> list[list]:
    """Each annotator against the others: every row (with names) for admins; an annotator's own row only."""
    rows = []
    for a in agreement.annotators:
        if viewer is not None and viewer.is_admin:
            who = a.name
        elif viewer is not None and a.annotator_id == viewer.id:
            who = YOU
        else:
            continue
        rows.append(
            [
                who,
                a.units,
                _number(a.percent, "{:.0%}"),
                *(_number(a.alpha.get(kind)) for kind in ("pairwise", "ranking", "scores")),
            ]
        )
    return rows


def position_markdown(bias: PositionBias | None) -> str:
    if bias is None or not (bias.decided_votes or bias.rankings):
        return "位置偏差 position bias: no decided vote or ranking yet."
    lines = []
    if bias.decided_votes:
        ci = f" (95% interval {bias.a_ci95[0]:.0%} – {bias.a_ci95[1]:.0%})" if bias.a_ci95 else ""
        lines.append(
            f"位置偏差 position bias: 面板 A 赢得 A wins {bias.a_share:.0%}{ci} of {bias.decided_votes} "
            "decided votes (50% = no bias)."
        )
    if bias.rankings:
        firsts = ", ".join(
            f"{label} {share:.0%} (expected {bias.first_place_expected.get(label, 0):.0%})"
            for label, share in sorted(bias.first_place.items())
        )
        lines.append(f"排序中排第一的面板 first place by panel in {bias.rankings} rankings: {firsts}.")
    return "  \n".join(lines)


def screen_view(board: Leaderboard, viewer: Annotator | None) -> tuple[dict, dict]:
    """The outlier screen (admins only): a headline and the table, hidden from everyone else."""
    if viewer is None or not viewer.is_admin:
        return gr.update(value="", visible=False), gr.update(value=[], visible=False)
    outliers = board.outliers
    head = (
        "离群标注者 outlier annotators (admins only): "
        + (", ".join(f"**{html.escape(s.name)}**" for s in outliers) if outliers else "none")
        + " — agreeing with the leave-one-out consensus of the others less than chance allows."
    )
    rows = [
        [
            s.name,
            s.units,
            s.agreed,
            _number(s.rate, "{:.0%}"),
            _number(s.expected, "{:.0%}"),
            _number(s.p_value, "{:.3g}"),
            "⚠ outlier" if s.outlier else "",
        ]
        for s in board.screen
    ]
    return gr.update(value=head, visible=True), gr.update(value=rows, headers=SCREEN_COLUMNS, visible=True)


def pairwise_table(board: Leaderboard) -> list[list]:
    """One row per two checkpoints that met on bank prompts, the higher-rated first: the anytime-valid verdict,
    "decided after N judgments" with the interval then, the win rate and its interval now."""
    rows = []
    for d in board.pairwise:
        decided = (
            f"{d.decided_after} judgments ({d.decided_interval[0]:.2f} – {d.decided_interval[1]:.2f})"
            if d.decided_after is not None
            else NOT_MEASURED
        )
        rows.append(
            [
                d.first,
                d.second,
                PAIRWISE_VERDICTS[d.verdict],
                decided,
                _number(d.win_rate),
                f"{d.interval[0]:.2f} – {d.interval[1]:.2f}",
                d.units,
                d.judgments,
            ]
        )
    return rows


def pairwise_update(board: Leaderboard) -> dict:
    return gr.update(value=pairwise_table(board), headers=PAIRWISE_COLUMNS)


def reliability_view(store: PreferenceStore, viewer: Annotator | None) -> tuple[dict, dict]:
    """Each annotator's Dawid-Skene reliability (admins only): a headline and the table, hidden from everyone
    else (and not computed for them)."""
    if viewer is None or not viewer.is_admin:
        return gr.update(value="", visible=False), gr.update(value=[], visible=False)
    rows = [[r.name, f"{r.reliability:.0%}", r.overlap_units] for r in store.annotator_reliability()]
    head = (
        "标注者可靠性 annotator reliability (admins only): the probability that an annotator's pairwise verdict "
        "is the true one, estimated from the prompts several annotators judged (Dawid & Skene 1979)"
        + ("." if rows else ": no two annotators have judged the same prompt and contestants yet.")
    )
    return gr.update(value=head, visible=True), gr.update(value=rows, headers=RELIABILITY_COLUMNS, visible=True)


def leaderboard_view(store: PreferenceStore, bank_only: bool = False) -> list:
    """The ratings part of the tab (summary, ratings, win rates, vote counts, criterion means), which
    needs no viewer: the tab itself shows :func:`full_view`."""
    return core_view(store.leaderboard(bank_only=bank_only), store.guideline().criterion_keys)


def core_view(board: Leaderboard, in_force: tuple[str, ...]) -> list:
    """Summary, ratings, win rates, vote counts and criterion means (``in_force``: the guideline's criteria)."""
    win_head, win_rows = matrix_table(board, board.win_rate, lambda v: f"{v:.0%}")
    count_head, count_rows = matrix_table(board, board.battles, str)
    criteria = criteria_order(in_force, {c for scores in board.criteria.values() for c in scores})
    return [
        summary_line(board),
        gr.update(value=ratings_table(board), headers=RATING_COLUMNS),
        gr.update(value=win_rows, headers=win_head),
        gr.update(value=count_rows, headers=count_head),
        gr.update(value=criteria_table(board, criteria), headers=["检查点 checkpoint", *criteria]),
    ]


def full_view(
    store: PreferenceStore, viewer: Annotator | None, bank_only: bool = False, board: Leaderboard | None = None
) -> list:
    """Every computed component of the tab for ``viewer`` (None: not logged in, sees no per-annotator line);
    ``board``: the leaderboard already computed for ``bank_only``."""
    board = board or store.leaderboard(bank_only=bank_only)
    in_force = store.guideline().criterion_keys
    criterion_head, criterion_rows = criterion_ratings_table(board, in_force)
    return [
        *core_view(board, in_force),
        agreement_markdown(board.agreement),
        gr.update(value=annotator_agreement_table(board.agreement, viewer), headers=AGREEMENT_COLUMNS),
        gr.update(value=criterion_rows, headers=criterion_head),
        gr.update(value=length_table(board), headers=LENGTH_COLUMNS),
        length_line(board.length_controlled),
        position_markdown(board.position_bias),
        pairwise_update(board),
        *reliability_view(store, viewer),
        *screen_view(board, viewer),
    ]


def interim_withheld(store: PreferenceStore, viewer: Annotator | None, interim_results: str) -> QueueRound | None:
    """The open study round whose interim results ``viewer`` may not see (``study.interim_results`` admins:
    everyone but admins while a round is open), else None."""
    if interim_results == "everyone" or (viewer is not None and viewer.is_admin):
        return None
    current = store.queue_round_definition()
    return current if current.is_open else None


def interim_view(store: PreferenceStore, viewer: Annotator | None, current: QueueRound) -> list:
    """The tab while round ``current`` is open, for an annotator: their own progress, every result empty."""
    line = (
        f"**第 {current.number} 轮进行中 Study round {current.number} is open**: results are shown to admins "
        "only until it closes, so that knowing which answers tend to win cannot steer the judgments."
    )
    if viewer is not None:
        line += f" 我的队列 Your queue: **{store.queue_progress(viewer.id)}** 已完成 done."
    empty = gr.update(value=[])
    hidden = gr.update(value="", visible=False), gr.update(value=[], visible=False)
    return [
        line,
        empty,
        empty,
        empty,
        empty,
        "",
        gr.update(value=[], headers=AGREEMENT_COLUMNS),
        empty,
        gr.update(value=[], headers=LENGTH_COLUMNS),
        "",
        "",
        gr.update(value=[], headers=PAIRWISE_COLUMNS),
        *hidden,
        *hidden,
    ]


def ratings_chart(store: PreferenceStore, board: Leaderboard) -> str | None:
    """The chart of every view's ratings with their intervals (:mod:`app.tabs.ratings_chart`) as a PNG in a folder
    of its own under the temp folder (gradio serves files from there only); None with no ratings yet."""
    in_force = store.guideline().criterion_keys
    criteria = criteria_order(in_force, board.criterion_ratings)
    path = Path(tempfile.mkdtemp(prefix="chimed-chart-")) / "ratings_intervals.png"
    return str(path) if save_ratings_chart(board, criteria, path) else None


def tab_view(store: PreferenceStore, viewer: Annotator | None, bank_only: bool, interim_results: str) -> list:
    """What the tab shows ``viewer``: :func:`full_view` and the ratings chart (:func:`ratings_chart`), or
    :func:`interim_view` and no chart while results are withheld."""
    current = interim_withheld(store, viewer, interim_results)
    if current is not None:
        return [*interim_view(store, viewer, current), None]
    board = store.leaderboard(bank_only=bank_only)
    return [*full_view(store, viewer, bank_only, board), ratings_chart(store, board)]


def run_choices(store: PreferenceStore) -> list[str]:
    """Runs with registered checkpoints, newest first."""
    newest: dict[str, object] = {}
    for c in store.list_checkpoints():
        newest[c.run_id] = max(newest.get(c.run_id, c.registered), c.registered)
    return sorted(newest, key=lambda run: newest[run], reverse=True)


def run_comparison_line(result: RunComparison) -> str:
    """ "newer run better/same/worse, P(better)=..., 95% interval ..." in one line."""
    if result.verdict not in VERDICTS or result.difference is None:
        return f"**{NOT_ENOUGH}**: {html.escape(str(result), quote=False)}"
    head = f"**{VERDICTS[result.verdict]}**"
    stage = f"{result.new_checkpoint} vs {result.old_checkpoint}"
    split = f"the {result.split}" if result.split else "all"
    if result.decisions == "anytime":
        level = f"{1 - result.alpha:.0%}"
        low, high = result.interval
        decided = (
            f"decided after {result.decided_after} judgments (win rate {level} interval then "
            f"{result.decided_interval[0]:.2f} … {result.decided_interval[1]:.2f}); "
            if result.decided_after is not None
            else f"not decided yet (same needs the interval within {0.5 - result.margin:.2f} … "
            f"{0.5 + result.margin:.2f}); "
        )
        return (
            f"{head}: {html.escape(stage)} on {split} bank prompts — {decided}win rate {result.win_rate:.2f}, "
            f"{level} anytime interval {low:.2f} … {high:.2f} now; {result.units} complete prompts of "
            f"{result.prompts}, {result.battles} battles ({result.wins} won, {result.losses} lost, {result.ties} "
            "ties; valid however often it is read)."
        )
    ci = f", 95% interval {result.ci95[0]:+.2f} … {result.ci95[1]:+.2f}" if result.ci95 else ""
    return (
        f"{head}: {html.escape(stage)} on {split} bank prompts — P(better)={_number(result.p_new_better)}, "
        f"difference in win share {result.difference:+.2f}{ci}; {result.prompts} prompts, {result.battles} battles "
        f"({result.wins} won, {result.losses} lost, {result.ties} ties; {result.rounds} bootstrap resamples)."
    )


def compare_runs_line(store: PreferenceStore, new_run: str | None, old_run: str | None, split_label: str) -> str:
    """The run-vs-run decision on the bank prompts of one split ("heldout", "train" or "全部 all")."""
    if not new_run or not old_run:
        raise UserError("choose a newer and an older run")
    if new_run == old_run:
        raise UserError("choose two different runs")
    split = SPLITS.get(split_label, split_label or None)
    return run_comparison_line(store.compare_runs(new_run, old_run, split=split))


def build_leaderboard_tab(store: PreferenceStore, session: gr.State, tab: gr.Tab, interim_results: str) -> None:
    """Lay out the Leaderboard tab; it is recomputed for the session's annotator whenever the tab is
    opened, refreshed or the bank-only box changes (``interim_results``: the config's study.interim_results)."""
    with gr.Row():
        bank_only = gr.Checkbox(label="只看题库 Bank prompts only", value=False, elem_id="bank-only")
        refresh = gr.Button("刷新 Refresh", elem_id="refresh-leaderboard")
    summary = gr.Markdown(elem_id="leaderboard-summary")
    gr.Markdown("#### Bradley-Terry 评分 ratings (95% bootstrap intervals)")
    ratings = gr.Dataframe(headers=RATING_COLUMNS, interactive=False, elem_id="ratings")
    chart = gr.Image(
        label="评分与95%区间 Ratings with 95% intervals (overall, length-controlled, per criterion; "
        "download the PNG for reports)",
        type="filepath",
        interactive=False,
        buttons=["download", "fullscreen"],  # no "share": study results stay off Hugging Face
        elem_id="ratings-chart",
    )
    gr.Markdown("#### 标注者一致性 Agreement")
    agreement = gr.Markdown(elem_id="agreement")
    annotator_agreement = gr.Dataframe(
        headers=AGREEMENT_COLUMNS,
        interactive=False,
        elem_id="annotator-agreement",
        label="每位标注者与其他人 each annotator against the others",
    )
    position = gr.Markdown(elem_id="position-bias")
    outliers = gr.Markdown(visible=False, elem_id="outliers")
    screen = gr.Dataframe(headers=SCREEN_COLUMNS, interactive=False, visible=False, elem_id="outlier-screen")
    reliability_head = gr.Markdown(visible=False, elem_id="reliability-head")
    reliability = gr.Dataframe(
        headers=RELIABILITY_COLUMNS, interactive=False, visible=False, elem_id="annotator-reliability"
    )
    gr.Markdown("#### 各维度 Bradley-Terry 评分 Ratings per criterion (from the 1-5 scores)")
    criterion_ratings = gr.Dataframe(interactive=False, elem_id="criterion-ratings")
    gr.Markdown("#### 长度控制评分 Length-controlled ratings (style control on answer length)")
    length_coefficient = gr.Markdown(elem_id="length-coefficient")
    length_controlled = gr.Dataframe(headers=LENGTH_COLUMNS, interactive=False, elem_id="length-controlled")
    gr.Markdown("#### 成对决定 Pairwise decisions (anytime-valid, as compare-runs: may be read after every judgment)")
    pairwise = gr.Dataframe(headers=PAIRWISE_COLUMNS, interactive=False, elem_id="pairwise-decisions")
    gr.Markdown("#### 胜率矩阵 Win rate (row beats column)")
    win_rate = gr.Dataframe(interactive=False, elem_id="win-rate")
    gr.Markdown("#### 对局数 Vote counts (row vs column)")
    counts = gr.Dataframe(interactive=False, elem_id="vote-counts")
    gr.Markdown("#### 各维度平均分 Mean scores per criterion (1-5)")
    criteria = gr.Dataframe(interactive=False, elem_id="criteria")
    gr.Markdown("#### 运行对比 Run vs run on the shared bank prompts (the rule for whether a round of the loop helped)")
    with gr.Row():
        new_run = gr.Dropdown(label="较新的运行 newer run", choices=[], elem_id="new-run")
        old_run = gr.Dropdown(label="较旧的运行 older run", choices=[], elem_id="old-run")
        split = gr.Radio(list(SPLITS), value="heldout", label="题库划分 bank split", elem_id="compare-split")
        compare = gr.Button("比较 Compare runs", elem_id="compare-runs")
    comparison = gr.Markdown(elem_id="run-comparison")

    outputs = [
        summary,
        ratings,
        win_rate,
        counts,
        criteria,
        agreement,
        annotator_agreement,
        criterion_ratings,
        length_controlled,
        length_coefficient,
        position,
        pairwise,
        reliability_head,
        reliability,
        outliers,
        screen,
        chart,
    ]

    def view(state: ArenaSession, only_bank: bool):
        return tab_view(store, state.annotator, bool(only_bank), interim_results)

    def runs(current_new: str | None, current_old: str | None):
        names = run_choices(store)
        new = current_new if current_new in names else (names[0] if names else None)
        old = current_old if current_old in names else (names[1] if len(names) > 1 else None)
        return gr.update(choices=names, value=new), gr.update(choices=names, value=old)

    def run_compare(state: ArenaSession, new: str | None, old: str | None, split_label: str):
        try:
            current = interim_withheld(store, state.annotator, interim_results)
            if current is not None:
                raise UserError(
                    f"study round {current.number} is open: the run-vs-run verdict is for admins until it closes"
                )
            return compare_runs_line(store, new, old, split_label)
        except UserError as err:
            return f"⚠ {html.escape(str(err), quote=False)}"

    for trigger in (refresh.click, tab.select, bank_only.change):
        trigger(view, [session, bank_only], outputs)
    for trigger in (refresh.click, tab.select):
        trigger(runs, [new_run, old_run], [new_run, old_run])
    compare.click(run_compare, [session, new_run, old_run, split], [comparison])
