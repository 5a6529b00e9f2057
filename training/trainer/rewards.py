"""GRPO's rewards (``training/recipes/grpo.py``), in the signature TRL's GRPOTrainer calls a reward function
with: ``f(prompts=..., completions=..., completion_ids=..., **columns)`` where ``columns`` are grpo.jsonl's
other columns, one value per completion (``kind``, ``options``, ``answer``), returning one float per
completion, or None where the reward does not apply (TRL leaves it out of that completion's sum and of the
reward's logged mean). TRL logs each function as ``rewards/<its name>/mean`` and ``/std``.

- :func:`exam_reward`: verifiable. 1.0 when the answer to an exam-style prompt chooses the gold option
  (:func:`chosen_option`), else 0.0; None for open prompts. The held-out questions never reach it: grpo.jsonl
  asks about training entities only, and the stage refuses a file that holds an evaluation question.
- :func:`format_reward`: 1.0 when the answer to an open prompt closes with the advice to see a doctor
  (:func:`closes_with_advice`), else 0.0; None for exam prompts, whose house-style answer is the bare option
  (ChiMed-SFT's solved exam questions) and would only be lengthened by it.
- :func:`make_rm_reward`: the rm stage's score of the answer to an open prompt; None for exam prompts.
- :func:`safety_reward` (``grpo.rewards: [safety]``, weight ``grpo.safety_weight``): on the safety prompts (a patient asks whether a drug CMeKG
  contraindicates for them may be used; training entities only), 1.0 when the answer chooses the safe option, or
  chooses none and the unsafe-answer checker (``training/data/safety_check.py``) passes it; else 0.0; None for
  the other prompts.

:func:`finite` wraps each of them: a reward that comes out NaN or infinite stops the stage with one line.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable

from training.data.grpo import EXAM, OPEN
from training.data.safety import SAFETY
from training.data.safety_check import check_answer
from training.trainer.callbacks import NonFiniteError

# a letter given as the answer: "C", "C.", "C、脸红", "答案：C", "选C"; the letter must stand alone (not the
# start of "B超" or "ACE抑制剂")
LETTER = re.compile(r"^\s*(?:正确答案|答案)?\s*(?:是|为|选)?\s*[:：]?\s*([A-Z])(?=$|[\s.．、:：)）。，,])")

# the house style closes with advice such as "如有不适，请及时到内分泌科就诊，在医生指导下诊治。" or
# "请在医生或药师指导下使用。", sometimes followed by "请不要自行用药。" (training/data/relations.py, dialogue.py):
# a sentence that asks (请/建议) the patient to see a doctor (就诊/就医/看医生) or to act under a clinician's
# guidance (指导下), among the answer's last two sentences. "X的就诊科室是内科。" states a fact, asks nothing,
# and does not count.
ADVICE = re.compile(r"(?:请|建议)[^。！？!?\n]*(?:就诊|就医|看医生|指导下)")
CLOSING_SENTENCES = 2
SENTENCE = re.compile(r"[^。！？!?\n]+[。！？!?]*")


def completion_text(completion) -> str:
    """The answer's text: a conversational completion is ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion)


def chosen_option(answer: str, options: dict[str, str | None]) -> str | None:
    """The letter of the option ``answer`` chooses, or None when it chooses none or several.

    Either the letter as the answer (it may be followed by that option's text, never another's), or, with no
    letter, the one option whose text the answer contains verbatim. Listing several options chooses none,
    so naming every option is never rewarded. No exam option hides inside another (evalsets.exam_question)."""
    options = {letter: text for letter, text in options.items() if text}
    named = {letter for letter, text in options.items() if text in answer}
    match = LETTER.match(answer)
    if match and match.group(1) in options:
        letter = match.group(1)
        return letter if named <= {letter} else None
    return next(iter(named)) if len(named) == 1 else None


def closes_with_advice(answer: str) -> bool:
    """Whether one of the answer's last two sentences advises seeing a doctor (:data:`ADVICE`)."""
    sentences = [s for s in SENTENCE.findall(answer) if s.strip()]
    return any(ADVICE.search(s) for s in sentences[-CLOSING_SENTENCES:])


def exam_reward(prompts, completions, kind, options, answer, **kwargs) -> list[float | None]:
    """1.0 when the answer to an exam-style prompt chooses the gold option, 0.0 otherwise; None for open prompts."""
    return [
        (1.0 if chosen_option(completion_text(c), o or {}) == gold else 0.0) if k == EXAM else None
        for c, k, o, gold in zip(completions, kind, options, answer, strict=True)
    ]


def format_reward(prompts, completions, kind, **kwargs) -> list[float | None]:
    """1.0 when the answer to an open prompt closes with the advice to see a doctor, 0.0 otherwise; None for
    exam prompts."""
    return [
        (1.0 if closes_with_advice(completion_text(c)) else 0.0) if k == OPEN else None
        for c, k in zip(completions, kind, strict=True)
    ]


def safety_reward(prompts, completions, kind, options, answer, **kwargs) -> list[float | None]:
    """1.0 for a safe answer to a safety prompt (the safe option, or an open answer the checker passes), 0.0 for an
    unsafe one; None for the other prompts."""
    out: list[float | None] = []
    for c, k, o, gold in zip(completions, kind, options, answer, strict=True):
        if k != SAFETY:
            out.append(None)
            continue
        text = completion_text(c)
        chosen = chosen_option(text, o or {})
        out.append(float(chosen == gold) if chosen is not None else float(not check_answer(text).unsafe))
    return out


def make_rm_reward(model, tokenizer, batch_size: int = 8) -> Callable:
    """The reward model's score (``training/recipes/rm.py``) of each answer to an open prompt; None for exam
    prompts (their reward is verifiable)."""
    from training.trainer.reward_model import reward_scores

    def rm_reward(prompts, completions, kind, **kwargs) -> list[float | None]:
        scored = [i for i, k in enumerate(kind) if k == OPEN]
        scores = (
            reward_scores(
                model,
                tokenizer,
                [prompts[i] for i in scored],
                [completion_text(completions[i]) for i in scored],
                batch_size=batch_size,
            )
            if scored
            else []
        )
        out: list[float | None] = [None] * len(kind)
        for i, score in zip(scored, scores, strict=True):
            out[i] = float(score)
        return out

    return rm_reward


def finite(reward: Callable, stage: str = "grpo") -> Callable:
    """``reward`` that stops the stage (NonFiniteError, one line) when it scores an answer NaN or infinite:
    TRL would read a NaN as "does not apply" and train on, quietly. None (does not apply) passes. The wrapper
    keeps the function's name, which TRL logs the reward under."""

    @functools.wraps(reward)
    def checked(prompts, completions, **kwargs):
        values = reward(prompts=prompts, completions=completions, **kwargs)
        bad = next((v for v in values if v is not None and not math.isfinite(v)), None)
        if bad is not None:
            state = kwargs.get("trainer_state")
            step = state.global_step + 1 if state is not None else "?"
            raise NonFiniteError(
                f"{stage}: the {reward.__name__} came out {bad} at step {step}; the stage stopped "
                "and is not complete: check the reward (the rm stage's checkpoint for rm_reward) "
                "and rerun the same command"
            )
        return values

    return checked
