"""Stage rm (optional, ``align.reward_model``): a reward model trained on the clinicians' and ChiMed-DPO's
preferences, as Zhongjing trains one on expert rankings before RLHF.

The model is the SFT model (cpt weights with the sft adapter merged) loaded as a sequence classifier with one
output: the decoder reads the whole conversation and a new linear head (``score``) turns the hidden state of
its last token into a scalar reward. A LoRA adapter (``cfg.rm.lora``) is trained on the decoder and the head
in full (PEFT's ``modules_to_save``) by TRL's RewardTrainer, with the Bradley-Terry loss
-log sigmoid(r(chosen) - r(rejected)) on ChiMed-DPO's train pairs (objective, imported and clinician pairs,
TRL's conversational preference format, the same file DPO reads). TRL's fused LM-head path
(``training/trainer/logprobs.py``) does not apply: the reward model has no LM head.

The stage is saved as ``runs/<id>/rm`` (adapter + head, tokenizer, ``pair_ids.json``), kind "lora" on "sft"
in the manifest, and never answers prompts (the registry's ``generative=False``). ``training/trainer/reward_model.py``
loads it again and scores conversations with it: GRPO's reward for open prompts and the
evaluation's judge (``training/evaluation/reward.py``).
"""

from __future__ import annotations

from datasets import Dataset
from transformers import set_seed
from trl import RewardConfig, RewardTrainer

from core.config import Config
from core.errors import UserError
from training.modeling import stage_chain, stage_tokenizer
from training.recipes import data_check, recipe
from training.trainer.arguments import training_arguments, training_dtype
from training.trainer.callbacks import stage_callbacks
from training.trainer.lifecycle import finish_stage, train_resumably
from training.trainer.lora import describe_lora, lora_record, resolve_lora_targets
from training.trainer.pairs import check_pairs, last_logged, read_pairs, save_with_pair_ids
from training.trainer.paths import StagePaths
from training.trainer.reward_model import sequence_classifier

STAGE = "rm"


@recipe("rm")
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


def _last_reward_metrics(log_history: list[dict]) -> dict:
    """The last logged training accuracy (share of pairs already ranked right) and reward margin."""
    return last_logged(log_history, {"accuracy": "train_reward_accuracy", "margin": "train_reward_margin"})


data_check("rm")(check_pairs)
