"""Stage 4, dpo: direct preference optimization (Rafailov et al. 2023) of the SFT model with LoRA.

The policy is the SFT model (cpt weights with the sft adapter merged) plus a fresh LoRA adapter
(``cfg.dpo.lora``, paper: r 8, alpha 16, dropout 0.05); the reference is the same model with that adapter
disabled, i.e. exactly the SFT model. ChiMed-DPO (objective pairs, imported pairs and the clinicians'
pairs merged by the builder) is in TRL's conversational preference format and goes to DPOTrainer as is.
Serving DPO = cpt + sft adapter + dpo adapter.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from training.config import Config
from training.data.files import read_jsonl, write_json_atomic
from training.modeling import load_stage
from training.stages.arguments import training_arguments, training_dtype
from training.stages.callbacks import stage_callbacks
from training.stages.lifecycle import finish_stage, train_resumably
from training.stages.lora import describe_lora, lora_record, peft_lora_config
from training.stages.paths import StagePaths


def run_dpo_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """Train the DPO LoRA adapter on the SFT model into ``runs/<id>/dpo``."""
    # inputs: prompt (conversation so far) / chosen / rejected
    pairs = read_jsonl(cfg.data_dir / "dpo.jsonl")
    dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                                 for p in pairs])

    # model: the SFT model, merged; DPOTrainer adds the LoRA adapter and uses the model without it as reference
    model, tokenizer = load_stage(paths.run_dir, paths.parent, device="cpu", dtype=training_dtype(cfg))
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, cfg.dpo.sft_weight]} if cfg.dpo.sft_weight \
        else {"loss_type": ["sigmoid"]}
    args = training_arguments(cfg, cfg.dpo, paths, args_cls=DPOConfig, beta=cfg.dpo.beta,
                              max_length=cfg.dpo.max_length, **losses)
    lora = peft_lora_config(cfg.dpo.lora, model, "dpo.lora.target_modules")
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=stage_callbacks(cfg, paths),
    )
    record = lora_record(trainer.model, lora)
    print(describe_lora(paths.stage, record), flush=True)
    metrics = train_resumably(trainer, paths)
    metrics.update(lora=record, pairs=len(pairs), clinician_pairs=sum(1 for p in pairs if p.get("source") == "clinician"),
                   **_last_preference_metrics(trainer.state.log_history))

    # save: the adapter, the tokenizer beside it and the ids of the pairs it learned from (for the manifest)
    def save(out):
        trainer.save_model(out)
        if trainer.is_world_process_zero():
            write_json_atomic(Path(out) / "pair_ids.json", [p["pair_id"] for p in pairs])

    finish_stage(paths, save, kind="lora", parent=paths.parent, fingerprint=fingerprint,
                 metrics=metrics, is_main=trainer.is_world_process_zero())


def _last_preference_metrics(log_history: list[dict]) -> dict:
    """The last logged reward accuracy and margin (how often the policy already prefers "chosen")."""
    out = {}
    for record in log_history:
        for key in ("rewards/accuracies", "rewards/margins"):
            if key in record:
                out[key.replace("rewards/", "train_reward_")] = round(float(record[key]), 4)
    return out
