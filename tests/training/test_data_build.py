"""The ChiMed builder end to end: the tiny build, determinism, the entity split, user files and the
collected clinician pairs, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from chimed import main
from core.config import load_config
from core.sources import load_cmekg
from training.data.build import OUTPUTS, build_chimed, data_is_built
from training.data.knowledge import choose_entities, split_by_entity
from training.data.relations import RELATIONS

DATA = Path(__file__).parents[1] / "fixtures" / "data"


def read(home: Path, name: str) -> list[dict]:
    with open(home / "data" / "chimed" / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def user_turns(records: list[dict]) -> set[str]:
    return {m["content"] for r in records for m in (r.get("messages") or r["prompt"]) if m["role"] == "user"}


def exam_stems(entities) -> dict:
    """Each examined relation of these entities in the exam's wording -> (entity, relation key)."""
    return {
        rel.exam.format(e=e.name): (e, rel.key)
        for e in entities
        for rel in RELATIONS
        if rel.exam and rel.key in e.facts
    }


def small_config(**data):
    """The tiny profile shrunk further, for builds that test inputs rather than the sources."""
    cfg = load_config(
        "tiny",
        [
            "data.max_entities=60",
            "data.people_daily_max_docs=60",
            "data.reviews_max_docs=40",
            "data.general_eval_docs=10",
        ],
    )
    for key, value in data.items():
        setattr(cfg.data.user_files, key, value)
    return cfg


# --- the tiny build (shared, read-only) ----------------------------------------------------------


def test_tiny_build_writes_every_file_with_sane_counts(tiny_data_home):
    root = tiny_data_home / "data" / "chimed"
    for name in OUTPUTS + ["stats.json", "stats.md"]:
        assert (root / name).is_file(), name
    stats = json.loads((root / "stats.json").read_text(encoding="utf-8"))
    cpt, sft, dpo = (
        read(tiny_data_home, "cpt.jsonl"),
        read(tiny_data_home, "sft.jsonl"),
        read(tiny_data_home, "dpo.jsonl"),
    )

    assert stats["entities"]["selected"] == 400 and stats["entities"]["held_out"] == 40
    # CPT: two documents per entity plus general text near its share of the characters
    sources = {r["source"] for r in cpt}
    assert {"kg", "general_people_daily", "general_reviews"} <= sources
    general = sum(len(r["text"]) for r in cpt if r["source"].startswith("general"))
    assert 0.15 < general / sum(len(r["text"]) for r in cpt) < 0.3
    assert sum(r["source"] == "kg" for r in cpt) >= 700
    # SFT: QA, consultations (multi-turn) and general instructions, all chat messages
    assert {"kg_qa", "kg_consultation", "general_instruction"} <= {r["source"] for r in sft}
    assert all(r["messages"][-1]["role"] == "assistant" for r in sft)
    assert any(len(r["messages"]) == 4 for r in sft if r["source"] == "kg_consultation")
    assert len(sft) > 1500 and len(dpo) > 500
    # DPO: chosen differs from rejected, pair ids unique
    assert all(p["chosen"] != p["rejected"] for p in dpo)
    assert len({p["pair_id"] for p in dpo}) == len(dpo)
    # eval sets
    exam = read(tiny_data_home, "eval/exam.jsonl")
    assert len(exam) >= 80 and len(read(tiny_data_home, "eval/qa.jsonl")) >= 100
    assert len(read(tiny_data_home, "eval/general.jsonl")) == 40 and len(read(tiny_data_home, "eval/pref.jsonl")) >= 40
    assert read(tiny_data_home, "eval/pref_clinician.jsonl") == []
    assert all(len(set(q["options"].values())) == 4 and q["answer"] in "ABCD" for q in exam)
    assert len({q["answer"] for q in exam}) == 4  # the right letter is not always the same
    # stats: per-split tables, and a hash of each file that matches it
    assert stats["splits"]["sft"]["total"]["records"] == len(sft)
    assert stats["files"]["cpt.jsonl"]["records"] == len(cpt)
    from core.files import sha256_file

    assert all(stats["files"][name]["sha256"] == sha256_file(root / name) for name in OUTPUTS + ["stats.md"])
    md = (root / "stats.md").read_text(encoding="utf-8")
    assert "Table 1. ChiMed-CPT" in md and "Table 3. ChiMed-DPO" in md and "Decontamination" in md


def test_the_base_pretrains_on_the_general_pool_that_cpt_replays_and_never_on_held_out_text(tiny_data_home):
    base, cpt = read(tiny_data_home, "base.jsonl"), read(tiny_data_home, "cpt.jsonl")
    held_out = {r["text"] for r in read(tiny_data_home, "eval/general.jsonl")}
    assert {r["source"] for r in base} == {"general_people_daily", "general_reviews"}
    base_text = {r["text"] for r in base}
    cpt_general = [r["text"] for r in cpt if r["source"].startswith("general")]
    assert cpt_general and set(cpt_general) <= base_text  # ChiMed-CPT's general share is a replay
    assert len(base_text) > 3 * len(cpt_general)  # the base reads far more general text than CPT replays
    assert not base_text & held_out  # the perplexity documents stay unseen
    md = (tiny_data_home / "data" / "chimed" / "stats.md").read_text(encoding="utf-8")
    assert "`base.jsonl`" in md


def test_kg_text_is_prose_in_several_phrasings(tiny_data_home):
    kg = [r["text"] for r in read(tiny_data_home, "cpt.jsonl") if r["source"] == "kg"]
    relation_names = {name for relation in RELATIONS for name in relation.cmekg}
    assert not any(f"{name}：" in text or f"{name}:" in text for text in kg for name in relation_names)
    for relation in [r for r in RELATIONS if r.key in ("symptom", "department", "indication")]:
        used = {template for template in relation.statements if any(re.search(_pattern(template), text) for text in kg)}
        assert len(used) >= 2, relation.key  # the same fact, worded more than one way


def _pattern(template: str) -> str:
    return re.escape(template).replace(re.escape("{e}"), ".+?").replace(re.escape("{v}"), ".+?")


def test_eval_questions_never_appear_in_sft_or_dpo(tiny_data_home):
    exam = {q["question"] for q in read(tiny_data_home, "eval/exam.jsonl")}
    qa = read(tiny_data_home, "eval/qa.jsonl")
    qa_single = {it["messages"][0]["content"] for it in qa if len(it["messages"]) == 1}
    trained = user_turns(read(tiny_data_home, "sft.jsonl")) | user_turns(read(tiny_data_home, "dpo.jsonl"))
    assert exam and qa_single
    assert not exam & trained
    assert not qa_single & trained
    multi = {json.dumps(it["messages"], ensure_ascii=False) for it in qa if len(it["messages"]) > 1}
    sft_prefixes = {json.dumps(r["messages"][:3], ensure_ascii=False) for r in read(tiny_data_home, "sft.jsonl")}
    assert multi and not multi & sft_prefixes


def test_split_is_by_entity_and_the_exam_asks_what_cpt_states(tiny_data_home):
    cfg = load_config("tiny")
    train, held = split_by_entity(choose_entities(load_cmekg(), cfg.data), cfg.data)
    assert not {e.name for e in train} & {e.name for e in held}
    exam = read(tiny_data_home, "eval/exam.jsonl")
    kg_text = [r["text"] for r in read(tiny_data_home, "cpt.jsonl") if r["source"] == "kg"]
    stems = exam_stems(held)
    for q in exam:
        entity, key = stems[q["question"]]  # every question is about a held-out entity
        answer = q["options"][q["answer"]]
        assert answer in entity.facts[key]
        assert any(entity.name in text and answer in text for text in kg_text)  # CPT states the fact
        for letter, option in q["options"].items():
            if letter != q["answer"]:  # distractors: not true of the entity in any CMeKG relation
                assert not entity.is_true(key, option), (q["question"], option)


def test_training_splits_ask_and_reject_only_with_training_entities_facts(chimed_home):
    cfg = small_config()
    cfg.data.sft_exam_qa = True
    build_chimed(cfg)
    train, held = split_by_entity(choose_entities(load_cmekg(), cfg.data), cfg.data)
    train_values = {v for e in train for values in e.facts.values() for v in values}
    # solved exam-style questions in ChiMed-SFT: a training entity's examined relation, one of its values
    stems = exam_stems(train)
    exam_qa = [r for r in read(chimed_home, "sft.jsonl") if r["source"] == "kg_exam_qa"]
    assert len(exam_qa) == len(stems)
    for record in exam_qa:
        question, reply = (m["content"] for m in record["messages"])
        entity, key = stems[question]
        assert reply.endswith("。") and reply[:-1] in entity.facts[key]
    # a DPO training pair's wrong facts are another training entity's: no held-out fact is "rejected"
    held_only = {
        v
        for e in held
        for values in e.facts.values()
        for v in values
        if len(v) >= 2 and not any(v in t for t in train_values)
    }
    pairs = [p for p in read(chimed_home, "dpo.jsonl") if p["source"] == "kg_objective"]
    wrong = [(p["chosen"][-1]["content"], p["rejected"][-1]["content"]) for p in pairs]
    assert held_only and any(r not in c for c, r in wrong)  # some pairs state wrong facts
    leaked = {v for c, r in wrong for v in held_only if v in r and v not in c}
    assert not leaked


def test_same_config_and_seed_give_byte_identical_files(tiny_data_home, chimed_home):
    build_chimed(load_config("tiny"))
    first, second = tiny_data_home / "data" / "chimed", chimed_home / "data" / "chimed"
    for name in OUTPUTS + ["stats.json", "stats.md"]:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


# --- user files, collected pairs, bad input ------------------------------------------------------


def test_user_files_and_collected_pairs_are_merged_where_they_belong(chimed_home, tmp_path):
    # user text with an injected exact duplicate and a near duplicate of its first document
    text = [line for line in (DATA / "pretrain.txt").read_text(encoding="utf-8").splitlines() if line]
    long = text[0] + text[1]
    near = long.replace("损害", "损伤")
    user_text = tmp_path / "text.txt"
    user_text.write_text("\n".join(text + [text[0], long, near]) + "\n", encoding="utf-8")
    alpaca = tmp_path / "alpaca.jsonl"  # one malformed line, at line 2
    lines = (DATA / "alpaca.jsonl").read_text(encoding="utf-8").splitlines()
    alpaca.write_text("\n".join([lines[0], '{"instruction": "缺少回答"}', *lines[1:]]) + "\n", encoding="utf-8")
    collected = chimed_home / "collected_pairs"
    collected.mkdir()
    shutil.copy(DATA / "collected_pairs.jsonl", collected / "clinician-1.jsonl")
    cfg = small_config(
        cpt_text=[str(user_text)],
        sft_alpaca=[str(alpaca)],
        sft_sharegpt=[str(DATA / "sharegpt.jsonl")],
        dpo_pairs=[str(DATA / "preference.jsonl")],
        exam=[str(DATA / "clinical_medicine_dev.csv"), str(DATA / "cmexam.csv")],
        qa=[str(DATA / "huatuo_lite.jsonl"), str(DATA / "huatuo_encyclopedia.jsonl")],
    )

    stats = build_chimed(cfg)

    cpt, sft, dpo = read(chimed_home, "cpt.jsonl"), read(chimed_home, "sft.jsonl"), read(chimed_home, "dpo.jsonl")
    assert sum(r["source"] == "user_text" for r in cpt) == 4  # of 6: the duplicate and the near duplicate go
    assert stats["dedup"]["cpt"]["exact"] >= 1 and stats["dedup"]["cpt"]["near"] >= 1
    assert sum(r["source"] == "alpaca" for r in sft) == 3 and sum(r["source"] == "sharegpt" for r in sft) == 2
    pref = read(chimed_home, "eval/pref.jsonl")
    assert sum(p["source"] == "imported" for p in dpo + pref) == 3
    exam = read(chimed_home, "eval/exam.jsonl")
    assert {"clinical_medicine_dev-0", "cmexam-2"} <= {q["id"] for q in exam}
    assert {"huatuo_lite-1", "huatuo_encyclopedia-1"} <= {q["id"] for q in read(chimed_home, "eval/qa.jsonl")}
    # collected pairs: train -> dpo.jsonl, heldout -> eval/pref_clinician.jsonl only
    clinician = [p for p in dpo if p["source"] == "clinician"]
    assert [p["pair_id"] for p in clinician] == ["clin-fixture-train-1"]
    held = read(chimed_home, "eval/pref_clinician.jsonl")
    assert [p["pair_id"] for p in held] == ["clin-fixture-heldout-1"]
    assert "clin-fixture-heldout-1" not in {p["pair_id"] for p in dpo + pref}
    # the malformed line: skipped, counted, named with its file and line
    assert stats["input_errors"]["skipped"] == 1
    assert stats["input_errors"]["first"][0].startswith(f"{alpaca}:2: missing field 'output'")
    assert json.loads((chimed_home / "data" / "chimed" / "stats.json").read_text())["input_errors"]["skipped"] == 1

    # a new export in the collected-pairs folder makes the data stale, so train-all rebuilds it
    assert data_is_built(cfg)
    shutil.copy(DATA / "collected_pairs.jsonl", collected / "clinician-2.jsonl")
    assert not data_is_built(cfg)


def test_data_is_built_follows_the_config(tiny_data_home, use_home):
    use_home(tiny_data_home)
    assert data_is_built(load_config("tiny"))
    assert not data_is_built(load_config("tiny", ["data.seed=7"]))
    assert not data_is_built(load_config("demo"))


def test_strict_stops_at_the_malformed_line(chimed_home, tmp_path, capsys):
    bad = tmp_path / "sharegpt.jsonl"
    bad.write_text((DATA / "sharegpt.jsonl").read_text(encoding="utf-8") + "{broken\n", encoding="utf-8")
    status = main(["build-data", "--profile", "tiny", "--strict", f"data.user_files.sft_sharegpt=[{bad}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[-1].startswith(f"error: {bad}:3: not valid JSON")
    assert not (chimed_home / "data" / "chimed").exists()  # nothing half written


@pytest.mark.parametrize("setting", ["cpt_text", "sft_alpaca", "exam", "qa"])
def test_missing_source_file_is_a_one_line_error(chimed_home, capsys, setting):
    status = main(["build-data", "--profile", "tiny", f"data.user_files.{setting}=[/no/such/file.jsonl]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert err[0] == (
        f"error: data.user_files.{setting}: /no/such/file.jsonl does not exist "
        "(fix the path or remove it from the config)"
    )
