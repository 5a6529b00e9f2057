"""``./launch.sh export-lm-eval-task --run ID --out DIR``: the run's exam as an lm-eval task directory.

The exam is the one ``./launch.sh eval`` scores (:func:`training.evaluation.evaluate.load_eval_sets`): the
held-out ChiMed exam of the data build (C-Eval / CMExam items the build imported included), its k-shot
demonstrations and ``eval.exam_max`` cap, and every file of ``eval.user_exam_files`` as a task of its own.
Each question becomes one jsonl row whose ``prompt`` is the exact text the evaluation scores the options after
(:func:`training.evaluation.exam.exam_conversation` through :func:`core.prompting.conversation_prompt`,
the demonstrations included), ``choices`` the option texts and ``target`` the index of the right one. The
YAML asks lm-eval for the log-likelihood of each option's text right after the prompt (``target_delimiter``
empty, no few-shot of lm-eval's own).

Two prompt forms, as the evaluation uses them: ``chimed_exam`` is the plain 问：/答： text base and CPT stages
(and any model from elsewhere) are scored with; ``chimed_exam_chat`` is the same conversation rendered with
the run's chat template, as the chat stages (the registry's ``chat_stage_names()``) are scored. The template is rendered into
the prompt here, so lm-eval scores it without a chat template of its own (no ``--apply_chat_template``).

The project's exam accuracy (``exam_acc``) picks the option with the highest log-likelihood per character;
lm-eval's ``acc_norm`` is that choice (it divides by ``len(choice)``), ``acc`` the unnormalized one. They
differ only where an option holds whitespace, which lm-eval counts and the project does not.

The same rows are written as OpenCompass datasets under ``out/opencompass``
(:mod:`training.export.opencompass_task`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Config
from core.files import directory_written_atomically
from core.prompting import conversation_prompt
from core.registry import answering, is_chat_stage
from training.evaluation.evaluate import Exam, load_eval_sets
from training.evaluation.exam import exam_conversation
from training.export.checkpoints import check_out_dir, existing_run
from training.export.opencompass_task import FOLDER, write_opencompass_configs
from training.manifest import read_manifest_at
from training.modeling import stage_chain, stage_tokenizer, tokenizer_dir

TASK = "chimed_exam"
# lm-eval's metric that is the project's exam_acc (argmax of log-likelihood per character of the option text)
EXAM_ACC_METRIC = "acc_norm"


@dataclass
class LmEvalExport:
    out: Path
    tasks: dict[str, int]  # task name -> questions
    stages: dict[str, str] = field(default_factory=dict)  # stage -> the task that scores it as the evaluation does
    notes: list[str] = field(default_factory=list)
    opencompass: list[str] = field(default_factory=list)  # OpenCompass dataset configs under out/opencompass


def export_lm_eval_task(cfg: Config, run_id: str, out: str | Path, force: bool = False) -> LmEvalExport:
    """Write run ``run_id``'s exam to ``out`` as lm-eval tasks (YAML + jsonl each); see the module's docstring."""
    run_path = existing_run(cfg, run_id)
    stages = answering(read_manifest_at(run_path)["stages"])
    out = Path(out)
    check_out_dir(out, run_path, force)
    sets = load_eval_sets(cfg)
    notes = _stale_note(run_path, sets.hashes.get("exam"))

    # the prompt forms: plain for every stage that is not a chat stage, each chat stage's own template
    # (models from elsewhere are scored on the plain form)
    forms: dict[str, object] = {"plain": None}  # form -> the tokenizer whose template renders it (None: plain)
    export = LmEvalExport(out=out, tasks={}, notes=notes)
    for stage in stages:
        chat = is_chat_stage(stage)
        tokenizer = stage_tokenizer(run_path, stage_chain(run_path, stage)) if chat else None
        export.stages[stage] = _task_name("", _form_of(forms, tokenizer, sets.exams[""]))

    tasks: dict[str, list[dict]] = {}
    sources: dict[str, tuple[Exam, bool]] = {}  # task -> (its exam, whether it is the plain form)
    for name, exam in sets.exams.items():
        for form, tokenizer in forms.items():
            tasks[_task_name(name, form)] = exam_rows(exam, tokenizer)
            sources[_task_name(name, form)] = (exam, form == "plain")
    spaced = sum(any(re.search(r"\s", c) for c in row["choices"]) for rows in tasks.values() for row in rows)
    if spaced:
        notes.append(
            f"{spaced} questions have an option with whitespace: lm-eval's acc_norm counts it, exam_acc does not, "
            "so the two may differ there"
        )
    final = out.resolve()
    with directory_written_atomically(out, force) as partial:
        for task, rows in tasks.items():
            data = f"{task}.jsonl"
            (partial / data).write_text(
                "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
            )
            (partial / f"{task}.yaml").write_text(task_yaml(task, final / data), encoding="utf-8")
            export.tasks[task] = len(rows)
        export.opencompass = write_opencompass_configs(
            partial,
            final,
            cfg.app.port,
            {task: (*sources[task], rows) for task, rows in tasks.items()},
            [(f"{run_path.name}/{stage}", tokenizer_dir(stage_chain(run_path, stage))) for stage in stages],
        )
    return export


def exam_rows(exam: Exam, tokenizer=None) -> list[dict]:
    """One row per scored question: the prompt the evaluation scores the options after (with the k-shot
    demonstrations; the chat template of ``tokenizer`` when given, else plain text), the options and the answer."""
    rows = []
    for item in exam.items:
        letters = list(item["options"])
        prompt = conversation_prompt(tokenizer, exam_conversation(item, exam.demos, False), tokenizer is not None)
        rows.append(
            {
                "id": item.get("id"),
                "subject": item.get("subject"),
                "prompt": prompt,
                "choices": [item["options"][letter] for letter in letters],
                "letters": letters,
                "target": letters.index(item["answer"]),
            }
        )
    return rows


def task_yaml(task: str, data: Path) -> str:
    """lm-eval's task config: multiple choice over ``choices`` after ``prompt``, nothing in between."""
    return (
        f"task: {task}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data), ensure_ascii=False)}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: prompt\n"
        "doc_to_choice: choices\n"
        "doc_to_target: target\n"
        'target_delimiter: ""\n'
        "num_fewshot: 0\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )


def format_export(export: LmEvalExport) -> str:
    """What the command prints: the tasks, which one scores each stage, how to run them, the notes."""
    lines = [f"wrote lm-eval tasks to {export.out}:"]
    lines += [f"  {task}: {n} questions" for task, n in export.tasks.items()]
    lines += [f"  stage {stage}: scored by the evaluation as {task}" for stage, task in export.stages.items()]
    lines.append(
        f"the project's exam_acc is lm-eval's {EXAM_ACC_METRIC} (log-likelihood per character of each option's "
        "text); the chat form has the run's chat template rendered in: run it without --apply_chat_template"
    )
    lines.append(f"run: lm_eval --include_path {export.out} --tasks {TASK} --model hf --model_args pretrained=DIR")
    lines.append(
        f"OpenCompass datasets in {export.out / FOLDER}: {', '.join(export.opencompass)} "
        f"(opencompass --config-dir {export.out / FOLDER} --datasets NAME ...; docs/serving-fields.md)"
    )
    return "\n".join(lines + [f"note: {note}" for note in export.notes])


def _form_of(forms: dict[str, object], tokenizer, exam: Exam) -> str:
    """The name of the prompt form ``tokenizer`` renders (a new one when no form seen so far renders the same)."""
    rows = exam_rows(exam, tokenizer)
    for form, seen in forms.items():
        if exam_rows(exam, seen) == rows:
            return form
    form = "chat" if "chat" not in forms else f"chat{len(forms)}"
    forms[form] = tokenizer
    return form


def _task_name(exam_name: str, form: str) -> str:
    name = TASK + (f"_{re.sub(r'[^0-9A-Za-z]+', '_', exam_name).strip('_')}" if exam_name else "")
    return name if form == "plain" else f"{name}_{form}"


def _stale_note(run_path: Path, exam_hash: str | None) -> list[str]:
    """A note when the run was evaluated on another exam file than the data build holds now."""
    results = run_path / "eval" / "results.json"
    if not results.is_file():
        return [f"run {run_path.name} has no evaluation yet: ./launch.sh eval --run {run_path.name} gives exam_acc"]
    evaluated = json.loads(results.read_text(encoding="utf-8")).get("settings", {}).get("set_hashes", {}).get("exam")
    if evaluated and exam_hash and evaluated != exam_hash:
        return [
            f"the data build's exam changed since run {run_path.name} was evaluated: its results.json exam_acc is "
            "of another exam (./launch.sh eval again to compare)"
        ]
    return []
