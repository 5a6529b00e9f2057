"""End to end (issue 36): the real app (``python -m chimed app``) in a real headless Chromium: log in, log out
(the session ends), fail a login three times and see why on the login page, and a disabled account's open
session refused at its next request. Needs Debian's chromium (/usr/bin/chromium), as tests/app/test_app_e2e.py."""

from __future__ import annotations

import pytest

from preference_store.repository import PreferenceStore
from tests.app.test_app_e2e import CHROMIUM, CHROMIUM_ARGS, _chromium_or_skip

PASSWORD = "correct horse battery staple"
TIMEOUT_MS = 120_000
pytestmark = pytest.mark.browser


def _log_in(page, url: str, name: str, password: str) -> None:
    page.goto(url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()


def _new_page(browser):
    """A browser context of its own (its own cookies) and a page in it."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return context, page


def _config_status(context, url: str) -> int:
    """What the app answers this browser's cookies on a request that needs a session."""
    return context.request.get(url + "config").status


def test_log_in_log_out_throttled_message_and_disabled_session(chimed_home, start_app):
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    db = f"sqlite:///{chimed_home / 'preferences.db'}"
    with PreferenceStore(db) as store:
        for name in ("dr_login", "dr_other"):
            store.add_annotator(name, PASSWORD)
    url = start_app(chimed_home)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context, page = _new_page(browser)

        # log in, then log out: the login page again, and the old session cookie no longer opens the app
        _log_in(page, url, "dr_login", PASSWORD)
        page.locator("#identity", has_text="dr_login").wait_for()
        assert _config_status(context, url) == 200
        old_cookies = context.cookies()
        page.locator("#logout").click()
        page.get_by_label("username").wait_for()
        context.add_cookies(old_cookies)
        assert _config_status(context, url) == 401

        # three wrong passwords: the third brings the login page back with the reason and what to do
        for _ in range(3):
            _log_in(page, url, "dr_login", "not the password")
        notice = page.locator("#login-notice")
        notice.wait_for()
        assert "3 failed logins: wait" in notice.inner_text()

        # another account logs in meanwhile; disabling it ends its open session at the next request
        other, other_page = _new_page(browser)
        _log_in(other_page, url, "dr_other", PASSWORD)
        other_page.locator("#identity", has_text="dr_other").wait_for()
        assert _config_status(other, url) == 200
        with PreferenceStore(db) as store:
            store.set_disabled("dr_other", True)
        assert _config_status(other, url) == 401
        browser.close()

    with PreferenceStore(db) as store:
        actions = [e.action for e in reversed(store.audit_events(limit=None))]
    assert actions.count("logout") == 1 and actions.count("login.failed") == 3
    assert "session.ended" in actions and actions.count("login") == 2
