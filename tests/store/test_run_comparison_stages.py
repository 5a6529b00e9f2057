"""compare-runs (issue 30): which stages it compares is never a guess (runs ending in different stages, or a
stage the new run only reused, are refused with a hint), the interval uses at least 2000 resamples, and
prompts whose pairs the new run trained on are counted so the command can warn."""

from __future__ import annotations

import pytest

from chimed import main
from core.config import StudyConfig, load_config
from core.errors import UserError
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.validation import PreferenceStoreError
from tests.store.test_run_comparison import add_bank_prompt, judge_prompts


@pytest.fixture
def runs(pref_store):
    pref_store.study = StudyConfig(decisions="fixed")  # the bootstrap verdict of a preregistered study
    pref_store.register_checkpoints("old", ["base", "cpt", "sft", "dpo"])
    pref_store.register_checkpoints("new", ["base", "cpt", "sft", "dpo"])
    return pref_store, [pref_store.add_annotator(n, "a-long-password") for n in ("wang", "li")]


@pytest.mark.both_backends
def test_runs_ending_in_different_stages_or_a_reused_stage_are_refused_with_a_hint(runs):
    store, _ = runs
    store.register_checkpoints("kto_run", ["base", "cpt", "sft", "kto"])
    with pytest.raises(PreferenceStoreError, match=r"ambiguous: kto_run ends in kto, old in dpo.*--stage"):
        store.compare_runs("kto_run", "old")
    with pytest.raises(PreferenceStoreError, match=r"new/sft is old/sft reused.*--stage \(dpo\)"):
        store.compare_runs("new", "old", stage="sft", reused=frozenset({"base", "cpt", "sft"}))
    result = store.compare_runs("new", "old", reused=frozenset({"base", "cpt", "sft"}))
    assert (result.new_checkpoint, result.old_checkpoint) == ("new/dpo", "old/dpo")


@pytest.mark.both_backends
def test_the_verdict_uses_2000_resamples_and_counts_prompts_the_new_run_trained_on(runs):
    store, annotators = runs
    judge_prompts(store, annotators, 6, lambda p, a: p % 3 != 0, split="heldout")
    trained = add_bank_prompt(store, "训练题 0", "train")
    comparison = store.record_comparison(
        ComparisonIn(
            annotators[0].id,
            trained[1],
            [ResponseIn("old/dpo", "旧答"), ResponseIn("new/dpo", "新答")],
            bank_prompt_id=trained[0],
        )
    )
    pair_ids = store.submit_judgment(JudgmentIn(comparison.id, annotators[0].id, choice="B")).pair_ids
    store.mark_consumed(pair_ids, "new")  # the round-1 pair the new run trained on

    everything = store.compare_runs("new", "old")
    assert everything.rounds == 2000 and everything.prompts == 7 and everything.trained_on == 1
    assert store.compare_runs("new", "old", split="heldout").trained_on == 0
    with pytest.raises(UserError, match="at least 2000"):
        load_config("tiny", ["store.run_comparison_rounds=100"])


def test_compare_runs_names_the_checkpoints_and_warns_on_trained_prompts(runs, monkeypatch, capsys):
    store, annotators = runs
    for p in range(5):  # five train prompts, each judged once, every pair then trained on by the new run
        bank_id, messages = add_bank_prompt(store, f"训练题 {p}", "train")
        comparison = store.record_comparison(
            ComparisonIn(
                annotators[p % 2].id,
                messages,
                [ResponseIn("old/dpo", "旧答"), ResponseIn("new/dpo", "新答")],
                bank_prompt_id=bank_id,
            )
        )
        store.mark_consumed(
            store.submit_judgment(JudgmentIn(comparison.id, annotators[p % 2].id, choice="B")).pair_ids, "new"
        )
    recorded = {}
    monkeypatch.setattr(
        "training.evaluation.evaluate.record_arena_comparison",
        lambda cfg, run, arena: recorded.setdefault(run, arena) and "results.json",
    )
    argv = ["compare-runs", "--profile", "tiny", "--run", "new", "--against", "old", "--split", "train"]
    assert main([*argv, "study.decisions=fixed"]) == 0
    out, err = capsys.readouterr()
    assert "comparing new/dpo (new) against old/dpo (old), 2000 bootstrap resamples" in out
    assert "warning: 5 of the 5 train bank prompts counted had clinician pairs new trained on" in err
    assert recorded["new"]["trained_on"] == 5
