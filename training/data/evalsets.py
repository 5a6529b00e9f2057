"""The held-out evaluation sets: a 4-option exam and QA with references from the held-out entities,
held-out general text, and held-out preference pairs; plus the user's own exam and QA files.

The exam asks, for one relation of a held-out entity, which option is true of it. The answer is one
of the values the CPT text states about that entity; the three distractors are values other
entities state for the same relation (drawn entity first, so they are as common as answers are),
checked against everything CMeKG says about the asked entity so that none of them is also true.
Values too generic to be reliably false ("疼痛", "实验室检查") are neither asked nor offered.
"""

from __future__ import annotations

import random
from collections import Counter

from core.config import DataConfig
from training.data.knowledge import Entity
from training.data.relations import RELATION_BY_KEY, RELATIONS
from training.data.sft import consultations, kg_qa

LETTERS = "ABCD"
DRAWS = 200  # tries to find three distractors that are false of the entity and differ from each other


def specific_values(having: dict[str, list[Entity]], key: str) -> dict[str, list[str]]:
    """entity -> its stated values for ``key`` that are not too generic to examine (``Relation.exam_generic``)."""
    holders = having[key]
    counts = Counter(v for entity in holders for v in entity.facts[key])
    limit = RELATION_BY_KEY[key].exam_generic * len(holders)
    out = {}
    for entity in holders:
        values = [v for v in entity.facts[key] if counts[v] <= limit]
        if values:
            out[entity.name] = values
    return out


def exam_question(entity: Entity, key: str, specific: dict[str, list[str]], rng: random.Random) -> dict | None:
    """One 4-option question about ``entity``'s relation ``key``, or None when no 3 safe distractors exist.

    The answer and the distractors come from the same pool (a random entity's random specific value),
    so an option's commonness says nothing about whether it is right."""
    if entity.name not in specific:
        return None
    correct = rng.choice(specific[entity.name])
    options = [correct]
    holders = sorted(specific)
    for _ in range(DRAWS):
        if len(options) == len(LETTERS):
            break
        other = rng.choice(holders)
        value = rng.choice(specific[other])
        if other == entity.name or entity.is_true(key, value):
            continue
        if any(value in taken or taken in value for taken in options):  # no option hides inside another
            continue
        options.append(value)
    if len(options) < len(LETTERS):
        return None
    rng.shuffle(options)
    return {
        "question": RELATION_BY_KEY[key].exam.format(e=entity.name),
        "options": dict(zip(LETTERS, options)),
        "answer": LETTERS[options.index(correct)],
        "subject": f"cmekg_{key}",
    }


def exam_questions(
    entities: list[Entity], having: dict[str, list[Entity]], seed: int, salt: str = "exam"
) -> list[dict]:
    """One 4-option question per (entity, examined relation) of ``entities``, options drawn from ``having``."""
    specific = {r.key: specific_values(having, r.key) for r in RELATIONS if r.exam and r.key in having}
    questions = []
    for entity in entities:
        for key in entity.facts:
            if key not in specific:
                continue
            question = exam_question(entity, key, specific[key], random.Random(f"{seed}|{salt}|{entity.name}|{key}"))
            if question:
                questions.append({**question, "entity": entity.name})
    return questions


def build_exam(held_out: list[Entity], having: dict[str, list[Entity]], cfg: DataConfig) -> list[dict]:
    """One question per (held-out entity, examined relation), in a seeded order; ``exam_max`` caps it."""
    questions = [{k: v for k, v in q.items() if k != "entity"} for q in exam_questions(held_out, having, cfg.seed)]
    random.Random(f"{cfg.seed}|exam-order").shuffle(questions)
    questions = questions[: cfg.exam_max] if cfg.exam_max else questions
    return [{"id": f"cmekg-exam-{i:05d}", **q} for i, q in enumerate(questions)]


def build_qa(held_out: list[Entity], differential: dict[str, str], cfg: DataConfig) -> list[dict]:
    """Held-out questions (single-turn QA and consultations) with the house-style answer as reference."""
    items = [
        {"messages": r["messages"][:-1], "reference": r["messages"][-1]["content"]}
        for r in kg_qa(held_out, cfg, salt="qa")
    ]
    items += [
        {"messages": c.turns, "reference": c.closing()} for c in consultations(held_out, differential, cfg, salt="qa")
    ]
    random.Random(f"{cfg.seed}|qa-order").shuffle(items)
    items = items[: cfg.qa_max] if cfg.qa_max else items
    return [{"id": f"cmekg-qa-{i:05d}", **item} for i, item in enumerate(items)]
