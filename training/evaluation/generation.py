"""Generation quality, Huatuo-26M style: greedy answers to the held-out questions, scored against the
reference answers with BLEU-1/2/4, ROUGE-1/2/L (characters) and distinct-2."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from core.prompting import conversation_prompt, cut_plain_answer
from training.evaluation.loglik import token_ids
from training.evaluation.metrics import generation_metrics


def generate_greedy(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, max_length: int, desc: str = "generate"
) -> list[str]:
    """Greedy continuations of ``prompts`` (in order), left-padded batches of similar length.

    A prompt keeps its last ``max_length - max_new_tokens`` tokens so the answer fits the context.
    """
    room = max(max_length - max_new_tokens, 1)
    encoded = [token_ids(tokenizer, p)[-room:] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = [""] * len(prompts)
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch], device=model.device)
            mask = torch.tensor(
                [[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch], device=model.device
            )
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            for i, row in zip(batch, out[:, width:], strict=True):
                answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return answers


def qa_generations(
    model,
    tokenizer,
    records: list[dict],
    chat: bool,
    max_new_tokens: int,
    batch_size: int,
    max_length: int,
    desc: str = "qa",
) -> list[dict]:
    """``{"id", "reference", "answer"}`` for every held-out question (``{"id","messages","reference"}``)."""
    prompts = [conversation_prompt(tokenizer, r["messages"], chat) for r in records]
    answers = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, max_length, desc=desc)
    if not chat:
        answers = [cut_plain_answer(a) for a in answers]
    return [
        {"id": r.get("id"), "reference": r["reference"], "answer": a} for r, a in zip(records, answers, strict=True)
    ]


def qa_metrics(generations: list[dict]) -> dict[str, float]:
    """bleu1/2/4, rouge1/2/L and distinct2 of the generated answers against their references (None without
    any question)."""
    if not generations:
        return dict.fromkeys(("bleu1", "bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "distinct2"))
    return generation_metrics([g["answer"] for g in generations], [g["reference"] for g in generations])
