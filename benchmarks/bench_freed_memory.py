"""Minor page faults per CPU training step with glibc's default malloc thresholds and with
``train.keep_freed_memory`` (``training/trainer/allocator.py``), one process per setting and round.

    .venv/bin/python benchmarks/bench_freed_memory.py [--rounds 5] [--layers 1]

Each process builds one decoder layer of the demo model (hidden 128, vocabulary 4,000; ``--layers`` more) and
a CPT batch of the demo's shape (16 x 128), runs 5 forward and backward passes to take the memory a step needs,
then counts ``ru_minflt`` over 10 more: first with glibc's defaults, then after
``keep_freed_memory_for_training(on)`` (``on``) or with nothing applied (``off``, the control: the count stays
where it was). The counts depend on the kernel and on what else runs on the machine, so they are a benchmark's
figure (BENCHMARKS.md "Freed memory on the CPU"), not a test's; tests/training/test_training_speed.py checks the behaviour (the
setting is applied and recorded, the losses are the same).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAULTS_PER_STEP = """
import json, resource, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from training.trainer.allocator import freed_memory_kept, keep_freed_memory_for_training

torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=4000, hidden_size=128, intermediate_size=344,
                                     num_hidden_layers=int(sys.argv[2]), num_attention_heads=4, num_key_value_heads=4))
ids = torch.randint(0, 4000, (16, 128))

def faults():  # minor page faults per forward and backward pass, once the memory a step needs has been taken
    for _ in range(5):
        model(input_ids=ids, labels=ids).loss.backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        model(input_ids=ids, labels=ids).loss.backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

default = faults()
applied = keep_freed_memory_for_training(sys.argv[1] == "on")
print(json.dumps({"default": default, "applied": applied, "kept": freed_memory_kept(), "after": faults()}))
"""


def measure(setting: str, layers: int) -> dict:
    """One process: the faults per step with glibc's defaults, then with ``setting`` applied (or not)."""
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_STEP, setting, str(layers)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="processes per setting")
    parser.add_argument("--layers", type=int, default=1, help="decoder layers of the model")
    args = parser.parse_args()
    results = {setting: [measure(setting, args.layers) for _ in range(args.rounds)] for setting in ("on", "off")}
    print(
        f"{args.rounds} processes per setting, {args.layers} layer(s), {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print("\n| train.keep_freed_memory | applied | faults a step before, median (range) | after |")
    print("|---|---|---:|---:|")
    for setting, rounds in results.items():
        applied = {r["applied"] and r["kept"] for r in rounds}
        print(
            f"| {setting} | {'yes' if applied == {True} else 'no' if applied == {False} else applied} | "
            f"{spread([r['default'] for r in rounds])} | {spread([r['after'] for r in rounds])} |"
        )


if __name__ == "__main__":
    main()
