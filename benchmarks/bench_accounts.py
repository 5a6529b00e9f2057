"""Accounts benchmark (issue 36): login latency with argon2 and throttling, and 32 annotators judging at once
with the audit log written against without it. About a minute on a 2-core machine.

    .venv/bin/python benchmarks/bench_accounts.py [--annotators 32] [--prompts 100] [--logins 20]

Login: the store's default argon2 parameters. "argon2 only" is :meth:`authenticate` (what a login cost before
issue 36); "log_in" adds the throttle's reads of the audit log and the audit row; "refused" is a try refused
unchecked while throttled (no argon2). Judging: the queue benchmark of bench_annotation.py (threads sharing one
SQLite store), once as it is and once with one audit row appended for every judgment (more than the app writes:
judgments are not audited, so this bounds the log's cost), then the store and the log are counted: nothing lost.
Figures printed as markdown; nothing asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_annotation import cheap_hashing, queue_benchmark  # noqa: E402

from core.config import AccountsConfig, StoreConfig  # noqa: E402
from preference_store.repository import PreferenceStore, accounts  # noqa: E402

PASSWORD = "correct horse battery staple"


def login_latency(tmp: Path, n: int) -> list[tuple[str, float, float]]:
    settings = StoreConfig(accounts=AccountsConfig(free_failures=1, login_delay_s=600))
    with PreferenceStore(f"sqlite:///{tmp / 'login.db'}", settings) as store:
        store.add_annotator("dr_bench", PASSWORD)
        store.add_annotator("dr_guessed", PASSWORD)
        store.log_in("dr_guessed", "wrong", "10.0.0.1")  # from now on refused unchecked for 10 minutes

        def timed(call) -> list[float]:
            out = []
            for _ in range(n):
                start = time.perf_counter()
                call()
                out.append((time.perf_counter() - start) * 1000)
            return out

        rows = [
            ("argon2 only (authenticate, before)", timed(lambda: store.authenticate("dr_bench", PASSWORD))),
            (
                "log_in: throttle reads + argon2 + audit row",
                timed(lambda: store.log_in("dr_bench", PASSWORD, "10.0.0.2")),
            ),
            ("log_in refused while throttled", timed(lambda: store.log_in("dr_guessed", PASSWORD, "10.0.0.1"))),
        ]
    return [(name, statistics.median(ms), sorted(ms)[int(0.95 * (len(ms) - 1))]) for name, ms in rows]


def judging(tmp: Path, annotators: int, prompts: int) -> list[dict]:
    cheap_hashing()  # the accounts are created, not logged into: hashing is not what is measured here
    results = [dict(queue_benchmark("threads", annotators, prompts, 3, tmp / "off"), audit="off")]
    submit = PreferenceStore.submit_judgment

    def audited(self, judgment, *args, **kwargs):
        out = submit(self, judgment, *args, **kwargs)
        self.record_event("judgment", actor=str(judgment.annotator_id), target=judgment.comparison_id)
        return out

    PreferenceStore.submit_judgment = audited
    try:
        on = queue_benchmark("threads", annotators, prompts, 3, tmp / "on")
    finally:
        PreferenceStore.submit_judgment = submit
    with PreferenceStore(f"sqlite:///{tmp / 'on' / 'queue-threads.db'}") as store:
        on["audit_rows"] = len(store.audit_events(action="judgment", limit=None))
    results.append(dict(on, audit="one row per judgment"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--logins", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        hasher = accounts._hasher
        print(f"argon2id: {hasher.time_cost} passes, {hasher.memory_cost // 1024} MiB, {hasher.parallelism} lanes\n")
        print("| login | median ms | p95 ms |\n|---|---|---|")
        for name, p50, p95 in login_latency(tmp, args.logins):
            print(f"| {name} | {p50:.1f} | {p95:.1f} |")
        for sub in ("off", "on"):
            (tmp / sub).mkdir()
        print(
            "\n| audit log | annotators | judged | judgments/s | p50 s | p95 s | errors | lost (k not met) "
            "| audit rows |\n|---|---|---|---|---|---|---|---|---|"
        )
        for r in judging(tmp, args.annotators, args.prompts):
            print(
                f"| {r['audit']} | {r['annotators']} | {r['judged']} | {r['per_s']:.1f} | {r['p50']:.3f} "
                f"| {r['p95']:.3f} | {r['errors']} | {r['short']} | {r.get('audit_rows', '—')} |"
            )


if __name__ == "__main__":
    main()
