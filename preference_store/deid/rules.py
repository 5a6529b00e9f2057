"""The patterns behind :mod:`preference_store.deid.detect`: cue words, surnames and one regular expression per
kind of identifier, in the order they are tried.

A rule whose pattern has a ``value`` group redacts only that group, so the cue word stays readable
("住院号：[MEDICAL_RECORD]"); any other rule redacts its whole match. Rules earlier in ``RULES`` win an
overlap, so a number after 医保卡号 is a health-plan number, not a bank card.
"""

from __future__ import annotations

import re

HAN = r"\u4e00-\u9fff"
# Common Chinese surnames (compound ones first so 欧阳 wins over 欧).
COMPOUND_SURNAMES = tuple(
    "欧阳 司马 诸葛 上官 东方 皇甫 尉迟 公孙 慕容 令狐 长孙 宇文 司徒 夏侯 轩辕 端木 独孤 南宫 西门 申屠".split()
)
SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁"
    "任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武"
    "戴莫孔向汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮"
    "柯纪梅童凌毕单季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古"
    "吉缪简车项连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇"
    "桑郎甄丛仲虞敖巩明佘池查麻苑迟邝"
)
# surnames that are also everyday words ("请和医生沟通", "向医生咨询", "小于5 mm"): never a name on their own cue
WORDLIKE_SURNAMES = "和向于时应全常明成单从安解关路文华方高白"
SURNAME = "(?:" + "|".join(COMPOUND_SURNAMES) + "|[" + SURNAMES + "])"
PLAIN_SURNAME = (
    "(?:" + "|".join(COMPOUND_SURNAMES) + "|[" + "".join(c for c in SURNAMES if c not in WORDLIKE_SURNAMES) + "])"
)

# words after which the next word is a person's name (checked against the segmenter for its length)
PERSON_CUES = (
    "护士长|科主任|主任医师|主任|患者|病人|病患|患儿|伤者|就诊者|就诊人|联系人|家属|病友|产妇|孕妇|老人|主治医师|主治医生|"
    "责任护士|经治医生|医生|医师|护士|大夫|签名|监护人|陪护|委托人"
)
SELF_CUES = "我叫|我是|名叫|叫做|本人|我姓|姓名叫|名字叫|名字是|自称"
KIN_CUES = (
    "我妈妈|我妈|我爸爸|我爸|我母亲|我父亲|我爷爷|我奶奶|我外婆|我外公|我姥姥|我姥爷|我老公|我老婆|我丈夫|"
    "我妻子|我爱人|我儿子|我女儿|我哥哥|我姐姐|我弟弟|我妹妹|我孙子|我孙女|我舅舅|我姑姑|我叔叔|我婆婆|"
    "妈妈|母亲|父亲|爸爸|爷爷|奶奶|外婆|外公|姥姥|姥爷|老公|老婆|丈夫|妻子|爱人|儿子|女儿|哥哥|姐姐|弟弟|"
    "妹妹|孙子|孙女|舅舅|姑姑|叔叔|婆婆|公公|岳母|岳父|同事|朋友|邻居|"
    # issue 29: in-laws, cousins and the record's own kinship words ("患者之父", "配偶")
    "外孙女|外孙|孙女婿|女婿|儿媳妇|儿媳|媳妇|配偶|之父|之母|之妻|之夫|侄子|侄女|外甥女|外甥|表哥|表姐|表弟|"
    "表妹|堂哥|堂姐|堂弟|堂妹|姐夫|妹夫|嫂子|弟媳|舅妈|姑父|姨妈|姨父|小姨|继父|继母|养父|养母|亲戚|室友|"
    "男朋友|女朋友|未婚夫|未婚妻"
)
HONORIFICS = (
    "大爷|大妈|大娘|大叔|大姐|大哥|阿姨|叔叔|伯伯|婆婆|奶奶|爷爷|先生|女士|小姐|老师|医生|大夫|主任|"
    "教授|护士长|护士|师傅|老伯|同志|老太|老太太|阿婆|阿伯|老先生|书记|经理|院长|同学"
)
LABEL_CUES = "姓名|名字"
# a Latin letter, not \\b, bounds the cue: "我是Dr. Wang" has no word boundary between 是 and D
NAME_EN = re.compile(
    r"(?i:(?<![A-Za-z])(?:patient|name|mr|mrs|ms|dr)(?![A-Za-z])\.?)\s*[:：]?\s*(?P<value>[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)"
)
# a name a cue introduces: surname + one or two characters (the segmenter picks the length)
NAME_AFTER = rf"(?P<value>{SURNAME}[某]{{1,2}}|{SURNAME}[{HAN}]{{1,2}})"
# compound surnames that are no everyday word, so they start a name without a cue ("慕容秋，男，61岁");
# 东方 (east), 西门 (west gate), 南宫 (a town), 长孙 (eldest grandson), 公孙 and 轩辕 need a cue
CUELESS_COMPOUND_SURNAMES = tuple(
    s for s in COMPOUND_SURNAMES if s not in ("东方", "西门", "南宫", "长孙", "公孙", "轩辕")
)
COMPOUND_NAME = re.compile(rf"(?P<value>(?:{'|'.join(CUELESS_COMPOUND_SURNAMES)})[{HAN}]{{1,2}})")

# the middle dot between a given name and the father's name (买买提·艾力), as it is typed: U+00B7, U+2022,
# U+2027, U+30FB (fullwidth), U+FF65 (halfwidth), U+2219, U+22C5; a full stop, ASCII or fullwidth (U+FF0E),
# counts only after a cue word ("姓名：艾力.买买提"), as CMeKG's texts use it between terms too ("定喘．祛痰")
NAME_DOTS = "\u00b7\u2022\u2027\u30fb\uff65\u2219\u22c5"
CUED_DOTS = ".\uff0e"
DOTTED_RUN = re.compile(rf"[{HAN}]+(?:[{NAME_DOTS}{CUED_DOTS}][{HAN}]+)+")
CUE_BEFORE = re.compile(rf"(?:{PERSON_CUES}|{SELF_CUES}|{KIN_CUES}|{LABEL_CUES})[：:\s]*(?:叫|是|名叫|为)?[：:\s]*$")
# single characters that end a dotted name on the left ("患者之父|达吾提", "陪|买买提") or on the right
# ("买买提|有高血压", "艾尼|诉"): transliterations write 阿/不/都/提/力/吾, never these
DOTTED_LEFT_STOP = set(
    "之的了和与及是叫为由在于到让给被把向对跟同将从父母妻夫儿子孙兄弟姐妹叔姨舅爷奶我你他她请经据称见带送找问陪喊帮替看"
)
DOTTED_RIGHT_STOP = set(
    "有说来在于因诉述和与及的是等也已曾被把让给向对今昨男女患自又就才还要想会能了吗呢吧请现近去到经"
)
# what follows an eponym or a named product, not a person (斯蒂文斯·约翰逊综合征, 彼得·潘综合症, 圣·约翰草)
# numerals and headings never appear in a transliterated name ("第一章·总论")
NOT_IN_NAMES = re.compile(r"[第〇一二三四五六七八九十百千章节篇卷条款]")
EPONYM_NEXT = re.compile(
    r"综合[征症]|病(?![了人情史])|症(?!状)|征|氏|肉瘤|瘤|试验|反射|定律|手术|疗法|效应|现象|草|片|胶囊|"
    r"注射液|颗粒|丸"
)

# a Latin-script name after a self-introduction or a name cue ("我叫John Smith", "我的名字是Maria", "患者
# Peter Müller"); all capitals ("姓名：ZHANG SAN", as on a passport) only after 姓名/名字/我叫/名叫
LATIN_WORD = r"(?:[OD]['’])?[A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ]+(?:[A-Z][a-zß-öø-ÿ]+)?(?:['’-][A-ZÀ-ÖØ-Þ]?[a-zß-öø-ÿ]+)*"
LATIN_NAME = re.compile(
    rf"(?:{PERSON_CUES}|{SELF_CUES}|{KIN_CUES}|{LABEL_CUES}|英文名字?|外文名)[：:\s]*(?:叫|是|名叫|为)?[：:\s]*"
    rf"(?P<value>{LATIN_WORD}(?:[ \u00a0]{LATIN_WORD}){{0,2}})(?![A-Za-z0-9À-ÿ])"  # not "Chat" of ChatGPT
    rf"|(?:姓名|名字|我叫|名叫)[：:\s]*(?:是|为)?[：:\s]*(?P<value2>[A-Z]{{2,}}(?: [A-Z]{{2,}}){{1,2}})(?![A-Za-z])"
)
# what a Latin word before it is, when it is no name: an eponym, a lab value, a scale ("Graves病", "Rh阴性",
# "Apgar评分", "Child-Pugh分级"), or English text going on ("Crohn's disease")
LATIN_MEDICAL_NEXT = re.compile(
    r"\s*(?:综合[征症]|病|征|氏|病毒|试验|评分|反射|手术|术|染色|分型|分级|分期|指数|阴性|阳性|抗体|"
    r"抗原|因子|细胞|受体|检查|检测|监测|示|提示|结果|报告|值|水平|感染|疫苗|型|期|级|[-‐/]?\d)"
    r"|\s+[a-z]"
)
# capitalised words that are not names: greetings, roles, scales and eponyms, Greek letters, and the models
# that introduce themselves in answers ("我是Qwen")
LATIN_NOT_NAMES = frozenset(
    "Doctor Dr Nurse Patient Hello Hi Dear Male Female Yes No Please Thanks Thank Sorry The And "
    "Chinese English Ok Okay Holter Apgar Glasgow Gleason Doppler Gram Western Type Grade Stage "
    "Class Level Alpha Beta Gamma Delta Omicron Covid Sars Rh Hb Mr Mrs Ms Miss "
    "ChiMed Qwen Llama Mistral Gemma Claude Gemini Baichuan Copilot".split()
)

SEP = r"[：:\s]*(?:是|为)?[：:\s]*"
ALNUM_ID = r"[A-Za-z0-9][A-Za-z0-9-]{2,}[A-Za-z0-9]"


def cued(cues: str, value: str) -> re.Pattern:
    return re.compile(rf"(?:{cues}){SEP}(?P<value>{value})")


# dates: a year stays (Safe Harbor keeps years), month and day go
YEAR = r"(?:1[89]\d{2}|20\d{2})"
MONTH = r"(?:1[0-2]|0?[1-9])"
DAY = r"(?:3[01]|[12]\d|0?[1-9])"
CN_NUM = "〇零一二三四五六七八九十"
# month and day ("3月5日", year optional), or a month after its year ("2024年5月"); "5—6月采收" stays
DATE_CN = (
    rf"(?<!\d)(?:(?:{YEAR}|[{CN_NUM}]{{4}})年)?(?P<value>(?:{MONTH}|[{CN_NUM}]{{1,2}})月(?:{DAY}|[{CN_NUM}]{{1,3}})[日号])"
    rf"|(?<!\d)(?:{YEAR}|[{CN_NUM}]{{4}})年(?P<value2>(?:{MONTH}|[{CN_NUM}]{{1,2}})月)(?:份)?"
)
DATE_NUM = rf"(?<![\d.])(?P<year>{YEAR})(?P<sep>[-/.])(?P<value>{MONTH}(?P=sep){DAY})(?![\d.])"
DATE_US = rf"(?<![\d./])(?P<value>{MONTH}/{DAY})/(?P<year>{YEAR})(?![\d/])"
DATE_COMPACT = rf"(?:出生|生日|入院|出院|死亡|手术|就诊|日期)[^\d]{{0,4}}(?P<year>{YEAR})(?P<value>(?:1[0-2]|0[1-9])(?:3[01]|[12]\d|0[1-9]))(?!\d)"
# an age over 89 (Safe Harbor's limit); "90岁以上" is already the aggregate and stays
AGE = re.compile(
    r"(?:(?<!\d)(?:9\d|1[0-4]\d)(?:周岁|岁半|岁)|(?:九十[一二三四五六七八九]?|一百(?:零?[一二三四五六七八九]|[一二三四]十[一二三四五六七八九]?)?)(?:周岁|岁))(?!以上|及以上|或以上|以后|后)"
    r"|(?<=年龄)[：:\s]*(?P<value>(?:9\d|1[0-4]\d))(?!\d)(?![岁以])"
    r"|(?i:\bage[d]?\s*[:：]?\s*)(?P<value2>9\d|1[0-4]\d)\b"
)

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
STOP = "的在于住是到从往去及与近旁位我你他她们曾原今现家址"
PLACE = rf"[{HAN}]"
PLACE_WORD = rf"[^\W\d_{STOP}A-Za-z]"  # a Han character that is not a function word
DISTRICT = rf"{PLACE_WORD}{{1,5}}?(?:新区|自治县|区|县|旗)"
TOWN = rf"{PLACE_WORD}{{1,5}}?(?:镇|乡|街道|村)"
ROAD = rf"{PLACE_WORD}{{1,7}}?(?:大道|路|大街|街|巷|弄|胡同)"
SECTION = r"[0-9一二三四五六七八九十]+段"
NUMBER = r"[0-9一二三四五六七八九十百]+(?:-\d+)?号(?:院)?"
COMMUNITY = rf"{PLACE_WORD}{{1,7}}?(?:小区|花园|公寓|新村|家园|大厦|苑|庄园|社区|宿舍)"
BUILDING = r"[0-9一二三四五六七八九十A-Za-z]+(?:号楼|栋|幢|座|楼)"
UNIT = r"[0-9一二三四五六七八九十]+单元"
ROOM = r"\d+(?:室|房|号房)?"
PART = (
    rf"(?:{DISTRICT}|{TOWN}|{ROAD}(?:{SECTION})?(?:{NUMBER})?|{BUILDING}|{UNIT}|{NUMBER}|{COMMUNITY}|{ROOM}(?=[^\d]|$))"
)
ADDRESS_CUES = "住址|地址|家住|住在|现住|现住址|居住于|居住在|住于|户籍地|户籍|家庭住址|家在|住|搬到|寄到|送到"
CITY = rf"(?:[{HAN}]{{2,3}}(?:省|自治区))?[{HAN}]{{2,3}}市"
ADDRESS = re.compile(
    rf"(?:(?:{ADDRESS_CUES}){SEP}(?:{CITY})?|{CITY})(?P<value>(?:{PART})+)"  # after a cue or a city: any parts
    rf"|(?P<value2>(?:{ROAD}(?:{SECTION})?{NUMBER}|{COMMUNITY}(?:{BUILDING}|{UNIT}|{NUMBER}))(?:{PART})*)"  # a road with its number
    rf"|(?P<value3>{BUILDING}{UNIT}(?:{ROOM})?|{BUILDING}{ROOM}[室房])"  # building + unit/room
)
ROOM_CUE = re.compile(r"(?<![\d])(?P<value>\d{3,4}室)")

RULES: list[tuple[str, re.Pattern]] = [
    ("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
    (
        "url",
        re.compile(
            r"(?i:https?://|ftp://|www\.)[^\s，。；、）)\]】\"'<>]+"
            r"|(?<![@A-Za-z0-9.])(?:[a-z0-9-]+\.)+(?:com|cn|net|org|edu|gov|io|info)(?:\.cn)?/[^\s，。；、）)\]】\"'<>]*"
        ),
    ),
    (
        "ip",
        re.compile(
            r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])"
        ),
    ),
    (
        "health_plan",
        cued(
            "医保卡号|医保卡|医保号|医保账号|医保编号|社保卡号|社保卡|社保号|社保编号|社会保障号码?|社会保障卡号?|"
            "医疗保险号|医疗保险卡号|参保号|参保编号|新农合号|农合号|医疗证号",
            ALNUM_ID,
        ),
    ),
    (
        "medical_record",
        cued(
            "病历号|病案号|住院号|门诊号|就诊卡号|就诊号|登记号|病人ID|患者ID|检查号|影像号|MRN|ID号|"
            "诊疗卡号|住院编号|病历编号|病历ID|门诊ID|标本号|报告编号",
            ALNUM_ID,
        ),
    ),
    ("passport", cued("护照号码|护照号|护照|passport(?: no\\.?)?|Passport(?: No\\.?)?", r"[A-Za-z]{0,2}\d{6,9}")),
    ("passport", re.compile(r"(?<![A-Za-z0-9])(?P<value>[EGDPS][A-Z]?\d{8}|[EG]\d{7})(?![A-Za-z0-9])")),
    (
        "social",
        cued(
            r"微信号|微信|(?i:wechat|weixin|vx|wx)(?:\s*id)?|QQ号码|QQ号|(?i:qq)|微博|抖音号|抖音|小红书号|"
            r"(?i:twitter|facebook|instagram|telegram)",
            r"@?[A-Za-z0-9][-_A-Za-z0-9.]{3,29}",
        ),
    ),
    ("id_card", cued("身份证号码|身份证号|身份证|证件号码|证件号|公民身份号码", r"\d{17}[\dXx]|\d{15}")),
    ("bank_card", cued("银行卡号|银行卡|银行账号|卡号|借记卡号?|信用卡号?|储蓄卡号?", r"\d{4}(?:[\s-]?\d{2,4}){3,4}")),
    ("account", cued("账号|帐号|账户|帐户|支付宝账号|支付宝|用户名|会员号|ID", r"[A-Za-z0-9][A-Za-z0-9_@.-]{3,}")),
    (
        "phone",
        cued(
            r"电话|手机号码|手机号|手机|座机|联系方式|联系电话|传真|(?i:tel|fax|phone|mobile)",
            r"\+?\d[\d\s()（）-]{5,}\d",
        ),
    ),
    # 18-digit resident ID (last digit may be X) and the old 15-digit one, not inside a longer number
    (
        "id_card",
        re.compile(
            r"(?<![0-9A-Za-z])(?P<value>\d{6}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]|\d{17}[Xx]|\d{15})(?![0-9A-Za-z])"
        ),
    ),
    # mobile: 1[3-9] + 9 digits, optionally +86 and separated 3-4-4
    ("phone", re.compile(r"(?<![\d+])(?:(?:\+|00)?86[-\s]?)?1[3-9]\d(?:[-\s]?\d{4}){2}(?!\d)")),
    # landline: area code 0xx(x) (optionally in brackets) + 7-8 digits, and 400/800 service numbers
    ("phone", re.compile(r"(?<![\d.])(?:[(（]0\d{2,3}[)）]\s?|0\d{2,3}[-\s]?)\d{7,8}(?:-\d{1,4})?(?![\d.])")),
    ("phone", re.compile(r"(?<!\d)[48]00[-\s]?\d{3}[-\s]?\d{4}(?!\d)")),
    ("bank_card", re.compile(r"(?<![\d-])(?P<value>\d{16,19}|\d{4}(?:[\s-]\d{4}){3}(?:[\s-]\d{1,3})?)(?![\d])")),
    ("plate", re.compile(rf"(?<![A-Za-z0-9])[{PROVINCES}][A-HJ-NP-Z][·•\s]?[A-HJ-NP-Z0-9]{{5,6}}(?![A-Za-z0-9])")),
    ("date", re.compile(DATE_NUM)),
    ("date", re.compile(DATE_US)),
    ("date", re.compile(DATE_COMPACT)),
    ("date", re.compile(DATE_CN)),
    ("age", AGE),
    ("address", ADDRESS),
    ("address", ROOM_CUE),
]

# names, tried after every other rule (a number or an address wins an overlap)
CUE_NAME = re.compile(rf"(?:{PERSON_CUES}|{SELF_CUES}|{KIN_CUES})(?:[：:\s]*(?:叫|是|名叫)?[：:\s]*){NAME_AFTER}")
LABELLED_NAME = re.compile(rf"(?:{LABEL_CUES})[：:\s]*(?P<value>[{HAN}]{{2,4}}(?=[^{HAN}]|$)|{SURNAME}[{HAN}]{{0,2}})")
# a surname before an honorific (only the surname is the name: "[NAME]大爷"); a surname that is also an
# everyday word needs an unambiguous honorific ("高先生", but not "向医生咨询")
HONORIFIC_NAME = re.compile(
    rf"(?P<value>{PLAIN_SURNAME})(?:{HONORIFICS})"
    rf"|(?P<value2>{SURNAME})(?:大爷|大妈|大娘|阿姨|先生|女士|小姐|老先生|老太太|老师傅)"
    rf"|(?<![{HAN}])[小老](?P<value3>{PLAIN_SURNAME})(?=[，,。！!？?、：:\s]|$)"  # 小王， / 老张：
    rf"|(?P<value4>{SURNAME}某{{1,2}})"  # 黄某某: a pseudonym, still a surname
)
