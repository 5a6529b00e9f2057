"""Issue 19, at entry: identifiers a clinician types are flagged before any model sees them, sent only
redacted ("redact and send") or given back to edit, the API answers the same, and with
``store.redact_on_entry`` the store never keeps a raw identifier, whoever writes to it."""

from __future__ import annotations

import random
import sqlite3

import gradio as gr
import pytest

from app.arena import Arena, ArenaSession, resolve_decoding
from app.identifiers import IdentifiersFound, screen_entry
from app.main import build_app
from core.config import load_config
from preference_store.records import ComparisonIn, JudgmentIn, RatingIn, ResponseIn
from preference_store.repository import PreferenceStore

# obviously fake identifiers, written the way a clinician pastes a case
NAME, PHONE, STREET = "李明", "13812345678", "张江路88号"
CASE = f"我叫{NAME}，电话{PHONE}，住在上海市浦东新区{STREET}，头痛三天了，需要做什么检查？"
CORRECTION = "建议先到神经内科就诊，必要时做头颅CT；可拨打 13987654321 预约复诊。"
REASON = "联系人王秀英，电话13700001111，她说B更准确"
SECRETS = (NAME, PHONE, STREET, "13987654321", "王秀英", "13700001111")


def _raw_in(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def _db_dump(url: str) -> str:
    """Every row of every table, as SQL text (the WAL is checkpointed into it by connecting)."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return "\n".join(db.iterdump())


# --- the check itself ----------------------------------------------------------------------------


def test_a_pasted_case_is_screened_with_its_categories_named_and_a_redacted_preview():
    check = screen_entry(prompt=CASE, reason="")
    assert check.found and set(check.typed) == {"prompt"}
    assert {"name", "phone", "address"} <= set(check.counts)
    summary = check.summary()
    assert summary.startswith("检测到 found: ") and "姓名 name ×1" in summary and "phone" in summary
    assert _raw_in(check.preview()) == [] and "头痛三天了" in check.preview()
    assert not screen_entry(prompt="高血压患者饮食上要注意什么？").found


# --- the store with store.redact_on_entry ----------------------------------------------------------


@pytest.fixture
def redacting_store(chimed_home):
    cfg = load_config("tiny", ["store.redact_on_entry=true"])
    with PreferenceStore.from_config(cfg) as store:
        store.register_checkpoints("r1", ["sft", "dpo"])
        yield store, cfg


def test_with_redact_on_entry_the_store_keeps_no_raw_identifier_whoever_writes(redacting_store, tmp_path):
    store, cfg = redacting_store
    me = store.demo_annotator()
    comparison = store.record_comparison(
        ComparisonIn(
            me.id,
            [{"role": "user", "content": CASE}],
            [ResponseIn("r1/sft", f"{NAME}您好，请拨打{PHONE}。"), ResponseIn("r1/dpo", "建议就医。")],
        )
    )
    judged = store.submit_judgment(JudgmentIn(comparison.id, me.id, correction=CORRECTION, reason=REASON))
    store.submit_judgment(JudgmentIn(comparison.id, me.id, choice="B", reason=REASON, revise=True))  # kept too
    rated = store.submit_rating(
        RatingIn(comparison.id, me.id, label="A", up=False, correction=CORRECTION, reason=REASON)
    )
    bank = tmp_path / "bank.jsonl"
    bank.write_text(f'{{"prompt": "{CASE}"}}\n', encoding="utf-8")
    store.import_bank(bank)

    stored = store.get_comparison(comparison.id)
    assert _raw_in(stored.messages[0]["content"]) == [] and "头痛三天了" in stored.messages[0]["content"]
    assert "[PHONE]" in stored.responses[0].text
    (correction, vote) = store.judgments_for(comparison.id)
    assert correction.id == judged.id and "[PHONE]" in correction.correction and "神经内科" in correction.correction
    assert "[NAME]" in vote.reason and "B更准确" in vote.reason
    (rating,) = store.ratings()
    assert rating.id == rated.id and "[PHONE]" in rating.correction and "[PHONE]" in rating.reason
    assert _raw_in(store.bank_prompts()[0].prompt) == []
    store.close()
    assert _raw_in(_db_dump(cfg.database_url)) == []  # no table, no column, holds one


def test_without_redact_on_entry_the_store_keeps_what_it_is_given(pref_store):
    me = pref_store.demo_annotator()
    comparison = pref_store.record_comparison(
        ComparisonIn(me.id, [{"role": "user", "content": CASE}], [ResponseIn("r1/sft", "a"), ResponseIn("r1/dpo", "b")])
    )
    assert pref_store.get_comparison(comparison.id).messages[0]["content"] == CASE


# --- the Compare tab and the API, on the tiny run ----------------------------------------------------


@pytest.fixture
def app(cfg, store, make_pool, monkeypatch):
    """The app's Blocks and what its models were asked (every conversation a panel was sent)."""
    pool = make_pool(cfg)
    seen: list[list[dict]] = []
    real = pool.generate

    def generate(requests, decoding, endpoints=None):
        seen.extend(r.messages for r in requests)
        return real(requests, decoding, endpoints)

    monkeypatch.setattr(pool, "generate", generate)
    return build_app(cfg, store=store, pool=pool), Arena(cfg, store, pool), seen


@pytest.fixture
def state(store, app, app_home):
    _, arena, _ = app
    demo = store.demo_annotator()
    store.mark_guideline_seen(demo.id, store.guideline().version)
    session = ArenaSession(annotator=demo, notice_accepted=True)
    run_id = app_home[1]
    arena.start(session, [f"{run_id}/sft", f"{run_id}/dpo"], blind=True, rng=random.Random(0))
    return session


SETTINGS = (0.7, 0.9, 8, 3)  # temperature, top-p, max new tokens, seed


def _ui(demo, name, *args) -> dict:
    """Run the Compare tab's callback ``name`` as the browser does, to its last step; outputs by elem_id."""
    fn = next(f for f in demo.fns.values() if f.name == name)
    out = fn.fn(*args)
    if not isinstance(out, (tuple, dict)):
        *_, out = out  # a generator: the page after its last step
    if isinstance(out, dict):
        return {getattr(c, "elem_id", None): v for c, v in out.items()}
    return {getattr(c, "elem_id", None): v for c, v in zip(fn.outputs, out)}


def test_a_pasted_case_is_flagged_before_any_model_sees_it_then_sent_redacted(app, store, state):
    demo, _, seen = app
    shown = _ui(demo, "ask", state, CASE, *SETTINGS)
    assert shown["deid-box"]["visible"] is True
    assert "姓名 name ×1" in shown["deid-summary"] and "phone" in shown["deid-summary"]
    assert "address" in shown["deid-summary"] and "nothing was sent" in shown["status"]
    assert _raw_in(shown["deid-preview"]) == [] and "头痛三天了" in shown["deid-preview"]
    assert shown["prompt"] == ""  # the text is held, not left in the box
    assert seen == [] and store.counts().comparisons == 0  # nothing generated, nothing stored
    assert all(p.display == [] for p in state.panels)

    shown = _ui(demo, "send_redacted", state)
    assert "answers complete" in shown["status"] and "redacted before sending" in shown["status"]
    assert shown["deid-box"]["visible"] is False and state.held is None
    assert seen and all(_raw_in(str(messages)) == [] for messages in seen)  # the models saw the redacted text
    stored = store.get_comparison(state.comparison_id)
    assert _raw_in(str(stored.messages)) == [] and "[PHONE]" in stored.messages[0]["content"]
    assert _raw_in(str([p.display for p in state.panels])) == []


def test_edit_puts_the_text_back_in_its_box_and_sends_nothing(app, store, state):
    demo, _, seen = app
    _ui(demo, "ask", state, CASE, *SETTINGS)
    shown = _ui(demo, "edit_held", state)
    assert shown["prompt"] == CASE and shown["deid-box"]["visible"] is False and "edit" in shown["status"]
    assert state.held is None and seen == [] and store.counts().comparisons == 0
    assert "nothing is waiting" in _ui(demo, "send_redacted", state)["status"]  # nothing held any more
    assert seen == []


def test_a_better_answer_and_a_reason_are_flagged_too(app, store, state):
    demo, arena, _ = app
    list(arena.ask(state, "头痛三天了，需要做什么检查？", resolve_decoding(arena.cfg.app.decoding, max_new_tokens=8)))
    scores = [None] * 24
    shown = _ui(demo, "submit_better", state, CORRECTION, REASON, *scores)
    assert shown["deid-box"]["visible"] is True and "phone" in shown["deid-summary"]
    assert shown["correction"] == "" and shown["reason"] == ""
    assert "改写的回答 better answer" in shown["deid-preview"] and _raw_in(shown["deid-preview"]) == []
    assert store.judgments_for(state.comparison_id) == []
    shown = _ui(demo, "send_redacted", state)
    assert "corrected answer" in shown["status"]
    (judgment,) = store.judgments_for(state.comparison_id)
    assert _raw_in(judgment.correction + judgment.reason) == [] and "神经内科" in judgment.correction

    # a reason given with a vote: edit puts it back, and the vote waits
    list(arena.ask(state, "那运动呢？", resolve_decoding(arena.cfg.app.decoding, max_new_tokens=8)))
    shown = _ui(demo, "vote", state, REASON, *scores)
    assert shown["reason"] == "" and shown["deid-box"]["visible"] is True
    assert _ui(demo, "edit_held", state)["reason"] == REASON
    assert store.judgments_for(state.comparison_id) == []


def test_the_arena_refuses_identifiers_unless_asked_to_redact(app, store, state):
    _, arena, seen = app
    decoding = resolve_decoding(arena.cfg.app.decoding, max_new_tokens=8)
    with pytest.raises(IdentifiersFound, match="姓名 name"):
        list(arena.ask(state, CASE, decoding))
    assert seen == [] and state.last_prompt is None
    list(arena.ask(state, CASE, decoding, redact=True))
    assert state.redacted["phone"] == 1 and _raw_in(state.last_prompt) == []
    list(arena.regenerate(state, decoding))  # asks the redacted prompt again, without asking to confirm
    assert all(_raw_in(str(messages)) == [] for messages in seen)


def _api(demo, name):
    (fn,) = [f.fn for f in demo.fns.values() if f.api_name == name]
    return fn


def test_the_api_refuses_identifiers_in_one_line_unless_redact_is_passed(app, store, app_home):
    demo, _, seen = app
    run_id = app_home[1]
    store.mark_guideline_seen(store.demo_annotator().id, store.guideline().version)
    compare, judge, rate = _api(demo, "compare"), _api(demo, "judge"), _api(demo, "rate")
    pair = [f"{run_id}/sft", f"{run_id}/dpo"]

    with pytest.raises(gr.Error) as refused:
        compare(CASE, pair, True, max_new_tokens=8)
    message = refused.value.message
    assert "\n" not in message and "姓名 name" in message and "redact=True" in message
    assert seen == [] and store.counts().comparisons == 0

    made = compare(CASE, pair, True, max_new_tokens=8, redact=True)
    assert {"name", "phone", "address"} <= set(made["identifiers"]) and _raw_in(made["prompt"]) == []
    assert _raw_in(str(store.get_comparison(made["comparison_id"]).messages)) == []
    assert compare("头痛怎么办？", pair, True, max_new_tokens=8)["identifiers"] == {}

    cid = made["comparison_id"]
    with pytest.raises(gr.Error, match="phone"):
        judge(cid, None, None, CORRECTION)
    with pytest.raises(gr.Error, match="姓名 name"):
        rate(cid, "A", False, None, REASON)
    assert store.judgments_for(cid) == [] and store.ratings() == []
    judged = judge(cid, None, None, CORRECTION, REASON, redact=True)
    assert judged["identifiers"]["phone"] == 2 and judged["kind"] == "correction"
    rated = rate(cid, "A", False, CORRECTION, REASON, redact=True)
    assert rated["identifiers"]["phone"] == 2
    (judgment,) = store.judgments_for(cid)
    (rating,) = store.ratings()
    assert _raw_in(" ".join([judgment.correction, judgment.reason, rating.correction, rating.reason])) == []
