"""Did CPT inject the held-out entities' facts? The exam's questions against the same facts as prose.

    CHIMED_HOME=DIR .venv/bin/python benchmarks/probe_knowledge.py --run ID [--profile demo] [--n 150]

For the exam items about symptoms, adverse reactions and departments (the stems it can turn back into
the CPT prose they come from), each option is ranked by its log-likelihood per character after two
prefixes: the exam question itself ("下列哪一项是X的常见症状？") and the CPT statement
("X的常见症状有"). Prints the accuracy of base and cpt with each: when the prose prefix is far above
chance and the question is not, the model holds the facts but cannot yet retrieve them from a question.
A diagnostic beside the evaluation, not part of it (the evaluation scores the exam as it is).
"""

from __future__ import annotations

import argparse
import json
import re

import torch

from core.config import load_config
from training.manifest import run_dir
from training.modeling import load_stage

# exam subject -> (the builder's exam stem as a pattern, the CPT statement it examines)
PROSE = {
    "cmekg_symptom": (r"下列哪一项是(.+)的常见症状？", "{}的常见症状有"),
    "cmekg_adverse_reaction": (r"下列哪一项是(.+)的不良反应？", "{}的不良反应有"),
    "cmekg_department": (r"(.+)患者应到下列哪个科室就诊？", "{}的就诊科室是"),
}


def option_score(model, tokenizer, prefix: str, option: str) -> float:
    head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    tail = tokenizer(option, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + tail])
    with torch.no_grad():
        logprobs = model(ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    return logprobs[torch.arange(len(targets)), targets][len(head) - 1 :].sum().item() / len(option)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--profile", default="demo", choices=("tiny", "demo", "paper"))
    parser.add_argument("--n", type=int, default=150, help="exam items probed")
    args = parser.parse_args()
    cfg = load_config(args.profile)
    items = []
    for line in (cfg.data_dir / "eval" / "exam.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if item.get("subject") in PROSE and (m := re.match(PROSE[item["subject"]][0], item["question"])):
            items.append((PROSE[item["subject"]][1].format(m.group(1)), item))
    items = items[: args.n]
    print(f"{len(items)} exam items; chance {1 / 4:.0%}\n\n| stage | question prefix | prose prefix |\n|---|---:|---:|")
    for stage in ("base", "cpt"):
        model, tokenizer = load_stage(run_dir(cfg, args.run), stage)
        model.eval()
        row = []
        for use_prose in (False, True):
            right = 0
            for prose, item in items:
                prefix = prose if use_prose else item["question"]
                scores = {k: option_score(model, tokenizer, prefix, v) for k, v in item["options"].items()}
                right += max(scores, key=scores.get) == item["answer"]
            row.append(f"{right / len(items):.1%}")
        print(f"| {stage} | {row[0]} | {row[1]} |")


if __name__ == "__main__":
    main()
