"""Who is judging: the store's annotator accounts, or the local "demo" annotator when there are none.

With at least one account (``./launch.sh add-annotator NAME --role annotator|admin``) the app asks for
a login (Gradio's login page, checked against the store's argon2 hashes) and records every judgment
under that account. With none it runs as the local "demo" annotator and says so on every page.

Gradio's own login route (``POST /login``) calls :func:`login_checker`'s callable, which logs in through the
store: throttled and audited (:mod:`preference_store.repository.audit`). :class:`AccountGuard`, an ASGI
middleware inside Gradio's app, gives that callable the client's address, turns a throttled try into a clear
message on the login page, ends sessions that outlived ``app.session_hours`` or whose account was disabled or
whose password changed (at their next request), and audits logouts.
"""

from __future__ import annotations

import asyncio
import contextvars
import html
import ipaddress
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from urllib.parse import quote, unquote

import gradio as gr

from core.config import AppConfig, Config
from core.errors import UserError
from preference_store.records import Annotator
from preference_store.repository import DEMO_ANNOTATOR, PreferenceStore

ADD_ACCOUNT_HINT = "./launch.sh add-annotator NAME --role admin"
NOTICE_COOKIE = "chimed-login-notice"  # the account name of the last throttled login try of this browser
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/favicon", "/manifest.json")  # no session involved


@dataclass
class LoginTry:
    """One ``POST /login`` as the middleware and the auth callable share it."""

    address: str | None
    name: str | None = None
    message: str | None = None  # set when the try was throttled, or now is


_LOGIN_TRY: contextvars.ContextVar[LoginTry | None] = contextvars.ContextVar("chimed_login_try", default=None)


def client_address(scope: dict, app_cfg: AppConfig) -> str | None:
    """The client's address: the connection's, or, when ``app.client_address_header`` is set and the connection
    comes from one of ``app.trusted_proxies``, the nearest untrusted address the proxy header names."""
    peer = (scope.get("client") or (None,))[0]
    if not app_cfg.client_address_header or peer not in app_cfg.trusted_proxies:
        return peer
    wanted = app_cfg.client_address_header.lower().encode("latin-1")
    values = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == wanted]
    hops = [h.strip() for v in values for h in v.split(",") if h.strip()]
    for hop in reversed(hops):  # the proxy appends: the rightmost untrusted hop is the one it saw
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed header: keep the connection's address
        if hop not in app_cfg.trusted_proxies:
            return hop
    return peer


def login_checker(store: PreferenceStore) -> Callable[[str, str], Awaitable[bool]] | None:
    """Gradio's ``auth`` callable when accounts exist, else None (the app runs as the demo annotator).

    Each try goes through :meth:`PreferenceStore.log_in` (throttled, audited) in a worker thread, so argon2
    does not hold up the event loop."""
    if not store.has_login_accounts():
        return None

    async def check(name: str, password: str) -> bool:
        attempt = _LOGIN_TRY.get()
        result = await asyncio.to_thread(store.log_in, name, password, attempt.address if attempt else None)
        if attempt is not None:
            attempt.name, attempt.message = name, result.message
        return result.annotator is not None

    return check


class AccountGuard:
    """ASGI middleware inside Gradio's app (``launch(app_kwargs={"middleware": ...})``): see the module docstring."""

    def __init__(self, app, cfg: Config, store: PreferenceStore) -> None:
        self.app, self.cfg, self.store = app, cfg, store
        self.sessions: dict[str, tuple[str, datetime]] = {}  # Gradio's session token -> (account, started)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        server = scope["app"]  # Gradio's App: its session tokens and cookie names
        cookies = _cookies(scope)
        token = cookies.get(f"access-token-{server.cookie_id}") or cookies.get(
            f"access-token-unsecure-{server.cookie_id}"
        )
        if token and token in server.tokens:
            await asyncio.to_thread(self._check_session, server, token)
        path, method = scope["path"].rstrip("/"), scope["method"]
        address = client_address(scope, self.cfg.app)
        if method == "POST" and path.endswith("/login"):
            await self._login(scope, receive, send, address)
        elif method == "GET" and path.endswith("/logout") and token in server.tokens:
            user = server.tokens[token]
            await asyncio.to_thread(self.store.record_event, "logout", actor=user, target=user, address=address)
            await self.app(scope, receive, send)
        elif (
            method == "GET"
            and path in ("", scope.get("root_path", "").rstrip("/"))
            and NOTICE_COOKIE in cookies
            and token not in server.tokens
        ):
            await self._login_page(scope, receive, send, server, unquote(cookies[NOTICE_COOKIE]), address)
        else:
            await self.app(scope, receive, send)

    def _check_session(self, server, token: str) -> None:
        """End the session now if it is too old, its account disabled, or its password changed since."""
        name = server.tokens[token]
        started = self.sessions.get(token, (name, None))[1]
        lifetime = timedelta(hours=self.cfg.app.session_hours)
        reason = (
            "session not begun through this app's login"
            if started is None
            else "session expired"
            if datetime.now(UTC) - started > lifetime
            else self.store.session_allowed(name, started)
        )
        if reason is None:
            return
        server.tokens.pop(token, None)
        self.sessions.pop(token, None)
        self.store.record_event("session.ended", actor=name, target=name, detail={"reason": reason})

    async def _login(self, scope, receive, send, address: str | None) -> None:
        attempt = LoginTry(address)
        reset = _LOGIN_TRY.set(attempt)
        headers = dict(scope.get("headers", []))
        browser = headers.get(b"content-type", b"").startswith(b"multipart/form-data")  # Gradio's login form
        replaced = False

        async def send_login(message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start":
                if message["status"] == 400 and attempt.message:
                    replaced = True
                    await _send_refusal(send, attempt, browser, self.store.settings.accounts.lock_seconds)
                    return
                if message["status"] == 200 and attempt.name:
                    self._register(message, scope["app"], attempt.name)
            elif replaced:
                return
            await send(message)

        try:
            await self.app(scope, receive, send_login)
        finally:
            _LOGIN_TRY.reset(reset)

    def _register(self, start: dict, server, name: str) -> None:
        for key, value in start.get("headers", []):
            if key.lower() == b"set-cookie":
                cookie = SimpleCookie(value.decode("latin-1"))
                for morsel in cookie.values():
                    if morsel.key.startswith("access-token-") and morsel.value:
                        self.sessions[morsel.value] = (name, datetime.now(UTC))

    async def _login_page(self, scope, receive, send, server, name: str, address: str | None) -> None:
        """Gradio's login page with the throttled account's message under the app's own text."""
        from gradio.routes import toorjson

        refusal = await asyncio.to_thread(self.store.login_refusal, name, address)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        start: dict = {}
        body = []

        async def capture(message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            text = b"".join(body)
            auth_message = server.get_blocks().auth_message or ""
            notice = f'<p id="login-notice"><b>⚠ {html.escape(refusal.message)}</b></p>'
            text = text.replace(str(toorjson(auth_message)).encode(), str(toorjson(notice + auth_message)).encode(), 1)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send(dict(start, headers=[*headers, (b"content-length", str(len(text)).encode())]))
            await send({"type": "http.response.body", "body": text})

        await self.app(scope, receive, capture)


def _cookies(scope) -> dict[str, str]:
    jar = SimpleCookie()
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header: treat as none  # noqa: BLE001
                continue
    return {k: m.value for k, m in jar.items()}


async def _send_refusal(send, attempt: LoginTry, browser: bool, lock_seconds: int) -> None:
    """A throttled login: Gradio's login form only reloads the page on 200 (and shows a fixed text on 400), so it
    gets a 200 that says ``success: false`` and a cookie naming the account; the reloaded login page shows why.
    Any other client gets 429 with the message."""
    body = json.dumps({"success": False, "detail": attempt.message} if browser else {"detail": attempt.message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body.encode())).encode())]
    if browser:
        cookie = (
            f"{NOTICE_COOKIE}={quote(attempt.name or '')}; Path=/; Max-Age={int(lock_seconds)}; HttpOnly; SameSite=Lax"
        )
        headers.append((b"set-cookie", cookie.encode("latin-1")))
    await send({"type": "http.response.start", "status": 200 if browser else 429, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})


def identify(store: PreferenceStore, username: str | None) -> Annotator:
    """The annotator behind a request: the logged-in account, or "demo" when no account exists."""
    if username:
        annotator = store.annotator_by_name(username)
        if annotator is not None and annotator.disabled:
            raise UserError(f"the account {username!r} is disabled: ask an admin")
        if annotator is not None and annotator.can_login:
            return annotator
        raise UserError(f"no annotator account {username!r}: log in again")
    if store.has_login_accounts():
        raise UserError("this app has annotator accounts: log in first (restart the app after adding the first one)")
    return store.demo_annotator()


def identity_line(annotator: Annotator) -> str:
    """The line under the title that says who is recording judgments."""
    if annotator.name == DEMO_ANNOTATOR and not annotator.can_login:
        return (
            "**本地演示模式 Local demo mode**: 未配置标注账号，评判以 “demo” 身份记录。"
            f' No annotator account is configured, so judgments are recorded as the local "demo" annotator'
            f" (add accounts with `{ADD_ACCOUNT_HINT}` and restart the app)."
        )
    role = "管理员 admin" if annotator.is_admin else "标注员 annotator"
    return f"已登录 Logged in as **{html.escape(annotator.name)}** ({role})."


def request_address(request, cfg: Config) -> str | None:
    """The client address of a Gradio event's request (see :func:`client_address`)."""
    inner = getattr(request, "request", None)
    scope = getattr(inner, "scope", None)
    if scope is not None:
        return client_address(scope, cfg.app)
    client = getattr(request, "client", None)
    return getattr(client, "host", None)


def change_own_password(
    cfg: Config, store: PreferenceStore, username: str | None, old: str, new: str, repeated: str, address: str | None
) -> str:
    """The change-password form: the logged-in annotator's own password, under the policy; the line to show."""
    if not username:
        raise UserError("log in first to change your password")
    if new != repeated:
        raise UserError("the two new passwords differ: type the same one twice")
    store.change_password(username, old, new, address=address)
    return "✓ 密码已更改 password changed: your other sessions end at their next request"


def build_account_box(cfg: Config, store: PreferenceStore):
    """The logged-in account's controls under the title: log out (Gradio's /logout, audited) and change the
    password. Hidden for the demo annotator; shown by the page load for an account."""
    with gr.Row(visible=False, elem_id="account-box") as box:
        gr.Button("退出登录 Log out", link="/logout", size="sm", elem_id="logout", scale=0)
        with gr.Accordion("更改密码 Change password", open=False, elem_id="change-password"):
            old = gr.Textbox(label="当前密码 current password", type="password", elem_id="old-password")
            new = gr.Textbox(
                label=f"新密码 new password (at least {store.settings.accounts.min_password_length} "
                "characters; a few unrelated words)",
                type="password",
                elem_id="new-password",
            )
            again = gr.Textbox(label="再输入一次 new password again", type="password", elem_id="new-password-again")
            save = gr.Button("更改密码 Change password", elem_id="save-password")
            status = gr.Markdown(elem_id="password-status")

    def on_save(old_pw: str, new_pw: str, repeated: str, request: gr.Request):
        try:
            message = change_own_password(
                cfg, store, getattr(request, "username", None), old_pw, new_pw, repeated, request_address(request, cfg)
            )
        except UserError as err:
            message = f"⚠ {html.escape(str(err), quote=False)}"
        return message, "", "", ""

    save.click(on_save, [old, new, again], [status, old, new, again])
    return box
