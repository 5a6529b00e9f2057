"""A fresh LoRA adapter is zero (its B matrices start at 0), so the policy equals the reference it is trained
against; the tests that compare the two, or the log-probability paths through the adapter, give it weights."""

from __future__ import annotations

import torch


def randomize_lora(model, seed: int = 0, scale: float = 0.05) -> None:
    """Seeded random weights (normal, ``scale`` standard deviation) for every LoRA B matrix of ``model``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
