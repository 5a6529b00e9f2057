"""Issue 22, KTO: ChiMed-KTO built from ChiMed-DPO's pairs and the clinicians' single-answer ratings, and
``train-all --from align`` with ``align.method=kto`` training, recording and evaluating a kto stage."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from chimed import main as cli_main
from core.config import load_config
from core.errors import UserError
from core.files import read_jsonl
from training.data.build import build_chimed
from training.manifest import read_manifest
from training.pipeline import train_all

DATA = Path(__file__).parents[1] / "fixtures" / "data"
EVAL_QUESTION = "缺钙会有哪些表现？"  # a question of the user QA file below: an evaluation question


def rating(rating_id: str, question: str, answer: str, label: bool, split: str, of: str = "answer") -> dict:
    """One line of an ``export-ratings`` file (preference_store/exports/ratings.py's format)."""
    return {
        "prompt": [{"role": "user", "content": question}],
        "completion": [{"role": "assistant", "content": answer}],
        "label": label,
        "source": "clinician",
        "rating_id": rating_id,
        "split": split,
        "provenance": {
            "rating_id": rating_id,
            "comparison_id": f"cmp-{rating_id}",
            "annotator": "a-1f2e",
            "completion_of": of,
            "checkpoint": None if of == "correction" else "r1/dpo",
            "serving": None,
            "guideline_version": 1,
            "rated_at": "2026-11-29T10:00:00+00:00",
        },
    }


def test_kto_data_holds_every_pair_split_in_two_and_the_train_ratings(chimed_home, capsys):
    collected = chimed_home / "collected_pairs"
    collected.mkdir()
    shutil.copy(DATA / "collected_pairs.jsonl", collected / "clinician-1.jsonl")
    ratings = chimed_home / "collected_ratings" / "clinician-ratings-1.jsonl"
    ratings.parent.mkdir()
    lines = [
        json.dumps(r, ensure_ascii=False)
        for r in (
            rating("rt-up", "发烧三天不退怎么办？", "持续发热三天应到医院查明原因。", True, "train"),
            rating("rt-down", "扭伤脚踝后要热敷吗？", "马上热敷，越热越好。", False, "train"),
            rating(
                "rt-down",
                "扭伤脚踝后要热敷吗？",
                "扭伤后48小时内冷敷，之后再热敷；肿痛加重请就医。",
                True,
                "train",
                of="correction",
            ),
            rating("rt-held", "牙龈出血是怎么回事？", "不用管它。", False, "heldout"),
            rating("rt-eval", EVAL_QUESTION, "缺钙可出现手足抽搐。", True, "train"),
        )
    ]
    lines.insert(2, lines[0].replace('"label": true', '"label": "yes"'))  # line 3: malformed
    ratings.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_config(
        "tiny",
        [
            "data.max_entities=60",
            "data.people_daily_max_docs=60",
            "data.reviews_max_docs=40",
            "data.general_eval_docs=10",
            f"data.user_files.qa=[{DATA / 'huatuo_lite.jsonl'}]",
        ],
    )

    stats = build_chimed(cfg)

    dpo, kto = read_jsonl(cfg.data_dir / "dpo.jsonl"), read_jsonl(cfg.data_dir / "kto.jsonl")
    # every pair of ChiMed-DPO (the clinicians' train pair too) is one desirable and one undesirable answer
    halves = {}
    for example in kto:
        if "pair_id" in example:
            halves.setdefault(example["pair_id"], {})[example["label"]] = example
    assert "clin-fixture-train-1" in halves and "clin-fixture-heldout-1" not in halves
    assert set(halves) == {p["pair_id"] for p in dpo} and sum("pair_id" in e for e in kto) == 2 * len(dpo)
    for pair in dpo:
        assert halves[pair["pair_id"]][True]["completion"] == pair["chosen"]
        assert halves[pair["pair_id"]][False]["completion"] == pair["rejected"]
        assert halves[pair["pair_id"]][True]["prompt"] == pair["prompt"]
    # the train ratings, a correction as desirable; neither the held-out rating nor one asking an eval question
    rated = {(e["rating_id"], e["provenance"]["completion_of"], e["label"]) for e in kto if "rating_id" in e}
    assert rated == {("rt-up", "answer", True), ("rt-down", "answer", False), ("rt-down", "correction", True)}
    assert len(kto) == 2 * len(dpo) + 3
    printed = capsys.readouterr()
    assert "kto: left out 1 rated answers whose prompt is an evaluation question" in printed.out
    # the malformed line: reported with its file and line, counted, the others kept
    assert stats["input_errors"]["skipped"] == 1
    assert stats["input_errors"]["first"] == [f"{ratings}:3: 'label' must be true or false, got 'yes'"]
    assert f"skipped {ratings}:3: 'label' must be true or false" in printed.err

    # strict: the same line stops the build with one line naming it
    with pytest.raises(UserError, match=f"^{ratings}:3: 'label' must be true or false.*strict") as err:
        build_chimed(cfg, strict=True)
    assert "\n" not in str(err.value)


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def copy_run(source_home: Path, run_id: str, home: Path) -> None:
    shutil.copytree(source_home / "data", home / "data")
    shutil.copytree(source_home / "runs" / run_id, home / "runs" / run_id)


def test_from_align_with_kto_trains_records_and_evaluates_a_kto_stage(tiny_run, use_home, tmp_path):
    source_home, source_id = tiny_run
    home = use_home(tmp_path / "home")
    copy_run(source_home, source_id, home)
    cfg = load_config("tiny", ["align.method=kto", "train.logging_steps=1"])

    run_id = train_all(cfg, from_stage="align", resume_run=source_id)

    manifest = read_manifest(cfg, run_id)
    assert list(manifest["stages"]) == ["base", "cpt", "sft", "kto"] and manifest["parent_run"] == source_id
    kto = manifest["stages"]["kto"]
    assert (kto["kind"], kto["parent"]) == ("lora", "sft")
    assert kto["method"] == {"name": "kto", "settings": cfg.to_dict()["kto"]}
    assert kto["method"]["settings"]["beta"] == 1.0  # the tiny profile's
    # trained on both halves of every pair; the loss is a number that moved away from 1 - sigmoid(0), its value
    # while the adapter is still zero (the policy equal to the reference)
    examples = read_jsonl(cfg.data_dir / "kto.jsonl")
    pairs = list(dict.fromkeys(e["pair_id"] for e in examples))
    metrics = kto["metrics"]
    assert (metrics["desirable"], metrics["undesirable"], metrics["from_ratings"]) == (len(pairs), len(pairs), 0)
    assert metrics["steps"] == cfg.kto.max_steps and math.isfinite(metrics["train_kl"])
    losses = [
        r["loss"] for r in read_jsonl(cfg.runs_dir / run_id / "logs" / "kto" / "trainer_log.jsonl") if "loss" in r
    ]
    assert len(losses) == cfg.kto.max_steps and losses[0] == pytest.approx(0.5, abs=1e-6)
    assert all(math.isfinite(x) for x in losses) and max(abs(x - 0.5) for x in losses) > 1e-3
    assert manifest["dpo_pair_ids"] == pairs == read_json(cfg.runs_dir / run_id / "kto" / "pair_ids.json")
    # evaluated like every stage: the exam, the answers, the held-out pairs by the implicit reward against sft
    results = read_json(cfg.runs_dir / run_id / "eval" / "results.json")
    assert set(results["stages"]) == {"base", "cpt", "sft", "kto"}
    assert all(results["stages"]["kto"][k] is not None for k in ("exam_acc", "bleu1", "rouge1", "pref_acc"))


def test_kto_without_undesirable_answers_is_one_line_before_training(tiny_run, use_home, tmp_path):
    source_home, source_id = tiny_run
    home = use_home(tmp_path / "home")
    copy_run(source_home, source_id, home)
    cfg = load_config("tiny", ["align.method=kto", "train.evaluate_after=false"])
    path = cfg.data_dir / "kto.jsonl"
    liked = [e for e in read_jsonl(path) if e["label"]]
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in liked), encoding="utf-8")

    with pytest.raises(
        UserError,
        match=f"^kto: {path} has no undesirable answers \\(label false\\), only "
        f"{len(liked)} desirable ones: KTO needs both",
    ) as err:
        train_all(cfg, from_stage="align", resume_run=source_id)
    assert "\n" not in str(err.value)
    assert not list(cfg.runs_dir.glob("*/kto")) and not list(cfg.runs_dir.glob("*/logs/kto/trainer_log.jsonl"))


def test_a_kto_loss_that_is_not_a_number_stops_the_stage(tiny_run, use_home, tmp_path, capsys):
    source_home, source_id = tiny_run
    home = use_home(tmp_path / "home")
    copy_run(source_home, source_id, home)

    code = cli_main(
        [
            "train-all",
            "--profile",
            "tiny",
            "--from",
            "align",
            "--resume-run",
            source_id,
            "--run-id",
            "nan",
            "align.method=kto",
            "kto.learning_rate=1e30",
            "kto.warmup_ratio=0",
            "train.evaluate_after=false",
        ]
    )

    # one error line (it may follow the progress bar on stderr), no traceback
    stderr = capsys.readouterr().err
    err = re.findall(r"error: .*", stderr)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: kto: a non-finite") and "Traceback" not in stderr
    assert "is not complete" in err[0]
    assert "kto" not in read_manifest(load_config("tiny"), "nan")["stages"]
    assert not (home / "runs" / "nan" / "kto").exists()


def test_a_kto_batch_of_one_is_refused_by_the_config():
    with pytest.raises(UserError, match="kto.per_device_batch_size=1: KTO estimates its KL term"):
        load_config("tiny", ["kto.per_device_batch_size=1"])
