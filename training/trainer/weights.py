"""Per-pair loss weights (``align.pair_weights``): a clinician pair's exported ``weight`` (the Dawid-Skene posterior
that its direction is right, docs/study.md "Pair weights") multiplies that pair's loss before the batch mean.

    none        every pair weighs 1: the trainers run exactly as before (no column, nothing patched)
    agreement   the dataset gets a ``weight`` column (a pair without one, objective or imported, weighs 1)

TRL 1.16 reduces each method's per-pair losses with a plain mean inside its loss code, so the weight enters where
that code lets a per-pair factor in:

- dpo (``DPOTrainer._compute_loss``): its per-pair losses are multiplied by TRL's WPO weights,
  ``exp(mean over the completion of (log_probs - log_sum_sq_probs))`` of the chosen row times that of the rejected
  row, computed without gradient. With ``use_weighting`` on and the policy's outputs given ``log_sum_sq_probs =
  log_probs - log(weight)`` on the chosen row (``log_probs`` on the rejected row), that product is the pair's
  weight, and ``loss = mean(weight x per-pair loss)`` for every loss type (the SFT term is a batch mean, so it is
  scaled by the batch's mean weight);
- orpo, simpo (``odds_ratio_loss``, ``cpo_loss``): they return the per-pair losses; a subclass multiplies them by
  the batch's weights before TRL takes the mean (ORPO's SFT term is left as it is).

- kto (``KTOTrainer._compute_loss``): an example is one answer, desirable or not, and carries its pair's weight
  (both answers of a pair the same; a clinician's single-answer rating weighs 1). TRL concatenates
  ``desirable_weight x`` the desirable answers' losses and ``undesirable_weight x`` the undesirable ones' (in batch
  order within each kind) and takes the mean, so for the batch those two factors become tensors: the configured
  factor times each desirable, resp. undesirable, example's weight, and ``loss = mean(weight x factor x
  per-answer loss)``. The KL estimate is left as it is (it has no gradient).
"""

from __future__ import annotations

import torch

from core.errors import UserError

FLOOR = 1e-6  # the smallest weight passed through log(): a weight of 0 stays finite (and its pair weighs ~0)


def pair_weights(pairs: list[dict], setting: str) -> list[float] | None:
    """Each pair's weight under ``align.pair_weights`` (None for ``none``: no column at all)."""
    if setting == "none":
        return None
    if setting != "agreement":
        raise UserError(f"config: align.pair_weights={setting!r}: choose one of none, agreement")
    return [float(p["weight"]) if p.get("weight") is not None else 1.0 for p in pairs]


class _WeightedPolicy:
    """The policy as ``DPOTrainer._compute_loss`` calls it, its outputs given the ``log_sum_sq_probs`` that make
    TRL's WPO factor of each pair equal to ``weights`` (chosen rows first, then rejected, as TRL batches them)."""

    def __init__(self, model, weights: torch.Tensor) -> None:
        self.model, self.weights = model, weights

    def __call__(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        log_probs = out.log_probs
        shift = torch.log(self.weights.to(log_probs.device, log_probs.dtype).clamp_min(FLOOR))
        shift = torch.cat([shift, torch.zeros_like(shift)])  # chosen rows carry the weight, rejected rows 1
        out.log_sum_sq_probs = log_probs.detach() - shift[:, None]
        return out


def _collate_weights(trainer) -> None:
    """Keep the dataset's ``weight`` column through ``trainer``'s column pruning and hand it to the loss as the
    batch's ``pair_weight`` tensor (a batch from a dataset without the column has none)."""
    trainer._set_signature_columns_if_needed()
    if "weight" not in trainer._signature_columns:
        trainer._signature_columns = [*trainer._signature_columns, "weight"]
    collate = trainer.data_collator

    def collate_with_weights(examples):
        batch = collate(examples)
        if "weight" in examples[0]:
            batch["pair_weight"] = torch.tensor([float(e["weight"]) for e in examples])
        return batch

    trainer.data_collator = collate_with_weights


def weight_dpo_trainer(trainer) -> None:
    """Make ``trainer`` (TRL's DPOTrainer, its dataset with a ``weight`` column) weigh each pair's loss by it."""
    if any(t in {"aot", "aot_unpaired"} for t in trainer.loss_types):
        raise UserError("config: align.pair_weights=agreement cannot weigh dpo.loss_type aot (it sorts the pairs)")
    _collate_weights(trainer)
    compute = trainer._compute_loss

    def weighted_loss(model, inputs, return_outputs):
        weights = inputs.pop("pair_weight", None)
        if weights is None:  # a batch without the column (evaluation sets): unweighted
            trainer.use_weighting = False
            return compute(model, inputs, return_outputs)
        trainer.use_weighting = True
        return compute(_WeightedPolicy(model, weights), inputs, return_outputs)

    trainer._compute_loss = weighted_loss


def weight_kto_trainer(trainer) -> None:
    """Make ``trainer`` (TRL's KTOTrainer, its dataset with a ``weight`` column) weigh each answer's loss by it:
    for each batch, its ``desirable_weight`` and ``undesirable_weight`` become the configured factor times the
    weights of the batch's desirable, resp. undesirable, answers (restored after the batch)."""
    _collate_weights(trainer)
    compute = trainer._compute_loss
    desirable, undesirable = trainer.desirable_weight, trainer.undesirable_weight

    def weighted_loss(model, inputs, return_outputs):
        weights = inputs.pop("pair_weight", None)
        if weights is None:  # a batch without the column (evaluation sets): unweighted
            return compute(model, inputs, return_outputs)
        labels = torch.as_tensor(inputs["label"], dtype=torch.bool)
        weights = weights.to(trainer.accelerator.device)
        trainer.desirable_weight = desirable * weights[labels.to(weights.device)]
        trainer.undesirable_weight = undesirable * weights[~labels.to(weights.device)]
        try:
            return compute(model, inputs, return_outputs)
        finally:
            trainer.desirable_weight, trainer.undesirable_weight = desirable, undesirable

    trainer._compute_loss = weighted_loss


def weighted_pair_trainer(trainer_cls):
    """A subclass of TRL's ORPOTrainer or CPOTrainer whose per-pair losses are multiplied by the batch's ``weight``
    (a list the DPO padding collator passes through) before TRL takes their mean."""
    loss_name = "odds_ratio_loss" if hasattr(trainer_cls, "odds_ratio_loss") else "cpo_loss"

    class Weighted(trainer_cls):
        _batch_weights = None

        def get_batch_loss_metrics(self, model, batch, train_eval="train"):
            weights = batch.get("weight")
            self._batch_weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
            try:
                return super().get_batch_loss_metrics(model, batch, train_eval)
            finally:
                self._batch_weights = None

    def weighted(self, *args, **kwargs):
        losses, *rest = getattr(trainer_cls, loss_name)(self, *args, **kwargs)
        if self._batch_weights is not None:
            losses = losses * self._batch_weights.to(losses.device, losses.dtype)
        return (losses, *rest)

    setattr(Weighted, loss_name, weighted)
    Weighted.__name__ = f"Weighted{trainer_cls.__name__}"
    return Weighted
