"""ChiMed-SFT: medical single-turn QA from CMeKG relations (with ``data.sft_exam_qa`` also solved
exam-style questions), multi-turn consultations built from disease facts, the user's Alpaca/ShareGPT
files, and general-domain instructions against forgetting.

All records are ``{"messages": [...], "source"}`` (TRL's conversational format). Only training
entities are asked about; the held-out entities belong to the exam and the QA set.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict

from tqdm import tqdm

from core.config import DataConfig
from core.files import stable_hash
from core.sources import Document
from training.data.dialogue import Consultation, answer, ask, assistant, consultation, exam_style_turn, user
from training.data.knowledge import Entity
from training.data.relations import DISEASE

QA_SOURCE, EXAM_SOURCE, CONSULTATION_SOURCE = "kg_qa", "kg_exam_qa", "kg_consultation"
GENERAL_SOURCE = "general_instruction"
SENTENCE = re.compile(r"[^。！？\n]*[。！？]|[^。！？\n]+")

HEADLINE_TASK = "{text}\n\n请为上面这篇新闻拟一个标题。"
CONTINUE_TASK = "请续写下面这段新闻：\n{text}"
SENTIMENT_TASK = "{text}\n\n请判断上面这条商品评论的情感倾向是正面还是负面。"
SENTIMENT_ANSWER = "这条评论的情感倾向是{label}的。"


def kg_qa(entities: list[Entity], cfg: DataConfig, salt: str = "sft") -> list[dict]:
    """One question and its house-style answer for every (entity, relation)."""
    records = []
    for entity in tqdm(entities, desc=f"ChiMed-SFT: QA ({salt})", unit="entity", mininterval=1.0):
        for key in entity.facts:
            rng = random.Random(f"{cfg.seed}|{salt}|{entity.name}|{key}")
            records.append(
                {"messages": [user(ask(entity, key, rng)), assistant(answer(entity, key))], "source": QA_SOURCE}
            )
    return records


def exam_style_qa(entities: list[Entity], cfg: DataConfig) -> list[dict]:
    """Solved exam-style questions about the training entities (the paper's ChiMed-SFT includes exam
    QA): every examined relation asked in the exam's wording and answered with one value."""
    records = []
    for entity in entities:
        for key in entity.facts:
            turn = exam_style_turn(entity, key, random.Random(f"{cfg.seed}|sft-exam|{entity.name}|{key}"))
            if turn:
                records.append({"messages": [user(turn[0]), assistant(turn[1])], "source": EXAM_SOURCE})
    return records


def can_consult(entity: Entity) -> bool:
    """A consultation needs symptoms to describe and a department to refer to."""
    return entity.kind == DISEASE and len(entity.facts.get("symptom", [])) >= 2 and "department" in entity.facts


def differentials(diseases: list[Entity]) -> dict[str, str]:
    """For each disease, the other disease sharing most of its stated symptoms (at least two)."""
    having = defaultdict(list)
    for disease in diseases:
        for symptom in disease.facts.get("symptom", []):
            having[symptom].append(disease.name)
    out = {}
    for disease in diseases:
        shared: dict[str, int] = defaultdict(int)
        for symptom in disease.facts.get("symptom", []):
            for other in having[symptom]:
                if other != disease.name:
                    shared[other] += 1
        best = sorted(shared.items(), key=lambda kv: (-kv[1], stable_hash("differential", disease.name, kv[0])))
        if best and best[0][1] >= 2:
            out[disease.name] = best[0][0]
    return out


def consultations(
    diseases: list[Entity], differential: dict[str, str], cfg: DataConfig, salt: str = "sft"
) -> list[Consultation]:
    """``multiturn_per_disease`` consultations for every disease that can have one."""
    out = []
    for entity in diseases:
        if not can_consult(entity):
            continue
        for k in range(cfg.multiturn_per_disease):
            rng = random.Random(f"{cfg.seed}|{salt}|consultation|{entity.name}|{k}")
            out.append(consultation(entity, differential.get(entity.name), rng))
    return out


def clip_sentences(text: str, max_chars: int) -> str:
    """Whole sentences from the start of ``text`` up to ``max_chars`` (at least part of the first)."""
    out = ""
    for sentence in SENTENCE.findall(text.replace("\n", "")):
        if out and len(out) + len(sentence) > max_chars:
            break
        out += sentence
    return out[:max_chars]


def general_instruction(doc: Document, max_chars: int) -> dict | None:
    """A task the document answers itself: its headline, its continuation, or a review's polarity."""
    if doc.label:
        task, reply = SENTIMENT_TASK.format(text=doc.text[:max_chars]), SENTIMENT_ANSWER.format(label=doc.label)
    elif doc.title and stable_hash("task", doc.text) % 2 == 0:
        task, reply = HEADLINE_TASK.format(text=clip_sentences(doc.body, max_chars)), doc.title
    else:
        sentences = SENTENCE.findall((doc.body or doc.text).replace("\n", ""))
        if len(sentences) < 2:
            return None
        task = CONTINUE_TASK.format(text=sentences[0][:max_chars])
        reply = clip_sentences("".join(sentences[1:]), max_chars)
    if not reply.strip():
        return None
    return {"messages": [user(task), assistant(reply)], "source": GENERAL_SOURCE}


def general_instructions(pool: list[Document], count: int, cfg: DataConfig) -> list[dict]:
    """``count`` general-domain instructions from the general training pool (seeded order)."""
    ordered = sorted(pool, key=lambda d: (stable_hash(cfg.seed, "general-sft", d.text), d.text))
    records = []
    for doc in ordered:
        if len(records) >= count:
            break
        record = general_instruction(doc, cfg.general_sft_max_chars)
        if record:
            records.append(record)
    return records


def build_sft(
    train_entities: list[Entity],
    differential: dict[str, str],
    general_pool: list[Document],
    imported: list[dict],
    cfg: DataConfig,
) -> list[dict]:
    """Medical QA + consultations + imported conversations, then general instructions at their share."""
    records = kg_qa(train_entities, cfg)
    if cfg.sft_exam_qa:
        records += exam_style_qa(train_entities, cfg)
    records += [
        {"messages": c.turns + [assistant(c.closing())], "source": CONSULTATION_SOURCE}
        for c in consultations(train_entities, differential, cfg)
    ]
    records += imported
    share = min(max(cfg.general_sft_share, 0.0), 0.95)
    count = round(len(records) * share / (1.0 - share))
    if cfg.general_sft_max:
        count = min(count, cfg.general_sft_max)
    return records + general_instructions(general_pool, count, cfg)
