"""Stage 3, sft: supervised fine-tuning of the CPT model with LoRA, loss on assistant tokens only.

Every ChiMed-SFT conversation (general and medical, single- and multi-turn, one chat format) is rendered
with the chat template saved beside the tokenizer, the very template the app and the evaluation use. Each
assistant turn is a target (truncated to ``max_target_length``), everything before it a source (its end
kept, up to ``max_source_length``); the labels of every source token are -100, so only what the assistant
says carries loss. The adapter (``cfg.sft.lora``, paper: r 8, alpha 32, dropout 0.05) is saved on ``cpt``.
"""

from __future__ import annotations

import bisect
import itertools

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from core.config import Config
from core.files import read_jsonl
from training.modeling import load_stage
from training.recipes import recipe
from training.trainer.arguments import training_arguments, training_dtype
from training.trainer.callbacks import stage_callbacks
from training.trainer.lifecycle import finish_stage, train_resumably
from training.trainer.logprobs import logprob_metrics, patch_trainer_logprobs
from training.trainer.lora import describe_lora, lora_record, peft_lora_config
from training.trainer.paths import StagePaths


@recipe("sft")
def run_sft_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """Train the SFT LoRA adapter on ``runs/<id>/cpt`` into ``runs/<id>/sft``."""
    # inputs and model
    conversations = read_jsonl(cfg.data_dir / "sft.jsonl")
    model, tokenizer = load_stage(paths.run_dir, paths.parent, device="cpu", dtype=training_dtype(cfg))

    # trainer
    trainer, lora, logprobs = build_sft_trainer(cfg, paths, model, tokenizer, conversations)
    print(describe_lora(paths.stage, lora), flush=True)
    metrics = train_resumably(trainer, paths)
    metrics.update(
        lora=lora,
        conversations=len(conversations),
        **logprob_metrics(logprobs),
        multi_turn=sum(1 for r in conversations if _assistant_turns(r["messages"]) > 1),
    )

    # save: the adapter and the tokenizer (with the chat template) beside it
    finish_stage(
        paths,
        trainer.save_model,
        kind="lora",
        parent=paths.parent,
        fingerprint=fingerprint,
        metrics=metrics,
        is_main=trainer.is_world_process_zero(),
    )


def build_sft_trainer(
    cfg: Config, paths: StagePaths, model, tokenizer, conversations: list[dict]
) -> tuple[SFTTrainer, dict, dict]:
    """SFTTrainer over tokenized conversations: it turns ``assistant_masks`` into labels (-100 on every
    token that is not the assistant's) and wraps the model in the ``cfg.sft.lora`` adapter; its loss is
    computed as ``cfg.sft.padding_free`` / ``lm_head_loss`` say (``training/trainer/logprobs.py``). Also the
    adapter's record (:func:`~training.trainer.lora.lora_record`) and the log-probability path's."""
    dataset = Dataset.from_list(
        [
            tokenize_conversation(tokenizer, r["messages"], cfg.sft.max_source_length, cfg.sft.max_target_length)
            for r in conversations
        ]
    )
    args = training_arguments(
        cfg,
        cfg.sft,
        paths,
        args_cls=SFTConfig,
        max_length=cfg.sft.max_source_length + cfg.sft.max_target_length,
        packing=False,
    )
    lora = peft_lora_config(cfg.sft.lora, model, "sft.lora.target_modules")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=stage_callbacks(cfg, paths),
    )
    return trainer, lora_record(trainer.model, lora), patch_trainer_logprobs(trainer, cfg.sft)


def tokenize_conversation(tokenizer, messages: list[dict], max_source_length: int, max_target_length: int) -> dict:
    """``{"input_ids", "assistant_masks"}`` of one conversation, rendered with the tokenizer's chat template.

    The rendered conversation is tokenized whole, as the evaluation, DPO and the arena tokenize it (pieces
    tokenized apart can differ at their edges, e.g. sentencepiece's dummy prefix), then cut at template
    boundaries: before each assistant turn the text so far (with the generation prompt) is a source, the
    turn itself a target; a token belongs to the piece it starts in. A source keeps its last
    ``max_source_length`` tokens (the generation prompt sits at its end), a target its first
    ``max_target_length``; turns stop once the sequence would pass ``max_source_length +
    max_target_length``. ``assistant_masks`` is 1 exactly on target tokens.
    """
    limit = max_source_length + max_target_length
    pieces: list[str] = []  # source, target, source, target, ...
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (prompt.startswith(rendered) and full.startswith(prompt)):
            raise ValueError(
                "the chat template does not render conversations as growing prefixes; "
                "SFT cannot find the assistant turns in it"
            )
        pieces += [prompt[len(rendered) :], full[len(prompt) :]]
        rendered = full
    input_ids: list[int] = []
    mask: list[int] = []
    split = _split_ids(tokenizer, pieces)
    for source, target in zip(split[0::2], split[1::2], strict=True):
        source, target = source[-max_source_length:], target[:max_target_length]
        if input_ids and len(input_ids) + len(source) + len(target) > limit:
            break
        input_ids += source + target
        mask += [0] * len(source) + [1] * len(target)
    return {"input_ids": input_ids, "assistant_masks": mask}


def _split_ids(tokenizer, pieces: list[str]) -> list[list[int]]:
    """The token ids of ``"".join(pieces)``, divided among the pieces by where each token starts."""
    if not getattr(tokenizer, "is_fast", False):  # no offsets: each piece on its own
        return [_ids(tokenizer, piece) for piece in pieces]
    encoded = tokenizer("".join(pieces), add_special_tokens=False, return_offsets_mapping=True)
    ends = list(itertools.accumulate(len(piece) for piece in pieces))
    out: list[list[int]] = [[] for _ in pieces]
    for token, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        out[min(bisect.bisect_right(ends, start), len(pieces) - 1)].append(token)
    return out


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _assistant_turns(messages: list[dict]) -> int:
    return sum(1 for m in messages if m["role"] == "assistant")
