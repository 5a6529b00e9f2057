"""Command-line entry points of the preference store (dispatched from ``chimed.py``)."""

from __future__ import annotations

import getpass

from sqlalchemy.engine import make_url

from core.config import Config
from preference_store.records import Annotator
from preference_store.repository import PreferenceStore


def cli_actor() -> str:
    """Who the audit log names for a command-line action: the operating-system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def add_annotator(cfg: Config, name: str, role: str = "annotator", password: str = "") -> Annotator:
    """``./launch.sh add-annotator NAME --role annotator|admin`` (the CLI reads the password from stdin); the
    password must meet the policy (store.accounts)."""
    with PreferenceStore.from_config(cfg) as store:
        annotator = store.add_annotator(name, password, role=role, enforce_policy=True, actor=cli_actor())
    print(
        f"added {annotator.role} {annotator.name!r} (id {annotator.id}) to {make_url(cfg.database_url).render_as_string(hide_password=True)}"
    )
    return annotator


def report_superseded(cfg: Config) -> int:
    """``./launch.sh judgment-duplicates``: the judgments and single-answer ratings kept as history, each with
    the one that counts instead: second votes stored before one judgment per comparison was the rule (resolved
    by migration 0005, keeping the latest) and explicit revisions. Returns how many duplicates were resolved."""
    with PreferenceStore.from_config(cfg) as store:
        judgments, ratings = store.superseded_judgments(), store.ratings(history=True)
        names = {a.id: a.name for a in store.list_annotators()}
    ratings = [r for r in ratings[::-1] if r.superseded_by is not None]  # oldest first, history only
    resolved = sum(r.superseded_why == "duplicate" for r in [*judgments, *ratings])
    print(
        f"{len(judgments)} judgments and {len(ratings)} single-answer ratings kept as history (superseded): "
        f"{resolved} duplicates resolved when the store was migrated (the latest kept), the rest revised"
    )
    for j in judgments:
        verdict = j.choice or (f"ranking {j.ranking}" if j.ranking else "correction")
        print(
            f"judgment {j.id} ({j.superseded_why}) of comparison {j.comparison_id} by {names.get(j.annotator_id)}: "
            f"{j.kind} {verdict} of {j.created:%Y-%m-%d %H:%M} UTC, {len(j.pair_ids)} pairs left out; "
            f"counts instead: {j.superseded_by}"
        )
    for r in ratings:
        print(
            f"rating {r.id} ({r.superseded_why}) of answer {r.label} of comparison {r.comparison_id} by "
            f"{names.get(r.annotator_id)}: {'up' if r.up else 'down'} of {r.created:%Y-%m-%d %H:%M} UTC; "
            f"counts instead: {r.superseded_by}"
        )
    return resolved


def set_account_enabled(cfg: Config, name: str, enabled: bool) -> None:
    """``./launch.sh add-annotator NAME --disable`` / ``--enable``."""
    with PreferenceStore.from_config(cfg) as store:
        store.set_disabled(name, not enabled, actor=cli_actor())
    print(
        f"{'enabled' if enabled else 'disabled'} {name!r}"
        + ("" if enabled else ": its browser sessions and API tokens are refused from their next request")
    )


def set_password(cfg: Config, name: str, password: str) -> None:
    """``./launch.sh passwd NAME`` (the new password from stdin, under the policy)."""
    with PreferenceStore.from_config(cfg) as store:
        store.set_password(name, password, actor=cli_actor())
    print(f"changed the password of {name!r}: its other browser sessions end at their next request")


def unlock_account(cfg: Config, name: str) -> None:
    """``./launch.sh unlock NAME``: forget the account's failed logins (every address)."""
    with PreferenceStore.from_config(cfg) as store:
        store.unlock(name, actor=cli_actor())
    print(f"unlocked {name!r}: it may log in again now")
