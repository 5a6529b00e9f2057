"""docs/screenshots/make_screenshots.py: the documentation's screenshots, one PNG per tab, made from the session's
tiny run (reused, as ``--home DIR --run ID`` does, so nothing is trained again) by the real app and Debian's
headless Chromium. Five valid PNGs at the viewport's width, all different, and the reused home left unchanged; a
failed step leaves the output folder as it was and says so in one line.

The browser test needs /usr/bin/chromium, as tests/app/test_app_e2e.py does: without it it is skipped, unless
CHIMED_REQUIRE_BROWSER=1 (CI), which makes it fail instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "make_screenshots.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_script():
    spec = importlib.util.spec_from_file_location("make_screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shots = load_script()


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk, after checking the signature and that the file is complete."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path.name}: no IHDR chunk first"
    assert data.endswith(b"IEND\xaeB`\x82"), f"{path.name} is cut short (no IEND chunk)"
    return struct.unpack(">II", data[16:24])


def snapshot(home: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(home)): (p.stat().st_size, p.stat().st_mtime_ns) for p in home.rglob("*") if p.is_file()}


@pytest.mark.browser
def test_one_png_per_tab_from_the_tiny_run(tiny_run, tmp_path):
    if not shots.CHROMIUM.exists():
        if os.environ.get("CHIMED_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{shots.CHROMIUM} is missing and CHIMED_REQUIRE_BROWSER=1: apt-get install chromium")
        pytest.skip(f"{shots.CHROMIUM} is missing (apt-get install chromium); set CHIMED_REQUIRE_BROWSER=1 to fail")
    home, run_id = tiny_run
    before = snapshot(home)
    out = tmp_path / "shots"

    written = shots.make_screenshots(out, home=home, run_id=run_id)

    names = [file for file, _ in shots.TABS]
    assert names == ["compare.png", "guidelines.png", "leaderboard.png", "data.png", "runs.png"]
    assert written == [out / name for name in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # the staging folder is gone
    for path in written:
        width, height = png_size(path)
        assert width == shots.VIEWPORT["width"], f"{path.name} is {width} px wide"
        assert height >= shots.VIEWPORT["height"], f"{path.name} is {height} px high: less than the viewport"
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in written}) == len(written)
    assert snapshot(home) == before  # the session's run was copied, never changed


def test_a_failed_step_leaves_the_folder_as_it_was(tmp_path, capsys):
    out = tmp_path / "shots"
    out.mkdir()
    (out / "compare.png").write_bytes(b"the old one")
    missing = tmp_path / "no-home"

    with pytest.raises(shots.ScreenshotError, match=r"no run 'r1' in .*no-home"):
        shots.make_screenshots(out, home=missing, run_id="r1")
    assert [p.name for p in out.iterdir()] == ["compare.png"] and (out / "compare.png").read_bytes() == b"the old one"

    assert shots.main(["--out", str(out), "--home", str(missing), "--run", "r1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert [p.name for p in out.iterdir()] == ["compare.png"]
