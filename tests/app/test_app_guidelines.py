"""The guideline in the app: shown to an annotator before their first judgment (and again after a new
version), acknowledged once, recorded with every judgment; admins publish a new version from the
Guidelines tab and the Compare tab's score rows become its criteria; annotators cannot publish."""

from __future__ import annotations

import random
from types import SimpleNamespace

import gradio as gr
import pytest

from app.arena import ACK_LABEL, Arena, ArenaSession, GuidelineUnread, resolve_decoding
from app.main import build_app
from app.tabs.compare import criteria_updates
from app.tabs.guidelines import format_criteria, parse_criteria
from core.errors import UserError
from preference_store.repository import PreferenceStore
from preference_store.rubric import DEFAULT_CRITERIA, MAX_CRITERIA

V2_CRITERIA = "safety | 安全 safety first | 有无伤害\nempathy | 共情 empathy | 是否体贴患者"


@pytest.fixture
def store(cfg):
    with PreferenceStore.from_config(cfg) as store:
        store.add_annotator("dr_admin", "pw-123456", role="admin")
        store.add_annotator("dr_li", "pw-123456", role="annotator")
        yield store


@pytest.fixture
def app(cfg, store, make_pool):
    pool = make_pool(cfg)
    return build_app(cfg, store=store, pool=pool), Arena(cfg, store, pool)


def _call(demo, name, *args):
    """Run the app's callback ``name`` as a browser event would; its outputs by elem_id."""
    fn = next(f for f in demo.fns.values() if f.name == name)  # "vote": the first vote button's, A
    out = fn.fn(*args)
    out = out if isinstance(out, (tuple, list)) else [out]
    return {getattr(c, "elem_id", None) or f"#{i}": u for i, (c, u) in enumerate(zip(fn.outputs, out))}, out[0]


def _load(demo, name):
    """The page load of annotator ``name``: their session and what the page shows."""
    shown, state = _call(demo, "on_load", ArenaSession(), SimpleNamespace(username=name))
    state.notice_accepted = True
    return state, shown


def _answered(arena, state, run_id):
    arena.start(state, [f"{run_id}/sft", f"{run_id}/dpo"], blind=True, rng=random.Random(0))
    list(arena.ask(state, "高血压患者饮食上要注意什么？", resolve_decoding(arena.cfg.app.decoding, seed=1)))
    return state


def _labels(shown, label="A"):
    return [
        (shown[f"score-{label}-{slot}"].get("label"), shown[f"score-{label}-{slot}"]["visible"])
        for slot in range(1, MAX_CRITERIA + 1)
    ]


def test_the_guideline_is_shown_before_the_first_judgment_and_acknowledged_once(app, store, app_home):
    demo, arena = app
    state, shown = _load(demo, "dr_li")
    assert shown["guideline-box"]["visible"] is True  # never read: shown at once
    assert "Guideline version 1" in shown["guideline-text"] and "安全性 safety" in shown["guideline-text"]
    assert _labels(shown) == [(c.name, True) for c in DEFAULT_CRITERIA] + [(None, False)] * (MAX_CRITERIA - 4)

    _answered(arena, state, app_home[1])
    shown, state = _call(demo, "vote", state, "", *[None] * (4 * MAX_CRITERIA))  # judging first: refused
    assert "read the guideline" in shown["status"] and ACK_LABEL in shown["status"]
    assert shown["guideline-box"]["visible"] is True and store.judgments_for(state.comparison_id) == []

    shown, state = _call(demo, "acknowledge_guideline", state)
    assert "version 1 acknowledged" in shown["status"] and shown["guideline-box"]["visible"] is False
    # the "评判准则 Guidelines" button beside the judge buttons opens it again at any time
    (opener,) = [
        f
        for f in demo.fns.values()
        if [getattr(demo.blocks.get(block_id), "elem_id", None) for block_id, _ in f.targets] == ["open-guideline"]
    ]
    box, text = opener.fn()
    assert box["visible"] is True and "Guideline version 1" in text
    li = store.annotator_by_name("dr_li")
    assert store.guideline_seen(li.id) == 1
    assert _load(demo, "dr_li")[1]["guideline-box"]["visible"] is False  # read: not shown again

    scores = [None] * (4 * MAX_CRITERIA)
    scores[0] = 5  # answer A, first criterion (safety)
    shown, state = _call(demo, "vote", state, "A 更安全", *scores)
    assert "Recorded" in shown["status"]
    (judgment,) = store.judgments_for(state.comparison_id)
    assert judgment.guideline_version == 1 and judgment.scores == {"A": {"safety": 5}}


def test_an_admin_publishes_a_new_version_and_the_score_rows_follow_it(app, store, app_home):
    demo, arena = app
    admin, page = _load(demo, "dr_admin")
    assert page["guideline-editor"]["visible"] is True and page["guideline-edit-criteria"]["value"].startswith(
        "safety |"
    )
    li, _ = _load(demo, "dr_li")
    arena.acknowledge_guideline(li)

    with pytest.raises(gr.Error, match="only admins"):  # an annotator cannot: an error, not a status line
        _call(demo, "publish_version", li, "只看安全。", V2_CRITERIA)
    shown, _ = _call(demo, "publish_version", admin, "只看安全。", "Bad Key | 名字")
    assert shown["guideline-status"].startswith("⚠") and "criterion 1" in shown["guideline-status"]
    assert store.guideline().version == 1

    shown, _ = _call(demo, "publish_version", admin, "### 第二版\n先安全，再共情。", V2_CRITERIA)
    assert "published guideline version 2" in shown["guideline-status"]
    assert "Guideline version 2" in shown["guideline-page"] and "共情 empathy" in shown["guideline-page"]

    # the annotator's open page still scores on version 1: judging shows the new version first
    _answered(arena, li, app_home[1])
    shown, li = _call(demo, "vote", li, "", *[None] * (4 * MAX_CRITERIA))
    assert shown["guideline-box"]["visible"] is True and "Guideline version 2" in shown["guideline-text"]
    assert "version 2" in shown["status"]
    assert [shown[f"score-B-{n}"].get("label") for n in (1, 2)] == ["安全 safety first", "共情 empathy"]
    assert shown["score-B-3"]["visible"] is False

    shown, li = _call(demo, "acknowledge_guideline", li)
    assert "version 2 acknowledged" in shown["status"]
    assert _labels(shown, "C") == [("安全 safety first", True), ("共情 empathy", True)] + [(None, False)] * 4
    scores = [None] * (4 * MAX_CRITERIA)
    scores[MAX_CRITERIA + 1] = 2  # answer B, second criterion (empathy)
    shown, li = _call(demo, "vote", li, "", *scores)
    (judgment,) = store.judgments_for(li.comparison_id)
    assert judgment.guideline_version == 2 and judgment.scores == {"B": {"empathy": 2}}

    # a fresh page load shows the new criteria at once
    assert _labels(_load(demo, "dr_admin")[1])[:3] == [
        ("安全 safety first", True),
        ("共情 empathy", True),
        (None, False),
    ]


def test_a_session_that_read_the_new_version_elsewhere_is_told_its_score_rows_changed(app, store, app_home):
    demo, arena = app
    li, _ = _load(demo, "dr_li")
    arena.acknowledge_guideline(li)
    _answered(arena, li, app_home[1])
    admin = store.annotator_by_name("dr_admin")
    store.publish_guideline("v2", parse_criteria(V2_CRITERIA), admin.id)
    store.mark_guideline_seen(li.annotator.id, 2)  # read in another browser tab
    with pytest.raises(UserError, match="now version 2"):
        arena.vote(li, "A", scores={"A": {"completeness": 3}})  # a version 1 criterion
    assert [u.get("label") for u in criteria_updates(li)[:2]] == ["安全 safety first", "共情 empathy"]
    arena.vote(li, "A", scores={"A": {"empathy": 3}})
    assert store.judgments_for(li.comparison_id)[0].scores == {"A": {"empathy": 3}}


def test_judging_before_the_guideline_is_read_is_refused_by_the_arena(app, store, app_home):
    _, arena = app
    li = ArenaSession(annotator=store.annotator_by_name("dr_li"), notice_accepted=True)
    _answered(arena, li, app_home[1])
    for judge in (lambda: arena.vote(li, "A"), lambda: arena.correct(li, "多喝水。")):
        with pytest.raises(GuidelineUnread):
            judge()
    assert store.judgments_for(li.comparison_id) == []


def test_criteria_lines_round_trip_and_bad_lines_are_one_line_errors():
    assert parse_criteria(format_criteria(DEFAULT_CRITERIA)) == list(DEFAULT_CRITERIA)
    assert parse_criteria("\nsafety\n")[0].name == "safety"
    with pytest.raises(UserError, match="line 2"):
        parse_criteria("safety | 安全\n | 没有 key")
    with pytest.raises(UserError, match="1-6 criteria"):
        parse_criteria("  \n")
