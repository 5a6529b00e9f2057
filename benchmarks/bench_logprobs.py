"""The log-probability paths of the sft and dpo stages side by side, in one process (issue 20).

    CHIMED_HOME=DIR .venv/bin/python benchmarks/bench_logprobs.py --run RUN [--stage dpo] [--steps 200]
        [--variants fused:padded:live,plain:padded,plain:free] [--profile demo]

Builds the stage's trainer (``build_sft_trainer`` / ``build_dpo_trainer``) on the run's parent stage for each
variant (``lm_head_loss`` : ``padded`` or ``free`` [: ``live``, dpo only: the reference log-probabilities
computed at every step, ``dpo.precompute_reference=false``, as before issue 20]), trains ``--steps`` steps
without saving and prints the training loop's tokens/s (non-padding tokens / ``train_runtime``; dpo: plus the
reference precomputation when it is on), the mean loss (the same for every variant: the paths compute the same
numbers), the largest relative difference of a logged loss from the first variant's at the same step, and the
padding share. RUN needs the parent stage (sft: cpt; dpo: sft) finished under $CHIMED_HOME/runs.
"""

from __future__ import annotations

import argparse
import tempfile

from core.config import PROFILES, load_config
from core.files import read_jsonl
from training.modeling import load_stage
from training.trainer.logprobs import logprob_metrics
from training.trainer.paths import stage_paths


def measure(profile: str, run: str, stage: str, steps: int, head: str, layout: str, reference: str = "") -> dict:
    overrides = [
        f"{stage}.lm_head_loss={head}",
        f"{stage}.padding_free={layout == 'free'}",
        f"{stage}.max_steps={steps}",
        "train.save_steps=1000000",
        "train.report_to=[]",
    ]
    if reference == "live":
        overrides.append("dpo.precompute_reference=false")
    cfg = load_config(profile, overrides)
    paths = stage_paths(tempfile.mkdtemp(prefix="bench_logprobs_"), stage)
    paths.work.mkdir(parents=True)
    parent = {"sft": "cpt", "dpo": "sft"}[stage]
    model, tokenizer = load_stage(cfg.runs_dir / run, parent, device="cpu")
    if stage == "dpo":
        from training.recipes.dpo import build_dpo_trainer

        trainer, _, record = build_dpo_trainer(cfg, paths, model, tokenizer, read_jsonl(cfg.data_dir / "dpo.jsonl"))
    else:
        from training.recipes.sft import build_sft_trainer

        trainer, _, record = build_sft_trainer(cfg, paths, model, tokenizer, read_jsonl(cfg.data_dir / "sft.jsonl"))
    output = trainer.train()
    seconds = output.metrics["train_runtime"] + record.get("reference_precompute_s", 0.0)
    logged = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
    return {
        "variant": ":".join(filter(None, (head, layout, reference))),
        "tokens_per_s": trainer.state.num_input_tokens_seen / seconds,
        "loss": output.training_loss,
        "logged": logged,
        **logprob_metrics(record),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--stage", choices=("sft", "dpo"), default="dpo")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--variants", default="fused:padded:live,plain:padded,plain:free")
    parser.add_argument("--profile", choices=PROFILES, default="demo")
    args = parser.parse_args()
    rows = [measure(args.profile, args.run, args.stage, args.steps, *v.split(":")) for v in args.variants.split(",")]
    print(f"\n{args.stage}, {args.steps} steps, run {args.run}\n")
    print(
        "| variant (lm head : layout) | tokens/s | mean loss | logged losses vs the first, max | padding share |\n"
        "|---|---:|---:|---:|---:|"
    )
    first = rows[0]["logged"]
    for r in rows:
        drift = max(abs(loss - first[step]) / abs(first[step]) for step, loss in r["logged"].items() if step in first)
        print(
            f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['loss']:.4f} | {drift:.2%} | {r['padding_share']:.3f} |"
        )


if __name__ == "__main__":
    main()
