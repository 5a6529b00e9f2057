"""Each alignment method trained on ChiMed-DPO's pairs computes its own loss (issue 37).

The stage's own recipe builds its trainer (the stage registry's runner, stopped where it would start training);
on one fixed batch of pairs that trainer's loss, before any step, equals the method's formula computed here from
the policy's and, for DPO, the reference's log-probabilities of each answer: DPO's sigmoid, IPO and robust losses,
ORPO and SimPO (neither of which ever runs the reference). No two methods agree on that batch, so a method that
silently trained as plain DPO fails here. The adapter gets random weights first: a fresh adapter is zero, the policy
then equals the reference and every DPO variant gives its value at a zero margin (sigmoid and robust alike)."""

from __future__ import annotations

import math
import shutil
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F

from core.config import load_config
from core.files import read_jsonl, write_jsonl_atomic
from tests.lora_weights import randomize_lora
from training.recipes import dpo as dpo_recipe
from training.recipes import runner_for
from training.trainer import lifecycle
from training.trainer.paths import stage_paths

PAIRS = 4  # the batch every method is scored on: the first pairs of ChiMed-DPO
METHODS = {  # method -> its overrides of the tiny profile
    "sigmoid": ["align.method=dpo", "dpo.loss_type=sigmoid"],
    "ipo": ["align.method=dpo", "dpo.loss_type=ipo"],
    "robust": ["align.method=dpo", "dpo.loss_type=robust", "dpo.label_smoothing=0.2"],
    "orpo": ["align.method=orpo"],
    "simpo": ["align.method=simpo"],
}
# the loss alone: no SFT term added (DPO's and CPO-SimPO's sft_weight), the reference computed in the loss
COMMON = ["dpo.sft_weight=0", "simpo.sft_weight=0", "dpo.precompute_reference=false"]


class _TrainerBuilt(Exception):
    """Raised in place of training: carries the trainer the stage's recipe built."""

    def __init__(self, trainer):
        super().__init__("trainer built")
        self.trainer = trainer


def _stop_before_training(trainer, paths):
    raise _TrainerBuilt(trainer)


@pytest.fixture(scope="module")
def scored(tiny_run, tmp_path_factory) -> dict[str, dict]:
    """For each method: the trainer's loss on the batch, the log-probabilities scored here, the settings and how
    many LoRA layer calls ran with the adapter disabled (the reference) while the trainer computed its loss."""
    source_home, run_id = tiny_run
    home = tmp_path_factory.mktemp("align_losses")
    shutil.copytree(source_home / "data", home / "data")
    shutil.copytree(source_home / "runs" / run_id, home / "runs" / run_id, symlinks=True)
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHIMED_HOME", str(home))
        mp.delenv("CHIMED_DATABASE_URL", raising=False)
        mp.setattr(lifecycle, "train_resumably", _stop_before_training)  # orpo and simpo import it when they run
        mp.setattr(dpo_recipe, "train_resumably", _stop_before_training)
        cfg = load_config("tiny")
        pairs = read_jsonl(cfg.data_dir / "dpo.jsonl")
        write_jsonl_atomic(cfg.data_dir / "dpo.jsonl", pairs[: 2 * PAIRS])  # a handful: tokenizing all is slow
        for method, overrides in METHODS.items():
            cfg = load_config("tiny", [*overrides, *COMMON])
            stage = cfg.align.method
            with pytest.raises(_TrainerBuilt) as built:
                runner_for(stage)(cfg, stage_paths(cfg.runs_dir / run_id, stage), "issue-37")
            out[method] = _score(built.value.trainer, cfg.to_dict()[stage])
    return out


def _score(trainer, settings: dict) -> dict:
    model = trainer.model
    model.eval()
    randomize_lora(model, seed=37, scale=0.5)  # the same for every method; large enough for DPO's beta 0.1
    assert len(trainer.train_dataset) == 2 * PAIRS  # every pair kept, in order: the batch is the first PAIRS
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(PAIRS)])
    with torch.no_grad(), _reference_calls(model) as reference_calls:
        loss = float(trainer.compute_loss(model, batch))
    with torch.no_grad():
        chosen, rejected = _answers(batch)
        policy = [_logprobs(model, ids, scored) for ids, scored in chosen + rejected]
        with model.disable_adapter():
            reference = [_logprobs(model, ids, scored) for ids, scored in chosen + rejected]
    return {
        "loss": loss,
        "policy": policy[:PAIRS],
        "policy_rejected": policy[PAIRS:],
        "reference": reference[:PAIRS],
        "reference_rejected": reference[PAIRS:],
        "settings": settings,
        "reference_calls": len(reference_calls),
        "ref_model": getattr(trainer, "ref_model", None),
    }


class _reference_calls:
    """The calls of LoRA layers made with the adapter disabled (the reference model) inside the block."""

    def __init__(self, model):
        self.layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "disable_adapters")]
        self.calls: list[str] = []

    def __enter__(self) -> list[str]:
        assert self.layers
        self.hooks = [
            m.register_forward_pre_hook(lambda m, args: self.calls.append("ref") if m.disable_adapters else None)
            for m in self.layers
        ]
        return self.calls

    def __exit__(self, *exc) -> None:
        for hook in self.hooks:
            hook.remove()


def _answers(batch) -> tuple[list, list]:
    """Each pair's chosen and rejected sequences, unpadded: ``(token ids, mask of the answer's tokens)``, from
    DPOTrainer's batch (chosen rows, then rejected rows, with a completion mask) or ORPO/CPO's (chosen_* and
    rejected_* rows, the prompt's labels -100)."""
    if "completion_mask" in batch:
        rows = [
            (ids[mask.bool()], answer[mask.bool()].bool())
            for ids, mask, answer in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        ]
        return rows[:PAIRS], rows[PAIRS:]
    out = []
    for side in ("chosen", "rejected"):
        out.append(
            [
                (ids[mask.bool()], labels[mask.bool()] != -100)
                for ids, mask, labels in zip(
                    batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"], batch[f"{side}_labels"]
                )
            ]
        )
    return out[0], out[1]


def _logprobs(model, ids, answer) -> dict:
    """One sequence scored alone (no padding) by a plain forward: the log-probability of each token given the
    ones before it; summed and averaged over the answer, and summed over every token (ORPO's SFT term)."""
    logits = model(input_ids=ids[None]).logits[0, :-1].float()
    per_token = logits.log_softmax(-1).gather(-1, ids[1:, None])[:, 0].double()
    scored = answer[1:]
    assert scored.any()
    return {
        "sum": float(per_token[scored].sum()),
        "mean": float(per_token[scored].mean()),
        "tokens": int(scored.sum()),
        "all_sum": float(per_token.sum()),
        "all_tokens": per_token.numel(),
    }


def _logsigmoid(x: float) -> float:
    return float(F.logsigmoid(torch.tensor(x, dtype=torch.float64)))


def dpo_margins(s: dict) -> list[tuple[float, float, dict, dict]]:
    """Per pair: the policy-minus-reference log-ratio of the chosen and of the rejected answer."""
    return [
        (pc["sum"] - rc["sum"], pr["sum"] - rr["sum"], pc, pr)
        for pc, pr, rc, rr in zip(s["policy"], s["policy_rejected"], s["reference"], s["reference_rejected"])
    ]


def sigmoid_dpo(s: dict) -> float:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta x (chosen log-ratio - rejected log-ratio))."""
    beta = s["settings"]["beta"]
    return sum(-_logsigmoid(beta * (c - r)) for c, r, *_ in dpo_margins(s)) / PAIRS


def robust_dpo(s: dict) -> float:
    """Robust DPO (Chowdhury et al. 2024), eps the share of flipped labels: the sigmoid loss of the pair as
    labelled, weighted 1 - eps, minus eps x that of the pair flipped, over 1 - 2 eps (unbiased under noise)."""
    beta, eps = s["settings"]["beta"], s["settings"]["label_smoothing"]
    return (
        sum(
            (-(1 - eps) * _logsigmoid(beta * (c - r)) + eps * _logsigmoid(-beta * (c - r))) / (1 - 2 * eps)
            for c, r, *_ in dpo_margins(s)
        )
        / PAIRS
    )


def ipo(s: dict) -> float:
    """IPO (Azar et al. 2023), on log-ratios averaged over each answer's tokens (TRL's, as its authors run it):
    (chosen - rejected - 1 / (2 beta))^2."""
    beta = s["settings"]["beta"]
    return sum((c / pc["tokens"] - r / pr["tokens"] - 1 / (2 * beta)) ** 2 for c, r, pc, pr in dpo_margins(s)) / PAIRS


def orpo(s: dict) -> float:
    """ORPO (Hong et al. 2024): the SFT loss on the chosen sequences (every token, prompt included, as TRL
    computes it) minus lambda x the mean log sigmoid of the log odds ratio, the odds of an answer taken on its
    token-averaged probability p: odds = p / (1 - p)."""
    lam = s["settings"]["beta"]
    nll = -sum(c["all_sum"] for c in s["policy"]) / sum(c["all_tokens"] for c in s["policy"])

    def log_odds(p: dict) -> float:
        return p["mean"] - math.log1p(-math.exp(p["mean"]))

    ratio = sum(_logsigmoid(log_odds(c) - log_odds(r)) for c, r in zip(s["policy"], s["policy_rejected"])) / PAIRS
    return nll - lam * ratio


def simpo(s: dict) -> float:
    """SimPO (Meng et al. 2024): -log sigmoid(beta x (average log-prob of chosen - of rejected) - gamma)."""
    beta, gamma = s["settings"]["beta"], s["settings"]["gamma"]
    return (
        sum(-_logsigmoid(beta * (c["mean"] - r["mean"]) - gamma) for c, r in zip(s["policy"], s["policy_rejected"]))
        / PAIRS
    )


FORMULAS = {"sigmoid": sigmoid_dpo, "ipo": ipo, "robust": robust_dpo, "orpo": orpo, "simpo": simpo}


@pytest.mark.parametrize("method", ["sigmoid", "ipo", "robust"])
def test_a_dpo_loss_type_is_its_formula_on_policy_and_reference_log_probabilities(scored, method):
    s = scored[method]
    assert s["settings"]["loss_type"] == method
    assert s["reference_calls"] > 0  # the reference (the SFT model: the adapter disabled) ran in the loss
    assert any(abs(c) > 1e-3 for c, *_ in dpo_margins(s))  # the random adapter: policy and reference differ
    assert s["loss"] == pytest.approx(FORMULAS[method](s), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("method", ["orpo", "simpo"])
def test_a_reference_free_method_is_its_formula_and_never_runs_a_reference(scored, method):
    s = scored[method]
    assert s["ref_model"] is None and s["reference_calls"] == 0
    assert s["loss"] == pytest.approx(FORMULAS[method](s), rel=1e-4, abs=1e-5)


def test_no_two_methods_give_the_same_loss_on_the_batch(scored):
    for a, b in combinations(METHODS, 2):
        assert abs(scored[a]["loss"] - scored[b]["loss"]) > 1e-3, (a, b, scored[a]["loss"])
