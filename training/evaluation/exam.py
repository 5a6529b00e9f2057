"""Exam accuracy, C-Eval / CMExam style: pick one of the lettered options of each question.

Option scoring (the reported ``exam_acc``): every option is read as the answer to the question and the
model's log-likelihood of the option text, divided by its number of characters, ranks them (longer options
are not penalized for being long; characters rather than tokens, so that models with different tokenizers
are compared on the same footing). k-shot (paper: 5-shot) puts k solved questions before each one, as
earlier turns of the same conversation; those k are drawn once (seeded) from the exam and not scored, so
the zero-shot and k-shot accuracies are over the same questions. Optionally (``eval.score_by_letter``) the
options are also listed with their letters and the next-token likelihood of each letter decides, as the
C-Eval harness does for base models.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from core.errors import UserError
from core.prompting import conversation_prompt
from training.evaluation.loglik import make_request, score_requests
from training.evaluation.metrics import accuracy, char_tokens


def read_exam(path: Path) -> list[dict]:
    """Questions of an exam in the ChiMed format (``{"id","question","options","answer","subject"}``)."""
    items = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                ok = (
                    isinstance(item.get("options"), dict)
                    and item.get("answer") in item["options"]
                    and isinstance(item.get("question"), str)
                )
            except (json.JSONDecodeError, AttributeError):
                ok = False
            if not ok:
                raise UserError(
                    f"{path}:{number}: not an exam question (needs question, options {{A: ...}} and an "
                    "answer that is one of the option letters); fix or rebuild the file"
                )
            items.append(item)
    return items


def split_demonstrations(items: list[dict], k: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(k demonstrations drawn with ``seed``, the other questions in file order)."""
    if k <= 0 or len(items) <= k:
        return [], list(items)
    picked = set(random.Random(seed).sample(range(len(items)), k))
    return [items[i] for i in sorted(picked)], [it for i, it in enumerate(items) if i not in picked]


def question_with_options(item: dict) -> str:
    return item["question"] + "\n" + "\n".join(f"{letter}. {text}" for letter, text in item["options"].items())


def exam_conversation(item: dict, demos: list[dict], by_letter: bool) -> list[dict]:
    """The demonstrations as earlier solved turns, then the question (with its lettered options if
    ``by_letter``)."""
    messages = []
    for d in demos + [item]:
        messages.append({"role": "user", "content": question_with_options(d) if by_letter else d["question"]})
        if d is not item:
            messages.append({"role": "assistant", "content": d["answer"] if by_letter else d["options"][d["answer"]]})
    return messages


def score_exam(
    model,
    tokenizer,
    items: list[dict],
    demos: list[dict],
    chat: bool,
    batch_size: int,
    max_length: int,
    by_letter: bool = False,
    desc: str = "exam",
) -> dict:
    """``{"acc", "n", "ci95"}`` of the model on ``items`` with ``demos`` before each question."""
    requests, owners = [], []
    for q, item in enumerate(items):
        context = conversation_prompt(tokenizer, exam_conversation(item, demos, by_letter), chat)
        for letter, text in item["options"].items():
            requests.append(make_request(tokenizer, context, letter if by_letter else text, max_length))
            owners.append((q, letter, max(len(char_tokens(text)), 1)))
    scores = score_requests(model, requests, batch_size, desc=desc)
    best: dict[int, tuple[float, str]] = {}
    for (q, letter, chars), score in zip(owners, scores, strict=True):
        value = score.logprob if by_letter else score.logprob / chars
        if q not in best or value > best[q][0]:
            best[q] = (value, letter)
    return accuracy([best[q][1] == item["answer"] for q, item in enumerate(items)])
