"""The audit log (issue 36): every audited action writes exactly one row, with who, what, to what and from
where; rows cannot be changed or deleted; invalid bearer tokens are throttled per address."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.arena import ArenaSession
from app.tabs.data import audit_csv, audit_rows, export_new, import_bank_for_admin, start_round_for_admin
from chimed import main
from core.config import load_config
from core.errors import UserError
from preference_store.repository.audit import TOKEN_FAILED

pytestmark = pytest.mark.both_backends
GOOD = "correct horse battery staple"
BANK = Path(__file__).parents[1] / "fixtures" / "app" / "bank_e2e.jsonl"


def one_new_event(store, before: int, action: str):
    """The single event appended since the log held ``before`` rows, checked to be ``action``."""
    events = store.audit_events(limit=None)
    assert len(events) == before + 1, [(e.action, e.target) for e in events[: len(events) - before]]
    assert events[0].action == action
    return events[0]


def test_every_audited_action_writes_exactly_one_row(pref_store, monkeypatch, tmp_path):
    store = pref_store
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    cli = ["--profile", "tiny"]

    def count() -> int:
        return len(store.audit_events(limit=None))

    n = count()
    monkeypatch.setattr("sys.stdin", io.StringIO(GOOD + "\n"))
    assert main(["add-annotator", "dr_admin", "--role", "admin", *cli]) == 0
    created = one_new_event(store, n, "account.created")
    assert created.target == "dr_admin" and created.actor.startswith("cli") and created.detail == {"role": "admin"}

    for action, call in [
        ("login", lambda: store.log_in("dr_admin", GOOD, "10.1.2.3")),
        ("login.failed", lambda: store.log_in("dr_admin", "wrong guess", "10.1.2.3")),
        ("account.unlocked", lambda: main(["unlock", "dr_admin", *cli])),
        ("token.issued", lambda: main(["serve-token", "dr_admin", *cli])),
        ("token.revoked", lambda: main(["serve-token", "dr_admin", "--revoke", *cli])),
        ("account.disabled", lambda: main(["add-annotator", "dr_admin", "--disable", *cli])),
        ("account.enabled", lambda: main(["add-annotator", "dr_admin", "--enable", *cli])),
        ("bank.imported", lambda: main(["import-bank", str(BANK), *cli])),
        ("queue.round", lambda: main(["queue-round", *cli])),
        ("export", lambda: main(["export-prefs", *cli])),
    ]:
        n = count()
        call()
        event = one_new_event(store, n, action)
        assert event.target is not None or action == "export"
    assert store.audit_events(action="login")[1].address == "10.1.2.3"  # login.failed is newer, login under it
    assert store.audit_events(action="export")[0].detail["pairs"] == 0

    n = count()
    monkeypatch.setattr("sys.stdin", io.StringIO("plum orbit candle harbour\n"))
    assert main(["passwd", "dr_admin", *cli]) == 0
    one_new_event(store, n, "account.password_changed")

    # the Data tab's admin actions: the admin's name and the browser's address
    admin = ArenaSession(annotator=store.annotator_by_name("dr_admin"))
    cfg = load_config("tiny")
    for action, call in [
        ("export", lambda: export_new(cfg, store, admin, "10.9.9.9")),
        ("bank.imported", lambda: import_bank_for_admin(store, admin, str(BANK), "ward", "10.9.9.9")),
        ("queue.round", lambda: start_round_for_admin(cfg, store, admin, address="10.9.9.9")),
        ("audit.exported", lambda: audit_csv(store, admin, action="login")),
    ]:
        n = count()
        call()
        event = one_new_event(store, n, action)
        assert event.actor == "dr_admin" and (event.address == "10.9.9.9" or action == "audit.exported")


def test_admins_filter_and_export_the_log_and_annotators_cannot(pref_store, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    admin = ArenaSession(annotator=pref_store.add_annotator("dr_admin", GOOD, role="admin"))
    clinician = ArenaSession(annotator=pref_store.add_annotator("dr_li", GOOD))
    pref_store.log_in("dr_li", "wrong guess", "10.0.0.7")
    pref_store.log_in("dr_li", GOOD, "10.0.0.7")
    rows = audit_rows(pref_store, admin, action="login")
    assert [r[2] for r in rows] == ["login", "login.failed"] and rows[0][4] == "10.0.0.7"
    assert [r[2] for r in audit_rows(pref_store, admin, actor="dr_li")] == ["login", "login.failed"]
    assert audit_rows(pref_store, admin, actor="dr_admin") == []
    assert audit_rows(pref_store, admin, since="2999-01-01") == []
    with pytest.raises(UserError, match="ISO date"):
        audit_rows(pref_store, admin, since="yesterday")
    with pytest.raises(UserError, match="only admins"):
        audit_rows(pref_store, clinician)
    exported = Path(audit_csv(pref_store, admin, action="login")).read_text(encoding="utf-8").splitlines()
    assert len(exported) == 3 and "login.failed" in exported[2]


def test_rows_cannot_be_changed_or_deleted(pref_store):
    pref_store.record_event("login.failed", actor="x", target="x")
    for statement in ("UPDATE audit_events SET actor = 'someone else'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"):
            with pref_store._engine.begin() as conn:
                conn.execute(text(statement))
    assert [e.actor for e in pref_store.audit_events()] == ["x"]
    assert not any(hasattr(pref_store, name) for name in ("delete_event", "update_event", "delete_events"))


def test_invalid_bearer_tokens_are_throttled_per_address(pref_store):
    policy = pref_store.settings.accounts
    for _ in range(policy.free_failures):
        assert pref_store.token_refusal("10.0.0.8") is None
        pref_store.record_event(TOKEN_FAILED, address="10.0.0.8")
    refusal = pref_store.token_refusal("10.0.0.8")
    assert refusal is not None and "invalid API tokens: wait" in refusal.message
    assert pref_store.token_refusal("10.0.0.9") is None  # another address is unaffected
