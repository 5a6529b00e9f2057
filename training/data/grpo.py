"""ChiMed-GRPO (``grpo.jsonl``): the prompts GRPO samples answers for, each with what its rewards need.

Two kinds, from the same sources as the other splits and about training entities only:

    {"id": "grpo-exam-00000", "kind": "exam", "prompt": [user], "question": "...", "options": {"A": ..., ...},
     "answer": "C", "entity": "...", "subject": "cmekg_..."}
    {"id": "grpo-open-00000", "kind": "open", "prompt": [messages ending with the user's turn]}

- exam: a 4-option question in the exam's wording about a *training* entity, asked the way ChiMed-SFT's solved
  exam questions and the exam's own scoring ask it (the question alone: a small SFT model that never saw
  listed options answers them with noise), its options and gold letter kept beside it for the verifiable
  reward (the chosen option, by letter or by its text, ``training/trainer/rewards.py``). The held-out entities
  are the exam's: none of them is ever asked here, and a question that matches an evaluation question word
  for word is dropped like any training record.
- open: the consultation prompts of ChiMed-SFT (the conversation up to the patient's last turn), scored by
  the format term and, when the run has one, the reward model.
"""

from __future__ import annotations

from core.config import DataConfig
from training.data.decontam import asked_prompts, normalize
from training.data.dialogue import user
from training.data.evalsets import exam_questions
from training.data.knowledge import Entity
from training.data.sft import CONSULTATION_SOURCE

EXAM, OPEN = "exam", "open"


def grpo_prompts(
    train: list[Entity], having: dict[str, list[Entity]], sft: list[dict], eval_questions: set[str], data: DataConfig
) -> list[dict]:
    """The exam prompts about ``train`` entities (options from ``having``), then ChiMed-SFT's consultations."""
    out = []
    for q in exam_questions(train, having, data.seed, salt="grpo"):
        if normalize(q["question"]) in eval_questions:
            continue
        out.append(
            {
                "id": f"grpo-exam-{len(out):05d}",
                "kind": EXAM,
                "prompt": [user(q["question"])],
                "question": q["question"],
                "options": q["options"],
                "answer": q["answer"],
                "entity": q["entity"],
                "subject": q["subject"],
            }
        )
    opened = 0
    for record in sft:
        if record.get("source") != CONSULTATION_SOURCE:
            continue
        prompt = record["messages"][:-1]
        if any(normalize(p) in eval_questions for p in asked_prompts({"prompt": prompt})):
            continue
        out.append({"id": f"grpo-open-{opened:05d}", "kind": OPEN, "prompt": prompt})
        opened += 1
    return out
