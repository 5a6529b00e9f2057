"""The rules both exports of collected data follow (pairs: :mod:`preference_store.exports.pairs`; single-answer
ratings: :mod:`preference_store.exports.ratings`): the source tag of their records, which split a prompt
goes to, how ``--since`` is read, and how a file is written (never over another, atomically with its log)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from core.config import Config
from core.errors import UserError
from preference_store.deid.detect import CATEGORIES, category_label
from preference_store.repository import PreferenceStore

T = TypeVar("T")

SOURCE = "clinician"


def format_redactions(redactions: dict[str, int]) -> str:
    """What an export redacted, per category in :data:`~preference_store.deid.detect.CATEGORIES` order with its
    bilingual label: "姓名 name 2, 电话/传真 phone/fax 1" ("nothing" when nothing was)."""
    known = [c for c in CATEGORIES if redactions.get(c)]
    other = sorted(c for c in redactions if c not in CATEGORIES and redactions[c])
    return (
        ", ".join([f"{category_label(c)} {redactions[c]}" for c in known] + [f"{c} {redactions[c]}" for c in other])
        or "nothing"
    )


def heldout_split(prompt_key: str, heldout_share: float) -> str:
    """ "heldout" for a fixed, deterministic share of prompts (given as canonical json), else "train"."""
    fraction = int.from_bytes(hashlib.sha256(f"heldout|{prompt_key}".encode()).digest()[:8], "big") / 2**64
    return "heldout" if fraction < heldout_share else "train"


def export_split(bank_split: str | None, prompt_key: str, heldout_share: float) -> str:
    """A bank prompt's own split; any other prompt by :func:`heldout_split`."""
    return bank_split or heldout_split(prompt_key, heldout_share)


def parse_since(since: str | datetime | None) -> datetime | None:
    """An ISO-8601 time; without a zone it is read as local time."""
    if since is None or isinstance(since, datetime):
        return since.astimezone(UTC) if since is not None else None
    try:
        return datetime.fromisoformat(since).astimezone(UTC)
    except ValueError:
        raise UserError(f"--since {since!r} is not an ISO-8601 time (e.g. 2024-05-01 or 2024-05-01T09:30)") from None


def with_export_store(
    cfg: Config, path: Path, store: PreferenceStore | None, export: Callable[[PreferenceStore], T]
) -> T:
    """Run ``export`` on ``store`` (the config's, opened and closed here, when None), after refusing an
    output ``path`` that exists: an export never overwrites a file."""
    if path.exists():
        raise UserError(f"{path} exists already: choose another --out (exports never overwrite a file)")
    own_store = store is None
    store = store or PreferenceStore.from_config(cfg)
    try:
        return export(store)
    finally:
        if own_store:
            store.close()


def write_logged(path: Path, lines: list[str], log: Callable[[str, str, Callable[[], None]], T]) -> tuple[str, T]:
    """Write ``lines`` (jsonl) to ``path`` together with its log entry: the file is written beside it under a
    hidden name (readers take ``*.jsonl`` only), and ``log(resolved path, sha256, move_into_place)`` records
    the export, calling ``move_into_place`` inside its transaction, so file and log appear together or not
    at all. Returns the sha256 and what ``log`` returned."""
    data = ("\n".join(lines) + "\n").encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)

    def move_into_place() -> None:
        if path.exists():
            raise UserError(f"{path} appeared while exporting: choose another --out")
        os.replace(tmp, path)

    try:
        return digest, log(str(path.resolve()), digest, move_into_place)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
