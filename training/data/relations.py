"""The relations the builder reads from CMeKG and how each is said in Chinese.

One :class:`Relation` per kind of fact: which CMeKG relation names it merges, which entities have it,
several ways to state it in prose (ChiMed-CPT), several ways a user asks about it (ChiMed-SFT/DPO
prompts), the one answer style every SFT answer, QA reference and DPO "chosen" shares (so a model
that learns the style is rewarded by BLEU/ROUGE), and the exam stem when the relation is examined.

Templates take ``{e}`` (the entity) and ``{v}`` (its selected values, joined by ``joiner``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# entity kinds, in the order they are recognized (see knowledge.entity_kind)
DISEASE, TEST, HERB, DRUG = "disease", "test", "herb", "drug"
KINDS = (DISEASE, TEST, HERB, DRUG)

# how each kind of entity is introduced at the top of a CPT document (one per phrasing)
INTRODUCTIONS = {
    DISEASE: ("{e}是一种疾病。", "下面介绍疾病{e}的相关知识。", "关于{e}这种疾病，有以下医学知识。"),
    TEST: ("{e}是一种医学检查项目。", "下面介绍检查项目{e}。", "关于{e}这项检查，有以下知识。"),
    HERB: ("{e}是一种中药材。", "下面介绍中药材{e}。", "关于中药{e}，有以下知识。"),
    DRUG: ("{e}是一种药品。", "下面介绍药品{e}。", "关于{e}这种药，有以下用药知识。"),
}

# The closing advice of an answer. A DPO "rejected" answer may drop it (Aquila-Med's safety pairs).
SEE_DEPARTMENT = "如有不适，请及时到{dept}就诊，在医生指导下诊治。"  # {dept}: the disease's department
SEE_A_DOCTOR = SEE_DEPARTMENT.format(dept="医院")
ASK_A_PHARMACIST = "请在医生或药师指导下使用。"
ASK_A_TCM_DOCTOR = "请在中医师指导下使用。"
ADVICE = {DISEASE: SEE_DEPARTMENT, TEST: SEE_A_DOCTOR, HERB: ASK_A_TCM_DOCTOR, DRUG: ASK_A_PHARMACIST}

# values that say nothing ("not clear", "none") and are never stated as facts
EMPTY_VALUES = frozenset({"尚不明确", "不明确", "尚不清楚", "暂无", "无", "不详", "详见说明书", "见说明书", "其他"})


@dataclass(frozen=True)
class Relation:
    """One kind of fact, with every way the builder says, asks and examines it."""

    key: str
    cmekg: tuple[str, ...]  # CMeKG relation names merged into this one
    kinds: tuple[str, ...]  # entity kinds that carry it
    statements: tuple[str, ...]  # CPT prose, one per phrasing
    questions: tuple[str, ...]  # how users ask (SFT/DPO prompts, held-out QA)
    answer: str  # the single answer style (SFT answers, QA references, DPO chosen)
    exam: str = ""  # exam stem; "" = not examined
    # values stated for more than this share of the entities having the relation ("疼痛", "实验室检查")
    # are neither asked nor offered as distractors: a distractor that generic may well be true
    exam_generic: float = 1.0
    advice: bool = True  # close answers with the kind's advice (ADVICE)
    joiner: str = "、"
    max_chars: int = 16  # longer values are fragments of sentences, not facts
    value_map: dict[str, str] = field(default_factory=dict)  # only these values, rewritten ("有" -> "具有传染性")
    drop: frozenset[str] = frozenset()
    strip_prefix: str = ""


GENERIC = 0.03
# Examined relations are those whose values are specific enough that a distractor CMeKG does not list
# is reliably false (causes, complications and populations are too vague: "感染", "休克", "小儿"/"儿童").
RELATIONS: tuple[Relation, ...] = (
    # --- diseases ---------------------------------------------------------------------------------
    Relation(
        "symptom",
        ("常见症状", "临床症状及体征", "主要症状"),
        (DISEASE,),
        statements=("{e}的常见症状有{v}等。", "{e}患者常出现{v}等症状。", "患上{e}后，可能出现{v}等表现。"),
        questions=("{e}有哪些常见症状？", "得了{e}会有什么症状？", "{e}的主要表现是什么？"),
        answer="{e}的常见症状有{v}等。",
        exam="下列哪一项是{e}的常见症状？",
        exam_generic=GENERIC,
    ),
    Relation(
        "cause",
        ("常见病因", "病因", "主要病因"),
        (DISEASE,),
        statements=("{e}的常见病因有{v}等。", "{e}多由{v}等原因引起。", "引起{e}的原因主要包括{v}。"),
        questions=("{e}是什么原因引起的？", "为什么会得{e}？", "{e}的病因有哪些？"),
        answer="{e}的常见病因有{v}等。",
        drop=frozenset({"病因不明", "病因尚不清楚", "原因不明", "病因未明", "不明原因"}),
    ),
    Relation(
        "department",
        ("就诊科室",),
        (DISEASE,),
        statements=("{e}的就诊科室是{v}。", "{e}患者一般到{v}就诊。", "怀疑患有{e}时，可以到{v}就诊。"),
        questions=("{e}应该挂哪个科？", "得了{e}去医院看什么科？", "{e}去哪个科室就诊？"),
        answer="{e}的就诊科室是{v}。",
        exam="{e}患者应到下列哪个科室就诊？",
        joiner="或",
    ),
    Relation(
        "examination",
        ("检查", "实验室检查", "影像学检查", "辅助检查"),
        (DISEASE,),
        statements=("{e}常做的检查有{v}等。", "诊断{e}时，医生可能安排{v}等检查。", "{e}的检查项目包括{v}。"),
        questions=("{e}需要做哪些检查？", "怀疑得了{e}要做什么检查？", "诊断{e}一般要查什么？"),
        answer="{e}常做的检查有{v}等。",
        exam="诊断{e}时常做下列哪项检查？",
        exam_generic=GENERIC,
    ),
    Relation(
        "site",
        ("常见发病部位", "发病部位"),
        (DISEASE,),
        statements=("{e}常见的发病部位是{v}。", "{e}多发生在{v}。", "{e}好发于{v}。"),
        questions=("{e}一般发生在身体哪个部位？", "{e}常累及哪些部位？"),
        answer="{e}常见的发病部位是{v}。",
        exam="{e}常见的发病部位是下列哪一项？",
    ),
    Relation(
        "population",
        ("多发群体", "发病人群"),
        (DISEASE,),
        statements=("{e}多见于{v}。", "{e}的多发人群是{v}。", "在{v}中，{e}较为多见。"),
        questions=("哪些人容易得{e}？", "{e}多发于什么人群？"),
        answer="{e}多见于{v}。",
    ),
    Relation(
        "complication",
        ("并发症",),
        (DISEASE,),
        statements=("{e}可能引起{v}等并发症。", "{e}的并发症包括{v}。", "若{e}未及时治疗，可能并发{v}等。"),
        questions=("{e}会引起哪些并发症？", "{e}有什么并发症？"),
        answer="{e}可能引起{v}等并发症。",
    ),
    Relation(
        "risk_factor",
        ("高危因素",),
        (DISEASE,),
        statements=("{e}的高危因素有{v}等。", "{v}等因素会增加患{e}的风险。"),
        questions=("哪些因素会增加患{e}的风险？", "{e}的高危因素有哪些？"),
        answer="{e}的高危因素有{v}等。",
    ),
    Relation(
        "transmission",
        ("传播途径",),
        (DISEASE,),
        statements=("{e}的传播途径有{v}。", "{e}可通过{v}等途径传播。"),
        questions=("{e}是怎么传播的？", "{e}通过什么途径传染？"),
        answer="{e}的传播途径有{v}。",
        max_chars=20,
    ),
    Relation(
        "infectivity",
        ("传染性",),
        (DISEASE,),
        statements=("{e}{v}。", "一般认为{e}{v}。"),
        questions=("{e}会传染吗？", "{e}有传染性吗？"),
        answer="{e}{v}。",
        value_map={"有": "具有传染性", "无": "一般没有传染性", "无传染性": "一般没有传染性"},
    ),
    Relation(
        "treatment",
        ("治疗", "手术治疗"),
        (DISEASE,),
        statements=("{e}的治疗方法有{v}等。", "治疗{e}可采用{v}等方法。"),
        questions=("{e}怎么治疗？", "{e}有哪些治疗方法？"),
        answer="{e}的治疗方法有{v}等。",
        drop=frozenset({"治疗原则"}),
    ),
    Relation(
        "drug_therapy",
        ("药物治疗",),
        (DISEASE,),
        statements=("治疗{e}的常用药物有{v}等。", "{e}的药物治疗可选用{v}等。"),
        questions=("{e}吃什么药？", "治疗{e}常用哪些药物？"),
        answer="治疗{e}的常用药物有{v}等。",
    ),
    Relation(
        "prevention",
        ("预防",),
        (DISEASE,),
        statements=("预防{e}的措施有{v}等。", "{v}等措施有助于预防{e}。"),
        questions=("{e}怎么预防？", "如何预防{e}？"),
        answer="预防{e}的措施有{v}等。",
        max_chars=20,
    ),
    Relation(
        "alias",
        ("别称", "又称", "其他名称"),
        (DISEASE, HERB),
        statements=("{e}又称{v}。", "{e}也叫{v}。"),
        questions=("{e}还有什么别名？", "{e}又叫什么？"),
        answer="{e}又称{v}。",
        advice=False,
    ),
    Relation(
        "related_disease",
        ("相关疾病",),
        (DISEASE, TEST),
        statements=("与{e}相关的疾病有{v}等。", "{e}与{v}等疾病有关。"),
        questions=("{e}和哪些疾病有关？", "与{e}相关的疾病有哪些？"),
        answer="与{e}相关的疾病有{v}等。",
    ),
    # --- medical tests ----------------------------------------------------------------------------
    Relation(
        "test_category",
        ("所属分类",),
        (TEST,),
        statements=("{e}在检查分类中属于{v}。", "按检查分类，{e}归入{v}。"),
        questions=("{e}属于哪类检查？", "{e}是哪一类的检查项目？"),
        answer="{e}在检查分类中属于{v}。",
        exam="{e}在检查分类中属于下列哪一类？",
        advice=False,
    ),
    Relation(
        "test_symptom",
        ("相关症状",),
        (TEST,),
        statements=("与{e}相关的症状有{v}等。", "出现{v}等症状时，可能需要做{e}。"),
        questions=("{e}和哪些症状有关？", "什么症状需要做{e}？"),
        answer="与{e}相关的症状有{v}等。",
    ),
    # --- drugs ------------------------------------------------------------------------------------
    Relation(
        "indication",
        ("适应症", "适应证", "主治"),
        (DRUG, HERB),
        statements=("{e}主要用于治疗{v}等。", "{e}的适应症包括{v}。", "{e}适用于{v}等。"),
        questions=("{e}是治什么的？", "{e}的适应症有哪些？", "{e}能治哪些病？"),
        answer="{e}主要用于治疗{v}等。",
        exam="{e}可用于治疗下列哪一项？",
        exam_generic=GENERIC,
        drop=frozenset({"敏感"}),
        strip_prefix="用于",
    ),
    Relation(
        "function",
        ("功能主治", "功用", "功能"),
        (DRUG,),
        statements=("{e}的功能主治为{v}。", "中医认为{e}可用于{v}。"),
        questions=("{e}的功能主治是什么？", "{e}有什么功效？"),
        answer="{e}的功能主治为{v}。",
        exam="下列哪一项属于{e}的功能主治？",
        exam_generic=GENERIC,
        strip_prefix="用于",
    ),
    Relation(
        "adverse_reaction",
        ("不良反应",),
        (DRUG,),
        statements=("{e}的不良反应有{v}等。", "使用{e}后可能出现{v}等不良反应。", "{e}可能引起{v}等不良反应。"),
        questions=("{e}有哪些副作用？", "用{e}会有什么不良反应？", "{e}的不良反应有哪些？"),
        answer="{e}的不良反应有{v}等。",
        exam="下列哪一项是{e}的不良反应？",
        exam_generic=GENERIC,
    ),
    Relation(
        "contraindication",
        ("禁忌", "禁忌证", "主要用药禁忌"),
        (DRUG,),
        statements=("使用{e}的禁忌为：{v}。", "关于{e}的用药禁忌，{v}。"),
        questions=("哪些人不能用{e}？", "{e}有什么禁忌？", "使用{e}有哪些禁忌？"),
        answer="使用{e}的禁忌为：{v}。",
        joiner="；",
        max_chars=30,
    ),
    Relation(
        "drug_class",
        ("分类",),
        (DRUG,),
        statements=("{e}属于{v}。", "在药物分类上，{e}属于{v}。"),
        questions=("{e}属于哪一类药？", "{e}是什么类型的药物？"),
        answer="{e}属于{v}。",
        exam="{e}属于下列哪一类药物？",
    ),
    Relation(
        "otc",
        ("OTC类型",),
        (DRUG,),
        statements=("{e}属于{v}。", "按非处方药管理，{e}属于{v}。"),
        questions=("{e}是处方药吗？", "{e}需要处方才能买吗？"),
        answer="{e}属于{v}。",
        value_map={"甲类OTC": "甲类非处方药", "乙类OTC": "乙类非处方药"},
    ),
    Relation(
        "interaction",
        ("药物相互作用",),
        (DRUG,),
        statements=("{e}与{v}等药物存在相互作用。", "{e}与{v}等合用时需谨慎。"),
        questions=("{e}不能和哪些药一起用？", "{e}和哪些药物有相互作用？"),
        answer="{e}与{v}等药物存在相互作用。",
    ),
    Relation(
        "usage",
        ("用法用量",),
        (DRUG,),
        statements=("{e}的用法用量为：{v}。", "{e}的一般用法是：{v}。"),
        questions=("{e}怎么用？", "{e}的用法用量是什么？"),
        answer="{e}的用法用量为：{v}。",
        joiner="；",
        max_chars=40,
    ),
    Relation(
        "storage",
        ("贮藏",),
        (DRUG,),
        statements=("{e}的贮藏要求为{v}。", "保存{e}时应注意：{v}。"),
        questions=("{e}怎么保存？", "{e}的贮藏条件是什么？"),
        answer="{e}的贮藏要求为{v}。",
        advice=False,
        joiner="；",
        max_chars=24,
    ),
    # --- Chinese materia medica -------------------------------------------------------------------
    Relation(
        "efficacy",
        ("功效",),
        (HERB,),
        statements=("{e}具有{v}的功效。", "{e}的功效是{v}。", "中医认为{e}能够{v}。"),
        questions=("{e}有什么功效？", "{e}的作用是什么？"),
        answer="{e}具有{v}的功效。",
        exam="{e}具有下列哪一项功效？",
        exam_generic=GENERIC,
    ),
    Relation(
        "property",
        ("性味",),
        (HERB,),
        statements=("{e}的性味为{v}。", "从性味看，{e}{v}。"),
        questions=("{e}的性味是什么？", "{e}是什么性味？"),
        answer="{e}的性味为{v}。",
        joiner="，",
    ),
    Relation(
        "medicinal_part",
        ("入药部位",),
        (HERB,),
        statements=("{e}的入药部位是{v}。", "{e}以{v}入药。"),
        questions=("{e}的入药部位是什么？", "{e}用哪个部位入药？"),
        answer="{e}的入药部位是{v}。",
        exam="{e}的入药部位是下列哪一项？",
        advice=False,
    ),
    Relation(
        "region",
        ("分布区域",),
        (HERB,),
        statements=("{e}主要分布于{v}等地。", "{e}产于{v}等地。"),
        questions=("{e}主要分布在哪里？", "{e}产自哪些地方？"),
        answer="{e}主要分布于{v}等地。",
        advice=False,
    ),
    Relation(
        "harvest",
        ("采收时间", "采收季节"),
        (HERB,),
        statements=("{e}一般在{v}采收。", "{e}的采收时间是{v}。"),
        questions=("{e}什么时候采收？", "{e}的采收时间是什么时候？"),
        answer="{e}一般在{v}采收。",
        advice=False,
    ),
    Relation(
        "toxicity",
        ("毒性",),
        (HERB,),
        statements=("{e}{v}。", "中医认为{e}{v}。"),
        questions=("{e}有毒吗？", "{e}有没有毒性？"),
        answer="{e}{v}。",
        value_map={
            "无毒": "无毒",
            "有毒": "有毒",
            "小毒": "有小毒",
            "有小毒": "有小毒",
            "大毒": "有大毒",
            "有大毒": "有大毒",
        },
    ),
    Relation(
        "family",
        ("科",),
        (HERB,),
        statements=("{e}在生物分类上属于{v}。", "按生物分类，{e}归入{v}。"),
        questions=("{e}属于哪个科？", "{e}在生物分类上属于什么科？"),
        answer="{e}在生物分类上属于{v}。",
        exam="{e}在生物分类上属于下列哪个科？",
        advice=False,
    ),
)

RELATION_BY_KEY = {r.key: r for r in RELATIONS}


def join_values(relation: Relation, values: list[str]) -> str:
    return relation.joiner.join(values)


def advice_for(kind: str, department: list[str]) -> str:
    """The closing advice of an answer about an entity of ``kind`` ("" = none)."""
    if kind == DISEASE:
        return SEE_DEPARTMENT.format(dept="或".join(department) if department else "医院")
    return ADVICE[kind]
