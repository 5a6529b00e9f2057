"""Accounts fit for a clinical study (issue 36): throttled logins, unlocking, the password policy, disabling
accounts and changing passwords, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest

from chimed import main
from core.config import load_config
from preference_store.models import utcnow
from preference_store.repository import PreferenceStore

pytestmark = pytest.mark.both_backends
GOOD = "correct horse battery staple"
HOME, AWAY = "10.0.0.5", "203.0.113.9"


def open_store(store_url, **accounts) -> PreferenceStore:
    """The test's store with ``store.accounts`` overrides (short windows, so the test need not wait long)."""
    cfg = load_config("tiny", [f"store.accounts.{k}={v}" for k, v in accounts.items()])
    return PreferenceStore(store_url, cfg.store)


def test_wrong_passwords_are_delayed_then_locked_and_the_right_one_refused_while_locked(store_url):
    store = open_store(store_url, login_delay_s=30, lock_failures=5)
    store.add_annotator("dr_wang", GOOD)
    store.add_annotator("dr_li", GOOD)
    for _ in range(2):  # the first failures: answered at once, told nothing more than "wrong"
        assert store.log_in("dr_wang", "guess", AWAY).message is None
    third = store.log_in("dr_wang", "guess", AWAY)  # the third (free_failures): the next try must wait
    assert third.annotator is None and "3 failed logins: wait 30 s" in third.message
    # the next try comes too early: refused unchecked, the right password included, and not counted
    early = store.log_in("dr_wang", GOOD, AWAY)
    assert early.annotator is None and "wait" in early.message
    assert len(store.audit_events(action="login.failed", target="dr_wang")) == 3
    assert len(store.audit_events(action="login.refused", target="dr_wang")) == 1
    # another account, from the same address, is unaffected
    assert store.log_in("dr_li", GOOD, AWAY).annotator.name == "dr_li"
    # once the wait is over the next try is checked; the wait doubles with each further failure
    later = utcnow() + timedelta(seconds=31)
    assert store.login_refusal("dr_wang", AWAY, now=later) is None
    store.log_in("dr_wang", "guess", AWAY)  # now early again: refused, not counted
    assert "wait" in store.login_refusal("dr_wang", AWAY).message


def test_a_lock_lifts_after_its_window_or_an_admins_unlock(store_url):
    store = open_store(store_url, free_failures=10, lock_failures=3, lock_seconds=2)
    store.add_annotator("dr_wang", GOOD)
    for _ in range(3):
        store.log_in("dr_wang", "guess", AWAY)
    locked = store.log_in("dr_wang", GOOD, AWAY)
    assert locked.annotator is None and "locked" in locked.message and "unlock" in locked.message
    time.sleep(2.2)  # the window (lock_seconds) passes
    assert store.log_in("dr_wang", GOOD, AWAY).annotator is not None

    for _ in range(3):
        store.log_in("dr_wang", "guess", AWAY)
    assert store.log_in("dr_wang", GOOD, AWAY).annotator is None
    main_store_unlock(store_url, "dr_wang")
    assert store.log_in("dr_wang", GOOD, AWAY).annotator is not None


def main_store_unlock(store_url, name) -> None:
    """``./launch.sh unlock NAME`` against the test's store."""
    assert main(["unlock", name, "--profile", "tiny"]) == 0


def test_a_guesser_elsewhere_cannot_lock_the_owner_out_of_their_usual_address(store_url):
    store = open_store(store_url, account_lock_failures=4, account_lock_seconds=600, free_failures=100)
    store.add_annotator("dr_wang", GOOD)
    assert store.log_in("dr_wang", GOOD, HOME).annotator is not None  # the owner's usual address
    for i in range(4):  # a distributed guesser: one failure from each of many addresses
        store.log_in("dr_wang", "guess", f"198.51.100.{i}")
    assert "locked" in store.log_in("dr_wang", GOOD, "198.51.100.99").message  # the account, from elsewhere
    assert store.log_in("dr_wang", GOOD, HOME).annotator is not None  # but never from the owner's address


def test_a_weak_or_common_password_is_refused_at_add_annotator_with_one_line(store_url, monkeypatch, capsys):
    for password in ("123456", "short", "password123", "dr_zhang2024", "aaaaaaaaaaaa"):
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        assert main(["add-annotator", "dr_zhang", "--role", "admin", "--profile", "tiny"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: password for 'dr_zhang' refused") and "\n" not in err, err
    monkeypatch.setattr("sys.stdin", io.StringIO(GOOD + "\n"))
    assert main(["add-annotator", "dr_zhang", "--role", "admin", "--profile", "tiny"]) == 0
    with open_store(store_url) as store:
        assert store.annotator_by_name("dr_zhang").password_weak is False


def test_existing_weak_passwords_are_flagged_and_checked_at_the_next_login(store_url):
    store = open_store(store_url)
    assert store.add_annotator("dr_old", "pw").password_weak  # a script may still make one: it is flagged
    assert store.add_annotator("dr_new", GOOD).password_weak is False
    assert store.log_in("dr_old", "pw").annotator.password_weak


def test_a_disabled_account_cannot_log_in_and_its_token_stops(store_url):
    store = open_store(store_url)
    store.add_annotator("dr_wang", GOOD)
    token = store.create_api_token("dr_wang")
    assert store.annotator_for_token(token).name == "dr_wang"
    assert main(["add-annotator", "dr_wang", "--disable", "--profile", "tiny"]) == 0
    assert store.annotator_for_token(token) is None
    assert store.log_in("dr_wang", GOOD).annotator is None
    started = utcnow()
    assert store.session_allowed("dr_wang", started) == "account disabled"
    assert main(["add-annotator", "dr_wang", "--enable", "--profile", "tiny"]) == 0
    assert store.annotator_for_token(token).name == "dr_wang"
    assert store.session_allowed("dr_wang", started) is None


def test_passwd_from_stdin_follows_the_policy_and_ends_older_sessions(store_url, monkeypatch, capsys):
    store = open_store(store_url)
    store.add_annotator("dr_wang", GOOD)
    before = utcnow()
    monkeypatch.setattr("sys.stdin", io.StringIO("qwerty123\n"))
    assert main(["passwd", "dr_wang", "--profile", "tiny"]) == 2
    assert "refused" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("violet kettle orbit meadow\n"))
    assert main(["passwd", "dr_wang", "--profile", "tiny"]) == 0
    assert store.log_in("dr_wang", "violet kettle orbit meadow").annotator is not None
    assert store.log_in("dr_wang", GOOD).annotator is None
    assert store.session_allowed("dr_wang", before) == "password changed"
    with pytest.raises(Exception, match="current password is not right"):
        store.change_password("dr_wang", "wrong one", "another fine passphrase")
    store.change_password("dr_wang", "violet kettle orbit meadow", "another fine passphrase")
    assert store.log_in("dr_wang", "another fine passphrase").annotator is not None
