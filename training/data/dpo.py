"""ChiMed-DPO: objective pairs built from known answers (Aquila-Med), imported preference files, and the
pairs clinicians made in the app (``export-prefs`` files in the collected-pairs folder).

An objective pair asks about one relation of an entity (or closes one of its consultations).
"chosen" is the KG-grounded answer in the house style; "rejected" is just as fluent but either
states another entity's facts for that relation (values CMeKG does not give for this entity) or
drops the closing advice to see a doctor.
"""

from __future__ import annotations

import random
from collections import defaultdict

from tqdm import tqdm

from core.config import DataConfig
from core.files import stable_hash
from training.data.dialogue import answer, ask, has_advice, user
from training.data.importers import dpo_record, pair_id
from training.data.knowledge import Entity
from training.data.sft import consultations

OBJECTIVE_SOURCE = "kg_objective"
CONSULTATION = "consultation"  # stands beside the relation keys as something a pair can be about
DRAWS = 20  # tries to find another entity none of whose values is true of this one


def relation_index(entities: list[Entity]) -> dict[str, list[Entity]]:
    """relation -> the entities stating it (where a wrong-facts answer borrows its values)."""
    having = defaultdict(list)
    for entity in entities:
        for key in entity.facts:
            having[key].append(entity)
    return having


def wrong_values(entity: Entity, key: str, having: dict[str, list[Entity]], rng: random.Random) -> list[str] | None:
    """Another entity's values for ``key``, none of them true of ``entity`` (None if none is found)."""
    candidates = having[key]
    for _ in range(DRAWS if len(candidates) > 1 else 0):
        other = rng.choice(candidates)
        if other.name != entity.name and not any(entity.is_true(key, v) for v in other.facts[key]):
            return other.facts[key]
    return None


def objective_pairs(
    entities: list[Entity], having: dict[str, list[Entity]], differential: dict[str, str], cfg: DataConfig, salt: str
) -> list[dict]:
    """``dpo_pairs_per_entity`` pairs per entity, alternating a wrong-facts and a no-advice rejection."""
    consulted = {c.entity.name: c for c in consultations(entities, differential, cfg, salt=salt)}
    pairs = []
    for entity in tqdm(entities, desc=f"ChiMed-DPO: objective pairs ({salt})", unit="entity", mininterval=1.0):
        rng = random.Random(f"{cfg.seed}|{salt}|pairs|{entity.name}")
        relations = list(entity.facts)
        rng.shuffle(relations)
        advised = [k for k in relations if has_advice(k)] + ([CONSULTATION] if entity.name in consulted else [])
        used: list[str] = []  # each pair of an entity is about another relation while there are any left
        for i in range(cfg.dpo_pairs_per_entity):
            if i % 2 == 1 and advised:  # drop the advice to see a doctor
                key = _least_used(advised, used)
                if key == CONSULTATION:
                    talk = consulted[entity.name]
                    prompt, chosen, rejected = talk.turns, talk.closing(), talk.closing(advice=False)
                else:
                    prompt = [user(ask(entity, key, rng))]
                    chosen, rejected = answer(entity, key), answer(entity, key, advice=False)
            else:  # state another entity's facts
                found = None
                for key in sorted(relations, key=used.count):  # stable: unused relations first
                    values = wrong_values(entity, key, having, rng)
                    if values is not None:
                        found = key, values
                        break
                if found is None:
                    continue
                key, values = found
                prompt = [user(ask(entity, key, rng))]
                chosen, rejected = answer(entity, key), answer(entity, key, values=values)
            used.append(key)
            pairs.append(
                dpo_record(prompt, chosen, rejected, OBJECTIVE_SOURCE, pair_id("obj", prompt, chosen, rejected))
            )
    return pairs


def _least_used(candidates: list[str], used: list[str]) -> str:
    return min(candidates, key=used.count)  # min keeps the first of equals: the seeded order decides


def hold_out_by_prompt(pairs: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): a deterministic ``share`` of the pairs, chosen by prompt so that the pairs of
    one prompt stay on one side."""
    held = [stable_hash(seed, "heldout-pairs", repr(p["prompt"])) / 2**64 < share for p in pairs]
    return [p for p, h in zip(pairs, held) if not h], [p for p, h in zip(pairs, held) if h]
