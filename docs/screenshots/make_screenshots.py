"""Make the documentation's screenshots of the arena app, one PNG per tab, from the tiny run.

    .venv/bin/python docs/screenshots/make_screenshots.py [--out docs/screenshots] [--home DIR --run ID]

In a fresh temporary CHIMED_HOME it trains the tiny run (``train-all --profile tiny --run-id demo-tiny``), or
copies an existing home (``--home DIR --run ID``; the copy is changed, never DIR), creates an admin and an
annotator account, imports the prompt bank ``tests/fixtures/bank/clinical_prompts.jsonl``, starts the app
(``python -m chimed app --profile tiny``) on a free localhost port and records judgments through the app's API
(both accounts rank the same queue prompts, the admin votes on a pair, the annotator writes a better answer), so
that the Leaderboard and Data tabs have something to show. Then Debian's headless Chromium
(``/usr/bin/chromium``, through Playwright) logs in as the admin, accepts the notice, asks a prompt in the
Compare tab and saves one full-page PNG per tab at a 1280-pixel-wide viewport: compare.png, guidelines.png,
leaderboard.png, data.png and runs.png.

Nothing reaches the network: the models are the tiny run's, the app listens on 127.0.0.1 and the browser is
refused every request that is not to the app. The PNGs are written into a temporary folder inside ``--out`` and
moved in only when all five are made; any failed step ends the script with one line "error: ..." and exit
status 1, leaving ``--out`` as it was. Chinese text needs a CJK font (``apt-get install fonts-wqy-zenhei``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a file: the project's packages

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 900}
TABS = (  # (file, the tab's label in the app)
    ("compare.png", "对比 Compare"),
    ("guidelines.png", "准则 Guidelines"),
    ("leaderboard.png", "排行榜 Leaderboard"),
    ("data.png", "数据 Data"),
    ("runs.png", "训练记录 Runs"),
)
RUN_ID = "demo-tiny"
PROFILE = "tiny"
BANK = ROOT / "tests" / "fixtures" / "bank" / "clinical_prompts.jsonl"
ADMIN, ANNOTATOR = "dr_li", "dr_wang"
QUEUE_PROMPTS = 3  # queue prompts the admin ranks (the annotator ranks the whole bank)
COMPARE_PROMPT = "高血压患者饮食上要注意什么？"  # asked in the browser for compare.png
VOTE_PROMPT = "糖尿病有哪些常见症状？"  # the admin's pairwise vote
CORRECTION_PROMPT = "感冒发烧应该怎么处理？"  # the annotator's better answer
CORRECTION = "多休息、多饮水；体温超过38.5℃可按说明服用退热药，高热不退或出现呼吸困难应及时就医。"
TIMEOUT_S = 180  # the app's start, and any one step in the browser (the 2-core machine may be busy)
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
}


class ScreenshotError(Exception):
    """A step failed; the message is the script's one-line error."""


def home_env(home: Path) -> dict[str, str]:
    """The environment of the project's commands for this work directory: offline, its own store."""
    env = dict(os.environ, CHIMED_HOME=str(home), **OFFLINE_ENV)
    env.pop("CHIMED_DATABASE_URL", None)  # the home's preferences.db, never a store set elsewhere
    return env


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def prepare_home(work: Path, home: Path | None = None, run_id: str | None = None) -> tuple[Path, str]:
    """(home, run_id) inside ``work``: a copy of ``home`` holding run ``run_id``, or a new home in which the tiny
    run is trained."""
    target = work / "home"
    if home is not None:
        if run_id is None:
            raise ScreenshotError("--home needs --run (the run id under HOME/runs)")
        if not (home / "runs" / run_id / "manifest.json").is_file():
            raise ScreenshotError(f"no run {run_id!r} in {home} (no {home / 'runs' / run_id / 'manifest.json'})")
        shutil.copytree(home, target, symlinks=True)
        return target, run_id
    target.mkdir()
    run_id = run_id or RUN_ID
    log = work / "train-all.log"
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "chimed", "train-all", "--profile", PROFILE, "--run-id", run_id],
            cwd=ROOT,
            env=home_env(target),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise ScreenshotError(f"train-all exited with {done.returncode}: {last_line(log)} (log: {log})")
    return target, run_id


@contextmanager
def open_store(home: Path):
    """The home's preference store, as the app opens it: the tiny profile's database_url, which is read from
    CHIMED_HOME whenever it is used, so CHIMED_HOME stays set while the store is open."""
    from core.config import load_config
    from preference_store.repository import PreferenceStore

    saved = {k: os.environ.get(k) for k in ("CHIMED_HOME", "CHIMED_DATABASE_URL")}
    os.environ["CHIMED_HOME"] = str(home)
    os.environ.pop("CHIMED_DATABASE_URL", None)
    try:
        with PreferenceStore.from_config(load_config(PROFILE)) as store:
            yield store
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def seed_accounts_and_bank(home: Path) -> dict[str, str]:
    """Create the admin and annotator accounts (new random passwords that pass the password policy) and import
    the prompt bank; returns {name: password}."""
    accounts = {ADMIN: "admin", ANNOTATOR: "annotator"}
    passwords = {name: secrets.token_urlsafe(18) for name in accounts}
    with open_store(home) as store:
        for name, role in accounts.items():
            if store.annotator_by_name(name) is not None:
                raise ScreenshotError(f"account {name!r} exists already in {home}: use a home without it")
            store.add_annotator(name, passwords[name], role=role, enforce_policy=True, actor="make_screenshots")
        summary = store.import_bank(BANK)
    if summary.imported == 0 and summary.duplicates == 0:
        raise ScreenshotError(f"no prompt imported from {BANK}: {summary.errors}")
    return passwords


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(home: Path, log: Path):
    """``python -m chimed app --profile tiny`` on a free localhost port for ``home``; yields its URL, stops it."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chimed", "app", "--profile", PROFILE, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=home_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise ScreenshotError(f"the app exited with {proc.returncode}: {last_line(log)} (log: {log})")
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise ScreenshotError(
                            f"the app did not answer at {url} within {TIMEOUT_S} s (log: {log})"
                        ) from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def by_length(answers: list[dict]) -> dict[str, int]:
    """A ranking {label: place} of the answers, longest first (ties by label): a fixed rule, so that two
    accounts judging the same queue prompt (the same answers: the queue's decoding is shared) agree."""
    order = sorted(answers, key=lambda a: (-len(a["text"]), a["label"]))
    return {a["label"]: place for place, a in enumerate(order, start=1)}


def seed_judgments(url: str, passwords: dict[str, str], run_id: str) -> int:
    """Record judgments through the app's API: the annotator ranks every prompt of their queue, the admin the
    first ``QUEUE_PROMPTS`` of theirs (the same prompts: the queue hands out the least-judged prompts first, so
    they overlap only once the whole bank has been handed out), each answered by the run's stages and ranked with
    1-5 scores on the guideline's criteria; the admin also votes on a pair and the annotator writes a better
    answer. Returns how many judgments were made."""
    from gradio_client import Client

    made = 0
    for name in (ANNOTATOR, ADMIN):
        client = Client(url, auth=(name, passwords[name]), verbose=False)
        stages = [c for c in client.predict(api_name="/contestants") if c.startswith(f"{run_id}/")]
        if len(stages) < 2:
            raise ScreenshotError(f"run {run_id!r} has fewer than two stages to compare: {stages}")
        criteria = [c["key"] for c in client.predict(api_name="/acknowledge_guideline")["criteria"]]
        done = 0
        while name != ADMIN or done < QUEUE_PROMPTS:
            item = client.predict(stages, True, api_name="/queue_next")
            if item["assignment_id"] is None:
                if name == ADMIN or done == 0:
                    raise ScreenshotError(f"{name}'s queue is empty after {done} prompts: {item['message']}")
                break
            ranking = by_length(item["answers"])
            if name == ADMIN and len(ranking) > 2:  # not quite the annotator's order: agreement below 1
                last = sorted(ranking, key=ranking.get)[-2:]
                ranking[last[0]], ranking[last[1]] = ranking[last[1]], ranking[last[0]]
            scores = {label: {key: 6 - min(place, 5) for key in criteria} for label, place in ranking.items()}
            client.predict(item["comparison_id"], ranking=ranking, scores=scores, api_name="/judge")
            done += 1
        pair = [stages[-2], stages[-1]]
        if name == ADMIN:
            compared = client.predict(VOTE_PROMPT, pair, True, api_name="/compare")
            client.predict(compared["comparison_id"], "A", reason="A 更完整", api_name="/judge")
        else:
            compared = client.predict(CORRECTION_PROMPT, pair, True, api_name="/compare")
            client.predict(compared["comparison_id"], correction=CORRECTION, api_name="/judge")
        made += done + 1
    return made


def check_cjk_font() -> None:
    """Chinese text in the screenshots needs a CJK font, else every character is a box."""
    try:
        found = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ScreenshotError("fc-list is missing: install fontconfig and a CJK font (fonts-wqy-zenhei)") from None
    if not found.stdout.strip():
        raise ScreenshotError("no CJK font: Chinese text would be boxes (apt-get install fonts-wqy-zenhei)")


def shoot_tabs(url: str, name: str, password: str, run_id: str, folder: Path) -> list[Path]:
    """Log in as ``name`` in headless Chromium, accept the notice (and the guideline), ask a prompt in the Compare
    tab and save one full-page PNG per tab into ``folder``. Every request not to the app is refused."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise ScreenshotError(f"{CHROMIUM} is missing: apt-get install chromium")
    app = url.rstrip("/")
    outside: list[str] = []
    errors: list[str] = []
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(TIMEOUT_S * 1000)
            page.on("pageerror", lambda err: errors.append(str(err)))

            def local_only(route):
                if route.request.url.startswith((app + "/", "data:", "blob:")) or route.request.url == app:
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", local_only)
            page.goto(url)
            page.get_by_label("username").fill(name)
            page.get_by_label("password").fill(password)
            page.get_by_role("button", name="Login").click()
            page.locator("#identity", has_text=name).wait_for()
            page.locator("#accept-notice").click()
            page.locator("#prompt").wait_for(state="visible")
            if page.locator("#guideline-ack").is_visible():
                page.locator("#guideline-ack").click()
                page.locator("#guideline-box").wait_for(state="hidden")

            page.locator("#prompt textarea").fill(COMPARE_PROMPT)
            page.locator("#send").click()
            page.locator("#status", has_text="answers complete").wait_for()
            ready = {  # what each tab shows once its content has loaded
                "compare.png": [page.locator("#chat-A", has_text=COMPARE_PROMPT)],
                "guidelines.png": [page.locator("#guideline-page", has_text="安全")],
                "leaderboard.png": [
                    page.locator("#ratings", has_text=f"{run_id}/"),
                    page.locator("#agreement", has_text="Krippendorff"),
                    page.locator("#ratings-chart img"),
                ],
                "data.png": [page.locator("#recent-pairs", has_text=ANNOTATOR)],
                "runs.png": [page.locator("#run-summary", has_text=run_id), page.locator("#run-chart img")],
            }
            for file, label in TABS:
                page.get_by_role("tab", name=label).click()
                for locator in ready[file]:
                    locator.wait_for()
                page.wait_for_function(  # every image drawn, no progress overlay left
                    "() => [...document.images].every(i => i.complete)"
                    " && !document.querySelector('.pending, .generating')"
                )
                path = folder / file
                page.screenshot(path=str(path), full_page=True)
                written.append(path)
        finally:
            browser.close()
    if outside:
        raise ScreenshotError(f"the page asked for {len(outside)} address(es) off the app, refused: {outside[0]}")
    if errors:
        raise ScreenshotError(f"the page raised {len(errors)} error(s): {errors[0].splitlines()[0]}")
    return written


def make_screenshots(out: Path, home: Path | None = None, run_id: str | None = None) -> list[Path]:
    """Make the five PNGs in ``out`` (see the module docstring); returns their paths. On failure ``out`` is left
    as it was, and the temporary work directory is kept, and named in the error, when it holds logs."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="chimed-screenshots-"))
    staging = Path(tempfile.mkdtemp(prefix=".make_screenshots-", dir=out))  # same filesystem: replaced in one step
    try:
        home, run_id = prepare_home(work, home, run_id)
        passwords = seed_accounts_and_bank(home)
        with running_app(home, work / "app.log") as url:
            seed_judgments(url, passwords, run_id)
            made = shoot_tabs(url, ADMIN, passwords[ADMIN], run_id, staging)
        if [p.name for p in made] != [file for file, _ in TABS]:
            raise ScreenshotError(f"made {[p.name for p in made]}, expected {[file for file, _ in TABS]}")
        written = []
        for path in made:
            target = out / path.name
            os.replace(path, target)
            written.append(target)
    except Exception as err:
        message = str(err) if isinstance(err, ScreenshotError) else f"{type(err).__name__}: {err}".strip()
        message = message.splitlines()[0]
        if any(work.glob("*.log")):  # the logs of train-all and the app tell what went wrong
            raise ScreenshotError(f"{message} (work directory kept: {work})") from err
        shutil.rmtree(work, ignore_errors=True)
        raise ScreenshotError(message) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="default: this folder")
    parser.add_argument("--home", type=Path, help="reuse this CHIMED_HOME's run (copied) instead of training one")
    parser.add_argument("--run", help=f"the run id under HOME/runs (default without --home: {RUN_ID}, trained)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        check_cjk_font()
        written = make_screenshots(args.out, args.home.resolve() if args.home else None, args.run)
    except ScreenshotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    for path in written:
        print(path)
    print(f"{len(written)} screenshots in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
