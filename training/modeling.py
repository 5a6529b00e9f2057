"""Loading models and tokenizers, for the stages and for inference (evaluation, app, tests).

A run's checkpoints (docs/design.md, ``manifest.json``):

    base/  full model (tiny/demo: pretrained here; paper: a link to the local HF directory)
    cpt/   full model, continued pre-training of base
    sft/   LoRA adapter on cpt
    dpo/   LoRA adapter trained on the SFT model (cpt weights + merged sft adapter)

so serving DPO = cpt + sft adapter + dpo adapter, both active. :func:`load_stage` returns any stage as
one ready-to-generate model with the adapters merged; :func:`stage_chain` names the pieces for code
that wants to keep one full model and switch adapters (the app).

The chat template is saved with the tokenizer (``chat_template.jinja`` beside every stage), so every
caller formats conversations the same way with
``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``. In transformers 5 that call
returns a ``BatchEncoding`` (use ``["input_ids"]``) or, with ``tokenize=False``, the prompt text.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from core.errors import UserError
from core.prompting import CHAT_TEMPLATE
from core.registry import get_stage, is_stage
from training.manifest import read_manifest_at

# Special tokens of the tokenizers trained here (tiny/demo). "<|end|>" closes every assistant turn and
# every pretraining document, so it is also the end-of-sequence token generation stops at.
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "<|end|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]


CHAT_TEMPLATE_POLICIES = ("auto", "project")  # model.chat_template (core/config/)


def ensure_chat_template(tokenizer, policy: str = "auto"):
    """Give ``tokenizer`` :data:`CHAT_TEMPLATE` if it has no template (or always, with ``policy="project"``),
    and a pad token if it has none (its eos token: padding is masked out everywhere)."""
    if policy not in CHAT_TEMPLATE_POLICIES:
        raise UserError(f"model.chat_template={policy!r}: choose {' or '.join(CHAT_TEMPLATE_POLICIES)}")
    if policy == "project" or not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_tokenizer(path: str | Path, trust_remote_code: bool = False, chat_template: str = "auto"):
    """The tokenizer saved in a stage (or base-model) directory, with a chat template (``chat_template``:
    the policy of ``model.chat_template``) and a pad token."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise UserError(f"tokenizer directory {path} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(
            f"{path} holds no loadable tokenizer ({str(err).splitlines()[0]}); "
            "point model.path at a Hugging Face model directory"
        ) from None
    return ensure_chat_template(tokenizer, chat_template)


def default_dtype(device: str | torch.device) -> torch.dtype:
    """float32 on CPU (exact, and what the tiny/demo models train in); bf16 on a GPU that has it."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(
    path: str | Path, trust_remote_code: bool = False, dtype: torch.dtype | None = None, setting: str = "model.path"
):
    """A full causal LM from a local directory; one-line :class:`UserError` if it is missing or not one.

    ``setting`` names the config key the user should fix when the directory is wrong.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserError(
            f"{setting}={path} is not a Hugging Face model directory (no config.json there); "
            "set it to a local causal-LM checkpoint such as /models/Baichuan-7B"
        )
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), config=config, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code
        )
    except (ValueError, OSError, ImportError, KeyError, AttributeError, TypeError) as err:
        # remote modelling code written for an older transformers fails in many ways at load time
        hint = (
            " (or set model.trust_remote_code=true if it ships its own modelling code)"
            if "trust_remote_code" in str(err)
            else ""
        )
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"{setting}={path} is not a causal language model that transformers can load{hint}: {first}"
        ) from None
    return model


def _run_model_setting(run_dir: Path, key: str, default):
    """A ``model.*`` setting the run was trained with (its ``config.json`` beside the manifest)."""
    path = Path(run_dir) / "config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")).get("model", {}).get(key, default)
    return default


def trust_remote_code(run_dir: Path) -> bool:
    """The run's own ``model.trust_remote_code``."""
    return bool(_run_model_setting(run_dir, "trust_remote_code", False))


def stage_tokenizer(run_dir: str | Path, chain: list[dict]):
    """The tokenizer of a stage (:func:`stage_chain`) under the run's ``model.chat_template`` policy: what
    training, the evaluation and the arena all format conversations with."""
    return load_tokenizer(
        tokenizer_dir(chain),
        trust_remote_code=trust_remote_code(run_dir),
        chat_template=_run_model_setting(run_dir, "chat_template", "auto"),
    )


def stage_chain(run_dir: str | Path, stage: str) -> list[dict]:
    """The checkpoints that make up ``stage``, root first: the full model, then the adapters to apply.

    Each item is the manifest entry plus ``"stage"`` and an absolute ``"abspath"``; e.g. for "dpo":
    ``[cpt (full), sft (lora), dpo (lora)]``.
    """
    run_dir = Path(run_dir)
    stages = read_manifest_at(run_dir)["stages"]
    chain, name = [], stage
    while name is not None:
        if name not in stages:
            raise UserError(
                f"run {run_dir.name} has no complete '{name}' stage (needed for {stage}); "
                f"its stages: {', '.join(stages) or 'none'}"
            )
        entry = dict(stages[name], stage=name, abspath=str((run_dir / stages[name]["path"]).resolve()))
        chain.insert(0, entry)
        name = entry["parent"] if entry["kind"] == "lora" else None
    return chain


def load_stage(run_dir: str | Path, stage: str, device: str | None = None, dtype: torch.dtype | None = None):
    """``(model, tokenizer)`` of one stage of a run, in eval mode on ``device``, ready to generate.

    LoRA stages are merged into their parents (sft = cpt + sft adapter; dpo = cpt + sft + dpo
    adapters). The tokenizer carries the run's chat template. ``device`` defaults to CUDA when there
    is one, ``dtype`` to float32 on CPU and bf16 on GPUs that support it.
    """
    from peft import PeftModel

    run_dir = Path(run_dir)
    if is_stage(stage) and not get_stage(stage).generative:
        raise UserError(
            f"stage {stage} of run {run_dir.name} does not generate (a reward model): load it with "
            "training.recipes.rm.load_reward_model"
        )
    chain = stage_chain(run_dir, stage)
    trust = trust_remote_code(run_dir)
    device = device or default_device()
    model = load_causal_lm(
        chain[0]["abspath"],
        trust_remote_code=trust,
        dtype=dtype or default_dtype(device),
        setting=f"{run_dir.name}/{chain[0]['path']}",
    )
    for adapter in chain[1:]:
        model = PeftModel.from_pretrained(model, adapter["abspath"]).merge_and_unload()
    tokenizer = stage_tokenizer(run_dir, chain)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    return model, tokenizer


def tokenizer_dir(chain: list[dict]) -> str:
    """The stage's own tokenizer when saved with it (every stage trained here saves one), else the root's."""
    for entry in reversed(chain):
        if (Path(entry["abspath"]) / "tokenizer_config.json").is_file():
            return entry["abspath"]
    return chain[0]["abspath"]
