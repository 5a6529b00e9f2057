"""Decisions that stop (issue 33): the anytime-valid confidence sequence for the win rate, its verdicts, and
the queue of a round whose question is decided handing out nothing more."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import StudyConfig, load_config
from core.errors import UserError
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.statistics.sequential import (
    BETTER,
    SAME,
    UNDECIDED,
    WORSE,
    confidence_sequence,
    decide,
    prompt_units,
    verdict_of,
)

ALPHA = 0.05


def test_the_stopping_rule_is_rarely_wrong_on_null_studies_read_after_every_prompt():
    """400 simulated studies with no difference (each prompt's mean of 3 votes, ties included), each read after
    every prompt up to 300 prompts: better or worse at any look is a wrong verdict. The bound is alpha; the test
    allows 8% (a generous margin over the Monte-Carlo error of 400 studies: about 1.1%)."""
    rng = np.random.default_rng(7)
    wrong = 0
    for _ in range(400):
        votes = rng.choice([0.0, 0.5, 1.0], p=[0.45, 0.1, 0.45], size=(300, 3))
        lower, upper = confidence_sequence(votes.mean(axis=1), ALPHA)
        wrong += bool((lower > 0.5).any() or (upper < 0.5).any())
    assert wrong / 400 <= 0.08


def test_naive_peeking_at_a_fixed_sample_interval_is_wrong_more_often():
    """The same null studies read with a fixed-sample 95% normal interval after every prompt: the error rate grows
    with the looks (well above 5%), which is why the arena does not stop on it."""
    rng = np.random.default_rng(7)
    wrong = 0
    for _ in range(200):
        x = rng.choice([0.0, 0.5, 1.0], p=[0.45, 0.1, 0.45], size=(300, 3)).mean(axis=1)
        n = np.arange(1, 301)
        mean = np.cumsum(x) / n
        sd = np.sqrt(np.maximum(np.cumsum(x**2) / n - mean**2, 1e-12))
        half = 1.96 * sd / np.sqrt(n)
        wrong += bool(((mean - half > 0.5) | (mean + half < 0.5))[4:].any())
    assert wrong / 200 > 0.10


@pytest.mark.parametrize("truth", [0.3, 0.5, 0.62, 0.8])
def test_the_confidence_sequence_covers_the_true_win_rate_and_shrinks(truth):
    rng = np.random.default_rng(int(truth * 100))
    covered = 0
    for _ in range(100):
        x = rng.binomial(3, truth, size=400) / 3
        lower, upper = confidence_sequence(x, ALPHA)
        covered += bool(((lower <= truth) & (truth <= upper)).all())
        assert (np.diff(lower) >= 0).all() and (np.diff(upper) <= 0).all()  # the running intersection
    assert covered >= 92
    assert upper[-1] - lower[-1] < upper[9] - lower[9]


def test_the_verdict_categories():
    assert verdict_of(0.51, 0.7, 0.05) == BETTER
    assert verdict_of(0.2, 0.49, 0.05) == WORSE
    assert verdict_of(0.46, 0.54, 0.05) == SAME
    assert verdict_of(0.44, 0.54, 0.05) == UNDECIDED
    assert verdict_of(0.3, 0.7, 0.05) == UNDECIDED
    assert verdict_of(0.51, 0.54, 0.05) == BETTER  # better wins over same when both hold


def test_a_clear_winner_is_decided_once_and_says_after_how_many_judgments():
    values, at, n = prompt_units([(f"p{i // 3}", 1.0) for i in range(90)], 3)  # 30 prompts, 3 wins each
    assert values == [1.0] * 30 and at == list(range(3, 91, 3)) and n == 90
    decision = decide(values, at, n, ALPHA, 0.05)
    assert decision.verdict == BETTER and decision.decided_after % 3 == 0
    assert decision.decided_interval[0] > 0.5 and decision.decided_after < 90
    assert decision.interval[0] >= decision.decided_interval[0]
    undecided = decide(values[:2], at[:2], 6, ALPHA, 0.05)
    assert undecided.verdict == UNDECIDED and undecided.decided_after is None


def test_a_prompt_counts_once_its_k_battles_are_in_and_later_battles_do_not_change_it():
    battles = [("a", 1.0), ("b", 0.0), ("a", 0.5), ("b", 0.0), ("a", 0.0)]
    assert prompt_units(battles, 2) == ([0.75, 0.0], [3, 4], 5)


def test_the_study_settings_are_checked():
    assert StudyConfig().decisions == "anytime"
    with pytest.raises(UserError, match="choose one of anytime, fixed"):
        load_config("tiny", ["study.decisions=sometimes"])
    with pytest.raises(UserError, match="study.alpha"):
        load_config("tiny", ["study.alpha=0.7"])
    with pytest.raises(UserError, match="study.margin"):
        load_config("tiny", ["study.margin=-0.1"])


# --- the store: compare-runs and the queue ---------------------------------------------------------------

OLD, NEW = "old/dpo", "new/dpo"


def _bank(store, tmp_path, n):
    path = tmp_path / "bank.jsonl"
    path.write_text("".join(f'{{"prompt": "问题 {i}：怎么办？", "split": "heldout"}}\n' for i in range(n)), "utf-8")
    store.import_bank(path)


def _work(store, annotators, new_wins, limit=10_000) -> int:
    """Annotators take turns through their queues; every vote goes to the new checkpoint when ``new_wins``."""
    made, idle, turn = 0, 0, 0
    while idle < len(annotators) and made < limit:
        annotator = annotators[turn % len(annotators)]
        turn += 1
        assignment = store.next_assignment(annotator.id)
        if assignment is None:
            idle += 1
            continue
        idle = 0
        panels = [NEW, OLD] if made % 2 else [OLD, NEW]
        cmp = store.record_comparison(
            ComparisonIn(
                annotator.id,
                assignment.bank_prompt.messages,
                [ResponseIn(c, f"{c} 答") for c in panels],
                bank_prompt_id=assignment.bank_prompt.id,
                assignment_id=assignment.id,
            )
        )
        winner = NEW if new_wins else OLD
        store.submit_judgment(JudgmentIn(cmp.id, annotator.id, choice="AB"[panels.index(winner)]))
        made += 1
    return made


@pytest.fixture
def decided_study(store, tmp_path):
    """40 held-out prompts, k=3, a round of exactly old/dpo and new/dpo; three clinicians always prefer new."""
    store.register_checkpoints("old", ["sft", "dpo"])
    store.register_checkpoints("new", ["sft", "dpo"])
    _bank(store, tmp_path, 40)
    annotators = [store.add_annotator(n, "a-long-password") for n in ("wang", "li", "zhang")]
    store.start_queue_round(None, [NEW, OLD], split="heldout", blind=True)
    made = _work(store, annotators, new_wins=True)
    return store, annotators, made


def test_the_queue_stops_handing_out_prompts_once_the_question_is_decided(decided_study):
    store, annotators, made = decided_study
    result = store.compare_runs("new", "old", split="heldout")
    assert result.decisions == "anytime" and result.verdict == "better"
    assert made == result.decided_after < 120  # stopped at the decision, before the 40 prompts x 3 were used
    assert result.interval[0] > 0.5 and f"decided after {made} judgments" in result.summary
    assert all(store.next_assignment(a.id) is None for a in annotators)
    assert store.queue_progress(annotators[0].id).total == store.queue_progress(annotators[0].id).done
    defined = store.queue_round_definition()
    assert defined.is_open and defined.decided.startswith("better: new/dpo is better than old/dpo")
    assert [e.action for e in store.audit_events() if e.action == "queue.round_decided"] == ["queue.round_decided"]


def test_fixed_decisions_keep_the_queue_going_to_the_end(store, tmp_path):
    store.study = StudyConfig(decisions="fixed", allocation="uniform")  # every prompt to all k = 3
    store.register_checkpoints("old", ["dpo"])
    store.register_checkpoints("new", ["dpo"])
    _bank(store, tmp_path, 10)
    annotators = [store.add_annotator(n, "a-long-password") for n in ("wang", "li", "zhang")]
    store.start_queue_round(None, [NEW, OLD], split="heldout", blind=True)
    assert _work(store, annotators, new_wins=True) == 30
    assert store.queue_round_definition().decided is None
    result = store.compare_runs("new", "old", split="heldout")
    assert result.decisions == "fixed" and result.verdict == "better" and result.rounds == 2000


def test_a_round_of_more_than_two_contestants_is_not_stopped(store, tmp_path):
    store.register_checkpoints("old", ["sft", "dpo"])
    store.register_checkpoints("new", ["sft", "dpo"])
    _bank(store, tmp_path, 3)
    annotators = [store.add_annotator(n, "a-long-password") for n in ("wang", "li", "zhang")]
    store.start_queue_round(None, [NEW, OLD, "new/sft"], split="heldout")
    assert store.next_assignment(annotators[0].id) is not None
    assert store.queue_round_definition().decided is None


def test_compare_runs_prints_decided_after_n_judgments_and_the_runs_results_show_it(decided_study, cfg, capsys):
    """compare-runs' output, and the run's results.md (what the Runs tab shows), say when it was decided."""
    import json

    from chimed import main

    store, _, made = decided_study
    results = cfg.runs_dir / "new" / "eval" / "results.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"run_id": "new", "stages": {}, "settings": {}, "timing_s": {}}), encoding="utf-8")
    assert main(["compare-runs", "--profile", "tiny", "--run", "new", "--against", "old"]) == 0
    out = capsys.readouterr().out
    assert "a confidence sequence valid at every judgment" in out
    assert "better: new/dpo is better than old/dpo" in out and f"decided after {made} judgments" in out
    arena = json.loads(results.read_text(encoding="utf-8"))["arena"]
    assert arena["decided_after"] == made and arena["decisions"] == "anytime" and arena["interval"][0] > 0.5
    assert f"decided after {made} judgments" in (results.parent / "results.md").read_text(encoding="utf-8")


def test_under_adaptive_allocation_two_agreeing_judgments_complete_a_prompt():
    """A prompt whose first two judgments agree gets no third under study.allocation: adaptive, so it enters the
    sequence at its second battle; a disagreeing one waits for its third."""
    battles = [("p", 1.0), ("q", 1.0), ("p", 1.0), ("q", 0.0), ("q", 1.0), ("p", 0.0)]
    assert prompt_units(battles, 3, settle_on_agreement=True) == ([1.0, 2 / 3], [3, 5], 6)
    assert prompt_units(battles, 3) == ([2 / 3, 2 / 3], [5, 6], 6)
