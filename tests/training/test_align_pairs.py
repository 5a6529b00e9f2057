"""The alignment methods trained on ChiMed-DPO's pairs besides plain DPO (issue 22): reference-free ORPO and
SimPO, and DPO's robust and IPO losses. Each trains as the alignment stage of a new run that reuses the
tiny run's base, cpt and sft (`--from align`), and the manifest records the method as trained. That each computes
its own loss, not plain DPO's, is tested in test_align_losses.py."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
from safetensors.torch import load_file

from core.config import load_config
from core.errors import UserError
from core.files import read_jsonl
from training.manifest import read_manifest
from training.modeling import load_stage
from training.pipeline import train_all


@pytest.fixture
def tiny_copy(tiny_run, use_home, tmp_path) -> str:
    """A home holding the tiny data and a copy of the tiny run (its eval cache included); returns its id."""
    source_home, run_id = tiny_run
    home = use_home(tmp_path / "home")
    shutil.copytree(source_home / "data", home / "data")
    shutil.copytree(source_home / "runs" / run_id, home / "runs" / run_id, symlinks=True)
    return run_id


def _logged_losses(cfg, run_id: str, stage: str) -> list[float]:
    log = cfg.runs_dir / run_id / "logs" / stage / "trainer_log.jsonl"
    return [r["loss"] for r in read_jsonl(log) if "loss" in r]


@pytest.mark.parametrize("method", ["orpo", "simpo"])
def test_a_reference_free_method_trains_the_alignment_stage_and_is_evaluated(tiny_copy, method):
    cfg = load_config("tiny", [f"align.method={method}", f"{method}.max_steps=6", "train.logging_steps=1"])

    run_id = train_all(cfg, from_stage="align", resume_run=tiny_copy)

    manifest = read_manifest(cfg, run_id)
    assert list(manifest["stages"]) == ["base", "cpt", "sft", method]  # named after its method, no dpo
    stage = manifest["stages"][method]
    assert (stage["kind"], stage["parent"]) == ("lora", "sft")
    assert stage["method"] == {"name": method, "settings": cfg.to_dict()[method]}
    pairs = read_jsonl(cfg.data_dir / "dpo.jsonl")
    assert manifest["dpo_pair_ids"] == [p["pair_id"] for p in pairs]
    metrics = stage["metrics"]
    assert metrics["steps"] == 6 and metrics["pairs"] == len(pairs)
    assert metrics["train_tokens"] > 0  # both answers of every pair, counted (the Trainer alone counts none)
    assert 0.0 <= metrics["train_reward_accuracies"] <= 1.0

    losses = _logged_losses(cfg, run_id, method)
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert len(set(losses)) > 1  # the loss moves as the adapter trains
    adapter = load_file(cfg.runs_dir / run_id / method / "adapter_model.safetensors")
    assert any(float(w.abs().sum()) > 0 for name, w in adapter.items() if "lora_B" in name)  # B starts at 0

    results = json.loads((cfg.runs_dir / run_id / "eval" / "results.json").read_text(encoding="utf-8"))
    assert {"sft", method} <= set(results["stages"])
    assert 0.0 <= results["stages"][method]["pref_acc"] <= 1.0
    assert results["stages"][method]["exam_n"] > 0
    model, _ = load_stage(cfg.runs_dir / run_id, method, device="cpu")
    assert model is not None


@pytest.mark.parametrize("loss, extra", [("robust", ["dpo.label_smoothing=0.1"]), ("ipo", [])])
def test_a_dpo_loss_variant_trains_and_is_recorded_as_the_method_settings(tiny_copy, loss, extra):
    # 4 steps: the reference is computed in them rather than for all pairs first (what that changes is the speed,
    # tests/training/test_training_speed.py)
    cfg = load_config(
        "tiny",
        [
            f"dpo.loss_type={loss}",
            *extra,
            "dpo.max_steps=4",
            "dpo.precompute_reference=false",
            "train.logging_steps=2",
            "train.evaluate_after=false",
        ],
    )

    run_id = train_all(cfg, from_stage="align", resume_run=tiny_copy)

    stage = read_manifest(cfg, run_id)["stages"]["dpo"]
    assert stage["method"]["name"] == "dpo" and stage["method"]["settings"]["loss_type"] == loss
    assert stage["method"]["settings"]["label_smoothing"] == (0.1 if loss == "robust" else 0.0)
    assert stage["metrics"]["steps"] == 4
    losses = _logged_losses(cfg, run_id, "dpo")
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_the_sft_term_is_not_a_dpo_loss_type():
    """TRL's "sft" loss is DPO's sft_weight here: naming it as the loss is a one-line error that says so."""
    with pytest.raises(UserError, match=r"^config: dpo.loss_type='sft': .*\(the SFT term is dpo.sft_weight\)$") as err:
        load_config("tiny", ["dpo.loss_type=sft"])
    assert "\n" not in str(err.value)


def test_stages_naming_dpo_in_a_run_aligned_by_another_method_is_a_one_line_error(chimed_home):
    cfg = load_config("tiny", ["align.method=simpo"])
    with pytest.raises(
        UserError,
        match=r"^unknown stage 'dpo' in --stages: this config aligns with "
        r"align.method=simpo \(set align.method=dpo to train it\); choose from "
        r"base, cpt, sft, simpo, align$",
    ) as err:
        train_all(cfg, stages=["sft", "dpo"], dry_run=True)
    assert "\n" not in str(err.value)


def test_no_pairs_to_learn_from_is_a_one_line_error(chimed_home):
    from training.trainer.pairs import read_pairs

    cfg = load_config("tiny")
    cfg.data_dir.mkdir(parents=True)
    (cfg.data_dir / "dpo.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"dpo.jsonl holds no preference pairs: rebuild the data") as err:
        read_pairs(cfg)
    assert "\n" not in str(err.value)


def test_a_stage_whose_loss_is_exactly_zero_is_not_recorded_complete_and_says_why(tiny_copy, monkeypatch, capsys):
    """A loss of exactly 0.0 all along is a broken loss, not a perfect model (docs/training.md "Non-finite training")."""
    from trl import DPOTrainer

    from chimed import main as cli_main

    compute_loss = DPOTrainer.compute_loss

    def zero_loss(self, *args, **kwargs):  # a loss that still has its graph (the step runs) but is 0.0
        return compute_loss(self, *args, **kwargs) * 0.0

    monkeypatch.setattr(DPOTrainer, "compute_loss", zero_loss)
    code = cli_main(
        [
            "train-all",
            "--profile",
            "tiny",
            "--from",
            "align",
            "--resume-run",
            tiny_copy,
            "--run-id",
            "zero",
            "dpo.max_steps=2",
            "train.logging_steps=1",
            "train.evaluate_after=false",
        ]
    )

    stderr = capsys.readouterr().err
    errors = re.findall(r"error: .*", stderr)
    assert code == 2 and "Traceback" not in stderr
    assert errors == [
        "error: dpo: training loss 0.0 cannot be right (NaN, infinite or exactly 0.0); the stage is not "
        "marked complete: check the model with the pre-flight and the data"
    ]
    cfg = load_config("tiny")
    assert _logged_losses(cfg, "zero", "dpo") == [0.0, 0.0]  # it trained, and every step's loss was 0.0
    assert "dpo" not in read_manifest(cfg, "zero")["stages"]
    assert not (cfg.runs_dir / "zero" / "dpo").exists()
