"""The base model a run starts from, and the checks it passes before anything trains.

tiny/demo pretrain their own base (``training/recipes/base.py``). The paper profile brings one
(``model.path``): an architecture transformers implements is linked into the run as it is; a known legacy
layout (Baichuan-7B, Baichuan2-7B) is converted once into the run's ``base/`` (``training/model_import.py``);
other remote code runs only with ``model.trust_remote_code``. Every base passes the pre-flight
(``training/preflight.py``), and each LoRA stage's targets are checked against the base's architecture before
any stage trains.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from core.config import Config
from core.errors import UserError
from core.files import write_json_atomic
from core.registry import get_stage, stage_names
from training.manifest import read_manifest_at, stage_entry, write_manifest
from training.model_import import CONVERTIBLE, convert_checkpoint, detect_layout
from training.preflight import preflight
from training.trainer.lora import resolve_lora_targets
from training.trainer.paths import STAGE_INFO, read_stage_info


def is_converted(cfg: Config) -> bool:
    """Whether ``model.path`` is a legacy layout that the run converts instead of linking."""
    return detect_layout(Path(cfg.model.path).expanduser()) in CONVERTIBLE.values()


def check_base_model_dir(cfg: Config) -> None:
    """``model.path`` must be a local Hugging Face causal-LM directory (checked from its config alone)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not cfg.model.path:
        raise UserError(
            "model.path is empty: the paper profile starts from a local Hugging Face causal-LM "
            "directory; pass model.path=/models/Baichuan-7B"
        )
    path = Path(cfg.model.path).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(
            f"model.path={path} is not a Hugging Face model directory (no config.json there); "
            "set it to a local causal-LM checkpoint such as /models/Baichuan-7B"
        )
    layout = detect_layout(path)
    if layout in CONVERTIBLE.values():
        return  # converted to its native architecture: its own modelling code never runs
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if layout in ("remote", "baichuan-alibi") and "AutoModelForCausalLM" in raw.get("auto_map", {}):
        if not cfg.model.trust_remote_code:
            raise UserError(
                f"model.path={path} ships its own modelling code ({layout} layout, which cannot be "
                "converted to a native architecture): set model.trust_remote_code=true if you trust "
                "it; it is used only if it passes the pre-flight"
            )
        return
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"model.path={path}: its config.json does not load ({str(err).splitlines()[0]})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(
            f"model.path={path} is a {config.model_type!r} model, not a causal language model: "
            "point it at a decoder-only LM (LLaMA, Baichuan, Qwen, ...)"
        )


def check_lora_targets(cfg: Config, plan: list[str]) -> list[UserError]:
    """Each LoRA stage's ``target_modules`` against the linear layers the base really has, before anything
    trains (on a weightless copy of the architecture; remote code is checked when its stage loads it)."""
    sections = list(_lora_sections(cfg, plan))
    skeleton = _weightless_base(cfg) if sections else None
    problems = []
    for stage, lora in sections if skeleton is not None else []:
        try:
            resolve_lora_targets(skeleton, list(lora.target_modules), f"{stage}.lora.target_modules")
        except UserError as err:
            problems.append(err)
    return problems


def _lora_sections(cfg: Config, plan: list[str]):
    """``(stage, its lora settings)`` of the planned stages that train a LoRA adapter."""
    for name in stage_names():
        section = getattr(cfg, get_stage(name).section)
        if name in plan and getattr(section, "lora", None) is not None and getattr(section, "use_lora", True):
            yield name, section.lora


def _weightless_base(cfg: Config):
    """The base architecture on the meta device (no memory, no weights read), or None for remote code."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    path = Path(cfg.model.path).expanduser() if cfg.model.path else None
    layout = detect_layout(path) if path else "pretrained here"
    with torch.device("meta"):
        if layout == "native":
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(path)))
        if layout in ("remote", "baichuan-alibi"):
            return None
        # pretrained here, or converted: LLaMA, whose layer names do not depend on its size
        return LlamaForCausalLM(
            LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2)
        )


def preflight_linked_base(cfg: Config) -> dict | None:
    """The pre-flight of ``model.path`` when it is used where it lies (a native architecture, or remote code
    the user trusts); a legacy layout is checked after its conversion instead."""
    path = Path(cfg.model.path).expanduser()
    if is_converted(cfg):
        return None
    print(f"pre-flight: {path}", flush=True)
    record = preflight(path, trust_remote_code=cfg.model.trust_remote_code)
    print(f"pre-flight: passed ({record['device']}, {record['dtype']})", flush=True)
    return record


def link_base(cfg: Config, paths, is_main_machine: bool, check: dict | None) -> None:
    if not is_main_machine:
        return
    _link_model_dir(cfg, paths)
    manifest = read_manifest_at(paths.run_dir)
    source = str(Path(cfg.model.path).expanduser().resolve())
    metrics = {"source": source, "layout": detect_layout(Path(source)), "preflight": check}
    previous = manifest["stages"].get("base", {}).get("metrics", {})
    if check is None and previous.get("source") == source:  # resumed past the base: keep its record
        metrics = previous
    manifest["stages"]["base"] = stage_entry("base", "full", None, metrics)
    write_manifest(paths.run_dir, manifest)
    print(f"base: {cfg.model.path} (linked, not trained here)", flush=True)


def convert_base(cfg: Config, paths, is_main_machine: bool) -> None:
    """A legacy-layout ``model.path`` becomes ``runs/<id>/base`` in its native architecture (converted once,
    checked by the pre-flight before it is renamed into place)."""
    source = Path(cfg.model.path).expanduser().resolve()
    fingerprint = hashlib.sha256(f"convert:{source}".encode()).hexdigest()
    done = read_stage_info(paths.final)
    if not is_main_machine or (done and done["fingerprint"] == fingerprint):
        if is_main_machine:
            print(f"base: converted from {source}, complete, skipped", flush=True)
        return
    staging = paths.work / "converted"
    print(f"base: converting {source} ({detect_layout(source)} layout) to its native architecture", flush=True)
    conversion = convert_checkpoint(source, staging, force=True)
    check = preflight(staging, setting=f"base converted from {source}")
    print(f"pre-flight: passed ({check['device']}, {check['dtype']})", flush=True)
    metrics = {
        "source": str(source),
        "layout": conversion["source_layout"],
        "conversion": conversion,
        "preflight": check,
    }
    write_json_atomic(
        staging / STAGE_INFO,
        {"stage": "base", "kind": "full", "parent": None, "fingerprint": fingerprint, "metrics": metrics},
    )
    if paths.final.is_symlink():
        paths.final.unlink()
    elif paths.final.exists():
        shutil.rmtree(paths.final)
    os.replace(staging, paths.final)
    shutil.rmtree(paths.work, ignore_errors=True)
    info = read_stage_info(paths.final)
    manifest = read_manifest_at(paths.run_dir)
    manifest["stages"]["base"] = stage_entry("base", info["kind"], info["parent"], info["metrics"])
    write_manifest(paths.run_dir, manifest)


def _link_model_dir(cfg: Config, paths) -> None:
    """``runs/<id>/base`` becomes a link to ``cfg.model.path`` (7B weights are not copied)."""
    target = Path(cfg.model.path).expanduser().resolve()
    if paths.final.is_symlink() or paths.final.exists():
        if paths.final.is_symlink() and Path(os.readlink(paths.final)) == target:
            return
        raise FileExistsError(f"{paths.final} exists and is not a link to {target}")
    paths.final.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, paths.final, target_is_directory=True)
