"""Stage 4, dpo: direct preference optimization (Rafailov et al. 2023) of the SFT model with LoRA.

The policy is the SFT model (cpt weights with the sft adapter merged) plus a fresh LoRA adapter
(``cfg.dpo.lora``, paper: r 8, alpha 16, dropout 0.05); the reference is the same model with that adapter
disabled, i.e. exactly the SFT model. ChiMed-DPO (objective pairs, imported pairs and the clinicians'
pairs merged by the builder) is in TRL's conversational preference format and goes to DPOTrainer as is.
Serving DPO = cpt + sft adapter + dpo adapter.
"""

from __future__ import annotations

import time

from trl import DPOConfig, DPOTrainer

from core.config import Config
from core.errors import UserError
from training.modeling import load_stage
from training.recipes import data_check, recipe
from training.trainer.arguments import training_arguments, training_dtype
from training.trainer.callbacks import stage_callbacks
from training.trainer.lifecycle import finish_stage, train_resumably
from training.trainer.logprobs import logprob_metrics, patch_trainer_logprobs
from training.trainer.lora import describe_lora, lora_record, peft_lora_config
from training.trainer.pairs import pair_dataset, pair_metrics, read_pairs, save_with_pair_ids
from training.trainer.paths import StagePaths
from training.trainer.weights import pair_weights, weight_dpo_trainer


@recipe("dpo")
def run_dpo_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """Train the DPO LoRA adapter on the SFT model into ``runs/<id>/dpo``."""
    # inputs: prompt (conversation so far) / chosen / rejected
    pairs = check_dpo_data(cfg)

    # model: the SFT model, merged; DPOTrainer adds the LoRA adapter and uses the model without it as reference
    model, tokenizer = load_stage(paths.run_dir, paths.parent, device="cpu", dtype=training_dtype(cfg))
    trainer, record, logprobs = build_dpo_trainer(cfg, paths, model, tokenizer, pairs)
    print(describe_lora(paths.stage, record), flush=True)
    metrics = train_resumably(trainer, paths)
    metrics.update(lora=record, **pair_metrics(pairs, trainer.state.log_history), **logprob_metrics(logprobs))

    # save: the adapter, the tokenizer beside it and the ids of the pairs it learned from (for the manifest)
    finish_stage(
        paths,
        save_with_pair_ids(trainer, [p["pair_id"] for p in pairs]),
        kind="lora",
        parent=paths.parent,
        fingerprint=fingerprint,
        metrics=metrics,
        is_main=trainer.is_world_process_zero(),
    )


@data_check("dpo")
def check_dpo_data(cfg: Config) -> list[dict]:
    """ChiMed-DPO's pairs, and the settings TRL would refuse only once the model is loaded, as one line (also run
    by train-all before any stage of the run trains: the stage registry's ``check``)."""
    if cfg.dpo.loss_type == "exo_pair" and not cfg.dpo.label_smoothing:
        raise UserError("config: dpo.loss_type=exo_pair needs dpo.label_smoothing > 0 (the EXO paper: 1e-3)")
    if cfg.align.pair_weights != "none" and cfg.dpo.sft_weight:
        # TRL 1.16's SFT term is one batch mean, broadcast to the pairs: its weighting fails inside TRL's loss
        raise UserError(
            f"config: align.pair_weights={cfg.align.pair_weights} cannot weigh dpo's SFT term: set dpo.sft_weight=0 "
            f"(now {cfg.dpo.sft_weight}) or align.pair_weights=none"
        )
    return read_pairs(cfg)


def build_dpo_trainer(
    cfg: Config, paths: StagePaths, model, tokenizer, pairs: list[dict]
) -> tuple[DPOTrainer, dict, dict]:
    """DPOTrainer over the ChiMed-DPO ``pairs`` (prompt / chosen / rejected) with the ``cfg.dpo.lora`` adapter on
    ``model`` (the reference: the adapter disabled), the ``cfg.dpo.loss_type`` loss (sigmoid: the paper's) plus
    ``cfg.dpo.sft_weight`` x the SFT loss on the chosen answer, log-probabilities computed as ``cfg.dpo.padding_free`` / ``lm_head_loss`` say and the
    reference precomputed as ``cfg.dpo.precompute_reference`` says, each pair's loss weighed as ``cfg.align.pair_weights``
    says; also the adapter's and the log-probability
    path's records."""
    loss = cfg.dpo.loss_type
    losses = (
        {"loss_type": [loss, "sft"], "loss_weights": [1.0, cfg.dpo.sft_weight]}
        if cfg.dpo.sft_weight
        else {"loss_type": [loss]}
    )
    args = training_arguments(
        cfg,
        cfg.dpo,
        paths,
        args_cls=DPOConfig,
        beta=cfg.dpo.beta,
        max_length=cfg.dpo.max_length,
        label_smoothing=cfg.dpo.label_smoothing,
        **losses,
    )
    lora = peft_lora_config(cfg.dpo.lora, model, "dpo.lora.target_modules")
    weights = pair_weights(pairs, cfg.align.pair_weights)
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=pair_dataset(pairs, weights),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=stage_callbacks(cfg, paths),
    )
    logprobs = patch_trainer_logprobs(trainer, cfg.dpo)
    if cfg.dpo.precompute_reference:
        logprobs.update(precompute_reference(trainer))
    if weights is not None:  # after the reference's precomputation, whose batches carry no weights
        weight_dpo_trainer(trainer)
    return trainer, lora_record(trainer.model, lora), logprobs


def precompute_reference(trainer: DPOTrainer) -> dict:
    """The reference log-probabilities of every training pair, computed once now (TRL's
    ``precompute_ref_log_probs``, through the log-probability path just patched in, which TRL's own
    precomputation in its constructor would not use) and read from the batches by the loss after that.

    The reference is the model with the adapter disabled and DPO trains without dropout (DPOConfig's
    ``disable_dropout``), so these are the numbers the loop would compute at every visit of a pair. Skipped
    when several processes train (each would need the cached columns on its own disk). Returns
    ``{"reference_precomputed": bool, "reference_precompute_s": seconds}`` for the stage's metrics."""
    from trl.trainer.utils import hash_module

    if trainer.args.world_size > 1:
        return {"reference_precomputed": False}
    started = time.time()
    trainer.args.precompute_ref_log_probs = trainer.precompute_ref_logps = True
    trainer._precompute_model_hash = hash_module(trainer.model)
    batch_size = trainer.args.precompute_ref_batch_size or 4 * trainer.args.per_device_train_batch_size
    trainer.train_dataset = trainer._precompute_ref_logps(trainer.train_dataset, "train", batch_size)
    return {"reference_precomputed": True, "reference_precompute_s": round(time.time() - started, 2)}
