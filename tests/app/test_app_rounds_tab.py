"""The Data tab's study-round controls (issue 30): an admin defines a round (contestants picked from the available
ones, split, blind) and closes it through the same store calls and audit rows as ``./launch.sh queue-round``;
annotators cannot, and a refused definition changes nothing."""

from __future__ import annotations

import json
from dataclasses import replace

import gradio as gr
import pytest

from app.arena import ArenaSession
from app.tabs.data import build_data_tab, close_round_for_admin, start_round_for_admin
from core.config import EndpointConfig, load_config
from core.errors import UserError

A, B = "endpoint:hospital-a", "endpoint:hospital-b"
PROMPTS = [
    {"prompt": "糖尿病有哪些常见症状？", "split": "heldout"},
    {"prompt": "高血压饮食注意什么？", "split": "train"},
    {"prompt": "头痛三天怎么办？", "split": "heldout"},
]


@pytest.fixture
def cfg(chimed_home):
    """The tiny profile with two endpoints as the available contestants (no trained run needed)."""
    cfg = load_config("tiny")
    endpoints = [
        EndpointConfig(name=n, base_url="http://127.0.0.1:9/v1", model=f"model-{n}")
        for n in ("hospital-a", "hospital-b")
    ]
    return replace(cfg, app=replace(cfg.app, endpoints=endpoints))


@pytest.fixture
def people(pref_store, tmp_path):
    bank = tmp_path / "bank.jsonl"
    bank.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PROMPTS), encoding="utf-8")
    assert pref_store.import_bank(str(bank)).imported == 3
    alice = pref_store.add_annotator("alice", "pw-alice-123", role="annotator")
    admin = pref_store.add_annotator("dr_admin", "pw-admin-123", role="admin")
    return alice, admin


def test_an_admin_defines_a_blind_round_and_closes_it_as_the_command_line_does(cfg, pref_store, people):
    alice, admin = people
    message = start_round_for_admin(
        cfg, pref_store, ArenaSession(annotator=admin), [A, B], "heldout", True, address="10.0.0.7"
    )
    assert "queue round 2 started" in message and "2 heldout bank prompts" in message
    assert f"answered by {A}, {B} for everyone, blind" in message
    current = pref_store.queue_round_definition()
    assert (current.number, current.contestants, current.split, current.blind, current.is_open) == (
        2,
        (A, B),
        "heldout",
        True,
        True,
    )
    assert pref_store.next_assignment(alice.id).bank_prompt.split == "heldout"
    (event,) = pref_store.audit_events(action="queue.round")
    assert (event.actor, event.target, event.address) == ("dr_admin", "2", "10.0.0.7")
    assert event.detail == {"contestants": [A, B], "split": "heldout", "blind": True, "allocation": "adaptive"}

    assert "queue round 2 closed" in close_round_for_admin(pref_store, ArenaSession(annotator=admin))
    assert pref_store.queue_round_definition().closed is not None
    assert [e.target for e in pref_store.audit_events(action="queue.round_closed")] == ["2"]
    with pytest.raises(UserError, match="queue round 2 is not open"):
        close_round_for_admin(pref_store, ArenaSession(annotator=admin))


def test_a_refused_round_changes_nothing(cfg, pref_store, people):
    alice, admin = people
    for who in (ArenaSession(annotator=alice), ArenaSession()):
        with pytest.raises(UserError, match="only admins"):
            start_round_for_admin(cfg, pref_store, who, [A, B])
        with pytest.raises(UserError, match="only admins"):
            close_round_for_admin(pref_store, who)
    with pytest.raises(UserError, match="unknown checkpoint 'r9/dpo'"):
        start_round_for_admin(cfg, pref_store, ArenaSession(annotator=admin), [A, "r9/dpo"])
    with pytest.raises(UserError, match="2-4 different contestants"):
        start_round_for_admin(cfg, pref_store, ArenaSession(annotator=admin), [A])
    assert pref_store.queue_round() == 1 and not pref_store.queue_round_definition().is_open
    assert pref_store.audit_events(action="queue.round") == []


def _callback(demo: gr.Blocks, name: str):
    (fn,) = [f.fn for f in demo.fns.values() if f.fn is not None and f.fn.__name__ == name]
    return fn


def test_the_tab_offers_the_available_contestants_to_admins_and_refuses_annotators(cfg, pref_store, people):
    alice, admin = people
    with gr.Blocks() as demo:
        session = gr.State(ArenaSession(annotator=admin))
        with gr.Tab("数据 Data") as tab:
            build_data_tab(cfg, pref_store, session, tab)
    picker, status = _callback(demo, "round_choices")(ArenaSession(annotator=admin), [])
    assert [cid for _, cid in picker["choices"]] == [A, B] and "not defined" in status
    assert _callback(demo, "round_choices")(ArenaSession(annotator=alice), []) == (gr.update(), "")

    define = _callback(demo, "run_new_round")
    shown, *_ = define(ArenaSession(annotator=admin), [A, B], "train", False, None)
    assert "queue round 2 started" in shown and "(open): contestants" in shown and "split train" in shown
    with pytest.raises(gr.Error, match="only admins"):
        define(ArenaSession(annotator=alice), [A, B], "all", False, None)
    with pytest.raises(gr.Error, match="only admins"):
        _callback(demo, "run_close_round")(ArenaSession(annotator=alice), None)
    shown, *_ = _callback(demo, "run_close_round")(ArenaSession(annotator=admin), None)
    assert "queue round 2 closed" in shown and "(closed" in shown
    assert pref_store.queue_round() == 2
