"""ChiMed-KTO (``kto.jsonl``): single answers marked desirable or undesirable, for the KTO stage.

KTO learns from one answer at a time (TRL's unpaired preference format, conversational):

    {"prompt": [messages], "completion": [{"role": "assistant", "content": ...}], "label": true | false,
     "source": ..., "example_id": ..., ["pair_id": ...] | ["rating_id": ..., "provenance": {...}]}

Two sources, nothing else: every pair of ChiMed-DPO split in two (its chosen answer desirable, its rejected
one undesirable; the pair's id kept, so the run records which pairs it learned from), and the clinicians'
single-answer ratings (thumbs up/down, and a correction as desirable) that ``export-ratings`` wrote into the
collected-ratings folder, train split only (the held-out ones stay out of training). A rating asking an
evaluation question is dropped like any other training record, and the build says how many were. The KTO
stage checks that both kinds of answer are there before it trains (:func:`check_feeds_kto`).
"""

from __future__ import annotations

from pathlib import Path

from core.errors import UserError
from core.files import read_jsonl
from training.data.decontam import drop_eval_questions
from training.data.importers import LineErrors, Malformed, _convert, check_messages, text_field


def kto_examples(pairs: list[dict], ratings: list[dict], eval_questions: set[str]) -> list[dict]:
    """ChiMed-DPO's ``pairs`` as single answers, then the train-split ``ratings`` that ask no eval question
    (how many ratings asked one is printed: none is left out silently)."""
    out = []
    for pair in pairs:
        for label, side in ((True, "chosen"), (False, "rejected")):
            out.append(
                {
                    "prompt": pair["prompt"],
                    "completion": pair[side],
                    "label": label,
                    "source": pair.get("source", "objective"),
                    "pair_id": pair["pair_id"],
                    "example_id": f"{pair['pair_id']}:{side}",
                    # the clinician pair's weight (align.pair_weights) goes with both of its answers
                    **({"weight": pair["weight"]} if "weight" in pair else {}),
                }
            )
    kept, removed = drop_eval_questions(ratings, eval_questions)
    if removed:
        print(f"build-data: kto: left out {removed} rated answers whose prompt is an evaluation question", flush=True)
    for rating in kept:
        of = rating.get("provenance", {}).get("completion_of", "answer")
        out.append({**rating, "example_id": f"{rating['rating_id']}:{of}"})
    return out


def read_collected_ratings(path: Path, errors: LineErrors) -> list[dict]:
    """The train-split records of an ``export-ratings`` file (malformed lines reported like any input)."""

    def convert(record: dict, _):
        split = record.get("split")
        if split not in ("train", "heldout"):
            raise Malformed(f"'split' must be 'train' or 'heldout', got {split!r}")
        label = record.get("label")
        if not isinstance(label, bool):
            raise Malformed(f"'label' must be true or false, got {label!r}")
        prompt = check_messages(record.get("prompt"), "prompt", last_role="user")
        completion = check_messages(record.get("completion"), "completion", last_role="assistant")
        if len(completion) != 1 or not completion[0]["content"].strip():
            raise Malformed("'completion' must be one non-empty assistant message")
        out = {
            "prompt": prompt,
            "completion": completion,
            "label": label,
            "source": str(record.get("source") or "clinician"),
            "rating_id": text_field(record, "rating_id"),
        }
        if isinstance(record.get("provenance"), dict):
            out["provenance"] = record["provenance"]
        return split, out

    return [record for split, record in _convert(path, errors, convert) if split == "train"]


def check_feeds_kto(examples: list[dict], path: Path) -> dict:
    """The counts of desirable and undesirable answers in ``examples`` (``path``: where they were read) and how
    many came from the clinicians' ratings; a one-line error when one of the two kinds is missing, since KTO
    needs both (the loss weighs the desirable answers against the undesirable ones)."""
    desirable = sum(1 for e in examples if e["label"] is True)
    counts = {
        "desirable": desirable,
        "undesirable": len(examples) - desirable,
        "from_ratings": sum(1 for e in examples if "rating_id" in e),
    }
    if not examples:
        raise UserError(
            f"kto: {path} has no examples: KTO needs desirable and undesirable answers (preference "
            "pairs or the clinicians' ratings); rebuild the data with some, or choose another align.method"
        )
    for kind, other, label, where in (
        ("undesirable", "desirable", "false", "thumbs-down ratings or preference pairs"),
        ("desirable", "undesirable", "true", "thumbs-up ratings, corrections or preference pairs"),
    ):
        if not counts[kind]:
            raise UserError(
                f"kto: {path} has no {kind} answers (label {label}), only {counts[other]} {other} "
                f"ones: KTO needs both; add {where} and rebuild the data, or choose another "
                "align.method"
            )
    return counts


def check_kto_data(cfg) -> None:
    """The KTO stage's check before a run trains anything (the stage registry's ``check``)."""
    check_feeds_kto(read_jsonl(cfg.data_dir / "kto.jsonl"), cfg.data_dir / "kto.jsonl")
