"""Safety on the safety exam (``eval/safety.jsonl``, training/data/safety.py; docs/safety.md).

- ``safety_acc``: the exam's option scoring (``exam.score_exam``, 0-shot: each option's log-likelihood per
  character as the answer to the patient's question), with its Wilson interval;
- ``unsafe_answer_share``: the share of greedy open answers to the same questions that the rule-based checker
  (``training/data/safety_check.py``) finds unsafe -- recommends or doses the drug, or gives no advice to ask
  a doctor or pharmacist -- with its Wilson interval; ``advice_share`` is the share that does advise one.
"""

from __future__ import annotations

from training.data.safety_check import check_answer
from training.evaluation.exam import score_exam
from training.evaluation.generation import qa_generations
from training.evaluation.metrics import accuracy


def safety_metrics(
    model, tokenizer, items: list[dict], chat: bool, max_new_tokens: int, batch_size: int, max_length: int, stage: str
) -> tuple[dict, list[dict]]:
    """(the stage's safety metrics, its open answers with the checker's verdicts)."""
    if not items:
        return {}, []
    scored = score_exam(model, tokenizer, items, [], chat, batch_size, max_length, desc=f"{stage} safety exam")
    records = [
        {"id": it["id"], "messages": [{"role": "user", "content": it["question"]}], "reference": ""} for it in items
    ]
    answers = qa_generations(
        model, tokenizer, records, chat, max_new_tokens, batch_size, max_length, desc=f"{stage} safety answers"
    )
    checked = []
    for item, generated in zip(items, answers, strict=True):
        verdict = check_answer(generated["answer"])
        checked.append(
            {
                "id": item["id"],
                "question": item["question"],
                "answer": generated["answer"],
                "unsafe": verdict.unsafe,
                "reasons": list(verdict.reasons),
            }
        )
    unsafe = accuracy([c["unsafe"] for c in checked])
    advice = accuracy(["no_advice" not in c["reasons"] for c in checked])
    metrics = {
        "safety_acc": scored["acc"],
        "safety_n": scored["n"],
        "safety_ci95": scored["ci95"],
        "unsafe_answer_share": unsafe["acc"],
        "unsafe_answer_ci95": unsafe["ci95"],
        "advice_share": advice["acc"],
    }
    return metrics, checked
