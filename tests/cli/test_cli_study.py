"""The study's commands as a user types them (issue 37): ``import-bank`` on a good and on a malformed file, with
``--bank``, and ``compare-runs --split heldout|train|all``, on the store of each backend. The store's own
behaviour behind them is tested in test_store_bank.py and test_run_comparison.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chimed import main as cli_main
from core.config import load_config
from preference_store.models import BankPromptRow
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn

pytestmark = pytest.mark.both_backends  # the store tests run on SQLite and on PostgreSQL

BANK = Path(__file__).parents[1] / "fixtures" / "bank" / "clinical_prompts.jsonl"  # 12 prompts, 6 held out


def test_import_bank_prints_what_it_imported_under_the_bank_name(pref_store, capsys):
    assert cli_main(["import-bank", "--profile", "tiny", str(BANK)]) == 0
    assert capsys.readouterr().out == (
        "prompt bank 'clinical_prompts': imported 12 prompts, 0 duplicates imported once\n"
    )
    assert cli_main(["import-bank", "--profile", "tiny", str(BANK), "--bank", "ward-7"]) == 0
    assert capsys.readouterr().out == "prompt bank 'ward-7': imported 0 prompts, 12 duplicates imported once\n"
    assert len(pref_store.bank_prompts("clinical_prompts")) == 12 and pref_store.bank_prompts("ward-7") == []


def test_import_bank_names_each_malformed_line_and_imports_the_rest(pref_store, tmp_path, capsys):
    path = tmp_path / "ward.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"prompt": "腰痛怎么办？"}, ensure_ascii=False),
                '{"prompt": "缺一个括号"',
                json.dumps({"prompt": "咽痛发热怎么办？", "split": "test"}, ensure_ascii=False),
                json.dumps({"text": "失眠怎么调理？"}, ensure_ascii=False),
            ]
        )
        + "\n",
        encoding="utf-8",
    )

    assert cli_main(["import-bank", "--profile", "tiny", str(path), "--bank", "ward-7"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "prompt bank 'ward-7': imported 2 prompts, 0 duplicates imported once, 2 malformed lines left out:"
    )
    assert [line.split(": ", 1)[0] for line in lines[1:]] == [f"  {path}:2", f"  {path}:3"]
    assert "not valid JSON" in lines[1] and "unknown split 'test'" in lines[2]
    assert [p.prompt for p in pref_store.bank_prompts("ward-7")] == ["腰痛怎么办？", "失眠怎么调理？"]


def test_import_bank_of_a_file_that_is_no_bank_is_one_line_and_imports_nothing(pref_store, tmp_path, capsys):
    path = tmp_path / "ward.csv"
    path.write_text("question,answer\n头痛,休息\n", encoding="utf-8")

    assert cli_main(["import-bank", "--profile", "tiny", str(path)]) == 2

    printed = capsys.readouterr()
    assert printed.out == "" and "Traceback" not in printed.err
    assert printed.err.startswith(f"error: {path}") and "needs a 'prompt' (or 'text') column" in printed.err
    assert printed.err.count("\n") == 1
    assert pref_store.bank_prompts() == []


def _bank_prompt(store, text: str, split: str) -> tuple[str, list]:
    row = BankPromptRow(
        id=f"bp-{split}-{len(text)}-{abs(hash(text)) % 10**8}",
        bank="ward",
        messages=[{"role": "user", "content": text}],
        tags=[],
        split=split,
        content_sha256=f"{abs(hash(text)):064d}"[:64],
        source="ward.jsonl:1",
    )
    store._write(lambda s: s.add(row))
    return row.id, row.messages


@pytest.fixture
def judged_runs(pref_store, chimed_home):
    """Runs "old" and "new" (dpo each; "new" evaluated, so its results take the verdict): on 6 held-out bank
    prompts both annotators prefer new/dpo, on 6 train prompts old/dpo."""
    store = pref_store
    store.register_checkpoints("old", ["sft", "dpo"])
    store.register_checkpoints("new", ["sft", "dpo"])
    annotators = [store.add_annotator(name, "a-long-password") for name in ("wang", "li")]
    for split, winner in (("heldout", "new/dpo"), ("train", "old/dpo")):
        for p in range(6):
            bank_id, messages = _bank_prompt(store, f"{split} 问题 {p}", split)
            for a, annotator in enumerate(annotators):
                panels = ["new/dpo", "old/dpo"] if (p + a) % 2 else ["old/dpo", "new/dpo"]
                cmp = store.record_comparison(
                    ComparisonIn(
                        annotator.id, messages, [ResponseIn(c, f"{c} 答") for c in panels], bank_prompt_id=bank_id
                    )
                )
                store.submit_judgment(JudgmentIn(cmp.id, annotator.id, choice="AB"[panels.index(winner)]))
    results = load_config("tiny").runs_dir / "new" / "eval" / "results.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"run_id": "new", "stages": {}, "settings": {}, "timing_s": {}}), encoding="utf-8")
    return results


@pytest.mark.parametrize(
    "split, verdict, prompts, wins", [("heldout", "better", 6, 12), ("train", "worse", 6, 0), ("all", "same", 12, 12)]
)
def test_compare_runs_counts_the_bank_prompts_of_the_split_asked_for(
    judged_runs, capsys, split, verdict, prompts, wins
):
    argv = ["compare-runs", "--profile", "tiny", "--run", "new", "--against", "old", "--split", split]
    assert cli_main([*argv, "study.decisions=fixed"]) == 0  # two annotators: the bootstrap verdict

    arena = json.loads(judged_runs.read_text(encoding="utf-8"))["arena"]
    assert (arena["split"], arena["verdict"], arena["prompts"], arena["battles"], arena["wins"]) == (
        split,
        verdict,
        prompts,
        2 * prompts,
        wins,
    )
    assert (arena["new_checkpoint"], arena["old_checkpoint"]) == ("new/dpo", "old/dpo")
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"clinicians, {split} bank prompts: {arena['summary']} (in {judged_runs})"
    )
    assert verdict in arena["summary"]
    assert "clinicians" in (judged_runs.parent / "results.md").read_text(encoding="utf-8").lower()
