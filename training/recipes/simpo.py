"""Alignment stage simpo: simple preference optimization (Meng et al. 2024) of the SFT model with LoRA.

SimPO needs no reference model: its implicit reward is ``cfg.simpo.beta`` x the length-averaged
log-probability of an answer, and its loss is -log sigmoid(reward(chosen) - reward(rejected) - gamma), with
``cfg.simpo.gamma`` the target reward margin. ``cfg.simpo.sft_weight`` adds that many times the SFT loss on
the chosen conversation, prompt included as TRL computes it (CPO-SimPO; 0: the paper's plain SimPO, which on
the demo also lowers the chosen answers' likelihood). It trains on the same ChiMed-DPO pairs as DPO,
with TRL's ``trl.experimental.cpo.CPOTrainer`` and its ``loss_type="simpo"``. The policy is the SFT model
(cpt weights with the sft adapter merged) plus a fresh LoRA adapter (``cfg.simpo.lora``); serving SimPO =
cpt + sft adapter + simpo adapter.

The trainer scores the logits of its model's plain forward (no fused LM head), so the sft/dpo
log-probability paths of ``training/trainer/logprobs.py`` do not apply: TRL's own path computes them.
"""

from __future__ import annotations

from trl.experimental.cpo import CPOConfig, CPOTrainer

from core.config import Config
from training.recipes import data_check, recipe
from training.trainer.pairs import check_pairs, train_reference_free
from training.trainer.paths import StagePaths


@recipe("simpo")
def run_simpo_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """Train the SimPO LoRA adapter on the SFT model into ``runs/<id>/simpo``."""
    train_reference_free(
        cfg,
        paths,
        fingerprint,
        cfg.simpo,
        CPOTrainer,
        CPOConfig,
        loss_type="simpo",
        beta=cfg.simpo.beta,
        simpo_gamma=cfg.simpo.gamma,
        cpo_alpha=cfg.simpo.sft_weight,
    )


data_check("simpo")(check_pairs)
