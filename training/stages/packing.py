"""Next-token prediction on packed blocks: the data and the Trainer of base pretraining and CPT."""

from __future__ import annotations

from training.config import Config, CptConfig, ModelConfig
from training.errors import UserError
from training.stages.arguments import training_arguments
from training.stages.callbacks import stage_callbacks
from training.stages.paths import StagePaths


def pack_into_blocks(texts: list[str], tokenizer, block_size: int):
    """Tokenize documents (each closed by the eos token), concatenate and cut into ``block_size`` blocks.

    Next-token prediction on packed blocks, as in the paper's DCPT; the remainder shorter than a block
    is dropped. Returns a ``datasets.Dataset`` with ``input_ids``.
    """
    from datasets import Dataset

    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for start in range(0, len(texts), 1000):
        batch = tokenizer(texts[start:start + 1000], add_special_tokens=False)["input_ids"]
        for ids in batch:
            stream.extend(ids)
            stream.append(eos)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise UserError(f"the corpus has {len(stream)} tokens, fewer than one block of {block_size}: "
                        "add text or lower the stage's block_size")
    blocks = [stream[i * block_size:(i + 1) * block_size] for i in range(n_blocks)]
    return Dataset.from_dict({"input_ids": blocks})


def causal_lm_collator(tokenizer):
    """Labels = input ids (the model shifts them); blocks are full, so nothing is padded."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer, mlm=False)


def next_token_trainer(cfg: Config, section: ModelConfig | CptConfig, paths: StagePaths, model, tokenizer,
                       texts: list[str]):
    """The Trainer of base pretraining and CPT: next-token prediction on packed blocks of
    ``section.block_size`` tokens, with the section's schedule and the stage's callbacks."""
    from transformers import Trainer

    return Trainer(
        model=model,
        args=training_arguments(cfg, section, paths),
        train_dataset=pack_into_blocks(texts, tokenizer, section.block_size),
        data_collator=causal_lm_collator(tokenizer),
        processing_class=tokenizer,
        callbacks=stage_callbacks(cfg, paths),
    )
