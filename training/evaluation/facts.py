"""Factual precision: are the facts an open answer states true of CMeKG? (docs/evaluation.md "Factual precision")

Exam accuracy measures whether a model *recognizes* a fact among options; BLEU/ROUGE measure closeness to a
house-style reference. Neither asks whether what a model *says* is true. Here every greedy answer to a held-out
question (the same answers BLEU/ROUGE score) is read for the claims it makes, each claim an
(entity, relation, value) triple, and each claim is checked against the packaged CMeKG graph:

- **a claim** is a sentence (or a clause between commas) in one of the ways the builder states a relation
  (``Relation.statements`` and ``Relation.answer``, training/data/relations.py: "X的不良反应有A、B等。"), or in one
  of the common phrasings of :data:`PHRASINGS` (the consultation's closing, "根据您描述的A、B等症状，可能是X", and
  the advice "请及时到内分泌科就诊", which states the department of the answer's subject); or, to a question in a
  relation's wording ("哪些人容易得X？"), a first sentence that matches none of them: the bare values, as ChiMed-CPT's
  QA text answers ("青壮年人。"). Each listed value is one claim, normalized the way the builder normalizes CMeKG's
  values (``knowledge.clean_values``);
- **confirmed**: CMeKG states the value (or a value it overlaps) for that entity (``Entity.is_true``, the test the
  exam's distractors must fail);
- **contradicted**: CMeKG knows that relation of the entity, the value is not among it, and CMeKG states the value
  for that relation of *another* entity (a real symptom, side effect or department, attached to the wrong subject);
- **uncheckable**: the entity is not in CMeKG, CMeKG states nothing for that relation of it, or the value is stated
  for no entity at all (a paraphrase the graph cannot settle).

``fact_precision`` = confirmed / (confirmed + contradicted), with its Wilson interval; the three shares are of all
claims. The GRPO ``facts`` reward is the same precision for one sampled answer (:func:`make_facts_reward`).
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from dataclasses import dataclass

from core.sources import load_cmekg
from training.data.knowledge import CJK, Entity, clean_values, entity_kind, known_facts, raw_values
from training.data.relations import RELATION_BY_KEY, RELATIONS, Relation
from training.evaluation.metrics import accuracy
from training.trainer.rewards import completion_text

CONFIRMED, CONTRADICTED, UNCHECKABLE = "confirmed", "contradicted", "uncheckable"
VERDICTS = (CONFIRMED, CONTRADICTED, UNCHECKABLE)

# Common phrasings beside the builder's own templates, per relation. A template without {e} states a fact of the
# answer's subject (the first entity the answer makes a claim about): the house style's closing advice names the
# disease's department ("如有不适，请及时到内分泌科就诊"), the consultation's closing its examinations.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "symptom": (
        "根据您描述的{v}等症状，可能是{e}",
        "{e}的症状有{v}等",
        "{e}的主要症状有{v}等",
        "{e}的典型症状有{v}等",
        "{e}的临床表现有{v}等",
        "{e}的主要表现为{v}等",
        "{e}的主要表现有{v}等",
    ),
    "department": ("请及时到{v}就诊", "{e}应到{v}就诊", "{e}一般挂{v}", "{e}可以挂{v}"),
    "examination": ("可以做{v}等检查以明确诊断", "{e}需要做{v}等检查", "诊断{e}需要做{v}等检查"),
    "cause": ("{e}的病因有{v}等", "{e}是由{v}等引起的"),
    "complication": ("{e}的并发症有{v}等",),
    "adverse_reaction": ("{e}的副作用有{v}等", "{e}的常见不良反应有{v}等", "{e}的主要不良反应有{v}等"),
    "indication": ("{e}可用于治疗{v}等", "{e}用于治疗{v}等", "{e}可以治疗{v}等"),
    "efficacy": ("{e}的作用是{v}",),
    "drug_class": ("{e}是一种{v}",),
}
# what the advice names where it names no department ("请及时到医院就诊"): advice, not a claim
NOT_A_VALUE = frozenset({"医院", "正规医院", "当地医院"})

ENTITY = r"(?P<e>[^\s，,。；;：:！？!?]{2,30}?)"  # names may hold 、 and brackets: "耳、鼻、咽拭子细菌培养"
CLAUSE_START, CLAUSE_END = r"(?:^|(?<=[，,]))", r"(?=$|[，,])"
SENTENCE = re.compile(r"[^。！？!?\n]+")
SEPARATORS = re.compile(r"[、，,；;]")


@dataclass(frozen=True)
class Claim:
    entity: str  # "" until a subject-relative claim is given the answer's subject
    relation: str  # a Relation.key
    value: str


@dataclass(frozen=True)
class _Pattern:
    relation: Relation
    regex: re.Pattern
    priority: tuple[int, int]  # value-constrained relations first, then the longest literal text (most specific)
    has_entity: bool


def _value_regex(relation: Relation) -> str:
    if relation.value_map:  # "具有传染性", "有小毒": only the values the builder states (longest first), or a list
        values = sorted(set(relation.value_map.values()), key=len, reverse=True)
        one = "(?:" + "|".join(re.escape(v) for v in values) + ")"
        return f"(?P<v>{one}(?:{SEPARATORS.pattern}{one})*)"
    return r"(?P<v>[^。！？!?]+?)"


def _compile(relation: Relation, template: str) -> _Pattern:
    body = template.removesuffix("。")
    parts = re.split(r"(\{e\}|\{v\})", body)
    regex = []
    for i, part in enumerate(parts):
        if part == "{e}":
            regex.append(ENTITY)
        elif part == "{v}":
            regex.append(_value_regex(relation))
        elif i and parts[i - 1] == "{v}" and part.startswith("等"):  # "有A、B等。" is also said "有A、B。"
            regex.append("等?" + re.escape(part[1:]))
        else:
            regex.append(re.escape(part))
    has_entity = "{e}" in body
    text = "".join(regex)
    # a claim with its subject fills a clause; one about the answer's subject sits inside the advice sentence
    compiled = re.compile(CLAUSE_START + text + CLAUSE_END if has_entity else text)
    literal = len(re.sub(r"\{[ev]\}", "", body))
    return _Pattern(relation, compiled, (int(bool(relation.value_map)), literal), has_entity)


@functools.cache
def patterns() -> tuple[_Pattern, ...]:
    """Every claim pattern, most specific first: the builder's templates and :data:`PHRASINGS`."""
    out = []
    for relation in RELATIONS:
        templates = dict.fromkeys((*relation.statements, relation.answer, *PHRASINGS.get(relation.key, ())))
        out += [_compile(relation, t) for t in templates]
    return tuple(sorted(out, key=lambda p: (-p.priority[0], -p.priority[1])))


def _values(relation: Relation, text: str, entity: str) -> list[str]:
    """The listed values of one claim, normalized as the builder normalizes CMeKG's."""
    pieces = [p for p in re.split(SEPARATORS.pattern + "|" + re.escape(relation.joiner), text) if p.strip()]
    if relation.value_map:
        return [p for p in pieces if p in relation.value_map.values()]
    return [v for v in clean_values(relation, pieces, entity) if v not in NOT_A_VALUE]


@functools.cache
def question_patterns() -> tuple[tuple[re.Pattern, Relation], ...]:
    """How users ask about a relation (``Relation.questions``: "哪些人容易得{e}？"), as full-match patterns."""
    out = []
    for relation in RELATIONS:
        for template in relation.questions:
            parts = re.split(r"(\{e\})", template.rstrip("？?"))
            regex = "".join(ENTITY if part == "{e}" else re.escape(part) for part in parts)
            out.append((re.compile(regex + "[？?]?"), relation))
    return tuple(out)


def question_topics(question: str) -> list[tuple[str, str]]:
    """The (entity, relation key) pairs a question may ask about, in RELATIONS order ("{e}有什么功效？" is asked of
    a drug's function and of a herb's efficacy alike)."""
    question = question.strip()
    return list(
        dict.fromkeys(
            (match.group("e"), relation.key)
            for regex, relation in question_patterns()
            if (match := regex.fullmatch(question))
        )
    )


def extract_claims(answer: str, topic: tuple[str, str] | None = None) -> list[Claim]:
    """The (entity, relation, value) claims of ``answer``, in order, each once.

    In every sentence the most specific patterns are taken first and no two claims share a stretch of text;
    a claim about the answer's subject (no entity in its pattern) goes to the first entity named in a claim of
    the answer, else to the entity the question asked about (``topic``), and is dropped when there is none.
    With a ``topic`` (the question's entity and relation), an answer whose first sentence matches no pattern
    answers it bare ("青壮年人。", as ChiMed-CPT's QA text does): its listed values are claims of that relation."""
    found: list[tuple[int, Relation, str, str]] = []  # (position in the answer, relation, entity, values)
    for i, sentence in enumerate(SENTENCE.finditer(answer)):
        text = sentence.group().strip()
        taken: list[tuple[int, int]] = []
        for pattern in patterns():
            for match in pattern.regex.finditer(text):
                start, end = match.span()
                if any(start < b and a < end for a, b in taken):
                    continue
                taken.append((start, end))
                entity = match.groupdict().get("e") or ""
                found.append((sentence.start() + start, pattern.relation, entity, match.group("v")))
        if i == 0 and topic and not taken:
            found.append((sentence.start(), RELATION_BY_KEY[topic[1]], topic[0], text))
    found.sort(key=lambda f: f[0])
    subject = next((entity for _, _, entity, _ in found if entity), topic[0] if topic else "")
    claims: dict[Claim, None] = {}
    for _, relation, entity, value_text in found:
        entity = entity or subject
        if not entity:
            continue
        for value in _values(relation, value_text, entity):
            claims[Claim(entity, relation.key, value)] = None
    return list(claims)


class FactChecker:
    """Claims checked against the whole packaged CMeKG (every entity with a kind, every cleaned value)."""

    def __init__(self, graph: dict[str, dict[str, list[str]]]):
        self.entities: dict[str, Entity] = {}
        # relation key -> value -> how many entities CMeKG states it for
        self.holders: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for name, relations in graph.items():
            kind = entity_kind(relations)
            if kind is None or not CJK.search(name):
                continue
            known = known_facts(name, kind, relations)
            self.entities[name] = Entity(
                name, kind, {k: list(v) for k, v in known.items()}, known, raw_values(relations)
            )
            for key, values in known.items():
                for value in values:
                    self.holders[key][value] += 1

    def verdict(self, claim: Claim) -> str:
        """confirmed, contradicted or uncheckable (the module's docstring)."""
        entity = self.entities.get(claim.entity)
        if entity is None or claim.relation not in entity.known:
            return UNCHECKABLE
        if entity.is_true(claim.relation, claim.value):
            return CONFIRMED
        return CONTRADICTED if self.holders[claim.relation].get(claim.value) else UNCHECKABLE

    def topic(self, question: str) -> tuple[str, str] | None:
        """The (entity, relation key) ``question`` asks about: of the relations its wording may ask, the first that
        CMeKG states for the entity (else the first); None for a question in no relation's wording."""
        topics = question_topics(question)
        known = [(e, key) for e, key in topics if e in self.entities and key in self.entities[e].known]
        return (known or topics or [None])[0]

    def check(self, answer: str, question: str = "") -> list[tuple[Claim, str]]:
        """Every claim of ``answer`` (to ``question``, the user's last turn, when given) with its verdict."""
        return [(claim, self.verdict(claim)) for claim in extract_claims(answer, self.topic(question))]

    def precision(self, answer: str, question: str = "") -> float | None:
        """confirmed / checkable claims of one answer; None when it makes no checkable claim."""
        verdicts = [v for _, v in self.check(answer, question) if v != UNCHECKABLE]
        return sum(v == CONFIRMED for v in verdicts) / len(verdicts) if verdicts else None


@functools.cache
def fact_checker() -> FactChecker:
    """The checker over the packaged CMeKG, built once per process (a few seconds)."""
    return FactChecker(load_cmekg())


def annotate(checker: FactChecker, generations: list[dict], questions: list[str] | None = None) -> list[dict]:
    """The generations with their claims: ``"claims": [{"entity", "relation", "value", "verdict"}, ...]``;
    ``questions``: the user's last turn before each answer (the held-out QA's), in the same order."""
    questions = questions if questions is not None else [""] * len(generations)
    return [
        {
            **g,
            "claims": [
                {"entity": c.entity, "relation": c.relation, "value": c.value, "verdict": v}
                for c, v in checker.check(g["answer"], question)
            ],
        }
        for g, question in zip(generations, questions, strict=True)
    ]


def last_question(messages: list[dict]) -> str:
    """The user's last turn of a conversation (what the answer answers)."""
    return next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")


def fact_metrics(annotated: list[dict]) -> dict:
    """A stage's factual precision from its annotated generations (:func:`annotate`): ``fact_precision`` and its
    ``fact_precision_ci95`` (Wilson), ``fact_{confirmed,contradicted,uncheckable}_share`` of all claims with their
    ``_ci95``, and the counts ``fact_claims_n``, ``fact_checkable_n`` and ``fact_answers_with_claims``."""
    verdicts = [c["verdict"] for g in annotated for c in g["claims"]]
    checkable = accuracy([v == CONFIRMED for v in verdicts if v != UNCHECKABLE])
    out = {
        "fact_precision": checkable["acc"],
        "fact_precision_ci95": checkable["ci95"] if checkable["n"] else None,
        "fact_claims_n": len(verdicts),
        "fact_checkable_n": checkable["n"],
        "fact_answers_with_claims": sum(bool(g["claims"]) for g in annotated),
    }
    for verdict in VERDICTS:
        share = accuracy([v == verdict for v in verdicts])
        out[f"fact_{verdict}_share"] = share["acc"]
        out[f"fact_{verdict}_ci95"] = share["ci95"] if verdicts else None
    return out


def make_facts_reward(checker: FactChecker):
    """GRPO's ``facts`` reward (``grpo.rewards``): the factual precision of each sampled answer, None (does not
    apply) for an answer without a checkable claim, such as a bare exam option."""

    def facts_reward(prompts, completions, **kwargs) -> list[float | None]:
        return [
            checker.precision(completion_text(c), last_question(p) if isinstance(p, list) else "")
            for p, c in zip(prompts, completions, strict=True)
        ]

    return facts_reward
