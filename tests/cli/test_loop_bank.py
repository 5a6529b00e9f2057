"""Issue 18, the study's loop: a prompt bank with held-out prompts, two annotators working the same queue,
export (bank splits and agreement), ``train-all --from dpo``, and the clinicians' verdict on the new run
against its parent on the held-out bank prompts, reported in the new run's results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from chimed import main as chimed_main
from chimed import train_and_register
from core.config import load_config
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.repository import PreferenceStore

BANK = Path(__file__).parents[1] / "fixtures" / "bank" / "clinical_prompts.jsonl"


def _work_queue(store: PreferenceStore, annotator, contestants: list[str], answers: dict[str, str], verdict) -> int:
    """One annotator works through their whole queue: a comparison of ``contestants`` on every prompt they
    are given (the answers are fixed texts, so the test needs no model), judged by ``verdict(prompt)``."""
    judged = 0
    while (assignment := store.next_assignment(annotator.id)) is not None:
        prompt = assignment.bank_prompt
        comparison = store.record_comparison(
            ComparisonIn(
                annotator.id,
                prompt.messages,
                [ResponseIn(c, answers[c] + prompt.prompt[:4]) for c in contestants],
                bank_prompt_id=prompt.id,
                assignment_id=assignment.id,
            )
        )
        store.submit_judgment(JudgmentIn(comparison.id, annotator.id, choice=verdict(prompt)))
        judged += 1
    return judged


def test_a_bank_round_trains_a_new_run_and_the_heldout_verdict_is_in_its_results(tiny_run, tmp_path, use_home, capsys):
    source_home, old_run = tiny_run
    home = use_home(tmp_path / "home")
    shutil.copytree(source_home, home, symlinks=True)
    cfg = load_config("tiny")
    sft, dpo = f"{old_run}/sft", f"{old_run}/dpo"
    answers = {
        sft: "建议低盐低脂饮食，规律作息，必要时就医。",
        dpo: "应当限制钠盐摄入，戒烟限酒，规律监测，遵医嘱治疗。",
    }

    with PreferenceStore(cfg.database_url) as store:
        summary = store.import_bank(BANK)
        assert summary.imported == 12 and not summary.errors
        heldout = {p.id for p in store.bank_prompts() if p.split == "heldout"}
        assert len(heldout) == 6
        first = store.add_annotator("clinician_a", "a-long-test-password")
        second = store.add_annotator("clinician_b", "another-test-password")
        # both prefer DPO's answer (panel B) except on one prompt where the second annotator disagrees
        assert _work_queue(store, first, [sft, dpo], answers, lambda p: "B") == 12
        assert _work_queue(store, second, [sft, dpo], answers, lambda p: "A" if "失眠" in p.prompt else "B") == 12
        assert str(store.queue_progress(first.id)) == "12 / 12"

    capsys.readouterr()
    new_run = train_and_register(cfg, from_stage="dpo", resume_run=old_run)
    assert "preferences: 11 new clinician pairs go into this round" in capsys.readouterr().out

    # the export the retrain made: a bank prompt's pairs go to its own split, each with its agreement
    exported = [
        json.loads(line)
        for f in sorted(cfg.collected_pairs_dir.glob("*.jsonl"))
        for line in f.read_text(encoding="utf-8").splitlines()
    ]
    # the same answers judged alike by two annotators make one pair carrying both votes (the copy is left out);
    # the prompt they disagree on is a split vote (store.aggregate=majority): neither direction goes to training
    assert len(exported) == 11
    assert all(r["provenance"]["votes"] == {"for": 2, "against": 0, "ties": 0} for r in exported)
    with PreferenceStore(cfg.database_url) as store:
        comparisons = {
            r["provenance"]["comparison_id"]: store.get_comparison(r["provenance"]["comparison_id"]) for r in exported
        }
    for record in exported:
        comparison = comparisons[record["provenance"]["comparison_id"]]
        assert record["split"] == ("heldout" if comparison.bank_prompt_id in heldout else "train")
        agreement = record["provenance"]["agreement"]
        assert agreement["annotators"] == 2
        assert agreement["share"] == 1.0 and "失眠" not in comparison.messages[-1]["content"]
    manifest = json.loads((cfg.runs_dir / new_run / "manifest.json").read_text(encoding="utf-8"))
    trained = {p for p in manifest["dpo_pair_ids"] if p.startswith("clin-")}
    assert trained == {r["pair_id"] for r in exported if r["split"] == "train"}

    # nobody has judged the new run yet: its results say so
    results = json.loads((cfg.runs_dir / new_run / "eval" / "results.json").read_text(encoding="utf-8"))
    assert results["arena"]["verdict"] == "not enough judgments" and results["arena"]["prompts"] == 0

    # a second queue round on the same bank: the new run's DPO against the old one's
    new_dpo = f"{new_run}/dpo"
    round_two = {new_dpo: "应限制钠盐摄入，每日食盐不超过5克，多吃蔬菜水果，规律服药并监测血压。", dpo: answers[dpo]}
    assert chimed_main(["queue-round", "--profile", "tiny"]) == 0
    with PreferenceStore(cfg.database_url) as store:
        assert str(store.queue_progress(first.id)) == "0 / 12"
        for annotator in (first, second):
            assert _work_queue(store, annotator, [dpo, new_dpo], round_two, lambda p: "B") == 12
    capsys.readouterr()
    argv = ["compare-runs", "--profile", "tiny", "--run", new_run, "--against", old_run, "study.decisions=fixed"]
    assert chimed_main(argv) == 0  # two annotators, six held-out prompts: a preregistered study's verdict
    assert "better" in capsys.readouterr().out
    results = json.loads((cfg.runs_dir / new_run / "eval" / "results.json").read_text(encoding="utf-8"))
    arena = results["arena"]
    assert arena["verdict"] == "better" and arena["prompts"] == 6 and arena["split"] == "heldout"
    assert arena["new_checkpoint"] == new_dpo and arena["old_checkpoint"] == dpo
    assert "Clinicians" in (cfg.runs_dir / new_run / "eval" / "results.md").read_text(encoding="utf-8")
