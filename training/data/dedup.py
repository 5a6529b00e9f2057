"""Deduplication of the training splits, after Lee et al. 2022 ("Deduplicating Training Data Makes
Language Models Better"): exact duplicates by a hash of the normalized text, then near duplicates by
MinHash LSH over character n-gram shingles (datasketch), each candidate confirmed by its true
Jaccard similarity so the result does not depend on LSH false positives.

Records are visited in order and the first of a group is kept, so the result is deterministic.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable

from datasketch import MinHash, MinHashLSH
from tqdm import tqdm

from core.config import DataConfig

NOT_CONTENT = re.compile(r"[\s\W_]+", re.UNICODE)  # whitespace and punctuation


def normalize(text: str) -> str:
    """Compatibility-normalized, case-folded text without whitespace and punctuation."""
    return NOT_CONTENT.sub("", unicodedata.normalize("NFKC", text).casefold())


def record_text(record: dict) -> str:
    """The text of any split's record: CPT text, a conversation, or a pair's prompt + chosen + rejected."""
    if "text" in record:
        return record["text"]
    if "messages" in record:
        messages = record["messages"]
    else:
        messages = record["prompt"] + record["chosen"] + record["rejected"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def shingles(text: str, n: int) -> set[str]:
    return {text[i : i + n] for i in range(max(1, len(text) - n + 1))}


def deduplicate(
    records: list[dict], cfg: DataConfig, name: str, exempt: Callable[[dict], bool] = lambda r: False
) -> tuple[list[dict], dict]:
    """(kept records, {"exact": removed, "near": removed, "kept": n}).

    ``exempt`` records are kept as they are and not matched against: clinician pairs, which the store's
    export already deduplicated by content, whose ranking pairs share their prompt and answers by design,
    and whose pair ids must all reach the run that trains on them.
    """
    seen: set[bytes] = set()
    exact = near = 0
    lsh = MinHashLSH(threshold=cfg.minhash_threshold, num_perm=cfg.minhash_num_perm)
    kept_shingles: dict[int, set[str]] = {}
    kept = []
    template = MinHash(num_perm=cfg.minhash_num_perm, seed=cfg.seed)  # the permutations, drawn once
    for index, record in enumerate(tqdm(records, desc=f"dedup {name}", unit="record", mininterval=1.0)):
        if exempt(record):
            kept.append(record)
            continue
        text = normalize(record_text(record))
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        if digest in seen:
            exact += 1
            continue
        seen.add(digest)
        grams = shingles(text, cfg.dedup_ngram)
        sketch = MinHash(
            num_perm=cfg.minhash_num_perm, seed=cfg.seed, permutations=template.permutations, scheme=template.scheme
        )
        sketch.update_batch(g.encode("utf-8") for g in grams)
        if any(jaccard(grams, kept_shingles[other]) >= cfg.minhash_threshold for other in lsh.query(sketch)):
            near += 1
            continue
        lsh.insert(index, sketch)
        kept_shingles[index] = grams
        kept.append(record)
    return kept, {"exact": exact, "near": near, "kept": len(kept)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0
