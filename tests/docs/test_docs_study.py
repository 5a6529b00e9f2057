"""docs/run-a-study.md, executed: every ```bash block of the page runs, in order, in one shell from the repository
root (as a reader would paste them), with ``HOME`` a fresh folder so that the page's ``CHIMED_HOME`` is too. Each
block must exit 0 and its output must match the ``<!-- expect: REGEX -->`` lines under it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "run-a-study.md"
BLOCK = re.compile(r"```bash\n(.*?)```\n((?:<!-- expect: .*? -->\n)*)", re.S)
EXPECT = re.compile(r"<!-- expect: (.*?) -->")


def page_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(commands, [expected regex, ...]) of each bash block, in page order."""
    return [(body, EXPECT.findall(expects)) for body, expects in BLOCK.findall(text)]


def test_the_page_has_blocks_that_each_expect_something():
    blocks = page_blocks(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) == PAGE.read_text(encoding="utf-8").count("```bash") >= 10
    assert all(expects for _, expects in blocks), "each block says what its output must show"


def test_run_a_study_page_runs_block_by_block(tmp_path):
    blocks = page_blocks(PAGE.read_text(encoding="utf-8"))
    work = tmp_path / "blocks"
    work.mkdir()
    lines = ["set -eo pipefail", f"cd {ROOT}"]
    for i, (body, _) in enumerate(blocks):
        (work / f"{i}.sh").write_text(body, encoding="utf-8")
        lines.append(f"source {work}/{i}.sh > {work}/{i}.out 2>&1")
        lines.append(f"echo done > {work}/{i}.rc")
    env = {k: v for k, v in os.environ.items() if k not in ("CHIMED_HOME", "CHIMED_DATABASE_URL")}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    proc = subprocess.Popen(["bash", "-c", "\n".join(lines)], env=env, start_new_session=True)
    try:
        proc.wait(timeout=1700)
    finally:
        try:  # the app and the server the page starts in the background end with the test, whatever happened
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for i, (body, expects) in enumerate(blocks):
        out = (work / f"{i}.out").read_text(encoding="utf-8", errors="replace") if (work / f"{i}.out").exists() else ""
        assert (work / f"{i}.rc").exists(), f"block {i + 1} failed:\n{body}\n--- its output (end):\n{out[-3000:]}"
        for pattern in expects:
            assert re.search(pattern, out), f"block {i + 1}: no {pattern!r} in its output:\n{out[-3000:]}"
    home = tmp_path / "home" / "chimed-study"
    assert (home / "runs" / "round2" / "manifest.json").is_file() and (home / "study.csv").is_file()
