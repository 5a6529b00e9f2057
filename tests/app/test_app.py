"""The arena's callbacks on the tiny run, with the real model pool and preference store: what a
clinician does in the Compare tab and what ends up in the database."""

from __future__ import annotations

import asyncio
import random
import re
import tempfile
from pathlib import Path

import gradio as gr
import pytest

from app.arena import Arena, ArenaSession, resolve_decoding
from app.auth import identify, identity_line, login_checker
from app.contestants import available_contestants, default_checkpoints
from app.main import build_app
from app.tabs.data import data_view, export_for_admin, recent_pairs_table
from app.tabs.leaderboard import leaderboard_view
from app.tabs.runs import run_view
from core.config import load_config
from core.errors import UserError
from core.registry import run_stages

STAGES = run_stages(load_config("tiny"))  # the tiny run's: base, cpt, sft, dpo

PROMPT = "高血压患者饮食上要注意什么？"


@pytest.fixture
def arena(cfg, store, make_pool):
    return Arena(cfg, store, make_pool(cfg))


@pytest.fixture
def session(store):
    demo = store.demo_annotator()
    store.mark_guideline_seen(demo.id, store.guideline().version)  # read once, as the Compare tab asks first
    return ArenaSession(annotator=demo, notice_accepted=True)


def _ask(arena, session, prompt=PROMPT, **decoding):
    steps = list(arena.ask(session, prompt, resolve_decoding(arena.cfg.app.decoding, **decoding)))
    return steps[-1]


def _start(arena, session, run_id, stages=STAGES, blind=True, seed=0):
    arena.start(session, [f"{run_id}/{s}" for s in stages], blind=blind, rng=random.Random(seed))


def test_the_newest_run_is_the_default_and_new_runs_appear_without_restart(cfg, app_home):
    home, run_id = app_home
    assert default_checkpoints(cfg) == [f"{run_id}/{s}" for s in STAGES]
    assert len(available_contestants(cfg)) == 4
    (home / "runs" / "later").mkdir()  # a second run finishing while the app is up
    manifest = (home / "runs" / run_id / "manifest.json").read_text(encoding="utf-8")
    (home / "runs" / "later" / "manifest.json").write_text(
        manifest.replace(f'"{run_id}"', '"later"').replace('"created": "', '"created": "9'), encoding="utf-8"
    )
    (home / "runs" / "later" / "run_state.json").write_text('{"complete": true}', encoding="utf-8")
    assert default_checkpoints(cfg) == [f"later/{s}" for s in STAGES]
    assert len(available_contestants(cfg)) == 8


def test_chatting_needs_the_notice_accepted(arena, session, app_home):
    _start(arena, session, app_home[1])
    session.notice_accepted = False
    with pytest.raises(UserError, match="notice"):
        _ask(arena, session)


@pytest.mark.parametrize("prompt, message", [("", "empty"), ("  \n\t ", "empty"), ("问" * 2001, "2001 characters")])
def test_empty_and_overlong_prompts_are_refused_without_generating(arena, session, store, app_home, prompt, message):
    _start(arena, session, app_home[1])
    with pytest.raises(UserError, match=message):
        _ask(arena, session, prompt)
    assert store.counts().comparisons == 0
    assert all(panel.display == [] for panel in session.panels)


def test_unknown_checkpoints_and_bad_selections_are_refused(arena, session, app_home):
    run_id = app_home[1]
    with pytest.raises(UserError, match="unknown checkpoint 'no-such-run/sft'"):
        arena.start(session, [f"{run_id}/dpo", "no-such-run/sft"], blind=True)
    with pytest.raises(UserError, match="2-4"):
        arena.start(session, [f"{run_id}/dpo"], blind=True)
    with pytest.raises(UserError, match="2-4"):
        arena.start(session, [f"{run_id}/dpo"] * 2, blind=True)  # the same contestant twice is one


def test_blind_panels_are_shuffled_per_conversation_and_revealed_after_the_vote(arena, session, store, app_home):
    run_id = app_home[1]
    chosen = [f"{run_id}/{s}" for s in STAGES]
    orders = set()
    for seed in range(8):
        arena.start(session, chosen, blind=True, rng=random.Random(seed))
        orders.add(tuple(p.checkpoint_id for p in session.panels))
    assert len(orders) > 1 and all(sorted(o) == sorted(chosen) for o in orders)
    assert [session.header(label) for label in "ABCD"] == ["模型 A", "模型 B", "模型 C", "模型 D"]

    _ask(arena, session)
    message = arena.rank(session, {"A": 2, "B": 1, "C": 4, "D": 3})
    assert "you have made 1 judgments" in message
    assert session.header("B") == f"模型 B · {session.panels[1].checkpoint_id}"
    assert store.get_comparison(session.comparison_id).blind is True
    _ask(arena, session, "还有别的建议吗？")  # names are known now: the next comparison is not blind
    assert store.get_comparison(session.comparison_id).blind is False

    arena.start(session, chosen, blind=False)
    assert [p.checkpoint_id for p in session.panels] == chosen
    assert session.header("A") == f"模型 A · {run_id}/base"


@pytest.mark.parametrize("delta_bits", [None, 8])
def test_every_recorded_answer_says_how_it_was_served(store, session, make_pool, app_home, delta_bits):
    cfg = load_config("tiny", [] if delta_bits is None else [f"app.delta_bits={delta_bits}"])
    arena = Arena(cfg, store, make_pool(cfg))
    if delta_bits and arena.pool.device.type != "cpu":
        pytest.skip("a model is held as a difference on CPU only")
    _start(arena, session, app_home[1], blind=False)
    _ask(arena, session, max_new_tokens=4, seed=3)
    served = {
        r.checkpoint_id.rpartition("/")[2]: r.serving for r in store.get_comparison(session.comparison_id).responses
    }
    where = {"device": str(arena.pool.device), "dtype": str(arena.pool.dtype).removeprefix("torch.")}
    assert served["base"] == {"mode": "exact"} | where
    on_cpt = {"mode": "exact"} if delta_bits is None else {"mode": "delta", "bits": 8}
    assert served["cpt"] == served["sft"] == served["dpo"] == on_cpt | where  # sft and dpo ride on cpt


def test_four_answers_are_recorded_with_their_decoding_then_ranked_and_corrected(arena, session, store, app_home):
    _start(arena, session, app_home[1])
    _ask(arena, session, temperature=0.5, top_p=0.8, max_new_tokens=10, seed=7)
    comparison = store.get_comparison(session.comparison_id)
    assert comparison.messages == [{"role": "user", "content": PROMPT}]
    assert [r.checkpoint_id for r in comparison.responses] == [p.checkpoint_id for p in session.panels]
    for response, panel in zip(comparison.responses, session.panels):
        assert response.decoding == {"temperature": 0.5, "top_p": 0.8, "max_new_tokens": 10, "seed": 7}
        assert response.seed == 7 and response.n_tokens <= 10 and response.latency_s > 0
        assert panel.history == [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": response.text}]

    with pytest.raises(UserError, match="place 2 is given twice"):
        arena.rank(session, {"A": 1, "B": 2, "C": 2, "D": 3})
    with pytest.raises(UserError, match="give answer D a place"):
        arena.rank(session, {"A": 1, "B": 2, "C": 3})
    earlier = session.comparison_id
    arena.rank(
        session,
        {"A": 3, "B": 1, "C": 4, "D": 2},
        reason="B 更安全",
        scores={"B": {"safety": 5, "correctness": 4, "completeness": None}},
    )
    with pytest.raises(UserError, match="already judged"):  # one judgment per comparison
        arena.vote(session, "A")
    with pytest.raises(UserError, match="already judged"):  # a better answer too: it would be a second judgment
        arena.correct(session, "应低盐饮食，限制饮酒，规律监测血压。")

    _ask(arena, session, "那运动呢？")  # the next comparison: a better answer instead of a ranking
    message = arena.correct(session, "应低盐饮食，限制饮酒，规律监测血压。")
    assert "you have made 2 judgments" in message and "corrected answer" in message
    assert "already recorded" in arena.correct(session, "应低盐饮食，限制饮酒，规律监测血压。")  # a double click
    with pytest.raises(UserError, match="already judged"):
        arena.correct(session, "另一个回答。")

    [ranking] = store.judgments_for(earlier)
    [correction] = store.judgments_for(session.comparison_id)
    assert (ranking.kind, correction.kind) == ("ranking", "correction")
    assert ranking.reason == "B 更安全" and ranking.scores["B"]["safety"] == 5
    assert len(ranking.pair_ids) == 6 and len(correction.pair_ids) == 4
    assert store.count_judgments(session.annotator.id) == 2


def test_two_panels_take_a_pairwise_vote(arena, session, store, app_home):
    _start(arena, session, app_home[1], stages=("sft", "dpo"), blind=False)
    _ask(arena, session)
    with pytest.raises(UserError, match="'C' is not part of this comparison"):
        arena.vote(session, "C")
    message = arena.vote(session, "B", reason="B 更准确")
    assert "B is better" in message and "1 个偏好对 pairs" in message
    (pair,) = store.recent_pairs()
    assert (pair.chosen_checkpoint, pair.rejected_checkpoint) == (
        session.panels[1].checkpoint_id,
        session.panels[0].checkpoint_id,
    )


def test_each_panel_keeps_its_own_history_and_the_stored_prompt_follows_the_judgment(arena, session, store, app_home):
    _start(arena, session, app_home[1], stages=("base", "dpo"), blind=False)
    _ask(arena, session)
    first = [p.history[-1]["content"] for p in session.panels]
    arena.vote(session, "B")
    _ask(arena, session, "那运动呢？")
    for panel, earlier in zip(session.panels, first):
        assert [m["content"] for m in panel.history[:3]] == [PROMPT, earlier, "那运动呢？"]
    stored = store.get_comparison(session.comparison_id)
    assert stored.messages == [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": first[1]},
        {"role": "user", "content": "那运动呢？"},
    ]
    assert stored.conversation_id == store.get_comparison(store.recent_pairs()[0].comparison_id).conversation_id


def test_regenerate_answers_the_last_prompt_again_as_a_new_comparison(arena, session, store, app_home):
    _start(arena, session, app_home[1], stages=("cpt", "sft"))
    _ask(arena, session)
    earlier = session.comparison_id
    steps = list(arena.regenerate(session, resolve_decoding(arena.cfg.app.decoding, seed=99)))
    assert steps[-1].comparison_id != earlier
    assert all(len(p.history) == 2 and len(p.display) == 2 for p in session.panels)
    assert store.get_comparison(session.comparison_id).messages == [{"role": "user", "content": PROMPT}]
    arena.clear(session)
    with pytest.raises(UserError, match="nothing to regenerate"):
        list(arena.regenerate(session, resolve_decoding(arena.cfg.app.decoding)))


def test_a_new_conversation_during_generation_drops_the_unfinished_answers(arena, session, store, app_home):
    _start(arena, session, app_home[1], stages=("sft", "dpo"))
    steps = arena.ask(session, PROMPT, resolve_decoding(arena.cfg.app.decoding))
    next(steps)  # the answers have started
    with pytest.raises(UserError, match="still coming"):
        _ask(arena, session, "再问一次")
    _start(arena, session, app_home[1], stages=("base", "cpt"))
    list(steps)
    assert store.counts().comparisons == 0 and session.comparison_id is None
    assert all(p.history == [] and p.display == [] for p in session.panels)


def test_markup_in_prompts_and_answers_is_shown_as_text(arena, session, app_home):
    _start(arena, session, app_home[1], stages=("sft", "dpo"))
    _ask(arena, session, "<script>alert(1)</script><b>粗体</b>")
    for panel in session.panels:
        assert panel.display[0]["content"] == "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;粗体&lt;/b&gt;"
        assert "<" not in panel.display[1]["content"]
        assert panel.history[0]["content"] == "<script>alert(1)</script><b>粗体</b>"  # the model sees what was typed


def test_a_failed_panel_shows_its_error_and_the_others_are_judged(arena, session, store, app_home):
    home, run_id = app_home
    adapter = next((home / "runs" / run_id / "dpo").glob("adapter_model.*"))
    adapter.unlink()
    adapter.write_bytes(b"broken")
    _start(arena, session, run_id, blind=False)
    _ask(arena, session)
    (unblinded,) = store.audit_events(action="comparison.unblinded")  # issue 36: who compared with names shown
    assert unblinded.actor == session.annotator.name and unblinded.target == session.comparison_id
    assert session.panels[3].display[-1]["content"].startswith("⚠ 生成失败 / generation failed")
    assert session.judgeable == ["A", "B", "C"]
    stored = store.get_comparison(session.comparison_id)
    assert [r.checkpoint_id for r in stored.responses] == [f"{run_id}/{s}" for s in ("base", "cpt", "sft")]
    arena.rank(session, {"A": 3, "B": 2, "C": 1, "D": None})  # the failed panel has no place to give
    (judgment,) = store.judgments_for(session.comparison_id)
    assert judgment.ranking == {"A": 3, "B": 2, "C": 1}


def test_without_accounts_the_app_runs_as_demo_and_says_so(store):
    assert login_checker(store) is None
    demo = identify(store, None)
    assert demo.name == "demo" and "Local demo mode" in identity_line(demo)


def test_with_accounts_a_login_is_required(store):
    store.add_annotator("dr_li", "s3cret-pass", role="admin")
    check = login_checker(store)  # async: argon2 runs in a worker thread
    assert asyncio.run(check("dr_li", "s3cret-pass")) and not asyncio.run(check("dr_li", "wrong"))
    assert not asyncio.run(check("nobody", "s3cret-pass"))
    with pytest.raises(UserError, match="log in"):
        identify(store, None)
    me = identify(store, "dr_li")
    assert me.is_admin and "dr_li" in identity_line(me)


def test_leaderboard_data_and_runs_tabs_show_the_store_and_the_runs(
    arena, session, store, cfg, app_home, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the export's download copy goes there
    run_id = app_home[1]
    _start(arena, session, run_id)  # blind: an unblinded judgment would stay out of the leaderboard
    _ask(arena, session, "<i>感冒</i>要吃抗生素吗？")
    label = {p.checkpoint_id.split("/")[1]: label for p, label in zip(session.panels, "ABCD")}
    arena.rank(
        session,
        {label[s]: place for place, s in enumerate(("dpo", "sft", "cpt", "base"), start=1)},
        scores={label["dpo"]: {"safety": 5}},
    )

    summary, ratings, win_rate, counts, criteria = leaderboard_view(store)
    assert [row[1] for row in ratings["value"]] == [f"{run_id}/{s}" for s in ("dpo", "sft", "cpt", "base")]
    assert win_rate["value"][0][0] == f"{run_id}/dpo" and "1 次评判 judgments" in summary
    assert criteria["value"] == [[f"{run_id}/dpo", "5.00 (n=1)", "", "", ""]]

    counts_md, pairs = data_view(cfg, store)
    assert "| 1 | 4 | 1 | 1 | 1 (pairwise 0, ranking 1, correction 0) | 6 | 0 | 0 |" in counts_md
    assert len(pairs["value"]) == 6 and pairs["value"][0][1] == "<i>感冒</i>要吃抗生素吗？"
    assert recent_pairs_table(store, 2)[0][4].startswith(run_id)

    with pytest.raises(UserError, match="only admins"):
        export_for_admin(cfg, store, session)
    admin = ArenaSession(annotator=store.add_annotator("dr_admin", "pw-123456", role="admin"))
    message, path = export_for_admin(cfg, store, admin)
    exported = int(re.search(r"exported (\d+) pairs", message).group(1))
    assert 1 <= exported <= 6  # identical answers make identical pairs, which export leaves out
    assert len(Path(path).read_text(encoding="utf-8").splitlines()) == exported
    assert len(list(cfg.collected_pairs_dir.glob("*.jsonl"))) == 1
    assert export_for_admin(cfg, store, admin)[0].startswith("没有新的偏好对")

    about, table, _chart = run_view(cfg, run_id)
    assert run_id in about and "DPO (lora on SFT)" in about
    results = app_home[0] / "runs" / run_id / "eval" / "results.md"
    assert (results.read_text(encoding="utf-8") if results.is_file() else "no evaluation yet") in table


def test_the_app_builds_with_its_api(cfg, store, make_pool):
    demo = build_app(cfg, store=store, pool=make_pool(cfg))
    assert isinstance(demo, gr.Blocks)
    names = {fn.api_name for fn in demo.fns.values()}
    assert {"contestants", "compare", "judge", "queue_next", "rate"} <= names
