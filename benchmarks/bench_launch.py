"""The first ten minutes: ``./launch.sh`` in a fresh home (set-up done), timed to the first page, to the first
stage in the arena and to the completed run.

    CHIMED_HOME=/tmp/fresh nice -n 5 .venv/bin/python benchmarks/bench_launch.py [--profile demo] [--port 7961]

Starts ``./launch.sh demo --profile P --port N`` (what the bare ``./launch.sh`` runs, on a port of its own) and
polls: the page (an HTTP 200 at /), the app's ``/contestants`` (the first checkpoint listed), and
``/training_status`` until the run is complete (trained, evaluated and registered: the training process has
left). Then stops the app and the training with SIGTERM, which the demo takes as Ctrl-C. Prints one table row per milestone and the load average
before and after. CHIMED_HOME must be empty or missing (a fresh machine).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLL_S = 2.0


def page_up(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=5).status == 200
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", choices=("tiny", "demo"))
    parser.add_argument("--port", type=int, default=7961)
    parser.add_argument("--limit-s", type=float, default=3600, help="give up after this long")
    args = parser.parse_args()
    home = Path(os.environ["CHIMED_HOME"])
    if home.exists() and any(home.iterdir()):
        raise SystemExit(f"{home} is not empty: the benchmark measures a fresh machine")
    url = f"http://127.0.0.1:{args.port}/"
    load_before = os.getloadavg()
    started = time.monotonic()
    log = (home.parent / f"{home.name}-launch.log").open("w")
    proc = subprocess.Popen(
        [str(REPO / "launch.sh"), "demo", "--profile", args.profile, "--port", str(args.port)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    marks: dict[str, float] = {}
    client = None
    try:
        while time.monotonic() - started < args.limit_s and proc.poll() is None:
            now = time.monotonic() - started
            if "first page" not in marks and page_up(url):
                marks["first page"] = now
                print(f"first page after {now:.1f} s", flush=True)
            if "first page" in marks:
                if client is None:
                    from gradio_client import Client

                    client = Client(url, verbose=False)
                if "first stage in the arena" not in marks:
                    ids = client.predict(api_name="/contestants")
                    if ids:
                        marks["first stage in the arena"] = time.monotonic() - started
                        print(f"{ids[0]} in the arena after {marks['first stage in the arena']:.1f} s", flush=True)
                status = client.predict(api_name="/training_status")
                if status.get("state") == "complete":
                    marks["completed run"] = time.monotonic() - started
                    print(f"run {status['run_id']} complete after {marks['completed run']:.1f} s", flush=True)
                    break
                if status.get("state") in ("failed", "interrupted"):
                    raise SystemExit(f"the run stopped: {status.get('text')}")
            time.sleep(POLL_S)
    finally:
        # SIGTERM: what the demo treats as Ctrl-C (a SIGINT is ignored by a process started in the background)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=180)
        log.close()
    load_after = os.getloadavg()
    print(f"\nprofile {args.profile}, {os.cpu_count()} cores; load average before {load_before}, after {load_after}\n")
    print("| from ./launch.sh to | wall s |\n|---|---:|")
    for name in ("first page", "first stage in the arena", "completed run"):
        print(f"| {name} | {marks[name]:.1f} |" if name in marks else f"| {name} | not reached |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
