"""What the Compare tab shows for a session: the panels, the score rows, the identifier box, the queue line.

Pure translations from an :class:`app.arena.ArenaSession` to component updates, shared by the tab's parts
(:mod:`app.tabs.compare.asking`, :mod:`app.tabs.compare.judging`) and by app.main's page load.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from app.arena import QUEUE_EMPTY, Arena, ArenaSession
from app.contestants import available_contestants, completed_runs, default_checkpoints
from app.tabs.guidelines import guideline_markdown
from core.errors import UserError
from preference_store.records import PANEL_LABELS
from preference_store.rubric import DEFAULT_CRITERIA, MAX_CRITERIA

THUMBS = {True: "👍", False: "👎"}
EDIT_AGAIN = "已放回输入框 / back in its box: edit it (remove the identifiers) and send again"
NOTHING_HELD = "没有待发送的内容 / nothing is waiting to be sent"


@dataclass
class PanelWidgets:
    column: gr.Column
    header: gr.Markdown
    chat: gr.Chatbot
    place: gr.Dropdown
    scores: list[gr.Radio]  # MAX_CRITERIA slots: the guideline's criteria in priority order, the rest hidden
    rating: gr.Row  # 👍/👎 on this answer alone (queue prompts)


@dataclass
class CompareTab:
    """The components :mod:`app.main` fills at page load: ``run``, ``contestants`` and ``status``, then
    ``load_outputs`` with what ``load(session)`` returns (the queue progress, the guideline when it is
    unread, the score rows' criteria)."""

    run: gr.Dropdown
    contestants: gr.CheckboxGroup
    status: gr.Markdown
    load: object = None  # (ArenaSession) -> list of updates for load_outputs
    load_outputs: list = None


def status_line(message: str, ok: bool = True) -> str:
    return message if ok else f"⚠ {html.escape(message, quote=False)}"


def contestant_choices(cfg) -> list[tuple[str, str]]:
    return [(c.label, c.checkpoint_id) for c in available_contestants(cfg)]


def runs_and_contestants(cfg, selected: list[str] | None):
    """Re-read the runs: the run list, every checkpoint as a choice, and the selection (kept where it
    still exists, else the newest run's stages)."""
    runs = [r.run_id for r in completed_runs(cfg)]
    choices = contestant_choices(cfg)
    known = {cid for _, cid in choices}
    keep = [cid for cid in (selected or []) if cid in known] or default_checkpoints(cfg)
    message = (
        ""
        if runs
        else status_line("还没有训练好的运行 / no completed run yet: train one with ./launch.sh train-all", ok=False)
    )
    run = gr.update(choices=runs) if selected else gr.update(choices=runs, value=runs[0] if runs else None)
    return run, gr.update(choices=choices, value=keep), message


def criteria_updates(session: ArenaSession, reset: bool = False) -> list:
    """The score radios of every panel, panel by panel: the session's criteria (its guideline's) in the
    first slots with their names as labels, the other slots hidden; ``reset`` empties them."""
    criteria = session.criteria or DEFAULT_CRITERIA
    updates = []
    for _ in PANEL_LABELS:
        for slot in range(MAX_CRITERIA):
            shown = {"value": None} if reset else {}
            if slot < len(criteria):
                updates.append(
                    gr.update(label=criteria[slot].name, info=criteria[slot].description or None, visible=True, **shown)
                )
            else:
                updates.append(gr.update(visible=False, **shown))
    return updates


def render(session: ArenaSession, reset_form: bool = True) -> list:
    """Component updates showing ``session``, in the order of the tab's ``view`` list: per panel its
    header, chat, visibility, ranking place and score radios, then the vote row, the ranking row and per
    panel its 👍/👎 row. ``reset_form`` empties the places and scores (a new answer set or a stored judgment)."""
    n = len(session.panels)
    headers, chats, columns, places, ratings = [], [], [], [], []
    for i, label in enumerate(PANEL_LABELS):
        present = i < n
        columns.append(gr.update(visible=present))
        headers.append(gr.update(value=f"### {html.escape(session.header(label))}" if present else ""))
        chats.append(gr.update(value=list(session.panels[i].display) if present else []))
        rankable = n > 2 and label in session.judgeable and not session.voted
        choices = list(range(1, len(session.judgeable) + 1)) if rankable else []
        places.append(
            gr.update(choices=choices, value=None, visible=rankable)
            if reset_form
            else gr.update(choices=choices, visible=rankable)
        )
        ratings.append(
            gr.update(
                visible=session.assignment_id is not None
                and session.comparison_id is not None
                and session.resolved is None
                and label in session.judgeable
            )
        )
    judged_pairwise = len(session.judgeable) == 2 or (n == 2 and not session.judgeable)
    judging = session.resolved is None  # a prompt the queue resolved without the clinician is not judged
    return [
        *headers,
        *chats,
        *columns,
        *places,
        *criteria_updates(session, reset=reset_form),
        gr.update(visible=judging and judged_pairwise),
        gr.update(visible=judging and n > 2 and len(session.judgeable) != 2),
        *ratings,
    ]


def held_view(session: ArenaSession) -> list:
    """The identifier box (``#deid-box``, ``#deid-summary``, ``#deid-preview``): shown with what was found and
    the redacted text while an entry is held back, hidden otherwise."""
    held = session.held
    if held is None:
        return [gr.update(visible=False), "", ""]
    summary = (
        f"⚠ {html.escape(held.check.summary(), quote=False)} — 尚未发送 not sent yet: 脱敏后发送 redact "
        "and send (only the text below is sent and stored), or 修改 edit"
    )
    return [gr.update(visible=True), summary, held.check.preview()]


def scores_from(session: ArenaSession, values: list) -> dict[str, dict]:
    """The score radios (``MAX_CRITERIA`` per panel, flattened panel by panel) as {label: {criterion: value}}."""
    keys = [c.key for c in (session.criteria or DEFAULT_CRITERIA)]
    return {
        label: dict(zip(keys, values[i * MAX_CRITERIA : (i + 1) * MAX_CRITERIA]))
        for i, label in enumerate(PANEL_LABELS)
    }


def progress_markdown(arena: Arena, session: ArenaSession) -> str:
    """ "我的队列 My queue: 12 / 40" (and whether the panels hold a queue prompt)."""
    try:
        progress = arena.queue_progress(session)
    except UserError as err:
        return status_line(str(err), ok=False)
    if progress is None:
        return ""
    line = f"我的队列 My queue: **{progress}** 已完成 done"
    if progress.total == 0:
        line += " · 题库为空 no bank prompts yet (admins import them in the Data tab)"
    elif progress.done >= progress.total:
        line += f" · {QUEUE_EMPTY}"
    if session.assignment_id is not None:
        line += " · 当前为队列题 the panels hold a queue prompt"
    if arena.round_contestants():
        line += " · 本轮参赛模型由管理员设定 this round's contestants are set by the admin"
    return line


def guideline_shown(arena: Arena, visible: bool = True) -> list:
    """The guideline box (with the version in force) shown, or hidden."""
    if not visible:
        return [gr.update(visible=False), gr.update()]
    return [gr.update(visible=True), guideline_markdown(arena.store.guideline())]


def is_admin(state: ArenaSession) -> bool:
    return state.annotator is not None and state.annotator.is_admin
