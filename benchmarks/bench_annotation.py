"""Annotation-study benchmark: 32 annotators working one queue at once, and the export of 100k pairs.

    .venv/bin/python benchmarks/bench_annotation.py [--annotators 32] [--prompts 200] [--k 3]
                                                    [--mode both|threads|processes]
    .venv/bin/python benchmarks/bench_annotation.py --export-pairs 100000

Queue: a bank of ``--prompts`` prompts, each to be judged by ``--k`` annotators. ``--annotators``
annotators work through their queues at the same moment: take the next assignment, record a comparison
of two answers on its prompt, judge it; until their queue is empty. As threads sharing one store (the
app's browser sessions) and as processes each with its own store on the same SQLite file (several app
instances). Afterwards the store is checked, not trusted: no prompt with more than k done or live
assignments, no annotator twice on a prompt, every judgment an annotator made is stored and completed its
assignment, every prompt judged k times. The figures are printed as a markdown table; the script asserts
nothing and exits 0 either way, so the table says what happened.

Export: a synthetic store of bank prompts, each judged by three annotators with rankings of four answers
(6 pairs a ranking), filled with bulk inserts; the time of ``export_pairs`` over all of them (with the
per-pair agreement, once export computes it).

Accounts use a cheap password hash here: logging in is not what is measured.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from argon2 import PasswordHasher  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

from core.config import StoreConfig, load_config  # noqa: E402
from preference_store import models  # noqa: E402
from preference_store.bank_file import prompt_hash  # noqa: E402
from preference_store.exports.pairs import export_pairs  # noqa: E402
from preference_store.models import AssignmentRow, ComparisonRow, JudgmentRow, utcnow  # noqa: E402
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn  # noqa: E402
from preference_store.repository import PreferenceStore, accounts  # noqa: E402

RUN = "bench"
STAGES = ["base", "cpt", "sft", "dpo"]
ANSWERS = [
    "建议多休息、多饮水，观察体温变化。",
    "可能是感冒，必要时就医。",
    "头痛伴发热应及时就诊，排除感染。",
    "不清楚。",
]


def cheap_hashing() -> None:
    accounts._hasher = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


# --- 32 annotators on one queue ---------------------------------------------------------------------------


def work_queue(store: PreferenceStore, annotator_id: int) -> tuple[int, list[float], str | None]:
    """One annotator empties their queue: (judgments made, seconds per take-record-judge cycle, error)."""
    judged, cycles = 0, []
    try:
        while True:
            start = time.perf_counter()
            assignment = store.next_assignment(annotator_id)
            if assignment is None:
                return judged, cycles, None
            prompt = assignment.bank_prompt
            comparison = store.record_comparison(
                ComparisonIn(
                    annotator_id,
                    prompt.messages,
                    [ResponseIn(f"{RUN}/sft", ANSWERS[0] + prompt.prompt[:6]), ResponseIn(f"{RUN}/dpo", ANSWERS[2])],
                    bank_prompt_id=prompt.id,
                    assignment_id=assignment.id,
                )
            )
            store.submit_judgment(
                JudgmentIn(comparison.id, annotator_id, client_id=uuid.uuid4().hex, choice="AB"[judged % 2])
            )
            judged += 1
            cycles.append(time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001 - reported in the table
        return judged, cycles, repr(err)


def run_threads(url: str, settings: StoreConfig, annotator_ids: list[int]) -> tuple[float, list]:
    store = PreferenceStore(url, settings)
    results: list = [None] * len(annotator_ids)
    barrier = threading.Barrier(len(annotator_ids) + 1)

    def annotate(i: int) -> None:
        barrier.wait()
        results[i] = work_queue(store, annotator_ids[i])

    threads = [threading.Thread(target=annotate, args=(i,)) for i in range(len(annotator_ids))]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    store.close()
    return elapsed, results


def _process_annotator(url, settings, annotator_id, barrier, results) -> None:
    store = PreferenceStore(url, settings)
    barrier.wait()
    results.put(work_queue(store, annotator_id))
    store.close()


def run_processes(url: str, settings: StoreConfig, annotator_ids: list[int]) -> tuple[float, list]:
    ctx = mp.get_context("fork")  # the children inherit the imports: starting 32 of them stays cheap
    barrier, queue = ctx.Barrier(len(annotator_ids) + 1), ctx.Queue()
    procs = [ctx.Process(target=_process_annotator, args=(url, settings, a, barrier, queue)) for a in annotator_ids]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    results = [queue.get() for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    return elapsed, results


def check_store(url: str, k: int, n_prompts: int, judged: int) -> dict[str, int]:
    """What the store holds after the run, counted from its tables."""
    with PreferenceStore(url) as store, store._read() as session:
        live = Counter(session.scalars(select(AssignmentRow.bank_prompt_id).where(AssignmentRow.status != "expired")))
        done = Counter(session.scalars(select(AssignmentRow.bank_prompt_id).where(AssignmentRow.status == "done")))
        twice = session.scalar(
            select(func.count()).select_from(
                select(ComparisonRow.bank_prompt_id, ComparisonRow.annotator_id)
                .where(ComparisonRow.bank_prompt_id.is_not(None))
                .group_by(ComparisonRow.bank_prompt_id, ComparisonRow.annotator_id)
                .having(func.count() > 1)
                .subquery()
            )
        )
        judgments = session.scalar(select(func.count()).select_from(JudgmentRow))
    return {
        "over_assigned": sum(1 for n in live.values() if n > k) + sum(1 for n in done.values() if n > k),
        "twice": twice,
        "lost": (judged - judgments) + (judged - sum(done.values())),  # judgments not stored or not completing
        "short": n_prompts - sum(1 for n in done.values() if n == k),  # prompts not judged exactly k times
    }


def queue_benchmark(mode: str, n_annotators: int, n_prompts: int, k: int, tmp: Path) -> dict:
    url = f"sqlite:///{tmp / f'queue-{mode}.db'}"
    settings = StoreConfig(annotators_per_prompt=k)
    with PreferenceStore(url, settings) as store:
        store.register_checkpoints(RUN, STAGES)
        bank = tmp / "bank.jsonl"
        bank.write_text(
            "".join(
                f'{{"prompt": "第{i}例：头痛三天伴低热，应该怎么处理？", "tags": ["神经"]}}\n' for i in range(n_prompts)
            ),
            encoding="utf-8",
        )
        store.import_bank(bank)
        annotator_ids = [store.add_annotator(f"dr_{i}", "pw").id for i in range(n_annotators)]
    elapsed, results = (run_threads if mode == "threads" else run_processes)(url, settings, annotator_ids)
    judged = sum(r[0] for r in results)
    cycles = sorted(c for r in results for c in r[1])
    errors = [r[2] for r in results if r[2]]
    return {
        "mode": mode,
        "annotators": n_annotators,
        "places": n_prompts * k,
        "judged": judged,
        "seconds": elapsed,
        "per_s": judged / elapsed if elapsed else 0.0,
        "p50": statistics.median(cycles) if cycles else 0.0,
        "p95": cycles[int(0.95 * (len(cycles) - 1))] if cycles else 0.0,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        **check_store(url, k, n_prompts, judged),
    }


# --- export of 100k pairs -----------------------------------------------------------------------------


def fill_export_store(url: str, n_pairs: int, annotators: int = 3) -> int:
    """Bank prompts each judged by ``annotators`` annotators with a ranking of four answers (6 pairs each),
    inserted in bulk; returns the number of pairs."""
    n_prompts = -(-n_pairs // (6 * annotators))
    store = PreferenceStore(url)
    store.register_checkpoints(RUN, STAGES)
    ids = [store.add_annotator(f"dr_{a}", "pw").id for a in range(annotators)]
    store.close()
    now = utcnow()
    rows: dict[str, list[dict]] = {name: [] for name in ("bank", "assign", "conv", "cmp", "resp", "judg", "pair")}
    for p in range(n_prompts):
        messages = [{"role": "user", "content": f"患者张三，手机13800000000，第{p}例：头痛三天伴低热，应该怎么处理？"}]
        prompt_id = uuid.uuid4().hex
        rows["bank"].append(
            dict(
                id=prompt_id,
                bank="bench",
                messages=messages,
                tags=[],
                split="heldout" if p % 5 == 0 else "train",
                content_sha256=prompt_hash(messages),
                source=f"bench.jsonl:{p + 1}",
                imported_by=None,
                created=now + timedelta(microseconds=p),
            )
        )
        for a, annotator_id in enumerate(ids):
            assignment, conv, cmp, judgment = (uuid.uuid4().hex for _ in range(4))
            rows["assign"].append(
                dict(
                    id=assignment,
                    bank_prompt_id=prompt_id,
                    annotator_id=annotator_id,
                    status="done",
                    assigned=now,
                    completed=now,
                )
            )
            rows["conv"].append(dict(id=conv, annotator_id=annotator_id, created=now))
            rows["cmp"].append(
                dict(
                    id=cmp,
                    conversation_id=conv,
                    annotator_id=annotator_id,
                    messages=messages,
                    blind=True,
                    created=now,
                    bank_prompt_id=prompt_id,
                    assignment_id=assignment,
                )
            )
            panels = [(a + i) % 4 for i in range(4)]  # each annotator sees the answers in another order
            resp = [uuid.uuid4().hex for _ in range(4)]
            for panel, stage in enumerate(panels):
                rows["resp"].append(
                    dict(
                        id=resp[panel],
                        comparison_id=cmp,
                        panel=panel,
                        checkpoint_id=f"{RUN}/{STAGES[stage]}",
                        text=f"{ANSWERS[stage]}（第{p}例）",
                        decoding={},
                        serving={"mode": "exact"},
                        leaks=[],
                    )
                )
            # the first two annotators agree (best stage first), the third swaps the middle two
            order = [3, 2, 1, 0] if a < 2 else [3, 1, 2, 0]
            ranking = {"ABCD"[panels.index(stage)]: place + 1 for place, stage in enumerate(order)}
            rows["judg"].append(
                dict(
                    id=judgment,
                    client_id=judgment,
                    comparison_id=cmp,
                    annotator_id=annotator_id,
                    kind="ranking",
                    ranking=ranking,
                    created=now,
                    guideline_version=1,
                )
            )
            by_place = sorted(ranking, key=ranking.get)
            for i in range(4):
                for j in range(i + 1, 4):
                    rows["pair"].append(
                        dict(
                            id=f"clin-{uuid.uuid4().hex}",
                            judgment_id=judgment,
                            comparison_id=cmp,
                            chosen_response_id=resp["ABCD".index(by_place[i])],
                            rejected_response_id=resp["ABCD".index(by_place[j])],
                            created=now,
                        )
                    )
    store = PreferenceStore(url)
    with store._engine.begin() as conn:
        for name, model in (
            ("bank", models.BankPromptRow),
            ("assign", models.AssignmentRow),
            ("conv", models.ConversationRow),
            ("cmp", models.ComparisonRow),
            ("resp", models.ResponseRow),
            ("judg", models.JudgmentRow),
            ("pair", models.PairRow),
        ):
            for start in range(0, len(rows[name]), 5000):
                conn.execute(insert(model), rows[name][start : start + 5000])
    store.close()
    return len(rows["pair"])


def export_benchmark(n_pairs: int, tmp: Path) -> None:
    cfg = load_config("demo")
    url = f"sqlite:///{tmp / 'export.db'}"
    start = time.perf_counter()
    made = fill_export_store(url, n_pairs)
    print(
        f"filled a synthetic store with {made} pairs (3 annotators per bank prompt) in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    with PreferenceStore(url, cfg.store) as store:
        start = time.perf_counter()
        summary = export_pairs(cfg, out=tmp / "pairs.jsonl", store=store)
        elapsed = time.perf_counter() - start
    print(
        "\n| pairs in store | written | duplicates left out | train | heldout | export s | pairs/s |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {made} | {len(summary.pair_ids)} | {summary.duplicates} | {summary.train} | {summary.heldout} "
        f"| {elapsed:.1f} | {made / elapsed:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--k", type=int, default=3, help="annotators per prompt")
    parser.add_argument("--mode", choices=("both", "threads", "processes"), default="both")
    parser.add_argument(
        "--export-pairs",
        type=int,
        default=0,
        metavar="N",
        help="instead of the queue: time export_pairs over a synthetic store of N pairs",
    )
    args = parser.parse_args()
    cheap_hashing()

    with tempfile.TemporaryDirectory() as tmp:
        if args.export_pairs:
            export_benchmark(args.export_pairs, Path(tmp))
            return
        modes = ("threads", "processes") if args.mode == "both" else (args.mode,)
        rows = [queue_benchmark(mode, args.annotators, args.prompts, args.k, Path(tmp)) for mode in modes]
    print(
        f"\n{args.annotators} annotators on one queue of {args.prompts} prompts x k={args.k}: "
        "take the next assignment, record a comparison, judge it; until the queue is empty\n"
    )
    print(
        "| annotators as | judged / places | wall s | judgments/s | cycle p50 ms | cycle p95 ms "
        "| over-assigned prompts | annotator twice on a prompt | lost judgments | prompts not judged k times | errors |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['annotators']} {r['mode']} | {r['judged']} / {r['places']} | {r['seconds']:.1f} | {r['per_s']:.1f} "
            f"| {r['p50'] * 1000:.0f} | {r['p95'] * 1000:.0f} | {r['over_assigned']} | {r['twice']} | {r['lost']} "
            f"| {r['short']} | {r['errors']} |"
        )
    for r in rows:
        if r["first_error"]:
            print(f"first error ({r['mode']}): {r['first_error']}")
    ok = all(r["over_assigned"] == r["twice"] == r["lost"] == r["short"] == r["errors"] == 0 for r in rows)
    print(
        "\nno prompt over-assigned, nobody twice on a prompt, nothing lost"
        if ok
        else "\nPROBLEM: see the columns above"
    )


if __name__ == "__main__":
    main()
