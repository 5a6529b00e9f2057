"""CMeKG entities as the builder uses them: their kind, their cleaned facts, the subset and the split.

Every later step (CPT prose, SFT answers, DPO pairs, exam, QA references) reads the same
:class:`Entity`, so the exam only asks about values that the CPT text states about that entity.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from core.config import DataConfig
from core.files import stable_hash
from training.data.relations import (
    DISEASE,
    DRUG,
    EMPTY_VALUES,
    HERB,
    KINDS,
    RELATION_BY_KEY,
    RELATIONS,
    TEST,
    Relation,
    advice_for,
)

CJK = re.compile(r"[\u4e00-\u9fff]")
MAX_NAME_CHARS = 30
SHORT_VALUE = 20  # relations with values up to this long hold terms, not instructions ("用法：口服")
TRAILING_ETC = re.compile(r"(?<=[\u4e00-\u9fff]{2})(等地|等)$")  # "河南等地" -> "河南"; "中等" stays

# CMeKG relations that tell an entity's kind, tried in the order of relations.KINDS
KIND_MARKERS = {
    DISEASE: ("常见症状", "就诊科室", "临床症状及体征", "常见病因", "并发症", "多发群体", "常见发病部位"),
    TEST: ("所属分类",),
    HERB: ("性味", "入药部位", "功效", "采收时间", "分布区域", "科"),
    DRUG: ("适应症", "不良反应", "禁忌", "OTC类型", "功能主治", "用法用量", "分类", "主治"),
}


@dataclass(frozen=True)
class Entity:
    name: str
    kind: str
    facts: dict[str, list[str]]  # relation key -> the values stated about it (in RELATIONS order)
    known: dict[str, tuple[str, ...]]  # relation key -> every cleaned value CMeKG gives (before the cap)
    everything: frozenset[str]  # every raw value of every CMeKG relation of the entity

    @property
    def advice(self) -> str:
        """How answers about this entity close (see a doctor / the department / a pharmacist)."""
        return advice_for(self.kind, self.facts.get("department", []))

    def is_true(self, relation: str, value: str) -> bool:
        """Whether ``value`` is, or overlaps, something CMeKG says about this entity (distractors must not)."""
        if value in self.everything:
            return True
        return any(value in known or known in value for known in self.known.get(relation, ()))


def entity_kind(relations: dict[str, list[str]]) -> str | None:
    for kind in KINDS:
        if any(relations.get(marker) for marker in KIND_MARKERS[kind]):
            return kind
    return None


def clean_values(relation: Relation, values: list[str], entity: str) -> list[str]:
    """The values of one relation that can be stated as facts, in CMeKG's order, without repeats."""
    out: list[str] = []
    for raw in values:
        value = str(raw).strip().strip("：:·,，、;；。 ")
        if relation.strip_prefix and value.startswith(relation.strip_prefix):
            value = value[len(relation.strip_prefix) :]
        if relation.value_map:
            value = relation.value_map.get(value, "")
        else:
            value = TRAILING_ETC.sub("", value)  # the templates add their own "等"
            clipped = ("：" in value or ":" in value) and relation.max_chars <= SHORT_VALUE  # a cut-off sentence
            if (
                clipped
                or value in EMPTY_VALUES
                or value in relation.drop
                or len(value) > relation.max_chars
                or not CJK.search(value)
                or "\n" in value
                or value == entity
            ):
                value = ""
        if value and value not in out:
            out.append(value)
    return out


def make_entity(name: str, relations: dict[str, list[str]], cfg: DataConfig) -> Entity | None:
    """The entity with its selected facts, or None when it has too few usable relations."""
    kind = entity_kind(relations)
    if kind is None or not CJK.search(name) or len(name) > MAX_NAME_CHARS:
        return None
    known = known_facts(name, kind, relations)
    facts = {
        key: select_values(list(values), cfg.max_values_per_relation, cfg.seed, name, key)
        for key, values in known.items()
    }
    # an entity enters ChiMed with enough facts, one of them worth an exam question
    if len(facts) < cfg.min_relations or not any(RELATION_BY_KEY[key].exam for key in facts):
        return None
    return Entity(name, kind, facts, known, raw_values(relations))


def known_facts(name: str, kind: str, relations: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    """relation key -> every cleaned value CMeKG gives the entity (in RELATIONS order; relations without one left
    out): what the builder may state, and what factual precision checks answers against."""
    known: dict[str, tuple[str, ...]] = {}
    for relation in RELATIONS:
        if kind not in relation.kinds:
            continue
        values = clean_values(relation, [v for key in relation.cmekg for v in relations.get(key, [])], name)
        if values:
            known[relation.key] = tuple(values)
    return known


def raw_values(relations: dict[str, list[str]]) -> frozenset[str]:
    """Every raw value of every CMeKG relation of an entity (``Entity.everything``)."""
    return frozenset(str(v).strip() for vals in relations.values() if isinstance(vals, list) for v in vals)


def select_values(values: list[str], limit: int, seed: int, name: str, relation: str) -> list[str]:
    """A seeded sample of at most ``limit`` values, kept in CMeKG's order."""
    if limit <= 0 or len(values) <= limit:
        return list(values)
    rng = random.Random(f"{seed}|values|{name}|{relation}")
    chosen = set(rng.sample(range(len(values)), limit))
    return [v for i, v in enumerate(values) if i in chosen]


def choose_entities(graph: dict[str, dict[str, list[str]]], cfg: DataConfig) -> list[Entity]:
    """The usable entities, sorted by name: all of them, or (``max_entities``) a seeded subset in the
    proportions of ``entity_mix``, a kind short of its quota filled up with others."""
    if not cfg.max_entities:
        return [e for e in (make_entity(name, graph[name], cfg) for name in sorted(graph)) if e is not None]
    ranked = sorted(graph, key=lambda name: (stable_hash(cfg.seed, "select", name), name))
    shares = {kind: max(0.0, getattr(cfg.entity_mix, kind)) for kind in KINDS}
    total = sum(shares.values()) or 1.0
    quota = {kind: round(cfg.max_entities * share / total) for kind, share in shares.items()}
    chosen: dict[str, Entity] = {}
    taken: Counter = Counter()
    for name in ranked:  # entities are made lazily: tiny needs a few hundred of 27,403
        if all(taken[kind] >= n for kind, n in quota.items()):
            break
        kind = entity_kind(graph[name])
        if kind is not None and taken[kind] < quota[kind]:
            entity = make_entity(name, graph[name], cfg)
            if entity is not None:
                chosen[name] = entity
                taken[kind] += 1
    for name in ranked:
        if len(chosen) >= cfg.max_entities:
            break
        if name not in chosen and (entity := make_entity(name, graph[name], cfg)) is not None:
            chosen[name] = entity
    return sorted(list(chosen.values())[: cfg.max_entities], key=lambda e: e.name)


def split_by_entity(entities: list[Entity], cfg: DataConfig) -> tuple[list[Entity], list[Entity]]:
    """(train, held out): ``eval_entity_share`` of each kind is held out for the exam, QA and pairs."""
    held: set[str] = set()
    for kind in KINDS:
        of_kind = sorted(
            (e for e in entities if e.kind == kind), key=lambda e: (stable_hash(cfg.seed, "eval", e.name), e.name)
        )
        held.update(e.name for e in of_kind[: round(len(of_kind) * cfg.eval_entity_share)])
    return [e for e in entities if e.name not in held], [e for e in entities if e.name in held]
