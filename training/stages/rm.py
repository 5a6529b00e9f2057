"""Stage rm (optional, ``align.reward_model``): a reward model trained on the clinicians' and ChiMed-DPO's
preferences, as Zhongjing trains one on expert rankings before RLHF.

The model is the SFT model (cpt weights with the sft adapter merged) loaded as a sequence classifier with one
output: the decoder reads the whole conversation and a new linear head (``score``) turns the hidden state of
its last token into a scalar reward. A LoRA adapter (``cfg.rm.lora``) is trained on the decoder and the head
in full (PEFT's ``modules_to_save``) by TRL's RewardTrainer, with the Bradley-Terry loss
-log sigmoid(r(chosen) - r(rejected)) on ChiMed-DPO's train pairs (objective, imported and clinician pairs,
TRL's conversational preference format, the same file DPO reads). TRL's fused LM-head path
(``training/stages/logprobs.py``) does not apply: the reward model has no LM head.

The stage is saved as ``runs/<id>/rm`` (adapter + head, tokenizer, ``pair_ids.json``), kind "lora" on "sft"
in the manifest, and never answers prompts (the registry's ``generative=False``). :func:`load_reward_model`
loads it again and :func:`reward_scores` scores conversations with it: GRPO's reward for open prompts and the
evaluation's judge (``training/evaluation/reward.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from datasets import Dataset
from transformers import set_seed
from trl import RewardConfig, RewardTrainer

from training.config import Config
from training.errors import UserError
from training.modeling import default_device, default_dtype, stage_chain, stage_tokenizer, trust_remote_code
from training.stages.arguments import training_arguments, training_dtype
from training.stages.callbacks import stage_callbacks
from training.stages.lifecycle import finish_stage, train_resumably
from training.stages.lora import describe_lora, lora_record, resolve_lora_targets
from training.stages.pairs import last_logged, read_pairs, save_with_pair_ids
from training.stages.paths import StagePaths

STAGE = "rm"


def run_rm_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """Train the reward model's LoRA adapter and head on the SFT model into ``runs/<id>/rm``."""
    # inputs: prompt (conversation so far) / chosen / rejected
    pairs = read_pairs(cfg)

    # model: the SFT model, merged, with a fresh one-output head (seeded: the head is drawn now)
    set_seed(cfg.train.seed)
    chain = stage_chain(paths.run_dir, paths.parent)
    model = sequence_classifier(paths.run_dir, chain, training_dtype(cfg))
    tokenizer = stage_tokenizer(paths.run_dir, chain)
    lora = reward_lora_config(cfg, model)
    head = list(lora.modules_to_save)  # before PEFT adds its own guesses of the head's name to the list
    args = training_arguments(cfg, cfg.rm, paths, args_cls=RewardConfig, max_length=cfg.rm.max_length)
    dataset = Dataset.from_list(
        [
            {
                "prompt": p["prompt"],
                "chosen": p["chosen"],
                "rejected": p["rejected"],
                "pair_id": p["pair_id"],
                "source": p.get("source", ""),
            }
            for p in pairs
        ]
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=stage_callbacks(cfg, paths),
    )
    kept = trainer.train_dataset  # TRL drops the pairs longer than rm.max_length
    if not len(kept):
        raise UserError(
            f"rm.max_length={cfg.rm.max_length}: every pair of dpo.jsonl is longer than that in "
            "tokens, so the reward model has nothing to train on; raise rm.max_length"
        )
    record = lora_record(trainer.model, lora)
    print(describe_lora(paths.stage, record) + f"; head trained in full: {', '.join(head)}", flush=True)
    metrics = train_resumably(trainer, paths)
    metrics.update(
        lora={**record, "head": head},
        pairs=len(kept),
        pairs_over_max_length=len(pairs) - len(kept),
        clinician_pairs=sum(1 for source in kept["source"] if source == "clinician"),
        **_last_reward_metrics(trainer.state.log_history),
    )

    # save: the adapter with the head, the tokenizer beside it and the ids of the pairs it learned from
    finish_stage(
        paths,
        save_with_pair_ids(trainer, kept["pair_id"]),
        kind="lora",
        parent=paths.parent,
        fingerprint=fingerprint,
        metrics=metrics,
        is_main=trainer.is_world_process_zero(),
    )


def reward_lora_config(cfg: Config, model):
    """peft.LoraConfig of the reward model: ``cfg.rm.lora`` on the decoder's linear layers (targets resolved
    and checked), and the classification head (every top-level module beside the decoder) trained in full."""
    from peft import LoraConfig, TaskType

    lora = cfg.rm.lora
    targets = resolve_lora_targets(model, list(lora.target_modules), "rm.lora.target_modules")
    head = [name for name, _ in model.named_children() if name != model.base_model_prefix]
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=head,
    )


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


def _last_reward_metrics(log_history: list[dict]) -> dict:
    """The last logged training accuracy (share of pairs already ranked right) and reward margin."""
    return last_logged(log_history, {"accuracy": "train_reward_accuracy", "margin": "train_reward_margin"})
