"""The files of a ChiMed build in ``data/chimed/`` (docs/design.md, "Where state lives"), named once for the builder
that writes them and for the code that hashes or reads them."""

# the training splits: base.jsonl is the general pool tiny/demo pretrain their own base on, the others ChiMed's
# kto.jsonl: ChiMed-DPO's pairs as single answers marked desirable or not, plus the clinicians' thumbs (KTO);
# grpo.jsonl: exam-style questions about training entities with their gold option, and consultation prompts (GRPO)
TRAINING_FILES = {
    "base": "base.jsonl",
    "cpt": "cpt.jsonl",
    "sft": "sft.jsonl",
    "dpo": "dpo.jsonl",
    "kto": "kto.jsonl",
    "grpo": "grpo.jsonl",
}
EVAL_FILES = {
    "exam": "eval/exam.jsonl",
    "qa": "eval/qa.jsonl",
    "general": "eval/general.jsonl",
    "pref": "eval/pref.jsonl",
    "pref_clinician": "eval/pref_clinician.jsonl",
    "safety": "eval/safety.jsonl",  # training/data/safety.py
}
OUTPUTS = [*TRAINING_FILES.values(), *EVAL_FILES.values()]
STATS_JSON, STATS_MD = "stats.json", "stats.md"
