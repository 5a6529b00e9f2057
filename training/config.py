"""The one typed config tree of ChiMed Arena.

Every default lives here, once. The defaults are the Qilin-Med paper's recipe (7B on GPUs); the
profiles in ``training/configs/{tiny,demo,paper}.yaml`` override what differs, and any key can be
overridden on the command line as ``section.key=value``. The CLI, the app, the training code and the
tests all read the object returned by :func:`load_config`; nobody re-declares a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from training.data.files import sha256_json
from training.errors import UserError

PROFILES = ("tiny", "demo", "paper")
CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class UserFiles:
    """Files a user already has, in the public formats listed in docs/design.md (paths, may be empty)."""

    cpt_text: list[str] = field(default_factory=list)  # .txt (one document per line) or jsonl {"text"}
    sft_alpaca: list[str] = field(default_factory=list)
    sft_sharegpt: list[str] = field(default_factory=list)
    dpo_pairs: list[str] = field(default_factory=list)  # MedicalGPT / question-response / Alpaca styles
    exam: list[str] = field(default_factory=list)  # C-Eval or CMExam style
    qa: list[str] = field(default_factory=list)  # Huatuo style


@dataclass
class EntityMix:
    """Share of each kind of CMeKG entity when ``data.max_entities`` takes a subset (diseases carry the
    consultations, drugs the indications and adverse reactions; shares are renormalized)."""

    disease: float = 0.45
    drug: float = 0.35
    herb: float = 0.1
    test: float = 0.1  # medical tests (所属分类 / 相关症状)


@dataclass
class DataConfig:
    """ChiMed builder (``training/data/``): sources, mixture, splits, dedup."""

    seed: int = 42
    max_entities: int = 0  # 0 = every CMeKG entity; tiny/demo take a deterministic subset
    entity_mix: EntityMix = field(default_factory=EntityMix)
    min_relations: int = 2  # an entity enters ChiMed when it has at least this many usable relations
    general_share: float = 0.2  # share of general text (characters) in ChiMed-CPT, against forgetting (Aquila-Med)
    people_daily_max_docs: int = 0  # 0 = all (about 3,200 articles)
    reviews_max_docs: int = 0  # 0 = all (about 33,000 reviews, positive and negative alternating)
    phrasings_per_relation: int = 2  # CPT documents per entity, each stating every relation in another phrasing
    cpt_qa_per_entity: int = 2  # questions with plain answers per training entity in ChiMed-CPT (0 = none)
    # also ask those of the examined relations in the exam's wording, answered with one value: seeing some
    # entities' facts asked and answered in that form lets a model answer it for the facts it only read
    # (Allen-Zhu & Li 2023, "Physics of Language Models 3.1")
    cpt_qa_exam_stems: bool = True
    # ChiMed-SFT also answers the training entities' examined relations in the exam's wording with one value
    # (the paper's ChiMed-SFT includes exam QA): SFT then keeps the short-answer form CPT taught
    sft_exam_qa: bool = False
    max_values_per_relation: int = 5  # values stated per (entity, relation); the exam asks only about these
    multiturn_per_disease: int = 1  # consultations (patient -> follow-up question -> answer) per disease
    general_sft_max: int = 0  # general-domain instructions in ChiMed-SFT; 0 = as many as the share gives
    general_sft_share: float = 0.2  # share of general-domain instructions among the SFT records
    general_sft_max_chars: int = 200  # longest general text quoted in one instruction
    dpo_pairs_per_entity: int = 2  # objective pairs per entity: wrong-entity facts / dropped advice
    eval_entity_share: float = 0.1  # entities held out for exam, QA and held-out pairs (split by entity)
    exam_max: int = 0  # 0 = every question the held-out entities give
    qa_max: int = 0
    general_eval_docs: int = 200  # general documents held out of every training split (perplexity)
    pref_eval_share: float = 0.1  # share of imported preference pairs held out into eval/pref.jsonl
    dedup_ngram: int = 5  # character shingles for near-duplicate detection
    minhash_num_perm: int = 128
    minhash_threshold: float = 0.8  # Jaccard similarity at or above which a record is a near duplicate
    decontam_ngram: int = 13  # character n-grams shared with a training split count as contamination
    strict: bool = False  # stop at the first malformed line instead of skipping and counting it
    user_files: UserFiles = field(default_factory=UserFiles)
    collected_pairs_dir: str = "collected_pairs"  # relative to CHIMED_HOME; the app's exports land here
    # relative to CHIMED_HOME: single-answer ratings (thumbs up/down) exported in the unpaired KTO format
    collected_ratings_dir: str = "collected_ratings"


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
    # (resolved from the model and recorded: training/stages/lora.py); or names checked against every block
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
    log-probabilities are computed (``training/stages/logprobs.py``). Both settings change the speed, not
    the numbers (equal to float precision, ``tests/test_training_speed.py``)."""

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
    from training.stages.registry import align_methods

    if name not in align_methods():
        raise UserError(f"config: {where}={name!r}: choose one of {', '.join(align_methods())}")


@dataclass
class AlignConfig:
    """The third stage (docs/training.md "Alignment methods"): which method aligns the SFT model, and whether a reward
    model is trained first. The stage is named after its method (runs/<id>/kto, ...); each method's
    hyper-parameters are its own section below."""

    method: str = field(default="dpo", metadata={"check": check_align_method})  # dpo, kto, orpo, simpo, grpo
    # train the reward-model stage (rm) after sft: GRPO's reward for open prompts and the evaluation's judge
    reward_model: bool = False


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
    padding-free and LM-head settings of training/stages/logprobs.py do not reach."""

    beta: float = 0.1  # ORPO's lambda (the paper's and TRL's default): the weight of the odds-ratio term
    learning_rate: float = 8e-6  # for a 7B model (ORPO paper scale); the tiny and demo profiles set their own
    max_length: int = 512


@dataclass
class SimpoConfig(AlignSchedule):
    """SimPO with LoRA (no reference model): length-normalized log-probability margin with target margin gamma.

    Not a TrlSchedule: TRL's CPOTrainer scores its model's plain logits, which the
    padding-free and LM-head settings of training/stages/logprobs.py do not reach."""

    beta: float = 2.0  # the reward scale (SimPO paper: 2.0 to 2.5; larger, up to 10, reported to help too)
    gamma: float = 1.0  # the target reward margin (SimPO paper: gamma / beta 0.25 to 0.5, gamma up to 1.6)
    sft_weight: float = 0.0  # CPO's alpha: an SFT term on the chosen answer (CPO-SimPO; 0: plain SimPO)
    learning_rate: float = 1e-6  # SimPO paper: 3e-7 to 1e-6, the most sensitive setting
    max_length: int = 512


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
    # OS, so large tensors cost no page faults at each step (training/stages/allocator.py); the same numbers
    keep_freed_memory: bool = True
    evaluate_after: bool = True  # train-all evaluates every stage when training is done


@dataclass
class EvalConfig:
    """Stage-by-stage evaluation (``training/evaluation/``): exam, generation, perplexity, preference."""

    k_shot: int = 5  # solved questions before each exam question (paper: 5-shot); 0-shot is reported too
    seed: int = 42  # draws the k-shot demonstrations (taken out of the exam, never scored)
    exam_max: int = 0  # questions scored per exam; 0 = every question
    qa_max: int = 0  # held-out questions answered by greedy generation; 0 = all
    general_max: int = 0  # held-out general documents for perplexity; 0 = all
    pref_max: int = 0  # held-out preference pairs, per set (objective, clinician); 0 = all
    max_new_tokens: int = 128
    max_length: int = 1024  # longest sequence scored or prompted, in tokens (also capped by the model's context)
    batch_size: int = 16
    score_by_letter: bool = False  # also report the answer-letter accuracy (options listed, letter scored)
    # real exams (C-Eval / CMExam style files, or the ChiMed exam.jsonl format), each reported on its own
    user_exam_files: list[str] = field(default_factory=list)
    use_cache: bool = True  # reuse a stage's metrics when its checkpoint, the eval sets and these settings match
    # the reward model that scores every stage's answers (results' RM score): "" = the run's own rm stage, if
    # it has one; a run id = that run's rm stage (one judge for runs of every method)
    reward_judge: str = ""


@dataclass
class AccountsConfig:
    """Annotator accounts (``store.accounts``): the password policy and the throttling of failed logins and of
    the OpenAI-compatible server's bearer tokens. docs/study.md "Accounts and the audit log" explains the numbers."""

    # NIST SP 800-63B asks for at least 8; 10 because a study account guards clinicians' data and a
    # passphrase ("four random words") is easy to type at that length. No composition rules (NIST: none).
    min_password_length: int = 10
    # failures (per account, and per client address) answered at once; after that each further try must wait
    # login_delay_s * 2^(extra failures), at most login_max_delay_s, and is refused unchecked when it comes early
    free_failures: int = 3
    login_delay_s: float = 1.0
    login_max_delay_s: float = 60.0
    # this many failures for one account from one address lock that (account, address) for lock_seconds;
    # the lock counts from the last failure, and failures older than lock_seconds are forgotten
    lock_failures: int = 10
    lock_seconds: int = 900
    # the account as a whole (every address): a short lock after many failures, so a distributed guesser is
    # slowed too, but an attacker cannot keep the owner out for long, and never from an address the owner
    # logged in from within trusted_address_days
    account_lock_failures: int = 50
    account_lock_seconds: int = 300
    trusted_address_days: int = 30
    # one address trying many accounts (password spraying): higher numbers, as a hospital's proxy or NAT may put
    # many clinicians behind one address
    address_free_failures: int = 10
    address_lock_failures: int = 30


AGGREGATES = ("majority", "all", "unanimous")


def check_aggregate(name: str, where: str) -> None:
    if name not in AGGREGATES:
        raise UserError(f"config: {where}={name!r}: choose one of {', '.join(AGGREGATES)}")


MIN_VERDICT_RESAMPLES = 2000


def check_verdict_resamples(rounds: int, where: str) -> None:
    # the ends of a 95% percentile interval are the 2.5% tails: with fewer than ~2000 resamples they rest on
    # fewer than 50 values each and move visibly between seeds, enough to flip a verdict near 0
    if rounds < MIN_VERDICT_RESAMPLES:
        raise UserError(
            f"config: {where}={rounds}: the run-vs-run verdict needs at least {MIN_VERDICT_RESAMPLES} "
            "bootstrap resamples"
        )


@dataclass
class StoreConfig:
    """Preference store (``preference_store/``): database, limits, ratings, export split."""

    database_url: str = ""  # empty = sqlite:///$CHIMED_HOME/preferences.db; CHIMED_DATABASE_URL wins
    max_text_chars: int = 8000  # longest prompt, answer, correction or reason the store accepts
    busy_timeout_ms: int = 30000  # SQLite waits this long for the write lock; writes retry up to twice that
    bootstrap_rounds: int = 1000  # resamples for the 95% intervals of the Bradley-Terry ratings
    # collected comparisons held out from DPO training (eval/pref_clinician.jsonl), chosen by prompt so
    # a comparison is never split between train and held-out; a bank prompt's own split wins over it
    heldout_share: float = 0.2
    # --- the annotation study (prompt bank, queues, agreement, vote integrity) ---
    annotators_per_prompt: int = 3  # k: each bank prompt goes to this many different annotators
    # an assignment not judged within this time is given to someone else (a late judgment is still stored)
    assignment_timeout_minutes: int = 120
    daily_judgment_cap: int = 0  # judgments (votes, rankings, corrections, ratings) per annotator per UTC day; 0 = none
    provisional_battles: int = 30  # a checkpoint's rating is marked provisional until it has this many battles
    # pairs of bank prompts whose annotators agree less than this (share agreeing with the pair) are left
    # out of the export; 0 = keep all (the agreement is written with each pair either way)
    min_agreement: float = 0.0
    # how the votes of several annotators on the same prompt and the same two answers become training pairs:
    # majority = one pair in the direction more than half of the votes took (ties count as votes), so a
    # disagreement never sends both directions into DPO; unanimous = only when every vote agrees; all = every
    # annotator's pair (both directions of a disagreement). The pair carries the counts either way
    aggregate: str = field(default="majority", metadata={"check": check_aggregate})
    exclude_leaked_battles: bool = True  # leave battles whose answers name a model out of the ratings
    # judgments made with the names shown (an admin's blind=False, or a later turn of a conversation whose names
    # were revealed) count in the leaderboard and make training pairs only when this is on: a judge who knows
    # which run answered is not a blind judge
    admit_unblinded: bool = False
    outlier_p_value: float = 0.01  # annotators agreeing with the consensus less than this chance allows are listed
    # the run-vs-run verdict needs battles of the two runs on at least this many bank prompts: a bootstrap
    # over one or two prompts has no spread and would call a single vote certain
    run_comparison_min_prompts: int = 5
    # bootstrap resamples of the run-vs-run verdict's interval (cheap: one sum per resample, not a rating fit)
    run_comparison_rounds: int = field(default=2000, metadata={"check": check_verdict_resamples})
    # store only de-identified text (:mod:`preference_store.deid`): every prompt, answer, correction and reason
    # is redacted before it is written, whoever writes it (app, API, scripts). Off for the synthetic tiny/demo
    # data; the paper profile, which real clinicians use, turns it on. The app flags identifiers at entry either way.
    redact_on_entry: bool = False
    accounts: AccountsConfig = field(default_factory=AccountsConfig)


@dataclass
class DecodingConfig:
    """The app's default decoding (changeable per comparison in the Compare tab; stored with each answer)."""

    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = -1  # -1 = a fresh random seed for each comparison (the seed used is stored with the answers)
    # the bounds of the Compare tab's sliders and of every comparison's settings (API calls included)
    max_temperature: float = 2.0  # beyond it the answers are noise
    max_new_tokens_limit: int = 4096  # a typo in the settings should not keep a model busy for an hour


LEAK_TERMS = (
    "Baichuan",
    "百川",
    "Qwen",
    "通义千问",
    "千问",
    "阿里云",
    "ChatGPT",
    "GPT-4",
    "GPT-3",
    "OpenAI",
    "Claude",
    "Anthropic",
    "LLaMA",
    "Llama",
    "Meta AI",
    "ChatGLM",
    "智谱",
    "DeepSeek",
    "深度求索",
    "文心一言",
    "ERNIE",
    "Gemini",
    "Google",
    "Mistral",
    "InternLM",
    "书生",
    "Yi-34B",
    "零一万物",
    "Qilin-Med",
    "HuatuoGPT",
    "华佗GPT",
    "Zhongjing",
    "仲景",
    "DISC-MedLLM",
    "ChiMed",
)


MAX_STOP_STRINGS = 4  # an OpenAI chat completion takes at most 4 stop strings
ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class EndpointConfig:
    """A contestant served by an OpenAI-compatible engine (vLLM, SGLang, TGI, a hospital's deployment, a
    commercial API, ``./launch.sh serve``): its answers stream from ``base_url``'s chat completions
    (``app/endpoints.py``). The engine applies the served model's own chat template; ``system_prompt``, when
    given, goes first in every conversation."""

    name: str = ""  # its checkpoint id is "endpoint:<name>": letters, digits, . _ - (a new name for a new model)
    base_url: str = ""  # the API root, e.g. http://127.0.0.1:8000/v1
    model: str = ""  # the model name the engine serves (its /v1/models id)
    # the name of an environment variable holding the API key, read at each request (never stored or shown);
    # "" = the endpoint needs no key
    api_key_env: str = ""
    system_prompt: str = ""
    max_concurrency: int = 4  # requests in flight to it at once; further panels wait for a slot
    timeout_s: float = 120.0  # a whole answer must arrive within this time, else its panel fails
    # strings the engine ends an answer before (OpenAI's stop, at most 4); serve-plan gives base and cpt the
    # plain turn markers, where the pool cuts their answers too
    stop: list[str] = field(default_factory=list)


def url_without_secrets(url: str) -> str:
    """``url`` as it may be shown, logged and stored: without user:password@, query string or fragment."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(not a URL)"
    host = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, host + (f":{port}" if port is not None else ""), parts.path, "", ""))


def check_endpoints(endpoints: list, where: str) -> None:
    """Each endpoint named once, with an http(s) URL, a model, a well-formed key variable and positive limits.
    A URL is only ever repeated without its secrets (:func:`url_without_secrets`)."""
    from urllib.parse import urlsplit

    seen = set()
    for i, e in enumerate(endpoints):
        at = f"{where}[{i}]"
        if not ENDPOINT_NAME.match(e.name):
            raise UserError(
                f"config: {at}.name={e.name!r} must be 1-64 letters, digits, '.', '_' or '-' "
                "(it names the contestant: endpoint:<name>)"
            )
        if e.name in seen:
            raise UserError(f"config: {at}.name={e.name!r} is used twice: give each endpoint its own name")
        seen.add(e.name)
        shown = url_without_secrets(e.base_url)
        try:
            url = urlsplit(e.base_url)
            url.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise UserError(f"config: {at}.base_url is not a URL: write it as http://HOST:PORT/v1") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UserError(f"config: {at}.base_url={shown!r} must be an http(s) URL such as http://127.0.0.1:8000/v1")
        if url.username is not None or url.password is not None or url.query or url.fragment:
            raise UserError(
                f"config: {at}.base_url={shown!r} holds a user, password or query string: give the "
                "API root alone, and put a key in an environment variable named in api_key_env"
            )
        if not e.model.strip():
            raise UserError(f"config: {at}.model is missing: the model name the endpoint serves (its /v1/models id)")
        if e.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", e.api_key_env):
            # (its value is not repeated: it may be the key itself, pasted by mistake)
            raise UserError(
                f"config: {at}.api_key_env must be the NAME of an environment variable holding the key "
                "(e.g. HOSPITAL_API_KEY), never the key itself"
            )
        if e.max_concurrency < 1 or not e.timeout_s > 0:
            raise UserError(f"config: {at}: max_concurrency must be at least 1 and timeout_s above 0")
        if len(e.stop) > MAX_STOP_STRINGS or not all(isinstance(x, str) and x for x in e.stop):
            raise UserError(
                f"config: {at}.stop must be at most {MAX_STOP_STRINGS} non-empty strings (the OpenAI API's limit)"
            )


def check_batch_rows(rows: int, where: str) -> None:
    if rows < 1:
        raise UserError(f"config: {where}={rows}: a batch needs at least 1 row")


@dataclass
class AppConfig:
    """The arena app (``app/``): server, limits, serving and the default decoding."""

    host: str = "127.0.0.1"
    port: int = 7860
    session_hours: float = 12.0  # a browser login lasts this long (a clinic shift), then the login page again
    # behind a reverse proxy: the header holding the client's address (e.g. "X-Forwarded-For"), believed only
    # for requests from trusted_proxies (the proxy's own addresses); "" = the connection's address (docs/configuration.md)
    client_address_header: str = ""
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    max_prompt_chars: int = 2000  # longer prompts are refused with a message (serve: any message, whatever its role)
    # a conversation whose prompt plus max new tokens does not fit a model's context is refused (serve: 400
    # context_length_exceeded; arena: the panel's error); true: its oldest turns are left out until it fits
    # (the leading system messages and the last user message stay), and the answer says which (docs/serving.md "Serving a run over the OpenAI API")
    trim_history: bool = False
    # serve: the most alternatives per token a request may ask for (/v1/completions' logprobs, the chat's
    # top_logprobs; as vLLM's --max-logprobs, 20 by default; OpenAI allows 5 and 20); more is refused with a 400
    max_logprobs: int = 20
    # serve's /v1/chat/completions: the most choices a request may ask for with n (each a sample of its own,
    # decoded in one batch with the others); more is refused with a 400
    max_n: int = 4
    blind: bool = True  # Compare tab: hide the contestants' names (模型 A/B/C/D) until the judgment
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    device: str = ""  # where the model pool serves: "" = CUDA when there is one, else CPU
    max_loaded_models: int = 4  # full models the pool keeps in memory (each run has two: base and cpt)
    concurrent_comparisons: int = 8  # comparisons generating at once across browser sessions and API calls
    # the most rows (answers) one model process decodes in one batch: every request to a model, from any caller,
    # joins its batch at the next step (docs/serving.md "Batching across requests"); requests beyond it wait
    # for rows to end. Bounds the batch's memory (its cache grows with rows x tokens) on a GPU.
    max_batch_rows: int = field(default=64, metadata={"check": check_batch_rows})
    recent_pairs: int = 20  # pairs listed in the Data tab
    preload_newest_run: bool = True  # load the newest run's contestants when the app starts
    # torch threads per operation when serving on CPU (0 = torch's default, one per core): panels on
    # different full models generate in parallel processes, each kept to this many cores of its own, and
    # on a few cores one thread each beats several threads per panel spin-waiting for each other (10-100x
    # slower on a busy 2-core machine)
    cpu_threads: int = 1
    # CPU: 0 = every model held whole, so clinicians judge exactly the checkpoint the evaluation scored;
    # 8 = a full model trained from another one the pool serves (a run's cpt from its base) is held as that
    # model's weights, shared between the worker processes, plus its difference in 8 bits (a quarter of a
    # model's bytes; the demo's exam scores are unchanged, BENCHMARKS.md "Serving"). Stored with each answer.
    delta_bits: int = 0
    # names an answer must not give away (blind judging): an answer naming one of them, or a contestant's
    # run or checkpoint id, is flagged when it is generated, and the flag is stored with it
    leak_terms: list[str] = field(default_factory=lambda: list(LEAK_TERMS))
    # contestants served by OpenAI-compatible engines, listed beside the runs' stages (docs/serving.md "Endpoint contestants")
    endpoints: list[EndpointConfig] = field(default_factory=list, metadata={"check": check_endpoints})


INTERIM_RESULTS = ("admins", "everyone")


def check_interim_results(value: str, where: str) -> None:
    if value not in INTERIM_RESULTS:
        raise UserError(f"config: {where}={value!r}: choose one of {', '.join(INTERIM_RESULTS)}")


@dataclass
class StudyConfig:
    """A clinician study's rules for who sees what: read by the app's tabs, its API and the ``study`` command
    alike (a section of its own, not ``store`` or ``app``, since all of them must apply it the same way)."""

    # while a queue round is open (queue-round .. queue-round --close), the leaderboard, win rates and
    # run-vs-run verdicts go to admins only: an assessor who learns which stage tends to win, and its style,
    # is no longer blind (as a trial keeps interim analyses from its assessors). Annotators see their own
    # progress. everyone: no such screen
    interim_results: str = field(default="admins", metadata={"check": check_interim_results})


@dataclass
class Config:
    profile: str = "demo"  # what ./launch.sh and every command use when --profile is not given
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cpt: CptConfig = field(default_factory=CptConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    kto: KtoConfig = field(default_factory=KtoConfig)
    orpo: OrpoConfig = field(default_factory=OrpoConfig)
    simpo: SimpoConfig = field(default_factory=SimpoConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    rm: RmConfig = field(default_factory=RmConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    app: AppConfig = field(default_factory=AppConfig)
    study: StudyConfig = field(default_factory=StudyConfig)

    # --- where state lives (docs/design.md) -------------------------------------------------------
    @property
    def home(self) -> Path:
        return Path(os.environ.get("CHIMED_HOME", "workdir")).resolve()

    @property
    def data_dir(self) -> Path:
        return self.home / "data" / "chimed"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def blocks_cache_dir(self) -> Path:
        """Packed pretraining blocks, cached by the content they were packed from (training/stages/packing.py)."""
        return self.home / "cache" / "blocks"

    @property
    def collected_pairs_dir(self) -> Path:
        return self.home / self.data.collected_pairs_dir

    @property
    def collected_ratings_dir(self) -> Path:
        return self.home / self.data.collected_ratings_dir

    @property
    def database_url(self) -> str:
        return (
            os.environ.get("CHIMED_DATABASE_URL")
            or self.store.database_url
            or f"sqlite:///{self.home / 'preferences.db'}"
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sha256(self, section: str | None = None) -> str:
        """Stable hash of the whole config or one section (used to tell whether a stage is stale)."""
        payload = self.to_dict() if section is None else self.to_dict()[section]
        return sha256_json(payload)


# --- loading ---------------------------------------------------------------------------------


def _coerce(value, tp, where: str):
    """Check ``value`` against the annotated type ``tp`` (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config: {where} must be a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"config: {where} must be a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except UserError:
                continue
        raise UserError(f"config: {where}={value!r} does not fit {tp}")
    if tp is type(None):
        if value is not None:
            raise UserError(f"config: {where} must be null")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string
            return tp(value)
        except ValueError:
            raise UserError(f"config: {where} must be {tp.__name__}, got {value!r}") from None
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise UserError(f"config: {where} must be {tp.__name__}, got {value!r}")
    return value


def _build(cls, values: dict, where: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    unknown = sorted(set(values) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise UserError(f"config: unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            # a nested section starts from its field's own default (DpoConfig.lora has alpha 16, not
            # LoraConfig's 32), so overriding one key keeps the others
            section = _build(hints[name], value, key)
            given = {k: getattr(section, k) for k in value}
            kwargs[name] = dataclasses.replace(_field_default(cls, name), **given)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
            if "check" in fields[name].metadata:  # a value only a library can tell apart (a scheduler name)
                fields[name].metadata["check"](kwargs[name], key)
    return cls(**kwargs)  # sections and keys not mentioned keep their defaults


def _field_default(cls, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: list[str]) -> dict:
    """``["cpt.learning_rate=1e-4", "data.strict=true"]`` -> nested dict with YAML-typed values."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value (e.g. cpt.learning_rate=1e-4)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def load_config(profile: str = "demo", overrides: list[str] | None = None) -> Config:
    """Resolve a profile plus ``key=value`` overrides into a :class:`Config`."""
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    path = CONFIG_DIR / f"{profile}.yaml"
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    values = _merge(values, parse_overrides(overrides or []))
    values["profile"] = profile
    return _build(Config, values)


def config_from_dict(values: dict) -> Config:
    """Rebuild a config saved with :meth:`Config.to_dict` (e.g. from a run's manifest)."""
    return _build(Config, values)
