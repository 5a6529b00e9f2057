"""What the stages trained on preference pairs share (dpo, orpo, simpo): ChiMed-DPO read as TRL's
conversational preference dataset, the pair ids saved beside the adapter (the manifest's ``dpo_pair_ids``)
and the pair counts and last reward accuracy/margin in the stage's metrics.

Each recipe module keeps its own trainer; only these inputs and outputs are common to them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.config import Config
from core.errors import UserError
from core.files import read_jsonl, write_json_atomic

PAIR_IDS = "pair_ids.json"  # in a stage trained on preference pairs: the ids of the pairs it learned from


def read_pairs(cfg: Config) -> list[dict]:
    """ChiMed-DPO's pairs (prompt: the conversation so far / chosen / rejected, plus pair_id and source);
    a one-line error when there are none to learn from."""
    path = cfg.data_dir / "dpo.jsonl"
    pairs = read_jsonl(path)
    if not pairs:
        raise UserError(f"{path} holds no preference pairs: rebuild the data with ./launch.sh build-data")
    return pairs


def check_pairs(cfg: Config) -> None:
    """The check of the stages that learn from ChiMed-DPO's pairs, before a run trains anything (the stage
    registry's ``check``)."""
    read_pairs(cfg)


def pair_dataset(pairs: list[dict], weights: list[float] | None = None):
    """The pairs in TRL's conversational preference format (prompt / chosen / rejected), plus each pair's loss
    ``weight`` when ``weights`` are given (``align.pair_weights``: :mod:`training.trainer.weights`)."""
    from datasets import Dataset

    rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    if weights is not None:
        rows = [{**row, "weight": w} for row, w in zip(rows, weights, strict=True)]
    return Dataset.from_list(rows)


def save_with_pair_ids(trainer, pair_ids: list[str]) -> Callable[[Path], None]:
    """The stage's ``save(out)`` for :func:`~training.trainer.lifecycle.finish_stage`: the adapter and the
    tokenizer beside it (every process: DeepSpeed gathers collectively), and the main process writes the ids
    of the pairs it learned from (``pair_ids.json``: the manifest's ``dpo_pair_ids``)."""

    def save(out) -> None:
        trainer.save_model(out)
        if trainer.is_world_process_zero():
            write_json_atomic(Path(out) / PAIR_IDS, list(pair_ids))

    return save


def train_reference_free(cfg: Config, paths, fingerprint: str, section, trainer_cls, args_cls, **settings) -> None:
    """Train a reference-free pair method (ORPO, SimPO: TRL's ``trainer_cls`` with ``args_cls(**settings)``) as
    the LoRA adapter ``section.lora`` on the SFT model merged, into ``runs/<id>/<stage>``."""
    from training.modeling import load_stage
    from training.trainer.arguments import training_arguments, training_dtype
    from training.trainer.callbacks import stage_callbacks
    from training.trainer.lifecycle import finish_stage, train_resumably
    from training.trainer.lora import describe_lora, lora_record, peft_lora_config
    from training.trainer.weights import pair_weights, weighted_pair_trainer

    # inputs: prompt (conversation so far) / chosen / rejected (and each pair's weight, align.pair_weights)
    pairs = read_pairs(cfg)
    weights = pair_weights(pairs, cfg.align.pair_weights)
    if weights is not None:
        trainer_cls = weighted_pair_trainer(trainer_cls)

    # model: the SFT model, merged; the trainer adds the LoRA adapter (no reference model)
    model, tokenizer = load_stage(paths.run_dir, paths.parent, device="cpu", dtype=training_dtype(cfg))
    args = training_arguments(cfg, section, paths, args_cls=args_cls, max_length=section.max_length, **settings)
    lora = peft_lora_config(section.lora, model, f"{paths.stage}.lora.target_modules")
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=pair_dataset(pairs, weights),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=stage_callbacks(cfg, paths),
    )
    count_pair_tokens(trainer)
    record = lora_record(trainer.model, lora)
    print(describe_lora(paths.stage, record), flush=True)
    metrics = train_resumably(trainer, paths)
    # their logged rewards are beta x the average log-probability of each answer: accuracy and margin compare those
    metrics.update(lora=record, **pair_metrics(pairs, trainer.state.log_history))

    # save: the adapter, the tokenizer beside it and the ids of the pairs it learned from (for the manifest)
    finish_stage(
        paths,
        save_with_pair_ids(trainer, [p["pair_id"] for p in pairs]),
        kind="lora",
        parent=paths.parent,
        fingerprint=fingerprint,
        metrics=metrics,
        is_main=trainer.is_world_process_zero(),
    )


def count_pair_tokens(trainer) -> None:
    """Make ``trainer`` (TRL's ORPO or CPO trainer) count the tokens it trains on (``train_tokens``,
    ``tokens_per_s``): the Trainer counts a batch's ``input_ids``, which their batches do not have (a pair
    is ``chosen_*`` and ``rejected_*`` columns), and would report 0. Counted instead: the real tokens of
    both sequences of every pair, prompt included, as both are scored."""
    import torch

    if not hasattr(trainer, "_track_num_input_tokens"):  # transformers renamed it: fail loudly, never count 0
        raise RuntimeError("transformers' Trainer has no _track_num_input_tokens: update count_pair_tokens")

    def track(inputs) -> None:
        if trainer.args.include_num_input_tokens_seen == "no":
            return
        tokens = inputs["chosen_attention_mask"].sum() + inputs["rejected_attention_mask"].sum()
        tokens = torch.as_tensor(tokens, device=trainer.args.device, dtype=torch.int64)
        trainer.state.num_input_tokens_seen += trainer.accelerator.gather(tokens).sum().item()

    trainer._track_num_input_tokens = track


def pair_metrics(pairs: list[dict], log_history: list[dict]) -> dict:
    """For stage.json: how many pairs, how many of them the clinicians', and the last logged reward accuracy and
    margin (how often the policy already prefers "chosen", in the trainer's own reward)."""
    return {
        "pairs": len(pairs),
        "clinician_pairs": sum(1 for p in pairs if p.get("source") == "clinician"),
        **last_preference_metrics(log_history),
    }


def last_preference_metrics(log_history: list[dict]) -> dict:
    """The last logged reward accuracy and margin (``train_reward_accuracies``, ``train_reward_margins``)."""
    return last_logged(
        log_history, {"rewards/accuracies": "train_reward_accuracies", "rewards/margins": "train_reward_margins"}
    )


def last_logged(log_history: list[dict], names: dict[str, str]) -> dict:
    """``{name: last logged value}`` of each trainer log key in ``names`` (rounded to 4 places; absent if never
    logged): the stage metrics a recipe keeps from its trainer's logs."""
    out = {}
    for record in log_history:
        for key, name in names.items():
            if key in record:
                out[name] = round(float(record[key]), 4)
    return out
