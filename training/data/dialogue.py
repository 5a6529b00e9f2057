"""How questions about an entity are asked and answered, shared by SFT, DPO and the held-out QA.

One answer style per relation (``Relation.answer`` + the entity's advice) is used for the SFT
answers, the QA references and the DPO "chosen" answers alike, so what SFT teaches is what BLEU and
ROUGE reward, and DPO pairs push further towards it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from training.data.knowledge import Entity
from training.data.relations import DISEASE, RELATION_BY_KEY, join_values


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def ask(entity: Entity, relation_key: str, rng: random.Random) -> str:
    """A user's question about one relation of the entity, in one of the relation's phrasings."""
    relation = RELATION_BY_KEY[relation_key]
    return rng.choice(relation.questions).format(e=entity.name)


def answer(entity: Entity, relation_key: str, values: list[str] | None = None, advice: bool = True) -> str:
    """The answer in the one house style; ``values`` replaces the entity's own (a DPO "rejected" answer)."""
    relation = RELATION_BY_KEY[relation_key]
    text = relation.answer.format(e=entity.name, v=join_values(relation, values or entity.facts[relation_key]))
    if advice and relation.advice:
        text += entity.advice
    return text


def bare_answer(entity: Entity, relation_key: str) -> str:
    """Just the facts ("多饮、多尿、消瘦。"), as a terse answer in ChiMed-CPT's QA text."""
    return join_values(RELATION_BY_KEY[relation_key], entity.facts[relation_key]) + "。"


def exam_style_turn(entity: Entity, relation_key: str, rng: random.Random) -> tuple[str, str] | None:
    """The relation asked in the exam's wording ("下列哪一项是X的常见症状？") and answered with one of its
    values ("多饮。"), as a solved exam question reads; None for a relation the exam does not ask. Only
    ever made for training entities: the held-out ones are what the exam asks about."""
    stem = RELATION_BY_KEY[relation_key].exam
    if not stem:
        return None
    return stem.format(e=entity.name), rng.choice(entity.facts[relation_key]) + "。"


def has_advice(relation_key: str) -> bool:
    return RELATION_BY_KEY[relation_key].advice


# --- consultations (multi-turn, from a disease's facts) ------------------------------------------

PATIENT_OPENINGS = (
    "医生您好，我最近出现了{s}的情况，这是怎么回事？",
    "大夫，我这段时间有{s}的症状，需要担心吗？",
    "你好，我最近{s}，不知道是什么原因？",
)
CHILD_OPENINGS = (
    "医生您好，我家孩子最近出现了{s}的情况，这是怎么回事？",
    "大夫，孩子这段时间有{s}的症状，需要担心吗？",
)
CHILD_WORDS = ("儿童", "小儿", "婴", "新生儿", "幼儿", "少儿")
FOLLOW_UP_SYMPTOM = "您好。请问除了这些，还有没有{s}？这些症状持续多久了？"
FOLLOW_UP_HISTORY = "您好。请问这些症状持续多久了？以前有没有出现过类似的情况？"
PATIENT_CONFIRMS = "有的，有时也会{s}。已经有一段时间了。"
PATIENT_HISTORY = "已经有一段时间了，以前没有这样过。"


@dataclass(frozen=True)
class Consultation:
    """A patient's consultation about a disease, up to the doctor's closing answer."""

    entity: Entity
    turns: list[dict]  # patient, doctor's follow-up question, patient
    described: list[str]  # the symptoms the patient reported
    differential: str | None  # another disease sharing those symptoms, to tell it from

    def closing(self, advice: bool = True) -> str:
        """The doctor's answer: possible condition, differential, examinations, department and advice."""
        text = f"根据您描述的{'、'.join(self.described)}等症状，可能是{self.entity.name}"
        text += f"，也需要与{self.differential}相鉴别。" if self.differential else "。"
        exams = self.entity.facts.get("examination")
        if exams:
            text += f"可以做{'、'.join(exams)}等检查以明确诊断。"
        if advice:
            text += self.entity.advice + "请不要自行用药。"
        return text


def consultation(entity: Entity, differential: str | None, rng: random.Random) -> Consultation:
    """A consultation built from a disease's facts.

    The patient describes some of the disease's symptoms, the doctor asks about one more (or about
    the history); the closing answer names the possible condition (and one to tell it from), the
    examinations and the department, and advises seeing a doctor.
    """
    assert entity.kind == DISEASE
    symptoms = list(entity.facts["symptom"])
    rng.shuffle(symptoms)
    held_back = symptoms.pop() if len(symptoms) >= 3 else None
    told = "、".join(symptoms)
    for_child = any(word in v for v in entity.facts.get("population", []) for word in CHILD_WORDS)
    opening = rng.choice(CHILD_OPENINGS if for_child else PATIENT_OPENINGS).format(s=told)
    if held_back:
        turns = [
            user(opening),
            assistant(FOLLOW_UP_SYMPTOM.format(s=held_back)),
            user(PATIENT_CONFIRMS.format(s=held_back)),
        ]
        return Consultation(entity, turns, symptoms + [held_back], differential)
    turns = [user(opening), assistant(FOLLOW_UP_HISTORY), user(PATIENT_HISTORY)]
    return Consultation(entity, turns, symptoms, differential)
