"""De-identification of Chinese clinical text: the identifiers of HIPAA Safe Harbor as they appear in it.

:func:`find_identifiers` returns every identifier found, with its category; :func:`deidentify` replaces
each by a tag (``[NAME]``, ``[PHONE]``, ...) and counts them, so the app can say what it found and an
export can say what it redacted. What is covered, per category (the patterns are in
:mod:`preference_store.deid.rules`):

- ``name``: after cue words (患者/病人/医生/姓名/联系人 ...), self-introduced (我叫/我是/本人), after kinship
  words (我妈妈刘秀英), a surname before an honorific (王大爷, 李阿姨: only the surname goes, "[NAME]大爷"),
  and names with no cue that the segmenter (jieba, part of speech ``nr``) tags, when they start with a
  common surname. CMeKG's entity names (diseases, drugs, herbs, symptoms, departments, examinations) are
  never names: 张力性气胸, 王不留行, 刘寄奴 stay. The segmenter also decides a cued name's length
  (患者张三头痛 -> 张三). Also minority names with the middle dot, given name · father's name (买买提·艾力, the
  dot typed as · • ‧ ・ ･ ∙ ⋅, or a full stop after a cue), compound surnames with or without a cue
  (外孙司马晓东, 上官雅琴), and Latin-script names after a self-introduction or name cue (我叫 John Smith),
  not the abbreviations, eponyms and lab values after the same cues (患者CT示, 患者Graves病, 我是Rh阴性).
- ``address``: below the city: district/county, town, street or road with its number, 小区, building,
  unit and room. The province and city stay ("住在上海市[ADDRESS]").
- ``date``: the month and day of any calendar date go and the year stays ("1958年[DATE]出生",
  "2023-[DATE]"): in a case description every full date is the patient's (birth, admission, discharge,
  death, a visit), and Safe Harbor keeps years. A bare year or a duration ("3天前") stays.
- ``age``: ages over 89 ("95岁" -> "[AGE]"); "90岁以上" is already Safe Harbor's aggregate and stays.
- ``phone`` (phone and fax), ``email``, ``url``, ``ip`` (IPv4), ``plate`` (licence plates, 京A12345),
  ``social`` (WeChat/QQ/Weibo handles after their cue).
- numbers: ``id_card``, ``passport``, ``medical_record`` (病历号/住院号 ...), ``health_plan`` (医保/社保),
  ``account``, ``bank_card``. After a cue word only the number goes ("住院号：[MEDICAL_RECORD]").

The patterns lean towards redacting too much: an order number that looks like an ID card is lost, a
patient's number is not.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from preference_store.deid import rules

CATEGORIES = (
    "name",
    "address",
    "date",
    "age",
    "phone",
    "email",
    "id_card",
    "passport",
    "medical_record",
    "health_plan",
    "account",
    "bank_card",
    "plate",
    "social",
    "url",
    "ip",
)
LABELS = {
    "name": "姓名 name",
    "address": "地址 address",
    "date": "日期 date",
    "age": "90岁以上年龄 age over 89",
    "phone": "电话/传真 phone/fax",
    "email": "电子邮箱 e-mail",
    "id_card": "身份证号 ID card",
    "passport": "护照号 passport",
    "medical_record": "病历号 medical record",
    "health_plan": "医保/社保号 health plan",
    "account": "账号 account",
    "bank_card": "银行卡号 bank card",
    "plate": "车牌号 licence plate",
    "social": "社交账号 social handle",
    "url": "网址 URL",
    "ip": "IP地址 IP address",
}
# CMeKG relations whose values are medical terms (symptoms, departments, exams, diseases, drug names)
PROTECTED_RELATIONS = (
    "常见症状",
    "相关症状",
    "临床症状及体征",
    "就诊科室",
    "检查",
    "相关疾病",
    "并发症",
    "通用名",
    "商品名",
    "别称",
    "相关药物",
    "药物治疗",
    "治疗",
    "所属分类",
    "上位关系",
    "常见发病部位",
    "常见病因",
    "病因",
    "成份",
    "入药部位",
)
MAX_PROTECTED_CHARS = 12  # longer terms cannot hide a name of at most four characters
HAN_RUN = re.compile(rf"[{rules.HAN}]")


@dataclass(frozen=True)
class Finding:
    category: str
    start: int
    end: int
    text: str


def category_label(category: str) -> str:
    """A short bilingual label for the UI ("姓名 name")."""
    return LABELS[category]


def tag(category: str) -> str:
    return f"[{category.upper()}]"


@lru_cache(maxsize=1)
def protected_names() -> frozenset[str]:
    """CMeKG's entity names and its medical terms (2 to 12 characters), built once per process from the
    graph shipped in the ``pyCMeKG`` package."""
    from core.sources import load_cmekg

    names = set()
    for entity, relations in load_cmekg().items():
        names.add(str(entity).strip())
        for relation in PROTECTED_RELATIONS:
            for value in relations.get(relation, []) or []:
                names.add(str(value).strip().strip("：:·,，、;；。 "))
    return frozenset(n for n in names if 2 <= len(n) <= MAX_PROTECTED_CHARS and HAN_RUN.search(n))


def protected_load_seconds() -> float:
    """Seconds it takes to build :func:`protected_names` from scratch (for the benchmark)."""
    protected_names.cache_clear()
    start = time.perf_counter()
    protected_names()
    return time.perf_counter() - start


_segmenter = None
_segmenter_lock = threading.Lock()


def segmenter():
    """jieba's part-of-speech tokenizer, initialised once per process, quietly; its dictionary cache goes
    to the temporary directory (jieba's default) and it needs no network."""
    global _segmenter
    if _segmenter is None:
        with _segmenter_lock:
            if _segmenter is None:
                import jieba
                import jieba.posseg

                jieba.setLogLevel(logging.WARNING)
                tokenizer = jieba.posseg.POSTokenizer(jieba.Tokenizer())
                tokenizer.tokenizer.initialize()
                _segmenter = tokenizer
    return _segmenter


def tokens(text: str) -> list[tuple[int, int, str]]:
    """(start, end, part of speech) of each word jieba finds in ``text``.

    jieba's hidden Markov model (which finds words outside its dictionary, such as most given names) is
    most of its cost, so it runs only where it can find a name: on the runs of single characters the
    dictionary leaves that hold a surname. Elsewhere the dictionary's words are the words."""
    seg = segmenter()
    plain, pos = [], 0
    for pair in seg.cut(text, HMM=False):
        plain.append((pos, pos + len(pair.word), pair.flag))
        pos += len(pair.word)
    out, k = [], 0
    while k < len(plain):
        j = k
        while j < len(plain) and plain[j][1] - plain[j][0] == 1 and HAN_RUN.match(text[plain[j][0]]):
            j += 1
        if j - k >= 2 and any(text[plain[i][0]] in rules.SURNAMES for i in range(k, j)):
            start = plain[k][0]
            for pair in seg.cut(text[start : plain[j - 1][1]]):
                out.append((start, start + len(pair.word), pair.flag))
                start += len(pair.word)
            k = j
        elif j > k:
            out.extend(plain[k:j])
            k = j
        else:
            out.append(plain[k])
            k += 1
    return out


def _value_span(match: re.Match) -> tuple[int, int]:
    for group in ("value", "value2", "value3", "value4"):
        if group in match.re.groupindex and match.group(group) is not None:
            return match.span(group)
    return match.span()


def _protected_overlap(text: str, start: int, end: int) -> int | None:
    """Where the candidate name at [start, end) must end because of a CMeKG term found in ``text``: at
    ``start`` (no name) when a term begins the candidate or covers all of it ("张力性气胸", "一粒金丹"),
    at the term when one starts inside and runs on past its end; None when no term is in the way. A
    term wholly inside a name, or a two-character one overlapping only its first character ("病人黄晓燕": 人黄),
    does not cut; a longer term that ends on the name's first character does ("服用娃娃宁后": the drug 娃娃宁, not
    a person 宁后)."""
    names = protected_names()
    for i in range(max(0, start - MAX_PROTECTED_CHARS + 2), end):
        for j in range(max(i + 2, start + 1), min(len(text), i + MAX_PROTECTED_CHARS) + 1):
            ends_on_first = i < start and j == start + 1 and j - i >= 3
            if (i < start and j >= end) or (i == start) or (start < i and j > end) or ends_on_first:
                if text[i:j] in names:
                    return max(i, start)
    return None


def _spans_boundary(text: str, at: int, ends_after: int | None = None) -> bool:
    """Whether a CMeKG term runs across position ``at`` (starts before it and ends after it, or after
    ``ends_after`` when given: a term that ends inside a two-character surname, 医生|长孙悦 (生长), does not
    count, as compound surnames are no everyday words)."""
    names = protected_names()
    return any(
        text[i:j] in names
        for i in range(max(0, at - MAX_PROTECTED_CHARS + 1), at)
        for j in range(max(at, ends_after or at) + 1, min(len(text), i + MAX_PROTECTED_CHARS) + 1)
    )


def _name_end(text: str, start: int, end: int, words: list[tuple[int, int, str]], surname_len: int) -> int:
    """Where a cued name starting at ``start`` ends, at a word boundary of the segmenter: "张三头痛" ->
    张三, "张三因胸痛" -> 张三, "刘秀英，" -> 刘秀英, "朱文斌，" -> 朱文斌 (斌 is no function word)."""
    bounds = {s for s, _, _ in words} | {e for _, e, _ in words}
    shortest = start + surname_len + 1
    for cut in range(shortest, end + 1):
        if cut in bounds:
            following = next((w for w in words if w[0] == cut), None)
            if (
                cut < end
                and following
                and following[1] == cut + 1
                and cut + 1 in bounds
                and following[2] not in FUNCTION_TAGS
                and True
            ):
                continue
            return _trim(text, start, cut, surname_len)
    return _trim(text, start, end, surname_len)


def _trim(text: str, start: int, end: int, surname_len: int) -> int:
    """Drop a function word the segmenter glued onto a name ("张三因" -> 张三)."""
    if end - start > surname_len + 1 and text[end - 1] in NAME_STOP:
        return end - 1
    return end


def _surname_len(name: str) -> int:
    return 2 if name[:2] in rules.COMPOUND_SURNAMES else 1


COMMON_WORD_FREQ = 400  # jieba's count above which a word is everyday vocabulary (买买提 272, 约翰 503 but a name)
FUNCTION_TAGS = {
    "p",
    "c",
    "u",
    "ul",
    "uj",
    "uz",
    "ug",
    "uv",
    "ud",
    "d",
    "r",
    "v",
    "m",
    "q",
    "f",
    "t",
    "y",
    "x",
    "zg",
    "b",
    "a",
}
NAME_STOP = set("男女因今先自于在诉述说和与的是有及从被等也都将已曾代")
PERSON_TAGS = ("nr", "nrfg", "nrt")
KIN_ENDINGS = set("姐哥兄弟妹傅父母爷奶叔姨舅婶嫂")
MEDICAL_ENDINGS = set("炎症病痛癌瘤疮疹痒肿热咳血泻胀毒菌药丸片汤散膏剂素酸碱科")
PLANT_ENDINGS = set("菜草树叶根籽藤茶")  # 诸葛菜, 公孙树: a plant, not a person
MEDICAL_NEXT = set("酶嗪胺醇酮酯钠钾科汤丸散膏片")  # "林可胺类", "牛科": the word goes on
JOINED_NAME = re.compile(
    rf"(?P<first>{rules.SURNAME}[{rules.HAN}]{{1,2}})(?:和|与|跟|、|及)(?P<value>{rules.SURNAME}[{rules.HAN}]{{1,2}})"
)


def _looks_like_name(word: str) -> bool:
    """Whether a word the segmenter tags as a person's name is one: a surname, one to three characters,
    no medical ending, and no common word as its given name ("段时间")."""
    if not (2 <= len(word) <= 4) or word[-1] in MEDICAL_ENDINGS or not HAN_RUN.fullmatch(word[-1]):
        return False
    surname = _surname_len(word) if (word[0] in rules.SURNAMES or word[:2] in rules.COMPOUND_SURNAMES) else 0
    if not surname or word[0] in rules.WORDLIKE_SURNAMES:
        return False
    given = word[surname:]
    if not given or given[-1] in KIN_ENDINGS:
        return False  # 师姐, 表哥: a relation, not a name
    seg = segmenter()
    return not (
        len(given) >= 2
        and seg.tokenizer.FREQ.get(given, 0) > 1000
        and seg.word_tag_tab.get(given) not in ("nr", "ns", "nrfg", "nz")
    )


def _name_candidates(text: str) -> list[tuple[int, int]]:
    words = tokens(text)
    spans = []
    for pattern in (rules.CUE_NAME, rules.LABELLED_NAME):
        for m in pattern.finditer(text):
            s, e = _value_span(m)
            if pattern is rules.CUE_NAME and "某" not in text[s:e]:
                if text[s] in rules.WORDLIKE_SURNAMES and not any(a == s and f in PERSON_TAGS for a, _, f in words):
                    continue  # 患者常出现 / 医生应注意: a word, not a surname
                compound = _surname_len(text[s:e]) == 2
                if _spans_boundary(text, s, s + 2 if compound else None):
                    continue  # the cue is part of a medical term ("羊奶奶叶"); the segmenter may still find a name
                e = _compound_name_end(text, s, e) if compound else _name_end(text, s, e, words, 1)
            spans.append((s, e))
    for m in rules.COMPOUND_NAME.finditer(text):  # 欧阳/司马/上官 ... start a name with no cue
        s = m.start("value")
        e = _compound_name_end(text, s, m.end("value"))
        if not _spans_boundary(text, s, s + 2) and _looks_like_name(text[s:e]) and text[e - 1] not in PLANT_ENDINGS:
            spans.append((s, e))
    surnames_only = {_value_span(m) for m in rules.HONORIFIC_NAME.finditer(text)}  # "[NAME]大爷"
    spans += sorted(surnames_only)
    for m in rules.NAME_EN.finditer(text):
        spans.append(m.span("value"))
    # names with no cue: the segmenter's person names that start with a surname; a lone surname the
    # segmenter split off its given name ("刘/秀英", "何/淑芬") is joined back
    for k, (s, e, flag) in enumerate(words):
        if flag not in PERSON_TAGS:
            continue
        prev = words[k - 1] if k else None
        if (
            prev
            and prev[1] - prev[0] == 1
            and text[prev[0]] in rules.SURNAMES
            and e - s <= 2
            and (flag != "nr" or len(text[s:e]) == 2 or prev[2] == "nr")
        ):
            s = prev[0]
        elif flag == "nrt":
            continue  # a transliterated name on its own is more often a term ("休克")
        following = words[k + 1] if k + 1 < len(words) else None
        if following and e - s == 2 and following[1] - following[0] == 1 and following[2] in PERSON_TAGS:
            e = following[1]  # "朱文/斌"
        e = _trim(text, s, e, _surname_len(text[s:e]))
        if (
            _looks_like_name(text[s:e])
            and not (e < len(text) and text[e] in MEDICAL_NEXT)
            and not text.startswith("转氨酶", e)
        ):
            spans.append((s, e))
    # a second name joined to a found one: "张三和李四", "王五、赵六"
    for m in JOINED_NAME.finditer(text):
        if any(s <= m.start("first") and m.end("first") <= e for s, e in spans):
            s = m.start("value")
            spans.append((s, _name_end(text, s, m.end("value"), words, _surname_len(m.group("value")))))
    out = []
    for s, e in spans:
        if HAN_RUN.match(text[s]):
            cut = _protected_overlap(text, s, e)
            if cut is not None and cut < e:
                e = cut  # a medical term starts inside: the name (if any) ends before it
                if (s, e) not in surnames_only and e - s < _surname_len(text[s:]) + 1:
                    continue  # what is left is a lone surname, or nothing
            if e == s:
                continue
        out.append((s, e))
    return out + _dotted_names(text, words) + _latin_names(text)


def _compound_name_end(text: str, start: int, end: int) -> int:
    """Where a name with a two-character surname, matched to ``end`` (one or two given characters), ends:
    after two given characters ("司马晓东最近"), or one when the second is a function word ("长孙悦说") or
    starts a word that runs on past ``end`` ("端木磊查出", "慕容秋最近")."""
    if end - start < 4:
        return end
    freq = segmenter().tokenizer.FREQ
    runs_on = any(freq.get(text[start + 3 : j], 0) > 0 for j in range(end + 1, min(len(text), start + 6) + 1))
    return start + 3 if runs_on or text[start + 3] in NAME_STOP else end


def _common_word(word: str) -> bool:
    """Whether jieba knows ``word`` as a frequent word that is not a person's name (患者, 中国, 陪同)."""
    seg = segmenter()
    return seg.tokenizer.FREQ.get(word, 0) >= COMMON_WORD_FREQ and seg.word_tag_tab.get(word) not in PERSON_TAGS


def _dotted_names(text: str, words: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """Names written with the middle dot, given name · father's name ("患者阿依古丽·买买提，女"). The parts
    are whole words of the segmenter: the first starts after the cue or function word before it ("患者之父|
    达吾提"), the last ends before the word after it ("买买提|有"). Not a name: a one-character part (明·朱惠明,
    a dynasty), a part that is an everyday word or a CMeKG term (中国·北京, 恶心·呕吐), an eponym or product
    (斯蒂文斯·约翰逊综合征, 圣·约翰草提取物片), a book title (《素问·气穴论》), a full stop without a cue."""
    out = []
    for m in rules.DOTTED_RUN.finditer(text):
        dots = [i for i in range(m.start(), m.end()) if not HAN_RUN.match(text[i])]
        inside = [w for w in words if m.start() <= w[0] and w[1] <= m.end() and HAN_RUN.match(text[w[0]])]
        start = dots[0]
        for s, e, _ in reversed([w for w in inside if w[1] <= dots[0]]):
            if text[s:e] in rules.DOTTED_LEFT_STOP or (e - s > 1 and _common_word(text[s:e])):
                break
            if text[s] in rules.DOTTED_LEFT_STOP:  # a rare word glued across the cue ("之达")
                start = s + 1
                break
            start = s
        end, eponym = dots[-1] + 1, False
        for s, e, _ in (w for w in inside if w[0] > dots[-1]):
            eponym = bool(rules.EPONYM_NEXT.match(text, s))
            if (
                eponym
                or text[s:e] in rules.DOTTED_RIGHT_STOP
                or (e - s > 1 and _common_word(text[s:e]))
                or _medical_part(text, s)
            ):  # "吐尔逊|腹痛", "吐尔洪|血糖高"
                break
            if text[e - 1] in rules.DOTTED_RIGHT_STOP:  # a rare word glued across the verb ("阿/布都有/高血压")
                end = e - 1
                break
            end = e
        bounds = [start, *dots, end]
        parts = [(bounds[0], dots[0])] + [(d + 1, b) for d, b in zip(dots, bounds[2:])]
        if (
            eponym
            or rules.EPONYM_NEXT.match(text, end)
            or any(pe - ps < 2 for ps, pe in parts)
            or text.rfind("《", 0, start) > text.rfind("》", 0, start)
            or rules.NOT_IN_NAMES.search(text, start, end)
        ):
            continue
        if any(_common_word(text[ps:pe]) or _medical_part(text, ps, pe) for ps, pe in parts):
            continue
        cued = rules.CUE_BEFORE.search(text[max(0, start - 12) : start])
        if any(text[d] in rules.CUED_DOTS for d in dots) and not cued:
            continue
        out.append((start, end))
    return out


def _medical_part(text: str, start: int, end: int | None = None) -> bool:
    """Whether a CMeKG term that jieba knows as an everyday word begins at ``start`` (恶心·呕吐, 眼睑发红·肿胀,
    吐尔逊|腹痛), or, with ``end``, any CMeKG term that begins there and runs on past ``end`` (圣·约翰草提取物片).
    A term jieba does not know is no reason: 艾力 is a drug's brand name and one of the commonest Uyghur names
    (买买提·艾力), 都拉 one too (阿不都拉)."""
    names, seg = protected_names(), segmenter()
    for j in range(start + 2, min(len(text), start + MAX_PROTECTED_CHARS) + 1):
        term = text[start:j]
        if term in names and (
            (end is not None and j > end)
            or (seg.tokenizer.FREQ.get(term, 0) > 0 and seg.word_tag_tab.get(term) not in PERSON_TAGS)
        ):
            return True
    return False


def _latin_names(text: str) -> list[tuple[int, int]]:
    """Latin-script names after a self-introduction or a name cue ("我叫John Smith", "患者 Maria"), not the
    eponyms, scales and lab values that follow the same cues ("患者Graves病", "我是Rh阴性", "患者Hb 90 g/L");
    all-capital abbreviations (CT, MRI, HIV) never match."""
    out = []
    for m in rules.LATIN_NAME.finditer(text):
        s, e = _value_span(m)
        first = text[s:e].split()[0]
        if m.group("value") is not None and (
            first in rules.LATIN_NOT_NAMES or len(text[s:e]) < 3 or rules.LATIN_MEDICAL_NEXT.match(text, e)
        ):
            continue
        out.append((s, e))
    return out


def find_identifiers(text: str) -> list[Finding]:
    """Every identifier in ``text``: non-overlapping, in text order. Earlier rules win an overlap."""
    taken: list[Finding] = []

    def free(s: int, e: int) -> bool:
        return all(e <= f.start or s >= f.end for f in taken)

    for category, pattern in rules.RULES:
        for m in pattern.finditer(text):
            s, e = _value_span(m)
            if e > s and free(s, e):
                taken.append(Finding(category, s, e, text[s:e]))
    if HAN_RUN.search(text) or rules.NAME_EN.search(text):
        for s, e in sorted(_name_candidates(text), key=lambda span: (span[0], -span[1])):
            if e > s and free(s, e):
                taken.append(Finding("name", s, e, text[s:e]))
    return sorted(taken, key=lambda f: f.start)


def deidentify(text: str, counts: Counter | None = None) -> str:
    """``text`` with each identifier replaced by its category's tag; adds what it found to ``counts``
    (category -> n)."""
    findings = find_identifiers(text)
    if not findings:
        return text
    parts, pos = [], 0
    for f in findings:
        parts += [text[pos : f.start], tag(f.category)]
        pos = f.end
        if counts is not None:
            counts[f.category] += 1
    parts.append(text[pos:])
    return "".join(parts)


def deidentify_messages(messages: list[dict], counts: Counter | None = None) -> list[dict]:
    return [{"role": msg["role"], "content": deidentify(msg["content"], counts)} for msg in messages]


def measure(corpus: list[dict]) -> dict:
    """Recall and precision per category on annotated lines ``{"text", "identifiers": [{"category", "text"}]}``.

    An expected identifier is the first occurrence of its text after the previous identifier of its line
    (they are listed in text order). It counts as found when the findings of its category cover every one
    of its characters. A finding is true when it overlaps an expected identifier of its own category.
    Returns ``{category: {"expected", "found", "recall", "findings", "true", "precision"}, ..., "overall": ...}``.
    """
    stats = {c: Counter(expected=0, found=0, findings=0, true=0) for c in CATEGORIES}  # zeros stay in the table
    for line in corpus:
        text, findings, pos, spans = line["text"], find_identifiers(line["text"]), 0, []
        for ident in line["identifiers"]:
            start = text.index(ident["text"], pos)
            pos = start + len(ident["text"])
            spans.append((ident["category"], start, pos))
            covered = {i for f in findings if f.category == ident["category"] for i in range(f.start, f.end)}
            stats[ident["category"]]["expected"] += 1
            stats[ident["category"]]["found"] += all(i in covered for i in range(start, pos))
        for f in findings:
            stats[f.category]["findings"] += 1
            stats[f.category]["true"] += any(c == f.category and s < f.end and f.start < e for c, s, e in spans)
    counts = ("expected", "found", "findings", "true")
    stats["overall"] = Counter({k: sum(s[k] for s in stats.values()) for k in counts})
    return {
        c: {
            **s,
            "recall": s["found"] / s["expected"] if s["expected"] else None,
            "precision": s["true"] / s["findings"] if s["findings"] else None,
        }
        for c, s in stats.items()
    }


def format_table(result: dict) -> str:
    """:func:`measure`'s result as a markdown table."""

    def pct(x):
        return "n/a" if x is None else f"{x:.3f}"

    rows = ["| category | expected | recall | findings | precision |", "|---|---:|---:|---:|---:|"]
    for c, s in result.items():
        rows.append(f"| {c} | {s['expected']} | {pct(s['recall'])} | {s['findings']} | {pct(s['precision'])} |")
    return "\n".join(rows)
