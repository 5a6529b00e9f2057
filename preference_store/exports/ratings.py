"""Single-answer ratings -> a de-identified file in the unpaired (KTO) format, for the KTO stage.

One record per line (TRL's unpaired preference format, conversational), plus ``split`` and ``provenance``:

    {"prompt": [messages], "completion": [{"role": "assistant", "content": ...}], "label": true | false,
     "source": "clinician", "rating_id": "...", "split": "train" | "heldout",
     "provenance": {"rating_id", "comparison_id", "annotator" (a salted pseudonym, never the name),
                    "completion_of": "answer" | "correction", "checkpoint" (null for a correction),
                    "serving", "guideline_version", "rated_at"}}

The rated answer is one record, labelled with the thumbs (up = desirable). A correction written with the
rating is one more record, labelled desirable, whatever the thumbs said about the model's answer. Texts
are de-identified like the pairs (:mod:`preference_store.deid.detect`); the split follows the comparison's bank
prompt, or the same by-prompt hash as the pairs. By default only ratings no earlier export wrote are
written; the export log (kind "ratings") records which rating went into which file, with its sha256. An export
for inspection (``mark=False``) writes the same file and logs nothing, so the loop's export still finds them.
The file appears complete or not at all, together with its log entry.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from core.config import Config
from preference_store.deid.detect import deidentify, deidentify_messages
from preference_store.exports.rules import (
    SOURCE,
    export_split,
    format_redactions,
    parse_since,
    with_export_store,
    write_logged,
)
from preference_store.records import RatingsExportSummary
from preference_store.repository import PreferenceStore


def default_ratings_path(cfg: Config) -> Path:
    """A new file in the collected-ratings folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return cfg.collected_ratings_dir / f"clinician-ratings-{stamp}.jsonl"


def export_ratings(
    cfg: Config,
    out: str | Path | None = None,
    store: PreferenceStore | None = None,
    since: str | datetime | None = None,
    include_exported: bool = False,
    mark: bool = True,
) -> RatingsExportSummary:
    """Write the de-identified single-answer ratings not yet exported (all with ``include_exported``) to ``out``.

    ``out`` defaults to a new file in ``cfg.collected_ratings_dir``; an existing file is never
    overwritten. Nothing is written (``path`` None) when there is nothing new. ``mark`` logs the export, so
    later exports leave its ratings out; an export for inspection passes False and leaves them to the loop.
    """
    since_utc = parse_since(since)
    path = Path(out) if out else default_ratings_path(cfg)
    return with_export_store(
        cfg, path, store, lambda store: _export(cfg, store, path, since_utc, include_exported, mark)
    )


def _export(
    cfg: Config, store: PreferenceStore, path: Path, since: datetime | None, include_exported: bool, mark: bool
) -> RatingsExportSummary:
    redactions: Counter = Counter()
    prompts: dict[str, tuple[list[dict], str]] = {}  # comparison -> (de-identified prompt, split)
    pseudonyms: dict[int, str] = {}
    lines, entries, rating_ids, splits = [], [], [], Counter()
    empty_answers = 0

    for row in store.rating_export_rows(since=since, unexported_only=not include_exported):
        if row.comparison_id not in prompts:
            prompt = deidentify_messages(row.prompt, redactions)
            key = json.dumps(prompt, ensure_ascii=False, sort_keys=True)
            prompts[row.comparison_id] = (prompt, export_split(row.bank_split, key, cfg.store.heldout_share))
        prompt, split = prompts[row.comparison_id]
        if row.annotator_id not in pseudonyms:
            pseudonyms[row.annotator_id] = store.pseudonym(row.annotator_id)
        provenance = {
            "rating_id": row.rating_id,
            "comparison_id": row.comparison_id,
            "annotator": pseudonyms[row.annotator_id],
            "guideline_version": row.guideline_version,
            "rated_at": row.created.isoformat(),
        }
        completions = [(deidentify(row.answer, redactions), row.up, "answer", row.checkpoint_id, row.serving)]
        if row.correction:
            completions.append((deidentify(row.correction, redactions), True, "correction", None, None))
        for text, label, of, checkpoint, serving in completions:
            if not text.strip():
                empty_answers += 1
                continue
            record = {
                "prompt": prompt,
                "completion": [{"role": "assistant", "content": text}],
                "label": label,
                "source": SOURCE,
                "rating_id": row.rating_id,
                "split": split,
                "provenance": {**provenance, "completion_of": of, "checkpoint": checkpoint, "serving": serving},
            }
            lines.append(json.dumps(record, ensure_ascii=False))
            splits[split] += 1
        entries.append((row.rating_id, split))
        rating_ids.append(row.rating_id)

    summary = dict(
        rating_ids=rating_ids,
        records=len(lines),
        train=splits["train"],
        heldout=splits["heldout"],
        redactions=dict(redactions),
        empty_answers=empty_answers,
    )
    if not entries or (not mark and not lines):
        return RatingsExportSummary(path=None, sha256=None, **summary)
    if not lines:  # only empty answers: log them as handled, as the pair export does, and write no file
        export_id = store.record_ratings_export("", "", entries, 0)
        return RatingsExportSummary(path=None, sha256=None, export_id=export_id, **summary)
    if not mark:  # for inspection: the file alone, no log
        digest, _ = write_logged(path, lines, lambda where, sha256, move_into_place: move_into_place())
        return RatingsExportSummary(path=path, sha256=digest, **summary)

    digest, export_id = write_logged(
        path,
        lines,
        lambda where, sha256, move_into_place: store.record_ratings_export(
            where, sha256, entries, len(lines), before_commit=move_into_place
        ),
    )
    return RatingsExportSummary(path=path, sha256=digest, export_id=export_id, **summary)


def format_ratings_summary(summary: RatingsExportSummary) -> str:
    """The lines export-prefs prints for the ratings: where, how many, what was redacted."""
    if summary.path is None:
        if summary.empty_answers:
            return (
                f"single-answer ratings: nothing to write: left out because the rated answer is empty: "
                f"{summary.empty_answers} (logged as handled)"
            )
        return "single-answer ratings: nothing new to export"
    redacted = format_redactions(summary.redactions)
    empty = f"left out because the rated answer is empty: {summary.empty_answers}\n" if summary.empty_answers else ""
    return (
        f"exported {len(summary.rating_ids)} single-answer ratings as {summary.records} unpaired records "
        f"(train {summary.train}, heldout {summary.heldout}) to {summary.path}\nsha256 {summary.sha256}\n"
        f"{empty}redacted: {redacted}"
    )
