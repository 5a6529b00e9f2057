"""export-prefs: de-identified pairs in the dpo.jsonl format with provenance, split by comparison,
deduplicated, only what is new, and logged with the file's sha256."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chimed import main as cli_main
from core.config import load_config
from core.errors import UserError
from preference_store.deid.detect import deidentify
from preference_store.exports.pairs import export_pairs, format_summary
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL

CASES = json.loads((Path(__file__).parents[1] / "fixtures" / "store" / "deid_cases.json").read_text(encoding="utf-8"))
RECORD_KEYS = {"prompt", "chosen", "rejected", "source", "pair_id", "split", "weight", "provenance"}
PROVENANCE_KEYS = {
    "pair_id",
    "judgment_id",
    "comparison_id",
    "judgment_kind",
    "annotator",
    "chosen_checkpoint",
    "rejected_checkpoint",
    "chosen_serving",
    "rejected_serving",
    "judged_at",
    "agreement",
    "blind",
    "votes",
}


def judge(
    store, prompt, answers=("多休息，观察病情。", "应及时就医，明确病因。", "不清楚。"), annotator=None, **judgment
):
    annotator = annotator or store.demo_annotator()
    stages = ["r1/base", "r1/sft", "r1/dpo", "r1/cpt"]
    cmp = store.record_comparison(
        ComparisonIn(
            annotator.id,
            [{"role": "user", "content": prompt}],
            [ResponseIn(stages[i], text) for i, text in enumerate(answers)],
        )
    )
    if not judgment:
        judgment = {"ranking": {label: i + 1 for i, label in enumerate("ABCD"[: len(answers)])}}
    return cmp, store.submit_judgment(JudgmentIn(cmp.id, annotator.id, **judgment))


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_records_are_dpo_format_with_provenance(pref_store, cfg, tmp_path):
    cmp, out = judge(pref_store, "头痛伴发热三天，应该怎么办？")
    summary = export_pairs(cfg, out=tmp_path / "pairs.jsonl", store=pref_store)
    records = read(tmp_path / "pairs.jsonl")
    assert len(records) == 3 and sorted(summary.pair_ids) == sorted(out.pair_ids)
    for record in records:
        assert set(record) == RECORD_KEYS and set(record["provenance"]) == PROVENANCE_KEYS
        assert record["prompt"] == [{"role": "user", "content": "头痛伴发热三天，应该怎么办？"}]
        assert [m["role"] for m in record["chosen"]] == ["assistant"] == [m["role"] for m in record["rejected"]]
        assert record["source"] == "clinician" and record["pair_id"].startswith("clin-")
        prov = record["provenance"]
        assert prov["pair_id"] == record["pair_id"] and prov["judgment_id"] == out.id
        assert prov["comparison_id"] == cmp.id and prov["judgment_kind"] == "ranking"
        assert datetime.fromisoformat(prov["judged_at"]) == out.created
        assert prov["votes"] == {"for": 1, "against": 0, "ties": 0}  # one annotator, one vote per pair
        assert record["chosen"][0]["content"] == next(
            r.text for r in cmp.responses if r.checkpoint_id == prov["chosen_checkpoint"]
        )
        assert record["rejected"][0]["content"] == next(
            r.text for r in cmp.responses if r.checkpoint_id == prov["rejected_checkpoint"]
        )
    best_first = [r.checkpoint_id for r in cmp.responses]  # the ranking put A first, then B, then C
    assert sorted(
        (r["provenance"]["chosen_checkpoint"], r["provenance"]["rejected_checkpoint"]) for r in records
    ) == sorted([(best_first[0], best_first[1]), (best_first[0], best_first[2]), (best_first[1], best_first[2])])
    data = (tmp_path / "pairs.jsonl").read_bytes()
    assert summary.sha256 == hashlib.sha256(data).hexdigest()
    assert pref_store.counts().exported_pairs == 3


def test_annotators_appear_only_as_stable_pseudonyms(pref_store, cfg, tmp_path):
    wang = pref_store.add_annotator("dr_wang", "pw")
    li = pref_store.add_annotator("dr_li", "pw")
    judge(pref_store, "咳嗽一周怎么办？", annotator=wang)
    judge(pref_store, "发热38.5度需要吃药吗？", annotator=wang)
    judge(pref_store, "腹泻应注意什么？", annotator=li)
    export_pairs(cfg, out=tmp_path / "pairs.jsonl", store=pref_store)
    text = (tmp_path / "pairs.jsonl").read_text(encoding="utf-8")
    assert "dr_wang" not in text and "dr_li" not in text
    by_prompt = {r["prompt"][0]["content"]: r["provenance"]["annotator"] for r in read(tmp_path / "pairs.jsonl")}
    assert by_prompt["咳嗽一周怎么办？"] == by_prompt["发热38.5度需要吃药吗？"] != by_prompt["腹泻应注意什么？"]


def test_correction_pairs_name_no_chosen_checkpoint(pref_store, cfg, tmp_path):
    judge(
        pref_store,
        "感冒需要用抗生素吗？",
        answers=("需要。", "不一定。"),
        correction="普通感冒多由病毒引起，一般不需要抗生素；合并细菌感染时遵医嘱使用。",
    )
    records = read(export_pairs(cfg, out=tmp_path / "p.jsonl", store=pref_store).path)
    assert len(records) == 2
    assert {r["provenance"]["chosen_checkpoint"] for r in records} == {None}
    assert {r["provenance"]["rejected_checkpoint"] for r in records} == {"r1/base", "r1/sft"}
    assert {r["chosen"][0]["content"] for r in records} == {
        "普通感冒多由病毒引起，一般不需要抗生素；合并细菌感染时遵医嘱使用。"
    }


@pytest.mark.parametrize("case", CASES["redact"], ids=lambda c: c["text"][:12])
def test_identifiers_are_redacted(case):
    found = Counter()
    assert deidentify(case["text"], found) == case["expected"]
    assert dict(found) == case["kinds"]


@pytest.mark.parametrize("text", CASES["keep"])
def test_ordinary_medical_text_is_left_alone(text):
    found = Counter()
    assert deidentify(text, found) == text and not found


def test_export_deidentifies_prompts_answers_and_corrections_and_says_what(pref_store, cfg, tmp_path, capsys):
    case = CASES["redact"][-1]  # name, phone and e-mail in one prompt
    judge(
        pref_store,
        case["text"],
        answers=("请联系13800000000预约。", "建议就医。"),
        correction="姓名：王五，请到门诊就诊，邮箱 ww@example.com 不要公开。",
    )
    cli_main(["export-prefs", "--profile", "tiny", "--out", str(tmp_path / "p.jsonl")])
    printed = capsys.readouterr().out
    text = (tmp_path / "p.jsonl").read_text(encoding="utf-8")
    for secret in ("张三", "王五", "13800000000", "zs@example.com", "ww@example.com"):
        assert secret not in text
    record = read(tmp_path / "p.jsonl")[0]
    assert record["prompt"][0]["content"] == case["expected"]
    assert record["chosen"][0]["content"] == "姓名：[NAME]，请到门诊就诊，邮箱 [EMAIL] 不要公开。"
    assert "exported 2 pairs" in printed
    # prompt + correction + one answer, counted once each, per category with its label
    assert "redacted: 姓名 name 2, 电话/传真 phone/fax 2, 电子邮箱 e-mail 2" in printed


def test_heldout_is_chosen_by_comparison_and_is_deterministic(pref_store, chimed_home, tmp_path):
    cfg = load_config("tiny", ["store.heldout_share=0.5"])
    for i in range(30):
        judge(
            pref_store,
            f"第{i}个问题：失眠应该怎么调理？",
            answers=("规律作息。", "睡前少用手机。", "喝咖啡。", "不知道。"),
        )
    first = export_pairs(cfg, out=tmp_path / "a.jsonl", store=pref_store)
    records = read(first.path)
    assert len(records) == 30 * 6
    split_of = {}
    for r in records:
        split_of.setdefault(r["provenance"]["comparison_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())  # never split across train and heldout
    heldout = sum(s == {"heldout"} for s in split_of.values())
    assert 5 <= heldout <= 25
    assert first.heldout == 6 * heldout and first.train == 6 * (30 - heldout)
    again = export_pairs(cfg, out=tmp_path / "b.jsonl", include_exported=True, store=pref_store)
    assert [(r["pair_id"], r["split"]) for r in read(again.path)] == [(r["pair_id"], r["split"]) for r in records]
    none_held = export_pairs(
        load_config("tiny", ["store.heldout_share=0"]),
        out=tmp_path / "c.jsonl",
        include_exported=True,
        store=pref_store,
    )
    assert none_held.heldout == 0 and none_held.train == 180


def test_only_new_pairs_are_exported_and_duplicates_left_out(pref_store, cfg, tmp_path):
    judge(pref_store, "胃痛怎么办？")
    first = export_pairs(cfg, out=tmp_path / "1.jsonl", store=pref_store)
    assert len(first.pair_ids) == 3
    nothing = export_pairs(cfg, out=tmp_path / "2.jsonl", store=pref_store)
    assert nothing.path is None and not (tmp_path / "2.jsonl").exists()

    # the same prompt and answers judged the same way again: same content, left out
    judge(pref_store, "胃痛怎么办？")
    judge(pref_store, "牙痛怎么办？")
    second = export_pairs(cfg, out=tmp_path / "3.jsonl", store=pref_store)
    assert second.duplicates == 3 and len(second.pair_ids) == 3
    assert {r["prompt"][0]["content"] for r in read(second.path)} == {"牙痛怎么办？"}
    assert export_pairs(cfg, out=tmp_path / "4.jsonl", store=pref_store).path is None
    assert pref_store.counts().exported_pairs == 6


def test_pairs_whose_two_answers_are_the_same_text_are_left_out_once(pref_store, cfg, tmp_path, capsys):
    # two checkpoints answered alike: a ranking of three gives A>B (the twins), A>C and B>C (the same pair)
    judge(pref_store, "咽喉痛怎么办？", answers=("多喝温水，必要时就医。", "多喝温水，必要时就医。", "不清楚。"))
    summary = export_pairs(cfg, out=tmp_path / "1.jsonl", store=pref_store)
    assert (summary.same_text, summary.duplicates, len(summary.pair_ids)) == (1, 1, 1)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in read(summary.path)] == [
        ("多喝温水，必要时就医。", "不清楚。")
    ]
    assert export_pairs(cfg, out=tmp_path / "2.jsonl", store=pref_store).path is None  # handled, not retried
    assert pref_store.counts().exported_pairs == 1


def test_pairs_with_an_empty_answer_are_left_out_counted_and_not_retried(pref_store, cfg, tmp_path):
    # a model that said nothing (its answer is stored as the empty text it was): the builder would refuse the pair
    judge(pref_store, "咽喉痛怎么办？", answers=("多喝温水，必要时就医。", "", "不清楚。"))
    summary = export_pairs(cfg, out=tmp_path / "1.jsonl", store=pref_store)
    assert (summary.empty_answer, len(summary.pair_ids)) == (2, 1)  # A>B and B>C have the empty answer
    assert "left out because one answer is empty: 2" in format_summary(summary)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in read(summary.path)] == [
        ("多喝温水，必要时就医。", "不清楚。")
    ]
    assert export_pairs(cfg, out=tmp_path / "2.jsonl", store=pref_store).path is None  # handled, not retried


def test_since_keeps_later_judgments_only(pref_store, cfg, tmp_path):
    judge(pref_store, "早先的问题：便秘怎么办？")
    middle = datetime.now(UTC)
    judge(pref_store, "后来的问题：口腔溃疡怎么办？")
    summary = export_pairs(cfg, out=tmp_path / "p.jsonl", since=middle.isoformat(), store=pref_store)
    assert {r["prompt"][0]["content"] for r in read(summary.path)} == {"后来的问题：口腔溃疡怎么办？"}
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert export_pairs(cfg, out=tmp_path / "q.jsonl", since=future, store=pref_store).path is None
    with pytest.raises(UserError, match="--since 'yesterday'"):
        export_pairs(cfg, out=tmp_path / "r.jsonl", since="yesterday", store=pref_store)


def test_default_output_goes_where_the_builder_reads_and_nothing_is_overwritten(pref_store, cfg, tmp_path, capsys):
    judge(pref_store, "过敏性鼻炎怎么预防？")
    assert cli_main(["export-prefs", "--profile", "tiny"]) == 0
    files = list(cfg.collected_pairs_dir.glob("*.jsonl"))
    assert len(files) == 1 and len(read(files[0])) == 3
    assert str(files[0]) in capsys.readouterr().out
    judge(pref_store, "荨麻疹怎么办？")
    assert cli_main(["export-prefs", "--profile", "tiny", "--out", str(files[0])]) == 2
    assert "exists already" in capsys.readouterr().err
    assert len(read(files[0])) == 3


def test_bank_pairs_carry_their_agreement_and_min_agreement_holds_back_contested_ones(
    pref_store, chimed_home, tmp_path
):
    # min_agreement on its own: with the default store.aggregate=majority the contested vote would be outvoted first
    cfg = load_config("tiny", ["store.min_agreement=0.5", "store.aggregate=all"])
    bank = tmp_path / "bank.jsonl"
    bank.write_text(
        '{"prompt": "高血压患者饮食上要注意什么？", "split": "heldout"}\n{"prompt": "糖尿病有哪些常见症状？"}\n',
        encoding="utf-8",
    )
    pref_store.import_bank(bank)
    first, second = pref_store.bank_prompts()
    answers = [ResponseIn("r1/sft", "多休息，观察病情。"), ResponseIn("r1/dpo", "应低盐饮食，规律监测血压。")]

    def vote(name, prompt, choice):
        me = pref_store.annotator_by_name(name) or pref_store.add_annotator(name, "a-long-test-password")
        made = pref_store.record_comparison(
            ComparisonIn(me.id, prompt.messages, list(answers), bank_prompt_id=prompt.id)
        )
        return pref_store.submit_judgment(JudgmentIn(made.id, me.id, choice=choice)).pair_ids[0]

    agreeing = [vote("a1", first, "B"), vote("a2", first, "B")]
    contested = vote("a3", first, "A")
    alone = vote("a1", second, "B")

    summary = export_pairs(cfg, out=tmp_path / "one.jsonl", store=pref_store)
    records = {r["pair_id"]: r for r in read(tmp_path / "one.jsonl")}
    # the two agreeing votes are the same pair (one written, one a duplicate); the contested one is held back
    assert set(records) == {agreeing[0], alone} and summary.duplicates == 1 and summary.low_agreement == 1
    assert records[agreeing[0]]["provenance"]["agreement"] == {"share": 2 / 3, "annotators": 3}
    assert records[agreeing[0]]["split"] == "heldout" and records[alone]["split"] == "train"
    assert records[alone]["provenance"]["agreement"] == {"share": None, "annotators": 1}
    assert "annotators agree less than store.min_agreement: 1" in format_summary(summary)

    # a fourth annotator sides with the contested vote: at 2 of 4 it reaches the threshold and is exported
    vote("a4", first, "A")
    again = export_pairs(cfg, out=tmp_path / "two.jsonl", store=pref_store)
    written = {r["pair_id"]: r for r in read(tmp_path / "two.jsonl")}
    assert contested in written and again.low_agreement == 0
    assert written[contested]["provenance"]["agreement"] == {"share": 0.5, "annotators": 4}


def test_an_export_for_inspection_does_not_starve_the_next_round(pref_store, cfg, tmp_path, capsys):
    """The starved round of issue 30: judgments -> export-prefs --out FILE -> the loop's export found nothing."""
    from chimed import export_clinician_pairs
    from preference_store.records import RatingIn

    cmp, judged = judge(pref_store, "失眠多梦怎么调理？")
    pref_store.submit_rating(RatingIn(cmp.id, pref_store.demo_annotator().id, "A", up=True))
    assert cli_main(["export-prefs", "--profile", "tiny", "--out", str(tmp_path / "look.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "exported 3 pairs" in printed and "not marked as exported" in printed
    assert len(read(tmp_path / "look.jsonl")) == 3 and len(read(tmp_path / "look.ratings.jsonl")) == 1
    assert pref_store.counts().exported_pairs == 0

    export_clinician_pairs(cfg)  # what train-all runs before it builds the data
    printed = capsys.readouterr().out
    [pairs_file] = cfg.collected_pairs_dir.glob("*.jsonl")
    [ratings_file] = cfg.collected_ratings_dir.glob("*.jsonl")
    assert sorted(r["pair_id"] for r in read(pairs_file)) == sorted(judged.pair_ids) and len(read(ratings_file)) == 1
    assert "preferences: 3 new clinician pairs go into this round" in printed

    export_clinician_pairs(cfg)  # the next round, with nothing new: it says so, and why
    assert (
        "0 clinician pairs go into this round although the store holds 1 judgment: "
        "3 already exported by an earlier export"
    ) in capsys.readouterr().out


def test_for_training_marks_what_the_file_holds(pref_store, cfg, tmp_path, capsys):
    judge(pref_store, "湿疹反复发作怎么办？")
    assert cli_main(["export-prefs", "--profile", "tiny", "--out", str(tmp_path / "t.jsonl"), "--for-training"]) == 0
    assert "not marked" not in capsys.readouterr().out and pref_store.counts().exported_pairs == 3
    assert export_pairs(cfg, store=pref_store).path is None
    assert cli_main(["export-prefs", "--profile", "tiny", "--for-training"]) == 2
    assert "--for-training goes with --out FILE" in capsys.readouterr().err
