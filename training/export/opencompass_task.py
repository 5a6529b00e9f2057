"""The run's exam as OpenCompass datasets, written by ``./launch.sh export-lm-eval-task`` beside the lm-eval tasks.

``OUT/opencompass`` is a config directory for OpenCompass's command line (``opencompass --config-dir
OUT/opencompass --datasets NAME ...``):

- ``datasets/<task>_ppl.py``, one per lm-eval task (plain and chat-templated forms): PPL mode on the same rows,
  the prompt the evaluation scores the options after followed by each option's text (``{"A": "{prompt}{A}",
  ...}``). OpenCompass's ``PPLInferencer`` picks the option whose whole sequence, prompt and option together,
  has the lowest mean token loss (``HuggingFace._get_ppl``: the summed loss over the sequence divided by its
  number of tokens, the first, unpredicted, one included). That is not the project's ``exam_acc`` rule (the option's own log-likelihood per
  character): the shared prompt's loss is part of every option's mean, and the option is weighed by its tokens.
- ``datasets/<task>_gen.py``, one per exam (its plain task's name): gen mode, for a chat API. The question is asked with its lettered
  options, as the evaluation's letter scoring words it (:func:`training.evaluation.exam.exam_conversation` with
  ``by_letter``), the k-shot demonstrations as earlier turns answered by their letters; the first capital
  letter of the model's answer is its pick (``first_capital_postprocess``, as OpenCompass's own C-Eval gen
  configs). The server applies the stage's prompt form (chat template or 问：/答：).
- ``models/chimed_export.py``: the merged export named by ``CHIMED_EXPORT_DIR`` (``./launch.sh export``) as
  OpenCompass's ``HuggingFaceCausalLM``, float32 on the CPU, one sequence at a time (no padding). Not the
  ``--hf-type base`` model of OpenCompass's command line (``HuggingFaceBaseModel``): that one calls the
  tokenizer's ``batch_encode_plus``, which transformers 5 no longer has.
- ``models/chimed_serve_<stage>.py``, one per stage: that stage at ``./launch.sh serve`` as OpenCompass's
  ``OpenAI`` model, greedy. The server's base URL comes from ``CHIMED_SERVE_URL`` (default
  ``http://127.0.0.1:<app.port>/v1``), the token from ``OPENAI_API_KEY`` (any key when the store has no
  accounts).

OpenCompass's ``OpenAI`` model has no PPL mode: ``models/openai_api.py`` defines no ``get_ppl``, so
``BaseAPIModel.get_ppl`` raises "does not support ppl-based evaluation yet, try gen-based instead". PPL mode
therefore runs on a stage's merged export (``./launch.sh export``), ``models/chimed_export.py``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from training.evaluation.evaluate import Exam
from training.evaluation.exam import exam_conversation, question_with_options

FOLDER = "opencompass"
GEN_MAX_TOKENS = 16  # room for "B" or "答案：B"; the first capital letter is the pick
ROLES = {"user": "HUMAN", "assistant": "BOT"}


def write_opencompass_configs(
    folder: Path, final: Path, port: int, tasks: dict[str, tuple[Exam, bool, list[dict]]], models: list[tuple[str, str]]
) -> list[str]:
    """Write ``folder``/opencompass (``final``: where ``folder`` will be once written). ``tasks``: lm-eval task
    name -> (its exam, whether it is the plain form, its rows from
    :func:`training.export.lm_eval_task.exam_rows`); ``models``: (RUN/stage, its tokenizer directory) per stage;
    ``port``: serve's default port. Returns the dataset config names."""
    root = folder / FOLDER
    for sub in ("data", "datasets", "models"):
        (root / sub).mkdir(parents=True)
    names = []
    for task, (exam, plain, rows) in tasks.items():
        files = _write_rows(root / "data", final / FOLDER / "data", task, exam, rows)
        names.append(f"{task}_ppl")
        (root / "datasets" / f"{names[-1]}.py").write_text(_ppl_config(names[-1], files), encoding="utf-8")
        if plain:  # the gen form: a chat API applies the stage's prompt form itself
            names.append(f"{task}_gen")
            demos = exam_conversation(exam.items[0], exam.demos, True)[:-1] if exam.items else []
            (root / "datasets" / f"{names[-1]}.py").write_text(_gen_config(names[-1], files, demos), encoding="utf-8")
    (root / "models" / "chimed_export.py").write_text(EXPORT_MODEL, encoding="utf-8")
    for model_id, tokenizer in models:
        stage = model_id.rsplit("/", 1)[1]
        (root / "models" / f"chimed_serve_{stage}.py").write_text(
            _serve_model_config(model_id, tokenizer, port), encoding="utf-8"
        )
    return names


def _write_rows(folder: Path, final: Path, task: str, exam: Exam, rows: list[dict]) -> dict[str, Path]:
    """The rows as OpenCompass reads them, one jsonl per set of option letters (PPL mode scores a fixed set of
    labels): ``prompt``, ``question`` (with its lettered options), each option by its letter, ``answer`` (a
    letter). Returns letters -> the file's final path."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row, item in zip(rows, exam.items, strict=True):
        groups["".join(row["letters"])].append(
            {
                "id": row["id"],
                "prompt": row["prompt"],
                "question": question_with_options(item),
                **dict(zip(row["letters"], row["choices"], strict=True)),
                "answer": row["letters"][row["target"]],
            }
        )
    files = {}
    for letters, group in groups.items():
        name = f"{task}.jsonl" if len(groups) == 1 else f"{task}_{letters}.jsonl"
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in group), encoding="utf-8")
        files[letters] = final / name
    return files


def _abbr(name: str, letters: str, files: dict) -> str:
    return name if len(files) == 1 else f"{name}_{letters}"


HEADER = (
    "# Written by ./launch.sh export-lm-eval-task (training/export/opencompass_task.py); see docs/serving-fields.md\n"
)


def _ppl_config(name: str, files: dict[str, Path]) -> str:
    datasets = [
        "    dict(\n"
        f"        abbr={_abbr(name, letters, files)!r},\n"
        "        type=JsonlDataset,\n"
        f"        path={str(path)!r},\n"
        f"        reader_cfg=dict(input_columns=['prompt', {', '.join(repr(c) for c in letters)}], "
        "output_column='answer'),\n"
        "        infer_cfg=dict(\n"
        "            prompt_template=dict(type=PromptTemplate, template={"
        + ", ".join(f"{c!r}: '{{prompt}}{{{c}}}'" for c in letters)
        + "}),\n"
        "            retriever=dict(type=ZeroRetriever),\n"
        "            inferencer=dict(type=PPLInferencer),\n"
        "        ),\n"
        "        eval_cfg=dict(evaluator=dict(type=AccEvaluator)),\n"
        "    ),\n"
        for letters, path in files.items()
    ]
    return (
        HEADER
        + "from opencompass.datasets import JsonlDataset\n"
        + "from opencompass.openicl.icl_evaluator import AccEvaluator\n"
        + "from opencompass.openicl.icl_inferencer import PPLInferencer\n"
        + "from opencompass.openicl.icl_prompt_template import PromptTemplate\n"
        + "from opencompass.openicl.icl_retriever import ZeroRetriever\n\n"
        + f"{name}_datasets = [\n"
        + "".join(datasets)
        + "]\n"
    )


def _gen_config(name: str, files: dict[str, Path], demos: list[dict]) -> str:
    turns = "".join(f"                dict(role={ROLES[m['role']]!r}, prompt={m['content']!r}),\n" for m in demos)
    datasets = [
        "    dict(\n"
        f"        abbr={_abbr(name, letters, files)!r},\n"
        "        type=JsonlDataset,\n"
        f"        path={str(path)!r},\n"
        "        reader_cfg=dict(input_columns=['question'], output_column='answer'),\n"
        "        infer_cfg=dict(\n"
        "            prompt_template=dict(type=PromptTemplate, template=dict(round=[\n"
        + turns
        + "                dict(role='HUMAN', prompt='{question}'),\n"
        "                dict(role='BOT', prompt='{answer}'),\n"
        "            ])),\n"
        "            retriever=dict(type=ZeroRetriever),\n"
        f"            inferencer=dict(type=GenInferencer, max_out_len={GEN_MAX_TOKENS}),\n"
        "        ),\n"
        "        eval_cfg=dict(evaluator=dict(type=AccEvaluator), pred_postprocessor=dict(type=first_capital_postprocess)),\n"
        "    ),\n"
        for letters, path in files.items()
    ]
    return (
        HEADER
        + "from opencompass.datasets import JsonlDataset\n"
        + "from opencompass.openicl.icl_evaluator import AccEvaluator\n"
        + "from opencompass.openicl.icl_inferencer import GenInferencer\n"
        + "from opencompass.openicl.icl_prompt_template import PromptTemplate\n"
        + "from opencompass.openicl.icl_retriever import ZeroRetriever\n"
        + "from opencompass.utils.text_postprocessors import first_capital_postprocess\n\n"
        + f"{name}_datasets = [\n"
        + "".join(datasets)
        + "]\n"
    )


EXPORT_MODEL = (
    HEADER
    + """import os

from opencompass.models import HuggingFaceCausalLM

path = os.environ.get('CHIMED_EXPORT_DIR')
if not path:
    raise SystemExit('set CHIMED_EXPORT_DIR to a merged export: ./launch.sh export --run RUN --stage STAGE --out DIR')
models = [
    dict(
        abbr=os.path.basename(os.path.normpath(path)),
        type=HuggingFaceCausalLM,
        path=path,
        model_kwargs=dict(torch_dtype='float32', device_map='cpu'),
        batch_padding=False,  # one sequence at a time, as the evaluation scores them: no padding
        batch_size=8,
        run_cfg=dict(num_gpus=0),
    ),
]
"""
)


def _serve_model_config(model_id: str, tokenizer: str, port: int) -> str:
    return (
        HEADER + "import os\n\nfrom opencompass.models import OpenAI\n\n" + "models = [\n"
        "    dict(\n"
        f"        abbr={model_id.replace('/', '-')!r},\n"
        "        type=OpenAI,\n"
        f"        path={model_id!r},\n"
        f"        openai_api_base=os.environ.get('CHIMED_SERVE_URL', 'http://127.0.0.1:{port}/v1').rstrip('/')"
        " + '/chat/completions',\n"
        "        key=os.environ.get('OPENAI_API_KEY', 'no accounts: any key'),\n"
        f"        tokenizer_path={tokenizer!r},  # the stage's own tokenizer (nothing is downloaded)\n"
        "        meta_template=dict(round=[dict(role='HUMAN', api_role='HUMAN'), "
        "dict(role='BOT', api_role='BOT', generate=True)]),\n"
        "        temperature=0,  # greedy, as the evaluation's generation\n"
        "        query_per_second=16,\n"
        "        retry=2,\n"
        "        batch_size=8,\n"
        f"        max_out_len={GEN_MAX_TOKENS},\n"
        "    ),\n"
        "]\n"
    )
