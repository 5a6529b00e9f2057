"""What a stage's weights depend on, as one hash: its fingerprint.

A finished stage records the fingerprint it was trained with in ``stage.json``; train-all skips a stage
whose recorded fingerprint still matches, and the evaluation caches a stage's measurements under it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from core.config import Config
from core.files import sha256_json
from core.registry import get_stage
from training.trainer.paths import read_stage_info


def stage_fingerprint(
    cfg: Config, stage: str, hashes: dict, parent_fingerprint: str | None, reads: dict[str, str | None] | None = None
) -> str:
    """Hash of what a stage's weights depend on: its config section, seed/precision, data, parent, and the
    fingerprints of the other stages of the run it reads (``reads``: grpo, the rm stage's)."""
    payload = {
        "stage": stage,
        "config": cfg.to_dict()[get_stage(stage).section],
        "seed": cfg.train.seed,
        "bf16": cfg.train.bf16,
        "data": {split: hashes[split] for split in get_stage(stage).data},
        "parent": parent_fingerprint,
    }
    if reads:  # absent otherwise, so the stages that read no other keep their fingerprints
        payload["reads"] = reads
    return sha256_json(payload)


def recorded_fingerprint(run_path: Path, stage: str) -> str | None:
    """The fingerprint a finished stage was trained with (a linked paper base: its target path)."""
    path = run_path / stage
    if path.is_symlink() and stage == "base":
        return hashlib.sha256(f"link:{os.readlink(path)}".encode()).hexdigest()
    info = read_stage_info(path)
    return info["fingerprint"] if info else None
