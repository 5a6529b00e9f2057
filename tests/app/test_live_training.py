"""Issue 35, the first ten minutes and the loop in the browser: ``chimed demo`` (the bare ``./launch.sh``) on the
tiny profile trains in the background while the app answers; the Runs tab shows the stage in training live (its
loss and a step counter that moves); a finished stage joins the arena while the next one trains, and the
judgments made meanwhile keep the run's state in their provenance; SIGINT stops both and a rerun resumes. An admin
trains the next round from the Runs tab (an annotator never sees the action, the API refuses it).

The tiny profile trains too fast to be watched on an idle machine, so the demo tests give its stages more steps
(``model.max_steps``, ``cpt.max_steps``, ``sft.max_steps``) and log every few steps: real training, just longer. Needs Debian's
chromium (/usr/bin/chromium), as tests/app/test_app_e2e.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from preference_store.repository import PreferenceStore
from tests.app.test_app_e2e import BANK, CHROMIUM, CHROMIUM_ARGS, _chromium_or_skip
from tests.app.test_app_login_e2e import _log_in as log_in
from tests.cli.test_loop import PROMPTS, _record_store_judgments
from training.progress import process_alive

REPO = Path(__file__).resolve().parents[2]
# Long enough that the app is up before base finishes, base is read in the arena while cpt still trains, and a
# judgment fits in before the run completes. On the idle 2-core machine the tiny base trains about 46 steps/s and
# cpt about 55, and the app answers after about 10 s: 90 base steps and cpt's 30 (0.5 s) lost that race (CI,
# 2026-12-07). 1500 and 600 steps take about 33 s and 11 s there, and stretch with the load as the app does.
SLOW = ["model.max_steps=1500", "cpt.max_steps=600", "sft.max_steps=60", "train.logging_steps=5", "train.save_steps=50"]
ADMIN, ANNOTATOR, PASSWORD = "dr_admin_loop", "dr_annot_loop", "correct horse battery staple"
TIMEOUT_MS = 120_000
RUN_LIMIT_S = 1500  # the whole tiny run with longer stages, on a shared 2-core machine
CORRECTION = "头痛时可先安静休息、保证睡眠；如果头痛剧烈、反复发作，或伴有发热、呕吐，应及时就医。"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, limit_s: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + limit_s
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the demo exited with {proc.returncode} waiting for {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {limit_s} s" + (f":\n{log.read_text()[-3000:]}" if log else ""))
        time.sleep(0.5)


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def _start_demo(home: Path, log: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, CHIMED_HOME=str(home))
    env.pop("CHIMED_DATABASE_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "chimed", "demo", "--profile", "tiny", "--port", str(port), *SLOW],
        cwd=REPO,
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        # Ctrl-C as at a terminal: a shell that starts a job in the background (a CI runner may) leaves SIGINT
        # ignored, and Python would then never raise KeyboardInterrupt in the demo
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        return proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the demo did not stop within 120 s of SIGINT")


def _manifest(home: Path) -> dict:
    runs = [p for p in (home / "runs").glob("*/manifest.json")] if (home / "runs").is_dir() else []
    return json.loads(runs[0].read_text(encoding="utf-8")) if runs else {}


def _training(home: Path) -> dict:
    path = home / "training.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


@pytest.fixture
def data_home(tiny_data_home, chimed_home) -> Path:
    """A fresh home with the tiny data built (a machine after set-up, before any run)."""
    shutil.copytree(tiny_data_home / "data", chimed_home / "data")
    return chimed_home


def test_demo_trains_in_the_background_live_in_the_runs_tab(data_home, tmp_path):
    _chromium_or_skip()
    from gradio_client import Client
    from playwright.sync_api import sync_playwright

    home, log, port = data_home, tmp_path / "demo.log", _free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = _start_demo(home, log, port)
    try:
        _wait("first page", lambda: _answers(url), 300, proc, log)
        assert "base" not in _manifest(home).get("stages", {}), "the app must answer before the first stage is done"
        run_id = _training(home)["run_id"]
        client = Client(url, verbose=False)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.locator("#accept-notice").click()
            page.get_by_role("tab", name="训练记录 Runs").click()
            live = page.locator("#run-live")
            live.get_by_text(re.compile(r"step \d+/\d+")).wait_for()
            first = re.search(r"(\w+): training, step (\d+)/(\d+)", live.inner_text())
            assert first, live.inner_text()
            page.locator("#run-live-loss").wait_for(state="visible")  # the loss curve so far
            # the timer re-reads the run: the step counter moves without a reload
            page.wait_for_function(
                "([stage, step]) => { const m = document.querySelector('#run-live').innerText"
                ".match(new RegExp(stage + ': (training|done)(, step (\\\\d+))?'));"
                " return m && (m[1] === 'done' || Number(m[3]) > Number(step)); }",
                arg=[first.group(1), first.group(2)],
            )
            browser.close()

        # base joins the arena while cpt still trains
        _wait("base finished", lambda: "base" in _manifest(home).get("stages", {}), 600, proc, log)
        assert f"{run_id}/base" in client.predict(api_name="/contestants")
        status = client.predict(api_name="/training_status")
        assert status["state"] == "training" and re.search(r"cpt: (training|waiting)", status["text"]), status

        # a judgment of base against cpt while sft trains
        _wait("cpt finished", lambda: "cpt" in _manifest(home).get("stages", {}), 600, proc, log)
        made = client.predict(PROMPTS[3], [f"{run_id}/base", f"{run_id}/cpt"], True, api_name="/compare")
        judged = client.predict(made["comparison_id"], None, None, CORRECTION, api_name="/judge")
        assert judged["kind"] == "correction"
        assert client.predict(api_name="/training_status")["state"] == "training", "the run finished too soon"

        _wait(
            "the completed run",
            lambda: client.predict(api_name="/training_status").get("state") == "complete",
            RUN_LIMIT_S,
            proc,
            log,
        )
        assert set(_manifest(home)["stages"]) >= {"base", "cpt", "sft", "dpo"}
        assert f"{run_id}/dpo" in client.predict(api_name="/contestants")
        client.close()
    finally:
        assert _stop(proc) == 0

    # the judgment made meanwhile is stored, with the run's state then in each answer's provenance
    with sqlite3.connect(home / "preferences.db") as db:
        servings = [
            json.loads(s)
            for (s,) in db.execute("SELECT serving FROM responses WHERE comparison_id = ?", (made["comparison_id"],))
        ]
        judgments = db.execute("SELECT COUNT(*) FROM judgments WHERE comparison_id = ?", (made["comparison_id"],))
        assert judgments.fetchone()[0] == 1
    assert len(servings) == 2
    for serving in servings:
        assert serving["run_state"]["state"] == "in training"
        assert serving["run_state"]["stages_complete"][:2] == ["base", "cpt"]
        assert "dpo" not in serving["run_state"]["stages_complete"]


def test_sigint_stops_demo_and_training_and_a_rerun_resumes(data_home, tmp_path):
    home, log, port = data_home, tmp_path / "demo.log", _free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = _start_demo(home, log, port)
    try:
        _wait("first page", lambda: _answers(url), 300, proc, log)
        training = _training(home)
        run_id = training["run_id"]
        partial = home / "runs" / run_id / ".partial"
        # the stage in training when a checkpoint of it is saved (base, unless the app was slow to answer on a
        # loaded machine and base finished first: the stop must then cut a later stage)
        saved = _wait(
            "a saved checkpoint", lambda: sorted(partial.glob("*/checkpoint-*/trainer_state.json")), 600, proc, log
        )
    finally:
        code = _stop(proc)
    assert code == 0
    stage = saved[0].parent.parent.name
    steps = home / "runs" / run_id / "logs" / stage / "trainer_log.jsonl"
    assert not process_alive(training["pid"]), "the background training outlived Ctrl-C"
    assert "stopping the training of run" in log.read_text()
    assert stage not in _manifest(home)["stages"]
    logged = len(steps.read_text().splitlines())

    proc = _start_demo(home, log, port)
    try:
        _wait("first page again", lambda: _answers(url), 300, proc, log)
        assert _training(home)["run_id"] == run_id  # the interrupted run, not a new one
        run_log = home / "runs" / run_id / "train-all.log"
        _wait("the resumed stage", lambda: f"{stage}: resuming from checkpoint-" in run_log.read_text(), 300, proc, log)
        _wait("a step after the resume", lambda: len(steps.read_text().splitlines()) > logged + 1, 300, proc, log)
    finally:
        assert _stop(proc) == 0
    assert [p.name for p in (home / "runs").iterdir()] == [run_id]


@pytest.fixture
def loop_home(app_home):
    """The tiny run's home with an admin, an annotator, a held-out bank prompt and judgments not yet exported."""
    home, run_id = app_home
    from core.config import load_config

    cfg = load_config("tiny")
    references = [
        json.loads(line)["reference"]
        for line in (cfg.data_dir / "eval" / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    with PreferenceStore(cfg.database_url) as store:
        store.add_annotator(ADMIN, PASSWORD, role="admin")
        store.add_annotator(ANNOTATOR, PASSWORD)
        store.import_bank(BANK)
        _record_store_judgments(store, run_id, references)
    return home, run_id


def _log_in(page, url: str, name: str) -> None:
    log_in(page, url, name, PASSWORD)
    page.locator("#identity", has_text=name).wait_for()
    page.locator("#accept-notice").click()
    page.get_by_role("tab", name="训练记录 Runs").click()


def test_admin_trains_the_next_round_from_the_runs_tab(loop_home, start_app):
    _chromium_or_skip()
    from gradio_client import Client
    from playwright.sync_api import sync_playwright

    home, parent = loop_home
    url = start_app(home)
    annotator = Client(url, auth=(ANNOTATOR, PASSWORD), verbose=False)
    with pytest.raises(Exception, match="only admins may start a training"):
        annotator.predict(api_name="/train_next_round")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context().new_page()
        page.set_default_timeout(TIMEOUT_MS)
        _log_in(page, url, ANNOTATOR)
        page.locator("#runs-run").wait_for()
        assert page.locator("#train-next-round").count() == 0 or not page.locator("#train-next-round").is_visible()

        page = browser.new_context().new_page()
        page.set_default_timeout(TIMEOUT_MS)
        _log_in(page, url, ADMIN)
        page.locator("#preview-next-round").click()
        plan = page.locator("#next-round-status", has_text="retrains").inner_text()
        assert f"next round from run {parent}: retrains dpo; reuses base, cpt, sft" in plan
        pairs = int(re.search(r"(\d+) new clinician pairs go in \((\d+) train", plan).group(1))
        assert pairs > 0
        page.locator("#train-next-round").click()
        started = page.locator("#next-round-status", has_text="started").inner_text()
        new_run = re.search(r"run (\S+) started", started).group(1)
        admin = Client(url, auth=(ADMIN, PASSWORD), verbose=False)
        with pytest.raises(Exception, match=f"already running in this home: run {new_run}"):
            admin.predict(api_name="/train_next_round")
        page.locator("#run-live", has_text=f"run {new_run}").wait_for()
        browser.close()

    deadline = time.monotonic() + RUN_LIMIT_S
    while admin.predict(new_run, api_name="/training_status").get("state") != "complete":
        status = admin.predict(new_run, api_name="/training_status")
        assert status.get("state") in (None, "training", "evaluating"), status
        assert time.monotonic() < deadline, f"the round did not finish: {status}"
        time.sleep(2)

    manifest = json.loads((home / "runs" / new_run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["parent_run"] == parent
    assert [p for p in manifest["dpo_pair_ids"] if p.startswith("clin-")], "the new run holds the clinician pairs"
    with PreferenceStore(f"sqlite:///{home / 'preferences.db'}") as store:
        queued = store.queue_round_definition()
        assert set(queued.contestants) == {f"{new_run}/dpo", f"{parent}/dpo"} and queued.blind
        assert queued.split == "heldout"
