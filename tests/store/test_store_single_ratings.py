"""Single-answer ratings: thumbs up or down on one answer with an optional correction and reason, stored
once per client id, checked like a judgment, and exported in the unpaired (KTO) format, de-identified,
only the new ones each time, with the bank prompt's split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from chimed import main as cli_main
from preference_store.exports.ratings import export_ratings, format_ratings_summary
from preference_store.records import ComparisonIn, JudgmentIn, RatingIn, ResponseIn
from preference_store.validation import PreferenceStoreError

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL

PROMPT = [{"role": "user", "content": "孩子发烧39度，需要马上去医院吗？"}]
ANSWERS = {"r1/sft": "先物理降温，观察精神状态。", "r1/dpo": "39度以上或精神差、抽搐时应及时就医，可按体重用退烧药。"}
RECORD_KEYS = {"prompt", "completion", "label", "source", "rating_id", "split", "provenance"}


def compare(store, annotator=None, messages=PROMPT, **kwargs):
    annotator = annotator or store.demo_annotator()
    return store.record_comparison(
        ComparisonIn(
            annotator.id,
            list(messages),
            [ResponseIn(c, text, serving={"mode": "exact"}) for c, text in ANSWERS.items()],
            **kwargs,
        )
    )


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_a_rating_is_stored_with_its_answer_and_a_resubmit_stores_nothing(pref_store):
    cmp = compare(pref_store)
    rating = RatingIn(cmp.id, cmp.annotator_id, "B", up=True, reason="处理得当", client_id="tab-1:B-up")
    first, again = pref_store.submit_rating(rating), pref_store.submit_rating(rating)
    assert (first.label, first.checkpoint_id, first.up, first.reason) == ("B", "r1/dpo", True, "处理得当")
    assert first.guideline_version == pref_store.guideline().version
    assert again.duplicate and not first.duplicate and again.id == first.id
    assert pref_store.ratings() == [first] and pref_store.ratings(comparison_id=cmp.id)[0].id == first.id
    assert pref_store.counts().ratings == 1 and pref_store.counts().judgments == 0
    assert pref_store.annotator_counts(cmp.annotator_id).ratings == 1


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(label="C"), "no answer 'C' to rate: this comparison has A, B"),
        (dict(up="yes"), "thumbs up \\(True\\) or down"),
        (dict(correction="   "), "the corrected answer is empty"),
        (dict(correction=ANSWERS["r1/sft"] + "\n"), "identical to answer A"),
        (dict(correction="答" * 8001), "over the limit of 8000"),
        (dict(guideline_version=9), "no guideline version 9"),
    ],
)
def test_bad_ratings_are_refused_and_leave_nothing_behind(pref_store, fields, match):
    cmp = compare(pref_store)
    rating = dict(comparison_id=cmp.id, annotator_id=cmp.annotator_id, label="A", up=False) | fields
    with pytest.raises(PreferenceStoreError, match=match):
        pref_store.submit_rating(RatingIn(**rating))
    assert pref_store.ratings() == []


def test_rating_a_queue_comparison_completes_its_assignment(pref_store, tmp_path):
    bank = tmp_path / "bank.jsonl"
    bank.write_text('{"prompt": "孩子发烧39度，需要马上去医院吗？", "split": "heldout"}\n', encoding="utf-8")
    pref_store.import_bank(bank)
    me = pref_store.demo_annotator()
    assignment = pref_store.next_assignment(me.id)
    cmp = compare(pref_store, me, assignment.bank_prompt.messages, assignment_id=assignment.id)
    assert cmp.bank_prompt_id == assignment.bank_prompt.id  # filled in from the assignment
    pref_store.submit_rating(RatingIn(cmp.id, me.id, "A", up=False))
    assert [a.status for a in pref_store.assignments()] == ["done"]
    assert str(pref_store.queue_progress(me.id)) == "1 / 1"


def test_export_writes_the_unpaired_format_with_a_correction_as_a_desirable_record(pref_store, cfg, tmp_path):
    cmp = compare(pref_store)
    down = pref_store.submit_rating(
        RatingIn(
            cmp.id,
            cmp.annotator_id,
            "A",
            up=False,
            correction="体温39度时可用退烧药，若精神差、抽搐或持续高热应立即就医。",
        )
    )
    up = pref_store.submit_rating(RatingIn(cmp.id, cmp.annotator_id, "B", up=True))
    summary = export_ratings(cfg, out=tmp_path / "ratings.jsonl", store=pref_store)
    records = read(tmp_path / "ratings.jsonl")
    assert summary.rating_ids == [down.id, up.id] and summary.records == len(records) == 3
    assert summary.sha256 == hashlib.sha256((tmp_path / "ratings.jsonl").read_bytes()).hexdigest()
    for record in records:
        assert set(record) == RECORD_KEYS and record["prompt"] == PROMPT and record["source"] == "clinician"
        assert [m["role"] for m in record["completion"]] == ["assistant"]
        assert record["split"] in ("train", "heldout") and record["provenance"]["comparison_id"] == cmp.id
    answer, correction, liked = records
    assert (answer["completion"][0]["content"], answer["label"]) == (ANSWERS["r1/sft"], False)
    assert answer["provenance"]["checkpoint"] == "r1/sft" and answer["provenance"]["serving"] == {"mode": "exact"}
    assert correction["label"] is True and correction["rating_id"] == down.id
    assert correction["completion"][0]["content"].startswith("体温39度时可用退烧药")
    assert (correction["provenance"]["completion_of"], correction["provenance"]["checkpoint"]) == ("correction", None)
    assert (liked["completion"][0]["content"], liked["label"]) == (ANSWERS["r1/dpo"], True)


def test_a_rated_empty_answer_is_left_out_and_counted_its_correction_kept(pref_store, cfg, tmp_path):
    annotator = pref_store.demo_annotator()
    cmp = pref_store.record_comparison(
        ComparisonIn(annotator.id, list(PROMPT), [ResponseIn("r1/sft", ""), ResponseIn("r1/dpo", ANSWERS["r1/dpo"])])
    )
    fixed = pref_store.submit_rating(
        RatingIn(cmp.id, annotator.id, "A", up=False, correction=ANSWERS["r1/dpo"] + "必要时复诊。")
    )
    liked = pref_store.submit_rating(RatingIn(cmp.id, annotator.id, "B", up=True))
    summary = export_ratings(cfg, out=tmp_path / "ratings.jsonl", store=pref_store)
    records = read(tmp_path / "ratings.jsonl")
    assert summary.rating_ids == [fixed.id, liked.id] and summary.empty_answers == 1 and summary.records == 2
    assert [(r["rating_id"], r["provenance"]["completion_of"], r["label"]) for r in records] == [
        (fixed.id, "correction", True),
        (liked.id, "answer", True),
    ]
    assert all(r["completion"][0]["content"].strip() for r in records)
    assert "left out because the rated answer is empty: 1" in format_ratings_summary(summary)
    assert export_ratings(cfg, out=tmp_path / "again.jsonl", store=pref_store).path is None  # handled

    # a thumbs-down on an empty answer alone: no file, but logged as handled, so no later export counts it again
    other = pref_store.record_comparison(
        ComparisonIn(annotator.id, list(PROMPT), [ResponseIn("r1/sft", ""), ResponseIn("r1/dpo", ANSWERS["r1/dpo"])])
    )
    pref_store.submit_rating(RatingIn(other.id, annotator.id, "A", up=False))
    alone = export_ratings(cfg, out=tmp_path / "alone.jsonl", store=pref_store)
    assert (alone.path, alone.records, alone.empty_answers, alone.export_id is not None) == (None, 0, 1, True)
    assert not (tmp_path / "alone.jsonl").exists()
    assert "left out because the rated answer is empty: 1 (logged as handled)" in format_ratings_summary(alone)
    later = export_ratings(cfg, out=tmp_path / "later.jsonl", store=pref_store)
    assert (later.rating_ids, later.empty_answers) == ([], 0)


def test_only_new_ratings_are_exported_next_time_and_the_export_is_logged(pref_store, cfg, tmp_path):
    cmp = compare(pref_store)
    pref_store.submit_rating(RatingIn(cmp.id, cmp.annotator_id, "A", up=False))
    first = export_ratings(cfg, store=pref_store)
    assert first.path.parent == cfg.collected_ratings_dir and first.export_id is not None
    assert export_ratings(cfg, store=pref_store).path is None  # nothing new
    newer = pref_store.submit_rating(RatingIn(cmp.id, cmp.annotator_id, "B", up=True))
    second = export_ratings(cfg, store=pref_store)
    assert second.rating_ids == [newer.id] and len(read(second.path)) == 1
    assert len(read(export_ratings(cfg, out=tmp_path / "all.jsonl", store=pref_store, include_exported=True).path)) == 2
    assert not list(cfg.collected_ratings_dir.glob(".*.tmp"))  # no partial file left behind
    with pytest.raises(Exception, match="exists already"):
        export_ratings(cfg, out=second.path, store=pref_store, include_exported=True)


def test_exported_ratings_are_deidentified_and_name_annotators_by_pseudonym(pref_store, cfg, tmp_path):
    wang = pref_store.add_annotator("dr_wang", "pw")
    cmp = compare(pref_store, wang, [{"role": "user", "content": "患者张三，手机13800000000，咳嗽两周怎么办？"}])
    pref_store.submit_rating(
        RatingIn(cmp.id, wang.id, "A", up=False, correction="请患者李四，到呼吸科就诊，邮箱 ls@example.com。")
    )
    summary = export_ratings(cfg, out=tmp_path / "r.jsonl", store=pref_store)
    text = (tmp_path / "r.jsonl").read_text(encoding="utf-8")
    for secret in ("张三", "李四", "13800000000", "ls@example.com", "dr_wang"):
        assert secret not in text
    assert summary.redactions == {"name": 2, "phone": 1, "email": 1}
    assert {r["provenance"]["annotator"] for r in read(tmp_path / "r.jsonl")} == {pref_store.pseudonym(wang.id)}


def test_export_prefs_writes_pairs_and_ratings_each_in_its_bank_prompts_split(pref_store, cfg, tmp_path, capsys):
    bank = tmp_path / "bank.jsonl"
    bank.write_text(
        "".join(
            json.dumps({"prompt": f"第{i}题：胸闷气短怎么办？", "split": split}, ensure_ascii=False) + "\n"
            for i, split in enumerate(["heldout", "train"] * 4)
        ),
        encoding="utf-8",
    )
    pref_store.import_bank(bank)
    me = pref_store.demo_annotator()
    while (assignment := pref_store.next_assignment(me.id)) is not None:
        cmp = compare(pref_store, me, assignment.bank_prompt.messages, assignment_id=assignment.id)
        pref_store.submit_rating(RatingIn(cmp.id, me.id, "A", up=True))
        pref_store.submit_judgment(JudgmentIn(cmp.id, me.id, choice="B"))
    split_of = {p.prompt: p.split for p in pref_store.bank_prompts()}

    assert cli_main(["export-prefs", "--profile", "tiny", "--out", str(tmp_path / "pairs.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "exported 8 pairs (train 4, heldout 4)" in printed
    assert "exported 8 single-answer ratings as 8 unpaired records (train 4, heldout 4)" in printed
    pairs = read(tmp_path / "pairs.jsonl")
    ratings_file = tmp_path / "pairs.ratings.jsonl"  # beside --out: an export to inspect feeds no training folder
    assert not list(cfg.collected_ratings_dir.glob("*.jsonl"))
    for record in pairs + read(ratings_file):
        assert record["split"] == split_of[record["prompt"][-1]["content"]]
