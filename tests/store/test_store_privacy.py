"""Privacy between annotators in the store: nobody judges, rates or reads another annotator's comparison
(admins may read), recent pairs and counts per annotator, and a client id is no way into another's judgment."""

from __future__ import annotations

import pytest

from preference_store.records import ComparisonIn, JudgmentIn, RatingIn, ResponseIn
from preference_store.validation import PreferenceStoreError

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL


def compare(store, annotator, prompt="胃痛反复发作怎么办？", **kwargs):
    return store.record_comparison(
        ComparisonIn(
            annotator.id,
            [{"role": "user", "content": prompt}],
            [ResponseIn("r1/sft", "建议清淡饮食。"), ResponseIn("r1/dpo", "反复胃痛应做胃镜检查。")],
            **kwargs,
        )
    )


@pytest.fixture
def wang_li_admin(pref_store):
    return (
        pref_store.add_annotator("dr_wang", "pw"),
        pref_store.add_annotator("dr_li", "pw"),
        pref_store.add_annotator("dr_zhao", "pw", role="admin"),
    )


def test_judging_or_rating_another_annotators_comparison_is_refused(pref_store, wang_li_admin):
    wang, li, admin = wang_li_admin
    theirs = compare(pref_store, wang)
    for who in (li, admin):  # admins read everything, but judge only what they were shown themselves
        with pytest.raises(PreferenceStoreError, match="recorded by another annotator: you can judge only your own"):
            pref_store.submit_judgment(JudgmentIn(theirs.id, who.id, choice="A"))
        with pytest.raises(PreferenceStoreError, match="recorded by another annotator: you can rate only your own"):
            pref_store.submit_rating(RatingIn(theirs.id, who.id, "A", up=True))
    assert pref_store.counts().judgments == pref_store.counts().ratings == 0
    pref_store.submit_judgment(JudgmentIn(theirs.id, wang.id, choice="B"))  # the annotator's own: fine
    assert pref_store.count_judgments(wang.id) == 1


def test_a_client_id_does_not_return_another_annotators_judgment(pref_store, wang_li_admin):
    wang, li, _ = wang_li_admin
    theirs = compare(pref_store, wang)
    pref_store.submit_judgment(JudgmentIn(theirs.id, wang.id, client_id="tab-7", choice="A"))
    mine = compare(pref_store, li)
    with pytest.raises(PreferenceStoreError, match="client_id 'tab-7' is another annotator's"):
        pref_store.submit_judgment(JudgmentIn(mine.id, li.id, client_id="tab-7", choice="A"))


def test_reading_a_comparison_or_continuing_a_conversation_is_for_its_annotator_and_admins(pref_store, wang_li_admin):
    wang, li, admin = wang_li_admin
    theirs = compare(pref_store, wang)
    assert pref_store.get_comparison(theirs.id, annotator_id=wang.id) == theirs
    assert pref_store.get_comparison(theirs.id, annotator_id=admin.id) == theirs
    with pytest.raises(PreferenceStoreError, match="recorded by another annotator: you can see only your own"):
        pref_store.get_comparison(theirs.id, annotator_id=li.id)
    with pytest.raises(PreferenceStoreError, match="another annotator"):
        pref_store.conversation(theirs.conversation_id, annotator_id=li.id)
    with pytest.raises(PreferenceStoreError, match="another annotator's: start a new conversation"):
        compare(pref_store, li, "那要吃什么药？", conversation_id=theirs.conversation_id)


def test_recent_pairs_and_counts_per_annotator(pref_store, wang_li_admin):
    wang, li, _ = wang_li_admin
    for i in range(3):
        cmp = compare(pref_store, wang, f"第{i}例：胃痛反复发作怎么办？")
        pref_store.submit_judgment(JudgmentIn(cmp.id, wang.id, choice="B"))
    cmp = compare(pref_store, li, "失眠多梦怎么调理？")
    pref_store.submit_judgment(JudgmentIn(cmp.id, li.id, choice="A"))
    pref_store.submit_rating(RatingIn(cmp.id, li.id, "B", up=False))

    assert {p.annotator_id for p in pref_store.recent_pairs(10, annotator_id=li.id)} == {li.id}
    assert [p.prompt[0]["content"] for p in pref_store.recent_pairs(10, annotator_id=li.id)] == ["失眠多梦怎么调理？"]
    assert len(pref_store.recent_pairs(10, annotator_id=wang.id)) == 3
    assert len(pref_store.recent_pairs(10)) == 4  # everyone's, for admins
    assert [c.id for c in pref_store.annotator_comparisons(li.id)] == [cmp.id]
    mine = pref_store.annotator_counts(li.id)
    assert (mine.comparisons, mine.judgments, mine.pairs, mine.ratings) == (1, 1, 1, 1)
    assert pref_store.annotator_counts(wang.id).judgments_by_kind["pairwise"] == 3
