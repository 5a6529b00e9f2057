"""Batched log-likelihood of continuations given contexts: what exam options, preference pairs and
perplexity are all scored with.

One request is a (context token ids, continuation token ids) pair; its score is the summed log-probability
of the continuation tokens given everything before them. Requests are sorted by length and run in
right-padded batches (with causal attention, real tokens never see the padding that follows them), so the
options of one question usually share a forward pass. When every request of a call starts with the same
tokens (the k-shot demonstrations of the exam), that shared prefix runs once and its key/value cache is
reused by every batch instead of being recomputed for each of the thousands of option sequences.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

# below this many shared tokens the cache bookkeeping costs more than recomputing them
MIN_SHARED_PREFIX = 16


@dataclass(frozen=True)
class Request:
    """Score ``continuation`` after ``context`` (token ids; the context is never empty)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class Score:
    logprob: float  # summed log-probability of the continuation tokens
    tokens: int  # how many continuation tokens were scored


def token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as the model sees it inside a sequence (no special tokens added)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def make_request(tokenizer, context: str, continuation: str, max_length: int) -> Request:
    """Tokenize ``context`` + ``continuation`` together and split at the context's end.

    Tokenizing the joined text (and taking the continuation as what follows the context's own tokens)
    keeps the tokens the model would really see at the boundary. The sequence is cut to ``max_length``:
    the context loses its beginning first; a continuation longer than the room left loses its end.
    """
    ctx = token_ids(tokenizer, context)
    whole = token_ids(tokenizer, context + continuation)
    cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else token_ids(tokenizer, continuation)
    if not ctx:  # the first token needs something to be predicted from
        ctx = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return truncate(ctx, list(cont), max_length)


def truncate(context: list[int], continuation: list[int], max_length: int) -> Request:
    """Fit a request into ``max_length`` tokens, keeping at least one context token."""
    continuation = continuation[: max_length - 1]
    context = context[-(max_length - len(continuation)) :]
    return Request(tuple(context), tuple(continuation))


def score_requests(model, requests: list[Request], batch_size: int, desc: str = "log-likelihood") -> list[Score]:
    """Score every request (in input order), ``batch_size`` sequences per forward pass."""
    prefix = shared_prefix([r.context for r in requests])
    skip = len(prefix) if len(prefix) >= MIN_SHARED_PREFIX else 0
    scores: list[Score | None] = [Score(0.0, 0) if not r.continuation else None for r in requests]
    order = sorted(
        (i for i, r in enumerate(requests) if r.continuation),
        key=lambda i: len(requests[i].context) + len(requests[i].continuation),
        reverse=True,
    )
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    with torch.inference_mode():
        prefix_state = _run_prefix(model, prefix) if skip else None
        for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
            for i, score in zip(
                batch, _score_batch(model, [requests[i] for i in batch], skip, prefix_state), strict=True
            ):
                scores[i] = score
    return scores  # type: ignore[return-value]


def shared_prefix(contexts: list[tuple[int, ...]]) -> list[int]:
    """The longest run of leading tokens every context has in common."""
    if not contexts:
        return []
    first, n = contexts[0], min(len(c) for c in contexts)
    for c in contexts[1:]:
        n = next((i for i in range(n) if c[i] != first[i]), n)
    return list(first[:n])


def _run_prefix(model, prefix: list[int]):
    """(key/value cache of the prefix, log-probabilities of the token after it)."""
    out = model(input_ids=torch.tensor([prefix], device=model.device), use_cache=True)
    return out.past_key_values, out.logits[0, -1].float().log_softmax(-1)


def _score_batch(model, batch: list[Request], skip: int, prefix_state) -> list[Score]:
    """Forward one right-padded batch; ``skip`` leading tokens of each sequence come from the prefix cache."""
    seqs = [list(r.context[skip:]) + list(r.continuation) for r in batch]
    lengths = [len(s) for s in seqs]
    width = max(lengths)
    pad = seqs[0][0]  # any real id: padded positions are masked and never scored
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=model.device)
    mask = torch.arange(width, device=model.device)[None, :] < torch.tensor(lengths, device=model.device)[:, None]
    kwargs = {}
    if prefix_state is not None:
        cache, after_prefix = prefix_state
        cache = copy.deepcopy(cache)
        cache.batch_repeat_interleave(len(batch))
        mask = torch.cat([torch.ones(len(batch), skip, dtype=torch.bool, device=model.device), mask], dim=1)
        kwargs = {"past_key_values": cache, "use_cache": True}
    logits = model(input_ids=ids, attention_mask=mask.long(), **kwargs).logits.float()
    # log p(token k | tokens < k) for k >= 1 of the batch; token 0 is predicted by the prefix (if any)
    token_lp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    first_lp = after_prefix[ids[:, 0]] if prefix_state is not None else torch.full_like(token_lp[:, 0], float("nan"))
    token_lp = torch.cat([first_lp[:, None], token_lp], dim=1).cpu()  # token_lp[b, k] scores ids[b, k]
    scores = []
    for b, r in enumerate(batch):
        start = len(r.context) - skip
        scores.append(Score(float(token_lp[b, start : lengths[b]].sum()), lengths[b] - start))
    return scores
