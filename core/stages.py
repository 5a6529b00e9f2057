"""The stages' settings: one section per registered stage (its ``Stage.settings``), what they share
(``train``) and which alignment method a run trains (``align``); then the built-in stage records."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import UserError
from core.registry import Stage, align_methods, register


def check_lr_scheduler(name: str, where: str) -> None:
    """A scheduler named in a profile or an override must be one of transformers' ``SchedulerType``."""
    from transformers import SchedulerType  # loads torch (seconds): only when a scheduler is named

    names = [s.value for s in SchedulerType]
    if name not in names:
        raise UserError(f"config: {where}={name!r} is not a learning-rate scheduler: choose one of {', '.join(names)}")


@dataclass
class TrainingSchedule:
    """The optimizer schedule of a section that trains (model: the base's pretraining; cpt, sft, dpo).

    Each section overrides only the defaults its stage differs in; together they are the paper's table.
    """

    learning_rate: float = 2e-5  # paper: sft and dpo
    epochs: float = 3.0  # paper: cpt and sft
    max_steps: int = -1  # > 0: this many optimizer steps, whatever the epochs
    warmup_ratio: float = 0.05  # paper: every stage
    weight_decay: float = 0.01  # paper: cpt
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    # transformers' SchedulerType; cosine, as every stage of the paper's recipe trains
    lr_scheduler_type: str = field(default="cosine", metadata={"check": check_lr_scheduler})


@dataclass
class ModelConfig(TrainingSchedule):
    """The general base model: pretrained here (tiny/demo) or a local HF checkpoint (paper)."""

    path: str = ""  # a local Hugging Face causal-LM directory; empty = pretrain one here
    # known legacy layouts (Baichuan-7B, Baichuan2-7B) are converted to their native architecture and never
    # need this; it lets other checkpoints run their own modelling code, used only if it passes the pre-flight
    trust_remote_code: bool = False
    # "auto": a checkpoint's own chat template (an -Instruct/-Chat model) is kept, one without gets this
    # project's 问：/答： template; "project": this project's template in any case
    chat_template: str = "auto"
    vocab_size: int = 8000
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 1024
    # pretraining of the general base, on the general corpus only (schedule: TrainingSchedule's, but these)
    block_size: int = 256
    learning_rate: float = 1e-3
    epochs: float = 1.0


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    # "all-linear": every linear layer of every decoder block, fused ones included, never the output head
    # (resolved from the model and recorded: training/trainer/lora.py); or names checked against every block
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class CptConfig(TrainingSchedule):
    """Domain continued pre-training: next-token prediction on packed blocks of ChiMed-CPT."""

    block_size: int = 1024
    # schedule: TrainingSchedule's, but the paper's DCPT lr and batch (1 per GPU x 8 accumulated)
    learning_rate: float = 2e-4
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    # each medical record of ChiMed-CPT enters an epoch this many times, its general records once: with a
    # large general share, CPT then replays many general documents, each rarely, which forgets less than
    # replaying a few of them often, and still states every fact often enough (demo)
    medical_repeats: int = 1
    use_lora: bool = False  # full fine-tuning by default
    lora: LoraConfig = field(default_factory=LoraConfig)


LM_HEAD_LOSS = ("auto", "fused", "plain")


def check_lm_head_loss(name: str, where: str) -> None:
    if name not in LM_HEAD_LOSS:
        raise UserError(f"config: {where}={name!r}: choose one of {', '.join(LM_HEAD_LOSS)}")


@dataclass
class TrlSchedule(TrainingSchedule):
    """A stage trained by one of TRL's trainers (sft, dpo): its schedule, and how its per-token
    log-probabilities are computed (``training/trainer/logprobs.py``). Both settings change the speed, not
    the numbers (equal to float precision, ``tests/training/test_training_speed.py``)."""

    padding_free: bool = True  # a padded batch runs through the model as one row of its real tokens
    # auto: TRL's fused LM-head kernel where Triton serves the device, the plain LM head (only the scored
    # positions, float32) elsewhere; fused or plain: that one everywhere
    lm_head_loss: str = field(default="auto", metadata={"check": check_lm_head_loss})


@dataclass
class SftConfig(TrlSchedule):
    """Supervised fine-tuning with LoRA, loss on assistant tokens only."""

    max_source_length: int = 256
    max_target_length: int = 256
    # schedule: TrainingSchedule's, but the paper's SFT weight decay
    weight_decay: float = 0.05
    per_device_batch_size: int = 4
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(r=8, alpha=32, dropout=0.05))


DPO_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
)  # TRL 1.16's, less "sft"


def check_dpo_loss(name: str, where: str) -> None:
    if name not in DPO_LOSSES:
        raise UserError(
            f"config: {where}={name!r}: choose one of TRL's DPO losses: {', '.join(DPO_LOSSES)} "
            "(the SFT term is dpo.sft_weight)"
        )


def check_label_smoothing(value: float, where: str) -> None:
    if not 0.0 <= value < 0.5:
        raise UserError(f"config: {where}={value}: the share of flipped preference labels must be in [0, 0.5)")


@dataclass
class AlignSchedule(TrainingSchedule):
    """What the stages after sft share (dpo, kto, orpo, simpo, grpo, rm): TrainingSchedule's schedule, but one
    epoch, no weight decay and the paper's DPO batch (8 per GPU x 4), and a fresh LoRA adapter (r 8, alpha 16)
    on the SFT model."""

    epochs: float = 1.0
    weight_decay: float = 0.0
    gradient_accumulation_steps: int = 4
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(r=8, alpha=16, dropout=0.05))


@dataclass
class DpoConfig(AlignSchedule, TrlSchedule):
    """Direct preference optimization with LoRA; the reference is the SFT model (adapter disabled)."""

    beta: float = 0.1
    max_length: int = 512
    # weight of an SFT loss on the chosen answer added to the DPO loss (RPO, Pang et al. 2024; TRL's
    # loss_type ["sigmoid", "sft"]): keeps a small model's answers fluent; 0 = plain DPO, as in the paper
    sft_weight: float = 0.0
    # TRL's DPO loss: sigmoid (the paper's), robust (noisy votes: label_smoothing = the share of flipped labels),
    # ipo, hinge, ... (DPO_LOSSES)
    loss_type: str = field(default="sigmoid", metadata={"check": check_dpo_loss})
    # robust / exo_pair only: the share of votes taken to be flipped, in [0, 0.5) (robust: below 0.5, or the loss
    # rewards the rejected answer)
    label_smoothing: float = field(default=0.0, metadata={"check": check_label_smoothing})
    # the reference model's log-probabilities of every pair computed once before the loop (TRL's
    # precompute_ref_log_probs, through the fast path), not again at every visit: exact, since the reference is
    # fixed and DPO trains without dropout; one process only (several: computed in the loop as before)
    precompute_reference: bool = True


def check_align_method(name: str, where: str) -> None:
    if name not in align_methods():
        raise UserError(f"config: {where}={name!r}: choose one of {', '.join(align_methods())}")


PAIR_WEIGHTS = ("none", "agreement")


def check_pair_weights(name: str, where: str) -> None:
    if name not in PAIR_WEIGHTS:
        raise UserError(f"config: {where}={name!r}: choose one of {', '.join(PAIR_WEIGHTS)}")


@dataclass
class AlignConfig:
    """The third stage (docs/training.md "Alignment methods"): which method aligns the SFT model, and whether a reward
    model is trained first. The stage is named after its method (runs/<id>/kto, ...); each method's
    hyper-parameters are its own section below."""

    method: str = field(default="dpo", metadata={"check": check_align_method})  # dpo, kto, orpo, simpo, grpo
    # train the reward-model stage (rm) after sft: GRPO's reward for open prompts and the evaluation's judge
    reward_model: bool = False
    # the per-example loss weight of dpo, kto, orpo and simpo: none = every pair weighs 1 (the losses of
    # before); agreement = a clinician pair weighs what its export wrote (``weight``: the posterior probability,
    # from the annotators' agreement and their Dawid-Skene reliabilities, that its direction is right; docs/study.md
    # "Pair weights"); pairs without one (objective, imported, older exports) weigh 1
    pair_weights: str = field(default="none", metadata={"check": check_pair_weights})


def check_kto_batch(size: int, where: str) -> None:
    if size < 2:
        raise UserError(
            f"config: {where}={size}: KTO estimates its KL term from the other answers of a batch, "
            "so a batch needs at least 2 examples (raise it; lower gradient_accumulation_steps instead)"
        )


@dataclass
class KtoConfig(AlignSchedule, TrlSchedule):
    """Kahneman-Tversky optimization with LoRA on single answers marked desirable or undesirable; the
    reference is the SFT model (adapter disabled)."""

    beta: float = 0.1  # the KTO paper's (and TRL's)
    # the weights of the desirable and undesirable losses: with unbalanced classes, keep
    # desirable_weight x n_desirable / (undesirable_weight x n_undesirable) in [1, 4/3] (KTO paper, eq. 8)
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    per_device_batch_size: int = field(default=8, metadata={"check": check_kto_batch})
    max_length: int = 512


@dataclass
class OrpoConfig(AlignSchedule):
    """Odds-ratio preference optimization with LoRA (no reference model): SFT loss + beta x odds-ratio term.

    Not a TrlSchedule: TRL's ORPOTrainer scores its model's plain logits, which the
    padding-free and LM-head settings of training/trainer/logprobs.py do not reach."""

    beta: float = 0.1  # ORPO's lambda (the paper's and TRL's default): the weight of the odds-ratio term
    learning_rate: float = 8e-6  # for a 7B model (ORPO paper scale); the tiny and demo profiles set their own
    max_length: int = 512


@dataclass
class SimpoConfig(AlignSchedule):
    """SimPO with LoRA (no reference model): length-normalized log-probability margin with target margin gamma.

    Not a TrlSchedule: TRL's CPOTrainer scores its model's plain logits, which the
    padding-free and LM-head settings of training/trainer/logprobs.py do not reach."""

    beta: float = 2.0  # the reward scale (SimPO paper: 2.0 to 2.5; larger, up to 10, reported to help too)
    gamma: float = 1.0  # the target reward margin (SimPO paper: gamma / beta 0.25 to 0.5, gamma up to 1.6)
    sft_weight: float = 0.0  # CPO's alpha: an SFT term on the chosen answer (CPO-SimPO; 0: plain SimPO)
    learning_rate: float = 1e-6  # SimPO paper: 3e-7 to 1e-6, the most sensitive setting
    max_length: int = 512


# the rewards grpo.rewards may add to exam and format (and rm, with align.reward_model)
GRPO_REWARDS = ("safety", "facts")


def check_grpo_rewards(names: list[str], where: str) -> None:
    unknown = [name for name in names if name not in GRPO_REWARDS]
    if unknown:
        raise UserError(f"config: {where} names {unknown[0]!r}: choose among {', '.join(GRPO_REWARDS)}")


@dataclass
class GrpoConfig(AlignSchedule):
    """GRPO with LoRA: rewards for sampled answers (exam exact match, the advice-to-see-a-doctor format term,
    the rm stage's score on open prompts), KL to the SFT model. TRL's GRPOTrainer scores completions its own
    way, so the TRL stages' log-probability settings (padding_free, lm_head_loss) do not apply."""

    # the KL coefficient to the SFT model (reference = adapter disabled); the GRPO paper's. On the demo it keeps
    # BLEU/ROUGE at SFT's while the exam reward rises (0: BLEU-1 3 points lower; 0.2: the exam gains less)
    beta: float = 0.04
    # answers sampled per prompt (the group); per_device_batch_size counts answers, and x gradient_accumulation_steps
    # is one generation round, which num_generations divides
    num_generations: int = 8
    max_completion_length: int = 256
    temperature: float = 1.0
    exam_weight: float = 1.0  # exact match of the chosen option on exam-style prompts (verifiable)
    format_weight: float = 0.2  # the answer closes with the advice to see a doctor
    rm_weight: float = 1.0  # the rm stage's score on open prompts (used only when the run has an rm stage)
    # rewards added to exam, format and rm: safety = on grpo.jsonl's safety prompts (training/data/safety.py;
    # docs/safety.md), 1 when the answer picks the safe option or the unsafe-answer checker passes it (without it the
    # safety prompts are left out); facts = the factual precision of an answer's claims against CMeKG
    # (training/evaluation/facts.py; none for an answer without a checkable claim)
    rewards: list[str] = field(default_factory=list, metadata={"check": check_grpo_rewards})
    safety_weight: float = 1.0  # the safety reward, when grpo.rewards lists it
    facts_weight: float = 1.0  # the facts reward, when grpo.rewards lists it
    learning_rate: float = 1e-6
    max_prompt_length: int = 512  # longer prompts (chat template included) are left out, not cut


@dataclass
class RmConfig(AlignSchedule):
    """The reward model: the SFT model with a scalar head (LoRA on the decoder, the head in full), trained on
    ChiMed-DPO's train pairs with the Bradley-Terry loss (TRL's RewardTrainer; it has no LM head, so the
    log-probability settings of the other TRL stages do not apply)."""

    learning_rate: float = 1e-4  # TRL's RewardConfig default: LoRA, and a head that starts from random
    max_length: int = 512  # longer pairs (prompt + answer, in tokens) are left out of training


@dataclass
class TrainConfig:
    """What the stages share: precision, logging, checkpoints, scale-out."""

    seed: int = 42
    bf16: bool = True  # GPU only: train-all stops with a one-line error where no GPU supports it
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int = 200  # checkpoints inside a stage, for resuming after a crash
    save_total_limit: int = 2
    dataloader_num_workers: int = 0
    deepspeed_zero_stage: int = 2  # 0 = no DeepSpeed; GPU only (launched through accelerate with a ZeRO config)
    # scale-out through `accelerate launch` (docs/training.md "GPUs"); more than one process in all, or DeepSpeed,
    # makes train-all launch each stage on every process
    num_processes: int = 0  # processes per machine; 0 = one per visible GPU (1 without GPUs)
    num_machines: int = 1
    machine_rank: int = 0  # this machine's rank; machine 0 writes the run's manifest
    main_process_ip: str = "127.0.0.1"  # address of machine 0
    main_process_port: int = 29500
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # training on the CPU (glibc): freed memory stays in the heap for the next step instead of going back to the
    # OS, so large tensors cost no page faults at each step (training/trainer/allocator.py); the same numbers
    keep_freed_memory: bool = True
    evaluate_after: bool = True  # train-all evaluates every stage when training is done


# --- the built-in stages, in training order -----------------------------------------------------

register(
    Stage(
        name="base",
        parent=None,
        section="model",
        settings=ModelConfig,
        data=("base", "cpt", "sft"),
        display_name="Base",
        description="the general base model (pretrained here on general Chinese text only, or the local checkpoint "
        "the paper profile starts from)",
    )
)
register(
    Stage(
        name="cpt",
        parent="base",
        section="cpt",
        settings=CptConfig,
        data=("cpt",),
        display_name="CPT",
        description="domain continued pre-training (next-token prediction on ChiMed-CPT) of the base model",
    )
)
register(
    Stage(
        name="sft",
        parent="cpt",
        section="sft",
        settings=SftConfig,
        data=("sft",),
        chat=True,
        display_name="SFT",
        description="supervised fine-tuning (LoRA, loss on assistant tokens) of the CPT model on ChiMed-SFT",
    )
)
register(
    Stage(
        name="rm",
        parent="sft",
        section="rm",
        settings=RmConfig,
        data=("dpo",),
        display_name="RM",
        generative=False,
        include=lambda cfg: cfg.align.reward_model,
        description="a reward model (the SFT model with a scalar value head, LoRA) trained on ChiMed-DPO and the "
        "clinicians' pairs: GRPO's reward for open prompts and the evaluation's judge",
    )
)
register(
    Stage(
        name="dpo",
        parent="sft",
        section="dpo",
        settings=DpoConfig,
        data=("dpo",),
        chat=True,
        display_name="DPO",
        preference=True,
        description="direct preference optimization (LoRA, reference = the SFT model) on ChiMed-DPO",
        method="dpo",
    )
)
register(
    Stage(
        name="kto",
        parent="sft",
        section="kto",
        settings=KtoConfig,
        data=("kto",),
        chat=True,
        display_name="KTO",
        preference=True,
        method="kto",
        description="Kahneman-Tversky optimization (LoRA, reference = the SFT model) on single answers marked "
        "desirable or not: ChiMed-DPO's pairs split in two, plus the clinicians' thumbs",
    )
)
register(
    Stage(
        name="orpo",
        parent="sft",
        section="orpo",
        settings=OrpoConfig,
        data=("dpo",),
        chat=True,
        display_name="ORPO",
        preference=True,
        method="orpo",
        description="odds-ratio preference optimization (LoRA, no reference model) of the SFT model on ChiMed-DPO",
    )
)
register(
    Stage(
        name="simpo",
        parent="sft",
        section="simpo",
        settings=SimpoConfig,
        data=("dpo",),
        chat=True,
        display_name="SimPO",
        preference=True,
        method="simpo",
        description="simple preference optimization (LoRA, length-normalized reward, no reference model) of the "
        "SFT model on ChiMed-DPO",
    )
)
register(
    Stage(
        name="grpo",
        parent="sft",
        section="grpo",
        settings=GrpoConfig,
        data=("grpo",),
        chat=True,
        display_name="GRPO",
        method="grpo",
        reads=("rm",),
        description="group relative policy optimization (LoRA, KL to the SFT model) of the SFT model with "
        "verifiable exam rewards, a format reward and, with an rm stage, the reward model's score",
    )
)
