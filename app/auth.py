"""Who is judging: the store's annotator accounts, or the local "demo" annotator when there are none.

With at least one account (``./launch.sh add-annotator NAME --role annotator|admin``) the app asks for
a login (Gradio's login page, checked against the store's argon2 hashes) and records every judgment
under that account. With none it runs as the local "demo" annotator and says so on every page.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from preference_store.records import Annotator
from preference_store.repository import DEMO_ANNOTATOR, PreferenceStore
from training.errors import UserError

ADD_ACCOUNT_HINT = "./launch.sh add-annotator NAME --role admin"


def login_checker(store: PreferenceStore) -> Callable[[str, str], bool] | None:
    """Gradio's ``auth`` callable when accounts exist, else None (the app runs as the demo annotator)."""
    if not store.has_login_accounts():
        return None
    return lambda name, password: store.authenticate(name, password) is not None


def identify(store: PreferenceStore, username: str | None) -> Annotator:
    """The annotator behind a request: the logged-in account, or "demo" when no account exists."""
    if username:
        annotator = store.annotator_by_name(username)
        if annotator is not None and annotator.can_login:
            return annotator
        raise UserError(f"no annotator account {username!r}: log in again")
    if store.has_login_accounts():
        raise UserError("this app has annotator accounts: log in first (restart the app after adding the first one)")
    return store.demo_annotator()


def identity_line(annotator: Annotator) -> str:
    """The line under the title that says who is recording judgments."""
    if annotator.name == DEMO_ANNOTATOR and not annotator.can_login:
        return ("**本地演示模式 Local demo mode**: 未配置标注账号，评判以 “demo” 身份记录。"
                f" No annotator account is configured, so judgments are recorded as the local \"demo\" annotator"
                f" (add accounts with `{ADD_ACCOUNT_HINT}` and restart the app).")
    role = "管理员 admin" if annotator.is_admin else "标注员 annotator"
    return f"已登录 Logged in as **{html.escape(annotator.name)}** ({role})."
