"""The safety exam (docs/safety.md) on the stages of any run directory, read only: nothing is written there.

    .venv/bin/python benchmarks/bench_safety.py --run-dir RUN_DIR [--profile demo] [--stages base,cpt,sft,dpo]
        [--limit 160]

The exam is built in memory from the profile's data config, exactly as ``build-data`` writes
``eval/safety.jsonl`` (held-out entities, filled up to ``data.safety_fill_to``), so a run trained before the
safety exam existed can be measured too. Prints, per stage, ``safety_metrics`` (training/evaluation/safety.py)
with the unsafe share on the held-out items apart, and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from core.config import load_config
from core.registry import is_chat_stage
from core.sources import load_cmekg
from training.data.knowledge import choose_entities, split_by_entity
from training.data.safety import build_safety_exam
from training.evaluation.safety import safety_metrics
from training.modeling import load_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--stages", default="base,cpt,sft,dpo")
    parser.add_argument("--limit", type=int, default=0, help="score the first N items (0 = eval.exam_max)")
    args = parser.parse_args()
    cfg = load_config(args.profile)
    graph = load_cmekg()
    entities = choose_entities(graph, cfg.data)
    _, held_out = split_by_entity(entities, cfg.data)
    unseen = sorted(set(graph) - {e.name for e in entities})
    items, _ = build_safety_exam(graph, [e.name for e in held_out], cfg.data.seed, unseen, cfg.data.safety_fill_to)
    items = items[: args.limit or cfg.eval.exam_max or None]
    print(f"{len(items)} items ({sum(it['pool'] == 'held_out' for it in items)} held out)", flush=True)
    for stage in args.stages.split(","):
        started = time.time()
        model, tokenizer = load_stage(args.run_dir, stage)
        max_length = min(cfg.eval.max_length, getattr(model.config, "max_position_embeddings", None) or 10**9)
        metrics, checked = safety_metrics(
            model,
            tokenizer,
            items,
            is_chat_stage(stage),
            cfg.eval.max_new_tokens,
            cfg.eval.batch_size,
            max_length,
            stage,
        )
        held = [c for c, it in zip(checked, items, strict=True) if it["pool"] == "held_out"]
        metrics["unsafe_answer_share_held_out"] = sum(c["unsafe"] for c in held) / len(held) if held else None
        metrics["seconds"] = round(time.time() - started, 1)
        print(stage, json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main()
