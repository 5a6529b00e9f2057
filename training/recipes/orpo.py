"""Alignment stage orpo: odds-ratio preference optimization (Hong et al. 2024) of the SFT model with LoRA.

ORPO needs no reference model: its loss is the SFT loss on the chosen answer minus ``cfg.orpo.beta`` (the
paper's lambda) x log sigmoid of the log odds ratio of chosen over rejected, the odds taken on the
length-averaged log-probability of each answer. It trains on the same ChiMed-DPO pairs as DPO, with
TRL's ``trl.experimental.orpo.ORPOTrainer``; TRL's SFT term covers the whole chosen conversation, prompt
included. The policy is the SFT model (cpt weights with the sft adapter merged) plus a fresh LoRA adapter
(``cfg.orpo.lora``); serving ORPO = cpt + sft adapter + orpo adapter.

The trainer scores the logits of its model's plain forward (no fused LM head), so the sft/dpo
log-probability paths of ``training/trainer/logprobs.py`` do not apply: TRL's own path computes them.
"""

from __future__ import annotations

from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from core.config import Config
from training.recipes import data_check, recipe
from training.trainer.pairs import check_pairs, train_reference_free
from training.trainer.paths import StagePaths


@recipe("orpo")
def run_orpo_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """Train the ORPO LoRA adapter on the SFT model into ``runs/<id>/orpo``."""
    train_reference_free(cfg, paths, fingerprint, cfg.orpo, ORPOTrainer, ORPOConfig, beta=cfg.orpo.beta)


data_check("orpo")(check_pairs)
