"""The reward-model stage (rm) and the evaluation's reward judge, on a copy of the tiny run.

The rm stage is trained once for the module (``--from rm --resume-run`` with ``align.reward_model=true``) on a
few of ChiMed-DPO's pairs, seen many times: enough for the tiny model to learn them.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

from core.config import load_config
from core.errors import UserError
from core.files import read_jsonl, write_jsonl_atomic
from training.manifest import read_manifest
from training.pipeline import train_all

TRAIN_PAIRS = 32  # the pairs the reward model learns, 8 a step over 60 steps: each seen 15 times
CLINICIAN_PAIRS = 10
RM = ["align.reward_model=true", "train.evaluate_after=false", "rm.max_steps=60"]


@pytest.fixture(scope="module")
def rm_run(tiny_run, tmp_path_factory):
    """(home, source run id, rm run id): the tiny run copied, and a run that trained only its rm stage on it."""
    source_home, source_id = tiny_run
    home = tmp_path_factory.mktemp("rm_home")
    shutil.copytree(source_home / "data", home / "data")
    shutil.copytree(source_home / "runs" / source_id, home / "runs" / source_id)
    old = os.environ.get("CHIMED_HOME")
    os.environ["CHIMED_HOME"] = str(home)
    try:
        cfg = load_config("tiny", RM)
        dpo = cfg.data_dir / "dpo.jsonl"
        write_jsonl_atomic(dpo, read_jsonl(dpo)[:TRAIN_PAIRS])
        run_id = train_all(cfg, from_stage="rm", resume_run=source_id, stages=["rm"], run_id="with-rm")
        # clinicians' held-out pairs (the tiny build has none): a few held-out pairs stand in for them
        held_out = cfg.data_dir / "eval"
        write_jsonl_atomic(held_out / "pref_clinician.jsonl", read_jsonl(held_out / "pref.jsonl")[:CLINICIAN_PAIRS])
    finally:
        if old is None:
            os.environ.pop("CHIMED_HOME", None)
        else:
            os.environ["CHIMED_HOME"] = old
    return home, source_id, run_id


def test_rm_stage_learns_to_prefer_the_chosen_answers_it_trained_on(rm_run, use_home):
    from training.trainer.reward_model import load_reward_model, reward_scores

    home, source_id, run_id = rm_run
    use_home(home)
    cfg = load_config("tiny", RM)
    manifest = read_manifest(cfg, run_id)
    entry = manifest["stages"]["rm"]
    assert (entry["kind"], entry["parent"]) == ("lora", "sft")
    assert entry["metrics"]["pairs"] == TRAIN_PAIRS and entry["metrics"]["steps"] == 60
    assert entry["metrics"]["train_loss"] < 0.6  # the Bradley-Terry loss starts at log 2 = 0.69
    assert entry["metrics"]["lora"]["head"] == ["score"]
    for stage in ("base", "cpt", "sft"):  # reused, not retrained
        assert manifest["stages"][stage] == read_manifest(cfg, source_id)["stages"][stage]

    pairs = read_jsonl(cfg.data_dir / "dpo.jsonl")
    assert len(pairs) == TRAIN_PAIRS
    model, tokenizer = load_reward_model(cfg.runs_dir / run_id)  # what was saved, loaded again
    prompts = [p["prompt"] for p in pairs]
    chosen = reward_scores(model, tokenizer, prompts, [p["chosen"][-1]["content"] for p in pairs])
    rejected = reward_scores(model, tokenizer, prompts, [p["rejected"][-1]["content"] for p in pairs])
    right = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)
    assert right >= 0.8, f"the reward model ranks only {right:.0%} of its training pairs right"
    # one conversation scores the same alone as in a batch of longer ones (padding is not read)
    alone = reward_scores(model, tokenizer, prompts[:1], [pairs[0]["chosen"][-1]["content"]], batch_size=1)
    assert alone[0] == pytest.approx(chosen[0], abs=1e-4)


def test_evaluation_reports_rm_accuracy_and_each_stages_mean_reward(rm_run, use_home):
    from training.evaluation.evaluate import evaluate_run
    from training.trainer.reward_model import load_reward_model, reward_scores

    home, source_id, run_id = rm_run
    use_home(home)
    cfg = load_config("tiny")
    results = evaluate_run(cfg, run_id)
    rm = results["stages"]["rm"]
    assert rm["pref_n"] == len(read_jsonl(cfg.data_dir / "eval" / "pref.jsonl")[: cfg.eval.pref_max])
    assert 0.0 <= rm["pref_acc"] <= 1.0 and 0.0 <= rm["pref_acc_clinician"] <= 1.0
    assert rm["pref_n_clinician"] == CLINICIAN_PAIRS
    assert results["reward_judge"]["checkpoint"] == f"{run_id}/rm"
    assert results["reward_judge"]["pref_acc"] == rm["pref_acc"]

    # the RM score of a stage is the judge's mean reward of the answers the evaluation generated (reused)
    model, tokenizer = load_reward_model(cfg.runs_dir / run_id)
    qa = read_jsonl(cfg.data_dir / "eval" / "qa.jsonl")[: cfg.eval.qa_max]
    answering = [stage for stage in results["stages"] if stage != "rm"]
    assert {"base", "cpt", "sft"} <= set(answering)
    for stage in answering:
        answers = [g["answer"] for g in read_jsonl(cfg.runs_dir / run_id / "eval" / "generations" / f"{stage}.jsonl")]
        rewards = reward_scores(model, tokenizer, [q["messages"] for q in qa], answers)
        assert results["stages"][stage]["reward_judge_mean"] == pytest.approx(sum(rewards) / len(rewards), abs=1e-4)
    assert "reward_judge_mean" not in rm
    table = (cfg.runs_dir / run_id / "eval" / "results.md").read_text(encoding="utf-8")
    assert "RM score" in table and "| rm |" in table and "pref acc (clinician)" in table
    saved = json.loads((cfg.runs_dir / run_id / "eval" / "results.json").read_text(encoding="utf-8"))
    assert saved["stages"]["sft"]["reward_judge_mean"] == results["stages"]["sft"]["reward_judge_mean"]
    assert "load_reward_model" in (cfg.runs_dir / run_id / "rm" / "README.md").read_text(encoding="utf-8")

    # another run, without a reward model of its own, judged by this one: the same answers get the same score
    judged = evaluate_run(load_config("tiny", [f"eval.reward_judge={run_id}"]), source_id)
    assert "rm" not in judged["stages"] and judged["reward_judge"]["checkpoint"] == f"{run_id}/rm"
    for stage in answering:
        assert math.isfinite(judged["stages"][stage]["reward_judge_mean"])
        assert judged["stages"][stage]["reward_judge_mean"] == pytest.approx(
            results["stages"][stage]["reward_judge_mean"], abs=1e-4
        )


def test_a_reward_judge_without_an_rm_stage_is_a_one_line_error_before_any_work(rm_run, use_home):
    from training.evaluation.evaluate import evaluate_run

    home, source_id, _ = rm_run
    use_home(home)
    results = home / "runs" / source_id / "eval" / "results.json"
    before = results.stat().st_mtime_ns if results.exists() else None
    for judge, words in ((source_id, "has no rm stage"), ("no-such-run", "there is no run no-such-run")):
        with pytest.raises(UserError) as err:
            evaluate_run(load_config("tiny", [f"eval.reward_judge={judge}"]), source_id)
        message = str(err.value)
        assert "\n" not in message and f"eval.reward_judge={judge}" in message and words in message
    assert (results.stat().st_mtime_ns if results.exists() else None) == before
