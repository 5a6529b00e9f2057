"""Preference-store benchmark: judgments/s with 1 and 32 concurrent writers, and export time.

    .venv/bin/python benchmarks/bench_store.py [--writers 32] [--per-writer 50] [--pairs 100000]

Writers are threads of one process (as in the app, whose browser sessions share one store) and,
with ``--processes``, also separate processes on one SQLite file (as with several app instances).
Every figure is printed with what produced it; the store lives in a fresh temporary directory.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import load_config  # noqa: E402
from preference_store.exports.pairs import export_pairs  # noqa: E402
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn  # noqa: E402
from preference_store.repository import PreferenceStore  # noqa: E402

RUN = "bench"
STAGES = ["base", "cpt", "sft", "dpo"]
# synthetic, obviously fake identifiers so the export's de-identification has work to do
PROMPT = "患者张三，男，45岁，手机13800000000，头痛三天伴低热，第{n}例，应该怎么处理？"
ANSWERS = [
    "建议多休息、多饮水，观察体温变化。",
    "可能是感冒，必要时就医。",
    "头痛伴发热应及时就诊，排除感染。",
    "不清楚。",
]


def prepare(store: PreferenceStore, n: int, panels: int, tag: str = "") -> list[tuple[str, int]]:
    """``n`` recorded comparisons with distinct texts; returns (comparison id, annotator id)."""
    annotator = store.demo_annotator()
    out = []
    for i in range(n):
        responses = [
            ResponseIn(f"{RUN}/{STAGES[p]}", f"{ANSWERS[p]}（{tag}{i}）", {"temperature": 0.7}, seed=i)
            for p in range(panels)
        ]
        c = store.record_comparison(
            ComparisonIn(annotator.id, [{"role": "user", "content": PROMPT.format(n=f"{tag}{i}")}], responses)
        )
        out.append((c.id, annotator.id))
    return out


def judgment(comparison: tuple[str, int], i: int) -> JudgmentIn:
    cid, aid = comparison
    return JudgmentIn(
        cid,
        aid,
        client_id=uuid.uuid4().hex,
        choice=("A", "B", "tie", "both_bad")[i % 4],
        reason="更安全" if i % 3 == 0 else None,
        scores={"A": {"safety": 4, "correctness": 3, "completeness": 5}},
    )


def writers_threads(store: PreferenceStore, comparisons, writers: int, per_writer: int) -> float:
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers + 1)

    def write(w: int) -> None:
        barrier.wait()
        try:
            for k in range(per_writer):
                i = w * per_writer + k
                store.submit_judgment(judgment(comparisons[i % len(comparisons)], i))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} writers failed: {errors[0]!r}")
    return elapsed


def _process_writer(url, comparisons, w, per_writer, barrier, results):
    store = PreferenceStore(url)
    barrier.wait()
    try:
        for k in range(per_writer):
            i = w * per_writer + k
            store.submit_judgment(judgment(comparisons[i % len(comparisons)], i))
        results.put(None)
    except BaseException as err:  # noqa: BLE001
        results.put(repr(err))


def writers_processes(url: str, comparisons, writers: int, per_writer: int) -> float:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_process_writer, args=(url, comparisons, w, per_writer, barrier, results))
        for w in range(writers)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    outcomes = [results.get() for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    failed = [o for o in outcomes if o]
    if failed:
        raise SystemExit(f"{len(failed)} writer processes failed: {failed[0]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--per-writer", type=int, default=50)
    parser.add_argument("--single", type=int, default=500, help="judgments for the one-writer figure")
    parser.add_argument("--pairs", type=int, default=100_000, help="pairs to export")
    parser.add_argument("--processes", action="store_true", help="also run the writers as processes")
    args = parser.parse_args()
    cfg = load_config("demo")

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        store = PreferenceStore(url, cfg.store)
        store.register_checkpoints(RUN, STAGES)
        comparisons = prepare(store, 200, panels=2)

        start = time.perf_counter()
        for i in range(args.single):
            store.submit_judgment(judgment(comparisons[i % len(comparisons)], i))
        single = args.single / (time.perf_counter() - start)
        print(f"1 writer: {single:.0f} judgments/s ({args.single} judgments)")

        total = args.writers * args.per_writer
        before = store.count_judgments()
        elapsed = writers_threads(store, comparisons, args.writers, args.per_writer)
        stored = store.count_judgments() - before
        print(
            f"{args.writers} writer threads x {args.per_writer}: {total / elapsed:.0f} judgments/s "
            f"({stored} of {total} stored, no error)"
        )
        if args.processes:
            before = store.count_judgments()
            elapsed = writers_processes(url, comparisons, args.writers, args.per_writer)
            stored = store.count_judgments() - before
            print(
                f"{args.writers} writer processes x {args.per_writer}: {total / elapsed:.0f} judgments/s "
                f"({stored} of {total} stored, no error)"
            )
        store.close()

        if args.pairs:
            export_store = PreferenceStore(f"sqlite:///{Path(tmp) / 'export.db'}", cfg.store)
            export_store.register_checkpoints(RUN, STAGES)
            comparisons = prepare(export_store, -(-args.pairs // 6), panels=4)  # a ranking of 4 = 6 pairs
            print(f"filling: {len(comparisons)} four-answer comparisons", flush=True)
            for cid, aid in comparisons:
                export_store.submit_judgment(JudgmentIn(cid, aid, ranking={"A": 1, "B": 2, "C": 3, "D": 4}))
            start = time.perf_counter()
            summary = export_pairs(cfg, out=Path(tmp) / "pairs.jsonl", store=export_store)
            elapsed = time.perf_counter() - start
            print(
                f"export of {len(summary.pair_ids)} pairs: {elapsed:.1f} s "
                f"(train {summary.train}, heldout {summary.heldout}, redacted {summary.redactions})"
            )
            export_store.close()


if __name__ == "__main__":
    main()
