"""Identifiers in what a clinician types, caught before any model sees it.

Clinicians paste real cases, whatever the notice says. Every prompt, correction and reason typed in the
Compare tab or sent through the API is screened first (:func:`screen_entry`, on
:func:`preference_store.deid.detect.find_identifiers`); when it holds identifiers nothing is sent: the app
names the categories it found and offers to send the redacted text (the default) or to edit it, and the
API refuses unless the caller asks for the redacted text (``redact=True``).

    check = screen_entry(prompt="我叫李明，电话13812345678，头痛三天")
    check.found                      # True
    check.summary()                  # "检测到 found: 姓名 name ×1, 电话 phone ×1"
    check.redacted["prompt"]         # what the models would see
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from core.errors import UserError
from preference_store.deid.detect import CATEGORIES, category_label, deidentify, find_identifiers

FIELD_LABELS = {"prompt": "问题 prompt", "correction": "改写的回答 better answer", "reason": "理由 reason"}


@dataclass(frozen=True)
class EntryCheck:
    """What was typed (field -> text: prompt, correction, reason), what it becomes redacted, and how many
    identifiers of each category it holds (in :data:`~preference_store.deid.detect.CATEGORIES` order)."""

    typed: dict[str, str]
    redacted: dict[str, str]
    counts: dict[str, int]

    @property
    def found(self) -> bool:
        return bool(self.counts)

    def summary(self) -> str:
        """ "检测到 found: 姓名 name ×1, 电话 phone ×1" ("" when nothing was found)."""
        return "检测到 found: " + describe_counts(self.counts) if self.counts else ""

    def preview(self) -> str:
        """The redacted text of every field that changed, each named when there are several."""
        changed = [field for field in self.typed if self.redacted[field] != self.typed[field]]
        if len(changed) == 1:
            return self.redacted[changed[0]]
        return "\n".join(f"{FIELD_LABELS.get(field, field)}: {self.redacted[field]}" for field in changed)


def describe_counts(counts: dict[str, int]) -> str:
    """ "姓名 name ×1, 电话 phone ×1": each category with its bilingual label and count."""
    return ", ".join(f"{category_label(c) if c in CATEGORIES else c} ×{n}" for c, n in counts.items())


class IdentifiersFound(UserError):
    """The text holds identifiers: nothing was sent or stored. Send it redacted, or edit it."""

    def __init__(self, check: EntryCheck) -> None:
        self.check = check
        super().__init__(
            f"包含身份信息 the text holds identifiers ({check.summary()}): nothing was sent or stored; "
            "send it redacted (脱敏后发送 redact and send; API: redact=True) or edit it"
        )


def screen_entry(**fields: str | None) -> EntryCheck:
    """Screen the given fields (empty and None ones are left out) for identifiers."""
    typed = {name: text for name, text in fields.items() if isinstance(text, str) and text.strip()}
    counts: Counter = Counter()
    redacted = {}
    for name, text in typed.items():
        findings = find_identifiers(text)
        counts.update(f.category for f in findings)
        redacted[name] = deidentify(text) if findings else text
    ordered = {c: counts[c] for c in CATEGORIES if counts[c]}
    ordered |= {c: n for c, n in counts.items() if c not in ordered}  # a category the list does not name yet
    return EntryCheck(typed, redacted, ordered)


def warm_up() -> None:
    """Load what screening needs (the segmenter's dictionary, CMeKG's protected names: seconds, once per
    process), so the first prompt sent does not wait for it."""
    find_identifiers("患者张三头痛三天")


def as_sent(redact: bool, **fields: str | None) -> tuple[dict[str, str | None], EntryCheck]:
    """The fields as they may be sent, and the check: unchanged when nothing was found, redacted with
    ``redact``; otherwise :class:`IdentifiersFound` (nothing may go further)."""
    check = screen_entry(**fields)
    if not check.found:
        return dict(fields), check
    if not redact:
        raise IdentifiersFound(check)
    return {name: check.redacted.get(name, text) for name, text in fields.items()}, check
