"""Keeping the evaluation honest.

1. No exam or QA question string may appear in ChiMed-SFT or ChiMed-DPO: the split by entity
   ensures it for the generated data; :func:`drop_eval_questions` enforces it for imported files too.
2. The decontamination report: for every eval set and every training split, how many eval items
   share at least one character n-gram (``data.decontam_ngram``, normalized text) with that split.
   ChiMed-CPT is expected to overlap with the exam (knowledge injection is what the exam measures);
   SFT and DPO should not.
"""

from __future__ import annotations

from collections import defaultdict

from tqdm import tqdm

from training.data.dedup import normalize


def eval_prompts(exam: list[dict], qa: list[dict]) -> set[str]:
    """Normalized question strings of the exam and the QA set (a multi-turn QA prompt as a whole)."""
    prompts = {normalize(q["question"]) for q in exam}
    prompts |= {normalize(_joined(item["messages"])) for item in qa}
    return prompts


def _joined(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)


def asked_prompts(record: dict) -> list[str]:
    """Every question string a training record contains: each user turn, and each conversation prefix
    that an assistant turn answers (DPO: its prompt)."""
    messages = record.get("messages") or record["prompt"]
    found = [m["content"] for m in messages if m["role"] == "user"]
    if "prompt" in record:
        found.append(_joined([m for m in messages if m["role"] != "system"]))
    else:
        turns = [m for m in messages if m["role"] != "system"]
        found += [_joined(turns[:i]) for i, m in enumerate(turns) if m["role"] == "assistant" and i > 1]
    return found


def drop_eval_questions(records: list[dict], prompts: set[str]) -> tuple[list[dict], int]:
    """(records that ask no eval question, how many were dropped)."""
    kept = [r for r in records if not any(normalize(p) in prompts for p in asked_prompts(r))]
    return kept, len(records) - len(kept)


def training_text(record: dict) -> str:
    """The words of a training record, without role names."""
    if "text" in record:
        return record["text"]
    if "messages" in record:
        return _joined(record["messages"])
    # DPO: prompt, chosen, rejected; KTO: prompt, completion; GRPO: the prompt alone
    return _joined(
        record["prompt"] + record.get("chosen", []) + record.get("rejected", []) + record.get("completion", [])
    )


def eval_item_text(name: str, item: dict) -> str:
    """What of an eval item must not be in training data: the exam question with its answer, the
    question(s) of a QA item or a pair (their reference answers share the house style by design), the text."""
    if name in ("exam", "safety"):
        return item["question"] + item["options"][item["answer"]]
    if name == "general":
        return item["text"]
    return _joined(item.get("messages") or item["prompt"])


def ngrams(text: str, n: int) -> set[str]:
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def overlap_report(eval_sets: dict[str, list[dict]], splits: dict[str, list[dict]], n: int) -> dict:
    """{eval set: {split: {"items": eval items sharing an n-gram with the split, "of": size, "share"}}}.

    Texts are normalized first; an eval item shorter than ``n`` counts when it occurs whole.
    """
    owners: dict[str, list[tuple[str, int]]] = defaultdict(list)  # n-gram -> eval items having it
    short: list[tuple[str, int, str]] = []
    for name, records in eval_sets.items():
        for i, item in enumerate(records):
            text = normalize(eval_item_text(name, item))
            if len(text) < n:
                short.append((name, i, text))
            for gram in ngrams(text, n):
                owners[gram].append((name, i))
    wanted = set(owners)
    report: dict[str, dict] = {name: {} for name in eval_sets}
    for split, records in splits.items():
        hit: set[tuple[str, int]] = set()
        texts = []
        for record in tqdm(records, desc=f"decontamination: {split}", unit="record", mininterval=1.0):
            text = normalize(training_text(record))
            texts.append(text)
            for gram in ngrams(text, n) & wanted:
                hit.update(owners[gram])
        everything = "\0".join(texts)
        hit.update((name, i) for name, i, text in short if text and text in everything)
        for name, records_of_set in eval_sets.items():
            count = sum(1 for owner, _ in hit if owner == name)
            report[name][split] = {
                "items": count,
                "of": len(records_of_set),
                "share": round(count / len(records_of_set), 4) if records_of_set else 0.0,
            }
    return report
