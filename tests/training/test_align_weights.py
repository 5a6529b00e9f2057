"""Pair weights reach the loss (``align.pair_weights: agreement``): on one batch of pairs, the loss of dpo and simpo
with weights is the weighted mean of each pair's unweighted loss; kto's (one answer per example, its KL estimate
shared by the batch) is linear in its answers' weights; orpo's odds-ratio term moves with them; and with ``none``
(or every weight 1) the losses are the ones the stages computed before."""

from __future__ import annotations

import shutil

import pytest
import torch

from core.config import load_config
from core.errors import UserError
from core.files import read_jsonl, write_jsonl_atomic
from tests.lora_weights import randomize_lora
from tests.training.test_align_losses import COMMON, _stop_before_training, _TrainerBuilt
from training.recipes import dpo as dpo_recipe
from training.recipes import kto as kto_recipe
from training.recipes import runner_for
from training.recipes.dpo import check_dpo_data
from training.trainer import lifecycle
from training.trainer.paths import stage_paths

PAIRS = 4
WEIGHTS = [1.0, 0.5, 0.25, 0.0]
# the LoRA weights' scale: kto's per-answer losses are sigmoids of the log-ratio, saturated (0 or 1) at 0.5
SCALE = {"kto": 0.02}
METHODS = {
    "dpo": ["align.method=dpo"],
    "simpo": ["align.method=simpo"],
    "orpo": ["align.method=orpo"],
    "kto": ["align.method=kto"],
}


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
        mp.setattr(kto_recipe, "train_resumably", _stop_before_training)
        cfg = load_config("tiny")
        pairs = read_jsonl(cfg.data_dir / "dpo.jsonl")[:PAIRS]
        write_jsonl_atomic(cfg.data_dir / "dpo.jsonl", [{**p, "weight": w} for p, w in zip(pairs, WEIGHTS)])
        # kto: two desirable and two undesirable answers, alternating, given WEIGHTS in that order
        answers = read_jsonl(cfg.data_dir / "kto.jsonl")
        by_label = {label: [a for a in answers if a["label"] is label][: PAIRS // 2] for label in (True, False)}
        mixed = [a for two in zip(by_label[True], by_label[False]) for a in two]
        write_jsonl_atomic(cfg.data_dir / "kto.jsonl", [{**a, "weight": w} for a, w in zip(mixed, WEIGHTS)])
        for method, overrides in METHODS.items():
            out[method] = {}
            for setting in ("none", "agreement"):
                cfg = load_config("tiny", [*overrides, *COMMON, f"align.pair_weights={setting}"])
                with pytest.raises(_TrainerBuilt) as built:
                    runner_for(method)(cfg, stage_paths(cfg.runs_dir / run_id, method), "pair-weights")
                trainer = built.value.trainer
                trainer.model.eval()
                randomize_lora(trainer.model, seed=33, scale=SCALE.get(method, 0.5))
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


def test_a_weighted_kto_batch_is_linear_in_its_answers_weights(trainers):
    weighted = trainers["kto"]["agreement"]
    # the same batch with one answer weighing 1 and the others 0: that answer's loss over the batch size (the KL
    # estimate, shared by the batch, is the same in every call)
    alone = [_loss(weighted, range(PAIRS), [float(i == j) for j in range(PAIRS)]) for i in range(PAIRS)]
    assert all(part > 0 for part in alone)
    expected = sum(w * part for w, part in zip(WEIGHTS, alone))
    assert _loss(weighted, range(PAIRS)) == pytest.approx(expected, rel=1e-4)
    unweighted = _loss(weighted, range(PAIRS), [1.0] * PAIRS)
    assert unweighted == pytest.approx(sum(alone), rel=1e-4)
    # the ratio of the weighted to the unweighted batch is what the weights say; halving every weight halves it
    assert _loss(weighted, range(PAIRS)) / unweighted == pytest.approx(expected / sum(alone), rel=1e-4)
    assert _loss(weighted, range(PAIRS), [0.5] * PAIRS) == pytest.approx(unweighted / 2, rel=1e-5)
    plain = trainers["kto"]["none"]  # the configured factors are restored after each batch
    assert (weighted.desirable_weight, weighted.undesirable_weight) == (
        plain.desirable_weight,
        plain.undesirable_weight,
    )
    assert isinstance(weighted.desirable_weight, float)


def test_orpo_weighs_its_odds_ratio_term(trainers):
    weighted = trainers["orpo"]["agreement"]
    assert _loss(weighted, range(PAIRS)) != pytest.approx(_loss(weighted, range(PAIRS), [1.0] * PAIRS), rel=1e-6)


@pytest.mark.parametrize("method", list(METHODS))
def test_none_leaves_the_loss_as_it_was(trainers, method):
    plain, weighted = trainers[method]["none"], trainers[method]["agreement"]
    assert "weight" not in plain.train_dataset.column_names
    assert "weight" in weighted.train_dataset.column_names
    assert (
        type(plain).__name__
        == {
            "dpo": "DPOTrainer",
            "simpo": "CPOTrainer",
            "orpo": "ORPOTrainer",
            "kto": "KTOTrainer",
        }[method]
    )
    assert "_compute_loss" not in vars(plain)  # nothing patched onto it
    # every weight 1: the weighted trainer computes the unweighted trainer's loss
    assert _loss(weighted, range(PAIRS), [1.0] * PAIRS) == pytest.approx(_loss(plain, range(PAIRS)), rel=1e-5)


def test_dpo_refuses_to_weigh_its_sft_term_before_training():
    """TRL's SFT term (dpo.sft_weight > 0, the demo profile's) is one batch mean: weighting it fails inside TRL's
    loss, so the data check (train-all runs it before any stage trains) refuses the combination in one line."""
    cfg = load_config("tiny", ["align.pair_weights=agreement", "dpo.sft_weight=2.0"])
    with pytest.raises(UserError) as err:
        check_dpo_data(cfg)
    assert "dpo.sft_weight=0" in str(err.value) and "\n" not in str(err.value)
