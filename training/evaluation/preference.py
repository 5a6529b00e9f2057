"""Preference accuracy on held-out pairs (prompt / chosen / rejected, the dpo.jsonl format).

- DPO stage: the implicit DPO reward r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)), with the SFT model
  (DPO's reference) as pi_ref. A pair is ranked right when r(chosen) > r(rejected); beta > 0 does not change
  the ranking, so it is left out. Summed log-probabilities, as in the DPO loss: the answer's length
  cancels in the log-ratio.
- Every stage (and ``pref_acc`` of the stages without a reference): the stage's own likelihood, as the mean
  log-probability per token of each answer (a raw sum would mostly reward the shorter answer).
"""

from __future__ import annotations

from core.prompting import conversation_prompt
from training.evaluation.loglik import make_request, score_requests


def answer_text(tokenizer, prompt: list[dict], answer: list[dict], chat: bool) -> tuple[str, str]:
    """(context, continuation) of one answer: under the chat template the continuation is exactly what the
    template adds for the answer turn(s), end-of-turn token included, as DPO training sees it."""
    context = conversation_prompt(tokenizer, prompt, chat)
    if chat:
        full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        if full.startswith(context):
            return context, full[len(context) :]
        return context, "".join(m["content"] for m in answer) + (tokenizer.eos_token or "")
    return context, "\n".join(m["content"] for m in answer)


def pair_logprobs(
    model, tokenizer, pairs: list[dict], chat: bool, batch_size: int, max_length: int, desc: str = "preference"
) -> list[dict]:
    """Per pair: summed log-probability and token count of the chosen and of the rejected answer."""
    requests = []
    for pair in pairs:
        for side in ("chosen", "rejected"):
            requests.append(
                make_request(tokenizer, *answer_text(tokenizer, pair["prompt"], pair[side], chat), max_length)
            )
    scores = score_requests(model, requests, batch_size, desc=desc)
    return [
        {"chosen": c.logprob, "chosen_tokens": c.tokens, "rejected": r.logprob, "rejected_tokens": r.tokens}
        for c, r in zip(scores[0::2], scores[1::2], strict=True)
    ]


def likelihood_accuracy(logprobs: list[dict]) -> float | None:
    """Share of pairs whose chosen answer has the higher mean log-probability per token."""
    if not logprobs:
        return None
    right = sum(
        lp["chosen"] / max(lp["chosen_tokens"], 1) > lp["rejected"] / max(lp["rejected_tokens"], 1) for lp in logprobs
    )
    return right / len(logprobs)


def implicit_reward_accuracy(policy: list[dict], reference: list[dict]) -> float | None:
    """Share of pairs the implicit DPO reward (policy vs reference log-ratio) ranks chosen above rejected."""
    if not policy:
        return None
    right = sum(
        (p["chosen"] - r["chosen"]) > (p["rejected"] - r["rejected"]) for p, r in zip(policy, reference, strict=True)
    )
    return right / len(policy)
