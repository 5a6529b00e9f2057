"""``./launch.sh export-lm-eval-task``: the run's exam as an lm-eval task, scored by lm-eval (the package) through
``serve`` (``local-completions``) and on the stage's merged export (``hf``), against the run's own exam_acc."""

from __future__ import annotations

import json
import time

import pytest

from chimed import main
from core.config import load_config
from core.registry import is_chat_stage
from tests.serving_helpers import serve_copy_of, stage_loader
from tests.training.test_export import _one_error_line
from training.evaluation.evaluate import load_eval_sets
from training.evaluation.exam import score_exam
from training.export.checkpoints import export_stage
from training.export.lm_eval_task import EXAM_ACC_METRIC, TASK, exam_rows
from training.modeling import stage_chain, stage_tokenizer, tokenizer_dir

TOL = 0.01  # one point of accuracy: float32 sums of the same log-probabilities in another order may swap a tie


def _export_task(run_id: str, out, *extra: str) -> int:
    return main(["export-lm-eval-task", "--profile", "tiny", "--run", run_id, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """(task directory, the run's results.json) of the tiny run's exam exported by the command line."""
    home, run_id = tiny_run
    out = tmp_path_factory.mktemp("lm_eval_task") / "chimed_exam"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHIMED_HOME", str(home))
        assert _export_task(run_id, out) == 0
    results = json.loads((home / "runs" / run_id / "eval" / "results.json").read_text(encoding="utf-8"))
    return out, results


def _evaluate(model: str, model_args: dict, task: str, folder, docs: list[int] | None = None) -> tuple[dict, float]:
    """lm-eval's results of ``task`` from ``folder`` with ``model`` (only questions ``docs`` if given; the
    per-question samples under "samples"), and the seconds it took."""
    import lm_eval  # (the test extra's; imported here: it is slow to import)
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[task],
        task_manager=TaskManager(include_path=str(folder)),
        samples={task: docs} if docs is not None else None,
        log_samples=True,
    )
    return dict(results["results"][task], samples=results["samples"][task]), time.perf_counter() - started


def _rows(folder, task: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_the_rows_are_the_exam_the_evaluation_scores_with_its_prompts(tiny_run, exported, use_home):
    home, run_id = use_home(tiny_run[0]), tiny_run[1]
    out, results = exported
    exam = load_eval_sets(load_config("tiny")).exams[""]
    rows = _rows(out, TASK)
    assert len(rows) == len(exam.items) == results["stages"]["cpt"]["exam_n"]
    assert [r["choices"][r["target"]] for r in rows] == [it["options"][it["answer"]] for it in exam.items]
    demo = exam.demos[0]  # tiny: 1-shot, the demonstration as an earlier turn, plain 问：/答： text
    first = exam.items[0]
    assert (
        rows[0]["prompt"]
        == f"问：{demo['question']}\n答：{demo['options'][demo['answer']]}\n问：{first['question']}\n答："
    )
    # the chat stages are scored with the run's template: the same turns, each answer closed by its eos token
    tokenizer = stage_tokenizer(home / "runs" / run_id, stage_chain(home / "runs" / run_id, "sft"))
    chat = _rows(out, f"{TASK}_chat")
    assert chat == exam_rows(exam, tokenizer) and tokenizer.eos_token in chat[0]["prompt"]
    config = (out / f"{TASK}.yaml").read_text(encoding="utf-8")
    assert str((out / f"{TASK}.jsonl").resolve()) in config and 'target_delimiter: ""' in config


def test_an_existing_directory_needs_force_and_an_unknown_run_is_one_line(tiny_run, use_home, tmp_path, capsys):
    use_home(tiny_run[0])
    out = tmp_path / "task"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _export_task(tiny_run[1], out) == 2
    assert "--force" in _one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _export_task(tiny_run[1], out, "--force") == 0
    printed = capsys.readouterr().out
    assert (
        f"stage cpt: scored by the evaluation as {TASK}\n" in printed
        and f"stage sft: scored by the evaluation as {TASK}_chat" in printed
    )
    assert not (out / "keep.txt").exists() and (out / f"{TASK}.yaml").is_file()
    assert _export_task("no-such-run", tmp_path / "other") == 2
    assert "no run 'no-such-run'" in _one_error_line(capsys)
    assert not (tmp_path / "other").exists()


def test_lm_eval_scores_the_exported_exam_through_serve_and_on_the_export_as_the_evaluation_does(
    tiny_run, exported, tmp_path, use_home
):
    """acc_norm (log-likelihood per character) is the project's exam accuracy: through ``serve`` with
    local-completions for a plain stage (cpt) and a chat stage (sft, on the chat form), and with ``hf`` on the
    cpt stage's merged export (every question: the run's results.json exam_acc)."""
    from app.identifiers import screen_entry

    out, results = exported
    use_home(tiny_run[0])
    cfg = load_config("tiny")
    # serve refuses a prompt its identifier screen flags (nothing is sent; lm-eval cannot ask for the redacted
    # text, which would be another question anyway): those questions are left out of the served runs
    rows = {task: _rows(out, task) for task in (TASK, f"{TASK}_chat")}
    served = [
        i
        for i in range(len(rows[TASK]))
        if not any(screen_entry(prompt=r[i]["prompt"] + c).found for r in rows.values() for c in r[i]["choices"])
    ]
    assert len(served) >= len(rows[TASK]) * 0.8, "the tiny exam should be mostly free of flagged text"
    exam = load_eval_sets(cfg).exams[""]
    measured = {}
    with serve_copy_of(tiny_run, tmp_path / "serve") as (url, home, run_id):
        load = stage_loader(home, run_id)
        for stage, task in (("cpt", TASK), ("sft", f"{TASK}_chat")):
            args = {
                "model": f"{run_id}/{stage}",
                "base_url": f"{url}/completions",
                "tokenizer_backend": "huggingface",
                "tokenizer": tokenizer_dir(stage_chain(home / "runs" / run_id, stage)),
                "tokenized_requests": True,
                "max_length": 256,
                "num_concurrent": 1,
                "max_retries": 1,
            }
            measured[stage], seconds = _evaluate("local-completions", args, task, out, served)
            # the project's own exam scoring of the same questions, as ./launch.sh eval runs it, question by
            # question: lm-eval's choice must be the project's on (nearly) every one, not only as many right
            model, tokenizer = load(stage)
            chat, max_length = (
                is_chat_stage(stage),
                min(cfg.eval.max_length, model.config.max_position_embeddings),
            )
            own = {
                i: score_exam(model, tokenizer, [exam.items[i]], exam.demos, chat, cfg.eval.batch_size, max_length)[
                    "acc"
                ]
                for i in served
            }
            theirs = {s["doc_id"]: s[EXAM_ACC_METRIC] for s in measured[stage]["samples"]}
            disagree = [i for i in served if own[i] != theirs[i]]
            print(
                f"local-completions {stage} {task} on {len(served)}/{len(rows[TASK])} questions: "
                f"acc {measured[stage]['acc,none']:.3f} acc_norm {measured[stage]['acc_norm,none']:.3f}, "
                f"project's exam accuracy {sum(own.values()) / len(own):.3f}, {len(disagree)} questions "
                f"scored differently, {seconds:.1f} s"
            )
            assert len(disagree) / len(served) <= TOL, disagree
            assert measured[stage][f"{EXAM_ACC_METRIC},none"] == pytest.approx(sum(own.values()) / len(own), abs=TOL)

    export = tmp_path / "cpt-export"
    export_stage(cfg, tiny_run[1], "cpt", export, dtype="float32")
    hf, seconds = _evaluate("hf", {"pretrained": str(export), "device": "cpu", "dtype": "float32"}, TASK, out)
    exam_acc = results["stages"]["cpt"]["exam_acc"]
    print(
        f"hf cpt export {TASK} on {len(rows[TASK])} questions: acc {hf['acc,none']:.3f} acc_norm "
        f"{hf['acc_norm,none']:.3f}, results.json exam_acc {exam_acc:.3f}, {seconds:.1f} s"
    )
    assert hf[f"{EXAM_ACC_METRIC},none"] == pytest.approx(exam_acc, abs=TOL)
    # on the questions serve scored, the export and serve agree on both metrics
    on_served = [s for s in hf["samples"] if s["doc_id"] in set(served)]
    for metric in ("acc", "acc_norm"):
        mean = sum(s[metric] for s in on_served) / len(on_served)
        assert mean == pytest.approx(measured["cpt"][f"{metric},none"], abs=TOL)


def test_the_opencompass_datasets_hold_the_same_rows_and_every_stage_has_a_model(tiny_run, exported, use_home):
    """``out/opencompass`` (training/export/opencompass_task.py): per lm-eval task a PPL dataset on the same
    prompts, options and answers, a gen dataset asking the lettered question after the demonstrations answered
    by letter, and a model config per stage; each config is Python that compiles (tests/serving/test_opencompass.py
    runs them with OpenCompass)."""
    import ast

    from training.evaluation.exam import exam_conversation, question_with_options
    from training.export.opencompass_task import FOLDER, ROLES

    use_home(tiny_run[0])
    out, _results = exported
    configs = out / FOLDER
    exam = load_eval_sets(load_config("tiny")).exams[""]
    for task in (TASK, f"{TASK}_chat"):
        rows = [json.loads(line) for line in (configs / "data" / f"{task}.jsonl").read_text("utf-8").splitlines()]
        theirs = [(r["prompt"], [r[c] for c in lm["letters"]], r["answer"]) for r, lm in zip(rows, _rows(out, task))]
        assert theirs == [(lm["prompt"], lm["choices"], lm["letters"][lm["target"]]) for lm in _rows(out, task)]
        assert [r["question"] for r in rows] == [question_with_options(item) for item in exam.items]
    assert sorted(p.name for p in (configs / "datasets").iterdir()) == [
        f"{TASK}_chat_ppl.py",
        f"{TASK}_gen.py",
        f"{TASK}_ppl.py",
    ]
    turns = [
        (args["role"], args["prompt"])
        for node in ast.walk(ast.parse((configs / "datasets" / f"{TASK}_gen.py").read_text("utf-8")))
        if isinstance(node, ast.Call) and {k.arg for k in node.keywords} == {"role", "prompt"}
        for args in [{k.arg: ast.literal_eval(k.value) for k in node.keywords}]
    ]
    demos = exam_conversation(exam.items[0], exam.demos, True)[:-1]
    assert turns == [(ROLES[m["role"]], m["content"]) for m in demos] + [("HUMAN", "{question}"), ("BOT", "{answer}")]
    models = sorted(p.name for p in (configs / "models").iterdir())
    assert models == ["chimed_export.py"] + [f"chimed_serve_{s}.py" for s in ("base", "cpt", "dpo", "sft")]
    for path in [*(configs / "datasets").iterdir(), *(configs / "models").iterdir()]:
        compile(path.read_text("utf-8"), str(path), "exec")
    assert f"'{tiny_run[1]}/sft'" in (configs / "models" / "chimed_serve_sft.py").read_text("utf-8")
