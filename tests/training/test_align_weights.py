"""Pair weights reach the loss (``align.pair_weights: agreement``): on one batch of pairs, the loss of dpo and simpo
with weights is the weighted mean of each pair's unweighted loss; orpo's odds-ratio term moves with them; and with
``none`` (or every weight 1) the losses are the ones the stages computed before."""

from __future__ import annotations

import shutil

import pytest
import torch

from core.config import load_config
from core.files import read_jsonl, write_jsonl_atomic
from tests.lora_weights import randomize_lora
from tests.training.test_align_losses import COMMON, _stop_before_training, _TrainerBuilt
from training.recipes import dpo as dpo_recipe
from training.recipes import runner_for
from training.trainer import lifecycle
from training.trainer.paths import stage_paths

PAIRS = 4
WEIGHTS = [1.0, 0.5, 0.25, 0.0]
METHODS = {"dpo": ["align.method=dpo"], "simpo": ["align.method=simpo"], "orpo": ["align.method=orpo"]}


@pytest.fixture(scope="module")
def trainers(tiny_run, tmp_path_factory):
    """method -> {"none": trainer, "agreement": trainer}, over the first pairs of ChiMed-DPO given WEIGHTS."""
    source_home, run_id = tiny_run
    home = tmp_path_factory.mktemp("align_weights")
    shutil.copytree(source_home / "data", home / "data")
    shutil.copytree(source_home / "runs" / run_id, home / "runs" / run_id, symlinks=True)
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHIMED_HOME", str(home))
        mp.delenv("CHIMED_DATABASE_URL", raising=False)
        mp.setattr(lifecycle, "train_resumably", _stop_before_training)
        mp.setattr(dpo_recipe, "train_resumably", _stop_before_training)
        cfg = load_config("tiny")
        pairs = read_jsonl(cfg.data_dir / "dpo.jsonl")[:PAIRS]
        write_jsonl_atomic(cfg.data_dir / "dpo.jsonl", [{**p, "weight": w} for p, w in zip(pairs, WEIGHTS)])
        for method, overrides in METHODS.items():
            out[method] = {}
            for setting in ("none", "agreement"):
                cfg = load_config("tiny", [*overrides, *COMMON, f"align.pair_weights={setting}"])
                with pytest.raises(_TrainerBuilt) as built:
                    runner_for(method)(cfg, stage_paths(cfg.runs_dir / run_id, method), "pair-weights")
                trainer = built.value.trainer
                trainer.model.eval()
                randomize_lora(trainer.model, seed=33, scale=0.5)
                out[method][setting] = trainer
    return out


def _loss(trainer, indices, weights=None) -> float:
    examples = [dict(trainer.train_dataset[i]) for i in indices]
    if weights is not None:
        for example, w in zip(examples, weights):
            example["weight"] = w
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, trainer.data_collator(examples)))


@pytest.mark.parametrize("method", ["dpo", "simpo"])
def test_a_weighted_batch_is_the_weighted_mean_of_the_pairs_losses(trainers, method):
    weighted = trainers[method]["agreement"]
    single = [_loss(weighted, [i], [1.0]) for i in range(PAIRS)]
    expected = sum(w * loss for w, loss in zip(WEIGHTS, single)) / PAIRS
    assert _loss(weighted, range(PAIRS)) == pytest.approx(expected, rel=1e-4)
    # and the ratio of a weighted to an unweighted batch is what the weights say
    ratio = _loss(weighted, range(PAIRS)) / _loss(weighted, range(PAIRS), [1.0] * PAIRS)
    assert ratio == pytest.approx(expected / (sum(single) / PAIRS), rel=1e-4)
    assert ratio < 1.0


def test_orpo_weighs_its_odds_ratio_term(trainers):
    weighted = trainers["orpo"]["agreement"]
    assert _loss(weighted, range(PAIRS)) != pytest.approx(_loss(weighted, range(PAIRS), [1.0] * PAIRS), rel=1e-6)


@pytest.mark.parametrize("method", list(METHODS))
def test_none_leaves_the_loss_as_it_was(trainers, method):
    plain, weighted = trainers[method]["none"], trainers[method]["agreement"]
    assert "weight" not in plain.train_dataset.column_names
    assert "weight" in weighted.train_dataset.column_names
    assert type(plain).__name__ == {"dpo": "DPOTrainer", "simpo": "CPOTrainer", "orpo": "ORPOTrainer"}[method]
    assert "_compute_loss" not in vars(plain)  # nothing patched onto it
    # every weight 1: the weighted trainer computes the unweighted trainer's loss
    assert _loss(weighted, range(PAIRS), [1.0] * PAIRS) == pytest.approx(_loss(plain, range(PAIRS)), rel=1e-5)
