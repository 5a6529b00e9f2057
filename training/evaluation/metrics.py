"""Metric functions: BLEU and ROUGE on characters, distinct-n, and accuracy with its Wilson interval.

Chinese has no spaces between words, so generation quality is measured on characters, as the Qilin-Med
paper (and Huatuo-26M before it) does: every non-space character is one token, for BLEU and ROUGE alike.

- BLEU-1/2/4: sacrebleu (``tokenize="char"``, ``max_ngram_order`` 1, 2 or 4), *corpus* BLEU with its
  brevity penalty. sacrebleu is the reference implementation MT papers report with; its char tokenizer
  is exactly "one character = one token" and whitespace disappears.
- ROUGE-1/2/L: Google's rouge-score with a character tokenizer, F1 averaged over the answers. Its default
  tokenizer keeps only ``[a-z0-9]`` and would silently score every Chinese answer as empty.
- distinct-2 (Li et al. 2016): distinct character bigrams / all character bigrams over every answer.

All values are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rouge_score import rouge_scorer, tokenizers
from sacrebleu.metrics import BLEU

Z_95 = 1.959963984540054  # standard normal quantile for a two-sided 95% interval


def char_tokens(text: str) -> list[str]:
    """Characters of ``text`` without whitespace: the token unit of every metric here."""
    return [ch for ch in text if not ch.isspace()]


class CharTokenizer(tokenizers.Tokenizer):
    """rouge-score tokenizer: one token per non-space character (case kept, nothing dropped)."""

    def tokenize(self, text):
        return char_tokens(text)


def bleu(hypotheses: Sequence[str], references: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU-``max_order`` on characters (cumulative: geometric mean of 1..n-gram precisions)."""
    if not hypotheses:
        return 0.0
    metric = BLEU(tokenize="char", max_ngram_order=max_order)
    score = metric.corpus_score(list(hypotheses), [list(references)]).score / 100.0
    return min(score, 1.0)  # sacrebleu works in percent; exp(log(1)) can overshoot by a rounding error


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 on characters: ``{"rouge1", "rouge2", "rougeL"}``."""
    types = ("rouge1", "rouge2", "rougeL")
    if not hypotheses:
        return dict.fromkeys(types, 0.0)
    scorer = rouge_scorer.RougeScorer(list(types), tokenizer=CharTokenizer())
    totals = dict.fromkeys(types, 0.0)
    for hyp, ref in zip(hypotheses, references, strict=True):
        scores = scorer.score(ref, hyp)  # rouge-score takes (target, prediction)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: totals[t] / len(hypotheses) for t in types}


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct character n-grams / all character n-grams over ``texts`` (0 when there are none)."""
    seen, total = set(), 0
    for text in texts:
        chars = char_tokens(text)
        grams = [tuple(chars[i : i + n]) for i in range(len(chars) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def generation_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Everything reported for generated answers: bleu1/2/4, rouge1/2/L and distinct2."""
    out = {f"bleu{n}": bleu(hypotheses, references, n) for n in (1, 2, 4)}
    out.update(rouge(hypotheses, references))
    out["distinct2"] = distinct_n(hypotheses, 2)
    return out


def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion (well-behaved for small n and for 0 or n successes)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy(flags: Sequence[bool]) -> dict:
    """``{"acc", "n", "ci95"}`` of a list of right/wrong flags (acc is None when there is nothing)."""
    n, correct = len(flags), sum(bool(f) for f in flags)
    return {"acc": correct / n if n else None, "n": n, "ci95": list(wilson_interval(correct, n))}
