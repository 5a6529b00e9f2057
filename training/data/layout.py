"""The files of a ChiMed build in ``data/chimed/`` (DESIGN.md, "Where state lives"), named once for the builder
that writes them and for the code that hashes or reads them."""

# the training splits: base.jsonl is the general pool tiny/demo pretrain their own base on, the others ChiMed's
TRAINING_FILES = {"base": "base.jsonl", "cpt": "cpt.jsonl", "sft": "sft.jsonl", "dpo": "dpo.jsonl"}
EVAL_FILES = {"exam": "eval/exam.jsonl", "qa": "eval/qa.jsonl", "general": "eval/general.jsonl",
              "pref": "eval/pref.jsonl", "pref_clinician": "eval/pref_clinician.jsonl"}
OUTPUTS = [*TRAINING_FILES.values(), *EVAL_FILES.values()]
STATS_JSON, STATS_MD = "stats.json", "stats.md"
