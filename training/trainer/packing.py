"""Next-token prediction on packed blocks: the data and the Trainer of base pretraining and CPT.

Tokenizing and packing a corpus is the same work on every run of the same texts with the same tokenizer
and block size, so the blocks are cached by a hash of exactly those (``$CHIMED_HOME/cache/blocks/<hash>/``,
an Arrow dataset read memory-mapped); the newest ``BLOCK_CACHE_KEEP`` entries are kept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from core.config import Config, CptConfig, ModelConfig
from core.errors import UserError
from training.trainer.arguments import process_state, training_arguments
from training.trainer.callbacks import stage_callbacks
from training.trainer.paths import StagePaths

BLOCK_CACHE_KEEP = 4  # cached corpora kept (the newest used); each is about 4 bytes per token


def pack_into_blocks(texts: list[str], tokenizer, block_size: int):
    """Tokenize documents (each closed by the eos token), concatenate and cut into ``block_size`` blocks.

    Next-token prediction on packed blocks, as in the paper's DCPT; the remainder shorter than a block
    is dropped. Returns a ``datasets.Dataset`` with ``input_ids``.
    """
    from datasets import Dataset

    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for start in range(0, len(texts), 1000):
        batch = tokenizer(texts[start : start + 1000], add_special_tokens=False)["input_ids"]
        for ids in batch:
            stream.extend(ids)
            stream.append(eos)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise UserError(
            f"the corpus has {len(stream)} tokens, fewer than one block of {block_size}: "
            "add text or lower the stage's block_size"
        )
    blocks = [stream[i * block_size : (i + 1) * block_size] for i in range(n_blocks)]
    return Dataset.from_dict({"input_ids": blocks})


def blocks_key(texts: list[str], tokenizer, block_size: int) -> str:
    """What the packed blocks depend on: the texts in order, the tokenizer (its whole definition) and the
    block size."""
    digest = hashlib.sha256(f"blocks v1|{block_size}|{tokenizer.eos_token_id}|".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:  # a slow tokenizer: its class and vocabulary
        digest.update(type(tokenizer).__name__.encode())
        digest.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    for text in texts:
        digest.update(len(text).to_bytes(8, "little"))
        digest.update(text.encode())
    return digest.hexdigest()


def cached_blocks(texts: list[str], tokenizer, block_size: int, cache_dir: Path):
    """:func:`pack_into_blocks`, from ``cache_dir/<key>/`` when the same texts were packed the same way
    before (written once by the main process; the others read it)."""
    from datasets import load_from_disk

    key = blocks_key(texts, tokenizer, block_size)
    entry = Path(cache_dir) / key
    with process_state().main_process_first():
        if not (entry / "dataset_info.json").is_file():
            blocks = pack_into_blocks(texts, tokenizer, block_size)
            partial = entry.with_name(f".{key}.{os.getpid()}")
            blocks.save_to_disk(str(partial))
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(partial, entry)
            _prune(Path(cache_dir))
        os.utime(entry)  # recently used: kept by the pruning
        return load_from_disk(str(entry))


def _prune(cache_dir: Path) -> None:
    entries = sorted(
        (p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[BLOCK_CACHE_KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


class BlockCollator:
    """A batch of packed blocks: their ids stacked, and the same ids as labels (the model shifts them), the pad
    id masked out of the loss as transformers' language-modeling collator does. Blocks are full, so there is
    nothing to pad and no attention mask to build: causal attention over the whole block."""

    def __init__(self, pad_token_id: int | None):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        input_ids = torch.tensor([example["input_ids"] for example in examples], dtype=torch.long)
        labels = input_ids.clone()
        if self.pad_token_id is not None:
            labels[labels == self.pad_token_id] = -100
        return {"input_ids": input_ids, "labels": labels}


def next_token_trainer(
    cfg: Config, section: ModelConfig | CptConfig, paths: StagePaths, model, tokenizer, texts: list[str]
):
    """The Trainer of base pretraining and CPT: next-token prediction on packed blocks of
    ``section.block_size`` tokens, with the section's schedule and the stage's callbacks."""
    from transformers import Trainer

    return Trainer(
        model=model,
        args=training_arguments(cfg, section, paths),
        train_dataset=cached_blocks(texts, tokenizer, section.block_size, cfg.blocks_cache_dir),
        data_collator=BlockCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=stage_callbacks(cfg, paths),
    )
