"""``export-prefs``: collected pairs -> a de-identified dpo.jsonl file the ChiMed builder merges.

Each record is in the dpo.jsonl format of docs/design.md plus ``split`` and ``provenance``:

    {"prompt": [messages], "chosen": [{"role": "assistant", "content": ...}], "rejected": [...],
     "source": "clinician", "pair_id": "clin-...", "split": "train" | "heldout", "weight": 0.0-1.0 | null,
     "provenance": {"pair_id", "judgment_id", "comparison_id", "judgment_kind", "annotator" (a salted
                    pseudonym, never the name), "chosen_checkpoint" (null = the clinician's correction),
                    "rejected_checkpoint", "chosen_serving", "rejected_serving" (how each answer was
                    served, e.g. {"mode": "exact"}; null for a correction or where it was not recorded),
                    "judged_at", "agreement": {"share", "annotators"}, "blind",
                    "votes": {"for", "against", "ties"}}}

``agreement`` is measured on bank prompts, where several annotators judged the same two checkpoints: the
share of them whose verdict agrees with this pair's direction (its own annotator included) and how many
they were; ``share`` is null where only one annotator judged them (any prompt outside the bank). With
``store.min_agreement`` above 0, pairs whose measured share is below it are left out of the file and
not logged, so a later export reconsiders them once more annotators have judged (the summary counts them).

``weight`` (since 2026-12-07; older files have none, and the builder reads them as before) is the Dawid-Skene
posterior probability that the pair's direction is right (:mod:`preference_store.statistics.reliability`): it
counts how many annotators agreed and how reliable each of them is on the overlap judgments. Null for a
correction, a prompt outside the bank, or while no two annotators judged the same prompt. The alignment stages
use it as a per-example loss weight with ``align.pair_weights: agreement`` (a null weight counts 1).

``blind`` says whether the judge could not see which checkpoint wrote which answer. Pairs of unblinded
comparisons (an admin's ``blind=False``, or a later turn of a conversation whose names a judgment revealed) are
left out unless ``store.admit_unblinded`` (not logged either: turning it on later admits them); only the live
judgment of each annotator and comparison makes pairs (a revised one is history).

``votes`` counts the annotators' votes on the same prompt and the same two answers (:mod:`preference_store.votes`):
for this pair's direction, against it, and ties. ``store.aggregate`` decides what they send to training: with
``majority`` (the default) one pair in the direction more than half of the votes took, and none for a split or
tied vote; with ``unanimous`` only a direction every vote took; with ``all`` every annotator's pair. Pairs it
leaves out are counted in the summary and not logged, so a later export reconsiders them as votes come in.

The held-out share is chosen by prompt: every pair of a comparison shares its prompt, so a
comparison is never split between train and held-out, and a prompt asked again in another
comparison (a regenerate) lands on the same side. A comparison on a bank prompt goes to that
prompt's own split instead. Pairs whose de-identified (prompt, chosen,
rejected) was already written are left out as duplicates (an agreeing annotator's pair is one of the votes of the
pair written first), and so are pairs whose two answers are the same text (two checkpoints can answer alike; such
a pair teaches DPO nothing). By default only pairs no earlier export handled are written; the export log records
which pair went into which file, with its sha256. An export for inspection (``mark=False``: ``export-prefs --out
FILE`` without ``--for-training``) writes the same file but logs nothing, so the loop's next export still finds
every pair: only an export that feeds training marks pairs as handled.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

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
from preference_store.records import ExportSummary
from preference_store.repository import PreferenceStore
from preference_store.votes import KEEP, OUTVOTED, SPLIT, VoteTally


def default_export_path(cfg: Config) -> Path:
    """A new file in the collected-pairs folder the ChiMed builder reads."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return cfg.collected_pairs_dir / f"clinician-{stamp}.jsonl"


def export_pairs(
    cfg: Config,
    out: str | Path | None = None,
    since: str | datetime | None = None,
    include_exported: bool = False,
    store: PreferenceStore | None = None,
    mark: bool = True,
) -> ExportSummary:
    """Write the de-identified pairs not yet exported (all with ``include_exported``) to ``out``.

    ``out`` defaults to a new file in ``cfg.collected_pairs_dir``; an existing file is never
    overwritten. Nothing is written (``path`` None) when there is nothing new. ``mark`` logs the export, so
    later exports leave its pairs out; an export for inspection passes False and leaves them to the loop.
    """
    since_utc = parse_since(since)
    path = Path(out) if out else default_export_path(cfg)
    return with_export_store(
        cfg, path, store, lambda store: _export(cfg, store, path, since_utc, include_exported, mark)
    )


def vote_tally(cfg: Config, store: PreferenceStore) -> VoteTally:
    """Every live vote the export may count (blind ones only unless ``store.admit_unblinded``), by prompt and answers."""
    tally = VoteTally()
    for row in store.export_rows():
        if row.blind or cfg.store.admit_unblinded:
            tally.add_pair(row.annotator_id, row.prompt, row.chosen, row.rejected)
    for annotator_id, messages, texts, blind in store.tie_votes():
        if blind or cfg.store.admit_unblinded:
            tally.add_tie(annotator_id, messages, texts)
    return tally


def _export(
    cfg: Config, store: PreferenceStore, path: Path, since: datetime | None, include_exported: bool, mark: bool
) -> ExportSummary:
    redactions: Counter = Counter()
    written_hashes = {} if include_exported else store.exported_content()
    prompts: dict[str, tuple[list[dict], str, str]] = {}  # comparison -> (de-identified prompt, its json, split)
    pseudonyms: dict[int, str] = {}
    texts: dict[str, str] = {}  # answer text -> de-identified (answers recur across a ranking's pairs)
    lines, entries, pair_ids, splits = [], [], [], Counter()
    duplicates = same_text = empty_answer = low_agreement = unblinded = 0
    left_out_by_votes: Counter = Counter()  # OUTVOTED | SPLIT -> pairs
    agreements = store.pair_agreement()  # pair id -> (share agreeing, annotators), bank prompts only
    weights = store.pair_weights()  # pair id -> Dawid-Skene posterior of its direction, bank prompts only
    tally = vote_tally(cfg, store)

    def clean(text: str) -> str:
        if text not in texts:
            texts[text] = deidentify(text, redactions)
        return texts[text]

    rows = store.export_rows(since=since, unexported_only=not include_exported)
    for row in tqdm(rows, desc="export-prefs", unit="pair", mininterval=1.0):
        if row.comparison_id not in prompts:
            prompt = deidentify_messages(row.prompt, redactions)
            key = json.dumps(prompt, ensure_ascii=False, sort_keys=True)
            prompts[row.comparison_id] = (prompt, key, export_split(row.bank_split, key, cfg.store.heldout_share))
        prompt, prompt_key, split = prompts[row.comparison_id]
        chosen, rejected = clean(row.chosen), clean(row.rejected)
        content = hashlib.sha256(json.dumps([prompt_key, chosen, rejected], ensure_ascii=False).encode()).hexdigest()
        if row.annotator_id not in pseudonyms:
            pseudonyms[row.annotator_id] = store.pseudonym(row.annotator_id)
        if not chosen.strip() or not rejected.strip():  # an empty answer: nothing to learn, the builder refuses it
            entries.append((row.pair_id, content, split, row.pair_id))  # logged as handled, written nowhere
            empty_answer += 1
            continue
        if chosen.strip() == rejected.strip():  # two answers alike: DPO learns nothing from it, the builder refuses it
            entries.append((row.pair_id, content, split, row.pair_id))  # logged as handled, written nowhere
            same_text += 1
            continue
        if not row.blind and not cfg.store.admit_unblinded:
            unblinded += 1  # not logged: exported once store.admit_unblinded admits it
            continue
        votes = tally.votes(row.prompt, row.chosen, row.rejected)
        verdict = votes.verdict(cfg.store.aggregate)
        if verdict != KEEP:
            left_out_by_votes[verdict] += 1  # not logged: reconsidered as more votes come in
            continue
        share, annotators = agreements.get(row.pair_id, (None, 1))
        if share is not None and share < cfg.store.min_agreement:
            low_agreement += 1  # not logged: reconsidered by the next export
            continue
        if content in written_hashes:
            entries.append((row.pair_id, content, split, written_hashes[content]))
            duplicates += 1
            continue
        written_hashes[content] = row.pair_id
        record = {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "source": SOURCE,
            "pair_id": row.pair_id,
            "split": split,
            "weight": weights.get(row.pair_id),
            "provenance": {
                "pair_id": row.pair_id,
                "judgment_id": row.judgment_id,
                "comparison_id": row.comparison_id,
                "judgment_kind": row.kind,
                "annotator": pseudonyms[row.annotator_id],
                "chosen_checkpoint": row.chosen_checkpoint,
                "rejected_checkpoint": row.rejected_checkpoint,
                "chosen_serving": row.chosen_serving,
                "rejected_serving": row.rejected_serving,
                "judged_at": row.created.isoformat(),
                "agreement": {"share": share, "annotators": annotators},
                "blind": row.blind,
                "votes": votes.as_dict(),
            },
        }
        lines.append(json.dumps(record, ensure_ascii=False))
        entries.append((row.pair_id, content, split, None))
        pair_ids.append(row.pair_id)
        splits[split] += 1

    summary = dict(
        pair_ids=pair_ids,
        train=splits["train"],
        heldout=splits["heldout"],
        duplicates=duplicates,
        same_text=same_text,
        empty_answer=empty_answer,
        low_agreement=low_agreement,
        unblinded=unblinded,
        outvoted=left_out_by_votes[OUTVOTED],
        split_votes=left_out_by_votes[SPLIT],
        aggregate=cfg.store.aggregate,
        marked=mark,
        redactions=dict(redactions),
    )
    if not entries or (not mark and not lines):
        return ExportSummary(path=None, sha256=None, **summary)
    if not mark:  # for inspection: the file alone, no log, so the loop's export still finds these pairs
        digest, _ = write_logged(path, lines, lambda where, sha256, move_into_place: move_into_place())
        return ExportSummary(path=path, sha256=digest, **summary)
    if not lines:  # only duplicates: log them so they are not considered again, write no file
        export_id = store.record_export("", "", entries)
        return ExportSummary(path=None, sha256=None, export_id=export_id, **summary)

    digest, export_id = write_logged(
        path,
        lines,
        lambda where, sha256, move_into_place: store.record_export(
            where, sha256, entries, before_commit=move_into_place
        ),
    )
    return ExportSummary(path=path, sha256=digest, export_id=export_id, **summary)


def loop_report(summary: ExportSummary, store: PreferenceStore) -> str:
    """The line train-all prints for the loop's export: how many clinician pairs go into this round, and when the
    store holds judgments but none do, why (already exported, unblinded, outvoted, split, ties, ...)."""
    if summary.pair_ids:
        return (
            f"preferences: {len(summary.pair_ids)} new clinician pairs go into this round "
            f"({summary.train} train, {summary.heldout} held out) from {summary.path}"
        )
    judgments = store.counts().judgments
    if not judgments:
        return "preferences: 0 clinician pairs go into this round: the store holds no judgments yet"
    ties = sum(1 for _ in store.tie_votes())
    reasons = [
        (store.handled_pairs(), "already exported by an earlier export (a round or export-prefs)"),
        (summary.unblinded, "judged with the names shown (store.admit_unblinded admits them)"),
        (summary.outvoted, f"outvoted on the same prompt and answers (store.aggregate={summary.aggregate})"),
        (summary.split_votes, f"split or tied votes (store.aggregate={summary.aggregate})"),
        (summary.low_agreement, "below store.min_agreement"),
        (summary.duplicates, "duplicates of pairs already exported"),
        (summary.same_text, "two answers with the same text"),
        (summary.empty_answer, "an empty answer on one side"),
        (ties, "votes for a tie or both bad, which make no pair"),
    ]
    why = "; ".join(f"{n} {what}" for n, what in reasons if n) or "none of the judgments made a pair"
    return (
        f"preferences: 0 clinician pairs go into this round although the store holds {judgments} "
        f"judgment{'s' if judgments != 1 else ''}: {why}"
    )


def format_summary(summary: ExportSummary) -> str:
    """The lines export-prefs prints: where, how many, what was redacted."""
    redacted = format_redactions(summary.redactions)
    if summary.path is None:
        head = "nothing new to export"
    else:
        head = (
            f"exported {len(summary.pair_ids)} pairs (train {summary.train}, heldout {summary.heldout}) "
            f"to {summary.path}\nsha256 {summary.sha256}"
        )
        if not summary.marked:
            head += (
                "\nfor inspection: not marked as exported, the next train-all still trains on these pairs "
                "(--for-training marks them)"
            )
    return (
        f"{head}\nduplicates left out: {summary.duplicates}\n"
        f"left out because chosen and rejected say the same: {summary.same_text}\n"
        + (f"left out because one answer is empty: {summary.empty_answer}\n" if summary.empty_answer else "")
        + (
            f"left out because most votes on the same prompt and answers went the other way "
            f"(store.aggregate={summary.aggregate}): {summary.outvoted}\n"
            if summary.outvoted
            else ""
        )
        + (
            f"left out because the votes on the same prompt and answers are split or tied "
            f"(store.aggregate={summary.aggregate}): {summary.split_votes}\n"
            if summary.split_votes
            else ""
        )
        + (
            f"left out because annotators agree less than store.min_agreement: {summary.low_agreement}\n"
            if summary.low_agreement
            else ""
        )
        + (
            f"left out because the judge saw the names (unblinded; store.admit_unblinded admits them): "
            f"{summary.unblinded}\n"
            if summary.unblinded
            else ""
        )
        + f"redacted: {redacted}"
    )
