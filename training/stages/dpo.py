"""Stage 4, dpo: direct preference optimization (Rafailov et al. 2023) of the SFT model with LoRA.

The policy is the SFT model (cpt weights with the sft adapter merged) plus a fresh LoRA adapter
(``cfg.dpo.lora``, paper: r 8, alpha 16, dropout 0.05); the reference is the same model with that adapter
disabled, i.e. exactly the SFT model. ChiMed-DPO (objective pairs, imported pairs and the clinicians'
pairs merged by the builder) is in TRL's conversational preference format and goes to DPOTrainer as is.
Serving DPO = cpt + sft adapter + dpo adapter.
"""

from __future__ import annotations

import time
from pathlib import Path

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from training.config import Config
from training.data.files import read_jsonl, write_json_atomic
from training.modeling import load_stage
from training.stages.arguments import training_arguments, training_dtype
from training.stages.callbacks import stage_callbacks
from training.stages.lifecycle import finish_stage, train_resumably
from training.stages.logprobs import logprob_metrics, patch_trainer_logprobs
from training.stages.lora import describe_lora, lora_record, peft_lora_config
from training.stages.paths import StagePaths


def run_dpo_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """Train the DPO LoRA adapter on the SFT model into ``runs/<id>/dpo``."""
    # inputs: prompt (conversation so far) / chosen / rejected
    pairs = read_jsonl(cfg.data_dir / "dpo.jsonl")

    # model: the SFT model, merged; DPOTrainer adds the LoRA adapter and uses the model without it as reference
    model, tokenizer = load_stage(paths.run_dir, paths.parent, device="cpu", dtype=training_dtype(cfg))
    trainer, record, logprobs = build_dpo_trainer(cfg, paths, model, tokenizer, pairs)
    print(describe_lora(paths.stage, record), flush=True)
    metrics = train_resumably(trainer, paths)
    metrics.update(lora=record, pairs=len(pairs),
                   clinician_pairs=sum(1 for p in pairs if p.get("source") == "clinician"),
                   **logprob_metrics(logprobs), **_last_preference_metrics(trainer.state.log_history))

    # save: the adapter, the tokenizer beside it and the ids of the pairs it learned from (for the manifest)
    def save(out):
        trainer.save_model(out)
        if trainer.is_world_process_zero():
            write_json_atomic(Path(out) / "pair_ids.json", [p["pair_id"] for p in pairs])

    finish_stage(paths, save, kind="lora", parent=paths.parent, fingerprint=fingerprint,
                 metrics=metrics, is_main=trainer.is_world_process_zero())


def build_dpo_trainer(cfg: Config, paths: StagePaths, model, tokenizer,
                      pairs: list[dict]) -> tuple[DPOTrainer, dict, dict]:
    """DPOTrainer over the ChiMed-DPO ``pairs`` (prompt / chosen / rejected) with the ``cfg.dpo.lora`` adapter on
    ``model`` (the reference: the adapter disabled), the sigmoid loss plus ``cfg.dpo.sft_weight`` x the SFT loss
    on the chosen answer, log-probabilities computed as ``cfg.dpo.padding_free`` / ``lm_head_loss`` say and the
    reference precomputed as ``cfg.dpo.precompute_reference`` says; also the adapter's and the log-probability
    path's records."""
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, cfg.dpo.sft_weight]} if cfg.dpo.sft_weight \
        else {"loss_type": ["sigmoid"]}
    args = training_arguments(cfg, cfg.dpo, paths, args_cls=DPOConfig, beta=cfg.dpo.beta,
                              max_length=cfg.dpo.max_length, **losses)
    lora = peft_lora_config(cfg.dpo.lora, model, "dpo.lora.target_modules")
    dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                                 for p in pairs])
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=stage_callbacks(cfg, paths),
    )
    logprobs = patch_trainer_logprobs(trainer, cfg.dpo)
    if cfg.dpo.precompute_reference:
        logprobs.update(precompute_reference(trainer))
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


def _last_preference_metrics(log_history: list[dict]) -> dict:
    """The last logged reward accuracy and margin (how often the policy already prefers "chosen")."""
    out = {}
    for record in log_history:
        for key in ("rewards/accuracies", "rewards/margins"):
            if key in record:
                out[key.replace("rewards/", "train_reward_")] = round(float(record[key]), 4)
    return out
