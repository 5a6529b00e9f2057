"""The OpenCompass recipe (docs/serving-fields.md, "OpenCompass"): the tiny run's exam, exported by
``./launch.sh export-lm-eval-task``, scored by OpenCompass (the package, in its own venv from
``./launch.sh setup-opencompass``) in PPL mode on a stage's merged export and in gen mode through ``serve``,
against the project's own scoring of the same questions.

OpenCompass's rules are not the project's ``exam_acc`` (log-likelihood per character of the option): PPL mode
picks the lowest mean token loss of prompt + option, gen mode the first capital letter of a greedy answer.
So each is checked against the project's computation of that same rule with the same checkpoint, and the
distance to ``exam_acc`` is reported. Skipped where the venv is missing (CI does not install it: the install
takes over three minutes here).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from chimed import main
from core.config import load_config
from core.registry import is_chat_stage
from tests.serving_helpers import no_account_client, serve_copy_of, stage_loader
from training.evaluation.evaluate import load_eval_sets
from training.evaluation.exam import exam_conversation, score_exam
from training.evaluation.loglik import Request, score_requests, token_ids
from training.export.checkpoints import export_stage
from training.export.lm_eval_task import TASK
from training.export.opencompass_task import FOLDER, GEN_MAX_TOKENS

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("CHIMED_OPENCOMPASS_VENV") or ROOT / ".venv-opencompass")
TOL = 0.01  # one point of accuracy: float32 sums of the same log-probabilities in another order may swap a tie
PPL_TOL = 1e-4  # OpenCompass's mean token loss against the project's, per sequence


@pytest.fixture(scope="module")
def opencompass() -> Path:
    """The venv's ``opencompass`` command; skip when ``./launch.sh setup-opencompass`` has not run."""
    command = VENV / "bin" / "opencompass"
    if not (VENV / ".chimed-setup-opencompass").is_file() or not command.exists():
        pytest.skip(f"OpenCompass is not installed in {VENV}: run ./launch.sh setup-opencompass")
    return command


@pytest.fixture(scope="module")
def exported(opencompass, tiny_run, tmp_path_factory) -> tuple[Path, dict]:
    """(the OpenCompass config directory of the tiny run's exported exam, the run's results.json)."""
    home, run_id = tiny_run
    out = tmp_path_factory.mktemp("opencompass_task") / "chimed_exam"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHIMED_HOME", str(home))
        assert main(["export-lm-eval-task", "--profile", "tiny", "--run", run_id, "--out", str(out)]) == 0
    results = json.loads((home / "runs" / run_id / "eval" / "results.json").read_text(encoding="utf-8"))
    return out / FOLDER, results


def _run(opencompass: Path, configs: Path, work: Path, models: list[str], dataset: str, **env: str) -> dict:
    """``opencompass --config-dir configs --models ... --datasets dataset`` in ``work`` (its outputs in
    ``work``/out); returns, per model abbreviation, (its predictions, its accuracy in percent)."""
    log, out_dir = work / "opencompass.log", work / "out"
    command = [str(opencompass), "--config-dir", str(configs), "--models", *models, "--datasets", dataset]
    with log.open("w") as out:
        done = subprocess.run(
            [*command, "-w", str(out_dir), "--debug"],
            cwd=work,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
    assert done.returncode == 0, log.read_text()[-3000:]
    (run,) = out_dir.iterdir()  # the run's timestamped directory
    found = {}
    for result in sorted(run.glob(f"results/*/{dataset}.json")):
        accuracy = json.loads(result.read_text(encoding="utf-8"))["accuracy"]
        predictions = json.loads((run / "predictions" / result.parent.name / result.name).read_text())
        found[result.parent.name] = ([predictions[str(i)] for i in range(len(predictions))], accuracy)
    assert found, f"no results under {run}:\n{log.read_text()[-3000:]}"
    return found


def _rows(configs: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (configs / "data" / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_ppl_mode_on_the_merged_export_is_the_lowest_mean_token_loss_of_prompt_and_option(
    opencompass, exported, tiny_run, tmp_path, use_home
):
    """PPL mode (OpenCompass's ``PPLInferencer`` with ``HuggingFaceCausalLM``) on the cpt stage's merged export:
    each option's mean token loss equals the project's log-likelihood of the same sequence, its accuracy the
    project's pick by that rule, and its distance to the run's exam_acc is the rule's."""
    configs, results = exported
    home, run_id = use_home(tiny_run[0]), tiny_run[1]
    cfg = load_config("tiny")
    export = tmp_path / "cpt-export"
    export_stage(cfg, run_id, "cpt", export, dtype="float32")
    work = tmp_path / "work"
    work.mkdir()
    (model,) = _run(
        opencompass, configs, work, ["chimed_export"], f"{TASK}_ppl", CHIMED_EXPORT_DIR=str(export)
    ).values()
    predictions, accuracy = model

    rows = _rows(configs, TASK)
    model, tokenizer = stage_loader(home, run_id)("cpt")
    sequences = [token_ids(tokenizer, row["prompt"] + row[letter]) for row in rows for letter in _letters(row)]
    scores = score_requests(model, [Request((ids[0],), tuple(ids[1:])) for ids in sequences], cfg.eval.batch_size)
    # OpenCompass divides the summed loss by every token of the sequence, the first (unpredicted) one included
    mean_loss = iter(-score.logprob / len(ids) for score, ids in zip(scores, sequences, strict=True))
    own, far = [], 0.0
    for row, predicted in zip(rows, predictions, strict=True):
        losses = {letter: next(mean_loss) for letter in _letters(row)}
        far = max(far, *(abs(predicted[f"label: {c}"]["PPL"] - loss) for c, loss in losses.items()))
        own.append(min(losses, key=losses.get))
    assert far <= PPL_TOL
    disagree = [i for i, (p, o) in enumerate(zip(predictions, own, strict=True)) if p["prediction"] != o]
    assert len(disagree) / len(rows) <= TOL, disagree
    own_accuracy = sum(o == row["answer"] for o, row in zip(own, rows, strict=True)) / len(rows)
    assert accuracy / 100 == pytest.approx(own_accuracy, abs=TOL)

    # the project's exam_acc (per character of the option) on the same questions, question by question
    exam = load_eval_sets(cfg).exams[""]
    length = min(cfg.eval.max_length, model.config.max_position_embeddings)
    right = [
        score_exam(model, tokenizer, [item], exam.demos, False, cfg.eval.batch_size, length)["acc"]
        for item in exam.items
    ]
    assert sum(right) / len(right) == pytest.approx(results["stages"]["cpt"]["exam_acc"], abs=TOL)
    other_pick = sum((o == row["answer"]) != bool(r) for o, row, r in zip(own, rows, right, strict=True))
    print(
        f"OpenCompass PPL cpt export on {len(rows)} questions: accuracy {accuracy:.2f}, the project's computation "
        f"of its rule {100 * own_accuracy:.2f} (largest loss difference {far:.1e}); results.json exam_acc "
        f"{100 * results['stages']['cpt']['exam_acc']:.2f}: the two rules score {other_pick} questions differently"
    )


def test_gen_mode_through_serve_scores_the_stages_greedy_answers_by_their_first_capital_letter(
    opencompass, exported, tiny_run, tmp_path, use_home
):
    """Gen mode with OpenCompass's ``OpenAI`` model against ``serve`` (a plain stage and a chat stage): each
    prediction is the stage's greedy answer to the lettered question (the openai SDK gets the same), and the
    accuracy is the share whose first capital letter is the right one."""
    configs, results = exported
    use_home(tiny_run[0])
    exam = load_eval_sets(load_config("tiny")).exams[""]
    rows = _rows(configs, TASK)
    stages = ["cpt", "sft"]
    assert not is_chat_stage("cpt") and is_chat_stage("sft")
    work = tmp_path / "work"
    work.mkdir()
    with serve_copy_of(tiny_run, tmp_path / "serve") as (url, _home, run_id):
        found = _run(
            opencompass,
            configs,
            work,
            [f"chimed_serve_{stage}" for stage in stages],
            f"{TASK}_gen",
            CHIMED_SERVE_URL=url,
        )
        client = no_account_client(url)
        for stage in stages:
            predictions, accuracy = found[f"{run_id}-{stage}"]
            answers = [
                client.chat.completions.create(
                    model=f"{run_id}/{stage}",
                    messages=exam_conversation(item, exam.demos, True),
                    temperature=0,
                    max_tokens=GEN_MAX_TOKENS,
                )
                .choices[0]
                .message.content.strip()
                for item in exam.items
            ]
            assert [p["prediction"] for p in predictions] == answers
            picks = [next((ch for ch in answer if ch.isupper()), "") for answer in answers]
            own_accuracy = sum(p == row["answer"] for p, row in zip(picks, rows, strict=True)) / len(rows)
            assert accuracy / 100 == pytest.approx(own_accuracy, abs=TOL)
            print(
                f"OpenCompass gen {stage} through serve on {len(rows)} questions: accuracy {accuracy:.2f} "
                f"({sum(bool(p) for p in picks)} answers hold a capital letter); results.json exam_acc "
                f"{100 * results['stages'][stage]['exam_acc']:.2f}"
            )


def _letters(row: dict) -> list[str]:
    return [key for key in row if len(key) == 1 and key.isupper()]
