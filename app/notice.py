"""The research-only notice: shown before anyone can chat, accepted once per browser session, and kept
in the footer of every page."""

from __future__ import annotations

NOTICE_ZH = (
    "本工具仅供科研与教学使用。模型输出不构成医疗建议，不得用于诊断或治疗。"
    "请勿输入真实患者的身份信息（姓名、身份证号、电话、病历号等）。"
)
NOTICE_EN = (
    "This tool is for research and education only. Model outputs are not medical advice and must not be "
    "used for diagnosis or treatment. Do not enter real patient identifiers (names, ID numbers, phone "
    "numbers, record numbers)."
)
ACCEPT_LABEL = "我已阅读并同意 · I understand and agree"
NOT_ACCEPTED = "请先阅读并接受页面上方的研究用途声明 / accept the research-only notice first"


def notice_markdown() -> str:
    """The full notice for the gate that must be accepted before chatting."""
    return (
        "### ⚠ 研究用途声明 · Research-only notice\n\n"
        f"{NOTICE_ZH}\n\n{NOTICE_EN}\n\n"
        "您的评判（投票、排序、改写的回答）将被保存，并在去标识化后用于训练后续模型。"
        " Your judgments (votes, rankings, corrected answers) are stored and, after de-identification, "
        "used to train later models."
    )


def footer_markdown() -> str:
    """The short notice that stays visible at the bottom of every page."""
    return f"⚠ {NOTICE_ZH} · {NOTICE_EN}"
