"""Time and peak memory of ``import-model`` and ``export`` for each published layout's tiny checkpoint.

    .venv/bin/python benchmarks/bench_import_export.py [--repeat 3]

For every layout of ``tests/layouts.py`` (tiny random weights, tokenizers trained here) it writes the
checkpoint, trains the shrunk paper run of ``tests/training/test_real_checkpoints.py`` on it, then times, in fresh
processes under ``/usr/bin/time``, ``./launch.sh import-model`` (Baichuan layouts; the native ones are used as
they are) and ``./launch.sh export --stage dpo``. Wall seconds (median of the repeats) and peak RSS are
printed as a Markdown table. Most of either is importing torch/transformers/peft: the table also gives that.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from layouts import LAYOUTS, write_tiny_checkpoint  # noqa: E402
from test_real_checkpoints import SHRUNK  # noqa: E402

CONVERTED = ("baichuan", "baichuan2")


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one command in a fresh process."""
    done = subprocess.run(["/usr/bin/time", "-v", *command], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return hours * 3600 + minutes * 60 + seconds, rss / 1024


def measure(command: list[str], env: dict, repeat: int, before=None) -> str:
    runs = []
    for _ in range(repeat):
        if before:
            before()
        runs.append(timed(command, env))
    return f"{statistics.median(w for w, _ in runs):.1f} s, {max(r for _, r in runs):.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-import-export-"))
    env = dict(os.environ, CHIMED_HOME=str(work / "home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    python = [sys.executable, "-m", "chimed"]
    rows = [
        (
            "(imports only: torch, transformers, peft)",
            measure([sys.executable, "-c", "import torch, transformers, peft"], env, args.repeat),
            "",
        )
    ]
    try:
        subprocess.run(
            [*python, "build-data", "--profile", "paper", *SHRUNK[:4]],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        for layout in LAYOUTS:
            source = write_tiny_checkpoint(layout, work / "models" / layout)
            size = sum(f.stat().st_size for f in source.rglob("*") if f.is_file()) / 2**20
            imported = "n/a (used as it is)"
            if layout in CONVERTED:
                out = work / "imported" / layout
                imported = measure(
                    [*python, "import-model", str(source), "--out", str(out), "--force"], env, args.repeat
                )
            subprocess.run(
                [
                    *python,
                    "train-all",
                    "--profile",
                    "paper",
                    *SHRUNK,
                    f"model.path={source}",
                    "--run-id",
                    layout,
                    "train.evaluate_after=false",
                ],
                env=env,
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            out = work / "exported" / layout
            exported = measure(
                [
                    *python,
                    "export",
                    "--profile",
                    "paper",
                    "--run",
                    layout,
                    "--stage",
                    "dpo",
                    "--out",
                    str(out),
                    "--force",
                ],
                env,
                args.repeat,
            )
            rows.append((f"{layout} ({size:.1f} MiB source)", imported, exported))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| layout | import-model (median of {args.repeat}, peak RSS) | export --stage dpo |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
