"""Looks into a running model pool that only the tests need: its processes and a contestant's logits."""

from __future__ import annotations

import torch

from app.contestants import Contestant
from app.serving.pool import ModelPool


def worker_pids(pool: ModelPool) -> list[int]:
    """Process ids of the loaded models' worker processes."""
    return [root.worker.process.pid for root in pool._loaded_roots()]


def next_token_logits(pool: ModelPool, contestant: Contestant, messages: list[dict]) -> torch.Tensor:
    """The contestant's logits for the token after ``messages``, as the pool serves it (adapters and all)."""
    root, chain = pool._root_for(contestant)
    with root.lock:
        prepared = pool._prepare(root, chain, contestant)
        ids = pool._encode(prepared.tokenizer, messages, limit=None)
        return root.worker.request("logits", prepared.adapters, ids)
