"""A standalone merged Hugging Face checkpoint of one stage of a run (``./launch.sh export``).

A stage trained here is a chain of checkpoints (dpo = cpt full weights + sft adapter + dpo adapter,
``training.modeling.stage_chain``); the export is that chain merged into one model, so plain
``transformers`` (and vLLM, which cannot stack adapters) load it without PEFT or this project:

    DIR/model.safetensors        the merged weights, in --dtype (default: what the arena serves in here)
    DIR/config.json, generation_config.json   eos/pad/bos from the run's tokenizer: generate stops
                                 where the arena stops
    DIR/tokenizer.json, tokenizer_config.json, chat_template.jinja   the run's tokenizer and template
    DIR/README.md                model card: research-only notice, provenance, evaluation
    DIR/export.json              the same provenance as JSON

The merge runs in float32 on CPU whatever the export dtype, and the model is cast once at the end, so
a bf16 export is the float32 merge rounded once. Everything is written to a temporary directory beside
DIR and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from core.config import Config
from core.errors import UserError
from core.files import directory_written_atomically
from core.registry import answering, get_stage
from training.evaluation.report import COLUMNS, NOTICE, format_value
from training.manifest import list_runs, read_manifest_at, run_dir
from training.modeling import default_device, default_dtype, load_stage, stage_chain, trust_remote_code

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXPORT_INFO = "export.json"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_stage` wrote: the directory, its size and the provenance in ``export.json``."""

    out: Path
    size_bytes: int
    provenance: dict


def export_stage(
    cfg: Config, run_id: str, stage: str, out: str | Path, dtype: str | None = None, force: bool = False
) -> ExportResult:
    """Write ``stage`` of run ``run_id`` as one merged Hugging Face checkpoint to ``out``.

    ``dtype`` is "float32", "bfloat16" or "float16" (default: the dtype the arena serves in on this
    machine, :func:`serving_dtype`). An existing ``out`` is refused unless ``force``, in which case it is
    replaced only once the new export is complete. A run or stage that does not exist, or an ``out`` that
    overlaps the run directory, is a one-line :class:`UserError`.
    """
    run_path = existing_run(cfg, run_id)
    manifest = read_manifest_at(run_path)
    if stage not in answering(manifest["stages"]):
        raise UserError(
            f"run {run_id} has no complete stage {stage!r} that answers prompts: export one of "
            f"{', '.join(answering(manifest['stages'])) or 'none (the run has no finished stage yet)'}"
        )
    out = Path(out)
    check_out_dir(out, run_path, force)
    torch_dtype = _parse_dtype(dtype) if dtype else serving_dtype(cfg)

    model, tokenizer = load_stage(run_path, stage, device="cpu", dtype=torch.float32)
    model.to(torch_dtype)
    # generation stops where the arena's does: at the run tokenizer's end-of-sequence token
    generation = model.generation_config
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    model.config.use_cache = True  # the stages train without a cache; an exported model is for inference

    provenance = stage_provenance(run_path, manifest, stage)
    provenance.update(
        dtype=str(torch_dtype).removeprefix("torch."),
        parameters=sum(p.numel() for p in model.parameters()),
        trust_remote_code=type(model).is_remote_code(),
        exported=datetime.now(UTC).isoformat(timespec="seconds"),
    )

    with directory_written_atomically(out, force) as partial:
        model.save_pretrained(partial)  # always safetensors in transformers 5
        tokenizer.save_pretrained(partial)
        (partial / "README.md").write_text(model_card(provenance), encoding="utf-8")
        (partial / EXPORT_INFO).write_text(
            json.dumps(provenance, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return ExportResult(out=out, size_bytes=size, provenance=provenance)


def serving_dtype(cfg: Config) -> torch.dtype:
    """The dtype the arena serves in on this machine (``app.device``, else CUDA when there is one)."""
    return default_dtype(cfg.app.device or default_device())


def existing_run(cfg: Config, run_id: str) -> Path:
    """The directory of ``run_id``; a one-line error listing the runs there are when it is not one."""
    path = run_dir(cfg, run_id)
    if not run_id or not (path / "manifest.json").is_file():
        runs = [m["run_id"] for m in list_runs(cfg)]
        raise UserError(
            f"no run {run_id!r} under {cfg.runs_dir}: runs there: "
            f"{', '.join(runs) or 'none (train one with ./launch.sh train-all)'}"
        )
    return path


def check_out_dir(out: Path, run_path: Path, force: bool) -> None:
    """Refuse an existing ``out`` without ``force``, and any ``out`` that is, holds or lies inside the run."""
    if out.exists() or out.is_symlink():
        if not force:
            raise UserError(f"--out {out} already exists: choose another directory, or pass --force to replace it")
    target, run = out.resolve(), run_path.resolve()
    if target == run or run.is_relative_to(target) or target.is_relative_to(run):
        raise UserError(f"--out {out} overlaps the run directory {run_path}: write the export outside the run")


def _parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"--dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def stage_provenance(run_path: Path, manifest: dict, stage: str) -> dict:
    """Where the stage comes from: run, chain of checkpoints merged, base model, data, pairs, metrics."""
    chain = stage_chain(run_path, stage)
    base = manifest["stages"].get("base")
    base_metrics = (base or {}).get("metrics") or {}
    provenance = {
        "run_id": manifest["run_id"],
        "stage": stage,
        "profile": manifest.get("profile"),
        "run_created": manifest.get("created"),
        "parent_run": manifest.get("parent_run"),
        "chain": [_chain_link(entry) for entry in chain],
        "merged": len(chain) > 1,
        "base_model": None
        if base is None
        else {
            "source": base_metrics.get("source"),  # a local checkpoint (paper profile); None: pretrained here
            "layout": base_metrics.get("layout"),
            "conversion": base_metrics.get("conversion"),  # import-model's record, for a legacy layout
            "run_trust_remote_code": trust_remote_code(run_path),
        },
        "config_sha256": manifest.get("config_sha256"),
        "data_sha256": manifest.get("data_sha256", {}),
        "training_metrics": manifest["stages"][stage].get("metrics") or {},
        "eval_metrics": _eval_metrics(run_path, stage),
    }
    if get_stage(stage).preference:
        pair_ids = manifest.get("dpo_pair_ids", [])
        provenance["dpo_pairs"] = len(pair_ids)
        provenance["dpo_pair_ids_sha256"] = hashlib.sha256("\n".join(sorted(pair_ids)).encode()).hexdigest()
    return provenance


def _chain_link(entry: dict) -> dict:
    """One checkpoint of the chain, with the training fingerprint its ``stage.json`` recorded."""
    info = Path(entry["abspath"]) / "stage.json"
    fingerprint = json.loads(info.read_text(encoding="utf-8")).get("fingerprint") if info.is_file() else None
    return {"stage": entry["stage"], "kind": entry["kind"], "parent": entry["parent"], "fingerprint": fingerprint}


def _eval_metrics(run_path: Path, stage: str) -> dict | None:
    """The stage's row of ``eval/results.json``, when the run was evaluated."""
    path = run_path / "eval" / "results.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("stages", {}).get(stage)


def describe_chain(chain: list[dict]) -> str:
    """E.g. ``cpt (full weights) + sft (LoRA adapter) + dpo (LoRA adapter), merged``."""
    parts = [f"{c['stage']} ({'full weights' if c['kind'] == 'full' else 'LoRA adapter'})" for c in chain]
    return " + ".join(parts) + (", merged" if len(chain) > 1 else "")


def model_card(p: dict) -> str:
    """``README.md`` of an export: notice, what it is, how to load it, provenance and evaluation."""
    base = p["base_model"] or {}
    if base.get("conversion"):
        base_text = (
            f"`{base['source']}` ({base.get('layout')} layout), converted to its native architecture "
            "(the record is in `export.json`)"
        )
    elif base.get("source"):
        base_text = f"`{base['source']}` (a local checkpoint the run linked)"
    else:
        base_text = f"pretrained here on general Chinese text (stage `base` of run `{p['run_id']}`)"
    trust = ", trust_remote_code=True" if p["trust_remote_code"] else ""
    rows = [
        (
            "run",
            f"`{p['run_id']}` (profile `{p['profile']}`, created {p['run_created']})"
            + (f", continuing run `{p['parent_run']}`" if p["parent_run"] else ""),
        ),
        ("stage", f"`{p['stage']}` = {describe_chain(p['chain'])}"),
        ("base model", base_text),
        ("data sha256", "<br>".join(f"{split}: `{sha}`" for split, sha in p["data_sha256"].items())),
        ("config sha256", f"`{p['config_sha256']}`"),
    ]
    if "dpo_pairs" in p:
        rows.append(
            (
                "preference pairs",
                f"{p['dpo_pairs']} (ids in the run's manifest; sha256 of the sorted ids `{p['dpo_pair_ids_sha256']}`)",
            )
        )
    rows += [("dtype", p["dtype"]), ("parameters", f"{p['parameters']:,}"), ("exported", p["exported"])]
    parts = [
        "---\nlibrary_name: transformers\nlanguage:\n- zh\ntags:\n- medical\n- chimed-arena\n---",
        f"# ChiMed Arena run {p['run_id']}: {p['stage']}",
        f"> {NOTICE}",
        f"This is {get_stage(p['stage']).description}, exported as one standalone checkpoint "
        f"({describe_chain(p['chain'])}). Prompts use the run's chat template (问：/答： turns); "
        "generation stops at the tokenizer's end-of-sequence token, as in the arena.",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("DIR"{trust})\n'
        f'tokenizer = AutoTokenizer.from_pretrained("DIR"{trust})\n'
        'ids = tokenizer.apply_chat_template([{"role": "user", "content": "头痛怎么办？"}],\n'
        '                                    add_generation_prompt=True, return_tensors="pt")["input_ids"]\n'
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0, ids.shape[1]:], skip_special_tokens=True))\n"
        "```",
        "## Provenance\n\n" + _table(rows),
    ]
    metrics = p["eval_metrics"]
    if metrics:
        parts.append(
            "## Evaluation (the run's `eval/results.json`; percentages except perplexity)\n\n"
            + _table(
                [(label, format_value(k, metrics[k])) for k, label in COLUMNS if metrics.get(k) is not None]
                + [("exam n", str(metrics.get("exam_n")))]
            )
        )
    return "\n\n".join(parts) + "\n"


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
