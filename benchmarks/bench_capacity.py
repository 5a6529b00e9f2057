"""Capacity load test: N simulated annotators against two app replicas on one PostgreSQL database, with
endpoint contestants served by ``serve``; where does the first bottleneck appear?

    nice -n 5 .venv/bin/python benchmarks/bench_capacity.py [--annotators 1,4,8,16,32] [--rounds 3]
        [--home DIR_WITH_A_TINY_RUN]

Everything runs on this machine, in a temporary folder removed at the end (also on Ctrl-C or an error):

- a tiny run (``build-data`` and ``train-all --profile tiny``; ``--home`` copies a work directory that has one);
- a PostgreSQL server (tests/postgres_server.py, durable: fsync and synchronous commit on, as deployed);
- ``serve`` on the tiny run, its four stages the contestants, named in the apps' ``app.endpoints`` as
  ``serve-plan`` names them (``max_concurrency`` = ``app.concurrent_comparisons``);
- two app replicas (``python -m chimed app``) with ``CHIMED_DATABASE_URL`` on that server, accounts made with
  ``add-annotator`` and a prompt bank with ``import-bank``, as docs/serving.md sets replicas up.

For each N, N annotator threads (``gradio_client``, logged in, half on each replica) each take ``--rounds``
queue prompts (at least ``--min-judgments`` in all): ``/queue_next`` with two of the four contestants
(answered), then ``/judge``. Measured per step: judgments/s, latency of a comparison (``/queue_next``) and of a
judgment (``/judge``), commits, statements and rows written per judgment (pg_stat_statements, loaded for the
test), and CPU seconds (``/proc/PID/stat``, each process with its descendants) of the replicas, ``serve``,
PostgreSQL and this script's annotator threads. Each step has new accounts, logged in before it starts.

A queue prompt is answered with a seed fixed by the prompt, so a tiny model that says nothing to it says nothing
again: the app refuses the comparison (fewer than two answers), and the annotator asks with another pair of
contestants (counted as refused); an annotator whose prompt no pair answers stops (counted as stuck). Prints
markdown tables and the step where judgments/s stops rising.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.openai_server import READY  # noqa: E402
from chimed import main as chimed_main  # noqa: E402
from core.config import load_config  # noqa: E402
from tests.postgres_server import PostgresServer, PostgresUnavailable  # noqa: E402
from training.manifest import latest_run  # noqa: E402

PROFILE = "tiny"
STAGES = ("base", "cpt", "sft", "dpo")
PAIRS = list(itertools.combinations(range(len(STAGES)), 2))  # each comparison: two of the four contestants
PASSWORD = "capacity load test passphrase"
# bank prompts: condition x question x patient group, all distinct, no identifiers
CONDITIONS = (
    "高血压 糖尿病 冠心病 哮喘 慢性胃炎 痛风 甲亢 肺炎 贫血 偏头痛 失眠 湿疹 骨质疏松 肾结石 抑郁症 胆囊炎 脂肪肝 颈椎病 鼻炎 便秘"
).split()
QUESTIONS = (
    "饮食上要注意什么？",
    "有哪些常见症状？",
    "需要做哪些检查？",
    "平时怎么预防？",
    "能运动吗？",
    "用药要注意什么？",
    "什么情况要马上就医？",
    "会遗传吗？",
    "能治好吗？",
    "复查多久一次？",
)
GROUPS = ("", "老年人", "儿童", "孕妇", "术后病人")
START_TIMEOUT_S = 300  # serve or an app starting on 2 busy cores
CLIENT_TIMEOUT_S = 600  # one API call, when 32 annotators queue on 2 cores
CLK_TCK = os.sysconf("SC_CLK_TCK")
EMPTY_RETRIES = 3
PLATEAU = 0.85  # judgments/s within this share of the highest step's: the throughput has stopped rising


class BenchError(RuntimeError):
    """A step of the load test failed; the message is one line."""


# --- CPU time from /proc ----------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid``'s live descendants (children of every thread, recursively)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(c) for c in children.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def cpu_s(pid: int, tree: bool = True) -> float:
    """User + system CPU seconds of ``pid`` (with ``tree``: also its live descendants and the children they
    reaped, e.g. PostgreSQL backends that have exited)."""
    total = 0.0
    for p in [pid, *descendants(pid)] if tree else [pid]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended in between
            continue
        ticks = fields[11:15] if tree else fields[11:13]  # utime stime cutime cstime
        total += sum(int(t) for t in ticks) / CLK_TCK
    return total


# --- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """The child processes this script started, each logging to a file; :meth:`stop_all` ends them and
    whatever they started, by process id."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.started = folder, []

    def start(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("w")
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.started.append((name, proc, log))
        return proc

    def log_tail(self, name: str) -> str:
        text = (self.folder / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        return text.strip().splitlines()[-1] if text.strip() else "(no output)"

    def wait_for(self, name: str, proc: subprocess.Popen, ready) -> object:
        """Poll ``ready()`` until it returns something; one-line error if ``proc`` exits or time runs out."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (found := ready()):
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{name} did not start within {START_TIMEOUT_S} s: {self.log_tail(name)}")
            time.sleep(0.5)
        return found

    def stop_all(self) -> None:
        for _, proc, log in reversed(self.started):
            family = descendants(proc.pid)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pid in family:  # model workers left behind by a process that was killed
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            log.close()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def child_env(home: Path, database_url: str | None) -> dict:
    """The environment ``./launch.sh`` gives a subcommand, for the work directory ``home``."""
    env = dict(
        os.environ,
        CHIMED_HOME=str(home),
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop("CHIMED_DATABASE_URL", None)
    if database_url:
        env["CHIMED_DATABASE_URL"] = database_url
    return env


def chimed(*argv: str, stdin: str = "") -> None:
    """A ``./launch.sh`` subcommand run in this process (its output kept quiet); one-line error on failure."""
    old_stdin, sys.stdin = sys.stdin, io.StringIO(stdin)
    try:
        with redirect_stdout(io.StringIO()):
            status = chimed_main([*argv, "--profile", PROFILE])
    finally:
        sys.stdin = old_stdin
    if status:
        raise BenchError(f"./launch.sh {' '.join(argv)} failed with status {status}")


# --- the setup ------------------------------------------------------------------------------------


def tiny_home(folder: Path, source: Path | None, procs: Processes) -> tuple[Path, str]:
    """(home, run id): a copy of ``source``'s work directory, or a new one with the tiny data and run."""
    home = folder / "home"
    if source:
        shutil.copytree(source, home, symlinks=True)
    else:
        home.mkdir()
        for step in (["build-data"], ["train-all"]):
            print(f"./launch.sh {step[0]} --profile {PROFILE} ...", flush=True)
            proc = procs.start(
                step[0], [sys.executable, "-m", "chimed", *step, "--profile", PROFILE], child_env(home, None)
            )
            if proc.wait():
                raise BenchError(f"{step[0]} failed with status {proc.returncode}: {procs.log_tail(step[0])}")
    os.environ["CHIMED_HOME"] = str(home)
    run_id = latest_run(load_config(PROFILE))
    if run_id is None:
        raise BenchError(f"no complete {PROFILE} run in {home / 'runs'}: give --home a work directory with one")
    return home, run_id


def bank_file(folder: Path, prompts: int) -> Path:
    texts = [f"{g}{c}患者{q}" for g in GROUPS for c in CONDITIONS for q in QUESTIONS]
    if prompts > len(texts):
        raise BenchError(f"the load needs {prompts} bank prompts, the script makes at most {len(texts)}")
    path = folder / "capacity_bank.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}, ensure_ascii=False) + "\n" for t in texts[:prompts]), "utf-8")
    return path


def endpoints_override(serve_url: str, run_id: str, concurrency: int) -> str:
    """``app.endpoints`` naming the four stages ``serve`` serves, as ``serve-plan`` writes them."""
    entries = [
        {"name": f"serve-{stage}", "base_url": serve_url, "model": f"{run_id}/{stage}", "max_concurrency": concurrency}
        for stage in STAGES
    ]
    return "app.endpoints=" + json.dumps(entries, ensure_ascii=False)


# --- one step: N annotators -----------------------------------------------------------------------


def track_statements(server: PostgresServer) -> None:
    """Load pg_stat_statements (a restart with the same options) and create its view on "postgres"."""
    with server.admin() as conn:
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    server._run("pg_ctl", "-D", str(server.data_dir), "-l", str(server.log_path), "-w", "-t", "60", "restart")
    with server.admin() as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")


COUNTERS = r"""
SELECT coalesce(sum(calls) FILTER (WHERE query ~* '^\s*COMMIT'), 0),
       coalesce(sum(calls) FILTER (WHERE query !~* '^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)'), 0),
       coalesce(sum(calls) FILTER (WHERE query ~* '^\s*(INSERT|UPDATE|DELETE)'), 0),
       coalesce(sum(rows) FILTER (WHERE query ~* '^\s*(INSERT|UPDATE|DELETE)'), 0)
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s
"""


def pg_counters(server: PostgresServer, dbname: str) -> np.ndarray:
    """(commits, statements, writing statements, rows written) on ``dbname`` so far (pg_stat_statements;
    read from the "postgres" database, so the reads do not count)."""
    with server.admin() as conn:
        return np.array(conn.execute(COUNTERS, (dbname,)).fetchone(), dtype=float)


def annotate(
    client, n: int, rounds: int, first_pair: int, record: list, errors: list, stuck: list, refused: list, start
) -> None:
    """One annotator: ``rounds`` times take a queue prompt answered by two contestants, then judge it. A
    prompt that no pair answers twice stops the annotator (``stuck``): its seed is fixed, and /queue_next
    hands the same open prompt out again."""
    from gradio_client.exceptions import AppError

    try:
        start.wait()
        for r in range(rounds):
            for again in range(EMPTY_RETRIES + 1):  # another pair each time: base and cpt may say nothing
                pair = [f"endpoint:serve-{STAGES[i]}" for i in PAIRS[(first_pair + n + r + again) % len(PAIRS)]]
                t0 = time.perf_counter()
                try:
                    item = client.predict(pair, True, api_name="/queue_next")
                    break
                except AppError as err:  # a tiny model's empty answer leaves one answer: ask again
                    if "fewer than two answers" not in str(err):
                        raise
                    refused.append(n)
            else:
                stuck.append(n)
                return
            t1 = time.perf_counter()
            if item.get("assignment_id") is None:
                raise BenchError(f"annotator {n}: no queue prompt left ({item.get('message')})")
            choice = max(item["answers"], key=lambda a: len(a["text"]))["label"]
            client.predict(item["comparison_id"], choice, client_id=uuid.uuid4().hex, api_name="/judge")
            chars = sum(len(a["text"]) for a in item["answers"]) / len(item["answers"])
            record.append((t1 - t0, time.perf_counter() - t1, again, chars))
    except Exception as err:  # noqa: BLE001 - reported with the step's results
        errors.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        start.abort()


def machine_busy() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, every process's (/proc/stat)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK, sum(ticks) / CLK_TCK


def group_cpu_s(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds by part: the process trees of its pids; for "annotators" (this script) the process alone."""
    return {name: sum(cpu_s(pid, tree=name != "annotators") for pid in group) for name, group in pids.items()}


def run_step(clients: list, rounds: int, first_pair: int, pids: dict, server, dbname: str) -> dict:
    """N = len(clients) annotators at once; the step's figures."""
    record, errors, stuck, refused = [], [], [], []
    start = threading.Barrier(len(clients) + 1)
    threads = [
        threading.Thread(target=annotate, args=(c, n, rounds, first_pair, record, errors, stuck, refused, start))
        for n, c in enumerate(clients)
    ]
    for t in threads:
        t.start()
    before_db = pg_counters(server, dbname)
    before_cpu, before_machine = group_cpu_s(pids), machine_busy()
    started = time.perf_counter()
    try:
        start.wait()
    except threading.BrokenBarrierError:  # an annotator failed at once: its error is in ``errors``
        pass
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    cpu = {name: spent - before_cpu[name] for name, spent in group_cpu_s(pids).items()}
    busy, total = (after - before for after, before in zip(machine_busy(), before_machine, strict=True))
    load = os.getloadavg()[0]
    after_db = pg_counters(server, dbname)
    judged = len(record)
    comparisons, judgments, _, chars = (np.array([r[i] for r in record] or [np.nan]) for i in range(4))
    return {
        "n": len(clients),
        "judged": judged,
        "wall": wall,
        "rate": judged / wall,
        "compare": np.percentile(comparisons, [50, 95]),
        "judge": np.percentile(judgments, [50, 95]),
        "refused": len(refused),
        "stuck": len(stuck),
        "chars": float(np.nanmean(chars)),
        "errors": errors,
        "store": (after_db - before_db) / max(judged, 1),
        "cpu": cpu,
        "machine": busy / total,
        "load": load,
    }


# --- the report -----------------------------------------------------------------------------------


def print_tables(steps: list[dict], cores: int) -> None:
    print(
        "\n| annotators | judged | wall s | judgments/s | comparison p50 / p95 s | judgment p50 / p95 s "
        "| characters / answer | refused (an empty answer) | stuck (no pair answers) | errors |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in steps:
        print(
            f"| {s['n']} | {s['judged']} | {s['wall']:.1f} | {s['rate']:.2f} | {s['compare'][0]:.2f} / {s['compare'][1]:.2f} "
            f"| {s['judge'][0]:.2f} / {s['judge'][1]:.2f} | {s['chars']:.0f} | {s['refused']} | {s['stuck']} | {len(s['errors'])} |"
        )
    print(
        "\n| annotators | commits / judgment | statements / judgment | writing statements / judgment "
        "| rows written / judgment | app CPU s / comparison asked | serve CPU s / comparison asked "
        f"| PostgreSQL CPU s / judgment | cores busy: apps / serve / PostgreSQL / annotators (of {cores}) "
        "| machine busy (every process) | load average at the end |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for s in steps:
        j, c = max(s["judged"], 1), s["cpu"]
        asked = max(s["judged"] + s["refused"], 1)  # a refused comparison was generated too
        busy = " / ".join(f"{c[k] / s['wall']:.2f}" for k in ("apps", "serve", "postgresql", "annotators"))
        print(
            f"| {s['n']} | {' | '.join(f'{x:.1f}' for x in s['store'])} | {c['apps'] / asked:.3f} | {c['serve'] / asked:.3f} "
            f"| {c['postgresql'] / j:.3f} | {busy} | {s['machine']:.0%} | {s['load']:.1f} |"
        )
    for s in steps:
        for e in s["errors"][:3]:
            print(f"- {s['n']} annotators: {e}")
    best = max(s["rate"] for s in steps)
    first = next(s for s in steps if s["rate"] >= PLATEAU * best)  # robust to one noisy step on a shared machine
    if first is steps[-1]:
        print("\nJudgments/s still rises at the last step: no bottleneck reached.")
        return
    c = first["cpu"]
    parts = ", ".join(f"{k} {c[k] / first['wall']:.2f}" for k in ("apps", "serve", "postgresql", "annotators"))
    print(
        f"\nJudgments/s reaches {PLATEAU:.0%} of its highest ({best:.2f}) at {first['n']} annotators "
        f"({first['rate']:.2f}); more annotators only wait longer. There the measured parts use "
        f"{sum(c.values()) / first['wall']:.2f} of {cores} cores ({parts}), the machine {first['machine']:.0%} busy."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--annotators", default="1,4,8,16,32", help="the steps: annotators at once (default 1,4,8,16,32)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="comparisons each annotator judges per step (default 4)")
    parser.add_argument("--min-judgments", type=int, default=16, help="at least this many per step (default 16)")
    parser.add_argument(
        "--max-new-tokens", type=int, help="the apps' app.decoding.max_new_tokens (default: the tiny profile's)"
    )
    parser.add_argument("--home", type=Path, help="a work directory holding a tiny run to copy (default: train one)")
    args = parser.parse_args(argv)
    steps_n = [int(n) for n in args.annotators.split(",")]
    rounds = {n: max(args.rounds, -(-args.min_judgments // n)) for n in steps_n}

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    folder = Path(tempfile.mkdtemp(prefix="chimed-capacity-"))
    procs, server, clients = Processes(folder), None, []
    try:
        load = os.getloadavg()
        t_setup = time.perf_counter()
        home, run_id = tiny_home(folder, args.home, procs)
        server = PostgresServer.start(durable=True)  # its own temp dir: the postgres user must reach it
        track_statements(server)
        url = server.create_database()
        os.environ["CHIMED_DATABASE_URL"] = url  # for add-annotator and import-bank, as for every replica

        # accounts and the bank, with the command line; enough prompts for every annotator's rounds
        k = load_config(PROFILE).store.annotators_per_prompt
        total = sum(n * rounds[n] for n in steps_n) + 2  # + one warm-up comparison per replica
        chimed("import-bank", str(bank_file(folder, max(max(rounds.values()), -(-total // k) + 10))))
        # new accounts for each step: an annotator stuck on a prompt in one step does not carry it into the next
        names = {step: [f"s{step}-annotator{i:03d}" for i in range(n)] for step, n in enumerate([2, *steps_n])}
        for name in itertools.chain(*names.values()):
            chimed("add-annotator", name, stdin=PASSWORD + "\n")

        serve = procs.start(
            "serve",
            [sys.executable, "-m", "chimed", "serve", "--profile", PROFILE, "--run", run_id, "--port", "0"],
            child_env(home, None),  # its own store (the home's SQLite, no accounts): no tokens needed
        )
        serve_url = procs.wait_for("serve", serve, lambda: READY.search((folder / "serve.log").read_text()))
        serve_url = serve_url.group(2)
        procs.wait_for("serve", serve, lambda: answers(serve_url.removesuffix("/v1") + "/health"))
        concurrency = load_config(PROFILE).app.concurrent_comparisons
        override = endpoints_override(serve_url, run_id, concurrency)
        apps, app_urls = [], []
        for i in range(2):  # one after the other: Gradio checks its page within 3 s of starting
            port = free_port()
            argv = [sys.executable, "-m", "chimed", "app", "--profile", PROFILE, "--port", str(port), override]
            if args.max_new_tokens:
                argv.append(f"app.decoding.max_new_tokens={args.max_new_tokens}")
            apps.append(procs.start(f"app{i}", [*argv, "app.preload_newest_run=false"], child_env(home, url)))
            app_urls.append(f"http://127.0.0.1:{port}/")
            procs.wait_for(f"app{i}", apps[i], lambda u=app_urls[i]: answers(u))

        from gradio_client import Client

        def log_in(step: int) -> list:
            """The step's annotators, logged in (before the step: a login is not part of its figures)."""
            timeout = {"timeout": CLIENT_TIMEOUT_S}
            made = [
                Client(app_urls[i % 2], auth=(name, PASSWORD), verbose=False, httpx_kwargs=timeout)
                for i, name in enumerate(names[step])
            ]
            clients.extend(made)
            return made

        pids = {
            "apps": [a.pid for a in apps],
            "serve": [serve.pid],
            "postgresql": [int((server.data_dir / "postmaster.pid").read_text().split()[0])],
            "annotators": [os.getpid()],
        }
        dbname = make_url(url).database
        warm = run_step(log_in(0), 1, 0, pids, server, dbname)
        if warm["errors"] or warm["stuck"]:
            raise BenchError(f"the warm-up comparison failed: {(warm['errors'] or ['no pair answered'])[0]}")
        setup_s = time.perf_counter() - t_setup
        print(f"set-up {setup_s:.0f} s (run {run_id}, PostgreSQL at {url}, serve at {serve_url}, apps at {app_urls})")

        steps = []
        for i, n in enumerate(steps_n, start=1):
            step = run_step(log_in(i), rounds[n], i, pids, server, dbname)
            steps.append(step)
            print(
                f"{n} annotators: {step['judged']} judged in {step['wall']:.1f} s, {len(step['errors'])} errors",
                flush=True,
            )
        print(
            f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load average "
            f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
        )
        print_tables(steps, os.cpu_count())
        with server.admin() as conn:
            size = conn.execute("SELECT pg_database_size(%s)", (dbname,)).fetchone()[0]
        judged = sum(s["judged"] for s in steps) + warm["judged"]
        print(f"The database holds {size / 2**20:.1f} MiB after {judged} judgments (the bank and accounts included).")
        return 1 if any(s["errors"] for s in steps) else 0
    except (BenchError, PostgresUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: stopping what was started", file=sys.stderr)
        return 130
    finally:
        for c in clients:
            c.close()
        procs.stop_all()
        if server:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
