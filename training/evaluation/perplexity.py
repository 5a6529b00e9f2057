"""General ability (the paper's C-Eval drop): perplexity on held-out general Chinese text.

Every document is scored as the model met documents in pre-training: after an end-of-text token, with
its own closing end-of-text token, cut to the context length. Perplexity = exp(total negative
log-likelihood / total tokens) over all documents (token-weighted, so long documents count for more).
All stages of a run share one tokenizer, so their perplexities are comparable.
"""

from __future__ import annotations

import math

from training.evaluation.loglik import Request, score_requests, token_ids


def document_request(tokenizer, text: str, max_length: int) -> Request:
    eos = tokenizer.eos_token_id
    start = eos if eos is not None else tokenizer.bos_token_id
    body = token_ids(tokenizer, text) + ([eos] if eos is not None else [])
    return Request((start,), tuple(body[: max_length - 1]))


def general_perplexity(
    model, tokenizer, texts: list[str], batch_size: int, max_length: int, desc: str = "perplexity"
) -> float | None:
    """Token-level perplexity of ``texts`` (None when there is no text)."""
    scores = score_requests(model, [document_request(tokenizer, t, max_length) for t in texts], batch_size, desc=desc)
    tokens = sum(s.tokens for s in scores)
    if not tokens:
        return None
    return math.exp(-sum(s.logprob for s in scores) / tokens)
