"""Command-line entry points of the preference store (dispatched from ``chimed.py``)."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from preference_store.records import Annotator
from preference_store.repository import PreferenceStore
from training.config import Config


def add_annotator(cfg: Config, name: str, role: str = "annotator", password: str = "") -> Annotator:
    """``./launch.sh add-annotator NAME --role annotator|admin`` (the CLI reads the password from stdin)."""
    with PreferenceStore.from_config(cfg) as store:
        annotator = store.add_annotator(name, password, role=role)
    print(f"added {annotator.role} {annotator.name!r} (id {annotator.id}) to {make_url(cfg.database_url).render_as_string(hide_password=True)}")
    return annotator
