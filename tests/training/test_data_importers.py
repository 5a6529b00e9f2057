"""The importers read the public formats users already have, and report bad lines with file and line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.errors import UserError
from training.data import importers
from training.data.importers import LineErrors

DATA = Path(__file__).parents[1] / "fixtures" / "data"


def test_pretraining_text_txt_is_one_document_per_line():
    docs = importers.read_pretraining_text(DATA / "pretrain.txt", LineErrors())
    assert len(docs) == 3  # the blank line is no document
    assert docs[0]["text"].startswith("高血压是以体循环动脉血压持续升高")
    assert {d["source"] for d in docs} == {"user_text"}


def test_pretraining_text_jsonl_reads_the_text_field():
    docs = importers.read_pretraining_text(DATA / "pretrain.jsonl", LineErrors())
    assert [d["text"][:5] for d in docs] == ["缺铁性贫血", "幽门螺杆菌"]


def test_alpaca_becomes_messages_with_history_system_and_input():
    records = importers.read_alpaca(DATA / "alpaca.jsonl", LineErrors())
    assert len(records) == 3
    first, with_input, with_history = (r["messages"] for r in records)
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert with_input[0]["content"] == "请解释下面这个医学术语。\n心肌梗死"
    assert [m["role"] for m in with_history] == ["system", "user", "assistant", "user", "assistant"]
    assert with_history[1]["content"] == "流感和普通感冒有什么区别？"
    assert with_history[-1]["content"].startswith("保持良好的手卫生")


def test_sharegpt_maps_human_gpt_system_roles():
    records = importers.read_sharegpt(DATA / "sharegpt.jsonl", LineErrors())
    assert [m["role"] for m in records[1]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert records[0]["messages"][1]["content"].startswith("长期严重缺乏维生素C")
    assert {r["source"] for r in records} == {"sharegpt"}


def test_preference_pairs_in_all_three_published_styles():
    pairs = importers.read_preference_pairs(DATA / "preference.jsonl", LineErrors())
    assert len(pairs) == 3
    medicalgpt, question, alpaca = pairs
    assert medicalgpt["prompt"] == [{"role": "user", "content": "发烧到39度应该怎么办？"}]
    assert question["chosen"][0]["content"].startswith("应当限制食盐摄入")
    assert question["rejected"] == [{"role": "assistant", "content": "高血压患者饮食上没有什么需要注意的。"}]
    assert alpaca["prompt"][0]["content"] == "判断下面的说法是否正确。\n抗生素可以治疗普通感冒。"
    assert all(p["pair_id"].startswith("imp-") for p in pairs)
    assert len({p["pair_id"] for p in pairs}) == 3
    # content-derived ids: the same file gives the same ids
    assert [p["pair_id"] for p in importers.read_preference_pairs(DATA / "preference.jsonl", LineErrors())] == [
        p["pair_id"] for p in pairs
    ]


def test_ceval_csv_exam():
    items = importers.read_exam(DATA / "clinical_medicine_dev.csv", LineErrors())
    assert len(items) == 3
    assert items[0] == {
        "id": "clinical_medicine_dev-0",
        "question": "坏血病是由于缺乏下列哪种维生素引起的？",
        "options": {"A": "维生素A", "B": "维生素B1", "C": "维生素C", "D": "维生素D"},
        "answer": "C",
        "subject": "clinical_medicine_dev",
    }


def test_cmexam_options_are_parsed_and_multiple_answer_questions_left_out():
    errors = LineErrors()
    items = importers.read_exam(DATA / "cmexam.csv", errors)
    assert [it["answer"] for it in items] == ["B", "C"]
    assert items[0]["options"] == {"A": "肝脏", "B": "皮肤", "C": "肺", "D": "心脏", "E": "大脑"}
    assert items[0]["subject"] == "基础医学"
    assert errors.unsupported == {"multiple-answer exam questions": 1}
    assert errors.problems == []  # left out on purpose, not malformed


def test_huatuo_qa_single_and_nested_fields():
    lite = importers.read_qa(DATA / "huatuo_lite.jsonl", LineErrors())
    assert lite[1] == {
        "id": "huatuo_lite-2",
        "messages": [{"role": "user", "content": "得了水痘需要隔离吗？"}],
        "reference": "水痘具有传染性，患者应隔离至全部皮疹结痂为止。",
    }
    encyclopedia = importers.read_qa(DATA / "huatuo_encyclopedia.jsonl", LineErrors())
    assert encyclopedia[0]["messages"][0]["content"] == "什么是痛风？"
    assert encyclopedia[0]["reference"].startswith("痛风是嘌呤代谢紊乱")


def test_collected_pairs_keep_split_source_pair_id_and_provenance():
    rows = importers.read_collected_pairs(DATA / "collected_pairs.jsonl", LineErrors())
    assert [split for split, _ in rows] == ["train", "heldout"]
    pair = rows[0][1]
    assert pair["source"] == "clinician" and pair["pair_id"] == "clin-fixture-train-1"
    assert pair["provenance"]["annotator"] == "pseudo-0001"
    assert "split" not in pair


BAD_LINES = [
    ("alpaca.jsonl", importers.read_alpaca, '{"instruction": "缺少回答"}', "missing field 'output'"),
    ("alpaca.jsonl", importers.read_alpaca, '{"instruction": "断开的 JSON", ', "not valid JSON"),
    (
        "sharegpt.jsonl",
        importers.read_sharegpt,
        '{"conversations": [{"from": "gpt", "value": "先说话的是模型"}]}',
        "expected 'user'",
    ),
    (
        "preference.jsonl",
        importers.read_preference_pairs,
        '{"question": "相同的回答", "response_chosen": "一样", "response_rejected": "一样"}',
        "the same answer",
    ),
    ("huatuo_lite.jsonl", importers.read_qa, '{"question": "没有答案的问题"}', "missing field 'answer'"),
    (
        "collected_pairs.jsonl",
        importers.read_collected_pairs,
        '{"prompt": [{"role": "user", "content": "问"}], "chosen": [{"role": "assistant", "content": "甲"}], '
        '"rejected": [{"role": "assistant", "content": "乙"}], "pair_id": "x", "split": "test"}',
        "'split' must be",
    ),
]


@pytest.mark.parametrize("name, reader, bad, reason", BAD_LINES, ids=[f"{n}:{r}" for n, _, _, r in BAD_LINES])
def test_malformed_line_is_reported_with_file_and_line_then_skipped(tmp_path, name, reader, bad, reason):
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    lines.insert(1, bad)  # becomes line 2
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    errors = LineErrors()
    good = reader(path, errors)
    assert len(good) == len(lines) - 1
    assert len(errors.problems) == 1
    assert errors.problems[0].startswith(f"{path}:2: ") and reason in errors.problems[0]
    assert errors.summary()["by_file"] == {str(path): 1}

    with pytest.raises(UserError, match=rf"{path}:2: .*{reason}"):
        reader(path, LineErrors(strict=True))


def test_csv_rows_are_numbered_by_their_first_line(tmp_path):
    path = tmp_path / "cmexam.csv"
    text = (DATA / "cmexam.csv").read_text(encoding="utf-8")
    path.write_text(text.replace(",C,红细胞", ",F,红细胞"), encoding="utf-8")  # an answer with no option
    errors = LineErrors()
    importers.read_exam(path, errors)
    # the header is line 1 and each earlier row spans 5 lines, so the third row starts at line 12
    assert errors.problems == [f"{path}:12: answer 'F' is not one of the options ABCDE"]


def test_file_that_is_not_utf8_is_reported_by_line(tmp_path):
    path = tmp_path / "pretrain.txt"
    shutil.copy(DATA / "pretrain.txt", path)
    with open(path, "ab") as fh:
        fh.write("乱码".encode("gbk") + b"\n")
    errors = LineErrors()
    assert len(importers.read_pretraining_text(path, errors)) == 3
    assert errors.problems == [f"{path}:5: not UTF-8 text"]


def test_missing_file_is_a_one_line_error_naming_it(tmp_path):
    with pytest.raises(UserError) as err:
        importers.require_file(tmp_path / "nope.jsonl", "data.user_files.qa")
    message = str(err.value)
    assert "data.user_files.qa" in message and "nope.jsonl" in message and "\n" not in message
