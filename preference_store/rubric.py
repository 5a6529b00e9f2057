"""The annotation guideline (rubric) every annotator follows, and its built-in first version.

The default follows Zhongjing's expert ranking rules: safety first, then professionalism and
correctness, then completeness, then fluency. Admins publish new versions from the app's Guidelines
page; each judgment records the version in force, and the 1-5 scores are on that version's criteria.
"""

from __future__ import annotations

import re

from preference_store.records import Criterion
from preference_store.validation import PreferenceStoreError, check_text

DEFAULT_CRITERIA = (
    Criterion(
        "safety",
        "安全性 safety",
        "不给出可能造成伤害的建议；危急情况建议立即就医；不替代医生诊断。No advice that could harm; urgent "
        "signs sent to a doctor at once; never a substitute for a diagnosis.",
    ),
    Criterion(
        "correctness",
        "专业性/正确性 correctness",
        "医学事实、药物、剂量、禁忌正确，术语专业。Medical facts, drugs, doses and contraindications are right; "
        "professional terms are used correctly.",
    ),
    Criterion(
        "completeness",
        "完整性 completeness",
        "回答了问题的各个方面，必要时说明检查、治疗与随访。Answers every part of the question, with tests, "
        "treatment and follow-up where they matter.",
    ),
    Criterion(
        "fluency",
        "流畅性 fluency",
        "通顺、清楚、没有重复或无关内容。Clear, fluent, without repetition or unrelated text.",
    ),
)

DEFAULT_TEXT = """### 评判准则 Annotation guideline

按以下优先级比较回答；前一条的差别比后一条重要。Judge the answers in this order of priority; a difference on
an earlier criterion outweighs any difference on a later one (Zhongjing's expert ranking rules).

1. **安全性 Safety.** 可能造成伤害的回答（错误用药、延误急症、劝阻就医）总是较差。An answer that could harm
   (a wrong drug or dose, a delayed emergency, advice not to see a doctor) always loses.
2. **专业性与正确性 Professionalism and correctness.** 医学事实、药物与禁忌是否正确。Are the medical facts,
   drugs and contraindications right?
3. **完整性 Completeness.** 是否回答了问题的全部，包括何时就医、需要哪些检查。Does it answer the whole
   question, including when to see a doctor and which tests are needed?
4. **流畅性 Fluency.** 是否通顺、清楚、无重复。Is it clear and fluent, without repetition?

- 两个回答都不安全或都错误时选“都不好 both bad”；难分高下时选“平局 tie”。Both unsafe or both wrong: "both
  bad"; no real difference: "tie".
- 回答中出现模型或公司名称（如 Baichuan、Qwen、ChatGPT）时，不要因此偏向任何一方。If an answer names a model
  or company, do not let that sway you.
- 可以写一个更好的回答；它会作为优选答案用于训练。You may write a better answer; it becomes the chosen answer
  for training.
- 本工具仅供研究与教学使用，不构成医疗建议。Research and education only; nothing here is medical advice.
"""

CRITERION_KEY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_CRITERIA = 6  # the Compare tab has this many score rows per answer


def check_criteria(criteria) -> tuple[Criterion, ...]:
    """1-``MAX_CRITERIA`` criteria with distinct keys (lower-case ascii, up to 32 characters) and names."""
    if not isinstance(criteria, (list, tuple)) or not 1 <= len(criteria) <= MAX_CRITERIA:
        raise PreferenceStoreError(f"a guideline needs 1-{MAX_CRITERIA} criteria")
    out = []
    for i, c in enumerate(criteria):
        if isinstance(c, dict):
            c = Criterion(key=c.get("key"), name=c.get("name") or c.get("key"), description=c.get("description") or "")
        if not isinstance(c, Criterion) or not isinstance(c.key, str) or not CRITERION_KEY.match(c.key):
            raise PreferenceStoreError(
                f"criterion {i + 1}: its key must be lower-case letters, digits or _ "
                f"(up to 32, starting with a letter), e.g. 'safety'"
            )
        check_text(c.name, f"the name of criterion {c.key!r}", 100)
        check_text(c.description, f"the description of criterion {c.key!r}", 1000, allow_empty=True)
        out.append(c)
    keys = [c.key for c in out]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise PreferenceStoreError(f"criterion {repeated[0]!r} is listed twice")
    return tuple(out)
