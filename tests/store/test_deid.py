"""De-identification measured on a corpus written for it (tests/fixtures/deid/, see the scripts there), and on
a second one written from the category list alone (``category_list_lines.jsonl``, its header says by whom).

Recall: an annotated identifier counts as found when the findings of its own category cover every one
of its characters (so its text is gone from ``deidentify``'s output, replaced by that category's tag);
an identifier found under another category, or only in part, is missed. Precision: a finding is true
when it overlaps an annotated identifier of its category. Both come from :func:`preference_store.deid.detect.measure`,
which the benchmark prints as a table too.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from preference_store.deid.detect import (
    CATEGORIES,
    Finding,
    category_label,
    deidentify,
    deidentify_messages,
    find_identifiers,
    format_table,
    measure,
    protected_names,
)
from preference_store.deid.rules import COMPOUND_SURNAMES, CUED_DOTS, NAME_DOTS

FIXTURES = Path(__file__).parents[1] / "fixtures" / "deid"


def load(name: str) -> list[dict]:
    lines = (FIXTURES / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip() and not line.startswith("#")]  # "#": a header


IDENTIFIER_LINES = load("identifier_lines.jsonl")
CATEGORY_LIST_LINES = load("category_list_lines.jsonl")
MEDICAL_SENTENCES = [row["text"] for row in load("medical_sentences.jsonl")]


def measured_and_printed(lines: list[dict]) -> dict:
    result = measure(lines)
    print("\n" + format_table(result))
    return result


@pytest.fixture(scope="module")
def measured():
    return measured_and_printed(IDENTIFIER_LINES)


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


# --- issue 29: minority names with the middle dot, compound surnames, Latin-script names ----------------

NAME_FORMS = {
    "middle dot": lambda name: any(dot in name for dot in NAME_DOTS + CUED_DOTS),
    "compound surname": lambda name: name[:2] in COMPOUND_SURNAMES,
    "Latin script": lambda name: any("a" <= ch.lower() <= "z" for ch in name),
}


@pytest.mark.parametrize("form", NAME_FORMS)
def test_each_name_form_is_in_the_corpus_and_found(form):
    """The corpus holds at least 20 names of each form issue 29 found missed, and 95% of them are found."""
    lines = [
        {
            "text": line["text"],
            "identifiers": [i for i in line["identifiers"] if i["category"] == "name" and NAME_FORMS[form](i["text"])],
        }
        for line in IDENTIFIER_LINES
    ]
    result = measure([line for line in lines if line["identifiers"]])["name"]
    assert result["expected"] >= 20 and result["recall"] >= 0.95, result


@pytest.mark.parametrize(
    "text,expected",
    [
        ("买买提·艾力，男，45岁，因发热就诊。", "[NAME]，男，45岁，因发热就诊。"),  # 艾力 is a CMeKG brand name too
        ("家属古丽米拉•阿不都拉陪同。", "家属[NAME]陪同。"),  # and 都拉
        ("患者阿依古丽・吐尔逊腹痛两天。", "患者[NAME]腹痛两天。"),
        ("麦麦提∙吐尔洪血糖高", "[NAME]血糖高"),
        ("我爸爸努尔兰‧哈力木有高血压十年了。", "我爸爸[NAME]有高血压十年了。"),
        ("姓名：艾力.买买提", "姓名：[NAME]"),  # a full stop for the dot, after a cue
        ("联系人：热合曼．托乎提", "联系人：[NAME]"),
        ("我外孙司马晓东发烧了", "我外孙[NAME]发烧了"),
        ("配偶欧阳文静体健", "配偶[NAME]体健"),
        ("病史由患者外孙端木磊代诉。", "病史由患者外孙[NAME]代诉。"),
        ("主刀医生长孙悦说手术很顺利", "主刀医生[NAME]说手术很顺利"),
        ("上官雅琴，女，50岁", "[NAME]，女，50岁"),  # no cue: 上官 is no everyday word
        ("我叫 John Smith，头痛三天。", "我叫 [NAME]，头痛三天。"),
        ("我的名字是Maria，HIV抗体阴性。", "我的名字是[NAME]，HIV抗体阴性。"),
        ("外籍患者Peter Müller，上周做了MRI。", "外籍患者[NAME]，上周做了MRI。"),
        ("我叫 O'Brien，想问CT报告。", "我叫 [NAME]，想问CT报告。"),
        ("姓名：ZHANG SAN", "姓名：[NAME]"),
        ("我是Dr. Wang", "我是Dr. [NAME]"),
    ],
)
def test_the_three_name_forms_are_redacted(text, expected):
    assert deidentify(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        # middle dots in medical text: eponyms, products, symptom lists, book titles, headings, CMeKG's full stops
        "彼得·潘综合症有哪些表现？",
        "圣·约翰草提取物片的用法用量是什么？",
        "斯蒂文斯·约翰逊综合征属于重症药疹。",
        "常见症状有恶心·呕吐、头晕·头昏。",
        "眼睑发红·肿胀",
        "出自《素问·气穴论》。",
        "第一章·总论",
        "中国·北京",
        "可用于喘急气短、定喘．祛痰、止嗽。",
        # Latin abbreviations, eponyms and lab values after the same cues as a name
        "患者CT示右肺结节。",
        "我是HIV感染者，需要注意什么？",
        "患者MRI检查未见异常。",
        "患者COVID-19核酸阳性。",
        "患者Graves病史5年。",
        "我是Rh阴性血。",
        "患儿Apgar评分8分。",
        "患者Hb 90 g/L。",
        "患者Child-Pugh分级B级。",
        "我是Type 2糖尿病患者。",
        "我爸爸COPD十年了。",
        "患者Crohn's disease病史。",
        "我是ChatGPT，一个AI助手。",
        "我是Qwen，一个语言模型。",
        # compound surnames that are everyday words, plants
        "东方医院心内科",
        "医院西门口等候。",
        "我长孙发烧了。",
        "诸葛菜可以吃吗？",
        # a CMeKG drug whose last character is a surname, before a word the segmenter joins to it (宁后)
        "小儿服用娃娃宁后出现呕吐，应如何处理？",
    ],
)
def test_medical_text_with_dots_latin_words_and_compound_surname_words_stays(text):
    assert deidentify(text) == text


# --- the second corpus, written from the category list alone --------------------------------------------


@pytest.fixture(scope="module")
def measured_category_list():
    return measured_and_printed(CATEGORY_LIST_LINES)


def test_the_category_list_corpus_covers_every_category():
    assert len(CATEGORY_LIST_LINES) >= 90
    assert {i["category"] for line in CATEGORY_LIST_LINES for i in line["identifiers"]} == set(CATEGORIES)


@pytest.mark.parametrize("category", CATEGORIES)
def test_recall_on_the_category_list_corpus(measured_category_list, category):
    """Bounds for text the rules were not written against. Most categories hold 3 to 8 identifiers there, so
    one miss moves recall by 12 to 33 points: the bound is half of each (a category whose rule is missing or
    broken fails). Names, 41 of them, are issue 29's part: at least 95%. Measured on 2026-12-07: names 1.000,
    address 0.500 and social 0.600 (BENCHMARKS.md lists the misses), every other category 1.000."""
    bound = 0.95 if category == "name" else 0.5
    assert measured_category_list[category]["recall"] >= bound, format_table(measured_category_list)


def test_overall_recall_on_the_category_list_corpus_is_at_least_90_percent(measured_category_list):
    assert measured_category_list["overall"]["recall"] >= 0.90, format_table(measured_category_list)


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
        if any(
            f.category == "name" and f.start < sentence.index(name) + len(name) and f.end > sentence.index(name)
            for f in find_identifiers(sentence)
        ):
            redacted.append(sentence)
    assert not redacted, redacted[:20]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("我叫李明，住在上海市浦东新区张江路88号", "我叫[NAME]，住在上海市[ADDRESS]"),
        ("我妈妈刘秀英，1958年3月5日出生", "我妈妈[NAME]，1958年[DATE]出生"),
        ("王大爷今年70岁了", "[NAME]大爷今年70岁了"),
        ("患者张三头痛三天", "患者[NAME]头痛三天"),
        ("医保卡号 1234567890123", "医保卡号 [HEALTH_PLAN]"),
        ("wechat: zhang_san88", "wechat: [SOCIAL]"),
        ("住址北京市朝阳区幸福路1号", "住址北京市[ADDRESS]"),
    ],
)
def test_the_issues_examples_are_redacted(text, expected):
    assert deidentify(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "张力性气胸是一种急症。",
        "王不留行可以通乳。",
        "刘寄奴有活血作用。",
        "患者张力性气胸，需立即处理。",
        "90岁以上老人慎用。",
        "患者于2019年确诊。",
        "请和医生沟通后再用药。",
        "患者常出现头痛。",
    ],
)
def test_medical_words_years_and_aggregates_stay(text):
    assert deidentify(text) == text


def test_findings_are_ordered_non_overlapping_and_counted():
    text = "患者张三，电话13800000000，住北京市朝阳区幸福路1号，95岁，京A12345"
    findings = find_identifiers(text)
    assert [f.category for f in findings] == ["name", "phone", "address", "age", "plate"]
    assert all(a.end <= b.start for a, b in zip(findings, findings[1:]))
    assert all(isinstance(f, Finding) and text[f.start : f.end] == f.text for f in findings)
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
