"""``export-judgments``: the study's raw data as one table, for pandas or R: one row per judgment, per
single-answer rating and per 1-5 criterion score, live and superseded, as CSV (or Parquet where pyarrow is
installed). The columns are :data:`COLUMNS` (docs/study.md "Annotation study" describes each).

De-identified as the pair export is: the annotator is the same salted pseudonym (``store.pseudonym``), the
prompt, correction and reason pass through :mod:`preference_store.deid.detect`, and a prompt outside the bank gets
the same split as its pairs (:func:`~preference_store.exports.rules.export_split`). This export is for
inspection: it logs nothing as exported, so the loop's next export is unchanged; one audit row records it.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from core.config import Config
from core.errors import UserError
from preference_store.deid.detect import deidentify, deidentify_messages
from preference_store.exports.rules import export_split, format_redactions, with_export_store
from preference_store.records import PANEL_LABELS
from preference_store.repository import PreferenceStore, StudyRecord

# (name, pyarrow type name) in file order
COLUMNS = (
    ("record", "string"),
    ("id", "string"),
    ("annotator", "string"),
    ("comparison_id", "string"),
    ("contestants", "string"),
    ("kind", "string"),
    ("choice", "string"),
    ("ranking", "string"),
    ("label", "string"),
    ("checkpoint", "string"),
    ("up", "bool"),
    ("criterion", "string"),
    ("score", "int64"),
    ("blind", "bool"),
    ("guideline_version", "int64"),
    ("round", "int64"),
    ("prompt_id", "string"),
    ("split", "string"),
    ("turn", "int64"),
    ("prompt", "string"),
    ("correction", "string"),
    ("reason", "string"),
    ("compared_at", "timestamp"),
    ("judged_at", "timestamp"),
    ("seconds_to_verdict", "double"),
    ("live", "bool"),
    ("superseded_by", "string"),
    ("superseded_why", "string"),
)
FORMATS = (".csv", ".parquet")


@dataclass(frozen=True)
class JudgmentsExportSummary:
    """What one export-judgments wrote."""

    path: Path
    rows: dict[str, int]  # record (judgment | rating | score) -> rows
    superseded: int  # rows of superseded judgments and ratings (their scores included)
    redactions: dict[str, int]


def export_judgments(
    cfg: Config, out: str | Path, store: PreferenceStore | None = None, actor: str | None = None
) -> JudgmentsExportSummary:
    """Write every judgment, rating and score of the store to ``out`` (.csv, or .parquet with pyarrow),
    de-identified; an existing file is refused. One audit row ("export", ``actor``) records it."""
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"--out {path}: write a .csv file (or .parquet where pyarrow is installed)")
    # pyarrow is optional here: it comes with datasets, not as a dependency of its own
    if path.suffix.lower() == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise UserError(f"--out {path}: Parquet needs pyarrow, which is not installed: write a .csv file")

    def work(store: PreferenceStore) -> JudgmentsExportSummary:
        redactions: Counter = Counter()
        rows = judgment_rows(cfg, store, redactions)
        write_table(path, rows)
        summary = JudgmentsExportSummary(
            path=path,
            rows=dict(Counter(r["record"] for r in rows)),
            superseded=sum(not r["live"] for r in rows),
            redactions=dict(redactions),
        )
        store.record_event(
            "export", actor=actor, target=str(path), detail={"what": "judgments", "rows": len(rows), **summary.rows}
        )
        return summary

    return with_export_store(cfg, path, store, work)


def judgment_rows(cfg: Config, store: PreferenceStore, redactions: Counter) -> list[dict]:
    """The table's rows (dicts keyed by :data:`COLUMNS`), de-identified; ``redactions`` counts what was taken out."""
    prompts: dict[str, tuple[str, int, str]] = {}  # comparison -> (de-identified prompt, turn, split)
    pseudonyms: dict[int, str] = {}
    texts: dict[str, str] = {}

    def clean(text: str | None) -> str | None:
        if not text:
            return text
        if text not in texts:
            texts[text] = deidentify(text, redactions)
        return texts[text]

    rows = []
    for r in store.study_records():
        if r.comparison_id not in prompts:
            messages = deidentify_messages(r.messages, redactions)
            key = json.dumps(messages, ensure_ascii=False, sort_keys=True)  # the pair export's key for its split
            turn = sum(m["role"] == "user" for m in messages)
            prompts[r.comparison_id] = (
                messages[-1]["content"],
                turn,
                export_split(r.bank_split, key, cfg.store.heldout_share),
            )
        prompt, turn, split = prompts[r.comparison_id]
        if r.annotator_id not in pseudonyms:
            pseudonyms[r.annotator_id] = store.pseudonym(r.annotator_id)
        rows.append(_row(r, pseudonyms[r.annotator_id], prompt, turn, split, clean))
    return rows


def _row(r: StudyRecord, annotator: str, prompt: str, turn: int, split: str, clean) -> dict:
    labelled = r.label is not None
    return {
        "record": r.record,
        "id": r.id,
        "annotator": annotator,
        "comparison_id": r.comparison_id,
        "contestants": ";".join(r.contestants),
        "kind": r.kind,
        "choice": r.choice,
        "ranking": ";".join(f"{label}={place}" for label, place in sorted(r.ranking.items())) if r.ranking else None,
        "label": r.label,
        "checkpoint": r.contestants[PANEL_LABELS.index(r.label)] if labelled else None,
        "up": r.up,
        "criterion": r.criterion,
        "score": r.score,
        "blind": r.blind,
        "guideline_version": r.guideline_version,
        "round": r.round,
        "prompt_id": r.bank_prompt_id,
        "split": split,
        "turn": turn,
        "prompt": prompt,
        "correction": clean(r.correction) if r.record != "score" else None,
        "reason": clean(r.reason) if r.record != "score" else None,
        "compared_at": r.compared_at,
        "judged_at": r.judged_at,
        "seconds_to_verdict": round((r.judged_at - r.compared_at).total_seconds(), 3),
        "live": r.superseded_by is None,
        "superseded_by": r.superseded_by,
        "superseded_why": r.superseded_why,
    }


def write_table(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as CSV or Parquet (by the suffix), beside ``path`` under a hidden name first, then moved
    into place: the file appears complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if path.suffix.lower() == ".parquet":
            _write_parquet(tmp, rows)
        else:
            with tmp.open("w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=[name for name, _ in COLUMNS])
                writer.writeheader()
                writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)
        if path.exists():
            raise UserError(f"{path} appeared while exporting: choose another --out")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _csv_value(value):
    """Empty for None, ISO 8601 for a time; booleans as True / False (pandas and R read both)."""
    if value is None:
        return ""
    return value.isoformat() if hasattr(value, "isoformat") else value


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        "string": pa.string(),
        "bool": pa.bool_(),
        "int64": pa.int64(),
        "double": pa.float64(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    schema = pa.schema([(name, types[kind]) for name, kind in COLUMNS])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def format_judgments_summary(summary: JudgmentsExportSummary) -> str:
    """The lines export-judgments prints."""
    counts = ", ".join(
        f"{n} {r}{'' if n == 1 else 's'}" for r in ("judgment", "rating", "score") for n in [summary.rows.get(r, 0)]
    )
    return (
        f"exported {sum(summary.rows.values())} rows ({counts}; {summary.superseded} superseded) to "
        f"{summary.path}\nredacted: {format_redactions(summary.redactions)}"
    )
