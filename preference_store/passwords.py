"""The password policy of annotator accounts (NIST SP 800-63B): a minimum length, no common or breached
password, nothing built from the account's own name, and no composition rules.

The list of common passwords is the 30,000 most frequent ones of leaked password dumps that ``zxcvbn``
(MIT licence, pure Python, on PyPI) ships: it works offline, and nothing about a password leaves the machine.
"""

from __future__ import annotations

import functools

from core.config import AccountsConfig

CONTEXT_WORDS = ("chimed", "arena", "qilin", "password", "passwort", "mima")  # "mima" = 密码 in pinyin


@functools.cache
def common_passwords() -> frozenset[str]:
    """The common and breached passwords refused (lower case)."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(p.lower() for p in FREQUENCY_LISTS["passwords"])


def password_problem(password: str, name: str, policy: AccountsConfig) -> str | None:
    """Why ``password`` may not be the password of account ``name`` (one line), or None when it may."""
    if len(password) < policy.min_password_length:
        return (
            f"the password is {len(password)} characters: use at least {policy.min_password_length} "
            "(a few unrelated words make a good one)"
        )
    folded = password.lower()
    if folded in common_passwords() or folded.rstrip("0123456789!.") in common_passwords():
        return "this password is among the most common leaked passwords: choose another (a few unrelated words)"
    if len(set(folded)) <= 2:
        return "this password repeats one or two characters: choose another (a few unrelated words)"
    stripped = folded.strip(" 0123456789!._-@#")
    if stripped and (stripped == name.lower() or stripped in CONTEXT_WORDS):
        return "this password is the account's name or the app's: choose another (a few unrelated words)"
    return None
