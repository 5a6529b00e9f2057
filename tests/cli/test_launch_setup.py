"""``./launch.sh setup`` installs only when the dependencies changed (issue 37): it is skipped while
pyproject.toml's hash matches the venv's stamp and redone after pyproject.toml changes.

launch.sh runs from a copy beside a pyproject.toml of the test's own (the script works in its own folder), on a
venv named by CHIMED_VENV whose python is a fake that records its calls: the real .venv is never touched and
nothing is installed (the real install runs in CI)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/usr/bin/env bash
# records every call (its arguments, one line); "torch is installed" and "pip installed it" both succeed
printf '%s\\n' "$*" >> "$(dirname "$0")/calls.log"
"""


def _setup(root: Path, venv: Path) -> tuple[str, list[str]]:
    """Run ``launch.sh setup`` in ``root``; its output and the calls it made of the venv's python."""
    log = venv / "bin" / "calls.log"
    log.unlink(missing_ok=True)
    done = subprocess.run(
        ["bash", str(root / "launch.sh"), "setup"],
        env={**os.environ, "CHIMED_VENV": str(venv)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout, log.read_text().splitlines() if log.exists() else []


def test_setup_is_skipped_until_the_dependencies_change(tmp_path):
    root, venv = tmp_path / "project", tmp_path / "venv"
    root.mkdir()
    shutil.copy(ROOT / "launch.sh", root / "launch.sh")
    pyproject = root / "pyproject.toml"
    pyproject.write_text('[project]\nname = "chimed-arena"\ndependencies = ["torch"]\n', encoding="utf-8")
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON, encoding="utf-8")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    stamp = venv / ".chimed-setup-base"
    install = "-m pip install --quiet --progress-bar off -e ."

    out, calls = _setup(root, venv)  # never set up: installs and stamps the hash of pyproject.toml
    assert out.splitlines() == ["setup: installing chimed-arena .", "setup: done"]
    assert calls[-1] == install
    assert stamp.read_text().strip() == hashlib.sha256(pyproject.read_bytes()).hexdigest()

    assert _setup(root, venv) == ("", [])  # nothing changed: skipped, pip never runs

    pyproject.write_text(pyproject.read_text() + 'optional-dependencies = {test = ["pytest"]}\n', encoding="utf-8")
    out, calls = _setup(root, venv)  # a dependency added: installed again, the new hash stamped
    assert out.splitlines()[-1] == "setup: done" and calls[-1] == install
    assert stamp.read_text().strip() == hashlib.sha256(pyproject.read_bytes()).hexdigest()

    assert _setup(root, venv) == ("", [])
    assert not (ROOT / ".venv" / "bin" / "calls.log").exists()
