"""End to end: the real app (``python -m chimed app``) on the tiny profile with the tiny run, driven
by a real headless Chromium: log in, accept the notice and the guideline, get four streamed answers,
rank them, write a better answer, vote on a two-panel comparison, paste a case with a name, a phone
number and an address (the app flags them and sends the redacted text), import a prompt bank in the Data
tab, and find every judgment and its pairs in the database, with no raw identifier in it or in the export. Then two annotators, each in their own browser
context, take the same prompt from their queues, rank its answers and write a better one; the
Leaderboard shows their agreement (Krippendorff's alpha), and each sees only their own rows in the
Data tab.

Needs Debian's chromium at /usr/bin/chromium (Playwright's own browser download does not work here);
without it the test is skipped, unless CHIMED_REQUIRE_BROWSER=1 (CI), which makes it fail instead.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from app.identifiers import screen_entry
from core.config import load_config
from preference_store.repository import PreferenceStore

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN, PASSWORD = "dr_e2e", "correct horse battery staple"
# two annotators working the same queue; each writes a better answer (correct general advice) of their own
ANNOTATORS = {
    "dr_wang_e2e": "保证钙和维生素D的摄入，坚持负重运动，戒烟限酒，老年人注意预防跌倒。",
    "dr_chen_e2e": "均衡饮食、适当晒太阳、规律锻炼；中老年人可按医嘱检查骨密度。",
}
BANK = Path(__file__).parents[1] / "fixtures" / "app" / "bank_e2e.jsonl"  # one held-out prompt
BANK_PROMPT = "骨质疏松应该怎样预防？"
XSS_PROMPT = '高血压患者饮食上要注意什么？<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
# a pasted case with obviously fake identifiers: a name, a phone number, an address
CASE = "我叫李明，电话13812345678，住在上海市浦东新区张江路88号，头痛三天了，需要做什么检查？"
CASE_SECRETS = ("李明", "13812345678", "张江路88号")
TIMEOUT_MS = 120_000  # generous: the 2-core machine is shared with other test runs

pytestmark = pytest.mark.browser


def _chromium_or_skip() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CHIMED_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{CHROMIUM} is missing and CHIMED_REQUIRE_BROWSER=1: apt-get install chromium")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); set CHIMED_REQUIRE_BROWSER=1 to fail instead")


@pytest.fixture
def running_app(tiny_run, tmp_path, start_app):
    """The app started by the CLI on a copy of the tiny run's home, with one admin account."""
    _chromium_or_skip()
    source_home, run_id = tiny_run
    home = tmp_path / "home"
    shutil.copytree(source_home, home, symlinks=True)
    with PreferenceStore(f"sqlite:///{home / 'preferences.db'}") as store:
        store.add_annotator(ADMIN, PASSWORD, role="admin")
        for name in ANNOTATORS:
            store.add_annotator(name, PASSWORD)
    return start_app(home), home, run_id


def _choose(page, elem_id: str, option: str) -> None:
    """Pick ``option`` in the Gradio dropdown with this elem_id."""
    page.locator(f"#{elem_id} input").click()
    page.locator("ul[role=listbox] li", has_text=option).first.click()


def _wait_status(page, text: str) -> str:
    page.locator("#status", has_text=text).wait_for(timeout=TIMEOUT_MS)
    return page.locator("#status").inner_text()


def _log_in(page, url: str, name: str) -> None:
    """Log in, accept the notice, and acknowledge the guideline when the app shows it (first visit)."""
    page.goto(url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(PASSWORD)
    page.get_by_role("button", name="Login").click()
    page.locator("#identity", has_text=name).wait_for()  # the page load has run: the guideline box is set
    page.locator("#accept-notice").click()
    page.locator("#prompt").wait_for(state="visible")
    if page.locator("#guideline-ack").is_visible():
        page.locator("#guideline-ack").click()
        _wait_status(page, "acknowledged")


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("CHIMED_SCREENSHOT_DIR"):
        target = Path(os.environ["CHIMED_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / name)
    return path


def test_clinician_session_in_a_real_browser(running_app, tmp_path):
    from playwright.sync_api import sync_playwright

    url, home, run_id = running_app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))

        # log in with the store's account; the notice gates the arena
        page.goto(url)
        page.get_by_label("username").fill(ADMIN)
        page.get_by_label("password").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        page.locator("#identity", has_text=ADMIN).wait_for()
        assert page.locator("#notice-footer", has_text="not medical advice").is_visible()
        assert not page.locator("#prompt").is_visible()
        page.locator("#accept-notice").click()
        page.locator("#prompt").wait_for(state="visible")
        # the guideline is shown before the first judgment, and acknowledged
        page.locator("#guideline-text", has_text="安全").wait_for()
        page.locator("#guideline-ack").click()
        _wait_status(page, "acknowledged")
        page.locator("#guideline-box").wait_for(state="hidden")

        # an empty prompt is refused without generating
        page.locator("#send").click()
        _wait_status(page, "empty")

        # four blind panels answer at once; markup in the prompt is shown as text, never run
        for label in "ABCD":
            assert page.locator(f"#header-{label}").inner_text().strip() == f"模型 {label}"
        page.locator("#prompt textarea").fill(XSS_PROMPT)
        page.locator("#send").click()
        _wait_status(page, "answers complete")
        for label in "ABCD":
            chat = page.locator(f"#chat-{label}")
            assert "<script>window.__xss = 1</script>" in chat.inner_text()
            assert chat.locator(".bot, [data-testid=bot]").count() >= 1
        assert page.evaluate("window.__xss") is None

        # rank the four answers; the names are revealed after the judgment
        for place, label in enumerate("DBAC", start=1):
            _choose(page, f"place-{label}", str(place))
        page.locator("#scores-A").get_by_text("A 评分").click()
        page.locator("#score-A-1 label", has_text="4").click()
        page.locator("#reason textarea").fill("D 的回答更完整")
        page.locator("#submit-ranking").click()
        assert "you have made 1 judgments" in _wait_status(page, "Recorded")
        assert run_id in page.locator("#header-A").inner_text()
        _screenshot(page, tmp_path, "arena_ranked.png")

        # one judgment per comparison: a better answer after the ranking would be a second one
        page.locator("#correction textarea").fill("应低盐低脂饮食，控制体重，限制饮酒，并按医嘱监测血压。")
        page.locator("#submit-correction").click()
        _wait_status(page, "already judged")

        # two contestants: a pairwise vote
        for stage in ("CPT", "SFT"):
            page.locator("#contestants label", has_text=f"{run_id} · {stage}").click()
        page.locator("#panel-C").wait_for(state="hidden")
        page.locator("#prompt textarea").fill("糖尿病有哪些常见症状？")
        page.locator("#send").click()
        _wait_status(page, "answers complete")
        page.locator("#vote-A").click()
        assert "you have made 2 judgments" in _wait_status(page, "A is better")
        shot = _screenshot(page, tmp_path, "arena_voted.png")

        # a pasted case, in a new conversation (after a vote the names are known: later turns are not blind and
        # their pairs stay out of the export): its identifiers are flagged before any model sees it, and only the
        # redacted text goes
        page.locator("#new-conversation").click()
        page.locator("#header-A", has_text=run_id).wait_for(state="detached")  # blind again
        page.locator("#prompt textarea").fill(CASE)
        page.locator("#send").click()
        page.locator("#deid-box").wait_for(state="visible")
        summary = page.locator("#deid-summary").inner_text()
        assert all(label in summary for label in ("姓名 name", "电话", "地址 address")), summary
        preview = page.locator("#deid-preview textarea").input_value()
        assert "头痛三天了" in preview and not any(secret in preview for secret in CASE_SECRETS)
        assert page.locator("#chat-A").inner_text().count("头痛三天了") == 0  # nothing was sent yet
        _screenshot(page, tmp_path, "arena_identifiers.png")
        page.locator("#deid-send").click()
        assert "redacted before sending" in _wait_status(page, "answers complete")
        page.locator("#deid-box").wait_for(state="hidden")
        chat = page.locator("#chat-A").inner_text()
        assert "头痛三天了" in chat and not any(secret in chat for secret in CASE_SECRETS)
        page.locator("#correction textarea").fill("头痛三天应先到神经内科就诊，必要时做头颅CT。")
        page.locator("#submit-correction").click()  # a pair whatever the two answers say: it is exported
        assert "you have made 3 judgments" in _wait_status(page, "corrected answer")

        # the leaderboard now rates the four checkpoints
        page.get_by_role("tab", name="排行榜 Leaderboard").click()
        page.locator("#ratings", has_text=f"{run_id}/dpo").wait_for()
        _screenshot(page, tmp_path, "arena_leaderboard.png")
        # an admin imports a prompt bank and exports from the Data tab, as import-bank and export-prefs do
        page.get_by_role("tab", name="数据 Data").click()
        page.locator("#recent-pairs", has_text=ADMIN).wait_for()  # admins see who made each pair
        page.locator("#bank-file input[type=file]").set_input_files(str(BANK))
        page.locator("#bank-file", has_text=BANK.name).wait_for()
        page.locator("#import-bank").click()
        page.locator("#import-status", has_text="imported 1, duplicates 0, errors 0").wait_for()
        page.locator("#export").click()
        page.locator("#export-status", has_text="exported").wait_for()
        _screenshot(page, tmp_path, "arena_data.png")
        page.get_by_role("tab", name="训练记录 Runs").click()
        page.locator("#run-summary", has_text=run_id).wait_for()
        assert page.evaluate("window.__xss") is None
        assert not errors, errors
        browser.close()

    # the app's API refuses an unknown checkpoint and records a judgment like the UI does; an admin may ask
    # for the names up front (blind=False: the comparison is stored as not blind)
    from gradio_client import Client

    client = Client(url, auth=(ADMIN, PASSWORD), verbose=False)
    assert f"{run_id}/dpo" in client.predict(api_name="/contestants")
    with pytest.raises(Exception, match="unknown checkpoint"):
        client.predict("头痛怎么办？", [f"{run_id}/dpo", "no-such-run/sft"], True, api_name="/compare")
    with pytest.raises(Exception, match="notice"):
        client.predict("头痛怎么办？", [f"{run_id}/sft", f"{run_id}/dpo"], False, api_name="/compare")
    made = client.predict("头痛怎么办？", [f"{run_id}/sft", f"{run_id}/dpo"], True, blind=False, api_name="/compare")
    assert [a["checkpoint_id"] for a in made["answers"]] == [f"{run_id}/sft", f"{run_id}/dpo"]
    judged = client.predict(made["comparison_id"], "B", api_name="/judge")
    assert judged["kind"] == "pairwise" and len(judged["pair_ids"]) == 1

    assert shot.stat().st_size > 10_000
    with PreferenceStore(f"sqlite:///{home / 'preferences.db'}") as store:
        counts = store.counts()
        assert counts.comparisons == 4  # four panels, two panels (twice: the pasted case), and the API's
        oldest = store.get_comparison(store.recent_pairs(limit=100)[-1].comparison_id)  # the four-panel one
        settings = load_config("tiny").app.decoding
        assert len(oldest.responses) == 4 and oldest.blind
        assert all(
            r.decoding["max_new_tokens"] == settings.max_new_tokens and r.seed == r.decoding["seed"]
            for r in oldest.responses
        )
        assert counts.judgments_by_kind == {"pairwise": 2, "ranking": 1, "correction": 1}
        assert counts.pairs == 6 + 1 + 1 + 2  # a ranking of 4, two votes, a correction over 2 answers
        # everything but the API's vote was exported (identical answers make identical pairs, exported once)
        assert 1 <= counts.exported_pairs <= counts.pairs - 1
        pairs = store.recent_pairs(limit=20)
        assert any(p.chosen_checkpoint is None and p.chosen.startswith("头痛三天应先") for p in pairs)
        redacted_case = screen_entry(prompt=CASE).redacted["prompt"]
        assert {p.prompt[-1]["content"] for p in pairs} == {
            XSS_PROMPT,
            "糖尿病有哪些常见症状？",
            "头痛怎么办？",
            redacted_case,
        }
        assert {p.rejected_checkpoint.split("/")[0] for p in pairs} == {run_id}
    exported = "".join(f.read_text(encoding="utf-8") for f in (home / "collected_pairs").glob("*.jsonl"))
    assert "头痛三天了" in exported  # the pasted case was exported, redacted
    with sqlite3.connect(home / "preferences.db") as db:
        dumped = "\n".join(db.iterdump())
    assert not [secret for secret in CASE_SECRETS if secret in exported or secret in dumped]

    # two annotators work the same queue, each in their own browser context
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pages = {}
        for name in ANNOTATORS:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda err: errors.append(str(err)))
            _log_in(page, url, name)
            assert "annotator" in page.locator("#identity").inner_text()
            page.locator("#queue-progress", has_text="0 / 1").wait_for()
            pages[name] = page
        for name, page in pages.items():  # the same bank prompt for both, answered by the run's four stages
            page.locator("#queue-next").click()
            _wait_status(page, "answers complete")
            assert BANK_PROMPT in page.locator("#chat-A").inner_text()
            for place, label in enumerate("ABCD", start=1):
                _choose(page, f"place-{label}", str(place))
            page.locator("#submit-ranking").click()
            _wait_status(page, "Recorded")
            # a follow-up question of their own, answered with a better answer (one judgment per comparison)
            page.locator("#prompt textarea").fill("那饮食上呢？")
            page.locator("#send").click()
            _wait_status(page, "answers complete")
            page.locator("#correction textarea").fill(ANNOTATORS[name])
            page.locator("#submit-correction").click()
            _wait_status(page, "corrected answer")
            page.locator("#queue-progress", has_text="1 / 1").wait_for()
        page = pages["dr_wang_e2e"]
        page.locator("#queue-next").click()
        _wait_status(page, "queue is empty")

        # the leaderboard shows their agreement on the shared prompt; an annotator sees only their own line
        page.get_by_role("tab", name="排行榜 Leaderboard").click()
        page.locator("#agreement", has_text="Krippendorff").wait_for()
        assert re.search(r"α = -?\d\.\d\d \(ordinal\)", page.locator("#agreement").inner_text())  # the rankings' alpha
        page.locator("#annotator-agreement", has_text="你 you").wait_for()
        assert "dr_chen_e2e" not in page.locator("#annotator-agreement").inner_text()
        assert not page.locator("#outliers").is_visible()  # the outlier screen is for admins
        page.locator("#bank-only input").check()
        page.locator("#leaderboard-summary", has_text="bank prompts only").wait_for()
        page.locator("#ratings", has_text=f"{run_id}/dpo").wait_for()
        _screenshot(page, tmp_path, "arena_agreement.png")

        # the Data tab: each annotator sees their own pairs only (their own better answer, not the other's)
        for name, page in pages.items():
            other = next(n for n in ANNOTATORS if n != name)
            page.get_by_role("tab", name="数据 Data").click()
            table = page.locator("#recent-pairs", has_text=ANNOTATORS[name][:12])
            table.wait_for()
            text = table.inner_text()
            assert ANNOTATORS[other][:12] not in text and "糖尿病" not in text and "头痛" not in text
            assert "my comparisons" in page.locator("#data-counts").inner_text()
            mine = page.locator("#my-judgments").inner_text()
            assert "排序 ranking" in mine and ANNOTATORS[name][:12] in mine and ANNOTATORS[other][:12] not in mine
            assert not page.locator("#import-bank").is_visible() and not page.locator("#export").is_visible()
        _screenshot(pages["dr_chen_e2e"], tmp_path, "arena_data_annotator.png")
        assert not errors, errors
        browser.close()

    with PreferenceStore(f"sqlite:///{home / 'preferences.db'}") as store:
        prompt = store.bank_prompts()[0]
        assert prompt.prompt == BANK_PROMPT and prompt.split == "heldout"
        assert store.counts().assignments_done == 2
        queued = [
            c
            for c in (store.get_comparison(p.comparison_id) for p in store.recent_pairs(limit=100))
            if c.bank_prompt_id == prompt.id
        ]
        assert {c.annotator_id for c in queued} == {store.annotator_by_name(n).id for n in ANNOTATORS}
        board = store.leaderboard(bank_only=True)
        assert board.agreement.by_kind["ranking"].annotators == 2 and board.agreement.by_kind["ranking"].units == 4
