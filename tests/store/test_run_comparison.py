"""The run-vs-run verdict on the shared bank prompts, on synthetic stores whose answer is known."""

from __future__ import annotations

import pytest

from core.config import StudyConfig
from preference_store.models import BankPromptRow
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.statistics.run_comparison import NOT_ENOUGH
from preference_store.validation import PreferenceStoreError

OLD, NEW = "old/dpo", "new/dpo"


def add_bank_prompt(store, text, split="train"):
    """A bank prompt written straight into the store (the import itself is tested in test_store_bank.py)."""
    row = BankPromptRow(
        id=f"bp{abs(hash(text)) % 10**12}",
        bank="test",
        messages=[{"role": "user", "content": text}],
        tags=[],
        split=split,
        content_sha256=f"{abs(hash(text)):064d}"[:64],
        source="test:1",
    )
    store._write(lambda s: s.add(row))
    return row.id, row.messages


def battle(store, annotator, prompt, new_wins: bool | None, flip: bool, bank=True, new_leaks=None):
    """One vote between the new and the old DPO on ``prompt`` (panels in either order): None = a tie;
    ``new_leaks``: the names the new run's answer gives away, as the arena found them."""
    bank_id, messages = prompt
    panels = [NEW, OLD] if flip else [OLD, NEW]
    answers = [ResponseIn(c, f"{c} 答", leaks=(new_leaks if c == NEW else [])) for c in panels]
    cmp = store.record_comparison(
        ComparisonIn(annotator.id, messages, answers, bank_prompt_id=bank_id if bank else None)
    )
    choice = "tie" if new_wins is None else ("A" if (panels[0] == NEW) == new_wins else "B")
    store.submit_judgment(JudgmentIn(cmp.id, annotator.id, choice=choice))


@pytest.fixture
def runs(pref_store):
    pref_store.study = StudyConfig(decisions="fixed")  # the bootstrap verdict of a preregistered study
    pref_store.register_checkpoints("old", ["base", "cpt", "sft", "dpo"])
    pref_store.register_checkpoints("new", ["sft", "dpo"])
    return pref_store, [pref_store.add_annotator(n, "a-long-password") for n in ("wang", "li")]


def judge_prompts(store, annotators, n_prompts, new_wins, split="heldout", tag=""):
    """Two annotators judge ``n_prompts`` bank prompts; ``new_wins(prompt index, annotator index)``."""
    for p in range(n_prompts):
        prompt = add_bank_prompt(store, f"{tag}问题 {p}", split)
        for a, annotator in enumerate(annotators):
            battle(store, annotator, prompt, new_wins(p, a), flip=(p + a) % 2 == 0)


@pytest.mark.parametrize(("share", "verdict"), [(0.8, "better"), (0.5, "same"), (0.2, "worse")])
def test_the_verdict_matches_a_known_answer(runs, share, verdict):
    store, annotators = runs
    # 20 prompts x 2 annotators; the new run wins `share` of the battles, spread evenly over the prompts
    judge_prompts(store, annotators, 20, lambda p, a: ((2 * p + a) % 10) < share * 10)
    result = store.compare_runs("new", "old", rounds=300, seed=1)
    assert result.verdict == verdict
    assert (result.new_checkpoint, result.old_checkpoint, result.stage) == (NEW, OLD, "dpo")
    assert (result.prompts, result.battles) == (20, 40)
    assert result.wins == round(40 * share) and result.losses == 40 - result.wins and result.ties == 0
    assert result.difference == pytest.approx(2 * share - 1)
    low, high = result.ci95
    assert low <= result.difference <= high
    if verdict == "better":
        assert low > 0 and result.p_new_better > 0.975
    elif verdict == "worse":
        assert high < 0 and result.p_new_better < 0.025
    else:
        assert low < 0 < high and 0.2 < result.p_new_better < 0.8
    assert verdict in result.summary and result.rounds == 300


def test_ties_count_half_and_the_result_is_reproducible(runs):
    store, annotators = runs
    judge_prompts(store, annotators, 10, lambda p, a: None if a else True)  # wang: new wins; li: ties
    first = store.compare_runs("new", "old", rounds=200, seed=3)
    assert (first.wins, first.ties, first.losses) == (10, 10, 0)
    assert first.difference == pytest.approx(0.5) and first.verdict == "better"
    assert store.compare_runs("new", "old", rounds=200, seed=3) == first


def test_only_the_chosen_split_counts(runs):
    store, annotators = runs
    judge_prompts(store, annotators, 8, lambda p, a: True, split="heldout", tag="留出")
    judge_prompts(store, annotators, 8, lambda p, a: False, split="train", tag="训练")
    heldout = store.compare_runs("new", "old", split="heldout", rounds=200)
    assert (heldout.verdict, heldout.prompts, heldout.split) == ("better", 8, "heldout")
    train = store.compare_runs("new", "old", split="train", rounds=200)
    assert (train.verdict, train.prompts, train.wins) == ("worse", 8, 0)
    everything = store.compare_runs("new", "old", rounds=200)
    assert (everything.verdict, everything.prompts, everything.difference) == ("same", 16, 0.0)


def test_free_chat_and_other_checkpoints_do_not_count(runs):
    store, annotators = runs
    wang = annotators[0]
    prompt = add_bank_prompt(store, "不在题库的对比", "heldout")
    for _ in range(6):
        battle(store, wang, prompt, True, flip=False, bank=False)  # free chat: not a bank prompt
    cmp = store.record_comparison(
        ComparisonIn(
            wang.id, prompt[1], [ResponseIn("new/sft", "x"), ResponseIn("old/sft", "y")], bank_prompt_id=prompt[0]
        )
    )
    store.submit_judgment(JudgmentIn(cmp.id, wang.id, choice="A"))  # sft, not the stage compared
    result = store.compare_runs("new", "old", rounds=50)
    assert result.verdict == NOT_ENOUGH and result.battles == 0
    sft = store.compare_runs("new", "old", stage="sft", rounds=50)
    assert (sft.verdict, sft.battles, sft.prompts, sft.new_checkpoint) == (NOT_ENOUGH, 1, 1, "new/sft")


def test_battles_with_an_answer_naming_a_model_are_left_out_and_the_verdict_says_so(runs):
    store, annotators = runs
    for p in range(6):
        prompt = add_bank_prompt(store, f"泄露题 {p}", "heldout")
        for a, annotator in enumerate(annotators):
            battle(store, annotator, prompt, True, flip=(p + a) % 2 == 0, new_leaks=["Qwen"] if p == 0 else [])
    result = store.compare_runs("new", "old", rounds=50)
    assert (result.prompts, result.battles, result.leaked_battles) == (5, 10, 2)
    assert "on 5 bank prompts (2 battles left out: an answer names a model): it won 10" in result.summary
    store.study = StudyConfig()  # anytime: the same count, the same words
    anytime = store.compare_runs("new", "old")
    assert (anytime.prompts, anytime.leaked_battles) == (5, 2) and "2 battles left out" in anytime.summary


def test_rankings_count_as_battles_between_the_two(runs):
    store, annotators = runs
    for p in range(6):
        prompt = add_bank_prompt(store, f"排序题 {p}", "heldout")
        for annotator in annotators:
            cmp = store.record_comparison(
                ComparisonIn(
                    annotator.id,
                    prompt[1],
                    [ResponseIn(OLD, "旧"), ResponseIn("r1/sft", "其他"), ResponseIn(NEW, "新")],
                    bank_prompt_id=prompt[0],
                )
            )
            store.submit_judgment(JudgmentIn(cmp.id, annotator.id, ranking={"A": 3, "B": 2, "C": 1}))
    result = store.compare_runs("new", "old", split="heldout", rounds=100)
    assert (result.verdict, result.battles, result.wins) == ("better", 12, 12)


def test_nothing_judged_is_a_clear_not_enough_result(runs):
    store, annotators = runs
    result = store.compare_runs("new", "old", split="heldout", rounds=100)
    assert result.verdict == "not enough judgments" == NOT_ENOUGH
    assert (result.prompts, result.battles, result.difference, result.ci95, result.p_new_better) == (
        0,
        0,
        None,
        None,
        None,
    )
    assert "not enough judgments" in str(result) and "heldout" in result.summary

    # fewer prompts than store.run_comparison_min_prompts: still not enough, however one-sided
    judge_prompts(store, annotators, store.settings.run_comparison_min_prompts - 1, lambda p, a: True)
    few = store.compare_runs("new", "old", rounds=100)
    assert few.verdict == NOT_ENOUGH and few.wins == few.battles > 0


def test_unknown_runs_stages_and_splits_are_one_line_errors(runs):
    store, _ = runs
    with pytest.raises(PreferenceStoreError, match="no registered checkpoints"):
        store.compare_runs("nope", "old")
    with pytest.raises(PreferenceStoreError, match="not registered for both"):
        store.compare_runs("new", "old", stage="cpt")
    with pytest.raises(PreferenceStoreError, match="unknown split"):
        store.compare_runs("new", "old", split="test")
    with pytest.raises(PreferenceStoreError, match="not with itself"):
        store.compare_runs("new", "new")
