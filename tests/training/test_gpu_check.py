"""benchmarks/gpu_check.sh, the prepared GPU check of the paper path, in its CPU smoke mode (tiny model, fp32,
no DeepSpeed): every step of it runs and passes. About two minutes on 2 cores, so only on request."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("CHIMED_TEST_GPU_CHECK") != "1",
    reason="set CHIMED_TEST_GPU_CHECK=1 to run benchmarks/gpu_check.sh in CPU smoke mode",
)


def test_gpu_check_cpu_smoke_mode_passes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "CHIMED_HOME", "GPU_CHECK_HOME")}
    env.update(GPU_CHECK_CPU="1", TMPDIR=str(tmp_path))
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert out.count("gpu_check: PASS step") == 6, out[-6000:]
    assert "gpu_check: PASS (all 6 steps" in out
    assert "sft tokens/s padding-free" in out
    assert not list(tmp_path.glob("chimed-gpu-check.*")), "the work directory was left behind"
