"""The Data tab: what the store holds, the newest preference pairs, and for admins the bank import and
the export that ``./launch.sh export-prefs`` does (de-identified pairs and single-answer ratings).

Who sees what:

- an annotator sees only their own work: their comparisons, judgments, pairs, single-answer ratings and
  queue progress, the rows of their own pairs (their own text, shown as they wrote it) and what they made
  of each of their comparisons (everyone sees this table of their own);
- an admin sees the whole store and everyone's pairs with the annotator's name, each text de-identified
  for display (:func:`preference_store.deid.detect.deidentify`: names, addresses, dates, phone and ID numbers ...)
  unless it is the admin's own; admins also import prompt banks, define and close study rounds, and export.

Text is shown as typed only to the annotator who typed it (what they may see anyway); to anyone else it
is de-identified, whatever ``store.redact_on_entry`` says.
"""

from __future__ import annotations

import csv
import html
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import gradio as gr

from app.arena import ArenaSession
from app.auth import request_address
from app.contestants import available_contestants
from app.refusals import admin_only
from app.rounds import close_study_round, start_study_round
from core.config import Config
from core.errors import UserError
from preference_store.deid.detect import deidentify
from preference_store.exports.pairs import export_pairs, format_summary
from preference_store.exports.ratings import export_ratings, format_ratings_summary
from preference_store.records import ROUND_SPLITS, Annotator, BankImportSummary, JudgmentOut
from preference_store.repository import PreferenceStore

PAIR_COLUMNS = [
    "时间 time",
    "问题 prompt",
    "优选 chosen",
    "较差 rejected",
    "优选来源 chosen from",
    "较差来源 rejected from",
    "优选服务方式 chosen served",
    "较差服务方式 rejected served",
]
ANNOTATOR_COLUMN = "标注者 annotator"  # admins only, after the checkpoints (index 6)
JUDGMENT_COLUMNS = ["时间 time", "问题 prompt", "来源 source", "我的评判 my judgments and ratings"]
THUMBS = {True: "👍", False: "👎"}
EXCERPT = 120
NOT_RECORDED = "—"
ADMIN_HINT = "./launch.sh add-annotator NAME --role admin"


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "…"


def serving_label(serving: dict | None) -> str:
    """How an answer was served, in a few words: "exact", "delta 8-bit" (the parent plus an 8-bit
    difference), or "—" for a clinician's correction or an answer stored before this was recorded."""
    mode = (serving or {}).get("mode")
    if mode == "delta" and serving.get("bits"):
        return f"delta {serving['bits']}-bit"
    return str(mode) if mode else NOT_RECORDED


def sees_everyone(viewer: Annotator | None) -> bool:
    """Admins (and callers without a viewer: the command line and tests) see the whole store."""
    return viewer is None or viewer.is_admin


def counts_markdown(store: PreferenceStore, viewer: Annotator | None = None) -> str:
    """The store's counts for admins; an annotator's own counts for an annotator."""
    if not sees_everyone(viewer):
        return own_counts_markdown(store, viewer)
    c = store.counts()
    kinds = ", ".join(f"{k} {v}" for k, v in c.judgments_by_kind.items())
    return (
        f"| 标注者 annotators | 检查点 checkpoints | 对话 conversations | 比较 comparisons | 评判 judgments "
        f"| 偏好对 pairs | 已导出 exported | 已用于训练 trained on |\n|---|---|---|---|---|---|---|---|\n"
        f"| {c.annotators} | {c.checkpoints} | {c.conversations} | {c.comparisons} | {c.judgments} ({kinds}) "
        f"| {c.pairs} | {c.exported_pairs} | {c.consumed_pairs} |\n\n"
        f"| 单项评价 single-answer ratings | 题库问题 bank prompts | 已完成分配 assignments done |\n|---|---|---|\n"
        f"| {c.ratings} | {c.bank_prompts} | {c.assignments_done} |"
    )


def own_counts_markdown(store: PreferenceStore, annotator: Annotator) -> str:
    """One annotator's own work: nothing about anyone else's."""
    c = store.annotator_counts(annotator.id)
    kinds = ", ".join(f"{k} {v}" for k, v in c.judgments_by_kind.items())
    progress = store.queue_progress(annotator.id)
    return (
        f"| 我的比较 my comparisons | 我的评判 my judgments | 我的偏好对 my pairs "
        f"| 我的单项评价 my single-answer ratings | 我的队列 my queue (done / total) |\n|---|---|---|---|---|\n"
        f"| {c.comparisons} | {c.judgments} ({kinds}) | {c.pairs} | {c.ratings} | {progress} |\n\n"
        "只显示您自己的数据 Only your own work is shown here."
    )


def recent_pairs_table(store: PreferenceStore, limit: int, viewer: Annotator | None = None) -> list[list]:
    """The newest pairs, newest first, texts shortened (the Dataframe shows them as plain text).

    An annotator gets their own pairs only, as they wrote them; admins (``viewer`` None included) get
    everyone's with the annotator's name after the checkpoints, de-identified but for their own.
    """
    everyone = sees_everyone(viewer)
    pairs = store.recent_pairs(limit) if everyone else store.recent_pairs(limit, annotator_id=viewer.id)
    names = {a.id: a.name for a in store.list_annotators()} if everyone else {}
    rows = []
    for pair in pairs:
        own = viewer is not None and pair.annotator_id == viewer.id
        show = _excerpt if own else (lambda text: _excerpt(deidentify(text)))
        prompt = next((m["content"] for m in reversed(pair.prompt) if m["role"] == "user"), "")
        who = [names.get(pair.annotator_id, str(pair.annotator_id))] if everyone else []
        rows.append(
            [
                pair.created.strftime("%Y-%m-%d %H:%M"),
                show(prompt),
                show(pair.chosen),
                show(pair.rejected),
                pair.chosen_checkpoint or "改写 clinician correction",
                pair.rejected_checkpoint,
                *who,
                serving_label(pair.chosen_serving),
                serving_label(pair.rejected_serving),
            ]
        )
    return rows


def describe_judgment(judgment: JudgmentOut, reveal: dict[str, str]) -> str:
    """A judgment in a few words, by checkpoint (the names are revealed once a comparison is judged)."""
    if judgment.kind == "ranking":
        return "排序 ranking: " + " > ".join(
            reveal[label] for label in sorted(judgment.ranking, key=judgment.ranking.get)
        )
    if judgment.kind == "correction":
        return "改写 better answer: " + _excerpt(judgment.correction or "")
    if judgment.choice in ("A", "B"):
        return f"{reveal[judgment.choice]} 更好 better"
    return {"tie": "平 tie", "both_bad": "都差 both bad"}.get(judgment.choice, str(judgment.choice))


def my_judgments_table(store: PreferenceStore, annotator: Annotator, limit: int) -> list[list]:
    """The annotator's own newest comparisons with what they made of each: judgments, 👍/👎 ratings, or
    nothing yet. Checkpoints are named only once the comparison is judged (as the Compare tab reveals them)."""
    rows = []
    for comparison in store.annotator_comparisons(annotator.id, limit):
        judgments = [j for j in store.judgments_for(comparison.id) if j.annotator_id == annotator.id]
        ratings = store.ratings(annotator_id=annotator.id, comparison_id=comparison.id)
        reveal = comparison.reveal if judgments else {}
        verdicts = [describe_judgment(j, reveal) for j in judgments]
        verdicts += [f"{THUMBS[r.up]} {reveal.get(r.label, '一个回答 an answer')}" for r in reversed(ratings)]
        prompt = next((m["content"] for m in reversed(comparison.messages) if m["role"] == "user"), "")
        rows.append(
            [
                comparison.created.strftime("%Y-%m-%d %H:%M"),
                _excerpt(prompt),
                "题库 bank" if comparison.bank_prompt_id else "自由提问 free question",
                "; ".join(verdicts) or "未评判 not judged yet",
            ]
        )
    return rows


def pair_columns(viewer: Annotator | None) -> list[str]:
    return PAIR_COLUMNS[:6] + [ANNOTATOR_COLUMN] + PAIR_COLUMNS[6:] if sees_everyone(viewer) else PAIR_COLUMNS


def data_view(cfg: Config, store: PreferenceStore, viewer: Annotator | None = None) -> list:
    """The counts and the newest pairs as ``viewer`` may see them (None: everything, as an admin)."""
    return [
        counts_markdown(store, viewer),
        gr.update(value=recent_pairs_table(store, cfg.app.recent_pairs, viewer), headers=pair_columns(viewer)),
    ]


def session_view(cfg: Config, store: PreferenceStore, session: ArenaSession) -> list:
    """What the tab shows to this browser session (counts, pairs, the annotator's own judgments):
    nothing before the annotator is known."""
    if session.annotator is None:
        return [
            "⚠ 请先登录 / log in first: the Data tab shows your own work",
            gr.update(value=[], headers=PAIR_COLUMNS),
            gr.update(value=[], headers=JUDGMENT_COLUMNS),
        ]
    mine = my_judgments_table(store, session.annotator, cfg.app.recent_pairs)
    return [*data_view(cfg, store, session.annotator), gr.update(value=mine, headers=JUDGMENT_COLUMNS)]


def _require_admin(session: ArenaSession, what: str) -> Annotator:
    if session.annotator is None or not session.annotator.is_admin:
        raise UserError(f"only admins can {what}: log in with an admin account ({ADMIN_HINT})")
    return session.annotator


def _download_copy(path: Path) -> str:
    """Gradio serves files from its temp folder only: hand it a copy, the export itself stays in place."""
    copy = Path(tempfile.mkdtemp(prefix="chimed-export-")) / path.name
    shutil.copyfile(path, copy)
    return str(copy)


def export_for_admin(cfg: Config, store: PreferenceStore, session: ArenaSession) -> tuple[str, str | None]:
    """Export the pairs and single-answer ratings not yet exported (admins only); returns the summary
    and a downloadable copy of the pairs file (None when there were no new pairs)."""
    message, pairs_copy, _ratings_copy = export_new(cfg, store, session)
    return message, pairs_copy


def export_new(
    cfg: Config, store: PreferenceStore, session: ArenaSession, address: str | None = None
) -> tuple[str, str | None, str | None]:
    """Export the new pairs (dpo.jsonl format) and the new single-answer ratings (unpaired format), as
    ``export-prefs`` does; the summary and downloadable copies of the two files (None: nothing new). Audited."""
    admin = _require_admin(session, "export")
    pairs = export_pairs(cfg, store=store)
    ratings = export_ratings(cfg, store=store)
    store.record_export_event(admin.name, pairs, ratings, address=address)
    if pairs.path is None and ratings.path is None:
        return "没有新的偏好对或单项评价可导出 / nothing new to export", None, None
    lines = [
        "✓ " + format_summary(pairs) if pairs.path else "没有新的偏好对 / no new pairs",
        "✓ " + format_ratings_summary(ratings) if ratings.path else "没有新的单项评价 / no new single-answer ratings",
    ]
    message = "  \n".join(line for text in lines for line in text.splitlines())
    return (
        message,
        _download_copy(pairs.path) if pairs.path else None,
        _download_copy(ratings.path) if ratings.path else None,
    )


def bank_summary_markdown(summary: BankImportSummary, path: str | Path | None = None) -> str:
    """ "imported n, duplicates d" and one line per malformed line ("FILE:LINE: reason"); an uploaded
    ``path`` is named by its file name (the upload folder means nothing to the admin)."""
    head = (
        f"{'✓' if not summary.errors else '⚠'} 题库 bank {html.escape(summary.bank)}: imported {summary.imported}, "
        f"duplicates {summary.duplicates}, errors {len(summary.errors)}"
    )
    errors = [e.replace(str(path), Path(path).name, 1) if path else e for e in summary.errors]
    return "  \n".join([head, *(f"- {html.escape(error, quote=False)}" for error in errors)])


def import_bank_for_admin(
    store: PreferenceStore, session: ArenaSession, path: str | None, bank: str | None = None, address: str | None = None
) -> str:
    """Import a bank file (.jsonl or .csv) uploaded in the tab (admins only); the summary as markdown. Audited."""
    admin = _require_admin(session, "import a prompt bank")
    if not path:
        raise UserError("choose a bank file first (.jsonl or .csv)")
    summary = store.import_bank(path, bank=(bank or "").strip() or None, imported_by=admin.id)
    store.record_event(
        "bank.imported",
        actor=admin.name,
        target=summary.bank,
        address=address,
        detail={
            "file": Path(path).name,
            "imported": summary.imported,
            "duplicates": summary.duplicates,
            "errors": len(summary.errors),
        },
    )
    return bank_summary_markdown(summary, path)


def start_round_for_admin(
    cfg: Config,
    store: PreferenceStore,
    session: ArenaSession,
    contestants: list[str] = (),
    split: str = "all",
    blind: bool = False,
    address: str | None = None,
) -> str:
    """Start the next queue round (admins only), as ``./launch.sh queue-round --contestants ... --split ...
    [--blind]`` does: ``contestants`` (2-4 of the available ones, or none: each annotator chooses) answer every
    queue prompt of ``split`` for everyone. Audited."""
    admin = _require_admin(session, "start a new queue round")
    return "✓ " + start_study_round(
        cfg, store, admin.id, admin.name, list(contestants or ()), split=split, blind=blind, address=address
    )


def close_round_for_admin(store: PreferenceStore, session: ArenaSession, address: str | None = None) -> str:
    """Close the open queue round (admins only), as ``./launch.sh queue-round --close`` does. Audited."""
    admin = _require_admin(session, "close a queue round")
    return "✓ " + close_study_round(store, admin.id, admin.name, address=address)


def round_markdown(store: PreferenceStore) -> str:
    """The current round as the admin defined it: its contestants, split, blindness and whether it is open."""
    current = store.queue_round_definition()
    if current.started is None:
        return (
            f"第 {current.number} 轮 queue round {current.number}: not defined (each annotator chooses the contestants)"
        )
    who = ", ".join(current.contestants) or "each annotator chooses"
    state = "open" if current.is_open else f"closed {current.closed:%Y-%m-%d %H:%M} UTC"
    return (
        f"第 {current.number} 轮 queue round {current.number} ({state}): contestants {html.escape(who)}; "
        f"split {current.split}{'; blind' if current.blind else ''}"
    )


AUDIT_COLUMNS = ["时间 time (UTC)", "操作者 actor", "操作 action", "对象 target", "地址 address", "详情 detail"]


def audit_rows(
    store: PreferenceStore,
    session: ArenaSession,
    action: str = "",
    actor: str = "",
    since: str = "",
    limit: int | None = 500,
) -> list[list]:
    """The audit log for admins, newest first: ``action`` a prefix ("login" finds login.failed too), ``actor``
    an account name or "cli:USER", ``since`` an ISO date or time (UTC)."""
    _require_admin(session, "read the audit log")
    start = None
    if since.strip():
        try:
            start = datetime.fromisoformat(since.strip())
        except ValueError:
            raise UserError(f"'since' must be an ISO date or time such as 2026-12-01, not {since!r}") from None
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
    events = store.audit_events(action=action.strip() or None, actor=actor.strip() or None, since=start, limit=limit)
    return [
        [
            e.time.strftime("%Y-%m-%d %H:%M:%S"),
            e.actor or "",
            e.action,
            e.target or "",
            e.address or "",
            json.dumps(e.detail, ensure_ascii=False) if e.detail else "",
        ]
        for e in events
    ]


def audit_csv(store: PreferenceStore, session: ArenaSession, action: str = "", actor: str = "", since: str = "") -> str:
    """Every audit event the filter selects, as a CSV file to download (admins only); the export is audited."""
    rows = audit_rows(store, session, action, actor, since, limit=None)
    path = Path(tempfile.mkdtemp(prefix="chimed-audit-")) / "audit_log.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([AUDIT_COLUMNS, *rows])
    store.record_event(
        "audit.exported",
        actor=session.annotator.name,
        detail={"rows": len(rows), "filter": {"action": action, "actor": actor, "since": since}},
    )
    return str(path)


def weak_passwords_markdown(store: PreferenceStore) -> str:
    """For admins: accounts whose password fails the policy, or has not been checked since the policy came."""
    accounts = [a for a in store.list_annotators() if a.can_login]
    weak = [html.escape(a.name) for a in accounts if a.password_weak]
    unchecked = [html.escape(a.name) for a in accounts if a.password_weak is None]
    lines = []
    if weak:
        lines.append(
            f"⚠ 弱密码 weak passwords (too short or common): {', '.join(weak)} — set new ones with "
            "`./launch.sh passwd NAME` or ask them to change theirs"
        )
    if unchecked:
        lines.append(
            f"未检查 not checked yet (set before the password policy; checked at their next login): "
            f"{', '.join(unchecked)}"
        )
    return "  \n".join(lines)


def build_data_tab(cfg: Config, store: PreferenceStore, session: gr.State, tab: gr.Tab) -> gr.Group:
    """Lay out the Data tab; returns the admin-only group (import and export, shown for admins at page load).

    Every view is computed for the session's annotator (see the module docstring)."""
    refresh = gr.Button("刷新 Refresh", elem_id="refresh-data")
    counts = gr.Markdown(elem_id="data-counts")
    gr.Markdown(f"#### 最新偏好对 Most recent pairs (up to {cfg.app.recent_pairs})")
    pairs = gr.Dataframe(headers=PAIR_COLUMNS, interactive=False, wrap=True, elem_id="recent-pairs")
    gr.Markdown(f"#### 我的评判 My judgments and ratings (newest {cfg.app.recent_pairs} comparisons)")
    judgments = gr.Dataframe(headers=JUDGMENT_COLUMNS, interactive=False, wrap=True, elem_id="my-judgments")
    with gr.Group(visible=False) as admin:
        gr.Markdown(
            "#### 导入题库 Import a prompt bank (admins): .jsonl or .csv — `prompt` (or `text`), optional "
            "`history`, `tags`, `split` (train | heldout); the same as `./launch.sh import-bank`"
        )
        with gr.Row():
            bank_file = gr.File(
                label="题库文件 bank file", file_types=[".jsonl", ".csv"], type="filepath", elem_id="bank-file"
            )
            bank_name = gr.Textbox(label="题库名 bank name (空 = 文件名 empty = the file's name)", elem_id="bank-name")
        import_bank = gr.Button("导入题库 Import bank", elem_id="import-bank")
        import_status = gr.Markdown(elem_id="import-status")
        gr.Markdown(
            "#### 新一轮 New queue round (admins): everyone gets the bank prompts of the split again, e.g. to "
            "judge a new run against its parent on the same prompts; with 2-4 contestants they answer every "
            "queue prompt for everyone (`./launch.sh queue-round --contestants ID,ID --split ... --blind`)"
        )
        with gr.Row():
            round_contestants = gr.Dropdown(
                label="参赛检查点 contestants (2-4; none: each annotator chooses)",
                choices=[],
                multiselect=True,
                elem_id="round-contestants",
            )
            round_split = gr.Radio(list(ROUND_SPLITS), value="all", label="题库划分 bank split", elem_id="round-split")
            round_blind = gr.Checkbox(label="盲评 blind for everyone", value=False, elem_id="round-blind")
        with gr.Row():
            new_round = gr.Button("开始新一轮 Start a new queue round", elem_id="queue-round")
            close_round = gr.Button("结束本轮 Close the round", elem_id="close-round")
        round_status = gr.Markdown(elem_id="round-status")
        gr.Markdown(
            "#### 导出 Export (admins): 与 `./launch.sh export-prefs` 相同 — de-identified pairs into "
            f"`{cfg.collected_pairs_dir}`, which the next `train-all` merges into ChiMed-DPO, and the "
            f"single-answer ratings (unpaired prompt / completion / label) into `{cfg.collected_ratings_dir}`"
        )
        export = gr.Button("导出偏好对与单项评价 Export pairs and ratings", elem_id="export")
        export_status = gr.Markdown(elem_id="export-status")
        export_file = gr.File(
            label="导出文件 exported files", interactive=False, file_count="multiple", elem_id="export-file"
        )
        gr.Markdown(
            "#### 审计日志 Audit log (admins): logins, logouts, account changes, exports, bank imports, "
            "queue rounds, API tokens — rows are only ever added"
        )
        weak = gr.Markdown(elem_id="weak-passwords")
        with gr.Row():
            audit_action = gr.Textbox(label="操作 action (e.g. login, export)", elem_id="audit-action")
            audit_actor = gr.Textbox(label="操作者 actor", elem_id="audit-actor")
            audit_since = gr.Textbox(label="起始 since (UTC, e.g. 2026-12-01)", elem_id="audit-since")
        with gr.Row():
            audit_show = gr.Button("查看 Show", elem_id="audit-show")
            audit_export = gr.Button("导出 CSV Export CSV", elem_id="audit-export")
        audit_status = gr.Markdown(elem_id="audit-status")
        audit_table = gr.Dataframe(headers=AUDIT_COLUMNS, interactive=False, wrap=True, elem_id="audit-log")
        audit_file = gr.File(label="审计日志 audit log CSV", interactive=False, elem_id="audit-file")

    outputs = [counts, pairs, judgments]

    def view(state: ArenaSession):
        return session_view(cfg, store, state)

    def run_export(state: ArenaSession, request: gr.Request):
        admin_only(state.annotator, "/run_export", "export")
        try:
            message, *files = export_new(cfg, store, state, request_address(request, cfg))
        except UserError as err:
            return f"⚠ {html.escape(str(err), quote=False)}", None, *view(state)
        return message, [f for f in files if f] or None, *view(state)

    def run_import(state: ArenaSession, path: str | None, bank: str, request: gr.Request):
        admin_only(state.annotator, "/run_import", "import a prompt bank")
        try:
            message = import_bank_for_admin(store, state, path, bank, request_address(request, cfg))
        except UserError as err:
            return f"⚠ {html.escape(str(err), quote=False)}", *view(state)
        return message, *view(state)

    def run_new_round(state: ArenaSession, contestants: list[str] | None, split: str, blind: bool, request: gr.Request):
        admin_only(state.annotator, "/run_new_round", "start a new queue round")
        try:
            message = start_round_for_admin(
                cfg, store, state, contestants or [], split, bool(blind), request_address(request, cfg)
            )
        except UserError as err:
            message = f"⚠ {html.escape(str(err), quote=False)}"
        return f"{message}  \n{round_markdown(store)}", *view(state)

    def run_close_round(state: ArenaSession, request: gr.Request):
        admin_only(state.annotator, "/run_close_round", "close a queue round")
        try:
            message = close_round_for_admin(store, state, request_address(request, cfg))
        except UserError as err:
            message = f"⚠ {html.escape(str(err), quote=False)}"
        return f"{message}  \n{round_markdown(store)}", *view(state)

    def round_choices(state: ArenaSession, current: list[str] | None):
        """The available contestants for the round picker (admins only: nobody else sees the picker)."""
        if state.annotator is None or not state.annotator.is_admin:
            return gr.update(), ""
        choices = [(c.label, c.checkpoint_id) for c in available_contestants(cfg)]
        keep = [c for c in current or [] if c in {cid for _, cid in choices}]
        return gr.update(choices=choices, value=keep), round_markdown(store)

    def show_audit(state: ArenaSession, action: str, actor: str, since: str):
        admin_only(state.annotator, "/show_audit", "read the audit log")
        try:
            rows = audit_rows(store, state, action, actor, since)
        except UserError as err:
            return f"⚠ {html.escape(str(err), quote=False)}", gr.update(), ""
        return (
            f"{len(rows)} events (newest first, at most 500 shown; the CSV has all)",
            rows,
            weak_passwords_markdown(store),
        )

    def export_audit(state: ArenaSession, action: str, actor: str, since: str):
        admin_only(state.annotator, "/export_audit", "read the audit log")
        try:
            return "✓ exported", audit_csv(store, state, action, actor, since)
        except UserError as err:
            return f"⚠ {html.escape(str(err), quote=False)}", None

    audit_inputs = [session, audit_action, audit_actor, audit_since]
    audit_show.click(show_audit, audit_inputs, [audit_status, audit_table, weak])
    audit_export.click(export_audit, audit_inputs, [audit_status, audit_file])
    refresh.click(view, [session], outputs)
    tab.select(view, [session], outputs)
    new_round.click(run_new_round, [session, round_contestants, round_split, round_blind], [round_status, *outputs])
    close_round.click(run_close_round, [session], [round_status, *outputs])
    tab.select(round_choices, [session, round_contestants], [round_contestants, round_status])
    export.click(run_export, [session], [export_status, export_file, *outputs])
    import_bank.click(run_import, [session, bank_file, bank_name], [import_status, *outputs])
    return admin
