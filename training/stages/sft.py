"""Stage 3, sft: supervised fine-tuning of the CPT model with LoRA, loss on assistant tokens only.

Every ChiMed-SFT conversation (general and medical, single- and multi-turn, one chat format) is rendered
with the chat template saved beside the tokenizer, the very template the app and the evaluation use. Each
assistant turn is a target (truncated to ``max_target_length``), everything before it a source (its end
kept, up to ``max_source_length``); the labels of every source token are -100, so only what the assistant
says carries loss. The adapter (``cfg.sft.lora``, paper: r 8, alpha 32, dropout 0.05) is saved on ``cpt``.
"""

from __future__ import annotations

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from training.config import Config
from training.data.files import read_jsonl
from training.modeling import load_stage
from training.stages.common import (
    StagePaths,
    finish_stage,
    peft_lora_config,
    stage_callbacks,
    train_resumably,
    training_arguments,
    training_dtype,
)


def run_sft_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """Train the SFT LoRA adapter on ``runs/<id>/cpt`` into ``runs/<id>/sft``."""
    # inputs and model
    conversations = read_jsonl(cfg.data_dir / "sft.jsonl")
    model, tokenizer = load_stage(paths.run_dir, "cpt", device="cpu", dtype=training_dtype(cfg))

    # trainer
    trainer = build_sft_trainer(cfg, paths, model, tokenizer, conversations)
    metrics = train_resumably(trainer, paths)
    metrics.update(conversations=len(conversations),
                   multi_turn=sum(1 for r in conversations if _assistant_turns(r["messages"]) > 1))

    # save: the adapter and the tokenizer (with the chat template) beside it
    finish_stage(paths, trainer.save_model, kind="lora", parent="cpt", fingerprint=fingerprint,
                 metrics=metrics, is_main=trainer.is_world_process_zero())


def build_sft_trainer(cfg: Config, paths: StagePaths, model, tokenizer, conversations: list[dict]) -> SFTTrainer:
    """SFTTrainer over tokenized conversations: it turns ``assistant_masks`` into labels (-100 on every
    token that is not the assistant's) and wraps the model in the ``cfg.sft.lora`` adapter."""
    dataset = Dataset.from_list([
        tokenize_conversation(tokenizer, r["messages"], cfg.sft.max_source_length, cfg.sft.max_target_length)
        for r in conversations])
    args = training_arguments(cfg, cfg.sft, paths, args_cls=SFTConfig,
                              max_length=cfg.sft.max_source_length + cfg.sft.max_target_length,
                              packing=False)
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_lora_config(cfg.sft.lora),
        callbacks=stage_callbacks(cfg, paths),
    )


def tokenize_conversation(tokenizer, messages: list[dict], max_source_length: int,
                          max_target_length: int) -> dict:
    """``{"input_ids", "assistant_masks"}`` of one conversation, rendered with the tokenizer's chat template.

    The conversation is cut at template boundaries: before each assistant turn the text so far (with the
    generation prompt) is a source, the turn itself a target. A source keeps its last
    ``max_source_length`` tokens (the generation prompt sits at its end), a target its first
    ``max_target_length``; turns stop once the sequence would pass ``max_source_length +
    max_target_length``. ``assistant_masks`` is 1 exactly on target tokens.
    """
    limit = max_source_length + max_target_length
    input_ids: list[int] = []
    mask: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        full = _render(tokenizer, messages[:i + 1], add_generation_prompt=False)
        if not (prompt.startswith(rendered) and full.startswith(prompt)):
            raise ValueError("the chat template does not render conversations as growing prefixes; "
                             "SFT cannot find the assistant turns in it")
        source = _ids(tokenizer, prompt[len(rendered):])[-max_source_length:]
        target = _ids(tokenizer, full[len(prompt):])[:max_target_length]
        if input_ids and len(input_ids) + len(source) + len(target) > limit:
            break
        input_ids += source + target
        mask += [0] * len(source) + [1] * len(target)
        rendered = full
    return {"input_ids": input_ids, "assistant_masks": mask}


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _assistant_turns(messages: list[dict]) -> int:
    return sum(1 for m in messages if m["role"] == "assistant")
