"""The alignment stage with ``align.method=grpo``: group relative policy optimization (Shao et al. 2024) of
the SFT model with LoRA, on verifiable exam rewards as in HuatuoGPT-o1, a format term and, when the run has an
rm stage, the reward model's score.

For every prompt of ChiMed-GRPO (``grpo.jsonl``: exam-style questions about training entities with their gold
option, and ChiMed-SFT's consultation prompts) the policy samples ``cfg.grpo.num_generations`` answers at
``cfg.grpo.temperature``; each answer is scored by the rewards of ``training/trainer/rewards.py`` (exam: the
gold option chosen; format: the answer closes with the advice to see a doctor; rm: the rm stage's score) and,
when ``grpo.rewards`` lists it, by ``training/evaluation/facts.py``'s (facts: the factual precision of the
answer's claims against CMeKG), weighted by ``exam_weight`` / ``format_weight`` / ``rm_weight`` /
``facts_weight``, and its advantage is its reward against its
group's mean. The policy is the SFT model (merged) plus a fresh LoRA adapter (``cfg.grpo.lora``); the KL term
(``cfg.grpo.beta``) is to the same model with the adapter disabled, i.e. exactly the SFT model. Serving GRPO =
cpt + sft adapter + grpo adapter.

The log-probability path of the other TRL stages (``training/trainer/logprobs.py``) is not used: GRPOTrainer
scores left-padded prompt + completion rows through its own ``logits_to_keep`` path, not the fused LM head
that module replaces.
"""

from __future__ import annotations

import math
from pathlib import Path

from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from core.config import Config, GrpoConfig
from core.errors import UserError
from core.files import read_jsonl
from training.data.decontam import normalize
from training.data.grpo import EXAM, OPEN
from training.data.layout import EVAL_FILES
from training.data.safety import SAFETY
from training.evaluation import facts
from training.modeling import load_stage
from training.recipes import data_check, recipe
from training.trainer import rewards
from training.trainer.arguments import process_state, training_arguments, training_dtype
from training.trainer.callbacks import stage_callbacks
from training.trainer.lifecycle import finish_stage, train_resumably
from training.trainer.lora import describe_lora, lora_record, peft_lora_config
from training.trainer.paths import StagePaths


@recipe("grpo")
def run_grpo_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """Train the GRPO LoRA adapter on the SFT model into ``runs/<id>/grpo``."""
    # inputs: exam prompts (options, gold letter) and open prompts, checked before any model is loaded; the
    # rewards (with align.reward_model, the run's rm stage)
    records = check_grpo_data(cfg)
    if "safety" not in cfg.grpo.rewards:  # no reward applies to the safety prompts then (docs/safety.md)
        records = [r for r in records if r["kind"] != SAFETY]
    reward_funcs, weights = grpo_rewards(cfg, paths)

    # model: the SFT model, merged; GRPOTrainer adds the LoRA adapter and uses the model without it as reference
    model, tokenizer = load_stage(paths.run_dir, paths.parent, device="cpu", dtype=training_dtype(cfg))
    check_lengths(cfg.grpo, model)
    records, too_long = fitting_prompts(records, tokenizer, cfg.grpo.max_prompt_length)
    check_grpo_prompts(
        records,
        cfg.data_dir,
        after=f"dropping the {too_long} longer than grpo.max_prompt_length={cfg.grpo.max_prompt_length} tokens",
    )
    trainer, record = build_grpo_trainer(cfg, paths, model, tokenizer, records, reward_funcs, weights)
    print(describe_lora(paths.stage, record), flush=True)
    metrics = train_resumably(trainer, paths)
    metrics.update(
        lora=record,
        prompts=len(records),
        exam_prompts=sum(r["kind"] == EXAM for r in records),
        open_prompts=sum(r["kind"] == OPEN for r in records),
        safety_prompts=sum(r["kind"] == SAFETY for r in records),
        prompts_too_long=too_long,
        reward_weights=dict(zip(trainer.reward_func_names, weights, strict=True)),
        **reward_metrics(trainer.state.log_history, trainer.reward_func_names),
    )

    finish_stage(
        paths,
        trainer.save_model,
        kind="lora",
        parent=paths.parent,
        fingerprint=fingerprint,
        metrics=metrics,
        is_main=trainer.is_world_process_zero(),
    )


def grpo_rewards(cfg: Config, paths: StagePaths) -> tuple[list, list[float]]:
    """The reward functions and their weights: exam and format always, the rm stage's score with
    ``align.reward_model`` (the run's ``rm`` stage must be finished), the factual precision against CMeKG with
    ``facts`` in ``grpo.rewards``. Each stops the stage if it scores NaN."""
    funcs, weights = [rewards.exam_reward, rewards.format_reward], [cfg.grpo.exam_weight, cfg.grpo.format_weight]
    if cfg.align.reward_model:
        from training.trainer.reward_model import load_reward_model

        if not (paths.run_dir / "rm").is_dir():
            raise UserError(
                f"align.reward_model=true but run {paths.run_dir.name} has no finished rm stage: "
                "train it first (--from rm), or set align.reward_model=false"
            )
        # on this process's device (a GPU when training on one): it scores every open prompt's answers
        rm_model, rm_tokenizer = load_reward_model(paths.run_dir, device=str(process_state().device))
        funcs.append(rewards.make_rm_reward(rm_model, rm_tokenizer))
        weights.append(cfg.grpo.rm_weight)
    if "safety" in cfg.grpo.rewards:
        funcs.append(rewards.safety_reward)
        weights.append(cfg.grpo.safety_weight)
    if "facts" in cfg.grpo.rewards:  # the graph is read once, here, not at every step
        funcs.append(facts.make_facts_reward(facts.fact_checker()))
        weights.append(cfg.grpo.facts_weight)
    return [rewards.finite(f, paths.stage) for f in funcs], weights


def build_grpo_trainer(
    cfg: Config, paths: StagePaths, model, tokenizer, records: list[dict], reward_funcs: list, weights: list[float]
) -> tuple[GRPOTrainer, dict]:
    """GRPOTrainer over ``records`` (prompt + the columns the rewards read) with the ``cfg.grpo.lora`` adapter on
    ``model`` (the reference: the adapter disabled); also the adapter's record."""
    g = cfg.grpo
    args = training_arguments(
        cfg,
        g,
        paths,
        args_cls=GRPOConfig,
        beta=g.beta,
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        reward_weights=weights,
    )
    lora = peft_lora_config(g.lora, model, "grpo.lora.target_modules")
    dataset = Dataset.from_list(
        [
            {"prompt": r["prompt"], "kind": r["kind"], "options": r.get("options"), "answer": r.get("answer")}
            for r in records
        ]
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[*stage_callbacks(cfg, paths), NoRewardSignal(paths.stage)],
    )
    return trainer, lora_record(trainer.model, lora)


@data_check("grpo")
def check_grpo_data(cfg: Config) -> list[dict]:
    """The settings and the prompts of grpo.jsonl, checked (also by train-all before any stage of the run
    trains: the stage registry's ``check``); returns the prompts."""
    check_grpo_settings(cfg.grpo)
    records = read_jsonl(cfg.data_dir / "grpo.jsonl")
    check_grpo_prompts(records, cfg.data_dir)
    return records


def check_grpo_settings(g: GrpoConfig) -> None:
    """What TRL would reject deep inside its config, as one line naming the setting."""
    if g.num_generations < 2:
        raise UserError(
            f"grpo.num_generations={g.num_generations}: GRPO compares answers within a group, sample at least 2"
        )
    batch = g.per_device_batch_size * g.gradient_accumulation_steps
    if batch % g.num_generations:
        raise UserError(
            f"grpo.num_generations={g.num_generations} must divide grpo.per_device_batch_size x "
            f"gradient_accumulation_steps = {batch} (the answers of one generation round)"
        )


def check_lengths(g: GrpoConfig, model) -> None:
    context = getattr(model.config, "max_position_embeddings", None)
    if context and g.max_prompt_length + g.max_completion_length > context:
        raise UserError(
            f"grpo.max_prompt_length + max_completion_length = "
            f"{g.max_prompt_length + g.max_completion_length} exceeds the model's context of {context} "
            "tokens: lower one of them"
        )


def check_grpo_prompts(records: list[dict], data_dir: Path, after: str = "") -> None:
    """GRPO needs exam-style prompts (the verifiable reward), none of them an evaluation question."""
    grpo_file = Path(data_dir) / "grpo.jsonl"
    exam = [r for r in records if r.get("kind") == EXAM]
    if not exam:
        raise UserError(
            f"{grpo_file} has no exam-style prompt{' after ' + after if after else ''}: GRPO's "
            "verifiable reward needs them; rebuild the data (./launch.sh build-data) or choose another "
            "align.method"
        )
    held_out = {normalize(q["question"]) for q in read_jsonl(Path(data_dir) / EVAL_FILES["exam"])}
    leaked = next((r for r in exam if normalize(r.get("question", "")) in held_out), None)
    if leaked:
        raise UserError(
            f"{grpo_file}: {leaked.get('id')} asks the evaluation question {leaked['question']!r}: "
            "GRPO would be rewarded on the exam; rebuild the data with ./launch.sh build-data"
        )


def fitting_prompts(records: list[dict], tokenizer, max_prompt_length: int) -> tuple[list[dict], int]:
    """The records whose prompt, formatted by the chat template, fits ``max_prompt_length`` tokens, and how many
    did not (TRL 1.16 no longer truncates prompts; a cut conversation would lose the patient's question)."""
    kept = [
        r
        for r in records
        if len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"])
        <= max_prompt_length
    ]
    return kept, len(records) - len(kept)


class NoRewardSignal(TrainerCallback):
    """Stops with one line when, over the whole stage, every group's answers got the same reward: GRPO learns
    from the differences within a group, so there was nothing to learn from (the loss stayed 0)."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_train_end(self, args, state, control, **kwargs):
        shares = [r["frac_reward_zero_std"] for r in state.log_history if r.get("frac_reward_zero_std") is not None]
        if shares and min(shares) >= 1.0:
            raise UserError(
                f"{self.stage}: every group of {args.num_generations} answers got equal rewards at "
                "every step, so there was nothing to learn; raise grpo.temperature or "
                "grpo.num_generations, or check the rewards"
            )


def reward_metrics(log_history: list[dict], names: list[str]) -> dict:
    """``{"rewards": {name: {"mean", "first", "last"}}}``: each reward's mean over the stage's logs and its
    first and last logged means (did it move?); the same for the weighted ``total`` and for the ``kl`` to the
    SFT model."""
    out = {}
    for name, key in [*((n, f"rewards/{n}/mean") for n in names), ("total", "reward"), ("kl", "kl")]:
        values = [float(r[key]) for r in log_history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if values:
            out[name] = {
                "mean": round(sum(values) / len(values), 4),
                "first": round(values[0], 4),
                "last": round(values[-1], 4),
            }
    return {"rewards": out}
