"""``stats.json`` and ``stats.md``: the analogue of the Qilin-Med paper's Tables 1-3 (ChiMed-CPT /
SFT / DPO per source: records, characters, average length, turns, pairs), the eval sets, the dedup
and decontamination counts, the skipped input lines, and a sha256 of every output file.

Nothing time- or machine-dependent goes in, so the same config and seed give the same bytes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from core.files import sha256_file


def _content_chars(messages: list[dict]) -> int:
    return sum(len(m["content"]) for m in messages)


def _per_source(records: list[dict], measure) -> dict:
    """{"total": row, "by_source": {source: row}} where ``measure(record)`` gives the row's numbers."""
    groups = defaultdict(list)
    for record in records:
        groups[record.get("source", "")].append(record)
    table = {source: _row(group, measure) for source, group in sorted(groups.items())}
    return {"total": _row(records, measure), "by_source": table}


def _row(records: list[dict], measure) -> dict:
    sums: dict[str, float] = defaultdict(float)
    for record in records:
        for key, value in measure(record).items():
            sums[key] += value
    row = {"records": len(records), **{k: int(v) for k, v in sums.items()}}
    for key, value in sums.items():
        row[f"avg_{key}"] = round(value / len(records), 1) if records else 0.0
    return row


def describe_cpt(records: list[dict]) -> dict:
    return _per_source(records, lambda r: {"chars": len(r["text"])})


def describe_sft(records: list[dict]) -> dict:
    return _per_source(
        records,
        lambda r: {
            "chars": _content_chars(r["messages"]),
            "turns": sum(1 for m in r["messages"] if m["role"] == "assistant"),
        },
    )


def describe_dpo(records: list[dict]) -> dict:
    return _per_source(
        records,
        lambda r: {
            "chars": _content_chars(r["prompt"] + r["chosen"] + r["rejected"]),
            "prompt_chars": _content_chars(r["prompt"]),
            "chosen_chars": _content_chars(r["chosen"]),
            "rejected_chars": _content_chars(r["rejected"]),
        },
    )


def describe_eval(sets: dict[str, list[dict]]) -> dict:
    out = {}
    for name, items in sets.items():
        by = defaultdict(int)
        for item in items:
            by[item.get("subject") or item.get("source") or ""] += 1
        out[name] = {"records": len(items), "by_subject_or_source": dict(sorted(by.items()))}
    return out


def describe_files(root: Path, names: list[str]) -> dict:
    out = {}
    for name in names:
        path = root / name
        with open(path, "rb") as fh:
            lines = sum(1 for line in fh if line.strip())
        out[name] = {"records": lines, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return out


# --- stats.md ------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _source_rows(split: dict, columns: list[str]) -> list[list]:
    rows = [[source] + [row.get(c, "") for c in columns] for source, row in split["by_source"].items()]
    return rows + [["**all**"] + [split["total"].get(c, "") for c in columns]]


def stats_markdown(stats: dict) -> str:
    """The human-readable stats: one table per split (paper Tables 1-3), eval sets, dedup, decontamination."""
    out = [
        "# ChiMed statistics",
        "",
        f"Profile `{stats['profile']}`, seed {stats['seed']}; {stats['entities']['selected']:,} CMeKG "
        f"entities ({stats['entities']['train']:,} for training, {stats['entities']['held_out']:,} held out "
        "for the exam, QA and held-out pairs). Research and education only.",
        "",
    ]
    out += [
        "## Table 1. ChiMed-CPT",
        "",
        _table(
            ["source", "records", "characters", "avg characters"],
            _source_rows(stats["splits"]["cpt"], ["records", "chars", "avg_chars"]),
        ),
        "",
    ]
    out += [
        "## Table 2. ChiMed-SFT",
        "",
        _table(
            ["source", "conversations", "assistant turns", "avg turns", "characters", "avg characters"],
            _source_rows(stats["splits"]["sft"], ["records", "turns", "avg_turns", "chars", "avg_chars"]),
        ),
        "",
    ]
    out += [
        "## Table 3. ChiMed-DPO",
        "",
        _table(
            ["source", "pairs", "avg prompt chars", "avg chosen chars", "avg rejected chars"],
            _source_rows(
                stats["splits"]["dpo"], ["records", "avg_prompt_chars", "avg_chosen_chars", "avg_rejected_chars"]
            ),
        ),
        "",
    ]
    out += [
        "## General pretraining text of the base model (`base.jsonl`; tiny/demo pretrain their base on it)",
        "",
        _table(
            ["source", "records", "characters", "avg characters"],
            _source_rows(stats["splits"]["base"], ["records", "chars", "avg_chars"]),
        ),
        "",
    ]
    out += [
        "## Evaluation sets",
        "",
        _table(
            ["set", "records", "by subject / source"],
            [
                [name, s["records"], ", ".join(f"{k or '-'} {v}" for k, v in s["by_subject_or_source"].items())]
                for name, s in stats["eval"].items()
            ],
        ),
        "",
    ]
    if safety := stats.get("safety"):  # training/data/safety.py, docs/safety.md
        pools = ", ".join(f"{pool} {n}" for pool, n in safety["by_pool"].items())
        unsettled = ", ".join(f"{reason} {n}" for reason, n in safety["unsettled_left_out"].items())
        out += [
            f"Safety exam: {safety['items']} items ({pools or 'none'}) about {safety['entities_asked']} entities; "
            f"left out as unsettled by CMeKG: {safety['unsettled_left_out_total']} ({unsettled or 'none'}).",
            "",
        ]
    out += [
        "## Deduplication (exact normalized hash, then MinHash LSH near duplicates)",
        "",
        _table(
            ["split", "exact duplicates removed", "near duplicates removed", "kept"],
            [[split, d["exact"], d["near"], d["kept"]] for split, d in stats["dedup"].items()],
        ),
        "",
    ]
    removed = stats["decontamination"]["removed_eval_questions"]
    n = stats["decontamination"]["ngram"]
    splits = list(stats["splits"])
    out += [
        f"## Decontamination ({n}-character n-gram overlap of eval items with each training split)",
        "",
        "Training records that asked an eval question and were removed: "
        + ", ".join(f"{k} {v}" for k, v in removed.items())
        + ".",
        "",
        _table(
            ["eval set"] + splits,
            [
                [name] + [f"{row[s]['items']:,} / {row[s]['of']:,} ({row[s]['share']:.1%})" for s in splits]
                for name, row in stats["decontamination"]["overlap"].items()
            ],
        ),
        "",
    ]
    skipped = stats["input_errors"]
    out += [
        "## Input files",
        "",
        f"Malformed lines skipped: {skipped['skipped']:,}"
        + "".join(f"; {path}: {count:,}" for path, count in skipped["by_file"].items())
        + "".join(f"; left out on purpose ({why}): {count:,}" for why, count in skipped["unsupported"].items())
        + ".",
        "",
    ]
    out += [
        "## Files",
        "",
        _table(
            ["file", "records", "bytes", "sha256"],
            [[f"`{name}`", f["records"], f["bytes"], f"`{f['sha256']}`"] for name, f in stats["files"].items()],
        ),
        "",
    ]
    return "\n".join(out)
