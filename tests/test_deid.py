"""De-identification measured on a corpus written for it (tests/fixtures/deid/, see the scripts there).

Recall: an annotated identifier counts as found when the findings of its own category cover every one
of its characters (so its text is gone from ``deidentify``'s output, replaced by that category's tag);
an identifier found under another category, or only in part, is missed. Precision: a finding is true
when it overlaps an annotated identifier of its category. Both come from :func:`preference_store.deid.measure`,
which the benchmark prints as a table too.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from preference_store.deid import (CATEGORIES, Finding, category_label, deidentify, deidentify_messages,
                                   find_identifiers, format_table, measure, protected_names)

FIXTURES = Path(__file__).parent / "fixtures" / "deid"


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


IDENTIFIER_LINES = load("identifier_lines.jsonl")
MEDICAL_SENTENCES = [row["text"] for row in load("medical_sentences.jsonl")]


@pytest.fixture(scope="module")
def measured():
    result = measure(IDENTIFIER_LINES)
    print("\n" + format_table(result))
    return result


def test_corpus_is_large_enough_and_covers_every_category():
    assert len(IDENTIFIER_LINES) >= 150 and len(MEDICAL_SENTENCES) >= 150
    per_category = Counter(i["category"] for line in IDENTIFIER_LINES for i in line["identifiers"])
    assert set(per_category) == set(CATEGORIES)
    assert sum(len(line["identifiers"]) >= 3 for line in IDENTIFIER_LINES) >= 20  # several per line


@pytest.mark.parametrize("category", CATEGORIES)
def test_recall_per_category_is_at_least_95_percent(measured, category):
    assert measured[category]["recall"] >= 0.95, format_table(measured)


def test_overall_recall_is_at_least_97_percent(measured):
    assert measured["overall"]["recall"] >= 0.97, format_table(measured)


def test_at_most_one_percent_of_identifier_free_medical_sentences_change():
    changed = [(s, deidentify(s)) for s in MEDICAL_SENTENCES if deidentify(s) != s]
    assert len(changed) <= 0.01 * len(MEDICAL_SENTENCES), changed


def test_no_cmekg_entity_name_is_ever_redacted():
    """Every protected name (CMeKG entity names and the symptoms, departments, exams, diseases and drug
    names its relations give, 2 to 12 characters), each in one of three sentence frames, chosen in turn.
    That is every name, not a sample (about 88,000 sentences, about a minute on one core)."""
    frames = ("患者诊断为{}。", "{}需要注意什么？", "医生建议使用{}治疗。")
    redacted = []
    for k, name in enumerate(sorted(protected_names())):
        sentence = frames[k % len(frames)].format(name)
        if any(f.category == "name" and f.start < sentence.index(name) + len(name) and f.end > sentence.index(name)
               for f in find_identifiers(sentence)):
            redacted.append(sentence)
    assert not redacted, redacted[:20]


@pytest.mark.parametrize("text,expected", [
    ("我叫李明，住在上海市浦东新区张江路88号", "我叫[NAME]，住在上海市[ADDRESS]"),
    ("我妈妈刘秀英，1958年3月5日出生", "我妈妈[NAME]，1958年[DATE]出生"),
    ("王大爷今年70岁了", "[NAME]大爷今年70岁了"),
    ("患者张三头痛三天", "患者[NAME]头痛三天"),
    ("医保卡号 1234567890123", "医保卡号 [HEALTH_PLAN]"),
    ("wechat: zhang_san88", "wechat: [SOCIAL]"),
    ("住址北京市朝阳区幸福路1号", "住址北京市[ADDRESS]"),
])
def test_the_issues_examples_are_redacted(text, expected):
    assert deidentify(text) == expected


@pytest.mark.parametrize("text", ["张力性气胸是一种急症。", "王不留行可以通乳。", "刘寄奴有活血作用。",
                                  "患者张力性气胸，需立即处理。", "90岁以上老人慎用。", "患者于2019年确诊。",
                                  "请和医生沟通后再用药。", "患者常出现头痛。"])
def test_medical_words_years_and_aggregates_stay(text):
    assert deidentify(text) == text


def test_findings_are_ordered_non_overlapping_and_counted():
    text = "患者张三，电话13800000000，住北京市朝阳区幸福路1号，95岁，京A12345"
    findings = find_identifiers(text)
    assert [f.category for f in findings] == ["name", "phone", "address", "age", "plate"]
    assert all(a.end <= b.start for a, b in zip(findings, findings[1:]))
    assert all(isinstance(f, Finding) and text[f.start:f.end] == f.text for f in findings)
    counts = Counter()
    out = deidentify_messages([{"role": "user", "content": text}], counts)
    assert out[0]["content"] == "患者[NAME]，电话[PHONE]，住北京市[ADDRESS]，[AGE]，[PLATE]"
    assert counts == Counter(name=1, phone=1, address=1, age=1, plate=1)


def test_every_category_has_a_bilingual_label():
    for category in CATEGORIES:
        label = category_label(category)
        assert any("\u4e00" <= ch <= "\u9fff" for ch in label) and any(ch.isascii() and ch.isalpha() for ch in label)


def test_shuffled_lines_are_found_alike():
    """The engine keeps no state between texts: the corpus in another order gives the same findings."""
    lines = IDENTIFIER_LINES[:40]
    before = [find_identifiers(line["text"]) for line in lines]
    order = list(range(len(lines)))
    random.Random(0).shuffle(order)
    assert all(find_identifiers(lines[i]["text"]) == before[i] for i in order)
