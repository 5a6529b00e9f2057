"""What serving cpt as base + an 8-bit difference (app.delta_bits: 8) changes: the exam and the answers.

    CHIMED_HOME=DIR .venv/bin/python benchmarks/bench_delta.py [--profile demo] [--run ID] [--qa 50]

Loads the run's cpt whole and as the app's workers hold it (:func:`app.serving.shared_weights.hold_as_delta` on the
run's base), and prints for both the exam accuracy (k-shot and 0-shot, as the evaluation scores it), then
how many greedy answers to held-out questions are identical and the largest next-token logit difference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from app.serving.shared_weights import hold_as_delta, map_weights  # noqa: E402
from core.config import load_config  # noqa: E402
from training.evaluation.evaluate import load_eval_sets  # noqa: E402
from training.evaluation.exam import score_exam  # noqa: E402
from training.evaluation.generation import qa_generations  # noqa: E402
from training.manifest import latest_run, run_dir  # noqa: E402
from training.modeling import load_causal_lm, load_tokenizer, stage_chain, tokenizer_dir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", choices=("tiny", "demo", "paper"))
    parser.add_argument("--run", help="run id (default: the newest completed run)")
    parser.add_argument("--qa", type=int, default=50, help="held-out questions answered greedily by both")
    args = parser.parse_args()
    cfg = load_config(args.profile)
    path = run_dir(cfg, args.run or latest_run(cfg))
    base, cpt = stage_chain(path, "base")[0]["abspath"], stage_chain(path, "cpt")[0]["abspath"]
    tokenizer = load_tokenizer(tokenizer_dir(stage_chain(path, "cpt")))
    whole = load_causal_lm(cpt).eval()
    with tempfile.TemporaryDirectory() as cache:
        held = load_causal_lm(base)
        map_weights(held, base, Path(cache), torch.float32)
        held = hold_as_delta(held, load_causal_lm(cpt)).eval()
        sets = load_eval_sets(cfg)
        exam, e = sets.exams[""], cfg.eval
        limit = min(e.max_length, whole.config.max_position_embeddings or e.max_length)
        print(f"run {path.name}: cpt whole against cpt as base + 8-bit difference\n")
        print("| cpt | exam acc | exam 0-shot |\n|---|---:|---:|")
        answers = {}
        for name, model in (("whole", whole), ("base + 8-bit difference", held)):
            shots = score_exam(model, tokenizer, exam.items, exam.demos, False, e.batch_size, limit, desc=name)
            zero = score_exam(model, tokenizer, exam.items, [], False, e.batch_size, limit, desc=name)
            print(f"| {name} | {shots['acc'] * 100:.1f} | {zero['acc'] * 100:.1f} |", flush=True)
            answers[name] = qa_generations(
                model, tokenizer, sets.qa[: args.qa], False, e.max_new_tokens, e.batch_size, limit, desc=name
            )
        same = sum(a == b for a, b in zip(*answers.values()))
        ids = tokenizer([q["messages"][0]["content"] for q in sets.qa[: args.qa]], return_tensors="pt", padding=True)
        with torch.inference_mode():
            error = (whole(**ids).logits - held(**ids).logits).abs().max().item()
        print(f"\ngreedy answers identical: {same}/{len(answers['whole'])}; largest logit difference {error:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
