"""Knowledge-graph facts as Chinese prose (the knowledge-graph part of ChiMed-CPT).

Each entity becomes ``phrasings`` short documents. Every document states every selected fact of the
entity, each time in another of the relation's phrasings, and names the entity in each sentence, so
a small model meets each fact several times, in several wordings, always next to its subject.
"""

from __future__ import annotations

from core.files import stable_hash
from training.data.knowledge import Entity
from training.data.relations import INTRODUCTIONS, RELATION_BY_KEY, join_values


def verbalize_entity(entity: Entity, phrasings: int, seed: int) -> list[str]:
    """``phrasings`` documents about ``entity``, each in other wordings."""
    documents = []
    for k in range(max(1, phrasings)):
        intros = INTRODUCTIONS[entity.kind]
        sentences = [intros[k % len(intros)].format(e=entity.name)]
        for key, values in entity.facts.items():
            relation = RELATION_BY_KEY[key]
            # start each relation at a seeded phrasing, then step through them document by document
            start = stable_hash(seed, "phrasing", entity.name, key) % len(relation.statements)
            template = relation.statements[(start + k) % len(relation.statements)]
            sentences.append(template.format(e=entity.name, v=join_values(relation, values)))
        documents.append("".join(sentences))
    return documents
