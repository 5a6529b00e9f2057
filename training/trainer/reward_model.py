"""The reward model of the rm stage (``training/recipes/rm.py``) loaded again to score answers: GRPO's reward for
open prompts (``training/trainer/rewards.py``) and the evaluation's judge (``training/evaluation/reward.py``).

The model is the SFT model loaded as a sequence classifier with one output, the rm stage's adapter and head on
it; :func:`reward_scores` and :func:`conversation_rewards` read the scalar reward of the last token.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from core.errors import UserError
from training.modeling import default_device, default_dtype, stage_chain, stage_tokenizer, trust_remote_code

STAGE = "rm"  # the stage whose adapter and head it loads


def sequence_classifier(run_dir: Path, chain: list[dict], dtype: torch.dtype):
    """The checkpoints of ``chain`` (:func:`training.modeling.stage_chain`) as one sequence classifier with a
    single output: the root loaded by ``AutoModelForSequenceClassification`` (its LM head left out, a new
    ``score`` head where the root has none), then every adapter merged in order; an rm adapter brings its
    trained head along."""
    from peft import PeftConfig, PeftModel, TaskType
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    root = chain[0]["abspath"]
    trust = trust_remote_code(run_dir)
    try:
        with suppress_seqcls_warning():  # score.weight missing and lm_head unexpected: both intended
            model = AutoModelForSequenceClassification.from_pretrained(
                root, num_labels=1, dtype=dtype, trust_remote_code=trust
            )
    except (ValueError, OSError, ImportError, KeyError, AttributeError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"{Path(run_dir).name}/{chain[0]['path']}: transformers cannot load this architecture "
            f"as a sequence classifier, which the reward model needs: {first}"
        ) from None
    for adapter in chain[1:]:
        config = PeftConfig.from_pretrained(adapter["abspath"])
        if config.task_type != TaskType.SEQ_CLS:  # a causal LM's adapter: only its LoRA weights apply here
            config.task_type = None
        model = PeftModel.from_pretrained(model, adapter["abspath"], config=config).merge_and_unload()
    return model


def load_reward_model(run_dir: Path, device: str | None = "cpu"):
    """``(model, tokenizer)`` of run ``run_dir``'s rm stage, in eval mode on ``device``, adapters and head
    merged; the tokenizer carries the run's chat template (what the stage trained with)."""
    run_dir = Path(run_dir)
    device = device or default_device()
    chain = stage_chain(run_dir, STAGE)
    model = sequence_classifier(run_dir, chain, default_dtype(device))
    tokenizer = stage_tokenizer(run_dir, chain)
    # the head reads the last token that is not padding, as in training (RewardTrainer sets the same)
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    return model, tokenizer


def reward_scores(model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 8) -> list[float]:
    """The reward of each answer to its prompt: :func:`conversation_rewards` of ``prompt + [the assistant's
    answer]``."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    return conversation_rewards(
        model,
        tokenizer,
        [list(p) + [{"role": "assistant", "content": a}] for p, a in zip(prompts, answers, strict=True)],
        batch_size,
    )


def conversation_rewards(model, tokenizer, conversations: list[list[dict]], batch_size: int = 8) -> list[float]:
    """The reward of each whole conversation, formatted by the run's chat template exactly as TRL formatted
    the training pairs (``prompt + chosen``), scored in right-padded batches. A conversation longer than the
    model's context keeps its last tokens (the answer's end, where the head reads). A NaN or infinite reward
    is a one-line :class:`UserError`."""
    limit = getattr(model.config, "max_position_embeddings", None)
    encoded = []
    for messages in conversations:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        encoded.append(ids[-limit:] if limit else ids)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    rewards: list[float] = [0.0] * len(encoded)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.tensor([encoded[i] + [pad] * (width - len(encoded[i])) for i in batch], device=model.device)
            mask = torch.tensor(
                [[1] * len(encoded[i]) + [0] * (width - len(encoded[i])) for i in batch], device=model.device
            )
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, 0].float().tolist()
            for i, value in zip(batch, logits, strict=True):
                rewards[i] = value
    bad = [i for i, r in enumerate(rewards) if not math.isfinite(r)]
    if bad:
        raise UserError(
            f"the reward model gave {len(bad)} of {len(rewards)} conversations a non-finite reward "
            f"(the first: {rewards[bad[0]]}); it cannot be used: retrain the rm stage"
        )
    return rewards
