"""Stage 2, cpt: domain continued pre-training (the paper's DCPT) of the base model on ChiMed-CPT.

Next-token prediction on packed blocks of ``cfg.cpt.block_size`` over the whole ChiMed-CPT (medical QA,
plain text, knowledge-graph verbalizations, dialogue, and the general share against forgetting; with
``cpt.medical_repeats`` the medical records enter each epoch that many times). Full
fine-tuning by default (``cpt/`` is a full model); with ``cpt.use_lora`` a LoRA adapter on the base
(``cpt/`` is that adapter: the later stages and the evaluation merge it, the app serves all four
contestants on the base model).
"""

from __future__ import annotations

from peft import get_peft_model

from core.config import Config
from core.files import read_jsonl
from training.modeling import load_stage
from training.recipes import recipe
from training.recipes.base import is_general_text
from training.trainer.arguments import training_dtype
from training.trainer.lifecycle import finish_stage, train_resumably
from training.trainer.lora import describe_lora, lora_record, peft_lora_config
from training.trainer.packing import next_token_trainer
from training.trainer.paths import StagePaths


def training_texts(records: list[dict], medical_repeats: int) -> list[str]:
    """One pass over ChiMed-CPT, then its medical records again ``medical_repeats - 1`` times."""
    medical = [r["text"] for r in records if not is_general_text(r)]
    return [r["text"] for r in records] + medical * (medical_repeats - 1)


@recipe("cpt")
def run_cpt_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """Continue pre-training ``runs/<id>/base`` on ChiMed-CPT into ``runs/<id>/cpt``."""
    # inputs
    records = read_jsonl(cfg.data_dir / "cpt.jsonl")
    texts = training_texts(records, cfg.cpt.medical_repeats)

    # model: the base, whole or with a LoRA adapter
    model, tokenizer = load_stage(paths.run_dir, paths.parent, device="cpu", dtype=training_dtype(cfg))
    lora = None
    if cfg.cpt.use_lora:
        lora_config = peft_lora_config(cfg.cpt.lora, model, "cpt.lora.target_modules")
        model = get_peft_model(model, lora_config)
        lora = lora_record(model, lora_config)
        print(describe_lora(paths.stage, lora), flush=True)

    # trainer
    trainer = next_token_trainer(cfg, cfg.cpt, paths, model, tokenizer, texts)
    metrics = train_resumably(trainer, paths)
    metrics.update(documents=len(records), medical_repeats=cfg.cpt.medical_repeats, lora=lora or False)

    # save: the full weights or the adapter, and the tokenizer with its chat template
    finish_stage(
        paths,
        trainer.save_model,
        kind="lora" if cfg.cpt.use_lora else "full",
        parent=paths.parent,
        fingerprint=fingerprint,
        metrics=metrics,
        is_main=trainer.is_world_process_zero(),
    )
