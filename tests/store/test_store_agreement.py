"""Agreement among annotators on the shared bank prompts: Krippendorff's alpha against hand-worked values,
percent agreement overall and per annotator, units keyed by checkpoint, and each pair's agreement for export."""

from __future__ import annotations

import numpy as np
import pytest

from preference_store.models import BankPromptRow
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.statistics.agreement import fleiss_kappa, krippendorff_alpha, percent_agreement

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL


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


def judge(store, annotator, prompt, checkpoints, bank=True, **judgment):
    """``annotator`` records their own comparison of ``checkpoints`` (panels in that order) on ``prompt``."""
    bank_id, messages = prompt
    cmp = store.record_comparison(
        ComparisonIn(
            annotator.id,
            messages,
            [ResponseIn(c, f"{c} 答") for c in checkpoints],
            bank_prompt_id=bank_id if bank else None,
        )
    )
    out = store.submit_judgment(JudgmentIn(cmp.id, annotator.id, **judgment))
    return cmp, out


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C: 4 observers, 12 units, values 1-5
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def units_of(matrix):
    """observers x units (None = missing) -> one {observer: value} per unit."""
    return [{obs: row[u] for obs, row in enumerate(matrix) if row[u] is not None} for u in range(len(matrix[0]))]


def test_alpha_reproduces_krippendorffs_worked_example():
    units = units_of(KRIPPENDORFF_2011)
    assert krippendorff_alpha(units, "nominal", [1, 2, 3, 4, 5]) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, "ordinal", [1, 2, 3, 4, 5]) == pytest.approx(0.815, abs=5e-4)


def test_alpha_on_small_cases_worked_by_hand():
    # Nominal, 2 coders, 4 units: (1,1) (1,1) (2,2) (1,2).
    # Coincidences: o11 = 2 + 2 = 4, o22 = 2, o12 = o21 = 1; n1 = 5, n2 = 3, n = 8.
    # alpha = 1 - (n - 1) * (o12 + o21) / (n1 * n2 + n2 * n1) = 1 - 7 * 2 / 30 = 8/15.
    assert krippendorff_alpha(
        [{0: 1, 1: 1}, {0: 1, 1: 1}, {0: 2, 1: 2}, {0: 1, 1: 2}], "nominal", [1, 2]
    ) == pytest.approx(8 / 15)
    # Ordinal, 2 coders, 3 units: (1,2) (2,3) (3,3). Coincidences o12 = o21 = 1, o23 = o32 = 1, o33 = 2;
    # n1 = 1, n2 = 2, n3 = 3, n = 6. Ordinal distance delta(c,k) = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2:
    # delta12 = (3 - 1.5)^2 = 2.25, delta23 = (5 - 2.5)^2 = 6.25, delta13 = (6 - 2)^2 = 16.
    # observed: sum o_ck delta = 2 * 2.25 + 2 * 6.25 = 17; expected: sum n_c n_k delta over ordered pairs
    # = 2 * (1*2*2.25 + 2*3*6.25 + 1*3*16) = 180. alpha = 1 - (n - 1) * 17 / 180 = 1 - 85/180 = 19/36.
    assert krippendorff_alpha([{0: 1, 1: 2}, {0: 2, 1: 3}, {0: 3, 1: 3}], "ordinal", [1, 2, 3]) == pytest.approx(
        19 / 36
    )
    # the same data read as nominal: o_ck off-diagonal = 4, n1 n2 + n1 n3 + n2 n3 = 2 + 3 + 6 = 11 (x2 ordered)
    # alpha = 1 - 5 * 4 / 22 = 1/11: the ordinal alpha credits the near misses, the nominal one does not
    assert krippendorff_alpha([{0: 1, 1: 2}, {0: 2, 1: 3}, {0: 3, 1: 3}], "nominal", [1, 2, 3]) == pytest.approx(1 / 11)


def test_alpha_is_undefined_without_shared_values_or_variation():
    assert krippendorff_alpha([{0: 1}, {1: 2}], "nominal", [1, 2]) is None  # nothing pairable
    assert krippendorff_alpha([{0: 1, 1: 1}, {0: 1, 1: 1}], "nominal", [1, 2]) is None  # 0/0: no variation


def test_percent_agreement_and_fleiss_kappa_by_hand():
    # unit 1: 3 coders all agree (3/3 pairs); unit 2: votes 1, 1, 2 (1 of 3 pairs); unit 3: 2 coders differ (0/1)
    units = [{0: 1, 1: 1, 2: 1}, {0: 1, 1: 1, 2: 2}, {0: 1, 1: 2}]
    assert percent_agreement(units) == pytest.approx((1 + 1 / 3 + 0) / 3)
    # votes: six 1s, two 2s -> chance agreement (6/8)^2 + (2/8)^2 = 0.625
    assert fleiss_kappa(units, [1, 2]) == pytest.approx(((4 / 3) / 3 - 0.625) / (1 - 0.625))
    assert percent_agreement([{0: 1}]) is None


def test_agreement_on_shared_bank_prompts_overall_and_per_annotator(pref_store):
    wang, li = (pref_store.add_annotator(n, "a-long-password") for n in ("wang", "li"))
    prompts = [add_bank_prompt(pref_store, f"题库问题 {i}") for i in range(3)]
    # panels shuffled per annotator: wang sees dpo in A, li sees it in B. Both prefer dpo on prompts 0 and 1;
    # on prompt 2 li prefers sft. Nominal values (first = r1/dpo, sorted by checkpoint id): units (1,1) (1,1)
    # (1,2): o11 = 4, o12 = o21 = 1, n1 = 5, n2 = 1, n = 6 -> alpha = 1 - 5 * 2 / (2 * 5 * 1) = 0, although
    # 2 of 3 units agree: nearly every vote is for dpo, so agreeing is what chance predicts.
    for i, prompt in enumerate(prompts):
        judge(pref_store, wang, prompt, ["r1/dpo", "r1/sft"], choice="A")
        judge(pref_store, li, prompt, ["r1/sft", "r1/dpo"], choice="A" if i == 2 else "B")
    agreement = pref_store.leaderboard(rounds=0).agreement
    pairwise = agreement.by_kind["pairwise"]
    assert (pairwise.units, pairwise.annotators, pairwise.level) == (3, 2, "nominal")
    assert pairwise.percent == pytest.approx(2 / 3) and agreement.percent == pytest.approx(2 / 3)
    assert pairwise.alpha == pytest.approx(0.0, abs=1e-12) and agreement.alpha == pairwise.alpha
    assert (agreement.comparisons, agreement.items) == (3, 3)
    assert agreement.by_kind["ranking"].units == 0 and agreement.by_kind["ranking"].alpha is None
    per = {a.name: a for a in agreement.annotators}
    assert per["wang"].units == 3 and per["wang"].percent == pytest.approx(2 / 3)
    assert per["li"].alpha["pairwise"] == pytest.approx(0.0, abs=1e-12)


def test_units_are_the_same_prompt_with_the_same_contestants(pref_store):
    wang, li, zhao = (pref_store.add_annotator(n, "a-long-password") for n in ("wang", "li", "zhao"))
    shared = add_bank_prompt(pref_store, "高血压患者如何用药？")
    judge(pref_store, wang, shared, ["r1/dpo", "r1/sft"], choice="A")
    judge(pref_store, li, shared, ["r1/dpo", "r1/base"], choice="B")  # other contestants: not the same unit
    judge(pref_store, zhao, shared, ["r1/dpo", "r1/sft"], choice="A", bank=False)  # free chat, same text: no unit
    agreement = pref_store.leaderboard(rounds=0).agreement
    assert agreement.items == 0 and agreement.percent is None and agreement.alpha is None
    assert agreement.annotators == []

    judge(pref_store, zhao, shared, ["r1/sft", "r1/dpo"], choice="B")  # now it is: zhao agrees with wang
    agreement = pref_store.leaderboard(rounds=0).agreement
    assert agreement.items == 1 and agreement.percent == 1.0
    assert {a.name for a in agreement.annotators} == {"wang", "zhao"}
    # an annotator's last verdict on a unit counts: zhao changes their mind
    judge(pref_store, zhao, shared, ["r1/dpo", "r1/sft"], choice="B")
    assert pref_store.leaderboard(rounds=0).agreement.percent == 0.0


def test_ranking_and_score_agreement_is_ordinal(pref_store):
    wang, li = (pref_store.add_annotator(n, "a-long-password") for n in ("wang", "li"))
    prompt = add_bank_prompt(pref_store, "儿童发热怎么办？")
    three = ["r1/dpo", "r1/sft", "r1/base"]
    # wang: dpo 1, sft 2, base 3; li (panels in another order): dpo 1, base 2, sft 3
    judge(
        pref_store,
        wang,
        prompt,
        three,
        ranking={"A": 1, "B": 2, "C": 3},
        scores={"A": {"safety": 5, "fluency": 4}, "B": {"safety": 4}},
    )
    judge(
        pref_store,
        li,
        prompt,
        ["r1/base", "r1/dpo", "r1/sft"],
        ranking={"A": 2, "B": 1, "C": 3},
        scores={"B": {"safety": 5, "fluency": 3}, "C": {"safety": 3}},
    )
    agreement = pref_store.leaderboard(rounds=0).agreement
    ranking = agreement.by_kind["ranking"]
    # units (checkpoint: wang, li): dpo (1,1), sft (2,3), base (3,2). Coincidences: o11 = 2, o23 = o32 = 2;
    # n1 = 2, n2 = 2, n3 = 2, n = 6. delta23 = (4 - 2)^2 = 4, delta12 = 4, delta13 = (6 - 2)^2 = 16.
    # observed 4 * 4 = 16; expected 2 * (4*4 + 4*4 + 4*16) = 192; alpha = 1 - 5 * 16 / 192 = 7/12
    assert (ranking.units, ranking.level) == (3, "ordinal")
    assert ranking.alpha == pytest.approx(7 / 12) and ranking.percent == pytest.approx(1 / 3)
    scores = agreement.by_kind["scores"]
    # units: (dpo, safety) (5,5), (sft, safety) (4,3), (dpo, fluency) (4,3)
    assert scores.units == 3 and scores.percent == pytest.approx(1 / 3)
    assert set(agreement.criteria_alpha) == {"safety", "fluency"}
    # fluency: one unit (4,3): n = 2, o34 = o43 = 1, n3 = n4 = 1 -> alpha = 1 - (n - 1) * 2 delta / (2 delta) = 0
    assert agreement.criteria_alpha["fluency"] == pytest.approx(0.0, abs=1e-12)
    # safety units (5,5), (4,3): n3 = 1, n4 = 1, n5 = 2, n = 4; o55 = 2, o34 = o43 = 1.
    # delta34 = (2 - 1)^2 = 1, delta45 = (3 - 1.5)^2 = 2.25, delta35 = (4 - 1.5)^2 = 6.25.
    # observed 2 * 1 = 2; expected 2 * (1*1*1 + 1*2*2.25 + 1*2*6.25) = 36; alpha = 1 - 3 * 2 / 36 = 5/6
    assert agreement.criteria_alpha["safety"] == pytest.approx(5 / 6)


def test_each_pair_on_a_bank_prompt_carries_its_agreement(pref_store):
    wang, li, zhao = (pref_store.add_annotator(n, "a-long-password") for n in ("wang", "li", "zhao"))
    prompt, lonely = add_bank_prompt(pref_store, "胃痛的原因？"), add_bank_prompt(pref_store, "咳嗽两周怎么办？")
    _, a = judge(pref_store, wang, prompt, ["r1/dpo", "r1/sft"], choice="A")
    _, b = judge(pref_store, li, prompt, ["r1/sft", "r1/dpo"], choice="B")
    _, c = judge(pref_store, zhao, prompt, ["r1/dpo", "r1/sft"], choice="B")  # dissents
    _, alone = judge(pref_store, wang, lonely, ["r1/dpo", "r1/sft"], choice="A")
    _, free = judge(pref_store, wang, prompt, ["r1/dpo", "r1/sft"], choice="A", bank=False)
    _, fixed = judge(pref_store, li, lonely, ["r1/dpo", "r1/base"], correction="多喝水，观察体温，必要时就医。")

    agreement = pref_store.pair_agreement()
    assert agreement[a.pair_ids[0]] == (pytest.approx(2 / 3), 3)
    assert agreement[b.pair_ids[0]] == (pytest.approx(2 / 3), 3)
    assert agreement[c.pair_ids[0]] == (pytest.approx(1 / 3), 3)
    assert agreement[alone.pair_ids[0]] == (None, 1)
    assert free.pair_ids[0] not in agreement  # not on a bank prompt
    assert all(agreement[p] == (None, 1) for p in fixed.pair_ids)  # a correction: nobody else judged it
    assert len(agreement) == 3 + 1 + 2


def test_pair_agreement_counts_rankings_of_the_same_two_checkpoints(pref_store):
    wang, li = (pref_store.add_annotator(n, "a-long-password") for n in ("wang", "li"))
    prompt = add_bank_prompt(pref_store, "失眠怎么调理？")
    _, vote = judge(pref_store, wang, prompt, ["r1/dpo", "r1/sft"], choice="A")
    _, ranking = judge(pref_store, li, prompt, ["r1/sft", "r1/base", "r1/dpo"], ranking={"A": 2, "B": 3, "C": 1})
    agreement = pref_store.pair_agreement()
    assert agreement[vote.pair_ids[0]] == (1.0, 2)
    values = [agreement[p] for p in ranking.pair_ids]
    assert values.count((None, 1)) == 2 and values.count((1.0, 2)) == 1  # only dpo over sft was judged twice


def test_agreement_of_random_votes_is_near_zero():
    rng = np.random.default_rng(0)
    units = [{a: int(rng.integers(0, 3)) for a in range(3)} for _ in range(400)]
    assert abs(krippendorff_alpha(units, "nominal", [0, 1, 2])) < 0.05
    assert percent_agreement(units) == pytest.approx(1 / 3, abs=0.03)
