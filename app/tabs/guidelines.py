"""The Guidelines tab: the annotation guideline (rubric) in force, its version and its 1-5 criteria; admins
edit the text and the criteria and publish a new version.

The guideline lives in the store (``store.guideline()``, versioned); the Compare tab shows the same text
beside the judge buttons, asks every annotator to acknowledge a version before judging under it, and its
score rows are this version's criteria. Each judgment records the version it was made under.

Criteria are edited one per line, in priority order::

    safety | 安全性 safety | 不给出可能造成伤害的建议 ...
    correctness | 专业性/正确性 correctness
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from app.arena import ArenaSession
from app.refusals import admin_only
from core.errors import UserError
from preference_store.records import Criterion, Guideline
from preference_store.repository import PreferenceStore
from preference_store.rubric import MAX_CRITERIA

CRITERIA_HELP = (
    f"每行一个标准，按优先级排列 / one criterion per line, in priority order (1-{MAX_CRITERIA}): "
    "`key | 名称 name | 说明 description` (key: lower-case letters, digits, _)"
)


@dataclass
class GuidelinesTab:
    """What :mod:`app.main` fills at page load: ``load(session)`` returns updates for ``load_outputs``."""

    load: object
    load_outputs: list


def guideline_markdown(guideline: Guideline) -> str:
    """The guideline as the Guidelines tab and the Compare tab show it: version, text, criteria."""
    rows = "\n".join(
        f"| {i} | {html.escape(c.name)} | `{c.key}` | {html.escape(c.description)} |"
        for i, c in enumerate(guideline.criteria, 1)
    )
    when = guideline.created.strftime("%Y-%m-%d %H:%M UTC") if guideline.created else ""
    return (
        f"**评判准则 第 {guideline.version} 版 · Guideline version {guideline.version}** ({when})\n\n"
        f"{guideline.text}\n\n"
        f"#### 1-5 评分标准 Criteria (按优先级 in priority order; 5 = 最好 best)\n\n"
        f"| # | 标准 criterion | key | 说明 description |\n|---|---|---|---|\n{rows}"
    )


def format_criteria(criteria) -> str:
    """Criteria as the editor shows them, one ``key | name | description`` per line."""
    return "\n".join(f"{c.key} | {c.name} | {c.description}".rstrip(" |") for c in criteria)


def parse_criteria(text: str) -> list[Criterion]:
    """The editor's lines as criteria (the store checks keys, names and their number)."""
    criteria = []
    for n, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        parts = [part.strip() for part in line.split("|", 2)]
        key = parts[0]
        if not key:
            raise UserError(f"criteria line {n}: start it with a key, e.g. `safety | 安全性 safety | ...`")
        name = parts[1] if len(parts) > 1 and parts[1] else key
        criteria.append(Criterion(key=key, name=name, description=parts[2] if len(parts) > 2 else ""))
    if not criteria:
        raise UserError(f"the guideline needs 1-{MAX_CRITERIA} criteria: {CRITERIA_HELP}")
    return criteria


def publish_for_admin(store: PreferenceStore, session: ArenaSession, text: str, criteria_text: str) -> Guideline:
    """Publish a new version from the editor (admins only; the store checks that too)."""
    if session.annotator is None:
        raise UserError("no annotator for this session: reload the page (and log in)")
    if not session.annotator.is_admin:
        raise UserError("only admins can change the guideline")
    return store.publish_guideline(text, parse_criteria(criteria_text), session.annotator.id)


def build_guidelines_tab(store: PreferenceStore, session: gr.State, tab: gr.Tab) -> GuidelinesTab:
    """Lay out the tab inside ``tab`` (re-read whenever it is opened) and wire the admin editor."""
    page = gr.Markdown("", elem_id="guideline-page")
    with gr.Column(visible=False, elem_id="guideline-editor") as editor:
        gr.Markdown("#### 发布新版本 Publish a new version (管理员 admins)")
        text = gr.Textbox(label="准则正文 Guideline text (Markdown)", lines=12, elem_id="guideline-edit-text")
        criteria = gr.Textbox(label="评分标准 Criteria", info=CRITERIA_HELP, lines=6, elem_id="guideline-edit-criteria")
        publish = gr.Button("发布新版本 Publish new version", variant="primary", elem_id="guideline-publish")
    status = gr.Markdown("", elem_id="guideline-status")

    def show(state: ArenaSession) -> list:
        guideline = store.guideline()
        is_admin = state.annotator is not None and state.annotator.is_admin
        return [
            guideline_markdown(guideline),
            gr.update(visible=is_admin),
            gr.update(value=guideline.text) if is_admin else gr.update(),
            gr.update(value=format_criteria(guideline.criteria)) if is_admin else gr.update(),
        ]

    def publish_version(state: ArenaSession, new_text: str, new_criteria: str):
        admin_only(state.annotator, "/publish_version", "change the guideline")
        try:
            guideline = publish_for_admin(store, state, new_text, new_criteria)
        except UserError as err:
            return gr.update(), f"⚠ {html.escape(str(err), quote=False)}"
        return (
            guideline_markdown(guideline),
            f"✓ 已发布第 {guideline.version} 版 / published guideline version {guideline.version}: annotators "
            "acknowledge it before their next judgment",
        )

    outputs = [page, editor, text, criteria]
    tab.select(show, [session], outputs)
    publish.click(publish_version, [session, text, criteria], [page, status])
    return GuidelinesTab(load=show, load_outputs=outputs)
