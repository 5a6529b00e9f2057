"""``evaluate_run`` on the tiny run: the results contract, the reports a user reads, the DPO reference,
``--compare`` deltas, the cache and the user's own exam file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chimed import main as cli_main
from core.config import load_config
from core.errors import UserError
from core.registry import run_stages
from training.evaluation.evaluate import evaluate_run, load_eval_sets
from training.evaluation.report import NOTICE

STAGES = run_stages(load_config("tiny"))  # base, cpt, sft, dpo

FIXTURES = Path(__file__).parents[1] / "fixtures" / "eval"
CONTRACT_KEYS = {"exam_acc", "exam_n", "exam_ci95", "bleu1", "rouge1", "rougeL", "general_ppl", "pref_acc"}


@pytest.fixture
def eval_home(tiny_run, tmp_path, use_home) -> tuple[Path, str]:
    """(home, run_id): a private copy of the tiny run's work directory, so a test may evaluate it again."""
    source, run_id = tiny_run
    home = tmp_path / "eval_home"
    shutil.copytree(source, home, symlinks=True)
    return use_home(home), run_id


def _results(home: Path, run_id: str) -> dict:
    return json.loads((home / "runs" / run_id / "eval" / "results.json").read_text(encoding="utf-8"))


def test_train_all_leaves_results_that_match_the_contract(tiny_run):
    home, run_id = tiny_run
    results = _results(home, run_id)
    assert results["run_id"] == run_id
    assert list(results["stages"]) == list(STAGES)
    exam_n = results["settings"]["sets"]["exam"]
    for stage, m in results["stages"].items():
        assert CONTRACT_KEYS <= set(m), stage
        assert isinstance(m["exam_n"], int) and m["exam_n"] == exam_n > 0
        lo, hi = m["exam_ci95"]
        assert 0.0 <= lo <= m["exam_acc"] <= hi <= 1.0
        for key in ("bleu1", "bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "distinct2", "pref_acc", "exam_acc_0shot"):
            assert isinstance(m[key], float) and 0.0 <= m[key] <= 1.0, (stage, key)
        assert isinstance(m["general_ppl"], float) and m["general_ppl"] > 1.0
        assert "pref_acc_clinician" not in m  # the tiny build has no clinician pairs


def test_reports_a_user_reads(tiny_run):
    home, run_id = tiny_run
    run = home / "runs" / run_id
    table = (run / "eval" / "results.md").read_text(encoding="utf-8")
    assert NOTICE in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    assert [r.split("|")[1].strip() for r in rows] == list(STAGES)
    assert "BLEU-1" in table and "ROUGE-L" in table and "general PPL" in table
    assert (run / "eval" / "stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = _results(home, run_id)
    for stage in STAGES:
        card = (run / stage / "README.md").read_text(encoding="utf-8")
        assert NOTICE in card and f"run {run_id}: {stage}" in card
        assert f"| exam acc | {100 * results['stages'][stage]['exam_acc']:.1f} |" in card
        assert "learning_rate" in card  # the stage's hyper-parameters
        assert "ChiMed-CPT" in card  # data statistics
    generations = (run / "eval" / "generations" / "sft.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(generations) == results["settings"]["sets"]["qa"]
    assert {"id", "reference", "answer"} <= set(json.loads(generations[0]))


def test_dpo_preference_accuracy_is_the_implicit_reward_against_the_sft_model(tiny_run):
    """Recompute it the way DPO training sees it: the dpo adapter on the SFT model, the reference being
    that model with the adapter disabled."""
    import torch
    from peft import PeftModel

    from training.evaluation.preference import answer_text
    from training.modeling import load_stage

    home, run_id = tiny_run
    run = home / "runs" / run_id
    cfg = load_config("tiny")
    pairs = [json.loads(line) for line in (home / "data" / "chimed" / "eval" / "pref.jsonl").open(encoding="utf-8")]
    pairs = pairs[: cfg.eval.pref_max]
    sft, tokenizer = load_stage(run, "sft", device="cpu")
    policy = PeftModel.from_pretrained(sft, str(run / "dpo")).eval()

    def logprob(model, context: str, continuation: str) -> float:
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.inference_mode():
            lp = model(input_ids=x).logits[0, :-1].log_softmax(-1)
        return lp[range(len(ctx) - 1, len(ids) - 1), x[0, len(ctx) :]].sum().item()

    right = 0
    for pair in pairs:
        margin = 0.0
        for side, sign in (("chosen", 1), ("rejected", -1)):
            context, continuation = answer_text(tokenizer, pair["prompt"], pair[side], chat=True)
            with policy.disable_adapter():
                reference = logprob(policy, context, continuation)
            margin += sign * (logprob(policy, context, continuation) - reference)
        right += margin > 0
    assert _results(home, run_id)["stages"]["dpo"]["pref_acc"] == pytest.approx(right / len(pairs))


def test_compare_prints_and_writes_deltas(eval_home, capsys):
    home, run_id = eval_home
    # the same run compared with itself: every delta is zero
    assert cli_main(["eval", "--profile", "tiny", "--run", run_id, "--compare", run_id]) == 0
    out = capsys.readouterr().out
    assert "unchanged since its last evaluation" in out  # nothing retrained, nothing recomputed
    deltas = json.loads((home / "runs" / run_id / "eval" / f"compare_{run_id}.json").read_text(encoding="utf-8"))
    assert set(deltas["stages"]) == set(STAGES)
    assert all(d["delta"] == 0 for m in deltas["stages"].values() for d in m.values())
    assert "+0.0" in out

    # a second run whose cpt scored 10 points lower on the exam and 5 worse in perplexity
    other = home / "runs" / "older"
    shutil.copytree(home / "runs" / run_id, other)
    results = _results(home, run_id)
    changed = json.loads(json.dumps(results))
    changed["run_id"] = "older"
    changed["stages"]["cpt"]["exam_acc"] -= 0.1
    changed["stages"]["cpt"]["general_ppl"] += 5.0
    (other / "eval" / "results.json").write_text(json.dumps(changed), encoding="utf-8")
    assert cli_main(["eval", "--profile", "tiny", "--run", run_id, "--compare", "older"]) == 0
    out = capsys.readouterr().out
    deltas = json.loads((home / "runs" / run_id / "eval" / "compare_older.json").read_text(encoding="utf-8"))
    assert deltas["stages"]["cpt"]["exam_acc"]["delta"] == pytest.approx(0.1)
    assert deltas["stages"]["cpt"]["general_ppl"]["delta"] == pytest.approx(-5.0)
    assert deltas["stages"]["sft"]["exam_acc"]["delta"] == 0
    deltas_table = out[out.index("compared with run older") :]  # printed after the run's own table
    cpt_row = next(line for line in deltas_table.splitlines() if line.startswith("| cpt |"))
    assert "+10.0" in cpt_row and "-5.00" in cpt_row
    assert (home / "runs" / run_id / "eval" / "compare_older.md").read_text(encoding="utf-8").count("| cpt |") == 1


def test_changed_settings_are_measured_again_and_a_real_exam_file_is_scored(eval_home, capsys):
    home, run_id = eval_home
    before = _results(home, run_id)
    exam_file = FIXTURES / "ceval_medicine.jsonl"
    cfg = load_config("tiny", [f"eval.user_exam_files=[{exam_file}]"])
    results = evaluate_run(cfg, run_id)
    assert "unchanged" not in capsys.readouterr().out
    for m in results["stages"].values():
        assert m["exam_n_ceval_medicine"] == 6 - cfg.eval.k_shot  # the demonstrations are not scored
        assert 0.0 <= m["exam_acc_ceval_medicine"] <= 1.0
    assert "ceval_medicine acc" in (home / "runs" / run_id / "eval" / "results.md").read_text(encoding="utf-8")
    # the ChiMed exam figures do not depend on the extra exam
    assert results["stages"]["cpt"]["exam_acc"] == before["stages"]["cpt"]["exam_acc"]


def test_missing_run_or_eval_sets_are_one_line_errors(eval_home):
    home, run_id = eval_home
    cfg = load_config("tiny")
    with pytest.raises(UserError, match="no run at"):
        evaluate_run(cfg, "no-such-run")
    (home / "data" / "chimed" / "eval" / "qa.jsonl").unlink()
    with pytest.raises(UserError, match="qa.jsonl is missing"):
        load_eval_sets(cfg)
