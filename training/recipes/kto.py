"""Alignment stage kto: Kahneman-Tversky optimization (Ethayarajh et al. 2024) of the SFT model with LoRA.

KTO learns from single answers marked desirable or undesirable, the cheapest feedback a busy clinician
gives (a thumbs up or down), so it needs no pairs: ChiMed-KTO (``kto.jsonl``, :mod:`training.data.kto`) is
ChiMed-DPO's pairs split in two plus the clinicians' exported single-answer ratings. The policy is the SFT
model (cpt weights with the sft adapter merged) plus a fresh LoRA adapter (``cfg.kto.lora``); the reference
is the same model with that adapter disabled, i.e. exactly the SFT model, as for DPO. TRL's KTOTrainer
estimates the KL term of the loss from mismatched (prompt, answer) pairs within each batch, so a batch holds
at least two examples. Serving KTO = cpt + sft adapter + kto adapter.
"""

from __future__ import annotations

import math

from datasets import Dataset
from transformers import TrainerCallback
from trl import KTOConfig, KTOTrainer

from core.config import Config
from core.files import read_jsonl
from training.data.kto import check_feeds_kto, check_kto_data
from training.modeling import load_stage
from training.recipes import data_check, recipe
from training.trainer.arguments import training_arguments, training_dtype
from training.trainer.callbacks import NonFiniteGuard, stage_callbacks
from training.trainer.lifecycle import finish_stage, train_resumably
from training.trainer.logprobs import logprob_metrics, patch_trainer_logprobs
from training.trainer.lora import describe_lora, lora_record, peft_lora_config
from training.trainer.pairs import last_logged, save_with_pair_ids
from training.trainer.paths import StagePaths
from training.trainer.weights import pair_weights, weight_kto_trainer

# what KTOTrainer logs besides the loss; it averages its rewards with nansum, so a NaN there is checked here
KTO_LOGGED = ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins")


@recipe("kto")
def run_kto_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """Train the KTO LoRA adapter on the SFT model into ``runs/<id>/kto``."""
    # inputs: prompt (conversation so far) / completion / label (desirable or not), checked before any model loads
    path = cfg.data_dir / "kto.jsonl"
    examples = read_jsonl(path)
    counts = check_feeds_kto(examples, path)

    # model: the SFT model, merged; KTOTrainer adds the LoRA adapter and uses the model without it as reference
    model, tokenizer = load_stage(paths.run_dir, paths.parent, device="cpu", dtype=training_dtype(cfg))
    trainer, record, logprobs = build_kto_trainer(cfg, paths, model, tokenizer, examples)
    print(describe_lora(paths.stage, record), flush=True)
    print(
        f"{paths.stage}: {counts['desirable']} desirable and {counts['undesirable']} undesirable answers "
        f"({counts['from_ratings']} from the clinicians' ratings)",
        flush=True,
    )
    metrics = train_resumably(trainer, paths)
    pair_ids = list(dict.fromkeys(e["pair_id"] for e in examples if "pair_id" in e))
    metrics.update(
        lora=record,
        **counts,
        pairs=len(pair_ids),
        clinician_pairs=len({e["pair_id"] for e in examples if "pair_id" in e and e.get("source") == "clinician"}),
        **logprob_metrics(logprobs),
        **_last_kto_metrics(trainer.state.log_history),
    )

    # save: the adapter, the tokenizer beside it and the ids of the pairs it learned from (for the manifest and
    # the store's consumed clinician pairs)
    finish_stage(
        paths,
        save_with_pair_ids(trainer, pair_ids),
        kind="lora",
        parent=paths.parent,
        fingerprint=fingerprint,
        metrics=metrics,
        is_main=trainer.is_world_process_zero(),
    )


def build_kto_trainer(
    cfg: Config, paths: StagePaths, model, tokenizer, examples: list[dict]
) -> tuple[KTOTrainer, dict, dict]:
    """KTOTrainer over ChiMed-KTO ``examples`` (prompt / completion / label) with the ``cfg.kto.lora`` adapter on
    ``model`` (the reference: the adapter disabled), beta and the desirable / undesirable weights of ``cfg.kto``,
    each answer's loss weighed as ``cfg.align.pair_weights`` says (:func:`training.trainer.weights.weight_kto_trainer`)
    and log-probabilities computed as ``cfg.kto.padding_free`` / ``lm_head_loss`` say; also the adapter's and
    the log-probability path's records."""
    k = cfg.kto
    # KTO's KL estimate pairs each prompt with another example's answer in the same batch, in data order:
    # TRL's sequential sampler keeps that (the builder has already shuffled kto.jsonl with the data seed)
    args = training_arguments(
        cfg,
        k,
        paths,
        args_cls=KTOConfig,
        beta=k.beta,
        desirable_weight=k.desirable_weight,
        undesirable_weight=k.undesirable_weight,
        max_length=k.max_length,
    )
    lora = peft_lora_config(k.lora, model, "kto.lora.target_modules")
    # each answer's weight (align.pair_weights): its pair's, both answers of a pair alike; a rating's 1
    weights = pair_weights(examples, cfg.align.pair_weights)
    rows = [{"prompt": e["prompt"], "completion": e["completion"], "label": e["label"]} for e in examples]
    if weights is not None:
        rows = [{**row, "weight": w} for row, w in zip(rows, weights)]
    dataset = Dataset.from_list(rows)
    trainer = KTOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[*stage_callbacks(cfg, paths), KtoRewardGuard(paths.stage)],
    )
    logprobs = patch_trainer_logprobs(trainer, k)
    if weights is not None:
        weight_kto_trainer(trainer)
    return trainer, lora_record(trainer.model, lora), logprobs


class KtoRewardGuard(TrainerCallback):
    """Stops the stage at a non-finite KL estimate or reward in KTOTrainer's logs: TRL averages its rewards
    with ``nansum`` and its loss with ``nanmean``, so a NaN there would otherwise pass as a number."""

    def __init__(self, stage: str):
        self.guard = NonFiniteGuard(stage)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in KTO_LOGGED:
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise self.guard.error(f"{key} {value} at step {state.global_step}")


def _last_kto_metrics(log_history: list[dict]) -> dict:
    """The last logged KL estimate and rewards (mean implicit reward of the desirable and undesirable answers,
    and their margin)."""
    return last_logged(
        log_history,
        {
            "kl": "train_kl",
            "rewards/chosen": "train_reward_desirable",
            "rewards/rejected": "train_reward_undesirable",
            "rewards/margins": "train_reward_margins",
        },
    )


data_check("kto")(check_kto_data)
