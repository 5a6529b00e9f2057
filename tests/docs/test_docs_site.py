"""The manual builds: ``mkdocs build --strict`` from the repository root (mkdocs.yml, docs/) exits 0, so a broken
link or anchor, or a page left out of the nav, fails the suite. README.md is not part of the site: its relative
links are checked here against the files and the built pages' anchors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"  # the .venv's, installed with the test extra


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


def page_html(site: Path, page: str) -> str:
    """The built HTML of ``docs/<page>`` (``index.md`` -> ``index.html``, ``x.md`` -> ``x/index.html``)."""
    stem = page.removesuffix(".md")
    path = site / ("index.html" if stem == "index" else f"{stem}/index.html")
    assert path.is_file(), f"no page built for docs/{page}"
    return path.read_text(encoding="utf-8")


def test_the_site_builds_strict_with_every_page(site):
    for page in sorted(p.name for p in (ROOT / "docs").glob("*.md")):
        page_html(site, page)
    # the README's commands table is included into getting-started, not copied: every command is there
    commands = page_html(site, "getting-started.md")
    assert "./launch.sh export-judgments" in commands and "./launch.sh serve-plan" in commands
    # BENCHMARKS.md is shown in the site through docs/benchmarks.md, with its CI section
    assert 'id="ci"' in page_html(site, "benchmarks.md")


def test_the_readme_links_resolve(site):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    links = [link for link in re.findall(r"\]\(([^)\s]+)\)", prose) if not re.match(r"[a-z]+:", link)]
    assert len(links) >= 15
    own_anchors = {
        re.sub(r"[^\w\- ]", "", heading.lower()).strip().replace(" ", "-")
        for heading in re.findall(r"^#{1,6} (.+)$", prose, flags=re.M)
    }
    for link in links:
        path, _, anchor = link.partition("#")
        if not path:
            assert anchor in own_anchors, f"README.md links to #{anchor}, which is not one of its headings"
            continue
        assert (ROOT / path).exists(), f"README.md links to {path}, which does not exist"
        if anchor:
            assert path.startswith("docs/") and path.endswith(".md"), link
            html = page_html(site, path.removeprefix("docs/"))
            assert f'id="{anchor}"' in html, f"README.md links to {link}: the page has no anchor #{anchor}"


def test_the_readme_stays_an_entry_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    assert lines[:6] == [
        "# ChiMed Arena",
        "",
        "```bash",
        "./launch.sh          # set up .venv, build the demo ChiMed data, start the app; the demo run trains in the background if none",
        "./launch.sh test     # set up if needed and run the test suite",
        "```",
    ]
    assert "shared/DESIGN.md" not in "\n".join(lines)
