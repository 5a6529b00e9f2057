"""De-identification benchmark: recall/precision per category on the test corpus, the false-change rate
on ChiMed's medical sentences, the protected-name set's load time, and the time to export 100k pairs.

    .venv/bin/python benchmarks/bench_deid.py [--pairs 100000] [--texts-only] [--corpora-only]

Recall and precision are measured on both corpora in tests/fixtures/deid/: ``identifier_lines.jsonl`` (written
with the rules in view) and ``category_list_lines.jsonl`` (written from the category list alone, see its
header); ``--corpora-only`` stops after them.

The export is the real ``export_pairs`` on a synthetic store (as in bench_store.py: 4-answer rankings,
6 pairs each, prompts with a fake name and phone number, every text distinct); ``--texts-only`` times
``deidentify`` alone over the same texts, with the export's caching (each distinct text once).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_store import ANSWERS, PROMPT, RUN, STAGES, prepare  # noqa: E402
from core.config import load_config  # noqa: E402
from preference_store.deid.detect import (  # noqa: E402
    deidentify,
    format_table,
    measure,
    protected_load_seconds,
    segmenter,
)
from preference_store.exports.pairs import export_pairs  # noqa: E402
from preference_store.records import JudgmentIn  # noqa: E402
from preference_store.repository import PreferenceStore  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "deid"


def load(name: str) -> list[dict]:
    lines = (FIXTURES / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip() and not line.startswith("#")]  # "#": a header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--texts-only", action="store_true", help="time deidentify alone, not the export")
    parser.add_argument("--corpora-only", action="store_true", help="measure the corpora, time nothing else")
    args = parser.parse_args()

    print(f"protected CMeKG names: built in {protected_load_seconds():.2f} s")
    start = time.perf_counter()
    segmenter()
    print(f"jieba initialised in {time.perf_counter() - start:.2f} s")
    for corpus in ("identifier_lines.jsonl", "category_list_lines.jsonl"):
        lines = load(corpus)
        start = time.perf_counter()
        result = measure(lines)
        print(f"\n{corpus}: {len(lines)} lines ({time.perf_counter() - start:.2f} s):\n\n{format_table(result)}\n")
    sentences = [row["text"] for row in load("medical_sentences.jsonl")]
    changed = sum(deidentify(s) != s for s in sentences)
    print(f"identifier-free medical sentences changed: {changed} of {len(sentences)} ({changed / len(sentences):.1%})")
    if args.corpora_only:
        return

    comparisons = -(-args.pairs // 6)  # a ranking of 4 answers = 6 pairs
    if args.texts_only:
        texts = [PROMPT.format(n=i) for i in range(comparisons)]
        texts += [f"{ANSWERS[p]}（{i}）" for i in range(comparisons) for p in range(4)]
        counts: Counter = Counter()
        start = time.perf_counter()
        for text in texts:
            deidentify(text, counts)
        elapsed = time.perf_counter() - start
        print(
            f"deidentify over {len(texts)} distinct texts of {args.pairs} pairs: {elapsed:.1f} s "
            f"({len(texts) / elapsed:.0f} texts/s), redacted {dict(counts)}"
        )
        return
    cfg = load_config("demo")
    with tempfile.TemporaryDirectory() as tmp:
        store = PreferenceStore(f"sqlite:///{Path(tmp) / 'export.db'}", cfg.store)
        store.register_checkpoints(RUN, STAGES)
        filled = prepare(store, comparisons, panels=4)
        for cid, aid in filled:
            store.submit_judgment(JudgmentIn(cid, aid, ranking={"A": 1, "B": 2, "C": 3, "D": 4}))
        start = time.perf_counter()
        summary = export_pairs(cfg, out=Path(tmp) / "pairs.jsonl", store=store)
        elapsed = time.perf_counter() - start
        print(f"export of {len(summary.pair_ids)} pairs: {elapsed:.1f} s, redacted {summary.redactions}")
        store.close()


if __name__ == "__main__":
    main()
