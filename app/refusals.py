"""Refusals: a caller asked for what they may not do, or sent what cannot be stored (an annotator calling an
admin action, a second vote, an unknown checkpoint ...). The caller gets gradio's error (``gr.Error``: an
``AppError`` in ``gradio_client``, an error event in the browser), never a 200 with a warning text; the app's
log gets one line, who, which endpoint and why, and no traceback: tracebacks are for real faults.
"""

from __future__ import annotations

import logging

import gradio as gr

from app.auth import ADD_ACCOUNT_HINT
from preference_store.records import Annotator

log = logging.getLogger("chimed.refusals")


def refusal(endpoint: str, who: Annotator | str | None, why: str) -> gr.Error:
    """The error to raise for a refused call of ``endpoint`` (e.g. "/judge") by ``who``; logs the one line."""
    name = who.name if isinstance(who, Annotator) else (who or "an unidentified caller")
    log.warning("refused %s for %s: %s", endpoint, name, why)
    return gr.Error(why, print_exception=False)


def admin_only(annotator: Annotator | None, endpoint: str, what: str) -> None:
    """Refuse ``endpoint``, an admin action (e.g. "/run_export"), unless ``annotator`` is an admin. The tabs
    show these buttons to admins only, so anyone else came through the API: they get an error, not a status
    line that reads like success."""
    if annotator is None or not annotator.is_admin:
        raise refusal(endpoint, annotator, f"only admins can {what}: log in with an admin account ({ADD_ACCOUNT_HINT})")
