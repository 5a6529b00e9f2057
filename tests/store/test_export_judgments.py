"""``./launch.sh export-judgments --out FILE.csv|.parquet``: one row per judgment, rating and criterion score, with
the annotator's pseudonym, de-identified texts, superseded judgments marked; it consumes nothing (the loop's next
pair export is unchanged) and leaves one audit row."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from chimed import main as cli_main
from core.config import load_config
from preference_store.exports.pairs import export_pairs
from preference_store.records import ComparisonIn, JudgmentIn, RatingIn, ResponseIn

pytestmark = pytest.mark.both_backends

BANK = Path(__file__).parents[1] / "fixtures" / "bank" / "clinical_prompts.jsonl"
PHONE = "13812345678"


@pytest.fixture
def judged(pref_store):
    """A bank comparison judged by alice (scores, then revised), rated by bob on a free prompt with a phone number."""
    store = pref_store
    alice, bob = store.add_annotator("alice", "pw-alice-123"), store.add_annotator("bob", "pw-bob-1234")
    store.import_bank(BANK)
    assignment = store.next_assignment(alice.id)
    cmp = store.record_comparison(
        ComparisonIn(
            alice.id,
            assignment.bank_prompt.messages,
            [ResponseIn("r1/dpo", "多喝水。"), ResponseIn("r1/sft", "休息。")],
            bank_prompt_id=assignment.bank_prompt.id,
            assignment_id=assignment.id,
        )
    )
    first = store.submit_judgment(
        JudgmentIn(cmp.id, alice.id, choice="A", scores={"A": {"safety": 5, "correctness": 4}, "B": {"safety": 2}})
    )
    second = store.submit_judgment(JudgmentIn(cmp.id, alice.id, choice="B", revise=True))
    free = store.record_comparison(
        ComparisonIn(
            bob.id,
            [{"role": "user", "content": f"我的电话{PHONE}，头痛怎么办？"}],
            [ResponseIn("r1/sft", "注意休息。"), ResponseIn("r1/base", "不知道。")],
        )
    )
    rating = store.submit_rating(
        RatingIn(free.id, bob.id, label="B", up=False, correction=f"请致电{PHONE}复诊。", reason="答非所问")
    )
    return store, {
        "alice": alice,
        "bob": bob,
        "first": first,
        "second": second,
        "rating": rating,
        "bank_prompt": assignment.bank_prompt,
        "cmp": cmp,
        "free": free,
    }


def read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_one_row_per_judgment_rating_and_score_de_identified(judged, tmp_path, capsys):
    store, made = judged
    out = tmp_path / "study.csv"
    assert cli_main(["export-judgments", "--profile", "tiny", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(
        f"exported 6 rows (2 judgments, 1 rating, 3 scores; 4 superseded) to {out}"
    )
    rows = read_csv(out)
    assert [(r["record"], r["id"]) for r in rows] == [
        ("judgment", made["first"].id),
        ("score", made["first"].id),
        ("score", made["first"].id),
        ("score", made["first"].id),
        ("judgment", made["second"].id),
        ("rating", made["rating"].id),
    ]

    first, *scores, second, rating = rows
    # the revised judgment and its scores are history; the revision is live
    assert (first["live"], first["superseded_by"], first["superseded_why"]) == ("False", made["second"].id, "revised")
    assert all(s["live"] == "False" for s in scores) and second["live"] == "True" and second["choice"] == "B"
    assert [(s["label"], s["checkpoint"], s["criterion"], s["score"]) for s in scores] == [
        ("A", "r1/dpo", "correctness", "4"),
        ("A", "r1/dpo", "safety", "5"),
        ("B", "r1/sft", "safety", "2"),
    ]
    # the bank comparison's context
    assert first["contestants"] == "r1/dpo;r1/sft" and first["choice"] == "A" and first["kind"] == "pairwise"
    assert (first["prompt_id"], first["split"], first["round"]) == (
        made["bank_prompt"].id,
        made["bank_prompt"].split,
        "1",
    )
    assert first["blind"] == "True" and first["guideline_version"] == "1" and first["turn"] == "1"
    assert first["compared_at"] <= first["judged_at"] and float(first["seconds_to_verdict"]) >= 0
    # the annotator is the pair export's pseudonym, never the name
    assert first["annotator"] == store.pseudonym(made["alice"].id) and rating["annotator"] == store.pseudonym(
        made["bob"].id
    )
    text = out.read_text(encoding="utf-8")
    assert "alice" not in text and "bob" not in text
    # the free prompt: no round, no bank prompt, the hash split; phone numbers taken out of prompt and correction
    assert (rating["label"], rating["checkpoint"], rating["up"], rating["round"], rating["prompt_id"]) == (
        "B",
        "r1/base",
        "False",
        "",
        "",
    )
    assert rating["split"] in ("train", "heldout") and rating["reason"] == "答非所问"
    assert PHONE not in text and "[PHONE]" in rating["prompt"] and "[PHONE]" in rating["correction"]


def test_it_consumes_nothing_and_leaves_an_audit_row(judged, tmp_path, capsys):
    store, made = judged
    out = tmp_path / "study.csv"
    assert cli_main(["export-judgments", "--profile", "tiny", "--out", str(out)]) == 0
    event = store.audit_events(action="export")[0]
    assert event.target == str(out) and event.detail == {
        "what": "judgments",
        "rows": 6,
        "judgment": 2,
        "rating": 1,
        "score": 3,
    }
    # the loop's export still gets the live judgment's pairs: nothing was marked as exported
    assert export_pairs(load_config("tiny"), out=tmp_path / "pairs.jsonl", store=store).path is not None
    # an existing file is never overwritten, another suffix is refused with one line
    capsys.readouterr()
    assert cli_main(["export-judgments", "--profile", "tiny", "--out", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert cli_main(["export-judgments", "--profile", "tiny", "--out", str(tmp_path / "study.xlsx")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --out {tmp_path / 'study.xlsx'}: write a .csv file (or .parquet where pyarrow is installed)"
    )


def test_parquet_has_the_same_rows_with_types(judged, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    store, made = judged
    out = tmp_path / "study.parquet"
    assert cli_main(["export-judgments", "--profile", "tiny", "--out", str(out)]) == 0
    table = pq.read_table(out).to_pylist()
    assert len(table) == 6 and table[0]["live"] is False and table[4]["live"] is True
    assert table[1]["score"] == 4 and table[5]["round"] is None and table[0]["round"] == 1
    assert table[0]["judged_at"] == made["first"].created


def test_parquet_without_pyarrow_is_refused_naming_csv(judged, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    out = tmp_path / "study.parquet"
    assert cli_main(["export-judgments", "--profile", "tiny", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --out {out}: Parquet needs pyarrow, which is not installed: write a .csv file"
    )
    assert not out.exists()
