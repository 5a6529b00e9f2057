"""De-identification of text before it leaves the store: phone numbers, ID-card numbers, e-mail
addresses, record numbers, and names given after words such as 患者/病人/姓名.

Each finding is replaced by a bracketed tag (``[PHONE]``, ``[ID_CARD]``, ...) and counted, so an
export can say what it redacted. The patterns lean towards redacting too much: an order number
that looks like an ID card is lost, a patient's number is not.
"""

from __future__ import annotations

import re
from collections import Counter

HAN = r"\u4e00-\u9fff"
# Common Chinese surnames (compound ones first so 欧阳 wins over 欧). A name after a cue word is
# only redacted when it starts with one of these, so "患者出现头痛" keeps its words.
COMPOUND_SURNAMES = "欧阳 司马 诸葛 上官 东方 皇甫 尉迟 公孙 慕容 令狐 长孙 宇文 司徒 夏侯 轩辕 端木 独孤 南宫 西门 申屠".split()
SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁"
    "任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武"
    "戴莫孔向汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮"
    "柯纪梅童凌毕单季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古"
    "吉缪简车项连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇"
    "桑郎甄丛仲虞敖巩明佘池查麻苑迟邝"
)
SURNAME = "(?:" + "|".join(COMPOUND_SURNAMES) + "|[" + SURNAMES + "])"
PERSON_CUES = "患者|病人|病患|患儿|伤者|就诊者|就诊人|联系人|家属|病友"
LABEL_CUES = "姓名|名字"
NAME = (
    rf"(?P<cue>{PERSON_CUES})(?P<sep>[：:\s]*)(?P<name>"
    rf"{SURNAME}某+"  # 张某 / 张某某: already a pseudonym, but still a surname
    rf"|{SURNAME}[{HAN}]{{1,2}}(?=[^{HAN}]|$|[男女因今先自于在]|女士|同志))"  # 王小明，男 / 张三因胸痛就诊
)
# after an explicit label the next word is the name, whatever it starts with
LABELLED_NAME = rf"(?P<cue>{LABEL_CUES})(?P<sep>[：:\s]*)(?P<name>[{HAN}]{{2,4}}(?=[^{HAN}]|$)|{SURNAME}[{HAN}]{{0,2}})"
NAME_EN = r"(?i:\b(?P<cue>patient|name)\b)(?P<sep>\s*[:：]?\s*)(?P<name>[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)"

PATTERNS: list[tuple[str, re.Pattern, str]] = [
    ("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[EMAIL]"),
    # 18-digit resident ID (last digit may be X) and the old 15-digit one, not inside a longer number
    ("id_card", re.compile(r"(?<![0-9A-Za-z])(?:\d{17}[\dXx]|\d{15})(?![0-9A-Za-z])"), "[ID_CARD]"),
    ("record_number", re.compile(r"(?P<cue>病历号|住院号|门诊号|医保号|床号)(?P<sep>[：:\s]*)[A-Za-z0-9-]{3,}"),
     r"\g<cue>\g<sep>[RECORD_NO]"),
    # mobile: 1[3-9] + 9 digits, optionally +86 and separated 3-4-4
    ("phone", re.compile(r"(?<![\d+])(?:(?:\+|00)?86[-\s]?)?1[3-9]\d(?:[-\s]?\d{4}){2}(?!\d)"), "[PHONE]"),
    # landline: area code 0xx(x) (optionally in brackets) + 7-8 digits, and 400/800 service numbers
    ("phone", re.compile(r"(?<![\d.])(?:[(（]0\d{2,3}[)）]\s?|0\d{2,3}[-\s]?)\d{7,8}(?:-\d{1,4})?(?![\d.])"), "[PHONE]"),
    ("phone", re.compile(r"(?<!\d)[48]00[-\s]?\d{3}[-\s]?\d{4}(?!\d)"), "[PHONE]"),
    # any 7+ digit number right after a phone cue word (a local number without area code)
    ("phone", re.compile(r"(?P<cue>电话|手机|座机|联系方式|Tel|tel|TEL)(?P<sep>[：:\s]*)\+?\d[\d\s-]{5,}\d"),
     r"\g<cue>\g<sep>[PHONE]"),
    ("name", re.compile(NAME), r"\g<cue>\g<sep>[NAME]"),
    ("name", re.compile(LABELLED_NAME), r"\g<cue>\g<sep>[NAME]"),
    ("name", re.compile(NAME_EN), r"\g<cue>\g<sep>[NAME]"),
]


def deidentify(text: str, counts: Counter | None = None) -> str:
    """``text`` with identifiers replaced by tags; adds what it found to ``counts`` (kind -> n)."""
    for kind, pattern, replacement in PATTERNS:
        text, n = pattern.subn(replacement, text)
        if n and counts is not None:
            counts[kind] += n
    return text


def deidentify_messages(messages: list[dict], counts: Counter | None = None) -> list[dict]:
    return [{"role": msg["role"], "content": deidentify(msg["content"], counts)} for msg in messages]
