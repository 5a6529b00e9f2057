"""The Compare tab's contraindication warnings (docs/safety.md, "Arena warnings").

When every panel has answered, each answer is checked against CMeKG (:func:`training.data.safety_check.
warnings_for`): if the conversation states a condition -- pregnancy, an allergy to a drug or class, a child's
age -- and the answer recommends a drug whose CMeKG entry contraindicates it for that condition, the panel shows
a warning under the answer, quoting the graph's entry, and the warning is stored with the answer
(``ResponseIn.warnings``). The leaderboard counts them per checkpoint.

Blind mode: a warning says what the answer recommends and what the graph says about it; it names no contestant
and is computed the same way for every panel, so it is shown before the clinician judges, blind or not.
The index is built once per process (about two seconds, on the first finished answer).
"""

from __future__ import annotations

from training.data.safety import cmekg_safety_index
from training.data.safety_check import warnings_for

HEADING = "⚠ 用药安全提示（来自知识图谱 CMeKG，供参考）/ contraindication warning (from the CMeKG knowledge graph)"


def answer_warnings(conversation: list[dict], answer: str) -> list[str]:
    """The warnings for ``answer`` to the conversation (every user turn may state a condition)."""
    said = "\n".join(m["content"] for m in conversation if m.get("role") == "user")
    return warnings_for(said, answer, cmekg_safety_index())


def warning_block(warnings: list[str]) -> str:
    """What the panel shows under the answer ('' without a warning); plain text, escaped by the caller."""
    return "" if not warnings else "\n\n" + HEADING + "\n" + "\n".join(f"- {w}" for w in warnings)
