"""The prompt bank: importing .jsonl and .csv banks, malformed lines reported as FILE:LINE with the rest
imported in one transaction, duplicates imported once and counted, one-line errors for a bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from core.errors import UserError
from preference_store.repository import bank as bank_module
from preference_store.validation import PreferenceStoreError

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL

FIXTURE = Path(__file__).parents[1] / "fixtures" / "bank" / "clinical_prompts.jsonl"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n",
        encoding="utf-8",
    )
    return path


def test_a_jsonl_bank_is_imported_with_history_tags_and_split(pref_store):
    summary = pref_store.import_bank(FIXTURE)
    assert (summary.bank, summary.imported, summary.duplicates, summary.errors) == ("clinical_prompts", 12, 0, [])
    prompts = pref_store.bank_prompts()
    assert [p.prompt for p in prompts][:2] == ["高血压患者饮食上要注意什么？", "糖尿病有哪些常见症状？"]  # file order
    anaemia = next(p for p in prompts if p.prompt == "贫血的常见原因有哪些？")
    assert anaemia.messages == [
        {"role": "user", "content": "贫血是什么意思？"},
        {"role": "assistant", "content": "贫血是指血液中红细胞数量或血红蛋白含量低于正常。"},
        {"role": "user", "content": "贫血的常见原因有哪些？"},
    ]
    assert anaemia.tags == ["血液"] and anaemia.source.endswith("clinical_prompts.jsonl:6")
    assert sum(p.split == "heldout" for p in prompts) == 6
    assert pref_store.bank_prompt(anaemia.id) == anaemia
    assert pref_store.counts().bank_prompts == 12


def test_a_csv_bank_with_semicolon_tags_and_a_json_history(pref_store, tmp_path):
    path = tmp_path / "ward.csv"
    path.write_text(
        "text,tags,split,history\n"
        "胸痛需要马上就医吗？,心血管;急症,heldout,\n"
        '"孩子发烧39度，\n需要吃退烧药吗？",儿科,,"[[""孩子发烧了"", ""量一下体温""]]"\n',
        encoding="utf-8",
    )
    summary = pref_store.import_bank(path, bank="ward-2024")
    assert (summary.bank, summary.imported, summary.errors) == ("ward-2024", 2, [])
    chest, child = pref_store.bank_prompts("ward-2024")
    assert (chest.tags, chest.split, chest.messages) == (
        ["心血管", "急症"],
        "heldout",
        [{"role": "user", "content": "胸痛需要马上就医吗？"}],
    )
    assert child.split == "train" and child.messages[:2] == [
        {"role": "user", "content": "孩子发烧了"},
        {"role": "assistant", "content": "量一下体温"},
    ]
    assert child.source.endswith("ward.csv:3")  # the row starts on line 3, though it spans two
    assert pref_store.bank_prompts("another bank") == []


def test_malformed_lines_are_reported_as_file_and_line_and_the_rest_is_imported(pref_store, tmp_path):
    path = write_jsonl(
        tmp_path / "bank.jsonl",
        [
            {"prompt": "腰痛怎么办？"},
            '{"prompt": "缺一个括号"',
            {"prompt": "   "},
            {"prompt": "咽痛发热怎么办？", "split": "test"},
            {"prompt": "头晕怎么办？", "history": [{"role": "user", "content": "我头晕"}]},
            ["not", "an", "object"],
            {"text": "失眠怎么调理？", "tags": "睡眠;中医"},
        ],
    )
    summary = pref_store.import_bank(path)
    assert summary.imported == 2 and summary.duplicates == 0
    assert [e.split(": ", 1)[0] for e in summary.errors] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    assert "not valid JSON" in summary.errors[0] and "no prompt" in summary.errors[1]
    assert "unknown split 'test'" in summary.errors[2] and "ends with a user message" in summary.errors[3]
    assert {p.prompt: p.tags for p in pref_store.bank_prompts()} == {
        "腰痛怎么办？": [],
        "失眠怎么调理？": ["睡眠", "中医"],
    }


def test_duplicates_in_the_file_and_across_files_are_imported_once_and_counted(pref_store, tmp_path):
    first = write_jsonl(
        tmp_path / "a.jsonl", [{"prompt": "便秘怎么办？"}, {"prompt": " 便秘怎么办？ "}, {"prompt": "口腔溃疡怎么办？"}]
    )
    once, again = pref_store.import_bank(first), pref_store.import_bank(first)
    assert (once.imported, once.duplicates) == (2, 1)  # spaces around a prompt do not make it another one
    assert (again.imported, again.duplicates) == (0, 3)
    second = write_jsonl(
        tmp_path / "b.jsonl",
        [
            {"prompt": "口腔溃疡怎么办？"},
            {"prompt": "湿疹怎么办？"},
            # the same question after another conversation is another prompt
            {"prompt": "便秘怎么办？", "history": [["我三天没排便", "多喝水"]]},
        ],
    )
    summary = pref_store.import_bank(second)
    assert (summary.imported, summary.duplicates) == (2, 1)
    assert len(pref_store.bank_prompts()) == 4


def test_an_import_that_fails_half_way_writes_nothing(pref_store, tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "bank.jsonl", [{"prompt": "咳嗽怎么办？"}, {"prompt": "发烧怎么办？"}])
    monkeypatch.setattr(bank_module, "new_id", lambda: "same-id")  # the second insert collides
    with pytest.raises(
        IntegrityError,
        match=r"UNIQUE constraint failed: bank_prompts\.id|"
        r'duplicate key value violates unique constraint "bank_prompts_pkey"',
    ):
        pref_store.import_bank(path)
    monkeypatch.undo()
    assert pref_store.bank_prompts() == []
    assert pref_store.import_bank(path).imported == 2


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("missing.jsonl", None, "no such bank file"),
        ("bank.txt", "高血压怎么办？\n", "a .jsonl or .csv file, not '.txt'"),
        ("bank.jsonl", b'{"prompt": "\xff\xfe"}\n', r"bank.jsonl:1: not UTF-8"),
        ("bank.csv", "question,answer\n头痛,休息\n", "needs a 'prompt' \\(or 'text'\\) column"),
    ],
)
def test_a_bad_bank_file_is_one_line_error_and_imports_nothing(pref_store, tmp_path, name, content, match):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=match) as err:
        pref_store.import_bank(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert pref_store.bank_prompts() == []


def test_only_admins_import_a_bank_from_the_app(pref_store):
    annotator = pref_store.add_annotator("dr_li", "pw")
    admin = pref_store.add_annotator("dr_wang", "pw", role="admin")
    with pytest.raises(PreferenceStoreError, match="only admins"):
        pref_store.import_bank(FIXTURE, imported_by=annotator.id)
    assert pref_store.import_bank(FIXTURE, imported_by=admin.id).imported == 12
