"""Identity leaks: an answer that names a model, a company or the contestant itself gives a blind judgment away.

Every answer is checked when it is generated (:meth:`app.arena.Arena.ask`), and the names found are stored
with it (``ResponseIn.leaks``: ``[]`` = checked and clean), so the leaderboard can leave flagged battles out
(``store.exclude_leaked_battles``). Annotators are not shown the flag before they judge: telling them that
panel B "names Qwen" would unblind the comparison just as much.

What counts as naming:

- a Latin name (``Qwen``, ``GPT-4``, ``Meta AI``, a run id such as ``20261129-084512``) matches as a whole
  word, in any case: letters or digits right before or after it make another word (``Llamas``,
  ``Googleplex``), while Chinese text, spaces and punctuation around it do not (``我是Qwen。`` is a leak);
- a Chinese name (``百川``, ``通义千问``) matches anywhere in the text, since Chinese has no spaces between
  words; a few ordinary phrases that contain one are not names (:data:`NOT_NAMES`: ``张仲景`` is the Han
  dynasty physician, not the Zhongjing model; ``百川归海`` is an idiom), and a name that is also an ordinary
  word, or the end of one word and the start of the next, is listed by its distinctive part (InternLM's 书生·浦语
  as ``浦语``: ``书生`` is a scholar, and sits inside 读书生活 and 本书生动);
- ordinary medical words are not on the list: ``Meta分析`` (a meta-analysis) is not a leak, ``Meta AI`` is;
  a stage name alone (``base``, ``CPT``, ``SFT``) is not one either (``CPT`` is also a procedure code): only
  the contestants' run ids and full checkpoint ids (``RUN/sft``) are.

The terms are ``app.leak_terms`` in the config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# phrases that contain a listed name without naming a model: masked before matching
NOT_NAMES = ("张仲景", "医圣仲景", "仲景方", "仲景学说", "仲景书院", "海纳百川", "百川归海")

_WORD = "A-Za-z0-9"


def _is_latin(term: str) -> bool:
    return term.isascii()


def _pattern(term: str) -> re.Pattern:
    escaped = re.escape(term)
    if _is_latin(term):
        return re.compile(rf"(?<![{_WORD}]){escaped}(?![{_WORD}])", re.IGNORECASE)
    return re.compile(escaped, re.IGNORECASE)


def find_leaks(text: str | None, terms: Iterable[str]) -> list[str]:
    """The terms ``text`` names, each once (as listed, in list order; ``Llama`` and ``LLaMA`` are one)."""
    if not text:
        return []
    for phrase in NOT_NAMES:
        text = text.replace(phrase, " " * len(phrase))
    found: list[str] = []
    seen: set[str] = set()
    for term in terms:
        term = (term or "").strip()
        if not term or term.casefold() in seen:
            continue
        if _pattern(term).search(text):
            found.append(term)
            seen.add(term.casefold())
    return found


def contestant_terms(leak_terms: Iterable[str], checkpoint_ids: Iterable[str]) -> list[str]:
    """The configured names plus the contestants' checkpoint ids and their run ids."""
    checkpoint_ids = list(checkpoint_ids)
    run_ids = [cid.rpartition("/")[0] for cid in checkpoint_ids]
    return list(dict.fromkeys([*leak_terms, *checkpoint_ids, *(r for r in run_ids if r)]))
