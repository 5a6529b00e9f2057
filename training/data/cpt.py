"""ChiMed-CPT: knowledge-graph prose about every entity, the user's own text, and general text at
``data.general_share`` against forgetting (Aquila-Med stage 1).

Records are ``{"text", "source"}``: ``kg`` (verbalized CMeKG), ``kg_qa_text`` (questions about the
training entities answered with the bare facts, as 问：/答： text: the paper's CPT mixes QA into the
prose, and seeing some entities' facts asked and answered teaches a model to retrieve the facts of
the others; the full house-style answer is left to SFT), ``user_text``, and the general sources ``general_people_daily`` / ``general_reviews`` (the
``general`` prefix is what the base stage pretrains on). The held-out general documents never enter it.
"""

from __future__ import annotations

import random

from tqdm import tqdm

from core.config import DataConfig
from core.prompting import plain_qa
from core.sources import Document
from training.data.dialogue import ask, bare_answer, exam_style_turn
from training.data.knowledge import Entity
from training.data.verbalize import verbalize_entity

KG_SOURCE, QA_TEXT_SOURCE = "kg", "kg_qa_text"


def build_cpt_corpus(
    entities: list[Entity],
    train_entities: list[Entity],
    general_pool: list[Document],
    user_texts: list[dict],
    cfg: DataConfig,
) -> list[dict]:
    """Prose about every entity (train and held-out alike: the exam measures what CPT injects), QA text
    about the training entities only, the user's text, then general text at its share."""
    records = [
        {"text": text, "source": KG_SOURCE}
        for entity in tqdm(entities, desc="ChiMed-CPT: verbalizing CMeKG", unit="entity", mininterval=1.0)
        for text in verbalize_entity(entity, cfg.phrasings_per_relation, cfg.seed)
    ]
    records += [{"text": text, "source": QA_TEXT_SOURCE} for text in qa_text(train_entities, cfg)]
    records += user_texts
    domain_chars = sum(len(r["text"]) for r in records)
    records += [{"text": doc.text, "source": doc.source} for doc in general_share(general_pool, domain_chars, cfg)]
    return records


def qa_text(entities: list[Entity], cfg: DataConfig) -> list[str]:
    """``cpt_qa_per_entity`` questions per entity, each answered with the bare facts; with
    ``cpt_qa_exam_stems`` an examined relation is also asked in the exam's wording and answered with one
    of its values. These are training entities only (the exam asks about the held-out ones), so the exam
    wording is a format the model has seen answered, never an exam question."""
    documents = []
    for entity in entities:
        rng = random.Random(f"{cfg.seed}|cpt-qa|{entity.name}")
        keys = list(entity.facts)
        rng.shuffle(keys)
        lines = []
        for key in keys[: cfg.cpt_qa_per_entity]:
            lines.append(plain_qa(ask(entity, key, rng), bare_answer(entity, key)))
            turn = exam_style_turn(entity, key, rng) if cfg.cpt_qa_exam_stems else None
            if turn:
                lines.append(plain_qa(*turn))
        if lines:
            documents.append("\n".join(lines))
    return documents


def general_share(pool: list[Document], domain_chars: int, cfg: DataConfig) -> list[Document]:
    """Documents from the front of ``pool`` until general text is ``general_share`` of all characters."""
    share = min(max(cfg.general_share, 0.0), 0.95)
    target = domain_chars * share / (1.0 - share)
    taken, chars = [], 0
    for doc in pool:
        if chars >= target:
            break
        taken.append(doc)
        chars += len(doc.text)
    return taken
