"""My queue in the Compare tab, on the tiny run: two annotators work through a shared bank of prompts,
each comparison records its bank prompt and assignment, the progress moves, an empty queue says so, a
single answer can be rated, and nobody judges or rates another annotator's comparison through the API."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from types import SimpleNamespace

import gradio as gr
import pytest

from app.arena import QUEUE_EMPTY, RESOLVED_TIE, Arena, ArenaSession
from app.main import build_app
from app.tabs.compare import progress_markdown, render
from core.config import load_config
from core.errors import UserError
from preference_store.repository import PreferenceStore

HISTORY = [
    {"role": "user", "content": "我最近总是头晕。"},
    {"role": "assistant", "content": "头晕多久了？有没有高血压？"},
]
FOLLOW_UP = "有高血压，三年了，需要换药吗？"
FIRST = "糖尿病有哪些常见症状？"


@pytest.fixture
def cfg(app_home):
    return load_config("tiny", ["store.annotators_per_prompt=2"])  # each bank prompt goes to 2 annotators


@pytest.fixture
def store(cfg, tmp_path):
    with PreferenceStore.from_config(cfg) as store:
        bank = tmp_path / "bank.jsonl"
        bank.write_text(
            "\n".join(
                json.dumps(line, ensure_ascii=False)
                for line in [
                    {"prompt": FIRST, "tags": ["内分泌"], "split": "heldout"},
                    {"prompt": FOLLOW_UP, "history": HISTORY, "tags": ["心血管"]},
                ]
            )
            + "\n",
            encoding="utf-8",
        )
        summary = store.import_bank(bank)
        assert summary.imported == 2 and not summary.errors
        yield store


@pytest.fixture
def arena(cfg, store, make_pool):
    return Arena(cfg, store, make_pool(cfg))


def _annotator(store, name):
    """A logged-in annotator's Compare tab that has accepted the notice and read the guideline."""
    me = store.add_annotator(name, "pw-123456", role="annotator")
    store.mark_guideline_seen(me.id, store.guideline().version)
    return ArenaSession(annotator=me, notice_accepted=True)


def _next(arena, session, run_id, stages=("sft", "dpo"), seed=0):
    """Press "下一题 Next from my queue" with these contestants (blind); the assignment, None when empty."""
    assignment = arena.take_assignment(session, [f"{run_id}/{s}" for s in stages], blind=True, rng=random.Random(seed))
    if assignment is not None:
        list(arena.ask_queue(session, assignment))
    return assignment


def _answers(store, comparison_id):
    return {r.checkpoint_id: r.text for r in store.get_comparison(comparison_id).responses}


def test_two_annotators_work_the_same_queue(arena, store, app_home):
    run_id = app_home[1]
    wang, li = _annotator(store, "dr_wang"), _annotator(store, "dr_li")
    assert "0 / 2" in progress_markdown(arena, wang)

    first = _next(arena, wang, run_id)
    wang_first = wang.comparison_id
    stored = store.get_comparison(wang_first)
    assert (stored.bank_prompt_id, stored.assignment_id) == (first.bank_prompt.id, first.id)
    assert stored.messages == [{"role": "user", "content": FIRST}]
    assert "queue prompt" in progress_markdown(arena, wang)
    assert [u["visible"] for u in render(wang)[-4:]] == [True, True, False, False]  # 👍/👎 under each answer
    assert "B is better" in arena.vote(wang, "B")
    assert "1 / 2" in progress_markdown(arena, wang)

    second = _next(arena, wang, run_id)  # the prompt with a conversation so far
    assert second.bank_prompt.prompt == FOLLOW_UP
    stored = store.get_comparison(wang.comparison_id)
    assert stored.messages == [*HISTORY, {"role": "user", "content": FOLLOW_UP}]
    for panel in wang.panels:  # every panel's model saw the earlier turns, and the panel shows them
        assert panel.history[:3] == stored.messages
        assert [m["content"] for m in panel.display[:3]] == [m["content"] for m in stored.messages]
    list(arena.regenerate(wang, arena.queue_decoding(second.bank_prompt.id)))  # asked again: still the queue's
    again = store.get_comparison(wang.comparison_id)
    assert again.id != stored.id and (again.bank_prompt_id, again.assignment_id) == (second.bank_prompt.id, second.id)
    assert again.messages == stored.messages
    assert again.responses[0].seed == arena.queue_decoding(second.bank_prompt.id, attempt=1).seed
    arena.vote(wang, "tie")
    assert "2 / 2" in progress_markdown(arena, wang)
    assert _next(arena, wang, run_id) is None and wang.comparison_id == again.id  # the panels stay as they are
    assert QUEUE_EMPTY in progress_markdown(arena, wang)

    # the second annotator gets the same prompts (k = 2) and, with the same contestants, the same answers:
    # a queue prompt's seed comes from the bank prompt, so the two verdicts are on the same answers
    assert "0 / 2" in progress_markdown(arena, li)
    assert _next(arena, li, run_id).bank_prompt.id == first.bank_prompt.id
    assert _answers(store, li.comparison_id) == _answers(store, wang_first)
    arena.vote(li, "A")
    assert "1 / 2" in progress_markdown(arena, li)
    # a third annotator takes the last free place; then the second finds nothing left (2 annotators a prompt)
    zhao = _annotator(store, "dr_zhao")
    assert _next(arena, zhao, run_id).bank_prompt.id == second.bank_prompt.id
    assert "0 / 1" in progress_markdown(arena, zhao)
    assert _next(arena, li, run_id) is None and QUEUE_EMPTY in progress_markdown(arena, li)
    assert "1 / 1" in progress_markdown(arena, li)


def test_one_answer_rated_up_or_down_is_stored_and_completes_the_queue_prompt(arena, store, app_home):
    run_id = app_home[1]
    wang = _annotator(store, "dr_wang")
    _next(arena, wang, run_id)
    message = arena.rate(wang, "B", up=False, correction="应检测空腹血糖和糖化血红蛋白。", reason="没有提到检查")
    assert "Recorded" in message and "👎" in message and "B" in message
    assert "already recorded" in arena.rate(
        wang, "B", up=False, correction="应检测空腹血糖和糖化血红蛋白。", reason="没有提到检查"
    )  # a double click
    arena.rate(wang, "A", up=True)
    down, up = sorted(store.ratings(annotator_id=wang.annotator.id), key=lambda r: r.up)
    assert (down.label, down.up, down.reason, down.correction) == (
        "B",
        False,
        "没有提到检查",
        "应检测空腹血糖和糖化血红蛋白。",
    )
    assert down.checkpoint_id == wang.panels[1].checkpoint_id and (up.label, up.up) == ("A", True)
    assert down.guideline_version == store.guideline().version
    assert session_is_still_blind(wang)  # a rating does not reveal the names: the answers can still be compared
    assert "1 / 2" in progress_markdown(arena, wang)

    arena.start(wang, [f"{run_id}/sft", f"{run_id}/dpo"], blind=True)  # free chat: compare, but no single ratings
    list(arena.ask(wang, "感冒要吃抗生素吗？", arena.queue_decoding("free")))
    assert [u["visible"] for u in render(wang)[-4:]] == [False] * 4
    with pytest.raises(UserError, match="queue prompts"):
        arena.rate(wang, "A", up=True)


def session_is_still_blind(session: ArenaSession) -> bool:
    return [session.header(label) for label in session.labels] == [f"模型 {label}" for label in session.labels]


def test_regenerate_answers_an_empty_queue_answer_again(arena, store, app_home, monkeypatch):
    """An empty answer in the queue ("空回答 (empty answer)") is asked again with the prompt's next seed."""
    run_id = app_home[1]
    wang = _annotator(store, "dr_wang")
    seeds = []
    real = arena.pool.generate

    def generate(requests, decoding, endpoints=None):
        seeds.append(decoding.seed)
        return real(requests, decoding, endpoints)

    monkeypatch.setattr(arena.pool, "generate", generate)
    first = _next(arena, wang, run_id)
    list(arena.regenerate(wang, arena.queue_decoding("ignored")))
    list(arena.regenerate(wang, arena.queue_decoding("ignored")))
    assert seeds == [arena.queue_decoding(first.bank_prompt.id, attempt=n).seed for n in range(3)]
    assert len(set(seeds)) == 3


def _api(demo, name):
    (fn,) = [f.fn for f in demo.fns.values() if f.api_name == name]
    assert fn.__module__ == "app.api"  # the endpoint, not a UI callback that took its name
    return fn


def test_the_api_works_the_queue_and_refuses_another_annotators_comparison(cfg, store, make_pool, app_home):
    run_id = app_home[1]
    demo = build_app(cfg, store=store, pool=make_pool(cfg))
    queue_next, judge, rate = _api(demo, "queue_next"), _api(demo, "judge"), _api(demo, "rate")
    wang, li = (SimpleNamespace(username=name) for name in ("dr_wang", "dr_li"))
    for name in ("dr_wang", "dr_li"):
        store.add_annotator(name, "pw-123456")

    with pytest.raises(gr.Error, match="notice"):
        queue_next([f"{run_id}/sft", f"{run_id}/dpo"], False, request=wang)
    peek = queue_next(None, True, request=wang)  # the prompt alone, not answered
    assert peek["prompt"] == FIRST and peek["progress"] == "0 / 2" and "comparison_id" not in peek
    item = queue_next([f"{run_id}/sft", f"{run_id}/dpo"], True, request=wang)
    assert item["assignment_id"] == peek["assignment_id"] and item["bank_prompt_id"] == peek["bank_prompt_id"]
    # blind: no names before the judgment (a contraindication warning names the drug and the graph, never a contestant)
    assert [set(a) for a in item["answers"]] == [{"label", "text", "warnings"}] * 2
    assert not any(run_id in str(a["warnings"]) for a in item["answers"])
    stored = store.get_comparison(item["comparison_id"])
    assert stored.assignment_id == item["assignment_id"] and stored.blind
    assert {r.checkpoint_id for r in stored.responses} == {f"{run_id}/sft", f"{run_id}/dpo"}

    with pytest.raises(gr.Error, match="another annotator"):
        judge(item["comparison_id"], "A", request=li)
    with pytest.raises(gr.Error, match="another annotator"):
        rate(item["comparison_id"], "A", True, request=li)
    assert store.judgments_for(item["comparison_id"]) == [] and store.ratings() == []

    rated = rate(item["comparison_id"], "B", False, None, "答非所问", request=wang)
    assert (rated["label"], rated["up"], rated["duplicate"], rated["progress"]) == ("B", False, False, "1 / 2")
    assert judge(item["comparison_id"], "A", request=wang)["judgments_by_you"] == 1
    with pytest.raises(gr.Error, match="already judged"):  # once
        judge(item["comparison_id"], "B", request=wang)
    with pytest.raises(gr.Error, match="already rated"):
        rate(item["comparison_id"], "B", True, request=wang)
    last = queue_next([f"{run_id}/sft", f"{run_id}/dpo"], True, request=wang)
    assert last["prompt"] == FOLLOW_UP and last["messages"][:2] == HISTORY
    judge(last["comparison_id"], "tie", request=wang)
    empty = queue_next(None, True, request=wang)
    assert empty["assignment_id"] is None and empty["message"] == QUEUE_EMPTY and empty["progress"] == "2 / 2"


def test_the_api_regenerates_a_queue_prompt_with_its_next_shared_seed(cfg, store, make_pool, app_home):
    """/queue_next asked again gives the open prompt's same answers; regenerate=True answers it anew with the
    prompt's next shared seed (as the Compare tab's button does) in a new comparison, the one to judge."""
    run_id = app_home[1]
    pool = make_pool(cfg)
    demo = build_app(cfg, store=store, pool=pool)
    queue_next, judge = _api(demo, "queue_next"), _api(demo, "judge")
    store.add_annotator("dr_wang", "pw-123456")
    wang, pair = SimpleNamespace(username="dr_wang"), [f"{run_id}/sft", f"{run_id}/dpo"]
    arena = Arena(cfg, store, pool)  # the app's seeds, read from an arena on the same store and models

    with pytest.raises(gr.Error, match="nothing to regenerate yet"):
        queue_next(pair, True, regenerate=True, request=wang)
    first = queue_next(pair, True, request=wang)
    again = queue_next(pair, True, request=wang)
    bank_prompt_id = first["bank_prompt_id"]
    assert again["bank_prompt_id"] == bank_prompt_id and again["seed"] == first["seed"]
    assert again["seed"] == arena.queue_decoding(bank_prompt_id).seed
    assert sorted(a["text"] for a in again["answers"]) == sorted(a["text"] for a in first["answers"])

    # two comparisons recorded so far: the regenerate is the prompt's third answer, attempt 2
    anew = queue_next(pair, True, regenerate=True, request=wang)
    assert anew["bank_prompt_id"] == bank_prompt_id and anew["comparison_id"] not in (
        first["comparison_id"],
        again["comparison_id"],
    )
    assert anew["seed"] == arena.queue_decoding(bank_prompt_id, attempt=2).seed != first["seed"]
    assert store.get_comparison(anew["comparison_id"]).assignment_id == first["assignment_id"]
    with pytest.raises(gr.Error, match="send its checkpoints"):
        queue_next(None, True, regenerate=True, request=wang)
    judge(anew["comparison_id"], "A", request=wang)
    assert queue_next(None, True, request=wang)["prompt"] == FOLLOW_UP  # judged: the queue moved on


def _ui(demo, name, *args):
    """Run the Compare tab's callback ``name`` as the browser does (a generator to its end); outputs by elem_id."""
    fn = next(f for f in demo.fns.values() if f.name == name)
    out = fn.fn(*args)
    if not isinstance(out, tuple):
        *_, out = out  # a generator: the page after its last step
    return {getattr(c, "elem_id", None) or f"#{i}": u for i, (c, u) in enumerate(zip(fn.outputs, out))}, out[0]


def test_the_next_button_and_the_thumbs_in_the_compare_tab(cfg, store, make_pool, app_home):
    run_id = app_home[1]
    demo = build_app(cfg, store=store, pool=make_pool(cfg))
    me = store.add_annotator("dr_wang", "pw-123456")
    store.mark_guideline_seen(me.id, store.guideline().version)
    state = ArenaSession(annotator=me, notice_accepted=True)
    contestants = [f"{run_id}/sft", f"{run_id}/dpo"]

    shown, state = _ui(demo, "next_from_queue", state, contestants, True)
    assert "answers complete" in shown["status"] and "queue prompt" in shown["status"]
    assert "0 / 2" in shown["queue-progress"] and "queue prompt" in shown["queue-progress"]
    assert shown["panel-A"]["visible"] and shown["panel-B"]["visible"] and not shown["panel-C"]["visible"]
    assert [shown[f"rate-{label}"]["visible"] for label in "ABCD"] == [True, True, False, False]
    assert shown["chat-A"]["value"][0]["content"] == FIRST

    shown, state = _ui(demo, "rate_answer", state, "应查空腹血糖。", "不完整")  # the first thumb: 👍 on A
    assert "Recorded" in shown["status"] and "👍" in shown["status"] and "1 / 2" in shown["queue-progress"]
    assert shown["correction"] == "" and shown["reason"] == ""
    (rating,) = store.ratings(annotator_id=me.id)
    assert (rating.label, rating.up, rating.correction, rating.reason) == ("A", True, "应查空腹血糖。", "不完整")
    assert state.header("A") == "模型 A"  # still blind

    shown, state = _ui(demo, "next_from_queue", state, contestants, True)
    assert shown["chat-B"]["value"][2]["content"] == FOLLOW_UP  # the conversation so far, then the prompt
    shown, state = _ui(demo, "vote", state, "", *[None] * 24)
    assert "A is better" in shown["status"] and "2 / 2" in shown["queue-progress"]
    shown, state = _ui(demo, "next_from_queue", state, contestants, True)
    assert QUEUE_EMPTY in shown["status"] and QUEUE_EMPTY in shown["queue-progress"]


class _AlikeAnswers:
    """A generation whose panels all show the first panel's text (as two checkpoints that answer alike would)."""

    def __init__(self, generation):
        self.generation = generation

    @staticmethod
    def _alike(answers):
        return [replace(a, text=answers[0].text) for a in answers]

    @property
    def answers(self):
        return self._alike(self.generation.answers)

    @property
    def done(self):
        return self.generation.done

    def cancel(self):
        self.generation.cancel()

    def stream(self):
        for answers in self.generation.stream():
            yield self._alike(answers)


def test_identical_answers_in_an_adaptive_round_are_not_judged(app_home, tmp_path, make_pool, monkeypatch):
    """Adaptive allocation resolves a queue prompt whose two answers are identical as a tie without the clinician:
    the arena says so in one line, refuses a judgment, a rating or a regenerate of it, and takes the next prompt;
    the Compare tab shows that line without the vote buttons; the API's /queue_next says so too, and /judge and
    /rate refuse it."""
    run_id = app_home[1]
    cfg = load_config("tiny", ["store.annotators_per_prompt=2", "study.allocation=adaptive"])
    contestants = [f"{run_id}/sft", f"{run_id}/dpo"]
    pool = make_pool(cfg)
    real = pool.generate
    monkeypatch.setattr(pool, "generate", lambda *args, **kwargs: _AlikeAnswers(real(*args, **kwargs)))
    with PreferenceStore.from_config(cfg) as store:
        bank = tmp_path / "bank.jsonl"
        prompts = [FIRST, FOLLOW_UP, "感冒要吃抗生素吗？", "失眠怎么办？", "孕妇能喝咖啡吗？"]
        lines = [json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in prompts]
        bank.write_text("".join(lines), encoding="utf-8")
        store.import_bank(bank)
        arena = Arena(cfg, store, pool)

        wang = _annotator(store, "dr_wang")
        first = _next(arena, wang, run_id)
        assert wang.resolved is not None and "same text" in wang.resolved
        assert [u["visible"] for u in render(wang)[-6:]] == [False] * 6  # no vote row, no ranking, no thumbs
        for refused in (
            lambda: arena.vote(wang, "A"),
            lambda: arena.rate(wang, "A", up=True),
            lambda: arena.correct(wang, "多休息。"),
            lambda: list(arena.regenerate(wang, arena.queue_decoding("ignored"))),
        ):
            with pytest.raises(UserError) as err:
                refused()
            assert str(err.value) == RESOLVED_TIE
        assert store.counts().judgments == 0 and store.ratings() == []
        (tie,) = store.resolved_ties()
        assert (tie.bank_prompt_id, tie.comparison_id) == (first.bank_prompt.id, wang.comparison_id)
        assert arena.queue_progress(wang).done == 1  # the prompt is done, without a vote
        assert _next(arena, wang, run_id).bank_prompt.id != first.bank_prompt.id  # the next one is taken

        # the Compare tab: the line in the status, no vote buttons
        demo = build_app(cfg, store=store, pool=pool)
        shown, _ = _ui(demo, "next_from_queue", _annotator(store, "dr_zhao"), contestants, True)
        assert RESOLVED_TIE in shown["status"] and "\n" not in RESOLVED_TIE
        assert not shown["vote-row"]["visible"]

        # the API
        store.add_annotator("dr_li", "pw-123456")
        li = SimpleNamespace(username="dr_li")
        queue_next, judge, rate = _api(demo, "queue_next"), _api(demo, "judge"), _api(demo, "rate")
        assert queue_next(None, True, request=li)["resolved"] is False  # not answered yet: nothing resolved
        item = queue_next(contestants, True, request=li)
        assert item["resolved"] is True and item["message"] == RESOLVED_TIE
        with pytest.raises(gr.Error, match="resolved as a tie without a clinician"):
            judge(item["comparison_id"], "A", request=li)
        with pytest.raises(gr.Error, match="resolved as a tie without a clinician"):
            rate(item["comparison_id"], "A", True, request=li)
        assert store.counts().judgments == 0 and store.ratings() == []
        assert queue_next(contestants, True, request=li)["bank_prompt_id"] != item["bank_prompt_id"]
