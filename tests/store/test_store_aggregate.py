"""store.aggregate: the votes of several annotators on the same prompt and the same two answers become one pair in
the majority's direction (majority), one only when all agree (unanimous), or every annotator's pair (all); split and
tied votes are left out and counted, and every exported pair carries its vote counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import load_config
from core.errors import UserError
from preference_store.exports.pairs import export_pairs, format_summary
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL

PROMPT = [{"role": "user", "content": "高血压患者饮食上要注意什么？"}]
VAGUE, GOOD = "多休息，观察病情。", "应低盐饮食，规律监测血压。"


def vote(store, name, choice, flip=False, prompt=PROMPT):
    """``name`` compares the two answers (GOOD in panel B, or in panel A with ``flip``) and votes ``choice``
    ("good", "vague", or a pairwise "tie" / "both_bad")."""
    me = store.annotator_by_name(name) or store.add_annotator(name, "a-long-test-password")
    answers = [ResponseIn("r1/sft", VAGUE), ResponseIn("r1/dpo", GOOD)]
    if flip:
        answers.reverse()
    made = store.record_comparison(ComparisonIn(me.id, list(prompt), answers))
    good_panel, vague_panel = ("A", "B") if flip else ("B", "A")
    label = {"good": good_panel, "vague": vague_panel}.get(choice, choice)
    return store.submit_judgment(JudgmentIn(made.id, me.id, choice=label))


def export(store, home, name, *overrides):
    cfg = load_config("tiny", list(overrides))
    summary = export_pairs(cfg, out=Path(home) / name, store=store)
    records = (
        [json.loads(line) for line in summary.path.read_text(encoding="utf-8").splitlines()] if summary.path else []
    )
    return summary, [
        (r["chosen"][0]["content"], r["rejected"][0]["content"], r["provenance"]["votes"]) for r in records
    ]


def test_majority_exports_one_pair_in_the_majoritys_direction_with_its_votes(pref_store, chimed_home):
    vote(pref_store, "a1", "good")
    vote(pref_store, "a2", "good", flip=True)  # panels shuffled: the same two answers all the same
    vote(pref_store, "a3", "vague")
    summary, written = export(pref_store, chimed_home, "p.jsonl")
    assert written == [(GOOD, VAGUE, {"for": 2, "against": 1, "ties": 0})]
    assert (summary.outvoted, summary.duplicates, summary.split_votes) == (1, 1, 0)
    assert "went the other way (store.aggregate=majority): 1" in format_summary(summary)


def test_split_and_tied_votes_are_left_out_counted_and_reconsidered(pref_store, chimed_home):
    vote(pref_store, "a1", "good")
    vote(pref_store, "a2", "vague")
    summary, written = export(pref_store, chimed_home, "1.jsonl")
    assert written == [] and summary.split_votes == 2 and summary.path is None
    assert "split or tied (store.aggregate=majority): 2" in format_summary(summary)

    vote(pref_store, "a3", "tie")  # a tie is a vote for neither: 1 of 3 is no majority
    summary, written = export(pref_store, chimed_home, "2.jsonl")
    assert written == [] and summary.split_votes == 2

    vote(pref_store, "a4", "good")
    vote(pref_store, "a5", "good", flip=True)  # 3 of 5 now prefer GOOD: the pairs held back count again
    summary, written = export(pref_store, chimed_home, "3.jsonl")
    assert written == [(GOOD, VAGUE, {"for": 3, "against": 1, "ties": 1})]
    assert (summary.outvoted, summary.duplicates) == (1, 2)


def test_a_vote_on_another_prompt_is_not_counted(pref_store, chimed_home):
    vote(pref_store, "a1", "good")
    vote(pref_store, "a2", "vague", prompt=[{"role": "user", "content": "糖尿病饮食要注意什么？"}])
    summary, written = export(pref_store, chimed_home, "p.jsonl")
    assert sorted(written) == sorted(
        [(GOOD, VAGUE, {"for": 1, "against": 0, "ties": 0}), (VAGUE, GOOD, {"for": 1, "against": 0, "ties": 0})]
    )
    assert (summary.outvoted, summary.split_votes) == (0, 0)


def test_unanimous_needs_every_vote(pref_store, chimed_home):
    vote(pref_store, "a1", "good")
    vote(pref_store, "a2", "good")
    dissent = vote(pref_store, "a3", "vague")  # GOOD is in panel B
    summary, written = export(pref_store, chimed_home, "1.jsonl", "store.aggregate=unanimous")
    assert written == [] and summary.split_votes == 3

    # a3 changes their mind: now every vote agrees
    pref_store.submit_judgment(JudgmentIn(dissent.comparison_id, dissent.annotator_id, choice="B", revise=True))
    summary, written = export(pref_store, chimed_home, "2.jsonl", "store.aggregate=unanimous")
    assert written == [(GOOD, VAGUE, {"for": 3, "against": 0, "ties": 0})]


def test_all_keeps_both_directions_of_a_disagreement(pref_store, chimed_home):
    vote(pref_store, "a1", "good")
    vote(pref_store, "a2", "good")
    vote(pref_store, "a3", "vague")
    summary, written = export(pref_store, chimed_home, "p.jsonl", "store.aggregate=all")
    assert sorted(written) == sorted(
        [(GOOD, VAGUE, {"for": 2, "against": 1, "ties": 0}), (VAGUE, GOOD, {"for": 1, "against": 2, "ties": 0})]
    )
    assert (summary.outvoted, summary.split_votes, summary.duplicates) == (0, 0, 1)


def test_unblinded_votes_are_not_counted_unless_admitted(pref_store, chimed_home):
    vote(pref_store, "a1", "good")
    admin = pref_store.add_annotator("pi", "a-long-test-password")
    made = pref_store.record_comparison(
        ComparisonIn(admin.id, list(PROMPT), [ResponseIn("r1/sft", VAGUE), ResponseIn("r1/dpo", GOOD)], blind=False)
    )
    pref_store.submit_judgment(JudgmentIn(made.id, admin.id, choice="A"))  # VAGUE, with the names shown
    summary, written = export(pref_store, chimed_home, "p.jsonl")
    assert written == [(GOOD, VAGUE, {"for": 1, "against": 0, "ties": 0})] and summary.unblinded == 1


def test_an_unknown_aggregate_is_refused_in_one_line(chimed_home):
    with pytest.raises(UserError, match=r"store.aggregate='mean'.*majority, all, unanimous"):
        load_config("tiny", ["store.aggregate=mean"])


def test_a_round_that_gets_no_pairs_says_it_was_a_split_vote(pref_store, chimed_home, capsys):
    from chimed import export_clinician_pairs

    vote(pref_store, "a1", "good")
    vote(pref_store, "a2", "vague")
    vote(pref_store, "a3", "tie")
    export_clinician_pairs(load_config("tiny"))  # what train-all runs before it builds the data
    assert (
        "0 clinician pairs go into this round although the store holds 3 judgments: "
        "2 split or tied votes (store.aggregate=majority); 1 votes for a tie or both bad"
    ) in capsys.readouterr().out
